// LayerNorm on CUDA: one warp per row; float32/float16/bfloat16 storage, float32 math.
// Rows are read through 16-byte packs when C and every pointer allow it.
#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/math.h"
#include "ops/layer_norm/layer_norm.h"

namespace gc {
namespace {

constexpr int kFwdWarps = 4;

template <class T, int VEC, bool RESIDUAL, bool BIAS>
__global__ void fwd_kernel(const T* __restrict__ x, const T* __restrict__ residual, const T* __restrict__ w,
                           const T* __restrict__ b, T* __restrict__ y, T* __restrict__ sum, float* __restrict__ mean_out,
                           float* __restrict__ rstd_out, int64_t rows, int C, float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kFwdWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* xr = x + row * C;
  const T* src = xr;  // the row being normalized: x, or the rounded sum x + residual
  float total = 0.f;
  for (int c = lane * VEC; c < C; c += 32 * VEC) {
    Pack<T, VEC> v = load_pack<T, VEC>(xr + c);
    if constexpr (RESIDUAL) {
      const Pack<T, VEC> r = load_pack<T, VEC>(residual + row * C + c);
#pragma unroll
      for (int k = 0; k < VEC; ++k) v.v[k] = from_float<T>(to_float(v.v[k]) + to_float(r.v[k]));
      store_pack<T, VEC>(sum + row * C + c, v);
    }
#pragma unroll
    for (int k = 0; k < VEC; ++k) total += to_float(v.v[k]);
  }
  if constexpr (RESIDUAL) src = sum + row * C;
  const float mean = warp_sum(total) / C;
  float sq = 0.f;
  for (int c = lane * VEC; c < C; c += 32 * VEC) {
    const Pack<T, VEC> v = load_pack<T, VEC>(src + c);
#pragma unroll
    for (int k = 0; k < VEC; ++k) sq += (to_float(v.v[k]) - mean) * (to_float(v.v[k]) - mean);
  }
  const float rstd = rsqrtf(warp_sum(sq) / C + eps);
  for (int c = lane * VEC; c < C; c += 32 * VEC) {
    const Pack<T, VEC> v = load_pack<T, VEC>(src + c), wv = load_pack<T, VEC>(w + c);
    Pack<T, VEC> bv;
    if constexpr (BIAS) bv = load_pack<T, VEC>(b + c);
    Pack<T, VEC> out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float o = (to_float(v.v[k]) - mean) * rstd * to_float(wv.v[k]);
      out.v[k] = from_float<T>(BIAS ? o + to_float(bv.v[k]) : o);
    }
    store_pack<T, VEC>(y + row * C + c, out);
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// One warp per block; the block keeps its weight/bias gradient sums in shared memory, each
// column owned by one lane, so no atomics and a fixed summation order.
template <class T, int VEC, bool DSUM>
__global__ void bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                           const float* __restrict__ mean, const float* __restrict__ rstd, const T* __restrict__ dsum,
                           T* __restrict__ dx, float* __restrict__ partials, int64_t rows, int C) {
  extern __shared__ float acc[];  // [2 * C]: dweight sums, then dbias sums
  const int lane = threadIdx.x;
  for (int c = lane; c < 2 * C; c += 32) acc[c] = 0.f;
  __syncwarp();
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* dyr = dy + row * C;
    const T* xr = x + row * C;
    const float m = mean[row], rs = rstd[row];
    float sum_g = 0.f, sum_gx = 0.f;
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      const Pack<T, VEC> d = load_pack<T, VEC>(dyr + c), xv = load_pack<T, VEC>(xr + c), wv = load_pack<T, VEC>(w + c);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float g = to_float(d.v[k]) * to_float(wv.v[k]);
        sum_g += g;
        sum_gx += g * (to_float(xv.v[k]) - m) * rs;
      }
    }
    const float mean_g = warp_sum(sum_g) / C, mean_gx = warp_sum(sum_gx) / C;
    for (int c = lane * VEC; c < C; c += 32 * VEC) {
      const Pack<T, VEC> d = load_pack<T, VEC>(dyr + c), xv = load_pack<T, VEC>(xr + c), wv = load_pack<T, VEC>(w + c);
      Pack<T, VEC> ds;
      if constexpr (DSUM) ds = load_pack<T, VEC>(dsum + row * C + c);
      Pack<T, VEC> out;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float dyk = to_float(d.v[k]), xhat = (to_float(xv.v[k]) - m) * rs;
        float v = layer_norm_dx(dyk * to_float(wv.v[k]), xhat, mean_g, mean_gx, rs);
        if constexpr (DSUM) v += to_float(ds.v[k]);
        out.v[k] = from_float<T>(v);
        acc[c + k] += dyk * xhat;
        acc[C + c + k] += dyk;
      }
      store_pack<T, VEC>(dx + row * C + c, out);
    }
  }
  __syncwarp();
  for (int c = lane; c < 2 * C; c += 32) partials[static_cast<int64_t>(blockIdx.x) * 2 * C + c] = acc[c];
}

