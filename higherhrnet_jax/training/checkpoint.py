"""Preemption-safe checkpoints with orbax: periodic async saves, last N + best-by-AP, resume.

Layout under the work directory:
  checkpoints/<step>/state  the TrainState (params, batch_stats, opt_state, step, rng, ema)
  checkpoints/<step>/data   every process's data iterator position (grain's handler: one
                            process_<i>-of-<n>.json each), so the resumed run reads exactly
                            the batches the uninterrupted run would have read
  best/<step>/...           the same items for the checkpoint with the best eval AP

orbax writes each checkpoint into a temporary directory and renames it when complete,
so a job killed at any moment leaves either a complete checkpoint or an ignored
temporary one. A checkpoint that is present but unreadable (damaged disk, truncated
copy) is skipped with a warning and the previous one is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

STATE = 'state'
DATA = 'data'


class _Position(grain.DatasetIterator):
  """An iterator position (a JSON-able dict) in the shape grain's checkpoint handler saves.

  The handler writes one `process_<i>-of-<n>.json` per process, so the checkpoint holds
  every process's position, not only the primary host's.
  """

  def __init__(self, state: Any = None):
    super().__init__()
    self.state = state

  def __next__(self):
    raise StopIteration

  def get_state(self) -> Any:
    return self.state

  def set_state(self, state: Any) -> None:
    self.state = state


class Checkpointer:
  """Periodic + best checkpoints of one run.

  Args:
    workdir: run directory (checkpoints go to `workdir/checkpoints` and `workdir/best`).
    keep: number of most recent periodic checkpoints to keep.
    every_steps: save period in train steps (`should_save`); 0 disables periodic saves.
    async_save: write in a background thread (the device-to-host copy still happens
      before `save` returns, so the caller may donate the state right after).
  """

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3, every_steps: int = 1000,
               async_save: bool = True):
    self.workdir = pathlib.Path(workdir).absolute()
    self.every_steps = int(every_steps)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max(1, int(keep)),
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
    )
    # Handlers named up front: the state's metadata is read before its first restore.
    handlers = {STATE: ocp.StandardCheckpointHandler(), DATA: grain.checkpoint.CheckpointHandler()}
    self._manager = ocp.CheckpointManager(
        self.workdir / 'checkpoints', options=options, item_handlers=handlers)
    best_options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        best_fn=lambda metrics: float(metrics['AP']),
        best_mode='max',
        keep_checkpoints_without_metrics=False,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save,
    )
    self._best = ocp.CheckpointManager(
        self.workdir / 'best', options=best_options, item_names=(STATE, DATA))

  @staticmethod
  def _args(state: Any, data_state: Any) -> ocp.args.Composite:
    return ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        DATA: grain.checkpoint.CheckpointSave(_Position(data_state)),
    })

  def save(self, step: int, state: Any, data_state: Any) -> None:
    """Saves unconditionally (e.g. at the end of training)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=self._args(state, data_state), force=True)

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save_best(self, step: int, state: Any, data_state: Any, metrics: dict[str, float]) -> None:
    """Offers an evaluated state; only the best by `metrics['AP']` is kept."""
    if 'AP' not in metrics:
      raise KeyError(f"save_best: evaluation metrics have no 'AP' (got {sorted(metrics)})")
    if step in self._best.all_steps():
      return
    self._best.save(step, args=self._args(state, data_state),
                    metrics={'AP': float(metrics['AP'])}, force=True)

  def reached_preemption(self, step: int) -> bool:
    """True when the cluster announced a preemption (multi-host jobs; all hosts agree)."""
    return self._manager.reached_preemption(step)

  def best_step(self) -> int | None:
    return self._best.best_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore_latest(self, abstract_state: Any) -> tuple[Any, Any, int] | None:
    """Restores the newest readable checkpoint into `abstract_state`'s shardings.

    Args:
      abstract_state: TrainState of `jax.ShapeDtypeStruct`s with shardings.

    Returns:
      `(state, data_state, step)`, or None when no checkpoint can be read.
    """
    self.wait()
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self._restore_state(step, abstract_state)
        jax.block_until_ready(state)
        return state, self._restore_position(step), step
      except Exception as e:  # orbax raises many types for damaged files
        log.warning('checkpoint at step %d in %s is unreadable (%s: %s); trying the previous one',
                    step, self._manager.directory, type(e).__name__, str(e)[:300])
    return None

  def _restore_state(self, step: int, abstract_state: Any) -> Any:
    """The TrainState at `step`, whether or not that run kept the weight average.

    `train.ema_decay` may be switched on or off between runs of one workdir (and states
    saved before the average existed lack the field): the saved average is read only when
    wanted, and a wanted one that was not saved restarts from the restored weights.
    """
    want = bool(abstract_state.ema)
    saved = self._manager.item_metadata(step)[STATE]
    # A saved average is a mapping of arrays; an empty one reads back as a leaf entry.
    has = saved is not None and isinstance(saved.get('ema'), Mapping) and bool(saved['ema'])
    fields = {f.name: getattr(abstract_state, f.name)
              for f in dataclasses.fields(abstract_state) if f.name != 'ema'}
    if has:  # read even when unwanted: orbax restores whole trees only
      fields['ema'] = abstract_state.variables()
    elif saved is not None and 'ema' in saved:
      fields['ema'] = {}
    restored = self._manager.restore(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardRestore(fields)}))[STATE]
    state = abstract_state.replace(**{f: restored[f] for f in fields if f != 'ema'}, ema={})
    if want:
      if not has:
        log.warning('checkpoint %d holds no weight average: it restarts from the restored '
                    'weights', step)
      ema = restored['ema'] if has else jax.tree.map(jnp.copy, state.variables())
      state = state.replace(ema=ema)
    return state

  def _restore_position(self, step: int) -> Any:
    """This process's iterator position, or process 0's when another job size saved it.

    Both iterators' positions depend on the step only, not on the number of processes, so a
    job of another size (elastic restart) resumes from process 0's position.
    """
    folder = pathlib.Path(self._manager.directory) / str(step) / DATA
    mine = folder / f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    if not mine.exists():
      saved = sorted(folder.glob('process_0-of-*.json'))
      if not saved:
        raise FileNotFoundError(f'{folder} holds no data iterator position')
      log.warning('checkpoint %d was saved by a job of another size (%s); every process resumes '
                  "from process 0's data position", step, saved[0].name)
      return json.loads(saved[0].read_text())
    position = _Position()
    self._manager.restore(step, args=ocp.args.Composite(**{
        DATA: grain.checkpoint.CheckpointRestore(position)}))
    return position.state

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()
    self._best.close()


