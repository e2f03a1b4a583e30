"""A tiny Gemma 3 that writes GRM judgements, for tests of GRPO with a real sampler.

A random tiny model never writes `\\boxed{..}`, so every rollout would be unparseable (reward -1, advantage 0).
This one is briefly fine-tuned with the SFT objective (`spct_jax.train.sft`) on judgements with RANDOM scores,
so its rollouts parse (mostly) and their scores vary: some are right, some wrong, some malformed.

Short templates (the appendix G block and output formats, a one-line preamble) keep the prompts near 100 tokens
with the in-memory synthetic tokenizer (the paper's preamble alone is ~1000), so pre-training and GRPO take
seconds of compute on two CPU cores. `register` adds them to the template registry for one test module.
"""

import dataclasses

import numpy as np
from flax import nnx

import sft_batches
from spct_jax.grm import scorer, templates
from spct_jax.model import Transformer, get_config
from spct_jax.train import sft
from spct_jax.train.step import OptimizerConfig, init_train_state, make_optimizer, make_train_step

PREFIX = "Specific Criteria:"  # the configs' output prefix
ANSWER = " Accuracy.\nScores: "  # what a judgement says after the prefix, before its scores
MAX_SEQ_LEN = 192  # the longest short-template prompt of a synthetic arithmetic item is ~130 tokens
TEMPLATES = (
    dataclasses.replace(templates.TEMPLATES["default"], name="test_short", preamble="Score each response, 1 to 10.",
                        output_format="Scores: \\boxed{x, x}", single_output_format="Scores: \\boxed{x}"),
    dataclasses.replace(templates.TEMPLATES["single_binary"], name="test_short_binary",
                        preamble="Score the response: 1 if correct, else 0.",
                        output_format="Scores: \\boxed{x}", single_output_format="Scores: \\boxed{x}"),
)


def register(monkeypatch) -> None:
  for template in TEMPLATES:
    monkeypatch.setitem(templates.TEMPLATES, template.name, template)


def options(**overrides) -> scorer.GRMOptions:
  return scorer.GRMOptions(**{"template": "test_short", "single_template": "test_short_binary",
                              "output_prefix": PREFIX, "max_new_tokens": 24, "temperature": 1.0, **overrides})


def judgement(scores) -> str:
  return ANSWER + "\\boxed{" + ", ".join(str(int(s)) for s in scores) + "}"


def random_judgement(num_responses: int, rng: np.random.Generator) -> str:
  """Uniform scores in the item's template range: 0/1 for n = 1, 1..10 otherwise (ties included)."""
  lo, hi = (0, 1) if num_responses == 1 else (1, 10)
  return judgement(rng.integers(lo, hi + 1, size=num_responses))


def pretrain(tokenizer, items, grm_options: scorer.GRMOptions, *, steps: int = 80, batch_size: int = 16,
             seed: int = 0, learning_rate: float = 3e-3):
  """A tiny Gemma 3 fine-tuned for `steps` SFT steps on (prompt of a random item in a random order, random
  judgement) pairs; every draw is seeded by (seed, step)."""
  cfg = get_config("tiny-gemma3", vocab_size=tokenizer.vocab_size, max_seq_len=MAX_SEQ_LEN, compute_dtype="float32")
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  optimizer = make_optimizer(OptimizerConfig(learning_rate=learning_rate, grad_clip_norm=1.0))
  state = init_train_state(model, optimizer, ".*")
  train_step = make_train_step(sft.sft_objective(), optimizer, state)
  for step in range(steps):
    rng = np.random.default_rng([seed, step])
    chosen = [items[i] for i in rng.choice(len(items), batch_size)]
    prompts, _, _ = scorer.build_prompts(chosen, 1, grm_options, rng)
    rows = [[(tokenizer.encode(prompt, add_bos=True),
              tokenizer.encode(random_judgement(item.num_responses, rng), add_bos=False))]
            for prompt, item in zip(prompts, chosen)]
    train_step(state, None, sft_batches.batch(rows, MAX_SEQ_LEN - 32))
  return state.model()
