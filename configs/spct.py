"""The SPCT pipeline, one command: rft_generate -> rft -> grpo -> meta_rm -> eval of every stage (paper Table 3).

  python -m spct_jax.main --config=configs/spct.py                # Gemma 3 270M, sized for the 2-core CPU (~2 h)
  python -m spct_jax.main --config=configs/spct.py:full           # 400 held-out items, more data and steps (GPU)
  python -m spct_jax.main --config=configs/spct.py:smoke          # tiny random models, every stage in minutes (CI)

Each stage is the experiment of the same name (eval_* are configs/eval.py), configured under config.stages.<stage>
exactly as its own config file builds it (the same variant), so any of its fields can be overridden here
(`--config.stages.grpo.total_steps=40`). The links between stages are `{stage}` folders in string fields
(`stages.grpo.model.name = "{rft}/grm"`), resolved by spct_jax.experiments.spct when the stage runs. Re-running skips finished stages (<workdir>/<stage>/stage.json)
and resumes a killed one. The result: <workdir>/table.json and table.md (base greedy, RFT greedy, RFT+GRPO greedy,
k=1 sampled, Voting@k and MetaRM@k; per dataset and pooled, 95% bootstrap intervals, position-swap consistency).

Choices (the paper's setup scaled to one small model on a CPU):
  * the RFT teacher is the base model itself (the paper samples a larger one); RFT then GRPO start from it.
  * the meta RM's backbone is the trained GRM (the paper: a GRM-initialised scalar RM), trained on rft_generate's
    non-hinted trajectories plus fresh samples of the trained GRM on training items.
  * evaluation on the four held-out benchmarks (LLMBar, RM-Bench, JudgeBench, RMB best-of-N), the first items of
    each that fit the context; the base model with one worked demonstration (it parses nothing zero-shot), the
    trained GRMs zero-shot as they were trained; greedy with position swap, Voting@1,2,4,8 at T = 0.5, MetaRM@k.
  * sizes: the default fits about 2 hours of the 2-core CPU (measured on an AMD EPYC Zen 4: README "The SPCT
    pipeline on Gemma 3 270M"): 64 RFT items at T = 0.5, 10 SFT steps, 12 GRPO steps, 50 meta-RM steps, 8 items
    per benchmark (32 held-out items: wide intervals). `full` is the issue-sized run: the stage configs' own sizes
    (256 RFT items, 30 SFT and 20 GRPO steps, 200 meta-RM steps) and 100 items per benchmark (400); most of a day
    on that CPU.
"""

import importlib.util
import pathlib


