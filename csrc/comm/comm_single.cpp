// The single-process backend: world 1, rank 0. Every collective over one rank leaves recv equal
// to send, so each is a copy (none when send and recv are the same memory); a send to itself
// waits in the open group for its recv and becomes a copy at the outermost group end.
#include <cstring>
#include <vector>

#include "comm/comm.h"
#include "common/check.h"
#include "common/error.h"

namespace gc {
namespace {

size_t bytes_of(const gc_tensor& t) { return static_cast<size_t>(gc_tensor_numel(&t)) * gc_dtype_size(t.dtype); }

// dst = src, both of dst's size and on dst's device; CUDA copies are queued on `stream`.
gc_status copy(const char* api, const gc_tensor& src, const gc_tensor& dst, void* stream) {
  const size_t bytes = bytes_of(dst);
  if (bytes == 0 || src.data == dst.data) return GC_OK;
#ifdef GPTCORE_WITH_CUDA
  if (dst.device_type == GC_CUDA) return copy_async_cuda(api, dst.data, src.data, bytes, dst.device_index, stream);
#endif
  std::memmove(dst.data, src.data, bytes);
  return GC_OK;
}

const char* device_name(const gc_tensor& t) { return t.device_type == GC_CUDA ? "cuda" : "cpu"; }

class SingleComm final : public gc_comm {
 public:
  SingleComm() : gc_comm(GC_COMM_SINGLE, 0, 1, -1) {}

  gc_status all_reduce(const char* api, const gc_tensor& send, const gc_tensor& recv, gc_reduce_op,
                       void* stream) override {
    return copy(api, send, recv, stream);
  }
  gc_status all_gather(const char* api, const gc_tensor& send, const gc_tensor& recv, void* stream) override {
    return copy(api, send, recv, stream);
  }
  gc_status reduce_scatter(const char* api, const gc_tensor& send, const gc_tensor& recv, gc_reduce_op,
                           void* stream) override {
    return copy(api, send, recv, stream);
  }
  gc_status broadcast(const char* api, const gc_tensor* send, const gc_tensor& recv, int, void* stream) override {
    return copy(api, *send, recv, stream);  // rank 0 is the only rank, so the root, so send is set
  }

  gc_status send(const char* api, const gc_tensor& tensor, int, void* stream) override {
    GC_TRY(check_grouped(api, "send"));
    sends_.push_back({tensor, stream});
    return GC_OK;
  }
  gc_status recv(const char* api, const gc_tensor& tensor, int, void* stream) override {
    GC_TRY(check_grouped(api, "recv"));
    recvs_.push_back({tensor, stream});
    return GC_OK;
  }

  gc_status group_start(const char*) override {
    ++depth_;
    return GC_OK;
  }
  gc_status group_end(const char* api) override {
    if (depth_ == 0)
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: no group is open; call gc_comm_group_start first", api);
    if (--depth_ > 0) return GC_OK;
    const gc_status status = match(api);
    sends_.clear();
    recvs_.clear();
    return status;
  }

 private:
  struct Transfer {
    gc_tensor tensor;
    void* stream;
  };

  gc_status check_grouped(const char* api, const char* what) const {
    if (depth_ == 0)
      return fail(GC_ERROR_INVALID_ARGUMENT,
                  "%s: on a single-process communicator a %s to rank 0 pairs with this rank's own %s, so both must sit "
                  "in one group: gc_comm_group_start, the send and the recv, gc_comm_group_end",
                  api, what, what[0] == 's' ? "recv" : "send");
    return GC_OK;
  }

  // The i-th send goes to the i-th recv, as NCCL matches the transfers between two ranks in order.
  gc_status match(const char* api) const {
    if (sends_.size() != recvs_.size())
      return fail(GC_ERROR_INVALID_ARGUMENT, "%s: the group holds %zu send(s) to rank 0 but %zu recv(s) from it; each "
                  "send needs one matching recv", api, sends_.size(), recvs_.size());
    for (size_t i = 0; i < sends_.size(); ++i) {
      const gc_tensor &s = sends_[i].tensor, &r = recvs_[i].tensor;
      const int64_t ns = gc_tensor_numel(&s), nr = gc_tensor_numel(&r);
      if (s.dtype != r.dtype || ns != nr)
        return fail(GC_ERROR_SHAPE, "%s: send #%zu has %lld %s elements but the recv it matches has %lld %s; they must "
                    "agree", api, i, (long long)ns, gc_dtype_name(s.dtype), (long long)nr, gc_dtype_name(r.dtype));
      if (s.device_type != r.device_type || s.device_index != r.device_index)
        return fail(GC_ERROR_DEVICE, "%s: send #%zu is on %s:%d but the recv it matches is on %s:%d; move them to one "
                    "device", api, i, device_name(s), s.device_index, device_name(r), r.device_index);
    }
    for (size_t i = 0; i < sends_.size(); ++i) GC_TRY(copy(api, sends_[i].tensor, recvs_[i].tensor, recvs_[i].stream));
    return GC_OK;
  }

  std::vector<Transfer> sends_, recvs_;
  int depth_ = 0;
};

}  // namespace

gc_status make_single_comm(gc_comm** out) {
  *out = new SingleComm();
  return GC_OK;
}

}  // namespace gc
