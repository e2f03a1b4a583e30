"""The meta RM: last-real-token head, batched scoring, save/load, the BCE step, and meta-RM guided voting."""

import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from spct_jax import meta_rm
from spct_jax import sharding as shd
from spct_jax.grm import GRM, templates
from spct_jax.model import Transformer, get_config
from spct_jax.train import binary_metrics
from spct_jax.train.step import OptimizerConfig, init_train_state, make_optimizer, make_train_step


class ByteTokenizer:
  """pad 0, eos 1, bos 2, byte b -> 4 + b: every text encodes, and fits the tiny model's 512 ids."""

  pad_id, eos_id, bos_id = 0, 1, 2

  def encode(self, text, add_bos=True):
    return ([self.bos_id] if add_bos else []) + [4 + b for b in text.encode()]


TOK = ByteTokenizer()


def _backbone(seed=0, **overrides):
  return Transformer(get_config("tiny-gemma3", max_seq_len=2048, **overrides), rngs=nnx.Rngs(seed))


def _meta(seed=0, init_std=1.0, **config):
  return meta_rm.from_backbone(_backbone(seed), meta_rm.MetaRMConfig(**config), seed=seed, init_std=init_std)


TEXTS = ["Analysis: short.", "Analysis: a somewhat longer judgement with more words. Scores: \\boxed{3, 9}",
         "x", "Analysis: " + "long " * 30 + "GOOD"]


def test_logit_reads_the_last_real_token_after_the_final_norm():
  model = _meta()
  batch = meta_rm.make_batch(TOK, TEXTS, max_length=model.max_length)
  logits = nnx.jit(lambda m, t, a: m(t, attention_mask=a))(model, batch["tokens"], batch["attention_mask"])
  hidden = nnx.jit(lambda m, t, a: m.backbone.hidden_states(t, attention_mask=a))(
      model, batch["tokens"], batch["attention_mask"])
  w, b = np.asarray(model.head.weight[...]), float(model.head.bias[...])
  np.testing.assert_allclose(np.asarray(logits), np.asarray(hidden[:, -1]) @ w + b, rtol=1e-5, atol=1e-5)
  assert logits.dtype == np.float32 and logits.shape == (4,)
  # The same text right-padded: the head finds the last real token wherever it is.
  mask = np.zeros((1, 40), bool)
  ids = TOK.encode(TEXTS[0])
  tokens = np.zeros((1, 40), np.int32)
  tokens[0, :len(ids)], mask[0, :len(ids)] = ids, True
  right_padded = nnx.jit(lambda m, t, a: m(t, attention_mask=a))(model, tokens, mask)
  np.testing.assert_allclose(np.asarray(right_padded), np.asarray(logits[:1]), atol=1e-5)


def test_batched_score_equals_each_text_alone_and_chunks_agree():
  model = _meta()
  scorer = meta_rm.as_meta_scorer(model, TOK)
  together = scorer.score(TEXTS)
  alone = np.concatenate([scorer.score([t]) for t in TEXTS])
  np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)
  assert np.ptp(together) > 1e-3  # a random head tells the texts apart: the comparison is not vacuous
  chunked = meta_rm.as_meta_scorer(model, TOK, max_rows=2).score(TEXTS * 3)  # 12 rows in 2 chunks of 8
  np.testing.assert_allclose(chunked, np.tile(together, 3), rtol=1e-5, atol=1e-5)


def test_long_inputs_keep_bos_and_their_tail():
  ids = meta_rm.encode(TOK, ["abcdefgh"], max_length=4)[0]
  assert ids == [TOK.bos_id] + [4 + b for b in b"fgh"]


def test_sharded_scoring_equals_single_device():
  mesh = shd.make_mesh(shd.MeshConfig(data=2, fsdp=2, tensor=2))
  cfg = get_config("tiny-gemma3", max_seq_len=2048)
  backbone = shd.create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  sharded = meta_rm.from_backbone(backbone, seed=0, init_std=1.0, mesh=mesh)
  assert sharded.head.weight[...].sharding.spec == jax.sharding.PartitionSpec("fsdp")
  single = _meta(seed=0)
  np.testing.assert_allclose(meta_rm.as_meta_scorer(sharded, TOK, mesh=mesh).score(TEXTS),
                             meta_rm.as_meta_scorer(single, TOK).score(TEXTS), rtol=1e-4, atol=1e-4)


