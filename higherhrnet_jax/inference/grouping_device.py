"""Grouping with its dense work on the device: full-resolution maps never leave it.

On an accelerator the network takes milliseconds, so copying 80 MB of maps per image to
the host and scanning them there would decide the throughput. The work splits by nature:

* dense, on the device (jittable, batched): NMS + top-k, the det values around every
  candidate (for adjust), a finiteness check (`candidates`); refine's per-person score maps
  `det - round(|tag - prev|)` and their first argmax, with the det values around the best
  pixel (`refine_scan`);
* combinatorial, on the host (numba, `grouping_host`): tag matching of at most
  `max_num_people` candidates per joint, adjust and scores from the gathered values, then
  refine's fills from the scans' results.

The results equal `grouping.parse` exactly (same float32 operations in the same order, the
first maximum in row-major order); the tests check both paths against the official
fixtures. On a CPU backend the host path (`grouping.parse`) is faster and the default.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax.inference import grouping
from higherhrnet_jax.inference import grouping_host as host


def _around(det: jax.Array, x: jax.Array, y: jax.Array, j: jax.Array, h: jax.Array,
            w: jax.Array) -> jax.Array:
  """det at (x, y) and its left, right, upper and lower neighbours (clipped to the valid
  h x w region): [..., 5]."""
  return jnp.stack([det[y, x, j], det[y, jnp.maximum(x - 1, 0), j],
                    det[y, jnp.minimum(x + 1, w - 1), j], det[jnp.maximum(y - 1, 0), x, j],
                    det[jnp.minimum(y + 1, h - 1), x, j]], axis=-1)


def candidates(det: jax.Array, tags: jax.Array, valid_hw: jax.Array, *, kernel: int = 5,
               padding: int = 2, k: int = 30) -> tuple[jax.Array, ...]:
  """Per image of a batch: top-k candidates, the det values around them, finiteness.

  Args:
    det: [B, H, W, K] aggregated heatmaps, zero outside each image's valid region (the
      padding then never holds a candidate above a positive detection threshold).
    tags: [B, H, W, K, T].
    valid_hw: [B, 2] int32 valid (h, w) of each image.
    kernel, padding, k: `test.nms_kernel`, `test.nms_padding`, `data.max_num_people`.

  Returns:
    val_k [B, K, M], loc_k [B, K, M, 2] int32 (x, y), tag_k [B, K, M, T], around
    [B, K, M, 4] (det left, right, up, down of each candidate) and finite [B] (every map
    value of the image finite).
  """
  val_k, loc_k, tag_k = grouping.nms_top_k(det, tags, kernel=kernel, padding=padding, k=k)

  def one(d, loc, hw):
    j = jnp.arange(d.shape[2])[:, None]
    return _around(d, loc[..., 0], loc[..., 1], j, hw[0], hw[1])[..., 1:]

  around = jax.vmap(one)(det, loc_k, valid_hw)
  finite = (jnp.isfinite(det).all(axis=(1, 2, 3)) & jnp.isfinite(tags).all(axis=(1, 2, 3, 4)))
  return val_k, loc_k, tag_k, around, finite


def _square(e: jax.Array) -> jax.Array:
  """e * e rounded to float32 on its own. The select keeps the compiler from contracting
  the product into a fused multiply-add with the following sum (one rounding instead of
  two, which NumPy's float32 code does not do)."""
  sq = e * e
  return jnp.where(sq >= 0, sq, 0.0)


def refine_scan(det: jax.Array, tags: jax.Array, valid_hw: jax.Array,
                prevs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Refine's scans of one image: for every person and joint, the first argmax (row-major
  over the valid region) of `det - round(|tag - prev|)` in float32.

  Args:
    det: [H, W, K]; tags: [H, W, K, T] with T < 8 (NumPy sums fewer squares in order).
    valid_hw: [2] int32.
    prevs: [P, T] float32 mean tag of each person (`grouping_host.refine_scans`).

  Returns:
    best_x, best_y [P, K] int32 and best_det [P, K, 5] (det at the pixel, then its left,
    right, upper and lower neighbours).
  """
  hh, ww, nk, nt = tags.shape
  if nt >= 8:
    raise ValueError(f'refine_scan: {nt} tag channels; the device scan sums fewer than 8 '
                     'squares in order (use grouping.parse)')
  h, w = valid_hw[0], valid_hw[1]
  valid = (jnp.arange(hh)[:, None] < h) & (jnp.arange(ww)[None, :] < w)

  def one(prev):
    s = _square(tags[..., 0] - prev[0])
    for t in range(1, nt):
      s = s + _square(tags[..., t] - prev[t])
    score = jnp.where(valid[..., None], det - jnp.rint(jnp.sqrt(s)), -jnp.inf)
    return jnp.argmax(score.reshape(hh * ww, nk), axis=0).astype(jnp.int32)

  idx = jax.lax.map(one, prevs)
  y, x = idx // ww, idx % ww
  j = jnp.arange(nk)[None, :]
  return x, y, _around(det, x, y, j, h, w)


class DeviceGrouping:
  """The device-split grouping for one `GroupingSpec`, with its jitted programs."""

  def __init__(self, spec: grouping.GroupingSpec):
    self.spec = spec
    self.candidates = jax.jit(functools.partial(candidates, kernel=spec.nms_kernel,
                                                padding=spec.nms_padding,
                                                k=spec.max_num_people))
    self._scan = jax.jit(refine_scan)
    # People per scan call: one program per map shape; more people take several calls.
    self.chunk = 1 << max(spec.max_num_people - 1, 1).bit_length()

  def finish(self, cands: tuple[np.ndarray, ...], det: jax.Array, tags: jax.Array,
             valid_hw: tuple[int, int], adjust: bool = True,
             refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Host matching of one image's candidates (host arrays, without the batch axis), then
    refine's scans on its device maps det [H, W, K], tags [H, W, K, T]; as `parse`."""
    val_k, loc_k, tag_k, around, finite = cands
    if not finite:
      raise ValueError('grouping: heatmaps or tags contain NaN or infinite values')
    s = self.spec
    # Small arrays, copied: numba then sees one (writeable) array type, whatever the
    # device buffers' host views are.
    poses, scores, status = host.group_candidates(
        np.array(val_k, np.float32), np.array(loc_k, np.int64), np.array(tag_k, np.float32),
        np.array(around, np.float32), s.joint_order_array, s.detection_threshold,
        s.tag_threshold, s.use_detection_val, s.ignore_too_much, s.max_num_people,
        bool(adjust))
    if status != host.OK:
      raise ValueError(f'grouping: tag-matching assignment failed (munkres status {status})')
    if refine:
      scan_p, scan_j, prevs = host.refine_scans(poses)
      hw = np.asarray(valid_hw, np.int32)
      c = self.chunk
      for start in range(0, len(prevs) if scan_p.size else 0, c):
        padded = np.zeros((c, prevs.shape[1]), np.float32)
        padded[:len(prevs) - start] = prevs[start:start + c]
        best_x, best_y, best_det = (np.array(a) for a in self._scan(det, tags, hw, padded))
        mine = (scan_p >= start) & (scan_p < start + c)
        host.fill_from_scans(poses, scan_p[mine] - start, scan_j[mine],
                             best_x.astype(np.int64), best_y.astype(np.int64), best_det,
                             start)
    return poses, scores

  def warm_up(self, det: jax.Array, tags: jax.Array) -> None:
    """Compiles the host kernels and refine's scan program for maps of this shape, so that
    none compiles inside a timed stage."""
    nk, nt = tags.shape[2], tags.shape[3]
    m = self.spec.max_num_people
    val_k = np.zeros((nk, m), np.float32)
    val_k[:, 0] = 1.0
    loc_k = np.zeros((nk, m, 2), np.int64)
    loc_k[:, 0] = np.stack([np.arange(nk) % 2, np.arange(nk) // 2 % 2], axis=-1)
    s = self.spec
    poses, _, _ = host.group_candidates(val_k, loc_k, np.zeros((nk, m, nt), np.float32),
                                        np.zeros((nk, m, 4), np.float32), s.joint_order_array,
                                        s.detection_threshold, s.tag_threshold,
                                        s.use_detection_val, s.ignore_too_much, m, True)
    poses[:, 1:, 2] = 0.0  # missing joints for refine_scans
    scan_p, scan_j, _ = host.refine_scans(poses)
    zeros = np.zeros((1, nk), np.int64)
    host.fill_from_scans(poses, scan_p[:1], scan_j[:1], zeros, zeros,
                         np.zeros((1, nk, 5), np.float32), 0)
    hw = np.asarray(det.shape[:2], np.int32)
    self._scan.lower(det, tags, hw, np.zeros((self.chunk, nt), np.float32)).compile()

  def parse(self, heatmaps: jax.Array | np.ndarray, tags: jax.Array | np.ndarray,
            adjust: bool = True, refine: bool = True,
            valid_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`grouping.parse` of one image through the device split (maps stay on the device)."""
    heatmaps, tags = jnp.asarray(heatmaps, jnp.float32), jnp.asarray(tags, jnp.float32)
    hw = heatmaps.shape[:2] if valid_hw is None else valid_hw
    cands = self.candidates(heatmaps[None], tags[None], jnp.asarray([hw], jnp.int32))
    cands = tuple(np.asarray(a)[0] for a in cands)
    return self.finish(cands, heatmaps, tags, hw, adjust=adjust, refine=refine)
