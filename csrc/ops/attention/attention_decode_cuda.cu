// Decoding attention on CUDA: a few new queries per sequence over a KV cache, on CUDA cores
// (each cache element is read once per query, so the kernel is bound by memory, not math).
//
// One CTA of 8 warps per (b, h, new query t). The cache length is read from cache_lens[b] on
// the device. Warp w takes keys w, w + 8, w + 16, ... of the visible range; lane l holds head
// dims l, l + 32, l + 64, l + 96. Per key the warp reduces the dot product with shuffles and
// updates its online-softmax state (m, l) and its float output accumulator; at the end the
// 8 warps' states are merged through shared memory (max_sum_merge rescaling).
//
// Invariants relied on:
// - q, k_cache, v_cache, out contiguous; D <= kMaxD = 128 (API layer), so 4 dims per lane.
// - The visible keys of query t are [0, decode_key_end(cache_lens[b], T_max, T_new, t, causal)),
//   with cache_lens[b] clamped to [0, T_max]; a query that sees no key writes zeros.
// - A warp's m stays -inf until its first key; alpha = exp(m - m') with m = -inf is 0 and its
//   accumulators are 0, so nothing turns into NaN.
#include "ops/attention/attention_cuda_common.cuh"

namespace gc {
namespace {

using namespace attn;

constexpr int kDecodeWarps = 8;
constexpr int kMaxD = 128;
constexpr int kDimsPerLane = kMaxD / 32;

template <class T>
struct DecodeArgs {
  const T* q;
  const T* k_cache;
  const T* v_cache;
  const int32_t* cache_lens;
  T* out;
  int64_t H, T_new, T_max;
  int D;
  float scale;
  bool causal;
};

template <class T>
__global__ void __launch_bounds__(kDecodeWarps * 32) decode_kernel(const DecodeArgs<T> a) {
  __shared__ float warp_m[kDecodeWarps], warp_l[kDecodeWarps];
  __shared__ float warp_acc[kDecodeWarps][kMaxD];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t bht = blockIdx.x;  // (b * H + h) * T_new + t
  const int64_t t = bht % a.T_new, bh = bht / a.T_new, b = bh / a.H;
  const int64_t key_end = decode_key_end(a.cache_lens[b], a.T_max, a.T_new, t, a.causal);

  float q[kDimsPerLane];
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) {
    const int d = lane + 32 * k;
    q[k] = d < a.D ? to_float(a.q[bht * a.D + d]) * a.scale : 0.f;
  }
  const T* kc = a.k_cache + bh * a.T_max * a.D;
  const T* vc = a.v_cache + bh * a.T_max * a.D;

  float m = -INFINITY, l = 0.f, acc[kDimsPerLane] = {};
  for (int64_t j = warp; j < key_end; j += kDecodeWarps) {
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      const int d = lane + 32 * k;
      if (d < a.D) dot += q[k] * to_float(kc[j * a.D + d]);
    }
    const float s = warp_sum(dot);
    const float m_new = fmaxf(m, s);
    const float alpha = __expf(m - m_new), p = __expf(s - m_new);
    l = l * alpha + p;
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k) {
      const int d = lane + 32 * k;
      acc[k] = acc[k] * alpha + (d < a.D ? p * to_float(vc[j * a.D + d]) : 0.f);
    }
    m = m_new;
  }

  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) warp_acc[warp][lane + 32 * k] = acc[k];
  __syncthreads();

  MaxSum total = max_sum_empty();
#pragma unroll
  for (int w = 0; w < kDecodeWarps; ++w) total = max_sum_merge(total, MaxSum{warp_m[w], warp_l[w]});
  const float inv_l = total.s > 0.f ? 1.f / total.s : 0.f;
  for (int d = threadIdx.x; d < a.D; d += kDecodeWarps * 32) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w)
      if (warp_m[w] != -INFINITY) o += warp_acc[w][d] * __expf(warp_m[w] - total.m);
    a.out[bht * a.D + d] = from_float<T>(o * inv_l);
  }
}

}  // namespace

gc_status attention_decode_cuda(const gc_attention_decode_params& p, const AttentionShape& s, void* stream) {
  DeviceGuard guard(p.q.device_index);
  GC_CUDA_TRY(guard.status());
  const int64_t blocks = s.B * s.H * s.T_q;  // T_q = T_new, T_k = T_max
  if (blocks == 0) return GC_OK;
  if (s.D > kMaxD)
    return fail(GC_ERROR_SHAPE, "gc_attention_decode: CUDA decoding takes head dims up to %d, not %lld", kMaxD,
                static_cast<long long>(s.D));
  if (blocks > 0x7fffffff)
    return fail(GC_ERROR_SHAPE, "gc_attention_decode: B*H*T_new = %lld too large for the CUDA grid",
                static_cast<long long>(blocks));
  return half_switch(p.q.dtype, "gc_attention_decode", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const DecodeArgs<T> a{static_cast<const T*>(p.q.data),
                          static_cast<const T*>(p.k_cache.data),
                          static_cast<const T*>(p.v_cache.data),
                          static_cast<const int32_t*>(p.cache_lens.data),
                          static_cast<T*>(p.out.data),
                          s.H,
                          s.T_q,
                          s.T_k,
                          static_cast<int>(s.D),
                          p.scale,
                          p.causal != 0};
    decode_kernel<T><<<static_cast<unsigned>(blocks), kDecodeWarps * 32, 0, as_stream(stream)>>>(a);
    return check_launch("attention decode_kernel");
  });
}

}  // namespace gc
