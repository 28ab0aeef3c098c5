// Cross-entropy on CUDA: one block per row; float32/float16/bfloat16 logits, float32 math.
// A row is read as a scalar head up to the first 16-byte boundary, then 16-byte packs, then
// a scalar tail, so odd vocabulary sizes (50257) still get packed loads.
#include <cmath>

#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/math.h"
#include "ops/cross_entropy/cross_entropy.h"

namespace gc {
namespace {

constexpr int kThreads = 512;

template <class T>
constexpr int pack_width() {
  return 16 / static_cast<int>(sizeof(T));
}

// A row of n elements at `row` as [0, head) scalars, then `packs` aligned packs, then scalars.
// packed = false (another pointer in the pass is aligned differently) makes it all scalars.
struct RowSplit {
  int64_t head, packs;
};

template <class T>
__device__ __forceinline__ RowSplit split_row(const T* row, int64_t n, bool packed) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(row);
  if (!packed || addr % sizeof(T) != 0) return RowSplit{n, 0};
  const int64_t head = min(n, static_cast<int64_t>(((16 - addr % 16) % 16) / sizeof(T)));
  return RowSplit{head, (n - head) / pack_width<T>()};
}

__device__ __forceinline__ MaxSum warp_max_sum(MaxSum a) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    a = max_sum_merge(a, MaxSum{__shfl_xor_sync(0xffffffffu, a.m, o), __shfl_xor_sync(0xffffffffu, a.s, o)});
  return a;
}

// The block's combined state, returned to every thread.
__device__ __forceinline__ MaxSum block_max_sum(MaxSum a) {
  __shared__ MaxSum warps[kThreads / 32];
  a = warp_max_sum(a);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warps[warp] = a;
  __syncthreads();
  return warp_max_sum(lane < kThreads / 32 ? warps[lane] : max_sum_empty());
}

// Adds k values that share one running max: one exp per value, a rescale only when the max grows.
template <int K>
__device__ __forceinline__ void max_sum_add(MaxSum& a, const float (&x)[K]) {
  float m = a.m;
#pragma unroll
  for (int k = 0; k < K; ++k) m = fmaxf(m, x[k]);
  if (m != a.m) {
    a.s = a.m == -INFINITY ? a.s : a.s * __expf(a.m - m);
    a.m = m;
  }
  const float shift = m == -INFINITY ? 0.f : m;  // all -inf so far: exp(-inf) = 0, not NaN
#pragma unroll
  for (int k = 0; k < K; ++k) a.s += __expf(x[k] - shift);
}

template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    fwd_kernel(const T* __restrict__ logits, const I* __restrict__ target, float* __restrict__ lse,
               float* __restrict__ loss, float* __restrict__ target_logit, int64_t V, int64_t vocab_start,
               int64_t vocab_total, int64_t ignore_index) {
  constexpr int VEC = pack_width<T>();
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  const RowSplit split = split_row(x, V, true);
  MaxSum acc = max_sum_empty();
  for (int64_t i = threadIdx.x; i < split.head; i += kThreads) {
    const float v[1] = {to_float(x[i])};
    max_sum_add(acc, v);
  }
  const T* body = x + split.head;
  for (int64_t i = threadIdx.x; i < split.packs; i += kThreads) {
    const Pack<T, VEC> p = load_pack<T, VEC>(body + i * VEC);
    float v[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] = to_float(p.v[k]);
    max_sum_add(acc, v);
  }
  for (int64_t i = split.head + split.packs * VEC + threadIdx.x; i < V; i += kThreads) {
    const float v[1] = {to_float(x[i])};
    max_sum_add(acc, v);
  }
  acc = block_max_sum(acc);
  if (threadIdx.x != 0) return;
  const float l = max_sum_lse(acc);
  const int64_t t = target[row], col = t - vocab_start;
  float tl = 0.f, out = 0.f;
  if (t != ignore_index) {
    if (t < 0 || t >= vocab_total) {
      tl = out = NAN;  // an invalid target: flagged in the output, since no status can be returned
    } else {
      tl = col >= 0 && col < V ? to_float(x[col]) : 0.f;
      out = l - tl;
    }
  }
  lse[row] = l;
  loss[row] = out;
  if (target_logit) target_logit[row] = tl;
}

