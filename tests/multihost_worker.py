"""One process of tests/test_multihost.py's helper run (2 processes x 2 CPU devices, started by spct_jax.launch).

Exercises every `spct_jax.multihost` helper, the loop's agreed preemption and the workdir lock across real
processes, and writes what it saw to `<out>/process-<i>.json` for the test to check.
"""

import json
import os
import signal
import sys

args = dict(arg[2:].split("=", 1) for arg in sys.argv[1:])

from spct_jax import sharding as shd  # noqa: E402  (jax.distributed must start before any other JAX call)

shd.maybe_initialize_distributed(coordinator_address=args["coordinator_address"],
                                 num_processes=int(args["num_processes"]), process_id=int(args["process_id"]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from spct_jax import multihost  # noqa: E402
from spct_jax.experiments import workdir  # noqa: E402
from spct_jax.train import loop  # noqa: E402

me = jax.process_index()
mesh = shd.make_mesh(shd.MeshConfig(data=1, fsdp=-1, tensor=1))  # 4 devices, 2 per process
seen = {"collectives": jax.config.jax_cpu_collectives_implementation, "devices": jax.device_count()}

# Rows: a contiguous block per process when the batch divides the 4 batch shards, all rows when it does not.
rows = multihost.process_rows(8, mesh)
seen["rows_8"] = [rows.start, rows.stop]
seen["rows_6"] = [multihost.process_rows(6, mesh).start, multihost.process_rows(6, mesh).stop]

# Per-process rows -> one global batch -> a jitted function -> every process reads the whole result.
everything = np.arange(16, dtype=np.float32).reshape(8, 2)
batch = multihost.global_batch({"x": everything[rows], "w": np.ones(3, np.float32)}, mesh,
                               logical_axes={"w": (None,)}, global_rows={"x": 8})
doubled = jax.jit(lambda b: b["x"] * 2 + b["w"].sum())(batch)
seen["spans_processes"] = not doubled.is_fully_addressable
seen["doubled"] = multihost.to_host(doubled).tolist()
seen["tree"] = {k: v.tolist() for k, v in multihost.to_host({"a": doubled[:, 0], "b": jax.numpy.sum(doubled)}).items()}

# The same batch from full host data (every process holds it all).
full = multihost.global_array(everything, mesh)
seen["full_equals"] = bool(np.array_equal(multihost.to_host(full), everything))

# Host gathers in process order, ragged sequences included.
seen["gathered"] = multihost.gather_rows(everything[rows, 0] + 100, 8, mesh).tolist()
mine = [[me] * (1 + i + 2 * me) for i in range(4)]  # process 1's sequences are longer
seen["sequences"] = multihost.gather_sequences(mine, 8, mesh)

seen["any"] = multihost.any_process(me == 1)
seen["all"] = multihost.all_processes(me == 1)
seen["max"] = multihost.agree_max(10 + me)
seen["min"] = multihost.agree_min(10 + me)
seen["big_min"] = multihost.agree_min((5 - me) << 33)  # past int32: sent as words
seen["big_sum"] = multihost.sum_over_processes(3 << 32)

try:
  multihost.global_array(everything[:3], mesh, global_rows=8)
except ValueError as e:
  seen["wrong_rows"] = str(e)

# Preemption: SIGTERM reaches process 1 only, during step 3; both must stop after step 3.
with loop.Preemption() as preemption:
  for step in range(1, 7):
    if me == 1 and step == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    if preemption.reached(step):
      seen["stopped_at"] = step
      break

# The workdir lock is held by the test: process 0 is refused, and so is process 1 (no process is left waiting).
try:
  with workdir.locked(args["locked"]):
    seen["lock"] = "taken"
except workdir.WorkdirLocked as e:
  seen["lock"] = str(e)

with open(os.path.join(args["out"], f"process-{me}.json"), "w", encoding="utf-8") as f:
  json.dump(seen, f)
