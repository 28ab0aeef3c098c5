#include "bindings/bindings.h"

namespace gc::bindings {

void bind_layer_norm(py::module_& m) {
  m.def(
      "layer_norm_fwd",
      [](gc_tensor x, OptTensor residual, gc_tensor weight, OptTensor bias, gc_tensor y, OptTensor sum, gc_tensor mean,
         gc_tensor rstd, float eps, uintptr_t stream) {
        const gc_layer_norm_fwd_params p{x, opt(residual), weight, opt(bias), y, opt(sum), mean, rstd, eps};
        check(gc_layer_norm_fwd(&p, stream_ptr(stream)));
      },
      py::arg("x"), py::arg("residual"), py::arg("weight"), py::arg("bias"), py::arg("y"), py::arg("sum"),
      py::arg("mean"), py::arg("rstd"), py::arg("eps"), py::arg("stream"), release_gil());

  auto params = [](gc_tensor dy, gc_tensor x, gc_tensor weight, gc_tensor mean, gc_tensor rstd, OptTensor dsum,
                   gc_tensor dx, gc_tensor dweight, OptTensor dbias) {
    return gc_layer_norm_bwd_params{dy, x, weight, mean, rstd, opt(dsum), dx, dweight, opt(dbias)};
  };
  m.def(
      "layer_norm_bwd_workspace_size",
      [params](gc_tensor dy, gc_tensor x, gc_tensor weight, gc_tensor mean, gc_tensor rstd, OptTensor dsum,
               gc_tensor dx, gc_tensor dweight, OptTensor dbias) {
        const gc_layer_norm_bwd_params p = params(dy, x, weight, mean, rstd, dsum, dx, dweight, dbias);
        size_t bytes = 0;
        check(gc_layer_norm_bwd_workspace_size(&p, &bytes));
        return bytes;
      },
      py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("dsum"), py::arg("dx"),
      py::arg("dweight"), py::arg("dbias"), release_gil());
  m.def(
      "layer_norm_bwd",
      [params](gc_tensor dy, gc_tensor x, gc_tensor weight, gc_tensor mean, gc_tensor rstd, OptTensor dsum,
               gc_tensor dx, gc_tensor dweight, OptTensor dbias, uintptr_t workspace, size_t workspace_bytes,
               uintptr_t stream) {
        const gc_layer_norm_bwd_params p = params(dy, x, weight, mean, rstd, dsum, dx, dweight, dbias);
        check(gc_layer_norm_bwd(&p, reinterpret_cast<void*>(workspace), workspace_bytes, stream_ptr(stream)));
      },
      py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("dsum"), py::arg("dx"),
      py::arg("dweight"), py::arg("dbias"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
      release_gil());
}

}  // namespace gc::bindings
