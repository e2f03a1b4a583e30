"""What every experiment builds from its ConfigDict: compile cache, mesh, model + tokenizer, GRM options and
demonstrations, and each process's share of a batch of items (`process_shard`). Which items a run reads (sources,
the held-out rules, the context budget) is `selection`'s.

One reader per concern, so the experiments (grpo, eval; rft_generate, rft, meta_rm next) cannot drift:
  config.model  name, init ("pretrained" | "random"), tokenizer, seed, param_dtype, compute_dtype, max_seq_len,
                vocab_size (random init; None = the tokenizer's)
  config.grm    template, single_template, chat_style, max_new_tokens, temperature (sampling), top_k, top_p,
                num_distinct_orders, output_prefix, stop_after_scores, num_demonstrations, demo_seed
  config.data   read by `selection` (`training_items`, `eval_items`, `split_items`)
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import jax
from etils import epath

from spct_jax import files, multihost
from spct_jax import sharding as shd
from spct_jax.data import synthetic
from spct_jax.experiments import selection
from spct_jax.grm import templates
from spct_jax.grm.scorer import GRMOptions

# Demonstrations: an index range disjoint from the training stream and from the held-out one
# (selection.HELDOUT_START), so they never repeat a trained or held-out item.
DEMO_START = 2 * 10**9


# ------------------------------------------------------------------------------------------------------------
# Start-up: compile cache, mesh.


def setup_compile_cache(path: str | None) -> epath.Path | None:
  """Turns on JAX's persistent compilation cache at `path` (config key compile_cache; "" or None: off).

  A resumed run or a second eval then loads its executables instead of compiling them again.
  """
  if not path:
    return None
  directory = files.as_path(path)
  jax.config.update("jax_compilation_cache_dir", os.fspath(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def build_mesh(config, devices: Sequence[Any] | None = None) -> jax.sharding.Mesh | None:
  """`config.mesh` (data/fsdp/tensor sizes) -> Mesh over `devices` (default: all global devices); None when absent
  or a single device would do. `devices=jax.local_devices()`: a model of this process alone (work split by process)."""
  mesh_cfg = config.get("mesh")
  if mesh_cfg is None or len(devices if devices is not None else jax.devices()) == 1:
    return None
  return shd.make_mesh(shd.MeshConfig.from_config(mesh_cfg), devices)


# ------------------------------------------------------------------------------------------------------------
# Model.


def synthetic_tokenizer(vocab_size: int = 1024, seed: int = 0):
  """A small sentencepiece vocabulary trained in memory on rendered synthetic GRM prompts (offline, < 1 s).

  Gemma's special ids (pad 0, eos 1, bos 2, unk 3) and chat markers; byte fallback so any text encodes.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  from spct_jax.tokenizer import END_OF_TURN, START_OF_TURN, Tokenizer  # pylint: disable=g-import-not-at-top

  lines = []
  for item in synthetic.generate_items(48, seed=seed, num_responses=(2, 4)):
    judgement = synthetic.worked_judgement(item)
    lines += templates.render_demonstration(item.conversation, item.responses, **judgement).splitlines()
  buffer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([line for line in lines if line.strip()]), model_writer=buffer,
      vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      user_defined_symbols=[START_OF_TURN, END_OF_TURN], byte_fallback=True, hard_vocab_limit=False,
      character_coverage=1.0, num_threads=1, minloglevel=2)
  return Tokenizer(buffer.getvalue())


def build_model(model_cfg, mesh=None) -> tuple[Any, Any]:
  """(model, tokenizer) from `config.model` (see the module docstring), sharded over `mesh` when given."""
  from spct_jax import weights  # pylint: disable=g-import-not-at-top

  m = model_cfg
  if m.init == "pretrained":
    model, tokenizer = weights.load_model(m.name, dtype=m.param_dtype, compute_dtype=m.compute_dtype, mesh=mesh,
                                          max_seq_len=m.max_seq_len)
    if tokenizer is None:
      raise ValueError(f"model {m.name!r} (config key model.name) has no tokenizer.model next to its weights")
    return model, tokenizer
  if m.init != "random":
    raise ValueError(f"config.model.init={m.init!r}; valid: ['pretrained', 'random']")
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from spct_jax.model import Transformer, get_config  # pylint: disable=g-import-not-at-top

  if m.tokenizer == selection.SYNTHETIC:
    tokenizer = synthetic_tokenizer(seed=m.seed)
  else:
    tokenizer = weights.load_tokenizer(m.tokenizer)
  vocab = m.get("vocab_size") or tokenizer.vocab_size
  if tokenizer.vocab_size > vocab:
    raise ValueError(f"config.model.vocab_size={vocab} is smaller than the tokenizer's {tokenizer.vocab_size} pieces")
  cfg = get_config(m.name, vocab_size=vocab, param_dtype=m.param_dtype, compute_dtype=m.compute_dtype,
                   max_seq_len=m.max_seq_len)
  model = shd.create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(m.seed)), mesh)
  return model, tokenizer


