// CPU microbenchmark of gc_linear_fwd (bias, bias + GELU) and gc_linear_bwd (GELU) at GPT-2's
// MLP up-projection. Usage: bench_linear [M=8192] [K=768] [N=3072] [reps=5]
#include <cmath>
#include <cstdlib>

#include "bench_util.h"

namespace {

gc_tensor view(float* p, int64_t a, int64_t b = -1) {
  const int64_t shape[2] = {a, b};
  return gc_make_tensor(p, GC_FLOAT32, GC_CPU, 0, b < 0 ? 1 : 2, shape);
}

double gelu(double v) { return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); }

void report(const char* name, double seconds, double flops) {
  std::printf("%-28s median %9.3f ms  %8.1f GFLOP/s\n", name, seconds * 1e3, flops / seconds / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t M = argc > 1 ? std::atoll(argv[1]) : 8192, K = argc > 2 ? std::atoll(argv[2]) : 768;
  const int64_t N = argc > 3 ? std::atoll(argv[3]) : 3072;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 5;
  std::vector<float> x = bench::randn(M * K, 1), w = bench::randn(N * K, 2), b = bench::randn(N, 3);
  std::vector<float> dy = bench::randn(M * N, 4);
  for (float& v : w) v /= std::sqrt(static_cast<float>(K));
  std::vector<float> y(M * N), pre(M * N), dx(M * K), dw(N * K), db(N);

  gc_linear_fwd_params f{};
  f.x = view(x.data(), M, K);
  f.weight = view(w.data(), N, K);
  f.bias = view(b.data(), N);
  f.y = view(y.data(), M, N);
  f.pre_act = view(pre.data(), M, N);
  f.activation = GC_ACTIVATION_GELU_TANH;
  bench::ok(gc_linear_fwd(&f, nullptr, 0, nullptr), "gc_linear_fwd");
  for (int64_t r : {int64_t{0}, M / 2, M - 1})
    for (int64_t n : {int64_t{0}, N - 1}) {
      double acc = b[n];
      for (int64_t k = 0; k < K; ++k) acc += double(x[r * K + k]) * w[n * K + k];
      bench::expect_close(pre[r * N + n], acc, 1e-4, "pre_act");
      bench::expect_close(y[r * N + n], gelu(acc), 1e-4, "y");
    }

  gc_linear_bwd_params g{};
  g.dy = view(dy.data(), M, N);
  g.x = f.x;
  g.weight = f.weight;
  g.pre_act = f.pre_act;
  g.dx = view(dx.data(), M, K);
  g.dweight = view(dw.data(), N, K);
  g.dbias = view(db.data(), N);
  g.activation = GC_ACTIVATION_GELU_TANH;
  size_t bytes = 0;
  bench::ok(gc_linear_bwd_workspace_size(&g, &bytes), "workspace size");
  std::vector<char> ws(bytes);
  bench::ok(gc_linear_bwd(&g, ws.data(), bytes, nullptr), "gc_linear_bwd");
  auto dpre = [&](int64_t r, int64_t n) {
    const double v = pre[r * N + n], s = std::sqrt(2 / M_PI), t = std::tanh(s * (v + 0.044715 * v * v * v));
    return dy[r * N + n] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * s * (1 + 3 * 0.044715 * v * v));
  };
  double db0 = 0, dw0 = 0, dx0 = 0;
  for (int64_t r = 0; r < M; ++r) {
    db0 += dpre(r, 0);
    dw0 += dpre(r, 0) * x[r * K];
  }
  for (int64_t n = 0; n < N; ++n) dx0 += dpre(0, n) * w[n * K];
  bench::expect_close(db[0], db0, 1e-3, "dbias[0]");
  bench::expect_close(dw[0], dw0, 1e-3, "dweight[0, 0]");
  bench::expect_close(dx[0], dx0, 1e-3, "dx[0, 0]");

  gc_linear_fwd_params bias_only = f;
  bias_only.activation = GC_ACTIVATION_NONE;
  std::printf("linear CPU, M=%lld K=%lld N=%lld, float32\n", (long long)M, (long long)K, (long long)N);
  const double flops = 2.0 * M * N * K;
  report("fwd bias", bench::median_seconds([&] { gc_linear_fwd(&bias_only, nullptr, 0, nullptr); }, 1, reps), flops);
  report("fwd bias + gelu", bench::median_seconds([&] { gc_linear_fwd(&f, nullptr, 0, nullptr); }, 1, reps), flops);
  report("bwd gelu (dx, dw, db)", bench::median_seconds([&] { gc_linear_bwd(&g, ws.data(), bytes, nullptr); }, 1, reps),
         2 * flops);
  return 0;
}
