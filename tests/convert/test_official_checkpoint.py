"""Official checkpoint reading (torch-free), key mapping both ways, and refusal of bad files."""

import collections
import io
import json
import os
import pathlib
import pickle
import sys
import types
import zipfile

import jax
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import convert, models
from higherhrnet_jax.convert import pth

CONFIGS = pathlib.Path(__file__).parents[2] / 'configs'


@pytest.fixture(scope='module')
def tiny_config():
  return config_lib.load_config(CONFIGS / 'tiny.py').model


@pytest.fixture(scope='module')
def reference(fixtures_dir):
  with np.load(fixtures_dir / 'tiny_state_dict.npz') as data:
    return {k: data[k] for k in data.files}


# ------------------------------------------------------------------ a torch-like writer for tests


class _Tensor:
  def __init__(self, array, storage_numel=None):
    self.array = np.ascontiguousarray(array)
    self.storage_numel = self.array.size if storage_numel is None else storage_numel


@pytest.fixture
def fake_torch(monkeypatch):
  """Installs stand-in `torch` modules so pickle can name torch globals while writing."""
  torch = types.ModuleType('torch')
  utils = types.ModuleType('torch._utils')

  def _rebuild_tensor_v2(*args):
    raise AssertionError('never called while writing')

  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  torch._utils = utils
  for name in ('FloatStorage', 'LongStorage'):
    setattr(torch, name, type(name, (), {'__module__': 'torch'}))
  monkeypatch.setitem(sys.modules, 'torch', torch)
  monkeypatch.setitem(sys.modules, 'torch._utils', utils)
  return torch


