// NHWC bfloat16 convolution kernels for x86-64 CPUs: bf16 operands, float32
// accumulation; called from jitted JAX code as XLA FFI custom calls (see
// cpu_conv_bf16.py).
//
// Three handlers, for y = conv(x, w) with x [N,H,W,C], w [KH,KW,C,K] (HWIO),
// y [N,Ho,Wo,K], integer strides and zero padding; every operand is bf16, y
// and dx are bf16 (the float32 sums rounded once, to nearest even), dw is
// float32:
//   jax_resnet_conv_bf16_forward        x, w  -> y
//   jax_resnet_conv_bf16_input_grad     dy, w -> dx
//   jax_resnet_conv_bf16_kernel_grad    x, dy -> dw
//
// All three are cut into products, computed by a micro-kernel:
//
//   C[M x 16 NB] (+)= sum over segments s of A_s[M x kd_s] . B_s[kd_s x 16 NB]
//
// with M <= 16 rows (or up to 64, with every kd a multiple of 32 and NB <= 2:
// see Product), NB <= 4 blocks of 16 columns, A row-major bf16 with any row
// stride, B in the VNNI pair layout (element (k, n) at [k / 2][n][k % 2]),
// which is both AMX's B operand and vdpbf16ps's, and kd a multiple of 16.
//
// * Forward: for a kernel row kh, the index j = kw * C + c runs contiguously
//   through the HWIO kernel row and through a zero-padded input row, so
//   consecutive output pixels are the rows of A and the kernel row is B
//   (kd = KW * C), one segment per kh. At stride 1 the rows run on across
//   output rows (the padded grid, Forward), so one product takes 64 rows
//   (VDPBF16PS, 16 rows at a time, leaves the grid on small images).
// * Input gradient, stride 1: the forward on the padded dy with the flipped,
//   io-swapped kernel. Stride > 1: for each kernel tap, M pixels of dy times
//   the tap's transposed kernel, added into the padded dx (col2im).
// * Kernel gradient: 16 x 16 blocks of dw reduced over the pixels, with the
//   input channel-major (A: 16 channels x pixels) and dy in pixel pairs (B).
//   At stride 1 the input is transposed once per image and each tap is a
//   shift of it (the padded grid, KernelGradStride1); at stride > 1 each
//   tap's pixels are packed. The batch is cut into parts fixed by the shape,
//   summed in order (deterministic results).
//
// Micro-kernels, chosen per call by the `isa` attribute (cpu_conv_bf16.py
// chooses from the CPU's features):
//   2  AMX: tile registers and TDPBF16PS (Sapphire Rapids and later);
//   1  AVX512-BF16: zmm accumulators and VDPBF16PS (Cooper Lake, Zen 4);
//   0  reference: plain C++ with the same arithmetic, for any x86-64 CPU. It
//      is slow, and it exists so the blocking above is tested on every CPU and
//      the two fast micro-kernels are checked against it when loaded
//      (jax_resnet_bf16_self_check).
// The library is compiled for baseline x86-64; only the two fast
// micro-kernels and the vector helpers (AVX2 transposes, AVX-512 and
// AVX512-BF16 rounding, each used after a check of the CPU's features) carry
// the instructions they use (target attributes), so the library loads on
// every x86-64 CPU.
//
// The forward takes any C: A's rows run on past a kernel row's KW * C values
// into the next position's (or a zero tail), which meet zero weights. Shapes
// a kernel cannot run (K, or C for the gradients, not a multiple of 16;
// padding beyond the kernel) are refused with an error, never an abort;
// cpu_conv_bf16.py pads the gradients' channels and routes the rest to XLA
// before tracing.

#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_conv_shared.h"
#include "cpu_parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using jax_resnet::AlignedVector;
using jax_resnet::Geometry;
using jax_resnet::i64;
using jax_resnet::KernelGradInParts;
using jax_resnet::PadImage;
using jax_resnet::ParallelFor;
using jax_resnet::Scratch;
using bf16 = uint16_t;

namespace {

inline float ToFloat(bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round to nearest even; NaN stays NaN.
inline bf16 ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<bf16>((u >> 16) | 0x40);
  }
  return static_cast<bf16>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// ------------------------------------------------------- micro-kernels -----

struct Segment {
  const bf16* a;  // A[m][k] = a[m * lda + k]
  i64 lda;
  const bf16* b;  // B[k][n] = b[(k / 2) * ldb + 2 * n + k % 2]
  i64 ldb;
  i64 kd;         // a multiple of 16
  // Nonzero: B is cut into panels of ldb / 2 columns, each panel elements
  // after the one before (PackPanels); B[k][n] with n < ldb / 2 as above.
  i64 panel = 0;
};

enum Isa { kReference = 0, kAvx512Bf16 = 1, kAmx = 2 };

// c[m * ldc + n] = (add ? c : 0) + sum_s A_s . B_s, m < M, n < 16 * NB.
void ReferenceKernel(int M, int NB, const Segment* segs, int ns, float* c,
                     i64 ldc, bool add) {
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < 16 * NB; ++n) {
      float acc = add ? c[m * ldc + n] : 0.0f;
      for (int s = 0; s < ns; ++s) {
        const Segment& g = segs[s];
        const bf16* ar = g.a + m * g.lda;
        for (i64 p = 0; p < g.kd / 2; ++p) {
          const bf16* bp = g.b + p * g.ldb + 2 * n;
          acc += ToFloat(ar[2 * p]) * ToFloat(bp[0]) +
                 ToFloat(ar[2 * p + 1]) * ToFloat(bp[1]);
        }
      }
      c[m * ldc + n] = acc;
    }
  }
}

