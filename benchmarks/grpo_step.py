"""GRPO step benchmark: spct-jax `GRPOTrainer` vs TRL's `GRPOTrainer` (torch CPU), Gemma 3 270M.

Usage:
  python benchmarks/grpo_step.py            # full: 4 items x G=4, 256 new tokens
  python benchmarks/grpo_step.py --quick    # smoke: 32 new tokens
  python benchmarks/grpo_step.py --device gpu --random-weights --tokenizer .bench_assets/tokenizer.model \
      --systems ours-bfloat16,trl-bfloat16  # GPU, seeded random weights (see gpu_common.py, gpu.sh)

One step = rollout (sample G completions of each item) + rewards + the train update (policy forward/backward with a
frozen reference forward, beta = 0.08, AdamW, clip 1.0). Each system runs two steps on distinct prompts of the same
shapes in its own subprocess: step 1 warms up (jit compiles, torch allocates), step 2 is timed.
Both sides: full fine-tuning (every parameter trainable), temperature 1.0 without top-k/top-p, EOS disabled so all
completions have exactly `new_tokens` tokens, sequence-mean-token-mean loss (TRL `loss_type="grpo"`), group-std
advantages, reward = share of even token ids in the completion (a cheap stand-in: its cost is not benchmarked).

TRL needs, besides torch and transformers: `pip install --no-deps trl==1.16.0 accelerate==1.15.0` and
`pip install datasets==5.2.0 pandas==3.1.1 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0` (see README.md).

Model FLOPs utilisation (MFU): FLOPs = 2 N per generated token + 6 N per training token (prompt + completion,
policy forward and backward), N = non-embedding parameters + the LM-head matmul (V x D, the tied embedding): the
reference forward (another 2 N per training token), attention score FLOPs and the prompt prefill are left out.
Divided by the step time and a bf16 matmul peak measured in the same run on the same device (jitted `jnp.dot`, bf16
inputs, f32 accumulation; 4096^3 on the CPU, 8192^3 on a GPU).

Roofline (benchmarks/machine.py, measured by a worker of its own first): the rollout's least time is its prefill
(every weight read once) plus one decode step per further token at max(bytes / bandwidth, FLOPs / peak); the
update's is max(8 N FLOPs per training token (policy forward and backward, reference forward) / peak, AdamW's
bytes (read parameters, gradients and both moments, write three of them, f32) / bandwidth). Each system is held to
the roofline of its own dtype (bf16 or f32 weights and GEMM peak); the fraction is roofline / measured.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)
import gpu_common  # pylint: disable=g-bad-import-order
import machine as machine_lib  # pylint: disable=g-bad-import-order

TEXTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain to a ten year old why the sky is blue and why sunsets are red.",
    "List three arguments for and against building a new airport near a large city.",
    "Describe how a bill becomes a law in a parliamentary democracy, step by step.",
    "Write a poem about the first snow of winter falling on a quiet mountain village.",
    "Explain the difference between weather and climate with two concrete examples.",
    "Give advice to a student who is starting to learn the piano as an adult.",
    "Summarise the main causes of the industrial revolution in Britain in a paragraph.",
]
ITEMS, GROUP = 4, 4
NEVER_EOS = -1
HF_DIR = pathlib.Path(os.environ.get("SPCT_BENCH_CACHE", pathlib.Path.home() / ".cache" / "spct_jax_bench"))


def settings(quick: bool) -> dict:
  return dict(new_tokens=32 if quick else 256, items=ITEMS, group=GROUP, beta=0.08, lr=1e-6, steps=2)


def reward_of(completion_ids) -> float:
  return float(sum(int(t) % 2 == 0 for t in completion_ids)) / max(len(completion_ids), 1)


def model_flops_per_token() -> tuple[int, int]:
  """(N, embedding params): N = non-embedding parameters + V x D (the LM-head matmul), from our model config."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from spct_jax.model.config import get_config  # pylint: disable=g-import-not-at-top
  from spct_jax.weights.gguf import flat_shapes  # pylint: disable=g-import-not-at-top

  cfg = get_config("gemma3-270m")
  shapes = flat_shapes(cfg)
  embedding = int(np.prod(shapes["embedding"]))
  non_embedding = sum(int(np.prod(s)) for k, s in shapes.items() if k != "embedding")
  return non_embedding + cfg.vocab_size * cfg.embed_dim, embedding


# ---------------------------------------------------------------------------------------------------------------
# Workers.


