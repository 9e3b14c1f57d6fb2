"""A training process killed with SIGKILL and restarted reproduces the uninterrupted losses.

Each run is a real subprocess (`resume_run.py`) on generated batches from a seeded,
checkpointable iterator; checkpoints every 2 steps. The comparison is exact (float bits).
The default variant uses the small stand-in model (fast to compile); the slow variant
uses the tiny HigherHRNet config.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

HERE = pathlib.Path(__file__).parent
REPO = HERE.parent.parent


def _start(workdir, loss_file, steps, model):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu',
             COCO_SAMPLE=str(REPO.parent / 'shared' / 'data' / 'coco_sample'))
  return subprocess.Popen([sys.executable, str(HERE / 'resume_run.py'), str(workdir), str(loss_file),
                           str(steps), model], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _read(loss_file):
  if not loss_file.exists():
    return []
  lines = [line.split() for line in loss_file.read_text().splitlines() if line.strip()]
  return [(int(s), v) for s, v in lines]


def _finish(proc, timeout=300):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def _kill_and_resume(tmp_path, model, steps, kill_after):
  ref_log, run_log = tmp_path / 'ref.txt', tmp_path / 'run.txt'
  ref = _start(tmp_path / 'ref', ref_log, steps, model)
  run = _start(tmp_path / 'run', run_log, steps, model)
  deadline = time.time() + 300
  while not any(s >= kill_after for s, _ in _read(run_log)):
    assert run.poll() is None, run.communicate()[0][-3000:]
    assert time.time() < deadline, 'training subprocess made no progress'
    time.sleep(0.05)
  os.kill(run.pid, signal.SIGKILL)
  run.wait()
  assert run.returncode == -signal.SIGKILL
  killed_at = max(s for s, _ in _read(run_log))
  n_before = len(_read(run_log))
  out = _finish(_start(tmp_path / 'run', run_log, steps, model))
  assert 'resumed from' in out, out[-2000:]
  _finish(ref)
  reference = dict(_read(ref_log))
  assert sorted(reference) == list(range(1, steps + 1))
  logged = _read(run_log)
  resumed = logged[n_before:]
  # The restart continued from a checkpoint, not from scratch, and reached the end.
  assert 1 < resumed[0][0] <= killed_at + 1, (resumed[0], killed_at)
  assert resumed[-1][0] == steps
  for step, loss in logged:  # every logged loss, before and after the kill
    assert loss == reference[step], (step, loss, reference[step])


def test_sigkill_and_restart_reproduce_losses_exactly(tmp_path):
  _kill_and_resume(tmp_path, 'standin', steps=8, kill_after=5)


@pytest.mark.slow  # about a minute: three processes compile the top-down model
def test_sigkill_and_restart_reproduce_losses_exactly_top_down_real_data(tmp_path, coco_sample_dir):
  # The top-down family on real crops: the grain iterator's position resumes with the state.
  _kill_and_resume(tmp_path, 'topdown', steps=8, kill_after=5)


@pytest.mark.slow
def test_sigkill_and_restart_reproduce_losses_exactly_tiny_model(tmp_path):
  _kill_and_resume(tmp_path, 'tiny', steps=8, kill_after=5)


@pytest.mark.slow
def test_sigterm_saves_current_step_and_exits_cleanly(tmp_path):
  loss_log = tmp_path / 'run.txt'
  run = _start(tmp_path / 'run', loss_log, 500, 'standin')
  deadline = time.time() + 300
  while not any(s >= 3 for s, _ in _read(loss_log)):
    assert run.poll() is None and time.time() < deadline
    time.sleep(0.05)
  run.send_signal(signal.SIGTERM)
  out, _ = run.communicate(timeout=120)
  assert run.returncode == 0, out[-3000:]
  assert 'preemption signal' in out
  last = max(s for s, _ in _read(loss_log))
  assert last < 500
  steps = sorted(int(p.name) for p in (tmp_path / 'run' / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps[-1] == last