// R rows from m0 on, NB column blocks: R * NB zmm accumulators; each B
// row (NB loads) serves R broadcast A pairs.
template <int R, int NB>
__attribute__((target("avx512f,avx512bf16"))) inline void Avx512Bf16Rows(
    int m0, const Segment* segs, int ns, float* c, i64 ldc, bool add) {
  __m512 acc[R][NB];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < NB; ++t)
      acc[r][t] = add ? _mm512_loadu_ps(c + (m0 + r) * ldc + 16 * t)
                      : _mm512_setzero_ps();
  for (int s = 0; s < ns; ++s) {
    const Segment& g = segs[s];
    // Row r's pair p lies at base[r / 3] + (r % 3) * L + 4 p bytes: up to
    // six pointers and one stride address all 16 rows, so that the rows
    // need no general registers of their own (16 of them would spill).
    constexpr int kBases = (R + 2) / 3;
    const i64 L = g.lda * 2;
    const char* base[kBases];
#pragma GCC unroll 6
    for (int i = 0; i < kBases; ++i) {
      base[i] = reinterpret_cast<const char*>(g.a + m0 * g.lda) + 3 * i * L;
    }
    const bf16* b = g.b;
    for (i64 p = 0; p < g.kd / 2; ++p) {
      __m512bh bv[NB];
#pragma GCC unroll 4
      for (int t = 0; t < NB; ++t) {
        bv[t] = (__m512bh)_mm512_loadu_si512(b + 32 * t);
      }
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        int32_t pair;
        std::memcpy(&pair, base[r / 3] + (r % 3) * L, sizeof(pair));
        const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
        // A register broadcast measured faster than VDPBF16PS's own
        // {1to16} memory operand (one instruction instead of two; README).
#pragma GCC unroll 4
        for (int t = 0; t < NB; ++t) {
          acc[r][t] = _mm512_dpbf16_ps(acc[r][t], av, bv[t]);
        }
      }
#pragma GCC unroll 6
      for (int i = 0; i < kBases; ++i) base[i] += 4;
      b += g.ldb;
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < NB; ++t)
      _mm512_storeu_ps(c + (m0 + r) * ldc + 16 * t, acc[r][t]);
}

// Rows per register block: enough accumulators (16 to 24 of the 32 zmm
// registers) to cover VDPBF16PS's latency at two per cycle, and B's NB
// loads shared by as many broadcasts as fit.
template <int NB> constexpr int Avx512Bf16BlockRows() {
  return NB == 1 ? 16 : NB == 4 ? 4 : 8;
}

// The last r < Avx512Bf16BlockRows<NB>() rows, from m0 on.
template <int NB, int R>
__attribute__((target("avx512f,avx512bf16"))) void Avx512Bf16Tail(
    int r, int m0, const Segment* segs, int ns, float* c, i64 ldc, bool add) {
  if constexpr (R > 0) {
    if (r == R) return Avx512Bf16Rows<R, NB>(m0, segs, ns, c, ldc, add);
    return Avx512Bf16Tail<NB, R - 1>(r, m0, segs, ns, c, ldc, add);
  }
}

template <int NB>
__attribute__((target("avx512f,avx512bf16"))) void Avx512Bf16Columns(
    int M, const Segment* segs, int ns, float* c, i64 ldc, bool add) {
  constexpr int R = Avx512Bf16BlockRows<NB>();
  int m0 = 0;
  for (; m0 + R <= M; m0 += R) {
    Avx512Bf16Rows<R, NB>(m0, segs, ns, c, ldc, add);
  }
  Avx512Bf16Tail<NB, R - 1>(M - m0, m0, segs, ns, c, ldc, add);
}

__attribute__((target("avx512f,avx512bf16"))) void Avx512Bf16Kernel(
    int M, int NB, const Segment* segs, int ns, float* c, i64 ldc, bool add) {
  switch (NB) {
    case 1: return Avx512Bf16Columns<1>(M, segs, ns, c, ldc, add);
    case 2: return Avx512Bf16Columns<2>(M, segs, ns, c, ldc, add);
    case 3: return Avx512Bf16Columns<3>(M, segs, ns, c, ldc, add);
    default: return Avx512Bf16Columns<4>(M, segs, ns, c, ldc, add);
  }
}

// AMX tile configuration, palette 1 (Intel SDM, LDTILECFG).
struct alignas(64) TileConfig {
  uint8_t palette;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// The configuration this thread loaded: its C tile rows, plus 100 for the
// full one; 0 = none. Every FFI call releases the tiles when it ends
// (AmxRelease), so no other code on the thread sees a stale configuration.
thread_local int amx_config = 0;

// Tiles 0-3: C blocks (rows x 16 float32). Full (every kd a multiple of 32):
// 4 and 6 hold A (rows x 32 bf16), 5 and 7 B (16 pair rows x 16), so that
// an operand loads into one tile while the previous product still reads
// the other. Otherwise 4, 5: A and B of 32 k values; 6, 7: A (rows x 16
// bf16) and B (8 pair rows), for kd's last 16.
__attribute__((target("amx-tile"))) void AmxConfigure(int rows, bool full) {
  const int key = rows + (full ? 100 : 0);
  if (amx_config == key) return;
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof(cfg));
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = static_cast<uint8_t>(rows);
    cfg.colsb[t] = 64;
  }
  cfg.rows[5] = cfg.rows[7] = 16;
  if (!full) {
    cfg.colsb[6] = 32;
    cfg.rows[7] = 8;
  }
  _tile_loadconfig(&cfg);
  amx_config = key;
}

__attribute__((target("amx-tile"))) void AmxRelease() {
  if (amx_config) {
    _tile_release();
    amx_config = 0;
  }
}

// Tile T (0-3) accumulates column block T % NB of row block T / NB (M > 16,
// full configuration) or of the k chunks of set T / NB (M <= 16). With
// fewer than 4 column blocks, 16 rows and a long reduction, the sets split
// the k chunks among several accumulators, so that consecutive TDPBF16PS do
// not wait on each other's results. A row block's A loads with its first
// column block; B loads with the first row block, and again for every
// row block where A and B cannot both stay in their two tiles (NB > 2, or
// sets: a set's chunk is new).
#define JR_AMX_STEP(T, A, B)                                              \
  if (T < tiles && (sets == 1 || T / NB == set)) {                        \
    if (T % NB == 0) {                                                    \
      _tile_loadd(A, g.a + k + (sets == 1 ? T / NB * 16 * g.lda : 0),     \
                  lda_bytes);                                             \
    }                                                                     \
    if (T < NB || sets > 1 || NB > 2) {                                   \
      _tile_loadd(B, bk + 32 * (T % NB), ldb_bytes);                      \
    }                                                                     \
    _tile_dpbf16ps(T, A, B);                                              \
  }

