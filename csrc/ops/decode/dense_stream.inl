// The streaming kernel of dense_cpu.cpp, written once over a vector type and included once per
// instruction set, each time inside that set's `#pragma GCC target` region and namespace, after
// the namespace has defined:
//   kWidth: lanes of V;  V zero();  V load(const float* / const uint16_t*): kWidth weights as
//   float32;  V load_x(const float*);  V fma(V a, V b, V acc) = a * b + acc;  V add(V, V);
//   V splat(float);  float reduce(V): the sum of the lanes, in a fixed order;
//   void reduce4(V a, V b, V c, V d, float out[4]): each one's reduce, four at once;
//   and for int8 weights: kPairs16: int16 values a W16 holds (2 * kWidth);  VI: kWidth int32 lanes;
//   VI izero();  W16 load_w16(const int8_t*): kPairs16 weights widened to int16;
//   VI dot16(VI acc, W16 w, const int16_t* x): acc[j] += w[2j] x[2j] + w[2j+1] x[2j+1];
//   VI iadd(VI, VI);  V to_ps(VI);
//   and for packed bfloat16: void load_pairs(const uint16_t* p, V& lo, V& hi): kWidth 32-bit lanes
//   of bfloat16 pairs, lo the low halves and hi the high halves as float32.
// Not a header: no include guard, no includes of its own.

constexpr int kAcc = 4;                     // independent accumulators per row
constexpr int kStep = kAcc * kWidth;        // weights per loop iteration

// out[r] = x[r] . wr for R rows of x (stride K). The order of every addition depends on K alone,
// so a row's dot product is the same whatever R is and whatever the other rows hold.
template <class W, int R>
inline __attribute__((always_inline)) void dot_rows(const W* wr, const float* x, int64_t K, float* out) {
  V acc[R][kAcc];
  for (int r = 0; r < R; ++r)
    for (int a = 0; a < kAcc; ++a) acc[r][a] = zero();
  int64_t k = 0;
  for (; k + kStep <= K; k += kStep) {
    V w[kAcc];
    for (int a = 0; a < kAcc; ++a) w[a] = load(wr + k + a * kWidth);
    for (int r = 0; r < R; ++r)
      for (int a = 0; a < kAcc; ++a) acc[r][a] = fma(load_x(x + r * K + k + a * kWidth), w[a], acc[r][a]);
  }
  for (int r = 0; r < R; ++r) {
    float tail = 0.f;
    for (int64_t t = k; t < K; ++t) tail += x[r * K + t] * to_float(wr[t]);
    out[r] = reduce(add(add(acc[r][0], acc[r][1]), add(acc[r][2], acc[r][3]))) + tail;
  }
}

// Weight rows [n0, n1) against each of the M (<= GC_DENSE_STREAM_ROWS) rows of x, two x rows per
// pass over a weight row (which stays in L1 for the second pass).
template <class W>
void stream_rows(const DenseWeight& d, const float* x, int64_t M, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const W* w = static_cast<const W*>(d.w);
  float dots[GC_DENSE_STREAM_ROWS];
  for (int64_t n = n0; n < n1; ++n) {
    const W* wr = w + n * d.K;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) dot_rows<W, 2>(wr, x + m * d.K, d.K, dots + m);
    if (m < M) dot_rows<W, 1>(wr, x + m * d.K, d.K, dots + m);
    const float b = d.bias ? d.bias[n] : 0.f;  // float32 and bfloat16 weights have no scales
    for (m = 0; m < M; ++m) y[m * ldy + n] = dots[m] + b;
  }
}

