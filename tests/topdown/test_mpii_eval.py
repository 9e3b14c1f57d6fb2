"""MPII PCKh and test path vs the official code (`mpii_eval.npz`, `mpii_test_pipeline.npz`).

Tolerances (fixture README 16.5-16.8): every PCKh value and intermediate array bitwise
(NaN where the official has NaN): float64 differences, a correctly rounded `sqrt`, sums of
0/1 counts and one 16-term `np.sum` in the same order, no ISA-dependent function. Test-path
centres, scales, flip averages and `get_final_preds` bitwise; matrices <= 1e-9 and crops
within one grey level on <= 0.5 % of the values with an OpenCV other than 5.0 (as in
`test_topdown_decode.py`).
"""

import functools
import json

import numpy as np
import pytest
import scipy.io

from higherhrnet_jax import keypoints
from higherhrnet_jax.data import coco
from higherhrnet_jax.topdown import decode, evaluation, mpii, records

import numerics

MAX_OFF_FRACTION = 5e-3  # of the values, each off by one grey level (numerics.FIXTURE_OPENCV)
assert_warp_matches = functools.partial(numerics.assert_warp_matches,
                                        max_off_fraction=MAX_OFF_FRACTION)


@pytest.fixture(scope='module')
def ev(topdown_fixtures_dir):
  return np.load(topdown_fixtures_dir / 'mpii_eval.npz')


@pytest.fixture(scope='module')
def tp(topdown_fixtures_dir):
  return np.load(topdown_fixtures_dir / 'mpii_test_pipeline.npz')


@pytest.fixture(scope='module')
def gt_path(topdown_fixtures_dir):
  return topdown_fixtures_dir / 'mpii_annot' / 'gt_valid.mat'


def _flip_index(pairs) -> tuple[int, ...]:
  flip = list(range(16))
  for a, b in pairs:
    flip[a], flip[b] = int(b), int(a)
  return tuple(flip)


def _assert_details(details, npz, prefix):
  counted = details['counted']
  np.testing.assert_array_equal(npz[prefix + 'PCKh_mask'], ~counted)
  np.testing.assert_array_equal(npz[prefix + 'jnt_count_mask'], ~counted)
  for name in ('preds', 'pos_pred_src', 'jnt_visible', 'uv_error', 'uv_err', 'headsizes', 'scale',
               'scaled_uv_err', 'jnt_count', 'PCKh', 'rng', 'pckAll', 'less_than_threshold'):
    expected = npz[prefix + name]
    assert details[name].dtype == expected.dtype, name
    np.testing.assert_array_equal(details[name], expected, err_msg=name)
  # Official masked entries (pelvis, thorax) of jnt_ratio hold meaningless data.
  np.testing.assert_array_equal(details['jnt_ratio'][counted], npz[prefix + 'jnt_ratio'][counted])


def test_ground_truth_file(ev, gt_path):
  gt = mpii.load_ground_truth(gt_path)
  assert gt.joint_names == tuple(ev['dataset_joints']) == mpii.GT_JOINT_NAMES
  np.testing.assert_array_equal(gt.pos_gt_src, ev['gt_pos_gt_src'])
  np.testing.assert_array_equal(gt.jnt_missing, ev['gt_jnt_missing'])
  np.testing.assert_array_equal(gt.headboxes_src, ev['gt_headboxes_src'])
  assert gt.num_records == int(ev['num_records'])


@pytest.mark.parametrize('i', range(5))
def test_pckh_sets(ev, gt_path, i):
  p = f'set{i}_'
  result = mpii.pckh(ev[p + 'preds_in'], gt_path)
  assert tuple(result.values) == tuple(ev['value_names']) == mpii.VALUE_NAMES
  np.testing.assert_array_equal(np.array(list(result.values.values())), ev[p + 'values'])
  assert result.mean == float(ev[p + 'perf'])
  _assert_details(result.details, ev, p)


def test_mean_at_01_is_measured_at_011(ev, gt_path):
  """Set 4 puts errors of 0.105 head sizes: counted at 0.11 (the official row 11), not at 0.1."""
  result = mpii.pckh(ev['set4_preds_in'], gt_path)
  d = result.details
  assert d['rng'][11] == 0.11 and d['rng'][10] == 0.1
  assert result.values['Mean@0.1'] == float(ev['set4_values'][8]) > 13
  assert np.sum(np.where(d['counted'], d['pckAll'][10] * d['jnt_ratio'], 0.0)) == 0.0


def test_threshold_is_inclusive(ev, gt_path):
  """Case 1 (error exactly 0.5 head size) counts, case 2 (+1/16 px) does not."""
  case = ev['threshold_case'].T  # [16, N] like the details
  hits = mpii.pckh(ev['set4_preds_in'], gt_path).details['less_than_threshold']
  assert (case == 1).any() and (case == 2).any()
  assert (hits[case == 1] == 1).all()
  assert (hits[case == 2] == 0).all()


