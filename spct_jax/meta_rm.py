"""The meta RM (spec sec. 5): a scalar head on the Gemma backbone that rates a GRM trajectory's chance of being correct.

Input: `grm.templates.meta_rm_input(conversation, responses in the order the sample showed them, judgement)`,
tokenized with BOS and left-padded like every batch here. Output: one f32 logit per row, read from the LAST REAL
token's final hidden state (after the final norm) through a linear head, `logit = h . w + b`. Trained with binary
cross-entropy on Eq. 10 labels (`bce_objective`, the shared `train.step.make_train_step`); at inference
`as_meta_scorer` scores the B x k trajectories of a GRM call in one batched forward, and guided voting keeps the
k_meta samples with the highest logits (`grm.voting.meta_rm_keep`).

Choices (the paper is silent; each is a `MetaRMConfig` field, saved with the model):
- chat_style: how prompt and trajectory are joined ("raw": a newline; "gemma": a closed model turn), see
  `meta_rm_input`. The same style must be used in training and at inference, so it travels with the checkpoint.
- max_length: longer inputs keep BOS and their LAST max_length - 1 tokens (the judgement's end, where the head
  reads, is kept; the start of a long prompt is lost). None: the backbone's context.
- head init: zeros (`init_std=0`), so an untrained head says p = 0.5 for every trajectory and the first steps
  are not dominated by a random projection of hidden states whose scale is large in real Gemma checkpoints.

Parameters: `backbone/...` (the `Transformer`'s, DESIGN.md table) and `head/weight` f32[D] (logical axes
("embed",), sharded like the embedding dim) and `head/bias` f32[]. A frozen backbone is `trainable="^head/"`.

Folder format (`save_meta_rm` / `load_meta_rm`): the backbone as an orbax model folder (`weights.save_model`:
`spct_config.json`, `params/`, `tokenizer.model`), plus `meta_rm.json` (the `MetaRMConfig`, format version) and
`head/` (orbax PyTree {weight, bias}). `load_model` on such a folder reads the backbone alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax import files, multihost, sampler
from spct_jax import sharding as shd
from spct_jax.grm import scorer, templates, voting
from spct_jax.model.transformer import Transformer
from spct_jax.train import losses

FORMAT_VERSION = 1
CONFIG_NAME = "meta_rm.json"
HEAD_DIR = "head"
# Rows of a scored batch are padded to a multiple of this (fewer distinct shapes, fewer compiles).
ROW_MULTIPLE = 8


@dataclasses.dataclass(frozen=True)
class MetaRMConfig:
  """What a meta RM needs besides its weights (see the module docstring for the choices).

  chat_style: "raw" or "gemma" (`templates.CHAT_STYLES`).
  max_length: longest input in tokens (BOS + tail kept); None: the backbone's `max_seq_len`.
  """

  chat_style: str = "raw"
  max_length: int | None = None

  def __post_init__(self):
    if self.chat_style not in templates.CHAT_STYLES:
      raise ValueError(f"meta RM chat_style={self.chat_style!r}; valid: {list(templates.CHAT_STYLES)}")
    if self.max_length is not None and self.max_length < 2:
      raise ValueError(f"meta RM max_length={self.max_length} must be >= 2 (BOS and one token)")


class ScalarHead(nnx.Module):
  """hidden f32[B, D] -> logit f32[B] = hidden . weight + bias, in f32."""

  def __init__(self, embed_dim: int, *, rngs: nnx.Rngs, init_std: float = 0.0):
    weight = init_std * jax.random.normal(rngs.params(), (embed_dim,), jnp.float32)
    self.weight = nnx.Param(weight, logical_axes=("embed",))
    self.bias = nnx.Param(jnp.zeros((), jnp.float32), logical_axes=())

  def __call__(self, hidden: jax.Array) -> jax.Array:
    w = self.weight[...].astype(jnp.float32)
    return jnp.dot(hidden.astype(jnp.float32), w, precision=jax.lax.Precision.HIGHEST) + self.bias[...]


def last_real_hidden(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """hidden f32[B, T, D], mask [B, T] -> f32[B, D] at each row's last real token (any padding side)."""
  mask = attention_mask.astype(jnp.bool_)
  last = hidden.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
  return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


class MetaRM(nnx.Module):
  """The backbone `Transformer` plus a `ScalarHead`: `meta_rm(tokens, attention_mask=mask) -> f32[B]` logits."""

  def __init__(self, backbone: Transformer, config: MetaRMConfig = MetaRMConfig(), *, rngs: nnx.Rngs,
               init_std: float = 0.0):
    self.backbone = backbone
    self.config = config
    self.head = ScalarHead(backbone.cfg.embed_dim, rngs=rngs, init_std=init_std)

  @property
  def cfg(self):
    """The backbone's `ModelConfig`."""
    return self.backbone.cfg

  @property
  def max_length(self) -> int:
    return self.config.max_length or self.cfg.max_seq_len

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               attention_mask: jax.Array | None = None) -> jax.Array:
    """tokens int32[B, T] (left-padded), mask [B, T] (1 = real) -> logits f32[B]."""
    if attention_mask is None:
      attention_mask = jnp.ones(tokens.shape, jnp.bool_)
    hidden = self.backbone.hidden_states(tokens, positions, attention_mask)
    return self.head(last_real_hidden(hidden, attention_mask))


