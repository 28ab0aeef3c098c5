// Validation and device dispatch for gc_linear_*.
#include <string>

#include "common/check.h"
#include "common/error.h"
#include "ops/linear/linear.h"

namespace gc {
namespace {

constexpr int64_t kMaxDim = 0x7fffffff;  // BLAS and cuBLASLt take 32-bit sizes

gc_status check_activation(const char* api, int32_t activation) {
  if (activation != GC_ACTIVATION_NONE && activation != GC_ACTIVATION_GELU_TANH)
    return fail(GC_ERROR_INVALID_ARGUMENT,
                "%s: activation = %d is unknown; use GC_ACTIVATION_NONE (0) or GC_ACTIVATION_GELU_TANH (1)", api,
                activation);
  return GC_OK;
}

// x [..., K] and weight [N, K]: the sizes M, N, K.
gc_status check_operands(const char* api, const gc_tensor& x, const gc_tensor& weight, LinearDims* d) {
  GC_TRY(check_view(api, x, "x"));
  GC_TRY(check_float_dtype(api, x, "x"));
  if (x.ndim < 1) return fail(GC_ERROR_SHAPE, "%s: 'x' must have at least one dimension (the features)", api);
  GC_TRY(check_view(api, weight, "weight"));
  GC_TRY(check_same_device(api, weight, "weight", x, "x"));
  GC_TRY(check_same_dtype(api, weight, "weight", x, "x"));
  d->K = x.shape[x.ndim - 1];
  if (weight.ndim != 2 || weight.shape[1] != d->K)
    return fail(GC_ERROR_SHAPE, "%s: 'weight' has shape %s; expected [N, %lld] (out_features, in_features of 'x')", api,
                shape_string(weight).c_str(), (long long)d->K);
  d->N = weight.shape[0];
  d->M = 1;
  for (int i = 0; i + 1 < x.ndim; ++i) d->M *= x.shape[i];
  if (d->M > kMaxDim || d->N > kMaxDim || d->K > kMaxDim)
    return fail(GC_ERROR_SHAPE, "%s: M = %lld, N = %lld, K = %lld; each must be at most 2^31 - 1", api, (long long)d->M,
                (long long)d->N, (long long)d->K);
  return GC_OK;
}

// A tensor shaped like x with its last dimension `last`: y, residual, pre_act, dy (last = N), dx (last = K).
gc_status check_rows(const char* api, const gc_tensor& t, const char* name, const gc_tensor& x, int64_t last) {
  GC_TRY(check_view(api, t, name));
  GC_TRY(check_same_device(api, t, name, x, "x"));
  GC_TRY(check_same_dtype(api, t, name, x, "x"));
  bool same = t.ndim == x.ndim && t.shape[t.ndim - 1] == last;
  for (int i = 0; same && i + 1 < x.ndim; ++i) same = t.shape[i] == x.shape[i];
  if (!same) {
    std::string want = "[";
    for (int i = 0; i + 1 < x.ndim; ++i) want += std::to_string(x.shape[i]) + ", ";
    return fail(GC_ERROR_SHAPE, "%s: '%s' has shape %s; expected %s%lld] ('x' has shape %s)", api, name,
                shape_string(t).c_str(), want.c_str(), (long long)last, shape_string(x).c_str());
  }
  return GC_OK;
}

gc_status check_vector(const char* api, const gc_tensor& t, const char* name, const gc_tensor& x, int64_t N) {
  GC_TRY(check_view(api, t, name));
  GC_TRY(check_same_device(api, t, name, x, "x"));
  GC_TRY(check_same_dtype(api, t, name, x, "x"));
  return check_shape(api, t, name, {N});
}

gc_status check_fwd(const char* api, const gc_linear_fwd_params& p, LinearDims* d) {
  GC_TRY(check_operands(api, p.x, p.weight, d));
  GC_TRY(check_activation(api, p.activation));
  if (present(p.bias)) GC_TRY(check_vector(api, p.bias, "bias", p.x, d->N));
  if (present(p.residual)) {
    if (p.activation != GC_ACTIVATION_NONE)
      return fail(GC_ERROR_INVALID_ARGUMENT,
                  "%s: 'residual' cannot be combined with a GELU activation; add the residual separately", api);
    GC_TRY(check_rows(api, p.residual, "residual", p.x, d->N));
  }
  GC_TRY(check_rows(api, p.y, "y", p.x, d->N));
  if (p.activation == GC_ACTIVATION_GELU_TANH && present(p.pre_act))
    GC_TRY(check_rows(api, p.pre_act, "pre_act", p.x, d->N));
  return GC_OK;
}

gc_status check_bwd(const char* api, const gc_linear_bwd_params& p, LinearDims* d) {
  GC_TRY(check_operands(api, p.x, p.weight, d));
  GC_TRY(check_activation(api, p.activation));
  GC_TRY(check_rows(api, p.dy, "dy", p.x, d->N));
  if (p.activation == GC_ACTIVATION_GELU_TANH) GC_TRY(check_rows(api, p.pre_act, "pre_act", p.x, d->N));
  if (present(p.dx)) GC_TRY(check_rows(api, p.dx, "dx", p.x, d->K));
  if (present(p.dweight)) GC_TRY(check_like(api, p.dweight, "dweight", p.weight, "weight"));
  if (present(p.dbias)) GC_TRY(check_vector(api, p.dbias, "dbias", p.x, d->N));
  return GC_OK;
}

size_t fwd_workspace(const gc_linear_fwd_params& p, LinearDims d) {
#ifdef GPTCORE_WITH_CUDA
  if (p.x.device_type == GC_CUDA) return linear_fwd_workspace_cuda(p, d);
#endif
  return linear_fwd_workspace_cpu(p, d);
}

size_t bwd_workspace(const gc_linear_bwd_params& p, LinearDims d) {
#ifdef GPTCORE_WITH_CUDA
  if (p.x.device_type == GC_CUDA) return linear_bwd_workspace_cuda(p, d);
#endif
  return linear_bwd_workspace_cpu(p, d);
}

gc_status check_workspace(const char* api, const char* query, const void* workspace, size_t have, size_t need) {
  if (have < need || (need > 0 && workspace == nullptr))
    return fail(GC_ERROR_WORKSPACE, "%s: the workspace has %zu bytes but %zu are needed; ask %s", api,
                workspace == nullptr ? size_t{0} : have, need, query);
  return GC_OK;
}

}  // namespace
}  // namespace gc

