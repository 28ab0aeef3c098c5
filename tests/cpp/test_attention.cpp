// gc_attention_* through the C API: a hand-computed case, decode against the forward, the
// dropout draws, and the status + message of bad input.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "check.h"

namespace {

constexpr int64_t D = 32;

gc_tensor view4(float* p, int64_t B, int64_t H, int64_t T, int64_t d) {
  const int64_t shape[4] = {B, H, T, d};
  return gc_make_tensor(p, GC_FLOAT32, GC_CPU, 0, 4, shape);
}

// One head, T = 2, D = 32, scale 1: q0 = q1 = e0; k0 = 0, k1 = e0; v0 = 1, v1 = 3 (all d).
// Causal: query 0 sees key 0 only -> out 1, lse 0. Query 1 sees both with scores 0 and 1 ->
// weights 1 / (1 + e) and e / (1 + e), out = (1 + 3e) / (1 + e), lse = log(1 + e).
struct Tiny {
  std::vector<float> q = std::vector<float>(2 * D), k = std::vector<float>(2 * D), v = std::vector<float>(2 * D),
                     out = std::vector<float>(2 * D, -1.f), lse = std::vector<float>(2, -1.f);
  Tiny() {
    q[0] = q[D] = 1.f;
    k[D] = 1.f;
    for (int64_t d = 0; d < D; ++d) v[d] = 1.f, v[D + d] = 3.f;
  }
  gc_attention_fwd_params fwd(int32_t causal) {
    const int64_t lse_shape[3] = {1, 1, 2};
    return {view4(q.data(), 1, 1, 2, D), view4(k.data(), 1, 1, 2, D), view4(v.data(), 1, 1, 2, D),
            view4(out.data(), 1, 1, 2, D), gc_make_tensor(lse.data(), GC_FLOAT32, GC_CPU, 0, 3, lse_shape),
            1.f, causal, 0.f, 0, 0};
  }
};

const double kE = std::exp(1.0);

TEST(forward_hand_computed) {
  Tiny t;
  gc_attention_fwd_params p = t.fwd(1);
  CHECK(gc_attention_fwd(&p, nullptr) == GC_OK);
  for (int64_t d = 0; d < D; ++d) {
    CHECK_NEAR(t.out[d], 1.0, 1e-6);
    CHECK_NEAR(t.out[D + d], (1 + 3 * kE) / (1 + kE), 1e-6);
  }
  CHECK_NEAR(t.lse[0], 0.0, 1e-6);
  CHECK_NEAR(t.lse[1], std::log(1 + kE), 1e-6);

  p = t.fwd(0);  // both queries see both keys
  CHECK(gc_attention_fwd(&p, nullptr) == GC_OK);
  CHECK_NEAR(t.out[0], (1 + 3 * kE) / (1 + kE), 1e-6);
  CHECK_NEAR(t.lse[0], std::log(1 + kE), 1e-6);
}

TEST(backward_hand_computed) {
  // Non-causal, dout = 1 everywhere: out_i = sum_j P_ij v_j, so dv_j = sum_i P_ij * 1 and
  // dq = scale * sum_j P_ij (dout . v_j - dout . out_i) k_j.
  Tiny t;
  gc_attention_fwd_params f = t.fwd(0);
  CHECK(gc_attention_fwd(&f, nullptr) == GC_OK);
  std::vector<float> dout(2 * D, 1.f), dq(2 * D), dk(2 * D), dv(2 * D);
  const gc_attention_bwd_params p{f.q, f.k, f.v, f.out, view4(dout.data(), 1, 1, 2, D), f.lse,
                                  view4(dq.data(), 1, 1, 2, D), view4(dk.data(), 1, 1, 2, D),
                                  view4(dv.data(), 1, 1, 2, D), 1.f, 0, 0.f, 0, 0};
  size_t bytes = 0;
  CHECK(gc_attention_bwd_workspace_size(&p, &bytes) == GC_OK);
  std::vector<unsigned char> workspace(bytes);
  CHECK(gc_attention_bwd(&p, workspace.data(), bytes, nullptr) == GC_OK);
  const double p0 = 1 / (1 + kE), p1 = kE / (1 + kE), o = p0 * D * 1 + p1 * D * 3;  // dout . out
  CHECK_NEAR(dv[0], 2 * p0, 1e-6);
  CHECK_NEAR(dv[D], 2 * p1, 1e-6);
  const double ds1 = p1 * (3.0 * D - o);  // key 1 is e0; key 0 is zero
  CHECK_NEAR(dq[0], ds1, 1e-4);
  CHECK_NEAR(dq[1], 0.0, 1e-6);
  CHECK_NEAR(dk[D], 2 * ds1, 1e-4);  // both queries are e0
  CHECK_FAILS(gc_attention_bwd(&p, workspace.data(), bytes - 4, nullptr), GC_ERROR_WORKSPACE, "ask gc_attention_bwd_workspace_size");
}

TEST(decode_equals_forward_on_the_prefix) {
  // Two sequences, cache of 5 with 4 and 3 valid positions; the last 2 positions are new.
  const int64_t B = 2, H = 1, T_max = 5, T_new = 2;
  std::vector<float> k(B * T_max * D), v(B * T_max * D), q(B * T_new * D), out(B * T_new * D);
  for (size_t i = 0; i < k.size(); ++i) k[i] = std::sin(0.37 * i), v[i] = std::cos(0.11 * i);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(1.3 * i);
  std::vector<int32_t> lens{4, 3};
  const int64_t len_shape[1] = {B};
  const gc_attention_decode_params p{view4(q.data(), B, H, T_new, D), view4(k.data(), B, H, T_max, D),
                                     view4(v.data(), B, H, T_max, D),
                                     gc_make_tensor(lens.data(), GC_INT32, GC_CPU, 0, 1, len_shape),
                                     view4(out.data(), B, H, T_new, D), 0.2f, 1};
  size_t bytes = 1;
  CHECK(gc_attention_decode_workspace_size(&p, &bytes) == GC_OK);
  CHECK(bytes == 0);  // the CPU path needs none
  CHECK(gc_attention_decode(&p, nullptr, 0, nullptr) == GC_OK);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = lens[b];
    std::vector<float> want(T_new * D), lse(T_new);
    const int64_t lse_shape[3] = {1, 1, T_new};
    const gc_attention_fwd_params f{view4(q.data() + b * T_new * D, 1, 1, T_new, D),
                                    view4(k.data() + b * T_max * D, 1, 1, L, D),
                                    view4(v.data() + b * T_max * D, 1, 1, L, D), view4(want.data(), 1, 1, T_new, D),
                                    gc_make_tensor(lse.data(), GC_FLOAT32, GC_CPU, 0, 3, lse_shape), 0.2f, 1, 0.f, 0, 0};
    CHECK(gc_attention_fwd(&f, nullptr) == GC_OK);
    for (int64_t i = 0; i < T_new * D; ++i) CHECK_NEAR(out[b * T_new * D + i], want[i], 1e-6);
  }
  lens[1] = 1;  // shorter than T_new
  CHECK_FAILS(gc_attention_decode(&p, nullptr, 0, nullptr), GC_ERROR_INVALID_ARGUMENT, "'cache_lens'[1] = 1 is outside");
}

