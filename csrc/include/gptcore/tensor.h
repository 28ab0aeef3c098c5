/* Dtype codes and non-owning tensor views.
 *
 * A gc_tensor describes memory the caller owns: a data pointer, a dtype, a device and
 * up to GC_MAX_DIMS dimensions with element strides. gptcore never frees it. A view
 * whose data is NULL means "absent" for optional arguments. */
#ifndef GPTCORE_TENSOR_H
#define GPTCORE_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "gptcore/api.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fixed codes: they are part of the ABI and never renumbered. */
typedef enum gc_dtype {
  GC_FLOAT32 = 0,
  GC_FLOAT16 = 1,
  GC_BFLOAT16 = 2,
  GC_FLOAT64 = 3,
  GC_INT32 = 4,
  GC_INT64 = 5,
  GC_UINT16 = 6,
  GC_UINT8 = 7,
  GC_INT8 = 8
} gc_dtype;

typedef enum gc_device_type { GC_CPU = 0, GC_CUDA = 1 } gc_device_type;

#define GC_MAX_DIMS 8

typedef struct gc_tensor {
  void* data;
  int32_t dtype;        /* gc_dtype */
  int32_t device_type;  /* gc_device_type */
  int32_t device_index; /* CUDA ordinal; 0 on CPU */
  int32_t ndim;
  int64_t shape[GC_MAX_DIMS];
  int64_t strides[GC_MAX_DIMS]; /* in elements */
} gc_tensor;

/* Bytes per element of a dtype; 0 for an unknown code. */
GC_API size_t gc_dtype_size(int32_t dtype);

/* A fixed name for a dtype code, e.g. "bfloat16"; "unknown" otherwise. */
GC_API const char* gc_dtype_name(int32_t dtype);

/* A contiguous view of `ndim` dimensions (row-major strides filled in). */
GC_API gc_tensor gc_make_tensor(void* data, int32_t dtype, int32_t device_type, int32_t device_index,
                                int32_t ndim, const int64_t* shape);

/* Number of elements (1 for ndim == 0). */
GC_API int64_t gc_tensor_numel(const gc_tensor* t);

/* 1 when the strides are row-major contiguous, else 0. */
GC_API int gc_tensor_is_contiguous(const gc_tensor* t);

#ifdef __cplusplus
}
#endif
#endif
