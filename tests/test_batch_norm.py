"""batch_norm.BatchNorm equals Flax's BatchNorm (+ ReLU) in values and grads."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_resnet.ops import batch_norm
from jax_resnet.ops import cpu_kernels


# The CPU kernels (where this CPU runs them) and XLA's passes.
KERNELS_AND_XLA = [
    pytest.param(True, marks=pytest.mark.skipif(
        not cpu_kernels.cpu_can_run()[0],
        reason='this CPU cannot run the kernels')),
    False]


def _relative(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _inputs(seed=0, shape=(8, 5, 5, 6)):
  rng = np.random.default_rng(seed)
  # Offset and scaled: a one-pass variance would lose digits here.
  x = jnp.asarray(rng.standard_normal(shape) * 3 + 2, jnp.float32)
  g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  params = {'scale': jnp.asarray(rng.uniform(0.5, 1.5, shape[-1]), jnp.float32),
            'bias': jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)}
  stats = {'mean': jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32),
           'var': jnp.asarray(rng.uniform(0.5, 2.0, shape[-1]), jnp.float32)}
  return x, g, params, stats


@pytest.mark.parametrize('relu', [False, True])
def test_training_mode_matches_flax(relu):
  x, g, params, stats = _inputs()
  ours = batch_norm.BatchNorm(use_running_average=False, momentum=0.9,
                              epsilon=1e-5)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5,
                         use_fast_variance=False)

  def loss(apply, p, x):
    y, new = apply({'params': p, 'batch_stats': stats}, x)
    return jnp.sum(y * g), (y, new['batch_stats'])

  def apply_ours(variables, x):
    return ours.apply(variables, x, relu=relu, mutable=['batch_stats'])

  def apply_flax(variables, x):
    y, new = flax_bn.apply(variables, x, mutable=['batch_stats'])
    return (jax.nn.relu(y) if relu else y), new

  (_, (y1, s1)), g1 = jax.value_and_grad(
      lambda p, x: loss(apply_ours, p, x), (0, 1), has_aux=True)(params, x)
  (_, (y2, s2)), g2 = jax.value_and_grad(
      lambda p, x: loss(apply_flax, p, x), (0, 1), has_aux=True)(params, x)
  assert _relative(y1, y2) < 1e-6
  assert _relative(s1['mean'], s2['mean']) < 1e-6
  assert _relative(s1['var'], s2['var']) < 1e-6
  assert _relative(g1[0]['scale'], g2[0]['scale']) < 1e-5
  assert _relative(g1[0]['bias'], g2[0]['bias']) < 1e-6
  assert _relative(g1[1], g2[1]) < 1e-5
  if relu:
    assert float(jnp.min(y1)) == 0.0 and float(jnp.max(y1)) > 0


@pytest.mark.parametrize('relu', [False, True])
def test_eval_mode_matches_flax(relu):
  x, _, params, stats = _inputs(1)
  variables = {'params': params, 'batch_stats': stats}
  y1 = batch_norm.BatchNorm(use_running_average=True, epsilon=1e-5).apply(
      variables, x, relu=relu)
  y2 = nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(variables, x)
  np.testing.assert_allclose(y1, jax.nn.relu(y2) if relu else y2, rtol=1e-6,
                             atol=1e-6)


def test_variables_and_init_match_flax():
  x = jnp.ones((2, 4, 4, 3))
  ours = batch_norm.BatchNorm().init(jax.random.PRNGKey(0), x)
  theirs = nn.BatchNorm(use_running_average=False).init(
      jax.random.PRNGKey(0), x)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b)


def test_gradient_through_batch_statistics():
  """The returned mean and variance are differentiable, exactly."""
  x, g, _, _ = _inputs(2)
  c = x.shape[-1]
  weights = jnp.arange(1.0, c + 1)

  def ours(x):
    y, mean, var = batch_norm.normalize(x, jnp.ones(c), jnp.zeros(c), 1e-5,
                                        False, jnp.float32)
    return jnp.sum(y * g) + jnp.sum(mean * weights) + jnp.sum(var * weights)

  def reference(x):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    y = (x - mean) * jax.lax.rsqrt(var + 1e-5)
    return jnp.sum(y * g) + jnp.sum(mean * weights) + jnp.sum(var * weights)

  assert _relative(jax.grad(ours)(x), jax.grad(reference)(x)) < 1e-5


def test_bfloat16_input_keeps_float32_statistics():
  x, g, params, stats = _inputs(3)
  model = batch_norm.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
  variables = {'params': params, 'batch_stats': stats}
  y, new = model.apply(variables, x.astype(jnp.bfloat16), relu=True,
                       mutable=['batch_stats'])
  y32, new32 = model.clone(dtype=jnp.float32).apply(
      variables, x, relu=True, mutable=['batch_stats'])
  assert y.dtype == jnp.bfloat16
  assert new['batch_stats']['var'].dtype == jnp.float32
  assert _relative(y.astype(jnp.float32), y32) < 2e-2
  assert _relative(new['batch_stats']['var'], new32['batch_stats']['var']) < 1e-2
  grad = jax.grad(lambda x: jnp.sum(model.apply(
      variables, x, relu=True, mutable=['batch_stats'])[0].astype(
          jnp.float32) * g))(x.astype(jnp.bfloat16))
  assert grad.dtype == jnp.bfloat16


def test_running_average_uses_momentum():
  x, _, params, stats = _inputs(4)
  _, new = batch_norm.BatchNorm(use_running_average=False, momentum=0.75).apply(
      {'params': params, 'batch_stats': stats}, x, mutable=['batch_stats'])
  batch_mean = jnp.mean(x, (0, 1, 2))
  batch_var = jnp.var(x, (0, 1, 2))
  np.testing.assert_allclose(new['batch_stats']['mean'],
                             0.75 * stats['mean'] + 0.25 * batch_mean,
                             rtol=1e-6)
  np.testing.assert_allclose(new['batch_stats']['var'],
                             0.75 * stats['var'] + 0.25 * batch_var, rtol=1e-5)


def _kernel_bn_outputs(use_kernels, relu, train, x, g, params, stats):
  """(y, new stats, input and parameter gradients) of one BatchNorm."""
  bn = batch_norm.BatchNorm(use_running_average=not train, momentum=0.9,
                            epsilon=1e-5, use_kernels=use_kernels)

  def loss(p, x):
    y, new = bn.apply({'params': p, 'batch_stats': stats}, x, relu=relu,
                      mutable=['batch_stats'])
    # The batch statistics feed the loss too, so their cotangents are not 0.
    extra = 0.0
    if train:
      extra = jnp.sum(new['batch_stats']['mean'] * 0.3 +
                      new['batch_stats']['var'] * 0.2)
    return jnp.sum(y * g) + extra, (y, new['batch_stats'])

  fn = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
  hlo = fn.lower(params, x).as_text()
  (dp, dx), (y, new) = fn(params, x)
  return hlo, (y, new['mean'], new['var'], dx, dp['scale'], dp['bias'])


@pytest.mark.skipif(not cpu_kernels.cpu_can_run()[0],
                    reason='this CPU cannot run the kernels')
@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('shape', [(8, 5, 5, 16), (3, 7, 9, 48), (64, 4, 4, 64),
                                   (5, 3, 3, 6), (3, 7, 9, 36)])
def test_kernels_match_the_xla_passes(shape, relu, train):
  """The CPU kernel passes give XLA's values and gradients (rel. 1e-5)."""
  inputs = _inputs(seed=1, shape=shape)
  hlo, ours = _kernel_bn_outputs(True, relu, train, *inputs)
  _, ref = _kernel_bn_outputs(False, relu, train, *inputs)
  for target in ('apply', 'grad_sums', 'grad_apply'):
    assert f'jax_resnet_bn_{target}' in hlo
  assert ('jax_resnet_bn_stats' in hlo) == train
  names = ('y', 'mean', 'var', 'dx', 'dscale', 'dbias')
  for name, a, b in zip(names, ours, ref):
    assert _relative(a, b) < 1e-5, (name, _relative(a, b))


