"""The project's CPU convolution kernels (``cpu_conv.cc``) as a JAX convolution.

``conv_general_dilated`` here is ``lax.conv_general_dilated`` for
``nn.Conv(conv_general_dilated=...)``: a float32 NHWC/HWIO convolution whose
output channels are a multiple of 16 runs the AVX-512/AVX2 kernels (forward, input
gradient and kernel gradient, as XLA FFI custom calls inside the jitted step,
with a ``custom_vjp``). A bfloat16 one with input and output channels in
multiples of 16 runs the bf16 kernels (``cpu_conv_bf16``: AMX or AVX512-BF16)
where the CPU has them; there, a bf16 convolution the float32 kernels run but
the bf16 ones do not (the RGB stem) runs the float32 kernels on its widened
operands, rounded to bf16 once. Any other convolution (grouped, dilated, 12
output channels, bf16 without the bf16 kernels, ...) is handed to the
fallback (XLA) before tracing. The float32 input gradient also goes to XLA
when the input channels are not a multiple of 16 (the RGB stem, whose input
needs no gradient, so XLA drops it).

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
  """Whether the input-gradient kernel runs it (else XLA's gradient)."""
  kh, kw, c, _ = w_shape
  (pt, pb), (pl, pr) = padding
  small_padding = max(pt, pb) < kh and max(pl, pr) < kw
  return c % cpu_kernels.LANES == 0 and (small_padding or max(strides) > 1)


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
    dx = _call(_INPUT_GRAD, x.shape, g, w, strides, padding)
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
  if cpu_conv_bf16.takes(lhs, rhs, canonical):
    return cpu_conv_bf16.conv2d(lhs, rhs, *canonical)
  if (canonical is not None and lhs.dtype == jnp.bfloat16 and
      rhs.dtype == jnp.bfloat16 and cpu_conv_bf16.available() and
      supported(lhs.shape, rhs.shape, *canonical)):
    # What the bf16 kernels do not take (the RGB stem's 3 input channels):
    # the float32 kernels on the exactly widened operands, the output
    # rounded to bf16 once, which is the bf16 kernels' arithmetic.
    return conv2d(lhs.astype(jnp.float32), rhs.astype(jnp.float32),
                  *canonical).astype(jnp.bfloat16)
  if (canonical is not None and lhs.dtype == jnp.float32 and
      rhs.dtype == jnp.float32 and supported(lhs.shape, rhs.shape,
                                             *canonical)):
    return conv2d(lhs, rhs, *canonical)
  return (fallback or lax.conv_general_dilated)(*args)
