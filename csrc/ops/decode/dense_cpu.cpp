// Weight-only quantized matrix products on the CPU: y = x w^T + bias with w stored as float32,
// bfloat16 or int8 (per-row scales) and everything else float32.
//
// A decode step multiplies a few rows by every weight of the model once, so it is bound by the
// memory read rate: the weight is streamed a row at a time (each thread a contiguous share: two
// threads interleaving their rows, or one thread interleaving several rows, measured about half
// the read rate), float32 and bfloat16 weights converted to float32 in registers and dotted with
// each x row, int8 weights multiplied in integers against x rounded to int16 (below); AVX-512
// (with VNNI) or AVX2 kernels, picked when first used (dense_stream.inl). Many rows (a prefill)
// are bound by arithmetic instead: panels of the weight are converted to float32 and handed to
// OpenBLAS's sgemm, one panel per OpenMP thread at a time.
//
// Packed weights (GC_DENSE_PACKED, gc_dense_pack) put four rows' 32-value chunks side by side: a
// thread's share is then one sequential run, and each piece of x is loaded once for four rows.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/cpu_blas.h"
#include "common/cpu_math.h"
#include "ops/decode/decode.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

// Vector types cross no ABI boundary here (every helper is inlined into its kernel), so GCC's note
// that returning them by value without AVX changes the ABI does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace gc {
namespace {

constexpr int64_t kStreamTask = 16;   // weight rows per OpenMP task while streaming
constexpr int64_t kPanelRows = 128;   // weight rows converted per sgemm call
constexpr int64_t kGroup = 4;         // packed layout: rows a group, side by side per chunk
constexpr int64_t kChunk = 32;        // packed layout: values of a row a chunk

// Values a row of a packed weight (or of x against one) spans: K rounded up to whole chunks.
inline int64_t packed_cols(int64_t K) { return (K + kChunk - 1) / kChunk * kChunk; }
// Where value j of a chunk lies within it: int8 in order; bfloat16 values j and j + 16 share 32
// bits (j in the low half), so one 32-bit lane gives both as float32 with a shift and a mask.
inline int64_t packed_slot(int64_t j, int64_t elem_size) { return elem_size == 1 ? j : 2 * (j % 16) + j / 16; }

inline float to_float(float w) { return w; }
inline float to_float(uint16_t w) {  // bfloat16: the high half of a float32
  const uint32_t bits = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline float to_float(int8_t w) { return static_cast<float>(w); }

// int8 weights are multiplied in integers: each row of x rounded to int16 per block of kXBlock
// values (scale max|x| / 32767 per block, so |x - q scale| <= 2^-16 of the block's largest |x|,
// ~1/256 of the int8 weights' own rounding), the products of a block summed exactly in int32
// lanes (a lane of any kernel sums at most 128 products of a block: 128 * 128 * 32767 < 2^31),
// then scaled. One multiply-add instruction does 32 weights (AVX-512 VNNI's vpdpwssd) where
// converting them to float32 took three per 16. Blocks of 1024 rather than 256 measured ~9% faster
// (one scale per GPT-2 row of 768).
constexpr int64_t kXBlock = 1024;

struct XInt16 {
  std::vector<int16_t> q;    // [M, ld]: values past K are 0
  std::vector<float> scale;  // [M, blocks]: x ~= q * scale block by block
  int64_t blocks = 0, ld = 0;
};

// A block holding an infinity or NaN gets a NaN scale, so the outputs it reaches are NaN as they
// would be in float32 (its q are 0).
GC_CPU_CLONES void quantize_x(const float* x, int64_t M, int64_t K, int64_t ld, XInt16& out) {
  out.blocks = (K + kXBlock - 1) / kXBlock;
  out.ld = ld;
  out.q.resize(M * ld);
  out.scale.resize(M * out.blocks);
  for (int64_t m = 0; m < M; ++m) {
    std::fill(out.q.begin() + m * ld + K, out.q.begin() + (m + 1) * ld, int16_t{0});
    for (int64_t b = 0; b < out.blocks; ++b) {
      const int64_t k0 = b * kXBlock, k1 = std::min(K, k0 + kXBlock);
      const float* v = x + m * K;
      float amax = 0.f, poison = 0.f;  // poison: NaN when any value is not finite (inf * 0 = NaN)
#pragma omp simd reduction(max : amax) reduction(+ : poison)
      for (int64_t k = k0; k < k1; ++k) {
        amax = std::max(amax, std::fabs(v[k]));
        poison += v[k] * 0.f;
      }
      const bool finite = poison == 0.f && amax <= 3.4e38f;
      const float inv = finite && amax > 0.f ? 32767.f / amax : 0.f;
      int16_t* q = out.q.data() + m * ld;
#pragma omp simd
      for (int64_t k = k0; k < k1; ++k)
        q[k] = static_cast<int16_t>(std::clamp(std::nearbyint(v[k] * inv), -32767.f, 32767.f));
      out.scale[m * out.blocks + b] = finite ? amax / 32767.f : std::numeric_limits<float>::quiet_NaN();
    }
  }
}

// Any CPU: eight lanes in GCC's vector extension (the compiler picks the registers).
namespace generic {
typedef float V __attribute__((vector_size(32)));
constexpr int kWidth = 8;
inline V zero() { return V{}; }
template <class W>
inline V load(const W* p) {
  float f[kWidth];
  for (int j = 0; j < kWidth; ++j) f[j] = to_float(p[j]);
  V v;
  std::memcpy(&v, f, sizeof(v));
  return v;
}
inline V load_x(const float* p) { return load(p); }
inline V fma(V a, V b, V acc) { return a * b + acc; }
inline V add(V a, V b) { return a + b; }
inline V splat(float s) { return V{} + s; }
inline float reduce(V v) { return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])); }
inline void reduce4(V a, V b, V c, V d, float out[4]) {
  out[0] = reduce(a), out[1] = reduce(b), out[2] = reduce(c), out[3] = reduce(d);
}
constexpr int kPairs16 = 2 * kWidth;
typedef int32_t VI __attribute__((vector_size(32)));
struct W16 {
  int16_t v[kPairs16];
};
inline VI izero() { return VI{}; }
inline W16 load_w16(const int8_t* p) {
  W16 w;
  for (int j = 0; j < kPairs16; ++j) w.v[j] = p[j];
  return w;
}
inline VI dot16(VI acc, const W16& w, const int16_t* x) {
  for (int j = 0; j < kWidth; ++j) acc[j] += w.v[2 * j] * x[2 * j] + w.v[2 * j + 1] * x[2 * j + 1];
  return acc;
}
inline VI iadd(VI a, VI b) { return a + b; }
inline V to_ps(VI v) { return __builtin_convertvector(v, V); }
inline void load_pairs(const uint16_t* p, V& lo, V& hi) {
  for (int j = 0; j < kWidth; ++j) lo[j] = to_float(p[2 * j]), hi[j] = to_float(p[2 * j + 1]);
}
#include "ops/decode/dense_stream.inl"
}  // namespace generic