using namespace gc;

extern "C" gc_status gc_linear_fwd_workspace_size(const gc_linear_fwd_params* params, size_t* bytes) {
  constexpr const char* api = "gc_linear_fwd_workspace_size";
  return guarded(api, [&]() -> gc_status {
    if (!params || !bytes) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params and bytes must not be NULL", api);
    LinearDims d{};
    GC_TRY(check_fwd(api, *params, &d));
    *bytes = fwd_workspace(*params, d);
    return GC_OK;
  });
}

extern "C" gc_status gc_linear_fwd(const gc_linear_fwd_params* params, void* workspace, size_t workspace_size,
                                   void* stream) {
  constexpr const char* api = "gc_linear_fwd";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_linear_fwd_params& p = *params;
    LinearDims d{};
    GC_TRY(check_fwd(api, p, &d));
    GC_TRY(check_workspace(api, "gc_linear_fwd_workspace_size", workspace, workspace_size, fwd_workspace(p, d)));
    if (d.M == 0 || d.N == 0) return GC_OK;
#ifdef GPTCORE_WITH_CUDA
    if (p.x.device_type == GC_CUDA) return linear_fwd_cuda(p, d, workspace, workspace_size, stream);
#endif
    (void)stream;
    return linear_fwd_cpu(p, d);
  });
}

extern "C" gc_status gc_linear_bwd_workspace_size(const gc_linear_bwd_params* params, size_t* bytes) {
  constexpr const char* api = "gc_linear_bwd_workspace_size";
  return guarded(api, [&]() -> gc_status {
    if (!params || !bytes) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params and bytes must not be NULL", api);
    LinearDims d{};
    GC_TRY(check_bwd(api, *params, &d));
    *bytes = bwd_workspace(*params, d);
    return GC_OK;
  });
}

extern "C" gc_status gc_linear_bwd(const gc_linear_bwd_params* params, void* workspace, size_t workspace_size,
                                   void* stream) {
  constexpr const char* api = "gc_linear_bwd";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_linear_bwd_params& p = *params;
    LinearDims d{};
    GC_TRY(check_bwd(api, p, &d));
    GC_TRY(check_workspace(api, "gc_linear_bwd_workspace_size", workspace, workspace_size, bwd_workspace(p, d)));
#ifdef GPTCORE_WITH_CUDA
    if (p.x.device_type == GC_CUDA) return linear_bwd_cuda(p, d, workspace, workspace_size, stream);
#endif
    (void)stream;
    return linear_bwd_cpu(p, d, workspace);
  });
}
