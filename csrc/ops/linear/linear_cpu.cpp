// Linear on the CPU: float32 products by OpenBLAS split over the OpenMP team (sgemm_team), then one fused
// OpenMP pass for the epilogue (forward) or the activation gradient and bias sums (backward).
#include <cstring>

#include "common/cpu_blas.h"
#include "common/cpu_math.h"
#include "ops/linear/linear.h"

namespace gc {
namespace {

// One row of y = act(x W^T + bias) + residual, given the product in y.
GC_CPU_CLONES
void fwd_epilogue_row(float* y, const float* bias, const float* residual, float* pre, bool gelu, int64_t N) {
  if (gelu && pre) {
#pragma omp simd
    for (int64_t c = 0; c < N; ++c) {
      const float v = y[c] + (bias ? bias[c] : 0.f);
      pre[c] = v;
      y[c] = gelu_tanh_fast(v);
    }
  } else if (gelu) {
#pragma omp simd
    for (int64_t c = 0; c < N; ++c) y[c] = gelu_tanh_fast(y[c] + (bias ? bias[c] : 0.f));
  } else {
#pragma omp simd
    for (int64_t c = 0; c < N; ++c) y[c] += (bias ? bias[c] : 0.f) + (residual ? residual[c] : 0.f);
  }
}

// dpre = dy * gelu'(pre) for one row (when dpre is set), and the row added to the bias sums.
GC_CPU_CLONES
void bwd_row(const float* dy, const float* pre, float* dpre, float* bias_acc, int64_t N) {
  if (dpre) {
#pragma omp simd
    for (int64_t c = 0; c < N; ++c) dpre[c] = dy[c] * gelu_tanh_grad_fast(pre[c]);
  }
  const float* g = dpre ? dpre : dy;
  if (bias_acc) {
#pragma omp simd
    for (int64_t c = 0; c < N; ++c) bias_acc[c] += g[c];
  }
}

// Chunks of rows whose bias-gradient partial sums are kept apart (fixed by M, never by the
// thread count, so the result is reproducible).
int64_t bias_chunks(int64_t M) { return M < 64 ? M : 64; }

bool needs_dpre(const gc_linear_bwd_params& p) {
  return p.activation == GC_ACTIVATION_GELU_TANH && (p.dx.data || p.dweight.data || p.dbias.data);
}

}  // namespace

size_t linear_fwd_workspace_cpu(const gc_linear_fwd_params&, LinearDims) { return 0; }

size_t linear_bwd_workspace_cpu(const gc_linear_bwd_params& p, LinearDims d) {
  const int64_t dpre = needs_dpre(p) ? d.M * d.N : 0;
  const int64_t partials = p.dbias.data ? bias_chunks(d.M) * d.N : 0;
  return static_cast<size_t>(dpre + partials) * sizeof(float);
}

gc_status linear_fwd_cpu(const gc_linear_fwd_params& p, LinearDims d) {
  const float* bias = static_cast<const float*>(p.bias.data);
  const float* residual = static_cast<const float*>(p.residual.data);
  float* y = static_cast<float*>(p.y.data);
  const bool gelu = p.activation == GC_ACTIVATION_GELU_TANH;
  float* pre = gelu ? static_cast<float*>(p.pre_act.data) : nullptr;
  sgemm_team(false, true, d.M, d.N, d.K, static_cast<const float*>(p.x.data), d.K, static_cast<const float*>(p.weight.data),
        d.K, y);
  if (!gelu && !bias && !residual) return GC_OK;
  const int64_t N = d.N;
#pragma omp parallel for schedule(static) if (d.M * N > 32768)
  for (int64_t r = 0; r < d.M; ++r)
    fwd_epilogue_row(y + r * N, bias, residual ? residual + r * N : nullptr, pre ? pre + r * N : nullptr, gelu, N);
  return GC_OK;
}

gc_status linear_bwd_cpu(const gc_linear_bwd_params& p, LinearDims d, void* workspace) {
  const int64_t M = d.M, N = d.N, K = d.K;
  const float* dy = static_cast<const float*>(p.dy.data);
  const float* pre = static_cast<const float*>(p.pre_act.data);
  float* dbias = static_cast<float*>(p.dbias.data);
  float* dpre = needs_dpre(p) ? static_cast<float*>(workspace) : nullptr;
  float* partials = static_cast<float*>(workspace) + (dpre ? M * N : 0);
  const int64_t chunks = bias_chunks(M);
  if (dpre || dbias) {
#pragma omp parallel for schedule(static) if (M * N > 32768)
    for (int64_t k = 0; k < chunks; ++k) {
      float* acc = dbias ? partials + k * N : nullptr;
      if (acc) std::memset(acc, 0, static_cast<size_t>(N) * sizeof(float));
      for (int64_t r = M * k / chunks; r < M * (k + 1) / chunks; ++r)
        bwd_row(dy + r * N, dpre ? pre + r * N : nullptr, dpre ? dpre + r * N : nullptr, acc, N);
    }
  }
  if (dbias) {
#pragma omp parallel for schedule(static) if (chunks * N > 32768)
    for (int64_t c = 0; c < N; ++c) {
      float sum = 0.f;
      for (int64_t k = 0; k < chunks; ++k) sum += partials[k * N + c];
      dbias[c] = sum;
    }
  }
  const float* g = dpre ? dpre : dy;
  if (p.dx.data)
    sgemm_team(false, false, M, K, N, g, N, static_cast<const float*>(p.weight.data), K, static_cast<float*>(p.dx.data));
  if (p.dweight.data)
    sgemm_team(true, false, N, K, M, g, N, static_cast<const float*>(p.x.data), K, static_cast<float*>(p.dweight.data));
  return GC_OK;
}

}  // namespace gc
