"""Rule-based GRPO of the GRM (spec sec. 4).

  python -m spct_jax.main --config=configs/grpo.py                  # Gemma 3 270M, CPU, generated data
  python -m spct_jax.main --config=configs/grpo.py:smoke            # tiny random model, seconds (CI)
  python -m spct_jax.main --config=configs/grpo.py:gemma2_27b       # the paper's settings on a pod
  python -m spct_jax.main --config=configs/grpo.py --config.optimizer.learning_rate=1e-6

Variants combine with commas (`smoke,gemma2_27b`: the paper's data and settings on the tiny model).
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("spct_configs_common", pathlib.Path(__file__).with_name("common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

VARIANTS = ("smoke", "gemma2_27b")


def get_config(arg: str | None = None):
  variants = common.parse_variants(arg, VARIANTS, "configs/grpo.py")
  c = common.base("grpo")
  c.total_steps = 20
  c.batch_size = 2                 # items per step; rollouts per step = batch_size * grpo.group_size
  c.warn_zero_signal_after = 5     # warn when no group had a reward spread for this many steps

  c.model = common.model()
  c.data = common.data()
  c.data.name = "synthetic"        # a reader name (rmb_pairwise, hh_rlhf, ...), "synthetic" or a .jsonl file
  c.data.num_items = 512           # training items (0 = all of a dataset)
  c.data.eval_items = 8            # held-out items (a disjoint split)

  # Step-0 parse rate of 72 rollouts (3 steps x 2 items x 12 samples): 1 demo + 96 tokens 1/72, 2 demos + 128
  # tokens 9/72. Rollout temperature 1.0 (paper: not given).
  c.grm = common.grm(num_demonstrations=2, max_new_tokens=128, temperature=1.0)

  c.grpo = common.ml_collections.ConfigDict()  # spct_jax.train.grpo_trainer.GRPOConfig (sampling: config.grm)
  c.grpo.group_size = 4            # G (paper: 4)
  c.grpo.beta = 0.08               # KL weight (paper: 0.08 for 27B)
  c.grpo.epsilon = 0.2
  c.grpo.epsilon_high = common.config_dict.placeholder(float)
  c.grpo.kl_estimator = "k3"
  c.grpo.aggregation = "sequence-mean-token-mean"
  c.grpo.advantage_eps = 1e-4
  c.grpo.advantage_std_ddof = 1
  c.grpo.scale_advantages_by_std = True
  c.grpo.num_iterations = 1        # mu
  c.grpo.logprob_chunk_size = common.config_dict.placeholder(int)

  # Freeze the 262k x 640 tied embedding on CPU: saves its gradient and Adam moments.
  c.optimizer = common.optimizer(c.get_ref("total_steps"), learning_rate=2e-6, warmup_steps=2, trainable="^blocks/")
  c.checkpoint = common.checkpoint(every=10, keep=2)
  c.mesh = common.mesh()
  c.evals = common.ml_collections.ConfigDict()
  c.evals.heldout = common.voting_eval(every=10)  # greedy accuracy on the held-out split every 10 steps

  if "gemma2_27b" in variants:  # the paper's settings (G=4, beta=0.08, lr 4e-7, batch 512, 900 steps) on a pod
    c.model.name = "/path/to/gemma-2-27b"  # an HF checkpoint folder (or an RFT checkpoint)
    c.model.param_dtype = "bfloat16"
    c.model.max_seq_len = 8192
    c.data.name = "rmb_pairwise"
    c.total_steps = 900
    c.batch_size = 128             # 128 items x G=4 = 512 trajectories per step
    c.evals.heldout.every = 50
    c.grm.num_demonstrations = 0
    c.grm.output_prefix = ""
    c.grm.max_new_tokens = 1024
    c.grpo.logprob_chunk_size = 256
    c.optimizer.learning_rate = 4e-7
    c.optimizer.warmup_steps = 20
    c.optimizer.trainable = ".*"
    c.checkpoint.every = 50
    c.checkpoint.keep = 3
    c.mesh.data = -1
    c.mesh.fsdp = 16
    c.mesh.tensor = 4
  if "smoke" in variants:  # tiny random model with the real tokenizer: CI, seconds per step
    c.model = common.smoke_model(vocab_size=262_144, max_seq_len=min(c.model.max_seq_len, 2048))
    c.total_steps = 4
    c.evals.heldout.every = 2
    c.data.num_items = 16
    c.data.eval_items = 2
    c.grm.num_demonstrations = 0   # a demonstration is ~1k tokens: two made 2.8k-token prompts, over 2048
    c.grm.max_new_tokens = 8
    c.optimizer.learning_rate = 1e-3
    c.optimizer.trainable = ".*"
    c.checkpoint.every = 1
    if "gemma2_27b" in variants:
      c.total_steps, c.batch_size, c.checkpoint.every = 2, 2, 2
      c.mesh = common.mesh()
  return c
