// Dtype and compile-time flag switches (the one place a runtime value becomes a template
// argument). The body is a lambda; inside it the named alias or constant is in scope:
//   return GC_FLOAT_SWITCH(x.dtype, T, [&] { return launch<T>(p, stream); });
#pragma once

#include "common/error.h"
#include "common/numeric.h"
#include "gptcore/tensor.h"

#define GC_FLOAT_SWITCH(DTYPE, T, ...)                                                          \
  [&]() -> gc_status {                                                                          \
    switch (DTYPE) {                                                                            \
      case GC_FLOAT32: {                                                                        \
        using T = float;                                                                        \
        return __VA_ARGS__();                                                                   \
      }                                                                                         \
      case GC_FLOAT16: {                                                                        \
        using T = ::gc::half_t;                                                                 \
        return __VA_ARGS__();                                                                   \
      }                                                                                         \
      case GC_BFLOAT16: {                                                                       \
        using T = ::gc::bf16_t;                                                                 \
        return __VA_ARGS__();                                                                   \
      }                                                                                         \
      default:                                                                                  \
        return ::gc::fail(GC_ERROR_DTYPE, "unsupported floating dtype %s", gc_dtype_name(DTYPE)); \
    }                                                                                           \
  }()

#define GC_INDEX_SWITCH(DTYPE, I, ...)                                                       \
  [&]() -> gc_status {                                                                       \
    switch (DTYPE) {                                                                         \
      case GC_INT32: {                                                                       \
        using I = int32_t;                                                                   \
        return __VA_ARGS__();                                                                \
      }                                                                                      \
      case GC_INT64: {                                                                       \
        using I = int64_t;                                                                   \
        return __VA_ARGS__();                                                                \
      }                                                                                      \
      default:                                                                               \
        return ::gc::fail(GC_ERROR_DTYPE, "unsupported index dtype %s", gc_dtype_name(DTYPE)); \
    }                                                                                        \
  }()

#define GC_BOOL_SWITCH(COND, NAME, ...)  \
  [&]() -> gc_status {                   \
    if (COND) {                          \
      constexpr bool NAME = true;        \
      return __VA_ARGS__();              \
    } else {                             \
      constexpr bool NAME = false;       \
      return __VA_ARGS__();              \
    }                                    \
  }()