def worker_ours(spec: dict, dtype: str) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top

  from spct_jax.train.grpo_trainer import GRPOConfig, GRPOTrainer  # pylint: disable=g-import-not-at-top
  from spct_jax.train.step import OptimizerConfig  # pylint: disable=g-import-not-at-top
  from spct_jax.weights import load_model  # pylint: disable=g-import-not-at-top

  device = spec.get("device", "cpu")
  with common.PeakRSS() as mem:
    (model, tok), load_s = common.timed(load_model, spec.get("model") or "gemma3-270m", compute_dtype=dtype)
    cfg = GRPOConfig(group_size=spec["group"], beta=spec["beta"], max_new_tokens=spec["new_tokens"],
                     temperature=1.0, logprob_chunk_size=spec["logprob_chunk"])
    trainer = GRPOTrainer(model, cfg, OptimizerConfig(learning_rate=spec["lr"], grad_clip_norm=1.0))
    dtypes = f"{model.cfg.param_dtype} / {model.cfg.compute_dtype}"
    del model
  device_name = gpu_common.check_jax(device)
  common.log(f"  ours ({dtype} compute) ready in {load_s:.1f}s, {mem.peak_mib:.0f} MiB, on {device_name}")
  # --random-weights: the ids the main process made (tokenized TEXTS, or random ids without a tokenizer).
  prompts = spec.get("prompt_ids") or [tok.encode(t, add_bos=True) for t in TEXTS]
  pad_id = tok.pad_id if tok is not None else gpu_common.PAD_ID
  steps = []
  for i in range(spec["steps"]):
    items = prompts[i * spec["items"]:(i + 1) * spec["items"]]
    with common.PeakRSS() as step_mem:
      (batch, out), rollout_s = common.timed(trainer.rollout, items, seed=i, eos_ids=(NEVER_EOS,),
                                             pad_id=pad_id)
      completions = np.asarray(out.tokens)
      if not (np.asarray(out.lengths) == spec["new_tokens"]).all():
        raise RuntimeError(f"rows stopped early: {out.lengths}")
      rewards = np.array([reward_of(row) for row in completions], np.float32)
      metrics, update_s = common.timed(trainer.update, batch, rewards)
    steps.append(dict(rollout_s=rollout_s, update_s=update_s, step_s=rollout_s + update_s,
                      completion_tokens=int(completions.size),
                      train_tokens=int(sum(len(p) for p in items) * spec["group"] + completions.size),
                      prompt_lengths=[len(p) for p in items], loss=metrics["loss"], peak_rss_mib=step_mem.peak_mib,
                      peak_gpu_mib=gpu_common.jax_peak_mib() if device == "gpu" else None))
    common.log(f"  ours step {i + 1}: rollout {rollout_s:.1f}s, update {update_s:.1f}s, loss {metrics['loss']:.4f}, "
               f"peak RSS {step_mem.peak_mib:.0f} MiB")
  return dict(system=f"ours-{dtype}", load_s=load_s, steps=steps, device_name=device_name, dtypes=dtypes)


def hf_folder() -> pathlib.Path:
  """Gemma 3 270M as a transformers folder (f32 safetensors + tokenizer), exported once from the same GGUF."""
  import transformers  # pylint: disable=g-import-not-at-top

  from spct_jax.weights.gguf import resolve_gemma3_270m  # pylint: disable=g-import-not-at-top

  folder = HF_DIR / "gemma3-270m-hf"
  if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
    return folder
  common.log(f"  exporting the GGUF to {folder} (once) ...")
  path = pathlib.Path(resolve_gemma3_270m())
  tmp = folder.with_name(folder.name + ".tmp")
  common.hf_gemma3_270m("float32").save_pretrained(tmp)
  transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(tmp)
  tmp.rename(folder)
  return folder


