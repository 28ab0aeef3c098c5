// Validation and device dispatch for gc_cross_entropy_*.
#include "common/check.h"
#include "common/dispatch.h"
#include "common/error.h"
#include "ops/cross_entropy/cross_entropy.h"

namespace gc {
namespace {

// logits [N, V] with V >= 1; N and V out.
gc_status check_logits(const char* api, const gc_tensor& logits, int64_t* rows, int64_t* V) {
  GC_TRY(check_view(api, logits, "logits"));
  GC_TRY(check_float_dtype(api, logits, "logits"));
  if (logits.ndim != 2)
    return fail(GC_ERROR_SHAPE, "%s: 'logits' has shape %s; expected [N, V] (flatten the leading dimensions)", api,
                shape_string(logits).c_str());
  *rows = logits.shape[0];
  *V = logits.shape[1];
  if (*V < 1) return fail(GC_ERROR_SHAPE, "%s: 'logits' has %lld columns; at least 1 is needed", api, (long long)*V);
  return GC_OK;
}

gc_status check_target(const char* api, const gc_tensor& target, const gc_tensor& logits, int64_t rows) {
  GC_TRY(check_view(api, target, "target"));
  GC_TRY(check_same_device(api, target, "target", logits, "logits"));
  GC_TRY(check_dtype(api, target, "target", {GC_INT64, GC_INT32}));
  return check_shape(api, target, "target", {rows});
}

// A float32 [N] tensor beside logits: lse, loss, target_logit, dloss.
gc_status check_row_values(const char* api, const gc_tensor& t, const char* name, const gc_tensor& logits,
                           int64_t rows) {
  GC_TRY(check_view(api, t, name));
  GC_TRY(check_same_device(api, t, name, logits, "logits"));
  GC_TRY(check_dtype(api, t, name, {GC_FLOAT32}));
  return check_shape(api, t, name, {rows});
}

gc_status check_vocab(const char* api, int64_t vocab_start, int64_t vocab_total, int64_t V) {
  if (vocab_start < 0)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: vocab_start must be >= 0, got %lld", api, (long long)vocab_start);
  if (vocab_total < V || vocab_start > vocab_total - V)
    return fail(GC_ERROR_INVALID_ARGUMENT,
                "%s: this shard's columns [vocab_start, vocab_start + V) = [%lld, %lld) do not fit in vocab_total = %lld "
                "(without vocab parallelism pass vocab_start = 0, vocab_total = V)",
                api, (long long)vocab_start, (long long)(vocab_start + V), (long long)vocab_total);
  return GC_OK;
}

// CPU only: every target is ignore_index or a valid global id (CUDA flags bad rows with NaN).
gc_status check_target_values(const char* api, const gc_tensor& target, int64_t rows, int64_t vocab_total,
                              int64_t ignore_index) {
  if (target.device_type != GC_CPU) return GC_OK;
  return GC_INDEX_SWITCH(target.dtype, I, [&] {
    const I* t = static_cast<const I*>(target.data);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t v = t[r];
      if (v != ignore_index && (v < 0 || v >= vocab_total))
        return fail(GC_ERROR_INVALID_ARGUMENT,
                    "%s: 'target'[%lld] = %lld is outside [0, vocab_total = %lld) and is not ignore_index (%lld)", api,
                    (long long)r, (long long)v, (long long)vocab_total, (long long)ignore_index);
    }
    return GC_OK;
  });
}

gc_status check_grid(const char* api, int64_t rows, const gc_tensor& logits) {
  if (logits.device_type == GC_CUDA && rows > 0x7fffffff)
    return fail(GC_ERROR_SHAPE, "%s: 'logits' has %lld rows; CUDA handles at most 2^31 - 1 per call", api,
                (long long)rows);
  return GC_OK;
}

}  // namespace
}  // namespace gc

using namespace gc;

extern "C" gc_status gc_cross_entropy_fwd(const gc_cross_entropy_fwd_params* params, void* stream) {
  constexpr const char* api = "gc_cross_entropy_fwd";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_cross_entropy_fwd_params& p = *params;
    int64_t rows = 0, V = 0;
    GC_TRY(check_logits(api, p.logits, &rows, &V));
    GC_TRY(check_target(api, p.target, p.logits, rows));
    GC_TRY(check_row_values(api, p.lse, "lse", p.logits, rows));
    GC_TRY(check_row_values(api, p.loss, "loss", p.logits, rows));
    if (present(p.target_logit)) GC_TRY(check_row_values(api, p.target_logit, "target_logit", p.logits, rows));
    GC_TRY(check_vocab(api, p.vocab_start, p.vocab_total, V));
    GC_TRY(check_grid(api, rows, p.logits));
    GC_TRY(check_target_values(api, p.target, rows, p.vocab_total, p.ignore_index));
    if (rows == 0) return GC_OK;
#ifdef GPTCORE_WITH_CUDA
    if (p.logits.device_type == GC_CUDA) return cross_entropy_fwd_cuda(p, rows, V, stream);
#endif
    (void)stream;
    return cross_entropy_fwd_cpu(p, rows, V);
  });
}

extern "C" gc_status gc_cross_entropy_bwd(const gc_cross_entropy_bwd_params* params, void* stream) {
  constexpr const char* api = "gc_cross_entropy_bwd";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_cross_entropy_bwd_params& p = *params;
    int64_t rows = 0, V = 0;
    GC_TRY(check_logits(api, p.logits, &rows, &V));
    GC_TRY(check_target(api, p.target, p.logits, rows));
    GC_TRY(check_row_values(api, p.lse, "lse", p.logits, rows));
    GC_TRY(check_row_values(api, p.dloss, "dloss", p.logits, rows));
    GC_TRY(check_like(api, p.dlogits, "dlogits", p.logits, "logits"));
    GC_TRY(check_vocab(api, p.vocab_start, p.vocab_total, V));
    GC_TRY(check_grid(api, rows, p.logits));
    GC_TRY(check_target_values(api, p.target, rows, p.vocab_total, p.ignore_index));
    if (rows == 0) return GC_OK;
#ifdef GPTCORE_WITH_CUDA
    if (p.logits.device_type == GC_CUDA) return cross_entropy_bwd_cuda(p, rows, V, stream);
#endif
    (void)stream;
    return cross_entropy_bwd_cpu(p, rows, V);
  });
}
