#include "info/info.h"

#include "common/error.h"

#ifndef GPTCORE_CUDA_ARCHS
#define GPTCORE_CUDA_ARCHS ""
#endif

using namespace gc;

extern "C" const gc_build_info* gc_get_build_info(void) {
  static const gc_build_info info = [] {
    gc_build_info i{};
    i.version = GPTCORE_VERSION;
    i.cuda_archs = GPTCORE_CUDA_ARCHS;
    i.note = GPTCORE_BUILD_NOTE;
#ifdef GPTCORE_WITH_CUDA
    i.cuda = 1;
    i.cuda_runtime_version = cuda_runtime_version();
    i.cublas_version = cublas_version();
    i.nccl_version = nccl_version();
#endif
#ifdef _OPENMP
    i.openmp = 1;
#endif
    return i;
  }();
  return &info;
}

extern "C" gc_status gc_cuda_device_count(int* count) {
  return guarded("gc_cuda_device_count", [&]() -> gc_status {
    if (!count) return fail(GC_ERROR_INVALID_ARGUMENT, "gc_cuda_device_count: count is NULL");
    *count = 0;
#ifdef GPTCORE_WITH_CUDA
    return cuda_device_count(count);
#else
    return GC_OK;
#endif
  });
}

extern "C" gc_status gc_cuda_device_properties(int index, gc_device_properties* props) {
  return guarded("gc_cuda_device_properties", [&]() -> gc_status {
    if (!props) return fail(GC_ERROR_INVALID_ARGUMENT, "gc_cuda_device_properties: props is NULL");
#ifdef GPTCORE_WITH_CUDA
    return cuda_device_properties(index, props);
#else
    return fail(GC_ERROR_DEVICE, "gc_cuda_device_properties: this gptcore was built without CUDA");
#endif
  });
}
