"""Network outputs to final heatmaps and tags: flip test, projection, multi-scale (jittable).

This is the array-shaped body of the official test loop (`get_multi_stage_outputs` and
`aggregate_results` of `tools/valid.py`), written to run under `jax.jit` on padded inputs:

* Every image of a batch is padded at the bottom/right to a shared *bucket* shape, so a
  dataset compiles one program per bucket instead of one per image size. The true sizes
  travel as int32 arrays (`input_hw`, `base_hw`), and every resize and flip uses them, so
  the valid region of each result equals the official result on the unpadded arrays and
  everything outside it is 0 (crop to `base_hw` on the host).
* Resizes are the official `torch.nn.functional.interpolate(mode='bilinear',
  align_corners=False)` written as gathers (`jax.image.resize` uses a different sampling
  rule and cannot take run-time sizes).

Padding the *network input* is a different matter: the CNN sees the padding instead of
its own zero border, and through the 1/32 branch every output pixel changes a little
(tiny model with the fixture weights, 832 -> 896 px wide: max 0.43 on heatmaps peaking at
1.47, mean 0.0024). The aggregation is exact for any bucket, the network only when the
bucket is the official input size. With `test.shape_bucket = 64` and batches of images of
equal official size, the buckets *are* the official sizes (the official resize already
rounds to multiples of 64: a dataset has a handful of them), which gives official outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from higherhrnet_jax import keypoints
from higherhrnet_jax.data import normalization

def normalize(images: jax.Array) -> jax.Array:
  """uint8 RGB [..., 3] -> float32 network input (ImageNet mean/std), exactly as torchvision."""
  table = jnp.asarray(normalization.table())
  idx = images.astype(jnp.int32)
  return jnp.stack([table[c][idx[..., c]] for c in range(3)], axis=-1)


# ----------------------------------------------------------------------------- resize, flip


def _axis_taps(n_in: jax.Array, n_out: jax.Array, size: int):
  """Source taps and weights along one axis (torch bilinear, align_corners=False)."""
  scale = n_in.astype(jnp.float32) / n_out.astype(jnp.float32)
  dst = jnp.arange(size, dtype=jnp.float32)
  src = jnp.maximum(scale * (dst + jnp.float32(0.5)) - jnp.float32(0.5), jnp.float32(0))
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
  lam = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
  # When the tap falls exactly on a sample, read only that sample (equal sizes copy
  # exactly, and a NaN next door does not leak in).
  i1 = jnp.where((i0 < n_in - 1) & (lam > 0), i0 + 1, i0)
  valid = jnp.arange(size) < n_out
  return i0, i1, lam, valid


def _resize_one(x: jax.Array, in_hw: jax.Array, out_hw: jax.Array, out_shape: tuple[int, int]):
  y0, y1, ly, vy = _axis_taps(in_hw[0], out_hw[0], out_shape[0])
  x0, x1, lx, vx = _axis_taps(in_hw[1], out_hw[1], out_shape[1])
  lx = lx[None, :, None]
  ly = ly[:, None, None]

  def along_x(rows):
    a = jnp.take(rows, x0, axis=1, mode='clip')
    b = jnp.take(rows, x1, axis=1, mode='clip')
    return (1 - lx) * a + lx * b

  top = along_x(jnp.take(x, y0, axis=0, mode='clip'))
  bottom = along_x(jnp.take(x, y1, axis=0, mode='clip'))
  out = (1 - ly) * top + ly * bottom
  return jnp.where(vy[:, None, None] & vx[None, :, None], out, jnp.zeros((), out.dtype))


def resize_bilinear(x: jax.Array, out_shape: Sequence[int], in_hw: jax.Array | None = None,
                    out_hw: jax.Array | None = None) -> jax.Array:
  """Bilinear resize with torch `interpolate(align_corners=False)` semantics, per image sizes.

  Args:
    x: [B, H, W, C]; image b holds valid data in `[:in_hw[b, 0], :in_hw[b, 1]]`.
    out_shape: static (Ho, Wo) of the result array.
    in_hw: [B, 2] int32 valid input sizes (default: the whole array).
    out_hw: [B, 2] int32 valid output sizes (default: `out_shape`). Outside them the
      result is 0.

  Returns:
    [B, Ho, Wo, C] with the valid region equal to the torch resize of the valid input.
  """
  b, h, w = x.shape[0], x.shape[1], x.shape[2]
  out_shape = (int(out_shape[0]), int(out_shape[1]))
  if in_hw is None:
    in_hw = jnp.broadcast_to(jnp.array([h, w], jnp.int32), (b, 2))
  if out_hw is None:
    out_hw = jnp.broadcast_to(jnp.array(out_shape, jnp.int32), (b, 2))
  return jax.vmap(lambda xi, ih, oh: _resize_one(xi, ih, oh, out_shape))(
      x, in_hw.astype(jnp.int32), out_hw.astype(jnp.int32))


def flip_width(x: jax.Array, width: jax.Array | None = None) -> jax.Array:
  """Mirrors each image of [B, H, W, ...] within its valid width (`[B]` int32); padding stays."""
  if width is None:
    return jnp.flip(x, axis=2)
  cols = jnp.arange(x.shape[2], dtype=jnp.int32)

  def one(xi, wi):
    idx = jnp.where(cols < wi, wi - 1 - cols, cols)
    return jnp.take(xi, idx, axis=1, mode='clip')

  return jax.vmap(one)(x, width.astype(jnp.int32))


# ----------------------------------------------------------------------------- aggregation


@dataclasses.dataclass(frozen=True)
class OutputSpec:
  """What the test loop reads from the network outputs (hashable, static under jit).

  Attributes:
    num_joints: K.
    flip_index: joint permutation applied to flipped heatmaps and tags.
    stage_heatmaps: per stage, whether its heatmaps enter the average
      (`loss.with_heatmaps_loss[i] and test.with_heatmaps[i]`).
    stage_tags: per stage, whether it provides tags (`model.with_ae_loss[i] and test.with_ae[i]`).
    stage_tag_offset: per stage, the first tag channel (K if the stage has heatmaps, else 0).
    tag_per_joint: tags are per joint (then flipped tags are permuted too).
    flip_test: average with the prediction on the mirrored image.
    scale_factors: test scales, sorted descending as the official loop visits them.
    project2image: resize each call's maps to the base size before averaging (official
      default); otherwise average at the network resolution and resize the average to
      the final size (the last-stage size of the largest scale).
  """

  num_joints: int
  flip_index: tuple[int, ...]
  stage_heatmaps: tuple[bool, ...]
  stage_tags: tuple[bool, ...]
  stage_tag_offset: tuple[int, ...]
  tag_per_joint: bool = True
  flip_test: bool = True
  scale_factors: tuple[float, ...] = (1.0,)
  project2image: bool = True

  @classmethod
  def from_config(cls, config) -> 'OutputSpec':
    """Builds the spec from a full config (`model`, `loss`, `test`, `dataset.keypoints`)."""
    spec = keypoints.spec_from_config(config.dataset.keypoints)
    k = config.model.num_joints
    hm_loss, ae_loss = tuple(config.loss.with_heatmaps_loss), tuple(config.model.with_ae_loss)
    return cls(
        num_joints=k,
        flip_index=tuple(spec.flip_index),
        stage_heatmaps=tuple(a and b for a, b in zip(hm_loss, config.test.with_heatmaps)),
        stage_tags=tuple(a and b for a, b in zip(ae_loss, config.test.with_ae)),
        stage_tag_offset=tuple(k if a else 0 for a in hm_loss),
        tag_per_joint=bool(config.model.tag_per_joint),
        flip_test=bool(config.test.flip_test),
        scale_factors=tuple(sorted((float(s) for s in config.test.scale_factor), reverse=True)),
        project2image=bool(config.test.project2image),
    )


def _stage_hw(input_hw: jax.Array, input_shape: Sequence[int], out: jax.Array) -> jax.Array:
  """Valid [B, 2] size of a stage output from the valid input size (static stride)."""
  sh, sw = input_shape[0] // out.shape[1], input_shape[1] // out.shape[2]
  if sh * out.shape[1] != input_shape[0] or sw * out.shape[2] != input_shape[1]:
    raise ValueError(f'outputs: stage shape {out.shape[1:3]} does not divide the input shape '
                     f'{tuple(input_shape)}')
  return input_hw // jnp.array([sh, sw], jnp.int32)


def _one_pass(spec: OutputSpec, outputs: Sequence[jax.Array], input_hw, input_shape, flipped: bool):
  """Heatmap average and tag maps of one network call (official per-call body)."""
  k = spec.num_joints
  last = outputs[-1]
  last_hw = _stage_hw(input_hw, input_shape, last)
  heatmap_sum, count, tags = None, 0, []
  perm = np.asarray(spec.flip_index)
  for i, out in enumerate(outputs):
    if len(outputs) > 1 and i != len(outputs) - 1:
      out = resize_bilinear(out, last.shape[1:3], _stage_hw(input_hw, input_shape, out), last_hw)
    if flipped:
      out = flip_width(out, last_hw[:, 1])
    if spec.stage_heatmaps[i]:
      hm = out[..., :k]
      if flipped:
        hm = hm[..., perm]
      heatmap_sum = hm if heatmap_sum is None else heatmap_sum + hm
      count += 1
    if spec.stage_tags[i]:
      tag = out[..., spec.stage_tag_offset[i]:]
      if flipped and spec.tag_per_joint:
        tag = tag[..., perm]
      tags.append(tag)
  heatmap = None if heatmap_sum is None else heatmap_sum / count
  return heatmap, tags, last_hw


def multi_stage_outputs(spec: OutputSpec, outputs: Sequence[jax.Array],
                        flip_outputs: Sequence[jax.Array] | None, input_hw: jax.Array,
                        input_shape: Sequence[int], base_hw: jax.Array,
                        base_shape: Sequence[int]) -> tuple[list[jax.Array], list[jax.Array]]:
  """One test scale: stage fusion, flip test and projection to the base size.

  Args:
    spec: see :class:`OutputSpec`.
    outputs: per stage `[B, h_i, w_i, C_i]` network outputs on the (padded) input.
    flip_outputs: the same for the mirrored input, as the network returns them (mirrored
      coordinates, unpermuted channels); None without flip test.
    input_hw: [B, 2] int32 valid size of the network input.
    input_shape: static (H, W) of the padded network input.
    base_hw: [B, 2] int32 valid base size (the scale-1 input size of the official loop).
    base_shape: static (Hb, Wb) of the padded base arrays.

  Returns:
    `(heatmaps, tags)`: lists of [B, Hb, Wb, K] ([non-flip, flip] and per-stage tags,
    non-flip first), projected to the base size; without `spec.project2image` they stay
    at the last-stage resolution, and `base_hw`/`base_shape` are not used.
  """
  heatmaps, tags = [], []
  hm, tg, last_hw = _one_pass(spec, outputs, input_hw, input_shape, flipped=False)
  if hm is not None:
    heatmaps.append(hm)
  tags.extend(tg)
  if flip_outputs is not None:
    hm, tg, _ = _one_pass(spec, flip_outputs, input_hw, input_shape, flipped=True)
    if hm is not None:
      heatmaps.append(hm)
    tags.extend(tg)
  if not spec.project2image:
    return heatmaps, tags
  project = lambda a: resize_bilinear(a, base_shape, last_hw, base_hw)
  return [project(h) for h in heatmaps], [project(t) for t in tags]


def aggregate_outputs(spec: OutputSpec, outputs: Sequence[Sequence[jax.Array]],
                      flip_outputs: Sequence[Sequence[jax.Array]] | None,
                      input_hw: Sequence[jax.Array], input_shapes: Sequence[Sequence[int]],
                      base_hw: jax.Array, base_shape: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """All test scales: the official `aggregate_results` loop and the final average.

  Args:
    spec: see :class:`OutputSpec`; `spec.scale_factors` gives the scale order.
    outputs: per scale (descending), per stage network outputs `[B, h, w, C]`.
    flip_outputs: the same for the mirrored inputs, or None without flip test.
    input_hw: per scale, [B, 2] int32 valid network input sizes.
    input_shapes: per scale, static (H, W) of the padded network inputs.
    base_hw: [B, 2] int32 valid base sizes (without `spec.project2image`: the valid
      last-stage size of the largest scale, see `prepare_test_input`).
    base_shape: static (Hb, Wb).

  Returns:
    `final_heatmaps` [B, Hb, Wb, K] and `tags` [B, Hb, Wb, K, T]; zero outside the valid
    base region of each image.
  """
  scales = spec.scale_factors
  if len(outputs) != len(scales):
    raise ValueError(f'outputs: {len(outputs)} scales given, spec has {len(scales)}')
  if spec.flip_test and flip_outputs is None:
    raise ValueError('flip_outputs: required when flip_test is on')
  final, tags_list = None, []
  for n, s in enumerate(scales):
    heatmaps, tags = multi_stage_outputs(
        spec, outputs[n], flip_outputs[n] if spec.flip_test else None, input_hw[n],
        input_shapes[n], base_hw, base_shape)
    avg = (heatmaps[0] + heatmaps[1]) / 2.0 if spec.flip_test else heatmaps[0]
    if not spec.project2image:
      # Official: maps of every scale are resized to the final size (that of the largest
      # scale's last stage, for which the resize is an exact copy).
      stage_hw = _stage_hw(input_hw[n], input_shapes[n], outputs[n][-1])
      to_final = lambda a: resize_bilinear(a, base_shape, stage_hw, base_hw)
      avg, tags = to_final(avg), [to_final(t) for t in tags]
    if s == 1 or len(scales) == 1:
      tags_list.extend(tags)
    final = avg if final is None else final + avg
  final = final / float(len(scales))
  return final, jnp.stack(tags_list, axis=-1)


# ----------------------------------------------------------------------------- network + aggregation


def network_outputs(apply_fn: Callable[..., Any], spec: OutputSpec, variables, images, input_hw):
  """Runs the network on every scale (and, with flip test, on its mirror image).

  Args:
    apply_fn: `apply_fn(variables, x [B, H, W, 3] float32) -> list of stage outputs`.
    spec: output spec (flip test on/off).
    variables: model variables.
    images: per scale, uint8 RGB [B, H_s, W_s, 3] padded at the bottom/right.
    input_hw: per scale, [B, 2] int32 valid sizes (the mirror is taken of the valid part).

  Returns:
    `(outputs, flip_outputs)`: per scale, per stage arrays; `flip_outputs` is None without
    flip test.
  """
  outs, flips = [], []
  for img, hw in zip(images, input_hw):
    x = normalize(img)
    b = x.shape[0]
    if spec.flip_test:
      both = apply_fn(variables, jnp.concatenate([x, flip_width(x, hw[:, 1])], axis=0))
      outs.append([o[:b] for o in both])
      flips.append([o[b:] for o in both])
    else:
      outs.append(list(apply_fn(variables, x)))
  return outs, (flips if spec.flip_test else None)


def make_inference_fn(apply_fn: Callable[..., Any], spec: OutputSpec) -> Callable[..., Any]:
  """Builds `fn(variables, images, input_hw, base_hw, base_shape)`: network + aggregation.

  `apply_fn(variables, x [B, H, W, 3] float32)` returns the list of stage outputs
  (e.g. `lambda v, x: model.apply(v, x, train=False)`). The returned function is pure and
  jittable with `base_shape` static; under `jax.jit` it compiles once per
  bucket (set of padded input shapes).

  `fn` arguments: `images` a tuple (one per scale, descending) of uint8 RGB
  [B, H_s, W_s, 3] padded with 0 at the bottom/right; `input_hw` a tuple of [B, 2] int32
  valid sizes; `base_hw` [B, 2] int32; `base_shape` static (Hb, Wb). Returns
  `(final_heatmaps [B, Hb, Wb, K], tags [B, Hb, Wb, K, T])`.
  """

  def fn(variables, images, input_hw, base_hw, base_shape):
    outs, flips = network_outputs(apply_fn, spec, variables, images, input_hw)
    shapes = [img.shape[1:3] for img in images]
    return aggregate_outputs(spec, outs, flips, input_hw, shapes, base_hw, base_shape)

  return fn

