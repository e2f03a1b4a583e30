"""Sampler benchmark: spct-jax KV-cache sampling vs HF transformers `generate`, Gemma 3 270M on CPU.

Usage:
  python benchmarks/sampler.py            # full: 64 new tokens, ~1000-token prompt for prefill sharing
  python benchmarks/sampler.py --quick    # smoke: 16 new tokens, ~256-token prompt
  python benchmarks/sampler.py --device gpu --random-weights --tokenizer .bench_assets/tokenizer.model \
      --systems ours-bfloat16,hf-bfloat16  # GPU, seeded random weights (see gpu_common.py, gpu.sh)

Rows (each system in its own subprocess, run one after another, after a worker that measures the machine:
benchmarks/machine.py):
  1. batch-1 greedy decode tok/s (~20-token prompt), compile time (first call minus a steady call) separately;
     decode only: ms per token from the difference of calls with 64 and 8 new tokens, and its fraction of the
     roofline (the step's weight and KV-cache bytes / measured read bandwidth).
  2. 4 prompts x k=8 samples at temperature 1.0: generated tok/s over all 32 rows; decode only: ms per 32-row
     step and its fraction of the roofline, max(bytes / bandwidth, FLOPs / measured GEMM peak).
  3. prefill sharing: time(k=8) / time(k=1) for one long prompt (ours prefills once and gathers the cache to k
     rows; HF expands the prompt to k rows and prefills each).
  4. peak RSS per phase (sampled) and of the whole worker process.
Both systems get the same token ids; EOS is disabled (ours: an id that never occurs, HF: min_new_tokens), so every
row generates exactly the requested number of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)
import gpu_common  # pylint: disable=g-bad-import-order
import machine as machine_lib  # pylint: disable=g-bad-import-order

SHORT_TEXTS = [
    "The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz began to",
    "In a small village at the foot of the mountains, the baker woke up before dawn every morning and",
    "Photosynthesis is the process by which green plants and some bacteria use sunlight, water and carbon dioxide to",
    "The committee met on Tuesday to discuss the new budget, and after a long debate the chair decided",
]
LONG_SENTENCES = [
    "The river that runs through the old town has been dredged many times since the mill was built.",
    "Each spring the farmers argue about the water rights, and each autumn they forget the argument.",
    "A visiting engineer once proposed a canal, but the council preferred to spend the money on a bridge.",
    "The bridge still stands, although its stones have been replaced one by one over two hundred years.",
    "Children learn the names of the stones at school, a tradition nobody can quite explain anymore.",
]
NEVER_EOS = -1  # an id no sampler can produce: generation never stops early


def settings(quick: bool, device: str = "cpu") -> dict:
  # base_new: the shorter call whose time is subtracted for decode-only figures.
  if quick:
    return dict(short_len=20, greedy_new=16, sample_new=16, base_new=4, long_len=256, share_new=16, k=8, reps=2,
                peer_reps=1)
  if device == "gpu":  # Every call takes seconds at most on a GPU: more timed runs, same shapes.
    return dict(short_len=20, greedy_new=64, sample_new=64, base_new=8, long_len=1000, share_new=64, k=8, reps=5,
                peer_reps=3)
  # Timed runs per row after the warm-up: ours is quick, HF rows 2-3 take minutes (row 1 is always timed twice).
  return dict(short_len=20, greedy_new=64, sample_new=64, base_new=8, long_len=1000, share_new=64, k=8, reps=3,
              peer_reps=1)


def make_prompts(quick: bool, device: str = "cpu", tokenizer: str | None = None, random_ids: bool = False) -> dict:
  """Token ids (with BOS): 4 short prompts of exactly `short_len`, one long prompt.

  From our tokenizer (`tokenizer`, default the GGUF's), or seeded random ids when `random_ids` (no tokenizer).
  """
  cfg = settings(quick, device)
  if random_ids:
    ids = gpu_common.random_prompts(0, [cfg["short_len"]] * len(SHORT_TEXTS) + [cfg["long_len"]])
    return dict(cfg, short=ids[:-1], long=ids[-1], pad_id=gpu_common.PAD_ID, prompts="random ids (seed 0)")
  tok = gpu_common.our_tokenizer(tokenizer or "gemma3-270m")
  short = [tok.encode(t, add_bos=True)[:cfg["short_len"]] for t in SHORT_TEXTS]
  if any(len(s) < cfg["short_len"] for s in short):
    raise ValueError("a short prompt text is shorter than short_len tokens")
  long_text, i = "", 0
  while len(tok.encode(long_text, add_bos=True)) < cfg["long_len"]:
    long_text += f"{i + 1}. " + LONG_SENTENCES[i % len(LONG_SENTENCES)] + " "
    i += 1
  long = tok.encode(long_text, add_bos=True)[:cfg["long_len"]]
  return dict(cfg, short=short, long=long, pad_id=tok.pad_id, prompts="text")


# ---------------------------------------------------------------------------------------------------------------
# Workers.


def _phases(spec: dict, run, warmup, reps: int, gpu_peak=lambda: None) -> dict:
  """Runs the benchmark rows with `run(prompts, n_new, k, sample) -> None` (blocks until done).

  `warmup(prompts, n_new, k, sample) -> seconds` is the untimed first call with the row's shapes; `gpu_peak()` the
  process's GPU memory high-water mark (MiB) so far, or None.
  """
  k = spec["k"]
  phases = {}

  def measure(name, prompts, n_new, num, sample, reps=reps):
    with common.PeakRSS() as mem:
      first = warmup(prompts, n_new, num, sample)
      times = [common.timed(run, prompts, n_new, num, sample)[1] for _ in range(reps)]
    tokens = len(prompts) * num * n_new
    phases[name] = dict(first_s=first, times_s=times, best_s=min(times), tokens=tokens,
                        tok_per_s=tokens / min(times), peak_rss_mib=mem.peak_mib, peak_gpu_mib=gpu_peak())
    common.log(f"  {name}: first {first:.2f}s, timed {', '.join(f'{t:.2f}' for t in times)}s, "
               f"{tokens / min(times):.1f} tok/s, peak RSS {mem.peak_mib:.0f} MiB")

  measure("greedy_b1", spec["short"][:1], spec["greedy_new"], 1, False, max(reps, 2))
  measure("greedy_b1_base", spec["short"][:1], spec["base_new"], 1, False, max(reps, 2))
  measure("sample_4x8", spec["short"], spec["sample_new"], k, True)
  measure("sample_4x8_base", spec["short"], spec["base_new"], k, True, max(reps, 2))
  measure("share_k1", [spec["long"]], spec["share_new"], 1, True)
  measure(f"share_k{k}", [spec["long"]], spec["share_new"], k, True)
  return phases


def worker_ours(spec: dict, dtype: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from spct_jax import sampler, strategies  # pylint: disable=g-import-not-at-top
  from spct_jax.kernels import cpu_matvec  # pylint: disable=g-import-not-at-top
  from spct_jax.model import decoding  # pylint: disable=g-import-not-at-top
  from spct_jax.weights import load_model  # pylint: disable=g-import-not-at-top

  device = spec.get("device", "cpu")
  with common.PeakRSS() as mem:
    (model, _), load_s = common.timed(load_model, spec.get("model") or "gemma3-270m", compute_dtype=dtype)
  device_name = gpu_common.check_jax(device)
  common.log(f"  ours ({dtype} compute) loaded in {load_s:.1f}s, {mem.peak_mib:.0f} MiB, on {device_name}")

  def run(prompts, n_new, k, sample):
    strategy = strategies.Sampling(temperature=1.0) if sample else strategies.Greedy()
    out, *_ = sampler.sample_from_tokens(model, prompts, max_new_tokens=n_new, num_samples=k, strategy=strategy,
                                         seed=0, eos_ids=(NEVER_EOS,), pad_id=spec["pad_id"])
    if device == "gpu":
      jax.block_until_ready(out)
    lengths = np.asarray(jax.device_get(out.lengths))
    if not (lengths == n_new).all():
      raise RuntimeError(f"rows stopped early: {lengths}")

  def warmup(*args):  # jit compiles per shape: the first call with the row's exact shapes compiles
    return common.timed(run, *args)[1]

  gpu_peak = gpu_common.jax_peak_mib if device == "gpu" else lambda: None
  load_gpu_mib = gpu_peak()
  phases = _phases(spec, run, warmup, spec["reps"], gpu_peak)
  kernel = decoding.cpu_kernel_for(model.cfg)
  matmuls = {"amx": f"AMX kernel (<= {cpu_matvec.AMX_MAX_ROWS} rows)",
             "skinny": f"skinny kernel (<= {cpu_matvec.max_rows()} rows)"}
  return dict(system=f"ours-{dtype}", load_s=load_s, load_peak_rss_mib=mem.peak_mib, phases=phases,
              device_name=device_name, load_peak_gpu_mib=load_gpu_mib, decode_matmuls=matmuls.get(kernel, "XLA dot"),
              dtypes=f"{model.cfg.param_dtype} / {model.cfg.compute_dtype}")


def worker_hf(spec: dict, dtype: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  dev = gpu_common.torch_device(spec.get("device", "cpu"))
  with common.PeakRSS() as mem:
    if spec.get("model"):  # --random-weights: the exported folder
      model, load_s = common.timed(gpu_common.hf_model, spec["model"], dtype)
    else:
      model, load_s = common.timed(common.hf_gemma3_270m, dtype)
    if dev != "cpu":  # The load time includes the copy to the GPU.
      model, seconds = common.timed(lambda m=model: m.to(dev))
      gpu_common.torch_sync(dev)
      load_s += seconds
  common.log(f"  HF ({dtype}) loaded in {load_s:.1f}s, {mem.peak_mib:.0f} MiB, torch threads "
             f"{torch.get_num_threads()}, on {gpu_common.torch_device_name(dev)}")
  pad_id = spec["pad_id"]
  load_gpu_mib = gpu_common.torch_peak_mib(dev)

  def run(prompts, n_new, k, sample):
    ids, mask = common.torch_left_padded(prompts, pad_id)
    length = ids.shape[1]
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=sample, num_return_sequences=k,
              pad_token_id=pad_id)
    if sample:
      kw.update(temperature=1.0, top_k=0, top_p=1.0)
    torch.manual_seed(0)
    with torch.inference_mode():
      out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), **kw)
    gpu_common.torch_sync(dev)
    if out.shape != (len(prompts) * k, length + n_new):
      raise RuntimeError(f"HF generated shape {tuple(out.shape)}")

  def warmup(prompts, n_new, k, sample):  # same batch and prompt shapes, 2 new tokens (no compile to amortise)
    return common.timed(run, prompts, min(n_new, 2), k, sample)[1]

  phases = _phases(spec, run, warmup, spec["peer_reps"], lambda: gpu_common.torch_peak_mib(dev))
  return dict(system=f"hf-{dtype}", load_s=load_s, load_peak_rss_mib=mem.peak_mib, phases=phases,
              torch_threads=torch.get_num_threads(), torch_version=torch.__version__,
              device_name=gpu_common.torch_device_name(dev), load_peak_gpu_mib=load_gpu_mib,
              dtypes=f"{dtype} / {dtype}")


# ---------------------------------------------------------------------------------------------------------------
# Report.

# ours-bfloat16-xla: the same as ours-bfloat16 with the CPU decoding kernels switched off (SPCT_CPU_KERNELS=off),
# so the table shows what they add over XLA's own bf16 dot; ours-bfloat16-noamx (not in the default list): the skinny
# kernel without the AMX ones (SPCT_CPU_KERNELS=no-amx), what a CPU without AMX runs.
SYSTEMS = {"ours-bfloat16": "ours bf16", "ours-bfloat16-noamx": "ours bf16, no AMX",
           "ours-bfloat16-xla": "ours bf16, XLA dots", "ours-float32": "ours f32", "hf-float32": "HF f32",
           "hf-bfloat16": "HF bf16"}
DEFAULT_SYSTEMS = [s for s in SYSTEMS if s != "ours-bfloat16-noamx"]
KERNEL_SWITCH = {"xla": "off", "noamx": "no-amx"}  # system variant -> SPCT_CPU_KERNELS


def rooflines(machine: machine_lib.Machine, spec: dict, dtype: str) -> dict[str, float]:
  """Least seconds for rows 1 and 2 with `dtype` weights and matmuls: a decode step (at the mean context length) and
  the whole call (prefill, which reads every weight once too, then every step but the first)."""
  from spct_jax.model import get_config  # pylint: disable=g-import-not-at-top

  cfg, width = get_config("gemma3-270m"), 2 if dtype == "bfloat16" else 4
  out = {}
  for row, prompts, rows, new in (("greedy_b1", 1, 1, spec["greedy_new"]),
                                  ("sample_4x8", len(spec["short"]), len(spec["short"]) * spec["k"],
                                   spec["sample_new"])):
    context = spec["short_len"] + (new + spec["base_new"]) // 2
    step = machine_lib.decode_roofline_s(machine, cfg, rows, context, dtype, cache_bytes=width)
    weights = sum(machine_lib.matmul_params(cfg)) * width
    prefill = machine.roofline_s(weights, machine_lib.prefill_flops(cfg, prompts * spec["short_len"],
                                                                     spec["short_len"]), dtype)
    out[row], out[row + "_call"] = step, prefill + (new - 1) * step
  return out


def report(results: dict[str, dict], spec: dict, machine: machine_lib.Machine | None) -> str:
  names = [s for s in SYSTEMS if s in results]
  ph = lambda s, p: results[s]["phases"][p]
  k = spec["k"]
  roofs = {s: rooflines(machine, spec, "float32" if "float32" in s else "bfloat16") for s in names} if machine else {}

  def decode_step_s(s, phase):
    new = spec["greedy_new" if phase == "greedy_b1" else "sample_new"]
    return (ph(s, phase)["best_s"] - ph(s, phase + "_base")["best_s"]) / (new - spec["base_new"])

  def fraction_rows(phase, what):
    if not roofs:
      return []
    return [[f"   decode only: ms per {what} (fraction of roofline)"]
            + [f"{decode_step_s(s, phase) * 1e3:.1f} ({roofs[s][phase] / decode_step_s(s, phase):.2f})"
               for s in names] + blank,
            ["   whole call: fraction of roofline (roofline s)"]
            + [f"{roofs[s][phase + '_call'] / ph(s, phase)['best_s']:.2f} ({roofs[s][phase + '_call']:.2f})"
               for s in names] + blank]
  pairs = [(o, p) for o in names if o.startswith("ours") for p in names if p.startswith("hf")]
  headers = ["row"] + [SYSTEMS[s] for s in names] + [f"{SYSTEMS[o]} vs {SYSTEMS[p]}" for o, p in pairs]
  blank = ["" for _ in pairs]

  def speed_row(label, phase, target):
    cells = [common.fmt(ph(s, phase)["tok_per_s"]) for s in names]
    return [label, *cells, *(common.ratio_cell(ph(o, phase)["tok_per_s"], ph(p, phase)["tok_per_s"], target)
                             for o, p in pairs)]

  def share(s):
    return ph(s, f"share_k{k}")["best_s"] / ph(s, "share_k1")["best_s"]

  def compile_cell(s, phase):
    return f"{ph(s, phase)['first_s'] - ph(s, phase)['best_s']:.1f}"

  rows = [
      speed_row(f"1. batch-1 greedy, {spec['short_len']}-token prompt, {spec['greedy_new']} new (tok/s)",
                "greedy_b1", 3),
      ["   first call (s) = compile + run; steady (s)"]
      + [f"{ph(s, 'greedy_b1')['first_s']:.1f}; {ph(s, 'greedy_b1')['best_s']:.2f}" for s in names] + blank,
      *fraction_rows("greedy_b1", "token"),
      speed_row(f"2. 4 prompts x k={k} sampled, T=1.0, {spec['sample_new']} new (tok/s)", "sample_4x8", 4),
      *fraction_rows("sample_4x8", f"step of {len(spec['short']) * k} rows"),
      [f"3. sharing, {spec['long_len']}-token prompt, {spec['share_new']} new: time k=1 / k={k} (s)"]
      + [f"{ph(s, 'share_k1')['best_s']:.2f} / {ph(s, f'share_k{k}')['best_s']:.2f}" for s in names] + blank,
      [f"   ratio time(k={k}) / time(k=1), target <= 2.5"] + [f"{share(s):.2f}" for s in names]
      + [f"{share(o):.2f} vs {share(p):.2f} ({'met' if share(o) <= 2.5 else 'NOT met'})" for o, p in pairs],
      ["   compile (s), first call minus steady: row 1 / row 2 / row 3 k=1 / k=8"]
      + [" / ".join(compile_cell(s, p) for p in ("greedy_b1", "sample_4x8", "share_k1", f"share_k{k}"))
         if s.startswith("ours") else "-" for s in names] + blank,
      ["   parameter / compute dtype"] + [results[s].get("dtypes", "?") for s in names] + blank,
      ["   decode matmuls"] + [results[s].get("decode_matmuls", "-") for s in names] + blank,
      ["4. peak RSS after load (MiB)"] + [common.fmt(results[s]["load_peak_rss_mib"], 0) for s in names] + blank,
  ]
  for phase, label in (("greedy_b1", "row 1"), ("sample_4x8", "row 2"), ("share_k1", "row 3 k=1"),
                       (f"share_k{k}", f"row 3 k={k}")):
    rows.append([f"   peak RSS during {label} (MiB)"]
                + [common.fmt(ph(s, phase)["peak_rss_mib"], 0) for s in names] + blank)
  rows.append(["   process ru_maxrss (MiB)"] + [common.fmt(results[s]["child_max_rss_mib"], 0) for s in names] + blank)
  if spec.get("device") == "gpu":  # High-water marks of the whole process so far (JAX's cannot be reset).
    rows.append(["5. peak GPU memory after load (MiB)"]
                + [common.fmt(results[s].get("load_peak_gpu_mib"), 0) for s in names] + blank)
    for phase, label in (("greedy_b1", "row 1"), ("sample_4x8", "row 2"), ("share_k1", "row 3 k=1"),
                         (f"share_k{k}", f"row 3 k={k}")):
      rows.append([f"   peak GPU memory up to the end of {label} (MiB)"]
                  + [common.fmt(ph(s, phase).get("peak_gpu_mib"), 0) for s in names] + blank)
    rows.append(["   device"] + [results[s].get("device_name", "?") for s in names] + blank)
  return common.markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="short smoke run (16 new tokens, 256-token long prompt)")
  parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"comma list from {list(SYSTEMS)}")
  gpu_common.add_run_args(parser, peer="HF", without_tokenizer="prompts are random ids unless --tokenizer is given")
  args = parser.parse_args(argv)

  if args.worker:
    spec = json.loads(pathlib.Path(args.spec).read_text())
    if args.system == "machine":
      common.emit_result(machine_lib.worker_machine(spec))
      return
    kind, dtype, *variant = args.system.split("-")
    if variant:  # read by spct_jax.kernels.cpu_matvec.enabled() / amx() at each call
      os.environ["SPCT_CPU_KERNELS"] = KERNEL_SWITCH[variant[0]]
    result = (worker_ours if kind == "ours" else worker_hf)(spec, dtype)
    common.emit_result(dict(result, system=args.system))
    return

  systems = common.parse_systems(parser, args.systems, SYSTEMS)
  header = gpu_common.header(f"Sampler benchmark ({'quick' if args.quick else 'full'})", args.device)
  print(header)
  busy = common.busy_processes()
  spec = make_prompts(args.quick, args.device, args.tokenizer, random_ids=args.random_weights and not args.tokenizer)
  spec["device"] = args.device
  if args.random_weights:  # Prompts are ids already: no HF tokenizer needed here.
    spec["model"] = str(gpu_common.ensure_random_folder(0, None))
  spec["quick"], spec["peak_n"] = args.quick, gpu_common.matmul_peak_shape(args.device)[0]
  results, failed, machine, machines = machine_lib.run_systems(__file__, spec, systems,
                                                             timeout_s=args.worker_timeout, env=gpu_common.worker_env(args.device))
  lines = [header]
  if machine:
    lines.append(f"Machine: {machine.describe()} ({machine_lib.spread(machines)}). Roofline: a decode step's "
                 "matmul weights and KV cache read once (machine.decode_step_cost) at the measured read bandwidth, "
                 "or its FLOPs at the measured GEMM peak if longer; for the whole call, plus the prefill (every "
                 "weight read once, its FLOPs).\n")
  if busy:
    lines.append("Other busy processes at start: " + "; ".join(busy) + "\n")
  if args.random_weights:
    lines.append(f"Weights: seeded random (seed 0) Gemma 3 270M architecture, {spec['model']}; prompts: "
                 f"{spec['prompts']}.\n")
  if results:
    lines.append(report(results, spec, machine))
  else:
    lines.append(json.dumps(results, indent=1))
  common.print_report(lines, failed=failed, markdown=args.markdown,
                      targets="targets: row 1 >= 3x HF, row 2 >= 4x HF, row 3 ratio <= 2.5")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(spec={k: v for k, v in spec.items()
                                                             if k not in ("short", "long")},
                                                       machine=machine and machine.to_json(), results=results),
                                                  indent=1))
  return 1 if failed else None


if __name__ == "__main__":
  sys.exit(main())
