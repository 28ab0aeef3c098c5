// Cross-entropy on the CPU: float32, rows spread over OpenMP threads. The forward walks a
// row in L1-sized blocks (block max, then the block's sum of exp while it is still in L1)
// and merges the blocks' online-softmax states, so each row is read from memory once.
#include <algorithm>
#include <cmath>

#include "common/cpu_math.h"
#include "common/dispatch.h"
#include "common/math.h"
#include "ops/cross_entropy/cross_entropy.h"

namespace gc {
namespace {

constexpr int64_t kBlock = 4096;  // floats: 16 KiB, well inside L1

GC_CPU_CLONES
MaxSum row_max_sum(const float* x, int64_t V) {
  MaxSum acc = max_sum_empty();
  for (int64_t b = 0; b < V; b += kBlock) {
    const float* xb = x + b;
    const int64_t n = std::min(kBlock, V - b);
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; ++i) m = xb[i] > m ? xb[i] : m;  // this form vectorizes; std::max does not
    const float shift = m == -INFINITY ? 0.f : m;  // an all -inf block: exp(x - shift) stays ~0, not NaN
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += exp_fast(xb[i] - shift);  // a NaN logit makes s NaN
    acc = max_sum_merge(acc, MaxSum{m, s});
  }
  return acc;
}

// dx = softmax(x) * dloss, then the target's one-hot term; dx may be x itself.
GC_CPU_CLONES
void bwd_row(const float* x, float* dx, int64_t V, float lse, float dloss, int64_t target_col) {
#pragma omp simd
  for (int64_t i = 0; i < V; ++i) dx[i] = exp_fast(x[i] - lse) * dloss;
  if (target_col >= 0 && target_col < V) dx[target_col] -= dloss;
}

template <class I>
gc_status fwd(const gc_cross_entropy_fwd_params& p, int64_t rows, int64_t V) {
  const float* logits = static_cast<const float*>(p.logits.data);
  const I* target = static_cast<const I*>(p.target.data);
  float* lse = static_cast<float*>(p.lse.data);
  float* loss = static_cast<float*>(p.loss.data);
  float* target_logit = static_cast<float*>(p.target_logit.data);
#pragma omp parallel for schedule(static) if (rows * V > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits + r * V;
    const float l = max_sum_lse(row_max_sum(x, V));
    const int64_t t = target[r], col = t - p.vocab_start;
    const bool ignored = t == p.ignore_index;
    const float tl = !ignored && col >= 0 && col < V ? x[col] : 0.f;
    lse[r] = l;
    loss[r] = ignored ? 0.f : l - tl;
    if (target_logit) target_logit[r] = tl;
  }
  return GC_OK;
}

template <class I>
gc_status bwd(const gc_cross_entropy_bwd_params& p, int64_t rows, int64_t V) {
  const float* logits = static_cast<const float*>(p.logits.data);
  const I* target = static_cast<const I*>(p.target.data);
  const float* lse = static_cast<const float*>(p.lse.data);
  const float* dloss = static_cast<const float*>(p.dloss.data);
  float* dlogits = static_cast<float*>(p.dlogits.data);
#pragma omp parallel for schedule(static) if (rows * V > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = target[r];
    if (t == p.ignore_index)
      std::fill(dlogits + r * V, dlogits + (r + 1) * V, 0.f);
    else
      bwd_row(logits + r * V, dlogits + r * V, V, lse[r], dloss[r], t - p.vocab_start);
  }
  return GC_OK;
}

}  // namespace

gc_status cross_entropy_fwd_cpu(const gc_cross_entropy_fwd_params& p, int64_t rows, int64_t V) {
  return GC_INDEX_SWITCH(p.target.dtype, I, [&] { return fwd<I>(p, rows, V); });
}

gc_status cross_entropy_bwd_cpu(const gc_cross_entropy_bwd_params& p, int64_t rows, int64_t V) {
  return GC_INDEX_SWITCH(p.target.dtype, I, [&] { return bwd<I>(p, rows, V); });
}

}  // namespace gc
