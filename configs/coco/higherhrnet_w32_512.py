"""COCO HigherHRNet-W32 at 512x512 (official `experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml`).

Train: python train.py --config=configs/coco/higherhrnet_w32_512.py --workdir=runs/coco_w32_512 \
         --config.dataset.root=data/coco
Eval:  python eval.py --config=configs/coco/higherhrnet_w32_512.py \
         --checkpoint=pose_higher_hrnet_w32_512.pth --config.dataset.root=data/coco

The official recipe (global batch = 8 GPUs x IMAGES_PER_GPU, Adam 1e-3, x0.1 at epochs 200
and 260, 300 epochs); batch and LR scaling: `higherhrnet_jax.config.base_config`.
"""

from higherhrnet_jax import config as cfg


def get_config():
  c = cfg.base_config()
  cfg.with_width(c, 32)
  cfg.with_input_size(c, 512)
  c.train.batch_size = c.train.reference_batch_size = 8 * 12
  return c
