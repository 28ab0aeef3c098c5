/* Fused softmax cross-entropy over logits [N, V] that never materializes probabilities.
 *
 * The forward reads each row once (online max / sum-exp) and writes per-row log-sum-exp
 * and loss; the backward writes dlogits = (softmax - onehot(target)) * dloss in one pass,
 * optionally in place over the logits.
 *
 * Vocab-parallel use: each rank passes its shard of the vocabulary [vocab_start,
 * vocab_start + V) with global target ids. The forward's lse and target_logit are then
 * combined across ranks (lse = log sum_r exp(lse_r), target_logit = sum_r target_logit_r,
 * loss = lse - target_logit) and the combined lse is passed to each rank's backward.
 * With one rank and vocab_start = 0, the forward's loss is final.
 *
 * CPU: float32 logits. CUDA: float32, float16, bfloat16 logits, float32 accumulation.
 * Targets: int64 or int32. Rows whose target equals ignore_index get loss 0 and zero
 * gradient (their lse is still written); other targets must lie in [0, vocab_total).
 * On CPU an out-of-range target fails with GC_ERROR_INVALID_ARGUMENT naming the row.
 * On CUDA it cannot be reported without a device sync: that row's loss and target_logit
 * are NaN instead (its gradient is the softmax times dloss, with no one-hot term).
 *
 * logits and dlogits are contiguous; lse, loss, target_logit and dloss are contiguous
 * float32 [N]; every tensor lives on one device. */
#ifndef GPTCORE_CROSS_ENTROPY_H
#define GPTCORE_CROSS_ENTROPY_H

#include "gptcore/api.h"
#include "gptcore/status.h"
#include "gptcore/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gc_cross_entropy_fwd_params {
  gc_tensor logits;       /* [N, V] */
  gc_tensor target;       /* [N] int64 or int32, global ids */
  gc_tensor lse;          /* out [N] float32: log-sum-exp of this row (shard) */
  gc_tensor loss;         /* out [N] float32: lse - target_logit; 0 for ignored rows */
  gc_tensor target_logit; /* optional out [N] float32: the target's logit if in this shard, else 0 */
  int64_t vocab_start;    /* global id of column 0 (0 without vocab parallelism) */
  int64_t vocab_total;    /* size of the whole vocabulary (V without vocab parallelism) */
  int64_t ignore_index;
} gc_cross_entropy_fwd_params;

GC_API gc_status gc_cross_entropy_fwd(const gc_cross_entropy_fwd_params* params, void* stream);

typedef struct gc_cross_entropy_bwd_params {
  gc_tensor logits;  /* [N, V] */
  gc_tensor target;  /* [N] */
  gc_tensor lse;     /* [N] float32: log-sum-exp over the whole vocabulary */
  gc_tensor dloss;   /* [N] float32: gradient of each row's loss */
  gc_tensor dlogits; /* out [N, V], like logits; may be the same memory as logits */
  int64_t vocab_start;
  int64_t vocab_total;
  int64_t ignore_index;
} gc_cross_entropy_bwd_params;

GC_API gc_status gc_cross_entropy_bwd(const gc_cross_entropy_bwd_params* params, void* stream);

#ifdef __cplusplus
}
#endif
#endif
