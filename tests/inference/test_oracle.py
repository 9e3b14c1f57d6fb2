"""Oracle outputs: peaks where the conventions put them, mirrored for the flip call."""

import numpy as np
import pytest

from bench import oracle
from higherhrnet_jax.config import base_config
from higherhrnet_jax.inference import outputs as O
from higherhrnet_jax.inference import transforms as T


def _setup(scales=(1.0,)):
  config = base_config()
  config.test.scale_factor = scales
  spec = O.OutputSpec.from_config(config)
  image = np.zeros((200, 300, 3), np.uint8)
  t = T.prepare_test_input(image, 128, scales)
  kp = np.zeros((2, 17, 3))
  kp[0, 0] = (100.0, 50.0, 2)   # person 0: nose
  kp[0, 9] = (60.0, 150.0, 1)   # person 0: left wrist
  kp[1, 0] = (250.0, 120.0, 2)  # person 1: nose
  return spec, t, kp


def test_peaks_tags_and_shapes():
  spec, t, kp = _setup()
  (out0, out1), = oracle.render_outputs(t, kp, spec, 128)
  h, w = t.images[0].shape[:2]
  assert out0.shape == (h // 4, w // 4, 34) and out1.shape == (h // 2, w // 2, 17)
  zoom = 128 / 200  # short side to the input size
  for (x, y, _), p in ((kp[0, 0], 0), (kp[1, 0], 1)):
    for out, stride in ((out0, 4), (out1, 2)):
      # Peak half an output pixel before the joint (the official truncated targets).
      ex, ey = x * zoom / stride - 0.5, y * zoom / stride - 0.5
      x0, y0 = int(ex) - 3, int(ey) - 3
      window = out[y0:y0 + 7, x0:x0 + 7, 0]
      wy, wx = np.unravel_index(np.argmax(window), window.shape)
      assert abs(x0 + wx - ex) <= 0.5 and abs(y0 + wy - ey) <= 0.5
    assert out0[int(y * zoom / 4), int(x * zoom / 4), 17] == 2.0 * (p + 1)
  # Unlabelled joints stay empty; labelled ones peak at 1.
  assert out0[..., 1].max() == 0 and out1[..., 9].max() > 0.9


def test_flipped_outputs_mirror_and_swap_joints():
  spec, t, kp = _setup()
  kp[:, 9] = 0
  kp[0, 9] = (60.0, 150.0, 1)  # left wrist only
  (f0, _), = oracle.render_outputs(t, kp, spec, 128, flipped=True)
  (o0, _), = oracle.render_outputs(t, kp, spec, 128)
  # The left wrist (9) of the mirrored image is drawn as a right wrist (10).
  assert f0[..., 9].max() == 0 and f0[..., 10].max() > 0.9
  w = t.images[0].shape[1]
  _, ox = np.unravel_index(np.argmax(o0[..., 9]), o0.shape[:2])
  _, fx = np.unravel_index(np.argmax(f0[..., 10]), f0.shape[:2])
  # x -> (w - 1 - x) in input pixels: mirrored peak positions add up to about (w - 1) / 4 - 1.
  assert abs(ox + fx - ((w - 1) / 4 - 1)) <= 1


def test_scale_count_must_match():
  spec, t, kp = _setup()
  spec2, _, _ = _setup((2.0, 1.0))
  with pytest.raises(ValueError, match='scales'):
    oracle.render_outputs(t, kp, spec2, 128)
