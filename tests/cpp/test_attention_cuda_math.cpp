// The index math of the CUDA attention kernels (ops/attention/attention_tiles.h), checked on the
// host against brute force: which keys a query sees, which key tiles a forward query tile walks,
// which query tiles a backward key tile walks, the decode visibility and cache split, the dropout
// element index and the keep bits of a run of elements, and the shared-memory layouts (alignment
// for wmma, budget per head dim).
#include <cstdint>

#include "check.h"
#include "common/philox.h"
#include "ops/attention/attention_tiles.h"

using namespace gc::attn;

namespace {

// The contract of gptcore/attention.h, written out directly.
bool sees(int64_t i, int64_t j, int64_t T_q, int64_t T_k, bool causal) {
  return i >= 0 && i < T_q && j >= 0 && j < T_k && (!causal || j <= i + (T_k - T_q));
}

const int64_t kSizes[] = {1, 2, 15, 16, 17, 63, 64, 65, 100, 127, 128, 129, 200};

}  // namespace

TEST(visible_key_end_matches_the_contract) {
  for (int64_t T_q : kSizes)
    for (int64_t T_k : kSizes)
      for (bool causal : {false, true})
        for (int64_t i = 0; i < T_q; ++i) {
          const int64_t end = visible_key_end(i, T_q, T_k, causal);
          CHECK(end >= 0 && end <= T_k);
          for (int64_t j = 0; j < T_k; ++j) CHECK((j < end) == sees(i, j, T_q, T_k, causal));
        }
}

// Forward: query tile [q0, q0 + kTileQ) walks key tiles [0, ceil(tile_key_end / kTileK)); every
// visible pair lies inside, and the last tile walked holds a visible key (no wasted tile).
TEST(forward_key_tiles_cover_exactly_the_visible_keys) {
  for (int64_t T_q : kSizes)
    for (int64_t T_k : kSizes)
      for (bool causal : {false, true})
        for (int64_t q0 = 0; q0 < T_q; q0 += kTileQ) {
          const int64_t q_end = q0 + kTileQ < T_q ? q0 + kTileQ : T_q;
          const int64_t key_end = tile_key_end(q_end, T_q, T_k, causal);
          int64_t max_visible = -1;
          for (int64_t i = q0; i < q_end; ++i)
            for (int64_t j = 0; j < T_k; ++j)
              if (sees(i, j, T_q, T_k, causal)) max_visible = j > max_visible ? j : max_visible;
          CHECK(key_end == max_visible + 1);
          CHECK(ceil_div(key_end, kTileK) * kTileK >= key_end);
        }
}

// Backward: key tile [j0, j0 + kTileK) walks query tiles from first_query_seeing(j0) / kTileQ to
// the end; rows before that tile see none of the tile's keys, and each visible pair is met once.
TEST(backward_query_tiles_cover_exactly_the_visible_rows) {
  for (int64_t T_q : kSizes)
    for (int64_t T_k : kSizes)
      for (bool causal : {false, true}) {
        int64_t met = 0, visible = 0;
        for (int64_t i = 0; i < T_q; ++i)
          for (int64_t j = 0; j < T_k; ++j) visible += sees(i, j, T_q, T_k, causal);
        for (int64_t j0 = 0; j0 < T_k; j0 += kTileK) {
          const int64_t first_row = first_query_seeing(j0, T_q, T_k, causal);
          CHECK(first_row >= 0 && first_row <= T_q);
          const int64_t first_tile = first_row / kTileQ;
          for (int64_t i = 0; i < T_q; ++i)
            for (int64_t j = j0; j < j0 + kTileK && j < T_k; ++j) {
              if (i < first_tile * kTileQ) CHECK(!sees(i, j, T_q, T_k, causal));
              else met += sees(i, j, T_q, T_k, causal);
            }
          if (first_row < T_q) CHECK(sees(first_row, j0, T_q, T_k, causal));
          if (first_row > 0) CHECK(!sees(first_row - 1, j0, T_q, T_k, causal));
        }
        CHECK(met == visible);
      }
}

