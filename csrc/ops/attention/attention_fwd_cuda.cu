// Flash-attention forward on CUDA tensor cores (nvcuda::wmma 16x16x16, float16/bfloat16 inputs,
// float32 accumulation), sm_80+.
//
// One CTA of 4 warps per (batch*head, 64-query tile); the CTA walks the key tiles of 64 that its
// queries can see. Warp w owns query rows [16w, 16w + 16) of the tile from the score to the
// output, so only the K/V tile loads need the whole block; everything else is warp-local:
//   S_w = Q_w K^T (wmma, into float shared memory)
//   online softmax per row by the warp's lanes (lane holds columns lane and lane + 32):
//     m' = max(m, rowmax(scale * S)), alpha = exp(m - m'), P = exp(scale * S - m'),
//     l' = alpha * l + rowsum(P) (before dropout), O_w *= alpha
//   P (dropped and scaled by 1/(1-p)) written as T, then O_w += P_w V (wmma; O_w stays float in
//   shared memory, because a wmma accumulator's element-to-row map is unspecified and the
//   rescale needs rows).
// At the end out = O_w / l and lse = m + log(l) (natural-log units of the scaled scores).
//
// Invariants relied on:
// - q, k, v, out contiguous [B, H, T, D]; D a multiple of 8 in 32..128 (API layer), padded to
//   Dp = 16 * ceil(D / 16) with zeros in shared memory, so the padding adds nothing to S or O.
// - Shared-memory tiles start 128-byte aligned and have leading dims that are multiples of 8
//   (T) / 4 (float), so every wmma pointer (rows and columns multiples of 16) is 32-byte aligned.
// - Key j is visible to query i iff i < T_q, j < visible_key_end(i) (bottom-right causal) and,
//   with packed documents (cu_seqlens), j >= doc_begin(i): lane r holds the first key of the
//   warp's row r and the row's lanes fetch it with a shuffle. The CTA starts at the key tile of
//   its first query's document, skipping the tiles before it. Invisible scores become -inf before
//   the max, and a row with nothing visible yet keeps
//   m = -inf, P = 0, alpha = 0 (shift 0 avoids -inf - -inf). A row with no visible key at all
//   (causal, T_q > T_k) gets out = 0 and lse = -inf.
// - The dropout mask of (bh, i, j) is dropout_uniform(seed, offset, dropout_index(...)) >= p, as
//   on the CPU and in the backward; l sums the undropped probabilities. A tile's mask is drawn
//   with dropout_keep_run (one Philox call per four consecutive keys) in runs of 32 keys of a
//   row per lane; bits of invisible keys are 0, and their probabilities are 0 anyway.
// - Every shared tile a warp writes and another warp reads is fenced by __syncthreads (K, V, Q);
//   warp-private tiles (S_w, P_w, O_w) are fenced by __syncwarp between wmma and lane phases.
#include "ops/attention/attention_cuda_common.cuh"

