"""Gemma 2 / 3 decoder in Flax NNX, its config presets and the flat parameter format."""

from spct_jax.model.config import PRESETS, ModelConfig, get_config
from spct_jax.model.params import abstract_model, flat_from_model, model_from_flat
from spct_jax.model.transformer import Transformer, param_logical_axes

__all__ = ["PRESETS", "ModelConfig", "Transformer", "abstract_model", "flat_from_model", "get_config",
           "model_from_flat", "param_logical_axes"]
