"""RFT data: rejective sampling of GRM judgements from a teacher (spec sec. 3), the first stage of SPCT.

  python -m spct_jax.main --config=configs/rft_generate.py           # Gemma 3 270M teacher, 256 training items
  python -m spct_jax.main --config=configs/rft_generate.py:smoke     # tiny random model, seconds (CI)
  python -m spct_jax.main --config=configs/rft_generate.py --config.model.name=/path/to/teacher

Writes <workdir>/trajectories/ (a TFDS ArrayRecord dataset of every sampled judgement, kept or not: RFT's SFT
reads the kept ones, the meta RM the non-hinted ones) and <workdir>/stats.json (per source: items seen, kept, too
easy, rejected wrong, hinted tried / kept, position hinted tried / kept, parse failures; how the items were
selected). The dataset is finished when trajectories/dataset_info.json exists; re-running the command on a killed
run's workdir finishes it, and the result equals an uninterrupted run's. configs/rft.py reads it
(`--config.data.rft_dir=<this workdir>`).

Choices (the paper gives none of them):
  * teacher: any `load_model` name or path (`model.name`); the paper samples from a larger model.
  * N_RFT = 3 (the paper's) judgements per item at temperature 1.0 (not given; plain sampling keeps the
    teacher's own distribution), each showing the responses in its own order.
  * prompts: one worked demonstration and the output prefix "Specific Criteria:" (a base model answers in format
    only with them: Gemma 3 270M parses 0% zero-shot, all with one demonstration); the SFT prompt stored with
    each record has `rft.train_demonstrations` (0) of them, so the fine-tuned GRM answers zero-shot.
  * hinted sampling on: an item whose N_RFT judgements are all wrong is sampled once more with "The best
    response is: Response j"; the hinted judgement is kept if correct and flagged.
  * position hints off (`rft.position_hints`, not in the paper): on, an item whose kept judgements all show the
    best response at one position is sampled once more, hinted, in an order that shows it elsewhere.
  * data: the four training sources, 64 items each (`data.max_per_source`), 256 in all, mixed in one seeded
    order; every held-out prompt is excluded (`experiments.selection.training_items`).
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("spct_configs_common", pathlib.Path(__file__).with_name("common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

VARIANTS = ("smoke",)
# The smoke teacher is a random model; this prefix ends with a fixed verdict for "Response 1", so every judgement
# parses and is right exactly when the best response is shown first (a positional bias, as a real small model
# has): pairs are kept, triples (whose 3 scores the verdict lacks) fail to parse, are hinted and rejected, and
# configs/rft.py:smoke trains on the kept pairs.
SMOKE_PREFIX = "Specific Criteria: the response that answers correctly.\nAnalysis: see above.\nScores: \\boxed{9, 2}\n"


def get_config(arg: str | None = None):
  variants = common.parse_variants(arg, VARIANTS, "configs/rft_generate.py")
  c = common.base("rft_generate")
  c.progress = True                # a tqdm bar (process 0): items done, kept / too easy / wrong / hinted counts

  # The teacher. RMB pairwise prompts are ~1.2k Gemma tokens (median) plus ~1k for the demonstration.
  c.model = common.model(max_seq_len=2560)
  c.mesh = common.mesh()           # over this process's devices: each process samples its own shards

  c.data = common.data()
  c.data.train_sources = ("rmb_pairwise", "hh_rlhf", "pandalm", "auto_j")  # synthetic and .jsonl files too
  c.data.max_per_source = 64       # items per source that fit the context (0 = all)
  c.data.num_items = 256           # of the mixed stream (0 = all)
  # What later stages evaluate on: never trained on, and no training item has one of their prompts.
  c.data.eval_sources = ("llmbar", "rm_bench", "judgebench", "rmb_bon")
  c.data.eval_items = 8            # synthetic eval sources: held-out items generated (a disjoint index range)

  c.grm = common.grm(num_demonstrations=1, demo_seed=1_000_003, temperature=1.0, max_new_tokens=128)

  c.rft = common.ml_collections.ConfigDict()
  c.rft.n_rft = 3                  # non-hinted judgements per item (paper: 3)
  c.rft.hinted = True              # one hinted judgement for items whose N_RFT are all wrong
  # One hinted judgement showing the best response at another position for items whose kept judgements all show
  # it at one: rejection alone keeps a position-biased teacher's bias (Gemma 3 270M: 82/82 kept showed it first).
  c.rft.position_hints = False
  c.rft.train_demonstrations = 0   # worked examples in the SFT prompt stored with each record
  c.rft.batch_size = 4             # items per sampling call (x N_RFT rows; identical prompts share a prefill)
  c.rft.num_shards = 16            # work shards (a kill loses at most the shard in progress; 16 items each here)

  if "smoke" in variants:
    c.model = common.smoke_model(tokenizer="synthetic", max_seq_len=2048)
    c.data.train_sources = ("synthetic",)
    c.data.eval_sources = ("synthetic",)
    c.data.max_per_source = 0
    c.data.num_items = 12
    c.data.num_responses = (2, 3)  # n = 3 items cannot parse the 2-score verdict: rejected, hinted, counted
    c.data.eval_items = 4
    c.grm.num_demonstrations = 0
    c.grm.output_prefix = SMOKE_PREFIX
    c.grm.stop_after_scores = False  # the verdict is in the prefix: sample max_new_tokens after it
    c.grm.max_new_tokens = 6
    c.rft.batch_size = 2
    c.rft.num_shards = 4
  return c
