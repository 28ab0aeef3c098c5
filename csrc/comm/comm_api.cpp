// Validation and backend dispatch for gc_comm_*.
#include "comm/comm.h"
#include "common/check.h"
#include "common/error.h"
#include "info/info.h"

namespace gc {
namespace {

const char* backend_name(const gc_comm& comm) { return comm.backend == GC_COMM_NCCL ? "NCCL" : "single"; }

gc_status check_comm(const char* api, const gc_comm* comm) {
  if (!comm)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: comm is NULL; create one with gc_comm_init_nccl or gc_comm_init_single",
                api);
  return GC_OK;
}

gc_status check_tensor_ptr(const char* api, const gc_tensor* t, const char* name) {
  if (!t) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: '%s' is NULL", api, name);
  return GC_OK;
}

// No elements: torch gives such tensors a NULL data pointer, and every call on them is a no-op.
bool empty(const gc_tensor& t) { return t.ndim > 0 && t.ndim <= GC_MAX_DIMS && gc_tensor_numel(&t) == 0; }

// A view the backend can move: contiguous, a dtype NCCL has, on the communicator's device.
gc_status check_buffer(const char* api, const gc_comm& comm, const gc_tensor& t, const char* name) {
  gc_tensor probe = t;
  if (!present(probe) && empty(probe)) probe.data = &probe;  // memory is needed only for elements
  GC_TRY(check_view(api, probe, name));
  GC_TRY(check_dtype(api, t, name,
                     {GC_FLOAT32, GC_FLOAT16, GC_BFLOAT16, GC_FLOAT64, GC_INT32, GC_INT64, GC_UINT8, GC_INT8}));
  if (comm.backend != GC_COMM_NCCL) return GC_OK;
  if (t.device_type != GC_CUDA)
    return fail(GC_ERROR_DEVICE,
                "%s: '%s' is a CPU tensor but an NCCL communicator moves CUDA tensors; move it to cuda:%d (e.g. "
                "x.cuda(%d)), or use a single-process communicator for CPU tensors",
                api, name, comm.device, comm.device);
  if (t.device_index != comm.device)
    return fail(GC_ERROR_DEVICE, "%s: '%s' is on cuda:%d but the communicator was created on cuda:%d; move it there "
                "(e.g. x.to('cuda:%d'))", api, name, t.device_index, comm.device, comm.device);
  return GC_OK;
}

// send and recv of one call: both movable, on one device, of one dtype.
gc_status check_pair(const char* api, const gc_comm& comm, const gc_tensor* send, const gc_tensor* recv) {
  GC_TRY(check_tensor_ptr(api, send, "send"));
  GC_TRY(check_tensor_ptr(api, recv, "recv"));
  GC_TRY(check_buffer(api, comm, *send, "send"));
  GC_TRY(check_buffer(api, comm, *recv, "recv"));
  GC_TRY(check_same_device(api, *recv, "recv", *send, "send"));
  return check_same_dtype(api, *recv, "recv", *send, "send");
}

// numel(big) == world * numel(small), stated in terms of the call.
gc_status check_world_times(const char* api, const gc_comm& comm, const gc_tensor& big, const char* big_name,
                            const gc_tensor& small, const char* small_name, const char* meaning) {
  const int64_t have = gc_tensor_numel(&big), part = gc_tensor_numel(&small);
  if (have != comm.world * part)
    return fail(GC_ERROR_SHAPE,
                "%s: '%s' has %lld elements (shape %s) but needs world x numel(%s) = %d x %lld = %lld (%s)", api,
                big_name, (long long)have, shape_string(big).c_str(), small_name, comm.world, (long long)part,
                (long long)(comm.world * part), meaning);
  return GC_OK;
}

gc_status check_same_numel(const char* api, const gc_tensor& t, const char* name, const gc_tensor& ref,
                           const char* ref_name) {
  const int64_t n = gc_tensor_numel(&t), n_ref = gc_tensor_numel(&ref);
  if (n != n_ref)
    return fail(GC_ERROR_SHAPE, "%s: '%s' has %lld elements (shape %s) but '%s' has %lld (shape %s); they must match",
                api, name, (long long)n, shape_string(t).c_str(), ref_name, (long long)n_ref,
                shape_string(ref).c_str());
  return GC_OK;
}

gc_status check_op(const char* api, gc_reduce_op op) {
  const int code = static_cast<int>(op);
  if (code < GC_REDUCE_SUM || code > GC_REDUCE_PROD)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: unknown reduce op %d; expected GC_REDUCE_SUM, AVG, MAX, MIN or PROD",
                api, code);
  return GC_OK;
}

