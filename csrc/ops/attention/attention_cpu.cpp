// Attention on the CPU: float32, flash-style tiles of kBQ queries x kBK keys with an online
// softmax, so memory beyond the inputs and outputs is a few tiles per thread.
//
// Every product of two tiles goes through gemm_acc, a register-blocked loop (4 rows x 16
// columns of accumulators) whose inner loop runs over contiguous columns; K and V tiles are
// transposed into a small buffer where the product needs them as columns.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/cpu_math.h"
#include "common/philox.h"
#include "ops/attention/attention.h"

namespace gc {
namespace {

constexpr int64_t kBQ = 64;  // query rows per tile
constexpr int64_t kBK = 64;  // keys per tile
// Backward: each task owns the dk/dv rows of up to kBwdKeysPerTask keys of one head and adds
// its share of dq into its own float32 copy, summed at the end in a fixed order.
constexpr int64_t kBwdKeysPerTask = 256;
constexpr int64_t kBwdMaxSplits = 4;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[r][c] += sum_k A(r, k) * B[k][c] for 4 rows and W columns, with A(r, k) = A[r * sr + k * sk].
template <int W>
inline void micro_tile(const float* A, int64_t sr, int64_t sk, int64_t K, const float* B, int64_t ldb, float* C,
                       int64_t ldc) {
  float acc[4][W];
  for (int r = 0; r < 4; ++r)
#pragma omp simd
    for (int c = 0; c < W; ++c) acc[r][c] = C[r * ldc + c];
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    for (int r = 0; r < 4; ++r) {
      const float a = A[r * sr + k * sk];
#pragma omp simd
      for (int c = 0; c < W; ++c) acc[r][c] += a * b[c];
    }
  }
  for (int r = 0; r < 4; ++r)
#pragma omp simd
    for (int c = 0; c < W; ++c) C[r * ldc + c] = acc[r][c];
}

// C [M x N] += A [M x K] * B [K x N], A read through strides (sr, sk) so that a transposed
// tile needs no copy. M is a multiple of 4 and N of 8.
GC_CPU_CLONES
void gemm_acc(const float* A, int64_t sr, int64_t sk, int64_t M, int64_t K, const float* B, int64_t ldb, float* C,
              int64_t ldc, int64_t N) {
  for (int64_t r = 0; r < M; r += 4) {
    int64_t c = 0;
    for (; c + 16 <= N; c += 16) micro_tile<16>(A + r * sr, sr, sk, K, B + c, ldb, C + r * ldc + c, ldc);
    if (c < N) micro_tile<8>(A + r * sr, sr, sk, K, B + c, ldb, C + r * ldc + c, ldc);
  }
}

// dst[d][c] = src[c][d] for c < n, zero for n <= c < n_pad (dst has kBK columns).
void transpose_tile(const float* src, int64_t n, int64_t n_pad, int64_t D, float* dst) {
  for (int64_t d = 0; d < D; ++d) {
    float* row = dst + d * kBK;
    for (int64_t c = 0; c < n; ++c) row[c] = src[c * D + d];
    for (int64_t c = n; c < n_pad; ++c) row[c] = 0.f;
  }
}

// dst = factor * src for `rows` rows of D, then zero rows up to `rows_pad`.
void copy_rows(const float* src, int64_t rows, int64_t rows_pad, int64_t D, float factor, float* dst) {
  const int64_t n = rows * D;
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) dst[e] = factor * src[e];
  std::memset(dst + n, 0, (rows_pad - rows) * D * sizeof(float));
}

// keep[j] = 1 / (1 - p) when dropout element n0 + j is kept, else 0, for j < len: one Philox
// call per four elements, the same draws as dropout_uniform(seed, offset, n0 + j).
void dropout_keep(uint64_t seed, uint64_t offset, uint64_t n0, int64_t len, float p, float* keep) {
  const float inv_keep = 1.f / (1.f - p);
  int64_t j = 0;
  while (j < len) {
    const uint64_t n = n0 + static_cast<uint64_t>(j);
    const Philox4 bits = dropout_bits(seed, offset, n / 4);
    for (unsigned lane = static_cast<unsigned>(n % 4); lane < 4 && j < len; ++lane, ++j)
      keep[j] = uniform24(bits.v[lane]) >= p ? inv_keep : 0.f;
  }
}