__attribute__((target("amx-tile,amx-bf16"))) void AmxKernel(
    int M, int NB, const Segment* segs, int ns, float* c, i64 ldc, bool add) {
  bool full = true;
  i64 chunks = 0;
  for (int s = 0; s < ns; ++s) {
    full &= segs[s].kd % 32 == 0;
    chunks += (segs[s].kd + 31) / 32;
  }
  // M > 16: a multiple of 16 with M / 16 * NB <= 4, and full (Product).
  const int row_blocks = M > 16 ? M / 16 : 1;
  AmxConfigure(std::min(M, 16), full);
  // Split long reductions only: the sets' sum costs a pass over C.
  const int sets = row_blocks == 1 && NB < 3 && chunks >= 8 ? 4 / NB : 1;
  const int tiles = row_blocks * sets * NB;
  const i64 ldc_bytes = ldc * 4;
  // Tile T's block of C (for the sets, set 0's: T < NB).
  auto block = [&](int T) { return c + T / NB * 16 * ldc + 16 * (T % NB); };
  const int loaded = add ? (sets == 1 ? tiles : NB) : 0;  // read from C
  if (loaded > 0) _tile_loadd(0, block(0), ldc_bytes); else _tile_zero(0);
  if (tiles > 1) {
    if (loaded > 1) _tile_loadd(1, block(1), ldc_bytes); else _tile_zero(1);
  }
  if (tiles > 2) {
    if (loaded > 2) _tile_loadd(2, block(2), ldc_bytes); else _tile_zero(2);
  }
  if (tiles > 3) {
    if (loaded > 3) _tile_loadd(3, block(3), ldc_bytes); else _tile_zero(3);
  }
  int set = 0;
  for (int s = 0; s < ns; ++s) {
    const Segment& g = segs[s];
    const i64 lda_bytes = g.lda * 2, ldb_bytes = g.ldb * 2;
    i64 k = 0;
    for (; k + 32 <= g.kd; k += 32) {
      const bf16* bk = g.b + (k / 2) * g.ldb;
      if (!full) {
        JR_AMX_STEP(0, 4, 5) JR_AMX_STEP(1, 4, 5) JR_AMX_STEP(2, 4, 5)
        JR_AMX_STEP(3, 4, 5)
      } else if (NB == 1 && sets > 1) {  // Tile numbers must be constants.
        JR_AMX_STEP(0, 4, 5) JR_AMX_STEP(1, 6, 7) JR_AMX_STEP(2, 4, 5)
        JR_AMX_STEP(3, 6, 7)
      } else if (NB == 1) {  // B shared by the row blocks.
        JR_AMX_STEP(0, 4, 5) JR_AMX_STEP(1, 6, 5) JR_AMX_STEP(2, 4, 5)
        JR_AMX_STEP(3, 6, 5)
      } else if (NB == 2) {
        JR_AMX_STEP(0, 4, 5) JR_AMX_STEP(1, 4, 7) JR_AMX_STEP(2, 6, 5)
        JR_AMX_STEP(3, 6, 7)
      } else {
        JR_AMX_STEP(0, 4, 5) JR_AMX_STEP(1, 4, 7) JR_AMX_STEP(2, 4, 5)
        JR_AMX_STEP(3, 4, 7)
      }
      set = set + 1 == sets ? 0 : set + 1;
    }
    if (k < g.kd) {  // The last 16 (not full).
      const bf16* bk = g.b + (k / 2) * g.ldb;
      JR_AMX_STEP(0, 6, 7) JR_AMX_STEP(1, 6, 7) JR_AMX_STEP(2, 6, 7)
      JR_AMX_STEP(3, 6, 7)
      set = set + 1 == sets ? 0 : set + 1;
    }
  }
  if (sets == 1) {
    _tile_stored(0, block(0), ldc_bytes);
    if (tiles > 1) _tile_stored(1, block(1), ldc_bytes);
    if (tiles > 2) _tile_stored(2, block(2), ldc_bytes);
    if (tiles > 3) _tile_stored(3, block(3), ldc_bytes);
    return;
  }
  // Sum the sets, in set order: c = set 0 + set 1 (+ sets 2 and 3).
  alignas(64) float part[4][16 * 16];
  _tile_stored(0, part[0], 64);
  _tile_stored(1, part[1], 64);
  if (tiles > 2) _tile_stored(2, part[2], 64);
  if (tiles > 3) _tile_stored(3, part[3], 64);
  for (int t = 0; t < NB; ++t) {
    for (int m = 0; m < M; ++m) {
      float* out = c + m * ldc + 16 * t;
      for (int n = 0; n < 16; ++n) {
        float v = part[t][m * 16 + n];
        for (int r = 1; r < sets; ++r) v += part[r * NB + t][m * 16 + n];
        out[n] = v;
      }
    }
  }
}

#undef JR_AMX_STEP

using MicroKernel = void (*)(int, int, const Segment*, int, float*, i64, bool);

// Whether Linux lets this process use AMX tile data (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA; asked once). Without it the
// first tile instruction would kill the process (SIGILL).
bool AmxPermitted() {
  static const bool permitted = [] {
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return permitted;
}

// An error for a micro-kernel this process cannot run (instead of SIGILL).
ffi::Error CheckIsa(i64 isa) {
  __builtin_cpu_init();
  if (isa < kReference || isa > kAmx) {
    return ffi::Error::InvalidArgument("cpu_conv_bf16: unknown isa");
  }
  if (isa == kAvx512Bf16 && !(__builtin_cpu_supports("avx512f") &&
                              __builtin_cpu_supports("avx512bf16"))) {
    return ffi::Error::InvalidArgument(
        "cpu_conv_bf16: this CPU lacks AVX512-BF16");
  }
  if (isa == kAmx && !(__builtin_cpu_supports("amx-tile") &&
                       __builtin_cpu_supports("amx-bf16") && AmxPermitted())) {
    return ffi::Error::InvalidArgument(
        "cpu_conv_bf16: this CPU lacks AMX-BF16, or Linux does not grant "
        "this process the AMX tile state");
  }
  return ffi::Error::Success();
}

MicroKernel Kernel(i64 isa) {
  switch (isa) {
    case kAmx: return AmxKernel;
    case kAvx512Bf16: return Avx512Bf16Kernel;
    default: return ReferenceKernel;
  }
}

// Ends a thread's share of an FFI call: AMX tiles are released.
void EndWork(i64 isa) {
  if (isa == kAmx) AmxRelease();
}

// Product's column blocks: 32 columns where M > 16 and every kd is a
// multiple of 32, else 64. A B in panels (Segment::panel) needs panels of a
// multiple of this width, or one panel of all N columns.
i64 ProductWidth(int M, bool whole_chunks) {
  return M > 16 && whole_chunks ? 32 : 64;
}

// C[M x N] (+)= sum_s A_s . B_s for any N (a multiple of 16) and M <= 16 or
// M a multiple of 16: blocks of 64 columns and 16 rows; where every kd is a
// multiple of 32 and M > 16, blocks of 32 columns (16 for the last, if N is
// odd in 16s) and 32 (64) rows at once, which the AMX micro-kernel computes
// in its four C tiles. Segment pointers are at row 0 and column 0;
// a B in panels (Segment::panel) is read panel by panel.
void Product(MicroKernel kernel, int M, i64 N, const Segment* segs, int ns,
             float* c, i64 ldc, bool add) {
  Segment shifted[16];
  bool whole_chunks = true;
  for (int s = 0; s < ns; ++s) whole_chunks &= segs[s].kd % 32 == 0;
  // Several row blocks at once: columns in blocks of 32, so that the B of a
  // column block (up to two tiles) serves all of M before the next.
  const i64 width = ProductWidth(M, whole_chunks);
  const bool wide = width == 32;
  for (i64 n0 = 0; n0 < N; n0 += width) {
    const int nb = static_cast<int>(std::min<i64>(width, N - n0) / 16);
    const int rows = M <= 16 ? M : wide ? 64 / nb : 16;
    for (int m0 = 0; m0 < M; m0 += rows) {
      for (int s = 0; s < ns; ++s) {
        const Segment& g = segs[s];
        shifted[s] = g;
        shifted[s].a += m0 * g.lda;
        // A panel holds whole column blocks of this width (ProductWidth).
        shifted[s].b += g.panel ? n0 / (g.ldb / 2) * g.panel +
                                      2 * (n0 % (g.ldb / 2))
                                : 2 * n0;
      }
      kernel(std::min(rows, M - m0), nb, shifted, ns, c + m0 * ldc + n0, ldc,
             add);
    }
  }
}

// out[i] = bf16(in[i]) for i < n (ToBf16's rounding), 16 at a time where the
// CPU has AVX-512.
__attribute__((target("avx512f,avx512bw"))) void RoundAvx512(
    const float* in, i64 n, bf16* out) {
  const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
  const __m512i abs = _mm512_set1_epi32(0x7fffffff);
  const __m512i inf = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x40);
  i64 i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i u = _mm512_loadu_si512(in + i);
    const __m512i high = _mm512_srli_epi32(u, 16);
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(bias, _mm512_and_si512(high,
                                                                    one))),
        16);
    const __mmask16 nan =
        _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, abs), inf);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(high, quiet));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm512_cvtepi32_epi16(r));
  }
  for (; i < n; ++i) out[i] = ToBf16(in[i]);
}

