"""MPII top-down records and training samples vs the official code (`mpii_train_sample.npz`).

Tolerances as in `test_topdown_samples.py`: databases, centres, scales, joints, targets and
weights bitwise (float64 / float32 arithmetic replayed exactly); matrices <= 1e-9 (the
OpenCV build's 6x6 solve); warped uint8 crops exact with OpenCV 5.0.x, else at most 0.1%
of the values one grey level off (other OpenCV 5 releases round a few interpolations
differently).
"""

import json

import numpy as np
import pytest

from higherhrnet_jax import keypoints
from higherhrnet_jax.data.annotations import AnnotationError
from higherhrnet_jax.topdown import records as R
from higherhrnet_jax.topdown import samples as S

from numerics import FIXTURE_OPENCV
from test_topdown_samples import (assert_normalized, assert_warp_matches,
                                  fixture_draws)

MPII_DATA = dict(input_size=(256, 256), sigma=2.0, scale_factor=0.25, rot_factor=30.0,
                 prob_half_body=-1.0)


@pytest.fixture(scope='module')
def ms(topdown_fixtures_dir):
  return dict(np.load(topdown_fixtures_dir / 'mpii_train_sample.npz'))


@pytest.fixture(scope='module')
def spec():
  return R.SampleSpec.from_config(MPII_DATA, keypoints.MPII)


@pytest.fixture(scope='module')
def train(topdown_fixtures_dir, coco_sample_dir):
  return R.mpii_records(topdown_fixtures_dir / 'mpii_annot' / 'train.json', coco_sample_dir)


def test_mpii_spec_matches_official(ms, spec):
  assert keypoints.MPII.num_joints == 16
  np.testing.assert_array_equal(spec.flip_pairs, ms['flip_pairs'])
  assert spec.image_size == tuple(ms['image_size'])
  assert spec.heatmap_size == tuple(ms['heatmap_size'])
  assert spec.upper_body_ids == tuple(range(7, 16))
  np.testing.assert_array_equal(S.gaussian_kernel(spec.sigma), ms['gaussian_sigma2'])


@pytest.mark.parametrize('split,n', [('train', 14), ('valid', 13)])
def test_mpii_database_matches_official(ms, topdown_fixtures_dir, coco_sample_dir, split, n):
  recs = R.mpii_records(topdown_fixtures_dir / 'mpii_annot' / f'{split}.json', coco_sample_dir)
  assert len(recs) == n
  for name in ('center', 'scale', 'joints', 'joints_vis'):
    got = np.stack([getattr(r, name) for r in recs])
    assert got.dtype == np.float64, name
    np.testing.assert_array_equal(got, ms[f'{split}_db_{name}'], err_msg=name)  # bitwise
  # Record 12 has centre x = -1: no downward shift, no padding, still made 0-based.
  if split == 'train':
    np.testing.assert_array_equal(recs[12].center, [-2.0, 121.0])
    assert recs[12].scale[0] == 1.10045 and recs[13].num_visible == 8


@pytest.mark.parametrize('k', range(8))
def test_mpii_train_sample_matches_official(ms, train, spec, k):
  p = f'sample{k}_'
  rec = train[int(ms[p + 'db_index'])]
  for name in ('center', 'scale', 'joints', 'joints_vis'):
    np.testing.assert_array_equal(getattr(rec, name), ms[p + 'db_' + name], err_msg=name)
  image = R.load_image(rec)
  assert image.shape[:2] == tuple(ms[p + 'image_hw'])
  draws = fixture_draws(ms, p, rec.num_visible, spec)
  crop = S.augment(image, rec, draws, spec)
  assert not crop.half_body and not bool(ms[p + 'half_body'])  # PROB_HALF_BODY is -1
  assert crop.flipped == bool(ms[p + 'flipped']) and crop.rotation == float(ms[p + 'rotation'])
  assert crop.center.dtype == np.float64
  np.testing.assert_array_equal(crop.center, ms[p + 'center'])
  np.testing.assert_array_equal(crop.scale, ms[p + 'scale'])
  np.testing.assert_allclose(crop.trans, ms[p + 'trans'], rtol=0, atol=1e-9)
  assert_warp_matches(crop.image, ms[p + 'input_uint8'])
  np.testing.assert_array_equal(crop.joints, ms[p + 'joints'])
  np.testing.assert_array_equal(crop.joints_vis, ms[p + 'joints_vis'])
  out = S.make_train_sample(image, rec, draws, spec)
  assert_normalized(out['image'], crop.image, ms['norm_lut'])
  if FIXTURE_OPENCV:
    np.testing.assert_array_equal(out['image'], ms[p + 'input'].transpose(1, 2, 0))
  assert out['target'].shape == (64, 64, 16)
  np.testing.assert_array_equal(out['target'], ms[p + 'target'].transpose(1, 2, 0))
  np.testing.assert_array_equal(out['target_weight'], ms[p + 'target_weight'][:, 0])


def test_mpii_few_labelled_joints_draw_no_half_body_number(ms, train, spec):
  # Record 13 has 8 labelled joints: the official code draws no `u_hb` at all.
  draws = fixture_draws(ms, 'sample5_', train[13].num_visible, spec)
  assert draws.u_hb is None and str(ms['sample5_draw_names'][0]) == 'np.random.randn'


def test_mpii_gt_reads_official_mat(topdown_fixtures_dir):
  gt = R.load_mpii_gt(topdown_fixtures_dir / 'mpii_annot' / 'gt_valid.mat')
  assert gt['dataset_joints'][:3] == ('rank', 'rkne', 'rhip') and len(gt['dataset_joints']) == 16
  assert gt['jnt_missing'].shape == (16, 13) and gt['pos_gt_src'].shape == (16, 2, 13)
  assert gt['headboxes_src'].shape == (2, 2, 13)


def test_mpii_malformed_annotations_are_named(tmp_path):
  good = dict(image='a.jpg', center=[10, 20], scale=1.0, joints=[[1, 1]] * 16,
              joints_vis=[1] * 16)
  path = tmp_path / 'train.json'
  path.write_text(json.dumps([good, {**good, 'joints': [[1, 1]] * 15}]))
  with pytest.raises(AnnotationError, match='record 1'):
    R.mpii_records(path, tmp_path)
  path.write_text(json.dumps([good, {'image': 'b.jpg'}]))
  with pytest.raises(AnnotationError, match='record 1'):
    R.mpii_records(path, tmp_path)
  path.write_text('{not json')
  with pytest.raises(AnnotationError, match='JSON'):
    R.mpii_records(path, tmp_path)
  # Test-set records carry no joints: all zero, none labelled (not the -2 of unlabelled ones).
  path.write_text(json.dumps([dict(image='a.jpg', center=[10, 20], scale=1.0)]))
  (rec,) = R.mpii_records(path, tmp_path)
  assert not rec.joints.any() and rec.num_visible == 0
  np.testing.assert_array_equal(rec.center, [9.0, 34.0])  # (10, 20 + 15 * 1.0) - 1
  np.testing.assert_array_equal(rec.scale, [1.25, 1.25])