// dlogits may alias logits: each element is read and then written by the same thread.
template <class T, class I>
__global__ void __launch_bounds__(kThreads)
    bwd_kernel(const T* logits, const I* __restrict__ target, const float* __restrict__ lse,
               const float* __restrict__ dloss, T* dlogits, int64_t V, int64_t vocab_start, int64_t ignore_index,
               bool packed) {
  constexpr int VEC = pack_width<T>();
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  T* dx = dlogits + row * V;
  const int64_t t = target[row];
  const bool ignored = t == ignore_index;
  const int64_t col = t - vocab_start;
  const float l = lse[row], d = ignored ? 0.f : dloss[row];
  auto grad = [&](float v, int64_t j) { return ignored ? 0.f : cross_entropy_grad(v, l, j == col, d); };
  const RowSplit split = split_row(x, V, packed);
  for (int64_t i = threadIdx.x; i < split.head; i += kThreads) dx[i] = from_float<T>(grad(to_float(x[i]), i));
  for (int64_t i = threadIdx.x; i < split.packs; i += kThreads) {
    const int64_t j0 = split.head + i * VEC;
    const Pack<T, VEC> p = load_pack<T, VEC>(x + j0);
    Pack<T, VEC> out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) out.v[k] = from_float<T>(grad(to_float(p.v[k]), j0 + k));
    store_pack<T, VEC>(dx + j0, out);
  }
  for (int64_t i = split.head + split.packs * VEC + threadIdx.x; i < V; i += kThreads)
    dx[i] = from_float<T>(grad(to_float(x[i]), i));
}

}  // namespace

gc_status cross_entropy_fwd_cuda(const gc_cross_entropy_fwd_params& p, int64_t rows, int64_t V, void* stream) {
  DeviceGuard guard(p.logits.device_index);
  GC_CUDA_TRY(guard.status());
  return GC_FLOAT_SWITCH(p.logits.dtype, T, [&] {
    return GC_INDEX_SWITCH(p.target.dtype, I, [&] {
      fwd_kernel<T, I><<<static_cast<unsigned>(rows), kThreads, 0, as_stream(stream)>>>(
          static_cast<const T*>(p.logits.data), static_cast<const I*>(p.target.data), static_cast<float*>(p.lse.data),
          static_cast<float*>(p.loss.data), static_cast<float*>(p.target_logit.data), V, p.vocab_start, p.vocab_total,
          p.ignore_index);
      return check_launch("cross_entropy fwd_kernel");
    });
  });
}

gc_status cross_entropy_bwd_cuda(const gc_cross_entropy_bwd_params& p, int64_t rows, int64_t V, void* stream) {
  DeviceGuard guard(p.logits.device_index);
  GC_CUDA_TRY(guard.status());
  // Packs need logits and dlogits to sit at the same offset from a 16-byte boundary.
  const bool packed = (reinterpret_cast<uintptr_t>(p.logits.data) - reinterpret_cast<uintptr_t>(p.dlogits.data)) % 16 == 0;
  return GC_FLOAT_SWITCH(p.logits.dtype, T, [&] {
    return GC_INDEX_SWITCH(p.target.dtype, I, [&] {
      bwd_kernel<T, I><<<static_cast<unsigned>(rows), kThreads, 0, as_stream(stream)>>>(
          static_cast<const T*>(p.logits.data), static_cast<const I*>(p.target.data),
          static_cast<const float*>(p.lse.data), static_cast<const float*>(p.dloss.data), static_cast<T*>(p.dlogits.data),
          V, p.vocab_start, p.ignore_index, packed);
      return check_launch("cross_entropy bwd_kernel");
    });
  });
}

}  // namespace gc
