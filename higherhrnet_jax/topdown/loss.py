"""JointsMSELoss: the top-down heatmap loss, 0.5 x the target-weighted MSE averaged over joints."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp


def joints_mse_loss(heatmaps: jax.Array, target: jax.Array, target_weight: jax.Array,
                    use_target_weight: bool = True) -> jax.Array:
  """`0.5 / (K B H W) * sum w^2 (P - G)^2` (the official `JointsMSELoss`).

  The weight enters squared because the official loss weights prediction and target before
  the difference; pixels of weight-0 joints still count in the mean.

  Args:
    heatmaps: `[B, H, W, K]` predictions.
    target: `[B, H, W, K]` target heatmaps.
    target_weight: `[B, K]` per-joint weights.
    use_target_weight: official `LOSS.USE_TARGET_WEIGHT`.

  Returns:
    The scalar loss (in the heatmaps' dtype promoted to at least float32).
  """
  dtype = jnp.promote_types(heatmaps.dtype, jnp.float32)
  diff = heatmaps.astype(dtype) - target.astype(dtype)
  if use_target_weight:
    diff = diff * target_weight.astype(dtype)[:, None, None, :]
  return 0.5 * jnp.mean(jnp.square(diff))


def loss(heatmaps: jax.Array, batch: Mapping[str, jax.Array], use_target_weight: bool = True
         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The train step's loss contract: `(total, terms)` for a batch with 'target', 'target_weight'."""
  total = joints_mse_loss(heatmaps, batch['target'], batch['target_weight'], use_target_weight)
  return total, {'heatmaps_loss': total}
