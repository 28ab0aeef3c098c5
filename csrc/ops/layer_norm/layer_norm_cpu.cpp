// LayerNorm on the CPU: float32, one row at a time, rows spread over OpenMP threads.
#include <cmath>
#include <cstring>

#include "common/cpu_math.h"
#include "common/math.h"
#include "ops/layer_norm/layer_norm.h"

namespace gc {
namespace {

// Sum of f(v[c]) over a row with 32 independent partial sums (four 8-wide vectors), so the
// adds do not wait on one another as a single vectorized accumulator would.
template <class F>
inline float row_sum(const float* v, int64_t C, F f) {
  constexpr int kLanes = 32;
  float acc[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) acc[k] += f(v[c + k]);
  }
  for (int k = 0; c < C; ++c, ++k) acc[k] += f(v[c]);
  float total = 0.f;
  for (int k = 0; k < kLanes; ++k) total += acc[k];
  return total;
}

// Asks for the next row while this one is normalized, so the memory system is never idle
// during the passes over a row already in L1.
inline void prefetch_row(const float* v, int64_t C) {
  for (int64_t c = 0; c < C; c += 16) __builtin_prefetch(v + c);
}

GC_CPU_CLONES
void fwd_row(const float* x, const float* residual, const float* w, const float* b, float* y, float* sum, float* mean_out,
             float* rstd_out, int64_t C, float eps) {
  const float* src = x;
  if (residual) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) sum[c] = x[c] + residual[c];
    src = sum;
  }
  const float mean = row_sum(src, C, [](float v) { return v; }) / static_cast<float>(C);
  const float sq = row_sum(src, C, [mean](float v) { return (v - mean) * (v - mean); });
  const float rstd = 1.f / std::sqrt(sq / static_cast<float>(C) + eps);
  if (b) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) y[c] = (src[c] - mean) * rstd * w[c] + b[c];
  } else {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) y[c] = (src[c] - mean) * rstd * w[c];
  }
  *mean_out = mean;
  *rstd_out = rstd;
}

// dx for one row, and its contribution to the weight/bias gradient partials.
GC_CPU_CLONES
void bwd_row(const float* dy, const float* x, const float* w, const float* dsum, float mean, float rstd, float* dx,
             float* dw_acc, float* db_acc, int64_t C) {
  float sum_g = 0.f, sum_gx = 0.f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
  for (int64_t c = 0; c < C; ++c) {
    const float g = dy[c] * w[c];
    sum_g += g;
    sum_gx += g * (x[c] - mean);
  }
  const float mean_g = sum_g / static_cast<float>(C), mean_gx = sum_gx * rstd / static_cast<float>(C);
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const float xhat = (x[c] - mean) * rstd;
    dx[c] = layer_norm_dx(dy[c] * w[c], xhat, mean_g, mean_gx, rstd) + (dsum ? dsum[c] : 0.f);
    dw_acc[c] += dy[c] * xhat;
    db_acc[c] += dy[c];
  }
}

}  // namespace

gc_status layer_norm_fwd_cpu(const gc_layer_norm_fwd_params& p, int64_t rows, int64_t C) {
#pragma omp parallel if (rows * C > 32768)
  layer_norm_fwd_team(p, rows, C);
  return GC_OK;
}

void layer_norm_fwd_team(const gc_layer_norm_fwd_params& p, int64_t rows, int64_t C) {
  const float* x = static_cast<const float*>(p.x.data);
  const float* residual = static_cast<const float*>(p.residual.data);
  const float* w = static_cast<const float*>(p.weight.data);
  const float* b = static_cast<const float*>(p.bias.data);
  float* y = static_cast<float*>(p.y.data);
  float* sum = residual ? static_cast<float*>(p.sum.data) : nullptr;
  float* mean = static_cast<float*>(p.mean.data);
  float* rstd = static_cast<float*>(p.rstd.data);
#pragma omp for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * C;
    if (r + 1 < rows) prefetch_row(x + o + C, C);
    if (residual && r + 1 < rows) prefetch_row(residual + o + C, C);
    fwd_row(x + o, residual ? residual + o : nullptr, w, b, y + o, sum ? sum + o : nullptr, mean + r, rstd + r, C,
            p.eps);
  }
}

gc_status layer_norm_bwd_cpu(const gc_layer_norm_bwd_params& p, int64_t rows, int64_t C, float* partials) {
  const float* dy = static_cast<const float*>(p.dy.data);
  const float* x = static_cast<const float*>(p.x.data);
  const float* w = static_cast<const float*>(p.weight.data);
  const float* mean = static_cast<const float*>(p.mean.data);
  const float* rstd = static_cast<const float*>(p.rstd.data);
  const float* dsum = static_cast<const float*>(p.dsum.data);
  float* dx = static_cast<float*>(p.dx.data);
  float* dweight = static_cast<float*>(p.dweight.data);
  float* dbias = static_cast<float*>(p.dbias.data);
  const int64_t chunks = layer_norm_bwd_partials(rows, GC_CPU);
#pragma omp parallel for schedule(static) if (rows * C > 32768)
  for (int64_t k = 0; k < chunks; ++k) {
    float* dw_acc = partials + k * 2 * C;
    float* db_acc = dw_acc + C;
    std::memset(dw_acc, 0, 2 * C * sizeof(float));
    const int64_t end = rows * (k + 1) / chunks;
    for (int64_t r = rows * k / chunks; r < end; ++r) {
      if (r + 1 < end) {
        prefetch_row(dy + (r + 1) * C, C);
        prefetch_row(x + (r + 1) * C, C);
      }
      bwd_row(dy + r * C, x + r * C, w, dsum ? dsum + r * C : nullptr, mean[r], rstd[r], dx + r * C, dw_acc, db_acc, C);
    }
  }
#pragma omp parallel for schedule(static) if (chunks * C > 32768)
  for (int64_t c = 0; c < C; ++c) {
    float dw = 0.f, db = 0.f;
    for (int64_t k = 0; k < chunks; ++k) {
      dw += partials[k * 2 * C + c];
      db += partials[k * 2 * C + C + c];
    }
    dweight[c] = dw;
    if (dbias) dbias[c] = db;
  }
  return GC_OK;
}

}  // namespace gc
