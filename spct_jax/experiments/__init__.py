"""The experiment registry: `config.experiment` -> a module with `RULES` (its config checks) and
`run(config, workdir)` (its loop body). rft_generate, rft and spct slot in here next."""

from spct_jax.experiments import eval as eval_experiment  # pylint: disable=redefined-builtin
from spct_jax.experiments import grpo, meta_rm

EXPERIMENTS = {"grpo": grpo, "eval": eval_experiment, "meta_rm": meta_rm}

__all__ = ["EXPERIMENTS"]
