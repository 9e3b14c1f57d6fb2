"""The one device mesh of training, and the shardings of state and batches.

One mesh axis, 'data', spans every device of every host. Batches are split along it
(`P('data')` on the batch axis). Parameters and optimizer state are either replicated
(default) or, with `config.train.shard_params`, FSDP-style: each array is split along
its largest dimension divisible by the number of devices (small or indivisible arrays
stay replicated); XLA gathers them where a layer needs the full weight.

The axis is built with `AxisType.Auto` on purpose: `jax.make_mesh` now defaults to
Explicit axes, under which indexing a sharded result raises `ShardingTypeError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'

# Arrays smaller than this many elements are replicated even in FSDP mode: splitting a
# BatchNorm vector saves nothing and costs a collective.
FSDP_MIN_SIZE = 2**12


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over all devices of all processes (or the given ones), axis 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def fsdp_spec(shape: Sequence[int], num_shards: int) -> P:
  """Splits the largest dimension divisible by `num_shards` (ties: the last one)."""
  if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return P()
  best = None
  for axis, size in enumerate(shape):
    if size % num_shards == 0 and (best is None or size >= shape[best]):
      best = axis
  if best is None:
    return P()
  spec = [None] * len(shape)
  spec[best] = DATA_AXIS
  return P(*spec)


def state_shardings(abstract_tree: Any, mesh: Mesh, shard_params: bool) -> Any:
  """Shardings for a tree of arrays / ShapeDtypeStructs (train state, optimizer state).

  The rule depends only on each leaf's shape, so Adam moments get the same sharding as
  their parameters.
  """
  n = mesh.shape[DATA_AXIS]

  def leaf(x):
    if not shard_params or not hasattr(x, 'shape'):
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(tuple(x.shape), n))

  return jax.tree.map(leaf, abstract_tree)


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  n = mesh.shape[DATA_AXIS]
  if global_batch % n:
    raise ValueError(
        f'config.train.batch_size={global_batch} is not divisible by the {n} devices of the '
        "mesh axis 'data'"
    )


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the per-host batches into global arrays sharded over 'data'.

  Every process passes its own slice (`global_batch_size / process_count` images); on a
  single host this is simply a device put with the batch sharding.
  """
  sharding = batch_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in local_batch.items()
  }
