"""The experiment registry: `config.experiment` -> a module with `RULES` (its config checks) and
`run(config, workdir)` (its loop body). spct slots in here next."""

from spct_jax.experiments import eval as eval_experiment  # pylint: disable=redefined-builtin
from spct_jax.experiments import grpo, meta_rm, rft, rft_generate

EXPERIMENTS = {"grpo": grpo, "eval": eval_experiment, "rft_generate": rft_generate, "rft": rft, "meta_rm": meta_rm}

__all__ = ["EXPERIMENTS"]