def test_save_and_load_restore_backbone_and_head(tmp_path):
  from spct_jax.weights import load_model, save_model
  model = _meta(seed=3, chat_style="gemma", max_length=300)
  folder = meta_rm.save_meta_rm(model, tmp_path / "meta")
  loaded, tokenizer = meta_rm.load_meta_rm(folder)
  assert tokenizer is None and loaded.config == meta_rm.MetaRMConfig(chat_style="gemma", max_length=300)
  np.testing.assert_array_equal(np.asarray(loaded.head.weight[...]), np.asarray(model.head.weight[...]))
  np.testing.assert_allclose(meta_rm.as_meta_scorer(loaded, TOK).score(TEXTS),
                             meta_rm.as_meta_scorer(model, TOK).score(TEXTS), rtol=1e-6, atol=1e-6)
  backbone, _ = load_model(folder)  # the folder is also a plain model folder: the backbone alone
  np.testing.assert_array_equal(np.asarray(backbone.embedding[...]), np.asarray(model.backbone.embedding[...]))

  save_model(model.backbone, model.cfg, tmp_path / "plain")
  with pytest.raises(ValueError, match="not a meta RM .*plain model folder"):
    meta_rm.load_meta_rm(tmp_path / "plain")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    meta_rm.load_meta_rm(tmp_path / "missing")
  shutil.rmtree(folder / meta_rm.HEAD_DIR)
  with pytest.raises(FileNotFoundError, match="no head/"):
    meta_rm.load_meta_rm(folder)


def test_frozen_backbone_trains_only_the_head():
  model = _meta(init_std=0.0)
  optimizer = make_optimizer(OptimizerConfig(learning_rate=1e-2))
  state = init_train_state(model, optimizer, "^head/")
  keys = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(state.trainable)}
  assert keys == {"head/weight", "head/bias"}
  step = make_train_step(meta_rm.bce_objective(), optimizer, state)
  batch = meta_rm.make_batch(TOK, TEXTS, [1, 0, 1, 0], max_length=64)
  before = np.asarray(state.frozen["backbone"]["embedding"][...]).copy()
  metrics = step(state, None, batch)
  assert float(metrics["loss"]) == pytest.approx(np.log(2), rel=1e-6)  # zero head: p = 0.5 everywhere
  np.testing.assert_array_equal(np.asarray(state.frozen["backbone"]["embedding"][...]), before)
  assert np.abs(np.asarray(state.trainable["head"]["weight"][...])).max() > 0


def _toy_texts(rng, count):
  words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
  labels = rng.integers(0, 2, count)
  texts = [" ".join(rng.choice(words, rng.integers(2, 6))) + (" GOOD" if y else " BAD") for y in labels]
  return texts, labels


def test_head_learns_a_separable_toy_labelling():
  rng = np.random.default_rng(0)
  train_texts, train_labels = _toy_texts(rng, 256)
  test_texts, test_labels = _toy_texts(rng, 64)
  model = _meta(seed=1, init_std=0.0)
  optimizer = make_optimizer(OptimizerConfig(learning_rate=3e-3))
  state = init_train_state(model, optimizer, ".*")
  step = make_train_step(meta_rm.bce_objective(), optimizer, state)
  from spct_jax.data import meta_rm_examples as mx
  for t in range(40):
    idx = mx.batch_indices(train_labels, 16, t, seed=0, balance="batches")
    metrics = step(state, None, meta_rm.make_batch(TOK, [train_texts[i] for i in idx], train_labels[idx],
                                                    max_length=64, length_multiple=32))
    assert np.isfinite(float(metrics["loss"]))
  logits = meta_rm.as_meta_scorer(state.model(), TOK).score(test_texts)
  assert binary_metrics.roc_auc(logits, test_labels) > 0.95
  assert binary_metrics.accuracy(binary_metrics.sigmoid(logits), test_labels) > 0.9


# ----------------------------------------------------------------------------------------------------------------
# Guided voting through GRM.score_batch.

RESPONSES = ("answer=3", "answer=9", "answer=5", "answer=1")


