"""COCO HRNet-W32 top-down at 384x288 (official `experiments/coco/hrnet/w32_384x288_adam_lr1e-3.yaml`).

Train: python train.py --config=configs/coco/hrnet_w32_384x288.py --workdir=runs/hrnet_w32_384x288 \
         --config.dataset.root=data/coco
Eval:  python eval.py --config=configs/coco/hrnet_w32_384x288.py \
         --checkpoint=pose_hrnet_w32_384x288.pth --config.dataset.root=data/coco \
         --config.test.person_boxes=COCO_val2017_detections_AP_H_56_person.json

Global batch size: train.batch_size = 4 GPUs x 32 crops = 128 (the official runs);
Adam 1e-3, x0.1 at epochs 170 and 200, 210 epochs. Sigma 3. Expected COCO val2017 AP
with the official checkpoint and detections (flip test): 75.8.
"""

from higherhrnet_jax.config import pose_hrnet


def get_config():
  c = pose_hrnet.base_config()
  pose_hrnet.with_width(c, 32)
  pose_hrnet.with_input_size(c, 384, 288)
  c.train.batch_size = c.train.reference_batch_size = 4 * 32
  return c
