#include <cstring>
#include <memory>
#include <string>

#include "bindings/bindings.h"

namespace gc::bindings {
namespace {

// Owns one gc_comm*; destroyed explicitly with destroy() or when Python drops it.
class Comm {
 public:
  explicit Comm(gc_comm* comm) : comm_(comm) {}
  ~Comm() { gc_comm_destroy(comm_); }  // a failure while Python collects it has nowhere to go
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  gc_comm* get() const {
    if (!comm_) throw Error("this communicator was destroyed");
    return comm_;
  }
  void destroy() {
    gc_comm* comm = comm_;
    comm_ = nullptr;
    check(gc_comm_destroy(comm));
  }

 private:
  gc_comm* comm_;
};

std::unique_ptr<Comm> init_nccl(const std::string& id, int rank, int world, int device) {
  if (id.size() != sizeof(gc_comm_id))
    throw py::value_error("the unique id must be " + std::to_string(sizeof(gc_comm_id)) +
                          " bytes (from comm_unique_id), got " + std::to_string(id.size()));
  gc_comm_id uid;
  std::memcpy(uid.internal, id.data(), sizeof(uid.internal));
  gc_comm* comm = nullptr;
  {
    py::gil_scoped_release release;  // blocks until every rank has joined
    check(gc_comm_init_nccl(&uid, rank, world, device, &comm));
  }
  return std::make_unique<Comm>(comm);
}

}  // namespace

void bind_comm(py::module_& m) {
  py::module_ ops = m.def_submodule("reduce_op", "fixed reduce op codes");
  for (auto [name, code] : {std::pair{"sum", GC_REDUCE_SUM}, {"avg", GC_REDUCE_AVG}, {"max", GC_REDUCE_MAX},
                            {"min", GC_REDUCE_MIN}, {"prod", GC_REDUCE_PROD}})
    ops.attr(name) = int(code);

  m.def(
      "comm_unique_id",
      [] {
        gc_comm_id id;
        check(gc_comm_unique_id(&id));
        return py::bytes(id.internal, sizeof(id.internal));
      },
      "A fresh NCCL unique id (bytes) for Comm.nccl, made by one rank and shared with the others");

  py::class_<Comm>(m, "Comm", "A communicator (NCCL, or a single process); ranks count within it")
      .def_static("nccl", &init_nccl, py::arg("unique_id"), py::arg("rank"), py::arg("world"), py::arg("device"))
      .def_static("single", [] {
        gc_comm* comm = nullptr;
        check(gc_comm_init_single(&comm));
        return std::make_unique<Comm>(comm);
      })
      .def("destroy", &Comm::destroy, "Frees the communicator after its queued work", release_gil())
      .def_property_readonly("rank",
                             [](const Comm& c) {
                               int r = 0;
                               check(gc_comm_rank(c.get(), &r));
                               return r;
                             })
      .def_property_readonly("world",
                             [](const Comm& c) {
                               int w = 0;
                               check(gc_comm_world(c.get(), &w));
                               return w;
                             })
      .def_property_readonly("backend",
                             [](const Comm& c) {
                               gc_comm_backend_type b = GC_COMM_SINGLE;
                               check(gc_comm_backend(c.get(), &b));
                               return std::string(b == GC_COMM_NCCL ? "nccl" : "single");
                             })
      .def(
          "all_reduce",
          [](const Comm& c, gc_tensor send, gc_tensor recv, int op, uintptr_t stream) {
            check(gc_comm_all_reduce(c.get(), &send, &recv, static_cast<gc_reduce_op>(op), stream_ptr(stream)));
          },
          py::arg("send"), py::arg("recv"), py::arg("op"), py::arg("stream"), release_gil())
      .def(
          "all_gather",
          [](const Comm& c, gc_tensor send, gc_tensor recv, uintptr_t stream) {
            check(gc_comm_all_gather(c.get(), &send, &recv, stream_ptr(stream)));
          },
          py::arg("send"), py::arg("recv"), py::arg("stream"), release_gil())
      .def(
          "reduce_scatter",
          [](const Comm& c, gc_tensor send, gc_tensor recv, int op, uintptr_t stream) {
            check(gc_comm_reduce_scatter(c.get(), &send, &recv, static_cast<gc_reduce_op>(op), stream_ptr(stream)));
          },
          py::arg("send"), py::arg("recv"), py::arg("op"), py::arg("stream"), release_gil())
      .def(
          "broadcast",
          [](const Comm& c, OptTensor send, gc_tensor recv, int root, uintptr_t stream) {
            const gc_tensor s = opt(send);
            check(gc_comm_broadcast(c.get(), send ? &s : nullptr, &recv, root, stream_ptr(stream)));
          },
          py::arg("send"), py::arg("recv"), py::arg("root"), py::arg("stream"), release_gil())
      .def(
          "send",
          [](const Comm& c, gc_tensor tensor, int peer, uintptr_t stream) {
            check(gc_comm_send(c.get(), &tensor, peer, stream_ptr(stream)));
          },
          py::arg("tensor"), py::arg("peer"), py::arg("stream"), release_gil())
      .def(
          "recv",
          [](const Comm& c, gc_tensor tensor, int peer, uintptr_t stream) {
            check(gc_comm_recv(c.get(), &tensor, peer, stream_ptr(stream)));
          },
          py::arg("tensor"), py::arg("peer"), py::arg("stream"), release_gil())
      .def("group_start", [](const Comm& c) { check(gc_comm_group_start(c.get())); }, release_gil())
      .def("group_end", [](const Comm& c) { check(gc_comm_group_end(c.get())); }, release_gil());
}

}  // namespace gc::bindings
