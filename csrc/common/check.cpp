#include "common/check.h"

#include "common/error.h"
#include "info/info.h"

namespace gc {

std::string shape_string(const gc_tensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(t.shape[i]);
  }
  return s + "]";
}

gc_status check_view(const char* api, const gc_tensor& t, const char* name) {
  if (t.data == nullptr) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: '%s' is required but its data pointer is NULL", api, name);
  if (t.ndim < 0 || t.ndim > GC_MAX_DIMS)
    return fail(GC_ERROR_SHAPE, "%s: '%s' has %d dimensions; at most %d are supported", api, name, t.ndim, GC_MAX_DIMS);
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] < 0) return fail(GC_ERROR_SHAPE, "%s: '%s' has a negative size in dimension %d", api, name, i);
  if (gc_dtype_size(t.dtype) == 0) return fail(GC_ERROR_DTYPE, "%s: '%s' has unknown dtype code %d", api, name, t.dtype);
  if (!gc_tensor_is_contiguous(&t))
    return fail(GC_ERROR_LAYOUT, "%s: '%s' (shape %s) is not contiguous; pass a contiguous tensor (e.g. x.contiguous())",
                api, name, shape_string(t).c_str());
  if (t.device_type == GC_CUDA) {
#ifndef GPTCORE_WITH_CUDA
    return fail(GC_ERROR_DEVICE,
                "%s: '%s' is a CUDA tensor but this gptcore was built without CUDA; rebuild with nvcc on PATH "
                "(or -DGPTCORE_CUDA=ON), or pass CPU tensors",
                api, name);
#else
    int count = 0;
    GC_TRY(cuda_device_count(&count));
    if (t.device_index < 0 || t.device_index >= count)
      return fail(GC_ERROR_DEVICE, "%s: '%s' is on cuda:%d but %d CUDA device(s) are visible", api, name, t.device_index,
                  count);
#endif
  } else if (t.device_type != GC_CPU) {
    return fail(GC_ERROR_DEVICE, "%s: '%s' has unknown device type %d", api, name, t.device_type);
  }
  return GC_OK;
}

gc_status check_dtype(const char* api, const gc_tensor& t, const char* name, std::initializer_list<int32_t> allowed) {
  std::string names;
  for (int32_t d : allowed) {
    if (d == t.dtype) return GC_OK;
    names += names.empty() ? "" : ", ";
    names += gc_dtype_name(d);
  }
  return fail(GC_ERROR_DTYPE, "%s: '%s' has dtype %s; expected one of: %s", api, name, gc_dtype_name(t.dtype), names.c_str());
}

gc_status check_float_dtype(const char* api, const gc_tensor& t, const char* name) {
  if (t.device_type == GC_CPU && t.dtype != GC_FLOAT32)
    return fail(GC_ERROR_DTYPE, "%s: '%s' has dtype %s; the CPU kernels take float32 (convert with .float())", api, name,
                gc_dtype_name(t.dtype));
  return check_dtype(api, t, name, {GC_FLOAT32, GC_FLOAT16, GC_BFLOAT16});
}

gc_status check_same_dtype(const char* api, const gc_tensor& t, const char* name, const gc_tensor& ref, const char* ref_name) {
  if (t.dtype != ref.dtype)
    return fail(GC_ERROR_DTYPE, "%s: '%s' has dtype %s but '%s' has %s; they must match", api, name, gc_dtype_name(t.dtype),
                ref_name, gc_dtype_name(ref.dtype));
  return GC_OK;
}

gc_status check_same_device(const char* api, const gc_tensor& t, const char* name, const gc_tensor& ref, const char* ref_name) {
  if (t.device_type != ref.device_type || t.device_index != ref.device_index)
    return fail(GC_ERROR_DEVICE, "%s: '%s' is on %s:%d but '%s' is on %s:%d; move them to one device", api, name,
                t.device_type == GC_CUDA ? "cuda" : "cpu", t.device_index, ref_name,
                ref.device_type == GC_CUDA ? "cuda" : "cpu", ref.device_index);
  return GC_OK;
}

gc_status check_same_shape(const char* api, const gc_tensor& t, const char* name, const gc_tensor& ref, const char* ref_name) {
  bool same = t.ndim == ref.ndim;
  for (int i = 0; same && i < t.ndim; ++i) same = t.shape[i] == ref.shape[i];
  if (!same)
    return fail(GC_ERROR_SHAPE, "%s: '%s' has shape %s but '%s' has shape %s; they must match", api, name,
                shape_string(t).c_str(), ref_name, shape_string(ref).c_str());
  return GC_OK;
}

gc_status check_shape(const char* api, const gc_tensor& t, const char* name, std::initializer_list<int64_t> shape) {
  bool same = t.ndim == static_cast<int>(shape.size());
  int i = 0;
  for (int64_t s : shape) same = same && t.shape[i++] == s;
  if (!same) {
    std::string want = "[";
    for (int64_t s : shape) want += (want.size() > 1 ? ", " : "") + std::to_string(s);
    return fail(GC_ERROR_SHAPE, "%s: '%s' has shape %s; expected %s]", api, name, shape_string(t).c_str(), want.c_str());
  }
  return GC_OK;
}

gc_status check_like(const char* api, const gc_tensor& t, const char* name, const gc_tensor& ref, const char* ref_name) {
  GC_TRY(check_view(api, t, name));
  GC_TRY(check_same_device(api, t, name, ref, ref_name));
  GC_TRY(check_same_dtype(api, t, name, ref, ref_name));
  return check_same_shape(api, t, name, ref, ref_name);
}

}  // namespace gc
