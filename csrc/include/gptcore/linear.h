/* Linear layer y = x W^T (+ bias) with fused epilogues, weight laid out like F.linear.
 *
 * Rows: every dimension of x but the last is flattened, so x [..., K] is M rows of K
 * features; weight is [N, K]; y, residual, pre_act and dy are [..., N] with x's leading
 * dimensions.
 *
 * The epilogue follows from what is passed:
 *   y = act(x W^T + bias) + residual
 * bias and residual optional; act = identity (GC_ACTIVATION_NONE) or tanh GELU
 * (GC_ACTIVATION_GELU_TANH, as F.gelu(approximate="tanh")). A residual cannot be combined
 * with GELU. With GELU, pre_act receives x W^T + bias (the GELU input, which the backward
 * needs); it is optional when no backward follows.
 *
 * Backward: dpre = dy * act'(pre_act) in one pass that also sums the bias gradient, then
 * dx = dpre W and dweight = dpre^T x. The gradient of residual is dy itself.
 *
 * CPU: float32, products by OpenBLAS (scipy-openblas32). CUDA: float32, float16, bfloat16
 * with float32 accumulation, products and epilogues by cuBLASLt. Every tensor contiguous,
 * on one device, of one dtype; M, N and K at most 2^31 - 1. */
#ifndef GPTCORE_LINEAR_H
#define GPTCORE_LINEAR_H

#include "gptcore/api.h"
#include "gptcore/status.h"
#include "gptcore/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fixed codes, part of the ABI. */
typedef enum gc_activation { GC_ACTIVATION_NONE = 0, GC_ACTIVATION_GELU_TANH = 1 } gc_activation;

typedef struct gc_linear_fwd_params {
  gc_tensor x;        /* [..., K] */
  gc_tensor weight;   /* [N, K] */
  gc_tensor bias;     /* optional [N] */
  gc_tensor residual; /* optional [..., N]: added after the activation; not with GELU */
  gc_tensor y;        /* out [..., N] */
  gc_tensor pre_act;  /* optional out [..., N] with GELU: x W^T + bias; ignored without */
  int32_t activation; /* gc_activation */
} gc_linear_fwd_params;

/* Bytes of scratch gc_linear_fwd needs for these params (on the tensors' device; 0 on CPU). */
GC_API gc_status gc_linear_fwd_workspace_size(const gc_linear_fwd_params* params, size_t* bytes);

GC_API gc_status gc_linear_fwd(const gc_linear_fwd_params* params, void* workspace, size_t workspace_bytes,
                               void* stream);

typedef struct gc_linear_bwd_params {
  gc_tensor dy;       /* [..., N] gradient of y */
  gc_tensor x;        /* [..., K] */
  gc_tensor weight;   /* [N, K] */
  gc_tensor pre_act;  /* [..., N] from the forward; required with GELU, ignored without */
  gc_tensor dx;       /* optional out [..., K] */
  gc_tensor dweight;  /* optional out [N, K] */
  gc_tensor dbias;    /* optional out [N] */
  int32_t activation; /* gc_activation, as in the forward */
} gc_linear_bwd_params;

/* Bytes of scratch gc_linear_bwd needs for these params (on the tensors' device). */
GC_API gc_status gc_linear_bwd_workspace_size(const gc_linear_bwd_params* params, size_t* bytes);

/* Deterministic: the same inputs give bitwise the same outputs on the same device. */
GC_API gc_status gc_linear_bwd(const gc_linear_bwd_params* params, void* workspace, size_t workspace_bytes,
                               void* stream);

#ifdef __cplusplus
}
#endif
#endif
