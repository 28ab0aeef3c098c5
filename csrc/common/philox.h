// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the
// counter-based generator behind dropout on CPU and CUDA alike: a draw depends only on
// (seed, counter), so any thread can make any element's mask bit, in any order.
#pragma once

#include <cstdint>

#include "common/numeric.h"

namespace gc {

struct Philox4 {
  uint32_t v[4];
};

GC_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

GC_HD Philox4 philox4x32_10(Philox4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(M0, c.v[0]), lo0 = M0 * c.v[0];
    const uint32_t hi1 = mulhi32(M1, c.v[2]), lo1 = M1 * c.v[2];
    c = Philox4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += W0;
    k1 += W1;
  }
  return c;
}

// The 128 random bits behind dropout elements 4 * group .. 4 * group + 3 of a stream:
// counter = offset + group (64-bit, in the first two words), key = seed.
GC_HD Philox4 dropout_bits(uint64_t seed, uint64_t offset, uint64_t group) {
  const uint64_t counter = offset + group;
  return philox4x32_10(Philox4{{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), 0u, 0u}},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// A uniform in [0, 1) from the top 24 bits of one lane.
GC_HD float uniform24(uint32_t bits) { return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f); }

// The uniform in [0, 1) for element n of a stream: lane n % 4 of dropout_bits(seed, offset, n / 4).
GC_HD float dropout_uniform(uint64_t seed, uint64_t offset, uint64_t n) {
  return uniform24(dropout_bits(seed, offset, n / 4).v[n % 4]);
}

// The keep bits of dropout elements 4 * group + q, q = 0..3, from one Philox call: bit q is set
// when dropout_uniform(seed, offset, 4 * group + q) >= p. Kernels draw masks through this, so
// a seed and offset give the same mask on CPU and CUDA at a quarter of the Philox work.
GC_HD unsigned dropout_keep4(uint64_t seed, uint64_t offset, uint64_t group, float p) {
  const Philox4 bits = dropout_bits(seed, offset, group);
  unsigned keep = 0;
  for (int q = 0; q < 4; ++q) keep |= (uniform24(bits.v[q]) >= p ? 1u : 0u) << q;
  return keep;
}

// The keep bits of the len <= 61 consecutive dropout elements n .. n + len - 1 (bit x for
// element n + x), one Philox call per group of four they touch: how a CUDA thread draws the
// mask of its own run of a row.
GC_HD uint64_t dropout_keep_run(uint64_t seed, uint64_t offset, uint64_t n, int len, float p) {
  const int lead = static_cast<int>(n % 4);
  uint64_t bits = 0;
#ifdef __CUDA_ARCH__
#pragma unroll 1  // one Philox per iteration: unrolled copies cost registers the kernels need
#endif
  for (int x = -lead; x < len; x += 4) {  // x: the group's first element, relative to n
    const uint64_t keep = dropout_keep4(seed, offset, n / 4 + static_cast<uint64_t>((x + lead) / 4), p);
    bits |= x >= 0 ? keep << x : keep >> -x;
  }
  return len > 0 ? bits & (~uint64_t{0} >> (64 - len)) : 0;
}

}  // namespace gc
