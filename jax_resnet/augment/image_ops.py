"""AutoAugment's image operations on one uint8 image, as PIL computes them.

Each operation takes one ``[H, W, 3]`` uint8 image (and a scalar argument
that may be traced) and returns a uint8 image of the same shape. They are
jittable and vmappable, so a policy can pick the operation and its argument
per image with ``jax.lax.switch`` under ``jax.vmap`` (``policies``).

The reference is PIL, called the way torchvision's AutoAugment and
RandAugment call it on PIL images (``torchvision.transforms._functional_pil``
with nearest-neighbour sampling and fill 0). The arithmetic follows PIL's C
code, rounding included:

* Geometric operations (``rotate``, ``shear_x``, ``shear_y``,
  ``translate_x``, ``translate_y``) sample the input at PIL's inverse affine
  map ``(x_in, y_in) = (a x + b y + c, d x + e y + f)`` taken at output pixel
  centres ``(x + 0.5, y + 0.5)``, with PIL's 16.16 fixed-point arithmetic
  (``affine_fixed`` in PIL's Geometry.c): each coefficient is rounded to
  ``floor(v * 65536 + 0.5)``, the source pixel is the floor of the fixed-point
  coordinate, and pixels that map outside the image are 0. ``rotate`` turns
  counter-clockwise about the image centre ``(W / 2, H / 2)``
  (``Image.rotate``); the shears use torchvision's matrices about the origin
  (``x_in = x + m y`` and ``y_in = y + m x``); the translations move the
  content by ``int(pixels)`` (truncated), right or down for positive values.
  PIL takes its floating point path for pure translations; it gives the same
  pixels for whole-pixel shifts.
* ``brightness``, ``color``, ``contrast`` and ``sharpness`` are
  ``ImageEnhance``: ``Image.blend(degenerate, image, factor)``, which PIL
  computes in float32 as ``degenerate + factor * (image - degenerate)``,
  clipped to ``[0, 255]`` and truncated. The degenerate images: black
  (brightness); the greyscale image (colour), with PIL's
  ``L = (19595 R + 38470 G + 7471 B + 32768) >> 16``; the rounded mean of that
  greyscale image, ``int(mean + 0.5)`` (contrast); PIL's SMOOTH filter,
  kernel ``[[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13`` summed in float32 in PIL's
  order, plus 0.5, truncated, on the interior with the one-pixel border left
  as it is (sharpness).
* ``posterize`` keeps the top ``int(bits)`` bits (0 bits gives black, as
  torchvision's tensor path; PIL accepts 1 to 8). ``solarize`` inverts pixels
  ``>= threshold``. ``invert`` is ``255 - x``.
* ``autocontrast`` (``ImageOps.autocontrast`` with cutoff 0) maps each
  channel's ``[lo, hi]`` linearly onto ``[0, 255]``; PIL builds that lookup
  table in double precision as ``int(x * scale - lo * scale)`` with
  ``scale = 255 / (hi - lo)``, which at some whole-number points (0.4% of the
  table's entries, e.g. ``lo = 0, hi = 25, x = 25``) gives one less than the
  exact ``floor((x - lo) * 255 / (hi - lo))``. The exact value is computed in
  integers and PIL's shortfalls are applied from a table of those points,
  computed once in double precision as PIL does.
* ``equalize`` is ``ImageOps.equalize`` per channel: with ``step = (N -
  h[max]) // 255`` (``h`` the channel's histogram, ``h[max]`` the count of its
  brightest value), the lookup table is ``(step // 2 + cumsum_before(x)) //
  step``, clipped to 255; a channel with one value or ``step == 0`` is left
  as it is.

Agreement with PIL (``tests/test_image_ops.py``, on CIFAR-10 test images at
0, the extremes and the policies' magnitudes of both signs): every operation
is bit-exact. Two things keep it so under XLA:

* PIL rounds each float32 product before adding it. XLA may fuse a multiply
  and the add it feeds into one multiply-add, which rounds once and then
  truncates a value just below a whole number (e.g. ``166 + 1.141593 *
  (53 - 166)``: PIL 37, fused 36). The blends and the SMOOTH filter
  therefore split the float factor (kernel weight) into two halves of 12
  significant bits, whose products with an integer pixel are exact, so fused
  or not their sum is PIL's rounded product.
* Autocontrast applies PIL's double-precision shortfalls (above) from a
  precomputed table.

The known deviation: rotation computes the fixed-point coefficients from
float32 sines and cosines where PIL uses double precision (the shear and
translation coefficients are the magnitudes themselves, as in PIL up to its
double-precision ``tan(atan(m))`` round trip), so at some angles a
coefficient is one unit of 2**-16 off PIL's and a pixel whose fixed-point
sampling position lies that close to a pixel boundary is taken from its
neighbour. Measured: 2 of 300 random angles moved one pixel each (0.0007% of
the pixels); none of the policies' angles moves any.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

_FIXED_ONE = 65536.0  # PIL's 16.16 fixed point.


def _as_float(value) -> jax.Array:
  return jnp.asarray(value, jnp.float32)


def _fixed(value: jax.Array) -> jax.Array:
  """PIL's ``FIX(v) = floor(v * 65536 + 0.5)``."""
  return jnp.floor(value * _FIXED_ONE + 0.5).astype(jnp.int32)


