// gc_gpt_sample_index* and gc_gpt_blend_index: validation, then one pass each on the host.
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/check.h"
#include "common/error.h"
#include "gptcore/gpt_samples.h"

namespace gc {
namespace {

gc_status check_host_vector(const char* api, const gc_tensor& t, const char* name,
                            std::initializer_list<int32_t> dtypes) {
  GC_TRY(check_view(api, t, name));
  if (t.device_type != GC_CPU)
    return fail(GC_ERROR_DEVICE, "%s: '%s' is on CUDA; the index builders read host memory", api, name);
  GC_TRY(check_dtype(api, t, name, dtypes));
  if (t.ndim != 1)
    return fail(GC_ERROR_SHAPE, "%s: '%s' has shape %s; expected one dimension", api, name, shape_string(t).c_str());
  return GC_OK;
}

// Validates sizes, doc_index and seq_len, and counts the tokens the document index reads.
template <class Doc>
gc_status count_tokens(const char* api, const int32_t* sizes, int64_t num_documents, const Doc* doc, int64_t length,
                       int64_t* tokens) {
  int64_t total = 0;
  for (int64_t k = 0; k < length; ++k) {
    const int64_t d = doc[k];
    if (d < 0 || d >= num_documents)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: doc_index[%lld] = %lld is not a document id ('sizes' has %lld documents)",
                  api, (long long)k, (long long)d, (long long)num_documents);
    if (sizes[d] < 0)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: sizes[%lld] = %d; document sizes must be >= 0", api, (long long)d,
                  sizes[d]);
    total += sizes[d];
  }
  *tokens = total;
  return GC_OK;
}

gc_status samples_held(const char* api, const gc_gpt_sample_index_params& p, int64_t* num_samples) {
  GC_TRY(check_host_vector(api, p.sizes, "sizes", {GC_INT32}));
  GC_TRY(check_host_vector(api, p.doc_index, "doc_index", {GC_INT32, GC_INT64}));
  if (p.seq_len < 1) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: seq_len must be >= 1, got %lld", api, (long long)p.seq_len);
  const int64_t length = p.doc_index.shape[0];
  if (length == 0) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: 'doc_index' is empty: there are no documents to sample", api);
  const auto* sizes = static_cast<const int32_t*>(p.sizes.data);
  int64_t tokens = 0;
  if (p.doc_index.dtype == GC_INT32)
    GC_TRY(count_tokens(api, sizes, p.sizes.shape[0], static_cast<const int32_t*>(p.doc_index.data), length, &tokens));
  else
    GC_TRY(count_tokens(api, sizes, p.sizes.shape[0], static_cast<const int64_t*>(p.doc_index.data), length, &tokens));
  if (tokens < p.seq_len + 1)
    return fail(GC_ERROR_INVALID_ARGUMENT,
                "%s: the documents hold %lld tokens but one sample needs seq_len + 1 = %lld; use more documents or "
                "a shorter seq_len",
                api, (long long)tokens, (long long)(p.seq_len + 1));
  *num_samples = (tokens - 1) / p.seq_len;
  return GC_OK;
}

// Walks the token stream document by document, writing each sample start that falls inside the
// current document. Prefetching the sizes of documents further on keeps their random loads off the
// critical path after the loop's hard-to-predict branches.
template <class Doc>
void fill_sample_index(const int32_t* sizes, const Doc* doc, int64_t length, int64_t seq_len, int64_t num_samples,
                       int64_t* out) {
  constexpr int64_t kPrefetch = 16;
  out[0] = 0;
  out[1] = 0;
  int64_t s = 1, next = seq_len, start = 0;  // sample s starts at stream token next = s * seq_len
  for (int64_t position = 0; position < length && s <= num_samples; ++position) {
    if (position + kPrefetch < length) __builtin_prefetch(sizes + doc[position + kPrefetch]);
    const int64_t end = start + sizes[doc[position]];
    for (; next < end && s <= num_samples; ++s, next += seq_len) {
      out[2 * s] = position;
      out[2 * s + 1] = next - start;
    }
    start = end;
  }
}

// share[d] = weights[d] / sum; datasets with no share are never picked.
template <class Index>
void fill_blend_index(const std::vector<double>& share, int64_t size, Index* dataset_index,
                      int64_t* dataset_sample_index, std::vector<int64_t>& taken) {
  const int64_t num_datasets = static_cast<int64_t>(share.size());
  for (int64_t i = 0; i < size; ++i) {
    const double step = i > 0 ? double(i) : 1.0;
    int64_t best = -1;
    double best_lag = 0;
    for (int64_t d = 0; d < num_datasets; ++d) {
      const double lag = share[d] * step - double(taken[d]);
      if (share[d] > 0 && (best < 0 || lag > best_lag)) {
        best_lag = lag;
        best = d;
      }
    }
    dataset_index[i] = static_cast<Index>(best);
    dataset_sample_index[i] = taken[best]++;
  }
}

}  // namespace
}  // namespace gc

