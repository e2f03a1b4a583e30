"""Eval benchmark: voting@8 items/s of the spct-jax GRM vs a judge built on HF transformers `generate`, Gemma 3 270M.

Usage:
  python benchmarks/eval_voting.py            # 4 items x k=8, 128 new tokens
  python benchmarks/eval_voting.py --quick    # 2 items x k=8, 16 new tokens
  python benchmarks/eval_voting.py --systems ours-bfloat16,hf-float32,hf-bfloat16

One eval call = the GRM kernel of `spct_jax.grm.scorer`: k=8 prompts per item (2 distinct response orders cycled
over the samples, the default `num_distinct_orders`), sampled at temperature 0.5 (the paper's setting for k > 1),
parsed, unshuffled and voted (Eq. 14). Items are seeded synthetic pairwise items (`spct_jax.data.synthetic`, seed
0, no data files needed). Both judges get the same prompt texts (`scorer.build_prompts` with the same seed), the
same token ids (our tokenizer) and the same parser and vote; every sample generates exactly `new_tokens` tokens
(ours: no EOS and no stop-after-scores; HF: `min_new_tokens`), so both do the same work. Ours is one
`GRM.score_batch` call (each distinct prompt prefilled once, its cache gathered to its 4 samples); the HF judge
calls `generate` once on the distinct prompts with `num_return_sequences=4` (sdpa attention, top_k=0, top_p=1).
Timed: best of 2 calls after a warm-up (ours compiles; HF: 2 new tokens), HF one call.

Roofline (benchmarks/machine.py, measured before and after the systems): prefill of the distinct prompts
(every weight read once, the prompts' FLOPs) plus one decode step per further token for all k x items rows,
each max(bytes / bandwidth, FLOPs / peak) with the step's weights and the KV cache of the mean context.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)
import machine as machine_lib  # pylint: disable=g-bad-import-order

K, ORDERS, TEMPERATURE, NEVER_EOS = 8, 2, 0.5, -1


def settings(quick: bool) -> dict:
  return dict(items=2 if quick else 4, new_tokens=16 if quick else 128, k=K, orders=ORDERS, reps=1 if quick else 2)


def _items(spec: dict):
  from spct_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  return synthetic.generate_items(spec["items"], seed=0)


def _prompts(spec: dict):
  """(prompt texts [items * k], perms, response mask): the scorer's own, from the same seed as ours uses."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from spct_jax.grm import scorer  # pylint: disable=g-import-not-at-top

  options = scorer.GRMOptions(num_distinct_orders=spec["orders"])
  return scorer.build_prompts(_items(spec), spec["k"], options, np.random.default_rng(0))


