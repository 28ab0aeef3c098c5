// Tile geometry of the CUDA attention kernels, as host + device helpers free of CUDA headers,
// so that tests/cpp/test_attention_cuda_math.cpp checks the same index math the kernels run:
// which keys a query sees (bottom-right causal alignment, packed documents; the CPU kernel uses
// the document helpers too), which key tiles a query tile needs,
// which query tiles a key tile needs, the dropout element index, the decode cache split, and the
// shared-memory layouts.
#pragma once

#include <cstdint>

#include "common/numeric.h"

namespace gc {
namespace attn {

constexpr int kTileQ = 64;     // query rows per forward CTA / per backward step
constexpr int kTileK = 64;     // key rows per forward step / per backward CTA
constexpr int kWarps = 4;      // each warp owns 16 rows of the CTA's own tile
constexpr int kWarpRows = 16;  // kTileQ == kTileK == kWarps * kWarpRows
constexpr int kPadT = 8;       // half/bf16 row padding (elements): 16 bytes, keeps wmma ldm a multiple of 8
constexpr int kPadF = 4;       // float row padding (elements): 16 bytes, keeps wmma ldm a multiple of 4
static_assert(kTileQ == kWarps * kWarpRows && kTileK == kWarps * kWarpRows, "one warp per 16 rows");

GC_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Head dim rounded up to the wmma k-step; columns [D, Dp) are zero in shared memory.
GC_HD constexpr int padded_head_dim(int64_t D) { return static_cast<int>((D + 15) / 16 * 16); }

// Query row i sees keys [0, visible_key_end): bottom-right aligned, j <= i + (T_k - T_q).
GC_HD int64_t visible_key_end(int64_t i, int64_t T_q, int64_t T_k, bool causal) {
  if (!causal) return T_k;
  const int64_t end = i + (T_k - T_q) + 1;
  return end < 0 ? 0 : (end > T_k ? T_k : end);
}

// Keys seen by any row of [q_begin, q_end) (visible_key_end grows with i): [0, tile_key_end).
GC_HD int64_t tile_key_end(int64_t q_end, int64_t T_q, int64_t T_k, bool causal) {
  return q_end <= 0 ? 0 : visible_key_end(q_end - 1, T_q, T_k, causal);
}

// The first query row that sees key j (T_q when none does); every later row sees it too.
GC_HD int64_t first_query_seeing(int64_t j, int64_t T_q, int64_t T_k, bool causal) {
  if (!causal) return 0;
  const int64_t i = j - (T_k - T_q);
  return i < 0 ? 0 : (i > T_q ? T_q : i);
}

// Packed documents: `cu` is one batch row's n = S + 1 boundaries 0 = c_0 <= ... <= c_S = T
// (cu_seqlens). Position i lies in document [doc_begin, doc_end): the last boundary <= i and the
// first one > i (the repeated boundaries of empty documents are passed over). Binary searches,
// so a bad row never reads outside cu; the results are clamped so that i is always inside
// (doc_begin in [0, i], doc_end >= i + 1) and callers clamp doc_end to T.
GC_HD int64_t upper_bound_boundary(const int32_t* cu, int64_t n, int64_t i) {
  int64_t lo = 0, hi = n;  // the first index whose boundary is > i
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (cu[mid] <= i)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

GC_HD int64_t doc_begin(const int32_t* cu, int64_t n, int64_t i) {
  const int64_t m = upper_bound_boundary(cu, n, i);
  const int64_t begin = m == 0 ? 0 : cu[m - 1];
  return begin < 0 ? 0 : (begin > i ? i : begin);
}

GC_HD int64_t doc_end(const int32_t* cu, int64_t n, int64_t i) {
  const int64_t m = upper_bound_boundary(cu, n, i);
  const int64_t end = m == n ? i + 1 : cu[m];
  return end <= i ? i + 1 : end;
}

// Row-major index of element (bh, i, j) of [B, H, T_q, T_k]: the dropout draw's n.
GC_HD uint64_t dropout_index(int64_t bh, int64_t i, int64_t j, int64_t T_q, int64_t T_k) {
  return (static_cast<uint64_t>(bh) * static_cast<uint64_t>(T_q) + static_cast<uint64_t>(i)) * static_cast<uint64_t>(T_k) +
         static_cast<uint64_t>(j);
}

// Decoding: new query t of T_new over a cache of valid length len (clamped to [0, T_max])
// sits at position len - T_new + t and sees cache keys [0, decode_key_end).
GC_HD int64_t decode_key_end(int64_t len, int64_t T_max, int64_t T_new, int64_t t, bool causal) {
  len = len < 0 ? 0 : (len > T_max ? T_max : len);
  if (!causal) return len;
  const int64_t end = len - T_new + t + 1;
  return end < 0 ? 0 : (end > len ? len : end);
}

// Decoding with few (batch, head, new query) rows splits each row's cache into chunks
// (flash-decoding): one CTA per (row, chunk) makes a partial (max, sum, output), and a second
// kernel merges a row's chunks. Enough chunks for about kDecodeCtasPerSm CTAs per SM, each of
// at least kDecodeMinChunk keys of the capacity T_max (the valid lengths live on the device),
// at most kDecodeMaxSplits; 1 means no split and no workspace.
constexpr int kDecodeCtasPerSm = 4;
constexpr int64_t kDecodeMinChunk = 128;
constexpr int64_t kDecodeMaxSplits = 64;

GC_HD int64_t decode_splits(int64_t rows, int64_t T_max, int sm_count) {
  if (rows <= 0) return 1;
  int64_t splits = ceil_div(static_cast<int64_t>(kDecodeCtasPerSm) * sm_count, rows);
  const int64_t by_keys = ceil_div(T_max, kDecodeMinChunk);
  splits = splits < by_keys ? splits : by_keys;
  splits = splits < kDecodeMaxSplits ? splits : kDecodeMaxSplits;
  return splits < 1 ? 1 : splits;
}

// Decode workspace (float32) for `splits` > 1: partial outputs [rows, splits, D], then the
// partial (max, sum) pairs [rows, splits, 2].
GC_HD int64_t decode_workspace_floats(int64_t rows, int64_t splits, int64_t D) {
  return splits > 1 ? rows * splits * (D + 2) : 0;
}

GC_HD constexpr int align128(int bytes) { return (bytes + 127) / 128 * 128; }

// Forward CTA shared memory (byte offsets, each 128-byte aligned, so every wmma tile pointer
// at a multiple of 16 rows and 16 columns is 32-byte aligned):
//   q [kTileQ][Dp + kPadT] T, k and v [kTileK][Dp + kPadT] T, s [kTileQ][kTileK + kPadF] float
//   (scores), p [kTileQ][kTileK + kPadT] T (probabilities), o [kTileQ][Dp + kPadF] float (output
//   accumulator). Warp w owns rows [16w, 16w + 16) of q, s, p and o.
struct FwdSmem {
  int ld_t, ld_s, ld_p, ld_o;  // leading dimensions in elements
  int q, k, v, s, p, o, bytes;
};

GC_HD constexpr FwdSmem fwd_smem(int Dp, int elem_bytes) {
  FwdSmem m{};
  m.ld_t = Dp + kPadT;
  m.ld_s = kTileK + kPadF;
  m.ld_p = kTileK + kPadT;
  m.ld_o = Dp + kPadF;
  m.q = 0;
  m.k = m.q + align128(kTileQ * m.ld_t * elem_bytes);
  m.v = m.k + align128(kTileK * m.ld_t * elem_bytes);
  m.s = m.v + align128(kTileK * m.ld_t * elem_bytes);
  m.p = m.s + align128(kTileQ * m.ld_s * 4);
  m.o = m.p + align128(kTileQ * m.ld_p * elem_bytes);
  m.bytes = m.o + align128(kTileQ * m.ld_o * 4);
  return m;
}

// Backward CTA shared memory (the CTA owns a key tile; warp w owns key rows [16w, 16w + 16)):
//   k, v [kTileK][Dp + kPadT] T; q, dout [kTileQ][Dp + kPadT] T of the current query tile;
//   st, dpt [kTileK][kTileQ + kPadF] float: S^T and (dout V^T)^T, later a warp's staging area;
//   pt, dst [kTileK][kTileQ + kPadT] T: dropped probabilities and dS, transposed;
//   lse, dsum [kTileQ] float of the current query tile; key_begin [kTileQ] int32, the first key
//   each of its queries sees (its document's start; 0 without packed documents).
struct BwdSmem {
  int ld_t, ld_f, ld_h;
  int k, v, q, dout, st, dpt, pt, dst, lse, dsum, key_begin, bytes;
};

GC_HD constexpr BwdSmem bwd_smem(int Dp, int elem_bytes) {
  BwdSmem m{};
  m.ld_t = Dp + kPadT;
  m.ld_f = kTileQ + kPadF;
  m.ld_h = kTileQ + kPadT;
  m.k = 0;
  m.v = m.k + align128(kTileK * m.ld_t * elem_bytes);
  m.q = m.v + align128(kTileK * m.ld_t * elem_bytes);
  m.dout = m.q + align128(kTileQ * m.ld_t * elem_bytes);
  m.st = m.dout + align128(kTileQ * m.ld_t * elem_bytes);
  m.dpt = m.st + align128(kTileK * m.ld_f * 4);
  m.pt = m.dpt + align128(kTileK * m.ld_f * 4);
  m.dst = m.pt + align128(kTileK * m.ld_h * elem_bytes);
  m.lse = m.dst + align128(kTileK * m.ld_h * elem_bytes);
  m.dsum = m.lse + align128(kTileQ * 4);
  m.key_begin = m.dsum + align128(kTileQ * 4);
  m.bytes = m.key_begin + align128(kTileQ * 4);
  return m;
}

// Backward workspace (float32): the dq accumulator [B*H*T_q*D], then dsum [B*H*T_q].
GC_HD int64_t bwd_workspace_floats(int64_t B, int64_t H, int64_t T_q, int64_t D) { return B * H * T_q * (D + 1); }

}  // namespace attn
}  // namespace gc