// The int8 weight row wr . x row m as rounded to int16 (XInt16, stride K), as float32 lanes plus a
// scalar tail: each block of kXBlock products summed exactly in int32 lanes (four chains of
// multiply-adds in flight), then scaled by the block's x scale into the float32 lanes. The order
// depends on K alone.
struct LanesAndTail {
  V lanes;
  float tail;
};
inline __attribute__((always_inline)) LanesAndTail dot_int8(const int8_t* wr, const XInt16& x, int64_t m, int64_t K) {
  V acc = zero();
  float tail = 0.f;
  const int16_t* xr = x.q.data() + m * x.ld;
  for (int64_t b = 0; b < x.blocks; ++b) {
    const int64_t k0 = b * kXBlock, k1 = std::min(K, k0 + kXBlock);
    VI p0 = izero(), p1 = izero(), p2 = izero(), p3 = izero();
    int64_t k = k0;
    for (; k + 4 * kPairs16 <= k1; k += 4 * kPairs16) {
      p0 = dot16(p0, load_w16(wr + k), xr + k);
      p1 = dot16(p1, load_w16(wr + k + kPairs16), xr + k + kPairs16);
      p2 = dot16(p2, load_w16(wr + k + 2 * kPairs16), xr + k + 2 * kPairs16);
      p3 = dot16(p3, load_w16(wr + k + 3 * kPairs16), xr + k + 3 * kPairs16);
    }
    for (; k + kPairs16 <= k1; k += kPairs16) p0 = dot16(p0, load_w16(wr + k), xr + k);
    const float s = x.scale[m * x.blocks + b];
    acc = fma(to_ps(iadd(iadd(p0, p1), iadd(p2, p3))), splat(s), acc);
    if (k < k1) {  // K's last few values: a block ends on a multiple of kPairs16 otherwise
      int32_t rest = 0;
      for (; k < k1; ++k) rest += static_cast<int32_t>(wr[k]) * xr[k];
      tail += static_cast<float>(rest) * s;
    }
  }
  return {acc, tail};
}

// The weight rows one after another (interleaving the loads of several rows measured half the
// memory read rate), their lanes summed four rows at a time (reduce4: a row's sum is the same in
// any of the four places, and alone).
void stream_rows_int8(const DenseWeight& d, const XInt16& x, int64_t M, float* y, int64_t ldy, int64_t n0,
                      int64_t n1) {
  const int8_t* w = static_cast<const int8_t*>(d.w);
  for (int64_t n = n0; n < n1; n += 4) {
    const int64_t g = std::min<int64_t>(4, n1 - n);
    for (int64_t m = 0; m < M; ++m) {  // the weight rows stay in L1 for the next x row
      const LanesAndTail none{zero(), 0.f};
      const LanesAndTail r[4] = {dot_int8(w + n * d.K, x, m, d.K),
                                 g > 1 ? dot_int8(w + (n + 1) * d.K, x, m, d.K) : none,
                                 g > 2 ? dot_int8(w + (n + 2) * d.K, x, m, d.K) : none,
                                 g > 3 ? dot_int8(w + (n + 3) * d.K, x, m, d.K) : none};
      float sums[4];
      reduce4(r[0].lanes, r[1].lanes, r[2].lanes, r[3].lanes, sums);
      for (int64_t j = 0; j < g; ++j)
        y[m * ldy + n + j] = (sums[j] + r[j].tail) * d.scale[n + j] + (d.bias ? d.bias[n + j] : 0.f);
    }
  }
}

// Packed weights: groups of kGroup rows [n0, n1) (n0 a multiple of kGroup), each group's chunks
// read in order, every chunk of x loaded once for the group's rows. A row's sum goes lane by lane
// in chunk order, so it depends on K alone (and equals the row layout's for int8 when K is a
// multiple of kChunk: the same exact int32 lanes).
inline __attribute__((always_inline)) void store_group(const DenseWeight& d, const V acc[kGroup], float* y, int64_t n,
                                                     int64_t rows) {
  float sums[kGroup];
  reduce4(acc[0], acc[1], acc[2], acc[3], sums);
  for (int64_t r = 0; r < rows; ++r)
    y[n + r] = (d.scale ? sums[r] * d.scale[n + r] : sums[r]) + (d.bias ? d.bias[n + r] : 0.f);
}

