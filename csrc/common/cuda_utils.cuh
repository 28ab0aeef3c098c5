// CUDA helpers for the .cu files: error checks that return a status, device guards,
// 16-byte packed loads and warp reductions.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/error.h"
#include "common/numeric.h"

#define GC_CUDA_TRY(expr)                                                                            \
  do {                                                                                               \
    cudaError_t gc_cuda_err_ = (expr);                                                               \
    if (gc_cuda_err_ != cudaSuccess)                                                                 \
      return ::gc::fail(GC_ERROR_CUDA, "%s failed: %s (%s:%d)", #expr, cudaGetErrorString(gc_cuda_err_), \
                        __FILE__, __LINE__);                                                         \
  } while (0)

namespace gc {

// Makes `index` the current device for the scope, restoring the caller's afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != index) {
      status_ = cudaSetDevice(index);
    } else {
      previous_ = -1;
    }
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
};

// The status of the kernel launched last on this thread.
inline gc_status check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return fail(GC_ERROR_CUDA, "launching %s failed: %s", kernel, cudaGetErrorString(err));
  return GC_OK;
}

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// N elements of T moved as one aligned vector load/store.
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <class T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <class T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

}  // namespace gc
