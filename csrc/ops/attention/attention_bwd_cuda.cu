// Flash-attention backward on CUDA tensor cores (flash-attention v2 order), sm_80+.
//
// Three kernels on the caller's stream, with the workspace as [dq_acc: B*H*T_q*D | dsum: B*H*T_q]
// float32 (dq_acc zeroed with cudaMemsetAsync first):
//   dsum_kernel:  dsum_i = rowsum(dout_i * out_i), one warp per query row.
//   bwd_kernel:   one CTA of 4 warps per (batch*head, key tile of 64); warp w owns key rows
//                 [16w, 16w + 16). The CTA walks the query tiles of 64 that can see its keys:
//                   S^T = K Q^T, dPd^T = V dout^T                         (wmma, float smem)
//                   P = exp(scale * S - lse), zero where invisible
//                   Pd = P * z / (1 - p), dP = dPd * z / (1 - p)        (z = dropout keep bit; a
//                                                                         lane draws its query's
//                                                                         16 keys with one
//                                                                         dropout_keep_run)
//                   dS = P * (dP - dsum)
//                   dV += Pd^T dout, dK += dS^T Q                          (wmma accumulators held
//                                                                           in registers all along)
//                   dq_acc += scale * dS K                                 (wmma, then atomicAdd)
//                 and writes dK = scale * (sum dS^T Q) and dV once at the end.
//   dq_kernel:    dq = dq_acc converted to T.
// dsum_i = dout_i . out_i equals rowsum(dPd * Pd), which is what the softmax gradient needs.
//
// dq is NOT bitwise reproducible: every key-tile CTA adds its share of a query row into dq_acc
// with float atomicAdd, in whatever order the CTAs reach it, and float addition is not
// associative, so two runs can differ in the last bits of dq. dk and dv are reproducible (each
// is summed by one CTA in a fixed order), and so is the CPU backward.
//
// Invariants relied on (besides those of the forward, same tile helpers):
// - lse comes from the forward with the same scale/causal; a row with no visible key (lse =
//   -inf) has no visible element, so exp(scale * S - lse) is only taken where it is finite.
// - With packed documents (cu_seqlens) query i also needs j >= doc_begin(i), looked up once per
//   query tile into shared memory beside lse and dsum (0 without documents); the CTA walks only the query tiles of
//   [j0, end of its last key's document), the queries that can see its keys.
// - Invisible elements (i >= T_q, j >= T_k, causal j > i + T_k - T_q, other document) get P = 0 and dS = 0
//   exactly; padded rows/columns of Q, K, V, dout are zero in shared memory, so they add nothing.
// - Only warp w writes rows [16w, 16w + 16) of st, dpt, pt, dst; st's rows are reused as the
//   warp's 16x16 staging area once S^T is consumed. The dQ product reads every warp's dst rows,
//   so it sits after a __syncthreads; the next query tile's loads sit after another.
#include "ops/attention/attention_cuda_common.cuh"

namespace gc {
namespace {

using namespace attn;

template <class T>
struct BwdArgs {
  const T* q;
  const T* k;
  const T* v;
  const T* dout;
  const float* lse;
  const float* dsum;
  float* dq_acc;
  T* dk;
  T* dv;
  int64_t T_q, T_k;
  int D;
  float scale;
  bool causal;
  float dropout_p;
  uint64_t seed, offset;
  bool vec;           // q, k, v, dout 16-byte aligned
  const int32_t* cu;  // packed documents: [B, n_cu] boundaries, or null
  int64_t n_cu, H;
};

template <class T>
__global__ void __launch_bounds__(kThreads) dsum_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                                        float* __restrict__ dsum, int64_t rows, int D) {
  const int lane = threadIdx.x % 32;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {
    float acc = 0.f;
    for (int d = lane; d < D; d += 32) acc += to_float(dout[row * D + d]) * to_float(out[row * D + d]);
    acc = warp_sum(acc);
    if (lane == 0) dsum[row] = acc;
  }
}

template <class T>
__global__ void dq_kernel(const float* __restrict__ dq_acc, T* __restrict__ dq, int64_t n) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dq[e] = from_float<T>(dq_acc[e]);
}