#if defined(__x86_64__) && defined(__GNUC__)
#define GC_X86_KERNELS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
using V = __m256;
constexpr int kWidth = 8;
inline V zero() { return _mm256_setzero_ps(); }
inline V load(const float* p) { return _mm256_loadu_ps(p); }
inline V load(const uint16_t* p) {  // bfloat16 -> the high halves of float32 lanes
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
inline V load_x(const float* p) { return _mm256_loadu_ps(p); }
inline V fma(V a, V b, V acc) { return _mm256_fmadd_ps(a, b, acc); }
inline V add(V a, V b) { return _mm256_add_ps(a, b); }
inline V splat(float s) { return _mm256_set1_ps(s); }
constexpr int kPairs16 = 16;
using VI = __m256i;
using W16 = __m256i;
inline VI izero() { return _mm256_setzero_si256(); }
inline W16 load_w16(const int8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)p)); }
inline VI dot16(VI acc, W16 w, const int16_t* x) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(w, _mm256_loadu_si256((const __m256i*)x)));
}
inline VI iadd(VI a, VI b) { return _mm256_add_epi32(a, b); }
inline V to_ps(VI v) { return _mm256_cvtepi32_ps(v); }
inline void load_pairs(const uint16_t* p, V& lo, V& hi) {  // the low and the high bfloat16 of each lane
  const __m256i v = _mm256_loadu_si256((const __m256i*)p);
  lo = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  hi = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
inline float reduce(V v) {  // 8 -> 4 -> 2 -> 1 lanes
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
// Each vector's lanes summed pairwise within its halves (hadd), then the halves: the same tree for
// a vector in any of the four places.
inline __m128 reduce4_128(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d), abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}
inline void reduce4(V a, V b, V c, V d, float out[4]) { _mm_storeu_ps(out, reduce4_128(a, b, c, d)); }
#include "ops/decode/dense_stream.inl"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,fma")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12 on its own AVX-512 intrinsics' headers
#pragma GCC diagnostic ignored "-Wuninitialized"        // (their _mm256_undefined_pd)
namespace avx512 {
using V = __m512;
constexpr int kWidth = 16;
inline V zero() { return _mm512_setzero_ps(); }
inline V load(const float* p) { return _mm512_loadu_ps(p); }
inline V load(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline V load_x(const float* p) { return _mm512_loadu_ps(p); }
inline V fma(V a, V b, V acc) { return _mm512_fmadd_ps(a, b, acc); }
inline V add(V a, V b) { return _mm512_add_ps(a, b); }
inline V splat(float s) { return _mm512_set1_ps(s); }
inline float reduce(V v) { return _mm512_reduce_add_ps(v); }
inline __m256 halves(__m512 v) {  // 16 -> 8 lanes: the low half + the high half
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
inline void reduce4(V a, V b, V c, V d, float out[4]) {
  const __m256 ab = _mm256_hadd_ps(halves(a), halves(b)), cd = _mm256_hadd_ps(halves(c), halves(d));
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}
constexpr int kPairs16 = 32;
using VI = __m512i;
using W16 = __m512i;
inline VI izero() { return _mm512_setzero_si512(); }
inline W16 load_w16(const int8_t* p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)p)); }
inline VI dot16(VI acc, W16 w, const int16_t* x) { return _mm512_dpwssd_epi32(acc, w, _mm512_loadu_si512(x)); }
inline VI iadd(VI a, VI b) { return _mm512_add_epi32(a, b); }
inline V to_ps(VI v) { return _mm512_cvtepi32_ps(v); }
inline void load_pairs(const uint16_t* p, V& lo, V& hi) {
  const __m512i v = _mm512_loadu_si512(p);
  lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  hi = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
#include "ops/decode/dense_stream.inl"
}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

using StreamFn = void (*)(const DenseWeight&, const float*, const XInt16&, int64_t, float*, int64_t, int64_t, int64_t);

// The kernel for every dtype: AVX-512 (with VNNI, for int8's vpdpwssd) where the CPU has it, else
// AVX2, else the generic one. GPTCORE_CPU_KERNELS=avx512|avx2|generic asks for one instruction set
// (falling back when the CPU lacks it), to compare them.
StreamFn pick_stream() {
  const char* env = std::getenv("GPTCORE_CPU_KERNELS");
  const std::string want = env ? env : "";
#ifdef GC_X86_KERNELS
  __builtin_cpu_init();
  const bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (has512 && (want.empty() || want == "avx512")) return avx512::stream;
  if (has2 && want != "generic") return avx2::stream;
#endif
  return generic::stream;
}

// Weight rows [n0, n0 + rows) as float32 (int8 scales folded in) into panel [rows, K].
template <class W>
inline __attribute__((always_inline)) void convert_rows(const DenseWeight& d, int64_t n0, int64_t rows, float* panel) {
  const W* w = static_cast<const W*>(d.w) + n0 * d.K;
  for (int64_t r = 0; r < rows; ++r) {
    const float s = d.scale ? d.scale[n0 + r] : 1.f;
#pragma omp simd
    for (int64_t k = 0; k < d.K; ++k) panel[r * d.K + k] = to_float(w[r * d.K + k]) * s;
  }
}
// The same from a packed weight: each row's chunks gathered back into order. A whole chunk goes
// straight into the panel (bfloat16: 32-bit lanes split by a shift and a mask, as the kernels do);
// the last, partial one of a row through a buffer.
inline __attribute__((always_inline)) void unpack_chunk(const int8_t* chunk, float s, float* out) {
#pragma omp simd
  for (int64_t j = 0; j < kChunk; ++j) out[j] = static_cast<float>(chunk[j]) * s;
}
inline __attribute__((always_inline)) void unpack_chunk(const uint16_t* chunk, float s, float* out) {
  uint32_t lanes[kChunk / 2];
  std::memcpy(lanes, chunk, sizeof(lanes));
#pragma omp simd
  for (int64_t j = 0; j < kChunk / 2; ++j) {
    const uint32_t lo = lanes[j] << 16, hi = lanes[j] & 0xFFFF0000u;
    float a, b;
    std::memcpy(&a, &lo, sizeof(a));
    std::memcpy(&b, &hi, sizeof(b));
    out[j] = a * s;
    out[j + kChunk / 2] = b * s;
  }
}
template <class W>
inline __attribute__((always_inline)) void convert_packed_rows(const DenseWeight& d, int64_t n0, int64_t rows,
                                                              float* panel) {
  const int64_t ld = packed_cols(d.K), whole = d.K / kChunk;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = n0 + r;
    const float s = d.scale ? d.scale[n] : 1.f;
    const W* row = static_cast<const W*>(d.w) + (n / kGroup) * kGroup * ld + (n % kGroup) * kChunk;
    float* out = panel + r * d.K;
    for (int64_t c = 0; c < whole; ++c) unpack_chunk(row + c * kGroup * kChunk, s, out + c * kChunk);
    if (whole * kChunk < d.K) {
      float last[kChunk];
      unpack_chunk(row + whole * kGroup * kChunk, s, last);
      std::memcpy(out + whole * kChunk, last, (d.K - whole * kChunk) * sizeof(float));
    }
  }
}
GC_CPU_CLONES void convert_bf16(const DenseWeight& d, int64_t n0, int64_t rows, float* panel) {
  if (d.layout == GC_DENSE_PACKED) convert_packed_rows<uint16_t>(d, n0, rows, panel);
  else convert_rows<uint16_t>(d, n0, rows, panel);
}
GC_CPU_CLONES void convert_int8(const DenseWeight& d, int64_t n0, int64_t rows, float* panel) {
  if (d.layout == GC_DENSE_PACKED) convert_packed_rows<int8_t>(d, n0, rows, panel);
  else convert_rows<int8_t>(d, n0, rows, panel);
}

