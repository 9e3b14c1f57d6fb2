"""Where model variables come from: one priority order for evaluation and training.

1. an official pose checkpoint (`.pth` or `.npz` state dict of the whole network);
2. a training run directory (orbax: its best checkpoint by AP, else its newest readable one;
   the weight average where the run kept one);
3. an ImageNet backbone state dict (`.pth`/`.npz` without the pose head), merged into the
   freshly initialised variables the caller passes (training only: the head stays random).
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from higherhrnet_jax import convert

_log = logging.getLogger(__name__)


def load(source: str | pathlib.Path, model_config: Mapping[str, Any], *,
         init: Mapping[str, Any] | None = None,
         backbone_layers: Sequence[str] = ('*',), average: bool = True) -> dict[str, Any]:
  """Model variables (`params`, `batch_stats`) from `source` (see the module docstring).

  Args:
    source: file or run directory.
    model_config: `config.model` (the layout the variables must have).
    init: initialised variables; required to accept a backbone-only state dict.
    backbone_layers: `model.pretrained_layers`, the backbone layers to take ('*': all).
    average: from a run directory, its weight average when kept (False: current weights).

  Raises:
    FileNotFoundError: `source` does not exist.
    ValueError: a backbone-only state dict where a whole network is needed (`init` None),
      or a state dict that does not fit the model (names the missing / extra keys).
  """
  path = pathlib.Path(source)
  if path.is_dir():
    from higherhrnet_jax.training import checkpoint  # pylint: disable=g-import-not-at-top

    return checkpoint.restore_variables(path, average=average)
  if not path.is_file():
    raise FileNotFoundError(f'weights not found: {path}')
  state = convert.read_state_dict(path)
  if convert.is_pose_checkpoint(state):
    _log.info('variables of the whole network from %s', path)
    return convert.load_official(state, model_config)
  if init is None:
    raise ValueError(f'{path} holds no pose head (an ImageNet backbone?): it can initialise '
                     'training (model.pretrained) but not be evaluated')
  variables, report = convert.load_imagenet_backbone(state, init, layers=tuple(backbone_layers))
  _log.info('backbone from %s: %s', path, report)
  return variables
