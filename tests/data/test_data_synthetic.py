"""Synthetic COCO-format scenes: determinism, format, markers where the keypoints are."""

import json

import cv2
import numpy as np
import pytest

from higherhrnet_jax import keypoints
from higherhrnet_jax.data import coco
from higherhrnet_jax.data import synthetic


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp('syn')
  path = synthetic.write_synthetic_coco(root, 40, seed=7, image_size=128, split='train2017')
  return root, path


def test_layout_and_coco_format(written):
  root, path = written
  assert path == root / 'annotations' / 'person_keypoints_train2017.json'
  data = json.loads(path.read_text())
  assert len(data['images']) == 40
  assert len({im['id'] for im in data['images']}) == 40
  assert len({a['id'] for a in data['annotations']}) == len(data['annotations'])
  assert data['categories'][0]['keypoints'] == list(keypoints.COCO.joint_names)
  for im in data['images']:
    assert (root / 'images' / 'train2017' / im['file_name']).is_file()
  for a in data['annotations']:
    kp = np.asarray(a['keypoints'], float).reshape(17, 3)
    assert a['num_keypoints'] == int((kp[:, 2] > 0).sum())
    assert a['area'] > 0 and a['bbox'][2] > 0 and a['bbox'][3] > 0
    labelled = kp[kp[:, 2] > 0]
    assert ((labelled[:, :2] >= 0) & (labelled[:, :2] < 128)).all()
    if a['iscrowd']:
      assert a['num_keypoints'] == 0 and isinstance(a['segmentation'], dict)
    else:
      assert all(len(p) >= 6 for p in a['segmentation'])


def test_scene_statistics(written):
  _, path = written
  data = json.loads(path.read_text())
  people = {}
  for a in data['annotations']:
    if a['num_keypoints'] > 0:
      people[a['image_id']] = people.get(a['image_id'], 0) + 1
  counts = list(people.values())
  assert max(counts) <= 6 and len(set(counts)) >= 3  # variable number of people
  assert any(a['iscrowd'] for a in data['annotations'])
  assert any(a['num_keypoints'] == 0 and not a['iscrowd'] for a in data['annotations'])
  vis = np.concatenate([np.asarray(a['keypoints']).reshape(17, 3)[:, 2]
                        for a in data['annotations']])
  assert (vis == 1).any() and (vis == 2).mean() > 0.5  # occlusion occurs, but not mostly
  heights = [a['bbox'][3] for a in data['annotations'] if a['num_keypoints'] > 10]
  assert max(heights) > 2 * min(heights)  # people of varying scale


def test_deterministic_and_seeded(tmp_path):
  a = synthetic.write_synthetic_coco(tmp_path / 'a', 3, seed=1, image_size=64)
  b = synthetic.write_synthetic_coco(tmp_path / 'b', 3, seed=1, image_size=64)
  c = synthetic.write_synthetic_coco(tmp_path / 'c', 3, seed=2, image_size=64)
  assert a.read_text() == b.read_text() != c.read_text()
  for name in sorted(p.name for p in (tmp_path / 'a' / 'images' / 'train2017').iterdir()):
    assert ((tmp_path / 'a' / 'images' / 'train2017' / name).read_bytes()
            == (tmp_path / 'b' / 'images' / 'train2017' / name).read_bytes())


def test_markers_are_at_the_keypoints():
  """A visible joint's pixel has its joint colour (rendered without JPEG)."""
  hits = total = 0
  for i in range(10):
    image, anns = synthetic.render_scene(np.random.default_rng(i), 128)
    for a in anns:
      kp = np.asarray(a['keypoints']).reshape(17, 3)
      for k, (x, y, v) in enumerate(kp):
        if v == 2:
          total += 1
          want = synthetic._joint_colour(keypoints.COCO.joint_names[k])
          hits += np.abs(image[int(y), int(x)].astype(int) - want).max() <= 40
  assert total > 200 and hits / total > 0.9


def test_left_marker_mirrors_into_the_right_marker():
  """Flip augmentation swaps left/right labels; the marker shapes must swap with them."""
  size, x, y = 33, 11.0, 16.0
  left = np.zeros((size, size, 3), np.uint8)
  right = np.zeros((size, size, 3), np.uint8)
  synthetic._marker(left, 'left_wrist', np.array([x, y]), 4.0, (255, 255, 255))
  synthetic._marker(right, 'right_wrist', np.array([size - 1 - x, y]), 4.0, (255, 255, 255))
  assert left.any()
  # Equal up to OpenCV's anti-aliasing, which is not exactly mirror-symmetric (a few levels).
  diff = np.abs(left[:, ::-1].astype(int) - right.astype(int))
  assert diff.max() <= 16
  # Chiral: a left marker is far from a right one.
  assert np.abs(left.astype(int) - right.astype(int)).max() == 255


def test_crowd_regions_and_keypointless_people_are_masked(written):
  root, path = written
  src = coco.coco_source(path, root / 'images' / 'train2017')
  data = json.loads(path.read_text())
  crowd_images = {a['image_id'] for a in data['annotations'] if a['iscrowd']}
  index = next(i for i in range(len(src)) if src.info(i).image_id in crowd_images)
  mask = src.mask(index)
  assert mask.dtype == bool and 0 < (~mask).sum() < mask.size
  img = src.load_image(index)
  assert img.shape == (128, 128, 3)


def test_cli_writes_both_splits(tmp_path, capsys):
  synthetic.main(['--out', str(tmp_path), '--num-train', '2', '--num-val', '1',
                  '--image-size', '64'])
  for split, n in (('train2017', 2), ('val2017', 1)):
    data = json.loads((tmp_path / 'annotations' / f'person_keypoints_{split}.json').read_text())
    assert len(data['images']) == n
  train_ids = {im['id'] for im in json.loads(
      (tmp_path / 'annotations' / 'person_keypoints_train2017.json').read_text())['images']}
  val_ids = {im['id'] for im in json.loads(
      (tmp_path / 'annotations' / 'person_keypoints_val2017.json').read_text())['images']}
  assert not train_ids & val_ids
  assert 'wrote 2 images' in capsys.readouterr().out
  img = cv2.imread(str(next((tmp_path / 'images' / 'val2017').iterdir())))
  assert img.shape == (64, 64, 3)
