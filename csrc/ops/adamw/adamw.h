// Internal: the CPU and CUDA twins behind gc_adamw_step. Params arrive validated.
#pragma once

#include <cmath>

#include "common/math.h"
#include "gptcore/adamw.h"

namespace gc {

// The per-tensor constants of one step (bias corrections from that tensor's step count),
// computed in double like torch.optim.AdamW does before rounding to float.
inline AdamWScalars adamw_scalars(const gc_adamw_params& p, int64_t step) {
  const double bc1 = 1.0 - std::pow(p.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(p.beta2, static_cast<double>(step));
  return AdamWScalars{static_cast<float>(p.beta1),     static_cast<float>(p.beta2),     p.eps,
                      static_cast<float>(1 - p.beta1), static_cast<float>(1 - p.beta2), static_cast<float>(bc1),
                      static_cast<float>(std::sqrt(bc2)), p.inv_grad_scale};
}

gc_status adamw_step_cpu(const gc_adamw_params& p);

#ifdef GPTCORE_WITH_CUDA
gc_status adamw_step_cuda(const gc_adamw_params& p, void* stream);
#endif

}  // namespace gc
