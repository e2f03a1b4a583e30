"""The meta RM (spec sec. 5): a scalar head on the Gemma backbone, BCE on Eq. 10-labelled GRM trajectories.

  python -m spct_jax.main --config=configs/meta_rm.py          # Gemma 3 270M backbone, rft_generate's trajectories
  python -m spct_jax.main --config=configs/meta_rm.py:smoke    # tiny random model, scripted samples: seconds (CI)
  python -m spct_jax.main --config=configs/meta_rm.py --config.fresh.grm=runs/rft/grm --config.fresh.num_items=64
  python -m spct_jax.main --config=configs/meta_rm.py:full --config.model.name=runs/rft/grm

Then MetaRM@k beside Voting@k: `configs/eval.py --config.meta_rm.path=<this workdir>/meta_rm`.

Variants (comma-combinable):
  (none)  backbone = Gemma 3 270M (the base; set model.name to an RFT / GRPO checkpoint), trajectories from
          data.trajectories_dir (rft_generate's default workdir), frozen backbone + trained head (a linear probe:
          one forward per example, affordable on a CPU), lr 1e-3, 200 steps of 16, held-out metrics every 50.
  smoke   tiny random Gemma 3 + a run-time sentencepiece vocabulary; no trajectory files: fresh samples of 16
          synthetic items x 4 by the scripted synthetic judge (40% wrong): seconds, nothing read from disk.
  full    every parameter trained at the paper's lr 1e-5 (batch 64 here; the paper's is 512): accelerator scale.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("spct_configs_common", pathlib.Path(__file__).with_name("common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

VARIANTS = ("smoke", "full")


def get_config(arg: str | None = None):
  variants = common.parse_variants(arg, VARIANTS, "configs/meta_rm.py")
  c = common.base("meta_rm")
  c.total_steps = 200
  c.batch_size = 16                # trajectories per step

  c.model = common.model()         # the backbone: the base, or an RFT / GRPO checkpoint folder
  c.mesh = common.mesh()

  c.data = common.data()
  c.data.trajectories_dir = "runs/rft_generate"  # an rft_generate workdir (or its trajectories/); "" = none
  c.data.heldout_fraction = 0.1    # items (all their trajectories) held out for evaluation
  # Fresh-sample items: the TRAINING split of data.name (the GRM trainers' split: the same eval_items held out).
  c.data.name = "synthetic"
  c.data.num_items = 512
  c.data.eval_items = 8

  c.fresh = common.ml_collections.ConfigDict()  # spct_jax.experiments.fresh_samples
  c.fresh.grm = ""                 # "" = off; the trained GRM (a model folder); "synthetic" = the scripted judge
  c.fresh.num_items = 64           # training items sampled (0 = all)
  c.fresh.k = 4                    # samples per item
  c.fresh.batch_size = 4           # items per sampling call
  c.fresh.num_shards = 4
  c.fresh.error_rate = 0.4         # the synthetic judge only: fraction of wrong judgements
  # How fresh samples are drawn: voting's temperature (0.5, the paper's for scaling), since the meta RM filters
  # exactly such samples at inference.
  c.grm = common.grm(temperature=0.5, max_new_tokens=256)

  c.meta_rm = common.ml_collections.ConfigDict()  # spct_jax.meta_rm.MetaRMConfig + data choices
  c.meta_rm.chat_style = "raw"     # how prompt and trajectory are joined (`templates.meta_rm_input`)
  c.meta_rm.max_length = common.config_dict.placeholder(int)  # None: the backbone's max_seq_len (BOS + tail kept)
  c.meta_rm.balance = "pos_weight"  # "pos_weight" | "batches" | "none" (data.meta_rm_examples.BALANCE_CHOICES)
  c.meta_rm.valid_only = False     # True drops unparseable trajectories (Eq. 10 labels them incorrect)
  c.meta_rm.length_multiple = 64   # batches are padded to a multiple of this many tokens (fewer compiles)

  c.optimizer = common.optimizer(c.get_ref("total_steps"), learning_rate=1e-3, warmup_steps=10, trainable="^head/")
  c.checkpoint = common.checkpoint(every=50, keep=2)
  c.evals = common.ml_collections.ConfigDict()
  c.evals.heldout = common.binary_eval(every=50)

  if "full" in variants:  # the paper's meta RM: every parameter, lr 1e-5
    c.optimizer.trainable = ".*"
    c.optimizer.learning_rate = 1e-5
    c.batch_size = 64
    c.total_steps = 1000
    c.evals.heldout.every = 100
    c.checkpoint.every = 100
  if "smoke" in variants:
    c.model = common.smoke_model(tokenizer="synthetic", max_seq_len=2048)  # GRM prompts are ~1.3k tokens
    c.data.trajectories_dir = ""
    c.data.heldout_fraction = 0.25
    c.data.num_items = 32
    c.data.eval_items = 4
    c.fresh.grm = "synthetic"
    c.fresh.num_items = 16
    c.fresh.k = 4
    c.total_steps = 6
    c.batch_size = 8
    c.optimizer.warmup_steps = 0
    c.optimizer.learning_rate = 3e-2 if c.optimizer.trainable == "^head/" else 1e-3
    c.checkpoint.every = 3
    c.evals.heldout.every = 3
  return c