TEST(decode_sees_the_cache_up_to_its_own_position) {
  for (int64_t T_max : {1, 5, 64, 130})
    for (int64_t T_new : {1, 2, 4})
      for (int64_t len = -1; len <= T_max + 1; ++len)
        for (bool causal : {false, true})
          for (int64_t t = 0; t < T_new; ++t) {
            const int64_t valid = len < 0 ? 0 : (len > T_max ? T_max : len);
            const int64_t pos = valid - T_new + t;
            const int64_t end = decode_key_end(len, T_max, T_new, t, causal);
            CHECK(end >= 0 && end <= valid);
            for (int64_t j = 0; j < T_max; ++j) CHECK((j < end) == (j < valid && (!causal || j <= pos)));
          }
}

TEST(dropout_index_is_row_major_over_b_h_tq_tk) {
  const int64_t B = 3, H = 5, T_q = 7, T_k = 11;
  uint64_t n = 0;
  for (int64_t bh = 0; bh < B * H; ++bh)
    for (int64_t i = 0; i < T_q; ++i)
      for (int64_t j = 0; j < T_k; ++j) CHECK(dropout_index(bh, i, j, T_q, T_k) == n++);
  CHECK(dropout_index(70000, 8191, 8191, 8192, 8192) == (70000ull * 8192 + 8191) * 8192 + 8191);
}

// The four keep bits of one Philox call are the masks of four consecutive elements.
TEST(dropout_keep4_is_the_mask_of_four_elements) {
  for (float p : {0.f, 0.1f, 0.5f, 0.9f})
    for (uint64_t offset : {0ull, 5ull, (1ull << 40) + 3})
      for (uint64_t group = 0; group < 64; ++group) {
        const unsigned keep = gc::dropout_keep4(77, offset, group, p);
        for (unsigned q = 0; q < 4; ++q)
          CHECK(((keep >> q) & 1u) == (gc::dropout_uniform(77, offset, 4 * group + q) >= p ? 1u : 0u));
      }
}

// A run's keep bits, drawn a group of four at a time, are the masks of its elements, whatever
// the run's alignment to the groups; bits past the run are clear.
TEST(dropout_keep_run_is_the_mask_of_the_run) {
  for (float p : {0.1f, 0.5f})
    for (uint64_t n : {0ull, 1ull, 2ull, 3ull, 6ull, 1001ull, (1ull << 40) + 7})
      for (int len : {1, 2, 3, 4, 5, 15, 16, 17, 31, 32, 61}) {
        const uint64_t bits = gc::dropout_keep_run(5, 9, n, len, p);
        for (int x = 0; x < 64; ++x)
          CHECK(((bits >> x) & 1u) == (x < len && gc::dropout_uniform(5, 9, n + x) >= p ? 1u : 0u));
      }
}

// Split decoding: enough chunks to fill the SMs when rows are few, none when rows are many, at
// most one chunk per kDecodeMinChunk keys of the cache, and the chunks cover the cache.
TEST(decode_splits_fill_the_device_and_cover_the_cache) {
  for (int sms : {1, 80, 132})
    for (int64_t rows : {1, 12, 16, 100, 192, 1000, 100000})
      for (int64_t T_max : {1, 100, 128, 129, 1000, 4096, 100000}) {
        const int64_t splits = decode_splits(rows, T_max, sms);
        CHECK(splits >= 1 && splits <= kDecodeMaxSplits);
        CHECK((splits - 1) * kDecodeMinChunk < T_max);
        CHECK(ceil_div(T_max, splits) * splits >= T_max);
        if (rows >= kDecodeCtasPerSm * sms) CHECK(splits == 1);
        if (splits > 1) CHECK(decode_workspace_floats(rows, splits, 64) == rows * splits * 66);
        CHECK(decode_workspace_floats(rows, 1, 64) == 0);
      }
  CHECK(decode_splits(12, 4000, 132) == 32);  // B = 1, H = 12 on an H100/H200: 384 CTAs, not 12
  CHECK(decode_splits(12, 1, 132) == 1);
}

TEST(head_dims_pad_to_the_wmma_step) {
  for (int64_t D = 32; D <= 128; D += 8) {
    const int Dp = padded_head_dim(D);
    CHECK(Dp % 16 == 0 && Dp >= D && Dp < D + 16 && Dp >= 32 && Dp <= 128);
  }
}