gc_status check_rank(const char* api, const gc_comm& comm, int r, const char* name) {
  if (r < 0 || r >= comm.world)
    return fail(GC_ERROR_INVALID_ARGUMENT, "%s: %s = %d is not a rank of this %s communicator (world %d: ranks 0..%d)",
                api, name, r, backend_name(comm), comm.world, comm.world - 1);
  return GC_OK;
}

#ifndef GPTCORE_WITH_NCCL
gc_status without_nccl(const char* api) {
  return fail(GC_ERROR_DEVICE,
              "%s: this gptcore was built without NCCL; rebuild with CUDA (nvcc on PATH) and NCCL (`pip install "
              "nvidia-nccl-cu13`), or use gc_comm_init_single for a single process",
              api);
}
#endif

}  // namespace
}  // namespace gc

using namespace gc;

extern "C" gc_status gc_comm_unique_id(gc_comm_id* out) {
  constexpr const char* api = "gc_comm_unique_id";
  return guarded(api, [&]() -> gc_status {
    if (!out) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: out is NULL", api);
#ifdef GPTCORE_WITH_NCCL
    return nccl_unique_id(api, out);
#else
    return without_nccl(api);
#endif
  });
}

extern "C" gc_status gc_comm_init_nccl(const gc_comm_id* id, int rank, int world, int device, gc_comm** out) {
  constexpr const char* api = "gc_comm_init_nccl";
  return guarded(api, [&]() -> gc_status {
    if (!id || !out) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: id and out must not be NULL", api);
    *out = nullptr;
    if (world < 1)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: world = %d; a communicator has at least one rank", api, world);
    if (rank < 0 || rank >= world)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: rank = %d is outside [0, world) = [0, %d)", api, rank, world);
#ifdef GPTCORE_WITH_NCCL
    int count = 0;
    GC_TRY(cuda_device_count(&count));
    if (device < 0 || device >= count)
      return fail(GC_ERROR_DEVICE, "%s: device = %d but %d CUDA device(s) are visible", api, device, count);
    return make_nccl_comm(api, *id, rank, world, device, out);
#else
    return without_nccl(api);
#endif
  });
}

extern "C" gc_status gc_comm_init_single(gc_comm** out) {
  constexpr const char* api = "gc_comm_init_single";
  return guarded(api, [&]() -> gc_status {
    if (!out) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: out is NULL", api);
    *out = nullptr;
    return make_single_comm(out);
  });
}

extern "C" gc_status gc_comm_destroy(gc_comm* comm) {
  constexpr const char* api = "gc_comm_destroy";
  return guarded(api, [&]() -> gc_status {
    if (!comm) return GC_OK;
    const gc_status status = comm->close(api);
    delete comm;
    return status;
  });
}

extern "C" gc_status gc_comm_rank(const gc_comm* comm, int* rank) {
  constexpr const char* api = "gc_comm_rank";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    if (!rank) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: rank is NULL", api);
    *rank = comm->rank;
    return GC_OK;
  });
}

extern "C" gc_status gc_comm_world(const gc_comm* comm, int* world) {
  constexpr const char* api = "gc_comm_world";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    if (!world) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: world is NULL", api);
    *world = comm->world;
    return GC_OK;
  });
}

extern "C" gc_status gc_comm_backend(const gc_comm* comm, gc_comm_backend_type* backend) {
  constexpr const char* api = "gc_comm_backend";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    if (!backend) return fail(GC_ERROR_INVALID_ARGUMENT, "%s: backend is NULL", api);
    *backend = comm->backend;
    return GC_OK;
  });
}

