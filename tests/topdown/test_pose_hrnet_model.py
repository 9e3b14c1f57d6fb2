"""The top-down PoseHRNet vs the official `PoseHighResolutionNet` (fixtures, README sections 3-5, 10).

Tolerances: eval outputs and features within 1e-4 of max |ref| (README section 10
suggests atol/rtol 1e-4; the observed float32 kernel noise is ~1e-5 of an output of max
~8); BatchNorm running statistics after a train-mode forward atol 1e-5 (observed 1.1e-6).
Checkpoints: the key set, shapes and values round-trip bit for bit (pure relabelling and
transposition).
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert, models, summary
from official_recipe import recipe_state_dict

REPO = pathlib.Path(__file__).resolve().parents[2]
REL_TOL = 1e-4


def rel_err(ours, ref) -> float:
  return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def nhwc(a):
  return a.transpose(0, 2, 3, 1)


def _config(name):
  return config_lib.load_config(REPO / 'configs' / name)


@pytest.fixture(scope='module')
def tiny(topdown_fixtures_dir):
  cfg = _config('coco/hrnet_tiny.py')
  variables = convert.load_official(topdown_fixtures_dir / 'tiny_state_dict.pth', cfg.model)
  return cfg, models.build(cfg.model), variables


@pytest.mark.parametrize('config_name,keys', [
    ('coco/hrnet_w32_256x192.py', 'w32_256x192_keys.json'),
    ('coco/hrnet_w48_384x288.py', 'w48_384x288_keys.json'),
    ('coco/hrnet_tiny.py', 'tiny_keys.json'),
    ('mpii/hrnet_w32_256x256.py', 'mpii_w32_256x256_keys.json'),
])
def test_state_dict_layout_and_parameter_count(topdown_fixtures_dir, config_name, keys):
  ref = json.loads((topdown_fixtures_dir / keys).read_text())
  cfg = _config(config_name)
  ours = convert.to_official(models.init_variables(models.build(cfg.model)))
  ref_shapes = {k: tuple(shape) for k, shape, _ in ref['state_dict']}
  assert {k: tuple(np.shape(v)) for k, v in ours.items()} == ref_shapes
  trainable = sum(int(np.prod(s)) for k, s in ref_shapes.items()
                  if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
  assert trainable == ref['num_parameters']
  assert tuple(cfg.data.input_size) == tuple(ref['MODEL.IMAGE_SIZE'][::-1])
  assert cfg.data.sigma == ref['MODEL.SIGMA']


def test_checkpoint_round_trip_is_exact(topdown_fixtures_dir, tiny):
  cfg, _, variables = tiny
  with np.load(topdown_fixtures_dir / 'tiny_state_dict.npz') as ref:
    back = convert.to_official(variables)
    assert sorted(back) == sorted(ref.files)
    for k in ref.files:
      np.testing.assert_array_equal(back[k], ref[k], err_msg=k)


def test_pose_checkpoint_is_told_by_shape_not_key_name(topdown_fixtures_dir):
  state = convert.read_state_dict(topdown_fixtures_dir / 'tiny_state_dict.npz')
  assert convert.is_pose_checkpoint(state)
  # An ImageNet classification state dict has `final_layer.*` too: a 1x1 conv from the
  # 1024-channel classification head to 2048 channels (official hrnet_w*-*.pth).
  imagenet = {k: v for k, v in state.items() if not k.startswith('final_layer.')}
  imagenet['final_layer.weight'] = np.zeros((2048, 1024, 1, 1), np.float32)
  imagenet['final_layer.bias'] = np.zeros((2048,), np.float32)
  assert not convert.is_pose_checkpoint(imagenet)
  backbone_only = {k: v for k, v in state.items() if not k.startswith('final_layer.')}
  assert not convert.is_pose_checkpoint(backbone_only)


def test_tiny_eval_outputs_and_features(tiny, topdown_fixtures_dir):
  _, model, variables = tiny
  ref = np.load(topdown_fixtures_dir / 'tiny_eval.npz')
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['intermediates']))
  output, state = apply(variables, nhwc(ref['input']))
  inter = state['intermediates']['backbone']
  ours = {'output': output, 'feat/stem': inter['stem'][0], 'feat/layer1': None,
          'feat/stage4.0': inter['stage4'][0][0]}
  for stage, n in (('stage2', 2), ('stage3', 3)):
    for i in range(n):
      ours[f'feat/{stage}.{i}'] = inter[stage][0][i]
  assert sorted(ours) == sorted(k for k in ref.files if k != 'input')
  del ours['feat/layer1']  # not sown: layer1 is checked through every later feature
  assert output.shape == (2, 32, 24, 17)
  for name, value in ours.items():
    assert value.shape == nhwc(ref[name]).shape, name
    assert rel_err(value, nhwc(ref[name])) < REL_TOL, name


def test_tiny_train_outputs_and_running_stats(tiny, topdown_fixtures_dir):
  _, model, variables = tiny
  ref = np.load(topdown_fixtures_dir / 'tiny_train.npz')
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  output, new_state = apply(variables, nhwc(ref['input']))
  assert rel_err(output, nhwc(ref['output'])) < REL_TOL
  official = convert.to_official({'params': variables['params'], **new_state})
  bn_after = [k for k in ref.files if k.startswith('bn_after/')]
  assert len(bn_after) == 98
  for k in bn_after:
    np.testing.assert_allclose(official[k[len('bn_after/'):]], ref[k], rtol=0, atol=1e-5, err_msg=k)


@pytest.mark.parametrize('config_name,keys,fixture', [
    ('coco/hrnet_w32_256x192.py', 'w32_256x192_keys.json', 'w32_eval.npz'),
    ('coco/hrnet_w48_384x288.py', 'w48_384x288_keys.json', 'w48_eval.npz'),
])
def test_full_size_eval_outputs(topdown_fixtures_dir, config_name, keys, fixture):
  cfg = _config(config_name)
  variables = convert.load_official(recipe_state_dict(topdown_fixtures_dir / keys), cfg.model)
  ref = np.load(topdown_fixtures_dir / fixture)
  # Op-by-op (no jit): compiling the whole graph on XLA:CPU costs more than running it once.
  output = models.build(cfg.model).apply(variables, nhwc(ref['input']), train=False)
  assert rel_err(output, nhwc(ref['output'])) < REL_TOL


@pytest.mark.parametrize('config_name,macs,gflops', [
    ('coco/hrnet_w32_256x192.py', 7_645_003_776, 7.12),
    ('coco/hrnet_w48_384x288.py', 35_306_606_592, 32.88),
    ('coco/hrnet_tiny.py', 281_432_064, 0.26),
])
def test_summary_reproduces_the_papers_gflops(config_name, macs, gflops):
  cfg = _config(config_name)
  info = summary.summarize(cfg.model, cfg.data.input_size)
  # No transposed convolution: true MACs equal the official weight-numel convention.
  assert info.macs == info.macs_official == macs
  assert round(info.gflops_published, 2) == gflops


def test_imagenet_backbone_initialises_the_top_down_model(topdown_fixtures_dir, tmp_path):
  # An ImageNet classification state dict: the backbone keys plus a classifier whose
  # `final_layer.0.*` (1024 -> 2048 conv) must not be taken for the pose head.
  from higherhrnet_jax import weights

  cfg = _config('coco/hrnet_tiny.py')
  state = dict(np.load(topdown_fixtures_dir / 'tiny_state_dict.npz'))
  imagenet = {k: v for k, v in state.items() if not k.startswith('final_layer.')}
  imagenet['final_layer.0.weight'] = np.ones((2048, 1024, 1, 1), np.float32)
  imagenet['classifier.weight'] = np.ones((1000, 2048), np.float32)
  path = tmp_path / 'imagenet.npz'
  np.savez(path, **imagenet)
  init = models.init_variables(models.build(cfg.model), seed=3)
  with pytest.raises(ValueError, match='no pose head'):
    weights.load(path, cfg.model)
  loaded = weights.load(path, cfg.model, init=init)
  official = convert.to_official(loaded)
  for k in imagenet:
    if k in official and not k.endswith('num_batches_tracked'):
      np.testing.assert_array_equal(official[k], imagenet[k], err_msg=k)
  np.testing.assert_array_equal(loaded['params']['final_layer']['kernel'],
                                init['params']['final_layer']['kernel'])


def test_tiny_eval_in_bfloat16_stays_close(tiny, topdown_fixtures_dir):
  # Not a parity check: bfloat16 compute (float32 parameters) keeps ~3 significant digits,
  # so the output drifts by ~1e-2 of its maximum over the network's depth. Bound: 5e-2.
  cfg, _, variables = tiny
  model = models.build({**cfg.model.to_dict(), 'dtype': 'bfloat16'})
  ref = np.load(topdown_fixtures_dir / 'tiny_eval.npz')
  output = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, nhwc(ref['input']))
  assert output.dtype == np.float32
  assert 1e-4 < rel_err(output, nhwc(ref['output'])) < 5e-2  # bf16 really used, and close
