"""Tiny top-down HRNet (stages [8,16,32,64], one block per branch, 128x96 crops, sigma 2).

The tiny architecture of the top-down parity fixtures (544,505 parameters): the W32
experiment with only the stage layout and the crop size shrunk. For tests and smoke runs:

  python train.py --config=configs/coco/hrnet_tiny.py --workdir=runs/hrnet_tiny
"""

from higherhrnet_jax.config import pose_hrnet


def get_config():
  c = pose_hrnet.base_config()
  pose_hrnet.with_slim_stages(c, 8)
  pose_hrnet.with_input_size(c, 128, 96)
  c.train.batch_size = c.train.reference_batch_size = 4
  c.test.batch_size = 8
  return c
