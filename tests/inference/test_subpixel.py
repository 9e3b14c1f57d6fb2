"""The bottom-up 'dark' codec: sub-pixel targets and DARK's step at the decoded joints.

Float32 `exp` takes processor-specific SIMD paths (an ulp apart between AVX-512 and AVX2),
so values downstream of it are compared with tolerances derived below, never bitwise.
"""

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import subpixel
from higherhrnet_jax.config import ConfigError
from higherhrnet_jax.data import targets

_FRACS = (0.05, 0.3, 0.45, 0.7, 0.95)


def _people(x0=8.0, y0=10.0, k=17):
  """25 people, joint 0 of each at a different fractional position, the rest invisible."""
  joints = np.zeros((25, k, 3))
  for n, (a, b) in enumerate((a, b) for a in _FRACS for b in _FRACS[::-1]):
    joints[n, 0] = (x0 + 9 * (n % 5) + a, y0 + 9 * (n // 5) + b, 2)
  return joints


def _official_decode(hm, x, y):
  """Official `adjust`: the integer peak's centre plus a quarter pixel towards the larger
  neighbour."""
  dx = 0.25 * np.sign(hm[y, x + 1] - hm[y, x - 1])
  dy = 0.25 * np.sign(hm[y + 1, x] - hm[y - 1, x])
  return x + 0.5 + dx, y + 0.5 + dy


def test_subpixel_targets_decode_back_to_the_joints_official_targets_cannot():
  joints = _people()
  sub = targets.subpixel_heatmaps(joints, 64, 2.0)
  off = targets.heatmaps(joints, 64, 2.0)
  poses = np.zeros((25, 17, 3), np.float32)
  official = np.zeros((25, 2))
  for n, (x, y) in enumerate(joints[:, 0, :2]):
    # Integer peaks as NMS finds them, then grouping's official quarter step.
    iy, ix = np.unravel_index(np.argmax(np.where(_near(x, y), sub[..., 0], 0)), (64, 64))
    poses[n, 0] = (ix + 0.5 + 0.25, iy + 0.5 - 0.25, 1.0)
    oy, ox = np.unravel_index(np.argmax(np.where(_near(x, y), off[..., 0], 0)), (64, 64))
    official[n] = _official_decode(off[..., 0], ox, oy)
  decoded = subpixel.dark_poses(poses, sub, blur_kernel=1)[:, 0, :2]
  # The log of a sampled Gaussian is exactly quadratic, so the Newton step lands on the
  # joint up to float32 rounding of the map (relative 6e-8, i.e. 6e-8 in the log) divided
  # by the log's curvature 1 / sigma^2 = 1/4: a few 1e-7 px; 1e-5 leaves a margin.
  np.testing.assert_allclose(decoded, joints[:, 0, :2], atol=1e-5)
  assert np.abs(official - joints[:, 0, :2]).max() > 0.2  # truncation loses up to 1/2 px


def _near(x, y, r=3):
  ys, xs = np.mgrid[0:64, 0:64]
  return (np.abs(xs + 0.5 - x) <= r) & (np.abs(ys + 0.5 - y) <= r)


def test_subpixel_targets_draw_the_joints_the_official_generator_draws():
  rng = np.random.default_rng(0)
  joints = np.concatenate([rng.uniform(-8, 72, (6, 17, 2)), rng.integers(0, 3, (6, 17, 1))],
                          -1)
  sub = targets.subpixel_heatmaps(joints, 64, 2.0)
  off = targets.heatmaps(joints, 64, 2.0)
  assert sub.dtype == np.float32 and sub.shape == off.shape
  np.testing.assert_array_equal(sub.max(axis=(0, 1)) > 0, off.max(axis=(0, 1)) > 0)
  assert np.all((sub >= 0) & (sub <= 1))
  # Overlapping people of one joint type: the maximum of their Gaussians.
  two = np.zeros((2, 17, 3))
  two[0, 3], two[1, 3] = (20.2, 30.7, 2), (23.9, 31.1, 1)
  both = targets.subpixel_heatmaps(two, 64, 2.0)[..., 3]
  each = [targets.subpixel_heatmaps(two[i:i + 1], 64, 2.0)[..., 3] for i in range(2)]
  np.testing.assert_array_equal(both, np.maximum(*each))


def _cv2_dark_reference(hm, x, y, j, ksize):
  """mmpose's `gaussian_blur` + `refine_keypoints_dark` in float64 with OpenCV."""
  b = (ksize - 1) // 2
  padded = np.zeros((hm.shape[0] + 2 * b, hm.shape[1] + 2 * b))
  padded[b:hm.shape[0] + b, b:hm.shape[1] + b] = hm[..., j]
  m = cv2.GaussianBlur(padded, (ksize, ksize), 0)[b:hm.shape[0] + b, b:hm.shape[1] + b]
  m = np.log(np.maximum(m * (hm[..., j].max() / m.max()), 1e-10))
  g = np.array([0.5 * (m[y, x + 1] - m[y, x - 1]), 0.5 * (m[y + 1, x] - m[y - 1, x])])
  dxx = 0.25 * (m[y, x + 2] - 2 * m[y, x] + m[y, x - 2])
  dyy = 0.25 * (m[y + 2, x] - 2 * m[y, x] + m[y - 2, x])
  dxy = 0.25 * (m[y + 1, x + 1] - m[y - 1, x + 1] - m[y + 1, x - 1] + m[y - 1, x - 1])
  return -np.linalg.solve(np.array([[dxx, dxy], [dxy, dyy]]), g)


@pytest.mark.parametrize('ksize', [3, 5, 11])
def test_dark_offsets_match_mmpose_on_noisy_blobs(ksize):
  rng = np.random.default_rng(ksize)
  h, w, k = 40, 36, 5
  ys, xs = np.mgrid[0:h, 0:w]
  hm = np.zeros((h, w, k), np.float32)
  for j in range(k):  # two blobs of unequal size and height plus noise: not a Gaussian
    for _ in range(2):
      cx, cy, s, a = rng.uniform(6, w - 6), rng.uniform(6, h - 6), rng.uniform(1.5, 3), rng.uniform(.3, 1)
      hm[..., j] += a * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s))
  hm += 0.02 * rng.standard_normal(hm.shape).astype(np.float32)
  px, py, pj, want = [], [], [], []
  for j in range(k):
    iy, ix = np.unravel_index(np.argmax(hm[..., j]), (h, w))
    for x, y in ((ix, iy), (ix + 1, iy), (ix, iy - 1)):  # peaks and their neighbours
      if 2 <= x < w - 2 and 2 <= y < h - 2:
        px.append(x), py.append(y), pj.append(j)
        want.append(_cv2_dark_reference(hm, x, y, j, ksize))
  got = subpixel.dark_offsets(hm, np.array(px), np.array(py), np.array(pj), ksize)
  want = np.array(want)
  # Both sides in float64 from the same float32 maps; only summation order differs (1e-12
  # relative), amplified by the Hessian's inverse: 1e-8 px is ample. Steps longer than half
  # a pixel are clipped by design.
  np.testing.assert_allclose(got, np.clip(want, -0.5, 0.5), atol=1e-8)
  assert np.abs(want).max() > 0.5 and np.abs(got).max() == 0.5  # the clip was exercised
  assert np.abs(got).min() < 0.5
  # Maps left on the device: the same windows gathered there, the same float64 arithmetic.
  np.testing.assert_array_equal(
      subpixel.dark_offsets(jnp.asarray(hm), np.array(px), np.array(py), np.array(pj), ksize), got)


