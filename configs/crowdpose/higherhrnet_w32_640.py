"""CrowdPose HigherHRNet-W32 at 640x640 (official `experiments/crowd_pose/higher_hrnet/w32_640_adam_lr1e-3.yaml`).

Train: python train.py --config=configs/crowdpose/higherhrnet_w32_640.py --workdir=runs/crowdpose_w32_640 \
         --config.dataset.root=data/crowd_pose
Eval:  python eval.py --config=configs/crowdpose/higherhrnet_w32_640.py --checkpoint=<ckpt> \
         --config.dataset.root=data/crowd_pose

The official recipe (global batch = 8 GPUs x IMAGES_PER_GPU, Adam 1e-3, x0.1 at epochs 200
and 260, 300 epochs); batch and LR scaling: `higherhrnet_jax.config.base_config`.
Trained on trainval, evaluated on test.
"""

from higherhrnet_jax import config as cfg


def get_config():
  c = cfg.crowdpose(cfg.base_config())
  cfg.with_width(c, 32)
  cfg.with_input_size(c, 640)
  c.train.batch_size = c.train.reference_batch_size = 8 * 12
  return c
