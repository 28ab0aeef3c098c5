// Megatron's indexed dataset: the writer (temporary files renamed into place on finalize)
// and the reader (POSIX mmap, validated on open). See gptcore/indexed_dataset.h.
#include "gptcore/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the .idx format is little-endian, and so must the host be");

namespace gc {
namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kVersion = 1;
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;
constexpr size_t kWriteBuffer = size_t{4} << 20;

std::string idx_path(const std::string& prefix) { return prefix + ".idx"; }
std::string bin_path(const std::string& prefix) { return prefix + ".bin"; }

template <class T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool is_integer_dtype(int32_t dtype) { return dtype != GC_INDEXED_FLOAT32 && dtype != GC_INDEXED_FLOAT64; }

// A read-only mapping of a whole file; an empty file maps to nothing.
struct Mapping {
  const unsigned char* data = nullptr;
  size_t bytes = 0;

  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data) munmap(const_cast<unsigned char*>(data), bytes);
  }
};

gc_status map_file(const char* api, const std::string& path, Mapping* m) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: cannot open %s: %s", api, path.c_str(), std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: cannot stat %s: %s", api, path.c_str(), std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: %s is not a regular file", api, path.c_str());
  }
  m->bytes = static_cast<size_t>(st.st_size);
  if (m->bytes > 0) {
    void* addr = mmap(nullptr, m->bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: cannot map %s: %s", api, path.c_str(), std::strerror(err));
    }
    m->data = static_cast<const unsigned char*>(addr);
  }
  ::close(fd);
  return GC_OK;
}

// Writes all n bytes, retrying short writes; 0 or an errno.
int write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return 0;
}

// Creates `path_base.tmp.<pid>.<n>` exclusively, with the usual umask-filtered permissions.
int create_temporary(const std::string& path_base, std::string* path) {
  static std::atomic<unsigned> counter{0};
  for (int attempt = 0; attempt < 100; ++attempt) {
    *path = path_base + ".tmp." + std::to_string(getpid()) + "." + std::to_string(counter++);
    const int fd = ::open(path->c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  errno = EEXIST;
  return -1;
}

// The first of n tokens outside [0, vocab): its index and value, or -1.
template <class T>
int64_t first_outside(const T* v, int64_t n, int64_t vocab, int64_t* value) {
  constexpr int64_t kChunk = 4096;
  const uint64_t limit = static_cast<uint64_t>(vocab);
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t end = start + kChunk < n ? start + kChunk : n;
    bool any = false;  // a branch-free pass the compiler vectorizes; the slow search runs once
    for (int64_t i = start; i < end; ++i) any |= static_cast<uint64_t>(static_cast<int64_t>(v[i])) >= limit;
    if (!any) continue;
    for (int64_t i = start; i < end; ++i) {
      if (static_cast<uint64_t>(static_cast<int64_t>(v[i])) >= limit) {
        *value = static_cast<int64_t>(v[i]);
        return i;
      }
    }
  }
  return -1;
}

int64_t first_outside_vocab(const void* tokens, int32_t dtype, int64_t n, int64_t vocab, int64_t* value) {
  switch (dtype) {
    case GC_INDEXED_UINT8: return first_outside(static_cast<const uint8_t*>(tokens), n, vocab, value);
    case GC_INDEXED_INT8: return first_outside(static_cast<const int8_t*>(tokens), n, vocab, value);
    case GC_INDEXED_INT16: return first_outside(static_cast<const int16_t*>(tokens), n, vocab, value);
    case GC_INDEXED_INT32: return first_outside(static_cast<const int32_t*>(tokens), n, vocab, value);
    case GC_INDEXED_INT64: return first_outside(static_cast<const int64_t*>(tokens), n, vocab, value);
    case GC_INDEXED_UINT16: return first_outside(static_cast<const uint16_t*>(tokens), n, vocab, value);
  }
  return -1;
}

gc_status check_vocab_size(const char* api, int32_t dtype, int64_t vocab_size) {
  if (vocab_size <= 0) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: vocab_size must be > 0, got %" PRId64, api, vocab_size);
  if (!is_integer_dtype(dtype))
    return fail(GC_ERROR_DTYPE, "%s: a vocabulary check needs integer token ids, but the dtype code is %d (float)", api,
                dtype);
  return GC_OK;
}

}  // namespace
}  // namespace gc

