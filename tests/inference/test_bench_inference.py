"""The inference benchmarks run end to end and check their pipelines against references.

`bench/inference.py` refuses to time a grouping whose output differs from the NumPy +
munkres rendering of the official parser, so a run that completes with
`identical_output: true` is itself a parity check on real images (tiny model, oracle
outputs: the COCO sample's ground truth rendered as a trained network's maps).
"""

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_oracle_run_on_the_tiny_model(tmp_path, coco_sample_dir):
  pytest.importorskip('munkres')
  out = tmp_path / 'inference.json'
  cmd = [sys.executable, str(REPO / 'bench' / 'inference.py'), '--config',
         str(REPO / 'configs' / 'tiny.py'), '--data', str(coco_sample_dir), '--outputs',
         'oracle', '--images', '2', '--baseline-images', '2', '--scales', '1', '--repeats',
         '1', '--out', str(out)]
  run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report['identical_output'] is True
  assert report['images'] == 2 and report['outputs'] == 'oracle'
  assert report['e2e_images_per_s'] > 0
  people = [p['people'] for p in report['runs'][0]['per_image']]
  assert people == [1, 2], people  # the annotated people of the first two sample images
  for key in ('network_ms', 'aggregation_ms', 'grouping_ms', 'baseline_grouping_ms'):
    assert report[key] > 0, key


def test_accelerator_script_runs_on_the_cpu(tmp_path):
  """bench/gpu.py (what bench/gpu.sh runs on a GPU) keeps working on a CPU with the same
  entry point: its evaluation part, where both grouping paths must agree exactly."""
  out = tmp_path / 'gpu.json'
  cmd = [sys.executable, str(REPO / 'bench' / 'gpu.py'), '--quick', '--images', '2', '--skip',
         'forward,train_step', '--out', str(out)]
  run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(out.read_text())
  assert [r['images'] for r in report['evaluation']] == ['coco_sample', 'synthetic_512']
  for row in report['evaluation']:
    assert row['identical_to_other_path'] is True, row
    assert row['images_per_s'] > 0 and row['people_per_image'] > 0
    assert 0 < row['host_cpu_ms_per_image'] <= row['collect_wall_ms_per_image'] * 1.5
