// gptcore's layer norm and attention forward as XLA FFI handlers (CPU custom calls for jax.ffi).
// Each handler views XLA's buffers as gc_tensors and calls gptcore's C API; a failed status becomes
// an ffi::Error carrying gc_last_error(), which JAX raises as a Python exception.
#include <cstdint>
#include <string>

#include "gptcore/gptcore.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using F32 = ffi::Buffer<ffi::F32>;
using F32Result = ffi::ResultBuffer<ffi::F32>;

// XLA hands custom calls dense row-major buffers: exactly a contiguous gc_tensor.
gc_tensor view(void* data, ffi::Span<const int64_t> dims) {
  return gc_make_tensor(data, GC_FLOAT32, GC_CPU, 0, static_cast<int32_t>(dims.size()), dims.begin());
}
gc_tensor view(const F32& buffer) { return view(buffer.untyped_data(), buffer.dimensions()); }
gc_tensor view(F32Result& buffer) { return view(buffer->untyped_data(), buffer->dimensions()); }

ffi::Error to_ffi(gc_status status) {
  if (status == GC_OK) return ffi::Error::Success();
  if (status == GC_ERROR_INTERNAL) return ffi::Error::Internal(gc_last_error());
  return ffi::Error::InvalidArgument(gc_last_error());
}

ffi::Error check_rank(ffi::Span<const int64_t> dims, const char* what) {
  if (dims.size() < 1 || dims.size() > GC_MAX_DIMS)
    return ffi::Error::InvalidArgument(std::string(what) + " must have 1 to 8 dimensions");
  return ffi::Error::Success();
}

// y = LayerNorm(x) * weight + bias over the last dimension; mean and rstd [N] are the per-row
// statistics the kernel writes (rows: every dimension of x but the last, flattened).
ffi::Error layer_norm(F32 x, F32 weight, F32 bias, F32Result y, F32Result mean, F32Result rstd, float eps) {
  if (ffi::Error e = check_rank(x.dimensions(), "x"); e.failure()) return e;
  gc_layer_norm_fwd_params p{};
  p.x = view(x);
  p.weight = view(weight);
  p.bias = view(bias);
  p.y = view(y);
  p.mean = view(mean);
  p.rstd = view(rstd);
  p.eps = eps;
  return to_ffi(gc_layer_norm_fwd(&p, nullptr));
}

// out = softmax(q k^T * scale [causal mask]) v over [B, H, T, D]; lse [B, H, T_q] the log-sum-exp.
ffi::Error attention(F32 q, F32 k, F32 v, F32Result out, F32Result lse, float scale, int32_t causal) {
  gc_attention_fwd_params p{};
  p.q = view(q);
  p.k = view(k);
  p.v = view(v);
  p.out = view(out);
  p.lse = view(lse);
  p.scale = scale;
  p.causal = causal;
  return to_ffi(gc_attention_fwd(&p, nullptr));
}

}  // namespace

// The exported handler symbols jax.ffi.register_ffi_target takes (through ctypes and jax.ffi.pycapsule).
XLA_FFI_DEFINE_HANDLER_SYMBOL(GptcoreLayerNorm, layer_norm,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // x [..., C]
                                  .Arg<F32>()  // weight [C]
                                  .Arg<F32>()  // bias [C]
                                  .Ret<F32>()  // y, like x
                                  .Ret<F32>()  // mean [N]
                                  .Ret<F32>()  // rstd [N]
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GptcoreAttention, attention,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // q [B, H, T_q, D]
                                  .Arg<F32>()  // k [B, H, T_k, D]
                                  .Arg<F32>()  // v [B, H, T_k, D]
                                  .Ret<F32>()  // out, like q
                                  .Ret<F32>()  // lse [B, H, T_q]
                                  .Attr<float>("scale")
                                  .Attr<int32_t>("causal"));