def write_zip_pth(path, obj, torch) -> None:
  """Writes `obj` (dicts of `_Tensor`) in the torch >= 1.6 zip layout, pickle protocol 2."""
  storages = []

  class Pickler(pickle.Pickler):
    def persistent_id(self, o):
      if isinstance(o, tuple) and len(o) == 2 and o[0] == '__storage__':
        t = o[1]
        cls = torch.FloatStorage if t.array.dtype == np.float32 else torch.LongStorage
        storages.append(t)
        return ('storage', cls, str(len(storages) - 1), 'cpu', t.storage_numel)
      return None

    def reducer_override(self, o):
      if isinstance(o, _Tensor):
        stride = tuple(s // o.array.itemsize for s in o.array.strides)
        return (torch._utils._rebuild_tensor_v2,
                (('__storage__', o), 0, o.array.shape, stride, False, collections.OrderedDict()))
      return NotImplemented

  buf = io.BytesIO()
  Pickler(buf, protocol=2).dump(obj)
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', buf.getvalue())
    zf.writestr('archive/byteorder', 'little')
    for i, t in enumerate(storages):
      zf.writestr(f'archive/data/{i}', t.array.tobytes()[: t.storage_numel * t.array.itemsize])


# A pickle that would call os.system('echo pwned') if a general unpickler loaded it.
MALICIOUS = b'\x80\x02cos\nsystem\nX\x0b\x00\x00\x00echo pwned\x85R.'


def _legacy_header() -> bytes:
  return b''.join(pickle.dumps(v, protocol=2) for v in (
      pth.LEGACY_MAGIC, pth.LEGACY_PROTOCOL, {'protocol_version': 1001, 'little_endian': True}))


# ------------------------------------------------------------------ reading


def test_pth_zip_and_legacy_equal_npz(fixtures_dir, reference):
  order = [k for k, _, _ in json.load(open(fixtures_dir / 'tiny_keys.json'))['state_dict']]
  for name in ('tiny_state_dict.pth', 'tiny_state_dict_legacy.pth'):
    state = convert.load_pth(fixtures_dir / name)
    assert isinstance(state, collections.OrderedDict)
    assert list(state) == order, name
    for k, v in state.items():
      assert v.dtype == reference[k].dtype and v.shape == reference[k].shape, (name, k)
      np.testing.assert_array_equal(v, reference[k], err_msg=f'{name}: {k}')


def test_load_official_sources_agree(fixtures_dir, reference, tiny_config):
  loaded = [convert.load_official(fixtures_dir / name, tiny_config)
            for name in ('tiny_state_dict.pth', 'tiny_state_dict_legacy.pth', 'tiny_state_dict.npz')]
  loaded.append(convert.load_official(reference, tiny_config))
  wrapped = {'state_dict': {f'module.{k}': v for k, v in reference.items()}, 'epoch': 3}
  loaded.append(convert.load_official(wrapped, tiny_config))
  first = jax.tree.leaves(loaded[0])
  for other in loaded[1:]:
    assert jax.tree.structure(other) == jax.tree.structure(loaded[0])
    for a, b in zip(first, jax.tree.leaves(other)):
      np.testing.assert_array_equal(a, b)
  # The tree is exactly the model's.
  model = models.build(tiny_config)
  assert jax.tree.map(np.shape, loaded[0]) == jax.tree.map(np.shape, models.init_variables(model))


def test_round_trip_official_flax_official_is_identity(tmp_path, reference, tiny_config):
  variables = convert.load_official(reference, tiny_config)
  convert.save_official(variables, tmp_path / 'out.npz')
  with np.load(tmp_path / 'out.npz') as data:
    assert sorted(data.files) == sorted(reference)
    for k in data.files:
      assert data[k].dtype == reference[k].dtype, k
      np.testing.assert_array_equal(data[k], reference[k], err_msg=k)


def test_key_mapping_examples(reference, tiny_config):
  variables = convert.load_official(reference, tiny_config)
  p, s = variables['params'], variables['batch_stats']
  np.testing.assert_array_equal(p['backbone']['conv1']['kernel'], reference['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      p['backbone']['stage3_0']['fuse_layers_2']['0_1_0']['kernel'],
      reference['stage3.0.fuse_layers.2.0.1.0.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p['head']['deconv_layers_0_0_0']['transpose_kernel'],
                                reference['deconv_layers.0.0.0.weight'].transpose(2, 3, 0, 1))
  np.testing.assert_array_equal(s['backbone']['transition1']['1_0_1']['var'],
                                reference['transition1.1.0.1.running_var'])
  np.testing.assert_array_equal(p['head']['final_layers_0']['bias'], reference['final_layers.0.bias'])


# ------------------------------------------------------------------ refusing bad checkpoints


def test_missing_unexpected_and_misshaped_keys_are_all_listed(reference, tiny_config):
  bad = dict(reference)
  del bad['layer1.2.bn1.running_var']
  del bad['final_layers.1.bias']
  bad['classifier.weight'] = np.zeros((10, 4), np.float32)
  bad['stage2.0.branches.1.0.conv1.weight'] = np.zeros((16, 16, 1, 1), np.float32)
  with pytest.raises(convert.CheckpointMismatchError) as info:
    convert.load_official(bad, tiny_config)
  message = str(info.value)
  assert 'missing keys (2): final_layers.1.bias, layer1.2.bn1.running_var' in message
  assert 'unexpected keys (1): classifier.weight' in message
  assert ('shape mismatches (1): stage2.0.branches.1.0.conv1.weight (checkpoint (16, 16, 1, 1), '
          'model (16, 16, 3, 3))') in message


@pytest.mark.parametrize('change', ['missing', 'extra', 'shape'])
def test_each_mismatch_alone_is_an_error(reference, tiny_config, change):
  bad = dict(reference)
  if change == 'missing':
    bad.pop('bn2.weight')
  elif change == 'extra':
    bad['incre_modules.0.0.conv1.weight'] = np.zeros((1,), np.float32)
  else:
    bad['final_layers.0.weight'] = np.zeros((17, 8, 1, 1), np.float32)
  with pytest.raises(convert.CheckpointMismatchError, match={'missing': 'missing keys.*bn2.weight',
                                                             'extra': 'unexpected keys.*incre_modules',
                                                             'shape': 'final_layers.0.weight'}[change]):
    convert.load_official(bad, tiny_config)
  if change == 'extra':  # non-strict loading ignores keys the model does not have
    variables = convert.load_official(bad, tiny_config, strict=False)
    np.testing.assert_array_equal(variables['params']['backbone']['bn2']['scale'], reference['bn2.weight'])


@pytest.mark.parametrize('container', ['zip', 'legacy'])
def test_pickle_calling_a_global_is_refused(tmp_path, monkeypatch, container):
  calls = []
  monkeypatch.setattr(os, 'system', lambda *a: calls.append(a))
  path = tmp_path / 'evil.pth'
  if container == 'zip':
    with zipfile.ZipFile(path, 'w') as zf:
      zf.writestr('archive/data.pkl', MALICIOUS)
  else:
    path.write_bytes(_legacy_header() + MALICIOUS)
  with pytest.raises(convert.UnsafeCheckpointError, match=r'refusing to unpickle global os\.system'):
    convert.load_official(path, {})
  assert calls == []


def test_header_pickle_with_a_global_is_refused(tmp_path):
  path = tmp_path / 'evil_header.pth'
  path.write_bytes(b'\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.')
  with pytest.raises(convert.UnsafeCheckpointError, match=r'builtins\.eval'):
    convert.load_pth(path)


def test_not_a_checkpoint(tmp_path):
  path = tmp_path / 'text.pth'
  path.write_text('hello')
  with pytest.raises(convert.CheckpointFormatError, match='text.pth'):
    convert.load_pth(path)


def test_independently_written_zip_pth_loads(tmp_path, fake_torch, reference, tiny_config):
  state = collections.OrderedDict((f'module.{k}', _Tensor(v)) for k, v in reference.items())
  # Also a transposed (non-contiguous) tensor, read through its strides.
  extra = {'note': 'v1', 'view': _Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))}
  write_zip_pth(tmp_path / 'ckpt.pth', {'state_dict': state, 'extra': extra}, fake_torch)
  raw = convert.load_pth(tmp_path / 'ckpt.pth')
  assert raw['extra']['note'] == 'v1'
  np.testing.assert_array_equal(raw['extra']['view'], np.arange(6).reshape(2, 3))
  variables = convert.load_official(tmp_path / 'ckpt.pth', tiny_config)
  expected = convert.load_official(reference, tiny_config)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)


