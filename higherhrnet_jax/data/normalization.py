"""ImageNet input normalisation: one table for the training samples and the test loop.

The official pipelines apply torchvision's ToTensor + Normalize in float32,
`(v / 255 - mean) / std` per RGB channel. A uint8 image has 256 levels per channel, so the
exact float32 results form a [3, 256] table: the training sample builder looks it up on
the host, the test loop on the device, both bit-identical to torchvision.
"""

from __future__ import annotations

import numpy as np

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def table() -> np.ndarray:
  """[3, 256] float32: the normalised value of every uint8 level per RGB channel."""
  levels = np.arange(256, dtype=np.float32) / np.float32(255)
  mean = np.asarray(MEAN, np.float32)[:, None]
  std = np.asarray(STD, np.float32)[:, None]
  return ((levels[None, :] - mean) / std).astype(np.float32)
