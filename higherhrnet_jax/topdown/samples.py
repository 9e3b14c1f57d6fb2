"""Top-down training samples: the official person-crop augmentation and heatmap targets.

A sample is a pure function of its record, its image and its random draws (:class:`Draws`,
from a per-sample `numpy.random.Generator` via :func:`sample_draws`). Given the official
draws, every array equals the official `JointsDataset.__getitem__`:

  * half body, scale, rotation and flip follow the official order, conditions and dtypes
    (float32 box arithmetic, a float64 scale after the scale draw);
  * the flip mirrors the *source* image before the warp, and `cv2.warpAffine` (INTER_LINEAR,
    zero border) crops with the float32-point matrix of `get_affine_transform`;
  * targets are `generate_target`: centre `int(x / stride + 0.5)`, a (6 sigma + 1) window
    *set* into the map, weight 0 only when the window misses the map.

The Gaussian kernel is the one NumPy's float32 `exp` gives on x86 SIMD builds, which is not
correctly rounded (104 of the 169 sigma-2 values are 1 ulp off `float32(exp(float64))`).
Rather than calling `np.exp`, whose float32 result depends on the processor and the NumPy
build, the kernel is computed by :func:`numpy_simd_expf`, which replays that algorithm with
IEEE float32 operations and exactly rounded fused multiply-adds, so targets are identical
on every host.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from higherhrnet_jax import keypoints
from higherhrnet_jax.data import coco
from higherhrnet_jax.data import transforms as data_transforms
from higherhrnet_jax.inference.transforms import get_affine_transform
from higherhrnet_jax.topdown import dark, udp
from higherhrnet_jax.topdown.records import (PIXEL_STD, PersonRecord, SampleSpec, coco_records, load_image,
                                             mpii_records)


@dataclasses.dataclass(frozen=True)
class Draws:
  """The random numbers of one sample, named after the official draws (None: not drawn).

  Attributes:
    u_hb: uniform [0, 1): half body iff `u_hb < prob_half_body` (drawn only when the person
      has more than `num_joints_half_body` labelled joints).
    z_hb: standard normal: upper body iff `z_hb < 0.5` (drawn only for a half-body crop).
    z_s: standard normal: scale factor `clip(1 + scale_factor z_s, 1 -+ scale_factor)`.
    u_r: uniform: rotate iff `u_r <= rot_prob`.
    z_r: standard normal: rotation `clip(rot_factor z_r, -+2 rot_factor)` (only if rotating).
    u_f: uniform: flip iff `u_f <= flip_prob` (drawn only when flipping is on).
  """

  u_hb: float | None = None
  z_hb: float | None = None
  z_s: float | None = None
  u_r: float | None = None
  z_r: float | None = None
  u_f: float | None = None


def sample_draws(rng: np.random.Generator, num_visible: int, spec: SampleSpec) -> Draws:
  """Draws one sample's randomness in the official order and under its conditions.

  Args:
    rng: the per-sample generator (built by the loader from seed, epoch and index).
    num_visible: labelled joints of the record (`PersonRecord.num_visible`).
    spec: the sample parameters.

  Returns:
    The draws; a value is None exactly when the official code would not draw it.
  """
  u_hb = z_hb = z_r = u_f = None
  if num_visible > spec.num_joints_half_body:
    u_hb = float(rng.random())
    if u_hb < spec.prob_half_body:
      z_hb = float(rng.standard_normal())
  z_s = float(rng.standard_normal())
  u_r = float(rng.random())
  if u_r <= spec.rot_prob:
    z_r = float(rng.standard_normal())
  if spec.flip:
    u_f = float(rng.random())
  return Draws(u_hb=u_hb, z_hb=z_hb, z_s=z_s, u_r=u_r, z_r=z_r, u_f=u_f)


def half_body_box(joints: np.ndarray, joints_vis: np.ndarray, z_hb: float,
                  spec: SampleSpec) -> tuple[np.ndarray, np.ndarray] | None:
  """Centre and scale of the official half-body crop, float32 (2,) each, or None.

  The upper body is chosen iff `z_hb < 0.5` and it has more than 2 labelled joints, else
  the lower body if it has more than 2, else the upper body; fewer than 2 selected joints
  give None (no change). Arithmetic is float32 as in the official code: the centre is the
  running float32 sum of the rows divided by the count.
  """
  upper_ids = set(spec.upper_body_ids)
  upper, lower = [], []
  for j in range(joints.shape[0]):
    if joints_vis[j, 0] > 0:
      (upper if j in upper_ids else lower).append(joints[j])
  if z_hb < 0.5 and len(upper) > 2:
    selected = upper
  else:
    selected = lower if len(lower) > 2 else upper
  if len(selected) < 2:
    return None
  pts = np.asarray(selected, np.float32)
  total = pts[0].copy()
  for row in pts[1:]:
    total = total + row
  center = (total / np.float32(len(pts)))[:2]
  w = pts[:, 0].max() - pts[:, 0].min()
  h = pts[:, 1].max() - pts[:, 1].min()
  ratio = np.float32(spec.aspect_ratio)
  if w > ratio * h:
    h = w / ratio
  elif w < ratio * h:
    w = h * ratio
  scale = np.array([w / np.float32(PIXEL_STD), h / np.float32(PIXEL_STD)], np.float32)
  return center, scale * np.float32(spec.half_body_padding)


def _f32(bits: int) -> np.float32:
  return np.array([bits], np.uint32).view(np.float32)[0]


# NumPy's float32 exp kernel (x86 AVX2/AVX-512): Cody-Waite reduction by ln 2, then a
# [5/2] rational minimax approximation. Constants as IEEE bit patterns.
_LOG2E = _f32(0x3FB8AA3B)
_RINT_MAGIC = _f32(0x4B400000)  # 1.5 * 2^23: adding and subtracting it rounds to integer
_LN2_HI, _LN2_LO = _f32(0xBF317200), _f32(0xB5BFBE8E)  # -ln 2 split in two
_EXP_P = tuple(_f32(b) for b in (0x3F800000, 0x3F39CBD5, 0x3E7D4C58, 0x3D517D8C, 0x3BDD7159,
                                 0x3A053DD8))
_EXP_Q = tuple(_f32(b) for b in (0x3F800000, 0xBE8C6857, 0x3CB0E832))
_EXP_MAX, _EXP_MIN = _f32(0x42B17218), _f32(0xC2CFF1B5)


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`s + e == a + b` exactly, `s` the rounded sum (Knuth's TwoSum)."""
  s = a + b
  v = s - a
  return s, (a - (s - v)) + (b - v)