// One head's tensors and masking rule. Query i sees keys j < key_limit(i).
struct Head {
  const float* q;
  const float* k;
  const float* v;
  int64_t T_q, T_k, D;
  bool causal;
  int64_t first_element;  // dropout index n of element (i = 0, j = 0) of this head

  int64_t key_limit(int64_t i) const {
    return causal ? std::min(T_k, std::max<int64_t>(0, i + T_k - T_q + 1)) : T_k;
  }
};

struct Dropout {
  float p;
  uint64_t seed, offset;
};

GC_CPU_CLONES
float row_max(const float* x, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// x[j] = exp(x[j] - shift) for j < n, zero for n <= j < n_pad; returns the sum.
GC_CPU_CLONES
float exp_shifted(float* x, int64_t n, int64_t n_pad, float shift) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    x[j] = exp_fast(x[j] - shift);
    sum += x[j];
  }
  for (int64_t j = n; j < n_pad; ++j) x[j] = 0.f;
  return sum;
}

struct FwdScratch {
  std::vector<float> qs, kt, s, o, m, l, keep;
  explicit FwdScratch(int64_t D)
      : qs(kBQ * D), kt(D * kBK), s(kBQ * kBK), o(kBQ * D), m(kBQ), l(kBQ), keep(kBK) {}
};

// Rows [i0, i0 + mi) of one head: out = softmax(scale * q k^T, masked) (dropped) v, and lse.
void fwd_rows(const Head& h, int64_t i0, int64_t mi, float scale, const Dropout& drop, float* out, float* lse,
              FwdScratch& w) {
  const int64_t D = h.D, mp = round_up(mi, 4);
  float *qs = w.qs.data(), *kt = w.kt.data(), *s = w.s.data(), *o = w.o.data(), *m = w.m.data(), *l = w.l.data();
  copy_rows(h.q + i0 * D, mi, mp, D, scale, qs);  // scaled once here, so the scores come out scaled
  std::memset(o, 0, mp * D * sizeof(float));
  std::fill(m, m + mi, -INFINITY);
  std::fill(l, l + mi, 0.f);
  const int64_t key_end = h.key_limit(i0 + mi - 1);
  for (int64_t j0 = 0; j0 < key_end; j0 += kBK) {
    const int64_t nk = std::min(kBK, h.T_k - j0), n_pad = round_up(nk, 8);
    transpose_tile(h.k + j0 * D, nk, n_pad, D, kt);
    std::memset(s, 0, mp * kBK * sizeof(float));
    gemm_acc(qs, D, 1, mp, D, kt, kBK, s, kBK, n_pad);
    for (int64_t i = 0; i < mi; ++i) {
      float* row = s + i * kBK;
      const int64_t n = std::clamp<int64_t>(h.key_limit(i0 + i) - j0, 0, nk);
      if (n == 0) {
        std::memset(row, 0, n_pad * sizeof(float));
        continue;
      }
      const float m_new = std::max(m[i], row_max(row, n));
      const float alpha = exp_fast(m[i] - m_new);
      l[i] = l[i] * alpha + exp_shifted(row, n, n_pad, m_new);
      m[i] = m_new;
      float* orow = o + i * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) orow[d] *= alpha;
      if (drop.p > 0.f) {
        // The normalizer l keeps the undropped probabilities: out = dropout(softmax) v.
        float* keep = w.keep.data();
        dropout_keep(drop.seed, drop.offset, h.first_element + (i0 + i) * h.T_k + j0, n, drop.p, keep);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) row[j] *= keep[j];
      }
    }
    gemm_acc(s, kBK, 1, mp, nk, h.v + j0 * D, D, o, D, D);
  }
  for (int64_t i = 0; i < mi; ++i) {
    const float inv = 1.f / l[i];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) out[(i0 + i) * D + d] = o[i * D + d] * inv;
    if (lse) lse[i0 + i] = m[i] + std::log(l[i]);
  }
}