// Packed documents: doc_begin / doc_end against a scan of the boundaries, with empty documents
// (repeated boundaries) at the start, middle and end; the forward's first key tile and the
// backward's query range derived from them cover every visible pair.
TEST(document_bounds_match_a_scan) {
  const int32_t rows[][7] = {{0, 0, 3, 3, 4, 130, 130}, {0, 130, 130, 130, 130, 130, 130}, {0, 1, 2, 64, 65, 66, 130}};
  const int64_t T = 130, n = 7;
  for (const auto& cu : rows)
    for (int64_t i = 0; i < T; ++i) {
      int64_t begin = 0, end = T;
      for (int64_t m = 0; m + 1 < n; ++m)
        if (cu[m] <= i && i < cu[m + 1]) begin = cu[m], end = cu[m + 1];
      CHECK(doc_begin(cu, n, i) == begin);
      CHECK(doc_end(cu, n, i) == end);
      // Query i sees exactly keys [begin, i]: within the forward tile walk from doc_begin(q0) and
      // within the backward query range [j, doc_end(j)) of each such key j.
      const int64_t q0 = i / kTileQ * kTileQ;
      CHECK(doc_begin(cu, n, q0) / kTileK * kTileK <= begin);
      for (int64_t j = begin; j <= i; ++j) CHECK(i < doc_end(cu, n, j));
    }
  // Bad rows stay inside the row and keep i in its own document.
  const int32_t bad[] = {5, -3, 200, 1};
  for (int64_t i = 0; i < 10; ++i) {
    CHECK(doc_begin(bad, 4, i) >= 0 && doc_begin(bad, 4, i) <= i);
    CHECK(doc_end(bad, 4, i) > i);
  }
}

// Every region 128-byte aligned and in order, leading dims legal for wmma (multiples of 8 half
// elements / 4 floats), and the total within sm_80's 163 KB opt-in (sm_90 allows 227 KB).
TEST(shared_memory_layouts_fit_and_align) {
  constexpr int kSm80Optin = 163 * 1024;
  for (int Dp = 32; Dp <= 128; Dp += 16) {
    const FwdSmem f = fwd_smem(Dp, 2);
    const int fwd_off[] = {f.q, f.k, f.v, f.s, f.p, f.o, f.bytes};
    const int fwd_size[] = {kTileQ * f.ld_t * 2, kTileK * f.ld_t * 2, kTileK * f.ld_t * 2, kTileQ * f.ld_s * 4,
                            kTileQ * f.ld_p * 2, kTileQ * f.ld_o * 4};
    for (int r = 0; r < 6; ++r) {
      CHECK(fwd_off[r] % 128 == 0);
      CHECK(fwd_off[r] + fwd_size[r] <= fwd_off[r + 1]);
    }
    CHECK(f.ld_t % 8 == 0 && f.ld_p % 8 == 0 && f.ld_s % 4 == 0 && f.ld_o % 4 == 0);
    CHECK(f.ld_t >= Dp && f.ld_o >= Dp && f.ld_s >= kTileK && f.ld_p >= kTileK);
    CHECK(f.bytes <= kSm80Optin);

    const BwdSmem b = bwd_smem(Dp, 2);
    const int bwd_off[] = {b.k, b.v, b.q, b.dout, b.st, b.dpt, b.pt, b.dst, b.lse, b.dsum, b.key_begin, b.bytes};
    const int bwd_size[] = {kTileK * b.ld_t * 2, kTileK * b.ld_t * 2, kTileQ * b.ld_t * 2, kTileQ * b.ld_t * 2,
                            kTileK * b.ld_f * 4, kTileK * b.ld_f * 4, kTileK * b.ld_h * 2, kTileK * b.ld_h * 2,
                            kTileQ * 4,          kTileQ * 4,          kTileQ * 4};
    for (int r = 0; r < 11; ++r) {
      CHECK(bwd_off[r] % 128 == 0);
      CHECK(bwd_off[r] + bwd_size[r] <= bwd_off[r + 1]);
    }
    CHECK(b.ld_t % 8 == 0 && b.ld_h % 8 == 0 && b.ld_f % 4 == 0);
    CHECK(b.ld_t >= Dp && b.ld_f >= kTileQ && b.ld_h >= kTileQ && b.ld_f >= 16);
    CHECK(b.bytes <= kSm80Optin);
    std::printf("  Dp %3d: forward %6d bytes, backward %6d bytes of shared memory\n", Dp, f.bytes, b.bytes);
  }
}

TEST_MAIN()