def from_backbone(backbone: Transformer, config: MetaRMConfig = MetaRMConfig(), *, seed: int = 0,
                  init_std: float = 0.0, mesh: jax.sharding.Mesh | None = None,
                  rules=shd.DEFAULT_RULES) -> MetaRM:
  """A meta RM on `backbone` (already placed / sharded) with a fresh head placed on `mesh` by its logical axes."""
  model = MetaRM(backbone, config, rngs=nnx.Rngs(seed), init_std=init_std)
  if mesh is not None:
    head_state = nnx.state(model.head)
    nnx.update(model.head, jax.device_put(head_state, shd.state_shardings(head_state, mesh, rules)))
  return model


# ----------------------------------------------------------------------------------------------------------------
# Save and load.


def save_meta_rm(model: MetaRM, folder: str | os.PathLike, *, tokenizer=None) -> pathlib.Path:
  """Writes backbone + head + config into `folder` atomically (complete or absent); replaces an existing one."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top  Deferred like weights.orbax_io.

  from spct_jax.weights.orbax_io import save_model  # pylint: disable=g-import-not-at-top

  head = {name: np.asarray(jax.device_get(getattr(model.head, name)[...])) for name in ("weight", "bias")}
  with files.atomic_path(folder, folder=True) as tmp:
    save_model(model.backbone, model.cfg, tmp, tokenizer=tokenizer)
    with ocp.PyTreeCheckpointer() as ckptr:
      ckptr.save(tmp / HEAD_DIR, head)
    record = {"format_version": FORMAT_VERSION, **dataclasses.asdict(model.config)}
    (tmp / CONFIG_NAME).write_text(json.dumps(record, indent=2) + "\n")
  return pathlib.Path(folder)


def read_config(folder: str | os.PathLike) -> MetaRMConfig:
  """The `MetaRMConfig` of a `save_meta_rm` folder; a clear error when `folder` is not one."""
  folder = pathlib.Path(folder)
  path = folder / CONFIG_NAME
  if not folder.is_dir():
    raise FileNotFoundError(f"meta RM folder {os.fspath(folder)!r} does not exist")
  if not path.is_file():
    what = "a plain model folder" if (folder / "spct_config.json").is_file() else "not a model folder"
    raise ValueError(f"{os.fspath(folder)!r} is not a meta RM ({what}: no {CONFIG_NAME}); write one with "
                     "meta_rm.save_meta_rm, or build one on a backbone with meta_rm.from_backbone")
  try:
    record = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON ({e})") from e
  version = record.pop("format_version", None)
  if version != FORMAT_VERSION:
    raise ValueError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION}")
  names = {f.name for f in dataclasses.fields(MetaRMConfig)}
  if unknown := set(record) - names:
    raise ValueError(f"{path}: unknown meta RM fields {sorted(unknown)}")
  return MetaRMConfig(**record)


def load_meta_rm(folder: str | os.PathLike, *, dtype: str = "float32", compute_dtype: str | None = None,
                 mesh: jax.sharding.Mesh | None = None, rules=shd.DEFAULT_RULES):
  """(MetaRM, tokenizer or None) from a `save_meta_rm` folder; backbone and head both restored (and sharded)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from spct_jax.weights import load_model  # pylint: disable=g-import-not-at-top

  folder = pathlib.Path(folder).absolute()
  config = read_config(folder)
  if not (folder / HEAD_DIR).is_dir():
    raise FileNotFoundError(f"{folder}: no {HEAD_DIR}/ orbax checkpoint beside {CONFIG_NAME}")
  backbone, tokenizer = load_model(folder, dtype=dtype, compute_dtype=compute_dtype, mesh=mesh, rules=rules)
  with ocp.PyTreeCheckpointer() as ckptr:
    head = ckptr.restore(folder / HEAD_DIR)
  model = from_backbone(backbone, config, mesh=None)
  for name, shape in (("weight", (model.cfg.embed_dim,)), ("bias", ())):
    if not isinstance(head, dict) or name not in head:
      raise ValueError(f"{folder / HEAD_DIR}: no head tensor {name!r} (expected 'weight' and 'bias')")
    value = np.asarray(head[name])
    if value.shape != shape:
      raise ValueError(f"{folder / HEAD_DIR}: head {name!r} has shape {value.shape}, expected {shape}")
    getattr(model.head, name).set_value(jnp.asarray(value, jnp.float32))
  if mesh is not None:
    head_state = nnx.state(model.head)
    nnx.update(model.head, jax.device_put(head_state, shd.state_shardings(head_state, mesh, rules)))
  return model, tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Batches and the training objective.


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
  """Token ids with BOS; a row longer than `max_length` keeps BOS and its last `max_length - 1` tokens."""
  out = []
  for text in texts:
    ids = tokenizer.encode(text, add_bos=True)
    out.append(ids if len(ids) <= max_length else ids[:1] + ids[len(ids) - max_length + 1:])
  return out