using namespace gc;

struct gc_indexed_dataset {
  std::string idx;
  std::string bin;
  Mapping idx_map;
  Mapping bin_map;
  int32_t dtype = 0;
  int64_t num_sequences = 0;
  int64_t num_document_indices = 0;
  const unsigned char* lengths = nullptr;
  const unsigned char* pointers = nullptr;
  const unsigned char* documents = nullptr;

  int32_t length(int64_t i) const { return load<int32_t>(lengths + 4 * i); }
  int64_t pointer(int64_t i) const { return load<int64_t>(pointers + 8 * i); }
  int64_t document(int64_t i) const { return load<int64_t>(documents + 8 * i); }
};

namespace gc {
namespace {

gc_status validate_index(const char* api, gc_indexed_dataset& d) {
  const char* path = d.idx.c_str();
  const unsigned char* p = d.idx_map.data;
  const size_t size = d.idx_map.bytes;
  if (size < sizeof kMagic || std::memcmp(p, kMagic, sizeof kMagic) != 0)
    return fail(GC_ERROR_INVALID_ARGUMENT,
                "%s: %s is not a Megatron indexed dataset index: bad magic (it must start with \"MMIDIDX\\x00\\x00\")",
                api, path);
  if (size < kHeaderBytes)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: %s is truncated: %zu bytes, less than the %zu-byte header", api, path,
                size, kHeaderBytes);
  const uint64_t version = load<uint64_t>(p + 9);
  if (version != kVersion)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: %s has version %" PRIu64 "; only version 1 is supported", api, path,
                version);
  d.dtype = p[17];
  if (gc_indexed_dtype_size(d.dtype) == 0)
    return fail(GC_ERROR_DTYPE, "%s: %s has dtype code %d; Megatron's codes are 1..8", api, path, d.dtype);
  const uint64_t sequences = load<uint64_t>(p + 18);
  const uint64_t documents = load<uint64_t>(p + 26);
  // Counts beyond the file size can only be wrong; bounding them first keeps the sum exact.
  if (sequences > size || documents > size)
    return fail(GC_ERROR_INVALID_ARGUMENT,
                "%s: %s claims %" PRIu64 " sequences and %" PRIu64 " document indices, more than its %zu bytes hold",
                api, path, sequences, documents, size);
  const uint64_t need = kHeaderBytes + 12 * sequences + 8 * documents;
  if (size != need)
    return fail(GC_ERROR_INVALID_ARGUMENT,
                "%s: %s has %zu bytes but its header (%" PRIu64 " sequences, %" PRIu64
                " document indices) needs exactly %" PRIu64 " (%s)",
                api, path, size, sequences, documents, need,
                size < need ? "truncated" : "trailing bytes; multimodal sequence modes are not supported");
  d.num_sequences = static_cast<int64_t>(sequences);
  d.num_document_indices = static_cast<int64_t>(documents);
  d.lengths = p + kHeaderBytes;
  d.pointers = d.lengths + 4 * sequences;
  d.documents = d.pointers + 8 * sequences;

  const int64_t item = static_cast<int64_t>(gc_indexed_dtype_size(d.dtype));
  int64_t end = 0;  // byte where the sequences so far end
  for (int64_t i = 0; i < d.num_sequences; ++i) {
    const int32_t length = d.length(i);
    if (length < 0)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: %s: sequence %" PRId64 " has negative length %d", api, path, i,
                  length);
    const int64_t pointer = d.pointer(i);
    if (pointer != end)
      return fail(GC_ERROR_INVALID_ARGUMENT,
                  "%s: %s: sequence %" PRId64 " points at byte %" PRId64 " but the lengths before it end at byte %" PRId64
                  " (pointers inconsistent with lengths)",
                  api, path, i, pointer, end);
    end += length * item;
    if (end > static_cast<int64_t>(d.bin_map.bytes))  // also keeps `end` from overflowing
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: %s has %zu bytes but %s describes at least %" PRId64 " (too short)",
                  api, d.bin.c_str(), d.bin_map.bytes, path, end);
  }

  if (d.num_document_indices == 0)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: %s: the document index is empty; it must start with 0", api, path);
  int64_t previous = 0;
  for (int64_t i = 0; i < d.num_document_indices; ++i) {
    const int64_t doc = d.document(i);
    if (i == 0 && doc != 0)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: %s: the document index starts at %" PRId64 "; it must start at 0",
                  api, path, doc);
    if (doc < previous)
      return fail(GC_ERROR_INVALID_ARGUMENT,
                  "%s: %s: document index %" PRId64 " is %" PRId64 ", below the previous %" PRId64
                  " (the document index must not decrease)",
                  api, path, i, doc, previous);
    if (doc > d.num_sequences)
      return fail(GC_ERROR_INVALID_ARGUMENT,
                  "%s: %s: document index %" PRId64 " is %" PRId64 ", past the %" PRId64 " sequences", api, path, i,
                  doc, d.num_sequences);
    previous = doc;
  }

  if (static_cast<int64_t>(d.bin_map.bytes) > end)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: %s has %zu bytes but %s describes %" PRId64 " (too long)", api,
                d.bin.c_str(), d.bin_map.bytes, path, end);
  return GC_OK;
}

