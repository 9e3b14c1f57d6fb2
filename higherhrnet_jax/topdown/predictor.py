"""Person boxes in, joints out: the top-down test loop, compiled for large crop batches.

Host: each box becomes a crop (`decode.crop`, or the UDP warp), crops of many images are
stacked into fixed-size batches (padding repeats the last crop, so one program serves a
whole split). Device (one jitted function, batch split over the local devices):
normalisation by table, the network on the crops and, with the flip test, on the mirrored
crops, the flip average, and the heatmap maxima with the codec's sub-pixel step. Host
again: the float64 map back to image pixels. Only `[N, K, 3]` numbers leave the device.

Codecs (`data.codec`): 'official' (quarter-pixel offset, flip test with the one-column
shift: bit-identical to the official `validate`), 'dark' (Taylor refinement after a
Gaussian blur), 'udp' (unbiased crop and coordinates, flip test without shift, DARK
refinement).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import cv2
import jax
import numpy as np

from higherhrnet_jax import keypoints, models
from higherhrnet_jax.inference import compile as compile_lib
from higherhrnet_jax.inference.outputs import normalize
from higherhrnet_jax.topdown import dark, decode, records, udp
from higherhrnet_jax.training import sharding


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """What the test loop needs from the config, read once."""

  input_hw: tuple[int, int]
  flip_index: tuple[int, ...]
  codec: str
  flip_test: bool
  batch_size: int  # crops per device and network call

  @property
  def input_wh(self) -> tuple[int, int]:
    return self.input_hw[1], self.input_hw[0]

  @property
  def heatmap_wh(self) -> tuple[int, int]:
    return self.input_hw[1] // 4, self.input_hw[0] // 4

  @classmethod
  def from_config(cls, config: Any) -> DecodeSpec:
    spec = keypoints.spec_from_config(config.dataset.keypoints)
    return cls(input_hw=tuple(int(v) for v in config.data.input_size),
               flip_index=tuple(int(i) for i in spec.flip_index), codec=str(config.data.codec),
               flip_test=bool(config.test.flip_test), batch_size=int(config.test.batch_size))


def crop_matrix(spec: DecodeSpec, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """Image -> crop affine `[2, 3]` for one box under the spec's codec."""
  if spec.codec == 'udp':
    return udp.udp_warp_matrix(center, scale, 0.0, spec.input_wh)
  return decode.crop_transform(center, scale, spec.input_wh)