def _add_round_to_odd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`a + b` rounded to odd: the truncated sum with its last bit set if inexact.

  A round-to-odd value with at least two more bits than the target format rounds to
  the same result as the exact value, which is what makes the FMA emulations exact.
  """
  s, err = _two_sum(a, b)
  even = (s.view(np.uint64) & np.uint64(1)) == 0
  return np.where((err != 0) & even, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  """float32 `a * b + c` rounded once (a hardware FMA): the product is exact in float64."""
  p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
  return _add_round_to_odd(p, np.asarray(c, np.float64)).astype(np.float32)


def _fma64(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  """float64 `a * b + c` rounded once (Boldo and Melquiond's emulation with rounding to odd)."""
  a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
  p = a * b
  split = np.float64(134217729.0)  # 2^27 + 1: Veltkamp splitting into 26-bit halves
  ah = split * a - (split * a - a)
  bh = split * b - (split * b - b)
  p_err = ((ah * bh - p) + ah * (b - bh) + (a - ah) * bh) + (a - ah) * (b - bh)
  hi, lo = _two_sum(c, p)
  return hi + _add_round_to_odd(lo, p_err)


def affine_points(trans: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`trans @ (x, y, 1)` in float64, rounded as the reference's BLAS `np.dot` rounds it.

  OpenBLAS's x86 FMA kernels (AVX2 and AVX-512 alike) round each row as
  `fma(t0, x, t1 * y) + t2`, kernels without FMA differently; spelling that order out with
  an exactly emulated FMA makes the mapped joints identical on every host and BLAS.
  """
  out = []
  for row in trans[:2]:
    out.append(_fma64(row[0], x, row[1] * y) + row[2])
  return out[0], out[1]


def numpy_simd_expf(x: np.ndarray) -> np.ndarray:
  """float32 exp bit-identical to NumPy's x86 SIMD `np.exp` on float32, on any host.

  Valid for results in the normal range (arguments above about -87.3; the target kernels
  use [-9, 0]); larger arguments give inf, smaller 0.
  """
  x_in = np.asarray(x, np.float32)
  nan, high, low = np.isnan(x_in), x_in >= _EXP_MAX, x_in <= _EXP_MIN
  x = np.where(nan | high | low, np.float32(0), x_in)
  q = (x * _LOG2E + _RINT_MAGIC) - _RINT_MAGIC
  y = _fma32(q, _LN2_HI, x)
  y = _fma32(q, _LN2_LO, y)
  num = _fma32(_EXP_P[5], y, _EXP_P[4])
  for coeff in _EXP_P[3::-1]:
    num = _fma32(num, y, coeff)
  den = _fma32(_fma32(_EXP_Q[2], y, _EXP_Q[1]), y, _EXP_Q[0])
  out = np.ldexp(num / den, q.astype(np.int32)).astype(np.float32)
  out = np.where(high, np.float32(np.inf), np.where(low, np.float32(0), out))
  return np.where(nan, np.float32(np.nan), out).astype(np.float32)


@functools.cache
def _kernel(sigma: float) -> np.ndarray:
  size = int(6 * sigma + 1)
  x = np.arange(size, dtype=np.float32)
  y = x[:, None]
  c = np.float32(size // 2)
  arg = -((x - c) ** 2 + (y - c) ** 2) / np.float32(2 * sigma ** 2)
  g = numpy_simd_expf(arg)
  g.flags.writeable = False
  return g


def gaussian_kernel(sigma: float) -> np.ndarray:
  """The official (6 sigma + 1)^2 float32 target kernel, peak 1 at the centre (read-only)."""
  return _kernel(float(sigma))


def generate_target(joints: np.ndarray, joints_vis: np.ndarray, image_size: tuple[int, int],
                    heatmap_size: tuple[int, int], sigma: float,
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Official `generate_target` (Gaussian), channels last.

  Args:
    joints: [K, >=2] (x, y) in input pixels.
    joints_vis: [K, >=1]; column 0 > 0 marks a labelled joint.
    image_size, heatmap_size: (w, h) of the input and of the heatmaps.
    sigma: in heatmap pixels.

  Returns:
    `(target [h, w, K] float32, target_weight [K] float32)`. A labelled joint whose window
    overlaps the map keeps weight 1 even if its centre is outside (partial Gaussian, or
    nothing when the window's end is exactly column/row 0); weight 0 when the window misses.
  """
  k = joints.shape[0]
  w, h = int(heatmap_size[0]), int(heatmap_size[1])
  stride = np.asarray(image_size, np.float64) / np.asarray(heatmap_size, np.float64)
  weight = np.asarray(joints_vis[:, 0], np.float32).copy()
  target = np.zeros((k, h, w), np.float32)
  g = gaussian_kernel(sigma)
  tmp = sigma * 3
  for j in range(k):
    # Python int(): truncation toward zero, as the official code (not floor).
    mu_x = int(joints[j, 0] / stride[0] + 0.5)
    mu_y = int(joints[j, 1] / stride[1] + 0.5)
    ul = (int(mu_x - tmp), int(mu_y - tmp))
    br = (int(mu_x + tmp + 1), int(mu_y + tmp + 1))
    if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
      weight[j] = 0
      continue
    if weight[j] > 0.5:
      gx = (max(0, -ul[0]), min(br[0], w) - ul[0])
      gy = (max(0, -ul[1]), min(br[1], h) - ul[1])
      ix = (max(0, ul[0]), min(br[0], w))
      iy = (max(0, ul[1]), min(br[1], h))
      target[j, iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
  return np.ascontiguousarray(target.transpose(1, 2, 0)), weight


@dataclasses.dataclass(frozen=True, eq=False)
class Crop:
  """The geometric part of a sample (before normalization and targets).

  Attributes:
    image: [H, W, 3] uint8 warped RGB crop.
    trans: [2, 3] float64 image -> crop matrix.
    joints: [K, 3] float64, labelled joints in crop pixels; others keep their (flipped:
      zeroed) record coordinates, as the official code.
    joints_vis: [K, 3] float64 (flipped with the joints).
    center: (2,) final centre (record dtype); scale: (2,) float64 final scale.
    rotation: degrees; flipped, half_body: what happened.
  """

  image: np.ndarray
  trans: np.ndarray
  joints: np.ndarray
  joints_vis: np.ndarray
  center: np.ndarray
  scale: np.ndarray
  rotation: float
  flipped: bool
  half_body: bool


def _check_inputs(image: np.ndarray, record: PersonRecord, draws: Draws, spec: SampleSpec) -> None:
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
    raise ValueError(f'{record.image_path}: image must be a non-empty [H, W, 3] uint8 array, '
                     f'got {image.shape} {image.dtype}')
  k = spec.num_joints
  if record.joints.shape != (k, 3) or record.joints_vis.shape != (k, 3):
    raise ValueError(f'record of {record.image_path}: joints must be [{spec.num_joints}, 3], got '
                     f'{record.joints.shape} / {record.joints_vis.shape}')
  if draws.z_s is None or draws.u_r is None:
    raise ValueError('draws: z_s and u_r are always drawn (see sample_draws)')


def augment(image_rgb_uint8: np.ndarray, record: PersonRecord, draws: Draws,
            spec: SampleSpec) -> Crop:
  """Half body, scale, rotation, flip and the affine crop of one person (official order).

  Args:
    image_rgb_uint8: [H, W, 3] uint8 RGB, the record's image.
    record: the person.
    draws: from :func:`sample_draws` (or the official draws, for parity).
    spec: the sample parameters.

  Returns:
    The :class:`Crop`.
  """
  _check_inputs(image_rgb_uint8, record, draws, spec)
  joints = np.array(record.joints, np.float64)
  joints_vis = np.array(record.joints_vis, np.float64)
  center = np.array(record.center)
  scale = np.array(record.scale)
  half_body = False
  if (record.num_visible > spec.num_joints_half_body and draws.u_hb is not None
      and draws.u_hb < spec.prob_half_body):
    if draws.z_hb is None:
      raise ValueError('draws: a half-body crop needs z_hb')
    box = half_body_box(joints, joints_vis, draws.z_hb, spec)
    if box is not None:
      center, scale = box
      half_body = True
  sf, rf = spec.scale_factor, spec.rot_factor
  factor = np.clip(draws.z_s * sf + 1, 1 - sf, 1 + sf)
  # The official float32 scale times a float64 NumPy scalar is float64 (NumPy 2 promotion).
  scale = scale.astype(np.float64) * np.float64(factor)
  rotation = 0.0
  if draws.u_r <= spec.rot_prob:
    if draws.z_r is None:
      raise ValueError('draws: a rotation (u_r <= rot_prob) needs z_r')
    rotation = float(np.clip(draws.z_r * rf, -rf * 2, rf * 2))
  flipped = bool(spec.flip and draws.u_f is not None and draws.u_f <= spec.flip_prob)
  image = image_rgb_uint8
  if flipped:
    width = image.shape[1]
    image = image[:, ::-1]
    joints[:, 0] = width - joints[:, 0] - 1
    order = list(spec.flip_index)
    joints, joints_vis = joints[order], joints_vis[order]
    joints = joints * joints_vis
    t = center.dtype.type
    center[0] = t(width) - center[0] - t(1)
  if spec.codec == 'udp':
    trans = udp.udp_warp_matrix(center, scale, rotation, spec.image_size)
  else:
    trans = get_affine_transform(center, scale, rotation, spec.image_size)
  crop = cv2.warpAffine(np.ascontiguousarray(image), trans, tuple(int(v) for v in spec.image_size),
                        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  vis = joints_vis[:, 0] > 0
  joints[vis, 0], joints[vis, 1] = affine_points(trans, joints[vis, 0], joints[vis, 1])
  return Crop(image=crop, trans=trans, joints=joints, joints_vis=joints_vis, center=center,
              scale=scale, rotation=rotation, flipped=flipped, half_body=half_body)


def make_train_sample(image_rgb_uint8: np.ndarray, record: PersonRecord, draws: Draws,
                      spec: SampleSpec) -> dict[str, Any]:
  """One top-down training example (NHWC), equal to the official `__getitem__`.

  Args:
    image_rgb_uint8: [H, W, 3] uint8 RGB (`records.load_image(record)`).
    record: the person.
    draws: from :func:`sample_draws`.
    spec: the sample parameters.

  Returns:
    'image' [H, W, 3] float32 (ImageNet-normalized), 'target' [h, w, K] float32,
    'target_weight' [K] float32, and for inspection 'joints' [K, 3] float64 (crop pixels),
    'joints_vis' [K, 3], 'trans' [2, 3] float64, 'center' (2,) and 'scale' (2,) float64,
    'rotation' float64, 'flipped' and 'half_body' bool.
  """
  c = augment(image_rgb_uint8, record, draws, spec)
  if spec.codec == 'official':
    target, weight = generate_target(c.joints, c.joints_vis, spec.image_size, spec.heatmap_size,
                                     spec.sigma)
  elif spec.codec == 'dark':
    stride = np.asarray(spec.image_size, np.float64) / np.asarray(spec.heatmap_size, np.float64)
    target, weight = dark.encode_unbiased(c.joints[:, :2], c.joints_vis[:, 0], spec.heatmap_size,
                                          spec.sigma, stride)
  else:
    target, weight = udp.encode_udp(c.joints[:, :2], c.joints_vis[:, 0], spec.image_size,
                                    spec.heatmap_size, spec.sigma)
  return {
      'image': data_transforms.normalize_flip(c.image, False),
      'target': target,
      'target_weight': weight,
      'joints': c.joints,
      'joints_vis': c.joints_vis,
      'trans': c.trans,
      'center': c.center.astype(np.float64),
      'scale': c.scale,
      'rotation': np.float64(c.rotation),
      'flipped': np.bool_(c.flipped),
      'half_body': np.bool_(c.half_body),
  }


def split_files(config: Any, split: str) -> tuple[pathlib.Path, pathlib.Path]:
  """MPII annotation file and image folder of a split (official `annot/{split}.json`, `images/`)."""
  d = config.dataset
  is_train = split == d.train_split
  ann = d.train_annotations if is_train else d.test_annotations
  img = d.train_images if is_train else d.test_images
  root = pathlib.Path(d.root)
  return (pathlib.Path(ann) if ann else root / 'annot' / f'{split}.json',
          pathlib.Path(img) if img else root / 'images')


class PersonSamples:
  """The shared grain pipeline's sample builder for top-down training: one person per record.

  Only what the train step reads leaves the worker ('image', 'target', 'target_weight').
  """

  KEYS = ('image', 'target', 'target_weight')

  def __init__(self, people: Sequence[PersonRecord], spec: SampleSpec):
    if not people:
      raise ValueError('no person with labelled joints in the training annotations')
    self.people = list(people)
    self.spec = spec

  @classmethod
  def from_config(cls, config: Any, split: str, source: Any = None) -> PersonSamples:
    """COCO persons from `source` (a `KeypointSource`, default: the split's), or MPII records."""
    spec = SampleSpec.from_config(config.data, keypoints.spec_from_config(config.dataset.keypoints))
    if config.dataset.name == 'mpii':
      ann, images = split_files(config, split)
      return cls(mpii_records(ann, images, spec.num_joints), spec)
    if source is None:
      source = coco.source_from_config(config, train=False, split=split)
    return cls(coco_records(source, spec.aspect_ratio, spec.box_padding), spec)

  def __len__(self) -> int:
    return len(self.people)

  def __call__(self, record: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], int]:
    person = self.people[record]
    image = load_image(person)
    draws = sample_draws(rng, person.num_visible, self.spec)
    sample = make_train_sample(image, person, draws, self.spec)
    return {k: sample[k] for k in self.KEYS}, person.image_id
