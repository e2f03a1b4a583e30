"""Evaluation experiment: a GRM's accuracy on preference benchmarks, greedy and with voting over k samples.

Run through the lead's entry point (`spct_jax.main`), which calls `spct_jax.evaluate.run(config, workdir)`.
Variants (`get_config(arg)`, big_vision style; the part after ':' in `--config=configs/eval.py:smoke`):
  (none)    Gemma 3 270M (the PyPI GGUF) on CPU: 8 RMB pairwise items, one worked demonstration, 128 new
            tokens, greedy + voting@1,2,4. Minutes on a 2-core AMX CPU.
  smoke     tiny random Gemma 3 + a sentencepiece vocabulary trained at run time on the project's synthetic data;
            4 synthetic items, 8 new tokens: seconds, no downloads, no shared data (tests use it).
  rmb_bon   RMB best-of-N (best + 2..6 losers in one prompt; correct iff the best scores strictly highest).
  full      every dataset with a reader, 200 items each, 512 new tokens, voting up to k=8, zero-shot (for a
            trained GRM: set model.name): accelerator scale (GPU / TPU); on CPU expect hours.
Variants combine with commas, e.g. `smoke,rmb_bon` (the smoke model on RMB best-of-N).
"""

from __future__ import annotations

import os
import pathlib

import ml_collections