// The same with VCVTNE2PS2BF16, 32 at a time: it rounds to nearest even and
// quiets a NaN as ToBf16 does, but flushes float32 subnormals to zero, so a
// block of 32 with a subnormal goes to RoundAvx512.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void RoundNative(
    const float* in, i64 n, bf16* out) {
  const __m512i exponent = _mm512_set1_epi32(0x7f800000);
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  i64 i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = _mm512_loadu_ps(in + i), b = _mm512_loadu_ps(in + i + 16);
    const __m512i ua = _mm512_castps_si512(a), ub = _mm512_castps_si512(b);
    // Subnormal: a zero exponent under a nonzero magnitude.
    const __mmask16 sa = _mm512_testn_epi32_mask(ua, exponent) &
                         _mm512_test_epi32_mask(ua, magnitude);
    const __mmask16 sb = _mm512_testn_epi32_mask(ub, exponent) &
                         _mm512_test_epi32_mask(ub, magnitude);
    if (sa | sb) {
      RoundAvx512(in + i, 32, out + i);
      continue;
    }
    _mm512_storeu_si512(out + i, (__m512i)_mm512_cvtne2ps_pbh(b, a));
  }
  RoundAvx512(in + i, n - i, out + i);
}

void Round(const float* in, i64 n, bf16* out) {
  static const int path = [] {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") ||
        !__builtin_cpu_supports("avx512bw")) {
      return 0;
    }
    return __builtin_cpu_supports("avx512bf16") ? 2 : 1;
  }();
  if (path == 2) {
    RoundNative(in, n, out);
  } else if (path == 1) {
    RoundAvx512(in, n, out);
  } else {
    for (i64 i = 0; i < n; ++i) out[i] = ToBf16(in[i]);
  }
}

// w [KH][KW*C][K] -> VNNI pairs wv[KH][ld/2][K][2] (ld >= jn = KW*C, even;
// the rows from jn to ld are left as they are in wv).
void PackPairs(const bf16* w, i64 rows, i64 jn, i64 K, bf16* wv, i64 ld = 0) {
  if (ld == 0) ld = jn;
  for (i64 r = 0; r < rows; ++r)
    for (i64 j = 0; j < jn; ++j)
      for (i64 k = 0; k < K; ++k)
        wv[((r * ld + (j & ~i64{1})) * K + 2 * k) + (j & 1)] =
            w[(r * jn + j) * K + k];
}

// w [rows][jn][K] -> panels of pw columns in VNNI pairs,
// wp[K / pw][rows][kd / 2][pw][2] (kd >= jn, even), so that a column block's
// B is one contiguous stream: read across the whole kernel row, the pairs of
// the interleaved layout lie 2K elements apart, which at 256 and more
// channels maps them onto a few L1 sets and defeats the prefetchers. The
// pair rows from jn to kd and the columns from K to the last panel's end
// are left as they are (zero in a zeroed wp). Split over the threads by
// kernel rows and pairs.
void PackPanels(ffi::ThreadPool& pool, int threads, const bf16* w, i64 rows,
                i64 jn, i64 K, i64 kd, i64 pw, bf16* wp) {
  const i64 half = kd / 2, pairs = (jn + 1) / 2;
  ParallelFor(pool, threads, rows * pairs, [&](int, i64 i) {
    const i64 r = i / pairs, j0 = 2 * (i % pairs);
    for (i64 j = j0; j < std::min(j0 + 2, jn); ++j) {
      const bf16* src = w + (r * jn + j) * K;
      for (i64 p0 = 0; p0 < K; p0 += pw) {
        bf16* dst = wp + ((p0 / pw * rows + r) * half + j / 2) * 2 * pw +
                    (j & 1);
        for (i64 k = 0; k < std::min(pw, K - p0); ++k) {
          dst[2 * k] = src[p0 + k];
        }
      }
    }
  });
}

// ------------------------------------------------------------- forward -----

