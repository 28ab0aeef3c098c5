// gc_adamw_step on the CPU against a double-precision AdamW written out here, the found_inf
// skip, and the messages for bad input.
#include <cmath>
#include <vector>

#include "check.h"

namespace {

struct Ref {  // torch.optim.AdamW's update, in double
  double p, m, v;
  void step(double g, double lr, double wd, double beta1, double beta2, double eps, int64_t t) {
    p *= 1 - lr * wd;
    m = beta1 * m + (1 - beta1) * g;
    v = beta2 * v + (1 - beta2) * g * g;
    const double denom = std::sqrt(v) / std::sqrt(1 - std::pow(beta2, t)) + eps;
    p -= lr / (1 - std::pow(beta1, t)) * m / denom;
  }
};

gc_adamw_tensor fp32_tensor(float* p, const float* g, float* m, float* v, int64_t n, float lr, float wd, int64_t step) {
  return gc_adamw_tensor{p, g, nullptr, m, v, n, GC_FLOAT32, GC_FLOAT32, lr, wd, step};
}

gc_adamw_params make_params(const gc_adamw_tensor* t, int64_t n, int32_t* found_inf = nullptr, float inv_scale = 1.f) {
  return gc_adamw_params{t, n, GC_CPU, 0, 0.9, 0.999, 1e-8f, inv_scale, found_inf};
}

float bf16_round(float x) {  // round-to-nearest-even to bfloat16, as a float
  uint32_t b;
  std::memcpy(&b, &x, 4);
  b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
  float r;
  std::memcpy(&r, &b, 4);
  return r;
}

}  // namespace

TEST(first_step_by_hand) {
  // p = 1, g = 0.5, lr = 0.1, wd = 0.01, step 1: m = 0.05, v = 2.5e-4, the bias-corrected
  // m / sqrt(v) is 0.05 / 0.1 * sqrt(1e-3) / sqrt(2.5e-4) = 1, so p = 1 * (1 - 1e-3) - 0.1 = 0.899.
  float p = 1.f, g = 0.5f, m = 0.f, v = 0.f;
  const gc_adamw_tensor t = fp32_tensor(&p, &g, &m, &v, 1, 0.1f, 0.01f, 1);
  const gc_adamw_params params = make_params(&t, 1);
  CHECK(gc_adamw_step(&params, nullptr) == GC_OK);
  CHECK_NEAR(p, 0.899, 1e-6);
  CHECK_NEAR(m, 0.05, 1e-8);
  CHECK_NEAR(v, 2.5e-4, 1e-10);
}

TEST(many_tensors_many_steps_vs_double) {
  // Sizes straddle the CPU chunk (32768) so the OpenMP work list has partial chunks.
  const std::vector<int64_t> sizes = {1, 7, 70001, 32768};
  const std::vector<float> lrs = {1e-2f, 3e-3f, 1e-3f, 5e-2f}, wds = {0.f, 0.1f, 0.01f, 0.5f};
  std::vector<std::vector<float>> p, g, m, v;
  std::vector<std::vector<Ref>> ref;
  for (size_t k = 0; k < sizes.size(); ++k) {
    const int64_t n = sizes[k];
    p.emplace_back(n), g.emplace_back(n), m.emplace_back(n, 0.f), v.emplace_back(n, 0.f), ref.emplace_back(n);
    for (int64_t i = 0; i < n; ++i) {
      p[k][i] = std::sin(0.37f * i + k);
      ref[k][i] = Ref{p[k][i], 0, 0};
    }
  }
  for (int64_t step = 1; step <= 5; ++step) {
    std::vector<gc_adamw_tensor> ts;
    for (size_t k = 0; k < sizes.size(); ++k) {
      for (int64_t i = 0; i < sizes[k]; ++i) {
        g[k][i] = std::cos(0.11f * i * step + k) * (1 + k);
        ref[k][i].step(g[k][i], lrs[k], wds[k], 0.9, 0.999, 1e-8, step);
      }
      ts.push_back(fp32_tensor(p[k].data(), g[k].data(), m[k].data(), v[k].data(), sizes[k], lrs[k], wds[k], step));
    }
    const gc_adamw_params params = make_params(ts.data(), static_cast<int64_t>(ts.size()));
    CHECK(gc_adamw_step(&params, nullptr) == GC_OK);
  }
  double worst = 0;
  for (size_t k = 0; k < sizes.size(); ++k)
    for (int64_t i = 0; i < sizes[k]; ++i) {
      worst = std::fmax(worst, std::fabs(p[k][i] - ref[k][i].p));
      worst = std::fmax(worst, std::fabs(m[k][i] - ref[k][i].m));
    }
  CHECK_NEAR(worst, 0.0, 2e-6);
}

