"""Where sampled log-probs and the train step's teacher-forced log-probs part: one factor switched at a time.

Not a speed benchmark: a numerical study on the real Gemma 3 270M (docs/DESIGN.md, "Sampled vs teacher-forced
log-probs", holds its table). Completions are sampled once (bf16 model, T=1, the sampler as GRPO runs it); then the
same tokens are scored by
  S  the sampler's path: the decoder's prefill of the prompt, then one token per step through the KV cache
     (`sampler.prefill` + the decode step's `decoding.forward` / `decoding.logits`, as `sampler.decode` runs them),
  P  the same decoder on the whole prompt + completion in one prefill (same code, all positions at once),
  T  the train step's `grpo_trainer.completion_logps` (scanned layers, shared prompt),
  F  T with an f32 model: the reference function,
under each setting, and the table gives mean / 99th percentile / max of |difference| over the real completion
tokens, and the share beyond log(1.2) (the PPO clip range: an importance ratio outside [1/1.2, 1.2]).

  python benchmarks/logprob_gap.py          # ~50 min on 2 cores at load 12-20 (the run in docs/DESIGN.md)
"""

from __future__ import annotations

import functools
import math
import sys

import common  # noqa: F401  (puts the checkout on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax import sampler, strategies
from spct_jax.kernels import cpu_matvec
from spct_jax.model import decoding
from spct_jax.train import grpo_trainer
from spct_jax.weights import load_model

NEW_TOKENS = 32
CLIP = math.log(1.2)


def incremental_logps(model, batch, *, kernel: bool) -> np.ndarray:
  """S: f32[R, N] raw-model log-probs of `batch["completion"]`, computed the way `sampler.decode` computes them."""
  cfg, params = model.cfg, decoding.decoding_params(model)
  completion = jnp.asarray(batch["completion"])
  n = completion.shape[1]
  matmul = decoding.Matmul(cpu_kernel="skinny" if kernel else None)  # untiled params: the skinny kernel, not AMX

  @jax.jit
  def run(params, prompt_tokens, prompt_mask, row_source, completion):
    cache, logits, next_position = sampler.prefill(cfg, params, prompt_tokens, prompt_mask, row_source,
                                                   cache_length=prompt_tokens.shape[1] + n, matmul=matmul)

    def step(carry, s):
      cache, logits = carry
      token = completion[:, s]
      summary = strategies.summarize(logits)
      logp = summary.at(token) - summary.log_normalizer()
      hidden, cache = decoding.forward(cfg, params, token[:, None], (next_position + s)[:, None], cache,
                                       matmul=matmul)
      return (cache, decoding.logits(cfg, params, hidden, matmul=matmul)[:, 0]), logp

    _, logps = jax.lax.scan(step, (cache, logits), jnp.arange(n))
    return logps.T

  return np.asarray(run(params, batch["prompt_tokens"], batch["prompt_mask"], batch["row_source"], completion))


def full_sequence_logps(model, batch) -> np.ndarray:
  """P: the decoder on prompt + completion in one prefill (every position at once)."""
  cfg, params = model.cfg, decoding.decoding_params(model)

  @jax.jit
  def run(params, prompt_tokens, prompt_mask, row_source, completion, completion_mask):
    tokens = jnp.concatenate([prompt_tokens[row_source], completion], axis=1)
    mask = jnp.concatenate([prompt_mask[row_source], completion_mask > 0], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
    cache = decoding.init_cache(cfg, tokens.shape[0], tokens.shape[1])
    hidden, _ = decoding.forward(cfg, params, tokens, positions, cache, mask)
    t, n = prompt_tokens.shape[1], completion.shape[1]
    logits = decoding.logits(cfg, params, hidden[:, t - 1:t + n - 1])
    return jnp.take_along_axis(jax.nn.log_softmax(logits), completion[..., None], axis=-1)[..., 0]

  return np.asarray(run(params, batch["prompt_tokens"], batch["prompt_mask"], batch["row_source"],
                        batch["completion"], batch["completion_mask"]))


def train_logps(model, batch) -> np.ndarray:
  """T: the GRPO train step's teacher-forced log-probs."""
  return np.asarray(jax.jit(grpo_trainer.completion_logps)(model, {k: jnp.asarray(v) for k, v in batch.items()}))


@functools.cache
def models():
  f32, tokenizer = load_model("gemma3-270m", compute_dtype="float32")
  bf16, _ = load_model("gemma3-270m", compute_dtype="bfloat16")
  # The bf16 model's weights, stored and multiplied in f32: isolates rounding the weights from rounding activations.
  rounded, _ = load_model("gemma3-270m", compute_dtype="float32")
  state = nnx.state(rounded, nnx.Param)
  nnx.update(rounded, jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(jnp.float32), state))
  return {"f32": f32, "bf16": bf16, "bf16-weights-f32-compute": rounded}, tokenizer


