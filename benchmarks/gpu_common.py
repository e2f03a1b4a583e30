"""GPU mode and random weights for the benchmarks (`--device gpu`, `--random-weights`, `--tokenizer`).

Random weights: Gemma 3 270M's architecture (`get_config("gemma3-270m")`) with our seeded initializers, exported
once as a transformers folder (f32 safetensors; plus `tokenizer.model` and HF tokenizer files when a tokenizer is
given). Ours (`load_model(folder)`), HF `from_pretrained` and TRL then all load exactly the same weights. The export
runs in a worker on the CPU (`python benchmarks/gpu_common.py --worker ...`), so the benchmark's own process never
touches the GPU and the weights do not depend on the accelerator.

GPU mode: JAX runs on its default backend (which must be a GPU), torch on "cuda"; timings synchronize; peak memory is
the device's high-water mark (JAX `memory_stats()['peak_bytes_in_use']`, torch `max_memory_allocated`), process-wide
up to the point read (JAX cannot reset it, so torch is not reset either). `SPCT_BENCH_SIMULATE_GPU=1` runs the GPU
code paths on the CPU (no device checks, no GPU memory): how `benchmarks/gpu.sh` is checked on a machine without one.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import Sequence

import common  # pylint: disable=g-bad-import-order  (also puts the repo root on sys.path)

SIMULATE_ENV = "SPCT_BENCH_SIMULATE_GPU"
BENCH_CACHE = pathlib.Path(os.environ.get("SPCT_BENCH_CACHE", pathlib.Path.home() / ".cache" / "spct_jax_bench"))
# Random prompt ids come from ordinary text pieces: Gemma's control and chat tokens sit below ~110, image tokens
# from 255_999 up.
RANDOM_ID_RANGE = (1_000, 200_000)
BOS_ID, PAD_ID = 2, 0


def simulated() -> bool:
  return os.environ.get(SIMULATE_ENV) == "1"


def worker_env(device: str) -> dict[str, str] | None:
  """Extra environment of a worker: `--device cpu` keeps JAX on the CPU even where a GPU is visible."""
  if device == "cpu":
    return {"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  return None


def gpu_description() -> str:
  """e.g. 'NVIDIA H100 80GB HBM3, 81559 MiB' from nvidia-smi (without touching the GPU from Python)."""
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "GPU (nvidia-smi unavailable)" + (", simulated on the CPU" if simulated() else "")
  return "; ".join(out.splitlines())


def header(title: str, device: str) -> str:
  """`common.machine_header`, plus the GPU line in GPU mode."""
  text = common.machine_header(title)
  if device == "gpu":
    text += f"GPU: {gpu_description()}\n"
  return text


# ---------------------------------------------------------------------------------------------------------------
# Inside workers: device checks, synchronization, GPU memory.


def check_jax(device: str) -> str:
  """The JAX device kind; raises if `--device gpu` but JAX did not get a GPU (a silent CPU run would mislead)."""
  import jax  # pylint: disable=g-import-not-at-top

  if device == "gpu" and not simulated() and jax.default_backend() != "gpu":
    raise RuntimeError(f"--device gpu but JAX's backend is {jax.default_backend()!r} (devices {jax.devices()})")
  return f"{jax.default_backend()}: {jax.devices()[0].device_kind}"


def torch_device(device: str) -> str:
  """'cuda' or 'cpu' for the torch peers; raises if `--device gpu` and CUDA is not available."""
  import torch  # pylint: disable=g-import-not-at-top

  if device != "gpu" or (simulated() and not torch.cuda.is_available()):
    return "cpu"
  if not torch.cuda.is_available():
    raise RuntimeError("--device gpu but torch.cuda.is_available() is False")
  return "cuda"


def torch_device_name(dev: str) -> str:
  import torch  # pylint: disable=g-import-not-at-top

  return f"cuda: {torch.cuda.get_device_name()}" if dev == "cuda" else "cpu"


def torch_sync(dev: str) -> None:
  """Waits for queued CUDA kernels, so a timer read after it covers the work."""
  if dev == "cuda":
    import torch  # pylint: disable=g-import-not-at-top

    torch.cuda.synchronize()


def jax_peak_mib() -> float | None:
  """Device 0's peak bytes in use over the process so far (None on the CPU backend, which keeps no stats)."""
  import jax  # pylint: disable=g-import-not-at-top

  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def torch_peak_mib(dev: str) -> float | None:
  if dev != "cuda":
    return None
  import torch  # pylint: disable=g-import-not-at-top

  return torch.cuda.max_memory_allocated() / 2**20