// bfloat16: x [M, packed_cols(K)] float32 (zeros past K); a chunk's values j and j + 16 come
// from one lane (load_pairs), dotted with x's first and second halves of the chunk.
void stream_packed_bf16(const DenseWeight& d, const float* x, int64_t M, float* y, int64_t ldy, int64_t n0,
                        int64_t n1) {
  const int64_t ld = packed_cols(d.K), chunks = ld / kChunk;
  const uint16_t* w = static_cast<const uint16_t*>(d.w);
  for (int64_t n = n0; n < n1; n += kGroup) {
    const uint16_t* group = w + n * ld;  // (n / kGroup) groups of kGroup * ld values before it
    for (int64_t m = 0; m < M; ++m) {    // the group (kGroup * ld values) stays in L1 for the next x row
      const float* xr = x + m * ld;
      V lo[kGroup], hi[kGroup];
      for (int r = 0; r < kGroup; ++r) lo[r] = zero(), hi[r] = zero();
      for (int64_t c = 0; c < chunks; ++c) {
        const uint16_t* chunk = group + c * kGroup * kChunk;
        for (int h = 0; h < kChunk / 2; h += kWidth) {
          const V x_lo = load_x(xr + c * kChunk + h), x_hi = load_x(xr + c * kChunk + kChunk / 2 + h);
          for (int r = 0; r < kGroup; ++r) {
            V a, b;
            load_pairs(chunk + r * kChunk + 2 * h, a, b);
            lo[r] = fma(x_lo, a, lo[r]);
            hi[r] = fma(x_hi, b, hi[r]);
          }
        }
      }
      V acc[kGroup];
      for (int r = 0; r < kGroup; ++r) acc[r] = add(lo[r], hi[r]);
      store_group(d, acc, y + m * ldy, n, std::min(kGroup, n1 - n));
    }
  }
}

// int8: x rounded to int16 ([M, packed_cols(K)], zeros past K); each block of kXBlock values
// summed exactly in int32 lanes (one chain of multiply-adds per row of the group), then scaled.
void stream_packed_int8(const DenseWeight& d, const XInt16& x, int64_t M, float* y, int64_t ldy, int64_t n0,
                        int64_t n1) {
  const int64_t ld = x.ld, chunks = ld / kChunk, block_chunks = kXBlock / kChunk;
  const int8_t* w = static_cast<const int8_t*>(d.w);
  for (int64_t n = n0; n < n1; n += kGroup) {
    const int8_t* group = w + n * ld;
    for (int64_t m = 0; m < M; ++m) {
      const int16_t* xr = x.q.data() + m * ld;
      V acc[kGroup];
      for (int r = 0; r < kGroup; ++r) acc[r] = zero();
      for (int64_t b = 0; b < x.blocks; ++b) {
        VI p[kGroup];
        for (int r = 0; r < kGroup; ++r) p[r] = izero();
        for (int64_t c = b * block_chunks; c < std::min(chunks, (b + 1) * block_chunks); ++c) {
          const int8_t* chunk = group + c * kGroup * kChunk;
          for (int h = 0; h < kChunk; h += kPairs16)
            for (int r = 0; r < kGroup; ++r) p[r] = dot16(p[r], load_w16(chunk + r * kChunk + h), xr + c * kChunk + h);
        }
        const V s = splat(x.scale[m * x.blocks + b]);
        for (int r = 0; r < kGroup; ++r) acc[r] = fma(to_ps(p[r]), s, acc[r]);
      }
      store_group(d, acc, y + m * ldy, n, std::min(kGroup, n1 - n));
    }
  }
}

void stream(const DenseWeight& d, const float* x, const XInt16& xq, int64_t M, float* y, int64_t ldy, int64_t n0,
            int64_t n1) {
  const bool packed = d.layout == GC_DENSE_PACKED;
  if (d.dtype == GC_FLOAT32) stream_rows<float>(d, x, M, y, ldy, n0, n1);
  else if (d.dtype == GC_BFLOAT16 && packed) stream_packed_bf16(d, x, M, y, ldy, n0, n1);
  else if (d.dtype == GC_BFLOAT16) stream_rows<uint16_t>(d, x, M, y, ldy, n0, n1);
  else if (packed) stream_packed_int8(d, xq, M, y, ldy, n0, n1);
  else stream_rows_int8(d, xq, M, y, ldy, n0, n1);
}
