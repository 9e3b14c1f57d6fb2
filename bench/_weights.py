"""Fixture weights for benchmarks: the official fixtures' deterministic state-dict recipe.

The W32/W48 reference weights are not stored; the fixture README (section 3) defines them
by a per-key recipe (crc32-seeded normal draws, float64 formulas). The tests' helper
`tests/official_recipe.py` implements that recipe (the parity tests check it bit for bit
against the stored tiny state dict), so it is loaded from there by path rather than written
a second time. The
tiny model's state dict is stored and read directly.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

from higherhrnet_jax import convert

REPO = pathlib.Path(__file__).resolve().parent.parent
RECIPE_MODULE = REPO / 'tests' / 'official_recipe.py'
DEFAULT_FIXTURES = REPO.parent / 'shared' / 'fixtures' / 'official'

# First-branch width of stage 4 -> fixture name.
_BY_WIDTH = {32: 'w32', 48: 'w48', 8: 'tiny'}


def _recipe_fn():
  if not RECIPE_MODULE.is_file():
    raise FileNotFoundError(f'recipe implementation not found: {RECIPE_MODULE}')
  spec = importlib.util.spec_from_file_location('_official_recipe', RECIPE_MODULE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.recipe_state_dict


def fixture_name(model_config: Any) -> str:
  """'w32', 'w48' or 'tiny' from the stage-4 widths of a model config."""
  width = int(model_config.stage4.num_channels[0])
  if width not in _BY_WIDTH:
    raise ValueError(f'model.stage4.num_channels: no fixture weights for width {width} '
                     f'(known: {sorted(_BY_WIDTH)})')
  return _BY_WIDTH[width]


def fixture_variables(model_config: Any,
                      fixtures_dir: str | pathlib.Path = DEFAULT_FIXTURES) -> dict[str, Any]:
  """Flax variables of the fixture weights matching `model_config`.

  Args:
    model_config: the `model` block of the config (W32, W48 or the tiny architecture).
    fixtures_dir: folder of the official fixtures (holds `*_keys.json`).

  Returns:
    `{'params', 'batch_stats'}` as returned by `convert.load_official`.
  """
  fixtures_dir = pathlib.Path(fixtures_dir)
  name = fixture_name(model_config)
  if name == 'tiny':
    source = fixtures_dir / 'tiny_state_dict.npz'
    if not source.is_file():
      raise FileNotFoundError(f'fixture weights not found: {source}')
    return convert.load_official(source, model_config)
  keys = fixtures_dir / f'{name}_keys.json'
  if not keys.is_file():
    raise FileNotFoundError(f'fixture key list not found: {keys}')
  return convert.load_official(_recipe_fn()(keys), model_config)
