"""A 2-D convolution whose gradients are canonical convolutions.

XLA:CPU runs a convolution fast (Eigen) only in its canonical form:
NHWC input, HWIO kernel, NHWC output. Autodiff of a convolution yields an
input gradient with a transposed kernel (``01oi``) and a kernel gradient with
batch and features swapped (``f01b_i01o->01bf``). Outside loops XLA rewrites
them into canonical form with explicit transposes; inside a while loop (the
body of ``nn.scan`` over blocks, or of the scan over train steps) it does not, and they fall back to a naive
loop nest, many times slower (README, Performance, has the measurement).
``conv_general_dilated`` here states both gradients
as canonical convolutions of explicitly transposed operands, held apart by an
optimization barrier so XLA cannot fold the transposes back in.

Drop-in for ``lax.conv_general_dilated`` as ``nn.Conv(conv_general_dilated=)``.
NHWC/HWIO convolutions with integer strides, no dilation and one feature group
take this path; others (grouped convolutions of ResNeXt, for example) are
passed to ``lax.conv_general_dilated`` unchanged, with the same results and
XLA's own gradients.
"""

import contextlib
import functools
import threading
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_CANONICAL = ('NHWC', 'HWIO', 'NHWC')
_TRACING = threading.local()


@contextlib.contextmanager
def loop_body() -> Iterator[None]:
  """Networks traced inside take this path (``layers.conv_partial``): for
  the body of a loop, such as the ``lax.scan`` over train steps
  (``config.steps_per_dispatch``)."""
  depth = getattr(_TRACING, 'loops', 0)
  _TRACING.loops = depth + 1
  try:
    yield
  finally:
    _TRACING.loops = depth


def in_loop_body() -> bool:
  """Whether a ``loop_body`` is being traced on this thread."""
  return getattr(_TRACING, 'loops', 0) > 0


def _conv(x, w, strides, padding, lhs_dilation=(1, 1), rhs_dilation=(1, 1)):
  return lax.conv_general_dilated(x, w, strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers=_CANONICAL)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """NHWC x HWIO convolution with explicit ``padding`` ((lo, hi), (lo, hi))."""
  return _conv(x, w, strides, padding)


def _conv2d_fwd(x, w, strides, padding):
  return _conv(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, residuals, g):
  x, w = residuals
  kernel = w.shape[:2]
  in_size, out_size = x.shape[1:3], g.shape[1:3]
  # Input gradient: the transposed convolution, i.e. a stride-1 convolution of
  # the stride-dilated output gradient with the flipped, io-swapped kernel.
  w_t = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
  pad_in = []
  for k, s, (lo, hi), n_in, n_out in zip(kernel, strides, padding, in_size,
                                         out_size):
    # Rows of the padded input the forward pass never read get no gradient.
    unused = n_in + lo + hi - k - (n_out - 1) * s
    pad_in.append((k - 1 - lo, k - 1 - hi + unused))
  g_b, w_t = lax.optimization_barrier((g, w_t))
  dx = _conv(g_b, w_t, (1, 1), pad_in, lhs_dilation=strides)
  # Kernel gradient: batch becomes the feature axis, channels the batch axis,
  # the output gradient the (stride-dilated) kernel: [Ci,H,W,N] * [Ho,Wo,N,Co].
  x_t = jnp.transpose(x, (3, 1, 2, 0))
  g_t = jnp.transpose(g, (1, 2, 0, 3))
  x_t, g_t = lax.optimization_barrier((x_t, g_t))
  pad_w = []
  for k, s, (lo, _), n_in, n_out in zip(kernel, strides, padding, in_size,
                                        out_size):
    pad_w.append((lo, k - 1 + (n_out - 1) * s - n_in - lo + 1))
  dw = _conv(x_t, g_t, (1, 1), pad_w, rhs_dilation=strides)
  return dx, jnp.transpose(dw, (1, 2, 0, 3))


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def output_shape(x_shape, w_shape, strides, padding) -> tuple[int, ...]:
  """NHWC output shape of a canonical convolution (``canonical_arguments``'
  strides and explicit padding) of ``x_shape`` with HWIO ``w_shape``."""
  n, h, w, _ = x_shape
  kh, kw, _, k = w_shape
  (pt, pb), (pl, pr) = padding
  return (n, (h + pt + pb - kh) // strides[0] + 1,
          (w + pl + pr - kw) // strides[1] + 1, k)


def canonical_arguments(lhs, rhs, window_strides: Sequence[int], padding,
                        lhs_dilation=None, rhs_dilation=None,
                        dimension_numbers=None, feature_group_count: int = 1,
                        batch_group_count: int = 1, precision=None,
                        preferred_element_type=None):
  """``(strides, ((lo, hi), (lo, hi)))`` of a canonical 2-D convolution.

  Canonical: NHWC/HWIO/NHWC, no dilation, one feature and batch group, default
  precision and result type. Returns None for any other convolution.
  """
  dilated = any(d != 1 for d in tuple(lhs_dilation or ()) +
                tuple(rhs_dilation or ()))
  canonical = (
      lhs.ndim == 4 and not dilated and feature_group_count == 1 and
      batch_group_count == 1 and precision is None and
      preferred_element_type is None and
      (dimension_numbers is None or
       lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) ==
       lax.conv_dimension_numbers(lhs.shape, rhs.shape, _CANONICAL)))
  if not canonical:
    return None
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2],
                                  window_strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return tuple(int(s) for s in window_strides), padding


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """``lax.conv_general_dilated``; canonical 2-D cases go through ``conv2d``."""
  args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
          dimension_numbers, feature_group_count, batch_group_count, precision,
          preferred_element_type)
  canonical = canonical_arguments(*args)
  if canonical is None:
    return lax.conv_general_dilated(*args)
  return conv2d(lhs, rhs, *canonical)
