// What the float32 (cpu_conv.cc) and bf16 (cpu_conv_bf16.cc) convolution
// kernels share: the geometry of a convolution and its checks, the zero-padded
// image copy, the stride-1 input gradient as a forward convolution, and the
// kernel gradient's fixed batch parts (KernelGradInParts).

#ifndef JAX_RESNET_CPU_CONV_SHARED_H_
#define JAX_RESNET_CPU_CONV_SHARED_H_

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace jax_resnet {

// y = conv(x, w): x [N,H,W,C], w [KH,KW,C,K] (HWIO), y [N,Ho,Wo,K].
struct Geometry {
  i64 N, H, W, C;      // input
  i64 KH, KW, K;       // kernel rows, columns, output channels
  i64 Ho, Wo;          // output
  i64 sh, sw;          // strides
  i64 pt, pb, pl, pr;  // padding
};

// Strides, padding and the output size agree; `name` starts the message.
inline xla::ffi::Error CheckGeometry(const Geometry& g, const char* name) {
  if (g.sh < 1 || g.sw < 1 || g.pt < 0 || g.pb < 0 || g.pl < 0 || g.pr < 0) {
    return xla::ffi::Error::InvalidArgument(std::string(name) +
                                            ": bad strides or padding");
  }
  if (g.Ho != (g.H + g.pt + g.pb - g.KH) / g.sh + 1 ||
      g.Wo != (g.W + g.pl + g.pr - g.KW) / g.sw + 1 || g.Ho < 1 || g.Wo < 1) {
    return xla::ffi::Error::InvalidArgument(std::string(name) +
                                            ": inconsistent shapes");
  }
  return xla::ffi::Error::Success();
}

// Copies image [H,W,C] into a zeroed [H+pt+pb, W+pl+pr, C] buffer.
template <typename T>
void PadImage(const T* src, const Geometry& g, T* dst) {
  const i64 Wp = g.W + g.pl + g.pr, row = Wp * g.C;
  std::memset(dst, 0, sizeof(T) * g.pt * row);
  std::memset(dst + (g.pt + g.H) * row, 0, sizeof(T) * g.pb * row);
  for (i64 h = 0; h < g.H; ++h) {
    T* d = dst + (g.pt + h) * row;
    std::memset(d, 0, sizeof(T) * g.pl * g.C);
    std::memcpy(d + g.pl * g.C, src + h * g.W * g.C, sizeof(T) * g.W * g.C);
    std::memset(d + (g.pl + g.W) * g.C, 0, sizeof(T) * g.pr * g.C);
  }
}

// At stride 1, dx = conv(pad(dy), w') with w'[kh][kw][k][c] =
// w[KH-1-kh][KW-1-kw][c][k]: the geometry of that convolution ...
inline Geometry InputGradGeometry(const Geometry& g) {
  return Geometry{g.N, g.Ho, g.Wo, g.K, g.KH, g.KW, g.C, g.H, g.W, 1, 1,
                  g.KH - 1 - g.pt, g.KH - 1 - g.pb, g.KW - 1 - g.pl,
                  g.KW - 1 - g.pr};
}

// ... and its kernel w', cache-line aligned like XLA's operands: the kernels
// read it with full-vector loads, and a plain heap block (glibc mmaps a 147 KB
// float kernel and returns 16 bytes past the page) would split every load
// over two lines, making the input gradient up to a quarter slower than the
// forward pass.
// Each tap's [C][K] matrix is transposed in 16 x 16 blocks, the taps and
// input-channel blocks split over the threads.
template <typename T>
AlignedVector<T> FlippedKernel(xla::ffi::ThreadPool& pool, int threads,
                               const T* w, const Geometry& g) {
  const i64 C = g.C, K = g.K, taps = g.KH * g.KW, blocks = (C + 15) / 16;
  AlignedVector<T> wf(taps * C * K);
  ParallelFor(pool, threads, taps * blocks, [&](int, i64 item) {
    const i64 t = item / blocks, c0 = item % blocks * 16;
    const i64 c1 = std::min(C, c0 + 16);
    const T* src = w + (taps - 1 - t) * C * K;  // Tap t of the flipped.
    T* dst = wf.data() + t * K * C;
    for (i64 k0 = 0; k0 < K; k0 += 16) {
      const i64 k1 = std::min(K, k0 + 16);
      for (i64 c = c0; c < c1; ++c)
        for (i64 k = k0; k < k1; ++k) dst[k * C + c] = src[c * K + k];
    }
  });
  return wf;
}

// The kernel gradient cuts the batch into a number of parts fixed by the
// shape alone (never by the thread count); each part sums its images in order
// into a buffer of its own, and the buffers are added in order: the result is
// bitwise the same on every run and every machine, whichever thread ran which
// part.
inline i64 KernelGradParts(i64 N, i64 size) {
  // The first part sums into dw itself: the others' copies take 32 MB.
  const i64 budget = (32 << 20) / (sizeof(float) * size) + 1;
  return std::max<i64>(1, std::min<i64>(N, std::clamp<i64>(budget, 2, 8)));
}

// dw (`size` floats) = the sum over the KernelGradParts of a batch of N of
// part(begin, end, acc), which adds the contributions of images [begin, end)
// into acc (zeroed first), on up to `threads` threads.
template <typename Part>
void KernelGradInParts(xla::ffi::ThreadPool& pool, int threads, i64 N,
                       i64 size, float* dw, Part&& part) {
  const i64 parts = KernelGradParts(N, size);
  AlignedVector<float> copies(static_cast<size_t>(parts - 1) * size);
  ParallelFor(pool, threads, parts, [&](int, i64 p) {
    float* acc = p == 0 ? dw : copies.data() + (p - 1) * size;
    std::memset(acc, 0, sizeof(float) * size);
    part(p * N / parts, (p + 1) * N / parts, acc);
  });
  // Each element sums the parts in order, in chunks on all threads.
  constexpr i64 kChunk = 1 << 14;
  ParallelFor(pool, threads, parts > 1 ? (size + kChunk - 1) / kChunk : 0,
              [&](int, i64 chunk) {
                const i64 begin = chunk * kChunk;
                const i64 end = std::min(size, begin + kChunk);
                for (i64 p = 1; p < parts; ++p) {
                  const float* c = copies.data() + (p - 1) * size;
                  for (i64 i = begin; i < end; ++i) dw[i] += c[i];
                }
              });
}

}  // namespace jax_resnet

// The binding every convolution handler shares: the thread pool, two
// operands of OPERAND type, a result of RESULT type, strides, padding and
// threads.
#define JR_CONV_BIND(OPERAND, RESULT)        \
  ::xla::ffi::Ffi::Bind()                    \
      .Ctx<::xla::ffi::ThreadPool>()         \
      .Arg<::xla::ffi::Buffer<OPERAND>>()    \
      .Arg<::xla::ffi::Buffer<OPERAND>>()    \
      .Ret<::xla::ffi::Buffer<RESULT>>()     \
      .Attr<::jax_resnet::i64>("stride_h")   \
      .Attr<::jax_resnet::i64>("stride_w")   \
      .Attr<::jax_resnet::i64>("pad_top")    \
      .Attr<::jax_resnet::i64>("pad_bottom") \
      .Attr<::jax_resnet::i64>("pad_left")   \
      .Attr<::jax_resnet::i64>("pad_right")  \
      .Attr<::jax_resnet::i64>("threads")

#endif  // JAX_RESNET_CPU_CONV_SHARED_H_
