// Internal: the CPU and CUDA twins behind gc_cross_entropy_*. Params arrive validated
// (on CPU the targets too); logits are [rows, V].
#pragma once

#include <cstdint>

#include "gptcore/cross_entropy.h"

namespace gc {

gc_status cross_entropy_fwd_cpu(const gc_cross_entropy_fwd_params& p, int64_t rows, int64_t V);
gc_status cross_entropy_bwd_cpu(const gc_cross_entropy_bwd_params& p, int64_t rows, int64_t V);

#ifdef GPTCORE_WITH_CUDA
gc_status cross_entropy_fwd_cuda(const gc_cross_entropy_fwd_params& p, int64_t rows, int64_t V, void* stream);
gc_status cross_entropy_bwd_cuda(const gc_cross_entropy_bwd_params& p, int64_t rows, int64_t V, void* stream);
#endif

}  // namespace gc
