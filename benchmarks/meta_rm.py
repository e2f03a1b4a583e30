"""Meta-RM cost per judged item beside the GRM sampling it filters, Gemma 3 270M on the CPU.

Usage:
  python benchmarks/meta_rm.py                 # 4 items x k=8 samples, 128 new tokens
  python benchmarks/meta_rm.py --quick         # smoke: 2 items x k=4, 16 new tokens
  python benchmarks/meta_rm.py --items 4 --k 8 --new-tokens 128 --markdown /tmp/meta_rm.md

Both phases run in this process on the real 270M backbone (`load_model("gemma3-270m")`), one after the other:
  1. GRM sampling: the B x k GRM prompts of `scorer.build_prompts` (synthetic items, `num_distinct_orders` response
     orders per item, temperature 0.5), one `sample_from_tokens` call; EOS disabled so every row generates exactly
     `--new-tokens` tokens.
  2. Meta-RM scoring: the B x k meta-RM inputs (each sample's shown order + its generated judgement) scored by
     `meta_rm.as_meta_scorer` in one batched forward (head random: the cost is the backbone's).
Each phase: the first call (compile included) and the best of `--reps` steady calls; per judged item = steady / B.
"""

from __future__ import annotations

import argparse

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)

NEVER_EOS = -1  # an id no sampler can produce: every row generates exactly the requested tokens


def run(args) -> list[str]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from spct_jax import meta_rm, sampler  # pylint: disable=g-import-not-at-top
  from spct_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from spct_jax.grm import scorer  # pylint: disable=g-import-not-at-top
  from spct_jax.weights import load_model  # pylint: disable=g-import-not-at-top

  header = common.machine_header("meta RM vs GRM sampling (Gemma 3 270M, CPU)")
  (model, tokenizer), load_s = common.timed(load_model, "gemma3-270m", compute_dtype=args.dtype)
  common.log(f"loaded gemma3-270m ({args.dtype} compute) in {load_s:.1f}s on {jax.devices()[0].platform}")
  items = synthetic.generate_items(args.items, seed=0, num_responses=2)
  options = scorer.GRMOptions(max_new_tokens=args.new_tokens, num_distinct_orders=args.orders)
  prompts, perms, _ = scorer.build_prompts(items, args.k, options, np.random.default_rng(0))
  encoded = [tokenizer.encode(p, add_bos=True) for p in prompts]

  def sample():
    out, *_ = sampler.sample_from_tokens(model, encoded, max_new_tokens=args.new_tokens,
                                         strategy=options.strategy(args.k), seed=0, eos_ids=(NEVER_EOS,),
                                         pad_id=tokenizer.pad_id)
    return jax.device_get(out)

  out, sample_first = common.timed(sample)
  if not (np.asarray(out.lengths) == args.new_tokens).all():
    raise RuntimeError(f"rows stopped early: {out.lengths}")
  sample_steady = min(common.timed(sample)[1] for _ in range(args.reps))
  common.log(f"GRM sampling: first {sample_first:.2f}s, steady {sample_steady:.2f}s")

  texts = [tokenizer.decode([int(t) for t in row[:n]]) for row, n in zip(out.tokens, out.lengths)]
  texts_2d = [texts[b * args.k:(b + 1) * args.k] for b in range(len(items))]
  meta = meta_rm.from_backbone(model, seed=0, init_std=1.0 / np.sqrt(model.cfg.embed_dim))
  score = meta_rm.as_meta_scorer(meta, tokenizer, max_rows=args.max_rows)
  inputs = score.inputs(items, texts_2d, perms)
  meta_tokens = [len(ids) for ids in meta_rm.encode(tokenizer, inputs, meta.max_length)]
  scored = lambda: score(items, texts_2d, perms)
  logits, meta_first = common.timed(scored)
  if not np.isfinite(logits).all():
    raise RuntimeError(f"non-finite meta-RM logits {logits}")
  meta_steady = min(common.timed(scored)[1] for _ in range(args.reps))
  common.log(f"meta-RM scoring: first {meta_first:.2f}s, steady {meta_steady:.2f}s")

  rows = len(prompts)
  prompt_tokens = np.mean([len(p) for p in encoded])
  table = common.markdown_table(
      ["phase", "rows", "tokens per row", "first call s", "steady s", "s per judged item", "vs sampling"],
      [["GRM sampling", rows, f"{prompt_tokens:.0f} prompt + {args.new_tokens} new", common.fmt(sample_first, 2),
        common.fmt(sample_steady, 2), common.fmt(sample_steady / len(items), 3), "1.00x"],
       ["meta-RM scoring", rows, f"{np.mean(meta_tokens):.0f} (max {max(meta_tokens)})", common.fmt(meta_first, 2),
        common.fmt(meta_steady, 2), common.fmt(meta_steady / len(items), 3), f"{meta_steady / sample_steady:.2f}x"]])
  note = (f"\n{len(items)} items x k={args.k}, {args.orders} response orders per item, {args.dtype} compute, "
          f"meta-RM rows per forward: {args.max_rows or 'all'}; model load {load_s:.1f}s. "
          "Sampling prefills each distinct prompt once and decodes k rows; the meta RM runs one full forward per "
          "trajectory (no cache shared between samples).")
  return [header, table, note]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="2 items x k=4, 16 new tokens, 1 rep")
  parser.add_argument("--items", type=int, default=4)
  parser.add_argument("--k", type=int, default=8)
  parser.add_argument("--new-tokens", type=int, default=128)
  parser.add_argument("--orders", type=int, default=2, help="distinct response orders per item")
  parser.add_argument("--dtype", default="bfloat16", help="compute dtype (parameters stay f32)")
  parser.add_argument("--max-rows", type=int, default=None, help="meta-RM rows per forward (default all)")
  parser.add_argument("--reps", type=int, default=2)
  parser.add_argument("--markdown", default=None, help="also write the report here")
  args = parser.parse_args()
  if args.quick:
    args.items, args.k, args.new_tokens, args.reps = 2, 4, 16, 1
  lines = run(args)
  common.print_report(lines, failed=[], targets="no target: the meta RM should cost a fraction of the sampling",
                      markdown=args.markdown)


if __name__ == "__main__":
  main()
