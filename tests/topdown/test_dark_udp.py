"""DARK and UDP (top-down extras): properties that fail when a formula is wrong.

Float32 `exp`/`log` in NumPy and XLA take different code paths on AVX-512 and AVX2-only CPUs
(results differ by an ulp), so everything downstream of them is compared with tolerances;
only pure permutations (flips) are compared bitwise.
"""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax.topdown import dark
from higherhrnet_jax.topdown import udp

COCO_FLIP_INDEX = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
_FRACS = (0.05, 0.3, 0.45, 0.7, 0.95)


def _subpixel_points(x0=20., y0=30.):
  """25 positions covering fractional offsets where the quarter rule errs by 0.05..0.2."""
  return np.array([[x0 + 2 * i + a, y0 + 2 * j + b]
                   for i, a in enumerate(_FRACS) for j, b in enumerate(_FRACS[::-1])])


def _quarter_offset(hm_hwk):
  """Official decoding (README 8.4 steps 1-2): argmax, then +-0.25 toward the larger neighbour."""
  h, w, k = hm_hwk.shape
  out = np.zeros((k, 2))
  for j in range(k):
    m = hm_hwk[..., j]
    idx = int(np.argmax(m.reshape(-1)))
    x, y = float(idx % w), float(idx // w)
    px, py = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    if 1 < px < w - 1 and 1 < py < h - 1:
      x += 0.25 * np.sign(m[py, px + 1] - m[py, px - 1])
      y += 0.25 * np.sign(m[py + 1, px] - m[py - 1, px])
    out[j] = x, y
  return out


def _dark_decode(hm_hwk, blur_kernel=11):
  coords, _ = dark.heatmap_maximum(hm_hwk[None])
  return np.asarray(dark.refine_dark(hm_hwk[None], coords, blur_kernel), np.float64)[0]


def _official_target(mu_xy, heatmap_wh, sigma):
  """README 7.3 target for joints already in heatmap pixels (centre int(x + 0.5))."""
  w, h = heatmap_wh
  out = np.zeros((h, w, len(mu_xy)), np.float32)
  ys, xs = np.mgrid[0:h, 0:w]
  for k, (x, y) in enumerate(mu_xy):
    cx, cy = int(x + 0.5), int(y + 0.5)
    win = (np.abs(xs - cx) <= 3 * sigma) & (np.abs(ys - cy) <= 3 * sigma)
    g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
    out[..., k] = np.where(win, g, 0)
  return out


def _log_quadratic_vertex(m_hw):
  """Least-squares quadratic in (x, y) through log(m) on the 5x5 patch at the argmax; its max."""
  iy, ix = np.unravel_index(np.argmax(m_hw), m_hw.shape)
  dy, dx = np.mgrid[-2:3, -2:3]
  v = np.log(m_hw[iy + dy, ix + dx].astype(np.float64)).ravel()
  x, y = dx.ravel().astype(np.float64), dy.ravel().astype(np.float64)
  a = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=1)
  c = np.linalg.lstsq(a, v, rcond=None)[0]
  hess = np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]])
  return np.array([ix, iy]) + np.linalg.solve(hess, -c[1:3])


# ---------------------------------------------------------------------------------------- DARK

@pytest.mark.parametrize('sigma', [2, 3])
@pytest.mark.parametrize('noise', [0.0, 0.01])
def test_dark_recovers_subpixel_peak_where_quarter_offset_cannot(sigma, noise):
  pts = _subpixel_points()
  target, _ = dark.encode_unbiased(pts, np.ones(len(pts)), (48, 64), sigma, stride=1.0)
  rng = np.random.default_rng(sigma)
  hm = target + np.float32(noise) * rng.standard_normal(target.shape).astype(np.float32)
  dark_err = np.abs(_dark_decode(hm) - pts).max()
  quarter_err = np.abs(_quarter_offset(hm) - pts).max()
  assert dark_err < 0.05, dark_err
  assert quarter_err > 0.1, quarter_err
  if noise == 0:
    assert dark_err < 2e-3, dark_err  # blur of a sampled Gaussian is Gaussian up to truncation


