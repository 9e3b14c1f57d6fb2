"""Optimizer and learning-rate schedule from `config.train` (optax).

Batch-size bookkeeping, stated once because the official recipe never stated it:
  * `train.batch_size` is the *global* batch of one `train_step` call (all hosts and
    devices together).
  * With `train.grad_accum_steps = A`, one optimizer update sees `batch_size * A`
    images (the *effective* batch); the schedule counts optimizer updates.
  * `train.lr` is the LR at `train.reference_batch_size` (official: 96 = 8 GPUs x 12).
    With `train.scale_lr_with_batch` the LR scales linearly:
    `lr * effective_batch / reference_batch_size`; otherwise it is used as given.
  * Official schedule: Adam (betas 0.9/0.999, eps 1e-8, no weight decay), LR x`lr_factor`
    at each epoch of `lr_step` (200 and 260 of 300), optional linear warm-up.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import ml_collections
import optax


def effective_batch_size(config: ml_collections.ConfigDict) -> int:
  """Images per optimizer update: global batch times gradient-accumulation steps."""
  return int(config.train.batch_size) * int(config.train.grad_accum_steps)


def updates_per_epoch(config: ml_collections.ConfigDict, num_train_samples: int) -> float:
  """Optimizer updates per epoch: the loader's batches per epoch / accumulation steps.

  The loader drops the last partial batch (static shapes), so an epoch is
  `num_train_samples // batch_size` train-step calls; with `grad_accum_steps` that do not
  divide it, an epoch holds a fractional number of updates (the schedule's epoch
  boundaries are rounded to updates), and epochs stay aligned with the data.
  """
  if num_train_samples <= 0:
    raise ValueError(f'updates_per_epoch: num_train_samples must be positive, got {num_train_samples}')
  calls = max(1, num_train_samples // int(config.train.batch_size))
  return calls / int(config.train.grad_accum_steps)


def base_learning_rate(config: ml_collections.ConfigDict) -> float:
  """`train.lr`, scaled linearly with the effective batch when configured."""
  t = config.train
  lr = float(t.lr)
  if t.scale_lr_with_batch:
    lr *= effective_batch_size(config) / float(t.reference_batch_size)
  return lr


def total_updates(config: ml_collections.ConfigDict, updates_per_epoch: float) -> int:
  """Number of whole optimizer updates of the run (`train.num_steps` wins when > 0)."""
  t = config.train
  if t.num_steps > 0:
    return int(t.num_steps) // int(t.grad_accum_steps)
  return int((int(t.end_epoch) - int(t.begin_epoch)) * updates_per_epoch + 1e-9)


def learning_rate_schedule(
    config: ml_collections.ConfigDict, updates_per_epoch: float
) -> optax.Schedule:
  """The `train.lr_schedule` decay after an optional linear warm-up.

  'step' (official): x`train.lr_factor` at each epoch of `train.lr_step`. 'cosine': half a
  cosine from `lr` to 0 over the updates after the warm-up: no decay epochs to choose (on
  the quickstart's budget the step decay still did better).

  Args:
    config: full config.
    updates_per_epoch: optimizer updates per epoch (see `updates_per_epoch`).

  Returns:
    A schedule of the optimizer-update count.
  """
  t = config.train
  lr = base_learning_rate(config)
  warmup = int(math.ceil(float(t.warmup_epochs) * updates_per_epoch))
  # `decay` counts the updates after the warm-up.
  if t.lr_schedule == 'cosine':
    decay = optax.cosine_decay_schedule(
        lr, max(1, total_updates(config, updates_per_epoch) - warmup))
  else:
    boundaries = {}
    for epoch in t.lr_step:
      b = int(round((epoch - t.begin_epoch) * updates_per_epoch))
      if b > 0:
        boundaries[b] = boundaries.get(b, 1.0) * float(t.lr_factor)
    steps = optax.piecewise_constant_schedule(lr, boundaries)
    # Its boundaries count from update 0, so epochs keep their meaning.
    decay = lambda c: steps(c + warmup)
  if warmup <= 0:
    return decay
  # Linear from lr / warmup to lr over `warmup` updates, then the decay.
  ramp = optax.linear_schedule(lr / warmup, lr, warmup)
  return optax.join_schedules([ramp, decay], [warmup])


def make_optimizer(
    config: ml_collections.ConfigDict, updates_per_epoch: float
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer chain: [clip] -> adam | adamw | sgd, wrapped in MultiSteps if A > 1.

  Returns:
    `(tx, schedule)`; `schedule(update_count)` is the LR (for logging).
  """
  t = config.train
  schedule = learning_rate_schedule(config, updates_per_epoch)
  parts = []
  if t.grad_clip_norm and t.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(t.grad_clip_norm)))
  if t.optimizer == 'adam':
    # Official: torch.optim.Adam(params, lr) -- no weight decay.
    parts.append(optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8))
  elif t.optimizer == 'adamw':
    parts.append(optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=float(t.wd)))
  elif t.optimizer == 'sgd':
    # torch SGD weight decay is an L2 term added to the gradient before momentum.
    if t.wd:
      parts.append(optax.add_decayed_weights(float(t.wd)))
    parts.append(optax.sgd(schedule, momentum=float(t.momentum), nesterov=bool(t.nesterov)))
  else:
    raise ValueError(f'config.train.optimizer: unknown optimizer {t.optimizer!r}')
  tx = optax.chain(*parts) if len(parts) > 1 else parts[0]
  if t.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=int(t.grad_accum_steps))
  return tx, schedule


def ema_decay(decay: float, updates: Any) -> Any:
  """The averaging decay after `updates` optimizer updates: `min(decay, (1 + n) / (10 + n))`.

  The ramp (as TensorFlow's `ExponentialMovingAverage` with `num_updates`) keeps the random
  init from dominating the average of a short run: early updates weigh almost fully.
  """
  return jnp.minimum(decay, (1.0 + updates) / (10.0 + updates))
