"""`weights.load`: the one priority order for evaluation and training initialisation."""

import jax
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert, models, weights
from higherhrnet_jax.training import checkpoint as ckpt_lib
from higherhrnet_jax.training import state as state_lib


@pytest.fixture(scope='module')
def model_config():
  return config_lib.load_config('configs/tiny.py').model


def _leaves_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_official_checkpoint_gives_the_whole_network(fixtures_dir, model_config):
  got = weights.load(fixtures_dir / 'tiny_state_dict.pth', model_config)
  _leaves_equal(got, convert.load_official(fixtures_dir / 'tiny_state_dict.npz', model_config))


def test_backbone_only_state_dict_keeps_the_head_of_init(fixtures_dir, model_config, tmp_path):
  state = convert.read_state_dict(fixtures_dir / 'tiny_state_dict.npz')
  backbone = {k: v for k, v in state.items()
              if not k.startswith(('final_layers.', 'deconv_layers.'))}
  path = tmp_path / 'backbone.npz'
  np.savez(path, **backbone)
  init = jax.tree.map(np.asarray, models.build(model_config).init(
      jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32), train=False))
  init = {'params': init['params'], 'batch_stats': init['batch_stats']}
  got = weights.load(path, model_config, init=init)
  full = convert.load_official(state, model_config)
  _leaves_equal(got['params']['backbone'], full['params']['backbone'])
  for name in got['params']:
    if name != 'backbone':  # the head is what `init` had
      _leaves_equal(got['params'][name], init['params'][name])
  with pytest.raises(ValueError, match='no pose head'):
    weights.load(path, model_config)


def test_run_directory_gives_its_saved_variables(fixtures_dir, model_config, tmp_path):
  variables = convert.load_official(fixtures_dir / 'tiny_state_dict.npz', model_config)
  state = state_lib.TrainState(step=np.int32(3), params=variables['params'],
                               batch_stats=variables['batch_stats'], opt_state=(),
                               rng=jax.random.PRNGKey(0))
  ck = ckpt_lib.Checkpointer(tmp_path, keep=1, every_steps=0)
  ck.save(3, state, None)
  ck.close()
  _leaves_equal(weights.load(tmp_path, model_config), variables)


def test_missing_source_is_named(model_config, tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere.pth'):
    weights.load(tmp_path / 'nowhere.pth', model_config)