def test_refine_dark_without_blur_is_exact_on_gaussians():
  pts = _subpixel_points()
  target, _ = dark.encode_unbiased(pts, np.ones(len(pts)), (48, 64), 2, stride=1.0)
  # Tolerance: float32 log (ulp-level, CPU dependent) through a Newton step of size 1/|H|.
  np.testing.assert_allclose(_dark_decode(target, blur_kernel=1), pts, atol=2e-5)


def _mmpose_dark_reference(hm_hwk, coords, ksize):
  """mmpose `gaussian_blur` + `refine_keypoints_dark` in float64 with cv2, for parity."""
  h, w, k = hm_hwk.shape
  b = (ksize - 1) // 2
  out = np.array(coords, np.float64)
  for j in range(k):
    dr = np.zeros((h + 2 * b, w + 2 * b))
    dr[b:-b, b:-b] = hm_hwk[..., j]
    m = cv2.GaussianBlur(dr, (ksize, ksize), 0)[b:-b, b:-b]
    m = np.log(np.maximum(m * (hm_hwk[..., j].max() / m.max()), 1e-10))
    x, y = int(out[j, 0]), int(out[j, 1])
    if 1 < x < w - 2 and 1 < y < h - 2:
      g = np.array([0.5 * (m[y, x + 1] - m[y, x - 1]), 0.5 * (m[y + 1, x] - m[y - 1, x])])
      dxx = 0.25 * (m[y, x + 2] - 2 * m[y, x] + m[y, x - 2])
      dyy = 0.25 * (m[y + 2, x] - 2 * m[y, x] + m[y - 2, x])
      dxy = 0.25 * (m[y + 1, x + 1] - m[y - 1, x + 1] - m[y + 1, x - 1] + m[y - 1, x - 1])
      hess = np.array([[dxx, dxy], [dxy, dyy]])
      if np.linalg.det(hess) != 0:
        out[j] -= np.linalg.solve(hess, g)
  return out


@pytest.mark.parametrize('ksize', [11, 17, 5])
def test_refine_dark_matches_mmpose_with_cv2_blur(ksize):
  rng = np.random.default_rng(7)
  h, w, k = 64, 48, 6
  ys, xs = np.mgrid[0:h, 0:w]
  hm = np.zeros((h, w, k), np.float32)
  for j in range(k):  # two blobs of unequal size and height plus noise: not a Gaussian
    for _ in range(2):
      cx, cy = rng.uniform(6, w - 6), rng.uniform(6, h - 6)
      s, a = rng.uniform(1.5, 3), rng.uniform(.3, 1)
      hm[..., j] += a * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s))
  hm += 0.02 * rng.standard_normal(hm.shape).astype(np.float32)
  coords, _ = dark.heatmap_maximum(hm[None])
  ours = np.asarray(dark.refine_dark(hm[None], coords, ksize))[0]
  ref = _mmpose_dark_reference(hm, np.asarray(coords)[0], ksize)
  # Tolerance: float32 blur/log here versus float64 cv2 in the reference.
  np.testing.assert_allclose(ours, ref, atol=1e-3)
  assert np.abs(ours - np.asarray(coords)[0]).max() > 0.05  # the refinement did move points


def test_gaussian_blur_matches_cv2():
  rng = np.random.default_rng(3)
  hm = rng.uniform(-0.1, 1, (2, 16, 12, 3)).astype(np.float32)
  ours = np.asarray(dark.gaussian_blur(hm, 11))
  for n in range(2):
    for j in range(3):
      dr = np.zeros((26, 22))
      dr[5:-5, 5:-5] = hm[n, ..., j]
      ref = cv2.GaussianBlur(dr, (11, 11), 0)[5:-5, 5:-5]
      ref *= hm[n, ..., j].max() / ref.max()
      np.testing.assert_allclose(ours[n, ..., j], ref, atol=1e-5)  # float32 sums vs float64


