"""Unit checks of the model's building blocks against independent definitions."""

import collections
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from higherhrnet_jax import config as config_lib
from higherhrnet_jax import models
from higherhrnet_jax.models import DeconvSpec, HigherHead
from higherhrnet_jax.models.layers import (BatchNorm, ConvTranspose4x4, convolution_for,
                                           cpu_inference_conv, pointwise_conv, relu,
                                           upsample_nearest)

CONFIGS = pathlib.Path(__file__).parents[2] / 'configs'


def torch_conv_transpose(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """PyTorch ConvTranspose2d(k=4, s=2, p=1) by its definition, NHWC, w [Cin, Cout, 4, 4].

  Each input pixel (i, j) scatters x[i, j] @ w[:, :, kh, kw] to output (2i - 1 + kh, 2j - 1 + kw).
  """
  b, h, wd, _ = x.shape
  out = np.zeros((b, 2 * h + 2, 2 * wd + 2, w.shape[1]))  # one extra row/col of padding each side
  for kh in range(4):
    for kw in range(4):
      contrib = np.einsum('bhwi,io->bhwo', x, w[:, :, kh, kw])
      out[:, kh:kh + 2 * h:2, kw:kw + 2 * wd:2] += contrib
  return out[:, 1:-1, 1:-1]


def test_conv_transpose_matches_definition_and_lax():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 5, 6, 3))
  w = rng.standard_normal((3, 4, 4, 4))  # official layout [Cin, Cout, kh, kw]
  layer = ConvTranspose4x4(4, dtype=jnp.float32)
  params = {'params': {'transpose_kernel': jnp.asarray(w.transpose(2, 3, 0, 1), jnp.float32)}}
  ours = np.asarray(layer.apply(params, jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(ours, torch_conv_transpose(x, w), rtol=1e-5, atol=1e-5)
  # README 7: input dilation 2, pad 2, flipped kernel with in/out swapped.
  ref = jax.lax.conv_general_dilated(
      jnp.asarray(x, jnp.float32), jnp.asarray(w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1), jnp.float32),
      window_strides=(1, 1), padding=((2, 2), (2, 2)), lhs_dilation=(2, 2),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(ours, np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_conv_transpose_gradients_match_lax():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((1, 4, 4, 2)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((4, 4, 2, 3)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((1, 8, 8, 3)), jnp.float32)

  def ours(x, k):
    return jnp.sum(ConvTranspose4x4(3).apply({'params': {'transpose_kernel': k}}, x) * g)

  def ref(x, k):  # k[kh, kw, ci, co] = W[ci, co, kh, kw]
    y = jax.lax.conv_general_dilated(x, k[::-1, ::-1], (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(y * g)

  for a, b in zip(jax.grad(ours, (0, 1))(x, k), jax.grad(ref, (0, 1))(x, k)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_batchnorm_matches_pytorch_semantics():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((3, 4, 5, 6)) * 2 + 1
  bn = BatchNorm(momentum=0.1, epsilon=1e-5)
  variables = bn.init(jax.random.key(0), jnp.zeros((1, 1, 1, 6)), train=False)
  y, state = bn.apply(variables, jnp.asarray(x, jnp.float32), train=True, mutable=['batch_stats'])
  flat = x.reshape(-1, 6)
  mean, var_b, var_u = flat.mean(0), flat.var(0), flat.var(0, ddof=1)
  np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var_b + 1e-5), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(state['batch_stats']['mean'], 0.1 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state['batch_stats']['var'], 0.9 + 0.1 * var_u, rtol=1e-5)
  y_eval = bn.apply({**variables, **state}, jnp.asarray(x, jnp.float32), train=False)
  expected = (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var_u + 1e-5)
  np.testing.assert_allclose(np.asarray(y_eval), expected, rtol=1e-4, atol=1e-5)


def test_batchnorm_axis_name_gives_global_statistics():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((4, 2, 3, 3, 5)), jnp.float32)  # 4 shards of 2 images
  bn = BatchNorm(axis_name='data')
  variables = bn.init(jax.random.key(0), x[0], train=False)
  apply = jax.vmap(lambda x: bn.apply(variables, x, train=True, mutable=['batch_stats']),
                   axis_name='data')
  y, state = apply(x)
  y_global, state_global = BatchNorm().apply(variables, x.reshape(8, 3, 3, 5), train=True,
                                             mutable=['batch_stats'])
  np.testing.assert_allclose(np.asarray(y).reshape(8, 3, 3, 5), y_global, rtol=1e-5, atol=1e-5)
  for name in ('mean', 'var'):
    np.testing.assert_allclose(state['batch_stats'][name][0], state_global['batch_stats'][name], rtol=1e-5)


def test_upsample_nearest():
  x = jnp.arange(6.0).reshape(1, 2, 3, 1)
  y = np.asarray(upsample_nearest(x, 4))[0, :, :, 0]
  r, c = np.meshgrid(np.arange(8), np.arange(12), indexing='ij')
  np.testing.assert_array_equal(y, np.arange(6.0).reshape(2, 3)[r // 4, c // 4])


def test_relu_is_jax_relu_in_values_and_gradient():
  x = jnp.array([-2.0, -0.0, 0.0, 1e-38, 3.5, jnp.inf, -jnp.inf, jnp.nan], jnp.float32)
  np.testing.assert_array_equal(np.asarray(relu(x)), np.asarray(jax.nn.relu(x)))
  x = x[:-1]  # at NaN the gradient is moot: the value is already NaN
  grad = jax.vmap(jax.grad(relu))(x)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(jax.vmap(jax.grad(jax.nn.relu))(x)))
  assert float(jax.grad(relu)(0.0)) == 0.0  # PyTorch's ReLU gradient at 0


def test_pointwise_conv_is_the_1x1_convolution():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 5, 7, 48)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((1, 1, 48, 24)), jnp.float32)
  args = ((1, 1), ((0, 0), (0, 0)))
  want = jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  got = pointwise_conv(x, w, *args)
  # The same 48 products per output, possibly summed in another order: a few float32 ulps
  # of the sum of their magnitudes.
  bound = 48 * np.finfo(np.float32).eps * np.einsum('bhwi,io->bhwo', np.abs(x), np.abs(w[0, 0]))
  assert np.all(np.abs(np.asarray(got) - np.asarray(want)) <= bound)
  with pytest.raises(ValueError, match='not a plain 1x1'):
    pointwise_conv(x, jnp.zeros((3, 3, 48, 24)), *args)
  with pytest.raises(ValueError, match='not a plain 1x1'):
    pointwise_conv(x, w, (2, 2), ((0, 0), (0, 0)))


def _conv3x3_args():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 9, 7, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 24)), jnp.float32)
  return x, w, ((1, 1), ((1, 1), (1, 1))), ('NHWC', 'HWIO', 'NHWC')


def test_cpu_inference_conv_is_the_convolution_with_its_gradient():
  x, w, args, dn = _conv3x3_args()
  plain = lambda x, w: jax.lax.conv_general_dilated(x, w, *args, dimension_numbers=dn)
  taller = lambda x, w: cpu_inference_conv(x, w, *args, dimension_numbers=dn)
  want, got = np.asarray(plain(x, w)), np.asarray(jax.jit(taller)(x, w))
  assert got.shape == want.shape
  # The same 9 * 32 products per output, summed by another kernel in another order: at
  # most 288 float32 roundings of the sum of their magnitudes.
  magnitude = np.asarray(jax.lax.conv_general_dilated(jnp.abs(x), jnp.abs(w), *args,
                                                      dimension_numbers=dn,
                                                      precision='highest'))
  assert np.all(np.abs(got - want) <= 288 * np.finfo(np.float32).eps * magnitude)
  # The gradient is the plain convolution's own program: bitwise equal for the same
  # output cotangent (a linear loss, so that it does not depend on the outputs).
  cotangent = jnp.asarray(np.random.default_rng(3).standard_normal(want.shape), jnp.float32)
  loss = lambda f: (lambda x, w: jnp.sum(f(x, w) * cotangent))
  for a, b in zip(jax.jit(jax.grad(loss(plain), (0, 1)))(x, w),
                  jax.jit(jax.grad(loss(taller), (0, 1)))(x, w)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match='not a stride-1'):
    cpu_inference_conv(x, w, (2, 2), args[1], dimension_numbers=dn)


def test_cpu_inference_conv_leaves_ynnpack_for_the_multithreaded_kernel():
  """The reason `cpu_inference_conv` exists: XLA:CPU must not give it to YNNPACK.

  If this fails, XLA changed how it picks convolution kernels; the layer then costs one
  output row for nothing and should be revisited (`models/layers.py`).
  """
  if jax.default_backend() != 'cpu':
    pytest.skip('an XLA:CPU routing property')
  x, w, args, dn = _conv3x3_args()

  def uses_ynnpack(f):
    hlo = jax.jit(f).lower(x, w).compile().as_text()
    return bool(re.search(r'ynn_fusion[^\n]*\bkind=kCustom', hlo))

  if not uses_ynnpack(lambda x, w: jax.lax.conv_general_dilated(x, w, *args,
                                                                 dimension_numbers=dn)):
    pytest.skip('this XLA:CPU does not give convolutions to YNNPACK')
  assert not uses_ynnpack(lambda x, w: cpu_inference_conv(x, w, *args, dimension_numbers=dn))
  assert convolution_for(3, inference=True) is cpu_inference_conv
  assert convolution_for(3) is None and convolution_for(3, 2, inference=True) is None
  assert convolution_for(1, inference=True) is pointwise_conv


@pytest.fixture(scope='module')
def tiny():
  cfg = config_lib.load_config(CONFIGS / 'tiny.py')
  model = models.build(cfg.model)
  return cfg, model, models.init_variables(model)


@pytest.mark.parametrize('shape, match', [
    ((64, 64, 3), 'rank 4'),
    ((1, 3, 64, 64), '3 input channels'),
    ((1, 64, 48, 3), 'multiples of 32'),
    ((1, 100, 64, 3), 'multiples of 32'),
])
def test_bad_input_shapes_are_refused(tiny, shape, match):
  _, model, variables = tiny
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda x: model.apply(variables, x), jax.ShapeDtypeStruct(shape, jnp.float32))


