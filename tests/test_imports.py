"""Model, sampler, GRM, GRPO, training and evaluation run where TensorFlow is not installed."""

import subprocess
import sys


def test_core_modules_do_not_import_tensorflow_or_seqio():
  code = ("import sys, spct_jax, spct_jax.model, spct_jax.sampler, spct_jax.grm, spct_jax.grpo, spct_jax.weights, "
          "spct_jax.experiments, spct_jax.evaluators, spct_jax.train.loop, spct_jax.main, spct_jax.meta_rm, "
          "spct_jax.data.meta_rm_examples, spct_jax.train.binary_metrics, spct_jax.rft, spct_jax.train.sft; "
          "bad = [m for m in ('tensorflow', 'seqio', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_public_entry_points_resolve():
  import spct_jax
  from spct_jax import grm, grpo
  assert callable(spct_jax.load_model) and callable(spct_jax.generate) and spct_jax.GRM is grm.GRM
  assert callable(grm.parse_scores) and callable(grm.is_correct)
  assert callable(grpo.group_advantages) and callable(grpo.grpo_loss)
