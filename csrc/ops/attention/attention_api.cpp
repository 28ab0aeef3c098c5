// Validation and device dispatch for gc_attention_* and gc_dropout_uniform.
#include <cmath>

#include "common/check.h"
#include "common/error.h"
#include "common/philox.h"
#include "ops/attention/attention.h"

namespace gc {
namespace {

// q: [B, H, T, D] with a supported head dim and the device's dtype.
gc_status check_queries(const char* api, const gc_tensor& q, const char* name) {
  GC_TRY(check_view(api, q, name));
  if (q.ndim != 4)
    return fail(GC_ERROR_SHAPE, "%s: '%s' has shape %s; expected [B, H, T, D] (batch, heads, tokens, head dim)", api,
                name, shape_string(q).c_str());
  const int64_t D = q.shape[3];
  if (D < 32 || D > 128 || D % 8 != 0)
    return fail(GC_ERROR_SHAPE, "%s: '%s' has head dim D = %lld; supported are 32..128 in steps of 8 (64 and 128 are "
                "the fast paths)", api, name, (long long)D);
  if (q.device_type == GC_CPU && q.dtype != GC_FLOAT32)
    return fail(GC_ERROR_DTYPE, "%s: '%s' has dtype %s; the CPU kernels take float32 (convert with .float())", api, name,
                gc_dtype_name(q.dtype));
  if (q.device_type == GC_CUDA && q.dtype != GC_FLOAT16 && q.dtype != GC_BFLOAT16)
    return fail(GC_ERROR_DTYPE, "%s: '%s' has dtype %s; the CUDA kernels take float16 or bfloat16 (convert with "
                ".half() or .bfloat16())", api, name, gc_dtype_name(q.dtype));
  return GC_OK;
}

// t: [B, H, rows, D] beside q, same device and dtype.
gc_status check_beside(const char* api, const gc_tensor& t, const char* name, const gc_tensor& q, int64_t rows) {
  GC_TRY(check_view(api, t, name));
  GC_TRY(check_same_device(api, t, name, q, "q"));
  GC_TRY(check_same_dtype(api, t, name, q, "q"));
  return check_shape(api, t, name, {q.shape[0], q.shape[1], rows, q.shape[3]});
}

// k and v [B, H, T_k, D] like q but for T_k; the shape out.
gc_status check_qkv(const char* api, const gc_tensor& q, const gc_tensor& k, const gc_tensor& v, const char* k_name,
                    const char* v_name, AttentionShape* s) {
  GC_TRY(check_queries(api, q, "q"));
  GC_TRY(check_view(api, k, k_name));
  if (k.ndim != 4)
    return fail(GC_ERROR_SHAPE, "%s: '%s' has shape %s; expected [B, H, T, D]", api, k_name, shape_string(k).c_str());
  GC_TRY(check_beside(api, k, k_name, q, k.shape[2]));
  GC_TRY(check_like(api, v, v_name, k, k_name));
  *s = AttentionShape{q.shape[0], q.shape[1], q.shape[2], k.shape[2], q.shape[3]};
  return GC_OK;
}

gc_status check_lse(const char* api, const gc_tensor& lse, const gc_tensor& q) {
  GC_TRY(check_view(api, lse, "lse"));
  GC_TRY(check_same_device(api, lse, "lse", q, "q"));
  GC_TRY(check_dtype(api, lse, "lse", {GC_FLOAT32}));
  return check_shape(api, lse, "lse", {q.shape[0], q.shape[1], q.shape[2]});
}

gc_status check_options(const char* api, const AttentionShape& s, float scale, int32_t causal) {
  if (s.T_k < 1 && s.T_q > 0)
    return fail(GC_ERROR_SHAPE, "%s: 'k' has T_k = 0 keys; every query needs at least one", api);
  if (causal && s.T_q > s.T_k)
    return fail(GC_ERROR_SHAPE,
                "%s: causal attention needs T_q <= T_k, got T_q = %lld and T_k = %lld (queries are aligned to the last "
                "keys, so the first T_q - T_k queries would see no key)",
                api, (long long)s.T_q, (long long)s.T_k);
  if (!std::isfinite(scale)) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: scale must be finite, got %g", api, scale);
  return GC_OK;
}

gc_status check_dropout(const char* api, float dropout_p) {
  if (!(dropout_p >= 0.f && dropout_p < 1.f))
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: dropout_p must be in [0, 1), got %g", api, dropout_p);
  return GC_OK;
}

// cu_seqlens, when given: int32 [B, S + 1] on q's device, causal with T_q == T_k; on CPU each row
// rises from 0 to T (CUDA kernels read the values unchecked, safely).
gc_status check_documents(const char* api, const gc_tensor& cu, const gc_tensor& q, const AttentionShape& s,
                          int32_t causal) {
  if (cu.data == nullptr) return GC_OK;
  if (!causal || s.T_q != s.T_k)
    return fail(GC_ERROR_INVALID_ARGUMENT,
                "%s: 'cu_seqlens' (packed documents) needs causal attention with T_q == T_k, got causal = %d, T_q = "
                "%lld, T_k = %lld",
                api, causal, (long long)s.T_q, (long long)s.T_k);
  GC_TRY(check_view(api, cu, "cu_seqlens"));
  GC_TRY(check_same_device(api, cu, "cu_seqlens", q, "q"));
  GC_TRY(check_dtype(api, cu, "cu_seqlens", {GC_INT32}));
  if (cu.ndim != 2 || cu.shape[0] != s.B || cu.shape[1] < 2)
    return fail(GC_ERROR_SHAPE,
                "%s: 'cu_seqlens' has shape %s; expected [B = %lld, S + 1 >= 2] (each batch row's document boundaries)",
                api, shape_string(cu).c_str(), (long long)s.B);
  if (cu.device_type != GC_CPU) return GC_OK;
  const int64_t n = cu.shape[1];
  for (int64_t b = 0; b < s.B; ++b) {
    const int32_t* c = static_cast<const int32_t*>(cu.data) + b * n;
    bool rising = c[0] == 0 && c[n - 1] == s.T_q;
    for (int64_t m = 1; m < n && rising; ++m) rising = c[m - 1] <= c[m];
    if (!rising)
      return fail(GC_ERROR_INVALID_ARGUMENT,
                  "%s: 'cu_seqlens' row %lld must rise from 0 to T = %lld, never down (0 = c_0 <= c_1 <= ... <= c_S = "
                  "T), got c_0 = %d, c_S = %d",
                  api, (long long)b, (long long)s.T_q, c[0], c[n - 1]);
  }
  return GC_OK;
}

gc_status check_bwd(const char* api, const gc_attention_bwd_params& p, AttentionShape* s) {
  GC_TRY(check_qkv(api, p.q, p.k, p.v, "k", "v", s));
  GC_TRY(check_like(api, p.out, "out", p.q, "q"));
  GC_TRY(check_like(api, p.dout, "dout", p.q, "q"));
  GC_TRY(check_lse(api, p.lse, p.q));
  GC_TRY(check_like(api, p.dq, "dq", p.q, "q"));
  GC_TRY(check_like(api, p.dk, "dk", p.k, "k"));
  GC_TRY(check_like(api, p.dv, "dv", p.v, "v"));
  GC_TRY(check_options(api, *s, p.scale, p.causal));
  GC_TRY(check_documents(api, p.cu_seqlens, p.q, *s, p.causal));
  return check_dropout(api, p.dropout_p);
}

// No query: the forward and decode outputs are empty.
bool empty(const AttentionShape& s) { return s.B == 0 || s.H == 0 || s.T_q == 0; }

// Nothing for the backward to write; with T_q = 0 and T_k >= 1 dk and dv are zeros to write.
bool empty_bwd(const AttentionShape& s) { return s.B == 0 || s.H == 0 || (s.T_q == 0 && s.T_k == 0); }

// The decode params' shapes, dtypes and devices (not the lengths' values); the shape out.
gc_status check_decode(const char* api, const gc_attention_decode_params& p, AttentionShape* s) {
  GC_TRY(check_qkv(api, p.q, p.k_cache, p.v_cache, "k_cache", "v_cache", s));  // T_k is the capacity T_max
  GC_TRY(check_like(api, p.out, "out", p.q, "q"));
  GC_TRY(check_view(api, p.cache_lens, "cache_lens"));
  GC_TRY(check_same_device(api, p.cache_lens, "cache_lens", p.q, "q"));
  GC_TRY(check_dtype(api, p.cache_lens, "cache_lens", {GC_INT32}));
  GC_TRY(check_shape(api, p.cache_lens, "cache_lens", {s->B}));
  if (s->T_q > s->T_k)
    return fail(GC_ERROR_SHAPE, "%s: 'q' has T_new = %lld new tokens but the cache holds at most T_max = %lld", api,
                (long long)s->T_q, (long long)s->T_k);
  if (!std::isfinite(p.scale)) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: scale must be finite, got %g", api, p.scale);
  return GC_OK;
}

gc_status decode_workspace(const gc_attention_decode_params& p, const AttentionShape& s, size_t* bytes) {
  *bytes = 0;  // the CPU path needs none
#ifdef GPTCORE_WITH_CUDA
  if (p.q.device_type == GC_CUDA && !empty(s)) return attention_decode_workspace_cuda(s, p.q.device_index, bytes);
#endif
  (void)p;
  (void)s;
  return GC_OK;
}

size_t bwd_workspace(const AttentionShape& s, int32_t device_type) {
#ifdef GPTCORE_WITH_CUDA
  if (device_type == GC_CUDA) return attention_bwd_workspace_cuda(s);
#endif
  return attention_bwd_workspace_cpu(s);
}


}  // namespace
}  // namespace gc

