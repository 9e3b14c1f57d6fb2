"""Official HigherHRNet / top-down HRNet checkpoints <-> Flax variables.

The Flax modules are named after the official state-dict paths with ``.`` written as
``_`` before an index (``stage2_0/fuse_layers_1/0_0_0`` is ``stage2.0.fuse_layers.1.0.0.0``),
under two top-level scopes ``backbone`` and ``head`` that the official model does not
have (the top-down head, `final_layer`, sits at the top level). So every official key
follows from the Flax variable tree by one rule:

=================================  =====================================================
Flax leaf                          official key, layout
=================================  =====================================================
``params/.../kernel``              ``<path>.weight``; Conv2d ``[Cout, Cin, kh, kw]`` =
                                   kernel ``[kh, kw, Cin, Cout]``.transpose(3, 2, 0, 1)
``params/.../transpose_kernel``    ``<path>.weight``; ConvTranspose2d ``[Cin, Cout, kh, kw]``
                                   = kernel ``[kh, kw, Cin, Cout]``.transpose(2, 3, 0, 1)
``params/.../bias``                ``<path>.bias`` (final convs and BatchNorm beta)
``params/.../scale``               ``<path>.weight`` (BatchNorm gamma)
``batch_stats/.../mean``, ``var``  ``<path>.running_mean``, ``<path>.running_var``
(every BatchNorm)                  ``<path>.num_batches_tracked`` (read and ignored;
                                   written as 0)
=================================  =====================================================
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax.convert.pth import load_pth

_SCOPES = ('backbone', 'head')
_INDEX = re.compile(r'_(?=\d)')


class CheckpointMismatchError(ValueError):
  """The checkpoint's keys or shapes do not match the model."""


@dataclasses.dataclass(frozen=True)
class _Leaf:
  collection: str
  path: tuple[str, ...]  # Flax path inside the collection
  kind: str  # 'conv', 'deconv', 'vector'


def _official_prefix(modules: Iterable[str]) -> str:
  modules = list(modules)
  if modules and modules[0] in _SCOPES:
    modules = modules[1:]
  return '.'.join(_INDEX.sub('.', m) for m in modules)


