#include <cstdarg>
#include <cstdio>

#include "common/error.h"

namespace {
thread_local char g_message[1024] = "";
}

namespace gc {

gc_status fail(gc_status status, const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(g_message, sizeof(g_message), fmt, args);
  va_end(args);
  return status;
}

void clear_error() { g_message[0] = '\0'; }

}  // namespace gc

extern "C" const char* gc_last_error(void) { return g_message; }

extern "C" const char* gc_status_name(gc_status status) {
  switch (status) {
    case GC_OK: return "GC_OK";
    case GC_ERROR_INVALID_ARGUMENT: return "GC_ERROR_INVALID_ARGUMENT";
    case GC_ERROR_DTYPE: return "GC_ERROR_DTYPE";
    case GC_ERROR_SHAPE: return "GC_ERROR_SHAPE";
    case GC_ERROR_LAYOUT: return "GC_ERROR_LAYOUT";
    case GC_ERROR_DEVICE: return "GC_ERROR_DEVICE";
    case GC_ERROR_WORKSPACE: return "GC_ERROR_WORKSPACE";
    case GC_ERROR_CUDA: return "GC_ERROR_CUDA";
    case GC_ERROR_INTERNAL: return "GC_ERROR_INTERNAL";
  }
  return "GC_ERROR_UNKNOWN";
}
