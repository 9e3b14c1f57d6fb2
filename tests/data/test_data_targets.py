"""Target generators vs the official `HeatmapGenerator` / `JointsGenerator` (`targets.npz`).

Tolerances: the float64 Gaussian kernel within 1 ulp (numpy's `exp` takes processor-specific
SIMD paths, 1 ulp apart on 16/225 elements between AVX-512 and AVX2); everything stored as
float32 or integer bitwise: a 1-ulp float64 difference changes the float32 rounding only at
an exact tie (about 2^-29 per element), and joint indices are integer arithmetic.
"""

import numpy as np
import pytest

from numerics import assert_within_ulps
from higherhrnet_jax.data import targets


@pytest.fixture(scope='module')
def fx(fixtures_dir):
  return np.load(fixtures_dir / 'targets.npz')


def test_kernel_sigma2_within_one_ulp(fx):
  assert_within_ulps(targets.gaussian_kernel(2.0), fx['gaussian_sigma2'], 1)
  # The float32 kernel the targets are drawn with is exact (see the module docstring).
  np.testing.assert_array_equal(targets.gaussian_kernel(2.0).astype(np.float32),
                                fx['gaussian_sigma2'].astype(np.float32))


@pytest.mark.parametrize('res', [128, 256])
def test_heatmaps_bitwise(fx, res):
  hm = targets.heatmaps(fx['joints'], res, 2.0)
  assert hm.shape == (res, res, 17) and hm.dtype == np.float32
  np.testing.assert_array_equal(hm.transpose(2, 0, 1), fx[f'heatmaps_{res}'])


def test_heatmaps_non_integer_sigma_bitwise(fx):
  hm = targets.heatmaps(fx['joints_half'], 64, 2.5)
  np.testing.assert_array_equal(hm.transpose(2, 0, 1), fx['heatmaps_64_sigma2.5'])


@pytest.mark.parametrize('res', [128, 256])
def test_joint_indices_bitwise(fx, res):
  j = targets.joint_indices(fx['joints'], res, 30, tag_per_joint=True)
  assert j.shape == (30, 17, 2) and j.dtype == np.int32
  np.testing.assert_array_equal(j, fx[f'tag_joints_{res}'].astype(np.int32))
  np.testing.assert_array_equal(j.astype(np.float64), fx[f'tag_joints_{res}'])


def test_joint_indices_without_tag_per_joint_bitwise(fx):
  j = targets.joint_indices(fx['joints_half'], 64, 30, tag_per_joint=False)
  np.testing.assert_array_equal(j, fx['tag_joints_64_no_tag_per_joint'].astype(np.int32))


def test_scale_aware_sigma_is_per_person_max(fx):
  """Per-person sigmas: the max over people of each person drawn alone with its sigma.

  The single-person scalar-sigma maps are themselves checked bitwise above (sigma 2, 2.5).
  """
  joints = fx['joints_half'][:4]
  sigmas = np.array([2.0, 2.5, 2.0, 3.0])
  hm = targets.heatmaps(joints, 64, sigmas)
  expected = np.max([targets.heatmaps(joints[i:i + 1], 64, s) for i, s in enumerate(sigmas)],
                    axis=0)
  np.testing.assert_array_equal(hm, expected)


def test_scale_aware_window_matches_official_formula():
  """One joint, sigma 1.7: window start round(x - 3s - 1), kernel centre 3s + 1 (official)."""
  s, x, y = 1.7, 20, 13
  joints = np.array([[[x + 0.6, y + 0.2, 2.0]]])
  hm = targets.heatmaps(joints, 48, np.array([s]))[:, :, 0]
  ul_x, ul_y = int(np.round(x - 3 * s - 1)), int(np.round(y - 3 * s - 1))
  br_x, br_y = int(np.round(x + 3 * s + 2)), int(np.round(y + 3 * s + 2))
  size = 6 * s + 3
  g = np.arange(0, size, 1, float)
  c = 3 * s + 1
  ker = np.exp(-((g[None, :] - c) ** 2 + (g[:, None] - c) ** 2) / (2 * s * s))
  expected = np.zeros((48, 48), np.float32)
  expected[ul_y:br_y, ul_x:br_x] = ker[:br_y - ul_y, :br_x - ul_x]
  np.testing.assert_array_equal(hm, expected)


def test_empty_and_invisible():
  hm = targets.heatmaps(np.zeros((0, 17, 3)), 32, 2.0)
  assert hm.shape == (32, 32, 17) and not hm.any()
  j = targets.joint_indices(np.zeros((0, 17, 3)), 32, 30)
  assert j.shape == (30, 17, 2) and not j.any()
  invisible = np.full((2, 17, 3), 5.0)
  invisible[..., 2] = 0
  assert not targets.heatmaps(invisible, 32, 2.0).any()
  assert not targets.joint_indices(invisible, 32, 30).any()


def test_more_people_than_rows_keeps_tagged_people_first():
  joints = np.zeros((5, 3, 3))
  joints[[1, 3, 4], 0] = [[1, 2, 2], [3, 4, 2], [5, 6, 2]]  # people 0 and 2 have no joints
  j = targets.joint_indices(joints, 8, max_num_people=2)
  assert j.shape == (2, 3, 2)
  np.testing.assert_array_equal(j[:, 0], [[2 * 8 + 1, 1], [4 * 8 + 3, 1]])
  hm = targets.heatmaps(joints, 8, 2.0)
  assert hm[6, 5, 0] == 1.0  # heatmaps still show every person


def test_sigma_column_selection():
  j = np.zeros((2, 3, 4))
  j[:, :, 3] = [[1.5], [2.5]]
  assert targets.person_sigmas(j, 2.0, False) == 2.0
  np.testing.assert_array_equal(targets.person_sigmas(j, 2.0, True), [1.5, 2.5])
  with pytest.raises(ValueError, match='4th'):
    targets.person_sigmas(j[..., :3], 2.0, True)