def sample_sets(model, tokenizer):
  """A: the slow test's case (a 600+ token prompt and a short one, 3 samples each: 6 rows, XLA's dot).
  B: one prompt x 2 samples: 2 rows, where decode steps use the CPU kernel."""
  text = " ".join(f"Step {i}: add {i * 3 % 11} to the total, then note it." for i in range(70))
  sets = {"A (6 rows)": ([tokenizer.encode(text), tokenizer.encode("Score the two answers to 2 + 2:")], 3, 1),
          "B (2 rows)": ([tokenizer.encode(text)], 2, 2)}
  out = {}
  for name, (prompts, k, seed) in sets.items():
    sample, prompt_tokens, prompt_mask, row_source = sampler.sample_from_tokens(
        model, prompts, max_new_tokens=NEW_TOKENS, num_samples=k, strategy=strategies.Sampling(1.0), seed=seed,
        eos_ids=(tokenizer.eos_id,), pad_id=tokenizer.pad_id)
    sample = jax.device_get(sample)
    out[name] = (grpo_trainer.assemble_batch(prompt_tokens, prompt_mask, row_source, sample), sample)
  return out


def _stats(a: np.ndarray, b: np.ndarray, real: np.ndarray) -> str:
  d = np.abs(a - b)[real]
  return f"{d.mean():.2e} | {np.quantile(d, 0.99):.2e} | {d.max():.2e} | {100 * (d > CLIP).mean():.1f}%"


def main():
  table, tokenizer = models()
  sets = sample_sets(table["bf16"], tokenizer)
  kernel = cpu_matvec.enabled()
  rows = []
  for set_name, (batch, sample) in sets.items():
    real = batch["completion_mask"] > 0
    f_ref = train_logps(table["f32"], batch)
    scores = {}
    for model_name, model in table.items():
      bf16 = model.cfg.compute_dtype == "bfloat16"
      scores[model_name, "S"] = incremental_logps(model, batch, kernel=bf16 and kernel)
      if bf16 and kernel:
        scores[model_name, "S-nokernel"] = incremental_logps(model, batch, kernel=False)
      scores[model_name, "P"] = full_sequence_logps(model, batch)
      scores[model_name, "T"] = train_logps(model, batch)
      # The decoder with a compute-dtype cache: keys/values rounded as the training forward rounds them.
      original = decoding.cache_dtype
      decoding.cache_dtype = lambda cfg: cfg.compute_jnp_dtype
      try:
        scores[model_name, "S-cache"] = incremental_logps(model, batch, kernel=bf16 and kernel)
        scores[model_name, "P-cache"] = full_sequence_logps(model, batch)
      finally:
        decoding.cache_dtype = original
    replica = np.abs(scores["bf16", "S"] - sample.model_logps)[real].max()
    print(f"{set_name}: replica of the sampler's log-probs vs the sampler's own: max |diff| {replica:.2e}",
          file=sys.stderr)
    for model_name in table:
      for left, right in (("S", "T"), ("S-nokernel", "T"), ("S-cache", "T"), ("P", "T"), ("P-cache", "T"),
                          ("S", "P"), ("S-cache", "P-cache"), ("S", "F"), ("T", "F"), ("P", "F")):
        if (model_name, left) not in scores:
          continue
        b = f_ref if right == "F" else scores[model_name, right]
        rows.append(f"| {set_name} | {model_name} | {left} vs {right} | {_stats(scores[model_name, left], b, real)} |")
  print("| samples | model | pair | mean | p99 | max | > log 1.2 |")
  print("|---|---|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