def _vote(spec: dict, texts: list[str], perms, mask) -> dict:
  """Parse and vote as `GRM.score_batch` does: the parse rate and voted accuracy (the better response on top)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from spct_jax.grm import scorer, voting  # pylint: disable=g-import-not-at-top

  items, k = _items(spec), spec["k"]
  template = scorer.GRMOptions().template
  shown, valid, _ = scorer.parse_texts(texts, np.repeat(mask.sum(1), k), perms.shape[2], template)
  voted = np.asarray(voting.vote_items(shown.reshape(len(items), k, -1), perms, valid.reshape(len(items), k)))
  best = [int(np.argmax(item.ratings)) for item in items]
  correct = [int(np.argmax(v[:len(item.responses)])) == b and (v == v.max()).sum() == 1
             for v, item, b in zip(voted, items, best)]
  return dict(parse_rate=float(valid.mean()), accuracy=float(np.mean(correct)))


def worker_ours(spec: dict, dtype: str) -> dict:
  from spct_jax.grm import scorer  # pylint: disable=g-import-not-at-top
  from spct_jax.model import decoding  # pylint: disable=g-import-not-at-top
  from spct_jax.weights import load_model  # pylint: disable=g-import-not-at-top

  class FixedLengthGRM(scorer.GRM):
    """Every sample generates exactly max_new_tokens: no EOS (and stop_after_scores=False; same work as the peer)."""
    eos_ids = (NEVER_EOS,)

  (model, tok), load_s = common.timed(load_model, "gemma3-270m", compute_dtype=dtype)
  grm = FixedLengthGRM(model, tok, max_new_tokens=spec["new_tokens"], temperature=TEMPERATURE,
                       num_distinct_orders=spec["orders"], stop_after_scores=False)
  items = _items(spec)
  run = lambda: grm.score_batch(items, k=spec["k"], seed=0)
  with common.PeakRSS() as mem:
    first, first_s = common.timed(run)
    times = [common.timed(run)[1] for _ in range(spec["reps"])]
  prompts, perms, mask = _prompts(spec)
  texts = [t for row in first.texts for t in row]
  common.log(f"  ours ({dtype}): first {first_s:.1f}s, timed {', '.join(f'{t:.1f}' for t in times)}s")
  votes = _vote(spec, texts, perms, mask)
  return dict(load_s=load_s, first_s=first_s, best_s=min(times), peak_rss_mib=mem.peak_mib, **votes,
              prompt_tokens=sorted(len(tok.encode(p, add_bos=True)) for p in set(prompts)),
              kernel=decoding.cpu_kernel_for(model.cfg) or "XLA dot",
              dtypes=f"{model.cfg.param_dtype} / {model.cfg.compute_dtype}")


def worker_hf(spec: dict, dtype: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  from spct_jax.weights import load_tokenizer  # pylint: disable=g-import-not-at-top

  tok = load_tokenizer("gemma3-270m")
  model, load_s = common.timed(common.hf_gemma3_270m, dtype)
  prompts, perms, mask = _prompts(spec)
  distinct = list(dict.fromkeys(prompts))  # first-seen order; each is shown to k / orders samples
  per_prompt = spec["k"] // spec["orders"]
  encoded = [tok.encode(p, add_bos=True) for p in distinct]
  length = max(len(e) for e in encoded)
  ids = torch.full((len(encoded), length), tok.pad_id, dtype=torch.long)
  attention = torch.zeros_like(ids)
  for i, e in enumerate(encoded):
    ids[i, length - len(e):], attention[i, length - len(e):] = torch.tensor(e), 1

  def judge(new_tokens):
    torch.manual_seed(0)
    with torch.inference_mode():
      out = model.generate(input_ids=ids, attention_mask=attention, do_sample=True, temperature=TEMPERATURE, top_k=0,
                           top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           num_return_sequences=per_prompt, pad_token_id=tok.pad_id)
    rows = {p: [tok.decode(r[length:].tolist()) for r in out[i * per_prompt:(i + 1) * per_prompt]]
            for i, p in enumerate(distinct)}
    taken = {p: 0 for p in distinct}
    texts = []
    for p in prompts:  # the scorer's row order: item-major, sample s shows order s % orders
      texts.append(rows[p][taken[p]])
      taken[p] += 1
    return _vote(spec, texts, perms, mask)

  with common.PeakRSS() as mem:
    _, first_s = common.timed(judge, 2)
    votes, best_s = common.timed(judge, spec["new_tokens"])
  common.log(f"  HF ({dtype}): warm-up {first_s:.1f}s, timed {best_s:.1f}s")
  return dict(load_s=load_s, first_s=first_s, best_s=best_s, peak_rss_mib=mem.peak_mib,
              prompt_tokens=sorted(len(e) for e in encoded), dtypes=f"{dtype} / {dtype}",
              torch_threads=torch.get_num_threads(), **votes)


SYSTEMS = {"ours-bfloat16": "ours bf16", "ours-float32": "ours f32", "hf-float32": "HF f32", "hf-bfloat16": "HF bf16"}


def roofline_s(machine: machine_lib.Machine, spec: dict, prompt_tokens: list[int], dtype: str) -> float:
  from spct_jax.model import get_config  # pylint: disable=g-import-not-at-top

  cfg, width = get_config("gemma3-270m"), 2 if dtype == "bfloat16" else 4
  rows, new = spec["items"] * spec["k"], spec["new_tokens"]
  mean_prompt = sum(prompt_tokens) / len(prompt_tokens)
  prefill = machine.roofline_s(sum(machine_lib.matmul_params(cfg)) * width,
                               machine_lib.prefill_flops(cfg, sum(prompt_tokens), int(mean_prompt)), dtype)
  step = machine_lib.decode_roofline_s(machine, cfg, rows, int(mean_prompt + new / 2), dtype, width)
  return prefill + (new - 1) * step


def report(results: dict, spec: dict, machine: machine_lib.Machine | None) -> str:
  names = [s for s in SYSTEMS if s in results]
  items = spec["items"]
  peers = [s for s in names if s.startswith("hf")]

  def row(label, fn):
    return [label] + [fn(results[s], s) for s in names]

  def fraction(r, s):
    if machine is None:
      return "n/a"
    roof = roofline_s(machine, spec, r["prompt_tokens"], "float32" if "float32" in s else "bfloat16")
    return f"{roof / r['best_s']:.2f} ({roof:.1f} of {r['best_s']:.1f} s)"

  rows = [row(f"items/s (voting@{spec['k']}, {spec['new_tokens']} new tokens)",
              lambda r, s: f"{items / r['best_s']:.3f}"),
          row("generated tok/s", lambda r, s: f"{items * spec['k'] * spec['new_tokens'] / r['best_s']:.1f}"),
          row("call time (s); first call", lambda r, s: f"{r['best_s']:.1f}; {r['first_s']:.1f}"),
          row("fraction of roofline (roofline of measured s)", fraction),
          row("parse rate; voted accuracy", lambda r, s: f"{r['parse_rate']:.2f}; {r['accuracy']:.2f}"),
          row("distinct prompt lengths (tokens)", lambda r, s: str(r["prompt_tokens"])),
          row("parameter / compute dtype", lambda r, s: r["dtypes"]),
          row("peak RSS during the calls (MiB)", lambda r, s: common.fmt(r["peak_rss_mib"], 0))]
  table = common.markdown_table(["eval call"] + [SYSTEMS[s] for s in names], rows)
  ratios = [f"- {SYSTEMS[o]} vs {SYSTEMS[p]}: "
            + common.ratio_cell(1 / results[o]["best_s"], 1 / results[p]["best_s"]) + " items/s"
            for o in names if o.startswith("ours") for p in peers]
  return "\n".join([table, "", *ratios])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="2 items, 16 new tokens")
  parser.add_argument("--systems", default="ours-bfloat16,hf-float32", help=f"comma list from {list(SYSTEMS)}")
  parser.add_argument("--json", help="also write the raw results here")
  parser.add_argument("--markdown", help="also write the final report here")
  common.add_worker_args(parser)
  args = parser.parse_args(argv)
  if args.worker:
    spec = json.loads(pathlib.Path(args.spec).read_text())
    if args.system == "machine":
      common.emit_result(machine_lib.worker_machine(spec))
      return
    kind, dtype = args.system.split("-")
    common.emit_result((worker_ours if kind == "ours" else worker_hf)(spec, dtype))
    return

  systems = common.parse_systems(parser, args.systems, SYSTEMS)
  header = common.machine_header(f"Eval benchmark, voting@{K} ({'quick' if args.quick else 'full'})")
  print(header)
  spec = dict(settings(args.quick), quick=args.quick)
  results, failed, machine, machines = machine_lib.run_systems(__file__, spec, systems,
                                                             timeout_s=args.worker_timeout)
  lines = [header]
  if machine:
    lines.append(f"Machine: {machine.describe()} ({machine_lib.spread(machines)}).\n")
  lines.append(report(results, spec, machine) if results else "no system ran")
  common.print_report(lines, failed=failed, markdown=args.markdown, targets="(no target set for the eval)")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(spec=spec, machine=machine and machine.to_json(),
                                                       results=results), indent=1))
  return 1 if failed else None


if __name__ == "__main__":
  sys.exit(main())
