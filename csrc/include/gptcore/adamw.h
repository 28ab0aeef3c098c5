/* Fused multi-tensor AdamW (decoupled weight decay, bias correction).
 *
 * One call updates a list of tensors, each with its own learning rate, weight decay and
 * step count (so all parameter groups go in one call, and a skipped step is skipped for
 * all of them). Moments and master weights are float32.
 * A tensor with a float16/bfloat16 model copy keeps its float32 master in `master`; the
 * update runs on the master and writes the rounded result to `param`. Without a master
 * the param itself must be float32 and is updated in place.
 *
 * Loss scaling: grads are multiplied by inv_grad_scale as they are read. When found_inf
 * is given, the call first checks every grad for inf/nan, ORs the result into *found_inf
 * (1 = found) and leaves all tensors untouched if *found_inf is then nonzero; on CUDA
 * found_inf lives in device memory and nothing waits on the host. */
#ifndef GPTCORE_ADAMW_H
#define GPTCORE_ADAMW_H

#include "gptcore/api.h"
#include "gptcore/status.h"
#include "gptcore/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gc_adamw_tensor {
  void* param;       /* [numel] model weights: float32, float16 or bfloat16 */
  const void* grad;  /* [numel] float32, float16 or bfloat16 */
  float* master;     /* [numel] float32 master weights: required for a float16/bfloat16
                        param, NULL for a float32 one */
  float* exp_avg;    /* [numel] float32 first moment */
  float* exp_avg_sq; /* [numel] float32 second moment */
  int64_t numel;     /* the pointers may be NULL when numel is 0 */
  int32_t param_dtype;
  int32_t grad_dtype;
  float lr;
  float weight_decay;
  int64_t step;      /* this tensor's step count including this update: 1 on its first step */
} gc_adamw_tensor;

typedef struct gc_adamw_params {
  const gc_adamw_tensor* tensors; /* host array of num_tensors entries */
  int64_t num_tensors;
  int32_t device_type; /* where all the tensors' memory lives */
  int32_t device_index;
  double beta1; /* double so that 1 - beta2 keeps its digits (1 - 0.999f is 1.3e-5 off) */
  double beta2;
  float eps;
  float inv_grad_scale; /* 1 for unscaled grads */
  int32_t* found_inf;   /* optional [1] int32, on the tensors' device */
} gc_adamw_params;

GC_API gc_status gc_adamw_step(const gc_adamw_params* params, void* stream);

#ifdef __cplusplus
}
#endif
#endif
