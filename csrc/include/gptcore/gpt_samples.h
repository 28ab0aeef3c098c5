/* Index builders of the GPT sample pipeline (host memory only), Megatron-compatible.
 *
 * Sample index: the documents, read in the order of a (shuffled, epoch-repeated) document
 * index, form one token stream. Sample s covers the seq_len + 1 stream tokens starting at
 * stream position s * seq_len, so consecutive samples share one token (the last label of one
 * is the first input of the next). Row s of sample_index is (position in the document index,
 * token offset in that document) of the first token of sample s; row s + 1 holds the last
 * token of sample s. Row 0 is always (0, 0).
 *
 * Blend index: entry i of the blend says which dataset sample i comes from and which sample
 * of that dataset it is. Each step picks the dataset furthest behind its share
 * (weight * max(i, 1) - taken so far, ties to the lower dataset index), so the counts stay
 * proportional to the weights at every prefix and the result depends on nothing else. */
#ifndef GPTCORE_GPT_SAMPLES_H
#define GPTCORE_GPT_SAMPLES_H

#include "gptcore/api.h"
#include "gptcore/status.h"
#include "gptcore/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gc_gpt_sample_index_params {
  gc_tensor sizes;        /* int32 [num_documents]: tokens of each document, >= 0 */
  gc_tensor doc_index;    /* int32 or int64 [L]: document ids in reading order, each in [0, num_documents) */
  int64_t seq_len;        /* tokens per sample input, >= 1 */
  gc_tensor sample_index; /* out, int64 [num_samples + 1, 2]; num_samples <= the count query's answer */
} gc_gpt_sample_index_params;

/* How many samples the document index holds: (total tokens - 1) / seq_len. Reads sizes,
 * doc_index and seq_len only. Fails when the documents hold fewer than seq_len + 1 tokens. */
GC_API gc_status gc_gpt_sample_index_count(const gc_gpt_sample_index_params* params, int64_t* num_samples);

/* Fills sample_index for the first sample_index.shape[0] - 1 samples. */
GC_API gc_status gc_gpt_sample_index(const gc_gpt_sample_index_params* params);

typedef struct gc_gpt_blend_index_params {
  gc_tensor weights;              /* float64 [num_datasets]: finite, >= 0, positive sum (normalized inside) */
  gc_tensor dataset_index;        /* out, uint8 (<= 256 datasets) or uint16 [size] */
  gc_tensor dataset_sample_index; /* out, int64 [size]: the sample's index within its dataset */
} gc_gpt_blend_index_params;

GC_API gc_status gc_gpt_blend_index(const gc_gpt_blend_index_params* params);

#ifdef __cplusplus
}
#endif
#endif
