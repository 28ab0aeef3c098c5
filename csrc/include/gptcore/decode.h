/* Generation on the CPU without a framework: a GPT-2 style decoder's whole forward over a KV
 * cache in one call, and the weight-only quantized matrix products under it.
 *
 * gc_dense is a linear layer's weight [N, K] in F.linear's layout, stored as float32, bfloat16
 * (converted to float32 on the fly) or int8 with one float32 scale per output row
 * (w[n, k] = scale[n] * q[n, k]); activations and sums stay float32. gc_dense_fwd computes
 * y [M, N] = x [M, K] w^T + bias: for a few rows (decode) by streaming the weight once through
 * vector dot products (AVX2 or AVX-512, chosen at run time), for many rows (prefill) by
 * converting panels of the weight to float32 for OpenBLAS's sgemm. A row's result does not depend
 * on the other rows while M <= GC_DENSE_STREAM_ROWS. Streaming int8 weights, each row of x is
 * first rounded to int16 per block of 1024 values (scale = the block's max |x| / 32767, so the
 * error is at most 2^-16 of that max: ~1/256 of the weights' own int8 rounding), and each block's
 * products are summed exactly in int32 (AVX-512 VNNI, AVX2 or plain C), then scaled; an infinite
 * or NaN x makes the outputs it reaches NaN, as in float32.
 *
 * A bfloat16 or int8 weight can also be given packed (layout GC_DENSE_PACKED, made once by
 * gc_dense_pack): the rows in groups of four, each group a run of 32-value chunks with the four
 * rows' chunks side by side. Streaming then reads one sequential run per thread and loads each
 * piece of x once for four rows: a GPT-2 decode step measured ~20% faster than from rows
 * (bench/RESULTS.md). int8 products are the same numbers as from rows (exact int32 sums) when K
 * is a multiple of 32; bfloat16 ones differ only in the order of the float32 additions.
 *
 * gc_gpt_decode runs the model of gptcore.model.GPT (learned positions, pre-LN, fused QKV,
 * tanh GELU, logits through lm_head) for a ragged batch of sequences: sequence s brings
 * seq_len[s] new tokens at cache positions seq_start[s] .. seq_start[s] + seq_len[s] - 1 of cache
 * slot seq_slot[s]; their keys and values are written into the cache and each new token attends
 * to every earlier position of its slot (causal). A prefill is a sequence with seq_start 0 and its
 * whole prompt; a decode step is one token per sequence. The logits are those of each sequence's
 * last new token [S, vocab_size], or of every new token [n_tokens, vocab_size] with every_position.
 *
 * Every tensor is a contiguous CPU tensor; the caller owns all memory (the cache too). OpenMP
 * threads do the work (omp_get_max_threads()). */
#ifndef GPTCORE_DECODE_H
#define GPTCORE_DECODE_H

#include "gptcore/api.h"
#include "gptcore/status.h"
#include "gptcore/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The most rows for which gc_dense_fwd streams the weight (and a row's result is independent of
 * the others); more rows go through panels and sgemm. */
#define GC_DENSE_STREAM_ROWS 4

/* How a gc_dense's weight lies in memory. Fixed codes (ABI). */
typedef enum gc_dense_layout {
  GC_DENSE_ROWS = 0,  /* [N, K] row-major: F.linear's layout */
  GC_DENSE_PACKED = 1 /* bfloat16 or int8 in gc_dense_pack's order */
} gc_dense_layout;

typedef struct gc_dense {
  gc_tensor weight; /* [N, K] float32, bfloat16 or int8; packed: shape [N, K] still, the data in
                       gc_dense_pack's order (gc_dense_packed_numel(N, K) elements) */
  gc_tensor scale;  /* int8 weights: [N] float32 (required); absent otherwise */
  gc_tensor bias;   /* optional [N] float32 */
  int32_t layout;   /* gc_dense_layout; 0 (rows) when zero-initialised */
} gc_dense;

/* y [M, N] = x [M, K] w^T + bias, x and y float32. */
GC_API gc_status gc_dense_fwd(const gc_dense* dense, gc_tensor x, gc_tensor y);

/* Elements of a packed [N, K] weight: N rounded up to a multiple of 4 times K rounded up to a
 * multiple of 32 (the padding holds zeros). */
GC_API int64_t gc_dense_packed_numel(int64_t N, int64_t K);

/* Writes `weight` ([N, K] bfloat16 or int8, row-major) into `packed` (1-D, gc_dense_packed_numel
 * elements of the same dtype) in the GC_DENSE_PACKED order: weight[n, k] with g = n / 4, r = n % 4,
 * c = k / 32, j = k % 32 goes to element ((g * ceil(K / 32) + c) * 4 + r) * 32 + p, where p = j for
 * int8 and p = 2 (j % 16) + j / 16 for bfloat16 (values j and j + 16 share 32 bits: j in the low
 * half). The int8 scales and the bias stay one per row, in row order. */
GC_API gc_status gc_dense_pack(gc_tensor weight, gc_tensor packed);

typedef struct gc_gpt_layer {
  gc_tensor ln_1_weight, ln_1_bias; /* [C] float32; biases optional */
  gc_dense attn_qkv;                /* [3C, C]: q, k, v of every head, head-major within each */
  gc_dense attn_proj;               /* [C, C] */
  gc_tensor ln_2_weight, ln_2_bias; /* [C] */
  gc_dense mlp_fc;                  /* [F, C] (F: the MLP width, 4C in GPT-2) */
  gc_dense mlp_proj;                /* [C, F] */
} gc_gpt_layer;

typedef struct gc_gpt_model {
  int32_t n_layer;
  int32_t n_head;
  int64_t vocab_size;               /* logits columns: the first vocab_size rows of lm_head */
  float layer_norm_eps;
  gc_tensor wte;                    /* [>= vocab_size, C] float32 token embeddings */
  gc_tensor wpe;                    /* [n_positions, C] float32 position embeddings */
  const gc_gpt_layer* layers;       /* n_layer of them */
  gc_tensor ln_f_weight, ln_f_bias; /* [C] */
  gc_dense lm_head;                 /* [>= vocab_size, C]: GPT-2 ties it to wte (the same memory when float32) */
} gc_gpt_model;

typedef struct gc_gpt_decode_params {
  const gc_gpt_model* model;
  gc_tensor k_cache, v_cache; /* [n_layer, slots, n_head, max_len, C / n_head] float32, in and out */
  gc_tensor tokens;           /* [n_tokens] int32: every sequence's new tokens, one sequence after another */
  gc_tensor seq_slot;         /* [S] int32: each sequence's cache slot (distinct) */
  gc_tensor seq_start;        /* [S] int32: the cache position of its first new token */
  gc_tensor seq_len;          /* [S] int32: its new tokens (>= 1; the lengths sum to n_tokens) */
  gc_tensor logits;           /* out [S, vocab_size], or [n_tokens, vocab_size] with every_position */
  int32_t every_position;
} gc_gpt_decode_params;

GC_API gc_status gc_gpt_decode(const gc_gpt_decode_params* params);

#ifdef __cplusplus
}
#endif
#endif