gc_status open_dataset(const char* api, const char* prefix, gc_indexed_dataset** out) {
  auto d = std::make_unique<gc_indexed_dataset>();
  d->idx = idx_path(prefix);
  d->bin = bin_path(prefix);
  GC_TRY(map_file(api, d->idx, &d->idx_map));
  GC_TRY(map_file(api, d->bin, &d->bin_map));
  GC_TRY(validate_index(api, *d));
  *out = d.release();
  return GC_OK;
}

}  // namespace
}  // namespace gc

struct gc_indexed_writer {
  std::string prefix;
  int32_t dtype = 0;
  size_t item = 0;
  int64_t vocab_size = 0;
  std::string bin_tmp;
  std::string idx_tmp;
  int bin_fd = -1;
  std::vector<unsigned char> buffer;  // .bin bytes not yet written
  std::vector<int32_t> lengths;
  std::vector<int64_t> documents{0};
  bool finalized = false;
  bool broken = false;  // a write failed: the temporary files no longer match the index

  bool document_open() const { return documents.back() != static_cast<int64_t>(lengths.size()); }

  gc_status flush(const char* api) {
    if (buffer.empty()) return GC_OK;
    const int err = write_all(bin_fd, buffer.data(), buffer.size());
    buffer.clear();
    if (err != 0) {
      broken = true;
      return fail(GC_ERROR_INTERNAL, "%s: writing %s failed: %s", api, bin_tmp.c_str(), std::strerror(err));
    }
    return GC_OK;
  }

  gc_status append(const char* api, const void* data, size_t bytes) {
    if (buffer.size() + bytes > kWriteBuffer) GC_TRY(flush(api));
    if (bytes >= kWriteBuffer) {
      const int err = write_all(bin_fd, data, bytes);
      if (err != 0) {
        broken = true;
        return fail(GC_ERROR_INTERNAL, "%s: writing %s failed: %s", api, bin_tmp.c_str(), std::strerror(err));
      }
      return GC_OK;
    }
    const unsigned char* p = static_cast<const unsigned char*>(data);
    buffer.insert(buffer.end(), p, p + bytes);
    return GC_OK;
  }

  ~gc_indexed_writer() {
    if (bin_fd >= 0) ::close(bin_fd);
    if (!finalized) {
      if (!bin_tmp.empty()) ::unlink(bin_tmp.c_str());
      if (!idx_tmp.empty()) ::unlink(idx_tmp.c_str());
    }
  }
};

namespace gc {
namespace {

gc_status check_writer(const char* api, const gc_indexed_writer* w) {
  if (!w) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: writer is NULL", api);
  if (w->finalized)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: the writer for %s is already finalized", api, w->prefix.c_str());
  if (w->broken)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: an earlier write to %s failed; close the writer", api,
                w->bin_tmp.c_str());
  return GC_OK;
}

gc_status check_tokens(const char* api, const gc_indexed_writer& w, const void* tokens, int64_t count) {
  if (count < 0) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: token count must be >= 0, got %" PRId64, api, count);
  if (count > 0 && !tokens) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: tokens is NULL", api);
  if (w.vocab_size > 0) {
    int64_t value = 0;
    const int64_t at = first_outside_vocab(tokens, w.dtype, count, w.vocab_size, &value);
    if (at >= 0)
      return fail(GC_ERROR_INVALID_ARGUMENT,
                  "%s: %s: token %" PRId64 " of the sequence is %" PRId64 ", outside the vocabulary [0, %" PRId64 ")",
                  api, w.prefix.c_str(), at, value, w.vocab_size);
  }
  return GC_OK;
}

gc_status add_sequence(const char* api, gc_indexed_writer& w, const void* tokens, int64_t count) {
  if (count > INT32_MAX)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: a sequence of %" PRId64 " tokens does not fit the int32 lengths", api,
                count);
  GC_TRY(w.append(api, tokens, static_cast<size_t>(count) * w.item));
  w.lengths.push_back(static_cast<int32_t>(count));
  return GC_OK;
}

