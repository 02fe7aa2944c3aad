// Sixteen float32 lanes, as the float32 kernels (cpu_conv.cc,
// cpu_batch_norm.cc) compute with them, for the two instruction sets they are
// built for (cpu_kernels.py compiles each library once per set, by flags):
//
// * AVX-512 (F, DQ, BW, VL): one zmm register. F32x16 is __m512 itself, so
//   the kernels compile to the instructions they were written with.
// * AVX2 + FMA: a pair of ymm registers, low then high eight lanes. An x86-64
//   CPU without AVX-512 (AMD before Zen 4, Intel client cores) runs the same
//   kernels with half the vector registers; the tile sizes follow
//   kVectorRegisters.
//
// Every operation is lane by lane and rounds as its AVX-512 form does (one
// FMA rounding; float-to-double exact; bfloat16 rounding in integer
// arithmetic), so both builds give the same bits.

#ifndef JAX_RESNET_OPS_CPU_SIMD_H_
#define JAX_RESNET_OPS_CPU_SIMD_H_

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace jax_resnet::simd {

#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__FMA__)

constexpr int kVectorRegisters = 32;
constexpr const char* kName = "avx512";

using F32x16 = __m512;
// Sixteen doubles: lanes 0-7, then 8-15.
struct F64x16 {
  __m512d lo, hi;
};

inline F32x16 Zero() { return _mm512_setzero_ps(); }
inline F32x16 Load(const float* p) { return _mm512_loadu_ps(p); }
inline F32x16 Broadcast(float x) { return _mm512_set1_ps(x); }
inline void Store(float* p, F32x16 a) { _mm512_storeu_ps(p, a); }
inline F32x16 Add(F32x16 a, F32x16 b) { return _mm512_add_ps(a, b); }
inline F32x16 Sub(F32x16 a, F32x16 b) { return _mm512_sub_ps(a, b); }
inline F32x16 Mul(F32x16 a, F32x16 b) { return _mm512_mul_ps(a, b); }
inline F32x16 Max(F32x16 a, F32x16 b) { return _mm512_max_ps(a, b); }
// a * b + c, rounded once.
inline F32x16 Fmadd(F32x16 a, F32x16 b, F32x16 c) {
  return _mm512_fmadd_ps(a, b, c);
}
// g where y > 0, else 0 (ReLU's gradient mask; NaN y gives 0).
inline F32x16 WherePositive(F32x16 y, F32x16 g) {
  return _mm512_maskz_mov_ps(
      _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), g);
}

// Sixteen bfloat16 values (the high half of a float32's bits), widened
// exactly; and float32 rounded to bfloat16, to nearest even (a NaN stays a
// quiet NaN), as XLA converts.
inline F32x16 LoadBf16(const uint16_t* p) {
  const __m512i v = _mm512_cvtepu16_epi32(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
namespace internal {
inline __m256i RoundBf16x16(F32x16 a) {
  const __m512i u = _mm512_castps_si512(a);
  const __m512i high = _mm512_srli_epi32(u, 16);
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(u, _mm512_add_epi32(
          _mm512_set1_epi32(0x7fff),
          _mm512_and_si512(high, _mm512_set1_epi32(1)))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(
      _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
      _mm512_set1_epi32(0x7f800000));
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(
      rounded, nan, _mm512_or_si512(high, _mm512_set1_epi32(0x40))));
}
inline __mmask16 FirstLanes(int n) {
  return static_cast<__mmask16>((1u << n) - 1);
}
}  // namespace internal

inline void StoreBf16(uint16_t* p, F32x16 a) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      internal::RoundBf16x16(a));
}

