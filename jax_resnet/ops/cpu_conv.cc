// NHWC float32 convolution kernels for x86-64 CPUs with AVX-512 or AVX2,
// called from jitted JAX code as XLA FFI custom calls (see cpu_conv.py). The
// code is written once on 16-lane vectors (cpu_simd.h) and compiled once per
// instruction set.
//
// Three handlers, for a convolution y = conv(x, w) with x [N,H,W,C],
// w [KH,KW,C,K] (HWIO), y [N,Ho,Wo,K], integer strides and zero padding:
//   jax_resnet_conv_forward        x, w  -> y
//   jax_resnet_conv_input_grad     dy, w -> dx
//   jax_resnet_conv_kernel_grad    x, dy -> dw
//
// One observation shapes all three: for a fixed kernel row kh, the index
// j = kw * C + c runs contiguously both through an HWIO kernel row and through
// a (zero-padded) input row, so a kernel row is a [KW*C, K] matrix and an
// output pixel reads a contiguous KW*C slice of the padded input row.
//
// * Forward: a tile of P consecutive output pixels x 16*V output channels is
//   accumulated in P*V vectors (zmm registers, or pairs of ymm) over kh and
//   j; every FMA takes its input value as a broadcast from memory.
// * Input gradient, stride 1: the forward kernel on the padded dy with the
//   flipped, io-swapped kernel. Stride > 1: each output pixel's dy times the
//   kernel row (transposed) is added into the padded dx (col2im), then the
//   padding is cropped.
// * Kernel gradient: a tile of R consecutive j x 16*V output channels is
//   accumulated over the pixels of a chunk of rows sized to stay in L1; the
//   batch is cut into parts, each summed into a private dw, and the copies are
//   added at the end in a fixed order (deterministic results).
//
// Work is split over images (or parts of the batch) between threads of XLA's
// own intra-op pool (cpu_parallel.h). No result depends on which thread did
// what.
//
// Shapes a kernel cannot run (K or, for the input gradient, C not a multiple
// of 16; padding beyond the kernel) are refused with an error, never an abort;
// cpu_conv.py routes them to XLA before tracing.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "cpu_conv_shared.h"
#include "cpu_parallel.h"
#include "cpu_simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using jax_resnet::AlignedVector;
using jax_resnet::Geometry;
using jax_resnet::i64;
using jax_resnet::KernelGradInParts;
using jax_resnet::PadImage;
using jax_resnet::ParallelFor;
using jax_resnet::Scratch;
namespace simd = jax_resnet::simd;
using simd::F32x16;