// Stores accumulator `acc` (rows [16w, 16w + 16) of some tile, columns [col0, col0 + 16)) through
// the warp's 16x16 float staging area and hands each element to emit(row in 0..15, col, value).
template <class Emit>
__device__ __forceinline__ void emit_fragment(const FragC& acc, float* staging, int ld, int col0, Emit&& emit) {
  const int lane = threadIdx.x % 32;
  wmma::store_matrix_sync(staging, acc, ld, wmma::mem_row_major);
  __syncwarp();
  for (int e = lane; e < 256; e += 32) emit(e / 16, col0 + e % 16, staging[(e / 16) * ld + e % 16]);
  __syncwarp();
}

template <class T, int Dp>
__global__ void __launch_bounds__(kThreads) bwd_kernel(const BwdArgs<T> a) {
  constexpr BwdSmem L = bwd_smem(Dp, sizeof(T));
  constexpr int kSteps = Dp / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  T* ks = reinterpret_cast<T*>(smem + L.k);
  T* vs = reinterpret_cast<T*>(smem + L.v);
  T* qs = reinterpret_cast<T*>(smem + L.q);
  T* dos = reinterpret_cast<T*>(smem + L.dout);
  T* dst = reinterpret_cast<T*>(smem + L.dst);
  float* lse_s = reinterpret_cast<float*>(smem + L.lse);
  float* dsum_s = reinterpret_cast<float*>(smem + L.dsum);
  int32_t* key_begin_s = reinterpret_cast<int32_t*>(smem + L.key_begin);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* st_w = reinterpret_cast<float*>(smem + L.st) + warp * kWarpRows * L.ld_f;
  float* dpt_w = reinterpret_cast<float*>(smem + L.dpt) + warp * kWarpRows * L.ld_f;
  T* pt_w = reinterpret_cast<T*>(smem + L.pt) + warp * kWarpRows * L.ld_h;
  T* dst_w = dst + warp * kWarpRows * L.ld_h;

  const int64_t bh = blockIdx.x;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kTileK;  // the CTA's key tile
  const T* qg = a.q + bh * a.T_q * a.D;
  const T* dog = a.dout + bh * a.T_q * a.D;
  load_tile<T, kTileK, Dp>(ks, L.ld_t, a.k + bh * a.T_k * a.D, j0, a.T_k, a.D, a.vec);
  load_tile<T, kTileK, Dp>(vs, L.ld_t, a.v + bh * a.T_k * a.D, j0, a.T_k, a.D, a.vec);

  FragC dk[kSteps], dv[kSteps];
#pragma unroll
  for (int d = 0; d < kSteps; ++d) {
    wmma::fill_fragment(dk[d], 0.f);
    wmma::fill_fragment(dv[d], 0.f);
  }
  const float inv_keep = 1.f / (1.f - a.dropout_p);
  const int64_t first_tile = first_query_seeing(j0, a.T_q, a.T_k, a.causal) / kTileQ;
  int64_t query_end = a.T_q;  // with documents: the end of the last key's document
  if (a.cu) {
    const int64_t last_key = (j0 + kTileK < a.T_k ? j0 + kTileK : a.T_k) - 1;
    const int64_t end = doc_end(a.cu + (bh / a.H) * a.n_cu, a.n_cu, last_key);
    query_end = end < a.T_q ? end : a.T_q;
  }
  const int64_t num_query_tiles = ceil_div(query_end, kTileQ);

  for (int64_t qt = first_tile; qt < num_query_tiles; ++qt) {
    const int64_t i0 = qt * kTileQ;
    __syncthreads();  // every warp is done with the previous Q, dout, dS^T, lse, dsum, key_begin
    load_tile<T, kTileQ, Dp>(qs, L.ld_t, qg, i0, a.T_q, a.D, a.vec);
    load_tile<T, kTileQ, Dp>(dos, L.ld_t, dog, i0, a.T_q, a.D, a.vec);
    for (int r = threadIdx.x; r < kTileQ; r += kThreads) {
      const bool in = i0 + r < a.T_q;
      lse_s[r] = in ? a.lse[bh * a.T_q + i0 + r] : 0.f;
      dsum_s[r] = in ? a.dsum[bh * a.T_q + i0 + r] : 0.f;
      key_begin_s[r] = in && a.cu ? static_cast<int32_t>(doc_begin(a.cu + (bh / a.H) * a.n_cu, a.n_cu, i0 + r)) : 0;
    }
    __syncthreads();

    // Dropout keep bits: bit r + 16 h for key j0 + 16 w + r of query i0 + lane + 32 h, drawn as the
    // run of the warp's 16 keys, consecutive dropout elements (0 for invisible keys).
    static_assert(kWarpRows == 16 && kTileQ == 64, "a lane's two queries' keys fill 32 bits");
    uint32_t keep_bits = 0;
    if (a.dropout_p > 0.f) {
      const int64_t key0 = j0 + warp * kWarpRows;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t i = i0 + lane + 32 * half;
        const int64_t run = i < a.T_q ? visible_key_end(i, a.T_q, a.T_k, a.causal) - key0 : 0;
        if (run > 0)
          keep_bits |= static_cast<uint32_t>(dropout_keep_run(a.seed, a.offset, dropout_index(bh, i, key0, a.T_q, a.T_k),
                                                              run < kWarpRows ? static_cast<int>(run) : kWarpRows,
                                                              a.dropout_p))
                       << (16 * half);
      }
    }

    // S^T_w = K_w Q^T and dPd^T_w = V_w dout^T (Q and dout rows read as column-major B operands).
#pragma unroll
    for (int n = 0; n < kTileQ / 16; ++n) {
      FragC s_acc, dp_acc;
      wmma::fill_fragment(s_acc, 0.f);
      wmma::fill_fragment(dp_acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < kSteps; ++kk) {
        FragA<T, wmma::row_major> kf, vf;
        FragB<T, wmma::col_major> qf, dof;
        wmma::load_matrix_sync(kf, ks + warp * kWarpRows * L.ld_t + kk * 16, L.ld_t);
        wmma::load_matrix_sync(qf, qs + n * 16 * L.ld_t + kk * 16, L.ld_t);
        wmma::mma_sync(s_acc, kf, qf, s_acc);
        wmma::load_matrix_sync(vf, vs + warp * kWarpRows * L.ld_t + kk * 16, L.ld_t);
        wmma::load_matrix_sync(dof, dos + n * 16 * L.ld_t + kk * 16, L.ld_t);
        wmma::mma_sync(dp_acc, vf, dof, dp_acc);
      }
      wmma::store_matrix_sync(st_w + n * 16, s_acc, L.ld_f, wmma::mem_row_major);
      wmma::store_matrix_sync(dpt_w + n * 16, dp_acc, L.ld_f, wmma::mem_row_major);
    }
    __syncwarp();

    // Elementwise, transposed: row r = key j, column c = query i; lane holds c = lane, lane + 32.
    // Not unrolled: with dK and dV held in registers, unrolling spills more in the bfloat16 Dp >= 96
    // kernels.
#pragma unroll 1
    for (int r = 0; r < kWarpRows; ++r) {
      const int64_t j = j0 + warp * kWarpRows + r;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int c = lane + 32 * half;
        const int64_t i = i0 + c;
        const bool visible =
            i < a.T_q && j < visible_key_end(i, a.T_q, a.T_k, a.causal) && j >= key_begin_s[c];
        const float p = visible ? __expf(st_w[r * L.ld_f + c] * a.scale - lse_s[c]) : 0.f;
        float pd = p, dp = dpt_w[r * L.ld_f + c];
        if (a.dropout_p > 0.f) {
          const bool keep = (keep_bits >> (r + 16 * half)) & 1u;
          pd = keep ? p * inv_keep : 0.f;
          dp = keep ? dp * inv_keep : 0.f;
        }
        pt_w[r * L.ld_h + c] = from_float<T>(pd);
        dst_w[r * L.ld_h + c] = from_float<T>(p * (dp - dsum_s[c]));
      }
    }
    __syncwarp();

    // dV_w += Pd^T_w dout, dK_w += dS^T_w Q.