def describe_model(model, tokenizer, model_cfg) -> dict[str, Any]:
  cfg = model.cfg
  return {"name": model_cfg.name, "init": model_cfg.init, "family": cfg.family, "num_layers": cfg.num_layers,
          "embed_dim": cfg.embed_dim, "vocab_size": cfg.vocab_size, "param_dtype": cfg.param_dtype,
          "compute_dtype": cfg.compute_dtype, "max_seq_len": cfg.max_seq_len, "tokenizer_vocab": tokenizer.vocab_size}


# ------------------------------------------------------------------------------------------------------------
# GRM options.


def _demonstrations(num: int, seed: int, template: str, *, start: int, num_responses: int) -> tuple[str, ...]:
  return tuple(templates.render_demonstration(item.conversation, item.responses, **synthetic.worked_judgement(item),
                                              template=template)
               for item in synthetic.generate_items(num, seed=seed, start=start, num_responses=num_responses))


def demonstrations(grm_cfg) -> dict[str, tuple[str, ...]]:
  """Worked few-shot examples rendered from generated items (a pretrained base model needs them to answer in
  format), from their own index range of the `demo_seed` stream: GRMOptions' `demonstrations` (n = 2 items under
  `template`) and `single_demonstrations` (n = 1 items under `single_template`, from the next slice), so each item
  sees examples of its own template."""
  g, single = grm_cfg, ()
  if g.get("single_template") not in (None, g.template):
    single = _demonstrations(g.num_demonstrations, g.demo_seed, g.single_template,
                             start=DEMO_START + g.num_demonstrations, num_responses=1)
  return {"demonstrations": _demonstrations(g.num_demonstrations, g.demo_seed, g.template, start=DEMO_START,
                                            num_responses=2),
          "single_demonstrations": single}


def grm_options(config) -> GRMOptions:
  """The one reader of `config.grm` (plus config.seed): how the GRM is prompted and sampled."""
  g = config.grm
  return GRMOptions(template=g.template, single_template=g.get("single_template"), chat_style=g.chat_style,
                    max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                    num_distinct_orders=g.num_distinct_orders, output_prefix=g.output_prefix, seed=config.seed,
                    stop_after_scores=g.stop_after_scores, memory_budget_bytes=g.get("memory_budget_bytes"),
                    **demonstrations(g))


def build_run(config, *, devices: Sequence[Any] | None = None, hint: bool = False):
  """(mesh, model, tokenizer, GRM options, context budget): what a run builds before its data (`build_mesh`,
  `build_model`, `grm_options`, `selection.ContextBudget`; hint: the budget measures hinted prompts)."""
  mesh = build_mesh(config, devices)
  model, tokenizer = build_model(config.model, mesh)
  options = grm_options(config)
  return mesh, model, tokenizer, options, selection.ContextBudget(tokenizer, options, model.cfg.max_seq_len, hint=hint)


def export_model(model, tokenizer, folder) -> None:
  """A trained GRM as a `load_model` folder (parameters, config, tokenizer; written atomically by process 0 after
  every process took part in gathering the parameters): what `model.name` of a later stage reads."""
  from spct_jax import multihost  # pylint: disable=g-import-not-at-top
  from spct_jax.model.params import flat_from_model  # pylint: disable=g-import-not-at-top
  from spct_jax.weights.orbax_io import save_model  # pylint: disable=g-import-not-at-top

  flat = flat_from_model(model)
  if multihost.is_main_process():
    save_model(flat, model.cfg, folder, tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------------------
# Items over processes.


def process_shard(items: Sequence[Any], mesh: jax.sharding.Mesh | None) -> list[Any]:
  """This process's share of a batch of `items`: those whose rows its devices hold when the batch is sharded over
  `mesh`'s batch axes (`multihost.process_rows`: a contiguous block; all items where the batch is replicated or
  there is no mesh, and in a one-process run). What a process makes of its items (prompts, rewards, SFT rows)
  becomes global with `multihost.global_batch` / `gather_rows`, in item order."""
  return list(items[multihost.process_rows(len(items), mesh)])
