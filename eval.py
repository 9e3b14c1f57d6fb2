"""Evaluates a checkpoint on the configured test split (see higherhrnet_jax/apps/eval.py).

  python eval.py --config=configs/coco/higherhrnet_w32_512.py --checkpoint=<.pth or workdir>
"""

from higherhrnet_jax.apps import eval as eval_app

if __name__ == '__main__':
  eval_app.run()