#pragma unroll
    for (int kk = 0; kk < kTileQ / 16; ++kk) {
      FragA<T, wmma::row_major> pf, sf;
      wmma::load_matrix_sync(pf, pt_w + kk * 16, L.ld_h);
      wmma::load_matrix_sync(sf, dst_w + kk * 16, L.ld_h);
#pragma unroll
      for (int d = 0; d < kSteps; ++d) {
        FragB<T, wmma::row_major> dof, qf;
        wmma::load_matrix_sync(dof, dos + kk * 16 * L.ld_t + d * 16, L.ld_t);
        wmma::mma_sync(dv[d], pf, dof, dv[d]);
        wmma::load_matrix_sync(qf, qs + kk * 16 * L.ld_t + d * 16, L.ld_t);
        wmma::mma_sync(dk[d], sf, qf, dk[d]);
      }
    }
    __syncthreads();  // every warp's dS^T rows are in place

    // dq_acc rows [16w, 16w + 16) of the query tile += scale * dS K, where dS (query x key) is
    // dS^T read as a column-major A operand.
    const int64_t row0 = i0 + warp * kWarpRows;
    if (row0 < a.T_q) {
      float* dq_rows = a.dq_acc + (bh * a.T_q + row0) * a.D;
#pragma unroll
      for (int d = 0; d < kSteps; ++d) {
        FragC acc;
        wmma::fill_fragment(acc, 0.f);
#pragma unroll
        for (int kk = 0; kk < kTileK / 16; ++kk) {
          FragA<T, wmma::col_major> sf;  // reloaded per step: dK and dV already hold Dp registers
          FragB<T, wmma::row_major> kf;
          wmma::load_matrix_sync(sf, dst + kk * 16 * L.ld_h + warp * kWarpRows, L.ld_h);
          wmma::load_matrix_sync(kf, ks + kk * 16 * L.ld_t + d * 16, L.ld_t);
          wmma::mma_sync(acc, sf, kf, acc);
        }
        emit_fragment(acc, st_w, L.ld_f, d * 16, [&](int r, int col, float x) {
          if (row0 + r < a.T_q && col < a.D) atomicAdd(dq_rows + r * a.D + col, a.scale * x);
        });
      }
    }
  }

  // dK and dV rows [16w, 16w + 16) of the key tile, written once.
  const int64_t key0 = j0 + warp * kWarpRows;
  if (key0 < a.T_k) {
    T* dk_rows = a.dk + (bh * a.T_k + key0) * a.D;
    T* dv_rows = a.dv + (bh * a.T_k + key0) * a.D;
#pragma unroll
    for (int d = 0; d < kSteps; ++d) {
      emit_fragment(dk[d], st_w, L.ld_f, d * 16, [&](int r, int col, float x) {
        if (key0 + r < a.T_k && col < a.D) dk_rows[r * a.D + col] = from_float<T>(a.scale * x);
      });
      emit_fragment(dv[d], st_w, L.ld_f, d * 16, [&](int r, int col, float x) {
        if (key0 + r < a.T_k && col < a.D) dv_rows[r * a.D + col] = from_float<T>(x);
      });
    }
  }
}

