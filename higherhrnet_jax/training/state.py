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
import optax
from jax.sharding import Mesh

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
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def _init_variables(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...]) -> dict:
  # Traced inside the sharded init below; `models.init_variables` is the host-side twin
  # (numpy values, no compile) for callers that need variables without a train state.
  """`model.init` on zeros of `input_shape` ([B, H, W, 3]) in eval mode."""
  variables = model.init(rng, jnp.zeros(input_shape, jnp.float32), train=False)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    input_shape: tuple[int, ...],
    mesh: Mesh,
    shard_params: bool = False,
    init_impl: str = 'rbg',
) -> tuple[TrainState, Any]:
  """Creates the state directly in its final sharding (`eval_shape` + sharded init).

  Args:
    model: flax module with the HigherHRNet contract.
    tx: optimizer.
    rng: PRNG key; split into an init key and the state's base key.
    input_shape: `[B, H, W, 3]` used to trace init (B = 1 is enough).
    mesh: the training mesh.
    shard_params: FSDP-style sharding of params and optimizer state.
    init_impl: PRNG implementation of the parameter initialisers. 'rbg' (XLA's
      RngBitGenerator) compiles several times faster than 'threefry2x32' (W32 init on
      CPU: minutes -> about a minute); its values may depend on the parameter sharding,
      which does not matter for a random init (a resumed run restores exact values).

  Returns:
    `(state, shardings)`, `shardings` being the TrainState-shaped tree of NamedShardings.
  """
  init_rng, state_rng = jax.random.split(rng)
  if init_impl != 'threefry2x32':
    data = jax.random.key_data(init_rng)
    width = jax.random.key_data(jax.random.key(0, impl=init_impl)).shape[-1]
    init_rng = jax.random.wrap_key_data(jnp.resize(data, (width,)), impl=init_impl)

  def init_fn(init_rng, state_rng):
    variables = _init_variables(model, init_rng, (1,) + tuple(input_shape[1:]))
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables['params'],
        batch_stats=variables['batch_stats'],
        opt_state=tx.init(variables['params']),
        rng=state_rng,
    )

  abstract = jax.eval_shape(init_fn, init_rng, state_rng)
  shardings = sharding_lib.state_shardings(abstract, mesh, shard_params)
  state = jax.jit(init_fn, out_shardings=shardings)(init_rng, state_rng)
  return state, shardings


def abstract_state(state_or_fn: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the restore target of a checkpoint."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_or_fn, shardings
  )


def param_count(params: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
