// Validation for gc_dense_fwd and gc_gpt_decode: every tensor on the CPU, contiguous, of the
// dtype and shape the model's sizes call for; tokens, positions and slots in range.
#include <vector>

#include "common/check.h"
#include "common/error.h"
#include "ops/decode/decode.h"

namespace gc {
namespace {

gc_status check_cpu(const char* api, const gc_tensor& t, const char* name) {
  GC_TRY(check_view(api, t, name));
  if (t.device_type != GC_CPU)
    return fail(GC_ERROR_DEVICE, "%s: '%s' is on CUDA; generation in the core runs on the CPU (use the CUDA Engine "
                "path for GPUs)", api, name);
  return GC_OK;
}

gc_status check_vector(const char* api, const gc_tensor& t, const char* name, int64_t n, int32_t dtype) {
  GC_TRY(check_cpu(api, t, name));
  GC_TRY(check_dtype(api, t, name, {dtype}));
  return check_shape(api, t, name, {n});
}

// weight [N, K] (K given, or any when K < 0) of a supported dtype, scale exactly for int8, bias [N].
gc_status check_dense(const char* api, const gc_dense& d, const char* name, int64_t N, int64_t K) {
  std::string w = std::string(name) + ".weight";
  GC_TRY(check_cpu(api, d.weight, w.c_str()));
  GC_TRY(check_dtype(api, d.weight, w.c_str(), {GC_FLOAT32, GC_BFLOAT16, GC_INT8}));
  if (d.layout != GC_DENSE_ROWS && d.layout != GC_DENSE_PACKED)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: '%s.layout' is %d; expected GC_DENSE_ROWS (0) or GC_DENSE_PACKED (1)",
                api, name, d.layout);
  if (d.layout == GC_DENSE_PACKED && d.weight.dtype == GC_FLOAT32)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: '%s' is float32 and packed; only bfloat16 and int8 weights are packed "
                "(give float32 in rows, GC_DENSE_ROWS)", api, w.c_str());
  if (d.weight.ndim != 2 || (N >= 0 && d.weight.shape[0] != N) || (K >= 0 && d.weight.shape[1] != K)) {
    const std::string n = N >= 0 ? std::to_string(N) : "N", k = K >= 0 ? std::to_string(K) : "K";
    return fail(GC_ERROR_SHAPE, "%s: '%s' has shape %s; expected [%s, %s] ([out, in], F.linear's layout)", api,
                w.c_str(), shape_string(d.weight).c_str(), n.c_str(), k.c_str());
  }
  const std::string s = std::string(name) + ".scale", b = std::string(name) + ".bias";
  if (d.weight.dtype == GC_INT8) {
    if (!present(d.scale))
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: '%s' is int8 but '%s' is absent; int8 weights need one float32 "
                  "scale per output row", api, w.c_str(), s.c_str());
    GC_TRY(check_vector(api, d.scale, s.c_str(), d.weight.shape[0], GC_FLOAT32));
  } else if (present(d.scale)) {
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: '%s' is given but '%s' is %s; scales go with int8 weights only", api,
                s.c_str(), w.c_str(), gc_dtype_name(d.weight.dtype));
  }
  if (present(d.bias)) GC_TRY(check_vector(api, d.bias, b.c_str(), d.weight.shape[0], GC_FLOAT32));
  return GC_OK;
}

gc_status check_norm(const char* api, const gc_tensor& w, const gc_tensor& b, const std::string& name, int64_t C) {
  GC_TRY(check_vector(api, w, (name + "_weight").c_str(), C, GC_FLOAT32));
  if (present(b)) GC_TRY(check_vector(api, b, (name + "_bias").c_str(), C, GC_FLOAT32));
  return GC_OK;
}