// y = conv(x, w); x [N,H,W,C] bf16 (any C), w [KH,KW,C,K] bf16; y bf16,
// rounded once from the float32 sums.
//
// At stride 1 output pixel (oh, ow) is position q = oh * Wp + ow of the padded
// image's width, and kernel row kh reads the KW * C values from padded
// position q + kh * Wp on: A's rows are consecutive positions (row stride C)
// across output rows, so the whole image is one product, whose B (the
// kernel) stays in cache while Product runs over its rows; the Wp - Wo
// positions past each row are computed and dropped (the grid). Without
// it, as at stride > 1, each output row is cut into products of 16 pixels.
void Forward(ffi::ThreadPool& pool, int threads, i64 isa, const Geometry& g,
             const bf16* x, const bf16* w, bf16* y) {
  const MicroKernel kernel = Kernel(isa);
  const i64 Hp = g.H + g.pt + g.pb, Wp = g.W + g.pl + g.pr, row = Wp * g.C;
  // AMX's layout (the reference follows it too, so that every CPU tests
  // it): always the grid, on which products of 16 or 32 output channels
  // take 64 or 32 rows at once (Product), and a kernel row's KW * C values
  // padded with zero weights to a multiple of 32 there (16 elsewhere).
  // VDPBF16PS takes at most 16 rows at a time anyway: it leaves the grid
  // where the dropped positions would be more than an eighth of the
  // outputs (8 x 8 images: 80 positions for 64), and pads to 16 (at 16
  // channels 32s would be a third more products: 64 for 48).
  const bool amx_layout = isa != kAvx512Bf16;
  const bool grid = g.sh == 1 && g.sw == 1 &&
                    (amx_layout || 8 * (Wp - g.Wo) <= g.Wo);
  const i64 jn = g.KW * g.C;
  const i64 kd = grid && amx_layout ? (jn + 31) / 32 * 32
                                    : (jn + 15) / 16 * 16;
  // With the grid, the image's positions rounded up to a 16-row block; else
  // one 16-pixel tile at a time. After the padded input, the zero tail that
  // the last rows of A read.
  const i64 positions = grid ? (g.Ho * Wp + 15) / 16 * 16 : 16;
  const i64 pw = std::min(
      g.K, ProductWidth(static_cast<int>(positions), kd % 32 == 0));
  const i64 panel = g.KH * kd * pw;
  AlignedVector<bf16> wv((g.K + pw - 1) / pw * panel, 0);
  PackPanels(pool, threads, w, g.KH, jn, g.K, kd, pw, wv.data());
  const i64 padded = Hp * row;
  const i64 tail = grid ? (positions - g.Ho * Wp) * g.C + kd : kd - jn;
  ParallelFor(pool, threads, g.N, [&](int, i64 n) {
    bf16* a = Scratch<bf16>(0, padded + tail);
    float* sums = Scratch<float>(1, positions * g.K);
    PadImage(x + n * g.H * g.W * g.C, g, a);
    std::memset(a + padded, 0, sizeof(bf16) * tail);
    bf16* yn = y + n * g.Ho * g.Wo * g.K;
    Segment segs[16];
    if (grid) {
      for (i64 kh = 0; kh < g.KH; ++kh) {
        segs[kh] = Segment{a + kh * Wp * g.C, g.C, wv.data() + kh * kd * pw,
                           2 * pw, kd, panel};
      }
      Product(kernel, static_cast<int>(positions), g.K, segs,
              static_cast<int>(g.KH), sums, g.K, false);
      for (i64 oh = 0; oh < g.Ho; ++oh) {  // The first Wo of each row.
        Round(sums + oh * Wp * g.K, g.Wo * g.K, yn + oh * g.Wo * g.K);
      }
    } else {
      for (i64 oh = 0; oh < g.Ho; ++oh) {
        for (i64 ow = 0; ow < g.Wo; ow += 16) {
          const int M = static_cast<int>(std::min<i64>(16, g.Wo - ow));
          for (i64 kh = 0; kh < g.KH; ++kh) {
            segs[kh] = Segment{a + (oh * g.sh + kh) * row + ow * g.sw * g.C,
                               g.sw * g.C, wv.data() + kh * kd * pw, 2 * pw,
                               kd, panel};
          }
          Product(kernel, M, g.K, segs, static_cast<int>(g.KH), sums, g.K,
                  false);
          Round(sums, M * g.K, yn + (oh * g.Wo + ow) * g.K);
        }
      }
    }
    EndWork(isa);
  });
}

// ------------------------------------------------------ input gradient -----

// dx = d conv / d x applied to dy (bf16, rounded once).
void InputGrad(ffi::ThreadPool& pool, int threads, i64 isa, const Geometry& g,
               const bf16* dy, const bf16* w, bf16* dx) {
  const i64 C = g.C, K = g.K, KH = g.KH, KW = g.KW;
  if (g.sh == 1 && g.sw == 1) {
    Forward(pool, threads, isa, jax_resnet::InputGradGeometry(g), dy,
            jax_resnet::FlippedKernel(pool, threads, w, g).data(), dx);
    return;
  }
  // Strided: col2im. Tap (kh, kw)'s transposed kernel [K][C] in pairs.
  const MicroKernel kernel = Kernel(isa);
  AlignedVector<bf16> wt(KH * KW * K * C), wv(KH * KW * K * C);
  for (i64 t = 0; t < KH * KW; ++t)
    for (i64 c = 0; c < C; ++c)
      for (i64 k = 0; k < K; ++k) {
        wt[(t * K + k) * C + c] = w[(t * C + c) * K + k];
      }
  PackPairs(wt.data(), KH * KW, K, C, wv.data());
  const i64 Hp = g.H + g.pt + g.pb, Wp = g.W + g.pl + g.pr;
  const i64 pixels = g.Ho * g.Wo;
  ParallelFor(pool, threads, g.N, [&](int, i64 n) {
    float* dxp = Scratch<float>(1, Hp * Wp * C);
    float* tile = Scratch<float>(2, 16 * C);
    std::memset(dxp, 0, sizeof(float) * Hp * Wp * C);
    const bf16* dyn = dy + n * pixels * K;
    for (i64 p0 = 0; p0 < pixels; p0 += 16) {
      const int M = static_cast<int>(std::min<i64>(16, pixels - p0));
      for (i64 kh = 0; kh < KH; ++kh) {
        for (i64 kw = 0; kw < KW; ++kw) {
          const Segment seg{dyn + p0 * K, K, wv.data() + (kh * KW + kw) * K * C,
                            2 * C, K};
          Product(kernel, M, C, &seg, 1, tile, C, false);
          for (int m = 0; m < M; ++m) {
            const i64 oh = (p0 + m) / g.Wo, ow = (p0 + m) % g.Wo;
            float* d = dxp + ((oh * g.sh + kh) * Wp + ow * g.sw + kw) * C;
            const float* s = tile + m * C;
            for (i64 c = 0; c < C; ++c) d[c] += s[c];
          }
        }
      }
    }
    bf16* out = dx + n * g.H * g.W * C;
    for (i64 h = 0; h < g.H; ++h) {
      Round(dxp + ((h + g.pt) * Wp + g.pl) * C, g.W * C, out + h * g.W * C);
    }
    EndWork(isa);
  });
}

