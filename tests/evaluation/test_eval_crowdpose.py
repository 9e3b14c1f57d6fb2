"""CrowdPose protocol on the CrowdPose sample, cross-checked between two evaluators.

No official CrowdPose fixture exists; the reference is a second, independent
implementation of the protocol that must agree with the default evaluator (faster-coco-eval)
on every stat: xthotcoco (hotcoco's Rust engine behind xtcocotools' API; a wheel, so it
runs everywhere) and, where it is built, xtcocotools itself (the one mmpose uses).
"""

import json

import numpy as np
import pytest

from higherhrnet_jax.evaluation import coco as C
from higherhrnet_jax.evaluation import crowdpose as CP


def _gt_with_crowd_index(crowdpose_sample_dir, tmp_path, values):
  """A copy of the sample ground truth with chosen crowd indices (to fill easy and hard)."""
  data = json.loads((crowdpose_sample_dir / 'test_crowdpose.json').read_text())
  for img, v in zip(data['images'], values):
    img['crowdIndex'] = v
  path = tmp_path / 'gt.json'
  path.write_text(json.dumps(data))
  return path, data


def _predictions(data, noise, seed=0):
  rng = np.random.default_rng(seed)
  ids, poses, scores = [], [], []
  for img in data['images']:
    people = []
    for a in data['annotations']:
      if a['image_id'] != img['id'] or a['num_keypoints'] == 0:
        continue
      k = np.asarray(a['keypoints'], np.float32).reshape(14, 3)
      p = np.zeros((14, 4), np.float32)
      p[:, :2] = k[:, :2] + rng.normal(0, noise, (14, 2))
      p[:, 2] = np.where(k[:, 2] > 0, rng.uniform(0.3, 0.9, 14), 0.05)
      people.append(p)
    if noise:
      false_positive = people[0].copy()
      false_positive[:, :2] += 50
      people.append(false_positive)
    ids.append(img['id'])
    poses.append(np.stack(people))
    scores.append(rng.uniform(0.2, 0.9, len(people)))
  return C.results_records(ids, poses, scores)


def _require(backend):
  if backend == 'xtcocotools':
    pytest.importorskip('xtcocotools.cocoeval', reason='xtcocotools (source build) not installed')
  elif backend == 'xthotcoco':
    pytest.importorskip('xthotcoco', reason='xthotcoco not installed')


@pytest.mark.parametrize('crowd_index', [None, (0.1, 0.9)])
@pytest.mark.parametrize('other', ['xthotcoco', 'xtcocotools'])
def test_two_evaluators_agree(crowdpose_sample_dir, tmp_path, crowd_index, other):
  _require(other)
  if crowd_index is None:
    path = crowdpose_sample_dir / 'test_crowdpose.json'
    data = json.loads(path.read_text())
  else:
    path, data = _gt_with_crowd_index(crowdpose_sample_dir, tmp_path, crowd_index)
  records = _predictions(data, noise=4.0)
  a = CP.evaluate_crowdpose(path, records, backend='faster_coco_eval')
  b = CP.evaluate_crowdpose(path, records, backend=other)
  for name in CP.STATS_NAMES:
    assert abs(a[name] - b[name]) <= 1e-12, (other, name, a[name], b[name])
  assert 0.3 < a['AP'] < 1.0 and a['AR'] > a['AP']
  if crowd_index is None:  # both sample images are 'medium' (0.33, 0.39)
    assert a['APeasy'] == a['APhard'] == -1 and a['APmedium'] > 0
  else:
    assert a['APmedium'] == -1 and a['APeasy'] > 0 and a['APhard'] > 0


def test_perfect_predictions(crowdpose_sample_dir):
  path = crowdpose_sample_dir / 'test_crowdpose.json'
  records = _predictions(json.loads(path.read_text()), noise=0.0)
  assert all(len(r['keypoints']) == 42 for r in records)
  stats = CP.evaluate_crowdpose(path, records)
  for name in ('AP', 'AP50', 'AP75', 'AR', 'APmedium'):
    assert stats[name] == pytest.approx(1.0), name


@pytest.mark.parametrize('backend', CP.BACKENDS)
def test_no_detections(crowdpose_sample_dir, backend):
  _require(backend)
  stats = CP.evaluate_crowdpose(crowdpose_sample_dir / 'test_crowdpose.json', [], backend=backend)
  assert stats['AP'] == 0 and stats['AR'] == 0


def test_bad_inputs(crowdpose_sample_dir, coco_sample_dir):
  with pytest.raises(ValueError, match='crowdIndex'):
    CP.evaluate_crowdpose(coco_sample_dir / 'test_coco.json', [])
  with pytest.raises(FileNotFoundError):
    CP.evaluate_crowdpose(crowdpose_sample_dir / 'missing.json', [])
  with pytest.raises(ValueError, match='backend'):
    CP.evaluate_crowdpose(crowdpose_sample_dir / 'test_crowdpose.json', [], backend='nope')
  records = _predictions(json.loads((crowdpose_sample_dir / 'test_crowdpose.json').read_text()), 1.0)
  records[0]['image_id'] = 12345
  with pytest.raises(ValueError, match='image ids'):
    CP.evaluate_crowdpose(crowdpose_sample_dir / 'test_crowdpose.json', records)
