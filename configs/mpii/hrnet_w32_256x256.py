"""MPII HRNet-W32 top-down at 256x256 (official `experiments/mpii/hrnet/w32_256x256_adam_lr1e-3.yaml`).

Train: python train.py --config=configs/mpii/hrnet_w32_256x256.py --workdir=runs/mpii_w32 \
         --config.dataset.root=data/mpii
Eval:  python eval.py --config=configs/mpii/hrnet_w32_256x256.py \
         --checkpoint=pose_hrnet_w32_256x256.pth --config.dataset.root=data/mpii

Global batch size: 4 GPUs x 32 crops = 128; Adam 1e-3, x0.1 at epochs 170 and 200, 210
epochs; no half-body crops, scale factor 0.25, rotation factor 30. Expected PCKh@0.5 on
MPII val with the official checkpoint (ground-truth boxes, flip test): 90.3.
"""

from higherhrnet_jax.config import pose_hrnet


def get_config():
  c = pose_hrnet.base_config()
  pose_hrnet.mpii(c)
  pose_hrnet.with_width(c, 32)
  pose_hrnet.with_input_size(c, 256, 256)
  c.train.batch_size = c.train.reference_batch_size = 4 * 32
  return c
