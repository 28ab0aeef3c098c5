// Internal: the CPU and CUDA twins behind gc_linear_*. Params arrive validated; x is
// [M, K] rows, weight [N, K]; `gelu` says the activation is tanh GELU.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gptcore/linear.h"

namespace gc {

struct LinearDims {
  int64_t M, N, K;
};

size_t linear_fwd_workspace_cpu(const gc_linear_fwd_params& p, LinearDims d);
size_t linear_bwd_workspace_cpu(const gc_linear_bwd_params& p, LinearDims d);
gc_status linear_fwd_cpu(const gc_linear_fwd_params& p, LinearDims d);
gc_status linear_bwd_cpu(const gc_linear_bwd_params& p, LinearDims d, void* workspace);

#ifdef GPTCORE_WITH_CUDA
size_t linear_fwd_workspace_cuda(const gc_linear_fwd_params& p, LinearDims d);
size_t linear_bwd_workspace_cuda(const gc_linear_bwd_params& p, LinearDims d);
gc_status linear_fwd_cuda(const gc_linear_fwd_params& p, LinearDims d, void* workspace, size_t workspace_bytes,
                          void* stream);
gc_status linear_bwd_cuda(const gc_linear_bwd_params& p, LinearDims d, void* workspace, size_t workspace_bytes,
                          void* stream);
#endif

}  // namespace gc