def test_dark_offsets_zero_at_borders_and_on_flat_maps():
  hm = np.zeros((12, 10, 2), np.float32)
  hm[..., 0] = np.exp(-((np.mgrid[0:12, 0:10][1] - 4.3) ** 2 +
                        (np.mgrid[0:12, 0:10][0] - 5.8) ** 2) / 8)
  x = np.array([0, 1, 8, 9, 4, 4, 4])
  y = np.array([5, 5, 5, 5, 1, 10, 6])
  j = np.array([0, 0, 0, 0, 0, 0, 1])  # the last: a flat map, singular Hessian
  np.testing.assert_array_equal(subpixel.dark_offsets(hm, x, y, j, 3), 0)
  assert np.abs(subpixel.dark_offsets(hm, [4], [6], [0], 3)).max() > 0.1
  assert subpixel.dark_offsets(hm, [], [], [], 3).shape == (0, 2)


def test_dark_poses_replaces_the_quarter_step_and_keeps_missing_joints():
  hm = np.zeros((20, 20, 2), np.float32)
  ys, xs = np.mgrid[0:20, 0:20]
  hm[..., 0] = np.exp(-((xs - 9.7) ** 2 + (ys - 8.2) ** 2) / 8)  # pixel (10, 8), centre +0.5
  poses = np.zeros((1, 2, 4), np.float32)
  poses[0, 0] = (10 + 0.5 - 0.25, 8 + 0.5 + 0.25, 0.9, 1.5)
  out = subpixel.dark_poses(poses, hm, blur_kernel=1)
  np.testing.assert_allclose(out[0, 0, :2], (10.2, 8.7), atol=1e-5)
  np.testing.assert_array_equal(out[0, 0, 2:], poses[0, 0, 2:])
  np.testing.assert_array_equal(out[0, 1], 0)


@pytest.mark.parametrize('field,value,match', [('data.codec', 'udp', 'data.codec'),
                                               ('test.dark_blur_kernel', 4, 'dark_blur_kernel')])
def test_config_refuses_unknown_codec_and_even_blur(field, value, match):
  c = config_lib.base_config()
  group, name = field.split('.')
  c[group][name] = value
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(c)