def affine(image: jax.Array, matrix) -> jax.Array:
  """PIL's ``Image.transform(size, AFFINE, matrix, NEAREST, fillcolor=0)``.

  Args:
    image: ``[H, W, C]`` image of any dtype.
    matrix: the six coefficients ``(a, b, c, d, e, f)`` of the inverse map:
      the output pixel ``(x, y)`` takes the input pixel at
      ``(a x' + b y' + c, d x' + e y' + f)`` with ``x' = x + 0.5``,
      ``y' = y + 0.5``, rounded down; 0 outside the input.

  Returns:
    The transformed image, same shape and dtype.
  """
  image = jnp.asarray(image)
  a, b, c, d, e, f = (_as_float(v) for v in matrix)
  height, width = image.shape[:2]
  # affine_fixed in PIL's Geometry.c: coefficients in 16.16 fixed point and
  # the half-pixel offset folded into the constant terms.
  a0, a1, a3, a4 = _fixed(a), _fixed(b), _fixed(d), _fixed(e)
  a2 = _fixed(c + a * 0.5 + b * 0.5)
  a5 = _fixed(f + d * 0.5 + e * 0.5)
  ys = jnp.arange(height, dtype=jnp.int32)[:, None]
  xs = jnp.arange(width, dtype=jnp.int32)[None, :]
  x_in = jnp.right_shift(a2 + ys * a1 + xs * a0, 16)
  y_in = jnp.right_shift(a5 + ys * a4 + xs * a3, 16)
  inside = (x_in >= 0) & (x_in < width) & (y_in >= 0) & (y_in < height)
  sampled = image[jnp.clip(y_in, 0, height - 1), jnp.clip(x_in, 0, width - 1)]
  return jnp.where(inside[..., None], sampled, jnp.zeros((), image.dtype))


def rotate(image: jax.Array, degrees) -> jax.Array:
  """Rotates counter-clockwise about the centre, as ``Image.rotate``."""
  height, width = image.shape[:2]
  centre_x, centre_y = width / 2.0, height / 2.0
  theta = -_as_float(degrees) * np.float32(np.pi / 180.0)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  return affine(image, (cos, sin,
                        centre_x - cos * centre_x - sin * centre_y,
                        -sin, cos,
                        centre_y + sin * centre_x - cos * centre_y))


def shear_x(image: jax.Array, factor) -> jax.Array:
  """Shears along x: the output pixel ``(x, y)`` takes ``(x + factor y, y)``.

  torchvision's ShearX (``F.affine`` with shear ``atan(factor)`` in degrees
  about the origin).
  """
  return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0))


def shear_y(image: jax.Array, factor) -> jax.Array:
  """Shears along y: the output pixel ``(x, y)`` takes ``(x, y + factor x)``.

  torchvision's ShearY (``F.affine`` with shear ``atan(factor)`` in degrees
  about the origin).
  """
  return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0))


def translate_x(image: jax.Array, pixels) -> jax.Array:
  """Moves the content ``int(pixels)`` to the right (left if negative)."""
  return affine(image, (1.0, 0.0, -jnp.trunc(_as_float(pixels)),
                        0.0, 1.0, 0.0))


