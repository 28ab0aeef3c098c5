// Validation and device dispatch for gc_layer_norm_*.
#include "ops/layer_norm/layer_norm.h"

#include "common/check.h"
#include "common/error.h"

namespace gc {
namespace {

// The row count N and channel count C of x [..., C].
gc_status rows_and_channels(const char* api, const gc_tensor& x, int64_t* rows, int64_t* C) {
  if (x.ndim < 1) return fail(GC_ERROR_SHAPE, "%s: 'x' must have at least one dimension (the channels)", api);
  *C = x.shape[x.ndim - 1];
  if (*C < 1) return fail(GC_ERROR_SHAPE, "%s: 'x' has %lld channels; at least 1 is needed", api, (long long)*C);
  *rows = gc_tensor_numel(&x) / *C;
  return GC_OK;
}

gc_status check_params(const char* api, const gc_tensor& weight, const gc_tensor* bias, const gc_tensor& x, int64_t C) {
  GC_TRY(check_view(api, weight, "weight"));
  GC_TRY(check_same_device(api, weight, "weight", x, "x"));
  GC_TRY(check_same_dtype(api, weight, "weight", x, "x"));
  GC_TRY(check_shape(api, weight, "weight", {C}));
  if (bias && present(*bias)) GC_TRY(check_like(api, *bias, "bias", weight, "weight"));
  return GC_OK;
}

gc_status check_stats(const char* api, const gc_tensor& t, const char* name, const gc_tensor& x, int64_t rows) {
  GC_TRY(check_view(api, t, name));
  GC_TRY(check_same_device(api, t, name, x, "x"));
  GC_TRY(check_dtype(api, t, name, {GC_FLOAT32}));
  return check_shape(api, t, name, {rows});
}

gc_status check_bwd(const char* api, const gc_layer_norm_bwd_params& p, int64_t* rows, int64_t* C) {
  GC_TRY(check_view(api, p.x, "x"));
  GC_TRY(check_float_dtype(api, p.x, "x"));
  GC_TRY(rows_and_channels(api, p.x, rows, C));
  GC_TRY(check_like(api, p.dy, "dy", p.x, "x"));
  GC_TRY(check_params(api, p.weight, nullptr, p.x, *C));
  GC_TRY(check_stats(api, p.mean, "mean", p.x, *rows));
  GC_TRY(check_stats(api, p.rstd, "rstd", p.x, *rows));
  if (present(p.dsum)) GC_TRY(check_like(api, p.dsum, "dsum", p.x, "x"));
  GC_TRY(check_like(api, p.dx, "dx", p.x, "x"));
  GC_TRY(check_like(api, p.dweight, "dweight", p.weight, "weight"));
  if (present(p.dbias)) GC_TRY(check_like(api, p.dbias, "dbias", p.weight, "weight"));
  return GC_OK;
}

size_t workspace_bytes(int64_t rows, int64_t C, int32_t device_type) {
  return static_cast<size_t>(layer_norm_bwd_partials(rows, device_type)) * 2 * C * sizeof(float);
}

}  // namespace
}  // namespace gc

using namespace gc;

extern "C" gc_status gc_layer_norm_fwd(const gc_layer_norm_fwd_params* params, void* stream) {
  constexpr const char* api = "gc_layer_norm_fwd";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_layer_norm_fwd_params& p = *params;
    GC_TRY(check_view(api, p.x, "x"));
    GC_TRY(check_float_dtype(api, p.x, "x"));
    int64_t rows = 0, C = 0;
    GC_TRY(rows_and_channels(api, p.x, &rows, &C));
    if (present(p.residual)) {
      GC_TRY(check_like(api, p.residual, "residual", p.x, "x"));
      GC_TRY(check_like(api, p.sum, "sum", p.x, "x"));
    }
    GC_TRY(check_params(api, p.weight, &p.bias, p.x, C));
    GC_TRY(check_like(api, p.y, "y", p.x, "x"));
    GC_TRY(check_stats(api, p.mean, "mean", p.x, rows));
    GC_TRY(check_stats(api, p.rstd, "rstd", p.x, rows));
    if (!(p.eps >= 0.f)) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: eps must be >= 0, got %g", api, p.eps);
    if (rows == 0) return GC_OK;
#ifdef GPTCORE_WITH_CUDA
    if (p.x.device_type == GC_CUDA) return layer_norm_fwd_cuda(p, rows, C, stream);
#endif
    (void)stream;
    return layer_norm_fwd_cpu(p, rows, C);
  });
}

extern "C" gc_status gc_layer_norm_bwd_workspace_size(const gc_layer_norm_bwd_params* params, size_t* bytes) {
  constexpr const char* api = "gc_layer_norm_bwd_workspace_size";
  return guarded(api, [&]() -> gc_status {
    if (!params || !bytes) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params and bytes must not be NULL", api);
    int64_t rows = 0, C = 0;
    GC_TRY(check_bwd(api, *params, &rows, &C));
    *bytes = workspace_bytes(rows, C, params->x.device_type);
    return GC_OK;
  });
}

extern "C" gc_status gc_layer_norm_bwd(const gc_layer_norm_bwd_params* params, void* workspace, size_t workspace_size,
                                       void* stream) {
  constexpr const char* api = "gc_layer_norm_bwd";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_layer_norm_bwd_params& p = *params;
    int64_t rows = 0, C = 0;
    GC_TRY(check_bwd(api, p, &rows, &C));
    const size_t need = workspace_bytes(rows, C, p.x.device_type);
    if (workspace_size < need || (need > 0 && workspace == nullptr))
      return fail(GC_ERROR_WORKSPACE, "%s: the workspace has %zu bytes but %zu are needed; ask gc_layer_norm_bwd_workspace_size",
                  api, workspace == nullptr ? size_t{0} : workspace_size, need);
    float* partials = static_cast<float*>(workspace);
#ifdef GPTCORE_WITH_CUDA
    if (p.x.device_type == GC_CUDA) return layer_norm_bwd_cuda(p, rows, C, partials, stream);
#endif
    (void)stream;
    return layer_norm_bwd_cpu(p, rows, C, partials);
  });
}

int64_t gc::layer_norm_bwd_partials(int64_t rows, int32_t device_type) {
  // CPU: one partial per chunk of rows (chunks are spread over threads).
  // CUDA: one partial per single-warp block, each block taking ~16 rows.
  const int64_t partials = device_type == GC_CUDA ? (rows + 15) / 16 : rows;
  const int64_t cap = device_type == GC_CUDA ? 1024 : 64;
  return partials < cap ? partials : cap;
}