def make_batch(tokenizer, texts: Sequence[str], labels: Sequence[float] | None = None, *, max_length: int,
               rows: int | None = None, length_multiple: int = 64) -> dict[str, np.ndarray]:
  """A left-padded batch: tokens int32[R, T], attention_mask bool[R, T], weights f32[R] (0 on filler rows),
  labels f32[R] when given. R = `rows` (>= len(texts); filler rows are all padding) or len(texts)."""
  if not texts:
    raise ValueError("no texts to batch")
  rows = len(texts) if rows is None else rows
  if rows < len(texts):
    raise ValueError(f"rows={rows} is fewer than the {len(texts)} texts")
  ids = encode(tokenizer, texts, max_length)
  tokens, mask = sampler.left_pad(ids + [[]] * (rows - len(ids)), tokenizer.pad_id, multiple=length_multiple,
                                  max_length=max_length)
  weights = (np.arange(rows) < len(texts)).astype(np.float32)
  batch = {"tokens": tokens, "attention_mask": mask, "weights": weights}
  if labels is not None:
    if len(labels) != len(texts):
      raise ValueError(f"{len(labels)} labels for {len(texts)} texts")
    batch["labels"] = np.concatenate([np.asarray(labels, np.float32), np.zeros(rows - len(texts), np.float32)])
  return batch


def bce_objective(*, pos_weight: float | None = None):
  """loss_fn(model, aux, batch) for `make_train_step`: `losses.sigmoid_bce` on the meta RM's logits.

  batch: tokens int32[B, T], attention_mask [B, T], labels f32[B] (1 = correct trajectory), weights f32[B]
  (0 masks filler rows). pos_weight > 1 up-weights correct trajectories (class weighting; see
  `data.meta_rm_examples.pos_weight_for`); None with balanced batches.
  """

  def loss_fn(model, _, batch):
    logits = model(batch["tokens"], attention_mask=batch["attention_mask"])
    return losses.sigmoid_bce(logits, batch["labels"], weights=batch.get("weights"), pos_weight=pos_weight)

  return loss_fn


# ----------------------------------------------------------------------------------------------------------------
# Scoring and guided voting.


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, tokens, mask):
  return nnx.merge(graphdef, state)(tokens, attention_mask=mask)


