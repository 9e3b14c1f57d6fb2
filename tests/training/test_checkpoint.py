"""Checkpointer: keep last N, best by AP, damaged latest falls back, iterator state round trip."""

import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax.training import checkpoint as ckpt_lib
from higherhrnet_jax.training import sharding, state as state_lib


def _state(value):
  return state_lib.TrainState(
      step=jnp.asarray(int(value), jnp.int32),
      params={'w': jnp.full((4, 3), value, jnp.float32)},
      batch_stats={'mean': jnp.full((3,), -value, jnp.float32)},
      opt_state=({'mu': jnp.zeros((4, 3))}, jnp.asarray(7, jnp.int32)),
      rng=jax.random.PRNGKey(int(value)),
  )


def _abstract(state):
  mesh = sharding.make_mesh()
  return state_lib.abstract_state(state, sharding.state_shardings(state, mesh, False))


def test_keeps_last_n_and_restores_latest_with_iterator_state(tmp_path):
  ck = ckpt_lib.Checkpointer(tmp_path, keep=2, every_steps=2)
  for step in range(1, 7):
    if ck.should_save(step):
      ck.save(step, _state(step), {'index': step, 'seed': 0})
  ck.wait()
  assert ck.all_steps() == [4, 6]
  state, data_state, step = ck.restore_latest(_abstract(_state(0)))
  assert step == 6 and data_state == {'index': 6, 'seed': 0}
  np.testing.assert_array_equal(state.params['w'], np.full((4, 3), 6.0))
  np.testing.assert_array_equal(state.rng, jax.random.PRNGKey(6))
  assert int(state.opt_state[1]) == 7
  ck.close()


def test_position_is_saved_per_process_and_another_job_size_restores_process_0s(tmp_path, caplog):
  ck = ckpt_lib.Checkpointer(tmp_path, keep=1, every_steps=0)
  ck.save(3, _state(3), {'step': 3, 'shard_index': 0})
  ck.close()
  folder = pathlib.Path(tmp_path) / 'checkpoints' / '3' / 'data'
  assert sorted(p.name for p in folder.glob('*.json')) == ['process_0-of-1.json']
  # As a 2-process job leaves it (each process writes its own file).
  (folder / 'process_0-of-1.json').rename(folder / 'process_0-of-2.json')
  (folder / 'process_1-of-2.json').write_text(json.dumps({'step': 3, 'shard_index': 1}))
  ck = ckpt_lib.Checkpointer(tmp_path, keep=1, every_steps=0)
  with caplog.at_level(logging.WARNING):
    _, data_state, step = ck.restore_latest(_abstract(_state(0)))
  assert step == 3 and data_state == {'step': 3, 'shard_index': 0}
  assert any('another size' in r.getMessage() for r in caplog.records)
  ck.close()


def test_best_checkpoint_by_ap(tmp_path):
  ck = ckpt_lib.Checkpointer(tmp_path, keep=1, every_steps=0)
  for step, ap in ((10, 0.3), (20, 0.5), (30, 0.4)):
    ck.save_best(step, _state(step), None, {'AP': ap, 'AR': 0.0})
  ck.wait()
  assert ck.best_step() == 20
  with pytest.raises(KeyError, match='AP'):
    ck.save_best(40, _state(40), None, {'AR': 1.0})
  ck.close()
  # Evaluation and export read the best one, not the newest (30).
  best = ckpt_lib.restore_variables(tmp_path)
  np.testing.assert_array_equal(best['params']['w'], np.full((4, 3), 20.0))
  np.testing.assert_array_equal(best['batch_stats']['mean'], np.full((3,), -20.0))


def test_damaged_latest_falls_back_to_previous_with_warning(tmp_path, caplog):
  ck = ckpt_lib.Checkpointer(tmp_path, keep=3, every_steps=1)
  for step in (1, 2):
    if ck.should_save(step):
      ck.save(step, _state(step), {'index': step})
  ck.close()
  damaged = [p for p in (pathlib.Path(tmp_path) / 'checkpoints' / '2' / 'state').rglob('*') if p.is_file()]
  assert damaged
  for p in damaged:
    p.write_bytes(b'\x00garbage' * 3)
  ck = ckpt_lib.Checkpointer(tmp_path, keep=3, every_steps=1)
  with caplog.at_level(logging.WARNING):
    state, data_state, step = ck.restore_latest(_abstract(_state(0)))
  assert step == 1 and data_state == {'index': 1}
  np.testing.assert_array_equal(state.params['w'], np.full((4, 3), 1.0))
  assert any('step 2' in r.getMessage() and 'unreadable' in r.getMessage() for r in caplog.records)
  ck.close()


def test_no_checkpoint_returns_none(tmp_path):
  ck = ckpt_lib.Checkpointer(tmp_path)
  assert ck.restore_latest(_abstract(_state(0))) is None
  ck.close()
