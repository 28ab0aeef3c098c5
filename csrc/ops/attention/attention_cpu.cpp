// Attention on the CPU: float32, flash-style tiles of kBQ queries x kFwdBK (forward) or kBK
// (backward) keys with an online softmax, so memory beyond the inputs and outputs is a few
// tiles per thread.
//
// Every product of two tiles is an OpenBLAS sgemm on the calling OpenMP thread: OpenBLAS is
// held to one thread while attention runs (SerialBlas), so the two levels of threading never
// stack, and each element of a product is computed the same way whatever the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/cpu_blas.h"
#include "common/cpu_math.h"
#include "common/philox.h"
#include "ops/attention/attention.h"
#include "ops/attention/attention_tiles.h"

namespace gc {
namespace {

// Large tiles let each sgemm amortize OpenBLAS's packing of its operands (measured on AVX2:
// 256 x 256 forward tiles ran ~1.15x faster than 64 x 64 ones).
constexpr int64_t kBQ = 256;     // query rows per tile
constexpr int64_t kBK = 64;      // keys per backward tile
constexpr int64_t kFwdBK = 256;  // keys per forward tile
// Backward: each task owns the dk/dv rows of up to kBwdKeysPerTask keys of one head and adds
// its share of dq into its own float32 copy, summed at the end in a fixed order.
constexpr int64_t kBwdKeysPerTask = 256;
constexpr int64_t kBwdMaxSplits = 4;
// Packed documents: a tile's rows (or a key block's keys) are processed in runs that end at a
// document boundary once they hold kMinRun rows, so short documents sharing a tile do not pay
// for each other's keys, while one-token documents do not each cost an sgemm call.
constexpr int64_t kMinRun = 32;
// keep[j] = 1 / (1 - p) when dropout element n0 + j is kept, else 0, for j < len: one Philox
// call per four elements (dropout_keep4, as in the CUDA kernels).
void dropout_keep(uint64_t seed, uint64_t offset, uint64_t n0, int64_t len, float p, float* keep) {
  const float inv_keep = 1.f / (1.f - p);
  int64_t j = 0;
  while (j < len) {
    const uint64_t n = n0 + static_cast<uint64_t>(j);
    const unsigned bits = dropout_keep4(seed, offset, n / 4, p);
    for (unsigned lane = static_cast<unsigned>(n % 4); lane < 4 && j < len; ++lane, ++j)
      keep[j] = (bits >> lane) & 1u ? inv_keep : 0.f;
  }
}

// One head's tensors and masking rule. Query i sees keys key_begin(i) <= j < key_limit(i).
struct Head {
  const float* q;
  const float* k;
  const float* v;
  int64_t T_q, T_k, D;
  bool causal;
  int64_t first_element;  // dropout index n of element (i = 0, j = 0) of this head
  const int32_t* cu;      // packed documents: this batch row's n_cu boundaries (causal, T_q == T_k); or null
  int64_t n_cu;

  int64_t key_limit(int64_t i) const {
    return causal ? std::min(T_k, std::max<int64_t>(0, i + T_k - T_q + 1)) : T_k;
  }
  // Both grow with i: the first key of i's document (0 without documents) and the document's end.
  int64_t key_begin(int64_t i) const { return cu ? attn::doc_begin(cu, n_cu, i) : 0; }
  int64_t doc_end(int64_t i) const { return cu ? std::min(T_q, attn::doc_end(cu, n_cu, i)) : T_q; }
};

// Calls fn(begin, count) for runs covering positions [begin, end): the whole range without
// documents, else runs that end at a document boundary once they hold kMinRun positions.
template <class Fn>
void document_runs(const Head& h, int64_t begin, int64_t end, Fn&& fn) {
  if (!h.cu) return fn(begin, end - begin);
  while (begin < end) {
    int64_t stop = begin;
    do stop = std::min(end, h.doc_end(stop));
    while (stop < end && stop - begin < kMinRun);
    fn(begin, stop - begin);
    begin = stop;
  }
}

struct Dropout {
  float p;
  uint64_t seed, offset;
};

struct FwdScratch {
  std::vector<float> s, o, m, l, keep;
  explicit FwdScratch(int64_t D) : s(kBQ * kFwdBK), o(kBQ * D), m(kBQ), l(kBQ), keep(kFwdBK) {}
};

// One row of a score tile: the online-softmax update of (m, l) and of the output row o (scaled
// by the change of max), the row turned into (dropped) probabilities for keys lo <= j < n, zeros
// for the rest of [0, nk). lo < n; keep (when set) holds keys [lo, n).
GC_CPU_CLONES
void softmax_row(float* row, int64_t lo, int64_t n, int64_t nk, float* o, int64_t D, float& m, float& l,
                 const float* keep) {
  std::fill(row, row + lo, 0.f);
  row += lo;
  n -= lo;
  nk -= lo;
  float row_max = -INFINITY;
#pragma omp simd reduction(max : row_max)
  for (int64_t j = 0; j < n; ++j) row_max = std::max(row_max, row[j]);
  const float m_new = std::max(m, row_max), alpha = exp_fast(m - m_new);
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    row[j] = exp_fast(row[j] - m_new);
    sum += row[j];
  }
  // The normalizer l keeps the undropped probabilities: out = dropout(softmax) v.
  if (keep) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] *= keep[j];
  }
  std::fill(row + n, row + nk, 0.f);
  l = l * alpha + sum;
  m = m_new;
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) o[d] *= alpha;
}

