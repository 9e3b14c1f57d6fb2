"""Bottom-up grouping: max-pool NMS, top-k, associative-embedding tag matching, adjust, refine.

Reproduces the official `HeatmapParser.parse` (top-k, `match_by_tag`, `adjust`, `refine`)
exactly, so results computed from official checkpoints keep official AP:

* NMS + top-k: `nms_top_k` is a jittable JAX function (max pool with implicit -inf padding
  keeps local maxima, then the `max_num_people` best positions of every joint map) for
  pipelines that keep the maps on the device; `parse_top_k` then groups on the host.
  `parse`, whose inputs are host arrays, runs a numba twin of the same NMS + top-k instead
  of a round trip to the device.
* Everything that loops (tag matching with the Hungarian assignment, adjust, refine) is
  compiled with numba and works on plain arrays. The assignment is a literal port of
  munkres 1.1.4 (see `munkres.py`), because the rounded cost matrices are full of ties and
  any other solver picks different optima, hence different people.

Arithmetic follows the official NumPy code: tag distances of the matching in float64
against float32 group means; group means and refine in float32; scores as NumPy's float32
pairwise mean. Coordinates are heatmap pixels (x = column, y = row).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax.inference import grouping_host as host


# ------------------------------------------------------------------ NMS + top-k (JAX)


def _max_pool_same(x: jax.Array, kernel: int, padding: int) -> jax.Array:
  """Stride-1 `kernel x kernel` max pool over axes 0 and 1 with -inf padding.

  Done as two separable passes of shifted maxima (max is exact, so the result equals the 2-d
  window); XLA's CPU `reduce_window` is about ten times slower on these maps.
  """
  h, w = x.shape[:2]
  pad = [(padding, padding), (padding, padding)] + [(0, 0)] * (x.ndim - 2)
  p = jnp.pad(x, pad, constant_values=-jnp.inf)
  rows = p[0:h]
  for i in range(1, kernel):
    rows = jnp.maximum(rows, p[i:i + h])
  out = rows[:, 0:w]
  for i in range(1, kernel):
    out = jnp.maximum(out, rows[:, i:i + w])
  return out


def nms(heatmaps: jax.Array, *, kernel: int = 5, padding: int = 2) -> jax.Array:
  """Keeps local maxima of [..., H, W, K] heatmaps (official `HeatmapParser.nms`).

  Args:
    heatmaps: [H, W, K] or [B, H, W, K].
    kernel: NMS window (`test.nms_kernel`), stride 1.
    padding: NMS padding (`test.nms_padding`); must keep the map size (2 * padding + 1 ==
      kernel), as the official code multiplies the pooled map with the input.

  Returns:
    heatmaps with every value that is not the maximum of its window set to 0.
  """
  if 2 * padding + 1 != kernel:
    raise ValueError(f'nms: kernel {kernel} and padding {padding} change the map size; '
                     'need kernel == 2 * padding + 1')
  if heatmaps.ndim == 4:
    return jax.vmap(functools.partial(nms, kernel=kernel, padding=padding))(heatmaps)
  pooled = _max_pool_same(heatmaps, kernel, padding)
  # Multiply (not select) as the official code does: negative non-maxima become -0.
  return heatmaps * (pooled == heatmaps).astype(heatmaps.dtype)


def top_k_indices(kept: jax.Array, k: int = 30) -> tuple[jax.Array, jax.Array]:
  """Per-joint top-k of [..., H, W, K] suppressed maps over the flattened H * W positions.

  Returns:
    val_k [..., K, k] (descending) and flat indices ind [..., K, k] (y * W + x); k is capped
    at H * W.
  """
  *lead, h, w, nj = kept.shape
  flat = jnp.swapaxes(kept.reshape(*lead, h * w, nj), -1, -2)
  return jax.lax.top_k(flat, min(k, h * w))


def nms_top_k(heatmaps: jax.Array, tags: jax.Array, *, kernel: int = 5, padding: int = 2,
              k: int = 30) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Max-pool NMS and per-joint top-k (official `HeatmapParser.top_k`), jittable.

  Meant for accelerators. On XLA:CPU one program holding both the NMS and the TopK runs
  several times slower than the two as separate programs (about 400 ms against 30 + 30 ms
  for 512 x 832 x 17 maps, cause not found); host callers should use `parse`, whose numba
  twin of this function takes about 6 ms there.

  Args:
    heatmaps: [H, W, K] (or [B, H, W, K]) detection maps.
    tags: [H, W, K, T] (or [B, H, W, K, T]) tag maps.
    kernel: NMS window (`test.nms_kernel`), stride 1.
    padding: NMS padding (`test.nms_padding`), 2 * padding + 1 == kernel.
    k: number of candidates per joint (`data.max_num_people`; capped at H * W).

  Returns:
    val_k [..., K, k] (descending per joint; non-maxima count as 0), loc_k [..., K, k, 2]
    int32 (x, y), tag_k [..., K, k, T].
  """
  if heatmaps.ndim == 4:
    fn = functools.partial(nms_top_k, kernel=kernel, padding=padding, k=k)
    return jax.vmap(fn)(heatmaps, tags)
  h, w, nj = heatmaps.shape
  val_k, ind = top_k_indices(nms(heatmaps, kernel=kernel, padding=padding), k)
  tag_k = tags.reshape(h * w, nj, tags.shape[-1])[ind, jnp.arange(nj)[:, None]]
  loc_k = jnp.stack([ind % w, ind // w], axis=-1).astype(jnp.int32)
  return val_k, loc_k, tag_k


# ------------------------------------------------------------------------------ public API


def _check_maps(heatmaps: np.ndarray, tags: np.ndarray, num_joints: int,
                valid_hw: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, int, int]:
  """Shapes checked, float32 C-contiguous maps (a copy only if they are not) and the valid
  region. Finiteness is checked by the kernels, in passes they make anyway."""
  heatmaps = np.ascontiguousarray(heatmaps, np.float32)
  tags = np.ascontiguousarray(tags, np.float32)
  if heatmaps.ndim != 3:
    raise ValueError(f'grouping.parse: heatmaps must be [H, W, K], got shape {heatmaps.shape}')
  if tags.ndim != 4 or tags.shape[:3] != heatmaps.shape:
    raise ValueError(f'grouping.parse: tags must be [H, W, K, T] matching heatmaps '
                     f'{heatmaps.shape}, got shape {tags.shape}')
  if heatmaps.shape[2] != num_joints:
    raise ValueError(f'grouping.parse: heatmaps have {heatmaps.shape[2]} joints but '
                     f'dataset.keypoints.joint_order has {num_joints}')
  if min(heatmaps.shape) == 0 or tags.shape[3] == 0:
    raise ValueError(f'grouping.parse: empty maps (heatmaps {heatmaps.shape}, '
                     f'tags {tags.shape})')
  h, w = heatmaps.shape[:2] if valid_hw is None else (int(v) for v in valid_hw)
  if not (0 < h <= heatmaps.shape[0] and 0 < w <= heatmaps.shape[1]):
    raise ValueError(f'grouping.parse: valid_hw {(h, w)} is empty or exceeds the '
                     f'{heatmaps.shape[:2]} maps')
  return heatmaps, tags, h, w


def _checked(poses: np.ndarray, scores: np.ndarray,
             status: int) -> tuple[np.ndarray, np.ndarray]:
  # NaN would make the NMS, the matching costs and the refine argmax meaningless (and
  # non-finite costs never let the assignment terminate), so they are rejected.
  if status == host.NON_FINITE_HEATMAPS:
    raise ValueError('grouping.parse: heatmaps contain NaN or infinite values')
  if status == host.NON_FINITE_TAGS:
    raise ValueError('grouping.parse: tags contain NaN or infinite values')
  if status != host.OK:
    raise ValueError(f'grouping: tag-matching assignment failed (munkres status {status})')
  return poses, scores


@dataclasses.dataclass(frozen=True)
class GroupingSpec:
  """The grouping settings, read from the config once (not for every image).

  `joint_order` is the official matching order of the joints (`dataset.keypoints`); the
  thresholds and NMS window are `test.*`, `max_num_people` is `data.max_num_people`.
  """

  joint_order: tuple[int, ...]
  detection_threshold: float
  tag_threshold: float
  use_detection_val: bool
  ignore_too_much: bool
  max_num_people: int
  nms_kernel: int = 5
  nms_padding: int = 2

  def __post_init__(self):
    if 2 * self.nms_padding + 1 != self.nms_kernel:
      raise ValueError(f'test.nms_kernel={self.nms_kernel} and test.nms_padding='
                       f'{self.nms_padding} change the map size; need nms_kernel == '
                       '2 * nms_padding + 1')

  @classmethod
  def from_config(cls, config) -> GroupingSpec:
    t = config.test
    return cls(joint_order=tuple(int(j) for j in config.dataset.keypoints.joint_order),
               detection_threshold=float(t.detection_threshold),
               tag_threshold=float(t.tag_threshold),
               use_detection_val=bool(t.use_detection_val),
               ignore_too_much=bool(t.ignore_too_much),
               max_num_people=int(config.data.max_num_people),
               nms_kernel=int(t.nms_kernel), nms_padding=int(t.nms_padding))

  @functools.cached_property
  def joint_order_array(self) -> np.ndarray:
    return np.asarray(self.joint_order, np.int64)


def parse_top_k(val_k: np.ndarray, loc_k: np.ndarray, tag_k: np.ndarray,
                heatmaps: np.ndarray, tags: np.ndarray, spec: GroupingSpec,
                adjust: bool = True, refine: bool = True,
                valid_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Host half of `parse`, for callers that ran `nms_top_k` on device themselves.

  Args:
    val_k: [K, M] float32 top-k values (`nms_top_k` output).
    loc_k: [K, M, 2] integer (x, y) locations.
    tag_k: [K, M, T] float32 tags at those locations.
    heatmaps: [H, W, K] float32 unsuppressed heatmaps (adjust and refine read them).
    tags: [H, W, K, T] float32 tag maps (refine reads them).
    spec: `GroupingSpec.from_config(config)`.
    adjust: official quarter-pixel adjustment.
    refine: official filling of missing joints.
    valid_hw: as in `parse`.

  Returns:
    poses [P, K, 3+T] float32 and scores [P] float32, as `parse`.
  """
  nj = len(spec.joint_order)
  heatmaps, tags, h, w = _check_maps(heatmaps, tags, nj, valid_hw)
  val_k = np.ascontiguousarray(val_k, np.float32)
  loc_k = np.ascontiguousarray(loc_k, np.int64)
  tag_k = np.ascontiguousarray(tag_k, np.float32)
  if (val_k.ndim != 2 or val_k.shape[0] != nj or loc_k.shape != val_k.shape + (2,)
      or tag_k.shape != val_k.shape + (tags.shape[3],)):
    raise ValueError(f'grouping.parse_top_k: inconsistent top-k shapes val_k {val_k.shape}, '
                     f'loc_k {loc_k.shape}, tag_k {tag_k.shape} for {nj} joints')
  if not (np.isfinite(val_k).all() and np.isfinite(tag_k).all()):
    raise ValueError('grouping.parse_top_k: top-k values or tags contain NaN or inf')
  # Only candidates above the detection threshold are ever read; the others may point
  # anywhere (e.g. into the padding of a batch computed on larger maps).
  used = loc_k[val_k.astype(np.float64) > spec.detection_threshold]
  if used.size and not ((used >= 0).all() and (used[:, 0] < w).all()
                        and (used[:, 1] < h).all()):
    raise ValueError(f'grouping.parse_top_k: candidates above detection_threshold lie '
                     f'outside the {h}x{w} maps (loc_k)')
  hp, wp = heatmaps.shape[:2]
  if not host.rows_finite(heatmaps.reshape(hp, wp * nj), h, w * nj):
    raise ValueError('grouping.parse: heatmaps contain NaN or infinite values')
  poses, scores, status = host.group(val_k, loc_k, tag_k, heatmaps, tags, h, w,
                                     spec.joint_order_array, spec.detection_threshold,
                                     spec.tag_threshold, spec.use_detection_val,
                                     spec.ignore_too_much, spec.max_num_people, bool(adjust),
                                     bool(refine))
  return _checked(poses, scores, status)


def parse(heatmaps: np.ndarray, tags: np.ndarray, spec: GroupingSpec, adjust: bool = True,
          refine: bool = True,
          valid_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Groups detections into people, as the official `HeatmapParser.parse`.

  Args:
    heatmaps: [H, W, K] float32 (aggregated) heatmaps of one image.
    tags: [H, W, K, T] float32 tag maps (T = 2 with flip test: original, flipped).
    spec: `GroupingSpec.from_config(config)`: `test.{detection_threshold, tag_threshold,
      use_detection_val, ignore_too_much, nms_kernel, nms_padding}`,
      `data.max_num_people` and `dataset.keypoints.joint_order`.
    adjust: move each joint a quarter pixel towards its higher neighbour.
    refine: fill missing joints of each person at the best tag-consistent peak.
    valid_hw: (h, w) when only the top-left h x w region holds the image (a batch's maps
      padded to a common size): the result is that of the cropped maps, with no copy made.

  Returns:
    poses [P, K, 3+T] float32, rows (x, y, score, tags...) in heatmap pixels, missing
    joints all zero, people in creation order; scores [P] float32 (mean joint score after
    adjust, before refine). No detection above threshold gives shapes (0, K, 3+T), (0,).

  Raises:
    ValueError: on mis-shaped maps or NaN / infinite values in the valid region.

  Other float dtypes are cast to float32. Safe to call from several threads at once; the
  kernels release the GIL, so images of a batch group in parallel.
  """
  heatmaps, tags, h, w = _check_maps(heatmaps, tags, len(spec.joint_order), valid_hw)
  poses, scores, status = host.parse_host(heatmaps, tags, h, w, spec.joint_order_array,
                                          spec.detection_threshold, spec.tag_threshold,
                                          spec.use_detection_val, spec.ignore_too_much,
                                          spec.max_num_people, spec.nms_padding,
                                          bool(adjust), bool(refine))
  return _checked(poses, scores, status)


def warm_up(spec: GroupingSpec, num_tags: int, *, writeable_maps: bool = True) -> None:
  """Compiles the host entry points (or loads them from numba's cache) on a one-person frame.

  The first call of each entry point pays this one-off cost; an evaluation calls this first
  so that the grouping time it reports per image is the grouping's own. Numba compiles one
  version for writeable maps and one for read-only ones (e.g. views of device arrays), so
  `writeable_maps` picks the one to prepare.
  """
  k = len(spec.joint_order)
  heatmaps = np.zeros((8, 8, k), np.float32)
  joints = np.arange(k)
  ys, xs = joints % 8, (joints * 3) % 8
  heatmaps[ys, xs, joints] = 1.0
  heatmaps[ys[:2], xs[:2], joints[:2]] = 0.0  # missing joints: refine scans
  tags = np.zeros((8, 8, k, num_tags), np.float32)
  for a in (heatmaps, tags):
    a.setflags(write=writeable_maps)
  parse(heatmaps, tags, spec, adjust=True, refine=True)