def test_tensor_larger_than_its_storage_is_refused(tmp_path, fake_torch):
  write_zip_pth(tmp_path / 'short.pth', {'w': _Tensor(np.ones((4, 4), np.float32), storage_numel=10)},
                fake_torch)
  with pytest.raises(convert.CheckpointFormatError, match='reaches element 15'):
    convert.load_pth(tmp_path / 'short.pth')


# ------------------------------------------------------------------ ImageNet backbone


def _classification_checkpoint(reference):
  """A state dict in the HRNet classification layout, built from the tiny backbone keys."""
  state = {k: v * 2 for k, v in reference.items() if not k.startswith(('final_layers', 'deconv_layers'))}
  extras = {
      'stage4.0.fuse_layers.1.0.0.0.weight': (16, 8, 3, 3),  # all fuse outputs of the last module
      'stage4.0.fuse_layers.3.2.0.1.running_mean': (64,),
      'incre_modules.0.0.conv1.weight': (32, 8, 1, 1),
      'downsamp_modules.0.0.weight': (256, 128, 3, 3),
      'final_layer.0.weight': (2048, 1024, 1, 1),
      'classifier.weight': (1000, 2048),
      'classifier.bias': (1000,),
  }
  state.update({k: np.ones(s, np.float32) for k, s in extras.items()})
  return state, sorted(extras)


def test_imagenet_backbone_loads_backbone_only(reference, tiny_config):
  variables = models.init_variables(models.build(tiny_config))
  state, extras = _classification_checkpoint(reference)
  loaded, report = convert.load_imagenet_backbone({'state_dict': state}, variables)
  assert sorted(report.ignored) == extras
  assert report.missing == []
  official = convert.to_official(loaded)
  for k, v in official.items():
    if k.startswith(('final_layers', 'deconv_layers')) or k.endswith('num_batches_tracked'):
      continue
    np.testing.assert_array_equal(v, state[k], err_msg=k)
  for a, b in zip(jax.tree.leaves(loaded['params']['head']), jax.tree.leaves(variables['params']['head'])):
    np.testing.assert_array_equal(a, b)  # head untouched
  assert 'ignored 7 checkpoint keys' in str(report)


def test_imagenet_backbone_layer_filter_and_missing_keys(reference, tiny_config):
  variables = models.init_variables(models.build(tiny_config))
  state, _ = _classification_checkpoint(reference)
  loaded, report = convert.load_imagenet_backbone(state, variables, layers=('conv1', 'bn1'))
  assert sorted(report.loaded) == ['bn1.bias', 'bn1.running_mean', 'bn1.running_var', 'bn1.weight',
                                   'conv1.weight']
  np.testing.assert_array_equal(loaded['params']['backbone']['conv2']['kernel'],
                                variables['params']['backbone']['conv2']['kernel'])
  del state['layer1.0.conv1.weight']
  with pytest.raises(convert.CheckpointMismatchError, match='missing keys.*layer1.0.conv1.weight'):
    convert.load_imagenet_backbone(state, variables)
  _, report = convert.load_imagenet_backbone(state, variables, strict=False)
  assert report.missing == ['layer1.0.conv1.weight']
  state['conv1.weight'] = np.zeros((64, 3, 7, 7), np.float32)
  with pytest.raises(convert.CheckpointMismatchError, match='conv1.weight'):
    convert.load_imagenet_backbone(state, variables, strict=False)
