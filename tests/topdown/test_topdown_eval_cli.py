"""`eval.py` on a top-down checkpoint: the official tiny run of `eval.json` through the CLI.

The official tiny run evaluated the first 6 detections at 256x192 with the tiny recipe
weights (`tiny_state_dict.pth`): its 10 stats are 0 (random weights) and its 6 records
carry rescored scores that depend on the network output; ours agree within the float32
network noise (README section 10: 5e-5 on heatmap values, so a mean of joint maxima times
a box score <= 1 moves by less than 1e-4, unless a joint crosses the 0.2 threshold).
"""

import json
import pathlib
import subprocess
import sys

import numpy as np

from higherhrnet_jax.evaluation import coco as coco_eval

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_eval_py_reproduces_the_official_tiny_run(topdown_fixtures_dir, coco_sample_dir, tmp_path):
  detections = json.loads((topdown_fixtures_dir / 'detections.json').read_text())
  first6 = [d for d in detections if d['category_id'] == 1][:6]
  (tmp_path / 'dets.json').write_text(json.dumps(first6))
  out = tmp_path / 'eval'
  run = subprocess.run([
      sys.executable, 'eval.py', '--config=configs/coco/hrnet_tiny.py',
      f'--checkpoint={topdown_fixtures_dir / "tiny_state_dict.pth"}', f'--output={out}',
      '--config.data.input_size=(256, 192)', f'--config.test.person_boxes={tmp_path / "dets.json"}',
      f'--config.dataset.test_annotations={coco_sample_dir / "test_coco.json"}',
      f'--config.dataset.test_images={coco_sample_dir}'], cwd=REPO, capture_output=True,
      text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'crop' in run.stdout and 'network' in run.stdout  # the per-stage times line
  official = json.loads((topdown_fixtures_dir / 'eval.json').read_text())['tiny']
  metrics = json.loads((out / 'metrics.json').read_text())
  assert [metrics[k] for k in coco_eval.STATS_NAMES] == official['stats']
  ours = json.loads((out / 'results.json').read_text())
  assert len(ours) == len(official['results_records']) == 6
  by_image = lambda rs: {i: sorted(r['score'] for r in rs if r['image_id'] == i) for i in (785, 40083)}
  for image_id, scores in by_image(ours).items():
    np.testing.assert_allclose(scores, by_image(official['results_records'])[image_id], atol=1e-4)
