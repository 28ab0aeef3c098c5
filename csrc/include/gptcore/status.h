/* Status codes and the last-error message of the gptcore C API.
 *
 * Every entry point returns a gc_status. On anything but GC_OK, gc_last_error()
 * returns a message naming the argument and the problem; the message belongs to the
 * calling thread and stays valid until that thread's next gptcore call. */
#ifndef GPTCORE_STATUS_H
#define GPTCORE_STATUS_H

#include "gptcore/api.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gc_status {
  GC_OK = 0,
  GC_ERROR_INVALID_ARGUMENT = 1, /* null pointer, bad value, bad flag */
  GC_ERROR_DTYPE = 2,            /* dtype not supported, or dtypes that must agree do not */
  GC_ERROR_SHAPE = 3,            /* shapes that must agree do not */
  GC_ERROR_LAYOUT = 4,           /* non-contiguous or misaligned tensor */
  GC_ERROR_DEVICE = 5,           /* tensors on different devices, or a device this build lacks */
  GC_ERROR_WORKSPACE = 6,        /* workspace missing or smaller than the size query said */
  GC_ERROR_CUDA = 7,             /* a CUDA runtime or library call failed */
  GC_ERROR_INTERNAL = 8
} gc_status;

/* The message of the calling thread's last failed call ("" after a successful call). */
GC_API const char* gc_last_error(void);

/* A fixed name for a status code, e.g. "GC_ERROR_SHAPE". */
GC_API const char* gc_status_name(gc_status status);

#ifdef __cplusplus
}
#endif
#endif
