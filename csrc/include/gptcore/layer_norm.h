/* LayerNorm forward/backward, and the fused residual add + LayerNorm.
 *
 * Rows: every dimension of x but the last is flattened into N rows of C channels.
 * CPU: float32. CUDA: float32, float16, bfloat16; statistics and accumulation in float32.
 * All tensors contiguous; x, residual, y, sum, dy, dx, dsum share one dtype, and so do
 * weight, bias, dweight, dbias. */
#ifndef GPTCORE_LAYER_NORM_H
#define GPTCORE_LAYER_NORM_H

#include "gptcore/api.h"
#include "gptcore/status.h"
#include "gptcore/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gc_layer_norm_fwd_params {
  gc_tensor x;        /* [..., C] */
  gc_tensor residual; /* optional, like x: normalize sum = x + residual instead of x */
  gc_tensor weight;   /* [C] */
  gc_tensor bias;     /* optional [C] */
  gc_tensor y;        /* out, like x */
  gc_tensor sum;      /* out, like x; required with residual, ignored without */
  gc_tensor mean;     /* out [N] float32 */
  gc_tensor rstd;     /* out [N] float32, 1 / sqrt(var + eps) */
  float eps;
} gc_layer_norm_fwd_params;

GC_API gc_status gc_layer_norm_fwd(const gc_layer_norm_fwd_params* params, void* stream);

typedef struct gc_layer_norm_bwd_params {
  gc_tensor dy;      /* [..., C] gradient of y */
  gc_tensor x;       /* the tensor that was normalized: x, or sum for the fused add */
  gc_tensor weight;  /* [C] */
  gc_tensor mean;    /* [N] float32, from the forward */
  gc_tensor rstd;    /* [N] float32, from the forward */
  gc_tensor dsum;    /* optional, like x: gradient arriving at the fused add's sum output */
  gc_tensor dx;      /* out: gradient of x (and of residual, which is the same) */
  gc_tensor dweight; /* out [C] */
  gc_tensor dbias;   /* optional out [C] */
} gc_layer_norm_bwd_params;

/* Bytes of scratch gc_layer_norm_bwd needs for these params (on the tensors' device). */
GC_API gc_status gc_layer_norm_bwd_workspace_size(const gc_layer_norm_bwd_params* params, size_t* bytes);

/* Deterministic: the same inputs give bitwise the same outputs on the same device. */
GC_API gc_status gc_layer_norm_bwd(const gc_layer_norm_bwd_params* params, void* workspace,
                                   size_t workspace_bytes, void* stream);

#ifdef __cplusplus
}
#endif
#endif
