"""RFT generation benchmark: `rft.generate_batch` vs HF `generate` for the same trajectories, Gemma 3 270M on CPU.

Usage:
  python benchmarks/rft_generate.py                  # 4 items x N_RFT=3 trajectories (+ hints) x 64 new tokens
  python benchmarks/rft_generate.py --items 8 --new-tokens 128 --systems ours-bfloat16,ours-float32,hf-float32

What is timed:
  ours  `rft.generate_batch(grm, items, n_rft, hinted=True)`, end to end: prompt building, tokenization, one
        batched sampling call for items x N_RFT (identical prompts share a prefill), parsing, Eq. 10, the hinted
        call for the items whose N_RFT trajectories were all wrong, records. First call (compile) and steady calls.
  HF    `model.generate` on exactly the prompts ours sampled (token ids from our tokenizer, left-padded), in the
        same two calls: the N_RFT x items rows, then the hinted rows. Generation only (no prompt building or
        parsing), so the comparison is generous to HF.
Both sample at the same temperature (top-k/top-p off) and generate exactly `--new-tokens` tokens per trajectory:
EOS and the stop-after-scores rule are off (ours: an EOS id that cannot occur; HF: min_new_tokens).
Items are the synthetic verifiable pairs (`spct_jax.data.synthetic`), the prompt the default template.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)

NEVER_EOS = -1  # an id no sampler can produce: generation never stops early
SYSTEMS = {"ours-bfloat16": "ours bf16", "ours-float32": "ours f32", "hf-float32": "HF f32", "hf-bfloat16": "HF bf16"}


def worker_ours(spec: dict, dtype: str) -> dict:
  from spct_jax import rft  # pylint: disable=g-import-not-at-top
  from spct_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from spct_jax.grm import GRM  # pylint: disable=g-import-not-at-top
  from spct_jax.weights import load_model  # pylint: disable=g-import-not-at-top

  class FixedLengthGRM(GRM):
    eos_ids = (NEVER_EOS,)  # every trajectory generates exactly max_new_tokens

  with common.PeakRSS() as mem:
    (model, tokenizer), load_s = common.timed(load_model, "gemma3-270m", compute_dtype=dtype)
  common.log(f"  ours ({dtype} compute) loaded in {load_s:.1f}s, {mem.peak_mib:.0f} MiB")
  grm = FixedLengthGRM(model, tokenizer, max_new_tokens=spec["new_tokens"], temperature=spec["temperature"],
                       stop_after_scores=False)
  items = synthetic.generate_items(spec["items"], seed=0)
  run = lambda: rft.generate_batch(grm, items, n_rft=spec["n_rft"], hinted=True, seed=0)
  with common.PeakRSS() as mem:
    (records, _), first_s = common.timed(run)
    times = [common.timed(run)[1] for _ in range(spec["reps"])]
  common.log(f"  ours: first {first_s:.1f}s, timed {', '.join(f'{t:.2f}' for t in times)}s")
  plain = [r.prompt for r in records if not r.hinted]
  hinted = [r.prompt for r in records if r.hinted]
  encode = lambda prompts: [tokenizer.encode(p, add_bos=True) for p in prompts]
  return dict(first_s=first_s, times_s=times, best_s=min(times), trajectories=len(records), hinted=len(hinted),
              kept=sum(r.kept for r in records), valid=sum(r.valid for r in records), peak_rss_mib=mem.peak_mib,
              load_s=load_s, prompts=[encode(plain), encode(hinted)], pad_id=tokenizer.pad_id,
              distinct_prompts=len(set(plain)) + len(set(hinted)))


def worker_hf(spec: dict, dtype: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  with common.PeakRSS() as mem:
    model, load_s = common.timed(common.hf_gemma3_270m, dtype)
  common.log(f"  HF ({dtype}) loaded in {load_s:.1f}s, {mem.peak_mib:.0f} MiB, torch threads {torch.get_num_threads()}")
  calls, pad_id, n_new = [c for c in spec["prompts"] if c], spec["pad_id"], spec["new_tokens"]

  def generate(prompts, new_tokens):
    ids, mask = common.torch_left_padded(prompts, pad_id)
    length = ids.shape[1]
    torch.manual_seed(0)
    with torch.inference_mode():
      out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=True, temperature=spec["temperature"], top_k=0, top_p=1.0, pad_token_id=pad_id)
    if out.shape != (len(prompts), length + new_tokens):
      raise RuntimeError(f"HF generated shape {tuple(out.shape)}")

  run = lambda new_tokens: [generate(prompts, new_tokens) for prompts in calls]
  with common.PeakRSS() as mem:
    first_s = common.timed(run, 2)[1]  # same batch shapes, 2 new tokens (nothing to compile)
    times = [common.timed(run, n_new)[1] for _ in range(spec["peer_reps"])]
  common.log(f"  HF: warm-up {first_s:.1f}s, timed {', '.join(f'{t:.2f}' for t in times)}s")
  return dict(first_s=first_s, times_s=times, best_s=min(times), trajectories=sum(len(c) for c in calls),
              peak_rss_mib=mem.peak_mib, load_s=load_s, torch_threads=torch.get_num_threads())


def report(results: dict[str, dict], spec: dict) -> str:
  names = [s for s in SYSTEMS if s in results]
  ours = results[next(s for s in names if s.startswith("ours"))]
  pairs = [(o, p) for o in names if o.startswith("ours") for p in names if p.startswith("hf")]
  headers = ["row"] + [SYSTEMS[s] for s in names] + [f"{SYSTEMS[o]} vs {SYSTEMS[p]}" for o, p in pairs]
  blank = ["" for _ in pairs]
  per_s = lambda s, what: results[s][what] / results[s]["best_s"]
  tokens = lambda s: results[s]["trajectories"] * spec["new_tokens"]
  speed = lambda label, fn: [label, *(common.fmt(fn(s), 2) for s in names),
                             *(common.ratio_cell(fn(o), fn(p)) for o, p in pairs)]
  prompt_lengths = [len(p) for call in ours["prompts"] for p in call]
  rows = [
      [f"trajectories ({spec['items']} items x N_RFT={spec['n_rft']} + hinted)"]
      + [f"{results[s]['trajectories']}" + (f" ({results[s]['hinted']} hinted)" if "hinted" in results[s] else "")
         for s in names] + blank,
      speed("trajectories / s (steady)", lambda s: per_s(s, "trajectories")),
      speed(f"generated tokens / s ({spec['new_tokens']} per trajectory)", lambda s: tokens(s) / results[s]["best_s"]),
      ["steady wall time (s), best of the timed calls"] + [f"{results[s]['best_s']:.2f}" for s in names] + blank,
      ["first call (s): ours compile + run; HF 2-token warm-up"] + [f"{results[s]['first_s']:.1f}" for s in names]
      + blank,
      ["peak RSS during generation (MiB)"] + [common.fmt(results[s]["peak_rss_mib"], 0) for s in names] + blank,
  ]
  notes = (f"\nPrompts: {len(prompt_lengths)} ({ours['distinct_prompts']} distinct: samples sharing an order share "
           f"ours' prefill), {min(prompt_lengths)}-{max(prompt_lengths)} tokens; temperature {spec['temperature']}; "
           f"ours' records: {ours['valid']} parsed, {ours['kept']} kept (EOS and the stop rule off).")
  return common.markdown_table(headers, rows) + "\n" + notes


def main(argv: list[str] | None = None) -> int | None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--items", type=int, default=4)
  parser.add_argument("--n-rft", type=int, default=3)
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--reps", type=int, default=2, help="timed calls of ours after the first")
  parser.add_argument("--peer-reps", type=int, default=1, help="timed calls of HF after the warm-up")
  parser.add_argument("--systems", default="ours-bfloat16,hf-float32", help=f"comma list from {list(SYSTEMS)}")
  parser.add_argument("--json", help="also write the raw results here")
  parser.add_argument("--markdown", help="also write the final report here")
  common.add_worker_args(parser)
  args = parser.parse_args(argv)

  if args.worker:
    spec = json.loads(pathlib.Path(args.spec).read_text())
    kind, dtype = args.system.split("-")
    common.emit_result(dict((worker_ours if kind == "ours" else worker_hf)(spec, dtype), system=args.system))
    return None

  systems = common.parse_systems(parser, args.systems, SYSTEMS)
  if not any(s.startswith("ours") for s in systems):
    parser.error("the HF systems replay the prompts an `ours-*` system sampled: name one")
  systems.sort(key=lambda s: not s.startswith("ours"))
  header = common.machine_header("RFT generation benchmark")
  print(header)
  busy = common.busy_processes()
  spec = dict(items=args.items, n_rft=args.n_rft, new_tokens=args.new_tokens, temperature=args.temperature,
              reps=args.reps, peer_reps=args.peer_reps)
  results, failed = {}, []
  with tempfile.TemporaryDirectory() as tmp:
    spec_path = pathlib.Path(tmp) / "spec.json"
    for system in systems:
      spec_path.write_text(json.dumps(spec))
      common.log(f"{system} ...")
      try:
        results[system] = common.run_worker(__file__, ["--system", system, "--spec", str(spec_path)],
                                            timeout_s=args.worker_timeout, env={"JAX_PLATFORMS": "cpu"})
      except RuntimeError as e:  # Report the systems that did run.
        common.log(f"{system} FAILED: {e}")
        failed.append(system)
        continue
      if system.startswith("ours") and "prompts" not in spec:  # the peers replay the first ours' prompts
        spec.update(prompts=results[system]["prompts"], pad_id=results[system]["pad_id"])
  lines = [header]
  if busy:
    lines.append("Other busy processes at start: " + "; ".join(busy) + "\n")
  if any(s.startswith("ours") for s in results):
    lines.append(report(results, spec))
  common.print_report(lines, failed=failed, markdown=args.markdown, targets="no target set (first measurement)")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
        dict(spec={k: v for k, v in spec.items() if k != "prompts"},
             results={s: {k: v for k, v in r.items() if k != "prompts"} for s, r in results.items()}), indent=1))
  return 1 if failed else None


if __name__ == "__main__":
  sys.exit(main())
