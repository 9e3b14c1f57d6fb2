"""One job, several processes: JAX's distributed runtime and the host-side exchanges we need.

Training and evaluation run as one process per host (TPU pod slice, SLURM, Open MPI, or N
processes on one machine). `initialize` starts JAX's runtime; on CPU the collectives go
through gloo. Beyond the global arrays of the train step, processes exchange only small
host objects: evaluation results (`all_gather`) and variables to evaluate (`fetch`).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

_log = logging.getLogger(__name__)

T = TypeVar('T')

# JAX's own default: a process whose peers have not been heard from for this long is ended
# by the runtime (a killed host must not leave the others waiting forever).
HEARTBEAT_TIMEOUT_S = 100


def cluster_detected(env: os._Environ | dict = os.environ) -> bool:
  """Whether the environment describes a multi-process job JAX can detect on its own."""
  return ('JAX_COORDINATOR_ADDRESS' in env
          or int(env.get('SLURM_NTASKS', '1')) > 1
          or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1
          or ',' in env.get('TPU_WORKER_HOSTNAMES', ''))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu_devices: int | None = None,
               heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
  """Joins the job's processes; a no-op for a single process. Call before any JAX work.

  Args:
    coordinator_address: `host:port` of process 0. Given together with `num_processes` and
      `process_id` for a hand-launched job; all None: JAX's cluster detection (TPU slice,
      SLURM, Open MPI, `JAX_COORDINATOR_ADDRESS`) decides, and a plain run stays single.
    num_processes, process_id: this job's size and this process's index.
    cpu_devices: CPU devices of this process (XLA's `--xla_force_host_platform_device_count`).
    heartbeat_timeout_s: a process that misses its peers' heartbeats this long stops with an
      error instead of waiting forever.
  """
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
    raise ValueError('--coordinator_address, --num_processes and --process_id go together '
                     f'(got {explicit}); leave all three out for cluster detection')
  if cpu_devices:
    jax.config.update('jax_num_cpu_devices', int(cpu_devices))
    _fix_cpu_intra_op_threads(int(cpu_devices) * (num_processes or 1))
  if not any(v is not None for v in explicit) and not cluster_detected():
    return
  # CPU collectives between processes (a no-op for accelerators' own collectives).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=int(heartbeat_timeout_s))
  _log.info('process %d of %d, %d local devices of %d', jax.process_index(),
            jax.process_count(), jax.local_device_count(), jax.device_count())


def _fix_cpu_intra_op_threads(job_cpu_devices: int) -> None:
  """Gives every process the intra-op thread pool a single process of the whole job has.

  XLA:CPU sizes its Eigen pool as max(cores, local devices), and Eigen splits a long
  reduction (a convolution's kernel gradient sums over batch x height x width) into as
  many partial sums as that pool has threads. 1 process x 4 devices on 2 cores gets 4
  threads, 2 processes x 2 devices get 2 each, and the kernel gradients round
  differently. Sizing the pool for the job's devices (XLA reads `NPROC`) makes the
  split, and so every step's result, independent of the process layout. An `NPROC` set
  by the user wins. Must run before the CPU backend starts.
  """
  if 'NPROC' not in os.environ:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    os.environ['NPROC'] = str(max(cores or 1, job_cpu_devices))


def is_chief() -> bool:
  """Process 0 writes logs, summaries, result files and pictures."""
  return jax.process_index() == 0


def my_part(items: Sequence[T]) -> Sequence[T]:
  """This process's contiguous block of `items` (blocks in process order cover `items`)."""
  n, p, i = len(items), jax.process_count(), jax.process_index()
  return items[i * n // p:(i + 1) * n // p]


def all_gather(obj: Any) -> list[Any]:
  """Every process's `obj` (any picklable host object, NumPy arrays included), in process
  order, on every process; one process gets `[obj]` without a copy.

  Pickled, so arrays cross bit-exact and without a detour through Python floats.
  """
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64)))
  sizes = sizes.reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  # The peers are this job's own processes: their pickles are as trusted as this one.
  return [pickle.loads(gathered[i, :int(n)].tobytes()) for i, n in enumerate(sizes)]


def gather(part: Callable[[], T]) -> list[T]:
  """Runs `part()` (this process's share of a job) and returns every process's result.

  `part` returns a picklable object (see `all_gather`). If it raises on any process, every
  process raises: the failing one its own exception, the others a RuntimeError naming it,
  so no process is left waiting in a collective for a peer that gave up.
  """
  try:
    mine, error = part(), None
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    mine, error = None, f'{type(e).__name__}: {e}'
    failure = e
  parts = all_gather({'result': mine, 'error': error})
  if error is not None:
    raise failure
  failed = [(i, p['error']) for i, p in enumerate(parts) if p['error'] is not None]
  if failed:
    raise RuntimeError(f'process {failed[0][0]} failed: {failed[0][1]}')
  return [p['result'] for p in parts]


def fetch(tree: Any) -> Any:
  """A tree of (possibly process-spanning, e.g. FSDP-sharded) arrays as host numpy arrays."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
