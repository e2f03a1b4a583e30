"""Tests for spct_jax.scaling: its sizes are the code's own (real leaves, real shards, the real optimizer), the
published Gemma 2 counts, and docs/SCALING.md is what it generates."""

import math
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from flax import nnx

from spct_jax import scaling
from spct_jax import sharding as shd
from spct_jax.model import Transformer, decoding, get_config
from spct_jax.train import step as train_step

REPO = pathlib.Path(__file__).resolve().parents[1]


def real_param_leaves(model):
  return jax.tree.leaves(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("name", ["tiny-gemma3", "tiny-gemma2"])
def test_parameter_count_equals_the_real_models_leaf_sizes(name):
  model = Transformer(get_config(name), rngs=nnx.Rngs(0))
  assert scaling.param_count(get_config(name)) == sum(x.size for x in real_param_leaves(model))


@pytest.mark.parametrize("name, published", [("gemma2-2b", 2_614_341_888), ("gemma2-9b", 9_241_705_984),
                                             ("gemma2-27b", 27_227_128_320)])
def test_gemma2_parameter_counts_are_the_published_ones(name, published):
  """Google's model cards round these to 2.6B / 9.2B / 27.2B; the HF checkpoints hold exactly these many."""
  assert scaling.param_count(name) == published


@pytest.mark.parametrize("sizes", [(1, 4, 2), (1, 8, 1), (2, 2, 2)])
def test_per_device_bytes_equal_a_real_sharded_models_shards(sizes):
  cfg = get_config("tiny-gemma3")
  mesh = shd.make_mesh(shd.MeshConfig(data=sizes[0], fsdp=sizes[1], tensor=sizes[2]))
  model = shd.create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  per_device = {}
  for array in real_param_leaves(model):
    for shard in array.addressable_shards:
      per_device[shard.device.id] = per_device.get(shard.device.id, 0) + shard.data.nbytes
  params, _, _ = scaling.abstract_state(cfg)
  assert scaling.device_bytes(params, scaling.abstract_mesh(*sizes)) == max(per_device.values())
  # A bf16 copy is half of it; one device holds everything.
  assert scaling.device_bytes(params, scaling.abstract_mesh(*sizes), itemsize=2) * 2 == max(per_device.values())
  assert scaling.device_bytes(params, scaling.abstract_mesh(1, 1, 1)) == 4 * scaling.param_count(cfg)


def test_optimizer_state_is_the_real_optimizers_two_moments_of_the_trainable_subset():
  cfg = get_config("tiny-gemma3")
  params, train, opt = scaling.abstract_state(cfg, "^blocks/")
  embedding = cfg.vocab_size * cfg.embed_dim
  assert sum(leaf.size for leaf in train) == scaling.param_count(cfg) - embedding - cfg.embed_dim  # + final norm
  model = Transformer(cfg, rngs=nnx.Rngs(0))
  state = train_step.init_train_state(model, train_step.make_optimizer(train_step.OptimizerConfig()), "^blocks/")
  real = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
  mesh = scaling.abstract_mesh(1, 1, 1)
  assert scaling.device_bytes(opt, mesh) == real
  assert real == 2 * scaling.device_bytes(train, mesh) + sum(  # mu, nu + the step counters
      x.nbytes for x in jax.tree.leaves(state.opt_state) if x.ndim == 0)


def test_kv_cache_is_the_samplers_own():
  cfg = get_config("tiny-gemma2")
  setting = scaling.Setting(seq_len=64, generate_rows=3)
  cache = decoding.init_cache(cfg, 3, 64)
  assert scaling.kv_cache_bytes(cfg, setting) == sum(x.nbytes for x in jax.tree.leaves(cache))
  assert scaling.kv_cache_bytes(cfg, setting) >= 3 * 64 * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4


def test_memory_adds_up_by_workload():
  cfg = scaling.model_config("gemma2-2b")
  mesh = scaling.abstract_mesh(1, 4, 2)
  grpo, rft, infer = scaling.WORKLOADS
  m = scaling.memory(cfg, grpo, mesh)
  assert m.reference == m.weights and m.gradients == m.weights and m.optimizer > 2 * m.weights - 1024
  assert m.peak == m.weights * 3 + m.optimizer + max(m.activations, m.decoding)
  r = scaling.memory(cfg, rft, mesh)
  assert (r.reference, r.decoding) == (0, 0) and r.activations == m.activations
  i = scaling.memory(cfg, infer, mesh)
  assert (i.gradients, i.optimizer, i.activations) == (0, 0, 0) and i.decoding == m.decoding
  # f32 weights decode from a bf16 copy: half their bytes more than bf16 weights need.
  bf16 = scaling.memory(scaling.model_config("gemma2-2b", "bfloat16"), infer, mesh)
  assert i.decoding - bf16.decoding == i.weights // 2 and bf16.weights * 2 == i.weights


def test_attention_scores_dominate_long_rows_and_split_over_tensor():
  cfg = scaling.model_config("gemma2-27b")
  short, long = (scaling.activation_bytes(cfg, scaling.Setting(seq_len=t)) for t in (2048, 8192))
  assert long > 6 * short  # 4x tokens: a linear cost would be 4x; the [heads, T, T] scores make it more
  assert scaling.activation_bytes(cfg, scaling.Setting(seq_len=8192), tensor=4) < long / 2.5


def test_a_plan_is_the_fewest_devices_that_fit():
  hw = scaling.Hardware("test", 16, 8, 64)
  cfg = scaling.model_config("gemma2-9b")
  grpo = scaling.WORKLOADS[0]
  found = scaling.plan(cfg, grpo, hw)
  assert found is not None and found.memory.peak <= scaling.HEADROOM * 16 * scaling.GIB
  assert math.prod(found.mesh) == found.devices
  fewer = found.devices // 2
  for tensor in (t for t in scaling.TENSOR_SIZES if t <= min(fewer, hw.per_node)):
    smallest = scaling.Setting(generate_rows=1)
    assert scaling.memory(cfg, grpo, scaling.abstract_mesh(1, fewer // tensor, tensor), smallest).peak > \
        scaling.HEADROOM * 16 * scaling.GIB
  assert scaling.plan(cfg, grpo, scaling.Hardware("tiny", 1, 8, 8)) is None


def test_committed_guide_is_what_the_code_generates():
  result = subprocess.run([sys.executable, "-m", "spct_jax.scaling", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert result.returncode == 0, result.stderr
  text = (REPO / "docs" / "SCALING.md").read_text()
  for name in scaling.MODELS:
    assert f"| {name} | {scaling.param_count(name):,} |" in text
  assert text.count("| GRPO | float32 | TPU v5e (16 GiB) |") == 3
