"""`python train.py --config ... --workdir ...` trains, and the same command resumes."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent.parent


def _train(workdir, steps, *extra):
  cmd = [sys.executable, str(REPO / 'train.py'), '--config', str(REPO / 'configs' / 'tiny.py'), *extra,
         '--workdir', str(workdir), '--config.data.source=synthetic', '--config.data.input_size=64',
         f'--config.train.num_steps={steps}',
         '--config.train.log_every_steps=1', '--config.train.checkpoint_every_steps=2']
  proc = subprocess.run(cmd, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


@pytest.mark.slow
def test_cli_trains_then_resumes(tmp_path):
  cache = f'--compilation_cache_dir={tmp_path / "xla"}'
  first = _train(tmp_path / 'run', 3, cache)
  assert 'step 3/3' in first and 'resumed' not in first
  assert any((tmp_path / 'xla').iterdir())  # the compiled train step, for the next run
  second = _train(tmp_path / 'run', 5, cache)
  assert 'resumed from' in second and 'at step 3' in second
  assert 'step 4/5' in second and 'step 1/5' not in second


def test_cli_rejects_bad_override(tmp_path):
  cmd = [sys.executable, str(REPO / 'train.py'), '--config', str(REPO / 'configs' / 'tiny.py'),
         '--workdir', str(tmp_path), '--config.data.input_size=100']
  proc = subprocess.run(cmd, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode != 0
  assert 'data.input_size' in proc.stderr


@pytest.mark.parametrize('override, field', [
    ('--config.data.output_size=(16,32)', 'output_size'),  # derived from input_size now
    ('--config.loss.num_stages=2', 'num_stages'),  # derived from model.deconv
])
def test_cli_names_a_field_the_config_does_not_have(tmp_path, override, field):
  cmd = [sys.executable, str(REPO / 'train.py'), '--config', str(REPO / 'configs' / 'tiny.py'),
         '--workdir', str(tmp_path), override]
  proc = subprocess.run(cmd, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode != 0
  assert f'a --config override names {field!r}, which is not a config field' in proc.stderr
  assert 'Traceback' not in proc.stderr