using namespace gc;

extern "C" gc_status gc_attention_fwd(const gc_attention_fwd_params* params, void* stream) {
  constexpr const char* api = "gc_attention_fwd";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_attention_fwd_params& p = *params;
    AttentionShape s{};
    GC_TRY(check_qkv(api, p.q, p.k, p.v, "k", "v", &s));
    GC_TRY(check_like(api, p.out, "out", p.q, "q"));
    GC_TRY(check_lse(api, p.lse, p.q));
    GC_TRY(check_options(api, s, p.scale, p.causal));
    GC_TRY(check_documents(api, p.cu_seqlens, p.q, s, p.causal));
    GC_TRY(check_dropout(api, p.dropout_p));
    if (empty(s)) return GC_OK;
#ifdef GPTCORE_WITH_CUDA
    if (p.q.device_type == GC_CUDA) return attention_fwd_cuda(p, s, stream);
#endif
    (void)stream;
    return attention_fwd_cpu(p, s);
  });
}

extern "C" gc_status gc_attention_bwd_workspace_size(const gc_attention_bwd_params* params, size_t* bytes) {
  constexpr const char* api = "gc_attention_bwd_workspace_size";
  return guarded(api, [&]() -> gc_status {
    if (!params || !bytes) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params and bytes must not be NULL", api);
    AttentionShape s{};
    GC_TRY(check_bwd(api, *params, &s));
    *bytes = bwd_workspace(s, params->q.device_type);
    return GC_OK;
  });
}

