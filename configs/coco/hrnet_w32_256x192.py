"""COCO HRNet-W32 top-down at 256x192 (official `experiments/coco/hrnet/w32_256x192_adam_lr1e-3.yaml`).

Train: python train.py --config=configs/coco/hrnet_w32_256x192.py --workdir=runs/hrnet_w32_256x192 \
         --config.dataset.root=data/coco
Eval:  python eval.py --config=configs/coco/hrnet_w32_256x192.py \
         --checkpoint=pose_hrnet_w32_256x192.pth --config.dataset.root=data/coco \
         --config.test.person_boxes=COCO_val2017_detections_AP_H_56_person.json

Global batch size: train.batch_size = 4 GPUs x 32 crops = 128 (the official runs);
Adam 1e-3, x0.1 at epochs 170 and 200, 210 epochs. Sigma 2. Expected COCO val2017 AP
with the official checkpoint and detections (flip test): 74.4.
"""

from higherhrnet_jax.config import pose_hrnet


def get_config():
  c = pose_hrnet.base_config()
  pose_hrnet.with_width(c, 32)
  pose_hrnet.with_input_size(c, 256, 192)
  c.train.batch_size = c.train.reference_batch_size = 4 * 32
  return c
