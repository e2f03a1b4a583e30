"""The meta RM's held-out evaluator: its metrics are `binary_metrics` of the model's own logits; specs and rules."""

import numpy as np
import pytest
from flax import nnx

from spct_jax import evaluators, meta_rm
from spct_jax.data.meta_rm_examples import MetaRMExample
from spct_jax.experiments import validation
from spct_jax.model import Transformer, get_config
from spct_jax.train import binary_metrics


class ByteTokenizer:
  pad_id, eos_id, bos_id = 0, 1, 2

  def encode(self, text, add_bos=True):
    return ([self.bos_id] if add_bos else []) + [4 + b for b in text.encode()]


def _examples():
  texts = ["a short one", "Scores: \\boxed{9, 2}", "x", "a longer judgement " * 5, "GOOD", "BAD", "y z"]
  return [MetaRMExample(uid=f"u{i // 2}", source="s", sample_index=i % 2, text=t, label=i % 2)
          for i, t in enumerate(texts)]


def test_metrics_are_binary_metrics_of_the_models_logits():
  model = meta_rm.from_backbone(Transformer(get_config("tiny-gemma3"), rngs=nnx.Rngs(0)), seed=1, init_std=1.0)
  spec = {"type": "binary", "every": 5, "batch_size": 3, "num_bins": 4}
  evaluator = evaluators.from_config(spec, name="heldout", examples=_examples(), tokenizer=ByteTokenizer())
  assert isinstance(evaluator, evaluators.BinaryEvaluator) and evaluator.every == 5
  out = evaluator(model)
  logits = meta_rm.as_meta_scorer(model, ByteTokenizer()).score([e.text for e in _examples()])
  expected = binary_metrics.binary_metrics(logits, [e.label for e in _examples()], num_bins=4)
  assert np.ptp(logits) > 1e-3  # a random head: the metrics are not those of a constant
  assert out == pytest.approx({**expected, "items": 4.0})  # 7 examples of items u0..u3, chunks of 3 rows agree


def test_specs_and_rules_by_type():
  with pytest.raises(ValueError, match=r"config\.evals\.heldout.*binary evaluator: unknown key.*'ks'"):
    evaluators.spec_from_config({"type": "binary", "ks": (1,)}, "heldout")
  with pytest.raises(ValueError, match="no held-out examples"):
    evaluators.from_config({"type": "binary"}, name="x", examples=[], tokenizer=None)
  config = {"evals": {"a": {"type": "binary", "every": 2, "batch_size": 8, "num_bins": 0},
                      "b": {"type": "voting", "every": 1}}}
  from ml_collections import ConfigDict
  with pytest.raises(validation.ConfigError) as error:
    validation.check(ConfigDict(config), validation.evals(ConfigDict(config), types=("binary",)))
  assert "evals.a.num_bins=0" in str(error.value) and "evals.b.type='voting'; expected one of ['binary']" in str(
      error.value)
