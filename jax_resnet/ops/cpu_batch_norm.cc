// Training-mode BatchNorm (+ ReLU) passes for x86-64 CPUs with AVX-512 or
// AVX2, called from jitted JAX code as XLA FFI custom calls (see
// batch_norm.py), written on 16-lane vectors (cpu_simd.h).
//
// x is viewed as [M, C] (all axes but the channel axis flattened), any C:
// channels are taken 16 at a time, and a last group of fewer (a channel
// tail: DenseNet's and PyramidNet's widths) is loaded with zeros in the
// missing lanes, which are never stored. Four passes, each over the rows
// split between threads:
//   jax_resnet_bn_stats           x -> mean, var (biased)
//   jax_resnet_bn_apply           x, mean, a, b -> (x - mean) * a + b, ReLU
//   jax_resnet_bn_grad_sums       g, x, y, mean -> sum g, sum g (x - mean)
//   jax_resnet_bn_grad_apply      g, x, y, mean, a, k1, k0
//                                   -> g a + (x - mean) k1 + k0
// With relu=1 the gradient passes first zero g where the forward output y is
// not positive (ReLU's mask); with relu=0, y is not read.
//
// The residual variants fuse a residual block's end, ReLU(BN(x) + r), into
// the BatchNorm passes:
//   jax_resnet_bn_apply_residual       x, mean, a, b, r
//                                        -> (x - mean) * a + b + r, ReLU
//   jax_resnet_bn_grad_apply_residual  g, x, y, mean, a, k1, k0
//                                        -> dx as above, dr = masked g
// They round as the separate passes do: the BatchNorm's fused multiply-add,
// then the addition of r, then ReLU.
//
// Every handler has a bfloat16 twin, named with a _bf16 suffix, for the
// mixed-precision mode: the tensors (x, y, r, g, dx, dr) are bf16, widened
// exactly on load and rounded to nearest even once on store; the per-channel
// vectors, the arithmetic and the sums are float32 (double) as above.
//
// Reductions accumulate in double precision per part of the rows; the number
// of parts is fixed by the shape, never by the thread count, and the parts are
// added in order, so results are deterministic. The variance is
// E[x^2] - mean^2 in double precision, as exact as the two-pass float form.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_parallel.h"
#include "cpu_simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using jax_resnet::i64;
using jax_resnet::ParallelFor;
namespace simd = jax_resnet::simd;
using simd::F32x16;

