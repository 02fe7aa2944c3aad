"""The project's CPU convolution kernels (``cpu_conv.cc``) as a JAX convolution.

``conv_general_dilated`` here is ``lax.conv_general_dilated`` for
``nn.Conv(conv_general_dilated=...)``: a float32 NHWC/HWIO convolution runs
the AVX-512/AVX2 kernels (forward, input gradient and kernel gradient, as XLA
FFI custom calls inside the jitted step, with a ``custom_vjp``). A bfloat16
one runs the bf16 kernels (``cpu_conv_bf16``: AMX or AVX512-BF16) where the
CPU has them; there, a bf16 convolution with fewer than 16 input channels
(the RGB stem) runs the bf16 forward on its channels as they are, and its
gradients on the float32 kernels with the operands widened, each rounded to
bf16 once (no input copy padded to 16 channels).

The kernels work on channels in groups of 16 (``cpu_kernels.LANES``). Other
channel counts (DenseNet's growth of 12 and its concatenations, PyramidNet's
widths) are padded with zero channels to the next multiple of 16, and the
padding is sliced off the result: the output channels always, and the
input channels of the bf16 kernels and of the float32 input gradient. The
zeros add nothing to a sum, so the values are the unpadded convolution's.
Any other convolution (grouped, dilated, bf16 without the bf16 kernels, ...)
is handed to the fallback (XLA) before tracing.

Networks use it where ``model.conv_backend`` resolves to 'cpu_kernels'
(``cpu_kernels.resolve``; ``layers.conv_partial``).
"""

import functools
from typing import Callable, Optional, Sequence

import jax
from jax import lax
import jax.numpy as jnp

from jax_resnet.ops import canonical_conv
from jax_resnet.ops import cpu_conv_bf16
from jax_resnet.ops import cpu_kernels

_FORWARD = 'jax_resnet_conv_forward'
_INPUT_GRAD = 'jax_resnet_conv_input_grad'
_KERNEL_GRAD = 'jax_resnet_conv_kernel_grad'


def _call(target: str, out_shape, a, b, strides, padding) -> jax.Array:
  (pt, pb), (pl, pr) = padding
  return cpu_kernels.call(
      target, jax.ShapeDtypeStruct(out_shape, jnp.float32), a, b,
      stride_h=strides[0], stride_w=strides[1], pad_top=pt, pad_bottom=pb,
      pad_left=pl, pad_right=pr)


def supported(x_shape, w_shape, strides, padding) -> bool:
  """Whether the kernels run this canonical float32 convolution."""
  kh, kw, _, k = w_shape
  out = canonical_conv.output_shape(x_shape, w_shape, strides, padding)
  return (k % cpu_kernels.LANES == 0 and min(strides) >= 1 and out[1] >= 1 and
          out[2] >= 1 and all(lo >= 0 and hi >= 0 for lo, hi in padding) and
          kh <= x_shape[1] + sum(padding[0]) and
          kw <= x_shape[2] + sum(padding[1]))


def input_grad_supported(x_shape, w_shape, strides, padding) -> bool:
  """Whether the input-gradient kernel runs it, its input channels padded
  to the lanes (else XLA's gradient)."""
  del x_shape  # Any input size the forward takes.
  kh, kw, _, _ = w_shape
  (pt, pb), (pl, pr) = padding
  small_padding = max(pt, pb) < kh and max(pl, pr) < kw
  return small_padding or max(strides) > 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """NHWC x HWIO float32 convolution on the kernels (``supported`` shapes)."""
  out = canonical_conv.output_shape(x.shape, w.shape, strides, padding)
  return _call(_FORWARD, out, x, w, strides, padding)


