// Math shared by the CPU and CUDA kernels (host + device), so the CPU tests exercise it.
#pragma once

#include <cmath>

#include "common/numeric.h"

namespace gc {

// Online softmax state: m = running max, s = sum of exp(x - m) over the values seen.
struct MaxSum {
  float m;
  float s;
};

GC_HD MaxSum max_sum_empty() { return MaxSum{-INFINITY, 0.f}; }

// Combines the states of two disjoint sets of values.
GC_HD MaxSum max_sum_merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return MaxSum{m, a.s + b.s};  // both empty (or all -inf): no rescale
  return MaxSum{m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

GC_HD MaxSum max_sum_push(MaxSum a, float x) { return max_sum_merge(a, MaxSum{x, 1.f}); }

GC_HD float max_sum_lse(MaxSum a) { return a.m + logf(a.s); }

// d(loss)/d(logit) for one element: (softmax - onehot) * dloss.
GC_HD float cross_entropy_grad(float logit, float lse, bool is_target, float dloss) {
  return (expf(logit - lse) - (is_target ? 1.f : 0.f)) * dloss;
}

// LayerNorm backward for one element, given the row means of g = dy * w and of g * xhat:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
GC_HD float layer_norm_dx(float g, float xhat, float mean_g, float mean_gxhat, float rstd) {
  return rstd * (g - mean_g - xhat * mean_gxhat);
}

// Constants of one AdamW step for one tensor (its bias corrections follow its step count).
struct AdamWScalars {
  float beta1, beta2, eps;
  float one_minus_beta1, one_minus_beta2;  // from double betas: 1 - 0.999f is 1.3e-5 off 1 - 0.999
  float bias_correction1;       // 1 - beta1^step
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  float inv_grad_scale;
};

// One AdamW element update on the float32 master value p (decoupled weight decay).
GC_HD float adamw_update(float p, float g, float& m, float& v, float lr, float weight_decay,
                         const AdamWScalars& s) {
  g *= s.inv_grad_scale;
  m = s.beta1 * m + s.one_minus_beta1 * g;
  v = s.beta2 * v + s.one_minus_beta2 * g * g;
  p *= 1.f - lr * weight_decay;
  const float denom = sqrtf(v) / s.bias_correction2_sqrt + s.eps;
  return p - (lr / s.bias_correction1) * m / denom;
}

// GELU, tanh approximation: 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3),
// written as x * sigmoid(2u) (the same function), which stays accurate for large |x|.
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

GC_HD float gelu_tanh(float x) {
  const float u2 = 2.f * kGeluScale * (x + kGeluCubic * x * x * x);
  return x / (1.f + expf(-u2));
}

// d gelu_tanh / dx = s + x s (1 - s) 2 u'(x), s = sigmoid(2u).
GC_HD float gelu_tanh_grad(float x) {
  const float u2 = 2.f * kGeluScale * (x + kGeluCubic * x * x * x);
  const float s = 1.f / (1.f + expf(-u2));
  return s + x * s * (1.f - s) * 2.f * kGeluScale * (1.f + 3.f * kGeluCubic * x * x);
}

}  // namespace gc
