// Float16 / bfloat16 storage types and float conversions usable from host and device code.
// In .cu files the types are CUDA's own (so intrinsics apply); in host-only files they are
// 16-bit structs converted with round-to-nearest-even, matching the hardware.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define GC_HD __host__ __device__ __forceinline__
#else
#define GC_HD inline
#endif

namespace gc {

inline uint32_t float_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  return x;
}

inline float bits_float(uint32_t x) {
  float f;
  std::memcpy(&f, &x, sizeof(f));
  return f;
}

inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t mant = x & 0x7fffffu;
  const int exp = static_cast<int>((x >> 23) & 0xffu);
  if (exp == 0xff) return sign | 0x7c00u | (mant ? 0x200u : 0u);  // inf, nan
  const int e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00u;  // overflow to inf
  if (e <= 0) {                          // half subnormal (or zero)
    if (e < -10) return sign;
    mant |= 0x800000u;
    const int shift = 14 - e;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = sign | (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rounds into the exponent
  return static_cast<uint16_t>(h);
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // mant * 2^-24
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet nan
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

#if defined(__CUDACC__)
using half_t = __half;
using bf16_t = __nv_bfloat16;
GC_HD float to_float(__half x) { return __half2float(x); }
GC_HD float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
#else
struct half_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};
inline float to_float(half_t x) { return half_bits_to_float(x.bits); }
inline float to_float(bf16_t x) { return bf16_bits_to_float(x.bits); }
#endif

GC_HD float to_float(float x) { return x; }

template <class T>
GC_HD T from_float(float x);
template <>
GC_HD float from_float<float>(float x) {
  return x;
}
#if defined(__CUDACC__)
template <>
GC_HD __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
GC_HD __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
#else
template <>
inline half_t from_float<half_t>(float x) {
  return half_t{float_to_half_bits(x)};
}
template <>
inline bf16_t from_float<bf16_t>(float x) {
  return bf16_t{float_to_bf16_bits(x)};
}
#endif

}  // namespace gc
