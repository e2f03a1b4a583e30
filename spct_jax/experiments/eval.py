"""`python -m spct_jax.main --config=configs/eval.py`: a GRM's accuracy per dataset and category (spec sec. 5, 6).

For each of `config.data.names`: a seeded (stratified) slice of `data.max_items` items that fit the context
(too-long ones are passed over and counted as `skipped_too_long`), scored by the voting evaluator
`config.evals.voting` (greedy once, then voting@k; `spct_jax.evaluators.voting`). With a meta RM
(`config.meta_rm.path`, a `meta_rm.save_meta_rm` folder such as a meta_rm run's `<workdir>/meta_rm`), every k
also gets metarm@k: the same max(ks) samples, each batch's B x k trajectories scored by the meta RM in one batched
call, Eq. 14 over the k_meta (`meta_rm.k_meta`; None: k // 2) with the highest logits. Process 0 writes, atomically:
  results.json        config, model, counts, timing and per dataset / run / category metrics: accuracy_strict
                      (Eq. 10), accuracy_tie_random (the paper's rule), accuracy_tie_expected, parse_rate, ...;
                      runs "greedy", "voting@<k>" and "metarm@<k>" per dataset
  accuracy_vs_k.png   voting@k and metarm@k accuracy against k per dataset, greedy as a dashed line (`plotting`).
  samples.jsonl       per item and run: generated texts, per-sample scores (original order), validity.
RMB best-of-N uses the same kernel with the whole list (n = 3..7) in one prompt; its protocol metric is
accuracy_strict. With RMB data, results["rmb"] also reports it as the benchmark does (`metrics.rmb_summary`): the
four cells {Helpfulness, Harmlessness} x {pairwise, best-of-N} and their mean, under the primary metrics ("paper")
and with ties wrong everywhere ("strict"). Every process scores the same items (the model may be sharded over all devices).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from spct_jax import evaluators as evaluators_lib
from spct_jax import files, meta_rm, multihost, plotting
from spct_jax.data import synthetic
from spct_jax.evaluators import metrics, position_swap
from spct_jax.experiments import common, selection, validation, workdir as workdir_lib

v = validation
RULES = (
    v.integer("seed"), v.boolean("progress"),
    v.one_of("model.init", ("pretrained", "random")), v.integer("model.max_seq_len", 16), v.string("model.name"),
    v.one_of("model.param_dtype", ("float32", "bfloat16")), v.one_of("model.compute_dtype", ("float32", "bfloat16")),
    v.integer("model.vocab_size", 1, optional=True),
    v.Rule("data.names", lambda names: isinstance(names, (tuple, list)) and bool(names) and all(
        n in selection.dataset_names() or str(n).endswith(".jsonl") for n in names),
           f"a non-empty tuple of dataset names from {selection.dataset_names()} or .jsonl files"),
    v.integer("data.max_items", 0), v.integer("data.seed"), v.one_of("data.sampling", ("stratified", "uniform")),
    v.int_or_range("data.num_responses", 1, synthetic.MAX_RESPONSES), v.subset_of("data.kinds", synthetic.KINDS),
    v.one_of("data.difficulty", synthetic.DIFFICULTIES),
    v.integer("grm.max_new_tokens", 1), v.integer("grm.num_demonstrations", 0), v.integer("grm.demo_seed"),
    v.number("grm.temperature", 0.0), v.integer("grm.top_k", 1, optional=True),
    v.number("grm.top_p", 0.0, strict=True, maximum=1.0, optional=True),
    v.one_of("grm.chat_style", ("raw", "gemma")), v.boolean("grm.stop_after_scores"),
    v.integer("grm.num_distinct_orders", 1, optional=True),
    *v.voting_eval("evals.voting"),
    v.Rule("evals.voting", lambda e: bool(e.ks) or bool(e.greedy), "greedy=True or a non-empty ks (else nothing "
           "is evaluated)"),
    v.string("output.results"), v.string("output.plot"), v.string("output.samples"),
    v.Rule("meta_rm", lambda m: hasattr(m, "keys"), "a ConfigDict of path, k_meta, batch_size"),
    v.Rule("meta_rm.path", lambda p: isinstance(p, str) and bool(p), "a meta RM folder (meta_rm.save_meta_rm), or "
           "None", optional=True),
    v.integer("meta_rm.k_meta", 1, optional=True), v.integer("meta_rm.batch_size", 1, optional=True),
)


def load_meta_scorer(config, mesh) -> tuple[Any, dict[str, Any]] | tuple[None, None]:
  """(meta scorer, description) of `config.meta_rm.path`, or (None, None) without one. The meta RM brings its own
  tokenizer and max length; its weights get config.model's dtypes."""
  m = config.meta_rm
  if not m.path:
    return None, None
  model, tokenizer = meta_rm.load_meta_rm(m.path, dtype=config.model.param_dtype,
                                          compute_dtype=config.model.compute_dtype, mesh=mesh)
  if tokenizer is None:
    raise ValueError(f"config.meta_rm.path={m.path!r} has no tokenizer.model (save_meta_rm(..., tokenizer=))")
  scorer = meta_rm.as_meta_scorer(model, tokenizer, max_rows=m.batch_size, mesh=mesh)
  return scorer, {"path": m.path, "k_meta": m.k_meta, "num_layers": model.cfg.num_layers,
                  "embed_dim": model.cfg.embed_dim, **dataclasses.asdict(model.config)}