def _flat(tree):
  return {'/'.join(p.key for p in path): np.asarray(v) for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_official_init(variables):
  flat = _flat(variables['params'])
  kernels = np.concatenate([v.ravel() for k, v in flat.items() if k.endswith('kernel')])
  assert abs(kernels.std() - 0.001) < 5e-5 and abs(kernels.mean()) < 1e-5
  assert all((v == 1).all() for k, v in flat.items() if k.endswith('scale'))
  assert all((v == 0).all() for k, v in flat.items() if k.endswith('bias'))
  for k, v in _flat(variables['batch_stats']).items():
    assert (v == (1 if k.endswith('var') else 0)).all(), k
  assert {v.dtype for v in flat.values()} == {np.dtype(np.float32)}


def test_module_initializers_are_official():
  # The Flax initializers themselves, on the head (convs, deconv, BN, biased final convs).
  head = HigherHead(output_channels=(34, 17), deconvs=(DeconvSpec(16, 1, True),))
  # An rbg key compiles much faster on XLA:CPU than the default threefry.
  variables = jax.jit(lambda x: head.init(jax.random.key(0, impl='unsafe_rbg'), x))(jnp.zeros((1, 8, 8, 32)))
  assert set(variables['params']) == {'final_layers_0', 'final_layers_1', 'deconv_layers_0_0_0',
                                      'deconv_layers_0_0_1', 'deconv_layers_0_1_0'}
  _check_official_init(variables)


def test_init_variables_matches_module_structure(tiny):
  _, model, variables = tiny
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, dict(abstract))
  assert sum(v.size for v in jax.tree.leaves(variables['params'])) == 551_387  # README 9
  _check_official_init(variables)


