// The single backend's copies of CUDA tensors, in stream order.
#include "comm/comm.h"
#include "common/cuda_utils.cuh"

namespace gc {

gc_status copy_async_cuda(const char* api, void* dst, const void* src, size_t bytes, int device, void* stream) {
  DeviceGuard guard(device);  // the legacy default stream (0) is the current device's
  if (guard.status() != cudaSuccess)
    return fail(GC_ERROR_CUDA, "%s: selecting cuda:%d failed: %s", api, device, cudaGetErrorString(guard.status()));
  const cudaError_t err = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, as_stream(stream));
  if (err != cudaSuccess)
    return fail(GC_ERROR_CUDA, "%s: copying %zu bytes on cuda:%d failed: %s", api, bytes, device,
                cudaGetErrorString(err));
  return GC_OK;
}

}  // namespace gc
