// gc_cross_entropy_* through the C API: hand-computed values, ignore_index, vocab shards,
// in-place backward, and the status + message of each kind of bad input.
#include <cmath>
#include <cstdint>
#include <vector>

#include "check.h"

namespace {

constexpr int64_t kIgnore = -100;

// Row 0: [1, 2, 3], target 2. lse = 3 + log(1 + e^-1 + e^-2) = 3.40760596.
// Row 1: [0, 0, 0], target 0. lse = log 3.
// Row 2: [5, -5, 0], ignored.
struct Batch {
  std::vector<float> logits{1, 2, 3, 0, 0, 0, 5, -5, 0};
  std::vector<int64_t> target{2, 0, kIgnore};
  std::vector<float> lse = std::vector<float>(3, -1.f), loss = std::vector<float>(3, -1.f),
                     target_logit = std::vector<float>(3, -1.f);
  std::vector<float> dloss{1.f, 0.5f, 1.f}, dlogits = std::vector<float>(9, -1.f);

  gc_cross_entropy_fwd_params fwd() {
    return {test::cpu(logits.data(), {3, 3}), test::cpu(target.data(), {3}), test::cpu(lse.data(), {3}),
            test::cpu(loss.data(), {3}),      test::cpu(target_logit.data(), {3}), 0, 3, kIgnore};
  }
  gc_cross_entropy_bwd_params bwd() {
    return {test::cpu(logits.data(), {3, 3}), test::cpu(target.data(), {3}),      test::cpu(lse.data(), {3}),
            test::cpu(dloss.data(), {3}),     test::cpu(dlogits.data(), {3, 3}), 0, 3, kIgnore};
  }
};

const double kLse0 = 3.40760596444438, kLse1 = std::log(3.0);
const double kSoftmax0[3] = {0.0900305731703805, 0.244728471054797, 0.665240955774822};

TEST(forward_hand_computed) {
  Batch b;
  const gc_cross_entropy_fwd_params p = b.fwd();
  CHECK(gc_cross_entropy_fwd(&p, nullptr) == GC_OK);
  CHECK_NEAR(b.lse[0], kLse0, 1e-6);
  CHECK_NEAR(b.loss[0], kLse0 - 3, 1e-6);
  CHECK_NEAR(b.target_logit[0], 3, 0);
  CHECK_NEAR(b.lse[1], kLse1, 1e-6);
  CHECK_NEAR(b.loss[1], kLse1, 1e-6);
  CHECK_NEAR(b.lse[2], 5 + std::log(1 + std::exp(-10.0) + std::exp(-5.0)), 1e-6);  // written for ignored rows too
  CHECK_NEAR(b.loss[2], 0, 0);
  CHECK_NEAR(b.target_logit[2], 0, 0);
}

TEST(backward_hand_computed_and_in_place) {
  Batch b;
  const gc_cross_entropy_fwd_params f = b.fwd();
  CHECK(gc_cross_entropy_fwd(&f, nullptr) == GC_OK);
  const gc_cross_entropy_bwd_params p = b.bwd();
  CHECK(gc_cross_entropy_bwd(&p, nullptr) == GC_OK);
  for (int j = 0; j < 3; ++j) CHECK_NEAR(b.dlogits[j], kSoftmax0[j] - (j == 2), 1e-6);
  for (int j = 0; j < 3; ++j) CHECK_NEAR(b.dlogits[3 + j], 0.5 * (1.0 / 3 - (j == 0)), 1e-6);
  for (int j = 0; j < 3; ++j) CHECK_NEAR(b.dlogits[6 + j], 0, 0);

  gc_cross_entropy_bwd_params in_place = b.bwd();
  in_place.dlogits = in_place.logits;
  CHECK(gc_cross_entropy_bwd(&in_place, nullptr) == GC_OK);
  for (int i = 0; i < 9; ++i) CHECK_NEAR(b.logits[i], b.dlogits[i], 0);
}

TEST(int32_targets) {
  Batch b;
  std::vector<int32_t> t32{2, 0, static_cast<int32_t>(kIgnore)};
  gc_cross_entropy_fwd_params p = b.fwd();
  p.target = gc_make_tensor(t32.data(), GC_INT32, GC_CPU, 0, 1, p.target.shape);
  CHECK(gc_cross_entropy_fwd(&p, nullptr) == GC_OK);
  CHECK_NEAR(b.loss[0], kLse0 - 3, 1e-6);
  CHECK_NEAR(b.loss[2], 0, 0);
}

// Row 0 split into shards [1] and [2, 3]: the combined lse and target logit give the full loss.
TEST(vocab_shards_combine) {
  std::vector<float> left{1}, right{2, 3}, lse(2), loss(2), tl(2);
  std::vector<int64_t> target{2};
  gc_cross_entropy_fwd_params p{test::cpu(left.data(), {1, 1}), test::cpu(target.data(), {1}),
                                test::cpu(&lse[0], {1}),        test::cpu(&loss[0], {1}),
                                test::cpu(&tl[0], {1}),         0,
                                3,                              kIgnore};
  CHECK(gc_cross_entropy_fwd(&p, nullptr) == GC_OK);
  p.logits = test::cpu(right.data(), {1, 2});
  p.lse = test::cpu(&lse[1], {1});
  p.loss = test::cpu(&loss[1], {1});
  p.target_logit = test::cpu(&tl[1], {1});
  p.vocab_start = 1;
  CHECK(gc_cross_entropy_fwd(&p, nullptr) == GC_OK);
  CHECK_NEAR(tl[0], 0, 0);
  CHECK_NEAR(tl[1], 3, 0);
  const double combined = std::log(std::exp(double(lse[0])) + std::exp(double(lse[1])));
  CHECK_NEAR(combined, kLse0, 1e-6);
  CHECK_NEAR(combined - (tl[0] + tl[1]), kLse0 - 3, 1e-6);

  float full_lse = static_cast<float>(combined), dloss = 1.f;
  std::vector<float> dright(2);
  const gc_cross_entropy_bwd_params g{test::cpu(right.data(), {1, 2}), test::cpu(target.data(), {1}),
                                      test::cpu(&full_lse, {1}),        test::cpu(&dloss, {1}),
                                      test::cpu(dright.data(), {1, 2}), 1,
                                      3,                                kIgnore};
  CHECK(gc_cross_entropy_bwd(&g, nullptr) == GC_OK);
  CHECK_NEAR(dright[0], kSoftmax0[1], 1e-6);
  CHECK_NEAR(dright[1], kSoftmax0[2] - 1, 1e-6);
}

TEST(empty_batch_is_ok) {
  float dummy = 0;
  int64_t t = 0;
  const gc_cross_entropy_fwd_params p{test::cpu(&dummy, {0, 5}), test::cpu(&t, {0}), test::cpu(&dummy, {0}),
                                      test::cpu(&dummy, {0}), gc_tensor{}, 0, 5, kIgnore};
  CHECK(gc_cross_entropy_fwd(&p, nullptr) == GC_OK);
}

TEST(bad_forward_input) {
  Batch b;
  CHECK_FAILS(gc_cross_entropy_fwd(nullptr, nullptr), GC_ERROR_INVALID_ARGUMENT, "params is NULL");

  gc_cross_entropy_fwd_params p = b.fwd();
  p.logits.dtype = GC_BFLOAT16;
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_DTYPE, "'logits' has dtype bfloat16");