// Rows [i0, i0 + mi) of one head: out = softmax(scale * q k^T, masked) (dropped) v, and lse.
void fwd_rows(const Head& h, int64_t i0, int64_t mi, float scale, const Dropout& drop, float* out, float* lse,
              FwdScratch& w) {
  const int64_t D = h.D;
  float *s = w.s.data(), *o = w.o.data(), *m = w.m.data(), *l = w.l.data();
  std::memset(o, 0, mi * D * sizeof(float));
  std::fill(m, m + mi, -INFINITY);
  std::fill(l, l + mi, 0.f);
  const int64_t key_end = h.key_limit(i0 + mi - 1);
  for (int64_t j0 = h.key_begin(i0); j0 < key_end; j0 += kFwdBK) {  // no row sees keys before its document
    const int64_t nk = std::min(kFwdBK, key_end - j0);  // no row of the block sees keys >= key_end
    sgemm(false, true, mi, nk, D, scale, h.q + i0 * D, D, h.k + j0 * D, D, 0.f, s, kFwdBK);  // scaled scores
    for (int64_t i = 0; i < mi; ++i) {
      float* row = s + i * kFwdBK;
      const int64_t n = std::clamp<int64_t>(h.key_limit(i0 + i) - j0, 0, nk);
      const int64_t lo = std::clamp<int64_t>(h.key_begin(i0 + i) - j0, 0, nk);
      if (n <= lo) {
        std::fill(row, row + nk, 0.f);
        continue;
      }
      const float* keep = nullptr;
      if (drop.p > 0.f) {
        dropout_keep(drop.seed, drop.offset, h.first_element + (i0 + i) * h.T_k + j0 + lo, n - lo, drop.p,
                     w.keep.data());
        keep = w.keep.data();
      }
      softmax_row(row, lo, n, nk, o + i * D, D, m[i], l[i], keep);
    }
    sgemm(false, false, mi, D, nk, 1.f, s, kFwdBK, h.v + j0 * D, D, 1.f, o, D);
  }
  for (int64_t i = 0; i < mi; ++i) {
    const float inv = 1.f / l[i];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) out[(i0 + i) * D + d] = o[i * D + d] * inv;
    if (lse) lse[i0 + i] = m[i] + std::log(l[i]);
  }
}

struct BwdScratch {
  std::vector<float> p, pd, ds, keep;
  BwdScratch() : p(kBQ * kBK), pd(kBQ * kBK), ds(kBQ * kBK), keep(kBK) {}
};

struct BwdHead {
  Head h;
  const float* dout;
  const float* lse;
  const float* delta;  // rowsum(dout * out)
  float* dq;           // this task's dq accumulator for the head (dq itself or a partial copy)
  float* dk;
  float* dv;
};

// One row of a key tile in the backward: given the scaled scores in p and dout v^T in ds, p
// becomes the probabilities, pd the dropped ones (when keep is set) and ds the gradient of the
// scores for keys lo <= j < n; the other keys of [0, nk) are zero in all three. lo <= n; keep
// (when set) holds keys [lo, n).
GC_CPU_CLONES
void bwd_row(float* p, float* pd, float* ds, int64_t lo, int64_t n, int64_t nk, float lse, float delta,
             const float* keep) {
  std::fill(p, p + lo, 0.f);
  std::fill(ds, ds + lo, 0.f);
  if (keep) std::fill(pd, pd + lo, 0.f);
  p += lo;
  pd += lo;
  ds += lo;
  n -= lo;
  nk -= lo;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) p[j] = exp_fast(p[j] - lse);
  if (keep) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      pd[j] = p[j] * keep[j];
      ds[j] = p[j] * (ds[j] * keep[j] - delta);
    }
    std::fill(pd + n, pd + nk, 0.f);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - delta);
  }
  std::fill(p + n, p + nk, 0.f);
  std::fill(ds + n, ds + nk, 0.f);
}

