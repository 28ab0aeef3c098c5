#include <tuple>
#include <vector>

#include "bindings/bindings.h"

namespace gc::bindings {
namespace {

// (param, grad, master, exp_avg, exp_avg_sq, numel, param_dtype, grad_dtype, lr, weight_decay, step),
// pointers as ints (master 0 when absent).
using TensorTuple =
    std::tuple<uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t, int32_t, int32_t, float, float, int64_t>;

gc_adamw_tensor to_tensor(const TensorTuple& t) {
  const auto& [param, grad, master, exp_avg, exp_avg_sq, numel, param_dtype, grad_dtype, lr, weight_decay, step] = t;
  return gc_adamw_tensor{reinterpret_cast<void*>(param),       reinterpret_cast<const void*>(grad),
                         reinterpret_cast<float*>(master),     reinterpret_cast<float*>(exp_avg),
                         reinterpret_cast<float*>(exp_avg_sq), numel,
                         param_dtype,                          grad_dtype,
                         lr,                                   weight_decay,
                         step};
}

}  // namespace

void bind_adamw(py::module_& m) {
  m.def(
      "adamw_step",
      [](const std::vector<TensorTuple>& tensors, int32_t device_type, int32_t device_index, double beta1, double beta2,
         float eps, float inv_grad_scale, uintptr_t found_inf, uintptr_t stream) {
        std::vector<gc_adamw_tensor> list;
        list.reserve(tensors.size());
        for (const TensorTuple& t : tensors) list.push_back(to_tensor(t));
        const gc_adamw_params p{list.data(), static_cast<int64_t>(list.size()), device_type, device_index, beta1, beta2,
                                eps, inv_grad_scale, reinterpret_cast<int32_t*>(found_inf)};
        check(gc_adamw_step(&p, stream_ptr(stream)));
      },
      "One fused AdamW step over a list of tensor tuples (param, grad, master, exp_avg, exp_avg_sq, numel, "
      "param_dtype, grad_dtype, lr, weight_decay, step); pointers as ints, master 0 when absent",
      py::arg("tensors"), py::arg("device_type"), py::arg("device_index"), py::arg("beta1"), py::arg("beta2"),
      py::arg("eps"), py::arg("inv_grad_scale"), py::arg("found_inf"), py::arg("stream"), release_gil());
}

}  // namespace gc::bindings
