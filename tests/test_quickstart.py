"""The README's first command, shortened: data, training, checkpoint, evaluation, pictures."""

import json
import os
import pathlib
import subprocess
import sys

import cv2
import jax
import numpy as np

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert
from higherhrnet_jax.evaluation.coco import STATS_NAMES
from higherhrnet_jax.training import checkpoint

REPO = pathlib.Path(__file__).resolve().parent.parent
SHORT = ['--config.dataset.synthetic.num_train=24', '--config.dataset.synthetic.num_val=3',
         '--config.train.num_steps=3', '--config.train.batch_size=4',
         '--config.train.log_every_steps=1', '--config.train.render_predictions=2',
         '--config.data.num_workers=0']


def _run(args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc.stdout + proc.stderr


def test_quickstart_end_to_end(tmp_path):
  workdir = tmp_path / 'run'
  out = _run(['train.py', '--config=configs/quickstart.py', f'--workdir={workdir}', *SHORT])
  assert 'step 3/3' in out

  # The generated data is in COCO layout, with held-out images.
  val = json.loads((workdir / 'data/annotations/person_keypoints_val2017.json').read_text())
  assert len(val['images']) == 3

  # metrics.json holds the 10 COCO stats and the wall time.
  metrics = json.loads((workdir / 'metrics.json').read_text())
  for name in STATS_NAMES:
    assert -1.0 <= metrics[name] <= 1.0, name
  assert metrics['wall_s'] > 0 and metrics['num_images'] == 3

  # Pictures open; TensorBoard events exist.
  pictures = sorted((workdir / 'eval').glob('pred_*.png'))
  assert len(pictures) == 2
  image = cv2.imread(str(pictures[0]))
  assert image is not None and image.shape == (128, 128, 3)
  assert list((workdir / 'tensorboard').rglob('events.out.tfevents.*'))

  # The checkpoint restores into the model's variable structure.
  config = config_lib.load_config('configs/quickstart.py')
  restored = checkpoint.restore_variables(workdir)
  expected = convert.abstract_variables(config.model)
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)))
  assert all(np.isfinite(a).all() for a in jax.tree.leaves(restored))

  # eval.py evaluates the run directory on the same split.
  out = _run(['eval.py', '--config=configs/quickstart.py', f'--checkpoint={workdir}',
              f'--config.dataset.root={workdir / "data"}', f'--output={tmp_path / "eval"}',
              '--render=1'])
  again = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
  assert set(STATS_NAMES) <= set(again) and again['num_images'] == 3
  assert 'AP' in out and 'grouping' in out
