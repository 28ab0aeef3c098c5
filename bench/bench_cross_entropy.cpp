// Fused cross-entropy on the CPU: forward (lse + loss) and backward (dlogits) over
// logits [rows, V], validated against a double-precision computation before timing.
//   bench_cross_entropy [rows=8192] [V=50257]
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "bench_util.h"

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 8192;
  const int64_t V = argc > 2 ? std::atoll(argv[2]) : 50257;
  if (rows < 1 || V < 1) {
    std::fprintf(stderr, "usage: %s [rows >= 1] [V >= 1]\n", argv[0]);
    return 2;
  }
  std::printf("cross_entropy CPU float32, rows = %lld, V = %lld\n", (long long)rows, (long long)V);

  std::vector<float> logits = bench::randn(static_cast<size_t>(rows * V), 1);
  for (float& x : logits) x *= 3.f;
  std::vector<int64_t> target(rows);
  for (int64_t r = 0; r < rows; ++r) target[r] = r % 7 == 3 ? -100 : (r * 7919) % V;
  std::vector<float> lse(rows), loss(rows), dloss(rows, 1.f / rows), dlogits(static_cast<size_t>(rows * V));

  const int64_t shape2[2] = {rows, V}, shape1[1] = {rows};
  auto t2 = [&](float* p) { return gc_make_tensor(p, GC_FLOAT32, GC_CPU, 0, 2, shape2); };
  auto t1 = [&](void* p, int32_t dtype) { return gc_make_tensor(p, dtype, GC_CPU, 0, 1, shape1); };
  const gc_cross_entropy_fwd_params fwd{t2(logits.data()), t1(target.data(), GC_INT64), t1(lse.data(), GC_FLOAT32),
                                        t1(loss.data(), GC_FLOAT32), gc_tensor{}, 0, V, -100};
  const gc_cross_entropy_bwd_params bwd{t2(logits.data()), t1(target.data(), GC_INT64), t1(lse.data(), GC_FLOAT32),
                                        t1(dloss.data(), GC_FLOAT32), t2(dlogits.data()), 0, V, -100};

  bench::ok(gc_cross_entropy_fwd(&fwd, nullptr), "gc_cross_entropy_fwd");
  bench::ok(gc_cross_entropy_bwd(&bwd, nullptr), "gc_cross_entropy_bwd");
  for (int64_t r : {int64_t{0}, int64_t{3}, rows / 2, rows - 1}) {
    if (r >= rows) continue;
    const float* x = logits.data() + r * V;
    double m = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; ++j) m = std::fmax(m, x[j]);
    for (int64_t j = 0; j < V; ++j) s += std::exp(x[j] - m);
    const double want_lse = m + std::log(s);
    const bool ignored = target[r] == -100;
    bench::expect_close(lse[r], want_lse, 1e-5, "lse");
    bench::expect_close(loss[r], ignored ? 0.0 : want_lse - x[target[r]], 1e-5, "loss");
    for (int64_t j = 0; j < V; j += 1 + V / 97) {
      const double p = std::exp(x[j] - want_lse);
      const double want = ignored ? 0.0 : (p - (j == target[r])) * dloss[r];
      bench::expect_close(dlogits[r * V + j], want, 1e-5, "dlogits");
    }
  }

  const double bytes = static_cast<double>(rows) * V * sizeof(float);
  const int reps = rows * V > (int64_t{1} << 28) ? 5 : 20;
  const double t_fwd = bench::median_seconds([&] { gc_cross_entropy_fwd(&fwd, nullptr); }, 2, reps);
  const double t_bwd = bench::median_seconds([&] { gc_cross_entropy_bwd(&bwd, nullptr); }, 2, reps);
  const double t_both = bench::median_seconds(
      [&] {
        gc_cross_entropy_fwd(&fwd, nullptr);
        gc_cross_entropy_bwd(&bwd, nullptr);
      },
      2, reps);
  bench::report("forward (read logits)", t_fwd, bytes);
  bench::report("backward (read logits, write grad)", t_bwd, 2 * bytes);
  bench::report("forward + backward", t_both, 3 * bytes);
  return 0;
}
