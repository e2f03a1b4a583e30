"""The experiment registry: `config.experiment` -> a module with `RULES` (its config checks) and
`run(config, workdir)` (its loop body). rft_generate, rft, meta_rm and spct slot in here next."""

from spct_jax.experiments import eval as eval_experiment  # pylint: disable=redefined-builtin
from spct_jax.experiments import grpo

EXPERIMENTS = {"grpo": grpo, "eval": eval_experiment}

__all__ = ["EXPERIMENTS"]
