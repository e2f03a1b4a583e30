"""GRPO on token level: rollouts of G samples per prompt -> rewards -> group advantages -> jitted update(s).

Rewards come from the caller (the GRM loop uses Eq. 11 on parsed scores; tests may use any function of the
tokens), so this module knows nothing about text.

Temperature: rollouts are drawn from softmax(logits / T) (`GRPOConfig.temperature`), so the policy log-probs of the
ratio rho = pi_theta / pi_old are taken at the same T (as TRL does): at T != 1 a ratio of raw-model log-probs would
compare a distribution the samples did not come from, and rho would not be 1 on-policy. The KL term uses the same
tempered distributions for the policy and the reference, KL(pi_theta,T || pi_ref,T): its estimators (k1/k2/k3) are
expectations over tokens drawn from the first argument, and the tokens are drawn at T, so only the tempered policy
makes them unbiased (TRL tempers the reference too). top-k / top-p filtering is not applied to either (it only
restricts which tokens are drawn; the ratio of the full tempered softmax stays a proper importance weight).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spct_jax import grpo, logprobs, multihost, sampler, strategies
from spct_jax import sharding as shd
from spct_jax.train.step import (OptimizerConfig, TrainState, init_train_state, make_optimizer, make_train_step,
                                 place_batch)


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """GRPO hyper-parameters (spec sec. 4). Paper (27B): G=4, beta=0.08, lr 4e-7, batch 512, 900 steps.

  num_iterations: mu, updates per rollout batch (1 = on-policy: the ratio is 1 and old log-probs need no pass).
  temperature: rollout sampling temperature (the paper does not give it); the policy, old and reference log-probs
    of the loss are taken at the same temperature (see the module docstring).
  """

  group_size: int = 4
  beta: float = 0.08
  epsilon: float = 0.2
  epsilon_high: float | None = None
  kl_estimator: str = "k3"
  aggregation: str = "sequence-mean-token-mean"
  advantage_eps: float = 1e-4
  advantage_std_ddof: int = 1
  scale_advantages_by_std: bool = True
  num_iterations: int = 1
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None
  max_new_tokens: int = 256
  logprob_chunk_size: int | None = None

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"GRPOConfig.temperature must be > 0 (the loss divides the logits by it; greedy rollouts "
                       f"would give a group of identical samples), got {self.temperature}")


def assemble_batch(prompt_tokens: np.ndarray, prompt_mask: np.ndarray, row_source: np.ndarray,
                   out: sampler.SampleOutput) -> dict[str, np.ndarray]:
  """The distinct prompts once ([P, T], left-padded), each row's prompt index and its completion ([R, N])."""
  completion_mask = np.arange(out.tokens.shape[1])[None, :] < np.asarray(out.lengths)[:, None]
  return {"prompt_tokens": np.asarray(prompt_tokens, np.int32), "prompt_mask": np.asarray(prompt_mask),
          "row_source": np.asarray(row_source, np.int32), "completion": np.asarray(out.tokens, np.int32),
          "completion_mask": completion_mask.astype(np.float32)}


def completion_logps(model, batch: dict[str, jax.Array], *, mesh=None, rules=shd.DEFAULT_RULES,
                     chunk_size: int | None = None, temperature: float = 1.0) -> jax.Array:
  """f32[R, N] log-probs of each row's completion given its prompt, under softmax(logits / temperature).

  Each distinct prompt is run once (`shared_prefix_hidden_states`), and the log-probs go through the
  vocab-parallel path when a mesh is given (full [R, N, V] logits never exist on one device).
  temperature: the rollouts' sampling temperature for GRPO (1.0 for SFT: the model's own distribution).
  """
  cfg = model.cfg
  completion, mask = batch["completion"], batch["completion_mask"]
  prompt_hidden, completion_hidden = model.shared_prefix_hidden_states(
      batch["prompt_tokens"], batch["prompt_mask"], batch["row_source"], completion[:, :-1], mask[:, :-1])
  # Token 0 is predicted from the prompt's last position, token j from completion token j - 1.
  hidden = jnp.concatenate([jnp.take(prompt_hidden[:, -1:], batch["row_source"], axis=0), completion_hidden], 1)
  return logprobs.token_logprobs(hidden, model.embedding[...], completion, mesh=mesh, rules=rules,
                                 final_softcap=cfg.final_logit_softcap, compute_dtype=cfg.compute_jnp_dtype,
                                 chunk_size=chunk_size, temperature=temperature)