struct BwdScratch {
  std::vector<float> qs, dos, kt, vt, p, pd, ds, dk, dv, dq, keep;
  explicit BwdScratch(int64_t D)
      : qs(kBQ * D), dos(kBQ * D), kt(D * kBK), vt(D * kBK), p(kBQ * kBK), pd(kBQ * kBK), ds(kBQ * kBK),
        dk(kBK * D), dv(kBK * D), dq(kBQ * D), keep(kBK) {}
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

// Keys [j0, j0 + nk) of one head against every query that sees them: dk and dv of those keys
// in full, and their share of dq added into b.dq.
void bwd_keys(const BwdHead& b, int64_t j0, int64_t nk, float scale, const Dropout& drop, BwdScratch& w) {
  const Head& h = b.h;
  const int64_t D = h.D, n_pad = round_up(nk, 8), nk4 = round_up(nk, 4);
  float *qs = w.qs.data(), *dos = w.dos.data(), *kt = w.kt.data(), *vt = w.vt.data(), *p = w.p.data(),
        *ds = w.ds.data(), *dk = w.dk.data(), *dv = w.dv.data(), *dq = w.dq.data(), *keep = w.keep.data();
  float* pd = drop.p > 0.f ? w.pd.data() : p;
  transpose_tile(h.k + j0 * D, nk, n_pad, D, kt);
  transpose_tile(h.v + j0 * D, nk, n_pad, D, vt);
  std::memset(dk, 0, nk4 * D * sizeof(float));
  std::memset(dv, 0, nk4 * D * sizeof(float));
  // The first query that sees key j0: i + T_k - T_q >= j0 when causal.
  const int64_t first_query = h.causal ? std::max<int64_t>(0, j0 - (h.T_k - h.T_q)) : 0;
  for (int64_t i0 = first_query / kBQ * kBQ; i0 < h.T_q; i0 += kBQ) {
    const int64_t mi = std::min(kBQ, h.T_q - i0), mp = round_up(mi, 4);
    copy_rows(h.q + i0 * D, mi, mp, D, scale, qs);
    copy_rows(b.dout + i0 * D, mi, mp, D, 1.f, dos);
    std::memset(p, 0, mp * kBK * sizeof(float));
    std::memset(ds, 0, mp * kBK * sizeof(float));
    gemm_acc(qs, D, 1, mp, D, kt, kBK, p, kBK, n_pad);    // scaled scores
    gemm_acc(dos, D, 1, mp, D, vt, kBK, ds, kBK, n_pad);  // dout v^T: gradient of the dropped probabilities
    for (int64_t i = 0; i < mi; ++i) {
      float *prow = p + i * kBK, *pdrow = pd + i * kBK, *dsrow = ds + i * kBK;
      const int64_t n = std::clamp<int64_t>(h.key_limit(i0 + i) - j0, 0, nk);
      const float lse = b.lse[i0 + i], delta = b.delta[i0 + i];
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) prow[j] = exp_fast(prow[j] - lse);
      for (int64_t j = n; j < n_pad; ++j) prow[j] = dsrow[j] = 0.f;
      if (drop.p > 0.f) {
        dropout_keep(drop.seed, drop.offset, h.first_element + (i0 + i) * h.T_k + j0, n, drop.p, keep);
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          pdrow[j] = prow[j] * keep[j];
          dsrow[j] = prow[j] * (dsrow[j] * keep[j] - delta);
        }
        for (int64_t j = n; j < n_pad; ++j) pdrow[j] = 0.f;
      } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) dsrow[j] = prow[j] * (dsrow[j] - delta);
      }
    }
    gemm_acc(pd, 1, kBK, nk4, mi, dos, D, dv, D, D);  // dv += pd^T dout
    gemm_acc(ds, 1, kBK, nk4, mi, qs, D, dk, D, D);   // dk += ds^T (scale q)
    std::memset(dq, 0, mp * D * sizeof(float));
    gemm_acc(ds, kBK, 1, mp, nk, h.k + j0 * D, D, dq, D, D);  // ds k
    float* target = b.dq + i0 * D;
    const int64_t n = mi * D;
#pragma omp simd
    for (int64_t e = 0; e < n; ++e) target[e] += scale * dq[e];
  }
  std::memcpy(b.dk + j0 * D, dk, nk * D * sizeof(float));
  std::memcpy(b.dv + j0 * D, dv, nk * D * sizeof(float));
}

