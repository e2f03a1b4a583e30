"""The evaluation experiment: GRM accuracy per dataset and category, greedy and with voting@k (spec sec. 5, 6).

`run(config, workdir)` (config: `configs/eval.py`) loads the model, reads a seeded slice of each dataset, scores it
with the `GRM` kernel (greedy once, then temperature sampling) and writes, on process 0 only and atomically:
  results.json        config, model, counts, timing and per dataset / run / category metrics (`metrics_io`).
  accuracy_vs_k.png   voting accuracy against k per dataset, greedy as a dashed line (`plotting`).
  samples.jsonl       per item and mode: generated texts, per-sample scores (original order), validity.
RMB best-of-N uses the same kernel with the whole list (n = 3..7) in one prompt; its protocol metric is `strict`.

Choices (config fields):
  * nested_k: max(ks) samples are drawn once and voting@k uses the first k, so k = 1 is one temperature-0.5
    sample (the paper's "k=1" row) and the ks are compared on the same samples. Samples cycle through
    `num_distinct_orders` shuffles, so a prefix sees the same orders an independent k-sample run would.
  * Items whose prompt + max_new_tokens exceeds model.max_seq_len are passed over while drawing the slice
    (counted as `skipped_too_long`); the slice is then sorted by prompt length so batches pad little.
  * Every process scores the same items (the model may be sharded over all devices); only process 0 writes.
Never imports TensorFlow: datasets come from `spct_jax.data.readers`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from spct_jax import experiment, metrics_io, plotting
from spct_jax.data import readers, schema, synthetic
from spct_jax.grm import GRM, templates

SYNTHETIC = "synthetic"
_LENGTH_MARGIN = 8  # Tokens of slack: shuffled orders can tokenize a little differently at block boundaries.


def dataset_names() -> list[str]:
  return sorted(readers.READERS) + [SYNTHETIC]


def check_names(names: Sequence[str]):
  unknown = [n for n in names if n not in dataset_names()]
  if unknown or not names:
    raise ValueError(f"unknown dataset name(s) {unknown} in config key data.names; valid: {dataset_names()}")


def _seed(*parts: int | str) -> int:
  """A 31-bit seed from ints and strings (strings by crc32: stable across runs, unlike hash())."""
  ints = [p if isinstance(p, int) else zlib.crc32(p.encode("utf-8")) for p in parts]
  return int(np.random.default_rng(ints).integers(2**31 - 1))


# ------------------------------------------------------------------------------------------------------------
# Model.


def synthetic_tokenizer(vocab_size: int = 1024, seed: int = 0):
  """A small sentencepiece vocabulary trained in memory on rendered synthetic GRM prompts (offline, < 1 s).

  Gemma's special ids (pad 0, eos 1, bos 2, unk 3) and chat markers; byte fallback so any text encodes.
  """
  import sentencepiece as spm
  from spct_jax.tokenizer import END_OF_TURN, START_OF_TURN, Tokenizer

  lines = []
  for item in synthetic.generate_items(48, seed=seed, num_responses=(2, 4)):
    judgement = synthetic.worked_judgement(item)
    lines += templates.render_demonstration(item.conversation, item.responses, **judgement).splitlines()
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([line for line in lines if line.strip()]), model_writer=buffer,
      vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      user_defined_symbols=[START_OF_TURN, END_OF_TURN], byte_fallback=True, hard_vocab_limit=False,
      character_coverage=1.0, num_threads=1, minloglevel=2)
  return Tokenizer(buffer.getvalue())


def build_model(config) -> tuple[Any, Any, dict[str, Any], Any]:
  """(model, tokenizer, description, mesh) for config.model / config.mesh."""
  m = config.model
  mesh = experiment.build_mesh(config)
  if m.init == "pretrained":
    from spct_jax.weights import load_model
    model, tokenizer = load_model(m.name, dtype=m.param_dtype, compute_dtype=m.compute_dtype, mesh=mesh,
                                  max_seq_len=m.max_seq_len)
    if tokenizer is None:
      raise ValueError(f"model {m.name!r} (config key model.name) has no tokenizer.model next to its weights")
  elif m.init == "random":
    from flax import nnx
    from spct_jax.model import config as model_config
    from spct_jax.model.transformer import Transformer
    if m.tokenizer == "synthetic":
      tokenizer = synthetic_tokenizer(seed=config.seed)
    else:
      from spct_jax.weights import load_tokenizer
      tokenizer = load_tokenizer(m.tokenizer)
    cfg = model_config.get_config(m.name, vocab_size=tokenizer.vocab_size, param_dtype=m.param_dtype,
                                  compute_dtype=m.compute_dtype, max_seq_len=m.max_seq_len)
    model = Transformer(cfg, rngs=nnx.Rngs(config.seed))
  else:
    raise ValueError(f"config key model.init must be 'pretrained' or 'random', got {m.init!r}")
  cfg = model.cfg
  description = {"name": m.name, "init": m.init, "family": cfg.family, "num_layers": cfg.num_layers,
                 "embed_dim": cfg.embed_dim, "vocab_size": cfg.vocab_size, "param_dtype": cfg.param_dtype,
                 "compute_dtype": cfg.compute_dtype, "max_seq_len": cfg.max_seq_len,
                 "tokenizer_vocab": tokenizer.vocab_size}
  return model, tokenizer, description, mesh


def grm_options(config) -> dict[str, Any]:
  """GRMOptions fields from config.grm; demonstrations are rendered from their own synthetic stream."""
  g = config.grm
  return dict(template=g.template, chat_style=g.chat_style, max_new_tokens=g.max_new_tokens,
              num_distinct_orders=g.num_distinct_orders, output_prefix=g.output_prefix,
              demonstrations=experiment.demonstrations(g.num_demonstrations, g.demo_seed, g.template),
              top_k=g.top_k, top_p=g.top_p, seed=config.seed,
              stop_after_scores=g.get("stop_after_scores", True), memory_budget_bytes=g.get("memory_budget_bytes"))


# ------------------------------------------------------------------------------------------------------------
# Data.


def data_root(config) -> Path:
  root = Path(os.path.expanduser(str(config.data.root)))
  if not root.is_dir():
    raise FileNotFoundError(f"data root {str(root)!r} does not exist; set config key data.root "
                            "(or the SPCT_DATA_ROOT environment variable) to the folder holding rmb/, llmbar/, ...")
  return root


def read_items(name: str, config) -> tuple[list[schema.PreferenceItem], dict[str, Any]]:
  """All items of dataset `name` and the reader's stats."""
  if name == SYNTHETIC:
    n = 4 * (config.data.max_items or 64)  # A pool to draw the stratified slice from.
    items = synthetic.generate_items(n, seed=config.data.seed, num_responses=config.data.synthetic_responses,
                                     difficulty=config.data.synthetic_difficulty)
    return items, {"records": n, "kept": n, "skipped": {}}
  result = readers.read_dataset(name, data_root(config), seed=config.data.seed)
  stats = result.stats
  return result.items, {"records": stats.records, "kept": stats.kept, "skipped": dict(stats.skipped)}


