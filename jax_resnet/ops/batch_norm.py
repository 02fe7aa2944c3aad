"""BatchNorm with a hand-written backward pass, optionally fused with ReLU.

Same variables and results as ``flax.linen.BatchNorm`` with
``use_fast_variance=False`` (params ``scale``/``bias``, batch_stats
``mean``/``var``, biased batch variance, Flax's momentum convention), so
checkpoints, the PyTorch importer and parameter counts are unchanged. What
differs is the compiled program, which matters on CPU:

* Forward: two reductions (mean, then the two-pass variance) and one
  element-wise pass ``(x - mean) * a + bias`` (then ReLU's select). The
  per-channel vectors go through ``lax.optimization_barrier`` (on the CPU
  backend only, ``platforms.cpu_work``) so that XLA:CPU
  broadcasts them inside the element-wise pass; without it the broadcast
  ``scale * rsqrt(var)`` was materialised as a full-size tensor (read and
  written once more per layer), and ReLU's max against a materialised zero
  cost another three passes.
* Backward: one reduction pass (sum g, sum g (x - mean)) and one element-wise
  pass ``dx = g a + (x - mean) k1 + k0``, the closed form of BN's gradient,
  with ReLU's mask applied on the way in. Autodiff of the forward produced
  several more full-size passes.

Statistics and the normalisation are computed in float32 whatever the input
dtype; the output is cast to ``dtype``.

With ``use_kernels`` (``model.conv_backend`` resolving to 'cpu_kernels'), a
float32 (or bfloat16, with bfloat16 output) BatchNorm of any width runs the
same passes as the project's multi-threaded AVX-512/AVX2 kernels (``cpu_batch_norm.cc``): the statistics in one pass with
double-precision sums, the normalisation (+ ReLU) in one, and the backward
pass as one reduction and one element-wise pass. XLA:CPU runs these fusions
on one thread. In bfloat16 the kernels compute in float32 and round each
output element once.

``__call__(x, relu=True, residual=r)`` is a residual block's end,
ReLU(BN(x) + r). On the kernels the addition joins the BatchNorm passes
(the forward pass reads r, the backward pass writes r's gradient, the
masked g), where XLA would add and mask in two single-threaded passes of
its own; the results are bitwise those of the separate passes. A scalar
``branch_scale`` (a gated block's gate, a stochastic-depth draw) multiplies
the BatchNorm's scale and bias there: equal to scaling its output within
float rounding. Elsewhere these are the separate operations.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jax_resnet import platforms
from jax_resnet.ops import cpu_kernels


def _cpu_barrier(values):
  """``lax.optimization_barrier`` on the CPU backend, where XLA:CPU needs it
  (module docstring); GPU and TPU compilers fuse the plain program."""
  return lax.optimization_barrier(values) if platforms.cpu_work() else values


def _affine(x: jax.Array, mean: jax.Array, a: jax.Array, bias: jax.Array,
            relu: bool) -> jax.Array:
  """``(x - mean) * a + bias`` (then ReLU), broadcasting inside the pass."""
  mean, a, bias = _cpu_barrier((mean, a, bias))
  y = (x - mean) * a + bias
  # A select, not max(y, 0): XLA:CPU materialises max's broadcast zero as a
  # full-size tensor and runs that max three times slower than the select.
  # Selecting on y <= 0 passes a NaN on, as max does.
  return jnp.where(y <= 0, jnp.zeros_like(y), y) if relu else y


def kernels_run(x: jax.Array, dtype: Any) -> bool:
  """Whether the CPU kernels take a BatchNorm of ``x`` with output
  ``dtype``: float32 to float32, or bfloat16 to bfloat16, any number of
  channels."""
  return (x.dtype in (jnp.float32, jnp.bfloat16) and
          jnp.dtype(dtype) == x.dtype and x.ndim >= 2)


def _vector(c: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((c,), jnp.float32)


def _kernel(name: str, x: jax.Array) -> str:
  """The FFI target of pass ``name`` for ``x``'s dtype."""
  suffix = '_bf16' if x.dtype == jnp.bfloat16 else ''
  return f'jax_resnet_bn_{name}{suffix}'


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _kernel_affine(x, mean, a, bias, residual, relu):
  """``_affine`` (+ ``residual`` before the ReLU, where not None) on the CPU
  kernels, differentiable in all five arrays."""
  return _kernel_apply(x, mean, a, bias, residual, relu)