TEST(bf16_param_updates_master_and_rounds) {
  const int64_t n = 5;
  std::vector<float> master = {0.3f, -1.7f, 2.5f, 1e-3f, -0.01f}, g = {0.1f, -0.2f, 0.3f, 4.f, -1e-4f};
  std::vector<float> m(n, 0.f), v(n, 0.f);
  std::vector<uint16_t> param(n, 0), grad(n);
  for (int64_t i = 0; i < n; ++i) {
    const float gr = bf16_round(g[i]);
    std::memcpy(&grad[i], reinterpret_cast<const char*>(&gr) + 2, 2);  // the high half of the float
  }
  std::vector<Ref> ref(n);
  for (int64_t i = 0; i < n; ++i) ref[i] = Ref{master[i], 0, 0};
  const gc_adamw_tensor t{param.data(), grad.data(), master.data(), m.data(), v.data(), n, GC_BFLOAT16, GC_BFLOAT16,
                          1e-2f, 0.1f, 1};
  const gc_adamw_params params = make_params(&t, 1);
  CHECK(gc_adamw_step(&params, nullptr) == GC_OK);
  for (int64_t i = 0; i < n; ++i) {
    ref[i].step(bf16_round(g[i]), 1e-2, 0.1, 0.9, 0.999, 1e-8, 1);
    CHECK_NEAR(master[i], ref[i].p, 1e-6);
    uint32_t bits = static_cast<uint32_t>(param[i]) << 16;
    float pf;
    std::memcpy(&pf, &bits, 4);
    CHECK(pf == bf16_round(master[i]));
  }
}

TEST(grad_scale_unscales) {
  float p1 = 0.5f, g1 = 0.25f, m1 = 0.1f, v1 = 0.01f;
  float p2 = 0.5f, g2 = 0.25f * 1024.f, m2 = 0.1f, v2 = 0.01f;
  const gc_adamw_tensor t1 = fp32_tensor(&p1, &g1, &m1, &v1, 1, 1e-2f, 0.1f, 3);
  const gc_adamw_tensor t2 = fp32_tensor(&p2, &g2, &m2, &v2, 1, 1e-2f, 0.1f, 3);
  int32_t found_inf = 0;
  const gc_adamw_params a = make_params(&t1, 1), b = make_params(&t2, 1, &found_inf, 1.f / 1024.f);
  CHECK(gc_adamw_step(&a, nullptr) == GC_OK);
  CHECK(gc_adamw_step(&b, nullptr) == GC_OK);
  CHECK(found_inf == 0);
  CHECK(p1 == p2 && m1 == m2 && v1 == v2);
}

TEST(found_inf_skips_every_tensor) {
  const int64_t n = 40000;  // more than one chunk, the nan in the last one
  std::vector<float> p(n, 1.f), g(n, 0.5f), m(n, 0.f), v(n, 0.f);
  float p0 = 2.f, g0 = 1.f, m0 = 0.f, v0 = 0.f;
  g[n - 1] = NAN;
  const gc_adamw_tensor ts[2] = {fp32_tensor(&p0, &g0, &m0, &v0, 1, 0.1f, 0.f, 1),
                                 fp32_tensor(p.data(), g.data(), m.data(), v.data(), n, 0.1f, 0.f, 1)};
  int32_t found_inf = 0;
  const gc_adamw_params params = make_params(ts, 2, &found_inf);
  CHECK(gc_adamw_step(&params, nullptr) == GC_OK);
  CHECK(found_inf == 1);
  CHECK(p0 == 2.f && m0 == 0.f && v0 == 0.f);
  CHECK(p[0] == 1.f && p[n - 1] == 1.f && m[n - 2] == 0.f && v[n - 1] == 0.f);

  g[n - 1] = INFINITY;  // inf too
  found_inf = 0;
  CHECK(gc_adamw_step(&params, nullptr) == GC_OK);
  CHECK(found_inf == 1 && p0 == 2.f);

  g[n - 1] = 3e38f;  // finite, but inf once unscaled by 10
  found_inf = 0;
  const gc_adamw_params overflow = make_params(ts, 2, &found_inf, 10.f);
  CHECK(gc_adamw_step(&overflow, nullptr) == GC_OK);
  CHECK(found_inf == 1 && p0 == 2.f);

  g[n - 1] = 0.5f;  // all finite, but the flag is already set (e.g. by another rank): still skipped
  CHECK(gc_adamw_step(&params, nullptr) == GC_OK);
  CHECK(found_inf == 1 && p0 == 2.f);

  found_inf = 0;
  CHECK(gc_adamw_step(&params, nullptr) == GC_OK);
  CHECK(found_inf == 0 && p0 != 2.f && p[n - 1] != 1.f);
}