namespace {

// ------------------------------------------------------------- forward -----

// acc[p][v] = sum_kh sum_j a[kh * row + p * st + j] * b[kh * bkh + j * ldb +
// 16 v], stored at c[p * ldc + 16 v] (ADD: added to it, pixel by pixel, so
// overlapping outputs add up). ST > 0 fixes the pixel stride at compile time,
// so every broadcast is an immediate offset from one pointer.
template <int P, int V, int ST, bool ADD = false>
inline void ForwardTile(const float* __restrict a, i64 st_rt, i64 row, i64 kh_n,
                        i64 jn, const float* __restrict b, i64 ldb, i64 bkh,
                        float* __restrict c, i64 ldc) {
  const i64 st = ST ? ST : st_rt;
  F32x16 acc[P][V];
#pragma GCC unroll 64
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[p][v] = simd::Zero();
  for (i64 kh = 0; kh < kh_n; ++kh) {
    const float* ar = a + kh * row;
    const float* br = b + kh * bkh;
    for (i64 j = 0; j < jn; ++j) {
      F32x16 bv[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) bv[v] = simd::Load(br + j * ldb + 16 * v);
#pragma GCC unroll 64
      for (int p = 0; p < P; ++p) {
        const F32x16 av = simd::Broadcast(ar[p * st + j]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[p][v] = simd::Fmadd(av, bv[v], acc[p][v]);
      }
    }
  }
#pragma GCC unroll 64
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      float* o = c + p * ldc + 16 * v;
      simd::Store(o, ADD ? simd::Add(simd::Load(o), acc[p][v]) : acc[p][v]);
    }
}

// A tile's P pixels x V vectors of 16 lanes stay in registers: half the 32
// zmm registers with AVX-512 (three quarters for V = 3), 12 of the 16 ymm
// registers with AVX2.
constexpr bool kWide = simd::kVectorRegisters == 32;  // AVX-512.

template <int V> constexpr int ForwardPixels() {
  if constexpr (kWide) return V == 1 ? 16 : V == 4 ? 4 : 8;
  return V == 1 ? 6 : 3;  // AVX2: 12 of 16 ymm registers.
}

template <int V, int ST, bool ADD, int P>
inline void ForwardTail(int r, const float* a, i64 st, i64 row, i64 kh_n, i64 jn,
                        const float* b, i64 ldb, i64 bkh, float* c, i64 ldc) {
  if constexpr (P > 0) {
    if (r == P) {
      ForwardTile<P, V, ST, ADD>(a, st, row, kh_n, jn, b, ldb, bkh, c, ldc);
    } else {
      ForwardTail<V, ST, ADD, P - 1>(r, a, st, row, kh_n, jn, b, ldb, bkh, c,
                                     ldc);
    }
  }
}

// One image: padded input `a` [Hp, Wp, C] (row stride `row`), kernel
// panels `w` [K / 16V][KH, KW*C, 16V] (Panels), output `y` [Ho, Wo, K].
template <int V, int ST>
void ForwardImage(const Geometry& g, const float* a, i64 row, const float* w,
                  float* y) {
  constexpr int P = ForwardPixels<V>();
  constexpr i64 width = 16 * V;
  const i64 st = g.sw * g.C, jn = g.KW * g.C, bkh = jn * width;
  for (i64 c0 = 0; c0 < g.K; c0 += width) {
    const float* panel = w + (c0 / width) * g.KH * bkh;
    for (i64 oh = 0; oh < g.Ho; ++oh) {
      const float* ar = a + oh * g.sh * row;
      float* yr = y + oh * g.Wo * g.K + c0;
      i64 ow = 0;
      for (; ow + P <= g.Wo; ow += P) {
        ForwardTile<P, V, ST>(ar + ow * st, st, row, g.KH, jn, panel, width,
                              bkh, yr + ow * g.K, g.K);
      }
      if (ow < g.Wo) {
        ForwardTail<V, ST, false, P - 1>(static_cast<int>(g.Wo - ow),
                                         ar + ow * st, st, row, g.KH, jn,
                                         panel, width, bkh, yr + ow * g.K,
                                         g.K);
      }
    }
  }
}

// Image n of x as the kernels read it: zero-padded into this thread's
// scratch buffer 0 (`size` floats) where the convolution pads, else x itself.
const float* ImageRows(const Geometry& g, const float* x, i64 n, bool padded,
                       i64 size) {
  const float* src = x + n * g.H * g.W * g.C;
  if (!padded) return src;
  float* buf = Scratch(0, size);
  PadImage(src, g, buf);
  return buf;
}

using ForwardImageFn = void (*)(const Geometry&, const float*, i64,
                                const float*, float*);

template <int V>
ForwardImageFn PickForwardStride(i64 st) {
  switch (st) {
    case 3: return ForwardImage<V, 3>;
    case 16: return ForwardImage<V, 16>;
    case 32: return ForwardImage<V, 32>;
    case 64: return ForwardImage<V, 64>;
    default: return ForwardImage<V, 0>;
  }
}

// How many 16-lane vectors a tile spans: the most that divides the channels,
// up to 4 (AVX-512) or 2 (AVX2).
int Vectors(i64 channels) {
  const i64 blocks = channels / 16;
  if (kWide && blocks % 4 == 0) return 4;
  if (kWide && blocks % 3 == 0) return 3;
  if (blocks % 2 == 0) return 2;
  return 1;
}

ForwardImageFn PickForward(i64 K, i64 st) {
  switch (Vectors(K)) {
    case 1: return PickForwardStride<1>(st);
    case 2: return PickForwardStride<2>(st);
    case 3: return PickForwardStride<3>(st);
    default: return ForwardImage<4, 0>;  // P = 4 pointers need no template.
  }
}

// The kernel w [KH*KW*C, K] as panels of `width` output channels,
// [K / width][KH*KW*C][width]: a tile reads its panel front to back. In
// w's own layout a tile's consecutive kernel rows lie K floats apart, which
// at 256 and 512 channels (4 KB and 8 KB: WRN, ResNet-18) mapped them onto a
// few L1 sets; those convolutions ran 3-4 times slower per FLOP than at 128.
AlignedVector<float> Panels(const float* w, i64 rows, i64 K, i64 width) {
  AlignedVector<float> panels(rows * K);
  for (i64 b = 0; b < K / width; ++b)
    for (i64 r = 0; r < rows; ++r)
      std::memcpy(panels.data() + (b * rows + r) * width,
                  w + r * K + b * width, sizeof(float) * width);
  return panels;
}

// y = conv(x, w) over the batch; w is [KH, KW, C, K].
void Forward(ffi::ThreadPool& pool, int threads, const Geometry& g,
             const float* x, const float* w, float* y) {
  const ForwardImageFn image = PickForward(g.K, g.sw * g.C);
  const i64 width = 16 * Vectors(g.K);
  AlignedVector<float> panels;
  if (g.K > width) {  // One panel is w itself.
    panels = Panels(w, g.KH * g.KW * g.C, g.K, width);
    w = panels.data();
  }
  const bool padded = g.pt || g.pb || g.pl || g.pr;
  const i64 Hp = g.H + g.pt + g.pb, Wp = g.W + g.pl + g.pr, row = Wp * g.C;
  ParallelFor(pool, threads, g.N, [&](int, i64 n) {
    image(g, ImageRows(g, x, n, padded, Hp * row), row, w,
          y + n * g.Ho * g.Wo * g.K);
  });
}

// ------------------------------------------------------ input gradient -----

// One image: dy [Ho, Wo, K], wt [KH, K, KW*C] -> padded dx [Hp, Wp, C]. Each
// tile is the forward tile with one kernel row, reducing over the K channels
// of P output pixels, added into the padded dx.
template <int V, int ST>
void ScatterImage(const Geometry& g, const float* dy, const float* wt,
                  float* dxp) {
  constexpr int P = ForwardPixels<V>();
  const i64 jn = g.KW * g.C, row = (g.W + g.pl + g.pr) * g.C;
  const i64 dst = g.sw * g.C;
  for (i64 oh = 0; oh < g.Ho; ++oh) {
    const float* dyr = dy + oh * g.Wo * g.K;
    for (i64 kh = 0; kh < g.KH; ++kh) {
      const float* wk = wt + kh * g.K * jn;
      float* dr = dxp + (oh * g.sh + kh) * row;
      for (i64 j0 = 0; j0 < jn; j0 += 16 * V) {
        i64 ow = 0;
        for (; ow + P <= g.Wo; ow += P) {
          ForwardTile<P, V, ST, true>(dyr + ow * g.K, g.K, 0, 1, g.K,
                                      wk + j0, jn, 0, dr + ow * dst + j0, dst);
        }
        if (ow < g.Wo) {
          ForwardTail<V, ST, true, P - 1>(static_cast<int>(g.Wo - ow),
                                          dyr + ow * g.K, g.K, 0, 1, g.K,
                                          wk + j0, jn, 0, dr + ow * dst + j0,
                                          dst);
        }
      }
    }
  }
}

using ScatterImageFn = void (*)(const Geometry&, const float*, const float*,
                                float*);

template <int V>
ScatterImageFn PickScatterStride(i64 st) {
  switch (st) {
    case 16: return ScatterImage<V, 16>;
    case 32: return ScatterImage<V, 32>;
    case 64: return ScatterImage<V, 64>;
    default: return ScatterImage<V, 0>;
  }
}

// The tile width 16 V divides the pixel stride dst as well as jn: then the
// (overlapping) contributions of the pixels to one dx element all lie in
// different column blocks, so they are added in the same order (block by
// block, i.e. last pixel first) whatever V is, and the AVX-512 and AVX2
// builds give the same bits.
ScatterImageFn PickScatter(i64 jn, i64 dst, i64 K) {
  switch (Vectors(std::gcd(jn, dst))) {
    case 1: return PickScatterStride<1>(K);
    case 2: return PickScatterStride<2>(K);
    case 3: return PickScatterStride<3>(K);
    default: return ScatterImage<4, 0>;
  }
}

// dx = d conv / d x applied to dy; needs C % 16 == 0.
void InputGrad(ffi::ThreadPool& pool, int threads, const Geometry& g,
               const float* dy, const float* w, float* dx) {
  const i64 C = g.C, K = g.K, KH = g.KH, KW = g.KW;
  if (g.sh == 1 && g.sw == 1) {
    Forward(pool, threads, jax_resnet::InputGradGeometry(g), dy,
            jax_resnet::FlippedKernel(pool, threads, w, g).data(), dx);
    return;
  }
  // Strided: col2im. wt[kh][k][kw*C + c] = w[kh][kw][c][k].
  const i64 jn = KW * C;
  AlignedVector<float> wt(KH * K * jn);
  for (i64 kh = 0; kh < KH; ++kh)
    for (i64 j = 0; j < jn; ++j)
      for (i64 k = 0; k < K; ++k)
        wt[(kh * K + k) * jn + j] = w[(kh * jn + j) * K + k];
  const ScatterImageFn image = PickScatter(jn, g.sw * C, K);
  const i64 Hp = g.H + g.pt + g.pb, Wp = g.W + g.pl + g.pr;
  ParallelFor(pool, threads, g.N, [&](int, i64 n) {
    float* buf = Scratch(1, Hp * Wp * C);
    std::memset(buf, 0, sizeof(float) * Hp * Wp * C);
    image(g, dy + n * g.Ho * g.Wo * K, wt.data(), buf);
    float* out = dx + n * g.H * g.W * C;
    for (i64 h = 0; h < g.H; ++h) {
      std::memcpy(out + h * g.W * C, buf + ((h + g.pt) * Wp + g.pl) * C,
                  sizeof(float) * g.W * C);
    }
  });
}

// ----------------------------------------------------- kernel gradient -----

// acc[r][v] = sum over `rows` rows and `wo` pixels of a[ow * st + r] *
// dy[ow * K + 16 v], added into dw[r * K + 16 v].
template <int R, int V>
inline void KernelGradTile(const float* __restrict a, i64 arow, i64 st,
                           const float* __restrict dy, i64 dyrow, i64 K,
                           i64 rows, i64 wo, float* __restrict dw) {
  F32x16 acc[R][V];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = simd::Zero();
  for (i64 i = 0; i < rows; ++i) {
    const float* ar = a + i * arow;
    const float* gr = dy + i * dyrow;
    for (i64 ow = 0; ow < wo; ++ow, ar += st, gr += K) {
      F32x16 gv[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) gv[v] = simd::Load(gr + 16 * v);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const F32x16 av = simd::Broadcast(ar[r]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[r][v] = simd::Fmadd(av, gv[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      float* o = dw + r * K + 16 * v;
      simd::Store(o, simd::Add(simd::Load(o), acc[r][v]));
    }
}

template <int V> constexpr int KernelGradRows() {
  if constexpr (kWide) return V == 1 ? 24 : V == 2 ? 12 : V == 3 ? 8 : 6;
  return V == 1 ? 6 : 3;  // AVX2: 12 ymm accumulators.
}

template <int V, int R>
inline void KernelGradTail(int r, const float* a, i64 arow, i64 st,
                           const float* dy, i64 dyrow, i64 K, i64 rows, i64 wo,
                           float* dw) {
  if constexpr (R > 0) {
    if (r == R) {
      KernelGradTile<R, V>(a, arow, st, dy, dyrow, K, rows, wo, dw);
    } else {
      KernelGradTail<V, R - 1>(r, a, arow, st, dy, dyrow, K, rows, wo, dw);
    }
  }
}

// One image into dw [KH, KW*C, K]: padded input a [Hp, Wp, C] (row stride
// `row`), dy [Ho, Wo, K]. Output rows are taken in chunks whose input and dy
// rows fit in L1 (or 8 rows, below), and every tile is reduced over a whole
// chunk.
template <int V>
void KernelGradImage(const Geometry& g, const float* a, i64 row,
                     const float* dy, float* dw) {
  constexpr int R = KernelGradRows<V>();
  const i64 jn = g.KW * g.C, st = g.sw * g.C, dyrow = g.Wo * g.K;
  const i64 bytes_per_row = sizeof(float) * (g.sh * row + dyrow);
  // Where not even two rows fit (256 channels and more), eight rows from
  // L2: each dw tile's load and store then closes 8 rows of sums, not one
  // (8x8 at 512 channels: 115 -> 52 ms at batch 32).
  const i64 fit = (24 * 1024) / bytes_per_row;
  const i64 chunk = fit >= 2 ? fit : std::min<i64>(g.Ho, 8);
  for (i64 r0 = 0; r0 < g.Ho; r0 += chunk) {
    const i64 rows = std::min(chunk, g.Ho - r0);
    const float* gr = dy + r0 * dyrow;
    for (i64 kh = 0; kh < g.KH; ++kh) {
      const float* ar = a + (r0 * g.sh + kh) * row;
      for (i64 c0 = 0; c0 < g.K; c0 += 16 * V) {
        float* d = dw + kh * jn * g.K + c0;
        i64 j = 0;
        for (; j + R <= jn; j += R) {
          KernelGradTile<R, V>(ar + j, g.sh * row, st, gr + c0, dyrow, g.K,
                               rows, g.Wo, d + j * g.K);
        }
        if (j < jn) {
          KernelGradTail<V, R - 1>(static_cast<int>(jn - j), ar + j,
                                   g.sh * row, st, gr + c0, dyrow, g.K, rows,
                                   g.Wo, d + j * g.K);
        }
      }
    }
  }
}

using KernelGradImageFn = void (*)(const Geometry&, const float*, i64,
                                   const float*, float*);

KernelGradImageFn PickKernelGrad(i64 K) {
  switch (Vectors(K)) {
    case 1: return KernelGradImage<1>;
    case 2: return KernelGradImage<2>;
    case 3: return KernelGradImage<3>;
    default: return KernelGradImage<4>;
  }
}

void KernelGrad(ffi::ThreadPool& pool, int threads, const Geometry& g,
                const float* x, const float* dy, float* dw) {
  const KernelGradImageFn image = PickKernelGrad(g.K);
  const bool padded = g.pt || g.pb || g.pl || g.pr;
  const i64 Hp = g.H + g.pt + g.pb, Wp = g.W + g.pl + g.pr, row = Wp * g.C;
  KernelGradInParts(
      pool, threads, g.N, g.KH * g.KW * g.C * g.K, dw,
      [&](i64 begin, i64 end, float* acc) {
        for (i64 n = begin; n < end; ++n) {
          image(g, ImageRows(g, x, n, padded, Hp * row), row,
                dy + n * g.Ho * g.Wo * g.K, acc);
        }
      });
}

// ------------------------------------------------------------ handlers -----

struct Attrs {
  i64 sh, sw, pt, pb, pl, pr, threads;
};

ffi::Error MakeGeometry(ffi::Buffer<ffi::F32>::Dimensions x,
                        ffi::Buffer<ffi::F32>::Dimensions w,
                        ffi::Buffer<ffi::F32>::Dimensions y, const Attrs& at,
                        Geometry* g) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) {
    return ffi::Error::InvalidArgument("cpu_conv: operands must be rank 4");
  }
  *g = Geometry{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
                at.sh, at.sw, at.pt, at.pb, at.pl, at.pr};
  if (w[2] != x[3] || y[0] != x[0] || y[3] != w[3]) {
    return ffi::Error::InvalidArgument("cpu_conv: channel counts disagree");
  }
  if (g->K % 16) {
    return ffi::Error::InvalidArgument(
        "cpu_conv: output channels must be a multiple of 16");
  }
  return jax_resnet::CheckGeometry(*g, "cpu_conv");
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, i64 sh, i64 sw, i64 pt,
                       i64 pb, i64 pl, i64 pr, i64 threads) {
  Geometry g;
  JR_TRY(MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(),
                      {sh, sw, pt, pb, pl, pr, threads}, &g));
  Forward(pool, static_cast<int>(threads), g, x.typed_data(), w.typed_data(),
          y->typed_data());
  return ffi::Error::Success();
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                         ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> dx, i64 sh, i64 sw,
                         i64 pt, i64 pb, i64 pl, i64 pr, i64 threads) {
  Geometry g;
  JR_TRY(MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(),
                      {sh, sw, pt, pb, pl, pr, threads}, &g));
  if (g.C % 16) {
    return ffi::Error::InvalidArgument(
        "cpu_conv: input gradient needs input channels a multiple of 16");
  }
  if (g.sh == 1 && g.sw == 1 &&
      (g.pt >= g.KH || g.pb >= g.KH || g.pl >= g.KW || g.pr >= g.KW)) {
    return ffi::Error::InvalidArgument(
        "cpu_conv: input gradient needs padding smaller than the kernel");
  }
  InputGrad(pool, static_cast<int>(threads), g, dy.typed_data(),
            w.typed_data(), dx->typed_data());
  return ffi::Error::Success();
}

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw, i64 sh, i64 sw,
                          i64 pt, i64 pb, i64 pl, i64 pr, i64 threads) {
  Geometry g;
  JR_TRY(MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(),
                      {sh, sw, pt, pb, pl, pr, threads}, &g));
  KernelGrad(pool, static_cast<int>(threads), g, x.typed_data(),
             dy.typed_data(), dw->typed_data());
  return ffi::Error::Success();
}

}  // namespace

#define JR_BIND() JR_CONV_BIND(ffi::F32, ffi::F32)

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_conv_forward, ForwardImpl,
                              JR_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_conv_input_grad, InputGradImpl,
                              JR_BIND());
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_conv_kernel_grad, KernelGradImpl,
                              JR_BIND());

// 1 when this CPU runs the instructions the library was compiled for.
extern "C" int jax_resnet_cpu_supported() {
  __builtin_cpu_init();
  if constexpr (kWide) {
    return __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  }
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// The instruction set the library was compiled for ("avx512" or "avx2").
extern "C" const char* jax_resnet_cpu_isa() { return simd::kName; }