def _walk(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _walk(v, path + (k,))
    else:
      yield path + (k,), v


_PARAM_NAMES = {'kernel': ('weight', 'conv'), 'transpose_kernel': ('weight', 'deconv'),
                'bias': ('bias', 'vector'), 'scale': ('weight', 'vector')}
_STAT_NAMES = {'mean': 'running_mean', 'var': 'running_var'}


def key_table(variables: Mapping[str, Any], scope: str | None = None) -> dict[str, _Leaf]:
  """Official key -> Flax leaf, for every parameter and running statistic.

  Args:
    variables: Flax variables (arrays or `jax.ShapeDtypeStruct`s), {'params', 'batch_stats'}.
    scope: restrict to one top-level scope ('backbone' or 'head').
  """
  table: dict[str, _Leaf] = {}
  for collection, names in (('params', _PARAM_NAMES), ('batch_stats', None)):
    for path, _ in _walk(variables.get(collection, {})):
      if scope is not None and path[0] != scope:
        continue
      if collection == 'params':
        official, kind = names[path[-1]]
      else:
        official, kind = _STAT_NAMES[path[-1]], 'vector'
      key = f'{_official_prefix(path[:-1])}.{official}'
      if key in table:
        raise AssertionError(f'two variables map to official key {key}')
      table[key] = _Leaf(collection, path, kind)
  return table


def _to_official_layout(value: np.ndarray, kind: str) -> np.ndarray:
  if kind == 'conv':
    return value.transpose(3, 2, 0, 1)
  if kind == 'deconv':
    return value.transpose(2, 3, 0, 1)
  return value


def _to_flax_layout(value: np.ndarray, kind: str) -> np.ndarray:
  if kind == 'conv':
    return value.transpose(2, 3, 1, 0)
  if kind == 'deconv':
    return value.transpose(2, 3, 0, 1)
  return value


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for p in path:
    tree = tree[p]
  return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _bn_modules(table: Mapping[str, _Leaf]) -> list[str]:
  return [k[: -len('.running_mean')] for k in table if k.endswith('.running_mean')]


def to_official(variables: Mapping[str, Any], dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """Flax variables -> official state dict (numpy; `num_batches_tracked` = 0).

  Also maps gradients (any tree with the `params` structure) to official names.
  """
  table = key_table(variables)
  out: dict[str, np.ndarray] = {}
  for key, leaf in table.items():
    value = np.asarray(_get(variables[leaf.collection], leaf.path), dtype=dtype)
    out[key] = _to_official_layout(value, leaf.kind)
  for module in _bn_modules(table):
    out[f'{module}.num_batches_tracked'] = np.array(0, dtype=np.int64)
  return out


def save_official(variables: Mapping[str, Any], path: str | pathlib.Path) -> None:
  """Writes the official key layout to an `.npz` (loadable by `load_official`)."""
  path = pathlib.Path(path)
  with open(path, 'wb') as f:
    np.savez(f, **to_official(variables))


def read_state_dict(source: str | pathlib.Path | Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Reads a state dict from a `.pth` (zip or legacy), a `.npz` or a mapping.

  A `{'state_dict': ...}` wrapper is unwrapped and a DataParallel `module.` prefix
  removed. Values are returned as numpy arrays.
  """
  if isinstance(source, Mapping):
    state = dict(source)
  else:
    path = pathlib.Path(source)
    if not path.is_file():
      raise FileNotFoundError(f'checkpoint not found: {path}')
    if path.suffix == '.npz':
      with np.load(path, allow_pickle=False) as data:
        state = {k: data[k] for k in data.files}
    else:
      state = load_pth(path)
  if isinstance(state, Mapping) and isinstance(state.get('state_dict'), Mapping):
    state = state['state_dict']
  if not isinstance(state, Mapping):
    raise CheckpointMismatchError(f'{source}: expected a state dict (name -> tensor), got {type(state).__name__}')
  out = {}
  for k, v in state.items():
    k = str(k)
    if k.startswith('module.'):
      k = k[len('module.'):]
    out[k] = np.asarray(v)
  return out


def _mismatch_message(source: Any, missing, unexpected, misshaped) -> str:
  name = source if not isinstance(source, Mapping) else 'state dict'
  lines = [f'{name}: checkpoint does not match the model']
  if missing:
    lines.append(f'  missing keys ({len(missing)}): ' + ', '.join(sorted(missing)))
  if unexpected:
    lines.append(f'  unexpected keys ({len(unexpected)}): ' + ', '.join(sorted(unexpected)))
  if misshaped:
    lines.append(f'  shape mismatches ({len(misshaped)}): ' + ', '.join(
        f'{k} (checkpoint {tuple(a)}, model {tuple(b)})' for k, a, b in misshaped))
  return '\n'.join(lines)


def abstract_variables(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """The model's variable shapes (no computation), for mapping keys."""
  from higherhrnet_jax import models  # local: keeps the reader importable on its own

  model = models.build(model_config)
  x = jax.ShapeDtypeStruct((1, models.INPUT_MULTIPLE, models.INPUT_MULTIPLE, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _expected_shape(leaf_value: Any, kind: str) -> tuple[int, ...]:
  shape = tuple(leaf_value.shape)
  if kind == 'conv':
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == 'deconv':
    return (shape[2], shape[3], shape[0], shape[1])
  return shape


def _fill(state: Mapping[str, np.ndarray], table: Mapping[str, _Leaf], template: Mapping[str, Any],
          keys: Iterable[str], out: dict[str, Any]) -> list[tuple[str, tuple, tuple]]:
  misshaped = []
  for key in keys:
    leaf = table[key]
    expected = _expected_shape(_get(template[leaf.collection], leaf.path), leaf.kind)
    value = state[key]
    if tuple(value.shape) != expected:
      misshaped.append((key, value.shape, expected))
      continue
    _set(out.setdefault(leaf.collection, {}), leaf.path,
         _to_flax_layout(np.asarray(value, dtype=np.float32), leaf.kind))
  return misshaped


def load_official(source: str | pathlib.Path | Mapping[str, Any], model_config: Mapping[str, Any],
                  *, strict: bool = True) -> dict[str, Any]:
  """Loads an official HigherHRNet or top-down HRNet checkpoint into Flax variables.

  Args:
    source: `.pth` (zip or legacy `torch.save` format, read without torch), `.npz`, or a
      mapping official key -> array.
    model_config: the `model` block of the config the checkpoint was trained with.
    strict: if False, keys the model does not have are ignored (missing and misshaped
      keys are always errors).

  Returns:
    `{'params': ..., 'batch_stats': ...}` as float32 numpy arrays.

  Raises:
    CheckpointMismatchError: listing every missing, unexpected and misshaped key.
  """
  state = read_state_dict(source)
  template = abstract_variables(model_config)
  table = key_table(template)
  bn_counters = {f'{m}.num_batches_tracked' for m in _bn_modules(table)}
  missing = [k for k in table if k not in state]
  unexpected = [k for k in state if k not in table and k not in bn_counters] if strict else []
  out: dict[str, Any] = {}
  misshaped = _fill(state, table, template, [k for k in table if k in state], out)
  if missing or unexpected or misshaped:
    raise CheckpointMismatchError(_mismatch_message(source, missing, unexpected, misshaped))
  return out


@dataclasses.dataclass
class ImportReport:
  """What a partial (backbone) import used and ignored."""

  loaded: list[str]
  ignored: list[str]
  missing: list[str]

  def __str__(self) -> str:
    return (f'loaded {len(self.loaded)} tensors, ignored {len(self.ignored)} checkpoint keys'
            + (f' ({", ".join(self.ignored[:8])}{", ..." if len(self.ignored) > 8 else ""})'
               if self.ignored else '')
            + (f', {len(self.missing)} model keys not in the checkpoint' if self.missing else ''))


def load_imagenet_backbone(source: str | pathlib.Path | Mapping[str, Any], variables: Mapping[str, Any],
                           *, layers: Iterable[str] = ('*',), strict: bool = True
                           ) -> tuple[dict[str, Any], ImportReport]:
  """Loads an ImageNet HRNet classification checkpoint into the backbone of `variables`.

  The classification model (official `hrnet_w32-36af842e.pth` layout) shares the stem,
  `layer1`, transitions and stage names with the pose backbone; its extra keys (all
  fuse outputs of the last module, `incre_modules`, `downsamp_modules`,
  `final_layer`, `classifier`) are ignored and reported.

  Args:
    source: checkpoint path or mapping.
    variables: the model's current variables; the head is kept as is.
    layers: official `PRETRAINED_LAYERS`: first key components to load ('*' = all).
    strict: if True, a backbone tensor (in `layers`) absent from the checkpoint is an
      error; shape mismatches always are.

  Returns:
    (new variables, report).
  """
  state = read_state_dict(source)
  layers = tuple(layers)
  table = key_table(variables, scope='backbone')
  wanted = [k for k in table if '*' in layers or k.split('.')[0] in layers]
  bn_counters = {f'{m}.num_batches_tracked' for m in _bn_modules(table)}
  missing = [k for k in wanted if k not in state]
  present = [k for k in wanted if k in state]
  out = jax.tree.map(np.asarray, flax.core.unfreeze(variables))
  misshaped = _fill(state, table, variables, present, out)
  if misshaped or (strict and missing):
    raise CheckpointMismatchError(_mismatch_message(source, missing if strict else [], [], misshaped))
  used = set(present) | bn_counters
  ignored = [k for k in state if k not in used]
  return out, ImportReport(loaded=present, ignored=ignored, missing=missing)


def is_pose_checkpoint(state: Mapping[str, Any]) -> bool:
  """True for a whole pose network (either family), False for a backbone-only one.

  HigherHRNet heads have `final_layers.*`. The top-down head is `final_layer.weight`, but
  ImageNet classification checkpoints also carry `final_layer.*` keys (a 1x1 conv of their
  classifier), so the top-down head is told by shape: a 1x1 (or 3x3) conv reading the
  backbone's highest-resolution branch, whose width is the first transition's output.
  """
  if any(k.startswith('final_layers.') for k in state):
    return True
  head, branch = state.get('final_layer.weight'), state.get('transition1.0.0.weight')
  if head is None or branch is None:
    return False
  head_shape, branch_shape = np.shape(head), np.shape(branch)
  return len(head_shape) == 4 and len(branch_shape) == 4 and head_shape[1] == branch_shape[0]
