"""RFT: supervised fine-tuning of the GRM on the kept rejective-sampling trajectories (spec sec. 3).

  python -m spct_jax.main --config=configs/rft.py                  # Gemma 3 270M on runs/rft_generate
  python -m spct_jax.main --config=configs/rft.py:smoke            # tiny random model on runs/rft_generate-smoke
  python -m spct_jax.main --config=configs/rft.py --config.data.rft_dir=/path/to/rft_generate_workdir

Reads the finished dataset of an rft_generate workdir (`data.rft_dir`, default runs/rft_generate, the default
workdir of configs/rft_generate.py; `:smoke` reads runs/rft_generate-smoke). Writes metrics.jsonl (loss = the
judgement tokens' cross-entropy, tokens, grad_norm, sft_examples, sft_examples_dropped, held-out
heldout/greedy/accuracy_strict, accuracy_tie_random and parse_rate every evals.heldout.every steps), orbax
checkpoints (a re-run resumes; SIGTERM saves and exits) and, at the last step, the trained weights with their
config and tokenizer in <workdir>/grm/ (`export`, written atomically). That folder is a model path: pass it to
configs/grpo.py or configs/eval.py as --config.model.name=<workdir>/grm (init "pretrained", their default).

Choices (CPU defaults; the paper: lr 5e-6, batch 1024, 900 steps on 27B):
  * 30 steps of 4 packed rows (a row holds one RMB prompt and judgement, or several short ones): about one pass
    over the ~300 kept trajectories of the default 256-item generation.
  * lr 1e-5 (AdamW, 3 warmup steps, constant, clip 1.0): twice the paper's for 1/250 of its batch and 1/30 of its
    steps, so 30 steps move the format a base model lacks; the 262k x 640 embedding is frozen (its gradient and
    Adam moments would dominate CPU memory and time), all blocks train.
  * the GRM is prompted as it will be used, zero-shot (grm.num_demonstrations = 0, rft_generate's
    rft.train_demonstrations) with the output prefix "Specific Criteria:"; held-out evaluation on 16 LLMBar items,
    greedy, every 10 steps.
  * sequence lengths from the data (`data.max_inputs_length` / `max_targets_length` None): no judgement is cut.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("spct_configs_common", pathlib.Path(__file__).with_name("common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

VARIANTS = ("smoke",)


def get_config(arg: str | None = None):
  variants = common.parse_variants(arg, VARIANTS, "configs/rft.py")
  c = common.base("rft")
  c.total_steps = 30               # optimizer steps (a resumed run continues to it)
  c.batch_size = 4                 # decoder rows per step (all processes together)
  c.logprob_chunk_size = common.config_dict.placeholder(int)  # sequence chunk of the log-prob pass (None: whole)
  c.export = "grm"                 # the trained model folder under the workdir (load_model / model.name path)

  c.model = common.model(max_seq_len=2560)  # the GRM to fine-tune (pretrained Gemma 3 270M)
  c.mesh = common.mesh()

  c.data = common.data()
  c.data.rft_dir = "runs/rft_generate"  # an rft_generate workdir (its trajectories/ is read)
  c.data.pack = True               # several short examples per row (segment-masked attention)
  c.data.shuffle_buffer_size = 1024  # examples shuffled in a window (seeded by config.seed)
  c.data.max_inputs_length = common.config_dict.placeholder(int)  # prompt tokens; None: the data's longest
  c.data.max_targets_length = common.config_dict.placeholder(int)  # judgement tokens; None: the data's longest
  c.data.eval_sources = ("llmbar",)  # held-out items of the periodic evaluation (never trained on)
  c.data.eval_items = 16           # per eval source

  c.grm = common.grm(num_demonstrations=0, max_new_tokens=128)  # how the trained GRM is prompted (evaluation)

  c.optimizer = common.optimizer(c.get_ref("total_steps"), learning_rate=1e-5, warmup_steps=3,
                                 trainable="^blocks/")
  c.checkpoint = common.checkpoint(every=10, keep=2)
  c.evals = common.ml_collections.ConfigDict()
  c.evals.heldout = common.voting_eval(every=10)  # greedy accuracy and parse rate on the held-out items

  if "smoke" in variants:  # tiny random model, the run-time vocabulary: seconds per step (CI)
    c.model = common.smoke_model(tokenizer="synthetic", max_seq_len=2048)
    c.data.rft_dir = "runs/rft_generate-smoke"
    c.data.eval_sources = ("synthetic",)
    c.data.eval_items = 2
    c.total_steps = 4
    c.batch_size = 2
    c.grm.max_new_tokens = 6
    c.evals.heldout.every = 4      # once, at the last step
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 0
    c.optimizer.trainable = ".*"
    c.checkpoint.every = 1
  return c