gc_status write_index(const char* api, gc_indexed_writer& w) {
  const int fd = create_temporary(idx_path(w.prefix), &w.idx_tmp);
  if (fd < 0)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: cannot create a temporary index beside %s: %s", api,
                idx_path(w.prefix).c_str(), std::strerror(errno));
  const uint64_t sequences = w.lengths.size(), documents = w.documents.size();
  std::vector<unsigned char> out(kHeaderBytes + 12 * sequences + 8 * documents);
  unsigned char* p = out.data();
  std::memcpy(p, kMagic, sizeof kMagic);
  std::memcpy(p + 9, &kVersion, 8);
  p[17] = static_cast<unsigned char>(w.dtype);
  std::memcpy(p + 18, &sequences, 8);
  std::memcpy(p + 26, &documents, 8);
  p += kHeaderBytes;
  std::memcpy(p, w.lengths.data(), 4 * sequences);
  p += 4 * sequences;
  int64_t pointer = 0;
  for (int32_t length : w.lengths) {
    std::memcpy(p, &pointer, 8);
    p += 8;
    pointer += static_cast<int64_t>(length) * static_cast<int64_t>(w.item);
  }
  std::memcpy(p, w.documents.data(), 8 * documents);
  int err = write_all(fd, out.data(), out.size());
  if (err == 0 && fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) return fail(GC_ERROR_INTERNAL, "%s: writing %s failed: %s", api, w.idx_tmp.c_str(), std::strerror(err));
  return GC_OK;
}

}  // namespace
}  // namespace gc

extern "C" size_t gc_indexed_dtype_size(int32_t dtype) {
  static constexpr size_t sizes[] = {0, 1, 1, 2, 4, 8, 8, 4, 2};
  return dtype >= 1 && dtype <= 8 ? sizes[dtype] : 0;
}

extern "C" gc_status gc_indexed_writer_open(const char* prefix, int32_t dtype, int64_t vocab_size,
                                            gc_indexed_writer** writer) {
  constexpr const char* api = "gc_indexed_writer_open";
  return guarded(api, [&]() -> gc_status {
    if (!prefix || !writer) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: prefix and writer must not be NULL", api);
    *writer = nullptr;
    if (gc_indexed_dtype_size(dtype) == 0)
      return fail(GC_ERROR_DTYPE, "%s: dtype code %d is not one of Megatron's codes 1..8", api, dtype);
    if (vocab_size < 0)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: vocab_size must be >= 0 (0: no check), got %" PRId64, api,
                  vocab_size);
    if (vocab_size > 0) GC_TRY(check_vocab_size(api, dtype, vocab_size));
    auto w = std::make_unique<gc_indexed_writer>();
    w->prefix = prefix;
    w->dtype = dtype;
    w->item = gc_indexed_dtype_size(dtype);
    w->vocab_size = vocab_size;
    w->bin_fd = create_temporary(bin_path(w->prefix), &w->bin_tmp);
    if (w->bin_fd < 0)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: cannot create a temporary file beside %s: %s", api,
                  bin_path(w->prefix).c_str(), std::strerror(errno));
    w->buffer.reserve(kWriteBuffer);
    *writer = w.release();
    return GC_OK;
  });
}

extern "C" gc_status gc_indexed_writer_add_sequence(gc_indexed_writer* writer, const void* tokens, int64_t count) {
  constexpr const char* api = "gc_indexed_writer_add_sequence";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_writer(api, writer));
    GC_TRY(check_tokens(api, *writer, tokens, count));
    return add_sequence(api, *writer, tokens, count);
  });
}

