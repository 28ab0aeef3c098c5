// Shared pieces of the pybind11 module: tensor views built from Python, and failed
// statuses turned into gptcore.Error carrying gc_last_error().
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <stdexcept>

#include "gptcore/gptcore.h"

namespace py = pybind11;

namespace gc::bindings {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void check(gc_status status) {
  if (status != GC_OK) throw Error(gc_last_error());
}

using OptTensor = std::optional<gc_tensor>;

// An absent optional argument is a view with a NULL data pointer.
inline gc_tensor opt(const OptTensor& t) { return t ? *t : gc_tensor{}; }

inline void* stream_ptr(uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// Each releases the GIL around the C call.
using release_gil = py::call_guard<py::gil_scoped_release>;

void bind_layer_norm(py::module_& m);
void bind_cross_entropy(py::module_& m);
void bind_adamw(py::module_& m);
void bind_linear(py::module_& m);
void bind_attention(py::module_& m);
void bind_indexed_dataset(py::module_& m);
void bind_gpt_samples(py::module_& m);
void bind_comm(py::module_& m);
void bind_decode(py::module_& m);

}  // namespace gc::bindings