def test_refine_dark_guards_border_maxima_and_singular_hessians():
  h, w = 16, 12
  cols = [0, 1, w - 2, w - 1, 5]
  pts = np.array([[x + 0.3, 7.2] for x in cols[:4]] + [[5.3, 0.2]])  # last: top border row
  target, _ = dark.encode_unbiased(pts, np.ones(len(pts)), (w, h), 2, stride=1.0)
  flat = np.stack([np.zeros((h, w)), np.full((h, w), -0.5)], -1).astype(np.float32)
  hm = np.concatenate([target, flat], axis=-1)  # + maps whose clipped log is constant
  coords = jnp.array([[[0, 7], [1, 7], [w - 2, 7], [w - 1, 7], [5, 0], [6, 8], [6, 8]]],
                     jnp.float32)
  out = jax.jit(dark.refine_dark, static_argnames='blur_kernel')(hm[None], coords, blur_kernel=11)
  assert np.all(np.isfinite(np.asarray(out)))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(coords))
  interior = np.asarray(dark.refine_dark(hm[None], coords.at[0, 1].set(jnp.array([5., 7.]))))
  assert not np.array_equal(interior[0, 1], [5., 7.])  # the guard, not a no-op, kept the rest


def test_unbiased_target_peaks_at_subpixel_joint_official_target_does_not():
  stride = 4.
  pts_hm = _subpixel_points(10., 12.)
  target, weight = dark.encode_unbiased(pts_hm * stride, np.ones(len(pts_hm)), (48, 64), 2, stride)
  assert target.shape == (64, 48, len(pts_hm)) and target.dtype == np.float32
  np.testing.assert_array_equal(weight, 1)
  fits = np.array([_log_quadratic_vertex(target[..., k]) for k in range(len(pts_hm))])
  # Tolerance: float32 rounding of exp (ulp-level, CPU dependent) in a log-space fit.
  np.testing.assert_allclose(fits, pts_hm, atol=1e-3)
  official = _official_target(pts_hm, (48, 64), 2)
  off_fits = np.array([_log_quadratic_vertex(official[..., k]) for k in range(len(pts_hm))])
  np.testing.assert_allclose(off_fits, np.trunc(pts_hm + 0.5), atol=1e-3)
  assert np.abs(off_fits - pts_hm).max() > 0.2


def test_unbiased_target_weights():
  joints = np.array([[40., 40.], [40., 40.], [-60., 40.], [400., 40.], [-45., 40.]])
  target, weight = dark.encode_unbiased(joints, np.array([1, 0, 1, 1, 1]), (48, 64), 2, 4)
  # invisible; window misses on the left and the right; window [-17.25, -4.25) misses too
  np.testing.assert_array_equal(weight, [1, 0, 0, 0, 0])
  assert target[..., 0].max() == 1 and not target[..., 1:].any()
  _, w_edge = dark.encode_unbiased(np.array([[-20., 8.]]), np.ones(1), (48, 64), 2, 4)
  assert w_edge[0] == 1  # mu = -5: the window [-11, 2) still overlaps the map


# ----------------------------------------------------------------------------------------- UDP

def test_udp_warp_maps_crop_corners_to_box_edges():
  center, scale, size = np.array([320.5, 211.]), np.array([1.2, 1.6]), (192, 256)
  box = scale * 200
  inv = udp.udp_warp_matrix(center, scale, 0., size, inv=True)
  np.testing.assert_allclose(inv @ [0, 0, 1], center - box / 2, atol=1e-9)
  np.testing.assert_allclose(inv @ [191, 255, 1], center + box / 2, atol=1e-9)
  fwd = udp.udp_warp_matrix(center, scale, 0., size)
  np.testing.assert_allclose(fwd @ [*(center + box / 2), 1], [191, 255], atol=1e-9)
  # Boxes in pixels (mmpose 1.x) are the same with pixel_std=1.
  np.testing.assert_allclose(udp.udp_warp_matrix(center, box, 0., size, pixel_std=1.), fwd)


