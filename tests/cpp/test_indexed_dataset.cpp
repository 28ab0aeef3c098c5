// The indexed dataset's C API: a round trip, merge, abort, vocabulary checks and corrupt files.
#include <dirent.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "check.h"

namespace {

// A fresh directory under $TMPDIR (or /tmp) for each test.
std::string temp_dir() {
  const char* base = std::getenv("TMPDIR");
  std::string path = std::string(base ? base : "/tmp") + "/gptcore_indexed_XXXXXX";
  return mkdtemp(path.data()) ? path : std::string();
}

int files_in(const std::string& dir) {
  int n = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

int64_t load_i64(const void* p, int64_t i) {
  int64_t v;
  std::memcpy(&v, static_cast<const char*>(p) + 8 * i, 8);
  return v;
}

int32_t load_i32(const void* p, int64_t i) {
  int32_t v;
  std::memcpy(&v, static_cast<const char*>(p) + 4 * i, 4);
  return v;
}

// Documents {1 2 3 | 4 5}, {}, {6}: three sequences, three documents.
void write_small(const std::string& prefix) {
  gc_indexed_writer* w = nullptr;
  CHECK(gc_indexed_writer_open(prefix.c_str(), GC_INDEXED_UINT16, 0, &w) == GC_OK);
  const uint16_t tokens[] = {1, 2, 3, 4, 5};
  const int64_t lengths[] = {3, 2};
  CHECK(gc_indexed_writer_add_document(w, tokens, lengths, 2) == GC_OK);
  CHECK(gc_indexed_writer_end_document(w) == GC_OK);
  const uint16_t six = 6;
  CHECK(gc_indexed_writer_add_sequence(w, &six, 1) == GC_OK);
  CHECK(gc_indexed_writer_finalize(w) == GC_OK);
  CHECK_FAILS(gc_indexed_writer_add_sequence(w, &six, 1), GC_ERROR_INVALID_ARGUMENT, "already finalized");
  gc_indexed_writer_close(w);
}

void patch(const std::string& path, long offset, const void* data, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "r+b");
  CHECK(f != nullptr);
  if (!f) return;
  std::fseek(f, offset, SEEK_SET);
  std::fwrite(data, 1, bytes, f);
  std::fclose(f);
}

}  // namespace

TEST(round_trip) {
  const std::string dir = temp_dir(), prefix = dir + "/ds";
  write_small(prefix);
  gc_indexed_dataset* d = nullptr;
  CHECK(gc_indexed_dataset_open(prefix.c_str(), &d) == GC_OK);
  gc_indexed_dataset_info info;
  CHECK(gc_indexed_dataset_get_info(d, &info) == GC_OK);
  CHECK(info.dtype == GC_INDEXED_UINT16 && info.num_sequences == 3 && info.num_document_indices == 4);
  CHECK(info.token_bytes == 12);
  const int32_t lengths[] = {3, 2, 1};
  const int64_t pointers[] = {0, 6, 10}, documents[] = {0, 2, 2, 3};
  for (int i = 0; i < 3; ++i) CHECK(load_i32(info.sequence_lengths, i) == lengths[i]);
  for (int i = 0; i < 3; ++i) CHECK(load_i64(info.sequence_pointers, i) == pointers[i]);
  for (int i = 0; i < 4; ++i) CHECK(load_i64(info.document_indices, i) == documents[i]);
  const void* tokens = nullptr;
  int64_t length = 0;
  CHECK(gc_indexed_dataset_sequence(d, 1, &tokens, &length) == GC_OK);
  CHECK(length == 2 && static_cast<const uint16_t*>(tokens)[0] == 4 && static_cast<const uint16_t*>(tokens)[1] == 5);
  CHECK_FAILS(gc_indexed_dataset_sequence(d, 3, &tokens, &length), GC_ERROR_INVALID_ARGUMENT, "out of range");
  CHECK(gc_indexed_dataset_check_vocab(d, 7) == GC_OK);
  CHECK_FAILS(gc_indexed_dataset_check_vocab(d, 6), GC_ERROR_INVALID_ARGUMENT, "sequence 2 has token 6 at position 0");
  gc_indexed_dataset_close(d);
}

