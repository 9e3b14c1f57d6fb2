"""Parameter and multiply-accumulate counts of a model config (either family).

  python -m higherhrnet_jax.summary --config configs/coco/higherhrnet_w32_512.py [--json]

Two compute figures are reported for one image at the config's input size:

* ``macs``: true multiply-accumulates: ``H_out * W_out * Cout * Cin * kh * kw`` per
  convolution, ``H_in * W_in * Cin * Cout * kh * kw`` for the transposed convolution;
* ``macs_official``: the convention of the official model summary, ``numel(weight) *
  H_out * W_out`` for every convolution including the transposed one (which counts that
  layer 4 times). The published "GFLOPs" are this number divided by 10^9 for HigherHRNet
  (47.9 for W32-512, 154.3 for W48-640) and by 1024^3 for the top-down HRNet (7.1 for
  W32-256x192, 32.9 for W48-384x288): `gflops_published`.

Shapes come from an abstract trace (`jax.eval_shape`), so nothing is computed and any
input size is cheap. BatchNorm, ReLU, upsampling and additions are not counted.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax import models
from higherhrnet_jax.models.layers import ConvTranspose4x4


@dataclasses.dataclass
class Summary:
  """Counts for one model at one input size; `blocks` maps block name -> (params, macs, macs_official)."""

  input_shape: tuple[int, int, int, int]
  params: int
  macs: int
  macs_official: int
  blocks: dict[str, list[int]]
  giga: float = 1e9  # the divisor of the family's published "GFLOPs"

  @property
  def gflops_published(self) -> float:
    return self.macs_official / self.giga

  def to_json(self) -> dict[str, Any]:
    return dict(params=self.params, macs=self.macs, macs_official=self.macs_official,
                gmacs=round(self.macs / 1e9, 2), gmacs_official=round(self.macs_official / 1e9, 2),
                gflops_published=round(self.gflops_published, 2), input_shape=list(self.input_shape))


def _block(path: Sequence[str]) -> str:
  """Groups a module path into a report row: stem, layer1, transition1, stage2, ..., head parts."""
  if len(path) < 2:
    return path[0] if path else 'model'
  name = path[1]
  if name in ('conv1', 'bn1', 'conv2', 'bn2'):
    return 'stem'
  return re.sub(r'(_\d+)+$', '', name)


def summarize(model_config: Mapping[str, Any], input_size: int | Sequence[int]) -> Summary:
  """Counts parameters and MACs of the model for a single image.

  Args:
    model_config: the `model` block of a config.
    input_size: the square input side, or (height, width).
  """
  if isinstance(input_size, int):
    h = w = input_size
  else:
    h, w = (int(v) for v in input_size)
  model = models.build(model_config)
  shape = (1, h, w, 3)
  models.check_input_shape(shape)
  blocks: dict[str, list[int]] = {}

  def record(module: nn.Module, macs: int, macs_official: int) -> None:
    row = blocks.setdefault(_block(module.path), [0, 0, 0])
    row[1] += macs
    row[2] += macs_official

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__':
      return out
    if isinstance(module, nn.Conv):
      cin = args[0].shape[-1]
      kh, kw = module.kernel_size
      _, ho, wo, cout = out.shape
      macs = ho * wo * cout * cin * kh * kw
      record(module, macs, macs)  # weight numel x output pixels is the same number
    elif isinstance(module, ConvTranspose4x4):
      _, hi, wi, cin = args[0].shape
      _, ho, wo, cout = out.shape
      weight = cin * cout * 16
      record(module, hi * wi * weight, ho * wo * weight)
    return out

  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables['params'])[0]:
    names = [p.key for p in path]
    blocks.setdefault(_block(names[:-1]), [0, 0, 0])[0] += int(np.prod(leaf.shape))
  totals = [sum(row[i] for row in blocks.values()) for i in range(3)]
  giga = 1024.0**3 if model_config.get('name') == 'pose_hrnet' else 1e9
  return Summary(shape, totals[0], totals[1], totals[2], blocks, giga)


def format_table(summary: Summary) -> str:
  """A human-readable table with one row per block and the totals."""
  lines = [f'{"block":<16}{"params":>14}{"MACs":>20}{"MACs (official)":>20}']
  for name, (p, m, mo) in summary.blocks.items():
    lines.append(f'{name:<16}{p:>14,}{m:>20,}{mo:>20,}')
  lines.append(f'{"total":<16}{summary.params:>14,}{summary.macs:>20,}{summary.macs_official:>20,}')
  lines.append(f'{summary.params / 1e6:.1f}M parameters, {summary.macs / 1e9:.2f} GMACs, '
               f'{summary.gflops_published:.2f} published "GFLOPs" (official convention), '
               f'input {summary.input_shape[1]}x{summary.input_shape[2]}')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  from absl import flags
  from ml_collections import config_flags

  from higherhrnet_jax import apps, config as config_lib

  def define(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer('input_size', 0, 'Square input side (default: data.input_size, the '
                         'crop size for top-down).', flag_values=fv)
    flags.DEFINE_bool('json', False, 'Print a JSON object as the last line.', flag_values=fv)

  fv = apps.parse_tool_flags(sys.argv[1:] if argv is None else argv, 'higherhrnet-summary',
                             define)
  try:
    config = config_lib.validate(fv.config)
  except config_lib.ConfigError as e:
    raise SystemExit(f'higherhrnet-summary: {e}') from None
  summary = summarize(config.model, fv.input_size or config.data.input_size)
  print(f'{config_flags.get_config_filename(fv["config"])}:')
  print(format_table(summary))
  if fv.json:
    print(json.dumps(summary.to_json()))
  return 0


if __name__ == '__main__':
  sys.exit(main())
