/* Fused scaled-dot-product attention (flash-style), for training and for decoding.
 *
 * Layout: q [B, H, T_q, D], k and v [B, H, T_k, D], contiguous, like
 * F.scaled_dot_product_attention. Head dims 32..128 (multiples of 8; 64 and 128 are the fast
 * paths). CPU: float32. CUDA: float16 and bfloat16 on tensor cores, float32 accumulation.
 *
 * causal: query i attends to keys j <= i + (T_k - T_q) (bottom-right aligned, as in
 * flash-attention), which is the usual lower triangle when T_q == T_k. Causal calls need
 * T_q <= T_k (GC_ERROR_SHAPE otherwise), so every query sees at least one key; T_k >= 1.
 *
 * Packed documents (variable-length attention): with cu_seqlens set, each batch row holds
 * several documents back to back and a query sees only the earlier keys of its own document.
 * cu_seqlens is int32 [B, S + 1], contiguous, on q's device; row b is 0 = c_0 <= c_1 <= ... <=
 * c_S = T, document m being positions [c_m, c_{m+1}) (empty documents allowed; a row of fewer
 * documents repeats T at the end). Query i sees key j iff c_m <= j <= i for i's document m.
 * It needs causal and T_q == T_k (GC_ERROR_INVALID_ARGUMENT otherwise). The values are
 * checked on CPU; on CUDA they are read by the kernels unchecked (bad values give wrong
 * results, never out-of-bounds accesses). Key tiles outside every document of a query tile
 * are skipped, so packing costs no extra work. data == NULL: no documents, the plain mask.
 *
 * The forward keeps lse = log-sum-exp of each query's scaled scores [B, H, T_q] (float32);
 * the backward recomputes the probabilities from it, so no T_q x T_k matrix ever exists in
 * memory.
 *
 * Dropout on the attention probabilities comes from Philox4x32-10 (common/philox.h), the
 * same on CPU and CUDA: element (b, h, i, j), at row-major index n of [B, H, T_q, T_k], is
 * kept when the uniform draw gc_dropout_uniform(seed, offset, n) >= dropout_p, and kept
 * probabilities are scaled by 1 / (1 - dropout_p). Forward and backward given the same
 * seed and offset use the same mask. One Philox call (counter offset + n / 4, key seed) gives
 * the draws of elements 4 * (n / 4) .. 4 * (n / 4) + 3, so a call over N elements uses the
 * counters [offset, offset + ceil(N / 4)): a caller that reuses a seed must advance the offset
 * by at least ceil(N / 4) per call for fresh masks. */
#ifndef GPTCORE_ATTENTION_H
#define GPTCORE_ATTENTION_H

#include <stdint.h>

#include "gptcore/api.h"
#include "gptcore/status.h"
#include "gptcore/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gc_attention_fwd_params {
  gc_tensor q;   /* [B, H, T_q, D] */
  gc_tensor k;   /* [B, H, T_k, D] */
  gc_tensor v;   /* [B, H, T_k, D] */
  gc_tensor out; /* out [B, H, T_q, D], like q */
  gc_tensor lse; /* out [B, H, T_q] float32 */
  float scale;   /* softmax scale, usually 1 / sqrt(D) */
  int32_t causal;
  float dropout_p; /* in [0, 1) */
  uint64_t seed;
  uint64_t offset;
  gc_tensor cu_seqlens; /* optional [B, S + 1] int32 document boundaries (see above); data NULL = none */
} gc_attention_fwd_params;

GC_API gc_status gc_attention_fwd(const gc_attention_fwd_params* params, void* stream);

typedef struct gc_attention_bwd_params {
  gc_tensor q, k, v, out; /* as in the forward */
  gc_tensor dout;         /* [B, H, T_q, D] gradient of out */
  gc_tensor lse;          /* [B, H, T_q] float32, from the forward */
  gc_tensor dq, dk, dv;   /* out, like q, k, v */
  float scale;
  int32_t causal;
  float dropout_p;
  uint64_t seed;
  uint64_t offset;
  gc_tensor cu_seqlens; /* optional, as in the forward (the same tensor) */
} gc_attention_bwd_params;

/* Scratch for the backward (e.g. float32 dq accumulators, rowsum(dout * out)).
 * With T_q = 0 (and T_k >= 1) dq is empty and dk, dv are written as zeros.
 * Reproducibility: the CPU backward is bitwise deterministic; on CUDA dk and dv are, but dq is
 * summed over key tiles with float atomics in no fixed order, so it can differ in the last bits
 * from run to run. */
GC_API gc_status gc_attention_bwd_workspace_size(const gc_attention_bwd_params* params, size_t* bytes);
GC_API gc_status gc_attention_bwd(const gc_attention_bwd_params* params, void* workspace, size_t workspace_bytes,
                                  void* stream);

/* Decoding: a few new queries per sequence over a KV cache, no dropout, no gradient.
 * The new tokens' keys and values are already written into the cache; sequence b's valid
 * cache length is cache_lens[b] (<= T_max), and new query t (of T_new) sits at position
 * cache_lens[b] - T_new + t, attending to cache positions <= its own when causal. */
typedef struct gc_attention_decode_params {
  gc_tensor q;          /* [B, H, T_new, D] */
  gc_tensor k_cache;    /* [B, H, T_max, D] */
  gc_tensor v_cache;    /* [B, H, T_max, D] */
  gc_tensor cache_lens; /* [B] int32, each in [T_new, T_max] */
  gc_tensor out;        /* out [B, H, T_new, D], like q */
  float scale;
  int32_t causal;
} gc_attention_decode_params;

/* Scratch for decoding: on CUDA, when B * H * T_new rows are few next to the device's SMs, each
 * row's cache is split into chunks whose partial results (float32) meet in the workspace
 * (flash-decoding). Depends on the shapes and the device; 0 on CPU and without a split. */
GC_API gc_status gc_attention_decode_workspace_size(const gc_attention_decode_params* params, size_t* bytes);
GC_API gc_status gc_attention_decode(const gc_attention_decode_params* params, void* workspace, size_t workspace_bytes,
                                     void* stream);

/* The uniform draw in [0, 1) behind dropout element n: for tests and references. */
GC_API float gc_dropout_uniform(uint64_t seed, uint64_t offset, uint64_t n);

#ifdef __cplusplus
}
#endif
#endif