def matmul_peak_shape(device: str) -> tuple[int, int]:
  """(n, reps) of the measured matmul peak: 4096^3 on the CPU, 8192^3 on a GPU (a 4096^3 dot is too short)."""
  if device != "gpu":
    return 4096, 5
  return (1024, 3) if simulated() else (8192, 10)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers and prompts.


def our_tokenizer(path_or_name: str):
  """Our sentencepiece `Tokenizer` from a `tokenizer.model` file, or anything `load_tokenizer` resolves."""
  if os.path.isfile(path_or_name):
    from spct_jax.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top

    return Tokenizer.from_file(path_or_name)
  from spct_jax.weights import load_tokenizer  # pylint: disable=g-import-not-at-top

  return load_tokenizer(path_or_name)


def random_prompts(seed: int, lengths: list[int]) -> list[list[int]]:
  """Seeded prompts of exactly `lengths` tokens: BOS, then uniform ordinary-piece ids (no special tokens)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  return [[BOS_ID, *map(int, rng.integers(*RANDOM_ID_RANGE, size=n - 1))] for n in lengths]


# ---------------------------------------------------------------------------------------------------------------
# The random-weights folder.


def random_folder(seed: int) -> pathlib.Path:
  return BENCH_CACHE / f"gemma3-270m-random-seed{seed}"


def ensure_random_folder(seed: int, tokenizer: str | None, check_texts: Sequence[str] = ()) -> pathlib.Path:
  """The random-weights folder, exported by a CPU worker when absent (or lacking the tokenizer asked for)."""
  folder = random_folder(seed)
  ready = (folder / "config.json").is_file() and (tokenizer is None or (folder / "tokenizer.json").is_file())
  if ready and not check_texts:
    return folder
  args = ["--seed", str(seed)] + (["--tokenizer", os.path.abspath(tokenizer)] if tokenizer else [])
  if check_texts:
    args += ["--check-texts", json.dumps(list(check_texts))]
  common.log(f"random weights (seed {seed}) -> {folder} ...")
  result = common.run_worker(__file__, args, env={"JAX_PLATFORMS": "cpu"}, log_prefix="  ")
  common.log(f"  {result['what']} in {result['wall_s']:.1f}s")
  return folder


def _export(seed: int, tokenizer: str | None, check_texts: list[str]) -> dict:
  """Worker body: writes the weights (if absent) and the HF tokenizer files (if asked for and absent)."""
  done = []
  folder = random_folder(seed)
  tok = our_tokenizer(tokenizer) if tokenizer else None
  if not (folder / "config.json").is_file():
    from flax import nnx  # pylint: disable=g-import-not-at-top

    from spct_jax.model import Transformer, get_config  # pylint: disable=g-import-not-at-top
    from spct_jax.weights import export_hf  # pylint: disable=g-import-not-at-top

    cfg = get_config("gemma3-270m")
    (model, seconds) = common.timed(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)))
    common.log(f"initialized in {seconds:.1f}s")
    export_hf(model, cfg, folder, tokenizer=tok)
    done.append("exported weights")
  if tok is not None and not (folder / "tokenizer.json").is_file():
    _write_hf_tokenizer(folder, tok)
    done.append("wrote the HF tokenizer")
  if tok is not None and check_texts:
    _check_hf_tokenizer(folder, tok, check_texts)
    done.append(f"checked HF == ours on {len(check_texts)} texts")
  return dict(system="export", folder=os.fspath(folder), what=", ".join(done) or "reused")


def _write_hf_tokenizer(folder: pathlib.Path, tok) -> None:
  """HF tokenizer files converted from our sentencepiece model (transformers' own SentencePiece conversion).

  BOS is added on encode, as by the GGUF-derived tokenizer the CPU runs use (TRL tokenizes prompts with it).
  Converted in a scratch folder and moved in, so an interrupted conversion leaves no half-written files.
  """
  import transformers  # pylint: disable=g-import-not-at-top

  scratch = folder.with_name(folder.name + ".tokenizer-tmp")
  shutil.rmtree(scratch, ignore_errors=True)
  scratch.mkdir(parents=True)
  (scratch / "tokenizer.model").write_bytes(tok.serialized_model)
  (scratch / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False}))
  hf_tok = transformers.AutoTokenizer.from_pretrained(scratch)
  out = scratch / "saved"
  hf_tok.save_pretrained(out)
  (folder / "tokenizer.model").write_bytes(tok.serialized_model)
  for path in sorted(out.iterdir(), key=lambda p: p.name == "tokenizer.json"):  # tokenizer.json (the marker) last
    shutil.move(os.fspath(path), os.fspath(folder / path.name))
  shutil.rmtree(scratch, ignore_errors=True)


def _check_hf_tokenizer(folder: pathlib.Path, tok, texts: list[str]) -> None:
  """Both sides must see the same prompt ids (TRL tokenizes with the HF tokenizer, ours with sentencepiece)."""
  import transformers  # pylint: disable=g-import-not-at-top

  hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
  for text in texts:
    ours, theirs = tok.encode(text, add_bos=True), hf_tok(text)["input_ids"]
    if list(ours) != list(theirs):
      raise RuntimeError(f"HF tokenizer in {folder} differs from ours on {text!r}: {theirs} vs {ours}")
  if (hf_tok.pad_token_id, hf_tok.eos_token_id) != (tok.pad_id, tok.eos_id):
    raise RuntimeError(f"HF pad/eos ids {hf_tok.pad_token_id}/{hf_tok.eos_token_id} != ours {tok.pad_id}/{tok.eos_id}")


def hf_model(folder: str | os.PathLike, dtype: str, attn_implementation: str = "sdpa"):
  """The random-weights folder as a transformers model (eval mode, cast to `dtype`), on the CPU."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  model = transformers.AutoModelForCausalLM.from_pretrained(os.fspath(folder), dtype=torch.float32,
                                                            attn_implementation=attn_implementation)
  return model.to(getattr(torch, dtype)).eval()


def main() -> None:
  parser = argparse.ArgumentParser(description="export worker for --random-weights")
  parser.add_argument("--worker", action="store_true", required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tokenizer")
  parser.add_argument("--check-texts", default="[]")
  args = parser.parse_args()
  common.emit_result(_export(args.seed, args.tokenizer, json.loads(args.check_texts)))


if __name__ == "__main__":
  main()


def add_run_args(parser, *, peer: str, without_tokenizer: str) -> None:
  """The options both benchmark scripts share (output files, device, random weights, worker control)."""
  parser.add_argument("--json", help="also write the raw results here")
  parser.add_argument("--markdown", help="also write the final report (header, table, notes) here")
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                      help=f"gpu: JAX on its GPU backend, {peer} on cuda, GPU peak memory (see gpu_common.py)")
  parser.add_argument("--random-weights", action="store_true",
                      help="seeded random Gemma 3 270M weights, exported once to a transformers folder for all "
                           f"systems (no GGUF needed); {without_tokenizer}")
  parser.add_argument("--tokenizer", help="sentencepiece tokenizer.model file (or a name / folder) for the prompts")
  common.add_worker_args(parser)