// Keys [j0, j0 + nk) of one head against every query that sees them: dk and dv of those keys
// in full, and their share of dq added into b.dq.
void bwd_keys(const BwdHead& b, int64_t j0, int64_t nk, float scale, const Dropout& drop, BwdScratch& w) {
  const Head& h = b.h;
  const int64_t D = h.D;
  const float *k = h.k + j0 * D, *v = h.v + j0 * D;
  float *p = w.p.data(), *ds = w.ds.data(), *dk = b.dk + j0 * D, *dv = b.dv + j0 * D;
  float* pd = drop.p > 0.f ? w.pd.data() : p;
  std::memset(dk, 0, nk * D * sizeof(float));
  std::memset(dv, 0, nk * D * sizeof(float));
  // The first query that sees key j0: i + T_k - T_q >= j0 when causal. With documents the
  // queries that see keys [j0, j0 + nk) are exactly [j0, end of the last key's document).
  const int64_t first_query = h.causal ? std::max<int64_t>(0, j0 - (h.T_k - h.T_q)) : 0;
  const int64_t q_end = h.doc_end(j0 + nk - 1);
  for (int64_t i0 = h.cu ? j0 : first_query / kBQ * kBQ; i0 < q_end; i0 += kBQ) {
    const int64_t mi = std::min(kBQ, q_end - i0);
    const float *q = h.q + i0 * D, *dout = b.dout + i0 * D;
    sgemm(false, true, mi, nk, D, scale, q, D, k, D, 0.f, p, kBK);   // scaled scores
    sgemm(false, true, mi, nk, D, 1.f, dout, D, v, D, 0.f, ds, kBK);  // dout v^T: gradient of pd
    for (int64_t i = 0; i < mi; ++i) {
      const int64_t n = std::clamp<int64_t>(h.key_limit(i0 + i) - j0, 0, nk);
      const int64_t lo = std::min(n, std::clamp<int64_t>(h.key_begin(i0 + i) - j0, 0, nk));
      const float* keep = nullptr;
      if (drop.p > 0.f) {
        dropout_keep(drop.seed, drop.offset, h.first_element + (i0 + i) * h.T_k + j0 + lo, n - lo, drop.p,
                     w.keep.data());
        keep = w.keep.data();
      }
      bwd_row(p + i * kBK, pd + i * kBK, ds + i * kBK, lo, n, nk, b.lse[i0 + i], b.delta[i0 + i], keep);
    }
    sgemm(true, false, nk, D, mi, 1.f, pd, kBK, dout, D, 1.f, dv, D);             // dv += pd^T dout
    sgemm(true, false, nk, D, mi, scale, ds, kBK, q, D, 1.f, dk, D);              // dk += scale ds^T q
    sgemm(false, false, mi, D, nk, scale, ds, kBK, k, D, 1.f, b.dq + i0 * D, D);  // dq += scale ds k
  }
}

// Backward tasks per head: key blocks split into this many runs (fixed by the shape alone).
int64_t bwd_splits(const AttentionShape& s) {
  const int64_t blocks = (s.T_k + kBK - 1) / kBK, per_task = kBwdKeysPerTask / kBK;
  return std::clamp<int64_t>((blocks + per_task - 1) / per_task, 1, kBwdMaxSplits);
}

}  // namespace

gc_status attention_fwd_cpu(const gc_attention_fwd_params& p, const AttentionShape& s) {
  const SerialBlas serial_blas;
  const int64_t heads = s.B * s.H, q_blocks = (s.T_q + kBQ - 1) / kBQ;
  const Dropout drop{p.dropout_p, p.seed, p.offset};
  const float* q = static_cast<const float*>(p.q.data);
  const float* k = static_cast<const float*>(p.k.data);
  const float* v = static_cast<const float*>(p.v.data);
  float* out = static_cast<float*>(p.out.data);
  float* lse = static_cast<float*>(p.lse.data);
  const int32_t* cu = static_cast<const int32_t*>(p.cu_seqlens.data);
  const int64_t n_cu = cu ? p.cu_seqlens.shape[1] : 0;
#pragma omp parallel
  {
    FwdScratch w(s.D);
    // Later query blocks of a causal head see more keys: hand them out first.
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < heads * q_blocks; ++t) {
      const int64_t bh = t % heads, qb = q_blocks - 1 - t / heads;
      const Head h{q + bh * s.T_q * s.D, k + bh * s.T_k * s.D, v + bh * s.T_k * s.D, s.T_q, s.T_k, s.D,
                   p.causal != 0, bh * s.T_q * s.T_k, cu ? cu + (bh / s.H) * n_cu : nullptr, n_cu};
      const int64_t i0 = qb * kBQ;
      document_runs(h, i0, std::min(s.T_q, i0 + kBQ), [&](int64_t begin, int64_t rows) {
        fwd_rows(h, begin, rows, p.scale, drop, out + bh * s.T_q * s.D, lse + bh * s.T_q, w);
      });
    }
  }
  return GC_OK;
}