@pytest.mark.parametrize('rot', [0., 30., -73.])
def test_udp_warp_inverse_and_rotation_direction(rot):
  center, scale, size = np.array([100., 80.]), np.array([0.9, 1.2]), (192, 256)
  fwd = udp.udp_warp_matrix(center, scale, rot, size)
  inv = udp.udp_warp_matrix(center, scale, rot, size, inv=True)
  np.testing.assert_allclose(fwd[:, :2] @ inv[:, :2], np.eye(2), atol=1e-12)
  np.testing.assert_allclose(fwd @ [*(inv @ [13.25, 200.5, 1]), 1], [13.25, 200.5], atol=1e-9)
  np.testing.assert_allclose(fwd @ [*center, 1], [95.5, 127.5], atol=1e-9)
  # Same turn as the official matrix (README 8.2): k R (p - c) + (W/2, H/2) up to the zoom.
  a = np.deg2rad(rot)
  r_official = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
  np.testing.assert_allclose(fwd[:, :2] / ((np.array(size) - 1) / (scale * 200))[:, None],
                             r_official, atol=1e-12)
  # mmpose's get_udp_warp_matrix (pixels, its own sign of rot) equals ours at -rot.
  sx, sy = (np.array(size) - 1) / (scale * 200)
  mm = np.array([[np.cos(-a) * sx, -np.sin(-a) * sx], [np.sin(-a) * sy, np.cos(-a) * sy]])
  np.testing.assert_allclose(fwd[:, :2], mm, atol=1e-12)


@pytest.mark.parametrize('rot', [0., 25.])
def test_udp_encode_decode_round_trip(rot):
  in_wh, hm_wh = (192, 256), (48, 64)
  center, scale = np.array([250.3, 190.7]), np.array([0.8, 1.0666])
  rng = np.random.default_rng(11)
  q_true = rng.uniform([12, 12], [180, 244], (17, 2))  # input px, away from the heatmap border
  inv = udp.udp_warp_matrix(center, scale, rot, in_wh, inv=True)
  joints_img = np.c_[q_true, np.ones(17)] @ inv.T
  q = np.c_[joints_img, np.ones(17)] @ udp.udp_warp_matrix(center, scale, rot, in_wh).T
  np.testing.assert_allclose(q, q_true, atol=1e-9)
  target, weight = udp.encode_udp(q, np.ones(17), in_wh, hm_wh, sigma=2)
  assert target.shape == (64, 48, 17) and np.all(weight == 1)
  coords_hm = _dark_decode(target, blur_kernel=1)
  # Tolerance: float32 log and float32 heatmap coordinates (ulp 4e-6 at 48 px).
  np.testing.assert_allclose(udp.to_input(coords_hm, in_wh, hm_wh), q, atol=1e-4)
  img, maxvals = udp.decode_udp(target[None], center[None], scale[None], in_wh, blur_kernel=1,
                                rot=rot)
  px_per_input = scale * 200 / (np.array(in_wh) - 1)
  assert np.abs(img[0] - joints_img).max() < 1e-4 * px_per_input.max()
  assert maxvals.shape == (1, 17) and np.all(maxvals > 0.93)  # a peak pixel is within 0.5 px


def test_udp_to_image_matches_mmpose_formula():
  coords = np.array([[[3.2, 40.7], [47., 0.]]])
  center, scale = np.array([[50., 60.]]), np.array([[0.75, 1.]])
  box = scale[:, None, :] * 200
  mm = coords / [47, 63] * box + center[:, None] - box / 2
  np.testing.assert_allclose(udp.to_image(coords, center, scale, (192, 256), (48, 64)), mm,
                             atol=1e-12)