  p = b.fwd();
  p.logits = test::cpu(b.logits.data(), {9});
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_SHAPE, "'logits' has shape [9]; expected [N, V]");

  p = b.fwd();
  p.logits.strides[0] = 4;  // rows padded: not contiguous
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_LAYOUT, "'logits'");

  p = b.fwd();
  p.target.dtype = GC_FLOAT32;
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_DTYPE, "'target' has dtype float32");

  p = b.fwd();
  p.target = test::cpu(b.target.data(), {2});
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_SHAPE, "'target' has shape [2]; expected [3]");

  p = b.fwd();
  p.loss = test::cpu(b.loss.data(), {3, 1});
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_SHAPE, "'loss'");

  p = b.fwd();
  p.lse.data = nullptr;
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_INVALID_ARGUMENT, "'lse' is required");

  p = b.fwd();
  p.target_logit.device_type = GC_CUDA;
#ifndef GPTCORE_WITH_CUDA
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_DEVICE, "'target_logit' is a CUDA tensor");
#else
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_DEVICE, "'target_logit' is on cuda:0");
#endif

  p = b.fwd();
  p.vocab_start = 1;
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_INVALID_ARGUMENT, "do not fit in vocab_total = 3");
  p.vocab_start = -1;
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_INVALID_ARGUMENT, "vocab_start must be >= 0");

  p = b.fwd();
  b.target[1] = 3;
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_INVALID_ARGUMENT, "'target'[1] = 3 is outside [0, vocab_total = 3)");
  b.target[1] = -1;
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_INVALID_ARGUMENT, "'target'[1] = -1");
  CHECK(gc_cross_entropy_fwd(&p, nullptr) != GC_OK && b.loss[0] == -1.f);  // nothing written on failure
  p.ignore_index = -1;  // -1 now marks ignored rows, and -100 is a bad target
  CHECK_FAILS(gc_cross_entropy_fwd(&p, nullptr), GC_ERROR_INVALID_ARGUMENT, "'target'[2] = -100");
  b.target[2] = -1;
  CHECK(gc_cross_entropy_fwd(&p, nullptr) == GC_OK);
  CHECK(gc_last_error()[0] == '\0');
}

TEST(bad_backward_input) {
  Batch b;
  gc_cross_entropy_bwd_params p = b.bwd();
  p.dlogits = test::cpu(b.dlogits.data(), {3, 2});
  CHECK_FAILS(gc_cross_entropy_bwd(&p, nullptr), GC_ERROR_SHAPE, "'dlogits' has shape [3, 2] but 'logits' has shape [3, 3]");

  p = b.bwd();
  p.dloss.dtype = GC_FLOAT16;
  CHECK_FAILS(gc_cross_entropy_bwd(&p, nullptr), GC_ERROR_DTYPE, "'dloss' has dtype float16");

  p = b.bwd();
  p.lse = test::cpu(b.lse.data(), {2});
  CHECK_FAILS(gc_cross_entropy_bwd(&p, nullptr), GC_ERROR_SHAPE, "'lse'");

  p = b.bwd();
  b.target[0] = 7;
  CHECK_FAILS(gc_cross_entropy_bwd(&p, nullptr), GC_ERROR_INVALID_ARGUMENT, "'target'[0] = 7");
}

}  // namespace

TEST_MAIN()
