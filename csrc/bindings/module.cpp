// gptcore._C: a thin pybind11 layer over the C API. No libtorch: tensors arrive as views
// (pointer, dtype code, device, shape, strides) that the Python layer builds.
#include <vector>

#include "bindings/bindings.h"

namespace gc::bindings {
namespace {

gc_tensor make_view(uintptr_t data, int32_t dtype, int32_t device_type, int32_t device_index,
                    const std::vector<int64_t>& shape, const std::vector<int64_t>& strides) {
  if (shape.size() > GC_MAX_DIMS) throw py::value_error("gptcore tensors have at most 8 dimensions");
  if (strides.size() != shape.size()) throw py::value_error("shape and strides must have the same length");
  gc_tensor t = gc_make_tensor(reinterpret_cast<void*>(data), dtype, device_type, device_index,
                               static_cast<int32_t>(shape.size()), shape.data());
  for (size_t i = 0; i < strides.size(); ++i) t.strides[i] = strides[i];
  return t;
}

py::dict build_info() {
  const gc_build_info* i = gc_get_build_info();
  py::dict d;
  d["version"] = i->version;
  d["cuda"] = bool(i->cuda);
  d["cuda_archs"] = i->cuda_archs;
  d["cuda_runtime_version"] = i->cuda_runtime_version;
  d["cublas_version"] = i->cublas_version;
  d["nccl_version"] = i->nccl_version;
  d["openmp"] = bool(i->openmp);
  d["note"] = i->note;
  return d;
}

int cuda_device_count() {
  int n = 0;
  check(gc_cuda_device_count(&n));
  return n;
}

py::dict cuda_device_properties(int index) {
  gc_device_properties p;
  check(gc_cuda_device_properties(index, &p));
  py::dict d;
  d["name"] = std::string(p.name);
  d["capability"] = py::make_tuple(p.major, p.minor);
  d["multiprocessors"] = p.multiprocessors;
  d["total_memory"] = p.total_memory;
  return d;
}

}  // namespace
}  // namespace gc::bindings

PYBIND11_MODULE(_C, m) {
  using namespace gc::bindings;
  m.doc() = "gptcore's torch-free C++/CUDA core";
  py::register_exception<Error>(m, "Error", PyExc_RuntimeError);

  py::class_<gc_tensor>(m, "Tensor", "A non-owning view of memory the caller keeps alive")
      .def(py::init(&make_view), py::arg("data"), py::arg("dtype"), py::arg("device_type"), py::arg("device_index"),
           py::arg("shape"), py::arg("strides"))
      .def_property_readonly("ndim", [](const gc_tensor& t) { return t.ndim; })
      .def_property_readonly("shape", [](const gc_tensor& t) { return std::vector<int64_t>(t.shape, t.shape + t.ndim); });

  py::module_ dtypes = m.def_submodule("dtype", "fixed dtype codes");
  for (auto [name, code] : {std::pair{"float32", GC_FLOAT32}, {"float16", GC_FLOAT16}, {"bfloat16", GC_BFLOAT16},
                            {"float64", GC_FLOAT64}, {"int32", GC_INT32}, {"int64", GC_INT64}, {"uint16", GC_UINT16},
                            {"uint8", GC_UINT8}, {"int8", GC_INT8}})
    dtypes.attr(name) = int(code);
  m.attr("CPU") = int(GC_CPU);
  m.attr("CUDA") = int(GC_CUDA);

  m.def("build_info", &build_info);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_device_properties", &cuda_device_properties, py::arg("index"));

  bind_layer_norm(m);
  bind_cross_entropy(m);
  bind_adamw(m);
  bind_linear(m);
  bind_attention(m);
  bind_indexed_dataset(m);
  bind_gpt_samples(m);
  bind_comm(m);
  bind_decode(m);
}
