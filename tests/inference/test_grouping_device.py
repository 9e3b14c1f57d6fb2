"""The device-split grouping (dense work jitted, matching on the host) against the official
fixtures and the host path.

Exact throughout: the device computes the same float32 operations in the same order as
the official NumPy code (squares rounded on their own, first maximum in row-major order),
so people, order and scores must be identical, not close.
"""

import numpy as np
import pytest

from grouping_entry_points import MODES  # tests/inference/grouping_entry_points.py
from higherhrnet_jax.config import base_config
from higherhrnet_jax.inference import grouping, grouping_device


@pytest.fixture(scope='module')
def device():
  return grouping_device.DeviceGrouping(grouping.GroupingSpec.from_config(base_config()))


@pytest.mark.parametrize('mode', sorted(MODES))
def test_device_split_parity_all_scenes(grouping_scenes, device, mode):
  adjust, refine = MODES[mode]
  for i, d in enumerate(grouping_scenes):
    poses, scores = device.parse(d['hm'], d['tg'], adjust=adjust, refine=refine)
    np.testing.assert_array_equal(poses, d[f'grouped_{mode}'], err_msg=f'scene {i}')
    np.testing.assert_array_equal(scores, d[f'scores_{mode}'], err_msg=f'scene {i}')


def test_padded_maps_and_one_tag_channel(grouping_scenes, device):
  """Zero padding beyond the valid region (as the predictor's batches) and T = 1 (no flip
  test): the same people as the host path on the crop."""
  spec = device.spec
  for i in (3, 10, 15):
    d = grouping_scenes[i]
    h, w, k = d['hm'].shape
    for tg in (d['tg'], np.ascontiguousarray(d['tg'][..., :1])):
      hm = np.zeros((h + 6, w + 10, k), np.float32)
      tp = np.zeros((h + 6, w + 10, k, tg.shape[3]), np.float32)
      hm[:h, :w], tp[:h, :w] = d['hm'], tg
      ours = device.parse(hm, tp, valid_hw=(h, w))
      ref = grouping.parse(d['hm'], tg, spec)
      np.testing.assert_array_equal(ours[0], ref[0], err_msg=f'scene {i}')
      np.testing.assert_array_equal(ours[1], ref[1], err_msg=f'scene {i}')


def test_tied_maps_keep_the_first_maximum(device):
  """Quantised peaks on a zero background with equal tags: refine's argmax ties everywhere
  and the first pixel in row-major order must win on the device too."""
  rng = np.random.default_rng(7)
  h, w, k = 24, 40, 17
  yy, xx = np.mgrid[0:h, 0:w]
  for people in (1, 4):
    hm = np.zeros((h, w, k), np.float32)
    tg = np.zeros((h, w, k, 2), np.float32)
    for p in range(people):
      for j in rng.choice(k, size=11, replace=False):
        cy, cx = rng.integers(2, h - 2), rng.integers(2, w - 2)
        g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
        hm[..., j] = np.maximum(hm[..., j], np.round(g * 8) / 8)
        tg[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9, j] = 2.0 * (p + 1)
    ours = device.parse(hm, tg)
    ref = grouping.parse(hm, tg, device.spec)
    assert ref[0].shape[0] > 0
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_array_equal(ours[1], ref[1])


@pytest.mark.parametrize('where', ['heatmaps', 'tags'])
def test_non_finite_maps_raise(grouping_scenes, device, where):
  d = grouping_scenes[0]
  hm, tg = d['hm'].copy(), d['tg'].copy()
  (hm if where == 'heatmaps' else tg)[3, 4, 5] = np.nan
  with pytest.raises(ValueError, match='NaN or infinite'):
    device.parse(hm, tg)


_TWO_DEVICES = r'''
import json, sys
import numpy as np
import jax
from higherhrnet_jax import config as config_lib, convert
from higherhrnet_jax.data.coco import decode_image
from higherhrnet_jax.inference.predictor import Predictor
fixtures, sample = sys.argv[1], sys.argv[2]
assert len(jax.devices()) == 2
out = {}
for where in ('host', 'device'):
  config = config_lib.load_config('configs/tiny.py', [f'test.grouping_on={where}'])
  variables = convert.load_official(fixtures + '/tiny_state_dict.npz', config.model)
  predictor = Predictor(config, variables)
  images = [decode_image(p) for p in sorted(__import__('pathlib').Path(sample).glob('*.jpg'))]
  inputs = [predictor.prepare(im) for im in images[:3]]
  out[where] = [(p.poses.tolist(), p.scores.tolist())
                for p in predictor.collect(predictor.dispatch(inputs))]
print(json.dumps({'same': out['host'] == out['device'],
                  'people': [len(s) for _, s in out['host']]}))
'''


def test_device_grouping_on_a_batch_split_over_two_devices(fixtures_dir, coco_sample_dir):
  """Each image is read from the device that holds its part of the batch (three images
  padded to four, two per device): the people equal host grouping's exactly."""
  import json
  import os
  import pathlib
  import subprocess
  import sys
  repo = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  run = subprocess.run([sys.executable, '-c', _TWO_DEVICES, str(fixtures_dir),
                        str(coco_sample_dir)], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=600, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert sum(result['people']) > 0
  assert result['same'] is True


def test_more_people_than_one_scan_call(grouping_scenes):
  """Refine scans people in calls of `chunk` (one program per map shape); with
  max_num_people = 3 (chunk 4) scenes hold more people than one call: same as the host."""
  c = base_config()
  c.data.max_num_people = 3
  spec = grouping.GroupingSpec.from_config(c)
  device = grouping_device.DeviceGrouping(spec)
  assert device.chunk == 4
  most = 0
  for i, d in enumerate(grouping_scenes):
    ours = device.parse(d['hm'], d['tg'])
    ref = grouping.parse(d['hm'], d['tg'], spec)
    most = max(most, len(ref[1]))
    np.testing.assert_array_equal(ours[0], ref[0], err_msg=f'scene {i}')
    np.testing.assert_array_equal(ours[1], ref[1], err_msg=f'scene {i}')
  assert most > 2 * device.chunk, most