def crop_boxes(image: np.ndarray, centers: np.ndarray, scales: np.ndarray,
               spec: DecodeSpec) -> np.ndarray:
  """`[N, H, W, 3]` uint8 crops of one RGB image (bilinear, black outside the image)."""
  h, w = spec.input_hw
  out = np.zeros((len(centers), h, w, 3), np.uint8)
  for i, (c, s) in enumerate(zip(centers, scales)):
    out[i] = cv2.warpAffine(image, crop_matrix(spec, c, s), (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
  return out


def heatmaps_and_maxima(apply_fn, spec: DecodeSpec, variables, crops: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Device part of the test loop: `(heatmaps [N, h, w, K], coords [N, K, 2], maxvals [N, K])`.

  `coords` are refined heatmap coordinates (official quarter offset, or DARK); the
  flip-averaged heatmaps are returned for inspection and the parity tests.
  """
  x = normalize(crops)
  heatmaps = apply_fn(variables, x)
  if spec.flip_test:
    flipped = apply_fn(variables, x[:, :, ::-1, :])
    if spec.codec == 'udp':
      heatmaps = (heatmaps + udp.flip_back_udp(flipped, spec.flip_index)) * 0.5
    else:
      heatmaps = decode.average_flip(heatmaps, flipped, spec.flip_index, shift=True)
  if spec.codec == 'official':
    coords, maxvals = decode.heatmap_maxima(heatmaps)
    maxvals = maxvals[..., 0]
  else:
    coords, maxvals = dark.heatmap_maximum(heatmaps)
    coords = dark.refine_dark(heatmaps, coords)
  return heatmaps, coords, maxvals


def to_image(spec: DecodeSpec, coords: np.ndarray, centers: np.ndarray, scales: np.ndarray
             ) -> np.ndarray:
  """Heatmap coordinates `[N, K, 2]` -> image pixels, float32 (float64 affine on the host)."""
  if spec.codec == 'udp':
    return udp.to_image(coords, centers, scales, spec.input_wh, spec.heatmap_wh).astype(np.float32)
  return decode.heatmap_to_image(coords, centers, scales, spec.heatmap_wh)


class TopDownPredictor:
  """Compiled top-down inference for one model and config.

  Args:
    config: full config (uses `model`, `data.input_size`, `data.codec`, `test.flip_test`,
      `test.batch_size`, `dataset.keypoints`).
    variables: `{'params', 'batch_stats'}` of a `PoseHRNet`.
    devices: devices to split each batch over (default: all local devices).
  """

  compile_seconds = 0.0  # one-off XLA compilation, kept out of the per-crop times
  _compiled_network = None

  def __init__(self, config: Any, variables: Any, devices: Sequence[jax.Device] | None = None):
    self.config = config
    self.spec = DecodeSpec.from_config(config)
    self.model = models.build(config.model)
    devices = list(devices or jax.local_devices())
    self.mesh = sharding.make_mesh(devices)
    self._batch_sharding = sharding.batch_sharding(self.mesh)
    self.set_variables(variables)
    apply_fn = lambda v, x: self.model.apply(v, x, train=False)
    # `network(variables, crops uint8) -> (heatmaps, coords, maxvals)`; replaceable, e.g. by
    # a test that feeds ready-made heatmaps through the rest of the loop.
    self.network = compile_lib.forward_jit(
        functools.partial(heatmaps_and_maxima, apply_fn, self.spec), devices)

  def set_variables(self, variables: Any) -> None:
    """Swaps in new weights of the same model (no recompilation)."""
    self.variables = jax.device_put(variables, sharding.replicated(self.mesh))

  @property
  def batch_size(self) -> int:
    """Crops per network call: `test.batch_size` per device."""
    return self.spec.batch_size * self.mesh.devices.size

  def predict_crops(self, crops: np.ndarray, centers: np.ndarray, scales: np.ndarray
                    ) -> np.ndarray:
    """Joints of ready-made crops: `[N, K, 3]` float32 `(x, y, score)` in image pixels.

    Args:
      crops: `[N, H, W, 3]` uint8 RGB crops (see :func:`crop_boxes`).
      centers, scales: `[N, 2]` the boxes the crops were made from.
    """
    n = len(crops)
    if n == 0:
      return np.zeros((0, len(self.spec.flip_index), 3), np.float32)
    b = self.batch_size
    coords, maxvals = [], []
    for start in range(0, n, b):
      chunk = crops[start:start + b]
      pad = b - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
      chunk = jax.device_put(chunk, self._batch_sharding)
      # The network is replaceable (by a plain function, too).
      if self._compiled_network is not self.network and hasattr(self.network, 'lower'):
        t0 = time.perf_counter()
        self.network.lower(self.variables, chunk).compile()
        self.compile_seconds += time.perf_counter() - t0
        self._compiled_network = self.network
      _, c, m = self.network(self.variables, chunk)
      coords.append(np.asarray(c)[:b - pad])
      maxvals.append(np.asarray(m)[:b - pad])
    xy = to_image(self.spec, np.concatenate(coords), np.asarray(centers), np.asarray(scales))
    return np.concatenate([xy, np.concatenate(maxvals)[..., None].astype(np.float32)], axis=-1)

  def predict(self, image: np.ndarray, boxes_xywh: np.ndarray) -> np.ndarray:
    """Joints of the people in `boxes_xywh` (`[N, 4]` image pixels): `[N, K, 3]` float32."""
    boxes = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    aspect = self.spec.input_wh[0] / self.spec.input_wh[1]
    cs = [records.box_to_center_scale(b, aspect) for b in boxes]
    centers = np.asarray([c for c, _ in cs], np.float32).reshape(-1, 2)
    scales = np.asarray([s for _, s in cs], np.float32).reshape(-1, 2)
    return self.predict_crops(crop_boxes(image, centers, scales, self.spec), centers, scales)

