// gc_adamw_step on the CPU over GPT-2-small-shaped parameters (~124M; argv[1] rescales the
// total): float32 params, float32 params with the loss-scale inf/nan check, and bfloat16
// params with float32 masters. Compare with bench/bench_adamw_torch.py (torch.optim.AdamW).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "bench_util.h"

namespace {

// The parameter tensor sizes of GPT-2 small (vocab 50257, context 1024, 12 layers of 768).
std::vector<int64_t> gpt2_small_sizes() {
  const int64_t C = 768;
  std::vector<int64_t> sizes = {50257 * C, 1024 * C};
  for (int layer = 0; layer < 12; ++layer)
    for (int64_t n : {C, C, C * 3 * C, 3 * C, C * C, C, C, C, C * 4 * C, 4 * C, 4 * C * C, C}) sizes.push_back(n);
  sizes.push_back(C);
  sizes.push_back(C);
  return sizes;
}

float uniform(uint64_t i, uint64_t seed) {  // a hash in [-1, 1): fast to fill 124M values
  uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<float>(x >> 40) * (2.f / 16777216.f) - 1.f;
}

uint16_t to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float from_bf16(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

constexpr double kBeta1 = 0.9, kBeta2 = 0.95, kEps = 1e-8, kLr = 6e-4, kWd = 0.1;

// One step from m = v = 0 in double: the value every element must take on step 1.
double first_step(double p, double g) {
  const double m = (1 - kBeta1) * g, v = (1 - kBeta2) * g * g;
  const double denom = std::sqrt(v) / std::sqrt(1 - kBeta2) + kEps;
  return p * (1 - kLr * kWd) - kLr / (1 - kBeta1) * m / denom;
}

struct Fp32Set {
  std::vector<float> p, g, m, v;
};

// Median seconds of one step over `ts`, with the step counts advancing as in training.
double time_steps(std::vector<gc_adamw_tensor>& ts, const gc_adamw_params& params) {
  int64_t step = 1;
  return bench::median_seconds(
      [&] {
        ++step;
        for (gc_adamw_tensor& t : ts) t.step = step;
        bench::ok(gc_adamw_step(&params, nullptr), "gc_adamw_step");
      },
      1, 7);
}

void run_fp32(const std::vector<int64_t>& sizes, int64_t total, bool scaled) {
  Fp32Set s{std::vector<float>(total), std::vector<float>(total), std::vector<float>(total, 0.f),
            std::vector<float>(total, 0.f)};
  const float scale = 1024.f;
  for (int64_t i = 0; i < total; ++i) {
    s.p[i] = uniform(i, 1);
    s.g[i] = uniform(i, 2) * 0.01f * (scaled ? scale : 1.f);
  }
  std::vector<gc_adamw_tensor> ts;
  int64_t offset = 0;
  for (int64_t n : sizes) {
    ts.push_back(gc_adamw_tensor{s.p.data() + offset, s.g.data() + offset, nullptr, s.m.data() + offset,
                                 s.v.data() + offset, n, GC_FLOAT32, GC_FLOAT32, static_cast<float>(kLr),
                                 n <= 3072 ? 0.f : static_cast<float>(kWd), 1});
    offset += n;
  }
  int32_t found_inf = 0;
  gc_adamw_params params{ts.data(), static_cast<int64_t>(ts.size()), GC_CPU, 0, kBeta1, kBeta2,
                         static_cast<float>(kEps), scaled ? 1.f / scale : 1.f, scaled ? &found_inf : nullptr};
  // Validate step 1 on an element of the embedding (decayed) and the last, in double.
  for (int64_t i : {int64_t{12345}, total - 1}) {
    const double p0 = s.p[i], g0 = s.g[i] / (scaled ? scale : 1.f);
    bench::ok(gc_adamw_step(&params, nullptr), "gc_adamw_step");
    const double want = first_step(p0, g0) + (i == total - 1 ? p0 * kLr * kWd : 0.0);  // the last tensor: no decay
    bench::expect_close(s.p[i], want, 1e-6, "param after step 1");
    std::fill(s.m.begin(), s.m.end(), 0.f);  // restart from m = v = 0 (and the stepped params)
    std::fill(s.v.begin(), s.v.end(), 0.f);
  }
  if (found_inf) {
    std::fprintf(stderr, "validation failed: found_inf set on finite grads\n");
    std::exit(1);
  }
  const double secs = time_steps(ts, params);
  bench::report(scaled ? "adamw fp32 + unscale/inf check" : "adamw fp32", secs,
                static_cast<double>(total) * (scaled ? 32 : 28));
}

void run_bf16_master(const std::vector<int64_t>& sizes, int64_t total) {
  std::vector<uint16_t> p(total), g(total);
  std::vector<float> master(total), m(total, 0.f), v(total, 0.f);
  for (int64_t i = 0; i < total; ++i) {
    p[i] = to_bf16(uniform(i, 1));
    master[i] = from_bf16(p[i]);
    g[i] = to_bf16(uniform(i, 2) * 0.01f);
  }
  std::vector<gc_adamw_tensor> ts;
  int64_t offset = 0;
  for (int64_t n : sizes) {
    ts.push_back(gc_adamw_tensor{p.data() + offset, g.data() + offset, master.data() + offset, m.data() + offset,
                                 v.data() + offset, n, GC_BFLOAT16, GC_BFLOAT16, static_cast<float>(kLr),
                                 static_cast<float>(kWd), 1});
    offset += n;
  }
  const gc_adamw_params params{ts.data(), static_cast<int64_t>(ts.size()), GC_CPU, 0, kBeta1, kBeta2,
                               static_cast<float>(kEps), 1.f, nullptr};
  const int64_t i = total / 2;
  const double p0 = master[i], g0 = from_bf16(g[i]);
  bench::ok(gc_adamw_step(&params, nullptr), "gc_adamw_step");
  bench::expect_close(master[i], first_step(p0, g0), 1e-6, "master after step 1");
  bench::expect_close(from_bf16(p[i]), from_bf16(to_bf16(master[i])), 0, "param = rounded master");
  const double secs = time_steps(ts, params);
  bench::report("adamw bf16 params + fp32 master", secs, static_cast<double>(total) * 28);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> sizes = gpt2_small_sizes();
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  if (argc > 1) {  // rescale every tensor to reach about the requested total
    const double factor = std::atof(argv[1]) / static_cast<double>(total);
    total = 0;
    for (int64_t& n : sizes) total += n = std::max<int64_t>(1, std::llround(n * factor));
  }
  std::printf("AdamW step on the CPU, %zu tensors, %.1fM parameters (bytes moved per element: 28, +4 with the check)\n",
              sizes.size(), total / 1e6);
  run_fp32(sizes, total, false);
  run_fp32(sizes, total, true);
  run_bf16_master(sizes, total);
  return 0;
}
