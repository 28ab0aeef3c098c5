// AdamW on CUDA: a multi-tensor apply. Tensors are grouped by (param dtype, grad dtype) and
// handed to each launch in batches inside the kernel arguments: up to kMaxTensors tensors'
// pointers and scalars plus a block -> (tensor, chunk) table, so one launch covers many
// tensors with no device-side metadata and no host sync. With found_inf, every batch's
// check kernel runs first and the update kernels return early once the flag is set.
#include <type_traits>
#include <vector>

#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "ops/adamw/adamw.h"

namespace gc {
namespace {

constexpr int kMaxTensors = 24;
constexpr int kMaxBlocks = 320;
constexpr int64_t kChunk = 1 << 16;  // elements per block
constexpr int kThreads = 512;
constexpr int kVec = 4;  // elements per vector access (16 bytes of float32)

struct Batch {
  void* param[kMaxTensors];
  const void* grad[kMaxTensors];
  float* master[kMaxTensors];
  float* exp_avg[kMaxTensors];
  float* exp_avg_sq[kMaxTensors];
  int64_t numel[kMaxTensors];
  float lr[kMaxTensors];
  float weight_decay[kMaxTensors];
  float bias_correction1[kMaxTensors];
  float bias_correction2_sqrt[kMaxTensors];
  uint8_t aligned[kMaxTensors];  // every pointer allows kVec-wide accesses
  uint8_t block_tensor[kMaxBlocks];
  int32_t block_chunk[kMaxBlocks];
  int32_t num_tensors;
  int32_t num_blocks;
};
// The whole argument list (batch + scalars + found_inf) must stay under the 4 KB limit.
static_assert(sizeof(Batch) + 64 <= 4096, "Batch overflows the kernel parameter space");

__device__ __forceinline__ bool nonfinite(float x) { return !isfinite(x); }

template <class G>
__global__ void __launch_bounds__(kThreads) check_kernel(Batch b, float inv_grad_scale, int32_t* found_inf) {
  const int t = b.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(b.block_chunk[blockIdx.x]) * kChunk;
  const int64_t n = min(kChunk, b.numel[t] - begin);
  const G* grad = static_cast<const G*>(b.grad[t]) + begin;
  bool bad = false;
  if (b.aligned[t]) {
    const int64_t n_vec = n / kVec * kVec;
    for (int64_t i = threadIdx.x * kVec; i < n_vec; i += kThreads * kVec) {
      const Pack<G, kVec> g = load_pack<G, kVec>(grad + i);
#pragma unroll
      for (int k = 0; k < kVec; ++k) bad |= nonfinite(to_float(g.v[k]) * inv_grad_scale);
    }
    for (int64_t i = n_vec + threadIdx.x; i < n; i += kThreads) bad |= nonfinite(to_float(grad[i]) * inv_grad_scale);
  } else {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) bad |= nonfinite(to_float(grad[i]) * inv_grad_scale);
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *found_inf = 1;
}

template <class P, class G>
__global__ void __launch_bounds__(kThreads)
    update_kernel(Batch b, AdamWScalars s, const int32_t* found_inf) {
  constexpr bool kMaster = !std::is_same<P, float>::value;
  if (found_inf && *found_inf) return;
  const int t = b.block_tensor[blockIdx.x];
  const int64_t begin = static_cast<int64_t>(b.block_chunk[blockIdx.x]) * kChunk;
  const int64_t n = min(kChunk, b.numel[t] - begin);
  P* param = static_cast<P*>(b.param[t]) + begin;
  const G* grad = static_cast<const G*>(b.grad[t]) + begin;
  float* master = kMaster ? b.master[t] + begin : nullptr;
  float* m = b.exp_avg[t] + begin;
  float* v = b.exp_avg_sq[t] + begin;
  const float lr = b.lr[t], weight_decay = b.weight_decay[t];
  s.bias_correction1 = b.bias_correction1[t];
  s.bias_correction2_sqrt = b.bias_correction2_sqrt[t];
  int64_t i0 = 0;
  if (b.aligned[t]) {
    i0 = n / kVec * kVec;
    for (int64_t i = threadIdx.x * kVec; i < i0; i += kThreads * kVec) {
      const Pack<G, kVec> g = load_pack<G, kVec>(grad + i);
      Pack<float, kVec> mv = load_pack<float, kVec>(m + i), vv = load_pack<float, kVec>(v + i), w;
      if constexpr (kMaster) {
        w = load_pack<float, kVec>(master + i);
      } else {
        w = load_pack<float, kVec>(param + i);
      }
      Pack<P, kVec> out;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        w.v[k] = adamw_update(w.v[k], to_float(g.v[k]), mv.v[k], vv.v[k], lr, weight_decay, s);
        out.v[k] = from_float<P>(w.v[k]);
      }
      store_pack<float, kVec>(m + i, mv);
      store_pack<float, kVec>(v + i, vv);
      if constexpr (kMaster) store_pack<float, kVec>(master + i, w);
      store_pack<P, kVec>(param + i, out);
    }
  }
  for (int64_t i = i0 + threadIdx.x; i < n; i += kThreads) {
    const float w = adamw_update(kMaster ? master[i] : to_float(param[i]), to_float(grad[i]), m[i], v[i], lr,
                                 weight_decay, s);
    if constexpr (kMaster) master[i] = w;
    param[i] = from_float<P>(w);
  }
}

bool aligned_for(const void* p, size_t elem_bytes) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % (kVec * elem_bytes) == 0;
}