// Backward tasks per head: key blocks split into this many runs (fixed by the shape alone).
int64_t bwd_splits(const AttentionShape& s) {
  const int64_t blocks = (s.T_k + kBK - 1) / kBK, per_task = kBwdKeysPerTask / kBK;
  return std::clamp<int64_t>((blocks + per_task - 1) / per_task, 1, kBwdMaxSplits);
}

}  // namespace

gc_status attention_fwd_cpu(const gc_attention_fwd_params& p, const AttentionShape& s) {
  const int64_t heads = s.B * s.H, q_blocks = (s.T_q + kBQ - 1) / kBQ;
  const Dropout drop{p.dropout_p, p.seed, p.offset};
  const float* q = static_cast<const float*>(p.q.data);
  const float* k = static_cast<const float*>(p.k.data);
  const float* v = static_cast<const float*>(p.v.data);
  float* out = static_cast<float*>(p.out.data);
  float* lse = static_cast<float*>(p.lse.data);
#pragma omp parallel
  {
    FwdScratch w(s.D);
    // Later query blocks of a causal head see more keys: hand them out first.
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < heads * q_blocks; ++t) {
      const int64_t bh = t % heads, qb = q_blocks - 1 - t / heads;
      const Head h{q + bh * s.T_q * s.D, k + bh * s.T_k * s.D, v + bh * s.T_k * s.D, s.T_q, s.T_k, s.D,
                   p.causal != 0, bh * s.T_q * s.T_k};
      fwd_rows(h, qb * kBQ, std::min(kBQ, s.T_q - qb * kBQ), p.scale, drop, out + bh * s.T_q * s.D,
               lse + bh * s.T_q, w);
    }
  }
  return GC_OK;
}

size_t attention_bwd_workspace_cpu(const AttentionShape& s) {
  const int64_t rows = s.B * s.H * s.T_q;
  return static_cast<size_t>(rows + (bwd_splits(s) - 1) * rows * s.D) * sizeof(float);
}

gc_status attention_bwd_cpu(const gc_attention_bwd_params& p, const AttentionShape& s, void* workspace) {
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
    BwdScratch w(D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < heads * splits; ++t) {
      const int64_t bh = t % heads, split = t / heads;
      const int64_t head_q = bh * s.T_q * D, head_k = bh * s.T_k * D;
      float* dq_acc = split == 0 ? dq + head_q : partials + (split - 1) * rows * D + head_q;
      std::memset(dq_acc, 0, s.T_q * D * sizeof(float));
      const BwdHead b{Head{q + head_q, k + head_k, v + head_k, s.T_q, s.T_k, D, p.causal != 0, bh * s.T_q * s.T_k},
                      dout + head_q, lse + bh * s.T_q, delta + bh * s.T_q, dq_acc, dk + head_k, dv + head_k};
      const int64_t kb_end = std::min(k_blocks, (split + 1) * blocks_per_split);
      for (int64_t kb = split * blocks_per_split; kb < kb_end; ++kb)
        bwd_keys(b, kb * kBK, std::min(kBK, s.T_k - kb * kBK), p.scale, drop, w);
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

gc_status attention_decode_cpu(const gc_attention_decode_params& p, const AttentionShape& s) {
  // Each (sequence, head) is the forward over its valid cache prefix, bottom-right aligned:
  // new query t sits at position len - T_new + t.
  const int64_t heads = s.B * s.H, T_max = s.T_k;
  const float* q = static_cast<const float*>(p.q.data);
  const float* k = static_cast<const float*>(p.k_cache.data);
  const float* v = static_cast<const float*>(p.v_cache.data);
  const int32_t* lens = static_cast<const int32_t*>(p.cache_lens.data);
  float* out = static_cast<float*>(p.out.data);
  const Dropout none{0.f, 0, 0};
#pragma omp parallel
  {
    FwdScratch w(s.D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < heads; ++bh) {
      const int64_t len = lens[bh / s.H];
      const Head h{q + bh * s.T_q * s.D, k + bh * T_max * s.D, v + bh * T_max * s.D, s.T_q, len, s.D,
                   p.causal != 0, 0};
      for (int64_t i0 = 0; i0 < s.T_q; i0 += kBQ)
        fwd_rows(h, i0, std::min(kBQ, s.T_q - i0), p.scale, none, out + bh * s.T_q * s.D, nullptr, w);
    }
  }
  return GC_OK;
}

}  // namespace gc