def test_missing_and_nan_predictions(ev, gt_path):
  preds = ev['set3_preds_in']
  assert np.isnan(preds).any()
  result = mpii.pckh(preds, mpii.load_ground_truth(gt_path))
  np.testing.assert_array_equal(np.array(list(result.values.values())), ev['set3_values'])


def test_ground_truth_errors(gt_path, tmp_path, ev):
  with pytest.raises(FileNotFoundError, match='missing.mat'):
    mpii.load_ground_truth(tmp_path / 'missing.mat')
  mat = scipy.io.loadmat(str(gt_path))
  fields = {k: v for k, v in mat.items() if not k.startswith('__')}
  bad = tmp_path / 'bad.mat'
  scipy.io.savemat(str(bad), {k: v for k, v in fields.items() if k != 'headboxes_src'})
  with pytest.raises(ValueError, match='bad.mat: no field "headboxes_src"'):
    mpii.load_ground_truth(bad)
  scipy.io.savemat(str(bad), {**fields, 'pos_gt_src': fields['pos_gt_src'][:, :, :5]})
  with pytest.raises(ValueError, match='bad.mat: field "pos_gt_src"'):
    mpii.load_ground_truth(bad)
  with pytest.raises(ValueError, match='one prediction per ground-truth record'):
    mpii.pckh(ev['set0_preds_in'][:5], gt_path)


def test_mpii_records_center_scale(topdown_fixtures_dir, tp, coco_sample_dir):
  recs = records.mpii_records(topdown_fixtures_dir / 'mpii_annot' / 'valid.json', coco_sample_dir)
  center = np.stack([r.center for r in recs])
  scale = np.stack([r.scale for r in recs])
  assert center.dtype == scale.dtype == np.float64
  np.testing.assert_array_equal(center, tp['center'])
  np.testing.assert_array_equal(scale, tp['scale'])
  assert [r.image_path.name for r in recs] == tp['image_file'].tolist()
  # Record 12 (centre x = -1): neither the shift nor the padding, then 1-based -> 0-based.
  np.testing.assert_array_equal(center[12], [-2.0, 121.0])
  np.testing.assert_array_equal(scale[12], [1.10045, 1.10045])


def test_mpii_test_path(topdown_fixtures_dir, tp, gt_path, coco_sample_dir, tmp_path):
  flip_index = _flip_index(tp['flip_pairs'])
  if hasattr(keypoints, 'MPII'):
    assert tuple(keypoints.MPII.flip_index) == flip_index
  center, scale = tp['center'], tp['scale']
  float32_differs = 0
  for i in range(int(tp['num_crops'])):
    trans = decode.crop_transform(center[i], scale[i], (256, 256))
    np.testing.assert_allclose(trans, tp['trans'][i], rtol=0, atol=1e-9)
    np.testing.assert_allclose(decode.crop_transform(center[i], scale[i], (64, 64), inv=True),
                               tp['trans_inv_64x64'][i], rtol=0, atol=1e-9)
    float32_differs += np.abs(decode.crop_transform(center[i].astype(np.float32),
                                                    scale[i].astype(np.float32), (256, 256))
                              - tp['trans'][i]).max() > 1e-9
    image = coco.decode_image(coco_sample_dir / str(tp['image_file'][i]))
    assert_warp_matches(decode.crop(image, center[i], scale[i], (256, 256)), tp['crop_uint8'][i])
  assert float32_differs >= 1  # float64 records matter: the check bites

  nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))
  avg = np.asarray(decode.average_flip(nhwc(tp['output']), nhwc(tp['output_flipped']), flip_index))
  np.testing.assert_array_equal(avg, nhwc(tp['output_averaged']))
  preds, maxvals = decode.get_final_preds(avg, center, scale)
  np.testing.assert_array_equal(preds, tp['preds'])
  np.testing.assert_array_equal(maxvals, tp['maxvals'])
  all_preds = np.concatenate([preds, maxvals], -1)
  np.testing.assert_array_equal(all_preds, tp['all_preds'])
  np.testing.assert_array_equal(evaluation.crop_boxes(center, scale, np.ones(len(center))),
                                tp['all_boxes'])

  result = mpii.pckh(all_preds, gt_path)
  np.testing.assert_array_equal(np.array(list(result.values.values())), tp['values'])
  assert result.mean == float(tp['perf'])
  _assert_details(result.details, tp, 'eval_')

  mpii.write_pred_mat(tmp_path / 'pred.mat', all_preds)
  written = scipy.io.loadmat(str(tmp_path / 'pred.mat'))['preds']
  assert written.dtype == np.float32
  np.testing.assert_array_equal(written, tp['pred_mat'])

  notes = json.loads((topdown_fixtures_dir / 'mpii_eval_notes.json').read_text())
  assert mpii.format_table(result.values) == notes['validate']['printed_table']