@pytest.mark.skipif(not cpu_kernels.cpu_can_run()[0],
                    reason='this CPU cannot run the kernels')
def test_kernels_skip_what_they_do_not_run():
  """float16 stays on XLA."""
  x, g, params, stats = _inputs(shape=(4, 3, 3, 16))
  hlo, _ = _kernel_bn_outputs(True, True, True, x.astype(jnp.float16),
                              g.astype(jnp.float16), params, stats)
  assert 'jax_resnet_bn' not in hlo


def _residual_outputs(fused, use_kernels, relu, train, x, g, r, params,
                      stats):
  """(hlo, y, new stats and the gradients for x, r and the parameters) of
  ReLU(BN(x) + r), fused (``residual=``) or as separate operations."""
  bn = batch_norm.BatchNorm(use_running_average=not train, momentum=0.9,
                            epsilon=1e-5, use_kernels=use_kernels)

  def loss(p, x, r):
    variables = {'params': p, 'batch_stats': stats}
    if fused:
      y, new = bn.apply(variables, x, relu=relu, residual=r,
                        mutable=['batch_stats'])
    else:
      y, new = bn.apply(variables, x, mutable=['batch_stats'])
      y = y + r
      y = jax.nn.relu(y) if relu else y
    extra = 0.0
    if train:
      extra = jnp.sum(new['batch_stats']['mean'] * 0.3 +
                      new['batch_stats']['var'] * 0.2)
    return jnp.sum(y * g) + extra, (y, new['batch_stats'])

  fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
  hlo = fn.lower(params, x, r).as_text()
  (dp, dx, dr), (y, new) = fn(params, x, r)
  return hlo, (y, new['mean'], new['var'], dx, dr, dp['scale'], dp['bias'])