TEST(backward_without_queries_writes_zero_key_gradients) {
  // T_q = 0, T_k = 3: no query sees a key, so dk = dv = 0, written over whatever was there.
  const int64_t T_k = 3;
  float empty = 0.f;  // any non-NULL address stands for the empty q-shaped tensors
  std::vector<float> k(T_k * D, 1.f), v(T_k * D, 2.f), dk(T_k * D, NAN), dv(T_k * D, NAN);
  const int64_t lse_shape[3] = {1, 1, 0};
  const gc_tensor q0 = view4(&empty, 1, 1, 0, D);
  for (int32_t causal : {0, 1}) {
    std::fill(dk.begin(), dk.end(), NAN);
    std::fill(dv.begin(), dv.end(), NAN);
    const gc_attention_bwd_params p{q0, view4(k.data(), 1, 1, T_k, D), view4(v.data(), 1, 1, T_k, D), q0, q0,
                                    gc_make_tensor(&empty, GC_FLOAT32, GC_CPU, 0, 3, lse_shape), q0,
                                    view4(dk.data(), 1, 1, T_k, D), view4(dv.data(), 1, 1, T_k, D), 1.f, causal,
                                    0.1f, 1, 2};
    size_t bytes = 1;
    CHECK(gc_attention_bwd_workspace_size(&p, &bytes) == GC_OK);
    std::vector<unsigned char> workspace(bytes + 1);
    CHECK(gc_attention_bwd(&p, workspace.data(), bytes, nullptr) == GC_OK);
    for (int64_t i = 0; i < T_k * D; ++i) {
      CHECK(dk[i] == 0.f);
      CHECK(dv[i] == 0.f);
    }
  }
}