// ----------------------------------------------------- kernel gradient -----

bool HasAvx2() {
  static const bool avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return avx2;
}

// dst[c * ld + p] = src[p * step + c] for p < pixels, c < C (a multiple of
// 16): a row of NHWC pixels (every pixel, step = C, or every sw-th, step =
// sw * C) made channel-major.
__attribute__((target("avx2"))) void ChannelMajorAvx2(const bf16* src,
                                                      i64 pixels, i64 C,
                                                      i64 step, bf16* dst,
                                                      i64 ld) {
  for (i64 p0 = 0; p0 < pixels; p0 += 16) {
    const i64 n = std::min<i64>(16, pixels - p0);
    for (i64 c0 = 0; c0 < C; c0 += 16) {
      __m256i r[16];
      for (i64 p = 0; p < 16; ++p) {
        r[p] = p < n ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                           src + (p0 + p) * step + c0))
                     : _mm256_setzero_si256();
      }
      // Pixel pairs: 32-bit lanes (pixel 2j, 2j + 1) of channels 0-3 and
      // 8-11 (lo), 4-7 and 12-15 (hi); then two 8 x 8 transposes of them.
      __m256i lo[8], hi[8];
      for (int j = 0; j < 8; ++j) {
        lo[j] = _mm256_unpacklo_epi16(r[2 * j], r[2 * j + 1]);
        hi[j] = _mm256_unpackhi_epi16(r[2 * j], r[2 * j + 1]);
      }
      for (int half = 0; half < 2; ++half) {
        const __m256i* R = half ? hi : lo;
        __m256i t[8], u[8];
        for (int j = 0; j < 8; j += 2) {
          t[j] = _mm256_unpacklo_epi32(R[j], R[j + 1]);
          t[j + 1] = _mm256_unpackhi_epi32(R[j], R[j + 1]);
        }
        for (int j = 0; j < 8; j += 4) {
          u[j] = _mm256_unpacklo_epi64(t[j], t[j + 2]);
          u[j + 1] = _mm256_unpackhi_epi64(t[j], t[j + 2]);
          u[j + 2] = _mm256_unpacklo_epi64(t[j + 1], t[j + 3]);
          u[j + 3] = _mm256_unpackhi_epi64(t[j + 1], t[j + 3]);
        }
        for (int i = 0; i < 4; ++i) {
          // Column i of the lane-0 channels and of the lane-1 ones.
          const __m256i low = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
          const __m256i high = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
          const i64 c = c0 + 4 * half + i;
          if (n == 16) {
            _mm256_storeu_si256(
                reinterpret_cast<__m256i*>(dst + c * ld + p0), low);
            _mm256_storeu_si256(
                reinterpret_cast<__m256i*>(dst + (c + 8) * ld + p0), high);
          } else {
            alignas(32) bf16 buf[2][16];
            _mm256_store_si256(reinterpret_cast<__m256i*>(buf[0]), low);
            _mm256_store_si256(reinterpret_cast<__m256i*>(buf[1]), high);
            std::memcpy(dst + c * ld + p0, buf[0], sizeof(bf16) * n);
            std::memcpy(dst + (c + 8) * ld + p0, buf[1], sizeof(bf16) * n);
          }
        }
      }
    }
  }
}

void ChannelMajor(const bf16* src, i64 pixels, i64 C, i64 step, bf16* dst,
                  i64 ld) {
  if (HasAvx2()) {
    ChannelMajorAvx2(src, pixels, C, step, dst, ld);
    return;
  }
  for (i64 p = 0; p < pixels; ++p)
    for (i64 c = 0; c < C; ++c) dst[c * ld + p] = src[p * step + c];
}

// A row of `pixels` NHWC pixels (K channels, a multiple of 16) into the VNNI
// pairs of positions q0, q0 + 1, ...: out[(q / 2) * 2K + 2k + q % 2].
__attribute__((target("avx2"))) void PixelPairsAvx2(const bf16* src,
                                                    i64 pixels, i64 K,
                                                    bf16* out) {
  for (i64 p = 0; p < pixels; p += 2) {
    for (i64 k0 = 0; k0 < K; k0 += 16) {
      const __m256i a = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(src + p * K + k0));
      const __m256i b = _mm256_loadu_si256(
          reinterpret_cast<const __m256i*>(src + (p + 1) * K + k0));
      const __m256i lo = _mm256_unpacklo_epi16(a, b);  // k 0-3, 8-11
      const __m256i hi = _mm256_unpackhi_epi16(a, b);  // k 4-7, 12-15
      bf16* d = out + p * K + 2 * k0;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d),
                          _mm256_permute2x128_si256(lo, hi, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 16),
                          _mm256_permute2x128_si256(lo, hi, 0x31));
    }
  }
}

void PixelPairs(const bf16* src, i64 pixels, i64 K, i64 q0, bf16* pairs) {
  if (HasAvx2() && q0 % 2 == 0 && pixels % 2 == 0) {
    PixelPairsAvx2(src, pixels, K, pairs + q0 * K);
    return;
  }
  for (i64 p = 0; p < pixels; ++p) {
    const i64 q = q0 + p;
    for (i64 k = 0; k < K; ++k) pairs[(q / 2) * 2 * K + 2 * k + q % 2] =
        src[p * K + k];
  }
}

