"""Command-line applications (absl): `train.py`, `eval.py` and the console scripts run these."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from higherhrnet_jax import distributed

# A job of several processes (train.py and eval.py). Left out, JAX's cluster detection
# (TPU slice, SLURM, Open MPI) decides, and a plain run is one process.
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 in a hand-launched multi-process job.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "This process's index, 0-based.")
_CPU_DEVICES = flags.DEFINE_integer(
    'xla_force_host_platform_device_count', None,
    'CPU devices of this process (as XLA\'s flag of that name; e.g. 2 processes x 2 devices).')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout_s', distributed.HEARTBEAT_TIMEOUT_S,
    'A process that has not heard from its peers this long exits with an error.')


def initialize_distributed() -> None:
  """Joins the job described by the flags or the cluster; before any JAX computation."""
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         cpu_devices=_CPU_DEVICES.value, heartbeat_timeout_s=_HEARTBEAT.value)


def run(main: Callable[[list[str]], None], module: str, required: Sequence[str]) -> None:
  """`absl.app.run(main)` for an app whose flags are defined in `module`, not in `__main__`.

  absl's `--help` lists the flags of the program's own file (`sys.argv[0]`); registering the
  app's flags under that name makes `train.py --help` and `higherhrnet-train --help` list them.
  """
  for name in (module, __name__):
    for flag in flags.FLAGS.get_flags_for_module(name):
      flags.FLAGS.register_flag_by_module(sys.argv[0], flag)
  flags.mark_flags_as_required(list(required))
  app.run(main)
