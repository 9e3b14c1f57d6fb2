"""COCO results records and pycocotools metrics vs the official evaluation path.

Tolerance (fixture README): records identical (same values, float64), the results file
text identical, the 10 stats <= 1e-12.
"""

import json

import numpy as np
import pytest

from higherhrnet_jax import keypoints
from higherhrnet_jax.evaluation import coco as C


def _inputs(fixtures_dir, sub):
  inp = json.loads((fixtures_dir / sub / 'eval.json').read_text())
  exp = json.loads((fixtures_dir / sub / 'eval_expected.json').read_text())
  poses = [np.asarray(p, np.float32).reshape(-1, 17, 5) for p in inp['preds']]
  scores = [np.asarray(s, np.float32) for s in inp['scores']]
  return inp, exp, poses, scores


@pytest.mark.parametrize('sub', ['.', 'more'])
def test_records_and_stats_parity(fixtures_dir, coco_sample_dir, tmp_path, sub):
  inp, exp, poses, scores = _inputs(fixtures_dir, sub)
  records = C.results_records(inp['image_ids_in_dataset_order'], poses, scores)
  assert records == exp['results_records']
  C.write_results(records, tmp_path / 'results.json')
  assert (tmp_path / 'results.json').read_text() == exp['results_file_text']

  stats = C.evaluate_coco(coco_sample_dir / 'test_coco.json', records,
                          sigmas=keypoints.COCO.sigmas)
  assert len(exp['stats']) == len(C.STATS_NAMES) == 10
  for name, value in zip(C.STATS_NAMES, exp['stats']):
    assert abs(stats[name] - value) <= 1e-12, name
  assert stats['summary'] == exp['summarize_stdout'].rstrip('\n')
  assert stats['AP'] == exp['returned_ap']


def test_image_ids_come_from_the_dataset(fixtures_dir):
  inp, _, poses, scores = _inputs(fixtures_dir, '.')
  ids = [11, 22, 33, 44]  # ids unrelated to the file names
  records = C.results_records(ids, poses, scores)
  assert sorted({r['image_id'] for r in records}) == ids
  with pytest.raises(ValueError, match='lengths'):
    C.results_records(ids[:3], poses, scores)


def test_unknown_image_id_is_an_error(fixtures_dir, coco_sample_dir):
  _, _, poses, scores = _inputs(fixtures_dir, '.')
  records = C.results_records([1, 2, 3, 4], poses, scores)
  with pytest.raises(ValueError, match='image ids'):
    C.evaluate_coco(coco_sample_dir / 'test_coco.json', records)


def test_no_detections(coco_sample_dir):
  empty = [np.zeros((0, 17, 5), np.float32)] * 4
  records = C.results_records([785, 40083, 196141, 197388], empty, [[]] * 4)
  assert records == []
  stats = C.evaluate_coco(coco_sample_dir / 'test_coco.json', records)
  assert stats['AP'] == 0 and stats['AR'] == 0


def test_oks_nms_and_rescore_switches(fixtures_dir, coco_sample_dir):
  inp, _, poses, scores = _inputs(fixtures_dir, '.')
  ids = inp['image_ids_in_dataset_order']
  plain = C.results_records(ids, poses, scores)
  nms = C.results_records(ids, poses, scores, oks_nms_threshold=0.9, sigmas=keypoints.COCO.sigmas)
  # eval.json holds one duplicate detection of a person (image 196141); NMS removes it.
  assert len(nms) == len(plain) - 1
  dropped = [r for r in plain if r not in nms]
  assert [r['image_id'] for r in dropped] == [196141]
  with pytest.raises(ValueError, match='sigmas'):
    C.results_records(ids, poses, scores, oks_nms_threshold=0.9)

  rescored = C.results_records(ids, poses, scores, rescore=True)
  j = poses[0][0][:, 2].astype(np.float64)
  assert rescored[0]['score'] == pytest.approx(j[j > 0.2].mean(), rel=1e-6)
  assert rescored[0]['keypoints'] == plain[0]['keypoints']
  # Removing the duplicate can only help AP here.
  ap_plain = C.evaluate_coco(coco_sample_dir / 'test_coco.json', plain)['AP']
  ap_nms = C.evaluate_coco(coco_sample_dir / 'test_coco.json', nms)['AP']
  assert ap_nms >= ap_plain


def test_bad_pose_shape():
  with pytest.raises(ValueError, match='pose'):
    C.person_record(1, np.zeros((17,), np.float32), 0.5)
