// Internal: version and device queries answered by the CUDA half of the build.
#pragma once

#include "gptcore/info.h"

namespace gc {
#ifdef GPTCORE_WITH_CUDA
int cuda_runtime_version();
int cublas_version();
int nccl_version();
gc_status cuda_device_count(int* count);
gc_status cuda_device_properties(int index, gc_device_properties* props);
#endif
}  // namespace gc