TEST(dropout_uniform_is_deterministic_and_in_range) {
  double sum = 0;
  for (uint64_t n = 0; n < 4096; ++n) {
    const float u = gc_dropout_uniform(42, 7, n);
    CHECK(u >= 0.f && u < 1.f);
    CHECK(u == gc_dropout_uniform(42, 7, n));
    sum += u;
  }
  CHECK_NEAR(sum / 4096, 0.5, 0.02);
  CHECK(gc_dropout_uniform(42, 7, 0) != gc_dropout_uniform(43, 7, 0));
  CHECK(gc_dropout_uniform(42, 7, 4) == gc_dropout_uniform(42, 8, 0));  // offset counts groups of four
}

// Packed documents: a row of two documents [0, 3) and [3, 5) (plus an empty one) gives, for each
// document, the plain causal forward and backward of that document alone.
TEST(documents_equal_separate_calls) {
  const int64_t T = 5, n = 4;
  std::vector<float> q(T * D), k(T * D), v(T * D), dout(T * D), out(T * D), lse(T), dq(T * D), dk(T * D), dv(T * D);
  for (int64_t i = 0; i < T * D; ++i)
    q[i] = std::sin(0.7 * i), k[i] = std::cos(0.3 * i), v[i] = std::sin(0.2 * i + 1), dout[i] = std::cos(0.9 * i);
  std::vector<int32_t> cu{0, 3, 3, 5};
  const int64_t cu_shape[2] = {1, n}, lse_shape[3] = {1, 1, T};
  gc_attention_fwd_params f{view4(q.data(), 1, 1, T, D),
                            view4(k.data(), 1, 1, T, D),
                            view4(v.data(), 1, 1, T, D),
                            view4(out.data(), 1, 1, T, D),
                            gc_make_tensor(lse.data(), GC_FLOAT32, GC_CPU, 0, 3, lse_shape),
                            0.3f,
                            1,
                            0.f,
                            0,
                            0,
                            gc_make_tensor(cu.data(), GC_INT32, GC_CPU, 0, 2, cu_shape)};
  CHECK(gc_attention_fwd(&f, nullptr) == GC_OK);
  const gc_attention_bwd_params b{f.q, f.k, f.v, f.out, view4(dout.data(), 1, 1, T, D), f.lse,
                                  view4(dq.data(), 1, 1, T, D), view4(dk.data(), 1, 1, T, D),
                                  view4(dv.data(), 1, 1, T, D), 0.3f, 1, 0.f, 0, 0, f.cu_seqlens};
  size_t bytes = 0;
  CHECK(gc_attention_bwd_workspace_size(&b, &bytes) == GC_OK);
  std::vector<unsigned char> workspace(bytes);
  CHECK(gc_attention_bwd(&b, workspace.data(), bytes, nullptr) == GC_OK);
  for (auto [begin, len] : {std::pair<int64_t, int64_t>{0, 3}, {3, 2}}) {
    const int64_t o = begin * D, part_lse_shape[3] = {1, 1, len};
    std::vector<float> out1(len * D), lse1(len), dq1(len * D), dk1(len * D), dv1(len * D);
    const gc_attention_fwd_params f1{view4(q.data() + o, 1, 1, len, D), view4(k.data() + o, 1, 1, len, D),
                                     view4(v.data() + o, 1, 1, len, D), view4(out1.data(), 1, 1, len, D),
                                     gc_make_tensor(lse1.data(), GC_FLOAT32, GC_CPU, 0, 3, part_lse_shape),
                                     0.3f, 1, 0.f, 0, 0, gc_tensor{}};
    CHECK(gc_attention_fwd(&f1, nullptr) == GC_OK);
    const gc_attention_bwd_params b1{f1.q, f1.k, f1.v, f1.out, view4(dout.data() + o, 1, 1, len, D), f1.lse,
                                     view4(dq1.data(), 1, 1, len, D), view4(dk1.data(), 1, 1, len, D),
                                     view4(dv1.data(), 1, 1, len, D), 0.3f, 1, 0.f, 0, 0, gc_tensor{}};
    CHECK(gc_attention_bwd_workspace_size(&b1, &bytes) == GC_OK);
    std::vector<unsigned char> workspace1(bytes);
    CHECK(gc_attention_bwd(&b1, workspace1.data(), bytes, nullptr) == GC_OK);
    for (int64_t i = 0; i < len; ++i) CHECK_NEAR(lse[begin + i], lse1[i], 1e-6);
    for (int64_t e = 0; e < len * D; ++e) {
      CHECK_NEAR(out[o + e], out1[e], 1e-6);
      CHECK_NEAR(dq[o + e], dq1[e], 1e-5);
      CHECK_NEAR(dk[o + e], dk1[e], 1e-5);
      CHECK_NEAR(dv[o + e], dv1[e], 1e-5);
    }
  }

  cu = {0, 3, 2, 5};  // falls
  CHECK_FAILS(gc_attention_fwd(&f, nullptr), GC_ERROR_INVALID_ARGUMENT, "'cu_seqlens' row 0 must rise from 0 to T = 5");
  cu = {0, 3, 3, 4};  // stops short of T
  CHECK_FAILS(gc_attention_bwd(&b, workspace.data(), workspace.size(), nullptr), GC_ERROR_INVALID_ARGUMENT,
              "must rise from 0 to T");
  cu = {0, 3, 3, 5};
  f.cu_seqlens.dtype = GC_INT64;
  CHECK_FAILS(gc_attention_fwd(&f, nullptr), GC_ERROR_DTYPE, "'cu_seqlens' has dtype int64");
  const int64_t wrong_shape[2] = {2, 2};
  f.cu_seqlens = gc_make_tensor(cu.data(), GC_INT32, GC_CPU, 0, 2, wrong_shape);
  CHECK_FAILS(gc_attention_fwd(&f, nullptr), GC_ERROR_SHAPE, "'cu_seqlens' has shape [2, 2]; expected [B = 1");
  f.cu_seqlens = b.cu_seqlens;
  f.causal = 0;
  CHECK_FAILS(gc_attention_fwd(&f, nullptr), GC_ERROR_INVALID_ARGUMENT, "needs causal attention with T_q == T_k");
}

