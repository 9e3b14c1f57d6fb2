"""Top-down COCO evaluation vs the official `COCODataset.evaluate` (`eval.json`).

Tolerances (fixture README sections 8.6, 9, 10):
  * detection loader: centres / scales / scores bitwise (float64 arithmetic rounded once);
  * rescored scores bitwise (float32 sums in joint order, one float64 product);
  * OKS <= 1e-15 absolute: float64 `exp` may take another SIMD path on another CPU (<= 1 ulp
    per term, and OKS <= 1 is a mean of 17 terms); bitwise on the CPUs seen so far. Every
    fixture OKS lies >= 0.0128 from the 0.9 threshold, so keep lists are compared exactly,
    except for the order among equal scores (implementation-defined in the official code),
    where the kept poses must be the same as a set;
  * results records and file text identical, the 10 stats <= 1e-12.
"""

import json

import numpy as np
import pytest

from higherhrnet_jax.evaluation import coco as coco_eval
from higherhrnet_jax.topdown import evaluation as E


@pytest.fixture(scope='module')
def pipe(topdown_fixtures_dir):
  return np.load(topdown_fixtures_dir / 'test_pipeline.npz')


@pytest.fixture(scope='module')
def expected(topdown_fixtures_dir):
  return json.loads((topdown_fixtures_dir / 'eval.json').read_text())


def _run(pipe, run):
  n = len(pipe[run + '_all_preds'])
  return pipe[run + '_all_preds'], pipe[run + '_all_boxes'], pipe['crop_image_id'][:n]


def test_detection_loader(topdown_fixtures_dir, pipe):
  path = topdown_fixtures_dir / 'detections.json'
  raw = json.loads(path.read_text())
  det = E.load_person_detections(path)
  assert len(raw) == 18 and len(det) == int(pipe['num_crops']) == 17
  np.testing.assert_array_equal(det.image_id, pipe['crop_image_id'])
  np.testing.assert_array_equal(det.center, pipe['crop_center'])
  np.testing.assert_array_equal(det.scale, pipe['crop_scale'])
  np.testing.assert_array_equal(det.score, pipe['crop_box_score'])
  assert det.center.dtype == det.scale.dtype == np.float32
  # The category-2 record (index 6) is skipped; everything else is kept in file order.
  assert raw[6]['category_id'] == 2
  persons = [r for r in raw if r['category_id'] == 1]
  np.testing.assert_array_equal(det.box, [r['bbox'] for r in persons])
  assert not any(np.array_equal(b, raw[6]['bbox']) for b in det.box)
  assert 0.0 in det.score  # IMAGE_THRE 0: a score-0 box stays
  strict = E.load_person_detections(path, image_thre=0.5)
  np.testing.assert_array_equal(strict.score, det.score[det.score >= 0.5])
  # Record 17, centre x = -1: unpadded scale (20 x 40 px box, 40 px tall -> 0.15 x 0.2).
  np.testing.assert_array_equal(det.scale[16], np.float32([0.15, 0.2]))


def test_detection_loader_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing.json'):
    E.load_person_detections(tmp_path / 'nothing.json')
  bad = tmp_path / 'bad.json'
  bad.write_text('{"bbox": ')
  with pytest.raises(ValueError, match='bad.json'):
    E.load_person_detections(bad)
  good = {'bbox': [1, 2, 3, 4], 'category_id': 1, 'image_id': 5, 'score': 0.5}
  cases = [({k: v for k, v in good.items() if k != 'score'}, 'record 1 has no field "score"'),
           ({**good, 'bbox': [1, 2, 3]}, 'record 1 field "bbox"'),
           ({**good, 'image_id': '5'}, 'record 1 field "image_id"'),
           ({**good, 'score': None}, 'record 1 field "score"')]
  for record, message in cases:
    bad.write_text(json.dumps([good, record]))
    with pytest.raises(ValueError, match='bad.json') as err:
      E.load_person_detections(bad)
    assert message in str(err.value)
  bad.write_text('[]')
  assert len(E.load_person_detections(bad)) == 0


def _assert_keep_equal(keep, expected_keep, keypoints, scores):
  """Same kept scores in the same order; within equal scores, the same kept poses."""
  keep, expected_keep = list(keep), [int(i) for i in expected_keep]
  np.testing.assert_array_equal(scores[keep], scores[expected_keep])
  for s in np.unique(scores[keep]):
    ours = sorted(keypoints[i].tobytes() for i in keep if scores[i] == s)
    theirs = sorted(keypoints[i].tobytes() for i in expected_keep if scores[i] == s)
    assert ours == theirs, s


@pytest.mark.parametrize('i', range(6))
def test_oks_and_nms_cases(pipe, i):
  p = f'nms{i}_'
  kp, scores, areas = pipe[p + 'keypoints'], pipe[p + 'scores'], pipe[p + 'areas']
  oks = np.stack([E.oks_iou(kp[a], kp, areas[a], areas) for a in range(len(kp))])
  np.testing.assert_allclose(oks, pipe[p + 'oks'], rtol=0, atol=1e-15)
  assert np.abs(pipe[p + 'oks'] - E.OKS_THRE).min() > 1e-6  # exact keep lists are meaningful
  keep = E.oks_nms(kp, scores, areas, E.OKS_THRE)
  _assert_keep_equal(keep, pipe[p + 'keep'], kp, scores)
  if i == 1:
    # Tie between identical poses 0 and 2 (score 0.6): the official run kept 2, our
    # tie rule (earlier first) keeps 0. Same pose either way.
    assert keep == [0, 1, 3] and pipe[p + 'keep'].tolist() == [2, 1, 3]


