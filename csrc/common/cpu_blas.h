// Single-precision GEMM on the CPU through OpenBLAS (the scipy-openblas32 wheel), kept inside the
// OpenMP thread team that runs every other CPU kernel (and torch's ops: the same libgomp).
//
// OpenBLAS's own pthread pool and libgomp's pool both spin-wait after their work; on a machine
// with as many busy threads as cores, each starves the other (measured: a GPT training step 1.5x
// slower with both pools live). So OpenBLAS is held to one thread while gptcore runs a product
// (SerialBlas) and sgemm_team splits the product into slabs, one single-threaded sgemm per
// OpenMP thread. Each output element is then computed by one thread in a fixed order:
// deterministic for a given thread count.
#pragma once

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>

namespace gc {

// OpenBLAS's thread count is process-wide. The first of any concurrent users sets it to 1 and the
// last one out restores it, so calls from several threads cannot strand it at 1.
class SerialBlas {
 public:
  SerialBlas() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (users_++ == 0) {
      saved_ = scipy_openblas_get_num_threads();
      scipy_openblas_set_num_threads(1);
    }
  }
  ~SerialBlas() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (--users_ == 0) scipy_openblas_set_num_threads(saved_);
  }
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
  static inline std::mutex mutex_;
  static inline int users_ = 0;
  static inline int saved_ = 1;
};

// Row-major C [m, n] = alpha op(A) op(B) + beta C, op(A) [m, k], op(B) [k, n], on the calling thread
// (callers hold a SerialBlas). With k == 0 the sum is empty: C = beta C, which not every BLAS writes.
inline void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                  int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) {
      if (beta == 0.f) std::memset(c + i * ldc, 0, static_cast<size_t>(n) * sizeof(float));
      else for (int64_t j = 0; j < n; ++j) c[i * ldc + j] *= beta;
    }
    return;
  }
  if (m == 1 || n == 1) {  // a matrix-vector product: OpenBLAS's sgemm would pack the whole matrix for it
    const bool row = m == 1;
    const int64_t len = row ? n : m;
    const int64_t inc_c = row ? 1 : ldc;
    if (beta == 0.f) {  // gemv scales c by beta; zero it instead, so garbage (NaN) in c cannot leak through
      for (int64_t i = 0; i < len; ++i) c[i * inc_c] = 0.f;
    }
    if (row) {  // c[n] = op(B)^T x with x = row 0 of op(A)
      const int64_t inc_x = trans_a ? lda : 1;
      if (trans_b) {  // B [n, k]
        scipy_cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(n), static_cast<blasint>(k), alpha, b,
                          static_cast<blasint>(ldb), a, static_cast<blasint>(inc_x), beta, c, 1);
      } else {  // B [k, n]
        scipy_cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<blasint>(k), static_cast<blasint>(n), alpha, b,
                          static_cast<blasint>(ldb), a, static_cast<blasint>(inc_x), beta, c, 1);
      }
    } else {  // c[m] (stride ldc) = op(A) x with x = column 0 of op(B)
      const int64_t inc_x = trans_b ? 1 : ldb;
      if (trans_a) {  // A [k, m]
        scipy_cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<blasint>(k), static_cast<blasint>(m), alpha, a,
                          static_cast<blasint>(lda), b, static_cast<blasint>(inc_x), beta, c,
                          static_cast<blasint>(ldc));
      } else {  // A [m, k]
        scipy_cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<blasint>(m), static_cast<blasint>(k), alpha, a,
                          static_cast<blasint>(lda), b, static_cast<blasint>(inc_x), beta, c,
                          static_cast<blasint>(ldc));
      }
    }
    return;
  }
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                    static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
                    static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

// C [m, n] (ldc = n) = op(A) op(B) over the OpenMP team: the longer of m and n is cut into one slab
// per thread (multiples of 16 rows/columns), each a single-threaded sgemm.
inline void sgemm_team(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                       const float* b, int64_t ldb, float* c) {
  const SerialBlas serial_blas;
  const bool split_m = m >= n;
  const int64_t len = split_m ? m : n;
  const int64_t work = m * n * std::max<int64_t>(k, 1);
  const int64_t max_slabs = std::max<int64_t>(1, len / 16);
  const int64_t wanted = work < (int64_t{1} << 18) ? 1 : omp_get_max_threads();
  const int threads = static_cast<int>(std::min(wanted, max_slabs));
  if (threads <= 1) {
    sgemm(trans_a, trans_b, m, n, k, 1.f, a, lda, b, ldb, 0.f, c, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), count = omp_get_num_threads();
    const int64_t lo = (len * t / count) / 16 * 16;
    const int64_t hi = t + 1 == count ? len : (len * (t + 1) / count) / 16 * 16;
    if (hi > lo) {
      if (split_m) {  // rows lo..hi of op(A) and C
        const float* a_slab = trans_a ? a + lo : a + lo * lda;
        sgemm(trans_a, trans_b, hi - lo, n, k, 1.f, a_slab, lda, b, ldb, 0.f, c + lo * n, n);
      } else {  // columns lo..hi of op(B) and C
        const float* b_slab = trans_b ? b + lo * ldb : b + lo;
        sgemm(trans_a, trans_b, m, hi - lo, k, 1.f, a, lda, b_slab, ldb, 0.f, c + lo, n);
      }
    }
  }
}

}  // namespace gc
