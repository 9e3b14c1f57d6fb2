import pathlib
import re

import pytest

from higherhrnet_jax import config as cfg
from higherhrnet_jax import keypoints

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / 'configs').rglob('*.py'))


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_validates(path):
  c = cfg.load_config(path)
  assert c.model.num_joints == keypoints.spec_from_config(c.dataset.keypoints).num_joints
  if c.model.name == 'higher_hrnet':
    assert cfg.higher_hrnet.output_sizes(c) == (c.data.input_size // 4, c.data.input_size // 2)
  else:
    assert c.model.name == 'pose_hrnet' and all(s % 32 == 0 for s in c.data.input_size)


def test_official_values_of_w32_512():
  c = cfg.load_config('configs/coco/higherhrnet_w32_512.py')
  assert c.model.stage4.num_channels == (32, 64, 128, 256)
  assert c.model.stage3.num_modules == 4 and c.model.stage4.num_modules == 3
  assert cfg.higher_hrnet.output_sizes(c) == (128, 256) and c.data.max_num_people == 30
  assert cfg.higher_hrnet.num_stages(c) == 2
  assert c.train.lr == 1e-3 and c.train.lr_step == (200, 260) and c.train.end_epoch == 300
  assert c.loss.push_loss_factor == (0.001, 0.001) and c.model.with_ae_loss == (True, False)
  assert c.test.nms_kernel == 5 and c.test.detection_threshold == 0.1


def test_overrides_are_typed_and_unknown_keys_are_named():
  c = cfg.load_config('configs/tiny.py', ['--config.train.lr=2e-3', 'test.scale_factor=[2,1,0.5]'])
  assert c.train.lr == 2e-3 and tuple(c.test.scale_factor) == (2, 1, 0.5)
  with pytest.raises(cfg.ConfigError, match='train.bogus'):
    cfg.load_config('configs/tiny.py', ['train.bogus=1'])


def _leaf_paths(d, prefix=''):
  for k, v in d.items():
    if isinstance(v, dict) and k != 'keypoints':  # the keypoint spec is data, read whole
      yield from _leaf_paths(v, f'{prefix}{k}.')
    else:
      yield prefix + k


@pytest.mark.parametrize('base', [cfg.higher_hrnet.base_config, cfg.pose_hrnet.base_config],
                         ids=['higher_hrnet', 'pose_hrnet'])
def test_every_field_is_read_somewhere(base):
  """A field nothing reads (not even validation) would accept a setting and ignore it."""
  package = pathlib.Path(cfg.__file__).parent.parent
  source = '\n'.join(p.read_text() for p in package.rglob('*.py'))
  unread = [path for path in _leaf_paths(base().to_dict())
            if not re.search(r"\.{0}\b|\[['\"]{0}['\"]\]".format(path.split('.')[-1]), source)]
  assert not unread, unread


@pytest.mark.parametrize('field', ['dataset.data_format', 'train.gamma1', 'train.gamma2',
                                   'test.images_per_gpu', 'test.model_file', 'test.log_progress'])
def test_official_fields_without_effect_are_refused(field):
  with pytest.raises(cfg.ConfigError, match=field):
    cfg.load_config('configs/tiny.py', [f'{field}=1'])


def test_validation_names_the_field():
  with pytest.raises(cfg.ConfigError, match='data.input_size'):
    cfg.load_config('configs/tiny.py', ['data.input_size=100'])
  with pytest.raises(cfg.ConfigError, match='model.num_joints'):
    cfg.load_config('configs/tiny.py', ['model.num_joints=14'])
  with pytest.raises(cfg.ConfigError, match='test.grouping_on'):
    cfg.load_config('configs/tiny.py', ['test.grouping_on=gpu'])


def test_keypoint_spec_checks_flip_index():
  d = keypoints.COCO.to_config().to_dict()
  d['flip_index'] = list(range(16)) + [0]
  with pytest.raises(ValueError, match='flip_index'):
    keypoints.spec_from_config(d)
