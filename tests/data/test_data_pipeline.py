"""The grain pipeline: determinism, resume, host sharding, worker counts, skipped samples."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax.data import coco
from higherhrnet_jax.data import pipeline
from higherhrnet_jax.data import synthetic

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_IMAGES = 12


@pytest.fixture(scope='module')
def synth_root(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp('synth')
  synthetic.write_synthetic_coco(root, NUM_IMAGES, seed=3, image_size=96, split='train2017')
  synthetic.write_synthetic_coco(root, 3, seed=3, image_size=96, split='val2017')
  return root


def _config(root, batch_size=2, **data):
  c = config_lib.load_config(REPO / 'configs' / 'tiny.py', [
      f'dataset.root={root}', 'data.input_size=64',
      f'train.batch_size={batch_size}'])
  with c.unlocked():
    for k, v in data.items():
      c.data[k] = v
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_layout_and_real_ids(synth_root):
  c = _config(synth_root)
  # The split may be given by its name, as the training loop does.
  it = pipeline.make_train_loader(c, c.dataset.train_split, worker_count=0, shard_index=0,
                                  shard_count=1)
  assert it.num_records == NUM_IMAGES
  b = next(it)
  k, m = c.model.num_joints, c.data.max_num_people
  assert b['image'].shape == (2, 64, 64, 3) and b['image'].dtype == np.float32
  for s, r in enumerate((16, 32)):
    assert b[f'heatmaps_{s}'].shape == (2, r, r, k) and b[f'heatmaps_{s}'].dtype == np.float32
    assert b[f'masks_{s}'].shape == (2, r, r) and b[f'masks_{s}'].dtype == np.float32
    assert b[f'joints_{s}'].shape == (2, m, k, 2) and b[f'joints_{s}'].dtype == np.int32
  ids = set(coco.image_ids(pipeline.make_source(c, 'train')))
  assert set(it.last_image_ids.tolist()) <= ids
  assert it.steps_per_epoch == NUM_IMAGES // 2


def test_same_seed_same_batches_other_seed_differs(synth_root):
  c = _config(synth_root)
  a = _take(pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1), 3)
  b = _take(pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1), 3)
  _assert_same(a, b)
  other = next(pipeline.make_train_loader(c, seed=1, worker_count=0, shard_index=0, shard_count=1))
  assert not np.array_equal(other['image'], a[0]['image'])


def test_sample_is_a_function_of_seed_epoch_and_record(synth_root):
  """Batch size 4 sees the same samples as two batches of 2 (same epoch order and draws)."""
  small = _take(pipeline.make_train_loader(_config(synth_root, 2), worker_count=0, shard_index=0,
                                           shard_count=1), 2)
  big = next(pipeline.make_train_loader(_config(synth_root, 4), worker_count=0, shard_index=0,
                                        shard_count=1))
  for k in big:
    np.testing.assert_array_equal(big[k], np.concatenate([small[0][k], small[1][k]]), err_msg=k)


def test_epochs_are_reshuffled_and_cover_the_data(synth_root):
  c = _config(synth_root, 4)
  it = pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1, num_epochs=2)
  per_epoch = []
  for _ in range(2):
    ids = []
    for _ in range(it.steps_per_epoch):
      next(it)
      ids.extend(it.last_image_ids.tolist())
    per_epoch.append(ids)
  with pytest.raises(StopIteration):
    next(it)
  all_ids = sorted(coco.image_ids(pipeline.make_source(c, 'train')))
  assert sorted(per_epoch[0]) == sorted(per_epoch[1]) == all_ids
  assert per_epoch[0] != per_epoch[1]


def test_resume_from_state_gives_the_uninterrupted_batches(synth_root):
  c = _config(synth_root, 4)  # 3 steps per epoch: the resumed run crosses an epoch boundary
  reference = _take(pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1), 5)
  first = pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1)
  _take(first, 2)
  state = json.loads(json.dumps(first.get_state()))  # what a checkpoint stores
  resumed = pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1)
  resumed.set_state(state)
  _assert_same(reference[2:], _take(resumed, 3))
  assert resumed.get_state()['step'] == 5


def test_state_from_another_setup_is_rejected(synth_root):
  it = pipeline.make_train_loader(_config(synth_root), worker_count=0, shard_index=0, shard_count=1)
  state = it.get_state()
  other = pipeline.make_train_loader(_config(synth_root, 4), worker_count=0, shard_index=0,
                                     shard_count=1)
  with pytest.raises(ValueError, match='global_batch_size'):
    other.set_state(state)
  # Any host of a job with any number of hosts may restore it: the global batch is a
  # function of the step, not of the host count.
  host1 = pipeline.make_train_loader(_config(synth_root), worker_count=0, shard_index=1,
                                     shard_count=2)
  host1.set_state({**state, 'step': 3})
  assert host1.step == 3


def test_global_batch_does_not_depend_on_the_host_count(synth_root):
  c = _config(synth_root, 4)
  source = pipeline.make_source(c, 'train')
  one = _take(pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1,
                                         source=source), 4)
  hosts = [_take(pipeline.make_train_loader(c, worker_count=0, shard_index=h, shard_count=2,
                                            source=source), 4) for h in range(2)]
  for step, whole in enumerate(one):
    for key, value in whole.items():  # host 0's block, then host 1's: the same samples, bitwise
      np.testing.assert_array_equal(
          np.concatenate([hosts[0][step][key], hosts[1][step][key]]), value, err_msg=key)


def test_four_host_split_is_disjoint_and_covers_the_dataset(synth_root):
  c = _config(synth_root, 4)  # global 4: one sample per host per step
  source = pipeline.make_source(c, 'train')
  shards = []
  for h in range(4):
    it = pipeline.make_train_loader(c, worker_count=0, shard_index=h, shard_count=4, source=source)
    assert it.steps_per_epoch == NUM_IMAGES // 4
    ids = []
    for _ in range(it.steps_per_epoch):
      assert next(it)['image'].shape[0] == 1
      ids.extend(it.last_image_ids.tolist())
    shards.append(ids)
  flat = [i for s in shards for i in s]
  assert len(flat) == len(set(flat)) == NUM_IMAGES
  assert set(flat) == set(coco.image_ids(source))


def test_plan_shards_partition_every_epoch():
  for n in (10, 13):
    plans = [pipeline.ShardPlan(num_records=n, batch_size=1, shard_index=h, shard_count=4, seed=0)
             for h in range(4)]
    for epoch in range(3):
      parts = [p.shard_records(epoch) for p in plans]
      flat = np.concatenate(parts)
      assert len(set(flat.tolist())) == len(flat) == 4 * (n // 4)  # disjoint, equal lengths
      assert set(flat.tolist()) <= set(range(n))


def test_batch_too_large_names_the_field():
  with pytest.raises(ValueError, match='batch_size'):
    pipeline.ShardPlan(num_records=3, batch_size=4, shard_index=0, shard_count=1, seed=0)


@pytest.fixture()
def damaged_root(synth_root, tmp_path) -> pathlib.Path:
  root = tmp_path / 'damaged'
  shutil.copytree(synth_root, root)
  images = sorted((root / 'images' / 'train2017').iterdir())
  images[1].write_bytes(b'not a jpeg')
  images[4].unlink()
  return root


def test_unreadable_images_are_replaced_counted_and_deterministic(damaged_root, caplog):
  c = _config(damaged_root, 4)
  it = pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1, num_epochs=1)
  batches, ids = [], []
  with caplog.at_level('WARNING'):
    for b in it:
      assert b['image'].shape[0] == 4
      batches.append(b)
      ids.extend(it.last_image_ids.tolist())
  assert it.num_skipped == 2
  assert 'skipping record' in caplog.text
  source = pipeline.make_source(c, 'train')
  bad = {source.info(1).image_id, source.info(4).image_id}
  assert not bad & set(ids)
  # A bad record is replaced by the next one, which therefore appears twice.
  assert ids.count(source.info(2).image_id) == 2 and ids.count(source.info(5).image_id) == 2
  again = pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1, num_epochs=1)
  _assert_same(batches, list(again))
  assert again.get_state()['num_skipped'] == 2


def test_eval_dataset_whole_images_with_ids(coco_sample_dir):
  c = config_lib.load_config(REPO / 'configs' / 'tiny.py', [
      f'dataset.test_annotations={coco_sample_dir / "test_coco.json"}',
      f'dataset.test_images={coco_sample_dir}'])
  examples = list(pipeline.make_eval_dataset(c, 'val'))
  ann = json.loads((coco_sample_dir / 'test_coco.json').read_text())
  assert [e['image_id'] for e in examples] == [im['id'] for im in ann['images']]
  for e, im in zip(examples, ann['images']):
    assert e['image'].dtype == np.uint8 and e['image'].shape == (im['height'], im['width'], 3)


def test_eval_dataset_skips_unreadable_images(damaged_root):
  c = _config(damaged_root)
  with c.unlocked():
    c.dataset.test_split = 'train2017'
  ds = pipeline.make_eval_dataset(c, 'val')
  assert len(list(ds)) == NUM_IMAGES - 2


def test_two_workers_match_in_process_and_resume_across_worker_counts(synth_root):
  c = _config(synth_root, 4)
  reference = _take(pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1), 4)
  it = pipeline.make_train_loader(c, worker_count=2, shard_index=0, shard_count=1)
  try:
    got = _take(it, 2)
    state = it.get_state()
  finally:
    it.close()
  _assert_same(reference[:2], got)
  resumed = pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1)
  resumed.set_state(state)
  _assert_same(reference[2:], _take(resumed, 2))


_WORKER_RUN = '''
import sys
from absl import flags
from higherhrnet_jax import config as config_lib
from higherhrnet_jax.data import pipeline

def main():
  flags.FLAGS.mark_as_parsed()
  c = config_lib.load_config(sys.argv[1], [f'dataset.root={sys.argv[2]}', 'data.input_size=64',
                                           'train.batch_size=2'])
  it = pipeline.make_train_loader(c, worker_count=1, shard_index=0, shard_count=1)
  batches = [next(it) for _ in range(3)]  # held until exit, as the training loop holds its last
  it.close()
  print('batches', len(batches), sorted(batches[-1]))

if __name__ == '__main__':
  main()
'''


def test_worker_run_releases_shared_memory(synth_root, tmp_path):
  """A run with a worker process ends without the resource tracker's leak warning."""
  script = tmp_path / 'worker_run.py'
  script.write_text(_WORKER_RUN)
  run = subprocess.run([sys.executable, str(script), str(REPO / 'configs' / 'tiny.py'),
                        str(synth_root)], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'batches 3' in run.stdout
  assert 'leaked shared_memory' not in run.stderr, run.stderr[-3000:]


_UNCLOSED_RUN = '''
import sys
from higherhrnet_jax import config as config_lib
from higherhrnet_jax.data import pipeline

c = config_lib.load_config(sys.argv[1], [f'dataset.root={sys.argv[2]}', 'data.input_size=64',
                                         'train.batch_size=2'])
it = pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1)
print('keys', sorted(next(it)))  # the iterator is left for the interpreter's teardown
'''


def test_unclosed_in_process_iterator_exits_quietly(synth_root, tmp_path):
  """An iterator garbage-collected at interpreter exit must not print an ignored exception
  (module globals are already gone then; only worker runs have segments to wait for)."""
  script = tmp_path / 'unclosed_run.py'
  script.write_text(_UNCLOSED_RUN)
  run = subprocess.run([sys.executable, str(script), str(REPO / 'configs' / 'tiny.py'),
                        str(synth_root)], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'keys' in run.stdout
  assert 'Exception ignored' not in run.stderr, run.stderr[-3000:]
