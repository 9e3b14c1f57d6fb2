"""End to end on real COCO images: training from scratch memorises the sample (AP >= 0.9).

Runs `bench/overfit_coco_sample.py` in a subprocess (its grain loader and XLA state stay
out of the test process). Slow: about 21 minutes on a 2-core CPU.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = REPO / 'bench' / 'overfit_coco_sample.py'

# The target of the real-data proof: COCO AP over the four images' 12 labelled people.
MIN_AP = 0.9
# The run must fit in 30 minutes on a 2-core CPU; allow a shared machine some slack.
TIMEOUT_S = 45 * 60


@pytest.mark.slow
def test_overfit_coco_sample_reaches_ap_0_9(coco_sample_dir, tmp_path):
  cmd = [sys.executable, str(SCRIPT), '--json', f'--data_dir={coco_sample_dir}',
         f'--workdir={tmp_path / "run"}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S,
                        env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert proc.returncode == 0, f'overfit run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
  metrics = json.loads(proc.stdout.strip().splitlines()[-1])
  assert metrics['num_images'] == 4 and metrics['num_skipped_images'] == 0
  assert metrics['AP'] >= MIN_AP, f'AP {metrics["AP"]:.4f} < {MIN_AP}: {metrics}'
  assert (tmp_path / 'run' / 'eval' / 'results.json').is_file()