def grpo_objective(cfg: GRPOConfig, *, mesh=None, rules=shd.DEFAULT_RULES):
  """loss_fn(model, ref_state, batch) for `make_train_step`; ref_state is the frozen reference's parameters.

  Policy and reference log-probs are both at the rollout temperature `cfg.temperature` (module docstring).
  """
  logps_at_t = functools.partial(completion_logps, mesh=mesh, rules=rules, chunk_size=cfg.logprob_chunk_size,
                                 temperature=cfg.temperature)

  def loss_fn(model, ref_state, batch):
    logps = logps_at_t(model, batch)
    ref_logps = None
    if cfg.beta:
      ref_model = nnx.merge(nnx.graphdef(model), ref_state)
      ref_logps = jax.lax.stop_gradient(logps_at_t(ref_model, batch))
    return grpo.grpo_loss(logps, batch.get("old_logps"), ref_logps, batch["advantages"], batch["completion_mask"],
                          epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta,
                          kl_estimator=cfg.kl_estimator, aggregation=cfg.aggregation)

  return loss_fn


class GRPOTrainer:
  """Holds the policy's train state, the frozen reference and the jitted step."""

  def __init__(self, model, cfg: GRPOConfig, opt_cfg: OptimizerConfig, *, mesh=None, rules=shd.DEFAULT_RULES):
    self.cfg, self.mesh, self.rules = cfg, mesh, rules
    self.optimizer = make_optimizer(opt_cfg)
    self.state: TrainState = init_train_state(model, self.optimizer, opt_cfg.trainable, mesh=mesh)
    # The reference is the starting policy: a copy, so donated policy buffers never alias it.
    self.ref_state = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)) if cfg.beta else None
    self._step = make_train_step(grpo_objective(cfg, mesh=mesh, rules=rules), self.optimizer, self.state, mesh=mesh,
                                 rules=rules)
    self._old_logps = jax.jit(lambda model, batch: completion_logps(
        model, batch, mesh=mesh, rules=rules, chunk_size=cfg.logprob_chunk_size, temperature=cfg.temperature))

  @property
  def model(self):
    return self.state.model()

  def rollout(self, prompts: Sequence[Sequence[int]], *, seed: int | jax.Array, eos_ids: Sequence[int],
              pad_id: int, stop: sampler.StopAfter | None = None) -> tuple[dict[str, np.ndarray], Any]:
    """G samples of every prompt (one prefill each). Returns the batch arrays and the raw sampler output (host).

    Multi-process: every process passes all prompts (`multihost.gather_sequences` of each process's own) and
    receives every row.
    """
    cfg = self.cfg
    out, prompt_tokens, prompt_mask, row_source = sampler.sample_from_tokens(
        self.model, prompts, max_new_tokens=cfg.max_new_tokens, num_samples=cfg.group_size,
        strategy=strategies.strategy_for(cfg.temperature, cfg.top_k, cfg.top_p), seed=seed, eos_ids=eos_ids,
        pad_id=pad_id, stop=stop, mesh=self.mesh)
    out = multihost.to_host(out)
    return assemble_batch(prompt_tokens, prompt_mask, row_source, out), out

  def update(self, batch: dict[str, np.ndarray], rewards: np.ndarray) -> dict[str, float]:
    """Group advantages from `rewards` f32[B*G], then `num_iterations` jitted steps on the batch.

    Multi-process: `batch` (from `rollout`) and `rewards` are the whole batch, the same on every process.
    """
    cfg = self.cfg
    completion_tokens = float(np.sum(multihost.to_host(batch["completion_mask"])))
    advantages = grpo.group_advantages(jnp.asarray(rewards, jnp.float32), cfg.group_size, eps=cfg.advantage_eps,
                                       std_ddof=cfg.advantage_std_ddof, scale_by_std=cfg.scale_advantages_by_std)
    batch = place_batch(dict(batch, advantages=advantages), self.mesh, self.rules)  # global arrays, placed once
    if cfg.num_iterations > 1:  # mu > 1: ratios are against the rollout policy, fixed before the first update
      batch["old_logps"] = self._old_logps(self.model, batch)
    metrics = {}
    for _ in range(cfg.num_iterations):
      metrics = self._step(self.state, self.ref_state, batch)
    metrics = {k: float(v) for k, v in multihost.to_host(metrics).items()}
    groups = np.asarray(rewards).reshape(-1, cfg.group_size)
    metrics.update(reward_mean=float(np.mean(rewards)),
                   nonzero_advantage_groups=float(np.mean(groups.max(axis=1) > groups.min(axis=1))),
                   completion_tokens=completion_tokens)
    return metrics
