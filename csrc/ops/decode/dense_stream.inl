// The streaming kernel of dense_cpu.cpp, written once over a vector type and included once per
// instruction set, each time inside that set's `#pragma GCC target` region and namespace, after
// the namespace has defined:
//   kWidth: lanes of V;  V zero();  V load(const float* / const uint16_t* / const int8_t*): kWidth
//   weights as float32;  V load_x(const float*);  V fma(V a, V b, V acc) = a * b + acc;
//   V add(V, V);  float reduce(V): the sum of the lanes, in a fixed order.
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
  for (int r = 0; r < R; ++r) {  // in registers: a row of 768 int8 weights is only ~100 cycles of streaming
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
    const float s = d.scale ? d.scale[n] : 1.f, b = d.bias ? d.bias[n] : 0.f;
    for (m = 0; m < M; ++m) y[m * ldy + n] = dots[m] * s + b;
  }
}

void stream(const DenseWeight& d, const float* x, int64_t M, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  if (d.dtype == GC_FLOAT32) stream_rows<float>(d, x, M, y, ldy, n0, n1);
  else if (d.dtype == GC_BFLOAT16) stream_rows<uint16_t>(d, x, M, y, ldy, n0, n1);
  else stream_rows<int8_t>(d, x, M, y, ldy, n0, n1);
}