namespace gc {
namespace {

using namespace attn;

template <class T>
struct FwdArgs {
  const T* q;
  const T* k;
  const T* v;
  T* out;
  float* lse;
  int64_t T_q, T_k;
  int D;
  float scale;
  bool causal;
  float dropout_p;
  uint64_t seed, offset;
  bool vec;          // every tensor 16-byte aligned
  const int32_t* cu;  // packed documents: [B, n_cu] boundaries, or null
  int64_t n_cu, H;
};

template <class T, int Dp>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const FwdArgs<T> a) {
  constexpr FwdSmem L = fwd_smem(Dp, sizeof(T));
  constexpr int kSteps = Dp / 16;  // wmma steps along the head dim
  extern __shared__ __align__(128) unsigned char smem[];
  T* qs = reinterpret_cast<T*>(smem + L.q);
  T* ks = reinterpret_cast<T*>(smem + L.k);
  T* vs = reinterpret_cast<T*>(smem + L.v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* s_w = reinterpret_cast<float*>(smem + L.s) + warp * kWarpRows * L.ld_s;
  T* p_w = reinterpret_cast<T*>(smem + L.p) + warp * kWarpRows * L.ld_p;
  float* o_w = reinterpret_cast<float*>(smem + L.o) + warp * kWarpRows * L.ld_o;

  const int64_t bh = blockIdx.x;
  const int64_t q0 = static_cast<int64_t>(gridDim.y - 1 - blockIdx.y) * kTileQ;  // long causal tiles first
  const T* qg = a.q + bh * a.T_q * a.D;
  const T* kg = a.k + bh * a.T_k * a.D;
  const T* vg = a.v + bh * a.T_k * a.D;

  load_tile<T, kTileQ, Dp>(qs, L.ld_t, qg, q0, a.T_q, a.D, a.vec);
  for (int e = lane; e < kWarpRows * Dp; e += 32) o_w[(e / Dp) * L.ld_o + e % Dp] = 0.f;

  // Per-row state of the warp's 16 rows, the same in every lane.
  float row_m[kWarpRows], row_l[kWarpRows];
#pragma unroll
  for (int r = 0; r < kWarpRows; ++r) {
    row_m[r] = -INFINITY;
    row_l[r] = 0.f;
  }
  const float inv_keep = 1.f / (1.f - a.dropout_p);

  const int64_t q_end = q0 + kTileQ < a.T_q ? q0 + kTileQ : a.T_q;
  const int64_t num_key_tiles = ceil_div(tile_key_end(q_end, a.T_q, a.T_k, a.causal), kTileK);
  // Packed documents: lane r holds the first visible key of the warp's row r (lane r + 16 too).
  const int32_t* cu = a.cu ? a.cu + (bh / a.H) * a.n_cu : nullptr;
  int32_t lane_key_begin = 0;
  if (cu) {
    const int64_t i = q0 + warp * kWarpRows + lane % kWarpRows;
    if (i < a.T_q) lane_key_begin = static_cast<int32_t>(doc_begin(cu, a.n_cu, i));
  }
  const int64_t first_key_tile = cu ? doc_begin(cu, a.n_cu, q0) / kTileK : 0;  // earlier keys: other documents
  __syncthreads();  // Q tile in place
  FragA<T, wmma::row_major> qf[kSteps];
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) wmma::load_matrix_sync(qf[kk], qs + warp * kWarpRows * L.ld_t + kk * 16, L.ld_t);

  for (int64_t kt = first_key_tile; kt < num_key_tiles; ++kt) {
    const int64_t k0 = kt * kTileK;
    __syncthreads();  // every warp is done with the previous K and V
    load_tile<T, kTileK, Dp>(ks, L.ld_t, kg, k0, a.T_k, a.D, a.vec);
    load_tile<T, kTileK, Dp>(vs, L.ld_t, vg, k0, a.T_k, a.D, a.vec);
    __syncthreads();

    // S_w = Q_w K^T: K rows read as the column-major B operand.
#pragma unroll
    for (int n = 0; n < kTileK / 16; ++n) {
      FragC acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < kSteps; ++kk) {
        FragB<T, wmma::col_major> kf;
        wmma::load_matrix_sync(kf, ks + n * 16 * L.ld_t + kk * 16, L.ld_t);
        wmma::mma_sync(acc, qf[kk], kf, acc);
      }
      wmma::store_matrix_sync(s_w + n * 16, acc, L.ld_s, wmma::mem_row_major);
    }
    __syncwarp();

    // Dropout keep bits of the tile: lane l draws row l / 2's keys [32 (l % 2), 32 (l % 2) + 32),
    // consecutive dropout elements, and the row's lanes fetch them with two shuffles below.
    static_assert(2 * kWarpRows == 32 && kTileK == 64, "two lanes per row, 32 keys each");
    uint32_t keep_run = 0;
    if (a.dropout_p > 0.f) {
      const int64_t i = q0 + warp * kWarpRows + lane / 2, j = k0 + 32 * (lane % 2);
      const int64_t run = i < a.T_q ? visible_key_end(i, a.T_q, a.T_k, a.causal) - j : 0;
      if (run > 0)
        keep_run = static_cast<uint32_t>(dropout_keep_run(a.seed, a.offset, dropout_index(bh, i, j, a.T_q, a.T_k),
                                                          run < 32 ? static_cast<int>(run) : 32, a.dropout_p));
    }

    // Online softmax, one row at a time across the warp.
#pragma unroll
    for (int r = 0; r < kWarpRows; ++r) {
      const int64_t i = q0 + warp * kWarpRows + r;
      const int64_t end = i < a.T_q ? visible_key_end(i, a.T_q, a.T_k, a.causal) : 0;  // keys [begin, end) visible
      const int64_t begin = cu ? __shfl_sync(0xffffffffu, lane_key_begin, r) : 0;
      const int64_t j0 = k0 + lane, j1 = k0 + lane + 32;
      const float s0 = j0 < end && j0 >= begin ? s_w[r * L.ld_s + lane] * a.scale : -INFINITY;
      const float s1 = j1 < end && j1 >= begin ? s_w[r * L.ld_s + lane + 32] * a.scale : -INFINITY;
      const float m_new = fmaxf(row_m[r], warp_max(fmaxf(s0, s1)));
      const float shift = m_new == -INFINITY ? 0.f : m_new;
      float p0 = __expf(s0 - shift), p1 = __expf(s1 - shift);
      const float alpha = __expf(row_m[r] - shift);
      row_l[r] = row_l[r] * alpha + warp_sum(p0 + p1);
      row_m[r] = m_new;
      if (a.dropout_p > 0.f) {
        const uint32_t keep0 = __shfl_sync(0xffffffffu, keep_run, 2 * r);
        const uint32_t keep1 = __shfl_sync(0xffffffffu, keep_run, 2 * r + 1);
        p0 = (keep0 >> lane) & 1u ? p0 * inv_keep : 0.f;
        p1 = (keep1 >> lane) & 1u ? p1 * inv_keep : 0.f;
      }
      p_w[r * L.ld_p + lane] = from_float<T>(p0);
      p_w[r * L.ld_p + lane + 32] = from_float<T>(p1);
      for (int d = lane; d < Dp; d += 32) o_w[r * L.ld_o + d] *= alpha;
    }
    __syncwarp();

    // O_w += P_w V.
    FragA<T, wmma::row_major> pf[kTileK / 16];
#pragma unroll
    for (int kk = 0; kk < kTileK / 16; ++kk) wmma::load_matrix_sync(pf[kk], p_w + kk * 16, L.ld_p);
#pragma unroll
    for (int d = 0; d < kSteps; ++d) {
      FragC acc;
      wmma::load_matrix_sync(acc, o_w + d * 16, L.ld_o, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kTileK / 16; ++kk) {
        FragB<T, wmma::row_major> vf;
        wmma::load_matrix_sync(vf, vs + kk * 16 * L.ld_t + d * 16, L.ld_t);
        wmma::mma_sync(acc, pf[kk], vf, acc);
      }
      wmma::store_matrix_sync(o_w + d * 16, acc, L.ld_o, wmma::mem_row_major);
    }
  }
  __syncwarp();  // O_w stores (or the zero fill, with no key tile) before the lanes read them

#pragma unroll
  for (int r = 0; r < kWarpRows; ++r) {
    const int64_t i = q0 + warp * kWarpRows + r;
    if (i >= a.T_q) break;
    const float inv_l = row_l[r] > 0.f ? 1.f / row_l[r] : 0.f;
    T* out_row = a.out + (bh * a.T_q + i) * a.D;
    for (int d = lane; d < a.D; d += 32) out_row[d] = from_float<T>(o_w[r * L.ld_o + d] * inv_l);
    if (lane == 0) a.lse[bh * a.T_q + i] = row_l[r] > 0.f ? row_m[r] + logf(row_l[r]) : -INFINITY;
  }
}