extern "C" gc_status gc_indexed_writer_end_document(gc_indexed_writer* writer) {
  constexpr const char* api = "gc_indexed_writer_end_document";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_writer(api, writer));
    writer->documents.push_back(static_cast<int64_t>(writer->lengths.size()));
    return GC_OK;
  });
}

extern "C" gc_status gc_indexed_writer_add_document(gc_indexed_writer* writer, const void* tokens,
                                                    const int64_t* lengths, int64_t num_sequences) {
  constexpr const char* api = "gc_indexed_writer_add_document";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_writer(api, writer));
    if (num_sequences < 0)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: num_sequences must be >= 0, got %" PRId64, api, num_sequences);
    if (num_sequences > 0 && !lengths) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: lengths is NULL", api);
    int64_t total = 0;
    for (int64_t i = 0; i < num_sequences; ++i) {
      if (lengths[i] < 0 || lengths[i] > INT32_MAX)
        return fail(GC_ERROR_INVALID_ARGUMENT, "%s: lengths[%" PRId64 "] is %" PRId64 "; it must lie in [0, 2^31)",
                    api, i, lengths[i]);
      total += lengths[i];
    }
    GC_TRY(check_tokens(api, *writer, tokens, total));
    const unsigned char* p = static_cast<const unsigned char*>(tokens);
    for (int64_t i = 0; i < num_sequences; ++i) {
      GC_TRY(add_sequence(api, *writer, p, lengths[i]));
      p += lengths[i] * static_cast<int64_t>(writer->item);
    }
    writer->documents.push_back(static_cast<int64_t>(writer->lengths.size()));
    return GC_OK;
  });
}

extern "C" gc_status gc_indexed_writer_merge(gc_indexed_writer* writer, const char* other_prefix) {
  constexpr const char* api = "gc_indexed_writer_merge";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_writer(api, writer));
    if (!other_prefix) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: other_prefix is NULL", api);
    gc_indexed_writer& w = *writer;
    if (w.document_open())
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: %s has an open document; end it before merging %s", api,
                  w.prefix.c_str(), other_prefix);
    gc_indexed_dataset* raw = nullptr;
    GC_TRY(open_dataset(api, other_prefix, &raw));
    std::unique_ptr<gc_indexed_dataset> other(raw);
    if (other->dtype != w.dtype)
      return fail(GC_ERROR_DTYPE, "%s: %s has dtype code %d but the dataset being written has %d", api,
                  other->idx.c_str(), other->dtype, w.dtype);
    if (w.vocab_size > 0) {
      int64_t value = 0;
      const int64_t at = first_outside_vocab(other->bin_map.data, other->dtype,
                                             static_cast<int64_t>(other->bin_map.bytes / w.item), w.vocab_size, &value);
      if (at >= 0)
        return fail(GC_ERROR_INVALID_ARGUMENT,
                    "%s: %s: token %" PRId64 " is %" PRId64 ", outside the vocabulary [0, %" PRId64 ")", api,
                    other->bin.c_str(), at, value, w.vocab_size);
    }
    const int64_t offset = static_cast<int64_t>(w.lengths.size());
    GC_TRY(w.flush(api));
    GC_TRY(w.append(api, other->bin_map.data, other->bin_map.bytes));
    for (int64_t i = 0; i < other->num_sequences; ++i) w.lengths.push_back(other->length(i));
    for (int64_t i = 1; i < other->num_document_indices; ++i) w.documents.push_back(offset + other->document(i));
    return GC_OK;
  });
}

