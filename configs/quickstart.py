"""Quickstart: a small HigherHRNet learns generated multi-person scenes on a laptop CPU.

  pip install -e . && python train.py --config=configs/quickstart.py --workdir=runs/quickstart

Writes 2,000 training and 100 validation scenes (128x128, COCO format) under
<workdir>/data if they are not there, trains for a few minutes, evaluates the held-out
split with the full test loop (flip test, adjust, refine, pycocotools) and writes
metrics.json, TensorBoard logs and pictures to the workdir. The same command line runs
a real COCO job with a COCO config (`configs/coco/...`).

Global batch 16 (all devices together); Adam with a one-epoch warm-up.
"""

from higherhrnet_jax import config as cfg


def get_config():
  c = cfg.base_config()
  # A slimmer HigherHRNet: narrower stem and layer1, one block per branch.
  c.model.stem_channels = 32
  c.model.stage1.num_blocks = (1,)
  c.model.stage1.num_channels = (16,)
  c.model.stage2 = cfg._stage(1, (1, 1), (16, 32))
  c.model.stage3 = cfg._stage(1, (1, 1, 1), (16, 32, 64))
  c.model.stage4 = cfg._stage(1, (1, 1, 1, 1), (16, 32, 64, 128))
  c.model.deconv.num_channels = (16,)
  c.model.deconv.num_basic_blocks = 1
  cfg.with_input_size(c, 128)

  c.dataset.root = ''  # -> <workdir>/data
  c.dataset.synthetic.num_train = 2000
  c.dataset.synthetic.num_val = 100
  c.dataset.synthetic.image_size = 128
  c.data.num_workers = 1
  c.data.max_rotation = 15.0

  c.train.batch_size = c.train.reference_batch_size = 16
  c.train.num_steps = 1500
  c.train.lr = 2e-3
  c.train.lr_step = (1000, 1000)  # in epochs: no decay within the run
  c.train.warmup_epochs = 0.5
  c.train.log_every_steps = 50
  c.train.checkpoint_every_steps = 500
  c.train.render_predictions = 6
  return c
