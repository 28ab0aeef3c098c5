// Decoding attention on CUDA: a few new queries per sequence over a KV cache, on CUDA cores
// (each cache element is read once per query, so the kernel is bound by memory, not math).
//
// One CTA of 8 warps per (b, h, new query t) and key chunk. With few such rows next to the
// device's SMs, each row's cache is split into decode_splits(...) chunks (flash-decoding), so a
// single sequence still spreads over the GPU; otherwise there is one chunk, the whole cache.
// The cache length is read from cache_lens[b] on the device. Warp w takes keys w, w + 8, ... of
// the chunk's visible range; lane l holds head dims l, l + 32, l + 64, l + 96. Per key the warp
// reduces the dot product with shuffles and updates its online-softmax state (m, l) and its
// float output accumulator; at the end the 8 warps' states are merged through shared memory
// (max_sum_merge rescaling). With one chunk the CTA writes out = acc / l; with several it writes
// its partial (m, l, acc) to the workspace, and combine_kernel merges a row's chunks the same way.
//
// Invariants relied on:
// - q, k_cache, v_cache, out contiguous; D <= kMaxD = 128 (API layer), so 4 dims per lane.
// - The visible keys of query t are [0, decode_key_end(cache_lens[b], T_max, T_new, t, causal)),
//   with cache_lens[b] clamped to [0, T_max]; chunk c covers [c * chunk, (c + 1) * chunk) of them.
//   A chunk with no visible key has m = -inf, l = 0, acc = 0, and a query that sees no key at
//   all writes zeros.
// - A warp's m stays -inf until its first key; alpha = exp(m - m') with m = -inf is 0 and its
//   accumulators are 0, so nothing turns into NaN; merges skip states with m = -inf.
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
  int64_t chunk;    // keys per chunk; gridDim.y chunks per row
  float* part_acc;  // [rows, chunks, D] when gridDim.y > 1
  float* part_ml;   // [rows, chunks, 2]
};

template <class T>
__global__ void __launch_bounds__(kDecodeWarps * 32) decode_kernel(const DecodeArgs<T> a) {
  __shared__ float warp_m[kDecodeWarps], warp_l[kDecodeWarps];
  __shared__ float warp_acc[kDecodeWarps][kMaxD];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t bht = blockIdx.x;  // (b * H + h) * T_new + t
  const int64_t t = bht % a.T_new, bh = bht / a.T_new, b = bh / a.H;
  const int64_t key_end = decode_key_end(a.cache_lens[b], a.T_max, a.T_new, t, a.causal);
  const int64_t chunk_begin = static_cast<int64_t>(blockIdx.y) * a.chunk;
  const int64_t chunk_end = chunk_begin + a.chunk < key_end ? chunk_begin + a.chunk : key_end;

  float q[kDimsPerLane];
#pragma unroll
  for (int k = 0; k < kDimsPerLane; ++k) {
    const int d = lane + 32 * k;
    q[k] = d < a.D ? to_float(a.q[bht * a.D + d]) * a.scale : 0.f;
  }
  const T* kc = a.k_cache + bh * a.T_max * a.D;
  const T* vc = a.v_cache + bh * a.T_max * a.D;

  float m = -INFINITY, l = 0.f, acc[kDimsPerLane] = {};
  for (int64_t j = chunk_begin + warp; j < chunk_end; j += kDecodeWarps) {
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
  const int64_t part = bht * gridDim.y + blockIdx.y;  // this CTA's slot in the workspace
  if (gridDim.y > 1 && threadIdx.x == 0) {
    a.part_ml[2 * part] = total.m;
    a.part_ml[2 * part + 1] = total.s;
  }
  const float inv_l = total.s > 0.f ? 1.f / total.s : 0.f;
  for (int d = threadIdx.x; d < a.D; d += kDecodeWarps * 32) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w)
      if (warp_m[w] != -INFINITY) o += warp_acc[w][d] * __expf(warp_m[w] - total.m);
    if (gridDim.y > 1) {
      a.part_acc[part * a.D + d] = o;  // relative to total.m, unnormalized
    } else {
      a.out[bht * a.D + d] = from_float<T>(o * inv_l);
    }
  }
}

// out row = merge of its `chunks` partial states; one CTA of kMaxD threads per row, thread d
// owns head dim d.
template <class T>
__global__ void __launch_bounds__(kMaxD) combine_kernel(const float* __restrict__ part_acc,
                                                        const float* __restrict__ part_ml, T* __restrict__ out,
                                                        int chunks, int D) {
  const int64_t row = blockIdx.x;
  const float* ml = part_ml + row * chunks * 2;
  MaxSum total = max_sum_empty();
  for (int c = 0; c < chunks; ++c) total = max_sum_merge(total, MaxSum{ml[2 * c], ml[2 * c + 1]});
  const int d = threadIdx.x;
  if (d >= D) return;
  float o = 0.f;
  for (int c = 0; c < chunks; ++c)
    if (ml[2 * c] != -INFINITY) o += part_acc[(row * chunks + c) * D + d] * __expf(ml[2 * c] - total.m);
  out[row * D + d] = from_float<T>(total.s > 0.f ? o / total.s : 0.f);
}

gc_status sm_count(int device, int* count) {
  GC_CUDA_TRY(cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, device));
  return GC_OK;
}

}  // namespace

gc_status attention_decode_workspace_cuda(const AttentionShape& s, int device, size_t* bytes) {
  int sms = 0;
  GC_TRY(sm_count(device, &sms));
  const int64_t rows = s.B * s.H * s.T_q;
  *bytes = static_cast<size_t>(decode_workspace_floats(rows, decode_splits(rows, s.T_k, sms), s.D)) * sizeof(float);
  return GC_OK;
}

gc_status attention_decode_cuda(const gc_attention_decode_params& p, const AttentionShape& s, void* workspace,
                                void* stream) {
  DeviceGuard guard(p.q.device_index);
  GC_CUDA_TRY(guard.status());
  const int64_t rows = s.B * s.H * s.T_q;  // T_q = T_new, T_k = T_max
  if (rows == 0) return GC_OK;
  if (s.D > kMaxD)
    return fail(GC_ERROR_SHAPE, "gc_attention_decode: CUDA decoding takes head dims up to %d, not %lld", kMaxD,
                static_cast<long long>(s.D));
  if (rows > 0x7fffffff)
    return fail(GC_ERROR_SHAPE, "gc_attention_decode: B*H*T_new = %lld too large for the CUDA grid",
                static_cast<long long>(rows));
  int sms = 0;
  GC_TRY(sm_count(p.q.device_index, &sms));
  const int64_t splits = decode_splits(rows, s.T_k, sms);
  float* part_acc = static_cast<float*>(workspace);
  float* part_ml = splits > 1 ? part_acc + rows * splits * s.D : nullptr;
  cudaStream_t st = as_stream(stream);
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
                          p.causal != 0,
                          ceil_div(s.T_k, splits),
                          part_acc,
                          part_ml};
    decode_kernel<T><<<dim3(static_cast<unsigned>(rows), static_cast<unsigned>(splits)), kDecodeWarps * 32, 0, st>>>(a);
    GC_TRY(check_launch("attention decode_kernel"));
    if (splits == 1) return GC_OK;
    combine_kernel<T><<<static_cast<unsigned>(rows), kMaxD, 0, st>>>(part_acc, part_ml, a.out, static_cast<int>(splits),
                                                                    a.D);
    return check_launch("attention decode combine_kernel");
  });
}

}  // namespace gc