// KernelGrad at stride 1. Output pixel (oh, ow) is position q = oh * Wp + ow
// of the padded image's width; tap (kh, kw) reads padded input position
// q + kh * Wp + kw, one shift for every pixel. So per image the padded input
// is made channel-major once (xt[c][q]) and dy paired over q with zeros at
// the Wp - Wo columns no output has, and each tap's A operand is xt shifted
// by the tap's offset; the zero columns cancel the positions past a row.
// A product takes a group of images, one segment each, so that their sum
// stays in the C tiles: where the accumulator (9 C K floats) is larger than
// the caches, reading and writing it once per image cost more than the
// multiplications.
void KernelGradStride1(ffi::ThreadPool& pool, int threads, i64 isa,
                       const Geometry& g, const bf16* x, const bf16* dy,
                       float* dw) {
  const MicroKernel kernel = Kernel(isa);
  const i64 C = g.C, K = g.K, taps = g.KH * g.KW;
  const i64 Hp = g.H + g.pt + g.pb, Wp = g.W + g.pl + g.pr;
  const i64 kd = (g.Ho * Wp + 31) / 32 * 32;
  // The largest shift plus kd, rounded to a cache line of bf16.
  const i64 lx = ((g.KH - 1) * Wp + g.KW - 1 + kd + 31) / 32 * 32;
  // Images per group: up to 16 (Product's segments), their operands in
  // about 1 MB.
  const i64 image_bytes = sizeof(bf16) * (C * lx + kd * K);
  const i64 group = std::clamp<i64>((1 << 20) / image_bytes, 1, 16);
  KernelGradInParts(
      pool, threads, g.N, taps * C * K, dw,
      [&](i64 begin, i64 end, float* acc) {
        // Image i of a group: xt[i][c][q] and dyv[i][q / 2][k][q % 2].
        bf16* xt = Scratch<bf16>(0, group * C * lx);
        bf16* dyv = Scratch<bf16>(1, group * kd * K);
        std::memset(xt, 0, sizeof(bf16) * group * C * lx);
        std::memset(dyv, 0, sizeof(bf16) * group * kd * K);
        Segment segs[16];
        for (i64 n0 = begin; n0 < end; n0 += group) {
          const i64 images = std::min(group, end - n0);
          for (i64 i = 0; i < images; ++i) {
            const bf16* xn = x + (n0 + i) * g.H * g.W * C;
            for (i64 h = 0; h < g.H; ++h) {
              ChannelMajor(xn + h * g.W * C, g.W, C, C,
                           xt + i * C * lx + (h + g.pt) * Wp + g.pl, lx);
            }
            const bf16* dyn = dy + (n0 + i) * g.Ho * g.Wo * K;
            for (i64 oh = 0; oh < g.Ho; ++oh) {
              PixelPairs(dyn + oh * g.Wo * K, g.Wo, K, oh * Wp,
                         dyv + i * kd * K);
            }
          }
          for (i64 kh = 0; kh < g.KH; ++kh)
            for (i64 kw = 0; kw < g.KW; ++kw) {  // All C rows of a tap.
              const i64 t = kh * g.KW + kw, shift = kh * Wp + kw;
              for (i64 i = 0; i < images; ++i) {
                segs[i] = Segment{xt + i * C * lx + shift, lx,
                                  dyv + i * kd * K, 2 * K, kd};
              }
              Product(kernel, static_cast<int>(C), K, segs,
                      static_cast<int>(images), acc + t * C * K, K, true);
            }
        }
        EndWork(isa);
      });
}

// dw = d conv / d w applied to dy; x [N,H,W,C], dy [N,Ho,Wo,K] bf16.
void KernelGrad(ffi::ThreadPool& pool, int threads, i64 isa, const Geometry& g,
                const bf16* x, const bf16* dy, float* dw) {
  if (g.sh == 1 && g.sw == 1) {
    KernelGradStride1(pool, threads, isa, g, x, dy, dw);
    return;
  }
  const MicroKernel kernel = Kernel(isa);
  const i64 C = g.C, K = g.K, taps = g.KH * g.KW;
  const i64 Hp = g.H + g.pt + g.pb, Wp = g.W + g.pl + g.pr;
  const i64 pixels = g.Ho * g.Wo, padded = (pixels + 15) / 16 * 16;
  KernelGradInParts(
      pool, threads, g.N, taps * C * K, dw,
      [&](i64 begin, i64 end, float* acc) {
        bf16* xp = Scratch<bf16>(0, Hp * Wp * C);
        // xt[tap][c][p]: the input pixel tap (kh, kw) of output pixel p sees.
        bf16* xt = Scratch<bf16>(1, taps * C * padded);
        // dyv[p / 2][k][p % 2].
        bf16* dyv = Scratch<bf16>(2, padded * K);
        std::memset(xt, 0, sizeof(bf16) * taps * C * padded);
        std::memset(dyv, 0, sizeof(bf16) * padded * K);
        for (i64 n = begin; n < end; ++n) {
          PadImage(x + n * g.H * g.W * C, g, xp);
          for (i64 kh = 0; kh < g.KH; ++kh)
            for (i64 kw = 0; kw < g.KW; ++kw) {
              bf16* dst = xt + (kh * g.KW + kw) * C * padded;
              for (i64 oh = 0; oh < g.Ho; ++oh) {
                ChannelMajor(xp + ((oh * g.sh + kh) * Wp + kw) * C, g.Wo, C,
                             g.sw * C, dst + oh * g.Wo, padded);
              }
            }
          PackPairs(dy + n * pixels * K, 1, pixels, K, dyv);
          for (i64 t = 0; t < taps; ++t)
            for (i64 c0 = 0; c0 < C; c0 += 16) {
              const Segment seg{xt + (t * C + c0) * padded, padded, dyv,
                                2 * K, padded};
              Product(kernel, 16, K, &seg, 1, acc + (t * C + c0) * K, K,
                      true);
            }
        }
        EndWork(isa);
      });
}

// ------------------------------------------------------------ handlers -----

struct Attrs {
  i64 sh, sw, pt, pb, pl, pr;
};

// `any_c`: any input channel count (the forward).
template <typename Dims>
ffi::Error MakeGeometry(const Dims& x, const Dims& w, const Dims& y,
                        const Attrs& at, Geometry* g, bool any_c = false) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4) {
    return ffi::Error::InvalidArgument(
        "cpu_conv_bf16: operands must be rank 4");
  }
  *g = Geometry{x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2],
                at.sh, at.sw, at.pt, at.pb, at.pl, at.pr};
  if (w[2] != x[3] || y[0] != x[0] || y[3] != w[3]) {
    return ffi::Error::InvalidArgument(
        "cpu_conv_bf16: channel counts disagree");
  }
  if (g->K % 16) {
    return ffi::Error::InvalidArgument(
        "cpu_conv_bf16: output channels must be a multiple of 16");
  }
  if (g->C % 16 && !any_c) {
    return ffi::Error::InvalidArgument(
        "cpu_conv_bf16: the gradients' input channels must be a multiple of "
        "16");
  }
  if (g->KH > 16) {
    return ffi::Error::InvalidArgument(
        "cpu_conv_bf16: at most 16 kernel rows");
  }
  return jax_resnet::CheckGeometry(*g, "cpu_conv_bf16");
}

const bf16* Data(ffi::Buffer<ffi::BF16>& b) {
  return reinterpret_cast<const bf16*>(b.typed_data());
}

bf16* Output(ffi::Buffer<ffi::BF16>& b) {
  return reinterpret_cast<bf16*>(b.typed_data());
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x,
                       ffi::Buffer<ffi::BF16> w,
                       ffi::ResultBuffer<ffi::BF16> y, i64 sh, i64 sw, i64 pt,
                       i64 pb, i64 pl, i64 pr, i64 threads, i64 isa) {
  Geometry g;
  JR_TRY(CheckIsa(isa));
  JR_TRY(MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(),
                      {sh, sw, pt, pb, pl, pr}, &g, /*any_c=*/true));
  Forward(pool, static_cast<int>(threads), isa, g, Data(x), Data(w),
          Output(*y));
  return ffi::Error::Success();
}