def restore_variables(workdir: str | pathlib.Path, average: bool = True) -> dict:
  """Model variables (`params`, `batch_stats`) of a run, for evaluation and export.

  Takes the best-by-AP checkpoint if the run has one, else the newest readable one, and
  its weight average when the run kept one (`train.ema_decay`), as training evaluated. No
  optimizer or model code is needed: the saved tree is read as plain arrays, whatever
  device layout wrote it (a pod slice's FSDP-sharded run restores on one GPU or CPU).

  Args:
    workdir: the training run directory (or its `checkpoints` / `best` folder).
    average: False reads the current weights even where an average was kept.

  Returns:
    `{'params': ..., 'batch_stats': ...}` as numpy arrays.
  """
  workdir = pathlib.Path(workdir).absolute()
  if workdir.name in ('checkpoints', 'best'):
    workdir = workdir.parent
  for folder in ('best', 'checkpoints'):
    path = workdir / folder
    if not path.is_dir():
      continue
    with ocp.CheckpointManager(path, item_names=(STATE,),
                               item_handlers={STATE: ocp.StandardCheckpointHandler()}) as manager:
      for step in sorted(manager.all_steps(), reverse=True):
        try:
          restored = _restore_on_one_device(manager, step)
        except Exception as e:  # orbax raises many types for damaged files
          log.warning('checkpoint %s/%d is unreadable (%s); trying the previous one', path, step, e)
          continue
        source = restored.get('ema') if average else None
        source = source or restored
        log.info('restored %svariables from %s/%d', 'averaged ' if source is not restored else '',
                 path, step)
        return {'params': jax.device_get(source['params']),
                'batch_stats': jax.device_get(source['batch_stats'])}
  raise FileNotFoundError(f'no readable checkpoint under {workdir} (looked in best/ and checkpoints/)')


def _restore_on_one_device(manager: ocp.CheckpointManager, step: int) -> Any:
  """The saved state tree, every array whole on this process's first device.

  Orbax restores onto the saved sharding unless told otherwise, which fails on any other
  topology; the target built from the saved shapes and dtypes asks for one device instead.
  """
  saved = manager.item_metadata(step)[STATE]
  if saved is None:
    raise ValueError('no state metadata')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), saved)
  return manager.restore(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardRestore(target)}))[STATE]
