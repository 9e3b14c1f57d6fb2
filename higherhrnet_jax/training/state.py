"""The training state: a plain pytree, so it can be jitted, sharded and checkpointed.

The model and the optimizer are not stored in it (they are static and passed to
`make_train_step`), which keeps the state exactly what a checkpoint needs to hold.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from higherhrnet_jax import models
from higherhrnet_jax.training import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: int32 scalar, number of `train_step` calls done (micro-steps when
      accumulating gradients).
    params: float32 parameters.
    batch_stats: BatchNorm running statistics.
    opt_state: optax state.
    rng: base PRNG key (raw uint32[2]); per-step keys are `fold_in(rng, step)`.
    ema: `{'params', 'batch_stats'}` averaged over updates (`train.ema_decay` > 0), or
      `{}`; when present it is what evaluation, the best checkpoint and export use.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  ema: Any = flax.struct.field(default_factory=dict)

  def variables(self) -> dict[str, Any]:
    """The current weights as model variables (`{'params', 'batch_stats'}`)."""
    return {'params': self.params, 'batch_stats': self.batch_stats}

  def eval_variables(self) -> dict[str, Any]:
    """The variables to evaluate: the weight average when kept, else the current ones."""
    return dict(self.ema) if self.ema else self.variables()

  def with_variables(self, params: Any, batch_stats: Any) -> TrainState:
    """New current weights (e.g. pretrained ones); a kept average restarts from them.

    The average gets its own copies: the train step donates the state, and XLA refuses to
    donate one buffer twice.
    """
    ema = jax.tree.map(jnp.copy, {'params': params, 'batch_stats': batch_stats}) if self.ema else {}
    return self.replace(params=params, batch_stats=batch_stats, ema=ema)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    input_shape: tuple[int, ...],
    mesh: Mesh,
    shard_params: bool = False,
    ema: bool = False,
) -> tuple[TrainState, Any]:
  """Creates the state directly in its final sharding.

  The variables of our networks are the official random init drawn on the host
  (`models.init_variables`, numpy, seeded from `rng`): no XLA program draws them, which for
  W32 on a CPU saves half a minute of compilation before the first step. Any other module
  gets its own initializers (`model.init`, compiled once on one device). Either way every
  process holds the same values and keeps its shards, whatever the device layout; only
  the optimizer's initial state is compiled in the final sharding.

  Args:
    model: flax module with the HigherHRNet contract.
    tx: optimizer.
    rng: PRNG key; split into the init seed and the state's base key.
    input_shape: `[B, H, W, 3]` used to trace the variable shapes (B = 1 is enough).
    mesh: the training mesh.
    shard_params: FSDP-style sharding of params and optimizer state.
    ema: also keep a weight average (`TrainState.ema`), starting at the init.

  Returns:
    `(state, shardings)`, `shardings` being the TrainState-shaped tree of NamedShardings.
  """
  init_rng, state_rng = jax.random.split(rng)
  shape = (1,) + tuple(input_shape[1:])
  if isinstance(model, (models.HigherHRNet, models.PoseHRNet)):
    seed = int(np.asarray(jax.random.key_data(init_rng), np.uint32).ravel()[0])
    host = models.init_variables(model, seed, shape)
  else:
    host = jax.device_get(jax.jit(lambda r: model.init(r, np.zeros(shape, np.float32),
                                                       train=False))(init_rng))
  host = TrainState(step=np.zeros((), np.int32), params=host['params'],
                    batch_stats=host.get('batch_stats', {}), opt_state=None,
                    rng=np.asarray(state_rng))
  if ema:
    host = host.replace(ema=host.variables())
  abstract = jax.eval_shape(lambda s: s.replace(opt_state=tx.init(s.params)), host)
  shardings = sharding_lib.state_shardings(abstract, mesh, shard_params)

  def place(value, target):
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, target, lambda index: value[index])

  state = jax.tree.map(place, host, shardings.replace(opt_state=None))
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(state.params)
  return state.replace(opt_state=opt_state), shardings


def abstract_state(state_or_fn: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the restore target of a checkpoint."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_or_fn, shardings
  )


def param_count(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
