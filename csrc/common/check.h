// Argument validation shared by every op's *_api.cpp. Each check names the API and the
// argument in its message, and says how to fix the call where that is not obvious.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "gptcore/status.h"
#include "gptcore/tensor.h"

namespace gc {

inline bool present(const gc_tensor& t) { return t.data != nullptr; }

std::string shape_string(const gc_tensor& t);

// data set, ndim in [0, GC_MAX_DIMS], known dtype, contiguous, a device this build has.
gc_status check_view(const char* api, const gc_tensor& t, const char* name);

gc_status check_dtype(const char* api, const gc_tensor& t, const char* name,
                      std::initializer_list<int32_t> allowed);

// float32 on CPU; float32, float16 or bfloat16 on CUDA.
gc_status check_float_dtype(const char* api, const gc_tensor& t, const char* name);

gc_status check_same_dtype(const char* api, const gc_tensor& t, const char* name,
                           const gc_tensor& ref, const char* ref_name);

gc_status check_same_device(const char* api, const gc_tensor& t, const char* name,
                            const gc_tensor& ref, const char* ref_name);

gc_status check_same_shape(const char* api, const gc_tensor& t, const char* name,
                           const gc_tensor& ref, const char* ref_name);

// Exact shape, e.g. {N} or {C}.
gc_status check_shape(const char* api, const gc_tensor& t, const char* name,
                      std::initializer_list<int64_t> shape);

// check_view + same device + same dtype + same shape as ref: the common "like x" case.
gc_status check_like(const char* api, const gc_tensor& t, const char* name, const gc_tensor& ref,
                     const char* ref_name);

}  // namespace gc
