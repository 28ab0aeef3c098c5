// Internal: the communicator behind the opaque gc_comm*, one subclass per backend.
// comm_api.cpp validates every call before it reaches a backend, so the methods receive
// contiguous tensors of a supported dtype on a device the backend takes, with element counts
// consistent with the world size, and ranks in [0, world).
#pragma once

#include <cstddef>

#include "gptcore/comm.h"

struct gc_comm {
  gc_comm(gc_comm_backend_type backend, int rank, int world, int device)
      : backend(backend), rank(rank), world(world), device(device) {}
  virtual ~gc_comm() = default;
  gc_comm(const gc_comm&) = delete;
  gc_comm& operator=(const gc_comm&) = delete;

  const gc_comm_backend_type backend;
  const int rank;
  const int world;
  const int device;  // the CUDA ordinal of an NCCL communicator; -1 for the single backend

  // `api` names the public call in failure messages.
  virtual gc_status all_reduce(const char* api, const gc_tensor& send, const gc_tensor& recv, gc_reduce_op op,
                               void* stream) = 0;
  virtual gc_status all_gather(const char* api, const gc_tensor& send, const gc_tensor& recv, void* stream) = 0;
  virtual gc_status reduce_scatter(const char* api, const gc_tensor& send, const gc_tensor& recv, gc_reduce_op op,
                                   void* stream) = 0;
  // `send` is NULL on ranks other than the root.
  virtual gc_status broadcast(const char* api, const gc_tensor* send, const gc_tensor& recv, int root,
                              void* stream) = 0;
  virtual gc_status send(const char* api, const gc_tensor& tensor, int peer, void* stream) = 0;
  virtual gc_status recv(const char* api, const gc_tensor& tensor, int peer, void* stream) = 0;
  virtual gc_status group_start(const char* api) = 0;
  virtual gc_status group_end(const char* api) = 0;
  // Releases the backend's resources before the object is deleted, reporting failures.
  virtual gc_status close(const char* api) { return GC_OK; }
};

namespace gc {

gc_status make_single_comm(gc_comm** out);

#ifdef GPTCORE_WITH_NCCL
gc_status nccl_unique_id(const char* api, gc_comm_id* out);
// `device` is a visible CUDA ordinal; rank and world are checked.
gc_status make_nccl_comm(const char* api, const gc_comm_id& id, int rank, int world, int device, gc_comm** out);
#endif

#ifdef GPTCORE_WITH_CUDA
// Copies `bytes` from src to dst (both on CUDA device `device`, or host memory) in the order of
// `stream`.
gc_status copy_async_cuda(const char* api, void* dst, const void* src, size_t bytes, int device, void* stream);
#endif

}  // namespace gc