@pytest.mark.parametrize('channels', [32, 20])  # 20: a channel tail.
@pytest.mark.parametrize('use_kernels', KERNELS_AND_XLA)
@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('relu', [True, False])
def test_residual_fused_equals_separate_operations_bitwise(use_kernels, train,
                                                          relu, channels):
  """``BatchNorm(x, relu, residual=r)``, a block's end, is bitwise ReLU(BN(x)
  + r) computed separately: values, statistics and every gradient, r's
  included. On the kernels it is the residual passes."""
  x, g, params, stats = _inputs(seed=5, shape=(4, 6, 6, channels))
  r = jnp.asarray(np.random.default_rng(6).standard_normal(x.shape),
                  jnp.float32)
  hlo, fused = _residual_outputs(True, use_kernels, relu, train, x, g, r,
                                 params, stats)
  _, separate = _residual_outputs(False, use_kernels, relu, train, x, g, r,
                                  params, stats)
  assert ('jax_resnet_bn_apply_residual' in hlo) == use_kernels
  assert ('jax_resnet_bn_grad_apply_residual' in hlo) == (use_kernels and
                                                          relu)
  names = ('y', 'mean', 'var', 'dx', 'dr', 'dscale', 'dbias')
  for name, a, b in zip(names, fused, separate):
    np.testing.assert_array_equal(a, b, err_msg=name)
  if relu:
    assert float(jnp.min(fused[0])) == 0.0
    assert 0 < float(jnp.mean(fused[4] == 0)) < 1  # r's gradient is masked.


@pytest.mark.skipif(not cpu_kernels.cpu_can_run()[0],
                    reason='this CPU cannot run the kernels')
@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('relu', [True, False])
@pytest.mark.parametrize('with_residual', [True, False])
@pytest.mark.parametrize('channels', [32, 20])  # 20: a channel tail.
def test_bf16_kernels_round_the_float32_passes_once(train, relu,
                                                     with_residual, channels):
  """On bfloat16 tensors the kernels compute what they compute on the same
  values in float32 and round each output element once, to nearest even:
  y, dx and dr are the float32 kernels' results rounded to bf16, bit for
  bit; statistics and parameter gradients (float32) are the same bits."""
  x, g, params, stats = _inputs(seed=8, shape=(4, 6, 6, channels))
  r = jnp.asarray(np.random.default_rng(9).standard_normal(x.shape),
                  jnp.float32)
  bf16 = lambda a: a.astype(jnp.bfloat16)
  widened = [bf16(a).astype(jnp.float32) for a in (x, g, r)]
  runs = {}
  for dtype, (x_, g_, r_) in ((jnp.bfloat16, [bf16(a) for a in widened]),
                              (jnp.float32, widened)):
    hlo, runs[dtype] = _residual_outputs(
        with_residual, True, relu, train, x_, g_,
        r_ if with_residual else jnp.zeros_like(r_), params, stats)
    assert ('jax_resnet_bn_apply' in hlo and
            ('_bf16' in hlo) == (dtype == jnp.bfloat16))
  names = ('y', 'mean', 'var', 'dx', 'dr', 'dscale', 'dbias')
  for name, a, b in zip(names, runs[jnp.bfloat16], runs[jnp.float32]):
    if name in ('y', 'dx', 'dr'):
      assert a.dtype == jnp.bfloat16, name
      b = bf16(b)
    np.testing.assert_array_equal(np.asarray(a, np.float32),
                                  np.asarray(b, np.float32), err_msg=name)
  # Not all exactly representable: the rounding was exercised.
  assert not np.array_equal(np.asarray(runs[jnp.float32][0]),
                            np.asarray(bf16(runs[jnp.float32][0]),
                                       np.float32))