def seeded_order(items: Sequence[schema.PreferenceItem], seed: int, sampling: str) -> list[int]:
  """Indices in the order the slice draws them: seeded shuffle, then (stratified) round-robin over categories."""
  rng = np.random.default_rng(seed)
  order = [int(i) for i in rng.permutation(len(items))]
  if sampling == "uniform":
    return order
  if sampling != "stratified":
    raise ValueError(f"config key data.sampling must be 'stratified' or 'uniform', got {sampling!r}")
  queues: dict[str, list[int]] = {}
  for i in order:  # Categories enter in seeded order too.
    queues.setdefault(items[i].category, []).append(i)
  out, depth = [], 0
  while len(out) < len(items):
    out += [q[depth] for q in queues.values() if depth < len(q)]
    depth += 1
  return out


def select_items(items, config, prompt_length) -> tuple[list[schema.PreferenceItem], int]:
  """The slice: the first max_items of `seeded_order` that fit the context, sorted by prompt length."""
  limit = config.model.max_seq_len - config.grm.max_new_tokens - _LENGTH_MARGIN
  chosen, lengths, too_long = [], [], 0
  for i in seeded_order(items, config.data.seed, config.data.sampling):
    if config.data.max_items and len(chosen) == config.data.max_items:
      break
    length = prompt_length(items[i])
    if length > limit:
      too_long += 1
      continue
    chosen.append(items[i])
    lengths.append(length)
  order = np.argsort(lengths, kind="stable")
  return [chosen[i] for i in order], too_long


# ------------------------------------------------------------------------------------------------------------
# Scoring.


class MeasuredGRM(GRM):
  """A GRM that keeps the sampler's token count of every row it generated (EOS included) in `last_lengths`."""

  def generate_texts(self, prompts, strategy, seed):
    self.last_lengths = []
    return super().generate_texts(prompts, strategy, seed)

  def _decode(self, row, length):
    self.last_lengths.append(int(length))
    return super()._decode(row, length)


