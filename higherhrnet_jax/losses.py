"""HigherHRNet training losses: masked heatmap MSE and associative-embedding push/pull.

Semantics follow the official `MultiLossFactory` and the way the official trainer sums
its terms, but everything is vectorised over images, people and joints (no Python loop
over people), so the loss is jittable and has static shapes.

Layouts (NHWC, as everywhere inside JAX):
  * stage output `s`: `[B, R_s, R_s, C_s]`; the first `K` channels are heatmaps when the
    stage has a heatmap loss, followed by the tag channels when it has an AE loss.
  * `joints_s`: `[B, M, J, 2]` int32 in the official encoding: `(index, flag)` with
    `index = k * R * R + y * R + x` (channel-major, as the official code flattens the
    NCHW tag maps) and `flag > 0` for a tagged joint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array


def heatmaps_loss(pred: Array, target: Array, mask: Array) -> Array:
  """Masked heatmap MSE per image.

  The mean runs over all `R * R * K` elements, masked ones included in the denominator
  (as the official `HeatmapLoss`).

  Args:
    pred: `[B, R, R, K]` predicted heatmaps.
    target: `[B, R, R, K]` target heatmaps.
    mask: `[B, R, R]`, 1 where a pixel counts.

  Returns:
    `[B]` per-image loss (no factor applied).
  """
  if pred.shape != target.shape:
    raise ValueError(f'heatmaps_loss: prediction {pred.shape} and target {target.shape} differ')
  sq = jnp.square(pred - target) * mask[..., None]
  return jnp.mean(sq, axis=(1, 2, 3))


def gather_tags(tags: Array, joints: Array) -> Array:
  """Gathers tag values at the officially encoded joint indices.

  Args:
    tags: `[B, H, W, C]` tag maps (`C = K` with one tag map per joint, or 1).
    joints: `[B, M, J, 2]` int, `joints[..., 0] = c * H * W + y * W + x`.

  Returns:
    `[B, M, J]` tag values (garbage where the flag is 0; callers mask them).
  """
  b, h, w, c = tags.shape
  idx = joints[..., 0].astype(jnp.int32)
  channel = idx // (h * w)
  pixel = idx % (h * w)
  # Index into the NHWC buffer flattened per image: (y * W + x) * C + c.
  flat_idx = jnp.clip(pixel * c + channel, 0, h * w * c - 1)
  flat = tags.reshape(b, h * w * c)
  gathered = jnp.take_along_axis(flat, flat_idx.reshape(b, -1), axis=1)
  return gathered.reshape(idx.shape)


def ae_loss(tags: Array, joints: Array, loss_type: str = 'exp') -> tuple[Array, Array]:
  """Associative-embedding push and pull losses per image (no factors applied).

  For each person with at least one flagged joint: `mu_p` is the mean tag and
  `pull_p` the mean squared deviation from it; `pull = mean_p pull_p`. With `n >= 2`
  such people, `push = 0.5 * sum_{p != q} f(mu_p - mu_q) / (n (n - 1))` where
  `f(d) = exp(-d^2)` ('exp') or `max(1 - |d|, 0)` ('max'). `n < 2` gives push 0;
  `n = 0` gives pull 0. Gradients flow through `mu_p` in both terms, as officially.

  Args:
    tags: `[B, H, W, C]` tag maps.
    joints: `[B, M, J, 2]` int, official encoding.
    loss_type: 'exp' or 'max'.

  Returns:
    `(push [B], pull [B])`.
  """
  if loss_type not in ('exp', 'max'):
    raise ValueError(f"ae_loss: loss_type must be 'exp' or 'max', got {loss_type!r}")
  t = gather_tags(tags, joints)  # [B, M, J]
  flag = (joints[..., 1] > 0).astype(t.dtype)
  count = jnp.sum(flag, axis=-1)  # [B, M]
  person = count > 0
  safe_count = jnp.maximum(count, 1.0)
  mu = jnp.sum(t * flag, axis=-1) / safe_count  # [B, M]
  pull_p = jnp.sum(jnp.square(t - mu[..., None]) * flag, axis=-1) / safe_count
  n = jnp.sum(person.astype(t.dtype), axis=-1)  # [B]
  pull = jnp.sum(jnp.where(person, pull_p, 0.0), axis=-1) / jnp.maximum(n, 1.0)

  diff = mu[:, :, None] - mu[:, None, :]  # [B, M, M]
  if loss_type == 'exp':
    f = jnp.exp(-jnp.square(diff))
  else:
    f = jax.nn.relu(1.0 - jnp.abs(diff))
  m = mu.shape[1]
  pair = person[:, :, None] & person[:, None, :] & ~jnp.eye(m, dtype=bool)[None]
  push_sum = jnp.sum(jnp.where(pair, f, 0.0), axis=(1, 2))
  denom = jnp.maximum(n * (n - 1.0), 1.0)
  push = jnp.where(n >= 2, 0.5 * push_sum / denom, 0.0)
  return push, pull


def stage_losses(
    outputs: Sequence[Array], batch: Mapping[str, Array], config: ml_collections.ConfigDict
) -> dict[str, Array]:
  """Per-image loss terms of every stage, factors applied.

  Args:
    outputs: stage outputs `[B, R_s, R_s, C_s]` (promoted to at least float32 here, so a
      bfloat16 model still gets a float32 loss).
    batch: `heatmaps_s [B,R,R,K]`, `masks_s [B,R,R]`, `joints_s [B,M,J,2]` per stage.
    config: full config (uses `model.num_joints`, `model.with_ae_loss` and `loss.*`).

  Returns:
    `{'heatmaps_loss_s', 'push_loss_s', 'pull_loss_s': [B]}` for the stages that have them.
  """
  lc = config.loss
  k = config.model.num_joints
  with_ae = tuple(config.model.with_ae_loss)
  if len(outputs) != len(lc.with_heatmaps_loss):
    raise ValueError(f'stage_losses: {len(outputs)} outputs but config.loss has '
                     f'{len(lc.with_heatmaps_loss)} stages')
  terms = {}
  for s, out in enumerate(outputs):
    out = out.astype(jnp.promote_types(out.dtype, jnp.float32))
    offset = 0
    if lc.with_heatmaps_loss[s]:
      for key in (f'heatmaps_{s}', f'masks_{s}'):
        if key not in batch:
          raise KeyError(f'stage_losses: batch has no {key!r}')
      hm = heatmaps_loss(out[..., :k], batch[f'heatmaps_{s}'], batch[f'masks_{s}'])
      terms[f'heatmaps_loss_{s}'] = hm * lc.heatmaps_loss_factor[s]
      # As officially: tags follow the heatmaps only when the stage predicts heatmaps.
      offset = k
    if with_ae[s]:
      if f'joints_{s}' not in batch:
        raise KeyError(f'stage_losses: batch has no joints_{s!r}')
      push, pull = ae_loss(out[..., offset:], batch[f'joints_{s}'], lc.ae_loss_type)
      terms[f'push_loss_{s}'] = push * lc.push_loss_factor[s]
      terms[f'pull_loss_{s}'] = pull * lc.pull_loss_factor[s]
  return terms


def multi_loss(
    outputs: Sequence[Array], batch: Mapping[str, Array], config: ml_collections.ConfigDict
) -> tuple[Array, dict[str, Array]]:
  """Training total as the official trainer forms it: the sum of batch means of all terms.

  Returns:
    `(total, terms)`: scalar total and the batch mean of each term of `stage_losses`.
  """
  per_image = stage_losses(outputs, batch, config)
  terms = {name: jnp.mean(v) for name, v in per_image.items()}
  total = sum(terms.values())
  return total, terms
