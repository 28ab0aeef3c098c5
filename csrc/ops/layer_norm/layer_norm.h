// Internal: the CPU and CUDA twins behind gc_layer_norm_*. Params arrive validated.
#pragma once

#include <cstdint>

#include "gptcore/layer_norm.h"

namespace gc {

// Rows of the backward's per-chunk weight/bias partial sums (fixed by N and the device,
// never by thread count, so results are reproducible).
int64_t layer_norm_bwd_partials(int64_t rows, int32_t device_type);

gc_status layer_norm_fwd_cpu(const gc_layer_norm_fwd_params& p, int64_t rows, int64_t C);
// The forward's rows shared out over the enclosing OpenMP team: every thread calls it with the
// same arguments; it returns when every row is done.
void layer_norm_fwd_team(const gc_layer_norm_fwd_params& p, int64_t rows, int64_t C);
gc_status layer_norm_bwd_cpu(const gc_layer_norm_bwd_params& p, int64_t rows, int64_t C, float* partials);

#ifdef GPTCORE_WITH_CUDA
gc_status layer_norm_fwd_cuda(const gc_layer_norm_fwd_params& p, int64_t rows, int64_t C, void* stream);
gc_status layer_norm_bwd_cuda(const gc_layer_norm_bwd_params& p, int64_t rows, int64_t C, float* partials,
                              void* stream);
#endif

}  // namespace gc
