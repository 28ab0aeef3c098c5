// Internal: the CPU kernels behind gc_dense_fwd and gc_gpt_decode. Arguments arrive validated.
#pragma once

#include <cstdint>

#include "gptcore/decode.h"

namespace gc {

// A gc_dense unpacked: weight [N, K] of `dtype` (GC_FLOAT32, GC_BFLOAT16 or GC_INT8) in `layout`
// (gc_dense_layout), the int8 weights' per-row scales, an optional bias.
struct DenseWeight {
  int32_t dtype;
  const void* w;
  const float* scale;
  const float* bias;
  int64_t N, K;
  int32_t layout;
};

DenseWeight dense_weight(const gc_dense& d);

// Elements of a packed [N, K] weight (gc_dense_packed_numel for N, K >= 0).
int64_t packed_numel(int64_t N, int64_t K);

// gc_dense_pack's work: w [N, K] (bfloat16 or int8 by elem_size 2 or 1) into packed, padding zeroed.
void pack_dense(const void* w, int64_t N, int64_t K, int64_t elem_size, void* packed);

// y [M, ldy] (the first N columns) = x [M, K] w^T + bias, in an OpenMP team of its own.
void dense_cpu(const DenseWeight& d, const float* x, int64_t M, float* y, int64_t ldy);

// The same, then GELU (tanh) with `gelu`, shared out over the threads of the enclosing OpenMP team:
// every thread of the team calls it with the same arguments, and it returns when y is complete
// (a barrier). Outside a parallel region one thread does it all. Callers hold a SerialBlas.
void dense_team(const DenseWeight& d, const float* x, int64_t M, float* y, int64_t ldy, bool gelu);

gc_status gpt_decode_cpu(const gc_gpt_decode_params& p);

}  // namespace gc
