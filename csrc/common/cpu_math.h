// CPU-only helpers: a branch-free exp that GCC vectorizes inside `omp simd` loops, and
// function multi-versioning so hot loops get AVX2/AVX-512 code in a portable binary.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/math.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define GC_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GC_CPU_CLONES
#endif

namespace gc {

// exp(x) to about 1 ulp for x in [-87, 88] (Cephes' expf polynomial); NaN propagates, and below
// -87.3 (where a float32 exp underflows) it is exactly 0, so exp(-inf) = 0: a masked logit (the
// tied head's -inf padding columns) takes no probability and passes no gradient.
#pragma omp declare simd notinbranch
inline float exp_fast(float x) {
  const bool underflow = x < -87.3365478515625f;
  x = x > 88.f ? 88.f : x;  // keeps 2^n finite
  x = underflow ? -87.3365478515625f : x;
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return underflow ? 0.f : p * scale;
}

// gelu_tanh and gelu_tanh_grad of common/math.h with exp_fast, so `omp simd` loops vectorize.
#pragma omp declare simd notinbranch
inline float gelu_tanh_fast(float x) {
  const float u2 = 2.f * kGeluScale * (x + kGeluCubic * x * x * x);
  return x / (1.f + exp_fast(-u2));
}

#pragma omp declare simd notinbranch
inline float gelu_tanh_grad_fast(float x) {
  const float u2 = 2.f * kGeluScale * (x + kGeluCubic * x * x * x);
  const float s = 1.f / (1.f + exp_fast(-u2));
  return s + x * s * (1.f - s) * 2.f * kGeluScale * (1.f + 3.f * kGeluCubic * x * x);
}

}  // namespace gc