def _mirror_joints(q, width, flip_index):
  m = q[list(flip_index)].copy()
  m[:, 0] = (width - 1) - m[:, 0]
  return m


def test_udp_flip_back_is_exact_by_construction():
  # (W - 1) / (w - 1) = 4 exactly and joints on a 1/2 px grid, so the mirrored joints and
  # their heatmap positions are exact; no joint sits on a half-pixel tie of int(mu + 0.5),
  # where the 6 sigma + 1 window itself is asymmetric.
  in_wh, hm_wh = (193, 257), (49, 65)
  rng = np.random.default_rng(5)
  q = rng.integers(10 * 2, 182 * 2, (17, 2)) / 2.
  q[(q / 4) % 1 == 0.5] += 0.5
  target, _ = udp.encode_udp(q, np.ones(17), in_wh, hm_wh, 2)
  q_m = _mirror_joints(q, 193, COCO_FLIP_INDEX)
  target_m, _ = udp.encode_udp(q_m, np.ones(17), in_wh, hm_wh, 2)
  back = np.asarray(jax.jit(udp.flip_back_udp, static_argnums=1)(target_m[None], COCO_FLIP_INDEX))
  np.testing.assert_array_equal(back[0], target)
  avg = (target[None] + back) * np.float32(0.5)
  c_one, c_avg = _dark_decode(target), _dark_decode(avg[0])
  np.testing.assert_array_equal(c_avg, c_one)
  # The official one-column shift (README 8.3) would move every joint right by one column.
  # (Checked where the 13-px window stays inside the map after the shift: a window cut by
  # the left or right border is not translated, only clipped.)
  shifted = back.copy()
  shifted[:, :, 1:] = back[:, :, :-1]
  mu_x = q[:, 0] / 4
  inside = (mu_x >= 7) & (mu_x <= hm_wh[0] - 8)
  assert inside.sum() >= 10
  moved = (_dark_decode(shifted[0]) - c_one)[inside]
  np.testing.assert_allclose(moved, np.tile([1., 0.], (int(inside.sum()), 1)), atol=1e-3)


def test_udp_flip_back_generic_sizes_and_involution():
  in_wh, hm_wh = (192, 256), (48, 64)
  rng = np.random.default_rng(6)
  q = rng.uniform(15, 175, (17, 2))
  target, _ = udp.encode_udp(q, np.ones(17), in_wh, hm_wh, 2)
  q_m = _mirror_joints(q, 192, COCO_FLIP_INDEX)
  target_m, _ = udp.encode_udp(q_m, np.ones(17), in_wh, hm_wh, 2)
  back = np.asarray(udp.flip_back_udp(target_m[None], COCO_FLIP_INDEX))[0]
  np.testing.assert_allclose(back, target, atol=1e-6)  # (w-1) - mu rounds differently
  c_one, c_back = _dark_decode(target), _dark_decode(back)
  c_avg = _dark_decode((target + back) * np.float32(0.5))
  np.testing.assert_allclose(c_back, c_one, atol=1e-4)
  np.testing.assert_allclose(c_avg, c_one, atol=1e-4)
  twice = udp.flip_back_udp(udp.flip_back_udp(target_m[None], COCO_FLIP_INDEX), COCO_FLIP_INDEX)
  np.testing.assert_array_equal(np.asarray(twice)[0], target_m)


def test_encode_udp_weights_and_window():
  target, weight = udp.encode_udp(np.array([[100., 100.], [100., 100.], [-40., 5.]]),
                                  np.array([1, 0, 1]), (192, 256), (48, 64), 2)
  np.testing.assert_array_equal(weight, [1, 0, 0])
  assert not target[..., 1:].any()
  nz = np.argwhere(target[..., 0] > 0)
  assert (nz.max(0) - nz.min(0) + 1).tolist() == [13, 13]  # the 6 sigma + 1 window
