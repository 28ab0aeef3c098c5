#include "gptcore/tensor.h"

#include <cstring>

extern "C" size_t gc_dtype_size(int32_t dtype) {
  switch (dtype) {
    case GC_FLOAT64:
    case GC_INT64: return 8;
    case GC_FLOAT32:
    case GC_INT32: return 4;
    case GC_FLOAT16:
    case GC_BFLOAT16:
    case GC_UINT16: return 2;
    case GC_UINT8:
    case GC_INT8: return 1;
    default: return 0;
  }
}

extern "C" const char* gc_dtype_name(int32_t dtype) {
  switch (dtype) {
    case GC_FLOAT32: return "float32";
    case GC_FLOAT16: return "float16";
    case GC_BFLOAT16: return "bfloat16";
    case GC_FLOAT64: return "float64";
    case GC_INT32: return "int32";
    case GC_INT64: return "int64";
    case GC_UINT16: return "uint16";
    case GC_UINT8: return "uint8";
    case GC_INT8: return "int8";
    default: return "unknown";
  }
}

extern "C" gc_tensor gc_make_tensor(void* data, int32_t dtype, int32_t device_type,
                                    int32_t device_index, int32_t ndim, const int64_t* shape) {
  gc_tensor t;
  std::memset(&t, 0, sizeof(t));
  t.data = data;
  t.dtype = dtype;
  t.device_type = device_type;
  t.device_index = device_index;
  t.ndim = (ndim < 0 || ndim > GC_MAX_DIMS) ? -1 : ndim;  // -1 is rejected by every op
  int64_t stride = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    t.shape[i] = shape[i];
    t.strides[i] = stride;
    stride *= shape[i];
  }
  return t;
}

extern "C" int64_t gc_tensor_numel(const gc_tensor* t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; ++i) n *= t->shape[i];
  return n;
}

extern "C" int gc_tensor_is_contiguous(const gc_tensor* t) {
  int64_t expected = 1;
  for (int i = t->ndim - 1; i >= 0; --i) {
    if (t->shape[i] != 1 && t->strides[i] != expected) return 0;
    expected *= t->shape[i];
  }
  return 1;
}
