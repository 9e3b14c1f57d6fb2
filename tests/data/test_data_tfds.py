"""TFDS builder (ArrayRecord, no TensorFlow) read back through the grain pipeline."""

import json
import pathlib

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from higherhrnet_jax import config as config_lib  # noqa: E402
from higherhrnet_jax.data import coco  # noqa: E402
from higherhrnet_jax.data import pipeline  # noqa: E402
from higherhrnet_jax.data.tfds import builder as builder_lib  # noqa: E402
from higherhrnet_jax.data.tfds import reader  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]


def _build(manual_dir, data_dir, dataset, annotations, split):
  config = builder_lib.KeypointsConfig(
      name=f'{dataset}_sample', dataset=dataset,
      splits=(builder_lib.SplitFiles(split, annotations, '.', train=True),))
  return builder_lib.build(manual_dir, data_dir, config)


@pytest.mark.parametrize('dataset,annotations', [('coco', 'test_coco.json'),
                                                 ('crowdpose', 'test_crowdpose.json')])
def test_records_equal_the_file_source(dataset, annotations, coco_sample_dir,
                                       crowdpose_sample_dir, tmp_path):
  manual = coco_sample_dir if dataset == 'coco' else crowdpose_sample_dir
  b = _build(manual, tmp_path, dataset, annotations, 'val')
  tsrc = reader.TfdsSource(b.as_data_source()['val'])
  make = coco.coco_source if dataset == 'coco' else coco.crowdpose_source
  fsrc = make(manual / annotations, manual, train=True)
  assert len(tsrc) == len(fsrc)
  by_id = {fsrc.info(i).image_id: i for i in range(len(fsrc))}
  assert sorted(tsrc.image_ids()) == sorted(by_id)
  for i in range(len(tsrc)):
    t = tsrc.train_example(i)
    f = fsrc.train_example(by_id[t['image_id']])
    np.testing.assert_array_equal(t['image'], f['image'])
    np.testing.assert_array_equal(t['joints'], f['joints'])
    np.testing.assert_array_equal(t['mask'], f['mask'])
    assert t['mask'].dtype == bool


def test_scale_aware_sigma_column_matches_the_file_source(coco_sample_dir, tmp_path):
  b = _build(coco_sample_dir, tmp_path, 'coco', 'test_coco.json', 'val')
  tsrc = reader.TfdsSource(b.as_data_source()['val'], scale_aware_sigma=True, base_size=256,
                           base_sigma=2.0)
  fsrc = coco.coco_source(coco_sample_dir / 'test_coco.json', coco_sample_dir,
                          scale_aware_sigma=True, base_size=256, base_sigma=2.0)
  by_id = {fsrc.info(i).image_id: i for i in range(len(fsrc))}
  t = tsrc.train_example(0)
  np.testing.assert_allclose(t['joints'], fsrc.joints(by_id[t['image_id']]), rtol=0, atol=1e-12)


def test_grain_pipeline_reads_the_build(coco_sample_dir, tmp_path):
  b = _build(coco_sample_dir, tmp_path, 'coco', 'test_coco.json', 'val2017')
  c = config_lib.load_config(REPO / 'configs' / 'tiny.py', [
      'data.source=tfds', f'data.tfds_data_dir={b.data_path}', 'dataset.train_split=val2017'])
  it = pipeline.make_train_loader(c, worker_count=0, shard_index=0, shard_count=1)
  batch = next(it)
  assert batch['image'].shape == (2, 128, 128, 3)
  assert np.isfinite(batch['image']).all() and batch['heatmaps_1'].max() > 0.5
  ids = [e['image_id'] for e in pipeline.make_eval_dataset(c, 'val2017')]
  assert sorted(ids) == [785, 40083, 196141, 197388]


def test_missing_build_names_the_directory(tmp_path):
  c = config_lib.load_config(REPO / 'configs' / 'tiny.py', [
      'data.source=tfds', f'data.tfds_data_dir={tmp_path}'])
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    pipeline.make_source(c, 'train')


def test_bottom_up_evaluation_reads_the_build(coco_sample_dir, fixtures_dir, tmp_path):
  # data.source=tfds: the evaluation takes its images from the build (in TFDS order) and
  # scores them against the annotation file, with the results of the file source.
  from higherhrnet_jax import weights
  from higherhrnet_jax.evaluation import coco as coco_eval
  from higherhrnet_jax.evaluation import runner
  from higherhrnet_jax.inference.predictor import Predictor

  b = _build(coco_sample_dir, tmp_path, 'coco', 'test_coco.json', 'val2017')
  common = [f'dataset.test_annotations={coco_sample_dir / "test_coco.json"}',
            f'dataset.test_images={coco_sample_dir}', 'dataset.test_split=val2017',
            'test.refine=False']
  files = config_lib.load_config(REPO / 'configs' / 'tiny.py', common)
  built = config_lib.load_config(REPO / 'configs' / 'tiny.py', common + [
      'data.source=tfds', f'data.tfds_data_dir={b.data_path}'])
  assert isinstance(runner.eval_source(built), reader.TfdsSource)
  predictor = Predictor(files, weights.load(fixtures_dir / 'tiny_state_dict.npz', files.model))
  a = runner.evaluate(predictor, files, out_dir=tmp_path / 'files')
  t = runner.evaluate(predictor, built, out_dir=tmp_path / 'tfds')
  assert a['num_images'] == t['num_images'] == 4 and a['num_people'] == t['num_people'] > 0
  assert [a[k] for k in coco_eval.STATS_NAMES] == [t[k] for k in coco_eval.STATS_NAMES]
  by_image = lambda d: sorted(json.loads((d / 'results.json').read_text()),
                              key=lambda r: (r['image_id'], -r['score'], r['keypoints']))
  assert by_image(tmp_path / 'files') == by_image(tmp_path / 'tfds')