def translate_y(image: jax.Array, pixels) -> jax.Array:
  """Moves the content ``int(pixels)`` down (up if negative)."""
  return affine(image, (1.0, 0.0, 0.0,
                        0.0, 1.0, -jnp.trunc(_as_float(pixels))))


def grayscale(image: jax.Array) -> jax.Array:
  """PIL's ``convert('L')`` of an RGB image: ``[H, W]`` int32 in 0..255."""
  image = jnp.asarray(image)
  rgb = image.astype(jnp.int32)
  return jnp.right_shift(rgb[..., 0] * 19595 + rgb[..., 1] * 38470 +
                         rgb[..., 2] * 7471 + 0x8000, 16)


def _rounded_product(value: jax.Array, integer: jax.Array) -> jax.Array:
  """``value * integer`` rounded to float32, whatever XLA fuses.

  PIL rounds each product to float32 before it is added. XLA may fuse a
  multiply and the add it feeds into one multiply-add, which rounds once and
  can land on the other side of a whole number. So ``value`` is split into
  two halves of 12 significant bits: both halves times an integer below 2**12
  are exact, and their sum, fused or not, is the correctly rounded product.
  """
  bits = jax.lax.bitcast_convert_type(value, jnp.uint32)
  high = jax.lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000),
                                      jnp.float32)
  low = value - high
  return high * integer + low * integer


def _blend(degenerate: jax.Array, image: jax.Array, factor) -> jax.Array:
  """PIL's ``Image.blend(degenerate, image, factor)`` (ImagingBlend).

  ``degenerate`` is int32, broadcastable to ``image``.
  """
  image = jnp.asarray(image)
  base = degenerate.astype(jnp.float32)
  difference = (image.astype(jnp.int32) - degenerate).astype(jnp.float32)
  blended = base + _rounded_product(_as_float(factor), difference)
  return jnp.floor(jnp.clip(blended, 0.0, 255.0)).astype(jnp.uint8)


def brightness(image: jax.Array, factor) -> jax.Array:
  """``ImageEnhance.Brightness``: blends with black; 1 is the identity."""
  return _blend(jnp.zeros((), jnp.int32), image, factor)


def color(image: jax.Array, factor) -> jax.Array:
  """``ImageEnhance.Color``: blends with the greyscale image (0 is grey)."""
  return _blend(grayscale(image)[..., None], image, factor)


def contrast(image: jax.Array, factor) -> jax.Array:
  """``ImageEnhance.Contrast``: blends with the mean grey level (rounded)."""
  grey = grayscale(image)
  total, count = jnp.sum(grey), grey.size
  # int(total / count + 0.5), exactly.
  mean = (2 * total + count) // (2 * count)
  return _blend(mean, image, factor)


def _smooth(image: jax.Array) -> jax.Array:
  """PIL's ``ImageFilter.SMOOTH`` (int32), border pixels unchanged."""
  image = jnp.asarray(image)
  pixels = image.astype(jnp.float32)
  side = jnp.float32(np.float32(1.0) / np.float32(13.0))
  centre = jnp.float32(np.float32(5.0) / np.float32(13.0))

  def row(rows, middle):
    # KERNEL1x3 in PIL's Filter.c: rounded products summed left to right.
    return ((_rounded_product(side, rows[:, :-2]) +
             _rounded_product(middle, rows[:, 1:-1])) +
            _rounded_product(side, rows[:, 2:]))

  # ImagingFilter3x3 adds the row below, the row itself, then the row above.
  total = (((np.float32(0.5) + row(pixels[2:], side)) +
            row(pixels[1:-1], centre)) + row(pixels[:-2], side))
  interior = jnp.floor(jnp.clip(total, 0.0, 255.0)).astype(jnp.int32)
  return image.astype(jnp.int32).at[1:-1, 1:-1].set(interior)


def sharpness(image: jax.Array, factor) -> jax.Array:
  """``ImageEnhance.Sharpness``: blends with the SMOOTH-filtered image."""
  return _blend(_smooth(image), image, factor)