gc_status check_model(const char* api, const gc_gpt_model& m) {
  if (m.n_layer < 1 || m.n_head < 1)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: n_layer (%d) and n_head (%d) must be >= 1", api, m.n_layer, m.n_head);
  if (!m.layers) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: model.layers is NULL", api);
  GC_TRY(check_cpu(api, m.wte, "wte"));
  GC_TRY(check_dtype(api, m.wte, "wte", {GC_FLOAT32}));
  if (m.wte.ndim != 2 || m.wte.shape[0] < m.vocab_size || m.vocab_size < 1)
    return fail(GC_ERROR_SHAPE, "%s: 'wte' has shape %s; expected [>= vocab_size = %lld, C]", api,
                shape_string(m.wte).c_str(), (long long)m.vocab_size);
  const int64_t C = m.wte.shape[1], D = C / m.n_head;
  if (C % m.n_head != 0 || D < 32 || D > 128 || D % 8 != 0)
    return fail(GC_ERROR_SHAPE, "%s: C = %lld and n_head = %d give head dim %lld; supported are 32..128 in steps of 8",
                api, (long long)C, m.n_head, (long long)D);
  GC_TRY(check_cpu(api, m.wpe, "wpe"));
  GC_TRY(check_dtype(api, m.wpe, "wpe", {GC_FLOAT32}));
  if (m.wpe.ndim != 2 || m.wpe.shape[1] != C)
    return fail(GC_ERROR_SHAPE, "%s: 'wpe' has shape %s; expected [n_positions, C = %lld]", api,
                shape_string(m.wpe).c_str(), (long long)C);
  if (!(m.layer_norm_eps >= 0.f))
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: layer_norm_eps must be >= 0, got %g", api, m.layer_norm_eps);
  const int64_t F = m.layers[0].mlp_fc.weight.ndim == 2 ? m.layers[0].mlp_fc.weight.shape[0] : -1;
  for (int32_t l = 0; l < m.n_layer; ++l) {
    const gc_gpt_layer& layer = m.layers[l];
    const std::string at = "layers[" + std::to_string(l) + "].";
    GC_TRY(check_norm(api, layer.ln_1_weight, layer.ln_1_bias, at + "ln_1", C));
    GC_TRY(check_norm(api, layer.ln_2_weight, layer.ln_2_bias, at + "ln_2", C));
    GC_TRY(check_dense(api, layer.attn_qkv, (at + "attn_qkv").c_str(), 3 * C, C));
    GC_TRY(check_dense(api, layer.attn_proj, (at + "attn_proj").c_str(), C, C));
    GC_TRY(check_dense(api, layer.mlp_fc, (at + "mlp_fc").c_str(), F, C));
    GC_TRY(check_dense(api, layer.mlp_proj, (at + "mlp_proj").c_str(), C, F));
  }
  GC_TRY(check_norm(api, m.ln_f_weight, m.ln_f_bias, "ln_f", C));
  GC_TRY(check_dense(api, m.lm_head, "lm_head", -1, C));
  if (m.lm_head.weight.shape[0] < m.vocab_size)
    return fail(GC_ERROR_SHAPE, "%s: 'lm_head.weight' has %lld rows, fewer than vocab_size = %lld", api,
                (long long)m.lm_head.weight.shape[0], (long long)m.vocab_size);
  return GC_OK;
}

gc_status check_cache(const char* api, const gc_tensor& t, const char* name, const gc_gpt_model& m) {
  GC_TRY(check_cpu(api, t, name));
  GC_TRY(check_dtype(api, t, name, {GC_FLOAT32}));
  const int64_t D = m.wte.shape[1] / m.n_head;
  if (t.ndim != 5 || t.shape[0] != m.n_layer || t.shape[2] != m.n_head || t.shape[4] != D)
    return fail(GC_ERROR_SHAPE, "%s: '%s' has shape %s; expected [n_layer = %d, slots, n_head = %d, max_len, %lld]",
                api, name, shape_string(t).c_str(), m.n_layer, m.n_head, (long long)D);
  return GC_OK;
}