namespace {

constexpr i64 kParts = 16;

i64 Parts(i64 rows) { return std::max<i64>(1, std::min(rows, kParts)); }

// The rows of part p of `parts`.
inline void PartRows(i64 rows, i64 parts, i64 p, i64* begin, i64* end) {
  *begin = p * rows / parts;
  *end = (p + 1) * rows / parts;
}

// Channels [c, c + n) of a float32 or bfloat16 array, as float32: n = 16,
// or a channel tail (n < 16) with zeros in the other lanes.
inline F32x16 LoadAs(const float* p, int n) {
  return n == 16 ? simd::Load(p) : simd::LoadFirst(p, n);
}
inline F32x16 LoadAs(const uint16_t* p, int n) {
  return n == 16 ? simd::LoadBf16(p) : simd::LoadBf16First(p, n);
}
inline void StoreAs(float* p, F32x16 v, int n) {
  if (n == 16) {
    simd::Store(p, v);
  } else {
    simd::StoreFirst(p, v, n);
  }
}
inline void StoreAs(uint16_t* p, F32x16 v, int n) {
  if (n == 16) {
    simd::StoreBf16(p, v);
  } else {
    simd::StoreBf16First(p, v, n);
  }
}

// The channels of the group starting at c: 16, or fewer in a tail.
inline int GroupLanes(i64 C, i64 c) {
  return static_cast<int>(std::min<i64>(16, C - c));
}

template <typename T>
inline F32x16 ReluMasked(const T* g, const T* y, bool relu, int n) {
  const F32x16 gv = LoadAs(g, n);
  if (!relu) return gv;
  return simd::WherePositive(LoadAs(y, n), gv);
}

// Calls group(c, n, first, last) for every channel group [c, c + n) of
// rows [begin, end). Where those rows are more than 256 KB of float32, a
// chunk of rows at a time: the groups of a chunk (about 32 KB) read it from
// cache, and the chunks stream through memory in order. Group by group over
// all the rows instead, each group's pass strided over the whole part, and
// wide layers (DenseNet's hundreds of channels at 32x32) took 1.3-1.9 times
// as long. Smaller parts (the CIFAR ResNets') stay in cache between groups,
// and one group reads the rows in order anyway.
template <typename F>
inline void ChunkedGroups(i64 C, i64 begin, i64 end, F&& group) {
  const bool whole = C <= 16 || (end - begin) * C <= 65536;
  const i64 rows = whole ? end - begin : std::max<i64>(1, 8192 / C);
  for (i64 first = begin; first < end; first += rows) {
    const i64 last = std::min(end, first + rows);
    for (i64 c = 0; c < C; c += 16) group(c, GroupLanes(C, c), first, last);
  }
}

// Per-channel sums over all rows of the two vectors pair(m, c, n) yields
// for row m, channels [c, c + n), in double precision. Each channel's sum
// in a part adds its rows in order.
template <typename F>
void DoubleSums(ffi::ThreadPool& pool, int threads, i64 M, i64 C, F&& pair,
                std::vector<double>* out0, std::vector<double>* out1) {
  const i64 parts = Parts(M);
  const i64 groups = (C + 15) / 16;
  std::vector<simd::F64x16> sums(parts * 2 * groups, simd::ZeroF64());
  ParallelFor(pool, threads, parts, [&](int, i64 p) {
    i64 begin, end;
    PartRows(M, parts, p, &begin, &end);
    simd::F64x16* s0 = sums.data() + p * 2 * groups;
    simd::F64x16* s1 = s0 + groups;
    ChunkedGroups(C, begin, end, [&](i64 c, int n, i64 first, i64 last) {
      simd::F64x16 a = s0[c / 16], b = s1[c / 16];
      for (i64 m = first; m < last; ++m) {
        F32x16 v0, v1;
        pair(m, c, n, &v0, &v1);
        a = simd::AddWidened(a, v0);
        b = simd::AddWidened(b, v1);
      }
      s0[c / 16] = a;
      s1[c / 16] = b;
    });
  });
  out0->assign(C, 0.0);
  out1->assign(C, 0.0);
  std::vector<double> lanes(2 * groups * 16);
  for (i64 p = 0; p < parts; ++p) {
    for (i64 g = 0; g < 2 * groups; ++g) {
      simd::StoreF64(lanes.data() + 16 * g, sums[p * 2 * groups + g]);
    }
    for (i64 c = 0; c < C; ++c) {
      (*out0)[c] += lanes[c];
      (*out1)[c] += lanes[groups * 16 + c];
    }
  }
}

// Runs row(begin, end) over all rows in parts.
template <typename F>
void RowsInParallel(ffi::ThreadPool& pool, int threads, i64 M, F&& rows) {
  const i64 parts = Parts(M);
  ParallelFor(pool, threads, parts, [&](int, i64 p) {
    i64 begin, end;
    PartRows(M, parts, p, &begin, &end);
    rows(begin, end);
  });
}

template <typename Dims>
ffi::Error CheckRows(const Dims& d, i64* M, i64* C) {
  if (d.size() < 1) return ffi::Error::InvalidArgument("bn: rank 0 input");
  *C = d[d.size() - 1];
  *M = 1;
  for (size_t i = 0; i + 1 < d.size(); ++i) *M *= d[i];
  return ffi::Error::Success();
}

template <ffi::DataType DT>
using Tensor = ffi::Buffer<DT>;
template <ffi::DataType DT>
using TensorResult = ffi::ResultBuffer<DT>;
using Vector = ffi::Buffer<ffi::F32>;
using VectorResult = ffi::ResultBuffer<ffi::F32>;

template <ffi::DataType DT>
ffi::Error StatsImpl(ffi::ThreadPool pool, Tensor<DT> x, VectorResult mean,
                     VectorResult var, i64 threads) {
  i64 M, C;
  JR_TRY(CheckRows(x.dimensions(), &M, &C));
  const auto* xp = x.typed_data();
  std::vector<double> sum, sumsq;
  DoubleSums(
      pool, static_cast<int>(threads), M, C,
      [xp, C](i64 m, i64 c, int n, F32x16* v0, F32x16* v1) {
        *v0 = LoadAs(xp + m * C + c, n);
        *v1 = simd::Mul(*v0, *v0);
      },
      &sum, &sumsq);
  // Each square is formed in float and accumulated in double; the mean's
  // square is subtracted in double.
  for (i64 c = 0; c < C; ++c) {
    const double m = sum[c] / M;
    mean->typed_data()[c] = static_cast<float>(m);
    var->typed_data()[c] = static_cast<float>(std::max(0.0, sumsq[c] / M - m * m));
  }
  return ffi::Error::Success();
}

// y = (x - mean) * a + b (+ r where r is not null), then ReLU.
template <ffi::DataType DT>
ffi::Error ApplyRows(ffi::ThreadPool& pool, Tensor<DT>& x, const float* mp,
                     const float* ap, const float* bp,
                     const ffi::NativeType<DT>* rp, ffi::NativeType<DT>* yp,
                     bool relu, i64 threads) {
  i64 M, C;
  JR_TRY(CheckRows(x.dimensions(), &M, &C));
  const auto* xp = x.typed_data();
  RowsInParallel(pool, static_cast<int>(threads), M, [&](i64 begin, i64 end) {
    ChunkedGroups(C, begin, end, [&](i64 c, int n, i64 first, i64 last) {
      const F32x16 mv = LoadAs(mp + c, n), av = LoadAs(ap + c, n),
                   bv = LoadAs(bp + c, n), zero = simd::Zero();
      for (i64 m = first; m < last; ++m) {
        const i64 i = m * C + c;
        F32x16 v = simd::Fmadd(simd::Sub(LoadAs(xp + i, n), mv), av, bv);
        if (rp) v = simd::Add(v, LoadAs(rp + i, n));
        // max(0, v) returns its second operand for a NaN: a NaN reaches
        // the loss, as through XLA's ReLU, and the NaN check stops the run.
        if (relu) v = simd::Max(zero, v);
        StoreAs(yp + i, v, n);
      }
    });
  });
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error ApplyImpl(ffi::ThreadPool pool, Tensor<DT> x, Vector mean,
                     Vector a, Vector b, TensorResult<DT> y, i64 relu,
                     i64 threads) {
  return ApplyRows<DT>(pool, x, mean.typed_data(), a.typed_data(),
                       b.typed_data(), nullptr, y->typed_data(), relu != 0,
                       threads);
}

template <ffi::DataType DT>
ffi::Error ApplyResidualImpl(ffi::ThreadPool pool, Tensor<DT> x, Vector mean,
                             Vector a, Vector b, Tensor<DT> r,
                             TensorResult<DT> y, i64 relu, i64 threads) {
  if (r.element_count() != x.element_count()) {
    return ffi::Error::InvalidArgument("bn: residual and input sizes differ");
  }
  return ApplyRows<DT>(pool, x, mean.typed_data(), a.typed_data(),
                       b.typed_data(), r.typed_data(), y->typed_data(),
                       relu != 0, threads);
}

template <ffi::DataType DT>
ffi::Error GradSumsImpl(ffi::ThreadPool pool, Tensor<DT> g, Tensor<DT> x,
                        Tensor<DT> y, Vector mean, VectorResult sum_g,
                        VectorResult sum_gx, i64 relu, i64 threads) {
  i64 M, C;
  JR_TRY(CheckRows(x.dimensions(), &M, &C));
  const auto *gp = g.typed_data(), *xp = x.typed_data(), *yp = y.typed_data();
  const float* mp = mean.typed_data();
  const bool r = relu != 0;
  std::vector<double> s0, s1;
  DoubleSums(
      pool, static_cast<int>(threads), M, C,
      [=](i64 m, i64 c, int n, F32x16* v0, F32x16* v1) {
        const i64 i = m * C + c;
        const F32x16 gv = ReluMasked(gp + i, yp + i, r, n);
        *v0 = gv;
        *v1 = simd::Mul(gv, simd::Sub(LoadAs(xp + i, n), LoadAs(mp + c, n)));
      },
      &s0, &s1);
  for (i64 c = 0; c < C; ++c) {
    sum_g->typed_data()[c] = static_cast<float>(s0[c]);
    sum_gx->typed_data()[c] = static_cast<float>(s1[c]);
  }
  return ffi::Error::Success();
}

// dx = g a + (x - mean) k1 + k0 with g ReLU-masked (relu), and where dr is
// not null also dr = that masked g (the residual's gradient).
template <ffi::DataType DT>
ffi::Error GradApplyRows(ffi::ThreadPool& pool, Tensor<DT>& g, Tensor<DT>& x,
                         Tensor<DT>& y, const float* mp, const float* ap,
                         const float* k1p, const float* k0p,
                         ffi::NativeType<DT>* dp, ffi::NativeType<DT>* drp,
                         bool relu, i64 threads) {
  i64 M, C;
  JR_TRY(CheckRows(x.dimensions(), &M, &C));
  const auto *gp = g.typed_data(), *xp = x.typed_data(), *yp = y.typed_data();
  RowsInParallel(pool, static_cast<int>(threads), M, [&](i64 begin, i64 end) {
    ChunkedGroups(C, begin, end, [&](i64 c, int n, i64 first, i64 last) {
      const F32x16 mv = LoadAs(mp + c, n), av = LoadAs(ap + c, n),
                   k1v = LoadAs(k1p + c, n), k0v = LoadAs(k0p + c, n);
      for (i64 m = first; m < last; ++m) {
        const i64 i = m * C + c;
        const F32x16 gv = ReluMasked(gp + i, yp + i, relu, n);
        const F32x16 xc = simd::Sub(LoadAs(xp + i, n), mv);
        StoreAs(dp + i,
                simd::Add(simd::Fmadd(gv, av, simd::Mul(xc, k1v)), k0v), n);
        if (drp) StoreAs(drp + i, gv, n);
      }
    });
  });
  return ffi::Error::Success();
}

template <ffi::DataType DT>
ffi::Error GradApplyImpl(ffi::ThreadPool pool, Tensor<DT> g, Tensor<DT> x,
                         Tensor<DT> y, Vector mean, Vector a, Vector k1,
                         Vector k0, TensorResult<DT> dx, i64 relu,
                         i64 threads) {
  return GradApplyRows<DT>(pool, g, x, y, mean.typed_data(), a.typed_data(),
                           k1.typed_data(), k0.typed_data(), dx->typed_data(),
                           nullptr, relu != 0, threads);
}

template <ffi::DataType DT>
ffi::Error GradApplyResidualImpl(ffi::ThreadPool pool, Tensor<DT> g,
                                 Tensor<DT> x, Tensor<DT> y, Vector mean,
                                 Vector a, Vector k1, Vector k0,
                                 TensorResult<DT> dx, TensorResult<DT> dr,
                                 i64 relu, i64 threads) {
  return GradApplyRows<DT>(pool, g, x, y, mean.typed_data(), a.typed_data(),
                           k1.typed_data(), k0.typed_data(), dx->typed_data(),
                           dr->typed_data(), relu != 0, threads);
}

}  // namespace

// Each handler for float32 tensors and, with a _bf16 suffix, for bfloat16
// ones (DT); the per-channel vectors are float32 in both.
#define JR_V ffi::Buffer<ffi::F32>
#define JR_BN_HANDLERS(SUFFIX, DT)                                            \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_bn_stats##SUFFIX, StatsImpl<DT>,   \
                                ffi::Ffi::Bind()                              \
                                    .Ctx<ffi::ThreadPool>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Ret<JR_V>()                              \
                                    .Ret<JR_V>()                              \
                                    .Attr<i64>("threads"));                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_bn_apply##SUFFIX, ApplyImpl<DT>,   \
                                ffi::Ffi::Bind()                              \
                                    .Ctx<ffi::ThreadPool>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<JR_V>()                              \
                                    .Arg<JR_V>()                              \
                                    .Arg<JR_V>()                              \
                                    .Ret<ffi::Buffer<DT>>()                   \
                                    .Attr<i64>("relu")                        \
                                    .Attr<i64>("threads"));                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_bn_grad_sums##SUFFIX,              \
                                GradSumsImpl<DT>,                             \
                                ffi::Ffi::Bind()                              \
                                    .Ctx<ffi::ThreadPool>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<JR_V>()                              \
                                    .Ret<JR_V>()                              \
                                    .Ret<JR_V>()                              \
                                    .Attr<i64>("relu")                        \
                                    .Attr<i64>("threads"));                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_bn_grad_apply##SUFFIX,             \
                                GradApplyImpl<DT>,                            \
                                ffi::Ffi::Bind()                              \
                                    .Ctx<ffi::ThreadPool>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<JR_V>()                              \
                                    .Arg<JR_V>()                              \
                                    .Arg<JR_V>()                              \
                                    .Arg<JR_V>()                              \
                                    .Ret<ffi::Buffer<DT>>()                   \
                                    .Attr<i64>("relu")                        \
                                    .Attr<i64>("threads"));                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_bn_apply_residual##SUFFIX,         \
                                ApplyResidualImpl<DT>,                        \
                                ffi::Ffi::Bind()                              \
                                    .Ctx<ffi::ThreadPool>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<JR_V>()                              \
                                    .Arg<JR_V>()                              \
                                    .Arg<JR_V>()                              \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Ret<ffi::Buffer<DT>>()                   \
                                    .Attr<i64>("relu")                        \
                                    .Attr<i64>("threads"));                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_bn_grad_apply_residual##SUFFIX,    \
                                GradApplyResidualImpl<DT>,                    \
                                ffi::Ffi::Bind()                              \
                                    .Ctx<ffi::ThreadPool>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<ffi::Buffer<DT>>()                   \
                                    .Arg<JR_V>()                              \
                                    .Arg<JR_V>()                              \
                                    .Arg<JR_V>()                              \
                                    .Arg<JR_V>()                              \
                                    .Ret<ffi::Buffer<DT>>()                   \
                                    .Ret<ffi::Buffer<DT>>()                   \
                                    .Attr<i64>("relu")                        \
                                    .Attr<i64>("threads"));

JR_BN_HANDLERS(, ffi::F32)
JR_BN_HANDLERS(_bf16, ffi::BF16)

#undef JR_BN_HANDLERS
#undef JR_V
