"""Real multi-process training: `train.py` in 2 processes x 2 CPU devices (gloo) against 1 x 4.

Each job is launched as separate OS processes joined by `jax.distributed` through the
command-line flags, exactly as on a pod slice or a SLURM allocation. Comparisons are exact
(float bits): the global batch holds the same images whatever the layout, every cross-device
mean adds in device order (`collectives.ordered_mean`), and every process sizes XLA's
intra-op pool for the whole job, so the two layouts execute the same float operations in
the same order.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jobs  # tests/jobs.py
from higherhrnet_jax.training import checkpoint

HERE = pathlib.Path(__file__).parent
REPO = HERE.parent.parent
STEPS = 6

_CLI_FLAGS = ('--config.data.source=synthetic', '--config.train.batch_size=8',
               '--config.train.log_every_steps=1', '--config.train.checkpoint_every_steps=3',
               '--config.train.eval_every_epochs=-1')


def _launch(workdir, steps, *, processes, devices, extra=(), cli=False, heartbeat_s=None):
  """Starts one job: `processes` OS processes, each with `devices` CPU devices.

  `cli=True` runs `train.py` on the tiny HigherHRNet with the command-line flags; otherwise
  `mp_run.py` runs the same training loop on the stand-in model, which compiles in seconds.
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  env.pop('NPROC', None)
  port = jobs.free_port()
  procs = []
  for i in range(processes):
    if cli:
      cmd = [sys.executable, str(REPO / 'train.py'), f'--config={REPO / "configs/tiny.py"}',
             f'--workdir={workdir}', f'--config.train.num_steps={steps}',
             f'--xla_force_host_platform_device_count={devices}', *_CLI_FLAGS,
             *(f'--config.{e}' for e in extra)]
      if processes > 1:
        cmd += [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={processes}',
                f'--process_id={i}']
      if heartbeat_s is not None:
        cmd.append(f'--heartbeat_timeout_s={heartbeat_s}')
    else:
      assert heartbeat_s is None
      cmd = [sys.executable, str(HERE / 'mp_run.py'), str(workdir), str(steps), str(i),
             str(processes), str(port), str(devices), *extra]
    log = open(pathlib.Path(f'{workdir}.p{i}.log'), 'a')
    procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
  return procs


def _output(workdir, i=0) -> str:
  return pathlib.Path(f'{workdir}.p{i}.log').read_text()


def _wait(procs, workdir, timeout=400):
  deadline = time.time() + timeout
  for i, p in enumerate(procs):
    try:
      p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail(f'process {i} still running after {timeout} s:\n{_output(workdir, i)[-3000:]}')
    assert p.returncode == 0, f'process {i} exited {p.returncode}:\n{_output(workdir, i)[-3000:]}'


def _run(workdir, steps, **kw):
  _wait(_launch(workdir, steps, **kw), workdir)


def _log(workdir):
  """train_log.jsonl without the wall-clock field, by step."""
  lines = (pathlib.Path(workdir) / 'train_log.jsonl').read_text().splitlines()
  rows = [json.loads(line) for line in lines]
  return {r['step']: {k: v for k, v in r.items() if k != 'images_per_s'} for r in rows}


def _assert_same_run(ref, run):
  ref_log, run_log = _log(ref), _log(run)
  assert sorted(ref_log) == list(range(1, STEPS + 1)), sorted(ref_log)
  assert run_log == ref_log  # every step's loss terms, grad norm and lr, as float bits
  a, b = checkpoint.restore_variables(ref), checkpoint.restore_variables(run)
  leaves_a, leaves_b = _flat(a), _flat(b)
  assert leaves_a.keys() == leaves_b.keys()
  for k in leaves_a:
    np.testing.assert_array_equal(leaves_a[k], leaves_b[k], err_msg=k)


def _flat(tree, prefix=''):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}/{k}'))
    return out
  return {prefix: np.asarray(tree)}


@pytest.fixture(scope='module')
def reference_1x4(tmp_path_factory):
  """The single-process run every multi-process layout must reproduce (stand-in model)."""
  workdir = tmp_path_factory.mktemp('mp') / 'ref'
  _run(workdir, STEPS, processes=1, devices=4)
  return workdir


@pytest.fixture(scope='module')
def cli_reference_1x4(tmp_path_factory):
  """The same through `train.py` on the tiny HigherHRNet."""
  workdir = tmp_path_factory.mktemp('mp_cli') / 'ref'
  _run(workdir, STEPS, processes=1, devices=4, cli=True)
  return workdir


def _stop_at_3_and_resume(run, **kw):
  _run(run, 3, processes=2, devices=2, **kw)
  # Both processes saved their own data-iterator position into the shared checkpoint.
  data = run / 'checkpoints' / '3' / 'data'
  assert sorted(p.name for p in data.glob('process_*.json')) == ['process_0-of-2.json',
                                                         'process_1-of-2.json']
  _run(run, STEPS, processes=2, devices=2, **kw)  # a new job: resumes at step 3
  assert 'resumed from' in _output(run), _output(run)[-2000:]
  assert '4 devices in 2 process(es)' in _output(run), _output(run)[-2000:]


