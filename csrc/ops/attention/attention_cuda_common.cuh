// Pieces the CUDA attention kernels share: the float16/bfloat16 and head-dim switches, the
// block-wide tile loader, warp reductions and the dynamic shared-memory opt-in.
#pragma once

#include <mma.h>

#include <type_traits>

#include "common/cuda_utils.cuh"
#include "common/math.h"
#include "common/philox.h"
#include "ops/attention/attention.h"
#include "ops/attention/attention_tiles.h"

namespace gc {
namespace attn {

constexpr int kThreads = kWarps * 32;

namespace wmma = nvcuda::wmma;

// wmma fragments of one 16x16x16 step, T = __half or __nv_bfloat16, float accumulation.
template <class T, class Layout>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, Layout>;
template <class T, class Layout>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, Layout>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

template <class T>
struct TypeTag {
  using type = T;
};

// Tensor cores take float16 and bfloat16 only (the API layer has already checked).
template <class Body>
gc_status half_switch(int32_t dtype, const char* api, Body&& body) {
  switch (dtype) {
    case GC_FLOAT16:
      return body(TypeTag<half_t>{});
    case GC_BFLOAT16:
      return body(TypeTag<bf16_t>{});
    default:
      return fail(GC_ERROR_DTYPE, "%s: CUDA attention takes float16 or bfloat16, not %s", api, gc_dtype_name(dtype));
  }
}

// Calls body with Dp = D rounded up to a multiple of 16, as a compile-time constant.
template <class Body>
gc_status head_dim_switch(int64_t D, const char* api, Body&& body) {
  if (D % 8 == 0) {
    switch (padded_head_dim(D)) {
      case 32:
        return body(std::integral_constant<int, 32>{});
      case 48:
        return body(std::integral_constant<int, 48>{});
      case 64:
        return body(std::integral_constant<int, 64>{});
      case 80:
        return body(std::integral_constant<int, 80>{});
      case 96:
        return body(std::integral_constant<int, 96>{});
      case 112:
        return body(std::integral_constant<int, 112>{});
      case 128:
        return body(std::integral_constant<int, 128>{});
      default:
        break;
    }
  }
  return fail(GC_ERROR_SHAPE, "%s: CUDA attention takes head dims 32..128 in multiples of 8, not %lld", api,
              static_cast<long long>(D));
}

// Lets `kernel` use `bytes` of dynamic shared memory, or says why this device cannot.
template <class Kernel>
gc_status allow_smem(Kernel kernel, int bytes, const char* api) {
  int device = 0, max_smem = 0;
  GC_CUDA_TRY(cudaGetDevice(&device));
  GC_CUDA_TRY(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (bytes > max_smem)
    return fail(GC_ERROR_SHAPE, "%s: this head dim needs %d bytes of shared memory per block; the device has %d", api,
                bytes, max_smem);
  GC_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  return GC_OK;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The whole block copies rows [row0, row0 + ROWS) of a row-major [rows, D] matrix into shared
// memory [ROWS][ld], zero-filling rows >= rows and columns [D, Dp). D is a multiple of 8, so an
// 8-element chunk is all inside or all outside the row; vec says the source is 16-byte aligned
// (then so is every chunk, as D * sizeof(T) is a multiple of 16).
template <class T, int ROWS, int Dp>
__device__ __forceinline__ void load_tile(T* __restrict__ dst, int ld, const T* __restrict__ src, int64_t row0,
                                          int64_t rows, int D, bool vec) {
  constexpr int kChunks = Dp / 8;
  for (int e = threadIdx.x; e < ROWS * kChunks; e += kThreads) {
    const int r = e / kChunks, c = (e % kChunks) * 8;
    Pack<T, 8> v;
    if (row0 + r < rows && c < D) {
      const T* s = src + (row0 + r) * D + c;
      if (vec) {
        v = load_pack<T, 8>(s);
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) v.v[k] = s[k];
      }
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) v.v[k] = from_float<T>(0.f);
    }
    store_pack<T, 8>(dst + r * ld + c, v);
  }
}

}  // namespace attn
}  // namespace gc