def test_output_shapes_and_bfloat16_compute(tiny):
  cfg, model, variables = tiny
  x = jax.random.normal(jax.random.key(1), (2, 64, 96, 3))
  out32 = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert [o.shape for o in out32] == [(2, 16, 24, 34), (2, 32, 48, 17)]
  with cfg.unlocked():
    cfg.model.dtype = 'bfloat16'
  model16 = models.build(cfg.model)
  # Same parameters (float32) serve both compute dtypes.
  abstract16 = jax.eval_shape(lambda x: model16.init(jax.random.key(0), x), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), dict(abstract16)) == jax.tree.map(
      lambda a: (a.shape, a.dtype), variables)
  out16 = jax.eval_shape(lambda v, x: model16.apply(v, x), variables, x)
  assert [o.dtype for o in out16] == [jnp.float32, jnp.float32]


def test_output_channels_follow_config():
  cfg = config_lib.load_config(CONFIGS / 'tiny.py')
  with cfg.unlocked():
    cfg.model.tag_per_joint = False
  model = models.build(cfg.model)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                       jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  assert [o.shape[-1] for o in out] == [18, 17]


def test_compiled_forward_normalizes_each_activation_once(tiny):
  """No BatchNorm's `x - mean` is recomputed along a chain in the optimised program.

  A regression guard for the fusion behaviour `layers.relu` exists for: with `max(x, 0)`
  XLA copied each residual chain into every later add; the tiny model's program held 112
  subtractions for its 52 BatchNorms, some 7 times over (W32: 2,993 for 301),
  at a cost of about 40% of the W32 forward on CPU. A block output read both by a matrix
  product (a 1x1 fusion convolution) and by an add may be computed twice, which costs one
  pass, not a chain.
  """
  cfg, model, variables = tiny
  count = len(jax.tree_util.tree_leaves(
      jax.tree_util.tree_map_with_path(lambda p, v: v if p[-1].key == 'mean' else None,
                                       variables['batch_stats'])))
  x = np.zeros((1, 64, 64, 3), np.float32)
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile().as_text()
  per_bn = collections.Counter(re.findall(r'= f32\[[^\]]*\]\S* subtract\(.*?op_name="([^"]*)"', hlo))
  assert count == 52 and len(per_bn) == count, (count, len(per_bn))
  assert max(per_bn.values()) <= 2 and sum(per_bn.values()) <= count + 4, per_bn.most_common(4)
