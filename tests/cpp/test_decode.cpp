// gc_dense_fwd and gc_gpt_decode against hand-computed values, and their argument checks.
#include <cstdint>
#include <vector>

#include "check.h"

namespace {

gc_tensor view(void* p, int32_t dtype, std::vector<int64_t> shape) {
  return gc_make_tensor(p, dtype, GC_CPU, 0, static_cast<int32_t>(shape.size()), shape.data());
}

// x [3, 3] times w = scale * q [2, 3] (int8) or w (bfloat16) plus bias:
//   q = [[1, -2, 3], [127, 0, -127]], scale = [0.5, 0.01], bias = [1, 0], x = [[1, 1, 1], [2, 0, -2], [3, 0, 1]].
// The int8 products take each x row rounded to int16 steps of max|x| / 32767: exact for the first two
// rows; in the third, 1 becomes 10922 steps of 3 / 32767 (round(32767 / 3)).
TEST(dense_int8_and_bfloat16_by_hand) {
  std::vector<int8_t> q{1, -2, 3, 127, 0, -127};
  std::vector<float> scale{0.5f, 0.01f}, bias{1, 0}, x{1, 1, 1, 2, 0, -2, 3, 0, 1}, y(6);
  gc_dense d{view(q.data(), GC_INT8, {2, 3}), view(scale.data(), GC_FLOAT32, {2}), view(bias.data(), GC_FLOAT32, {2})};
  CHECK(gc_dense_fwd(&d, view(x.data(), GC_FLOAT32, {3, 3}), view(y.data(), GC_FLOAT32, {3, 2})) == GC_OK);
  const double third = 10922.0 * 3 / 32767;  // 1 as rounded, 0.99996948...
  const double want[6] = {0.5 * 2 + 1,  0, 0.5 * -4 + 1, 0.01 * 508, 0.5 * (3 + 3 * third) + 1,
                          0.01 * (381 - 127 * third)};
  for (int i = 0; i < 6; ++i) CHECK_NEAR(y[i], want[i], 1e-6);

  // bfloat16 [[1, -2, 0.5], [0.25, 4, -1]] (bit patterns), no bias: x as it is (float32)
  std::vector<uint16_t> w{0x3F80, 0xC000, 0x3F00, 0x3E80, 0x4080, 0xBF80};
  gc_dense b{view(w.data(), GC_BFLOAT16, {2, 3}), gc_tensor{}, gc_tensor{}};
  CHECK(gc_dense_fwd(&b, view(x.data(), GC_FLOAT32, {3, 3}), view(y.data(), GC_FLOAT32, {3, 2})) == GC_OK);
  const double want_bf16[6] = {1 - 2 + 0.5, 0.25 + 4 - 1, 2 - 1, 0.5 + 2, 3 + 0.5, 0.75 - 1};
  for (int i = 0; i < 6; ++i) CHECK_NEAR(y[i], want_bf16[i], 1e-6);

  d.scale = gc_tensor{};
  CHECK_FAILS(gc_dense_fwd(&d, view(x.data(), GC_FLOAT32, {3, 3}), view(y.data(), GC_FLOAT32, {3, 2})),
              GC_ERROR_INVALID_ARGUMENT, "int8 weights need one float32 scale per output row");
}

// The same products from packed weights: gc_dense_pack puts (n, k) at ((g * chunks + c) * 4 + r) * 32
// + p (g = n / 4, r = n % 4, c = k / 32, j = k % 32; p = j for int8, 2 (j % 16) + j / 16 for
// bfloat16), zeros elsewhere; x rows of 3 values see the padding as zeros.
TEST(dense_packed_by_hand) {
  CHECK(gc_dense_packed_numel(2, 3) == 4 * 32 && gc_dense_packed_numel(5, 33) == 8 * 64);
  CHECK(gc_dense_packed_numel(-1, 3) == -1);
  std::vector<int8_t> q{1, -2, 3, 127, 0, -127}, qp(128, 99);
  CHECK(gc_dense_pack(view(q.data(), GC_INT8, {2, 3}), view(qp.data(), GC_INT8, {128})) == GC_OK);
  CHECK(qp[0] == 1 && qp[1] == -2 && qp[2] == 3 && qp[32] == 127 && qp[33] == 0 && qp[34] == -127);
  int nonzero = 0;
  for (int i = 0; i < 128; ++i) nonzero += qp[i] != 0;
  CHECK(nonzero == 5);
  std::vector<float> scale{0.5f, 0.01f}, bias{1, 0}, x{1, 1, 1, 2, 0, -2, 3, 0, 1}, y(6);
  gc_dense d{view(qp.data(), GC_INT8, {2, 3}), view(scale.data(), GC_FLOAT32, {2}), view(bias.data(), GC_FLOAT32, {2}),
             GC_DENSE_PACKED};
  CHECK(gc_dense_fwd(&d, view(x.data(), GC_FLOAT32, {3, 3}), view(y.data(), GC_FLOAT32, {3, 2})) == GC_OK);
  const double third = 10922.0 * 3 / 32767;
  const double want[6] = {0.5 * 2 + 1,  0, 0.5 * -4 + 1, 0.01 * 508, 0.5 * (3 + 3 * third) + 1,
                          0.01 * (381 - 127 * third)};
  for (int i = 0; i < 6; ++i) CHECK_NEAR(y[i], want[i], 1e-6);

  // bfloat16 [1, 18] with w[0, k] = k + 1: values 0 and 16 share the first 32 bits, 1 and 17 the next.
  std::vector<uint16_t> w(18), wp(4 * 32, 0xFFFF);
  const uint16_t bits[18] = {0x3F80, 0x4000, 0x4040, 0x4080, 0x40A0, 0x40C0, 0x40E0, 0x4100, 0x4110,
                             0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0x4170, 0x4180, 0x4188, 0x4190};  // 1..18
  for (int k = 0; k < 18; ++k) w[k] = bits[k];
  CHECK(gc_dense_pack(view(w.data(), GC_BFLOAT16, {1, 18}), view(wp.data(), GC_BFLOAT16, {128})) == GC_OK);
  CHECK(wp[0] == bits[0] && wp[1] == bits[16] && wp[2] == bits[1] && wp[3] == bits[17] && wp[4] == bits[2] &&
        wp[5] == 0 && wp[31] == 0 && wp[32] == 0);
  std::vector<float> xb(18, 1.f), yb(1);
  gc_dense b{view(wp.data(), GC_BFLOAT16, {1, 18}), gc_tensor{}, gc_tensor{}, GC_DENSE_PACKED};
  CHECK(gc_dense_fwd(&b, view(xb.data(), GC_FLOAT32, {1, 18}), view(yb.data(), GC_FLOAT32, {1, 1})) == GC_OK);
  CHECK_NEAR(yb[0], 18 * 19 / 2, 1e-5);

  gc_dense f{view(x.data(), GC_FLOAT32, {3, 3}), gc_tensor{}, gc_tensor{}, GC_DENSE_PACKED};
  CHECK_FAILS(gc_dense_fwd(&f, view(x.data(), GC_FLOAT32, {1, 3}), view(y.data(), GC_FLOAT32, {1, 3})),
              GC_ERROR_INVALID_ARGUMENT, "only bfloat16 and int8 weights are packed");
  d.layout = 7;
  CHECK_FAILS(gc_dense_fwd(&d, view(x.data(), GC_FLOAT32, {3, 3}), view(y.data(), GC_FLOAT32, {3, 2})),
              GC_ERROR_INVALID_ARGUMENT, "'dense.layout' is 7");
  CHECK_FAILS(gc_dense_pack(view(q.data(), GC_INT8, {2, 3}), view(qp.data(), GC_INT8, {127})), GC_ERROR_SHAPE,
              "expected [128]");
}

// One layer, C = 32, one head. Every matrix is zero, so each block adds nothing to the residual
// stream and the logits are LN_f(wte[token] + wpe[position]) . wte[v]; the QKV bias makes every key
// k_bias and every value v_bias, which the cache must hold at the new positions.
struct Model {
  static constexpr int64_t C = 32, V = 5, P = 8;
  std::vector<float> wte = std::vector<float>(V * C), wpe = std::vector<float>(P * C), ones = std::vector<float>(C, 1);
  std::vector<float> zeros = std::vector<float>(4 * C * C), qkv_bias = std::vector<float>(3 * C);
  gc_gpt_layer layer{};
  gc_gpt_model m{};
  Model() {
    for (int64_t i = 0; i < V * C; ++i) wte[i] = static_cast<float>((i * 7919) % 13) / 13.f - 0.5f;
    for (int64_t i = 0; i < P * C; ++i) wpe[i] = static_cast<float>((i * 104729) % 11) / 22.f;
    for (int64_t i = 0; i < 3 * C; ++i) qkv_bias[i] = static_cast<float>(i) / 10.f;
    const gc_tensor one = view(ones.data(), GC_FLOAT32, {C});
    layer.ln_1_weight = layer.ln_2_weight = one;
    layer.attn_qkv = gc_dense{view(zeros.data(), GC_FLOAT32, {3 * C, C}), {}, view(qkv_bias.data(), GC_FLOAT32, {3 * C})};
    layer.attn_proj = gc_dense{view(zeros.data(), GC_FLOAT32, {C, C}), {}, {}};
    layer.mlp_fc = gc_dense{view(zeros.data(), GC_FLOAT32, {4 * C, C}), {}, {}};
    layer.mlp_proj = gc_dense{view(zeros.data(), GC_FLOAT32, {C, 4 * C}), {}, {}};
    m = gc_gpt_model{1, 1, V, 1e-5f, view(wte.data(), GC_FLOAT32, {V, C}), view(wpe.data(), GC_FLOAT32, {P, C}),
                     &layer, one, gc_tensor{}, gc_dense{view(wte.data(), GC_FLOAT32, {V, C}), {}, {}}};
  }
  // The logits of token t at position p, in double.
  std::vector<double> logits(int t, int p) const {
    std::vector<double> x(C);
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += x[c] = double(wte[t * C + c]) + wpe[p * C + c];
    mean /= C;
    for (int64_t c = 0; c < C; ++c) var += (x[c] - mean) * (x[c] - mean);
    const double rstd = 1 / std::sqrt(var / C + 1e-5);
    std::vector<double> out(V);
    for (int64_t v = 0; v < V; ++v)
      for (int64_t c = 0; c < C; ++c) out[v] += (x[c] - mean) * rstd * wte[v * C + c];
    return out;
  }
};

TEST(gpt_decode_prefill_and_step_by_hand) {
  Model model;
  const int64_t C = Model::C, V = Model::V, slots = 2, max_len = 6;
  std::vector<float> k(slots * max_len * C), v(k.size()), logits(3 * V);
  // Slot 1: a prefill of tokens [3, 1] at positions 0..1 (every position's logits), then token 4 at 2.
  std::vector<int32_t> tokens{3, 1}, slot{1}, start{0}, len{2};
  gc_gpt_decode_params p{&model.m,
                         view(k.data(), GC_FLOAT32, {1, slots, 1, max_len, C}),
                         view(v.data(), GC_FLOAT32, {1, slots, 1, max_len, C}),
                         view(tokens.data(), GC_INT32, {2}),
                         view(slot.data(), GC_INT32, {1}),
                         view(start.data(), GC_INT32, {1}),
                         view(len.data(), GC_INT32, {1}),
                         view(logits.data(), GC_FLOAT32, {2, V}),
                         1};
  CHECK(gc_gpt_decode(&p) == GC_OK);
  tokens = {4};
  start = {2};
  len = {1};
  p.tokens = view(tokens.data(), GC_INT32, {1});
  p.logits = view(logits.data() + 2 * V, GC_FLOAT32, {1, V});
  p.every_position = 0;
  CHECK(gc_gpt_decode(&p) == GC_OK);
  const int seq[3][2] = {{3, 0}, {1, 1}, {4, 2}};
  for (int i = 0; i < 3; ++i) {
    const std::vector<double> want = model.logits(seq[i][0], seq[i][1]);
    for (int64_t j = 0; j < V; ++j) CHECK_NEAR(logits[i * V + j], want[j], 2e-5);
  }
  for (int64_t pos = 0; pos < max_len; ++pos) {  // slot 1 holds k_bias, v_bias at 0..2; slot 0 untouched
    for (int64_t c = 0; c < C; ++c) {
      CHECK(k[(max_len + pos) * C + c] == (pos < 3 ? model.qkv_bias[C + c] : 0.f));
      CHECK(v[(max_len + pos) * C + c] == (pos < 3 ? model.qkv_bias[2 * C + c] : 0.f));
      CHECK(k[pos * C + c] == 0.f);
    }
  }

  tokens = {int32_t(V)};
  CHECK_FAILS(gc_gpt_decode(&p), GC_ERROR_INVALID_ARGUMENT, "tokens[0] = 5 is outside the vocabulary [0, 5)");
  tokens = {0};
  start = {6};
  CHECK_FAILS(gc_gpt_decode(&p), GC_ERROR_INVALID_ARGUMENT, "positions [6, 7) must be a non-empty range");
  start = {0};
  p.k_cache = view(k.data(), GC_FLOAT32, {1, slots, 1, max_len, C / 2});
  CHECK_FAILS(gc_gpt_decode(&p), GC_ERROR_SHAPE, "'k_cache' has shape [1, 2, 1, 6, 16]");
  model.m.n_head = 2;  // head dim 16: below what the attention kernels take
  CHECK_FAILS(gc_gpt_decode(&p), GC_ERROR_SHAPE, "head dim 16; supported are 32..128");
}

}  // namespace

TEST_MAIN()