def _kernel_apply(x, mean, a, bias, residual, relu):
  out = jax.ShapeDtypeStruct(x.shape, x.dtype)
  if residual is None:
    return cpu_kernels.call(_kernel('apply', x), out, x, mean, a, bias,
                            relu=int(relu))
  return cpu_kernels.call(_kernel('apply_residual', x), out, x, mean, a,
                          bias, residual, relu=int(relu))


def _kernel_grad_apply(g, x, y, mean, a, k1, k0, relu, with_residual):
  """``(dx, d residual)`` of the kernels' backward element-wise pass; the
  residual's gradient (``g``, ReLU-masked) is None without one."""
  out = jax.ShapeDtypeStruct(x.shape, x.dtype)
  if not with_residual:
    return cpu_kernels.call(_kernel('grad_apply', x), out, g, x, y, mean, a,
                            k1, k0, relu=int(relu)), None
  if not relu:
    return cpu_kernels.call(_kernel('grad_apply', x), out, g, x, y, mean, a,
                            k1, k0, relu=0), g
  return cpu_kernels.call(_kernel('grad_apply_residual', x), (out, out), g,
                          x, y, mean, a, k1, k0, relu=1)


def _kernel_affine_fwd(x, mean, a, bias, residual, relu):
  y = _kernel_affine(x, mean, a, bias, residual, relu)
  return y, (x, y if relu else None, mean, a, residual is not None)


def _kernel_affine_bwd(relu, residuals, g):
  x, y, mean, a, has_residual = residuals
  c = x.shape[-1]
  mask = y if relu else g  # Not read without ReLU.
  sum_g, sum_gx = cpu_kernels.call(_kernel('grad_sums', x),
                                   (_vector(c), _vector(c)), g, x, mask, mean,
                                   relu=int(relu))
  zeros = jnp.zeros((c,), jnp.float32)
  dx, dr = _kernel_grad_apply(g, x, mask, mean, a, zeros, zeros, relu,
                              has_residual)
  return dx, -a * sum_g, sum_gx, sum_g, dr