GC_CPU_CLONES void gelu_rows(float* x, int64_t count) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) x[i] = gelu_tanh_fast(x[i]);
}

void stream_team(const DenseWeight& d, const float* x, int64_t M, float* y, int64_t ldy, bool gelu) {
  static const StreamFn kernel = pick_stream();
  thread_local XInt16 xq;  // each thread rounds x itself: cheaper than a barrier
  thread_local std::vector<float> x_padded;
  const bool packed = d.layout == GC_DENSE_PACKED;
  const int64_t ld = packed ? packed_cols(d.K) : d.K;  // packed kernels read x in whole chunks
  if (d.dtype == GC_INT8) {
    quantize_x(x, M, d.K, ld, xq);
  } else if (ld != d.K) {
    x_padded.assign(M * ld, 0.f);
    for (int64_t m = 0; m < M; ++m) std::memcpy(x_padded.data() + m * ld, x + m * d.K, d.K * sizeof(float));
    x = x_padded.data();
  }
  const int64_t tasks = (d.N + kStreamTask - 1) / kStreamTask;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t n0 = t * kStreamTask, n1 = std::min(d.N, n0 + kStreamTask);
    kernel(d, x, xq, M, y, ldy, n0, n1);
    if (gelu)  // while the task's outputs are in L1
      for (int64_t m = 0; m < M; ++m) gelu_rows(y + m * ldy + n0, n1 - n0);
  }
}