ffi::Error InputGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> dy,
                         ffi::Buffer<ffi::BF16> w,
                         ffi::ResultBuffer<ffi::BF16> dx, i64 sh, i64 sw,
                         i64 pt, i64 pb, i64 pl, i64 pr, i64 threads,
                         i64 isa) {
  Geometry g;
  JR_TRY(CheckIsa(isa));
  JR_TRY(MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(),
                      {sh, sw, pt, pb, pl, pr}, &g));
  if (g.pt >= g.KH || g.pb >= g.KH || g.pl >= g.KW || g.pr >= g.KW) {
    return ffi::Error::InvalidArgument(
        "cpu_conv_bf16: input gradient needs padding smaller than the kernel");
  }
  InputGrad(pool, static_cast<int>(threads), isa, g, Data(dy), Data(w),
            Output(*dx));
  return ffi::Error::Success();
}

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x,
                          ffi::Buffer<ffi::BF16> dy,
                          ffi::ResultBuffer<ffi::F32> dw, i64 sh, i64 sw,
                          i64 pt, i64 pb, i64 pl, i64 pr, i64 threads,
                          i64 isa) {
  Geometry g;
  JR_TRY(CheckIsa(isa));
  JR_TRY(MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(),
                      {sh, sw, pt, pb, pl, pr}, &g));
  KernelGrad(pool, static_cast<int>(threads), isa, g, Data(x), Data(dy),
             dw->typed_data());
  return ffi::Error::Success();
}

}  // namespace

#define JR_BIND(RESULT) JR_CONV_BIND(ffi::BF16, RESULT).Attr<i64>("isa")

XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_conv_bf16_forward, ForwardImpl,
                              JR_BIND(ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_conv_bf16_input_grad, InputGradImpl,
                              JR_BIND(ffi::BF16));
XLA_FFI_DEFINE_HANDLER_SYMBOL(jax_resnet_conv_bf16_kernel_grad, KernelGradImpl,
                              JR_BIND(ffi::F32));

#undef JR_BIND

// 1 when Round (the vector paths this CPU takes) gives ToBf16's bits for
// values with every rounding case: ties to even either way, carries into
// the exponent, the largest finite values (rounding to infinity),
// infinities, NaNs, zeros of both signs and float32 subnormals.
extern "C" int jax_resnet_bf16_round_check() {
  std::vector<uint32_t> bits;
  for (const uint32_t high : {0x3f80u, 0xbf80u, 0x3f81u, 0x4049u, 0x7f7fu,
                              0xff7fu, 0x0000u, 0x8000u, 0x0001u, 0x807fu}) {
    for (const uint32_t low : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u,
                               0xffffu, 0x4000u, 0xc000u}) {
      bits.push_back(high << 16 | low);
    }
  }
  for (const uint32_t special : {0x7f800000u, 0xff800000u, 0x7fc00000u,
                                 0x7f800001u, 0xffffffffu, 0x7fbfffffu}) {
    bits.push_back(special);
  }
  // Blocks of 32 without a subnormal too, so the native path runs.
  for (uint32_t i = 0; i < 64; ++i) bits.push_back(0x3f808000u + (i << 16));
  std::vector<float> in(bits.size());
  std::memcpy(in.data(), bits.data(), sizeof(float) * in.size());
  std::vector<bf16> got(in.size());
  Round(in.data(), static_cast<i64>(in.size()), got.data());
  for (size_t i = 0; i < in.size(); ++i) {
    if (got[i] != ToBf16(in[i])) return 0;
  }
  return 1;
}

// 1 when Linux lets this process use AMX tile data, 0 otherwise.
extern "C" int jax_resnet_amx_permitted() { return AmxPermitted(); }

// Whether micro-kernel `isa` computes what the reference computes (within
// float32 rounding of a different summation order) for C[M x N] (+)= two
// segments of A[M x kd] . B[kd x N].
static bool MatchesReference(i64 isa, int M, int kd, int N, bool add) {
  std::vector<bf16> a(2 * M * kd), b(2 * kd * N);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = ToBf16(static_cast<float>((i * 37) % 23) / 8.0f - 1.25f);
  }
  for (size_t i = 0; i < b.size(); ++i) {
    b[i] = ToBf16(static_cast<float>((i * 53) % 29) / 16.0f - 0.75f);
  }
  const Segment segs[2] = {{a.data(), kd, b.data(), 2 * N, kd},
                           {a.data() + M * kd, kd, b.data() + kd * N, 2 * N,
                            kd}};
  std::vector<float> want(M * N), got(M * N);
  for (int i = 0; i < M * N; ++i) want[i] = got[i] = 0.5f * (i % 7);
  Product(ReferenceKernel, M, N, segs, 2, want.data(), N, add);
  Product(Kernel(isa), M, N, segs, 2, got.data(), N, add);
  EndWork(isa);
  for (int i = 0; i < M * N; ++i) {
    if (!(std::fabs(got[i] - want[i]) <= 1e-4f * (1.0f + std::fabs(want[i])))) {
      return false;
    }
  }
  return true;
}

// 1 when micro-kernel `isa` computes what the reference computes on
// products with every shape feature the convolutions use: every M up to 16
// with one to four column blocks (each register block and each of its
// tails); 64 and 32 rows at once (AMX's full configuration); 4 column
// blocks plus one or two; kd with a last 16; long reductions split over
// accumulators; C overwritten and C accumulated into. Run once per process
// before `isa` is used.
extern "C" int jax_resnet_bf16_self_check(long isa) {
  if (CheckIsa(isa).failure()) return 0;
  struct Case {
    int M, kd, N;
    bool add;
  };
  constexpr Case kCases[] = {{16, 48, 80, false}, {13, 48, 80, true},
                             {64, 64, 80, false}, {32, 64, 96, true},
                             {64, 64, 16, true},  {16, 320, 32, true},
                             {9, 288, 16, false}};
  for (const Case& t : kCases) {
    if (!MatchesReference(isa, t.M, t.kd, t.N, t.add)) return 0;
  }
  for (int M = 1; M <= 16; ++M) {
    for (int N = 16; N <= 64; N += 16) {
      if (!MatchesReference(isa, M, 32, N, M % 2 == 1)) return 0;
    }
  }
  return 1;
}
