// Shared timing for the C++ microbenchmarks: validate first, warm up, then report the
// median of repeated runs with the bytes moved per run as GB/s.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "gptcore/gptcore.h"

namespace bench {

inline void ok(gc_status s, const char* what) {
  if (s != GC_OK) {
    std::fprintf(stderr, "%s failed: %s\n", what, gc_last_error());
    std::exit(1);
  }
}

inline std::vector<float> randn(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// Median seconds of `run` over `reps` timed runs after `warmup` untimed ones.
inline double median_seconds(const std::function<void()>& run, int warmup = 3, int reps = 20) {
  for (int i = 0; i < warmup; ++i) run();
  std::vector<double> t(reps);
  for (double& s : t) {
    const auto start = std::chrono::steady_clock::now();
    run();
    s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  std::nth_element(t.begin(), t.begin() + reps / 2, t.end());
  return t[reps / 2];
}

inline void report(const char* name, double seconds, double bytes) {
  std::printf("%-34s median %9.3f ms  %8.2f GB/s\n", name, seconds * 1e3, bytes / seconds / 1e9);
}

// Fails the benchmark (exit 1) when a result is off, so no time is reported for wrong output.
inline void expect_close(double got, double want, double tol, const char* what) {
  if (!(std::abs(got - want) <= tol * (1 + std::abs(want)))) {
    std::fprintf(stderr, "validation failed: %s = %.9g, expected %.9g\n", what, got, want);
    std::exit(1);
  }
}

}  // namespace bench
