// The GPT index builders over numpy arrays: inputs are viewed in place (the C API checks
// their dtypes), outputs are allocated here.
#include <pybind11/numpy.h>

#include <vector>

#include "bindings/bindings.h"

namespace gc::bindings {
namespace {

// The gptcore code of a numpy dtype; -1 (rejected by the C API) for the ones it has no code for.
int32_t dtype_code(const py::dtype& dt) {
  const char kind = dt.kind();
  const auto bytes = dt.itemsize();
  if (kind == 'i') return bytes == 4 ? GC_INT32 : bytes == 8 ? GC_INT64 : bytes == 1 ? GC_INT8 : -1;
  if (kind == 'u') return bytes == 1 ? GC_UINT8 : bytes == 2 ? GC_UINT16 : -1;
  if (kind == 'f') return bytes == 4 ? GC_FLOAT32 : bytes == 8 ? GC_FLOAT64 : -1;
  return -1;
}

gc_tensor host_view(const py::array& a) {
  if (a.ndim() > GC_MAX_DIMS) throw py::value_error("gptcore arrays have at most 8 dimensions");
  const std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
  gc_tensor t = gc_make_tensor(const_cast<void*>(a.data()), dtype_code(a.dtype()), GC_CPU, 0,
                               static_cast<int32_t>(a.ndim()), shape.data());
  // Byte strides that are no multiple of the item size leave a stride the layout check rejects.
  for (py::ssize_t i = 0; i < a.ndim(); ++i)
    if (a.shape(i) > 1) t.strides[i] = a.strides(i) % a.itemsize() == 0 ? a.strides(i) / a.itemsize() : -1;
  return t;
}

gc_gpt_sample_index_params sample_params(const py::array& sizes, const py::array& doc_index, int64_t seq_len) {
  gc_gpt_sample_index_params p{};
  p.sizes = host_view(sizes);
  p.doc_index = host_view(doc_index);
  p.seq_len = seq_len;
  return p;
}

}  // namespace

void bind_gpt_samples(py::module_& m) {
  m.def(
      "gpt_sample_index_count",
      [](const py::array& sizes, const py::array& doc_index, int64_t seq_len) {
        const gc_gpt_sample_index_params p = sample_params(sizes, doc_index, seq_len);
        int64_t n = 0;
        {
          py::gil_scoped_release release;
          check(gc_gpt_sample_index_count(&p, &n));
        }
        return n;
      },
      py::arg("sizes"), py::arg("doc_index"), py::arg("seq_len"),
      "Samples of seq_len + 1 tokens the documents hold, read in doc_index order");
  m.def(
      "gpt_sample_index",
      [](const py::array& sizes, const py::array& doc_index, int64_t seq_len, std::optional<int64_t> num_samples) {
        gc_gpt_sample_index_params p = sample_params(sizes, doc_index, seq_len);
        int64_t n = 0;
        if (num_samples) {
          if (*num_samples < 0) throw py::value_error("num_samples must be >= 0");
          n = *num_samples;
        } else {
          py::gil_scoped_release release;
          check(gc_gpt_sample_index_count(&p, &n));
        }
        py::array_t<int64_t> out({n + 1, int64_t{2}});
        const int64_t shape[2] = {n + 1, 2};
        p.sample_index = gc_make_tensor(out.mutable_data(), GC_INT64, GC_CPU, 0, 2, shape);
        {
          py::gil_scoped_release release;
          check(gc_gpt_sample_index(&p));
        }
        return out;
      },
      py::arg("sizes"), py::arg("doc_index"), py::arg("seq_len"), py::arg("num_samples") = py::none(),
      "int64 [num_samples + 1, 2] (doc_index position, token offset) of each sample's first token; all the "
      "samples the documents hold when num_samples is None");
  m.def(
      "gpt_blend_index",
      [](const py::array& weights, int64_t size) {
        if (size < 0) throw py::value_error("size must be >= 0");
        gc_gpt_blend_index_params p{};
        p.weights = host_view(weights);
        const bool small = p.weights.ndim == 1 && p.weights.shape[0] <= 256;
        py::array dataset_index = small ? py::array(py::array_t<uint8_t>(size)) : py::array(py::array_t<uint16_t>(size));
        py::array_t<int64_t> dataset_sample_index(size);
        p.dataset_index = host_view(dataset_index);
        p.dataset_sample_index = host_view(dataset_sample_index);
        {
          py::gil_scoped_release release;
          check(gc_gpt_blend_index(&p));
        }
        return py::make_tuple(dataset_index, dataset_sample_index);
      },
      py::arg("weights"), py::arg("size"),
      "(dataset_index uint8/uint16 [size], dataset_sample_index int64 [size]) of a deterministic weighted blend");
}

}  // namespace gc::bindings
