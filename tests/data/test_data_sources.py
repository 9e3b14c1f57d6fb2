"""Sources: COCO / CrowdPose annotations to joints and masks, identical to the official code.

Expected values come from the official fixtures (`train_sample.npz`: `get_mask` /
`get_joints` before transforms, exact; `resize.npz`: decoded RGB images, exact) or are read
directly from the annotation JSON in the test.
"""

import json

import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax.data import coco


@pytest.fixture(scope='module')
def coco_src(coco_sample_dir):
  return coco.coco_source(coco_sample_dir / 'test_coco.json', coco_sample_dir)


@pytest.mark.parametrize('fixture', ['train_sample.npz', 'more/train_sample.npz'])
def test_joints_and_masks_match_official(coco_src, fixtures_dir, fixture):
  """Masks and joints before transforms: exact (bitwise) equality."""
  d = np.load(fixtures_dir / fixture)
  for k in range(int(d['num_samples'])):
    p = f'sample{k}_'
    i = int(d[p + 'dataset_index'])
    info = coco_src.info(i)
    assert info.image_id == int(d[p + 'image_id'])
    assert info.file_name == str(d[p + 'file'])
    assert (info.height, info.width) == tuple(d[p + 'image_hw'])
    mask = coco_src.mask(i)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, d[p + 'mask_before'])
    joints = coco_src.joints(i)
    assert joints.dtype == np.float64
    np.testing.assert_array_equal(joints, d[p + 'joints_before'])


def test_masks_exclude_keypointless_people(coco_src):
  # Images 40083 and 196141 each have one annotation with num_keypoints 0 (sample README).
  ids = coco_src.ids
  for image_id in (40083, 196141):
    assert not coco_src.mask(ids.index(image_id)).all()
  assert coco_src.mask(ids.index(785)).all()


def test_dataset_order_and_real_ids(coco_src, coco_sample_dir):
  with open(coco_sample_dir / 'test_coco.json') as f:
    raw = json.load(f)
  assert coco_src.ids == [img['id'] for img in raw['images']]
  assert coco_src.ids == [785, 40083, 196141, 197388]
  assert len(coco_src) == 4


def test_decoded_images_match_official(coco_src, fixtures_dir):
  """Decoded RGB uint8 images: exact equality with `resize.npz` `img{i}`."""
  d = np.load(fixtures_dir / 'resize.npz')
  for i in range(4):
    assert int(d[f'img{i}_id']) == coco_src.info(i).image_id
    img = coco_src.load_image(i)
    assert img.dtype == np.uint8 and img.shape[2] == 3
    np.testing.assert_array_equal(img, d[f'img{i}'])


def test_decode_from_bytes_equals_path(coco_sample_dir):
  path = coco_sample_dir / '000000000785.jpg'
  np.testing.assert_array_equal(coco.decode_image(path.read_bytes()), coco.decode_image(path))


def test_eval_example_has_whole_image_and_id(coco_src):
  ex = coco_src.eval_example(2)
  assert ex['image_id'] == 196141
  assert ex['image'].shape == (429, 640, 3)


def test_train_example_fields(coco_src):
  ex = coco_src.train_example(1)
  assert ex['image_id'] == 40083
  assert ex['image'].shape[:2] == ex['mask'].shape
  assert ex['joints'].shape == (3, 17, 3)


def test_scale_aware_sigma_column(coco_sample_dir):
  src = coco.coco_source(coco_sample_dir / 'test_coco.json', coco_sample_dir,
                         scale_aware_sigma=True, base_size=256, base_sigma=2.0)
  with open(coco_sample_dir / 'test_coco.json') as f:
    raw = json.load(f)
  boxes = [a['bbox'] for a in raw['annotations'] if a['image_id'] == 197388]
  j = src.joints(src.ids.index(197388))
  assert j.shape == (len(boxes), 17, 4)
  expected = [max(b[2], b[3]) / 256 * 2.0 for b in boxes]
  np.testing.assert_allclose(j[:, 0, 3], expected, rtol=0, atol=1e-12)
  assert (j[:, :, 3] == j[:, :1, 3]).all()


def test_crowdpose_source(crowdpose_sample_dir):
  path = crowdpose_sample_dir / 'test_crowdpose.json'
  src = coco.crowdpose_source(path, crowdpose_sample_dir)
  with open(path) as f:
    raw = json.load(f)
  assert src.ids == [img['id'] for img in raw['images']] == [106848, 103319]
  for i, image_id in enumerate(src.ids):
    anns = [a for a in raw['annotations'] if a['image_id'] == image_id]
    j = src.joints(i)
    assert j.shape == (len(anns), 14, 3)
    for p, a in enumerate(anns):
      np.testing.assert_array_equal(j[p].reshape(-1), np.asarray(a['keypoints'], float))
    # The official CrowdPose mask is all True (no segmentations in CrowdPose).
    m = src.mask(i)
    info = [img for img in raw['images'] if img['id'] == image_id][0]
    assert m.shape == (info['height'], info['width']) and m.all()
    assert src.load_image(i).shape == (info['height'], info['width'], 3)


def test_source_from_config_explicit_paths(coco_sample_dir, crowdpose_sample_dir):
  c = config_lib.base_config()
  c.dataset.train_annotations = str(coco_sample_dir / 'test_coco.json')
  c.dataset.train_images = str(coco_sample_dir)
  src = coco.source_from_config(c, train=True)
  assert src.ids == [785, 40083, 196141, 197388]
  c = config_lib.crowdpose(config_lib.base_config())
  c.dataset.test_annotations = str(crowdpose_sample_dir / 'test_crowdpose.json')
  c.dataset.test_images = str(crowdpose_sample_dir)
  src = coco.source_from_config(c, train=False)
  assert src.num_joints == 14 and len(src) == 2
  assert src.mask(0).all()


def test_official_split_layout():
  c = config_lib.base_config()
  ann, img = coco.split_paths(c, 'train2017')
  assert ann.as_posix().endswith('annotations/person_keypoints_train2017.json')
  assert img.as_posix().endswith('images/train2017')
  c = config_lib.crowdpose(config_lib.base_config())
  ann, img = coco.split_paths(c, 'test')
  assert ann.as_posix().endswith('json/crowdpose_test.json')
  assert img.as_posix().endswith('images')


def test_source_pickles_compactly(coco_src):
  import pickle
  blob = pickle.dumps(coco_src)
  clone = pickle.loads(blob)
  assert clone.ids == coco_src.ids
  for i in range(len(coco_src)):
    np.testing.assert_array_equal(clone.joints(i), coco_src.joints(i))
    np.testing.assert_array_equal(clone.mask(i), coco_src.mask(i))
    assert clone.info(i) == coco_src.info(i)
  with pytest.raises(RuntimeError, match='not pickled'):
    clone.annotations(0)
  assert len(coco_src.annotations(1)) == 3  # the building process keeps the index
