// gc_attention_fwd / gc_attention_bwd on the CPU at a GPT-2 small layer's shape (causal,
// float32): a few outputs checked against a double computation, then median times and GFLOP/s.
#include <cmath>
#include <cstdio>
#include <vector>

#include "bench_util.h"

namespace {

constexpr int64_t B = 4, H = 12, T = 1024, D = 64;

gc_tensor view(float* p, std::vector<int64_t> shape) {
  return gc_make_tensor(p, GC_FLOAT32, GC_CPU, 0, static_cast<int32_t>(shape.size()), shape.data());
}

// Causal output row i of head bh, in double.
std::vector<double> reference_row(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                  int64_t bh, int64_t i, double scale) {
  const float* qi = q.data() + (bh * T + i) * D;
  std::vector<double> s(i + 1), out(D, 0.0);
  double m = -INFINITY, sum = 0;
  for (int64_t j = 0; j <= i; ++j) {
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += double(qi[d]) * k[(bh * T + j) * D + d];
    s[j] = dot * scale;
    m = std::max(m, s[j]);
  }
  for (int64_t j = 0; j <= i; ++j) {
    const double p = std::exp(s[j] - m);
    sum += p;
    for (int64_t d = 0; d < D; ++d) out[d] += p * v[(bh * T + j) * D + d];
  }
  for (double& o : out) o /= sum;
  return out;
}

}  // namespace

int main() {
  const size_t n = B * H * T * D;
  std::vector<float> q = bench::randn(n, 1), k = bench::randn(n, 2), v = bench::randn(n, 3), dout = bench::randn(n, 4);
  std::vector<float> out(n), lse(B * H * T), dq(n), dk(n), dv(n);
  const float scale = 1.f / std::sqrt(float(D));
  const gc_attention_fwd_params f{view(q.data(), {B, H, T, D}), view(k.data(), {B, H, T, D}),
                                  view(v.data(), {B, H, T, D}), view(out.data(), {B, H, T, D}),
                                  view(lse.data(), {B, H, T}), scale, 1, 0.f, 0, 0};
  bench::ok(gc_attention_fwd(&f, nullptr), "gc_attention_fwd");
  for (auto [bh, i] : {std::pair<int64_t, int64_t>{0, 0}, {7, 500}, {B * H - 1, T - 1}}) {
    const std::vector<double> want = reference_row(q, k, v, bh, i, scale);
    for (int64_t d = 0; d < D; d += 13) bench::expect_close(out[(bh * T + i) * D + d], want[d], 1e-4, "out");
  }
  const gc_attention_bwd_params b{f.q, f.k, f.v, f.out, view(dout.data(), {B, H, T, D}), f.lse,
                                  view(dq.data(), {B, H, T, D}), view(dk.data(), {B, H, T, D}),
                                  view(dv.data(), {B, H, T, D}), scale, 1, 0.f, 0, 0};
  size_t bytes = 0;
  bench::ok(gc_attention_bwd_workspace_size(&b, &bytes), "gc_attention_bwd_workspace_size");
  std::vector<unsigned char> workspace(bytes);
  bench::ok(gc_attention_bwd(&b, workspace.data(), bytes, nullptr), "gc_attention_bwd");
  // The last key is seen by the last query alone: dv[T - 1] = P[T-1, T-1] dout[T - 1].
  const int64_t last = (B * H - 1) * T + T - 1;
  const double p_last = std::exp(double(lse[last]) * -1 + double(scale) * [&] {
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += double(q[last * D + d]) * k[last * D + d];
    return dot;
  }());
  for (int64_t d = 0; d < D; d += 13) bench::expect_close(dv[last * D + d], p_last * dout[last * D + d], 1e-4, "dv");

  const double causal_flops = 4.0 * B * H * T * T * D / 2;  // two T x T x D products, half of them masked
  char name[96];
  std::snprintf(name, sizeof(name), "attention fwd B%lld H%lld T%lld D%lld", (long long)B, (long long)H, (long long)T,
                (long long)D);
  const double t_fwd = bench::median_seconds([&] { gc_attention_fwd(&f, nullptr); }, 2, 7);
  std::printf("%-34s median %9.3f ms  %8.2f GFLOP/s\n", name, t_fwd * 1e3, causal_flops / t_fwd / 1e9);
  std::snprintf(name, sizeof(name), "attention bwd B%lld H%lld T%lld D%lld", (long long)B, (long long)H, (long long)T,
                (long long)D);
  const double t_bwd = bench::median_seconds([&] { gc_attention_bwd(&b, workspace.data(), bytes, nullptr); }, 1, 5);
  std::printf("%-34s median %9.3f ms  %8.2f GFLOP/s\n", name, t_bwd * 1e3, 2.5 * causal_flops / t_bwd / 1e9);
  return 0;
}