// The first n lanes (0 < n < 16: a channel tail), the others zero on load
// and left untouched in memory on store.
inline F32x16 LoadFirst(const float* p, int n) {
  return _mm512_maskz_loadu_ps(internal::FirstLanes(n), p);
}
inline void StoreFirst(float* p, F32x16 a, int n) {
  _mm512_mask_storeu_ps(p, internal::FirstLanes(n), a);
}
inline F32x16 LoadBf16First(const uint16_t* p, int n) {
  const __m512i v = _mm512_cvtepu16_epi32(
      _mm256_maskz_loadu_epi16(internal::FirstLanes(n), p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
inline void StoreBf16First(uint16_t* p, F32x16 a, int n) {
  _mm256_mask_storeu_epi16(p, internal::FirstLanes(n),
                           internal::RoundBf16x16(a));
}

inline F64x16 ZeroF64() { return {_mm512_setzero_pd(), _mm512_setzero_pd()}; }
// acc + a, each lane widened to double first (exact).
inline F64x16 AddWidened(F64x16 acc, F32x16 a) {
  const __m256 high =
      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  return {_mm512_add_pd(acc.lo, _mm512_cvtps_pd(_mm512_castps512_ps256(a))),
          _mm512_add_pd(acc.hi, _mm512_cvtps_pd(high))};
}
inline void StoreF64(double* p, F64x16 a) {
  _mm512_storeu_pd(p, a.lo);
  _mm512_storeu_pd(p + 8, a.hi);
}

#elif defined(__AVX2__) && defined(__FMA__)

constexpr int kVectorRegisters = 16;
constexpr const char* kName = "avx2";

struct F32x16 {
  __m256 lo, hi;
};
// Sixteen doubles, four lanes per register, in lane order.
struct F64x16 {
  __m256d v[4];
};

inline F32x16 Zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline F32x16 Load(const float* p) {
  return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
}
inline F32x16 Broadcast(float x) {
  const __m256 v = _mm256_set1_ps(x);
  return {v, v};
}
inline void Store(float* p, F32x16 a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
inline F32x16 Add(F32x16 a, F32x16 b) {
  return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
}
inline F32x16 Sub(F32x16 a, F32x16 b) {
  return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)};
}
inline F32x16 Mul(F32x16 a, F32x16 b) {
  return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)};
}
inline F32x16 Max(F32x16 a, F32x16 b) {
  return {_mm256_max_ps(a.lo, b.lo), _mm256_max_ps(a.hi, b.hi)};
}
inline F32x16 Fmadd(F32x16 a, F32x16 b, F32x16 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
inline F32x16 WherePositive(F32x16 y, F32x16 g) {
  const __m256 zero = _mm256_setzero_ps();
  return {_mm256_and_ps(_mm256_cmp_ps(y.lo, zero, _CMP_GT_OQ), g.lo),
          _mm256_and_ps(_mm256_cmp_ps(y.hi, zero, _CMP_GT_OQ), g.hi)};
}

namespace internal {
inline __m256 WidenBf16x8(__m128i v) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
// Eight rounded values in the low 16 bits of each 32-bit lane.
inline __m256i RoundBf16x8(__m256 a) {
  const __m256i u = _mm256_castps_si256(a);
  const __m256i high = _mm256_srli_epi32(u, 16);
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(u, _mm256_add_epi32(
          _mm256_set1_epi32(0x7fff),
          _mm256_and_si256(high, _mm256_set1_epi32(1)))), 16);
  // Unsigned compare of |u| > inf as a signed one: both are below 2^31.
  const __m256i nan = _mm256_cmpgt_epi32(
      _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
      _mm256_set1_epi32(0x7f800000));
  return _mm256_blendv_epi8(
      rounded, _mm256_or_si256(high, _mm256_set1_epi32(0x40)), nan);
}
}  // namespace internal

inline F32x16 LoadBf16(const uint16_t* p) {
  return {internal::WidenBf16x8(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
          internal::WidenBf16x8(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
}
inline void StoreBf16(uint16_t* p, F32x16 a) {
  // packus keeps 128-bit lanes: lo's 0-3, hi's 0-3, lo's 4-7, hi's 4-7.
  const __m256i packed = _mm256_packus_epi32(internal::RoundBf16x8(a.lo),
                                             internal::RoundBf16x8(a.hi));
  const __m256i ordered = _mm256_permute4x64_epi64(packed, 0xd8);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), ordered);
}

namespace internal {
// load / store of the first n lanes through a zero-filled 16-lane buffer.
template <typename T, typename Load16>
inline F32x16 LoadFirstVia(const T* p, int n, Load16 load) {
  T lanes[16] = {};
  std::memcpy(lanes, p, sizeof(T) * n);
  return load(lanes);
}
template <typename T, typename Store16>
inline void StoreFirstVia(T* p, F32x16 a, int n, Store16 store) {
  T lanes[16];
  store(lanes, a);
  std::memcpy(p, lanes, sizeof(T) * n);
}
}  // namespace internal

// The first n lanes (0 < n < 16: a channel tail), the others zero on load
// and left untouched in memory on store.
inline F32x16 LoadFirst(const float* p, int n) {
  return internal::LoadFirstVia(p, n, Load);
}
inline void StoreFirst(float* p, F32x16 a, int n) {
  internal::StoreFirstVia(p, a, n, Store);
}
inline F32x16 LoadBf16First(const uint16_t* p, int n) {
  return internal::LoadFirstVia(p, n, LoadBf16);
}
inline void StoreBf16First(uint16_t* p, F32x16 a, int n) {
  internal::StoreFirstVia(p, a, n, StoreBf16);
}

inline F64x16 ZeroF64() {
  const __m256d z = _mm256_setzero_pd();
  return {{z, z, z, z}};
}
inline F64x16 AddWidened(F64x16 acc, F32x16 a) {
  return {{_mm256_add_pd(acc.v[0], _mm256_cvtps_pd(_mm256_castps256_ps128(a.lo))),
           _mm256_add_pd(acc.v[1], _mm256_cvtps_pd(_mm256_extractf128_ps(a.lo, 1))),
           _mm256_add_pd(acc.v[2], _mm256_cvtps_pd(_mm256_castps256_ps128(a.hi))),
           _mm256_add_pd(acc.v[3], _mm256_cvtps_pd(_mm256_extractf128_ps(a.hi, 1)))}};
}
inline void StoreF64(double* p, F64x16 a) {
  for (int i = 0; i < 4; ++i) _mm256_storeu_pd(p + 4 * i, a.v[i]);
}

#else
#error "cpu_simd.h needs AVX-512 (F, DQ) + FMA or AVX2 + FMA; see cpu_kernels.py"
#endif

}  // namespace jax_resnet::simd

#endif  // JAX_RESNET_OPS_CPU_SIMD_H_
