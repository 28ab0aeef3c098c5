// A minimal test harness for the C API tests: CHECK records a failure and carries on,
// and each test binary returns nonzero when any check failed (ctest reads the exit code).
#pragma once

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "gptcore/gptcore.h"

namespace test {

inline int& failures() {
  static int n = 0;
  return n;
}

inline std::vector<std::pair<const char*, std::function<void()>>>& registry() {
  static std::vector<std::pair<const char*, std::function<void()>>> r;
  return r;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().emplace_back(name, std::move(fn)); }
};

inline int run_all() {
  for (auto& [name, fn] : registry()) {
    const int before = failures();
    fn();
    std::printf("%s %s\n", failures() == before ? "PASS" : "FAIL", name);
  }
  std::printf("%d failed\n", failures());
  return failures() == 0 ? 0 : 1;
}

// 1-D and 2-D contiguous float32 / int64 CPU views.
inline gc_tensor cpu(float* p, std::vector<int64_t> shape) {
  return gc_make_tensor(p, GC_FLOAT32, GC_CPU, 0, static_cast<int32_t>(shape.size()), shape.data());
}
inline gc_tensor cpu(int64_t* p, std::vector<int64_t> shape) {
  return gc_make_tensor(p, GC_INT64, GC_CPU, 0, static_cast<int32_t>(shape.size()), shape.data());
}

}  // namespace test

#define TEST(name)                                           \
  static void name();                                        \
  static test::Register name##_registered(#name, name);      \
  static void name()

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::printf("  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);     \
      ++test::failures();                                                        \
    }                                                                            \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                              \
  do {                                                                                                     \
    const double a_ = (a), b_ = (b);                                                                       \
    if (!(std::fabs(a_ - b_) <= (tol))) {                                                                  \
      std::printf("  %s:%d: %s = %.9g vs %s = %.9g (tol %g)\n", __FILE__, __LINE__, #a, a_, #b, b_, double(tol)); \
      ++test::failures();                                                                                  \
    }                                                                                                      \
  } while (0)

// The call fails with `status` and gc_last_error() mentions `needle`.
#define CHECK_FAILS(call, status, needle)                                                                   \
  do {                                                                                                      \
    const gc_status s_ = (call);                                                                            \
    if (s_ != (status) || std::strstr(gc_last_error(), (needle)) == nullptr) {                              \
      std::printf("  %s:%d: %s gave %s '%s'; expected %s mentioning '%s'\n", __FILE__, __LINE__, #call,     \
                  gc_status_name(s_), gc_last_error(), gc_status_name(status), needle);                     \
      ++test::failures();                                                                                   \
    }                                                                                                       \
  } while (0)

#define TEST_MAIN() \
  int main() { return test::run_all(); }
