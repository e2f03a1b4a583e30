"""Process-aware helpers: the one place where device outputs are read to the host, and who writes files.

Every host read of a device result (sampled tokens, votes, train-step metrics) goes through `to_host`, so a
multi-process job needs one change here (gather arrays sharded across processes with
`jax.experimental.multihost_utils.process_allgather`) and nowhere else.
"""

from __future__ import annotations

from typing import Any

import jax


def to_host(tree: Any) -> Any:
  """The pytree with every jax array copied to host numpy (blocks until computed)."""
  return jax.device_get(tree)


def is_main_process() -> bool:
  """Process 0 writes metrics, results and locks; every process takes part in checkpoints."""
  return jax.process_index() == 0
