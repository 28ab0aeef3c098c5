/* What this build of gptcore contains, and which devices it sees. */
#ifndef GPTCORE_INFO_H
#define GPTCORE_INFO_H

#include <stddef.h>

#include "gptcore/api.h"
#include "gptcore/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gc_build_info {
  const char* version;      /* "0.1.0" */
  int cuda;                 /* 1 when the CUDA kernels are compiled in */
  const char* cuda_archs;   /* e.g. "80;90", "" without CUDA */
  int cuda_runtime_version; /* 13000 for CUDA 13.0; 0 without CUDA */
  int cublas_version;       /* e.g. 131000 (cublasLtGetVersion); 0 when not linked */
  int nccl_version;         /* e.g. 23203 (ncclGetVersion); 0 when not linked */
  int openmp;               /* 1 when the CPU kernels use OpenMP */
  const char* note;         /* why CUDA is off ("cuBLAS not found at build time (...)", "GPTCORE_CUDA=OFF")
                               or what this CUDA build lacks ("NCCL not found: ..."); "" when nothing */
} gc_build_info;

GC_API const gc_build_info* gc_get_build_info(void);

typedef struct gc_device_properties {
  char name[256];
  int major;
  int minor;
  int multiprocessors;
  size_t total_memory;
} gc_device_properties;

/* Number of CUDA devices; 0 (and GC_OK) in a build without CUDA or a machine without a driver. */
GC_API gc_status gc_cuda_device_count(int* count);

GC_API gc_status gc_cuda_device_properties(int index, gc_device_properties* props);

#ifdef __cplusplus
}
#endif
#endif