TEST(bad_input) {
  Tiny t;
  gc_attention_fwd_params p = t.fwd(1);
  p.q = view4(t.q.data(), 1, 1, 4, 16);
  CHECK_FAILS(gc_attention_fwd(&p, nullptr), GC_ERROR_SHAPE, "'q' has head dim D = 16");
  p = t.fwd(1);
  p.dropout_p = 1.f;
  CHECK_FAILS(gc_attention_fwd(&p, nullptr), GC_ERROR_INVALID_ARGUMENT, "dropout_p must be in [0, 1)");
  p = t.fwd(1);
  p.k = view4(t.k.data(), 1, 1, 1, D);
  p.v = view4(t.v.data(), 1, 1, 1, D);
  CHECK_FAILS(gc_attention_fwd(&p, nullptr), GC_ERROR_SHAPE, "causal attention needs T_q <= T_k");
  p = t.fwd(1);
  p.v.dtype = GC_FLOAT16;
  CHECK_FAILS(gc_attention_fwd(&p, nullptr), GC_ERROR_DTYPE, "'v' has dtype float16 but 'k' has float32");
  p = t.fwd(1);
  p.lse.shape[2] = 3;
  CHECK_FAILS(gc_attention_fwd(&p, nullptr), GC_ERROR_SHAPE, "'lse' has shape [1, 1, 3]; expected [1, 1, 2]");
  CHECK_FAILS(gc_attention_fwd(nullptr, nullptr), GC_ERROR_INVALID_ARGUMENT, "params is NULL");
}

}  // namespace

TEST_MAIN()
