// AdamW on the CPU: every tensor is cut into fixed-size chunks, and the flat list of chunks
// is spread over OpenMP threads, so a few huge tensors and many tiny ones balance alike.
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/cpu_math.h"
#include "common/dispatch.h"
#include "ops/adamw/adamw.h"

namespace gc {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements; 128 KiB of float32 per stream fits L2 comfortably

struct Chunk {
  int64_t tensor;
  int64_t begin;
  int64_t end;
};

std::vector<Chunk> chunk_list(const gc_adamw_params& p, int64_t* total) {
  std::vector<Chunk> chunks;
  *total = 0;
  for (int64_t i = 0; i < p.num_tensors; ++i) {
    const int64_t n = p.tensors[i].numel;
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back(Chunk{i, b, b + kChunk < n ? b + kChunk : n});
    *total += n;
  }
  return chunks;
}

// Exponent bits all set: inf or nan, tested on the bits so the loop vectorizes.
inline bool nonfinite(float x) { return (float_bits(x) & 0x7f800000u) == 0x7f800000u; }

template <class G>
GC_CPU_CLONES bool chunk_has_nonfinite(const G* __restrict grad, int64_t n, float inv_grad_scale) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) bad |= nonfinite(to_float(grad[i]) * inv_grad_scale);
  return bad != 0;
}

template <class P, class G>
GC_CPU_CLONES void update_chunk(P* __restrict param, const G* __restrict grad, float* __restrict master,
                                float* __restrict m, float* __restrict v, int64_t n, float lr, float weight_decay,
                                AdamWScalars s) {
  if constexpr (std::is_same_v<P, float>) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) param[i] = adamw_update(param[i], to_float(grad[i]), m[i], v[i], lr, weight_decay, s);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float w = adamw_update(master[i], to_float(grad[i]), m[i], v[i], lr, weight_decay, s);
      master[i] = w;
      param[i] = from_float<P>(w);
    }
  }
}

bool any_nonfinite(const gc_adamw_params& p, const std::vector<Chunk>& chunks, int64_t total) {
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());
  int bad = 0;
#pragma omp parallel for schedule(dynamic, 4) reduction(| : bad) if (total > kChunk)
  for (int64_t k = 0; k < num_chunks; ++k) {
    const Chunk& c = chunks[k];
    const gc_adamw_tensor& t = p.tensors[c.tensor];
    GC_FLOAT_SWITCH(t.grad_dtype, G, [&] {
      bad |= chunk_has_nonfinite(static_cast<const G*>(t.grad) + c.begin, c.end - c.begin, p.inv_grad_scale);
      return GC_OK;
    });
  }
  return bad != 0;
}

}  // namespace

gc_status adamw_step_cpu(const gc_adamw_params& p) {
  int64_t total = 0;
  const std::vector<Chunk> chunks = chunk_list(p, &total);
  if (p.found_inf) {
    if (any_nonfinite(p, chunks, total)) *p.found_inf = 1;
    if (*p.found_inf) return GC_OK;
  }
  std::vector<AdamWScalars> scalars(p.num_tensors);
  for (int64_t i = 0; i < p.num_tensors; ++i) scalars[i] = adamw_scalars(p, p.tensors[i].step);
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(dynamic, 4) if (total > kChunk)
  for (int64_t k = 0; k < num_chunks; ++k) {
    const Chunk& c = chunks[k];
    const gc_adamw_tensor& t = p.tensors[c.tensor];
    GC_FLOAT_SWITCH(t.param_dtype, P, [&] {
      return GC_FLOAT_SWITCH(t.grad_dtype, G, [&] {
        update_chunk<P, G>(static_cast<P*>(t.param) + c.begin, static_cast<const G*>(t.grad) + c.begin,
                           t.master ? t.master + c.begin : nullptr, t.exp_avg + c.begin, t.exp_avg_sq + c.begin,
                           c.end - c.begin, t.lr, t.weight_decay, scalars[c.tensor]);
        return GC_OK;
      });
    });
  }
  return GC_OK;
}

}  // namespace gc
