"""spct-jax: Self-Principled Critique Tuning of generative reward models in JAX.

Public entry points are imported lazily so `import spct_jax` stays fast and never pulls TensorFlow.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": "spct_jax.weights",
    "generate": "spct_jax.sampler",
    "GRM": "spct_jax.grm",
    "ModelConfig": "spct_jax.model",
    "Transformer": "spct_jax.model",
}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'spct_jax' has no attribute {name!r}")


__all__ = sorted(_LAZY)
