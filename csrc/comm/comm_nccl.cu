// The NCCL backend: one ncclComm_t per gc_comm, blocking initialisation, every call queued on
// the caller's stream. Compiled in CUDA builds that found NCCL.
#ifdef GPTCORE_WITH_NCCL
#include <nccl.h>

#include <cstring>
#include <memory>

#include "comm/comm.h"
#include "common/cuda_utils.cuh"

namespace gc {
namespace {

static_assert(sizeof(ncclUniqueId) == sizeof(gc_comm_id), "gc_comm_id must hold an ncclUniqueId");

// `comm` adds NCCL's own account of the failure (it may be NULL before a communicator exists).
gc_status nccl_fail(const char* api, const char* call, ncclResult_t result, ncclComm_t comm) {
  const char* detail = ncclGetLastError(comm);
  return fail(GC_ERROR_CUDA, "%s: %s failed: %s%s%s", api, call, ncclGetErrorString(result),
              detail && *detail ? ": " : "", detail ? detail : "");
}

#define GC_NCCL_TRY(api, comm, expr)                                                         \
  do {                                                                                       \
    const ncclResult_t gc_nccl_result_ = (expr);                                             \
    if (gc_nccl_result_ != ncclSuccess) return nccl_fail(api, #expr, gc_nccl_result_, comm); \
  } while (0)

// The codes comm_api.cpp lets through.
ncclDataType_t nccl_type(int32_t dtype) {
  switch (dtype) {
    case GC_FLOAT16: return ncclFloat16;
    case GC_BFLOAT16: return ncclBfloat16;
    case GC_FLOAT64: return ncclFloat64;
    case GC_INT32: return ncclInt32;
    case GC_INT64: return ncclInt64;
    case GC_UINT8: return ncclUint8;
    case GC_INT8: return ncclInt8;
    default: return ncclFloat32;
  }
}

ncclRedOp_t nccl_op(gc_reduce_op op) {
  switch (op) {
    case GC_REDUCE_AVG: return ncclAvg;
    case GC_REDUCE_MAX: return ncclMax;
    case GC_REDUCE_MIN: return ncclMin;
    case GC_REDUCE_PROD: return ncclProd;
    default: return ncclSum;
  }
}

size_t count(const gc_tensor& t) { return static_cast<size_t>(gc_tensor_numel(&t)); }

// ncclCommDestroy is collective: it finalizes, waiting for the queued work and, within a node,
// for the other ranks' destroy. So only a communicator in step with its peers is destroyed; one
// whose init or a call failed, or that is dropped without close() (e.g. while an error unwinds
// on this rank alone), is aborted, which returns without the peers.
class NcclComm final : public gc_comm {
 public:
  NcclComm(int rank, int world, int device) : gc_comm(GC_COMM_NCCL, rank, world, device) {}
  ~NcclComm() override {
    if (comm_) {
      DeviceGuard guard(device);
      ncclCommAbort(comm_);
    }
  }

  gc_status init(const char* api, const gc_comm_id& id) {
    DeviceGuard guard(device);  // NCCL binds the communicator to the current device
    if (guard.status() != cudaSuccess)
      return fail(GC_ERROR_CUDA, "%s: selecting cuda:%d failed: %s", api, device, cudaGetErrorString(guard.status()));
    ncclUniqueId uid;
    std::memcpy(&uid, id.internal, sizeof(uid));
    return checked(api, "ncclCommInitRank", ncclCommInitRank(&comm_, world, uid, rank));
  }

  gc_status all_reduce(const char* api, const gc_tensor& send, const gc_tensor& recv, gc_reduce_op op,
                       void* stream) override {
    return checked(api, "ncclAllReduce",
                   ncclAllReduce(send.data, recv.data, count(recv), nccl_type(recv.dtype), nccl_op(op), comm_,
                                 as_stream(stream)));
  }
  gc_status all_gather(const char* api, const gc_tensor& send, const gc_tensor& recv, void* stream) override {
    return checked(api, "ncclAllGather",
                   ncclAllGather(send.data, recv.data, count(send), nccl_type(send.dtype), comm_, as_stream(stream)));
  }
  gc_status reduce_scatter(const char* api, const gc_tensor& send, const gc_tensor& recv, gc_reduce_op op,
                           void* stream) override {
    return checked(api, "ncclReduceScatter",
                   ncclReduceScatter(send.data, recv.data, count(recv), nccl_type(recv.dtype), nccl_op(op), comm_,
                                     as_stream(stream)));
  }
  gc_status broadcast(const char* api, const gc_tensor* send, const gc_tensor& recv, int root, void* stream) override {
    const void* src = send ? send->data : recv.data;  // read on the root only
    return checked(api, "ncclBroadcast",
                   ncclBroadcast(src, recv.data, count(recv), nccl_type(recv.dtype), root, comm_, as_stream(stream)));
  }
  // Empty transfers are skipped on both sides alike (the counts of a send and its recv agree).
  gc_status send(const char* api, const gc_tensor& tensor, int peer, void* stream) override {
    if (count(tensor) == 0) return GC_OK;
    return checked(api, "ncclSend",
                   ncclSend(tensor.data, count(tensor), nccl_type(tensor.dtype), peer, comm_, as_stream(stream)));
  }
  gc_status recv(const char* api, const gc_tensor& tensor, int peer, void* stream) override {
    if (count(tensor) == 0) return GC_OK;
    return checked(api, "ncclRecv",
                   ncclRecv(tensor.data, count(tensor), nccl_type(tensor.dtype), peer, comm_, as_stream(stream)));
  }
  gc_status group_start(const char* api) override { return checked(api, "ncclGroupStart", ncclGroupStart()); }
  gc_status group_end(const char* api) override { return checked(api, "ncclGroupEnd", ncclGroupEnd()); }

  // Destroys the communicator when it is in step with its peers (see above), else aborts it.
  gc_status close(const char* api) override {
    if (!comm_) return GC_OK;
    DeviceGuard guard(device);
    const ncclComm_t comm = comm_;
    comm_ = nullptr;
    ncclResult_t state = ncclSuccess;
    const bool healthy = !failed_ && ncclCommGetAsyncError(comm, &state) == ncclSuccess && state == ncclSuccess;
    const ncclResult_t result = healthy ? ncclCommDestroy(comm) : ncclCommAbort(comm);
    if (result != ncclSuccess) return nccl_fail(api, healthy ? "ncclCommDestroy" : "ncclCommAbort", result, nullptr);
    return GC_OK;
  }

 private:
  // A failed call leaves this rank out of step with the others: close() then aborts.
  gc_status checked(const char* api, const char* call, ncclResult_t result) {
    if (result == ncclSuccess) return GC_OK;
    failed_ = true;
    return nccl_fail(api, call, result, comm_);
  }

  ncclComm_t comm_ = nullptr;
  bool failed_ = false;
};

}  // namespace

gc_status nccl_unique_id(const char* api, gc_comm_id* out) {
  ncclUniqueId uid;
  GC_NCCL_TRY(api, nullptr, ncclGetUniqueId(&uid));
  std::memcpy(out->internal, &uid, sizeof(uid));
  return GC_OK;
}

gc_status make_nccl_comm(const char* api, const gc_comm_id& id, int rank, int world, int device, gc_comm** out) {
  auto comm = std::make_unique<NcclComm>(rank, world, device);
  GC_TRY(comm->init(api, id));
  *out = comm.release();
  return GC_OK;
}

}  // namespace gc
#endif
