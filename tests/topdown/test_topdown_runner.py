"""The whole top-down evaluation (boxes -> crops -> network -> joints -> NMS -> COCOeval) vs `eval.json`.

The network is the fixtures' stand-in: each crop the runner makes is matched to the
official crop it reproduces (identical with OpenCV 5.0, a few grey levels apart with other
releases) and answered with the official heatmaps of that crop. Everything else is the
code under test, so the results file must equal the official one record for record and
the 10 stats must agree to 1e-12 (pycocotools on identical input; README section 10).
"""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax.evaluation import coco as coco_eval
from higherhrnet_jax.topdown import predictor as predictor_lib
from higherhrnet_jax.topdown import runner

REPO = pathlib.Path(__file__).resolve().parents[2]


def _nhwc(a):
  return a.transpose(0, 2, 3, 1)


@pytest.fixture(scope='module')
def official(topdown_fixtures_dir):
  return (dict(np.load(topdown_fixtures_dir / 'test_pipeline.npz')),
          json.loads((topdown_fixtures_dir / 'eval.json').read_text()))


def _config(topdown_fixtures_dir, coco_sample_dir, boxes):
  return config_lib.load_config(REPO / 'configs' / 'coco' / 'hrnet_w32_256x192.py', [
      f'dataset.test_annotations={coco_sample_dir / "test_coco.json"}',
      f'dataset.test_images={coco_sample_dir}', f'test.person_boxes={boxes}', 'test.batch_size=4'])


class StandinPredictor(predictor_lib.TopDownPredictor):
  """The runner's predictor with the network replaced by the official stand-in heatmaps."""

  def __init__(self, config, crops, plain, flipped):
    self.config = config
    self.spec = predictor_lib.DecodeSpec.from_config(config)
    self.mesh = None
    self.variables = None
    crops = crops.astype(np.int32)
    plain, flipped = _nhwc(plain), _nhwc(flipped)

    def network(variables, batch):
      batch = np.asarray(batch).astype(np.int32)
      diff = np.abs(batch[:, None] - crops[None]).mean(axis=(2, 3, 4))
      match = diff.argmin(axis=1)
      assert np.all(diff.min(axis=1) < 0.05), diff.min(axis=1)  # the same crop, up to rounding
      normalized = np.asarray(predictor_lib.normalize(jnp.asarray(batch)))

      def apply(v, x):
        mirrored = bool(np.array_equal(np.asarray(x), normalized[:, :, ::-1]))
        return (flipped if mirrored else plain)[match]

      return predictor_lib.heatmaps_and_maxima(apply, self.spec, variables, batch)

    self.network = network
    self._batch_sharding = None

  @property
  def batch_size(self):
    return 4


def test_standin_evaluation_reproduces_the_official_results_and_stats(
    official, topdown_fixtures_dir, coco_sample_dir, tmp_path, monkeypatch):
  ref, ev = official
  cfg = _config(topdown_fixtures_dir, coco_sample_dir, topdown_fixtures_dir / 'detections.json')
  monkeypatch.setattr(predictor_lib.jax, 'device_put', lambda x, s=None: x)
  standin = StandinPredictor(cfg, ref['crop_uint8'], ref['standin_output'],
                             ref['standin_output_flipped'])
  metrics = runner.evaluate(standin, cfg, out_dir=tmp_path, render=1)
  np.testing.assert_allclose([metrics[k] for k in coco_eval.STATS_NAMES],
                             ev['standin']['stats'], rtol=0, atol=1e-12)
  assert metrics['num_people'] == 17 and metrics['num_skipped_images'] == 0
  ours = json.loads((tmp_path / 'results.json').read_text())
  theirs = ev['standin']['results_records']
  assert len(ours) == len(theirs) == 16

  def key(r):
    return (r['image_id'], -r['score'], r['keypoints'][:2])

  for a, b in zip(sorted(ours, key=key), sorted(theirs, key=key)):
    assert a['image_id'] == b['image_id'] and a['category_id'] == b['category_id'] == 1
    assert a['score'] == b['score']
    np.testing.assert_array_equal(a['keypoints'], b['keypoints'])
    np.testing.assert_array_equal(a['center'], b['center'])
    np.testing.assert_array_equal(a['scale'], b['scale'])
  assert (tmp_path / 'metrics.json').is_file()
  assert len(list(tmp_path.glob('pred_*.png'))) == 1


def test_ground_truth_boxes_are_the_default(official, topdown_fixtures_dir, coco_sample_dir):
  ref, _ = official
  cfg = _config(topdown_fixtures_dir, coco_sample_dir, '')
  from higherhrnet_jax.data import coco

  source = coco.source_from_config(cfg, train=False)
  ids, centers, scales, scores = runner.person_boxes(cfg, source, 192 / 256)
  np.testing.assert_array_equal(centers, ref['gt_center'])
  np.testing.assert_array_equal(scales, ref['gt_scale'])
  assert np.all(scores == 1) and len(ids) == 12


def test_detection_file_on_unknown_images_is_refused(topdown_fixtures_dir, coco_sample_dir, tmp_path):
  bad = tmp_path / 'dets.json'
  bad.write_text(json.dumps([{'bbox': [1, 2, 30, 40], 'category_id': 1, 'image_id': 999, 'score': 0.9}]))
  cfg = _config(topdown_fixtures_dir, coco_sample_dir, bad)
  from higherhrnet_jax.data import coco

  with pytest.raises(ValueError, match='person_boxes.*999'):
    runner.person_boxes(cfg, coco.source_from_config(cfg, train=False), 0.75)


def test_mpii_standin_evaluation_reproduces_the_official_pckh(
    topdown_fixtures_dir, coco_sample_dir, tmp_path, monkeypatch):
  # MPII: float64 centres and scales, no rescoring or NMS, PCKh of every valid record
  # (README 16.6); the table must equal the official one to float64 rounding.
  ref = dict(np.load(topdown_fixtures_dir / 'mpii_test_pipeline.npz'))
  annot = topdown_fixtures_dir / 'mpii_annot'
  cfg = config_lib.load_config(REPO / 'configs' / 'mpii' / 'hrnet_w32_256x256.py', [
      f'dataset.test_annotations={annot / "valid.json"}', f'dataset.test_images={coco_sample_dir}',
      'test.batch_size=4'])
  monkeypatch.setattr(predictor_lib.jax, 'device_put', lambda x, s=None: x)
  standin = StandinPredictor(cfg, ref['crop_uint8'], ref['output'], ref['output_flipped'])
  metrics = runner.evaluate(standin, cfg, out_dir=tmp_path)
  from higherhrnet_jax.topdown import mpii

  np.testing.assert_allclose([metrics[k] for k in mpii.VALUE_NAMES], ref['values'], rtol=0, atol=1e-9)
  assert metrics['PCKh'] == metrics['Mean'] and metrics['num_people'] == 13
  import scipy.io

  np.testing.assert_array_equal(scipy.io.loadmat(tmp_path / 'pred.mat')['preds'], ref['pred_mat'])