def worker_trl(spec: dict, dtype: str) -> dict:
  import datasets  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  import trl  # pylint: disable=g-import-not-at-top

  folder = pathlib.Path(spec["model"]) if spec.get("model") else hf_folder()
  dev = gpu_common.torch_device(spec.get("device", "cpu"))
  steps, marks = [], {}

  class Timer(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
      gpu_common.torch_sync(dev)
      marks.update(begin=time.perf_counter(), generate=0.0)
      marks["mem"] = common.PeakRSS().__enter__()

    def on_step_end(self, args, state, control, **kw):
      gpu_common.torch_sync(dev)
      step_s = time.perf_counter() - marks["begin"]
      mem = marks.pop("mem")
      mem.__exit__()
      steps.append(dict(step_s=step_s, rollout_s=marks["generate"], update_s=step_s - marks["generate"],
                        completion_tokens=marks["completion_tokens"], train_tokens=marks["train_tokens"],
                        prompt_lengths=marks["prompt_lengths"], peak_rss_mib=mem.peak_mib,
                        peak_gpu_mib=gpu_common.torch_peak_mib(dev)))
      common.log(f"  TRL step {state.global_step}: rollout {marks['generate']:.1f}s, update "
                 f"{step_s - marks['generate']:.1f}s, peak RSS {mem.peak_mib:.0f} MiB")

  def reward(prompts, completions, completion_ids, **kw):
    return [reward_of(ids) for ids in completion_ids]

  n = spec["new_tokens"]
  rows = spec["items"] * spec["group"]
  if rows % spec["trl_micro_batch"]:
    raise ValueError(f"--trl-micro-batch must divide {rows}")
  accum = rows // spec["trl_micro_batch"]
  with tempfile.TemporaryDirectory() as out_dir:
    args = trl.GRPOConfig(
        output_dir=out_dir, use_cpu=dev == "cpu", bf16=dtype == "bfloat16", report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=0, shuffle_dataset=False, dataloader_num_workers=0,
        # One optimizer step = one generation of items x G rows, trained in micro-batches of `trl_micro_batch`.
        per_device_train_batch_size=spec["trl_micro_batch"], gradient_accumulation_steps=accum,
        steps_per_generation=accum, num_generations=spec["group"], max_steps=spec["steps"],
        max_completion_length=n, generation_kwargs={"min_new_tokens": n}, temperature=1.0, top_k=0, top_p=1.0,
        beta=spec["beta"], epsilon=0.2, loss_type="grpo", scale_rewards="group", num_iterations=1,
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, model_init_kwargs={"dtype": torch.float32}, log_completions=False)
    data = datasets.Dataset.from_dict({"prompt": TEXTS[:spec["items"] * spec["steps"]]})
    with common.PeakRSS() as mem:
      trainer, load_s = common.timed(trl.GRPOTrainer, model=str(folder), reward_funcs=reward, args=args,
                                     train_dataset=data, callbacks=[Timer()])
    common.log(f"  TRL ({dtype}) ready in {load_s:.1f}s, {mem.peak_mib:.0f} MiB, torch threads "
               f"{torch.get_num_threads()}, on {gpu_common.torch_device_name(dev)} (model on "
               f"{next(trainer.model.parameters()).device})")
    generate = trainer._generate  # pylint: disable=protected-access

    def timed_generate(prompts):
      gpu_common.torch_sync(dev)
      result, seconds = common.timed(lambda: (generate(prompts), gpu_common.torch_sync(dev))[0])
      marks["generate"] += seconds
      prompt_ids, completion_ids = result[0], result[1]
      if any(len(c) != n for c in completion_ids):
        raise RuntimeError(f"completions stopped early: {[len(c) for c in completion_ids]}")
      marks["completion_tokens"] = sum(len(c) for c in completion_ids)
      marks["train_tokens"] = marks["completion_tokens"] + sum(len(p) for p in prompt_ids)
      marks["prompt_lengths"] = sorted({len(p) for p in prompt_ids})
      return result

    trainer._generate = timed_generate  # pylint: disable=protected-access
    trainer.train()
  return dict(system=f"trl-{dtype}", load_s=load_s, steps=steps, trl_version=trl.__version__,
              dtypes="float32 / " + ("bfloat16 (autocast)" if dtype == "bfloat16" else "float32"),
              torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
              device_name=gpu_common.torch_device_name(dev))


# ---------------------------------------------------------------------------------------------------------------
# Report.

SYSTEMS = {"ours-bfloat16": "ours bf16", "ours-float32": "ours f32", "trl-float32": "TRL f32",
           "trl-bfloat16": "TRL bf16 (autocast)"}


def rooflines(machine: machine_lib.Machine, step: dict, spec: dict, dtype: str) -> tuple[float, float]:
  """(rollout, update) least seconds of a GRPO step on `machine` with `dtype` weights and matmuls (see the top)."""
  from spct_jax.model.config import get_config  # pylint: disable=g-import-not-at-top

  cfg, width = get_config("gemma3-270m"), 2 if dtype == "bfloat16" else 4
  rows, new = spec["items"] * spec["group"], spec["new_tokens"]
  prompt = sum(step["prompt_lengths"]) / len(step["prompt_lengths"])
  params = sum(machine_lib.matmul_params(cfg))
  prefill = machine.roofline_s(params * width, machine_lib.prefill_flops(cfg, spec["items"] * prompt, prompt), dtype)
  decode = (new - 1) * machine_lib.decode_roofline_s(machine, cfg, rows, int(prompt + new / 2), dtype, width)
  update = machine.roofline_s(7 * 4 * params, 8 * params * step["train_tokens"], dtype)
  return prefill + decode, update


def report(results: dict[str, dict], spec: dict, machine: machine_lib.Machine | None) -> str:
  names = [s for s in SYSTEMS if s in results]
  n_flops, _ = model_flops_per_token()
  timed_step = lambda s: results[s]["steps"][-1]
  ours = "ours-bfloat16" if "ours-bfloat16" in results else names[0]
  peers = [s for s in names if s.startswith("trl")]
  peak = machine and machine.peak
  roofs = {s: rooflines(machine, timed_step(s), spec, s.split("-")[1]) for s in names} if machine else {}

  def fraction(s):
    if s not in roofs:
      return "n/a"
    st, (rollout, update) = timed_step(s), roofs[s]
    return (f"{(rollout + update) / st['step_s']:.2f} (rollout {rollout / st['rollout_s']:.2f}, "
            f"update {update / st['update_s']:.2f})")

  def mfu(s):
    st = timed_step(s)
    if peak is None:
      return None
    return ((2 * n_flops * st["completion_tokens"] + 6 * n_flops * st["train_tokens"]) / st["step_s"]
            / machine.compute_peak("bfloat16"))

  def row(label, fn, digits=2):
    return [label] + [common.fmt(fn(s), digits) for s in names]

  rows = [
      row("steps/s", lambda s: 1 / timed_step(s)["step_s"], 4),
      row("completion tokens/s", lambda s: timed_step(s)["completion_tokens"] / timed_step(s)["step_s"], 1),
      row("step time (s)", lambda s: timed_step(s)["step_s"], 1),
      row("  rollout / sampling (s)", lambda s: timed_step(s)["rollout_s"], 1),
      row("  update: ref fwd + policy fwd/bwd + AdamW (s)", lambda s: timed_step(s)["update_s"], 1),
      row("first (warm-up) step (s)", lambda s: results[s]["steps"][0]["step_s"], 1),
      row("MFU vs the measured peak, max(bf16, f32) (%)", lambda s: None if mfu(s) is None else 100 * mfu(s), 2),
      ["roofline (s): rollout / update"] + [" / ".join(f"{x:.1f}" for x in roofs[s]) if s in roofs else "n/a"
                                           for s in names],
      ["fraction of roofline: step (rollout, update)"] + [fraction(s) for s in names],
      row("peak RSS during timed step (MiB)", lambda s: timed_step(s)["peak_rss_mib"], 0),
      row("process ru_maxrss (MiB)", lambda s: results[s]["child_max_rss_mib"], 0),
      ["prompt lengths (tokens)"] + [str(sorted(set(timed_step(s)["prompt_lengths"]))) for s in names],
      ["parameter / compute dtype"] + [results[s].get("dtypes", "?") for s in names],
  ]
  if spec.get("device") == "gpu":  # Process-wide high-water marks (JAX's cannot be reset; step 1 has step 2's shapes).
    rows += [row("peak GPU memory up to the end of the timed step (MiB)",
                 lambda s: timed_step(s).get("peak_gpu_mib"), 0),
             ["device"] + [results[s].get("device_name", "?") for s in names]]
  table = common.markdown_table(["per GRPO step"] + [SYSTEMS[s] for s in names], rows)
  ratios = [f"- {SYSTEMS[o]} vs {SYSTEMS[p]}: "
            + common.ratio_cell(1 / timed_step(o)["step_s"], 1 / timed_step(p)["step_s"], 3) + " steps/s"
            for o in names if o.startswith("ours") for p in peers]
  st = timed_step(ours)
  accum = spec["items"] * spec["group"] // spec["trl_micro_batch"]
  notes = [f"Step: {spec['items']} items x G={spec['group']}, {spec['new_tokens']} new tokens, beta {spec['beta']}, "
           f"{st['completion_tokens']} completion tokens, {st['train_tokens']} training tokens (prompt + completion); "
           f"memory knobs: ours logprob_chunk_size={spec['logprob_chunk']}, TRL micro-batch "
           f"{spec['trl_micro_batch']} rows (gradient accumulation {accum}).",
           f"MFU FLOPs = 2N x completion tokens + 6N x training tokens, N = {n_flops / 1e6:.1f}M "
           f"(non-embedding + LM-head V x D); " + _peak_note(peak, spec)]
  return "\n".join([table, "", *ratios, "", *notes])


def _peak_note(peak: dict[str, float] | None, spec: dict) -> str:
  if peak is None:
    return "the machine measurement FAILED (no MFU, no roofline)."
  f32 = "; f32 at XLA's default GPU matmul precision" if spec.get("device") == "gpu" else ""
  return (f"measured peak: bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s, f32 {peak['float32'] / 1e9:.0f} GFLOP/s "
          f"(jitted {spec.get('peak_n', 4096)}^3 jnp.dot, f32 accumulation{f32}).")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="short smoke run (32 new tokens)")
  parser.add_argument("--systems", default="ours-bfloat16,ours-float32,trl-float32",
                      help=f"comma list from {list(SYSTEMS)}")
  parser.add_argument("--logprob-chunk", type=int, default=64,
                      help="ours: GRPOConfig.logprob_chunk_size, 0 = whole completion at once (memory knob)")
  parser.add_argument("--trl-micro-batch", type=int, default=4,
                      help="TRL: rows per forward/backward micro-batch (gradient accumulation; memory knob)")
  gpu_common.add_run_args(parser, peer="TRL", without_tokenizer="TRL needs --tokenizer, ours uses random prompt "
                                                                 "ids without it")
  args = parser.parse_args(argv)

  if args.worker:
    spec = json.loads(pathlib.Path(args.spec).read_text())
    if args.system == "machine":
      gpu_common.check_jax(spec.get("device", "cpu"))
      common.emit_result(machine_lib.worker_machine(spec))
      return
    kind, dtype = args.system.split("-")
    common.emit_result((worker_ours if kind == "ours" else worker_trl)(spec, dtype))
    return

  systems = common.parse_systems(parser, args.systems, SYSTEMS)
  if args.random_weights and not args.tokenizer and any(s.startswith("trl") for s in systems):
    parser.error("TRL tokenizes text prompts: --random-weights with trl systems needs --tokenizer")
  header = gpu_common.header(f"GRPO step benchmark ({'quick' if args.quick else 'full'})", args.device)
  print(header)
  busy = common.busy_processes()
  spec = dict(settings(args.quick), logprob_chunk=args.logprob_chunk or None, trl_micro_batch=args.trl_micro_batch,
              device=args.device, peak_n=gpu_common.matmul_peak_shape(args.device)[0])
  spec["quick"] = args.quick
  skipped = []  # systems that cannot run at all
  if args.random_weights:
    texts = TEXTS[:spec["items"] * spec["steps"]]
    try:  # Checked: the HF tokenizer TRL uses gives our ids for these texts.
      spec["model"] = str(gpu_common.ensure_random_folder(0, args.tokenizer, texts if args.tokenizer else []))
    except RuntimeError as e:  # Without a working HF tokenizer, ours still runs (TRL cannot).
      common.log(f"HF tokenizer FAILED: {e}")
      skipped = [s for s in systems if s.startswith("trl")]
      systems = [s for s in systems if not s.startswith("trl")]
      spec["model"] = str(gpu_common.ensure_random_folder(0, None))
    if args.tokenizer:
      tok = gpu_common.our_tokenizer(args.tokenizer)
      spec["prompt_ids"] = [tok.encode(t, add_bos=True) for t in texts]
    else:  # The lengths the tokenized TEXTS have (13-17), seeded.
      spec["prompt_ids"] = gpu_common.random_prompts(0, [13 + i % 5 for i in range(len(texts))])
  results, failed, machine, machines = machine_lib.run_systems(
      __file__, spec, systems, timeout_s=args.worker_timeout, env=gpu_common.worker_env(args.device))
  failed = skipped + failed
  lines = [header]
  if busy:
    lines.append("Other busy processes at start: " + "; ".join(busy) + "\n")
  if args.random_weights:
    lines.append(f"Weights: seeded random (seed 0) Gemma 3 270M architecture, {spec['model']}; prompts: "
                 f"{'the texts, tokenized' if args.tokenizer else 'random ids (seed 0)'}.\n")
  if machine:
    lines.append(f"Machine: {machine.describe()} ({machine_lib.spread(machines)}).\n")
  lines.append(report(results, spec, machine) if results else json.dumps(results))
  common.print_report(lines, failed=failed, targets="target: ours >= 3x TRL steps/s", markdown=args.markdown)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(spec=spec, machine=machine and machine.to_json(),
                                                       results=results), indent=1))
  return 1 if failed else None


if __name__ == "__main__":
  sys.exit(main())
