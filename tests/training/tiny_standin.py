"""A small flax module with the HigherHRNet output contract, for trainer tests.

`apply(variables, images [B,H,W,3], train) -> [out0 [B,H/4,W/4,2K], out1 [B,H/2,W/2,K]]`,
with BatchNorm statistics in 'batch_stats' and a compute `dtype` (params float32).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from higherhrnet_jax.models import layers


class TinyStandIn(nn.Module):
  num_joints: int = 17
  width: int = 8
  dtype: jnp.dtype = jnp.float32
  axis_name: str | None = None  # as the real models: whole-batch BatchNorm over this axis

  @nn.compact
  def __call__(self, x, train: bool = False):
    k = self.num_joints
    # The models' BatchNorm: its cross-device mean adds in a fixed order, so multi-process
    # runs of the stand-in are bitwise those of one process.
    bn = lambda: layers.BatchNorm(momentum=0.1, epsilon=1e-5, dtype=self.dtype,
                                  axis_name=self.axis_name)
    norm = lambda: functools.partial(bn(), train=train)
    x = x.astype(self.dtype)
    x = nn.relu(norm()(nn.Conv(self.width, (3, 3), (2, 2), padding=1, use_bias=False,
                               dtype=self.dtype)(x)))
    x = nn.relu(norm()(nn.Conv(self.width, (3, 3), (2, 2), padding=1, use_bias=False,
                               dtype=self.dtype)(x)))
    out0 = nn.Conv(2 * k, (1, 1), dtype=self.dtype)(x)
    y = jnp.concatenate([x, out0], axis=-1)
    b, h, w, c = y.shape
    y = jax.image.resize(y, (b, 2 * h, 2 * w, c), 'nearest')
    y = nn.relu(norm()(nn.Conv(self.width, (3, 3), padding=1, use_bias=False, dtype=self.dtype)(y)))
    out1 = nn.Conv(k, (1, 1), dtype=self.dtype)(y)
    return [out0, out1]


def build(model_config):
  """Mirrors `higherhrnet_jax.models.build(config.model)` for the stand-in."""
  return TinyStandIn(num_joints=model_config.num_joints, dtype=jnp.dtype(model_config.dtype))