extern "C" gc_status gc_comm_all_reduce(gc_comm* comm, const gc_tensor* send, gc_tensor* recv, gc_reduce_op op,
                                        void* stream) {
  constexpr const char* api = "gc_comm_all_reduce";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    GC_TRY(check_pair(api, *comm, send, recv));
    GC_TRY(check_same_numel(api, *recv, "recv", *send, "send"));
    GC_TRY(check_op(api, op));
    if (empty(*recv)) return GC_OK;  // then every rank's is: the counts agree
    return comm->all_reduce(api, *send, *recv, op, stream);
  });
}

extern "C" gc_status gc_comm_all_gather(gc_comm* comm, const gc_tensor* send, gc_tensor* recv, void* stream) {
  constexpr const char* api = "gc_comm_all_gather";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    GC_TRY(check_pair(api, *comm, send, recv));
    GC_TRY(check_world_times(api, *comm, *recv, "recv", *send, "send",
                             "the ranks' 'send' buffers concatenated along dim 0"));
    if (empty(*send)) return GC_OK;
    return comm->all_gather(api, *send, *recv, stream);
  });
}

extern "C" gc_status gc_comm_reduce_scatter(gc_comm* comm, const gc_tensor* send, gc_tensor* recv, gc_reduce_op op,
                                            void* stream) {
  constexpr const char* api = "gc_comm_reduce_scatter";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    GC_TRY(check_pair(api, *comm, send, recv));
    GC_TRY(check_world_times(api, *comm, *send, "send", *recv, "recv", "one 'recv'-sized part per rank along dim 0"));
    GC_TRY(check_op(api, op));
    if (empty(*recv)) return GC_OK;
    return comm->reduce_scatter(api, *send, *recv, op, stream);
  });
}

extern "C" gc_status gc_comm_broadcast(gc_comm* comm, const gc_tensor* send, gc_tensor* recv, int root, void* stream) {
  constexpr const char* api = "gc_comm_broadcast";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    GC_TRY(check_rank(api, *comm, root, "root"));
    if (comm->rank != root) {
      GC_TRY(check_tensor_ptr(api, recv, "recv"));
      GC_TRY(check_buffer(api, *comm, *recv, "recv"));
      if (empty(*recv)) return GC_OK;
      return comm->broadcast(api, nullptr, *recv, root, stream);
    }
    if (!send || (!present(*send) && !empty(*send)))
      return fail(GC_ERROR_INVALID_ARGUMENT,
                  "%s: 'send' is required on the root (rank %d); pass the tensor to broadcast", api, root);
    GC_TRY(check_pair(api, *comm, send, recv));
    GC_TRY(check_same_numel(api, *recv, "recv", *send, "send"));
    if (empty(*recv)) return GC_OK;
    return comm->broadcast(api, send, *recv, root, stream);
  });
}

extern "C" gc_status gc_comm_send(gc_comm* comm, const gc_tensor* tensor, int peer, void* stream) {
  constexpr const char* api = "gc_comm_send";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    GC_TRY(check_tensor_ptr(api, tensor, "tensor"));
    GC_TRY(check_buffer(api, *comm, *tensor, "tensor"));
    GC_TRY(check_rank(api, *comm, peer, "peer"));
    return comm->send(api, *tensor, peer, stream);
  });
}

extern "C" gc_status gc_comm_recv(gc_comm* comm, gc_tensor* tensor, int peer, void* stream) {
  constexpr const char* api = "gc_comm_recv";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    GC_TRY(check_tensor_ptr(api, tensor, "tensor"));
    GC_TRY(check_buffer(api, *comm, *tensor, "tensor"));
    GC_TRY(check_rank(api, *comm, peer, "peer"));
    return comm->recv(api, *tensor, peer, stream);
  });
}

extern "C" gc_status gc_comm_group_start(gc_comm* comm) {
  constexpr const char* api = "gc_comm_group_start";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    return comm->group_start(api);
  });
}

extern "C" gc_status gc_comm_group_end(gc_comm* comm) {
  constexpr const char* api = "gc_comm_group_end";
  return guarded(api, [&]() -> gc_status {
    GC_TRY(check_comm(api, comm));
    return comm->group_end(api);
  });
}