def run(config, workdir) -> dict[str, Any]:
  """Evaluates config.model on config.data.names; returns (and on process 0 writes) the results dict."""
  start = time.time()
  validation.check(config, RULES)
  spec = config.evals.voting
  typed = evaluators_lib.spec_from_config(spec, "voting")  # fail on a bad evaluator entry before the model loads
  if config.meta_rm.path and not typed.ks:
    raise validation.ConfigError(f"config.meta_rm.path={config.meta_rm.path!r} needs sampled runs: "
                                 "config.evals.voting.ks is empty")
  if config.meta_rm.path:
    meta_rm.read_config(config.meta_rm.path)  # fail before the GRM loads
  names = list(config.data.names)
  if any(n != selection.SYNTHETIC and not n.endswith(".jsonl") for n in names):
    selection.data_root(config.data)  # fail before the model loads
  progress = bool(config.progress) and multihost.is_main_process()
  with workdir_lib.locked(workdir) as workdir:
    mesh = common.build_mesh(config)
    model, tokenizer = common.build_model(config.model, mesh)
    model_info = common.describe_model(model, tokenizer, config.model)
    meta_scorer, meta_info = load_meta_scorer(config, mesh)
    load_s = time.time() - start
    options = common.grm_options(config)
    budget = selection.ContextBudget(tokenizer, options, model.cfg.max_seq_len)
    samples = dict(spec, samples=bool(config.output.samples))

    datasets, records = {}, []
    for name in names:
      read_start = time.time()
      pool, read_stats = selection.read_items(name, config.data, pool=4 * (config.data.max_items or 64))
      items, too_long = selection.select_slice(pool, budget, seed=config.data.seed, sampling=config.data.sampling,
                                               max_items=config.data.max_items)
      if not items:
        raise ValueError(f"dataset {name!r}: no item fits model.max_seq_len={config.model.max_seq_len} with "
                         f"grm.max_new_tokens={config.grm.max_new_tokens} ({too_long} too long)")
      read_s = time.time() - read_start
      evaluator = evaluators_lib.from_config(samples, name=name, items=items, tokenizer=tokenizer, options=options,
                                             mesh=mesh, seed=config.seed, progress=progress, meta_rm=meta_scorer,
                                             k_meta=config.meta_rm.k_meta)
      result = evaluator.evaluate(model)
      n_hist = np.bincount([item.num_responses for item in items])
      datasets[name] = {
          "primary_metric": "accuracy_strict" if name == "rmb_bon" else "accuracy_tie_random",
          "counts": {"items": len(items), "pool": len(pool), "skipped_too_long": too_long,
                     "categories": len({item.category for item in items}),
                     "responses": {str(n): int(c) for n, c in enumerate(n_hist) if c}},
          "read_stats": read_stats,
          "uids": [item.uid for item in items],
          "runs": result.runs,
          "position_swap": result.position_swap,
          "timing": dict(result.timing, read_s=read_s),
      }
      records += result.records

    results = metrics.jsonable({
        "experiment": config.experiment,
        "model": model_info,
        "meta_rm": meta_info,
        "config": config.to_dict(),
        "datasets": datasets,
        "pooled": metrics.pooled(datasets),
        "timing": {"load_model_s": load_s, "total_s": time.time() - start},
        "process_count": jax.process_count(),
        "devices": [str(d) for d in jax.devices()][:8],
    })
    rmb = {"paper": metrics.rmb_summary(datasets), "strict": metrics.rmb_summary(
        datasets, pairwise_metric="accuracy_strict")}
    if rmb["paper"]:  # RMB as its benchmark reports it: {Helpfulness, Harmlessness} x {pairwise, best-of-N}
      results["rmb"] = metrics.jsonable(rmb)
    if multihost.is_main_process():
      files.write_json(results, workdir / config.output.results)
      plotting.plot_accuracy_vs_k(datasets, workdir / config.output.plot, title=f"{model_info['name']} GRM")
      if config.output.samples:
        files.write_jsonl(metrics.jsonable(records), workdir / config.output.samples)
      print(metrics.format_table(datasets), flush=True)
      for name, info in datasets.items():
        if info["position_swap"]:
          print(position_swap.format_line(name, info["position_swap"]), flush=True)
      if rmb["paper"]:
        print(metrics.format_rmb_table(rmb["paper"]), flush=True)
      print(f"wrote {workdir / config.output.results} in {results['timing']['total_s']:.0f} s", flush=True)
  return results
