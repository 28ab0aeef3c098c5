// Validation and device dispatch for gc_adamw_step.
#include <cmath>

#include "common/error.h"
#include "ops/adamw/adamw.h"

namespace gc {
namespace {

bool is_float_dtype(int32_t dtype) { return dtype == GC_FLOAT32 || dtype == GC_FLOAT16 || dtype == GC_BFLOAT16; }

gc_status check_scalars(const char* api, const gc_adamw_params& p) {
  if (!(p.beta1 >= 0.0 && p.beta1 < 1.0))
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: beta1 must be in [0, 1), got %g", api, p.beta1);
  if (!(p.beta2 >= 0.0 && p.beta2 < 1.0))
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: beta2 must be in [0, 1), got %g", api, p.beta2);
  if (!(p.eps >= 0.f && std::isfinite(p.eps)))
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: eps must be finite and >= 0, got %g", api, p.eps);
  if (!(p.inv_grad_scale > 0.f && std::isfinite(p.inv_grad_scale)))
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: inv_grad_scale must be finite and > 0 (1 for unscaled grads), got %g",
                api, p.inv_grad_scale);
  return GC_OK;
}

gc_status check_device(const char* api, const gc_adamw_params& p) {
  if (p.device_type == GC_CUDA) {
#ifndef GPTCORE_WITH_CUDA
    return fail(GC_ERROR_DEVICE,
                "%s: the tensors are on CUDA but this gptcore was built without CUDA; rebuild with nvcc on PATH "
                "(or -DGPTCORE_CUDA=ON), or pass CPU tensors",
                api);
#endif
    if (p.device_index < 0) return fail(GC_ERROR_DEVICE, "%s: device_index must be >= 0, got %d", api, p.device_index);
    return GC_OK;
  }
  if (p.device_type != GC_CPU) return fail(GC_ERROR_DEVICE, "%s: unknown device type %d", api, p.device_type);
  return GC_OK;
}

gc_status check_tensor(const char* api, const gc_adamw_tensor& t, int64_t i) {
  if (t.numel < 0) return fail(GC_ERROR_SHAPE, "%s: tensors[%lld].numel is %lld; it must be >= 0", api, (long long)i, (long long)t.numel);
  if (!is_float_dtype(t.param_dtype))
    return fail(GC_ERROR_DTYPE, "%s: tensors[%lld].param has dtype %s; expected float32, float16 or bfloat16", api,
                (long long)i, gc_dtype_name(t.param_dtype));
  if (!is_float_dtype(t.grad_dtype))
    return fail(GC_ERROR_DTYPE, "%s: tensors[%lld].grad has dtype %s; expected float32, float16 or bfloat16", api,
                (long long)i, gc_dtype_name(t.grad_dtype));
  if (!(t.lr >= 0.f && std::isfinite(t.lr)))
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: tensors[%lld].lr must be finite and >= 0, got %g", api, (long long)i, t.lr);
  if (!(t.weight_decay >= 0.f && std::isfinite(t.weight_decay)))
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: tensors[%lld].weight_decay must be finite and >= 0, got %g", api,
                (long long)i, t.weight_decay);
  if (t.step < 1)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: tensors[%lld].step is %lld; it counts this update, so it is >= 1", api,
                (long long)i, (long long)t.step);
  if (t.param_dtype != GC_FLOAT32 && t.numel > 0 && t.master == nullptr)
    return fail(GC_ERROR_INVALID_ARGUMENT,
                "%s: tensors[%lld].param is %s, so it needs a float32 master copy in 'master' (NULL given)", api,
                (long long)i, gc_dtype_name(t.param_dtype));
  if (t.param_dtype == GC_FLOAT32 && t.master != nullptr)
    return fail(GC_ERROR_INVALID_ARGUMENT,
                "%s: tensors[%lld].param is float32 and is updated in place; pass master = NULL", api, (long long)i);
  if (t.numel == 0) return GC_OK;
  const char* missing = !t.param ? "param" : !t.grad ? "grad" : !t.exp_avg ? "exp_avg" : !t.exp_avg_sq ? "exp_avg_sq" : nullptr;
  if (missing)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: tensors[%lld].%s is NULL (numel %lld)", api, (long long)i, missing,
                (long long)t.numel);
  return GC_OK;
}

}  // namespace
}  // namespace gc

using namespace gc;

extern "C" gc_status gc_adamw_step(const gc_adamw_params* params, void* stream) {
  constexpr const char* api = "gc_adamw_step";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_adamw_params& p = *params;
    if (p.num_tensors < 0)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: num_tensors is %lld; it must be >= 0", api, (long long)p.num_tensors);
    if (p.num_tensors > 0 && !p.tensors)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: tensors is NULL but num_tensors is %lld", api, (long long)p.num_tensors);
    GC_TRY(check_device(api, p));
    GC_TRY(check_scalars(api, p));
    for (int64_t i = 0; i < p.num_tensors; ++i) GC_TRY(check_tensor(api, p.tensors[i], i));
#ifdef GPTCORE_WITH_CUDA
    if (p.device_type == GC_CUDA) return adamw_step_cuda(p, stream);
#endif
    (void)stream;
    return adamw_step_cpu(p);
  });
}