extern "C" gc_status gc_indexed_writer_finalize(gc_indexed_writer* writer) {
  constexpr const char* api = "gc_indexed_writer_finalize";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_writer(api, writer));
    gc_indexed_writer& w = *writer;
    if (w.document_open()) w.documents.push_back(static_cast<int64_t>(w.lengths.size()));
    GC_TRY(w.flush(api));
    int err = fsync(w.bin_fd) != 0 ? errno : 0;
    if (::close(w.bin_fd) != 0 && err == 0) err = errno;
    w.bin_fd = -1;
    if (err != 0) {
      w.broken = true;
      return fail(GC_ERROR_INTERNAL, "%s: writing %s failed: %s", api, w.bin_tmp.c_str(), std::strerror(err));
    }
    GC_TRY(write_index(api, w));
    // An old .idx must not pair with the new .bin, even for a moment: remove it first.
    const std::string idx = idx_path(w.prefix), bin = bin_path(w.prefix);
    if (::unlink(idx.c_str()) != 0 && errno != ENOENT)
      return fail(GC_ERROR_INTERNAL, "%s: cannot replace %s: %s", api, idx.c_str(), std::strerror(errno));
    if (::rename(w.bin_tmp.c_str(), bin.c_str()) != 0)
      return fail(GC_ERROR_INTERNAL, "%s: cannot move %s to %s: %s", api, w.bin_tmp.c_str(), bin.c_str(),
                  std::strerror(errno));
    w.bin_tmp.clear();
    if (::rename(w.idx_tmp.c_str(), idx.c_str()) != 0)
      return fail(GC_ERROR_INTERNAL, "%s: cannot move %s to %s: %s", api, w.idx_tmp.c_str(), idx.c_str(),
                  std::strerror(errno));
    w.finalized = true;
    return GC_OK;
  });
}

extern "C" void gc_indexed_writer_close(gc_indexed_writer* writer) { delete writer; }

extern "C" gc_status gc_indexed_dataset_open(const char* prefix, gc_indexed_dataset** dataset) {
  constexpr const char* api = "gc_indexed_dataset_open";
  return guarded(api, [&]() -> gc_status {
    if (!prefix || !dataset) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: prefix and dataset must not be NULL", api);
    *dataset = nullptr;
    return open_dataset(api, prefix, dataset);
  });
}

extern "C" void gc_indexed_dataset_close(gc_indexed_dataset* dataset) { delete dataset; }

extern "C" gc_status gc_indexed_dataset_get_info(const gc_indexed_dataset* dataset, gc_indexed_dataset_info* info) {
  constexpr const char* api = "gc_indexed_dataset_get_info";
  return guarded(api, [&]() -> gc_status {
    if (!dataset || !info) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: dataset and info must not be NULL", api);
    const gc_indexed_dataset& d = *dataset;
    *info = gc_indexed_dataset_info{d.dtype,     d.num_sequences,   d.num_document_indices,
                                    d.lengths,   d.pointers,        d.documents,
                                    d.bin_map.data, static_cast<int64_t>(d.bin_map.bytes)};
    return GC_OK;
  });
}

extern "C" gc_status gc_indexed_dataset_sequence(const gc_indexed_dataset* dataset, int64_t i, const void** tokens,
                                                 int64_t* length) {
  constexpr const char* api = "gc_indexed_dataset_sequence";
  clear_error();
  if (!dataset || !tokens || !length)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: dataset, tokens and length must not be NULL", api);
  if (i < 0 || i >= dataset->num_sequences)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: sequence %" PRId64 " is out of range for %s (%" PRId64 " sequences)",
                api, i, dataset->idx.c_str(), dataset->num_sequences);
  // Validated on open: pointer + length * item lies inside the mapped .bin.
  *tokens = dataset->bin_map.data + dataset->pointer(i);
  *length = dataset->length(i);
  return GC_OK;
}

extern "C" gc_status gc_indexed_dataset_check_vocab(const gc_indexed_dataset* dataset, int64_t vocab_size) {
  constexpr const char* api = "gc_indexed_dataset_check_vocab";
  return guarded(api, [&]() -> gc_status {
    if (!dataset) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: dataset is NULL", api);
    const gc_indexed_dataset& d = *dataset;
    GC_TRY(check_vocab_size(api, d.dtype, vocab_size));
    const int64_t item = static_cast<int64_t>(gc_indexed_dtype_size(d.dtype));
    int64_t value = 0;
    const int64_t at =
        first_outside_vocab(d.bin_map.data, d.dtype, static_cast<int64_t>(d.bin_map.bytes) / item, vocab_size, &value);
    if (at < 0) return GC_OK;
    // The sequence holding token `at`: the last one starting at or before its byte.
    int64_t lo = 0, hi = d.num_sequences - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (d.pointer(mid) <= at * item) lo = mid; else hi = mid - 1;
    }
    return fail(GC_ERROR_INVALID_ARGUMENT,
                "%s: %s: sequence %" PRId64 " has token %" PRId64 " at position %" PRId64
                ", outside the vocabulary [0, %" PRId64 ")",
                api, d.bin.c_str(), lo, value, at - d.pointer(lo) / item, vocab_size);
  });
}