size_t attention_bwd_workspace_cpu(const AttentionShape& s) {
  const int64_t rows = s.B * s.H * s.T_q;
  return static_cast<size_t>(rows + (bwd_splits(s) - 1) * rows * s.D) * sizeof(float);
}

gc_status attention_bwd_cpu(const gc_attention_bwd_params& p, const AttentionShape& s, void* workspace) {
  if (s.T_q == 0) {  // no query sees a key: zero key gradients (the caller's dk, dv are uninitialized)
    const size_t bytes = static_cast<size_t>(s.B * s.H * s.T_k * s.D) * sizeof(float);
    std::memset(p.dk.data, 0, bytes);
    std::memset(p.dv.data, 0, bytes);
    return GC_OK;
  }
  const SerialBlas serial_blas;
  const int64_t heads = s.B * s.H, rows = heads * s.T_q, D = s.D, splits = bwd_splits(s);
  const int64_t k_blocks = (s.T_k + kBK - 1) / kBK, blocks_per_split = (k_blocks + splits - 1) / splits;
  const Dropout drop{p.dropout_p, p.seed, p.offset};
  const float* q = static_cast<const float*>(p.q.data);
  const float* k = static_cast<const float*>(p.k.data);
  const float* v = static_cast<const float*>(p.v.data);
  const float* out = static_cast<const float*>(p.out.data);
  const float* dout = static_cast<const float*>(p.dout.data);
  const float* lse = static_cast<const float*>(p.lse.data);
  float* dq = static_cast<float*>(p.dq.data);
  float* dk = static_cast<float*>(p.dk.data);
  float* dv = static_cast<float*>(p.dv.data);
  const int32_t* cu = static_cast<const int32_t*>(p.cu_seqlens.data);
  const int64_t n_cu = cu ? p.cu_seqlens.shape[1] : 0;
  float* delta = static_cast<float*>(workspace);
  float* partials = delta + rows;  // [splits - 1, rows, D]
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      float sum = 0.f;
#pragma omp simd reduction(+ : sum)
      for (int64_t d = 0; d < D; ++d) sum += dout[r * D + d] * out[r * D + d];
      delta[r] = sum;
    }
    BwdScratch w;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < heads * splits; ++t) {
      const int64_t bh = t % heads, split = t / heads;
      const int64_t head_q = bh * s.T_q * D, head_k = bh * s.T_k * D;
      float* dq_acc = split == 0 ? dq + head_q : partials + (split - 1) * rows * D + head_q;
      std::memset(dq_acc, 0, s.T_q * D * sizeof(float));
      const BwdHead b{Head{q + head_q, k + head_k, v + head_k, s.T_q, s.T_k, D, p.causal != 0, bh * s.T_q * s.T_k,
                           cu ? cu + (bh / s.H) * n_cu : nullptr, n_cu},
                      dout + head_q, lse + bh * s.T_q, delta + bh * s.T_q, dq_acc, dk + head_k, dv + head_k};
      const int64_t kb_end = std::min(k_blocks, (split + 1) * blocks_per_split);
      for (int64_t kb = split * blocks_per_split; kb < kb_end; ++kb)
        document_runs(b.h, kb * kBK, std::min(s.T_k, (kb + 1) * kBK), [&](int64_t j0, int64_t nk) {
          bwd_keys(b, j0, nk, p.scale, drop, w);
        });
    }
    if (splits > 1) {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t split = 1; split < splits; ++split) {
          const float* part = partials + (split - 1) * rows * D + r * D;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) dq[r * D + d] += part[d];
        }
    }
  }
  return GC_OK;
}