def test_oks_uses_mean_of_both_areas(pipe):
  kp, areas = pipe['nms3_keypoints'], pipe['nms3_areas']
  assert len(set(areas.tolist())) > 1
  swapped = E.oks_iou(kp[1], kp[:1], areas[1], areas[:1])
  np.testing.assert_allclose(swapped, pipe['nms3_oks'][1, :1], rtol=0, atol=1e-15)
  np.testing.assert_allclose(pipe['nms3_oks'][0, 1], pipe['nms3_oks'][1, 0], rtol=0, atol=1e-15)


def test_nms_threshold_is_inclusive(pipe):
  """An OKS equal to the threshold survives: identical poses have OKS exactly 1."""
  kp = np.repeat(pipe['nms4_keypoints'], 2, axis=0)
  scores, areas = np.array([0.9, 0.8]), np.array([1e4, 1e4])
  assert E.oks_iou(kp[0], kp[1:], areas[0], areas[1:])[0] == 1.0
  assert E.oks_nms(kp, scores, areas, threshold=1.0) == [0, 1]
  assert E.oks_nms(kp, scores, areas, threshold=0.99) == [0]


@pytest.mark.parametrize('run', ['standin', 'tiny'])
def test_crop_boxes_and_rescoring(pipe, expected, run):
  preds, boxes, ids = _run(pipe, run)
  n = len(preds)
  np.testing.assert_array_equal(
      E.crop_boxes(pipe['crop_center'][:n], pipe['crop_scale'][:n], pipe['crop_box_score'][:n]),
      boxes)
  scores = E.rescore(preds, boxes[:, 5])
  assert len(expected[run]['nms']) == len(set(ids.tolist()))
  for group in expected[run]['nms']:
    idx = np.flatnonzero(ids == group['image_id'])
    np.testing.assert_array_equal(scores[idx], group['rescored'])
    np.testing.assert_array_equal(boxes[idx, 4], group['area'])
    keep = E.oks_nms(preds[idx], scores[idx], boxes[idx, 4], group['thresh'])
    _assert_keep_equal(keep, group['keep'], preds[idx], scores[idx])


def test_rescore_rules():
  joints = np.zeros((3, 4, 3), np.float32)
  joints[0, :, 2] = [0.2, 0.3, 0.5, np.nan]  # 0.2 is not above the threshold; NaN never is
  joints[1, :, 2] = [0.1, 0.1, 0.0, -1.0]  # no joint passes: score 0
  joints[2, :, 2] = [0.7, 0.7, 0.7, 0.7]
  scores = E.rescore(joints, np.array([2.0, 0.9, 0.5]))
  assert scores.dtype == np.float64
  assert scores[0] == np.float64((np.float32(0.3) + np.float32(0.5)) / np.float32(2)) * 2.0
  assert scores[1] == 0.0
  assert scores[2] == np.float64(np.float32(0.7)) * 0.5
  # The threshold is compared in float32 whatever its type (float32(0.2) does not pass).
  np.testing.assert_array_equal(E.rescore(joints, np.ones(3), np.float64(0.2)),
                                E.rescore(joints, np.ones(3)))


@pytest.mark.parametrize('run', ['standin', 'tiny'])
def test_records_and_stats(pipe, expected, coco_sample_dir, tmp_path, run):
  preds, boxes, ids = _run(pipe, run)
  records = E.topdown_records(preds, boxes, ids)
  assert records == expected[run]['results_records']
  assert all('bbox' not in r for r in records)
  stats = E.evaluate_topdown(coco_sample_dir / 'test_coco.json', preds, boxes, ids,
                             results_file=tmp_path / 'results.json')
  if 'results_file_text' in expected[run]:
    assert (tmp_path / 'results.json').read_text() == expected[run]['results_file_text']
  assert stats['num_records'] == len(records)
  for name, value, value_npz in zip(coco_eval.STATS_NAMES, expected[run]['stats'],
                                    pipe[run + '_stats']):
    assert abs(stats[name] - value) <= 1e-12, name
    assert abs(stats[name] - value_npz) <= 1e-12, name
  if run == 'standin':
    assert stats['AP'] == expected[run]['returned_ap']
    assert stats['summary'].splitlines() == expected[run]['summarize_stdout']
    assert len(records) == 16  # the shifted duplicate of image 785 is suppressed


def test_image_ids_are_data(pipe, coco_sample_dir):
  preds, boxes, ids = _run(pipe, 'standin')
  relabel = {785: 1, 40083: 2, 196141: 3, 197388: 4}
  records = E.topdown_records(preds, boxes, [relabel[i] for i in ids.tolist()])
  assert sorted({r['image_id'] for r in records}) == [1, 2, 3, 4]
  with pytest.raises(ValueError, match='image ids'):
    E.evaluate_topdown(coco_sample_dir / 'test_coco.json', preds, boxes,
                       [relabel[i] for i in ids.tolist()])


def test_without_nms_every_detection_is_written(pipe):
  preds, boxes, ids = _run(pipe, 'standin')
  assert len(E.topdown_records(preds, boxes, ids, oks_thre=None)) == len(preds)


def test_input_validation(pipe):
  preds, boxes, ids = _run(pipe, 'standin')
  with pytest.raises(ValueError, match='boxes'):
    E.topdown_records(preds, boxes[:, :5], ids)
  with pytest.raises(ValueError, match='preds'):
    E.topdown_records(preds[..., :2], boxes, ids)
  with pytest.raises(ValueError, match='image_ids'):
    E.topdown_records(preds, boxes, ids[:-1])
  with pytest.raises(ValueError, match='sigmas'):
    E.oks_iou(preds[0, :5], preds[1:3, :5], 1.0, np.ones(2))
