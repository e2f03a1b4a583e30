"""Evaluation: a GRM's accuracy on preference benchmarks, greedy and with voting over k samples.

  python -m spct_jax.main --config=configs/eval.py                  # Gemma 3 270M on 8 RMB pairwise items
  python -m spct_jax.main --config=configs/eval.py:smoke            # tiny random model, synthetic items (CI)
  python -m spct_jax.main --config=configs/eval.py:rmb_bon          # RMB best-of-N
  python -m spct_jax.main --config=configs/eval.py:full --config.model.name=/path/to/trained_grm
  python -m spct_jax.main --config=configs/eval.py --config.meta_rm.path=runs/meta_rm/meta_rm   # + MetaRM@k

Variants (`get_config(arg)`, big_vision style; the part after ':'), combinable with commas (`smoke,rmb_bon`: the
smoke model on RMB best-of-N):
  (none)    Gemma 3 270M (the PyPI GGUF) on CPU: 8 RMB pairwise items, one worked demonstration, 128 new
            tokens, greedy + voting@1,2,4. Minutes on a 2-core CPU.
  smoke     tiny random Gemma 3 + a sentencepiece vocabulary trained at run time on the project's synthetic data;
            4 synthetic items, 8 new tokens: seconds, no downloads, no shared data (tests use it).
  rmb_bon   RMB best-of-N (best + 2..6 losers in one prompt; correct iff the best scores strictly highest).
  full      every dataset with a reader, 200 items each, 512 new tokens, voting up to k=8, zero-shot (for a
            trained GRM: set model.name): accelerator scale (GPU / TPU); on CPU expect hours.
With `meta_rm.path` (a meta_rm run's `<workdir>/meta_rm`) every k gets metarm@k beside voting@k, from the same
samples. Both accuracy rules are reported everywhere: accuracy_strict (Eq. 10, a tie is wrong) and accuracy_tie_random
(the paper's evaluation rule, ties broken at random), with accuracy_tie_expected and parse_rate.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("spct_configs_common", pathlib.Path(__file__).with_name("common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

VARIANTS = ("smoke", "rmb_bon", "full")
# Every dataset `spct_jax.data.readers.READERS` can read (synthetic needs no files).
ALL_DATASETS = ("rmb_pairwise", "rmb_bon", "llmbar", "hh_rlhf", "pandalm", "judgebench", "rm_bench", "auto_j")


def get_config(arg: str | None = None):
  """Returns the eval config; `arg` is a comma-separated list of variant names (see the module docstring)."""
  variants = common.parse_variants(arg, VARIANTS, "configs/eval.py")
  c = common.base("eval")

  # RMB pairwise prompts are ~1.2k Gemma tokens (median) plus ~1k per demonstration.
  c.model = common.model(max_seq_len=2560)
  # The model sharded over every device (fsdp; spct_jax.sharding.MeshConfig fields), used when more than one is
  # visible: a pod or GPU node scores each batch with all of its chips. None: one device per process.
  c.mesh = common.mesh()

  c.data = common.data()
  c.data.names = ("rmb_pairwise",)  # reader names (spct_jax.data.readers.READERS), "synthetic" or .jsonl files
  # Items per dataset (0 = all that fit the context). Default run, measured on 2 CPU cores shared with other
  # jobs: 8 items 8.6 min (greedy 2.5, k=4 sampling 6.0), 16 items 24 min. Time ~ items.
  c.data.max_items = 8
  # "stratified": round-robin over categories in seeded order (a small slice spans categories);
  # "uniform": a plain seeded random sample (category shares follow the dataset's).
  c.data.sampling = "stratified"

  # Gemma 3 270M: 100% parse failures without a demonstration, 0% with one (though it tends to copy its scores).
  # Voting samples at 0.5, the paper's temperature for inference-time scaling.
  c.grm = common.grm(num_demonstrations=1, demo_seed=1_000_003, temperature=0.5)

  c.evals = common.ml_collections.ConfigDict()
  # Run on each of data.names; position_swap: greedy with the best shown first and second (consistency).
  c.evals.voting = common.voting_eval(greedy=True, ks=(1, 2, 4), position_swap=True)

  c.meta_rm = common.ml_collections.ConfigDict()  # MetaRM@k beside Voting@k (spct_jax.meta_rm)
  c.meta_rm.path = common.config_dict.placeholder(str)  # a meta_rm.save_meta_rm folder; None = voting only
  c.meta_rm.k_meta = common.config_dict.placeholder(int)  # samples kept: None = k // 2 per k; m = min(m, k)
  c.meta_rm.batch_size = common.config_dict.placeholder(int)  # rows per meta-RM forward; None = a whole batch

  c.output = common.ml_collections.ConfigDict()  # file names under the workdir (written by process 0 only)
  c.output.results = "results.json"  # metrics, counts, timing and the config
  c.output.plot = "accuracy_vs_k.png"  # voting accuracy against k per dataset
  c.output.samples = "samples.jsonl"  # per-item texts and votes; "" = not written
  c.progress = True  # tqdm bars

  if "smoke" in variants:
    c.model = common.smoke_model(tokenizer="synthetic", max_seq_len=c.model.max_seq_len)
    c.data.names = ("synthetic",)
    c.data.max_items = 4
    c.grm.max_new_tokens = 8
    c.grm.num_demonstrations = 0
    c.evals.voting.ks = (1, 2)
    c.evals.voting.batch_size = 4
  if "rmb_bon" in variants:
    c.data.names = ("rmb_bon",)
    c.model.max_seq_len = max(c.model.max_seq_len, 4096)  # lists are long: median prompt ~2k Gemma tokens
    c.evals.voting.batch_size = min(c.evals.voting.batch_size, 4)
  if "full" in variants:
    c.data.names = ALL_DATASETS
    c.data.max_items = 200
    c.grm.max_new_tokens = 512
    c.model.max_seq_len = 8192
    c.evals.voting.ks = (1, 2, 4, 8)
    c.evals.voting.batch_size = 16
    c.grm.num_demonstrations = 0  # meant for trained GRMs (set model.name to the checkpoint): the paper's zero-shot
  return c
