"""Top-down training data through the shared grain pipeline: layout, determinism, bad input.

The pipeline mechanics (host shards, resume, worker counts) are shared with HigherHRNet and
tested in `tests/data/test_data_pipeline.py`; here: the person-crop batches are exactly the
sample builder's output for the pipeline's per-sample generator, two worker processes give
the same batches, and a corrupt image is skipped and counted, never fatal.
"""

import json
import pathlib
import shutil

import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax.data import pipeline
from higherhrnet_jax.topdown import records, samples

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_PEOPLE = 12  # annotations with keypoints in the COCO sample


def _config(ann, images, batch_size=4):
  return config_lib.load_config(REPO / 'configs' / 'coco' / 'hrnet_tiny.py', [
      f'dataset.train_annotations={ann}', f'dataset.train_images={images}',
      f'train.batch_size={batch_size}'])


@pytest.fixture(scope='module')
def cfg(coco_sample_dir):
  return _config(coco_sample_dir / 'test_coco.json', coco_sample_dir)


def _take(it, n):
  try:
    return [next(it) for _ in range(n)]
  finally:
    it.close()


def test_batches_are_the_sample_builder_output(cfg):
  it = pipeline.make_train_loader(cfg, worker_count=0, shard_index=0, shard_count=1)
  assert it.num_records == NUM_PEOPLE and it.steps_per_epoch == 3
  batch = _take(it, 1)[0]
  assert sorted(batch) == ['image', 'target', 'target_weight']
  assert batch['image'].shape == (4, 128, 96, 3) and batch['image'].dtype == np.float32
  assert batch['target'].shape == (4, 32, 24, 17) and batch['target_weight'].shape == (4, 17)
  builder = samples.PersonSamples.from_config(cfg, cfg.dataset.train_split)
  epoch, recs = it.plan.batch_records(0)
  for i, r in enumerate(recs):
    expected, image_id = builder(int(r), pipeline.sample_rng(cfg.seed, epoch, int(r)))
    for k in expected:
      np.testing.assert_array_equal(batch[k][i], expected[k], err_msg=k)
    assert image_id == builder.people[int(r)].image_id
  # Real people: every target has its Gaussian peak of 1 where the weight is 1 and the
  # joint lands inside the map.
  assert batch['target'].max() == 1.0 and batch['target_weight'].sum() > 20


def test_two_workers_give_the_same_batches(cfg):
  ref = _take(pipeline.make_train_loader(cfg, worker_count=0, shard_index=0, shard_count=1), 2)
  got = _take(pipeline.make_train_loader(cfg, worker_count=2, shard_index=0, shard_count=1), 2)
  for a, b in zip(ref, got):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_corrupt_image_is_skipped_and_counted(coco_sample_dir, tmp_path):
  for p in coco_sample_dir.glob('*.jpg'):
    shutil.copy(p, tmp_path / p.name)
  ann = json.loads((coco_sample_dir / 'test_coco.json').read_text())
  broken = ann['images'][0]['file_name']
  (tmp_path / broken).write_bytes(b'not a jpeg')
  cfg = _config(coco_sample_dir / 'test_coco.json', tmp_path, batch_size=12)
  it = pipeline.make_train_loader(cfg, worker_count=0, shard_index=0, shard_count=1)
  batch = _take(it, 1)[0]
  people_on_broken = sum(1 for p in samples.PersonSamples.from_config(cfg, 'train2017').people
                         if p.image_path.name == broken)
  assert people_on_broken > 0
  assert it.num_skipped >= people_on_broken  # each of them replaced by a readable record
  assert batch['image'].shape[0] == 12 and np.isfinite(batch['image']).all()


def test_people_without_labelled_joints_are_not_records_and_outside_boxes_crop_empty(
    coco_sample_dir, tmp_path):
  ann = json.loads((coco_sample_dir / 'test_coco.json').read_text())
  person = next(a for a in ann['annotations'] if max(a['keypoints']) > 0)
  person['keypoints'] = [0] * 51  # no labelled joint: not a training record (official)
  (tmp_path / 'a.json').write_text(json.dumps(ann))
  cfg = _config(tmp_path / 'a.json', coco_sample_dir)
  people = samples.PersonSamples.from_config(cfg, 'train2017').people
  assert len(people) == NUM_PEOPLE - 1 and person['id'] not in [p.annotation_id for p in people]
  # A record whose box lies outside its image gives a black crop and zero weights.
  spec = samples.PersonSamples.from_config(cfg, 'train2017').spec
  p = people[0]
  outside = records.PersonRecord(p.image_index, p.image_id, p.image_path, p.image_hw,
                                 np.array([-5000, -5000], np.float32), p.scale, p.joints,
                                 p.joints_vis, p.annotation_id)
  image = records.load_image(outside)
  out = samples.make_train_sample(image, outside, samples.Draws(z_s=0.0, u_r=1.0, u_f=1.0), spec)
  assert np.all(out['target_weight'] == 0) and np.all(out['target'] == 0)
  assert len(np.unique(out['image'][..., 0])) == 1  # every pixel the normalised black