namespace {

// One query over the first n keys and values of a cached head: its scores, their softmax, the
// weighted sum of the values. A decode step's query sees a few hundred keys at most, too few for
// the tiles' sgemm calls and scratch to pay for themselves.
GC_CPU_CLONES
void decode_query(const float* q, const float* k, const float* v, int64_t n, int64_t D, float scale, float* scores,
                  float* out) {
  float row_max = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += q[d] * k[j * D + d];
    scores[j] = dot * scale;
    row_max = std::max(row_max, scores[j]);
  }
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = exp_fast(scores[j] - row_max);
    sum += scores[j];
  }
  std::fill(out, out + D, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const float p = scores[j];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) out[d] += p * v[j * D + d];
  }
  const float inv = 1.f / sum;
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) out[d] *= inv;
}

// Heads with at most this many queries (decode steps) take decode_query, one query at a time;
// more (prefills) take the tiles of fwd_rows.
constexpr int64_t kDecodeQueries = 4;

// A thread's scratch for the heads it takes: scores for decode_query; tiles, and contiguous query
// and output rows, for fwd_rows (made for the first head that needs them).
struct CachedScratch {
  std::vector<float> scores, q, out;
  std::vector<FwdScratch> tiles;
};

void cached_head(const CachedHead& c, int64_t D, float scale, bool causal, CachedScratch& w) {
  const int64_t first_new = c.len - c.T_q;
  if (c.new_k)
    for (int64_t t = 0; t < c.T_q; ++t) {
      std::memcpy(c.k + (first_new + t) * D, c.new_k + t * c.new_stride, D * sizeof(float));
      std::memcpy(c.v + (first_new + t) * D, c.new_v + t * c.new_stride, D * sizeof(float));
    }
  if (c.T_q <= kDecodeQueries) {
    w.scores.resize(c.len);
    for (int64_t t = 0; t < c.T_q; ++t)
      decode_query(c.q + t * c.q_stride, c.k, c.v, causal ? first_new + t + 1 : c.len, D, scale, w.scores.data(),
                   c.out + t * c.out_stride);
    return;
  }
  if (w.tiles.empty()) w.tiles.emplace_back(D);
  const bool gather = c.q_stride != D, scatter = c.out_stride != D;
  if (gather) {
    w.q.resize(c.T_q * D);
    for (int64_t t = 0; t < c.T_q; ++t) std::memcpy(w.q.data() + t * D, c.q + t * c.q_stride, D * sizeof(float));
  }
  if (scatter) w.out.resize(c.T_q * D);
  float* out = scatter ? w.out.data() : c.out;
  const Head h{gather ? w.q.data() : c.q, c.k, c.v, c.T_q, c.len, D, causal, 0, nullptr, 0};
  const Dropout none{0.f, 0, 0};
  for (int64_t i0 = 0; i0 < c.T_q; i0 += kBQ)
    fwd_rows(h, i0, std::min(kBQ, c.T_q - i0), scale, none, out, nullptr, w.tiles[0]);
  if (scatter)
    for (int64_t t = 0; t < c.T_q; ++t) std::memcpy(c.out + t * c.out_stride, out + t * D, D * sizeof(float));
}

}  // namespace

void attention_cached_heads_team(const CachedHead* heads, int64_t count, int64_t D, float scale, bool causal) {
  CachedScratch w;
#pragma omp for schedule(dynamic, 1)
  for (int64_t i = 0; i < count; ++i) cached_head(heads[i], D, scale, causal, w);
}

void attention_cached_heads_cpu(const CachedHead* heads, int64_t count, int64_t D, float scale, bool causal) {
  const SerialBlas serial_blas;
#pragma omp parallel if (count > 1)
  attention_cached_heads_team(heads, count, D, scale, causal);
}

gc_status attention_decode_cpu(const gc_attention_decode_params& p, const AttentionShape& s) {
  // Each (sequence, head) is the forward over its valid cache prefix.
  const int64_t T_max = s.T_k;
  const float* q = static_cast<const float*>(p.q.data);
  float* k = static_cast<float*>(p.k_cache.data);  // read only: no new rows to write
  float* v = static_cast<float*>(p.v_cache.data);
  const int32_t* lens = static_cast<const int32_t*>(p.cache_lens.data);
  float* out = static_cast<float*>(p.out.data);
  std::vector<CachedHead> heads(s.B * s.H);
  for (int64_t bh = 0; bh < s.B * s.H; ++bh)
    heads[bh] = CachedHead{q + bh * s.T_q * s.D, k + bh * T_max * s.D, v + bh * T_max * s.D, out + bh * s.T_q * s.D,
                           s.T_q, lens[bh / s.H], s.D, s.D};
  attention_cached_heads_cpu(heads.data(), s.B * s.H, s.D, p.scale, p.causal != 0);
  return GC_OK;
}

}  // namespace gc