void panels_team(const DenseWeight& d, const float* x, int64_t M, float* y, int64_t ldy, bool gelu) {
  const int64_t count = (d.N + kPanelRows - 1) / kPanelRows;
  std::vector<float> panel(d.dtype == GC_FLOAT32 ? 0 : kPanelRows * d.K);
#pragma omp for schedule(static)
  for (int64_t p = 0; p < count; ++p) {
    const int64_t n0 = p * kPanelRows, rows = std::min(kPanelRows, d.N - n0);
    const float* w = static_cast<const float*>(d.w) + n0 * d.K;
    if (d.dtype != GC_FLOAT32) {
      if (d.dtype == GC_BFLOAT16) convert_bf16(d, n0, rows, panel.data());
      else convert_int8(d, n0, rows, panel.data());
      w = panel.data();
    }
    sgemm(false, true, M, rows, d.K, 1.f, x, d.K, w, d.K, 0.f, y + n0, ldy);
  }
  if (!d.bias && !gelu) return;
#pragma omp for schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    float* row = y + m * ldy;
    if (d.bias) {
#pragma omp simd
      for (int64_t n = 0; n < d.N; ++n) row[n] += d.bias[n];
    }
    if (gelu) gelu_rows(row, d.N);
  }
}

}  // namespace

