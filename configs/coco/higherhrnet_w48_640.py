"""COCO HigherHRNet-W48 at 640x640 (official `experiments/coco/higher_hrnet/w48_640_adam_lr1e-3.yaml`).

Train: python train.py --config=configs/coco/higherhrnet_w48_640.py --workdir=runs/coco_w48_640 \
         --config.dataset.root=data/coco
Eval:  python eval.py --config=configs/coco/higherhrnet_w48_640.py \
         --checkpoint=pose_higher_hrnet_w48_640.pth --config.dataset.root=data/coco

The official recipe (global batch = 8 GPUs x IMAGES_PER_GPU, Adam 1e-3, x0.1 at epochs 200
and 260, 300 epochs); batch and LR scaling: `higherhrnet_jax.config.base_config`.
"""

from higherhrnet_jax import config as cfg


def get_config():
  c = cfg.base_config()
  cfg.with_width(c, 48)
  cfg.with_input_size(c, 640)
  c.train.batch_size = c.train.reference_batch_size = 8 * 10
  c.model.pretrained = ''  # e.g. hrnet_w48-8ef0771d.pth (ImageNet backbone)
  return c