def _sibling(name: str):
  spec = importlib.util.spec_from_file_location(f"spct_configs_{name}", pathlib.Path(__file__).with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


common = _sibling("common")
VARIANTS = ("smoke", "full")
HELDOUT = ("llmbar", "rm_bench", "judgebench", "rmb_bon")  # never trained on (the RFT issue's overlap check)


def get_config(arg: str | None = None):
  variants = common.parse_variants(arg, VARIANTS, "configs/spct.py")
  variant = "smoke" if "smoke" in variants else None  # the stage configs' own variant (`full` is this file's)
  c = common.base("spct")
  # Stages to run, in spct_jax.experiments.spct.STAGES order (a subset skips the others: their links must exist).
  c.run_stages = ("rft_generate", "rft", "grpo", "meta_rm", "eval_base", "eval_rft", "eval_final")
  # A folder (e.g. results/<name>, tracked in git) that receives the table (JSON, Markdown, PNG), the final
  # model's accuracy-vs-k plot and the data reports of rft_generate and meta_rm at the end; "" = none.
  c.publish_dir = ""
  c.stages = common.ml_collections.ConfigDict()  # one whole experiment config per stage

  s = c.stages
  s.rft_generate = _sibling("rft_generate").get_config(variant)  # the teacher samples; keeps correct judgements
  s.rft = _sibling("rft").get_config(variant)  # SFT on the kept trajectories -> {rft}/grm
  s.rft.data.rft_dir = "{rft_generate}"  # rft_generate's workdir (its trajectories/)
  s.grpo = _sibling("grpo").get_config(variant)  # rule-based RL from the RFT model -> {grpo}/grm
  s.grpo.model.init = "pretrained"  # a saved model folder, not a preset
  s.grpo.model.name = "{rft}/grm"  # the RFT model
  s.grpo.grm.num_demonstrations = 0  # rollouts prompted as the RFT model was trained (and is evaluated): zero-shot
  s.meta_rm = _sibling("meta_rm").get_config(variant)  # scalar head on the trained GRM
  s.meta_rm.model.init = "pretrained"  # the backbone: a saved model folder
  s.meta_rm.model.name = "{grpo}/grm"  # the GRM after GRPO
  s.meta_rm.data.trajectories_dir = "{rft_generate}"  # its non-hinted trajectories (Eq. 10 labels)

  evaluation = _sibling("eval")
  s.eval_base = evaluation.get_config(variant)  # the base model, one worked demonstration
  s.eval_rft = evaluation.get_config(variant)  # the RFT model, zero-shot
  s.eval_rft.model.init = "pretrained"  # a saved model folder
  s.eval_rft.model.name = "{rft}/grm"  # the RFT model
  s.eval_final = evaluation.get_config(variant)  # RFT+GRPO: greedy, Voting@k, MetaRM@k
  s.eval_final.model.init = "pretrained"  # a saved model folder
  s.eval_final.model.name = "{grpo}/grm"  # the GRM after GRPO
  s.eval_final.meta_rm.path = "{meta_rm}/meta_rm"  # the trained meta RM (MetaRM@k beside Voting@k)

  if "smoke" not in variants:
    # The paper gives no RFT temperature. At rft_generate's 1.0 the 270M base left 55 of the first 16 items' 61
    # judgements (48 + 13 hinted) unparseable and kept 3 items; at 0.5, the paper's sampling temperature, 31 of
    # 198 on all 64 items, 58 items kept (README: the pipeline run).
    s.rft_generate.grm.temperature = 0.5
    s.meta_rm.fresh.grm = "{grpo}/grm"  # fresh samples of the trained GRM on training items
    s.rft_generate.data.eval_sources = HELDOUT  # training items never share a prompt with these
    s.rft.data.eval_sources = ("llmbar",)  # the periodic held-out check (the table is from the eval stages)
    for stage in (s.eval_base, s.eval_rft, s.eval_final):
      stage.data.names = HELDOUT  # the four held-out benchmarks
      stage.data.max_items = 100 if "full" in variants else 8  # per benchmark, of the items that fit the context
      stage.model.max_seq_len = 4096  # RMB best-of-N lists: median prompt ~2k Gemma tokens
      stage.evals.voting.batch_size = 4  # items per sampling call (x k rows)
      stage.evals.voting.ks = ()  # greedy (and position swap) for the training stages
    if "full" not in variants:  # the CPU default: ~2 h on 2 cores (README)
      s.rft_generate.data.num_items = 64  # of the mixed training stream
      # One pass over the ~80 kept judgements (~8 per packed step of 4 x 2560 tokens). A step took ~110 s on
      # the 2-core Zen 4 with the LM head at every position; it now runs at the judgement tokens only (not re-timed).
      s.rft.total_steps = 10
      s.rft.evals.heldout.every = 10  # one held-out check, at the end
      s.grpo.total_steps = 12
      s.grpo.evals.heldout.every = 12
      s.meta_rm.fresh.num_items = 16  # x fresh.k = 4 samples of the trained GRM
      s.meta_rm.total_steps = 50
      s.meta_rm.evals.heldout.every = 50
    s.eval_rft.grm.num_demonstrations = 0  # prompted as trained (rft_generate's rft.train_demonstrations)
    s.eval_final.grm.num_demonstrations = 0
    s.eval_final.evals.voting.ks = (1, 2, 4, 8)  # k=1 sampled, Voting@8 (T = grm.temperature = 0.5)
  else:
    s.eval_base.evals.voting.ks = ()  # greedy (and position swap) for the training stages
    s.eval_rft.evals.voting.ks = ()
    s.eval_final.evals.voting.ks = (1, 2)  # k=1 sampled and Voting@2 / MetaRM@2
  return c
