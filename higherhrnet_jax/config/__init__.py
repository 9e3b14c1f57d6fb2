"""Configuration: loading with overrides, one validation, and the two families' base configs.

The programs (train.py, eval.py, the demo and the summary) read `--config=<file>` and its
`--config.a.b=value` overrides through ml_collections' `config_flags` and call `validate`
once; `load_config(path, overrides)` is the same for library callers and tests. `model.name` picks the family:
`higher_hrnet` (bottom-up, `higher_hrnet.py`) or `pose_hrnet` (top-down, `pose_hrnet.py`);
`common.py` holds what both share (HRNet stage layout, the training block).

For compatibility, the HigherHRNet helpers (`base_config`, `with_width`, ...) are also
reachable here; top-down configs use `config.pose_hrnet.*`.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from collections.abc import Iterable
from typing import Any

import ml_collections

from higherhrnet_jax import keypoints
from higherhrnet_jax.config import common, higher_hrnet, pose_hrnet
from higherhrnet_jax.config.common import ConfigError, hrnet_stages, stage
from higherhrnet_jax.config.higher_hrnet import (base_config, crowdpose, with_input_size, with_slim_stages,
                                                 with_width)

__all__ = [
    'ConfigDict', 'ConfigError', 'apply_overrides', 'base_config', 'common', 'crowdpose',
    'higher_hrnet', 'hrnet_stages', 'load_config', 'pose_hrnet', 'stage', 'validate',
    'with_input_size', 'with_slim_stages', 'with_width',
]

ConfigDict = ml_collections.ConfigDict

_FAMILIES = {'higher_hrnet': higher_hrnet.validate, 'pose_hrnet': pose_hrnet.validate}


def _parse_value(text: str, current: Any) -> Any:
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  return value


def apply_overrides(config: ConfigDict, overrides: Iterable[str]) -> ConfigDict:
  """Applies `a.b=value` strings (also accepts a leading `--config.`)."""
  for item in overrides:
    if '=' not in item:
      raise ConfigError(f'override {item!r} is not of the form key=value')
    key, text = item.split('=', 1)
    key = key.removeprefix('--').removeprefix('config.')
    node = config
    parts = key.split('.')
    for i, part in enumerate(parts):
      if not isinstance(node, ConfigDict) or part not in node:
        raise ConfigError(f'unknown config key {".".join(parts[: i + 1])!r} (in override {item!r})')
      if i < len(parts) - 1:
        node = node[part]
    current = node[parts[-1]]
    with config.unlocked():
      node[parts[-1]] = _parse_value(text, current)
  return config


def load_config(path: str | pathlib.Path, overrides: Iterable[str] = ()) -> ConfigDict:
  """Loads `get_config()` from a config file, applies overrides, validates and locks it.

  Args:
    path: a Python file under `configs/` defining `get_config()`.
    overrides: `key=value` strings, e.g. `('train.batch_size=64',)`.

  Returns:
    The validated, locked config.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'config file not found: {path}')
  spec = importlib.util.spec_from_file_location(f'_hhr_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{path} defines no get_config()')
  config = module.get_config()
  config.lock()
  apply_overrides(config, overrides)
  validate(config)
  return config


def validate(c: ConfigDict) -> ConfigDict:
  """Checks cross-field consistency once at start-up; errors name the field."""
  family = c.model.get('name', 'higher_hrnet')
  common.require(family in _FAMILIES, 'model.name', f'one of {sorted(_FAMILIES)}, got {family!r}')
  spec = keypoints.spec_from_config(c.dataset.keypoints)
  common.require(c.model.num_joints == spec.num_joints, 'model.num_joints',
                 f'{c.model.num_joints} != dataset.keypoints ({spec.num_joints} joints)')
  common.validate_common(c)
  _FAMILIES[family](c)
  return c
