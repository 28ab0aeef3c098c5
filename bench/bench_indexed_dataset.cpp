// Random sample reads from an indexed dataset in the page cache: the GPT dataset's access
// pattern (a window of seq_len + 1 tokens at a random offset). Writes a uint16 dataset of
// ~100M tokens in 1k-8k-token documents (one sequence each) first, then times gc_indexed_dataset_sequence plus a
// copy of the window into a batch buffer, as a data loader would.
//
//   bench_indexed_dataset [dir=/tmp] [million_tokens=100] [reads=1000000]
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "/tmp";
  const int64_t total = (argc > 2 ? std::atoll(argv[2]) : 100) * 1000000;
  const int64_t reads = argc > 3 ? std::atoll(argv[3]) : 1000000;
  constexpr int64_t kWindow = 1024 + 1;
  const std::string prefix = dir + "/gptcore_bench_indexed_" + std::to_string(getpid());

  std::mt19937_64 gen(0);
  gc_indexed_writer* w = nullptr;
  bench::ok(gc_indexed_writer_open(prefix.c_str(), GC_INDEXED_UINT16, 50257, &w), "open writer");
  std::vector<uint16_t> doc(8192);
  int64_t written = 0;
  const auto start_write = std::chrono::steady_clock::now();
  while (written < total) {
    const int64_t n = kWindow + static_cast<int64_t>(gen() % 7167);
    for (int64_t i = 0; i < n; ++i) doc[i] = static_cast<uint16_t>(gen() % 50257);
    bench::ok(gc_indexed_writer_add_document(w, doc.data(), &n, 1), "add_document");
    written += n;
  }
  bench::ok(gc_indexed_writer_finalize(w), "finalize");
  gc_indexed_writer_close(w);
  const double write_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_write).count();

  gc_indexed_dataset* d = nullptr;
  const auto start_open = std::chrono::steady_clock::now();
  bench::ok(gc_indexed_dataset_open(prefix.c_str(), &d), "open reader");
  const double open_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_open).count();
  gc_indexed_dataset_info info;
  bench::ok(gc_indexed_dataset_get_info(d, &info), "info");
  std::printf("dataset: %lld tokens in %lld documents, written at %.1f M tokens/s, opened (validated) in %.1f ms\n",
              (long long)written, (long long)info.num_sequences, written / write_s / 1e6, open_s * 1e3);

  // The reads: a random sequence, a random offset that leaves a full window.
  std::vector<int64_t> sequence(reads), offset(reads);
  for (int64_t r = 0; r < reads; ++r) {
    sequence[r] = static_cast<int64_t>(gen() % info.num_sequences);
    int32_t length;
    std::memcpy(&length, static_cast<const char*>(info.sequence_lengths) + 4 * sequence[r], 4);
    offset[r] = static_cast<int64_t>(gen() % (length - kWindow + 1));
  }
  std::vector<uint16_t> batch(64 * kWindow);
  uint64_t checksum = 0;
  const double s = bench::median_seconds(
      [&] {
        for (int64_t r = 0; r < reads; ++r) {
          const void* tokens = nullptr;
          int64_t length = 0;
          gc_indexed_dataset_sequence(d, sequence[r], &tokens, &length);
          uint16_t* row = batch.data() + (r % 64) * kWindow;
          std::memcpy(row, static_cast<const uint16_t*>(tokens) + offset[r], kWindow * sizeof(uint16_t));
          checksum += row[r % kWindow];
        }
      },
      1, 5);
  // Validate one read against the flat token array before reporting.
  const uint16_t* flat = static_cast<const uint16_t*>(info.tokens);
  int64_t pointer;
  std::memcpy(&pointer, static_cast<const char*>(info.sequence_pointers) + 8 * sequence[0], 8);
  const void* tokens = nullptr;
  int64_t length = 0;
  bench::ok(gc_indexed_dataset_sequence(d, sequence[0], &tokens, &length), "sequence");
  bench::expect_close(static_cast<const uint16_t*>(tokens)[offset[0]], flat[pointer / 2 + offset[0]], 0, "token");
  std::printf("random reads of %lld tokens: %lld reads in %.3f s, %.2f M reads/s, %.0f M tokens/s (checksum %llu)\n",
              (long long)kWindow, (long long)reads, s, reads / s / 1e6, reads * kWindow / s / 1e6,
              (unsigned long long)checksum);
  gc_indexed_dataset_close(d);
  std::remove((prefix + ".bin").c_str());
  std::remove((prefix + ".idx").c_str());
  return 0;
}