extern "C" gc_status gc_attention_bwd(const gc_attention_bwd_params* params, void* workspace, size_t workspace_bytes,
                                      void* stream) {
  constexpr const char* api = "gc_attention_bwd";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_attention_bwd_params& p = *params;
    AttentionShape s{};
    GC_TRY(check_bwd(api, p, &s));
    const size_t need = bwd_workspace(s, p.q.device_type);
    if (workspace_bytes < need || (need > 0 && workspace == nullptr))
      return fail(GC_ERROR_WORKSPACE, "%s: the workspace has %zu bytes but %zu are needed; ask gc_attention_bwd_workspace_size",
                  api, workspace == nullptr ? size_t{0} : workspace_bytes, need);
    if (empty_bwd(s)) return GC_OK;
#ifdef GPTCORE_WITH_CUDA
    if (p.q.device_type == GC_CUDA) return attention_bwd_cuda(p, s, workspace, stream);
#endif
    (void)stream;
    return attention_bwd_cpu(p, s, workspace);
  });
}

extern "C" gc_status gc_attention_decode_workspace_size(const gc_attention_decode_params* params, size_t* bytes) {
  constexpr const char* api = "gc_attention_decode_workspace_size";
  return guarded(api, [&]() -> gc_status {
    if (!params || !bytes) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params and bytes must not be NULL", api);
    AttentionShape s{};
    GC_TRY(check_decode(api, *params, &s));
    return decode_workspace(*params, s, bytes);
  });
}

extern "C" gc_status gc_attention_decode(const gc_attention_decode_params* params, void* workspace,
                                         size_t workspace_bytes, void* stream) {
  constexpr const char* api = "gc_attention_decode";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_attention_decode_params& p = *params;
    AttentionShape s{};
    GC_TRY(check_decode(api, p, &s));
    if (p.cache_lens.device_type == GC_CPU) {  // CUDA reads the lengths on the device, unchecked
      const int32_t* lens = static_cast<const int32_t*>(p.cache_lens.data);
      for (int64_t b = 0; b < s.B; ++b)
        if (lens[b] < s.T_q || lens[b] > s.T_k)
          return fail(GC_ERROR_INVALID_ARGUMENT,
                      "%s: 'cache_lens'[%lld] = %d is outside [T_new, T_max] = [%lld, %lld] (the new tokens' keys must "
                      "already be in the cache)",
                      api, (long long)b, lens[b], (long long)s.T_q, (long long)s.T_k);
    }
    size_t need = 0;
    GC_TRY(decode_workspace(p, s, &need));
    if (workspace_bytes < need || (need > 0 && workspace == nullptr))
      return fail(GC_ERROR_WORKSPACE,
                  "%s: the workspace has %zu bytes but %zu are needed; ask gc_attention_decode_workspace_size", api,
                  workspace == nullptr ? size_t{0} : workspace_bytes, need);
    if (empty(s)) return GC_OK;
#ifdef GPTCORE_WITH_CUDA
    if (p.q.device_type == GC_CUDA) return attention_decode_cuda(p, s, workspace, stream);
#endif
    (void)workspace;
    (void)stream;
    return attention_decode_cpu(p, s);
  });
}

extern "C" float gc_dropout_uniform(uint64_t seed, uint64_t offset, uint64_t n) { return dropout_uniform(seed, offset, n); }
