// gptcore._C.IndexedReader / IndexedWriter: the indexed dataset's C API with numpy views.
// Every array a reader hands out points into its mapped files, read-only, and holds the
// reader object as its base so the mapping outlives the array.
#include <pybind11/numpy.h>

#include <memory>
#include <string>

#include "bindings/bindings.h"

namespace gc::bindings {
namespace {

// Megatron's dtype codes as numpy type strings (little-endian).
const char* numpy_type(int32_t code) {
  static constexpr const char* types[] = {"", "u1", "i1", "<i2", "<i4", "<i8", "<f8", "<f4", "<u2"};
  return code >= 1 && code <= 8 ? types[code] : "";
}

// A read-only 1-D view of n elements at `data`, kept alive by `owner`.
py::array view(const py::dtype& dtype, const void* data, int64_t n, const py::object& owner) {
  py::array a(dtype, {static_cast<py::ssize_t>(n)}, {static_cast<py::ssize_t>(dtype.itemsize())}, data, owner);
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

struct Reader {
  std::unique_ptr<gc_indexed_dataset, void (*)(gc_indexed_dataset*)> dataset{nullptr, gc_indexed_dataset_close};
  gc_indexed_dataset_info info{};
  py::dtype dtype;

  explicit Reader(const std::string& prefix) {
    gc_indexed_dataset* d = nullptr;
    gc_status status;
    {
      py::gil_scoped_release release;
      status = gc_indexed_dataset_open(prefix.c_str(), &d);
    }
    check(status);
    dataset.reset(d);
    check(gc_indexed_dataset_get_info(d, &info));
    dtype = py::dtype(numpy_type(info.dtype));
  }

  // Tokens [offset, offset + length) of sequence i; i may count from the end, length -1 means "to the end".
  py::array sequence(const py::object& self, int64_t i, int64_t offset, int64_t length) const {
    const int64_t n = info.num_sequences;
    if (i < -n || i >= n) throw py::index_error("sequence " + std::to_string(i) + " is out of range for " + std::to_string(n) + " sequences");
    if (i < 0) i += n;
    const void* tokens = nullptr;
    int64_t size = 0;
    check(gc_indexed_dataset_sequence(dataset.get(), i, &tokens, &size));
    if (offset < 0 || offset > size)
      throw py::index_error("offset " + std::to_string(offset) + " is outside sequence " + std::to_string(i) +
                            " of " + std::to_string(size) + " tokens");
    if (length < 0) length = size - offset;
    if (offset + length > size)
      throw py::index_error("tokens [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
                            ") run past sequence " + std::to_string(i) + " of " + std::to_string(size) + " tokens");
    return view(dtype, static_cast<const char*>(tokens) + offset * dtype.itemsize(), length, self);
  }
};

struct Writer {
  std::unique_ptr<gc_indexed_writer, void (*)(gc_indexed_writer*)> writer{nullptr, gc_indexed_writer_close};
  int32_t dtype_code;

  Writer(const std::string& prefix, int32_t dtype, int64_t vocab_size) : dtype_code(dtype) {
    gc_indexed_writer* w = nullptr;
    check(gc_indexed_writer_open(prefix.c_str(), dtype, vocab_size, &w));
    writer.reset(w);
  }

  gc_indexed_writer* get() const {
    if (!writer) throw Error("the indexed dataset writer is closed");
    return writer.get();
  }

  // A contiguous array of the writer's dtype (the Python layer converts).
  const void* tokens(const py::array& a) const {
    if (a.ndim() != 1 || !(a.flags() & py::array::c_style) ||
        !a.dtype().is(py::dtype(numpy_type(dtype_code))))
      throw py::value_error(std::string("tokens must be a contiguous 1-D array of numpy dtype '") +
                            numpy_type(dtype_code) + "'");
    return a.data();
  }
};

}  // namespace

void bind_indexed_dataset(py::module_& m) {
  m.def("indexed_dtype_size", &gc_indexed_dtype_size, py::arg("dtype_code"));

  py::class_<Reader>(m, "IndexedReader", "A validated, memory-mapped Megatron .bin/.idx pair")
      .def(py::init<const std::string&>(), py::arg("prefix"))
      .def_property_readonly("dtype_code", [](const Reader& r) { return r.info.dtype; })
      .def_property_readonly("dtype", [](const Reader& r) { return r.dtype; })
      .def_property_readonly("num_sequences", [](const Reader& r) { return r.info.num_sequences; })
      .def_property_readonly("num_document_indices", [](const Reader& r) { return r.info.num_document_indices; })
      .def_property_readonly("sequence_lengths",
                             [](py::object self) {
                               const Reader& r = self.cast<const Reader&>();
                               return view(py::dtype("<i4"), r.info.sequence_lengths, r.info.num_sequences, self);
                             })
      .def_property_readonly("sequence_pointers",
                             [](py::object self) {
                               const Reader& r = self.cast<const Reader&>();
                               return view(py::dtype("<i8"), r.info.sequence_pointers, r.info.num_sequences, self);
                             })
      .def_property_readonly("document_indices",
                             [](py::object self) {
                               const Reader& r = self.cast<const Reader&>();
                               return view(py::dtype("<i8"), r.info.document_indices, r.info.num_document_indices,
                                           self);
                             })
      .def_property_readonly("tokens",
                             [](py::object self) {
                               const Reader& r = self.cast<const Reader&>();
                               return view(r.dtype, r.info.tokens, r.info.token_bytes / r.dtype.itemsize(), self);
                             })
      .def(
          "sequence",
          [](py::object self, int64_t i, int64_t offset, int64_t length) {
            return self.cast<const Reader&>().sequence(self, i, offset, length);
          },
          py::arg("i"), py::arg("offset") = 0, py::arg("length") = -1)
      .def(
          "check_vocab",
          [](const Reader& r, int64_t vocab_size) { check(gc_indexed_dataset_check_vocab(r.dataset.get(), vocab_size)); },
          py::arg("vocab_size"), release_gil());

  py::class_<Writer>(m, "IndexedWriter", "Writes a Megatron .bin/.idx pair under temporary names until finalize")
      .def(py::init<const std::string&, int32_t, int64_t>(), py::arg("prefix"), py::arg("dtype_code"),
           py::arg("vocab_size") = 0)
      .def(
          "add_sequence",
          [](const Writer& w, const py::array& tokens) {
            check(gc_indexed_writer_add_sequence(w.get(), w.tokens(tokens), tokens.size()));
          },
          py::arg("tokens"))
      .def("end_document", [](const Writer& w) { check(gc_indexed_writer_end_document(w.get())); })
      .def(
          "add_document",
          [](const Writer& w, const py::array& tokens, const py::array_t<int64_t, py::array::c_style>& lengths) {
            check(gc_indexed_writer_add_document(w.get(), w.tokens(tokens), lengths.data(), lengths.size()));
          },
          py::arg("tokens"), py::arg("lengths"))
      .def(
          "merge", [](const Writer& w, const std::string& prefix) { check(gc_indexed_writer_merge(w.get(), prefix.c_str())); },
          py::arg("other_prefix"), release_gil())
      .def("finalize", [](const Writer& w) { check(gc_indexed_writer_finalize(w.get())); }, release_gil())
      .def("close", [](Writer& w) { w.writer.reset(); });
}

}  // namespace gc::bindings
