// A GPT decoder's forward over a KV cache on the CPU, for generation: embeddings, then per layer
// LN -> QKV -> cached causal attention -> projection -> residual add + LN -> MLP -> residual add,
// then the final LN and the logits of the rows asked for. Activations are float32 rows, one per
// new token ([n_tokens, C], the sequences one after another); the products go through dense_cpu,
// attention and layer norm through the same CPU kernels as gc_attention_decode and
// gc_layer_norm_fwd. The whole call is one OpenMP team: a decode step's ~90 pieces of work each
// end in a barrier, not in a thread team's fork and join.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/cpu_blas.h"
#include "ops/attention/attention.h"
#include "ops/decode/decode.h"
#include "ops/layer_norm/layer_norm.h"

namespace gc {
namespace {

gc_tensor rows_view(float* data, int64_t rows, int64_t cols) {
  const int64_t shape[2] = {rows, cols};
  return gc_make_tensor(data, GC_FLOAT32, GC_CPU, 0, 2, shape);
}

struct Shapes {
  int64_t C, H, D, F, slots, max_len, S, T;
};

// y = LN(x) with the layer's weights (called by every thread of the team); with residual: x +=
// residual first (x keeps the sum). y may be residual itself (read before y is written, row by row).
void layer_norm(float* x, const float* residual, const gc_tensor& weight, const gc_tensor& bias, float eps, float* y,
                std::vector<float>& stats, const Shapes& s) {
  gc_layer_norm_fwd_params p{};
  p.x = rows_view(x, s.T, s.C);
  if (residual) {
    p.residual = rows_view(const_cast<float*>(residual), s.T, s.C);
    p.sum = p.x;
  }
  p.weight = weight;
  p.bias = bias;
  p.y = rows_view(y, s.T, s.C);
  const int64_t n[1] = {s.T};
  p.mean = gc_make_tensor(stats.data(), GC_FLOAT32, GC_CPU, 0, 1, n);
  p.rstd = gc_make_tensor(stats.data() + s.T, GC_FLOAT32, GC_CPU, 0, 1, n);
  p.eps = eps;
  layer_norm_fwd_team(p, s.T, s.C);
}

// Asks for the cache lines that this layer's new keys and values will be written to (this thread's
// share of them), before the QKV product streams its weight: lines last written a step ago are
// no longer cached, and writing them waited on the memory (~6 us a layer of a GPT-2 batch-1 step).
void prefetch_new_rows(const gc_gpt_decode_params& p, int64_t layer, const Shapes& s) {
  const int32_t* slot = static_cast<const int32_t*>(p.seq_slot.data);
  const int32_t* start = static_cast<const int32_t*>(p.seq_start.data);
  const int32_t* len = static_cast<const int32_t*>(p.seq_len.data);
  const int64_t slot_size = s.H * s.max_len * s.D, pairs = s.S * s.H;
  const int64_t threads = omp_get_num_threads(), me = omp_get_thread_num();
  for (int64_t pair = pairs * me / threads; pair < pairs * (me + 1) / threads; ++pair) {
    const int64_t i = pair / s.H, h = pair % s.H;
    const int64_t at = (layer * s.slots + slot[i]) * slot_size + (h * s.max_len + start[i]) * s.D;
    const char* k = reinterpret_cast<const char*>(static_cast<float*>(p.k_cache.data) + at);
    const char* v = reinterpret_cast<const char*>(static_cast<float*>(p.v_cache.data) + at);
    for (int64_t b = 0; b < len[i] * s.D * static_cast<int64_t>(sizeof(float)); b += 64) {
      __builtin_prefetch(k + b, 1, 3);
      __builtin_prefetch(v + b, 1, 3);
    }
  }
}

// Every head of every sequence shared out over the team (called by every thread): its new keys and
// values written into its cache slot, then its queries over the slot's positions up to their own,
// read from and written to the activation rows in place (qkv's rows hold q, k, v side by side).
void attend(const gc_gpt_decode_params& p, int64_t layer, const float* qkv, float* out, const Shapes& s,
            const std::vector<int64_t>& first_row, std::vector<CachedHead>& heads) {
  const int32_t* slot = static_cast<const int32_t*>(p.seq_slot.data);
  const int32_t* start = static_cast<const int32_t*>(p.seq_start.data);
  const int32_t* len = static_cast<const int32_t*>(p.seq_len.data);
  const int64_t C = s.C, D = s.D, H = s.H, slot_size = H * s.max_len * D;
  float* k_layer = static_cast<float*>(p.k_cache.data) + layer * s.slots * slot_size;
  float* v_layer = static_cast<float*>(p.v_cache.data) + layer * s.slots * slot_size;
  for (int64_t i = 0; i < s.S; ++i)  // every thread its own copy (heads is thread-private): no barrier
    for (int64_t h = 0; h < H; ++h) {
      const float* row = qkv + first_row[i] * 3 * C + h * D;
      const int64_t cache = slot[i] * slot_size + h * s.max_len * D;
      heads[i * H + h] = CachedHead{row,       k_layer + cache, v_layer + cache, out + first_row[i] * C + h * D,
                                    len[i],    start[i] + len[i], 3 * C,          C,
                                    row + C,   row + 2 * C,       3 * C};
    }
  attention_cached_heads_team(heads.data(), s.S * H, D, 1.f / std::sqrt(static_cast<float>(D)), true);
}

}  // namespace

gc_status gpt_decode_cpu(const gc_gpt_decode_params& p) {
  const gc_gpt_model& m = *p.model;
  Shapes s{};
  s.C = m.wte.shape[1];
  s.H = m.n_head;
  s.D = s.C / s.H;
  s.F = m.layers[0].mlp_fc.weight.shape[0];
  s.slots = p.k_cache.shape[1];
  s.max_len = p.k_cache.shape[3];
  s.S = p.seq_slot.shape[0];
  s.T = p.tokens.shape[0];
  const int32_t* tokens = static_cast<const int32_t*>(p.tokens.data);
  const int32_t* start = static_cast<const int32_t*>(p.seq_start.data);
  const int32_t* len = static_cast<const int32_t*>(p.seq_len.data);
  const float* wte = static_cast<const float*>(m.wte.data);
  const float* wpe = static_cast<const float*>(m.wpe.data);

  // Row r of the activations is token t of sequence i, r = first_row[i] + t (first_row[S] = T).
  std::vector<int64_t> first_row(s.S + 1, 0), position(s.T);
  for (int64_t i = 0; i < s.S; ++i) {
    first_row[i + 1] = first_row[i] + len[i];
    for (int64_t t = 0; t < len[i]; ++t) position[first_row[i] + t] = start[i] + t;
  }
  std::vector<float> x(s.T * s.C), y(s.T * s.C), qkv(s.T * 3 * s.C), hidden(s.T * s.F), stats(2 * s.T);
  std::vector<float> last(s.S * s.C);
  float* logits = static_cast<float*>(p.logits.data);
  DenseWeight head = dense_weight(m.lm_head);
  head.N = m.vocab_size;  // the padding rows past the vocabulary are not logits
  const SerialBlas serial_blas;

#pragma omp parallel
  {
    std::vector<CachedHead> heads(s.S * s.H);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < s.T; ++r) {
      const float* te = wte + tokens[r] * s.C;
      const float* pe = wpe + position[r] * s.C;
      for (int64_t c = 0; c < s.C; ++c) x[r * s.C + c] = te[c] + pe[c];
    }
    layer_norm(x.data(), nullptr, m.layers[0].ln_1_weight, m.layers[0].ln_1_bias, m.layer_norm_eps, y.data(), stats,
               s);
    for (int64_t l = 0; l < m.n_layer; ++l) {
      const gc_gpt_layer& layer = m.layers[l];
      prefetch_new_rows(p, l, s);
      dense_team(dense_weight(layer.attn_qkv), y.data(), s.T, qkv.data(), 3 * s.C, false);
      attend(p, l, qkv.data(), y.data(), s, first_row, heads);
      // y: attention heads -> projection (into the free qkv buffer) -> x += it, y = LN2(x)
      dense_team(dense_weight(layer.attn_proj), y.data(), s.T, qkv.data(), s.C, false);
      layer_norm(x.data(), qkv.data(), layer.ln_2_weight, layer.ln_2_bias, m.layer_norm_eps, y.data(), stats, s);
      dense_team(dense_weight(layer.mlp_fc), y.data(), s.T, hidden.data(), s.F, true);
      dense_team(dense_weight(layer.mlp_proj), hidden.data(), s.T, qkv.data(), s.C, false);
      // x += MLP out; y = the next layer's LN1 of it, or the final LN
      const bool final = l + 1 == m.n_layer;
      const gc_tensor& w = final ? m.ln_f_weight : m.layers[l + 1].ln_1_weight;
      const gc_tensor& b = final ? m.ln_f_bias : m.layers[l + 1].ln_1_bias;
      layer_norm(x.data(), qkv.data(), w, b, m.layer_norm_eps, y.data(), stats, s);
    }
    if (p.every_position) {
      dense_team(head, y.data(), s.T, logits, m.vocab_size, false);
    } else {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < s.S; ++i)  // each sequence's last new token
        std::memcpy(last.data() + i * s.C, y.data() + (first_row[i + 1] - 1) * s.C, s.C * sizeof(float));
      dense_team(head, last.data(), s.S, logits, m.vocab_size, false);
    }
  }
  return GC_OK;
}

}  // namespace gc