class ScriptedGRM(GRM):
  """Sample s of every item scores the shown responses by their number plus s (capped at 10) on the first shown one."""

  def __init__(self, tokenizer=None, **options):
    super().__init__(model=None, tokenizer=tokenizer, **options)

  def generate_texts(self, prompts, strategy, seed):
    texts = []
    for i, prompt in enumerate(prompts):
      shown = [int(r.split("=")[1]) for r in re.findall(r"\[The Begin of Response \d+\]\n(.*?)\n\[The End", prompt)]
      shown[0] = min(10, shown[0] + i % 4)
      texts.append("Analysis: ...\nScores: \\boxed{" + ", ".join(map(str, shown)) + "}")
    return texts


def _items():
  return [((("user", "q1"),), RESPONSES), ((("user", "q2"),), RESPONSES[:2])]


def test_guided_voting_keeps_exactly_the_top_k_meta_ties_to_the_lower_index():
  scores = np.array([[0.1, 0.9, 0.5, 0.9], [2.0, -1.0, 2.0, 2.0]], np.float32)
  seen = {}

  def scripted(items, texts, perms):
    seen.update(items=items, texts=texts, perms=perms)
    return scores

  grm = ScriptedGRM(num_distinct_orders=4)
  result = grm.score_batch(_items(), k=4, meta_rm=scripted, k_meta=2)
  np.testing.assert_array_equal(result.kept, [[False, True, False, True], [True, False, True, False]])
  np.testing.assert_array_equal(seen["perms"], result.perms)  # the scorer saw each sample's order
  assert seen["texts"] == result.texts
  expected = (result.sample_scores * result.kept[..., None]).sum(axis=1)
  np.testing.assert_array_equal(result.voted, expected)
  # The same from the already sampled result (eval reports Voting@k and MetaRM@k from one sampling pass).
  voted, kept = meta_rm.guided_vote(result.sample_scores, result.valid, scores, 2)
  np.testing.assert_array_equal(voted, result.voted)
  np.testing.assert_array_equal(kept, result.kept)
  # k_meta defaults to k // 2; out of range is refused.
  assert grm.score_batch(_items(), k=4, meta_rm=scripted).kept.sum(axis=1).tolist() == [2, 2]
  with pytest.raises(ValueError, match="k_meta"):
    grm.score_batch(_items(), k=4, meta_rm=scripted, k_meta=5)


def test_metarm_at_k_equals_voting_at_k_when_k_meta_is_k():
  model = _meta(seed=2)
  grm = ScriptedGRM(tokenizer=TOK, num_distinct_orders=4)
  plain = grm.score_batch(_items(), k=4)
  guided = grm.score_batch(_items(), k=4, meta_rm=model, k_meta=4)
  np.testing.assert_array_equal(guided.voted, plain.voted)
  assert guided.kept.all()
  # With k_meta < k the real meta RM's logits pick the samples.
  half = grm.score_batch(_items(), k=4, meta_rm=model)
  logits = meta_rm.as_meta_scorer(model, TOK)(_items(), half.texts, half.perms)
  top = np.argsort(-logits, axis=1, kind="stable")[:, :2]
  np.testing.assert_array_equal(np.sort(np.flatnonzero(half.kept[0])), np.sort(top[0]))


def test_meta_rm_inputs_show_each_samples_order():
  model = _meta()
  scorer = meta_rm.as_meta_scorer(model, TOK)
  perms = np.array([[[2, 0, 1, 3], [3, 2, 1, 0]]], np.int32)
  inputs = scorer.inputs([((("user", "q"),), RESPONSES)], [["J0", "J1"]], perms)
  assert inputs[1] == templates.meta_rm_input((("user", "q"),), [RESPONSES[i] for i in (3, 2, 1, 0)], "J1")
  assert inputs[0].endswith("\nJ0") and inputs[0].index("answer=5") < inputs[0].index("answer=3")
  # Padded response slots (items with fewer responses) are ignored.
  short = scorer.inputs([((("user", "q"),), RESPONSES[:2])], [["J"]], np.array([[[1, 0, 2, 3]]], np.int32))
  assert short[0] == templates.meta_rm_input((("user", "q"),), [RESPONSES[1], RESPONSES[0]], "J")