# <repo>/../shared/data, found from this file so it works from any working directory.
DEFAULT_DATA_ROOT = str(pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data")
VARIANTS = ("smoke", "rmb_bon", "full")
# Every dataset `spct_jax.data.readers.READERS` can read (synthetic needs no files).
ALL_DATASETS = ("rmb_pairwise", "rmb_bon", "llmbar", "hh_rlhf", "pandalm", "judgebench", "rm_bench", "auto_j")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the eval config; `arg` is a comma-separated list of variant names (see the module docstring)."""
  variants = [v.strip() for v in (arg or "").split(",") if v.strip()]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise ValueError(f"unknown eval config variant(s) {unknown}; valid: {list(VARIANTS)}")

  c = ml_collections.ConfigDict()
  c.experiment = "eval"
  c.seed = 0  # Everything random (slice, response orders, sampling, tie-breaks) derives from it.

  c.model = ml_collections.ConfigDict()
  c.model.name = "gemma3-270m"  # load_model name or path (.gguf, transformers or orbax folder), or a preset.
  # "pretrained" loads weights via spct_jax.weights.load_model; "random" builds preset `name` with random weights.
  c.model.init = "pretrained"
  # Tokenizer for random models: "synthetic" trains a small sentencepiece model at run time (offline, seconds);
  # anything else is a load_tokenizer name or path. Ignored for pretrained models (they bring their own).
  c.model.tokenizer = "synthetic"
  c.model.param_dtype = "float32"  # Storage dtype of the weights.
  c.model.compute_dtype = "bfloat16"  # Matmul inputs (f32 accumulation): AMX CPUs, GPUs and TPUs run it fast.
  # Bounds the KV cache; items whose prompt + max_new_tokens does not fit are skipped (counted in results).
  # RMB pairwise prompts are ~1.2k Gemma tokens (median) plus ~1k per demonstration.
  c.model.max_seq_len = 2560
  # Mesh axis sizes for sharded models (spct_jax.sharding.MeshConfig fields, e.g. {"fsdp": -1}); None = 1 device.
  c.mesh = None

  c.data = ml_collections.ConfigDict()
  # Holds one folder per dataset (rmb/, llmbar/, ...). SPCT_DATA_ROOT overrides the default.
  c.data.root = os.environ.get("SPCT_DATA_ROOT", DEFAULT_DATA_ROOT)
  c.data.names = ("rmb_pairwise",)  # Reader names (spct_jax.data.readers.READERS) or "synthetic".
  # Items per dataset (0 = all that fit the context). Default run, measured on 2 CPU cores shared with other
  # jobs: 8 items 8.6 min (greedy 2.5, k=4 sampling 6.0), 16 items 24 min. Time ~ items.
  c.data.max_items = 8
  c.data.seed = 0  # Which items form the slice.
  # "stratified": round-robin over categories in seeded order (a small slice spans categories);
  # "uniform": a plain seeded random sample (category shares follow the dataset's).
  c.data.sampling = "stratified"
  c.data.synthetic_responses = 2  # n per synthetic item (1..4).
  c.data.synthetic_difficulty = "easy"  # easy / medium / hard.

  c.grm = ml_collections.ConfigDict()  # spct_jax.grm.GRMOptions fields.
  c.grm.template = "default"  # Appendix G prompt (spct_jax.grm.templates.TEMPLATES).
  c.grm.chat_style = "raw"  # "raw" (the paper's base-model setting) or "gemma" (chat turns).
  c.grm.max_new_tokens = 128
  c.grm.num_distinct_orders = 2  # Response orders per item; samples sharing an order share one prefill.
  c.grm.output_prefix = "Specific Criteria:"  # Opens the answer so a base model starts in the asked format.
  c.grm.stop_after_scores = True  # End a sample at the `}` closing its \\boxed{..}.
  # Worked synthetic examples (spct_jax.data.synthetic.worked_judgement) shown before each prompt; each one
  # costs about 1k prompt tokens with Gemma's tokenizer. Untrained base models need one to answer in the
  # format at all (Gemma 3 270M: 100% parse failures without, 0% with one, though it tends to copy its scores).
  c.grm.num_demonstrations = 1
  c.grm.demo_seed = 1_000_003  # Synthetic stream of the demonstrations (kept apart from evaluated items).
  # Optional sampling filters (top_p sorts the whole vocabulary each step: slow on CPU). Typed placeholders so
  # command-line overrides (--config.grm.top_k=40) work.
  c.grm.top_k = ml_collections.config_dict.placeholder(int)
  c.grm.top_p = ml_collections.config_dict.placeholder(float)
  # Bytes per device a sampling call may plan for: the B x k rows run in row chunks that fit (None = half the
  # memory free at the call; spct_jax/sampling_memory.py). A row that cannot fit fails naming its item.
  c.grm.memory_budget_bytes = ml_collections.config_dict.placeholder(int)

  c.greedy = True  # Also run one greedy sample per item (the paper's "greedy" row).
  c.ks = (1, 2, 4)  # Voting@k over samples drawn at `temperature`.
  c.temperature = 0.5  # The paper's sampling temperature for inference-time scaling.
  # True: draw max(ks) samples once and vote over the first k for each k (consistent, k_max/sum(ks) of the cost);
  # False: an independent run per k.
  c.nested_k = True
  c.batch_size = 8  # Items per kernel call (rows = batch_size * k).

  c.output = ml_collections.ConfigDict()  # File names under the workdir (written by process 0 only).
  c.output.results = "results.json"
  c.output.plot = "accuracy_vs_k.png"
  c.output.samples = "samples.jsonl"  # Per-item texts and votes; "" = not written.
  c.progress = True  # tqdm bars.

  if "smoke" in variants:
    c.model.name = "tiny-gemma3"
    c.model.init = "random"
    c.model.tokenizer = "synthetic"
    c.model.compute_dtype = "float32"
    c.data.names = ("synthetic",)
    c.data.max_items = 4
    c.grm.max_new_tokens = 8
    c.grm.num_demonstrations = 0
    c.ks = (1, 2)
    c.batch_size = 4
  if "rmb_bon" in variants:
    c.data.names = ("rmb_bon",)
    c.model.max_seq_len = max(c.model.max_seq_len, 4096)  # Lists are long: median prompt ~2k Gemma tokens.
    c.batch_size = min(c.batch_size, 4)
  if "full" in variants:
    c.data.names = ALL_DATASETS
    c.data.max_items = 200
    c.grm.max_new_tokens = 512
    c.model.max_seq_len = 8192
    c.ks = (1, 2, 4, 8)
    c.batch_size = 16
    c.grm.num_demonstrations = 0  # Meant for trained GRMs (set model.name to the checkpoint): the paper's zero-shot.
  return c