template <class T, int Dp>
gc_status launch_fwd(const FwdArgs<T>& a, int64_t BH, cudaStream_t stream) {
  constexpr int kBytes = fwd_smem(Dp, sizeof(T)).bytes;
  const int64_t q_tiles = ceil_div(a.T_q, kTileQ);
  if (BH > 0x7fffffff || q_tiles > 65535)
    return fail(GC_ERROR_SHAPE, "gc_attention_fwd: B*H = %lld or T_q = %lld too large for the CUDA grid",
                static_cast<long long>(BH), static_cast<long long>(a.T_q));
  auto kernel = fwd_kernel<T, Dp>;
  GC_TRY(allow_smem(kernel, kBytes, "gc_attention_fwd"));
  kernel<<<dim3(static_cast<unsigned>(BH), static_cast<unsigned>(q_tiles)), kThreads, kBytes, stream>>>(a);
  return check_launch("attention fwd_kernel");
}

}  // namespace

gc_status attention_fwd_cuda(const gc_attention_fwd_params& p, const AttentionShape& s, void* stream) {
  DeviceGuard guard(p.q.device_index);
  GC_CUDA_TRY(guard.status());
  const int64_t BH = s.B * s.H;
  if (BH == 0 || s.T_q == 0) return GC_OK;
  return half_switch(p.q.dtype, "gc_attention_fwd", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const FwdArgs<T> a{static_cast<const T*>(p.q.data),
                       static_cast<const T*>(p.k.data),
                       static_cast<const T*>(p.v.data),
                       static_cast<T*>(p.out.data),
                       static_cast<float*>(p.lse.data),
                       s.T_q,
                       s.T_k,
                       static_cast<int>(s.D),
                       p.scale,
                       p.causal != 0,
                       p.dropout_p,
                       p.seed,
                       p.offset,
                       aligned16(p.q.data) && aligned16(p.k.data) && aligned16(p.v.data),
                       static_cast<const int32_t*>(p.cu_seqlens.data),
                       p.cu_seqlens.data ? p.cu_seqlens.shape[1] : 0,
                       s.H};
    return head_dim_switch(s.D, "gc_attention_fwd", [&](auto dp) {
      return launch_fwd<T, decltype(dp)::value>(a, BH, as_stream(stream));
    });
  });
}

}  // namespace gc
