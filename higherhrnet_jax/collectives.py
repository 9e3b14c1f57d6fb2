"""Cross-device means whose float32 result does not depend on where the devices live.

`jax.lax.pmean` sums in an order chosen by the collective's implementation: XLA's
in-process all-reduce adds device 0, 1, 2, ... in turn, gloo's cross-process all-reduce
adds in another order, so 1 process x 4 devices and 2 processes x 2 devices round
differently. Adam turns such last-bit differences of near-zero gradient entries into
full-size update differences within a step or two. Here every reduction moves data with
exact collectives (`all_to_all`, `all_gather`) and adds on one device in device order,
so the result is bitwise the same for any split of the devices into processes.

`ordered_mean` costs what a ring all-reduce costs: each device adds `1/N` of the array
(the reduce-scatter half) and the sums are gathered back (the all-gather half).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _ordered_sum(x: jax.Array, axis_name: str) -> jax.Array:
  n = jax.lax.axis_size(axis_name)
  if n == 1:
    return x
  flat = x.reshape(-1)
  size = flat.size
  flat = jnp.pad(flat, (0, (-size) % n)).reshape(n, -1)  # row k: the slice device k adds
  parts = jax.lax.all_to_all(flat, axis_name, 0, 0, tiled=False)  # row j: from device j
  total = parts[0]
  for j in range(1, n):  # device order, one add at a time (XLA does not reassociate)
    total = total + parts[j]
  return jax.lax.all_gather(total, axis_name, tiled=True)[:size].reshape(x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def ordered_mean(x: jax.Array, axis_name: str) -> jax.Array:
  """`jax.lax.pmean(x, axis_name)` with a fixed summation order (inside `shard_map`).

  Its derivative is itself (as pmean's): every device's cotangent reaches every device.
  """
  return _ordered_sum(x, axis_name) / jax.lax.axis_size(axis_name)


def _fwd(x, axis_name):
  return ordered_mean(x, axis_name), None


def _bwd(axis_name, _, cotangent):
  return (ordered_mean(cotangent, axis_name),)


ordered_mean.defvjp(_fwd, _bwd)


def tree_ordered_mean(tree, axis_name: str):
  """`ordered_mean` of every leaf (gradients, loss terms, BatchNorm statistics)."""
  return jax.tree.map(lambda x: ordered_mean(x, axis_name), tree)