_kernel_affine.defvjp(_kernel_affine_fwd, _kernel_affine_bwd)


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.mean(jnp.square(x - mean), axes)  # two-pass: no cancellation
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array,
              epsilon: float, relu: bool, dtype: Any,
              use_kernels: bool = False, residual: Optional[jax.Array] = None
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode BN (+ ``residual``) (+ ReLU) of ``x`` over all axes but
  the last.

  Returns ``(y, batch_mean, batch_var)``; the batch statistics are returned for
  the running averages and are differentiable too. ``use_kernels`` runs the
  passes on the CPU kernels where ``kernels_run``; a ``residual`` is added
  only there (``BatchNorm`` adds it otherwise).
  """
  return _normalize_fwd(x, scale, bias, epsilon, relu, dtype, use_kernels,
                        residual)[0]


def _normalize_fwd(x, scale, bias, epsilon, relu, dtype, use_kernels,
                   residual):
  if use_kernels and kernels_run(x, dtype):
    c = x.shape[-1]
    mean, var = cpu_kernels.call(_kernel('stats', x),
                                 (_vector(c), _vector(c)), x)
    inv = lax.rsqrt(var + epsilon)
    y = _kernel_apply(x, mean, inv * scale, bias, residual, relu)
    return (y, mean, var), (x, y if relu else None, mean, inv, scale,
                            residual is not None)
  if residual is not None:
    raise ValueError('normalize adds a residual on the CPU kernels only.')
  x32 = x.astype(jnp.float32)
  mean, var = _moments(x32)
  inv = lax.rsqrt(var + epsilon)
  y = _affine(x32, mean, inv * scale, bias, relu).astype(dtype)
  # With ReLU the output is kept for its mask; it is the next layer's input,
  # which autodiff keeps anyway.
  return (y, mean, var), (x, y if relu else None, mean, inv, scale, False)


def _backward_coefficients(sum_g, sum_g_xhat, inv, scale, g_mean, g_var,
                           count):
  """Per-channel ``(a, k1, k0)`` of ``dx = g a + (x - mean) k1 + k0``.

  dx = a (g - mean(g) - xhat mean(g xhat)) + d mean/dx g_mean + d var/dx g_var.
  """
  a = inv * scale
  k1 = -a * inv * sum_g_xhat / count + 2.0 * g_var / count
  k0 = -a * sum_g / count + g_mean / count
  return a, k1, k0


def _normalize_bwd(epsilon, relu, dtype, use_kernels, residuals, cotangents):
  del epsilon
  x, y, mean, inv, scale, has_residual = residuals
  g, g_mean, g_var = cotangents
  if use_kernels and kernels_run(x, dtype):
    c, count = x.shape[-1], x.size // x.shape[-1]
    mask = y if relu else g  # Not read without ReLU.
    sum_g, sum_gx = cpu_kernels.call(_kernel('grad_sums', x),
                                     (_vector(c), _vector(c)), g, x, mask,
                                     mean, relu=int(relu))
    sum_g_xhat = sum_gx * inv
    a, k1, k0 = _backward_coefficients(sum_g, sum_g_xhat, inv, scale, g_mean,
                                       g_var, count)
    dx, dr = _kernel_grad_apply(g, x, mask, mean, a, k1, k0, relu,
                                has_residual)
    return dx, sum_g_xhat, sum_g, dr
  if relu:
    g = jnp.where(y > 0, g, jnp.zeros_like(g))
  g = g.astype(jnp.float32)
  x32 = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  sum_g = jnp.sum(g, axes)
  sum_g_xhat = jnp.sum(g * (x32 - _cpu_barrier(mean)), axes) * inv
  a, k1, k0 = _backward_coefficients(sum_g, sum_g_xhat, inv, scale, g_mean,
                                     g_var, count)
  mean, a, k1, k0 = _cpu_barrier((mean, a, k1, k0))
  dx = g * a + (x32 - mean) * k1 + k0
  return dx.astype(x.dtype), sum_g_xhat, sum_g, None


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last; ``__call__(x, relu=True)`` fuses ReLU.

  Attributes:
    use_running_average: evaluation mode (running statistics, no updates).
    momentum: Flax convention, the weight of the old running average (PyTorch
      momentum m is 1 - m here; ``layers.norm_partial`` converts).
    epsilon: added to the variance.
    dtype: output dtype (None: the input's).
    use_kernels: run float32 and bfloat16 BatchNorm on the project's CPU
      kernels.
  """

  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Optional[Any] = None
  use_kernels: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, relu: bool = False,
               residual: Optional[jax.Array] = None,
               branch_scale: Optional[jax.Array] = None) -> jax.Array:
    """BN of ``x``, times the scalar ``branch_scale`` and plus ``residual``
    (x's shape) where given, then ReLU where ``relu``:
    ``BatchNorm()(x, relu=True, residual=shortcut)`` ends a residual block,
    ReLU(BN(x) + shortcut).

    On the kernels a ``branch_scale`` (a block's gate, a stochastic-depth
    draw) multiplies BatchNorm's scale and bias; elsewhere, and without a
    residual, the output.
    """
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,),
                            jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,),
                           jnp.float32)
    dtype = self.dtype or x.dtype
    kernels = self.use_kernels and kernels_run(x, dtype)
    if residual is not None and residual.shape != x.shape:
      raise ValueError(f'BatchNorm: residual of shape {residual.shape} for '
                       f'an input of shape {x.shape}.')
    fused = (residual is not None and kernels and
             residual.dtype == x.dtype)
    # Otherwise scale, residual and ReLU are separate operations after the
    # BatchNorm (which XLA fuses on GPU and TPU).
    separate = not fused and (residual is not None or
                              branch_scale is not None)
    bn_relu = relu and not separate
    bn_residual = residual if fused else None
    if fused and branch_scale is not None:
      branch_scale_32 = jnp.asarray(branch_scale, jnp.float32)
      scale, bias = scale * branch_scale_32, bias * branch_scale_32
    if self.use_running_average:
      a = lax.rsqrt(ra_var.value + self.epsilon) * scale
      if kernels:
        y = _kernel_affine(x, ra_mean.value, a, bias, bn_residual, bn_relu)
      else:
        y = _affine(x.astype(jnp.float32), ra_mean.value, a, bias,
                    bn_relu).astype(dtype)
    else:
      y, mean, var = normalize(x, scale, bias, self.epsilon, bn_relu, dtype,
                               self.use_kernels, bn_residual)
      if not self.is_initializing():
        keep = self.momentum
        ra_mean.value = keep * ra_mean.value + (1 - keep) * lax.stop_gradient(
            mean)
        ra_var.value = keep * ra_var.value + (1 - keep) * lax.stop_gradient(
            var)
    if separate:
      if branch_scale is not None:
        y = y * jnp.asarray(branch_scale).astype(y.dtype)
      if residual is not None:
        y = y + residual
      if relu:
        y = nn.relu(y)
    return y
