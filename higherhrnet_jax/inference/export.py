"""Serialize network + aggregation with `jax.export` for serving without the model code.

The exported program is the jitted body of :func:`higherhrnet_jax.inference.outputs.make_inference_fn`
(normalization, network, flip test, projection, multi-scale aggregation) for one bucket
(one set of padded input shapes), with a symbolic batch size `b`. Its calling convention:

  fn(variables, images, input_hw, base_hw) -> (final_heatmaps, tags)

* `variables`: the Flax variables pytree (weights stay outside the artifact, so one
  artifact serves any checkpoint of the same architecture); with `embed_variables=True`
  they are baked in as constants and the program takes only the three array arguments.
* `images`: tuple over scales (descending) of uint8 [b, H_s, W_s, 3], zero-padded
  bottom/right; `input_hw`: tuple of int32 [b, 2] valid sizes; `base_hw`: int32 [b, 2].
* Returns float32 [b, Hb, Wb, K] and [b, Hb, Wb, K, T] (crop with the valid base sizes).

Host-side steps (resize, grouping, mapping back) stay outside the artifact.
:func:`save_bundle` / :func:`load_bundle` store the artifact with the weights as plain
arrays, so a server needs only `jax` and `numpy` to run it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax.inference import outputs as outputs_lib


def _arg_specs(input_shapes: Sequence[Sequence[int]], batch: Any):
  images = tuple(jax.ShapeDtypeStruct((batch, int(h), int(w), 3), jnp.uint8)
                 for h, w in input_shapes)
  input_hw = tuple(jax.ShapeDtypeStruct((batch, 2), jnp.int32) for _ in input_shapes)
  base_hw = jax.ShapeDtypeStruct((batch, 2), jnp.int32)
  return images, input_hw, base_hw


def export_inference(apply_fn: Callable[..., Any], spec: outputs_lib.OutputSpec, variables: Any,
                     input_shapes: Sequence[Sequence[int]], base_shape: Sequence[int],
                     embed_variables: bool = False,
                     platforms: Sequence[str] | None = None) -> jax.export.Exported:
  """Exports network + aggregation for one bucket with a symbolic batch size.

  Args:
    apply_fn: `apply_fn(variables, x [B, H, W, 3] float32) -> [stage outputs]`.
    spec: aggregation settings (:class:`OutputSpec`; its scale order fixes `images`).
    variables: the variables (only their shapes/dtypes are used unless embedded).
    input_shapes: padded (H, W) of the network input per scale, descending scales.
    base_shape: padded (Hb, Wb) of the base size.
    embed_variables: bake the weights into the artifact.
    platforms: lowering platforms (default: the current backend), e.g. ('cpu', 'cuda').

  Returns:
    The `jax.export.Exported` (serialize with :func:`save` or `.serialize()`).
  """
  if len(input_shapes) != len(spec.scale_factors):
    raise ValueError(f'input_shapes: {len(input_shapes)} shapes for {len(spec.scale_factors)} scales')
  for h, w in input_shapes:
    if h % 32 or w % 32:
      raise ValueError(f'input_shapes: {h}x{w} is not a multiple of 32')
  base_shape = (int(base_shape[0]), int(base_shape[1]))
  infer = outputs_lib.make_inference_fn(apply_fn, spec)
  (batch,) = jax.export.symbolic_shape('b')
  images, input_hw, base_hw = _arg_specs(input_shapes, batch)
  if embed_variables:
    fn = jax.jit(lambda i, h, bh: infer(variables, i, h, bh, base_shape))
    args = (images, input_hw, base_hw)
  else:
    fn = jax.jit(lambda v, i, h, bh: infer(v, i, h, bh, base_shape))
    args = (jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)),
                         variables), images, input_hw, base_hw)
  kwargs = {} if platforms is None else {'platforms': tuple(platforms)}
  return jax.export.export(fn, **kwargs)(*args)


def save(exported: jax.export.Exported, path: str | pathlib.Path) -> pathlib.Path:
  """Writes the serialized artifact (StableHLO + calling convention) to `path`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(exported.serialize())
  return path


def load(path: str | pathlib.Path) -> jax.export.Exported:
  """Reads an artifact written by :func:`save`; call it with `.call(...)`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'exported model not found: {path}')
  return jax.export.deserialize(bytearray(path.read_bytes()))


# ----------------------------------------------------------------------------- bundles

_ARTIFACT = 'model.jaxexport'
_VARIABLES = 'variables.npz'


def save_bundle(directory: str | pathlib.Path, exported: jax.export.Exported,
                variables: Any = None) -> pathlib.Path:
  """Writes the artifact and, for a weight-free artifact, the variables next to it.

  The variables are stored as the flat list of leaves (`leaf_00000`, ...) in the order of
  the artifact's own input tree, so :func:`load_bundle` needs neither Flax nor the model
  code to rebuild them.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  save(exported, directory / _ARTIFACT)
  takes_variables = _num_args(exported) == 4
  if takes_variables and variables is None:
    raise ValueError('variables: this artifact takes the weights as input; pass them to save')
  if variables is not None:
    if not takes_variables:
      raise ValueError('variables: this artifact has the weights embedded; save it without them')
    leaves = jax.tree.leaves(variables)
    np.savez(directory / _VARIABLES, **{f'leaf_{i:05d}': np.asarray(v) for i, v in enumerate(leaves)})
  return directory


def _num_args(exported: jax.export.Exported) -> int:
  args_tree = jax.tree_util.treedef_children(exported.in_tree)[0]
  return len(jax.tree_util.treedef_children(args_tree))


def load_bundle(directory: str | pathlib.Path) -> Callable[..., Any]:
  """Loads a bundle written by :func:`save_bundle`.

  Returns:
    `fn(images, input_hw, base_hw) -> (final_heatmaps, tags)` running the artifact (with
    the stored variables when the weights are not embedded).
  """
  directory = pathlib.Path(directory)
  exported = load(directory / _ARTIFACT)
  var_path = directory / _VARIABLES
  if not var_path.is_file():
    return exported.call
  args_tree = jax.tree_util.treedef_children(exported.in_tree)[0]
  var_tree = jax.tree_util.treedef_children(args_tree)[0]
  with np.load(var_path) as data:
    leaves = [jnp.asarray(data[f'leaf_{i:05d}']) for i in range(len(data.files))]
  if len(leaves) != var_tree.num_leaves:
    raise ValueError(f'{var_path}: {len(leaves)} arrays, the artifact expects {var_tree.num_leaves}')
  variables = jax.tree.unflatten(var_tree, leaves)
  return lambda images, input_hw, base_hw: exported.call(variables, images, input_hw, base_hw)