// Cuts the tensors with this (param, grad) dtype pair into batches of chunks.
std::vector<Batch> make_batches(const gc_adamw_params& p, int32_t param_dtype, int32_t grad_dtype) {
  std::vector<Batch> batches;
  Batch* b = nullptr;
  auto open = [&] {
    batches.emplace_back();
    b = &batches.back();
    b->num_tensors = 0;
    b->num_blocks = 0;
  };
  auto add_tensor = [&](const gc_adamw_tensor& t) {
    const int k = b->num_tensors++;
    const AdamWScalars s = adamw_scalars(p, t.step);
    b->param[k] = t.param;
    b->grad[k] = t.grad;
    b->master[k] = t.master;
    b->exp_avg[k] = t.exp_avg;
    b->exp_avg_sq[k] = t.exp_avg_sq;
    b->numel[k] = t.numel;
    b->lr[k] = t.lr;
    b->weight_decay[k] = t.weight_decay;
    b->bias_correction1[k] = s.bias_correction1;
    b->bias_correction2_sqrt[k] = s.bias_correction2_sqrt;
    b->aligned[k] = aligned_for(t.param, gc_dtype_size(t.param_dtype)) && aligned_for(t.grad, gc_dtype_size(t.grad_dtype)) &&
                    aligned_for(t.master, 4) && aligned_for(t.exp_avg, 4) && aligned_for(t.exp_avg_sq, 4);
  };
  for (int64_t i = 0; i < p.num_tensors; ++i) {
    const gc_adamw_tensor& t = p.tensors[i];
    if (t.numel == 0 || t.param_dtype != param_dtype || t.grad_dtype != grad_dtype) continue;
    if (!b || b->num_tensors == kMaxTensors || b->num_blocks == kMaxBlocks) open();
    add_tensor(t);
    const int64_t chunks = (t.numel + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      if (b->num_blocks == kMaxBlocks) {  // continue this tensor in a fresh batch
        open();
        add_tensor(t);
      }
      b->block_tensor[b->num_blocks] = static_cast<uint8_t>(b->num_tensors - 1);
      b->block_chunk[b->num_blocks] = static_cast<int32_t>(c);
      ++b->num_blocks;
    }
  }
  return batches;
}

// found_inf and the first param must be memory of the device the call names.
gc_status check_pointer(const void* ptr, const char* name, int device_index) {
  if (!ptr) return GC_OK;
  cudaPointerAttributes attr;
  GC_CUDA_TRY(cudaPointerGetAttributes(&attr, ptr));
  const bool on_device = attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  if (!on_device || attr.device != device_index)
    return fail(GC_ERROR_DEVICE, "gc_adamw_step: %s is not memory of cuda:%d; pass tensors (and found_inf) on that device",
                name, device_index);
  return GC_OK;
}

}  // namespace

gc_status adamw_step_cuda(const gc_adamw_params& p, void* stream) {
  DeviceGuard guard(p.device_index);
  GC_CUDA_TRY(guard.status());
  GC_TRY(check_pointer(p.found_inf, "found_inf", p.device_index));
  for (int64_t i = 0; i < p.num_tensors; ++i) {
    if (p.tensors[i].numel == 0) continue;
    GC_TRY(check_pointer(p.tensors[i].param, "tensors[i].param (the first nonempty one)", p.device_index));
    break;
  }
  struct Launch {
    int32_t param_dtype, grad_dtype;
    std::vector<Batch> batches;
  };
  std::vector<Launch> launches;
  for (int32_t pd : {GC_FLOAT32, GC_FLOAT16, GC_BFLOAT16})
    for (int32_t gd : {GC_FLOAT32, GC_FLOAT16, GC_BFLOAT16}) {
      std::vector<Batch> batches = make_batches(p, pd, gd);
      if (!batches.empty()) launches.push_back(Launch{pd, gd, std::move(batches)});
    }
  cudaStream_t s = as_stream(stream);
  const AdamWScalars scalars = adamw_scalars(p, 1);  // the bias corrections come per tensor from the batch
  if (p.found_inf) {
    for (const Launch& l : launches)
      GC_TRY(GC_FLOAT_SWITCH(l.grad_dtype, G, [&] {
        for (const Batch& b : l.batches) {
          check_kernel<G><<<b.num_blocks, kThreads, 0, s>>>(b, p.inv_grad_scale, p.found_inf);
          GC_TRY(check_launch("adamw check_kernel"));
        }
        return GC_OK;
      }));
  }
  for (const Launch& l : launches)
    GC_TRY(GC_FLOAT_SWITCH(l.param_dtype, P, [&] {
      return GC_FLOAT_SWITCH(l.grad_dtype, G, [&] {
        for (const Batch& b : l.batches) {
          update_kernel<P, G><<<b.num_blocks, kThreads, 0, s>>>(b, scalars, p.found_inf);
          GC_TRY(check_launch("adamw update_kernel"));
        }
        return GC_OK;
      });
    }));
  return GC_OK;
}

}  // namespace gc
