// CPU microbenchmark of gc_layer_norm_fwd (plain and fused add) and gc_layer_norm_bwd.
// Usage: bench_layer_norm [rows=8192] [C=768]
#include <cmath>
#include <cstdlib>

#include "bench_util.h"

namespace {

gc_tensor view(float* p, int64_t a, int64_t b = -1) {
  const int64_t shape[2] = {a, b};
  return gc_make_tensor(p, GC_FLOAT32, GC_CPU, 0, b < 0 ? 1 : 2, shape);
}

// Row r of y against the definition, in double.
void validate_row(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                  const std::vector<float>& y, int64_t r, int64_t C) {
  double mean = 0, var = 0;
  for (int64_t c = 0; c < C; ++c) mean += x[r * C + c];
  mean /= C;
  for (int64_t c = 0; c < C; ++c) var += (x[r * C + c] - mean) * (x[r * C + c] - mean);
  const double rstd = 1 / std::sqrt(var / C + 1e-5);
  for (int64_t c = 0; c < C; ++c)
    bench::expect_close(y[r * C + c], (x[r * C + c] - mean) * rstd * w[c] + b[c], 1e-4, "layer_norm y");
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 8192, C = argc > 2 ? std::atoll(argv[2]) : 768;
  const size_t n = static_cast<size_t>(rows * C);
  std::vector<float> x = bench::randn(n, 1), res = bench::randn(n, 2), dy = bench::randn(n, 3);
  std::vector<float> w = bench::randn(C, 4), b = bench::randn(C, 5);
  std::vector<float> y(n), sum(n), dx(n), dw(C), db(C), mean(rows), rstd(rows);

  gc_layer_norm_fwd_params f{};
  f.x = view(x.data(), rows, C);
  f.weight = view(w.data(), C);
  f.bias = view(b.data(), C);
  f.y = view(y.data(), rows, C);
  f.mean = view(mean.data(), rows);
  f.rstd = view(rstd.data(), rows);
  f.eps = 1e-5f;
  bench::ok(gc_layer_norm_fwd(&f, nullptr), "gc_layer_norm_fwd");
  validate_row(x, w, b, y, 0, C);
  validate_row(x, w, b, y, rows - 1, C);

  gc_layer_norm_fwd_params fused = f;
  fused.residual = view(res.data(), rows, C);
  fused.sum = view(sum.data(), rows, C);

  gc_layer_norm_bwd_params g{};
  g.dy = view(dy.data(), rows, C);
  g.x = f.x;
  g.weight = f.weight;
  g.mean = f.mean;
  g.rstd = f.rstd;
  g.dx = view(dx.data(), rows, C);
  g.dweight = view(dw.data(), C);
  g.dbias = view(db.data(), C);
  size_t bytes = 0;
  bench::ok(gc_layer_norm_bwd_workspace_size(&g, &bytes), "workspace size");
  std::vector<char> ws(bytes);
  bench::ok(gc_layer_norm_bwd(&g, ws.data(), bytes, nullptr), "gc_layer_norm_bwd");
  double db0 = 0;  // the bias gradient is the column sum of dy
  for (int64_t r = 0; r < rows; ++r) db0 += dy[r * C];
  bench::expect_close(db[0], db0, 1e-4, "dbias[0]");

  std::printf("layer_norm CPU, rows=%lld C=%lld, float32\n", (long long)rows, (long long)C);
  const double tensor = n * sizeof(float);
  bench::report("fwd", bench::median_seconds([&] { gc_layer_norm_fwd(&f, nullptr); }), 2 * tensor);
  bench::report("fused add fwd", bench::median_seconds([&] { gc_layer_norm_fwd(&fused, nullptr); }), 4 * tensor);
  bench::report("bwd", bench::median_seconds([&] { gc_layer_norm_bwd(&g, ws.data(), bytes, nullptr); }), 3 * tensor);
  return 0;
}