gc_status check_sequences(const char* api, const gc_gpt_decode_params& p) {
  const gc_gpt_model& m = *p.model;
  GC_TRY(check_cache(api, p.k_cache, "k_cache", m));
  GC_TRY(check_like(api, p.v_cache, "v_cache", p.k_cache, "k_cache"));
  GC_TRY(check_cpu(api, p.tokens, "tokens"));
  GC_TRY(check_dtype(api, p.tokens, "tokens", {GC_INT32}));
  if (p.tokens.ndim != 1) return fail(GC_ERROR_SHAPE, "%s: 'tokens' must be [n_tokens]", api);
  GC_TRY(check_cpu(api, p.seq_slot, "seq_slot"));
  if (p.seq_slot.ndim != 1 || p.seq_slot.shape[0] < 1)
    return fail(GC_ERROR_SHAPE, "%s: 'seq_slot' must be [S] with S >= 1 sequences", api);
  const int64_t S = p.seq_slot.shape[0], T = p.tokens.shape[0];
  GC_TRY(check_vector(api, p.seq_slot, "seq_slot", S, GC_INT32));
  GC_TRY(check_vector(api, p.seq_start, "seq_start", S, GC_INT32));
  GC_TRY(check_vector(api, p.seq_len, "seq_len", S, GC_INT32));
  const int32_t* slot = static_cast<const int32_t*>(p.seq_slot.data);
  const int32_t* start = static_cast<const int32_t*>(p.seq_start.data);
  const int32_t* len = static_cast<const int32_t*>(p.seq_len.data);
  const int64_t slots = p.k_cache.shape[1], max_len = p.k_cache.shape[3], n_positions = m.wpe.shape[0];
  std::vector<char> used(slots, 0);
  int64_t total = 0;
  for (int64_t i = 0; i < S; ++i) {
    if (slot[i] < 0 || slot[i] >= slots || used[slot[i]]++)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: seq_slot[%lld] = %d is outside [0, %lld) or used twice", api,
                  (long long)i, slot[i], (long long)slots);
    const int64_t end = int64_t{start[i]} + len[i];
    if (len[i] < 1 || start[i] < 0 || end > max_len || end > n_positions)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: sequence %lld's positions [%d, %lld) must be a non-empty range within "
                  "the cache (%lld positions) and the model (%lld)", api, (long long)i, start[i], (long long)end,
                  (long long)max_len, (long long)n_positions);
    total += len[i];
  }
  if (total != T)
    return fail(GC_ERROR_SHAPE, "%s: seq_len sums to %lld but 'tokens' has %lld", api, (long long)total, (long long)T);
  const int32_t* tokens = static_cast<const int32_t*>(p.tokens.data);
  for (int64_t r = 0; r < T; ++r)
    if (tokens[r] < 0 || tokens[r] >= m.vocab_size)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: tokens[%lld] = %d is outside the vocabulary [0, %lld)", api,
                  (long long)r, tokens[r], (long long)m.vocab_size);
  GC_TRY(check_cpu(api, p.logits, "logits"));
  GC_TRY(check_dtype(api, p.logits, "logits", {GC_FLOAT32}));
  return check_shape(api, p.logits, "logits", {p.every_position ? T : S, m.vocab_size});
}

}  // namespace
}  // namespace gc

using namespace gc;

extern "C" gc_status gc_dense_fwd(const gc_dense* dense, gc_tensor x, gc_tensor y) {
  constexpr const char* api = "gc_dense_fwd";
  return guarded(api, [&]() -> gc_status {
    if (!dense) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: dense is NULL", api);
    GC_TRY(check_dense(api, *dense, "dense", -1, -1));
    const int64_t N = dense->weight.shape[0], K = dense->weight.shape[1];
    GC_TRY(check_cpu(api, x, "x"));
    GC_TRY(check_dtype(api, x, "x", {GC_FLOAT32}));
    if (x.ndim != 2 || x.shape[1] != K)
      return fail(GC_ERROR_SHAPE, "%s: 'x' has shape %s; expected [M, K = %lld]", api, shape_string(x).c_str(),
                  (long long)K);
    GC_TRY(check_cpu(api, y, "y"));
    GC_TRY(check_dtype(api, y, "y", {GC_FLOAT32}));
    GC_TRY(check_shape(api, y, "y", {x.shape[0], N}));
    dense_cpu(dense_weight(*dense), static_cast<const float*>(x.data), x.shape[0], static_cast<float*>(y.data), N);
    return GC_OK;
  });
}

extern "C" int64_t gc_dense_packed_numel(int64_t N, int64_t K) {
  return N < 0 || K < 0 ? -1 : packed_numel(N, K);
}

extern "C" gc_status gc_dense_pack(gc_tensor weight, gc_tensor packed) {
  constexpr const char* api = "gc_dense_pack";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_cpu(api, weight, "weight"));
    GC_TRY(check_dtype(api, weight, "weight", {GC_BFLOAT16, GC_INT8}));
    if (weight.ndim != 2)
      return fail(GC_ERROR_SHAPE, "%s: 'weight' has shape %s; expected [N, K]", api, shape_string(weight).c_str());
    GC_TRY(check_cpu(api, packed, "packed"));
    GC_TRY(check_same_dtype(api, packed, "packed", weight, "weight"));
    const int64_t N = weight.shape[0], K = weight.shape[1];
    GC_TRY(check_shape(api, packed, "packed", {gc_dense_packed_numel(N, K)}));
    pack_dense(weight.data, N, K, static_cast<int64_t>(gc_dtype_size(weight.dtype)), packed.data);
    return GC_OK;
  });
}

extern "C" gc_status gc_gpt_decode(const gc_gpt_decode_params* params) {
  constexpr const char* api = "gc_gpt_decode";
  return guarded(api, [&]() -> gc_status {
    if (!params || !params->model) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params or params->model is NULL", api);
    GC_TRY(check_model(api, *params->model));
    GC_TRY(check_sequences(api, *params));
    return gpt_decode_cpu(*params);
  });
}