class MetaRMScorer:
  """Scores texts with a meta RM in batched forwards; as a callable it is `GRM.score_batch`'s `meta_rm` hook.

  max_rows: most rows per forward (a memory budget); None: all rows in one forward. Row counts are padded to a
  multiple of `ROW_MULTIPLE` (and of the mesh's batch axes), lengths to a multiple of `length_multiple`.
  """

  def __init__(self, model: MetaRM, tokenizer, *, max_rows: int | None = None, length_multiple: int = 64,
               mesh: jax.sharding.Mesh | None = None, rules=shd.DEFAULT_RULES):
    if max_rows is not None and max_rows < 1:
      raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    self.model, self.tokenizer, self.mesh, self.rules = model, tokenizer, mesh, rules
    self.max_rows, self.length_multiple = max_rows, length_multiple

  def _row_multiple(self) -> int:
    if self.mesh is None:
      return ROW_MULTIPLE
    batch_devices = math.prod(self.mesh.shape[a] for a in shd.mesh_axes_for("batch", self.mesh, self.rules))
    return math.lcm(ROW_MULTIPLE, batch_devices)

  def score(self, texts: Sequence[str]) -> np.ndarray:
    """f32[N] logits of N full meta-RM input texts (`meta_rm_input`), row i for texts[i]."""
    n = len(texts)
    if n == 0:
      return np.zeros((0,), np.float32)
    multiple = self._row_multiple()
    chunk = n if self.max_rows is None else min(n, self.max_rows)
    chunk = -(-chunk // multiple) * multiple
    num_chunks = -(-n // chunk)
    batch = make_batch(self.tokenizer, texts, rows=num_chunks * chunk, max_length=self.model.max_length,
                       length_multiple=self.length_multiple)
    graphdef, state = nnx.split(self.model)
    logits = []
    for c in range(num_chunks):  # every chunk has the same shape: one compile
      rows = slice(c * chunk, (c + 1) * chunk)
      tokens, mask = batch["tokens"][rows], batch["attention_mask"][rows]
      if self.mesh is not None:
        sharding = shd.activation_sharding(tokens.shape, ("batch", "length"), self.mesh, self.rules)
        tokens, mask = multihost.host_to_global(tokens, sharding), multihost.host_to_global(mask, sharding)
      logits.append(_forward(graphdef, state, tokens, mask))
    return np.concatenate([np.asarray(x, np.float32) for x in multihost.to_host(logits)])[:n]

  def inputs(self, items: Sequence[Any], texts: Sequence[Sequence[str]], perms: np.ndarray) -> list[str]:
    """The B x k meta-RM inputs, row b*k + s: item b's responses in sample s's shown order, its judgement."""
    perms = np.asarray(perms)
    if len(texts) != len(items) or perms.shape[:2] != (len(items), len(texts[0]) if texts else 0):
      raise ValueError(f"{len(items)} items, texts [{len(texts)}][...] and perms {perms.shape} disagree")
    rows = scorer.meta_rm_inputs(items, texts, perms, chat_style=self.model.config.chat_style)
    return [text for row in rows for text in row]

  def __call__(self, items: Sequence[Any], texts: Sequence[Sequence[str]], perms: np.ndarray) -> np.ndarray:
    """f32[B, k] logits of the B x k trajectories (items, texts[B][k], perms int32[B, k, n]), one batched score."""
    k = len(texts[0]) if texts else 0
    return self.score(self.inputs(items, texts, perms)).reshape(len(items), k)


def as_meta_scorer(meta_model: MetaRM, tokenizer, *, max_rows: int | None = None, length_multiple: int = 64,
                   mesh: jax.sharding.Mesh | None = None, rules=shd.DEFAULT_RULES) -> MetaRMScorer:
  """The callable `(items, texts[B][k], perms int32[B, k, n]) -> f32[B, k]` for `GRM.score_batch(meta_rm=...)`."""
  return MetaRMScorer(meta_model, tokenizer, max_rows=max_rows, length_multiple=length_multiple, mesh=mesh,
                      rules=rules)


def resolve_scorer(meta_rm, tokenizer, *, mesh: jax.sharding.Mesh | None = None):
  """`GRM.score_batch(meta_rm=...)`: a `MetaRM` becomes `as_meta_scorer(meta_rm, tokenizer, mesh=mesh)`; any
  other callable `(items, texts, perms) -> f32[B, k]` (a configured `MetaRMScorer`, a scripted test scorer) is
  used as it is."""
  if isinstance(meta_rm, MetaRM):
    if tokenizer is None:
      raise ValueError("a MetaRM needs a tokenizer: give the GRM one, or pass meta_rm.as_meta_scorer(model, tok)")
    return as_meta_scorer(meta_rm, tokenizer, mesh=mesh)
  if callable(meta_rm):
    return meta_rm
  raise TypeError(f"meta_rm must be a MetaRM or a callable (items, texts, perms) -> f32[B, k], got {type(meta_rm)}")


def default_k_meta(k: int, k_meta: int | None = None) -> int:
  """k_meta, or the paper's default k // 2 (at least 1); must lie in [1, k]."""
  k_meta = max(1, k // 2) if k_meta is None else int(k_meta)
  if not 1 <= k_meta <= k:
    raise ValueError(f"k_meta={k_meta} must lie in [1, k={k}]")
  return k_meta


@jax.jit
def _guided(sample_scores, valid, meta_scores, k_meta):
  kept = jax.vmap(voting.meta_rm_keep, in_axes=(0, 0, None))(meta_scores, valid, k_meta)
  return jax.vmap(voting.vote)(sample_scores, valid, kept), kept


def guided_vote(sample_scores: np.ndarray, valid: np.ndarray, meta_scores: np.ndarray,
                k_meta: int) -> tuple[np.ndarray, np.ndarray]:
  """MetaRM@k from an already sampled GRM call (so Voting@k and MetaRM@k share their samples).

  Args:
    sample_scores: int32[B, k, n] scores in the ORIGINAL order (`GRMResult.sample_scores`).
    valid: bool[B, k] (`GRMResult.valid`).
    meta_scores: f32[B, k] meta RM logits (e.g. `scorer(items, result.texts, result.perms)`).
    k_meta: samples kept per item (`default_k_meta`).

  Returns:
    (voted int32[B, n] over the kept samples, kept bool[B, k]).
  """
  voted, kept = _guided(jnp.asarray(sample_scores), jnp.asarray(valid, bool), jnp.asarray(meta_scores, jnp.float32),
                        default_k_meta(np.shape(valid)[1], k_meta))
  return np.asarray(voted), np.asarray(kept)
