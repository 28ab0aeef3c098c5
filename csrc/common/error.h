// Internal error plumbing: every failure sets the thread's message and returns its status.
#pragma once

#include <exception>
#include <new>

#include "gptcore/status.h"

namespace gc {

// Records a printf-style message for gc_last_error() and returns `status`.
gc_status fail(gc_status status, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// Clears the message at the start of a public call.
void clear_error();

// Runs `body` (returning gc_status), turning any C++ exception into a status so that none
// crosses the C boundary.
template <class Body>
gc_status guarded(const char* api, Body&& body) {
  clear_error();
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(GC_ERROR_INTERNAL, "%s: out of host memory", api);
  } catch (const std::exception& e) {
    return fail(GC_ERROR_INTERNAL, "%s: %s", api, e.what());
  } catch (...) {
    return fail(GC_ERROR_INTERNAL, "%s: unknown C++ exception", api);
  }
}

}  // namespace gc

#define GC_TRY(expr)                       \
  do {                                     \
    gc_status gc_try_status_ = (expr);     \
    if (gc_try_status_ != GC_OK) return gc_try_status_; \
  } while (0)
