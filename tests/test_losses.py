"""Loss parity with the official `MultiLossFactory` (fixture `loss.npz`) and hand cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import losses


def _nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


def _batch(d):
  return {
      f'{name}_{s}': (_nhwc(d[f'{name}_{s}']) if name == 'heatmaps' else d[f'{name}_{s}'])
      for name in ('heatmaps', 'masks', 'joints') for s in (0, 1)
  }


@pytest.fixture(scope='module')
def loss_npz(fixtures_dir):
  return dict(np.load(fixtures_dir / 'loss.npz'))


def test_terms_match_official(loss_npz):
  """Per-image terms, means and total: rtol 1e-5, atol 1e-7 (README section 8)."""
  d = loss_npz
  cfg = config_lib.base_config()
  outputs = [jnp.asarray(_nhwc(d['output_0'])), jnp.asarray(_nhwc(d['output_1']))]
  batch = _batch(d)
  per_image = jax.jit(lambda o, b: losses.stage_losses(o, b, cfg))(outputs, batch)
  assert sorted(per_image) == ['heatmaps_loss_0', 'heatmaps_loss_1', 'pull_loss_0', 'push_loss_0']
  for name, value in per_image.items():
    np.testing.assert_allclose(value, d[name], rtol=1e-5, atol=1e-7, err_msg=name)
  total, terms = losses.multi_loss(outputs, batch, cfg)
  for name, value in terms.items():
    np.testing.assert_allclose(value, d[name.replace('_loss_', '_loss_mean_')], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(total, d['total_loss'], rtol=1e-5, atol=1e-7)


def test_grad_output_matches_official(loss_npz):
  """d total / d output_0: max abs error < 1e-5 of max |reference| (README section 8)."""
  d = loss_npz
  cfg = config_lib.base_config()
  outputs = [jnp.asarray(_nhwc(d['output_0'])), jnp.asarray(_nhwc(d['output_1']))]
  batch = _batch(d)
  grads = jax.grad(lambda o: losses.multi_loss(o, batch, cfg)[0])(outputs)
  ref = d['grad_output_0']
  got = np.transpose(np.asarray(grads[0]), (0, 3, 1, 2))
  err = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
  assert err < 1e-5, err


def _joints(entries, m=4, j=3):
  """entries: list of (person, slot, index) for one image."""
  out = np.zeros((1, m, j, 2), np.int32)
  for p, slot, idx in entries:
    out[0, p, slot] = (idx, 1)
  return out


def test_ae_hand_values_exp_and_max():
  # One 1x1x4 tag map per channel: tag value at channel c, pixel 0 is tags[c].
  # Person 0: joint index 0 (tag 0.0) and 1 (tag 0.4) -> mu 0.2, pull 0.04.
  # Person 1: index 2 (tag 0.7) -> mu 0.7, pull 0.
  tags = jnp.asarray(np.array([0.0, 0.4, 0.7, 5.0], np.float32).reshape(1, 1, 1, 4))
  joints = _joints([(0, 0, 0), (0, 1, 1), (1, 0, 2)])
  push, pull = losses.ae_loss(tags, joints, 'exp')
  np.testing.assert_allclose(pull, [0.02], rtol=1e-6)  # (0.04 + 0) / 2
  np.testing.assert_allclose(push, [0.5 * np.exp(-0.25)], rtol=1e-6)  # 0.5 * 2 e^-.25 / 2
  push, pull = losses.ae_loss(tags, joints, 'max')
  np.testing.assert_allclose(push, [0.25], rtol=1e-6)  # 0.5 * 2 * (1 - 0.5) / 2
  # Tags further apart than 1 do not push under 'max'.
  far = _joints([(0, 0, 0), (1, 0, 3)])
  push, _ = losses.ae_loss(tags, far, 'max')
  np.testing.assert_allclose(push, [0.0])


def test_ae_zero_and_one_person():
  tags = jnp.asarray(np.array([0.0, 0.4, 0.7, 5.0], np.float32).reshape(1, 1, 1, 4))
  push, pull = losses.ae_loss(tags, np.zeros((1, 3, 2, 2), np.int32))
  np.testing.assert_array_equal(push, [0.0])
  np.testing.assert_array_equal(pull, [0.0])
  push, pull = losses.ae_loss(tags, _joints([(2, 0, 0), (2, 1, 3)]))
  np.testing.assert_array_equal(push, [0.0])
  np.testing.assert_allclose(pull, [6.25], rtol=1e-6)  # tags 0, 5 -> var 6.25
  g = jax.grad(lambda t: jnp.sum(jnp.stack(losses.ae_loss(t, _joints([(2, 0, 0)]), 'max'))))(tags)
  assert np.all(np.isfinite(g))


def test_heatmaps_loss_counts_masked_pixels_in_denominator():
  pred = jnp.ones((1, 2, 2, 1))
  target = jnp.zeros((1, 2, 2, 1))
  mask = jnp.asarray([[[1.0, 0.0], [0.0, 0.0]]])
  np.testing.assert_allclose(losses.heatmaps_loss(pred, target, mask), [0.25])
  with pytest.raises(ValueError, match='differ'):
    losses.heatmaps_loss(pred, jnp.zeros((1, 2, 2, 2)), mask)


def _official_style_ae(tags_chw, joints, loss_type):
  """Per-person Python loop in the official order (NCHW flat index), float64."""
  flat = tags_chw.reshape(-1)
  means, pull = [], 0.0
  for person in joints:
    vals = [flat[idx] for idx, flag in person if flag > 0]
    if not vals:
      continue
    means.append(np.mean(vals))
    pull += np.mean((np.asarray(vals) - means[-1]) ** 2)
  n = len(means)
  if n == 0:
    return 0.0, 0.0
  if n == 1:
    return 0.0, pull
  mu = np.asarray(means)
  diff = mu[None, :] - mu[:, None]
  if loss_type == 'exp':
    push = np.exp(-diff**2).sum() - n
  else:
    push = np.clip(1 - np.abs(diff), 0, None).sum() - n
  return push / ((n - 1) * n) * 0.5, pull / n


@pytest.mark.parametrize('loss_type', ['exp', 'max'])
def test_ae_matches_per_person_loop_on_random_people(loss_type):
  rng = np.random.default_rng(3)
  b, k, r, m = 3, 5, 8, 6
  tags = rng.normal(size=(b, r, r, k)).astype(np.float32) * 0.7
  joints = np.zeros((b, m, k, 2), np.int32)
  for i in range(b):
    for p in range(rng.integers(0, m + 1)):  # image 0..2: some with 0 or 1 people
      slots = rng.permutation(k)[: rng.integers(0, k + 1)]
      for slot, j in enumerate(sorted(slots)):
        joints[i, p, slot] = (j * r * r + rng.integers(r) * r + rng.integers(r), 1)
  push, pull = losses.ae_loss(jnp.asarray(tags), jnp.asarray(joints), loss_type)
  assert np.count_nonzero(np.asarray(push)) >= 1  # the draw has images with >= 2 people
  for i in range(b):
    ref = _official_style_ae(np.transpose(tags[i], (2, 0, 1)).astype(np.float64), joints[i], loss_type)
    np.testing.assert_allclose([push[i], pull[i]], ref, rtol=1e-5, atol=1e-7)
