#include "bindings/bindings.h"

namespace gc::bindings {

void bind_attention(py::module_& m) {
  m.def(
      "attention_fwd",
      [](gc_tensor q, gc_tensor k, gc_tensor v, gc_tensor out, gc_tensor lse, float scale, bool causal,
         float dropout_p, uint64_t seed, uint64_t offset, uintptr_t stream, OptTensor cu_seqlens) {
        const gc_attention_fwd_params p{q, k, v, out, lse, scale, causal, dropout_p, seed, offset, opt(cu_seqlens)};
        check(gc_attention_fwd(&p, stream_ptr(stream)));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("scale"), py::arg("causal"),
      py::arg("dropout_p"), py::arg("seed"), py::arg("offset"), py::arg("stream"), py::arg("cu_seqlens") = py::none(),
      release_gil());

  auto params = [](gc_tensor q, gc_tensor k, gc_tensor v, gc_tensor out, gc_tensor dout, gc_tensor lse, gc_tensor dq,
                   gc_tensor dk, gc_tensor dv, float scale, bool causal, float dropout_p, uint64_t seed,
                   uint64_t offset, const OptTensor& cu_seqlens) {
    return gc_attention_bwd_params{q,     k,      v,         out,  dout,   lse, dq, dk, dv,
                                   scale, causal, dropout_p, seed, offset, opt(cu_seqlens)};
  };
  m.def(
      "attention_bwd_workspace_size",
      [params](gc_tensor q, gc_tensor k, gc_tensor v, gc_tensor out, gc_tensor dout, gc_tensor lse, gc_tensor dq,
               gc_tensor dk, gc_tensor dv, float scale, bool causal, float dropout_p, uint64_t seed, uint64_t offset,
               OptTensor cu_seqlens) {
        const gc_attention_bwd_params p =
            params(q, k, v, out, dout, lse, dq, dk, dv, scale, causal, dropout_p, seed, offset, cu_seqlens);
        size_t bytes = 0;
        check(gc_attention_bwd_workspace_size(&p, &bytes));
        return bytes;
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("dq"),
      py::arg("dk"), py::arg("dv"), py::arg("scale"), py::arg("causal"), py::arg("dropout_p"), py::arg("seed"),
      py::arg("offset"), py::arg("cu_seqlens") = py::none(), release_gil());
  m.def(
      "attention_bwd",
      [params](gc_tensor q, gc_tensor k, gc_tensor v, gc_tensor out, gc_tensor dout, gc_tensor lse, gc_tensor dq,
               gc_tensor dk, gc_tensor dv, float scale, bool causal, float dropout_p, uint64_t seed, uint64_t offset,
               uintptr_t workspace, size_t workspace_bytes, uintptr_t stream, OptTensor cu_seqlens) {
        const gc_attention_bwd_params p =
            params(q, k, v, out, dout, lse, dq, dk, dv, scale, causal, dropout_p, seed, offset, cu_seqlens);
        check(gc_attention_bwd(&p, reinterpret_cast<void*>(workspace), workspace_bytes, stream_ptr(stream)));
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("dq"),
      py::arg("dk"), py::arg("dv"), py::arg("scale"), py::arg("causal"), py::arg("dropout_p"), py::arg("seed"),
      py::arg("offset"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"),
      py::arg("cu_seqlens") = py::none(), release_gil());
  m.def(
      "attention_decode_workspace_size",
      [](gc_tensor q, gc_tensor k_cache, gc_tensor v_cache, gc_tensor cache_lens, gc_tensor out, float scale,
         bool causal) {
        const gc_attention_decode_params p{q, k_cache, v_cache, cache_lens, out, scale, causal};
        size_t bytes = 0;
        check(gc_attention_decode_workspace_size(&p, &bytes));
        return bytes;
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cache_lens"), py::arg("out"), py::arg("scale"),
      py::arg("causal"), release_gil());
  m.def(
      "attention_decode",
      [](gc_tensor q, gc_tensor k_cache, gc_tensor v_cache, gc_tensor cache_lens, gc_tensor out, float scale,
         bool causal, uintptr_t workspace, size_t workspace_bytes, uintptr_t stream) {
        const gc_attention_decode_params p{q, k_cache, v_cache, cache_lens, out, scale, causal};
        check(gc_attention_decode(&p, reinterpret_cast<void*>(workspace), workspace_bytes, stream_ptr(stream)));
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cache_lens"), py::arg("out"), py::arg("scale"),
      py::arg("causal"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("stream"), release_gil());
  m.def("dropout_uniform", &gc_dropout_uniform, "The uniform draw in [0, 1) behind dropout element n",
        py::arg("seed"), py::arg("offset"), py::arg("n"));
  m.def(
      "dropout_uniform_fill",
      [](gc_tensor out, uint64_t seed, uint64_t offset) {
        if (out.device_type != GC_CPU || out.dtype != GC_FLOAT32 || !gc_tensor_is_contiguous(&out))
          throw py::value_error("dropout_uniform_fill: 'out' must be a contiguous float32 CPU tensor");
        float* data = static_cast<float*>(out.data);
        const int64_t n = gc_tensor_numel(&out);
        for (int64_t i = 0; i < n; ++i) data[i] = gc_dropout_uniform(seed, offset, static_cast<uint64_t>(i));
      },
      "out[n] = dropout_uniform(seed, offset, n) for every element n of a contiguous float32 CPU tensor (for tests)",
      py::arg("out"), py::arg("seed"), py::arg("offset"), release_gil());
}

}  // namespace gc::bindings