TEST(bad_input) {
  float p = 1.f, g = 1.f, m = 0.f, v = 0.f;
  const gc_adamw_tensor good = fp32_tensor(&p, &g, &m, &v, 1, 1e-3f, 0.f, 1);
  auto call = [&](gc_adamw_tensor t, void (*edit)(gc_adamw_params&) = nullptr) {
    gc_adamw_params params = make_params(&t, 1);
    if (edit) edit(params);
    return gc_adamw_step(&params, nullptr);
  };
  CHECK_FAILS(gc_adamw_step(nullptr, nullptr), GC_ERROR_INVALID_ARGUMENT, "params is NULL");
  CHECK(call(good) == GC_OK && std::strcmp(gc_last_error(), "") == 0);
  const float p_after_good = p;
  CHECK_FAILS(call(good, [](gc_adamw_params& q) { q.num_tensors = -1; }), GC_ERROR_INVALID_ARGUMENT, "num_tensors is -1");
  CHECK_FAILS(call(good, [](gc_adamw_params& q) { q.tensors = nullptr; }), GC_ERROR_INVALID_ARGUMENT, "tensors is NULL");
  CHECK_FAILS(call(good, [](gc_adamw_params& q) { q.beta1 = 1.0; }), GC_ERROR_INVALID_ARGUMENT, "beta1 must be in [0, 1)");
  CHECK_FAILS(call(good, [](gc_adamw_params& q) { q.beta2 = -0.5; }), GC_ERROR_INVALID_ARGUMENT, "beta2 must be in [0, 1)");
  CHECK_FAILS(call(good, [](gc_adamw_params& q) { q.eps = -1.f; }), GC_ERROR_INVALID_ARGUMENT, "eps must be");
  CHECK_FAILS(call(good, [](gc_adamw_params& q) { q.inv_grad_scale = 0.f; }), GC_ERROR_INVALID_ARGUMENT, "inv_grad_scale");
  CHECK_FAILS(call(good, [](gc_adamw_params& q) { q.device_type = 7; }), GC_ERROR_DEVICE, "unknown device type 7");
#ifndef GPTCORE_WITH_CUDA
  CHECK_FAILS(call(good, [](gc_adamw_params& q) { q.device_type = GC_CUDA; }), GC_ERROR_DEVICE, "built without CUDA");
#endif
  gc_adamw_tensor t = good;
  t.numel = -3;
  CHECK_FAILS(call(t), GC_ERROR_SHAPE, "tensors[0].numel is -3");
  t = good;
  t.param_dtype = GC_FLOAT64;
  CHECK_FAILS(call(t), GC_ERROR_DTYPE, "tensors[0].param has dtype float64");
  t = good;
  t.grad_dtype = GC_INT32;
  CHECK_FAILS(call(t), GC_ERROR_DTYPE, "tensors[0].grad has dtype int32");
  t = good;
  t.param_dtype = GC_BFLOAT16;
  CHECK_FAILS(call(t), GC_ERROR_INVALID_ARGUMENT, "needs a float32 master");
  t = good;
  t.master = &m;
  CHECK_FAILS(call(t), GC_ERROR_INVALID_ARGUMENT, "pass master = NULL");
  t = good;
  t.grad = nullptr;
  CHECK_FAILS(call(t), GC_ERROR_INVALID_ARGUMENT, "tensors[0].grad is NULL");
  t = good;
  t.lr = -1.f;
  CHECK_FAILS(call(t), GC_ERROR_INVALID_ARGUMENT, "tensors[0].lr must be");
  t = good;
  t.weight_decay = NAN;
  CHECK_FAILS(call(t), GC_ERROR_INVALID_ARGUMENT, "tensors[0].weight_decay must be");
  t = good;
  t.step = 0;
  CHECK_FAILS(call(t), GC_ERROR_INVALID_ARGUMENT, "tensors[0].step is 0");
  t = gc_adamw_tensor{nullptr, nullptr, nullptr, nullptr, nullptr, 0, GC_FLOAT32, GC_FLOAT32, 1e-3f, 0.f, 1};
  CHECK(call(t) == GC_OK);  // an empty tensor needs no memory
  CHECK(p == p_after_good);  // the failed calls touched nothing
}

TEST_MAIN()