template <class T, int Dp>
gc_status launch_bwd(const BwdArgs<T>& a, int64_t BH, cudaStream_t stream) {
  constexpr int kBytes = bwd_smem(Dp, sizeof(T)).bytes;
  const int64_t k_tiles = ceil_div(a.T_k, kTileK);
  if (k_tiles == 0) return GC_OK;
  auto kernel = bwd_kernel<T, Dp>;
  GC_TRY(allow_smem(kernel, kBytes, "gc_attention_bwd"));
  kernel<<<dim3(static_cast<unsigned>(BH), static_cast<unsigned>(k_tiles)), kThreads, kBytes, stream>>>(a);
  return check_launch("attention bwd_kernel");
}

}  // namespace

size_t attention_bwd_workspace_cuda(const AttentionShape& s) {
  return static_cast<size_t>(bwd_workspace_floats(s.B, s.H, s.T_q, s.D)) * sizeof(float);
}

gc_status attention_bwd_cuda(const gc_attention_bwd_params& p, const AttentionShape& s, void* workspace,
                             void* stream) {
  DeviceGuard guard(p.q.device_index);
  GC_CUDA_TRY(guard.status());
  const int64_t BH = s.B * s.H;
  if (BH == 0) return GC_OK;
  cudaStream_t st = as_stream(stream);
  if (s.T_q == 0) {  // no query sees a key: zero key gradients (the caller's dk, dv are uninitialized)
    const size_t bytes = static_cast<size_t>(BH * s.T_k * s.D) * gc_dtype_size(p.dk.dtype);
    GC_CUDA_TRY(cudaMemsetAsync(p.dk.data, 0, bytes, st));
    GC_CUDA_TRY(cudaMemsetAsync(p.dv.data, 0, bytes, st));
    return GC_OK;
  }
  if (BH > 0x7fffffff || ceil_div(s.T_k, kTileK) > 65535)
    return fail(GC_ERROR_SHAPE, "gc_attention_bwd: B*H = %lld or T_k = %lld too large for the CUDA grid",
                static_cast<long long>(BH), static_cast<long long>(s.T_k));
  const int64_t rows = BH * s.T_q, dq_elems = rows * s.D;
  float* dq_acc = static_cast<float*>(workspace);
  float* dsum = dq_acc + dq_elems;
  return half_switch(p.q.dtype, "gc_attention_bwd", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (dq_elems > 0) {
      GC_CUDA_TRY(cudaMemsetAsync(dq_acc, 0, static_cast<size_t>(dq_elems) * sizeof(float), st));
      const int64_t dsum_blocks = ceil_div(rows, kWarps);
      dsum_kernel<T><<<static_cast<unsigned>(dsum_blocks < 65536 ? dsum_blocks : 65536), kThreads, 0, st>>>(
          static_cast<const T*>(p.dout.data), static_cast<const T*>(p.out.data), dsum, rows, static_cast<int>(s.D));
      GC_TRY(check_launch("attention dsum_kernel"));
    }
    const BwdArgs<T> a{static_cast<const T*>(p.q.data),
                       static_cast<const T*>(p.k.data),
                       static_cast<const T*>(p.v.data),
                       static_cast<const T*>(p.dout.data),
                       static_cast<const float*>(p.lse.data),
                       dsum,
                       dq_acc,
                       static_cast<T*>(p.dk.data),
                       static_cast<T*>(p.dv.data),
                       s.T_q,
                       s.T_k,
                       static_cast<int>(s.D),
                       p.scale,
                       p.causal != 0,
                       p.dropout_p,
                       p.seed,
                       p.offset,
                       aligned16(p.q.data) && aligned16(p.k.data) && aligned16(p.v.data) && aligned16(p.dout.data),
                       static_cast<const int32_t*>(p.cu_seqlens.data),
                       p.cu_seqlens.data ? p.cu_seqlens.shape[1] : 0,
                       s.H};
    GC_TRY(head_dim_switch(s.D, "gc_attention_bwd",
                           [&](auto dp) { return launch_bwd<T, decltype(dp)::value>(a, BH, st); }));
    if (dq_elems == 0) return GC_OK;
    const int64_t blocks = ceil_div(dq_elems, 256);
    dq_kernel<T><<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), 256, 0, st>>>(
        dq_acc, static_cast<T*>(p.dq.data), dq_elems);
    return check_launch("attention dq_kernel");
  });
}

}  // namespace gc