DenseWeight dense_weight(const gc_dense& d) {
  return DenseWeight{d.weight.dtype, d.weight.data, static_cast<const float*>(d.scale.data),
                     static_cast<const float*>(d.bias.data), d.weight.shape[0], d.weight.shape[1], d.layout};
}

int64_t packed_numel(int64_t N, int64_t K) { return (N + kGroup - 1) / kGroup * kGroup * packed_cols(K); }

void pack_dense(const void* w, int64_t N, int64_t K, int64_t elem_size, void* packed) {
  const int64_t ld = packed_cols(K), groups = (N + kGroup - 1) / kGroup;
  const char* src = static_cast<const char*>(w);
  char* dst = static_cast<char*>(packed);
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    char* out = dst + g * kGroup * ld * elem_size;
    std::memset(out, 0, kGroup * ld * elem_size);
    for (int64_t n = g * kGroup; n < std::min(N, (g + 1) * kGroup); ++n)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t at = ((k / kChunk) * kGroup + n % kGroup) * kChunk + packed_slot(k % kChunk, elem_size);
        std::memcpy(out + at * elem_size, src + (n * K + k) * elem_size, elem_size);
      }
  }
}

void dense_team(const DenseWeight& d, const float* x, int64_t M, float* y, int64_t ldy, bool gelu) {
  if (M <= GC_DENSE_STREAM_ROWS) stream_team(d, x, M, y, ldy, gelu);
  else panels_team(d, x, M, y, ldy, gelu);
}

void dense_cpu(const DenseWeight& d, const float* x, int64_t M, float* y, int64_t ldy) {
  const SerialBlas serial_blas;
#pragma omp parallel if (M > GC_DENSE_STREAM_ROWS || d.N * d.K >= 65536)
  dense_team(d, x, M, y, ldy, false);
}

}  // namespace gc
