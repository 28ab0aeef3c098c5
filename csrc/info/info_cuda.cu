#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstring>

#include "common/cuda_utils.cuh"
#include "info/info.h"

#ifdef GPTCORE_WITH_NCCL
#include <nccl.h>
#endif

namespace gc {

int cuda_runtime_version() {
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}

int cublas_version() { return static_cast<int>(cublasLtGetVersion()); }

int nccl_version() {
#ifdef GPTCORE_WITH_NCCL
  int v = 0;
  return ncclGetVersion(&v) == ncclSuccess ? v : 0;
#else
  return 0;
#endif
}

gc_status cuda_device_count(int* count) {
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    cudaGetLastError();  // a machine without a GPU or driver simply has no devices
    *count = 0;
    return GC_OK;
  }
  GC_CUDA_TRY(err);
  return GC_OK;
}

gc_status cuda_device_properties(int index, gc_device_properties* props) {
  int count = 0;
  GC_TRY(cuda_device_count(&count));
  if (index < 0 || index >= count)
    return fail(GC_ERROR_DEVICE, "gc_cuda_device_properties: device %d does not exist (%d visible)", index, count);
  cudaDeviceProp p;
  GC_CUDA_TRY(cudaGetDeviceProperties(&p, index));
  std::memset(props, 0, sizeof(*props));
  std::strncpy(props->name, p.name, sizeof(props->name) - 1);
  props->major = p.major;
  props->minor = p.minor;
  props->multiprocessors = p.multiProcessorCount;
  props->total_memory = p.totalGlobalMem;
  return GC_OK;
}

}  // namespace gc
