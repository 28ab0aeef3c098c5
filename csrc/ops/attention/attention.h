// Internal: the CPU and CUDA twins behind gc_attention_*. Params arrive validated; shapes
// are unpacked once into AttentionShape.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gptcore/attention.h"

namespace gc {

struct AttentionShape {
  int64_t B, H, T_q, T_k, D;
};

gc_status attention_fwd_cpu(const gc_attention_fwd_params& p, const AttentionShape& s);
size_t attention_bwd_workspace_cpu(const AttentionShape& s);
gc_status attention_bwd_cpu(const gc_attention_bwd_params& p, const AttentionShape& s, void* workspace);
gc_status attention_decode_cpu(const gc_attention_decode_params& p, const AttentionShape& s);

// One head's T_q queries (rows of D, q_stride apart) over the first `len` positions of its cached
// keys and values ([>= len, D] rows); with causal, bottom-right aligned: query t sits at position
// len - T_q + t. Its output rows go out_stride apart. With new_k / new_v, the T_q new keys and
// values (rows new_stride apart) are first written into the cache at positions len - T_q ..
// len - 1, by the thread that then attends.
struct CachedHead {
  const float* q;
  float* k;
  float* v;
  float* out;
  int64_t T_q, len;
  int64_t q_stride, out_stride;
  const float* new_k = nullptr;
  const float* new_v = nullptr;
  int64_t new_stride = 0;
};

// Every head in one OpenMP team of its own (gc_attention_decode's CPU kernel).
void attention_cached_heads_cpu(const CachedHead* heads, int64_t count, int64_t D, float scale, bool causal);
// The same shared out over the enclosing team (gc_gpt_decode's attention): every thread calls it
// with the same arguments; it returns when every head is done. Callers hold a SerialBlas.
void attention_cached_heads_team(const CachedHead* heads, int64_t count, int64_t D, float scale, bool causal);

#ifdef GPTCORE_WITH_CUDA
gc_status attention_fwd_cuda(const gc_attention_fwd_params& p, const AttentionShape& s, void* stream);
size_t attention_bwd_workspace_cuda(const AttentionShape& s);
gc_status attention_bwd_cuda(const gc_attention_bwd_params& p, const AttentionShape& s, void* workspace,
                             void* stream);
gc_status attention_decode_workspace_cuda(const AttentionShape& s, int device, size_t* bytes);
gc_status attention_decode_cuda(const gc_attention_decode_params& p, const AttentionShape& s, void* workspace,
                                void* stream);
#endif

}  // namespace gc