def test_residual_of_another_shape_is_refused():
  x, _, params, stats = _inputs()
  bn = batch_norm.BatchNorm(use_running_average=True)
  with pytest.raises(ValueError, match=r'residual of shape \(8, 5, 5, 3\) for '
                     r'an input of shape \(8, 5, 5, 6\)'):
    bn.apply({'params': params, 'batch_stats': stats}, x, relu=True,
             residual=x[..., :3])


@pytest.mark.parametrize('use_kernels', KERNELS_AND_XLA)
@pytest.mark.parametrize('with_residual', [False, True])
def test_relu_passes_a_nan_on(use_kernels, with_residual):
  """A NaN in the input reaches the output through the ReLU, as through
  XLA's and PyTorch's, so that the loss shows it (the run's NaN check)."""
  x, _, params, stats = _inputs(seed=7, shape=(4, 3, 3, 16))
  x = x.at[0, 0, 0, 0].set(jnp.nan)
  bn = batch_norm.BatchNorm(use_running_average=True, use_kernels=use_kernels)
  y = bn.apply({'params': params, 'batch_stats': stats}, x, relu=True,
               residual=jnp.zeros_like(x) if with_residual else None)
  assert bool(jnp.isnan(y[0, 0, 0, 0]))
  assert int(jnp.sum(jnp.isnan(y))) == 1


@pytest.mark.skipif(not cpu_kernels.cpu_can_run()[0],
                    reason='this CPU cannot run the kernels')
@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('branch_scale', [0.0, 0.37, 1.0])
def test_branch_scale_on_the_kernels_equals_separate_operations(train,
                                                               branch_scale):
  """ReLU(s BN(x) + r), a gated or stochastic-depth block's end: on the
  kernels s multiplies BatchNorm's scale and bias, which equals scaling the
  output (XLA's separate operations) within float rounding, the gradient of
  s included; s = 1 is bitwise the unscaled pass."""
  x, g, params, stats = _inputs(seed=8, shape=(4, 6, 6, 16))
  r = jnp.asarray(np.random.default_rng(9).standard_normal(x.shape),
                  jnp.float32)

  def outputs(use_kernels, s):
    bn = batch_norm.BatchNorm(use_running_average=not train,
                              use_kernels=use_kernels)

    def loss(p, x, r, s):
      y, new = bn.apply({'params': p, 'batch_stats': stats}, x, relu=True,
                        residual=r, branch_scale=s, mutable=['batch_stats'])
      return jnp.sum(y * g), (y, new['batch_stats'])

    fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
    (dp, dx, dr, ds), (y, new) = fn(params, x, r, s)
    return (y, new['mean'], new['var'], dx, dr, dp['scale'], dp['bias'], ds)

  s = jnp.float32(branch_scale)
  ours = outputs(True, s)
  separate = outputs(False, s)
  names = ('y', 'mean', 'var', 'dx', 'dr', 'dscale', 'dbias', 'dgate')
  for name, a, b in zip(names, ours, separate):
    assert _relative(a, b) < 1e-5, (name, _relative(a, b))
  assert float(jnp.abs(ours[-1])) > 0  # The gate learns.
  if branch_scale == 1.0:
    unscaled = outputs(True, None)
    for name, a, b in zip(names[:-1], ours, unscaled):
      np.testing.assert_array_equal(a, b, err_msg=name)