using namespace gc;

extern "C" gc_status gc_gpt_sample_index_count(const gc_gpt_sample_index_params* params, int64_t* num_samples) {
  constexpr const char* api = "gc_gpt_sample_index_count";
  return guarded(api, [&]() -> gc_status {
    if (!params || !num_samples)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params and num_samples must not be NULL", api);
    return samples_held(api, *params, num_samples);
  });
}

extern "C" gc_status gc_gpt_sample_index(const gc_gpt_sample_index_params* params) {
  constexpr const char* api = "gc_gpt_sample_index";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_gpt_sample_index_params& p = *params;
    int64_t held = 0;
    GC_TRY(samples_held(api, p, &held));
    GC_TRY(check_view(api, p.sample_index, "sample_index"));
    GC_TRY(check_dtype(api, p.sample_index, "sample_index", {GC_INT64}));
    if (p.sample_index.device_type != GC_CPU || p.sample_index.ndim != 2 || p.sample_index.shape[0] < 1 ||
        p.sample_index.shape[1] != 2)
      return fail(GC_ERROR_SHAPE, "%s: 'sample_index' must be a host array of shape [num_samples + 1, 2], got %s", api,
                  shape_string(p.sample_index).c_str());
    const int64_t wanted = p.sample_index.shape[0] - 1;
    if (wanted > held)
      return fail(GC_ERROR_SHAPE,
                  "%s: 'sample_index' has rows for %lld samples but the documents hold %lld; ask "
                  "gc_gpt_sample_index_count, or repeat the documents for more epochs",
                  api, (long long)wanted, (long long)held);
    const auto* sizes = static_cast<const int32_t*>(p.sizes.data);
    auto* out = static_cast<int64_t*>(p.sample_index.data);
    if (p.doc_index.dtype == GC_INT32)
      fill_sample_index(sizes, static_cast<const int32_t*>(p.doc_index.data), p.doc_index.shape[0], p.seq_len, wanted, out);
    else
      fill_sample_index(sizes, static_cast<const int64_t*>(p.doc_index.data), p.doc_index.shape[0], p.seq_len, wanted, out);
    return GC_OK;
  });
}

extern "C" gc_status gc_gpt_blend_index(const gc_gpt_blend_index_params* params) {
  constexpr const char* api = "gc_gpt_blend_index";
  return guarded(api, [&]() -> gc_status {
    if (!params) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: params is NULL", api);
    const gc_gpt_blend_index_params& p = *params;
    GC_TRY(check_host_vector(api, p.weights, "weights", {GC_FLOAT64}));
    GC_TRY(check_host_vector(api, p.dataset_index, "dataset_index", {GC_UINT8, GC_UINT16}));
    GC_TRY(check_host_vector(api, p.dataset_sample_index, "dataset_sample_index", {GC_INT64}));
    GC_TRY(check_same_shape(api, p.dataset_sample_index, "dataset_sample_index", p.dataset_index, "dataset_index"));
    const int64_t num_datasets = p.weights.shape[0];
    if (num_datasets == 0) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: 'weights' is empty: there is nothing to blend", api);
    const int64_t most = p.dataset_index.dtype == GC_UINT8 ? 256 : 65536;
    if (num_datasets > most)
      return fail(GC_ERROR_DTYPE, "%s: %lld datasets do not fit 'dataset_index' of dtype %s (at most %lld)", api,
                  (long long)num_datasets, gc_dtype_name(p.dataset_index.dtype), (long long)most);
    const auto* weights = static_cast<const double*>(p.weights.data);
    double total = 0;
    for (int64_t d = 0; d < num_datasets; ++d) {
      if (!(std::isfinite(weights[d]) && weights[d] >= 0))
        return fail(GC_ERROR_INVALID_ARGUMENT, "%s: weights[%lld] = %g; weights must be finite and >= 0", api,
                    (long long)d, weights[d]);
      total += weights[d];
    }
    if (!(total > 0)) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: the weights sum to 0; give one a positive weight", api);
    std::vector<double> share(weights, weights + num_datasets);
    for (double& w : share) w /= total;
    std::vector<int64_t> taken(num_datasets, 0);
    const int64_t size = p.dataset_index.shape[0];
    auto* sample = static_cast<int64_t*>(p.dataset_sample_index.data);
    if (p.dataset_index.dtype == GC_UINT8)
      fill_blend_index(share, size, static_cast<uint8_t*>(p.dataset_index.data), sample, taken);
    else
      fill_blend_index(share, size, static_cast<uint16_t*>(p.dataset_index.data), sample, taken);
    return GC_OK;
  });
}
