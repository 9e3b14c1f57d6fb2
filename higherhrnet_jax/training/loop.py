"""The training loop: init or resume, step, log, evaluate, checkpoint.

`train(config, workdir)` is all `train.py` calls. Re-running the same command resumes
from the newest readable checkpoint in `workdir`, including the data iterator position,
so a preempted job continues with exactly the losses it would have produced.
"""

from __future__ import annotations

import json
import logging as std_logging
import math
import pathlib
import signal
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from higherhrnet_jax import distributed
from higherhrnet_jax.data import pipeline
from higherhrnet_jax.training import checkpoint as ckpt_lib, logging as log_lib, optim
from higherhrnet_jax.training import sharding as sharding_lib, state as state_lib, step as step_lib

log = log_lib.log


class CheckpointableIterator(Protocol):
  """What the loop needs from the data: batches plus a grain-style checkpointable position."""

  def __next__(self) -> Mapping[str, np.ndarray]: ...

  def get_state(self) -> Any: ...

  def set_state(self, state: Any) -> None: ...


DataFn = Callable[[ml_collections.ConfigDict, int], tuple[CheckpointableIterator, int]]
EvaluateFn = Callable[[Mapping[str, Any]], Mapping[str, float]]
StepHook = Callable[[int, Mapping[str, float]], None]


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN/inf; the message names the step and the last good checkpoint."""


def make_train_data(config: ml_collections.ConfigDict, local_batch_size: int
                    ) -> tuple[CheckpointableIterator, int]:
  """The loop's only data dependency: this host's batch iterator and the epoch size.

  `data/` owns every source (`pipeline.make_train_data`); `local_batch_size` is implied by
  the config and the process count, and is part of the signature for custom `data_fn`s.
  """
  del local_batch_size
  return pipeline.make_train_data(config, jax.process_index(), jax.process_count())


# Keys of a training batch that go to the device, per family (anything else, e.g. image ids,
# stays on the host); the first ones are required.
_BATCH_KEYS = {
    'higher_hrnet': (('image', 'heatmaps_0', 'masks_0', 'joints_0'), ('heatmaps_', 'masks_', 'joints_')),
    'pose_hrnet': (('image', 'target', 'target_weight'), ()),
}


def device_batch(batch: Mapping[str, np.ndarray], family: str = 'higher_hrnet') -> dict[str, np.ndarray]:
  required, prefixes = _BATCH_KEYS[family]
  missing = [k for k in required if k not in batch]
  if missing:
    raise KeyError(f'training batch lacks {missing} (has {sorted(batch)})')
  return {k: v for k, v in batch.items() if k in required or (prefixes and k.startswith(prefixes))}


def _initial_variables(config: ml_collections.ConfigDict, state: state_lib.TrainState) -> dict | None:
  """Pretrained variables from `config.model.pretrained`, or None (official random init)."""
  if not config.model.pretrained:
    return None
  from higherhrnet_jax import weights  # pylint: disable=g-import-not-at-top

  current = distributed.fetch(state.variables())
  return weights.load(config.model.pretrained, config.model, init=current,
                      backbone_layers=config.model.pretrained_layers)


class _TermFlag:
  """Turns SIGTERM (how schedulers announce preemption) into a flag the loop polls.

  Only in single-process jobs: with several processes each would see the signal at a
  different step, so there JAX's distributed runtime catches SIGTERM and its preemption sync
  point (`Checkpointer.reached_preemption`) names one step at which every process saves.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())

  def is_set(self) -> bool:
    return self._event.is_set()

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _setup_logging(workdir: pathlib.Path) -> None:
  level = std_logging.INFO if log_lib.is_chief() else std_logging.WARNING
  log.setLevel(level)
  if not log.handlers:
    log.propagate = False
    handler = std_logging.StreamHandler()
    handler.setFormatter(std_logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
    log.addHandler(handler)
  if log_lib.is_chief():
    workdir.mkdir(parents=True, exist_ok=True)


EVAL_FAILURES = 'eval_failures.jsonl'
TRAIN_LOG = 'train_log.jsonl'


def _evaluate(evaluate_fn: EvaluateFn, state: state_lib.TrainState, step: int,
              workdir: pathlib.Path) -> dict | None:
  """Runs the evaluator; a failure is logged and appended to `<workdir>/eval_failures.jsonl`.

  Evaluation reads the weights only, so its failure (bad annotations, a grouping error)
  must not end a training job that may have epochs to go; the step is saved already.
  """
  try:
    # Host copies: the evaluator runs on this process's devices, not the training mesh.
    return dict(evaluate_fn(distributed.fetch(state.eval_variables())))
  except Exception as e:  # pylint: disable=broad-except
    log.exception('evaluation at step %d failed; training goes on', step)
    if log_lib.is_chief():
      with open(workdir / EVAL_FAILURES, 'a') as f:
        f.write(json.dumps({'step': step, 'error': f'{type(e).__name__}: {e}',
                            'traceback': traceback.format_exc()}) + '\n')
    return None


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    *,
    model: nn.Module | None = None,
    data_fn: DataFn | None = None,
    evaluate_fn: EvaluateFn | None = None,
    step_hooks: Sequence[StepHook] = (),
    mesh: jax.sharding.Mesh | None = None,
) -> state_lib.TrainState:
  """Trains (or resumes training) until `train.num_steps` / `train.end_epoch`.

  Args:
    config: full, validated config.
    workdir: checkpoints, TensorBoard events and the config copy go here.
    model: defaults to `models.build(config.model)`.
    data_fn: defaults to `make_train_data`.
    evaluate_fn: `evaluate_fn({'params', 'batch_stats'}) -> {'AP': ..., ...}`, called every
      `train.eval_every_epochs` epochs and at the end (after that step is saved) with the
      weight average when one is kept; AP selects the best checkpoint. An exception in it
      is recorded in `eval_failures.jsonl`, not raised.
    step_hooks: `hook(step, metrics)` after every step (host floats), e.g. for tests.
    mesh: defaults to all devices of all processes.

  Returns:
    The final TrainState.

  Raises:
    NonFiniteLossError: the loss became NaN/inf (nothing is saved after that step).
  """
  workdir = pathlib.Path(workdir).absolute()
  _setup_logging(workdir)
  t = config.train
  mesh = mesh or sharding_lib.make_mesh()
  sharding_lib.check_batch_size(t.batch_size, mesh)
  if model is None:
    from higherhrnet_jax import models  # pylint: disable=g-import-not-at-top

    model = models.build(config.model)

  host_batch = pipeline.host_batch_size(t.batch_size, jax.process_count())
  data_iter, num_samples = (data_fn or make_train_data)(config, host_batch)
  updates_per_epoch = optim.updates_per_epoch(config, num_samples)
  accum = int(t.grad_accum_steps)
  steps_per_epoch = round(updates_per_epoch * accum)  # train_step calls: the loader's epoch
  total_steps = optim.total_updates(config, updates_per_epoch) * accum
  tx, schedule = optim.make_optimizer(config, updates_per_epoch)

  size = config.data.input_size  # HigherHRNet: a square side; top-down: (height, width)
  h, w = (size, size) if isinstance(size, int) else size
  state, shardings = state_lib.create_train_state(
      model, tx, jax.random.PRNGKey(config.seed), (1, h, w, 3), mesh, t.shard_params,
      ema=t.ema_decay > 0)
  train_step = step_lib.make_train_step(model, tx, config, mesh, shardings, schedule)

  ckpt = ckpt_lib.Checkpointer(workdir, keep=t.keep_checkpoints, every_steps=t.checkpoint_every_steps)
  restored = ckpt.restore_latest(state_lib.abstract_state(state, shardings))
  if restored is not None:
    state, data_state, start = restored
    if data_state is not None:
      data_iter.set_state(data_state)
    log.info('resumed from %s at step %d', ckpt.workdir / 'checkpoints', start)
  else:
    start = 0
    variables = _initial_variables(config, state)
    if variables is not None:
      state = state.with_variables(jax.device_put(variables['params'], shardings.params),
                                   jax.device_put(variables['batch_stats'], shardings.batch_stats))
    if log_lib.is_chief():
      (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  log.info('%d parameters, global batch %d (x%d accumulation), %d steps/epoch, %d steps, '
           '%d devices in %d process(es)', state_lib.param_count(state.params), t.batch_size,
           accum, steps_per_epoch, total_steps, mesh.size, jax.process_count())

  writer = log_lib.MetricWriter(workdir / 'tensorboard')
  train_log = log_lib.TrainLog(workdir / TRAIN_LOG, start)
  progress = log_lib.Progress(total_steps, t.batch_size)
  eval_every = int(t.eval_every_epochs) * steps_per_epoch
  step = start
  progress.start(step)
  term = _TermFlag()
  try:
    checked = step  # losses up to here were finite

    def host_metrics(metrics) -> dict[str, float]:
      """Fetches the step's metrics and stops on a non-finite loss since the last fetch."""
      nonlocal checked
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not math.isfinite(metrics['loss']):
        ckpt.wait()
        good = max(ckpt.all_steps(), default=None)
        where = f'at step {step}' if step == checked + 1 else f'within steps {checked + 1}-{step}'
        raise NonFiniteLossError(
            f'non-finite loss {metrics["loss"]} {where} (terms: {metrics}); training '
            f'stopped. Last good checkpoint: '
            + (f'step {good} in {ckpt.workdir / "checkpoints"}' if good is not None else 'none'))
      checked = step
      return metrics

    while step < total_steps:
      batch = sharding_lib.global_batch(device_batch(next(data_iter), config.model.name), mesh)
      state, metrics = train_step(state, batch, step_lib.step_rng(state.rng, step))
      step += 1
      is_log_step = step % t.log_every_steps == 0 or step == total_steps
      is_eval_step = evaluate_fn is not None and (
          (eval_every and step % eval_every == 0) or step == total_steps)
      saves = ckpt.should_save(step) or step == total_steps  # the last step before its eval
      preempted = term.is_set() or ckpt.reached_preemption(step)
      # Metrics reach the host (a sync that stalls dispatch on accelerators) only when they
      # are logged, before a save or an evaluation, and when hooks ask for every step. A
      # non-finite loss makes the parameters non-finite, so the next fetch sees it.
      if is_log_step or saves or is_eval_step or preempted or step_hooks:
        metrics = host_metrics(metrics)
      for hook in step_hooks:
        hook(step, metrics)
      if is_log_step:
        speed = progress.update(step)
        log.info(progress.line(step, step / steps_per_epoch, metrics, speed))
        writer.scalars(step, {**metrics, **{k: v for k, v in speed.items() if k != 'eta_s'}})
        train_log.write(step, metrics, speed)
      if saves or preempted:
        ckpt.save(step, state, data_iter.get_state())
      if is_eval_step:
        results = _evaluate(evaluate_fn, state, step, workdir)
        if results is not None:
          numbers = {k: float(v) for k, v in results.items()
                     if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
          log.info('eval at step %d: %s', step,
                   json.dumps({k: round(v, 4) for k, v in numbers.items()}))
          writer.scalars(step, numbers, prefix='eval')
          ckpt.save_best(step, state, data_iter.get_state(), results)
      if preempted:
        log.warning('preemption signal: saved step %d, stopping; rerun to resume', step)
        break
  except jax.errors.JaxRuntimeError:
    if jax.process_count() > 1:
      # Most often a peer died (its host failed or was killed): every process of the job
      # stops here or at JAX's heartbeat timeout; relaunching the job resumes.
      log.error('step %d: a collective with the other processes failed; if a process of '
                'the job died, relaunch the whole job to resume from the last checkpoint '
                '(%s)', step + 1, ckpt.workdir / 'checkpoints')
    raise
  finally:
    term.restore()
    ckpt.close()
    writer.close()
    if hasattr(data_iter, 'close'):
      data_iter.close()  # stops loader worker processes
  return state