def _conv2d_fwd(x, w, strides, padding):
  return conv2d(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, residuals, g):
  x, w = residuals
  if input_grad_supported(x.shape, w.shape, strides, padding):
    # Zero kernel rows for the padded input channels: their gradient is
    # zero, and sliced off.
    c = cpu_kernels.lanes(x.shape[-1])
    dx = _call(_INPUT_GRAD, x.shape[:-1] + (c,), g,
               cpu_kernels.pad_channels(w, 2, c), strides,
               padding)[..., :x.shape[-1]]
  else:
    _, vjp = jax.vjp(
        lambda x_: lax.conv_general_dilated(
            x_, w, strides, padding,
            dimension_numbers=('NHWC', 'HWIO', 'NHWC')), x)
    dx, = vjp(g)
  dw = _call(_KERNEL_GRAD, w.shape, x, g, strides, padding)
  return dx, dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None, *,
                         fallback: Optional[Callable[..., jax.Array]] = None
                         ) -> jax.Array:
  """``lax.conv_general_dilated`` on the kernels where they run it.

  Args:
    lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
    dimension_numbers, feature_group_count, batch_group_count, precision,
    preferred_element_type: as ``lax.conv_general_dilated``.
    fallback: the convolution for what the kernels do not run (default
      ``lax.conv_general_dilated``).

  Returns:
    The convolution's output.
  """
  args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
          dimension_numbers, feature_group_count, batch_group_count, precision,
          preferred_element_type)
  canonical = canonical_conv.canonical_arguments(*args)
  route = _route(lhs, rhs, canonical)
  if route is None:
    return (fallback or lax.conv_general_dilated)(*args)
  kernels, c, k = route
  x = cpu_kernels.pad_channels(lhs, 3, c)
  w = cpu_kernels.pad_channels(cpu_kernels.pad_channels(rhs, 2, c), 3, k)
  out = kernels(x, w, *canonical)
  return out[..., :rhs.shape[3]] if k != rhs.shape[3] else out


def _widened(x, w, strides, padding):
  """The float32 kernels on exactly widened bf16 operands, the output
  rounded to bf16 once: the bf16 kernels' arithmetic."""
  return conv2d(x.astype(jnp.float32), w.astype(jnp.float32), strides,
                padding).astype(jnp.bfloat16)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _narrow_bf16(x, w, strides, padding):
  """A bf16 convolution with fewer input channels than the lanes (the RGB
  stem): the bf16 forward, which reads them as they are, and ``_widened``'s
  gradients, which need no input padded to 16 channels (the bf16 kernel
  gradient's padding would be five times the work at 3 channels). Both sum
  the same exact products in float32 and round once."""
  return cpu_conv_bf16.conv2d(x, w, strides, padding)


def _narrow_bf16_fwd(x, w, strides, padding):
  return _narrow_bf16(x, w, strides, padding), (x, w)


def _narrow_bf16_bwd(strides, padding, residuals, g):
  x, w = residuals
  _, vjp = jax.vjp(lambda a, b: _widened(a, b, strides, padding), x, w)
  return vjp(g)


_narrow_bf16.defvjp(_narrow_bf16_fwd, _narrow_bf16_bwd)


def _route(lhs, rhs, canonical):
  """``(kernels, input channels, output channels)``: which kernels run this
  convolution (canonical arguments, or None), on operands padded to that
  many channels; None where the kernels do not run it."""
  if canonical is None or lhs.dtype != rhs.dtype:
    return None
  c, k = rhs.shape[2], cpu_kernels.lanes(rhs.shape[3])

  def padded(channels):
    return lhs.shape[:3] + (channels,), rhs.shape[:2] + (channels, k)
  if lhs.dtype == jnp.bfloat16 and cpu_conv_bf16.available():
    bf16 = cpu_conv_bf16.supported(*padded(cpu_kernels.lanes(c)), *canonical)
    # Any input width: the bf16 gradients pad it themselves.
    if bf16 and c >= cpu_kernels.LANES:
      return cpu_conv_bf16.conv2d, c, k
    if not supported(*padded(c), *canonical):
      return None
    # The RGB stem (too few channels to fill the bf16 kernels' lanes), or a
    # shape only the float32 kernels take.
    return (_narrow_bf16 if bf16 else _widened), c, k
  if lhs.dtype == jnp.float32 and supported(*padded(c), *canonical):
    return conv2d, c, k
  return None
