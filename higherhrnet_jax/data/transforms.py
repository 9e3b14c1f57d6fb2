"""Training augmentation: the official random affine, horizontal flip and normalization.

A sample is a pure function of its random draws (:class:`AugmentDraws`), which come from a
per-sample `numpy.random.Generator` (:func:`sample_draws`); :func:`make_train_sample`
turns one decoded image, its joints and ignore mask into the training example.

Given the same draws, every array equals the official pipeline's (`RandomAffineTransform`,
`RandomHorizontalFlip`, `ToTensor`, `Normalize`, then the target generators):
  * the affine matrix is the official `_get_affine_matrix` (float64, rotation branch skipped
    when the angle is exactly 0), one per resolution, not a scaled copy of one matrix;
  * image and masks are warped with `cv2.warpAffine` (INTER_LINEAR, border 0). OpenCV 5's
    uint8 path is float32 and differs from OpenCV 4's fixed-point one by a few grey
    levels, so the project pins `opencv-python-headless>=5`;
  * the flip is applied after the warp (folding it into the matrix would change the
    warp's rounding) and swaps joints with the keypoint spec's flip index.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
from typing import Any

import cv2
import numpy as np

from higherhrnet_jax._numba import njit
from higherhrnet_jax import keypoints
from higherhrnet_jax.config import higher_hrnet
from higherhrnet_jax.data import normalization, targets

# ImageNet RGB statistics of torchvision's Normalize, as float32 like the official tensors.


@dataclasses.dataclass(frozen=True)
class AugmentDraws:
  """The random numbers of one training sample, in the official draw order.

  Attributes:
    u_scale: uniform [0, 1) draw for the scale.
    u_rot: uniform [0, 1) draw for the rotation.
    dx, dy: integer translations of the centre (input-image pixels).
    flip: whether the sample is mirrored.
  """

  u_scale: float
  u_rot: float
  dx: int
  dy: int
  flip: bool


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """The config fields one training sample needs, read once from the ConfigDict."""

  input_size: int
  output_size: tuple[int, ...]
  max_rotation: float
  min_scale: float
  max_scale: float
  scale_type: str
  max_translate: float
  flip_prob: float
  sigma: float
  scale_aware_sigma: bool
  max_num_people: int
  tag_per_joint: bool
  flip_index: tuple[int, ...]
  codec: str = 'official'

  @classmethod
  def from_config(cls, config: Any) -> SampleConfig:
    """Built once per pipeline from the full config; the functions below take only this."""
    d = config.data
    if d.with_center:
      raise ValueError('config.data.with_center: the centre joint is not supported')
    spec = keypoints.spec_from_config(config.dataset.keypoints)
    return cls(
        input_size=int(d.input_size),
        output_size=higher_hrnet.output_sizes(config),
        max_rotation=float(d.max_rotation),
        min_scale=float(d.min_scale),
        max_scale=float(d.max_scale),
        scale_type=str(d.scale_type),
        max_translate=float(d.max_translate),
        flip_prob=float(d.flip),
        sigma=float(d.sigma),
        scale_aware_sigma=bool(d.scale_aware_sigma),
        max_num_people=int(d.max_num_people),
        tag_per_joint=bool(config.model.tag_per_joint),
        flip_index=spec.flip_index,
        codec=str(d.codec),
    )


def _base_scale(image_hw: tuple[int, int], scale_type: str) -> float:
  h, w = image_hw
  if scale_type == 'short':
    return min(h, w) / 200
  if scale_type == 'long':
    return max(h, w) / 200
  raise ValueError(f"scale_type must be 'short' or 'long', got {scale_type!r}")


def _translate_bounds(max_translate: float, scale: float) -> tuple[int, int]:
  # NumPy's legacy randint converts float bounds with int() (truncation toward zero).
  return int(-max_translate * scale), int(max_translate * scale)


def sample_draws(rng: np.random.Generator, image_hw: tuple[int, int], c: SampleConfig
                 ) -> AugmentDraws:
  """Draws the augmentation of one sample (same order and meaning as the official code).

  Args:
    rng: the per-sample generator (built by the loader from seed, epoch and index).
    image_hw: (height, width) of the decoded image; the translation range depends on it.
    c: the sample settings.

  Returns:
    The draws.
  """
  u_scale = float(rng.random())
  u_rot = float(rng.random())
  dx = dy = 0
  if c.max_translate > 0:
    aug_scale = u_scale * (c.max_scale - c.min_scale) + c.min_scale
    scale = _base_scale(image_hw, c.scale_type) * aug_scale
    lo, hi = _translate_bounds(c.max_translate, scale)
    if hi > lo:
      dx = int(rng.integers(lo, hi))
      dy = int(rng.integers(lo, hi))
  flip = bool(rng.random() < c.flip_prob)
  return AugmentDraws(u_scale=u_scale, u_rot=u_rot, dx=dx, dy=dy, flip=flip)


@dataclasses.dataclass(frozen=True)
class AffineParams:
  """Derived quantities of the official random affine."""

  center: tuple[float, float]
  scale: float
  aug_scale: float
  aug_rot: float


def affine_params(draws: AugmentDraws, image_hw: tuple[int, int], c: SampleConfig
                  ) -> AffineParams:
  """Centre, scale (in units of 200 px) and rotation (degrees) from the draws."""
  h, w = image_hw
  aug_scale = draws.u_scale * (c.max_scale - c.min_scale) + c.min_scale
  scale = _base_scale(image_hw, c.scale_type) * aug_scale
  aug_rot = (draws.u_rot * 2 - 1) * c.max_rotation
  cx, cy = w / 2, h / 2
  if c.max_translate > 0:
    cx += draws.dx
    cy += draws.dy
  return AffineParams(center=(cx, cy), scale=scale, aug_scale=aug_scale, aug_rot=aug_rot)


def affine_matrix(center: tuple[float, float], scale: float, res: int, rot: float) -> np.ndarray:
  """The official `_get_affine_matrix` for a square `res` output, `[2, 3]` float64.

  Maps image pixels to output pixels: scale `res / (200 * scale)` about `center`, then a
  rotation by `-rot` degrees about the output centre (skipped when `rot == 0`).
  """
  h = 200 * scale
  t = np.zeros((3, 3))
  t[0, 0] = float(res) / h
  t[1, 1] = float(res) / h
  t[0, 2] = res * (-float(center[0]) / h + .5)
  t[1, 2] = res * (-float(center[1]) / h + .5)
  t[2, 2] = 1
  if rot != 0:
    rad = -rot * np.pi / 180
    sn, cs = np.sin(rad), np.cos(rad)
    rot_mat = np.array([[cs, -sn, 0], [sn, cs, 0], [0, 0, 1]])
    to_origin = np.eye(3)
    to_origin[:2, 2] = -res / 2
    back = np.eye(3)
    back[:2, 2] = res / 2
    t = np.dot(back, np.dot(rot_mat, np.dot(to_origin, t)))
  return t[:2]


def affine_joints(joints_xy: np.ndarray, mat: np.ndarray) -> np.ndarray:
  """Applies a `[2, 3]` affine to `[..., 2]` points (all joints, visibility ignored)."""
  pts = joints_xy.reshape(-1, 2)
  homog = np.concatenate([pts, np.ones((pts.shape[0], 1))], axis=1)
  return np.dot(homog, mat.T).reshape(joints_xy.shape)


def warp(image: np.ndarray, mat: np.ndarray, size: int) -> np.ndarray:
  """`cv2.warpAffine` to a `size`x`size` output (INTER_LINEAR, constant 0 border)."""
  return cv2.warpAffine(image, mat, (size, size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_mask(mask: np.ndarray, mat: np.ndarray, size: int) -> np.ndarray:
  """Official mask warp: uint8 {0, 255} warped, `/ 255 > 0.5` (i.e. >= 128); float32."""
  m8 = mask.astype(np.uint8) * np.uint8(255)
  return (warp(m8, mat, size) >= 128).astype(np.float32)


_LUT = normalization.table()


@njit(nogil=True)
def _lut_flip(image, lut, flip):  # pragma: no cover - numba
  h, w, c = image.shape
  out = np.empty((h, w, c), np.float32)
  for y in range(h):
    for x in range(w):
      sx = w - 1 - x if flip else x
      for k in range(c):
        out[y, x, k] = lut[k, image[y, sx, k]]
  return out


def normalize_flip(image: np.ndarray, flip: bool) -> np.ndarray:
  """:func:`normalize` of the (optionally mirrored) uint8 image in one pass (table lookup)."""
  return _lut_flip(np.ascontiguousarray(image), _LUT, bool(flip))


def flip_joints(joints: np.ndarray, flip_index: tuple[int, ...], size: int) -> np.ndarray:
  """Mirrors joints in a `size`-wide map: swap left/right joints, `x <- size - x - 1`."""
  out = joints[:, list(flip_index)].copy()
  out[:, :, 0] = size - out[:, :, 0] - 1
  return out


def augment(image: np.ndarray, joints: np.ndarray, mask: np.ndarray, draws: AugmentDraws,
            c: SampleConfig, flip_image: bool = True) -> dict[str, Any]:
  """The official geometric augmentation (before target generation).

  Args:
    flip_image: mirror the image here (False leaves it to the caller, which can fuse the
      mirror into normalization).

  Returns:
    dict with 'image' `[S, S, 3]` uint8, and per output stage s: 'mask_s' `[R, R]` float32,
    'joints_xy_s' `[N, K, C]` float64 (coordinates in output pixels), 'mat_s' `[2, 3]`;
    plus 'mat_input' and the :class:`AffineParams` under 'params'.
  """
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f'image must be [H, W, 3] uint8, got {image.shape} {image.dtype}')
  if mask.shape != image.shape[:2]:
    raise ValueError(f'mask shape {mask.shape} != image shape {image.shape[:2]}')
  k = len(c.flip_index)
  if joints.ndim != 3 or joints.shape[1] != k or joints.shape[2] not in (3, 4):
    raise ValueError(f'joints must be [N, {k}, 3] (or 4 with a sigma column), got {joints.shape}')
  p = affine_params(draws, image.shape[:2], c)
  out: dict[str, Any] = {'params': p}
  for s, res in enumerate(c.output_size):
    mat = affine_matrix(p.center, p.scale, res, p.aug_rot)
    j = np.array(joints, np.float64, copy=True)
    j[:, :, 0:2] = affine_joints(j[:, :, 0:2], mat)
    if c.scale_aware_sigma and j.shape[-1] > 3:
      j[:, :, 3] = j[:, :, 3] / p.aug_scale
    m = warp_mask(mask, mat, res)
    if draws.flip:
      m = m[:, ::-1]
      j = flip_joints(j, c.flip_index, res)
    out[f'mat_{s}'] = mat
    out[f'mask_{s}'] = np.ascontiguousarray(m)
    out[f'joints_xy_{s}'] = j
  mat_in = affine_matrix(p.center, p.scale, c.input_size, p.aug_rot)
  img = warp(image, mat_in, c.input_size)
  if draws.flip and flip_image:
    img = img[:, ::-1]
  out['mat_input'] = mat_in
  out['image'] = img
  return out


def make_train_sample(image_rgb_uint8: np.ndarray, joints: np.ndarray, mask: np.ndarray,
                      draws: AugmentDraws, c: SampleConfig) -> dict[str, np.ndarray]:
  """One training example from a decoded image, its annotations and the random draws.

  Args:
    image_rgb_uint8: `[H, W, 3]` uint8 RGB (see `coco.decode_image`).
    joints: `[N, K, 3]` float64 (x, y, v) in image pixels (`[N, K, 4]` with a per-person
      sigma column when `data.scale_aware_sigma`), as returned by the sources.
    mask: `[H, W]` bool, True where the loss counts (official `get_mask`).
    draws: from :func:`sample_draws`.
    c: the sample settings (`SampleConfig.from_config(config)`).

  Returns:
    'image' `[S, S, 3]` float32 normalized, and for each stage s: 'heatmaps_s' `[R, R, K]`
    float32, 'masks_s' `[R, R]` float32, 'joints_s' `[M, K, 2]` int32 (official encoding).
  """
  a = augment(image_rgb_uint8, joints, mask, draws, c, flip_image=False)
  out = {'image': normalize_flip(a['image'], draws.flip)}
  draw = targets.subpixel_heatmaps if c.codec == 'dark' else targets.heatmaps
  for s, res in enumerate(c.output_size):
    j = a[f'joints_xy_{s}']
    sigma = targets.person_sigmas(j, c.sigma, c.scale_aware_sigma)
    out[f'heatmaps_{s}'] = draw(j, res, sigma)
    out[f'masks_{s}'] = a[f'mask_{s}']
    out[f'joints_{s}'] = targets.joint_indices(j, res, c.max_num_people, c.tag_per_joint)
  return out


@functools.cache
def reuse_large_buffers(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
  """Lets glibc reuse freed multi-megabyte buffers instead of mapping fresh pages.

  Each sample allocates about 8.5 MB of new arrays at 512 input (image, two heatmap
  stacks). glibc serves such sizes with `mmap`, so every sample pays page faults to zero
  fresh pages: about 40% of the per-sample CPU time here. Raising the mmap and trim
  thresholds (`mallopt`) keeps these buffers in the heap. Call once per worker process;
  it does nothing where glibc is absent.

  Returns:
    Whether the allocator was configured.
  """
  name = ctypes.util.find_library('c')
  try:
    libc = ctypes.CDLL(name or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
  return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(
      mallopt(m_trim_threshold, trim_threshold))