def posterize(image: jax.Array, bits) -> jax.Array:
  """``ImageOps.posterize``: keeps the top ``int(bits)`` bits (0..8)."""
  image = jnp.asarray(image)
  bits = jnp.clip(jnp.trunc(_as_float(bits)), 0, 8).astype(jnp.int32)
  shift = 8 - bits
  values = image.astype(jnp.int32)
  return jnp.left_shift(jnp.right_shift(values, shift),
                        shift).astype(jnp.uint8)


def solarize(image: jax.Array, threshold) -> jax.Array:
  """``ImageOps.solarize``: inverts the pixels ``>= threshold``."""
  image = jnp.asarray(image)
  invert_it = image.astype(jnp.float32) >= _as_float(threshold)
  return jnp.where(invert_it, 255 - image, image)


def invert(image: jax.Array) -> jax.Array:
  """``ImageOps.invert``: ``255 - x``."""
  image = jnp.asarray(image)
  return 255 - image


def _channel_values(image: jax.Array) -> jax.Array:
  """The image as ``[C, H * W]`` int32."""
  return image.reshape(-1, image.shape[-1]).T.astype(jnp.int32)


def _apply_luts(image: jax.Array, luts: jax.Array) -> jax.Array:
  """Maps each channel through its ``[C, 256]`` lookup table."""
  mapped = jnp.take_along_axis(luts, _channel_values(image), axis=1)
  return mapped.T.reshape(image.shape).astype(jnp.uint8)


@functools.cache
def _autocontrast_shortfalls() -> np.ndarray:
  """Sorted keys ``(lo * 256 + hi) * 256 + x`` of the lookup table entries
  where PIL's double precision ``int(x * scale + offset)`` is one less than
  ``floor((x - lo) * 255 / (hi - lo))``."""
  keys = []
  x = np.arange(256)[None, :]
  for lo in range(255):
    hi = np.arange(lo + 1, 256)[:, None]
    scale = 255.0 / (hi - lo)
    offset = -lo * scale
    pil = np.trunc(x * scale + offset)
    exact = (x - lo) * 255 // (hi - lo)
    short = (pil < exact) & (x >= lo) & (x <= hi)
    his, xs = np.nonzero(short)
    keys.append((lo * 256 + hi[his, 0]) * 256 + xs)
  return np.sort(np.concatenate(keys)).astype(np.int32)


def autocontrast(image: jax.Array) -> jax.Array:
  """``ImageOps.autocontrast`` (cutoff 0): each channel's range to 0..255."""
  image = jnp.asarray(image)
  values = _channel_values(image)
  lo = jnp.min(values, axis=1, keepdims=True)
  hi = jnp.max(values, axis=1, keepdims=True)
  levels = jnp.arange(256, dtype=jnp.int32)[None, :]
  span = jnp.maximum(hi - lo, 1)
  lut = jnp.clip((levels - lo) * 255 // span, 0, 255)
  shortfalls = jnp.asarray(_autocontrast_shortfalls())
  keys = (lo * 256 + hi) * 256 + levels
  found = jnp.searchsorted(shortfalls, keys)
  hit = shortfalls[jnp.minimum(found, shortfalls.size - 1)] == keys
  lut = lut - hit.astype(jnp.int32)
  lut = jnp.where(hi > lo, lut, levels)
  return _apply_luts(image, lut)


def equalize(image: jax.Array) -> jax.Array:
  """``ImageOps.equalize``: per-channel histogram equalisation."""
  image = jnp.asarray(image)
  values = _channel_values(image)
  histogram = jax.vmap(lambda v: jnp.bincount(v, length=256))(values)
  count = values.shape[1]
  brightest = jnp.max(values, axis=1, keepdims=True)
  top_count = jnp.take_along_axis(histogram, brightest, axis=1)
  step = (count - top_count) // 255
  levels_used = jnp.sum(histogram > 0, axis=1, keepdims=True)
  before = jnp.cumsum(histogram, axis=1) - histogram
  lut = jnp.minimum((step // 2 + before) // jnp.maximum(step, 1), 255)
  keep = (levels_used <= 1) | (step == 0)
  lut = jnp.where(keep, jnp.arange(256, dtype=jnp.int32)[None, :], lut)
  return _apply_luts(image, lut)