def test_two_processes_match_one_and_resume_exactly(reference_1x4, tmp_path):
  _stop_at_3_and_resume(tmp_path / 'run')
  _assert_same_run(reference_1x4, tmp_path / 'run')


@pytest.mark.slow  # two jobs, 20 s
def test_a_job_of_another_size_continues_the_same_run(reference_1x4, tmp_path):
  # Checkpointed by 2 processes, resumed by 1 process with all 4 devices: the state is
  # restored onto the new layout and the data position is counted in global batches.
  run = tmp_path / 'run'
  _run(run, 3, processes=2, devices=2)
  _run(run, STEPS, processes=1, devices=4)
  assert 'resumed from' in _output(run)
  _assert_same_run(reference_1x4, run)


@pytest.mark.slow  # three jobs, 30 s
def test_sharded_parameters_and_per_device_batch_norm_match_one_process(tmp_path):
  # FSDP (parameters and optimizer state split over the 4 devices, which now span 2
  # processes) and the official per-device BatchNorm statistics: still one float program.
  extra = ('train.shard_params=True', 'train.per_device_batch_norm=True')
  ref, run = tmp_path / 'ref', tmp_path / 'run'
  _run(ref, STEPS, processes=1, devices=4, extra=extra)
  _stop_at_3_and_resume(run, extra=extra)
  _assert_same_run(ref, run)


@pytest.mark.slow  # three jobs, 30 s
def test_coco_sample_two_processes_match_one_process(tmp_path, coco_sample_dir):
  # Real images through the grain pipeline: each process decodes and augments its own
  # block of every global batch (4 images: 1 per device).
  extra = ('data.source=auto', f'dataset.train_annotations={coco_sample_dir / "test_coco.json"}',
           f'dataset.train_images={coco_sample_dir}', 'data.num_workers=0',
           'train.batch_size=4')
  ref, run = tmp_path / 'ref', tmp_path / 'run'
  _run(ref, STEPS, processes=1, devices=4, extra=extra)
  _stop_at_3_and_resume(run, extra=extra)
  _assert_same_run(ref, run)


@pytest.mark.slow  # three jobs compiling the tiny HigherHRNet: about 2 minutes
def test_train_cli_two_processes_match_one_and_resume_exactly(cli_reference_1x4, tmp_path):
  _stop_at_3_and_resume(tmp_path / 'run', cli=True)
  _assert_same_run(cli_reference_1x4, tmp_path / 'run')


def _wait_for(condition, procs, workdir, timeout=300):
  deadline = time.time() + timeout
  while not condition():
    for i, p in enumerate(procs):
      assert p.poll() is None, f'process {i} ended early:\n{_output(workdir, i)[-3000:]}'
    assert time.time() < deadline, 'no training progress'
    time.sleep(0.05)


def _logged_step(workdir) -> int:
  log = pathlib.Path(workdir) / 'train_log.jsonl'
  lines = log.read_text().splitlines() if log.exists() else []
  return max((json.loads(line)['step'] for line in lines if line.strip()), default=0)


@pytest.mark.slow  # four jobs
def test_sigterm_and_sigkill_then_relaunch_reproduce_the_run(cli_reference_1x4, tmp_path):
  # Preemption: the scheduler sends SIGTERM to every process; JAX's preemption sync point
  # makes them save the same step, and both exit cleanly.
  run = tmp_path / 'term'
  procs = _launch(run, STEPS, processes=2, devices=2, cli=True)
  _wait_for(lambda: _logged_step(run) >= 1, procs, run)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  _wait(procs, run, timeout=120)
  assert 'preemption signal: saved step' in _output(run), _output(run)[-2000:]
  _run(run, STEPS, processes=2, devices=2, cli=True)
  assert 'resumed from' in _output(run)
  _assert_same_run(cli_reference_1x4, run)

  # A host dies: the survivor's next collective fails and JAX's heartbeat ends the process
  # in bounded time instead of leaving it waiting for a peer that will never answer.
  run = tmp_path / 'kill'
  procs = _launch(run, STEPS, processes=2, devices=2, cli=True, heartbeat_s=10)
  _wait_for(lambda: _logged_step(run) >= 4 and (run / 'checkpoints' / '3').is_dir(), procs, run)
  procs[1].kill()
  try:
    procs[0].wait(timeout=60)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail('the surviving process was still running 60 s after its peer was killed')
  assert procs[0].returncode != 0, _output(run)[-2000:]
  # What it says: our hint at the failed collective, or JAX's heartbeat verdict.
  said = _output(run)
  assert ('a collective with the other processes failed' in said
          or 'heartbeat timeout' in said), said[-3000:]
  # Relaunched, the job continues from step 3 and reproduces the reference bit for bit.
  _run(run, STEPS, processes=2, devices=2, cli=True)
  assert 'resumed from' in _output(run)
  _assert_same_run(cli_reference_1x4, run)
