#include "bindings/bindings.h"

namespace gc::bindings {

void bind_linear(py::module_& m) {
  auto fwd_params = [](gc_tensor x, gc_tensor weight, OptTensor bias, OptTensor residual, gc_tensor y,
                       OptTensor pre_act, int32_t activation) {
    return gc_linear_fwd_params{x, weight, opt(bias), opt(residual), y, opt(pre_act), activation};
  };
  m.def(
      "linear_fwd_workspace_size",
      [fwd_params](gc_tensor x, gc_tensor weight, OptTensor bias, OptTensor residual, gc_tensor y, OptTensor pre_act,
                   int32_t activation) {
        const gc_linear_fwd_params p = fwd_params(x, weight, bias, residual, y, pre_act, activation);
        size_t bytes = 0;
        check(gc_linear_fwd_workspace_size(&p, &bytes));
        return bytes;
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("residual"), py::arg("y"), py::arg("pre_act"),
      py::arg("activation"), release_gil());
  m.def(
      "linear_fwd",
      [fwd_params](gc_tensor x, gc_tensor weight, OptTensor bias, OptTensor residual, gc_tensor y, OptTensor pre_act,
                   int32_t activation, uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
        const gc_linear_fwd_params p = fwd_params(x, weight, bias, residual, y, pre_act, activation);
        check(gc_linear_fwd(&p, reinterpret_cast<void*>(workspace), workspace_bytes, stream_ptr(stream)));
      },
      py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("residual"), py::arg("y"), py::arg("pre_act"),
      py::arg("activation"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"), release_gil());

  auto bwd_params = [](gc_tensor dy, gc_tensor x, gc_tensor weight, OptTensor pre_act, OptTensor dx,
                       OptTensor dweight, OptTensor dbias, int32_t activation) {
    return gc_linear_bwd_params{dy, x, weight, opt(pre_act), opt(dx), opt(dweight), opt(dbias), activation};
  };
  m.def(
      "linear_bwd_workspace_size",
      [bwd_params](gc_tensor dy, gc_tensor x, gc_tensor weight, OptTensor pre_act, OptTensor dx, OptTensor dweight,
                   OptTensor dbias, int32_t activation) {
        const gc_linear_bwd_params p = bwd_params(dy, x, weight, pre_act, dx, dweight, dbias, activation);
        size_t bytes = 0;
        check(gc_linear_bwd_workspace_size(&p, &bytes));
        return bytes;
      },
      py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("pre_act"), py::arg("dx"), py::arg("dweight"),
      py::arg("dbias"), py::arg("activation"), release_gil());
  m.def(
      "linear_bwd",
      [bwd_params](gc_tensor dy, gc_tensor x, gc_tensor weight, OptTensor pre_act, OptTensor dx, OptTensor dweight,
                   OptTensor dbias, int32_t activation, uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
        const gc_linear_bwd_params p = bwd_params(dy, x, weight, pre_act, dx, dweight, dbias, activation);
        check(gc_linear_bwd(&p, reinterpret_cast<void*>(workspace), workspace_bytes, stream_ptr(stream)));
      },
      py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("pre_act"), py::arg("dx"), py::arg("dweight"),
      py::arg("dbias"), py::arg("activation"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
      release_gil());
  m.attr("ACTIVATION_NONE") = int(GC_ACTIVATION_NONE);
  m.attr("ACTIVATION_GELU_TANH") = int(GC_ACTIVATION_GELU_TANH);
}

}  // namespace gc::bindings
