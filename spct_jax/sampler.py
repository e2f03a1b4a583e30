"""KV-cache sampling: one prefill per distinct prompt, then a jitted `lax.while_loop` decode with the cache donated.

k samples of a prompt share its prefill: the cache rows are gathered (`row_source`) to `B*k` rows, groups contiguous,
instead of prefilling k times. Identical prompt strings passed to `generate` are also prefilled once, which is how
voting shares prefill between samples that show the responses in the same order.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax import multihost, sampling_memory, strategies
from spct_jax.model import decoding
from spct_jax.model.config import ModelConfig
from spct_jax.model.transformer import Transformer
from spct_jax.stop_rules import NEVER_STOP, StopAfter
from spct_jax.strategies import Greedy, strategy_for


@flax.struct.dataclass
class SampleOutput:
  """Arrays of one sampling call; rows are `B*k`, row b*k + j = sample j of prompt b.

  Attributes:
    tokens: int32[R, N] generated tokens, `pad_id` after a row finished.
    logps: f32[R, N] log-probs under the sampling distribution (temperature/top-k/top-p applied; 0 for greedy).
    model_logps: f32[R, N] log-probs under the raw model (temperature 1, no filtering).
    lengths: int32[R] generated tokens including the EOS that ended the row.
    done: bool[R] the row ended with EOS (False: stopped by max_new_tokens).
  """

  tokens: jax.Array
  logps: jax.Array
  model_logps: jax.Array
  lengths: jax.Array
  done: jax.Array


def prefill(cfg: ModelConfig, params: decoding.DecodingParams, prompt_tokens: jax.Array, prompt_mask: jax.Array,
            row_source: jax.Array, *, cache_length: int,
            matmul: decoding.Matmul = decoding.Matmul()) -> tuple[decoding.LayerCache, jax.Array, jax.Array]:
  """Runs each distinct prompt once and gathers its cache rows for every sample that continues it.

  Args:
    cfg, params: the model config and its `decoding.decoding_params`.
    prompt_tokens, prompt_mask: [P, T] left-padded distinct prompts.
    row_source: int32[R] prompt row each output row continues (e.g. repeat(arange(P), k): groups contiguous).
    cache_length: T + max_new_tokens.
    matmul: how the decoder multiplies (`decoding.Matmul`; its `live_rows` applies to decode steps only).

  Returns:
    cache with R rows, next-token logits f32[R, V], and each row's next position int32[R].
  """
  positions = jnp.maximum(jnp.cumsum(prompt_mask.astype(jnp.int32), axis=-1) - 1, 0)
  cache = decoding.init_cache(cfg, prompt_tokens.shape[0], cache_length)
  matmul = dataclasses.replace(matmul, live_rows=None)  # every prompt row is real
  hidden, cache = decoding.forward(cfg, params, prompt_tokens, positions, cache, prompt_mask, matmul=matmul)
  logits = decoding.logits(cfg, params, hidden[:, -1:], matmul=matmul)[:, 0]
  return (decoding.take_rows(cfg, cache, row_source), jnp.take(logits, row_source, axis=0),
          jnp.take(positions[:, -1] + 1, row_source, axis=0))


def decode(cfg: ModelConfig, params: decoding.DecodingParams, cache: decoding.LayerCache, logits: jax.Array,
           next_position: jax.Array, key: jax.Array, row_ids: jax.Array, stop_table: jax.Array, *,
           max_new_tokens: int, strategy, eos_ids: tuple[int, ...], pad_id: int,
           matmul: decoding.Matmul = decoding.Matmul()) -> tuple[SampleOutput, decoding.LayerCache]:
  """Samples up to `max_new_tokens` per row with a `lax.while_loop`; the donated cache is updated in place.

  `logits` are the prefill's (the first token's distribution). Each loop step runs the model on the token drawn
  last and draws the next, so the N tokens cost N - 1 forward steps: the cache returned holds the prompt and every
  generated token but the last (it lets the donated input buffer alias the output).
  stop_table: int[V, S] a `StopAfter` automaton's transitions (`NEVER_STOP`: EOS and max_new_tokens only); each
  row carries its state (0 at the start) and stops on the token that reaches state S - 1.

  Each step's logits reach the strategy as `strategies.Logits` (with per-block softmax summaries: from the AMX head
  kernel on such CPUs, else `strategies.summarize`), so no step re-reads the [rows, V] logits to normalize or draw.
  Token s of row r is drawn with fold_in(fold_in(key, s), row_ids[r]) (row_ids: int32[R], each row's index in the
  whole request): a row's draws do not depend on the other rows, so a request split into row chunks samples what
  it would in one call. Results depend only on the seed, the row ids and the kernel path (the AMX and XLA paths
  round logits differently, which can flip a draw that falls within rounding of a CDF boundary). The loop exits
  early once every row has produced an EOS; with `matmul.live_rows`, once the live rows have (filler rows never
  finish).
  """
  rows = logits.shape[0]
  live = rows if matmul.live_rows is None else matmul.live_rows
  eos = jnp.asarray(eos_ids, jnp.int32)

  def draw(s, logits: strategies.Logits, state):
    """Token s of every row from its logits; finished rows emit padding."""
    out, done, lengths, stop_state = state
    row_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.fold_in(key, s), row_ids)
    token, logp = strategy.sample(row_keys, logits)
    model_logp = logits.at(token) - logits.log_normalizer()
    token = jnp.where(done, pad_id, token)
    put = lambda buf, val: jax.lax.dynamic_update_slice(buf, val[:, None].astype(buf.dtype), (0, s))
    out = dict(tokens=put(out["tokens"], token), logps=put(out["logps"], jnp.where(done, 0.0, logp)),
               model_logps=put(out["model_logps"], jnp.where(done, 0.0, model_logp)))
    lengths = lengths + (~done).astype(jnp.int32)
    stop_state = stop_table[token, stop_state].astype(jnp.int32)
    done = done | jnp.isin(token, eos) | (stop_state == stop_table.shape[1] - 1)
    return token, (out, done, lengths, stop_state)

  def step(carry):
    s, cache, token, state = carry
    # Finished rows keep decoding padding (their outputs are masked in `draw`): one shape for the whole batch.
    hidden, cache = decoding.forward(cfg, params, token[:, None], (next_position + s - 1)[:, None], cache,
                                     matmul=matmul)
    logits = decoding.next_token_logits(cfg, params, hidden[:, 0], strategy.summary_temperature, matmul=matmul)
    token, state = draw(s, logits, state)
    return s + 1, cache, token, state

  def keep_going(carry):
    s, _, _, (_, done, _, _) = carry
    return (s < max_new_tokens) & ~jnp.all(done[:live])

  out = dict(tokens=jnp.full((rows, max_new_tokens), pad_id, jnp.int32),
             logps=jnp.zeros((rows, max_new_tokens), jnp.float32),
             model_logps=jnp.zeros((rows, max_new_tokens), jnp.float32))
  no_rows = jnp.zeros((rows,), jnp.bool_)
  first = strategies.summarize(logits, strategy.summary_temperature)
  token, state = draw(0, first, (out, no_rows, jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), jnp.int32)))
  _, cache, _, (out, done, lengths, _) = jax.lax.while_loop(
      keep_going, step, (jnp.ones((), jnp.int32), cache, token, state))
  return SampleOutput(tokens=out["tokens"], logps=out["logps"], model_logps=out["model_logps"], lengths=lengths,
                      done=done), cache


_COMPILED: dict = {}


def _compiled(kind: str, cfg: ModelConfig, params: decoding.DecodingParams, mesh, rules,
              shape: tuple[int, int, int, int], **static):
  """jit of `prefill` / `decode` with the static arguments bound; with a mesh, explicit in/out shardings.

  Without a mesh everything sits on the default device. With one, parameters keep their logical-axis shardings,
  prompt/cache/sample rows are sharded over `batch` (data x fsdp) and the vocab dimension of logits over `tensor`
  (a dimension that does not divide its mesh axes stays replicated). shape = (prompts P, prompt length T,
  rows R, new tokens N). `params` (the decoding parameters) only give their shapes, which `cfg` fixes.
  """
  key = (kind, cfg, mesh, rules, shape, tuple(sorted(static.items())))
  if key in _COMPILED:
    return _COMPILED[key]
  fn = functools.partial(prefill if kind == "prefill" else decode, cfg, **static)
  donate = () if kind == "prefill" else (1,)
  if mesh is None:
    jitted = jax.jit(fn, donate_argnums=donate)
  else:
    from spct_jax import sharding  # pylint: disable=g-import-not-at-top
    p, t, r, n = shape
    named = lambda dims, axes: jax.sharding.NamedSharding(mesh, sharding.spec_for(dims, axes, mesh, rules))
    per_layer = tuple(named((r * cfg.num_kv_heads, t + n, cfg.head_dim), decoding.CACHE_AXES)
                      for _ in range(cfg.num_layers))
    cache_sh = decoding.LayerCache(k=per_layer, v=per_layer, key_positions=named((r, t + n), ("batch", "cache_length")),
                                   index=named((), ()))
    rows, rows_vocab = named((r,), ("batch",)), named((r, cfg.vocab_size), ("batch", "vocab"))
    params_sh = jax.tree.map(lambda a, axes: named(a.shape, axes), params, decoding.param_logical_axes(cfg))
    if kind == "prefill":
      prompts = named((p, t), ("batch", "length"))
      jitted = jax.jit(fn, in_shardings=(params_sh, prompts, prompts, named((r,), (None,))),
                       out_shardings=(cache_sh, rows_vocab, rows))
    else:
      per_token = named((r, n), ("batch", None))
      out_sh = SampleOutput(tokens=per_token, logps=per_token, model_logps=per_token, lengths=rows, done=rows)
      stop_table = named((cfg.vocab_size, 2), (None, None))  # replicated, whatever its number of states
      jitted = jax.jit(fn, donate_argnums=donate, out_shardings=(out_sh, cache_sh),
                       in_shardings=(params_sh, cache_sh, rows_vocab, rows, named((), ()), rows, stop_table))
  _COMPILED[key] = jitted
  return jitted


@dataclasses.dataclass(frozen=True)
class GenerationResult:
  """Output of `generate`; rows are `len(prompts) * num_samples`, samples of one prompt contiguous.

  `prompt_tokens`/`prompt_mask` hold the distinct prompts actually prefilled and `row_source[r]` the one row r
  continues, so a trainer can rebuild prompt + completion without re-tokenizing.
  """

  texts: list[str]
  tokens: np.ndarray
  logps: np.ndarray
  model_logps: np.ndarray
  lengths: np.ndarray
  done: np.ndarray
  prompt_tokens: np.ndarray
  prompt_mask: np.ndarray
  row_source: np.ndarray


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, *, multiple: int = 1,
             max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to a bucketed common length (fewer distinct shapes, fewer compiles).

  The length is rounded up to a multiple of `multiple`, or, for prompts shorter than that, to a power of two (at
  least 8): a 20-token prompt pads to 32, not 64, which halves its prefill.
  """
  longest = max(len(s) for s in sequences)
  length = -(-longest // multiple) * multiple
  if longest < multiple:
    length = min(length, max(8, 1 << (longest - 1).bit_length()))
  if max_length is not None:
    length = max(longest, min(length, max_length))
  tokens = np.full((len(sequences), length), pad_id, np.int32)
  mask = np.zeros((len(sequences), length), np.bool_)
  for i, seq in enumerate(sequences):
    if len(seq):
      tokens[i, length - len(seq):] = seq
      mask[i, length - len(seq):] = True
  return tokens, mask


def sample_from_tokens(model: Transformer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                       num_samples: int = 1, strategy=Greedy(), seed: int | jax.Array = 0,
                       eos_ids: Sequence[int] = (1,), pad_id: int = 0, length_multiple: int = 64,
                       stop: StopAfter | None = None, mesh: jax.sharding.Mesh | None = None,
                       memory_budget_bytes: int | None = None,
                       ) -> tuple[SampleOutput, np.ndarray, np.ndarray, np.ndarray]:
  """Token-level sampling: identical prompts are prefilled once; returns (output, prompt tokens, mask, row_source).

  The rows run in chunks of contiguous rows whose estimated footprint fits `memory_budget_bytes` per device
  (`sampling_memory`; None = `sampling_memory.default_budget_bytes()`, a share of the memory free now). Each chunk
  prefills its rows' prompts at the request's padded length and draws every row's tokens from the row's own keys,
  so the output is the same however the rows are chunked. A request whose longest row alone does not fit raises
  `sampling_memory.RowsDoNotFit` before any work.

  Multi-process: every process passes the same `prompts` (each places its shards of the prompt arrays; the budget
  is the smallest over processes, so all run the same chunks); the output arrays span every process's devices:
  read them with `multihost.to_host` (on every process).
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if not prompts:
    raise ValueError("no prompts given")
  cfg = model.cfg
  for i, p in enumerate(prompts):
    if not len(p):
      raise ValueError(f"prompt {i} is empty (it needs at least a BOS token)")
    if len(p) + max_new_tokens > cfg.max_seq_len:
      raise ValueError(f"prompt {i} has {len(p)} tokens; with max_new_tokens={max_new_tokens} that exceeds the "
                       f"model's context of {cfg.max_seq_len} tokens")
  distinct: dict[tuple[int, ...], int] = {}
  prompt_rows = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
  row_source = np.repeat(np.asarray(prompt_rows, np.int32), num_samples)
  tokens, mask = left_pad(list(distinct), pad_id, multiple=length_multiple,
                          max_length=cfg.max_seq_len - max_new_tokens)
  budget = sampling_memory.default_budget_bytes() if memory_budget_bytes is None else memory_budget_bytes
  budget = multihost.agree_min(budget)  # free memory differs between hosts; the chunks (programs) must not
  shards = 1 if mesh is None else mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
  chunks = sampling_memory.row_chunks(cfg, row_source, [len(p) for p in prompts], tokens.shape[1], max_new_tokens,
                                      budget, shards=shards)
  key = jax.random.key(seed) if isinstance(seed, int) else seed
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # a raw uint32 key
  kernel = decoding.cpu_kernel_for(cfg, mesh)
  params = decoding.decoding_params(model, tiled=kernel == "amx")
  run = functools.partial(_sample_rows, cfg, params, tokens, mask, key, mesh=mesh, kernel=kernel,
                          max_new_tokens=max_new_tokens, strategy=strategy, eos_ids=tuple(int(e) for e in eos_ids),
                          pad_id=pad_id, stop=stop)
  outs = [run(row_source[chunk], np.arange(chunk.start, chunk.stop, dtype=np.int32)) for chunk in chunks]
  out = outs[0] if len(outs) == 1 else jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)
  return out, np.asarray(tokens), np.asarray(mask), row_source


def _sample_rows(cfg: ModelConfig, params: decoding.DecodingParams, tokens: np.ndarray, mask: np.ndarray,
                 key: jax.Array, row_source: np.ndarray, row_ids: np.ndarray, *, mesh, kernel: str | None,
                 max_new_tokens: int, strategy, eos_ids: tuple[int, ...], pad_id: int,
                 stop: StopAfter | None) -> SampleOutput:
  """Prefill of the prompts rows `row_ids` continue (row_source[r] indexes `tokens`), then their decode loop."""
  prompts, local_source = np.unique(row_source, return_inverse=True)
  local_source = local_source.astype(np.int32)
  # A single row leaves size-1 dimensions that XLA:CPU folds into reshapes fused with the cache update (which then
  # copies the cache every step): decode one filler row (its matmuls are skipped, see `decoding.Matmul`) and drop it.
  filler = len(local_source) == 1
  decode_rows, row_ids = (np.repeat(local_source, 2), np.repeat(row_ids, 2)) if filler else (local_source, row_ids)
  matmul = decoding.Matmul(cpu_kernel=kernel, live_rows=1 if filler else None)
  rules = None
  if mesh is not None:
    from spct_jax import sharding  # pylint: disable=g-import-not-at-top
    rules = sharding.DEFAULT_RULES
  shape = (len(prompts), tokens.shape[1], len(decode_rows), max_new_tokens)
  run_prefill = _compiled("prefill", cfg, params, mesh, rules, shape, cache_length=tokens.shape[1] + max_new_tokens,
                          matmul=matmul)
  # Host inputs enter as global arrays: every process passes the same prompts and places its own shards.
  place = lambda host, axes: host if mesh is None else multihost.global_array(host, mesh, axes, rules=rules)
  cache, logits, next_position = run_prefill(params, place(tokens[prompts], ("batch", "length")),
                                             place(mask[prompts], ("batch", "length")), place(decode_rows, (None,)))
  run_decode = _compiled("decode", cfg, params, mesh, rules, shape, max_new_tokens=max_new_tokens,
                         strategy=strategy, eos_ids=eos_ids, pad_id=pad_id, matmul=matmul)
  stop_table = (stop or NEVER_STOP).table(cfg.vocab_size)
  out, _ = run_decode(params, cache, logits, next_position, key, place(row_ids, ("batch",)),
                      place(stop_table, (None, None)))
  return jax.tree.map(lambda a: a[:1], out) if filler else out


def generate(model: Transformer, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, num_samples: int = 1,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             mesh: jax.sharding.Mesh | None = None, eos_ids: Sequence[int] | None = None,
             add_bos: bool = True) -> GenerationResult:
  """Samples `num_samples` continuations of every prompt (greedy when temperature is 0).

  Example:
    model, tok = spct_jax.load_model("gemma3-270m")
    out = spct_jax.generate(model, tok, ["The capital of France is"], max_new_tokens=8)
    out.texts[0]
  """
  if isinstance(prompts, str):
    raise TypeError("prompts must be a list of strings, not a single string")
  eos_ids = tuple(eos_ids) if eos_ids is not None else (tokenizer.eos_id,)
  encoded = [tokenizer.encode(p, add_bos=add_bos) for p in prompts]
  out, prompt_tokens, prompt_mask, row_source = sample_from_tokens(
      model, encoded, max_new_tokens=max_new_tokens, num_samples=num_samples,
      strategy=strategy_for(temperature, top_k, top_p), seed=seed, eos_ids=eos_ids, pad_id=tokenizer.pad_id,
      mesh=mesh)
  out = multihost.to_host(out)
  texts = [tokenizer.decode([t for t in row[:n] if t not in eos_ids]) for row, n in zip(out.tokens, out.lengths)]
  return GenerationResult(texts=texts, tokens=out.tokens, logps=out.logps, model_logps=out.model_logps,
                          lengths=out.lengths, done=out.done, prompt_tokens=prompt_tokens, prompt_mask=prompt_mask,
                          row_source=row_source)