template <class T>
__global__ void bwd_reduce_kernel(const float* __restrict__ partials, int64_t num_partials, int C, T* __restrict__ dw,
                                  T* __restrict__ db) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float w_sum = 0.f, b_sum = 0.f;
  for (int64_t k = 0; k < num_partials; ++k) {
    w_sum += partials[k * 2 * C + c];
    b_sum += partials[k * 2 * C + C + c];
  }
  dw[c] = from_float<T>(w_sum);
  if (db) db[c] = from_float<T>(b_sum);
}

template <class T>
constexpr int pack_width() {
  return 16 / sizeof(T);
}

// Calls body with VEC = the 16-byte pack width when C and all pointers allow it, else 1.
template <class T, class Body>
gc_status with_vec(int64_t C, std::initializer_list<const void*> ptrs, Body&& body) {
  bool ok = C % pack_width<T>() == 0;
  for (const void* p : ptrs) ok = ok && (p == nullptr || aligned16(p));
  if (ok) return body(std::integral_constant<int, pack_width<T>()>{});
  return body(std::integral_constant<int, 1>{});
}

}  // namespace

gc_status layer_norm_fwd_cuda(const gc_layer_norm_fwd_params& p, int64_t rows, int64_t C, void* stream) {
  DeviceGuard guard(p.x.device_index);
  GC_CUDA_TRY(guard.status());
  const bool residual = p.residual.data != nullptr, bias = p.bias.data != nullptr;
  return GC_FLOAT_SWITCH(p.x.dtype, T, [&] {
    return GC_BOOL_SWITCH(residual, RESIDUAL, [&] {
      return GC_BOOL_SWITCH(bias, BIAS, [&] {
        return with_vec<T>(C, {p.x.data, p.residual.data, p.weight.data, p.bias.data, p.y.data, p.sum.data},
                           [&](auto vec) {
                             constexpr int VEC = decltype(vec)::value;
                             const dim3 grid(static_cast<unsigned>((rows + kFwdWarps - 1) / kFwdWarps));
                             fwd_kernel<T, VEC, RESIDUAL, BIAS><<<grid, 32 * kFwdWarps, 0, as_stream(stream)>>>(
                                 static_cast<const T*>(p.x.data), static_cast<const T*>(p.residual.data),
                                 static_cast<const T*>(p.weight.data), static_cast<const T*>(p.bias.data),
                                 static_cast<T*>(p.y.data), static_cast<T*>(p.sum.data), static_cast<float*>(p.mean.data),
                                 static_cast<float*>(p.rstd.data), rows, static_cast<int>(C), p.eps);
                             return check_launch("layer_norm fwd_kernel");
                           });
      });
    });
  });
}

gc_status layer_norm_bwd_cuda(const gc_layer_norm_bwd_params& p, int64_t rows, int64_t C, float* partials,
                              void* stream) {
  DeviceGuard guard(p.x.device_index);
  GC_CUDA_TRY(guard.status());
  const int64_t num_partials = layer_norm_bwd_partials(rows, GC_CUDA);
  const size_t smem = 2 * C * sizeof(float);
  int device = 0, max_smem = 0;
  GC_CUDA_TRY(cudaGetDevice(&device));
  GC_CUDA_TRY(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (smem > static_cast<size_t>(max_smem))
    return fail(GC_ERROR_SHAPE, "gc_layer_norm_bwd: C = %lld needs %zu bytes of shared memory; this device has %d",
                (long long)C, smem, max_smem);
  cudaStream_t s = as_stream(stream);
  return GC_FLOAT_SWITCH(p.x.dtype, T, [&] {
    return GC_BOOL_SWITCH(p.dsum.data != nullptr, DSUM, [&] {
      return with_vec<T>(C, {p.dy.data, p.x.data, p.weight.data, p.dsum.data, p.dx.data}, [&](auto vec) {
        constexpr int VEC = decltype(vec)::value;
        if (num_partials > 0) {
          auto kernel = bwd_kernel<T, VEC, DSUM>;
          GC_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
          kernel<<<static_cast<unsigned>(num_partials), 32, smem, s>>>(
              static_cast<const T*>(p.dy.data), static_cast<const T*>(p.x.data), static_cast<const T*>(p.weight.data),
              static_cast<const float*>(p.mean.data), static_cast<const float*>(p.rstd.data),
              static_cast<const T*>(p.dsum.data), static_cast<T*>(p.dx.data), partials, rows, static_cast<int>(C));
          GC_TRY(check_launch("layer_norm bwd_kernel"));
        }
        bwd_reduce_kernel<T><<<static_cast<unsigned>((C + 255) / 256), 256, 0, s>>>(
            partials, num_partials, static_cast<int>(C), static_cast<T*>(p.dweight.data), static_cast<T*>(p.dbias.data));
        return check_launch("layer_norm bwd_reduce_kernel");
      });
    });
  });
}

}  // namespace gc