@dataclasses.dataclass
class Scored:
  """Scores of N items x k samples (responses padded to the dataset's largest n)."""

  sample_scores: np.ndarray  # int32[N, k, n] original order, 0 where invalid.
  valid: np.ndarray  # bool[N, k]
  perms: np.ndarray  # int32[N, k, n]
  response_mask: np.ndarray  # bool[N, n]
  ratings: np.ndarray  # f32[N, n]
  texts: list[list[str]]
  gen_tokens: np.ndarray | None  # f32[N, k]
  gen_chars: np.ndarray  # f32[N, k]
  seconds: float


def _batches(items, batch_size: int) -> list:
  return [items[i:i + batch_size] for i in range(0, len(items), batch_size)]


def _pad(array: np.ndarray, n: int) -> np.ndarray:
  return np.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, n - array.shape[-1])])


def score_items(grm: GRM, items: Sequence[schema.PreferenceItem], *, k: int, batch_size: int, seed: int,
                desc: str = "", progress: bool = False, tokenizer=None) -> Scored:
  """Runs the GRM kernel over `items` in batches, k samples each; a progress bar shows running accuracy."""
  n = max(item.num_responses for item in items)
  parts, texts, correct, lengths = [], [], [], []
  start = time.time()
  bar = tqdm(total=len(items), desc=desc, unit="item", disable=not progress, leave=True)
  for b, batch in enumerate(_batches(items, batch_size)):
    grm.last_lengths = None
    result = grm.score_batch(batch, k=k, seed=_seed(seed, b))
    lengths.append(grm.last_lengths)
    ratings = np.zeros((len(batch), n), np.float32)
    for i, item in enumerate(batch):
      ratings[i, :item.num_responses] = item.ratings
    mask = _pad(result.response_mask, n)
    parts.append((_pad(result.sample_scores, n), result.valid, _pad(result.perms, n), mask, ratings))
    texts += result.texts
    acc = metrics_io.item_metrics(_pad(result.voted, n), ratings, mask, result.valid, jax.random.key(0))
    correct += list(acc["accuracy_expected"])
    bar.update(len(batch))
    parsed = np.mean(np.concatenate([p[1].ravel() for p in parts]))
    bar.set_postfix(acc=f"{100 * np.mean(correct):.1f}%", parsed=f"{100 * parsed:.0f}%")
  bar.close()
  cat = lambda j: np.concatenate([p[j] for p in parts])
  # Lengths of what the model generated: the output prefix was part of the prompt.
  generated = [[t[len(grm.options.output_prefix):] for t in row] for row in texts]
  chars = np.asarray([[len(t) for t in row] for row in generated], np.float32)
  tokens = None
  if all(x is not None and len(x) == len(b) * k for x, b in zip(lengths, _batches(items, batch_size))):
    tokens = np.asarray(sum(lengths, []), np.float32).reshape(len(items), k)  # exact, from the sampler
  elif tokenizer is not None:  # A GRM that is not a MeasuredGRM: re-encode (approximate).
    tokens = np.asarray([[len(tokenizer.encode(t, add_bos=False)) for t in row] for row in generated], np.float32)
  return Scored(sample_scores=cat(0), valid=cat(1), perms=cat(2), response_mask=cat(3), ratings=cat(4),
                texts=texts, gen_tokens=tokens, gen_chars=chars, seconds=time.time() - start)


def run_metrics(scored: Scored, items: Sequence[schema.PreferenceItem], k: int, key: jax.Array) -> dict[str, Any]:
  """Aggregated metrics of voting over the first k samples of `scored`."""
  voted = metrics_io.prefix_vote(scored.sample_scores, scored.valid, k)
  per_item = metrics_io.item_metrics(
      voted, scored.ratings, scored.response_mask, scored.valid[:, :k], key,
      None if scored.gen_tokens is None else scored.gen_tokens[:, :k], scored.gen_chars[:, :k])
  return metrics_io.aggregate(per_item, [item.category for item in items], [item.subset for item in items])


def _sample_records(name: str, mode: str, items, scored: Scored) -> list[dict[str, Any]]:
  return [{"dataset": name, "mode": mode, "uid": item.uid, "category": item.category,
           "ratings": list(item.ratings), "perms": scored.perms[i, :, :item.num_responses].tolist(),
           "sample_scores": scored.sample_scores[i, :, :item.num_responses].tolist(),
           "valid": scored.valid[i].tolist(), "texts": scored.texts[i]} for i, item in enumerate(items)]


