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
