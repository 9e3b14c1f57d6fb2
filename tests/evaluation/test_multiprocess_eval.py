"""Evaluation split over 2 processes (gloo, 1 CPU device each) against 1 process.

Each process predicts its contiguous block of the images and the results are gathered in
image order, so the results file, the pictures and every metric must be those of one
process, and every process must return the same metrics (the trainer ranks checkpoints by
them on every process). Each image goes through the same compiled network alone or, top
down, in crop batches padded to one shape, so the records are compared exactly.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import jobs  # tests/jobs.py

HERE = pathlib.Path(__file__).parent
REPO = HERE.parent.parent
TIMES = ('wall_s', 'network_ms', 'aggregation_ms', 'grouping_ms', 'crop_ms', 'compile_s')


def _evaluate(kind, out, processes):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  port = jobs.free_port()
  procs = [subprocess.Popen([sys.executable, str(HERE / 'mp_eval.py'), kind, str(out), str(i),
                             str(processes), str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(processes)]
  for i, p in enumerate(procs):
    try:
      output, _ = p.communicate(timeout=400)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f'{kind}: evaluation process {i} still running after 400 s')
    assert p.returncode == 0, f'{kind} process {i}:\n{output[-3000:]}'
  return [{k: v for k, v in json.loads((out / f'metrics_{i}.json').read_text()).items()
           if k not in TIMES} for i in range(processes)]


def _check(kind, tmp_path, coco_sample_dir):
  one = _evaluate(kind, tmp_path / 'one', 1)[0]
  both = _evaluate(kind, tmp_path / 'two', 2)
  assert both[0] == both[1] == one
  assert one['num_images'] == 4 and one['num_skipped_images'] == 0
  run1, run2 = tmp_path / 'one' / 'run', tmp_path / 'two' / 'run'
  files = sorted(p.name for p in run1.iterdir())
  assert sorted(p.name for p in run2.iterdir()) == files
  for name in files:
    if name.endswith('.json') and name != 'metrics.json':
      assert json.loads((run1 / name).read_text()) == json.loads((run2 / name).read_text()), name
    elif name.endswith('.mat'):
      import scipy.io
      np.testing.assert_array_equal(scipy.io.loadmat(run1 / name)['preds'],
                                    scipy.io.loadmat(run2 / name)['preds'])
  return one, files


def test_top_down_coco_two_processes_equal_one(tmp_path, topdown_fixtures_dir, coco_sample_dir):
  one, files = _check('top_down', tmp_path, coco_sample_dir)
  assert one['num_people'] == 12  # ground-truth boxes of the sample
  assert files == ['metrics.json', 'pred_40083.png', 'pred_785.png', 'results.json']


@pytest.mark.slow  # 20 s
def test_bottom_up_two_processes_equal_one(tmp_path, fixtures_dir, coco_sample_dir):
  one, files = _check('bottom_up', tmp_path, coco_sample_dir)
  assert one['num_people'] > 0
  assert files == ['metrics.json', 'pred_40083.png', 'pred_785.png', 'results.json']


@pytest.mark.slow  # about a minute
def test_mpii_two_processes_equal_one(tmp_path, topdown_fixtures_dir, coco_sample_dir):
  one, files = _check('mpii', tmp_path, coco_sample_dir)
  assert one['num_people'] == 13 and 0 <= one['PCKh'] <= 100
  assert files == ['metrics.json', 'pred.mat']