def evaluate_dataset(name: str, items, config, greedy_grm: GRM | None, sampled_grm: GRM, *, tokenizer=None,
                     progress: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Greedy and voting@k runs on one dataset: ({"runs", "timing"}, sample records)."""
  runs, timing, records = {}, {}, []
  common = dict(batch_size=config.batch_size, progress=progress, tokenizer=tokenizer)
  if config.greedy:
    scored = score_items(greedy_grm, items, k=1, seed=_seed(config.seed, name, "greedy"),
                         desc=f"{name} greedy k=1", **common)
    runs["greedy"] = {"k": 1, "temperature": 0.0,
                      **run_metrics(scored, items, 1, jax.random.key(_seed(config.seed, name, "greedy", 1)))}
    timing["greedy_s"] = scored.seconds
    records += _sample_records(name, "greedy", items, scored)
  ks = sorted(set(int(k) for k in config.ks))
  draws = ks[-1:] if config.nested_k else ks
  for draw in draws:
    scored = score_items(sampled_grm, items, k=draw, seed=_seed(config.seed, name, "sampled", draw),
                         desc=f"{name} T={config.temperature} k={draw}", **common)
    timing[f"sampled_k{draw}_s"] = scored.seconds
    records += _sample_records(name, f"sampled_k{draw}", items, scored)
    for k in (ks if config.nested_k else [draw]):
      key = jax.random.key(_seed(config.seed, name, "sampled", k))
      runs[f"k={k}"] = {"k": k, "temperature": config.temperature, "drawn": draw,
                        **run_metrics(scored, items, k, key)}
  return {"runs": runs, "timing": timing}, records


# ------------------------------------------------------------------------------------------------------------
# The experiment.


def run(config, workdir: str | os.PathLike) -> dict[str, Any]:
  """Evaluates config.model on config.data.names; returns (and on process 0 writes) the results dict."""
  start = time.time()
  names = list(config.data.names)
  check_names(names)
  if any(n != SYNTHETIC for n in names):
    data_root(config)  # Fail before the model loads.
  if not config.ks and not config.greedy:
    raise ValueError("nothing to evaluate: config.ks is empty and config.greedy is False")
  if any(int(k) < 1 for k in config.ks):
    raise ValueError(f"config key ks must hold k >= 1, got {tuple(config.ks)}")
  is_main = jax.process_index() == 0
  progress = bool(config.progress) and is_main

  model, tokenizer, model_info, mesh = build_model(config)
  load_s = time.time() - start
  options = grm_options(config)
  greedy_grm = MeasuredGRM(model, tokenizer, mesh=mesh, temperature=0.0, **options)
  sampled_grm = MeasuredGRM(model, tokenizer, mesh=mesh, temperature=float(config.temperature), **options)

  def prompt_length(item):
    prompt = templates.build_prompt(item.conversation, item.responses, template=options["template"],
                                    demonstrations=options["demonstrations"],
                                    output_prefix=options["output_prefix"], chat_style=options["chat_style"])
    return len(tokenizer.encode(prompt, add_bos=True))

  datasets, records = {}, []
  for name in names:
    read_start = time.time()
    pool, read_stats = read_items(name, config)
    items, too_long = select_items(pool, config, prompt_length)
    if not items:
      raise ValueError(f"dataset {name!r}: no item fits model.max_seq_len={config.model.max_seq_len} with "
                       f"grm.max_new_tokens={config.grm.max_new_tokens} ({too_long} too long)")
    read_s = time.time() - read_start
    result, recs = evaluate_dataset(name, items, config, greedy_grm, sampled_grm, tokenizer=tokenizer,
                                    progress=progress)
    n_hist = np.bincount([item.num_responses for item in items])
    datasets[name] = {
        "primary_metric": "strict" if name == "rmb_bon" else "accuracy",
        "counts": {"items": len(items), "pool": len(pool), "skipped_too_long": too_long,
                   "categories": len({item.category for item in items}),
                   "responses": {str(n): int(c) for n, c in enumerate(n_hist) if c}},
        "read_stats": read_stats,
        "uids": [item.uid for item in items],
        **result,
    }
    datasets[name]["timing"]["read_s"] = read_s
    records += recs

  results = metrics_io.jsonable({
      "experiment": config.experiment,
      "model": model_info,
      "config": config.to_dict(),
      "datasets": datasets,
      "timing": {"load_model_s": load_s, "total_s": time.time() - start},
      "process_count": jax.process_count(),
      "devices": [str(d) for d in jax.devices()][:8],
  })
  table = metrics_io.format_table(datasets)
  if is_main:
    workdir = Path(workdir)
    metrics_io.write_json(results, workdir / config.output.results)
    plotting.plot_accuracy_vs_k(datasets, workdir / config.output.plot, title=f"{model_info['name']} GRM")
    if config.output.samples:
      metrics_io.write_jsonl(metrics_io.jsonable(records), workdir / config.output.samples)
    print(table, flush=True)
    print(f"wrote {workdir / config.output.results} in {results['timing']['total_s']:.0f} s", flush=True)
  return results
