"""The pure, jitted training step.

The loss and gradients run inside `jax.shard_map`, one batch slice per device of the 'data'
axis, and every cross-device mean (gradients, loss terms, BatchNorm statistics) is a
`collectives.ordered_mean`: a fixed summation order, so a step gives bitwise the same
result for 1 process x 4 devices and 2 processes x 2 devices.

BatchNorm statistics -- what the step computes:
  * default (`config.train.per_device_batch_norm = False`): BatchNorm normalises with the
    mean/variance of the **whole global batch** (the model's BatchNorm averages over the
    'data' axis). This is SyncBN: results do not depend on how many devices share the
    batch (8 devices == 1 device, to float32 rounding).
  * `per_device_batch_norm = True`: BatchNorm normalises with **per-device** statistics,
    as the official multi-GPU trainer does (each GPU normalises its own 12 images).
    Gradients, loss terms and the updated running statistics are averaged over devices
    (officially only GPU 0's running statistics are kept; the average keeps every replica
    identical). With one device both modes are the same computation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, PartitionSpec as P

from higherhrnet_jax import collectives, losses
from higherhrnet_jax.topdown import loss as topdown_loss
from higherhrnet_jax.training import optim, sharding as sharding_lib
from higherhrnet_jax.training.state import TrainState

Batch = Mapping[str, jax.Array]
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
LossFn = Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]


def batch_loss(config: ml_collections.ConfigDict) -> LossFn:
  """The family's loss, `(outputs, batch) -> (total, terms)`, with its settings bound.

  HigherHRNet: multi-resolution heatmap + associative-embedding losses; top-down HRNet:
  the target-weighted `JointsMSELoss`.
  """
  if config.model.name == 'pose_hrnet':
    use_weight = bool(config.loss.use_target_weight)
    return lambda outputs, batch: topdown_loss.loss(outputs, batch, use_weight)
  return lambda outputs, batch: losses.multi_loss(outputs, batch, config)


def loss_and_grads(
    model: nn.Module,
    config: ml_collections.ConfigDict,
    params: Any,
    batch_stats: Any,
    batch: Batch,
    rng: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array], Any, Any]:
  """Train-mode forward, loss and parameter gradients on one batch.

  Returns:
    `(total, terms, new_batch_stats, grads)`.
  """
  compute_loss = batch_loss(config)

  def loss_fn(params):
    outputs, mutated = model.apply(
        {'params': params, 'batch_stats': batch_stats},
        batch['image'],
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': rng},
    )
    total, terms = compute_loss(outputs, batch)
    return total, (terms, mutated['batch_stats'])

  (total, (terms, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return total, terms, new_stats, grads


def _sharded(model, config, mesh: Mesh):
  """`loss_and_grads` on each device's slice, averaged over 'data' in a fixed order."""
  axis = sharding_lib.DATA_AXIS
  whole_batch_bn = not config.train.per_device_batch_norm
  if whole_batch_bn:
    if not hasattr(model, 'axis_name'):
      raise TypeError(f'{type(model).__name__} has no axis_name field: whole-batch BatchNorm '
                      'averages its statistics over that mapped axis (set '
                      'config.train.per_device_batch_norm=True for per-device statistics)')
    model = model.clone(axis_name=axis)

  def local(params, batch_stats, batch, rng):
    total, terms, new_stats, grads = loss_and_grads(model, config, params, batch_stats, batch, rng)
    if whole_batch_bn:  # already the same on every device: nothing to average
      total, terms, grads = collectives.tree_ordered_mean((total, terms, grads), axis)
    else:
      total, terms, new_stats, grads = collectives.tree_ordered_mean(
          (total, terms, new_stats, grads), axis)
    return total, terms, new_stats, grads

  return jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(), P(axis), P()), out_specs=P(), check_vma=False
  )


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    state_shardings: Any,
    schedule: optax.Schedule | None = None,
) -> StepFn:
  """Builds `train_step(state, batch, rng) -> (state, metrics)`, jitted and donating `state`.

  Args:
    model: flax module of either family (`models.build`).
    tx: optimizer (possibly `optax.MultiSteps`).
    config: full config (loss and `train.*`).
    mesh: training mesh; the batch is sharded `P('data')`.
    state_shardings: TrainState-shaped shardings from `create_train_state`.
    schedule: LR schedule of the update count, only for the 'lr' metric.

  Returns:
    The jitted step. `metrics` holds 'loss', each loss term (batch means), 'grad_norm'
    and 'lr' (the LR of the update this step contributes to), all replicated scalars.
  """
  accum = int(config.train.grad_accum_steps)
  compute = _sharded(model, config, mesh)

  def train_step(state: TrainState, batch: Batch, rng: jax.Array):
    total, terms, new_stats, grads = compute(state.params, state.batch_stats, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': total, **terms, 'grad_norm': optax.tree.norm(grads)}
    if schedule is not None:
      metrics['lr'] = jnp.asarray(schedule(state.step // accum), jnp.float32)
    ema = state.ema
    if ema:
      # Average the weights an update produced; micro-steps of an accumulation leave them.
      updates_done = (state.step + 1) // accum
      decay = optim.ema_decay(float(config.train.ema_decay), updates_done.astype(jnp.float32))
      decay = jnp.where((state.step + 1) % accum == 0, decay, 1.0)
      ema = optax.incremental_update({'params': params, 'batch_stats': new_stats}, ema, 1.0 - decay)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state, ema=ema
    )
    return new_state, metrics

  rep = sharding_lib.replicated(mesh)
  return jax.jit(
      train_step,
      in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh), rep),
      out_shardings=(state_shardings, rep),
      donate_argnums=0,
  )


def step_rng(state_rng: jax.Array, step: int | jax.Array) -> jax.Array:
  """The per-step key: a pure function of the base key and the step (resume-safe)."""
  return jax.random.fold_in(state_rng, step)
