#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings/bindings.h"

namespace gc::bindings {
namespace {

// A gc_gpt_model with the layer array it points to (the tensors stay owned by Python).
struct GptModel {
  gc_gpt_model model{};
  std::vector<gc_gpt_layer> layers;
};

}  // namespace

void bind_decode(py::module_& m) {
  py::class_<gc_dense>(m, "Dense",
                       "A weight [N, K] (float32, bfloat16 or int8 with per-row scales) and its bias; with "
                       "packed_shape=(N, K), weight is the 1-D result of dense_pack")
      .def(py::init([](gc_tensor weight, OptTensor scale, OptTensor bias, std::optional<std::pair<int64_t, int64_t>>
                                                                             packed_shape) {
             gc_dense d{weight, opt(scale), opt(bias), GC_DENSE_ROWS};
             if (packed_shape) {
               const auto [N, K] = *packed_shape;
               if (weight.ndim != 1 || weight.shape[0] != gc_dense_packed_numel(N, K))
                 throw py::value_error("a packed weight of [" + std::to_string(N) + ", " + std::to_string(K) +
                                       "] is 1-D with dense_packed_numel(N, K) elements (from dense_pack)");
               const int64_t shape[2] = {N, K};
               d.weight = gc_make_tensor(weight.data, weight.dtype, weight.device_type, weight.device_index, 2, shape);
               d.layout = GC_DENSE_PACKED;
             }
             return d;
           }),
           py::arg("weight"), py::arg("scale"), py::arg("bias"), py::arg("packed_shape") = py::none());
  py::class_<gc_gpt_layer>(m, "GptLayer")
      .def(py::init([](gc_tensor ln_1_weight, OptTensor ln_1_bias, gc_dense attn_qkv, gc_dense attn_proj,
                       gc_tensor ln_2_weight, OptTensor ln_2_bias, gc_dense mlp_fc, gc_dense mlp_proj) {
             return gc_gpt_layer{ln_1_weight, opt(ln_1_bias), attn_qkv, attn_proj, ln_2_weight, opt(ln_2_bias),
                                 mlp_fc,      mlp_proj};
           }),
           py::arg("ln_1_weight"), py::arg("ln_1_bias"), py::arg("attn_qkv"), py::arg("attn_proj"),
           py::arg("ln_2_weight"), py::arg("ln_2_bias"), py::arg("mlp_fc"), py::arg("mlp_proj"));
  py::class_<GptModel>(m, "GptModel")
      .def(py::init([](int32_t n_head, int64_t vocab_size, float layer_norm_eps, gc_tensor wte, gc_tensor wpe,
                       std::vector<gc_gpt_layer> layers, gc_tensor ln_f_weight, OptTensor ln_f_bias,
                       gc_dense lm_head) {
             GptModel g;
             g.layers = std::move(layers);
             g.model = gc_gpt_model{static_cast<int32_t>(g.layers.size()), n_head, vocab_size, layer_norm_eps, wte,
                                    wpe, nullptr, ln_f_weight, opt(ln_f_bias), lm_head};
             return g;
           }),
           py::arg("n_head"), py::arg("vocab_size"), py::arg("layer_norm_eps"), py::arg("wte"), py::arg("wpe"),
           py::arg("layers"), py::arg("ln_f_weight"), py::arg("ln_f_bias"), py::arg("lm_head"));

  m.def(
      "dense_fwd",
      [](const gc_dense& dense, gc_tensor x, gc_tensor y) { check(gc_dense_fwd(&dense, x, y)); }, py::arg("dense"),
      py::arg("x"), py::arg("y"), release_gil());
  m.def("dense_packed_numel", &gc_dense_packed_numel, py::arg("n"), py::arg("k"));
  m.def(
      "dense_pack", [](gc_tensor weight, gc_tensor packed) { check(gc_dense_pack(weight, packed)); },
      py::arg("weight"), py::arg("packed"), release_gil());
  // The step's small integer arrays come as Python lists (four tensors and their views a step cost
  // tens of microseconds: a few percent of an int8 decode step of GPT-2).
  m.def(
      "gpt_decode",
      [](GptModel& g, gc_tensor k_cache, gc_tensor v_cache, std::vector<int32_t> tokens,
         std::vector<int32_t> seq_slot, std::vector<int32_t> seq_start, std::vector<int32_t> seq_len,
         gc_tensor logits, bool every_position) {
        g.model.layers = g.layers.data();  // set here: the object may have moved since it was built
        auto ints = [](std::vector<int32_t>& v) {
          const int64_t n = static_cast<int64_t>(v.size());
          return gc_make_tensor(v.data(), GC_INT32, GC_CPU, 0, 1, &n);
        };
        const gc_gpt_decode_params p{&g.model,       k_cache,          v_cache,         ints(tokens), ints(seq_slot),
                                     ints(seq_start), ints(seq_len), logits, every_position};
        check(gc_gpt_decode(&p));
      },
      py::arg("model"), py::arg("k_cache"), py::arg("v_cache"), py::arg("tokens"), py::arg("seq_slot"),
      py::arg("seq_start"), py::arg("seq_len"), py::arg("logits"), py::arg("every_position"), release_gil());
  m.attr("DENSE_STREAM_ROWS") = GC_DENSE_STREAM_ROWS;
}

}  // namespace gc::bindings
