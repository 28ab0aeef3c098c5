#include "bindings/bindings.h"

namespace gc::bindings {

void bind_cross_entropy(py::module_& m) {
  m.def(
      "cross_entropy_fwd",
      [](gc_tensor logits, gc_tensor target, gc_tensor lse, gc_tensor loss, OptTensor target_logit,
         int64_t vocab_start, int64_t vocab_total, int64_t ignore_index, uintptr_t stream) {
        const gc_cross_entropy_fwd_params p{logits,      target,      lse,         loss,
                                            opt(target_logit), vocab_start, vocab_total, ignore_index};
        check(gc_cross_entropy_fwd(&p, stream_ptr(stream)));
      },
      py::arg("logits"), py::arg("target"), py::arg("lse"), py::arg("loss"), py::arg("target_logit"),
      py::arg("vocab_start"), py::arg("vocab_total"), py::arg("ignore_index"), py::arg("stream"), release_gil());
  m.def(
      "cross_entropy_bwd",
      [](gc_tensor logits, gc_tensor target, gc_tensor lse, gc_tensor dloss, gc_tensor dlogits, int64_t vocab_start,
         int64_t vocab_total, int64_t ignore_index, uintptr_t stream) {
        const gc_cross_entropy_bwd_params p{logits, target, lse, dloss, dlogits, vocab_start, vocab_total, ignore_index};
        check(gc_cross_entropy_bwd(&p, stream_ptr(stream)));
      },
      py::arg("logits"), py::arg("target"), py::arg("lse"), py::arg("dloss"), py::arg("dlogits"),
      py::arg("vocab_start"), py::arg("vocab_total"), py::arg("ignore_index"), py::arg("stream"), release_gil());
}

}  // namespace gc::bindings