TEST(merge_and_abort) {
  const std::string dir = temp_dir(), prefix = dir + "/ds", merged = dir + "/merged";
  write_small(prefix);
  gc_indexed_writer* w = nullptr;
  CHECK(gc_indexed_writer_open(merged.c_str(), GC_INDEXED_UINT16, 0, &w) == GC_OK);
  CHECK(gc_indexed_writer_merge(w, prefix.c_str()) == GC_OK);
  CHECK(gc_indexed_writer_merge(w, prefix.c_str()) == GC_OK);
  CHECK(gc_indexed_writer_finalize(w) == GC_OK);
  gc_indexed_writer_close(w);
  gc_indexed_dataset* d = nullptr;
  CHECK(gc_indexed_dataset_open(merged.c_str(), &d) == GC_OK);
  gc_indexed_dataset_info info;
  CHECK(gc_indexed_dataset_get_info(d, &info) == GC_OK);
  CHECK(info.num_sequences == 6 && info.num_document_indices == 7);
  const int64_t documents[] = {0, 2, 2, 3, 5, 5, 6};
  for (int i = 0; i < 7; ++i) CHECK(load_i64(info.document_indices, i) == documents[i]);
  CHECK(load_i64(info.sequence_pointers, 5) == 22);
  gc_indexed_dataset_close(d);

  const int before = files_in(dir);
  CHECK(gc_indexed_writer_open((dir + "/aborted").c_str(), GC_INDEXED_INT32, 0, &w) == GC_OK);
  const int32_t tokens[] = {1, 2};
  CHECK(gc_indexed_writer_add_sequence(w, tokens, 2) == GC_OK);
  CHECK(files_in(dir) == before + 1);  // the temporary .bin
  CHECK_FAILS(gc_indexed_writer_merge(w, prefix.c_str()), GC_ERROR_INVALID_ARGUMENT, "open document");
  CHECK(gc_indexed_writer_end_document(w) == GC_OK);
  CHECK_FAILS(gc_indexed_writer_merge(w, prefix.c_str()), GC_ERROR_DTYPE, "dtype code 8");
  gc_indexed_writer_close(w);
  CHECK(files_in(dir) == before);
}

TEST(writer_arguments) {
  const std::string dir = temp_dir(), prefix = dir + "/ds";
  gc_indexed_writer* w = nullptr;
  CHECK_FAILS(gc_indexed_writer_open(prefix.c_str(), 9, 0, &w), GC_ERROR_DTYPE, "dtype code 9");
  CHECK_FAILS(gc_indexed_writer_open(prefix.c_str(), GC_INDEXED_FLOAT32, 10, &w), GC_ERROR_DTYPE, "integer");
  CHECK_FAILS(gc_indexed_writer_open((dir + "/missing/ds").c_str(), GC_INDEXED_INT32, 0, &w),
              GC_ERROR_INVALID_ARGUMENT, "missing/ds.bin");
  CHECK(gc_indexed_writer_open(prefix.c_str(), GC_INDEXED_INT64, 100, &w) == GC_OK);
  const int64_t tokens[] = {5, 100};
  CHECK_FAILS(gc_indexed_writer_add_sequence(w, tokens, 2), GC_ERROR_INVALID_ARGUMENT,
              "token 1 of the sequence is 100, outside the vocabulary [0, 100)");
  CHECK_FAILS(gc_indexed_writer_add_sequence(w, tokens, -1), GC_ERROR_INVALID_ARGUMENT, ">= 0");
  gc_indexed_writer_close(w);
}

TEST(corrupt_files) {
  const std::string dir = temp_dir(), prefix = dir + "/ds", idx = prefix + ".idx";
  gc_indexed_dataset* d = nullptr;
  CHECK_FAILS(gc_indexed_dataset_open(prefix.c_str(), &d), GC_ERROR_INVALID_ARGUMENT, "cannot open");
  write_small(prefix);
  patch(idx, 0, "XX", 2);
  CHECK_FAILS(gc_indexed_dataset_open(prefix.c_str(), &d), GC_ERROR_INVALID_ARGUMENT, (idx + " is not").c_str());
  CHECK_FAILS(gc_indexed_dataset_open(prefix.c_str(), &d), GC_ERROR_INVALID_ARGUMENT, "bad magic");
  CHECK(d == nullptr);
  write_small(prefix);
  const unsigned char code = 0;
  patch(idx, 17, &code, 1);
  CHECK_FAILS(gc_indexed_dataset_open(prefix.c_str(), &d), GC_ERROR_DTYPE, "dtype code 0");
  write_small(prefix);
  const int64_t decreasing = 1;
  patch(idx, 34 + 12 * 3 + 8 * 2, &decreasing, 8);
  CHECK_FAILS(gc_indexed_dataset_open(prefix.c_str(), &d), GC_ERROR_INVALID_ARGUMENT,
              "document index 2 is 1, below the previous 2");
  write_small(prefix);
  CHECK(truncate((prefix + ".bin").c_str(), 11) == 0);
  CHECK_FAILS(gc_indexed_dataset_open(prefix.c_str(), &d), GC_ERROR_INVALID_ARGUMENT, "ds.bin has 11 bytes");
}

TEST_MAIN()
