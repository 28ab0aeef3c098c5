// gc_comm_* on the single-process backend with CPU tensors: every collective, point-to-point in
// a group, the argument checks, and the NCCL entry points of a build without NCCL.
#include "check.h"

namespace {

gc_comm* single() {
  gc_comm* comm = nullptr;
  CHECK(gc_comm_init_single(&comm) == GC_OK && comm != nullptr);
  return comm;
}

bool equal(const float* a, const float* b, int n) { return std::memcmp(a, b, sizeof(float) * n) == 0; }

}  // namespace

TEST(single_reports_rank_world_backend) {
  gc_comm* comm = single();
  int rank = -1, world = -1;
  gc_comm_backend_type backend = GC_COMM_NCCL;
  CHECK(gc_comm_rank(comm, &rank) == GC_OK && rank == 0);
  CHECK(gc_comm_world(comm, &world) == GC_OK && world == 1);
  CHECK(gc_comm_backend(comm, &backend) == GC_OK && backend == GC_COMM_SINGLE);
  CHECK(gc_comm_destroy(comm) == GC_OK);
  CHECK(gc_comm_destroy(nullptr) == GC_OK);
  CHECK_FAILS(gc_comm_rank(nullptr, &rank), GC_ERROR_INVALID_ARGUMENT, "comm is NULL");
}

TEST(single_collectives_copy_send_into_recv) {
  gc_comm* comm = single();
  float send[6] = {1, -2, 3.5f, 4, 5, 6}, recv[6] = {};
  gc_tensor s = test::cpu(send, {2, 3}), r = test::cpu(recv, {6});  // flat counts are what must agree
  for (gc_reduce_op op : {GC_REDUCE_SUM, GC_REDUCE_AVG, GC_REDUCE_MAX, GC_REDUCE_MIN, GC_REDUCE_PROD}) {
    std::memset(recv, 0, sizeof(recv));
    CHECK(gc_comm_all_reduce(comm, &s, &r, op, nullptr) == GC_OK && equal(send, recv, 6));
    std::memset(recv, 0, sizeof(recv));
    CHECK(gc_comm_reduce_scatter(comm, &s, &r, op, nullptr) == GC_OK && equal(send, recv, 6));
  }
  std::memset(recv, 0, sizeof(recv));
  CHECK(gc_comm_all_gather(comm, &s, &r, nullptr) == GC_OK && equal(send, recv, 6));
  std::memset(recv, 0, sizeof(recv));
  CHECK(gc_comm_broadcast(comm, &s, &r, 0, nullptr) == GC_OK && equal(send, recv, 6));
  CHECK(gc_comm_all_reduce(comm, &s, &s, GC_REDUCE_SUM, nullptr) == GC_OK);  // in place: unchanged
  const float want[6] = {1, -2, 3.5f, 4, 5, 6};
  CHECK(equal(send, want, 6));
  gc_comm_destroy(comm);
}

TEST(single_collectives_take_every_comm_dtype) {
  gc_comm* comm = single();
  const int64_t shape[1] = {3};
  for (gc_dtype dtype : {GC_FLOAT32, GC_FLOAT16, GC_BFLOAT16, GC_FLOAT64, GC_INT32, GC_INT64, GC_UINT8, GC_INT8}) {
    unsigned char send[24], recv[24] = {};
    for (int i = 0; i < 24; ++i) send[i] = static_cast<unsigned char>(i * 7 + 1);
    gc_tensor s = gc_make_tensor(send, dtype, GC_CPU, 0, 1, shape);
    gc_tensor r = gc_make_tensor(recv, dtype, GC_CPU, 0, 1, shape);
    CHECK(gc_comm_all_reduce(comm, &s, &r, GC_REDUCE_SUM, nullptr) == GC_OK);
    CHECK(std::memcmp(send, recv, 3 * gc_dtype_size(dtype)) == 0);
  }
  uint16_t u[3] = {};
  gc_tensor t = gc_make_tensor(u, GC_UINT16, GC_CPU, 0, 1, shape);
  CHECK_FAILS(gc_comm_all_reduce(comm, &t, &t, GC_REDUCE_SUM, nullptr), GC_ERROR_DTYPE, "'send' has dtype uint16");
  gc_comm_destroy(comm);
}

TEST(single_send_recv_pair_inside_a_group) {
  gc_comm* comm = single();
  float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, ra[4] = {}, rb[2] = {};
  gc_tensor ta = test::cpu(a, {4}), tb = test::cpu(b, {2}), tra = test::cpu(ra, {4}), trb = test::cpu(rb, {2});
  CHECK_FAILS(gc_comm_send(comm, &ta, 0, nullptr), GC_ERROR_INVALID_ARGUMENT, "in one group");
  CHECK_FAILS(gc_comm_recv(comm, &tra, 0, nullptr), GC_ERROR_INVALID_ARGUMENT, "in one group");

  CHECK(gc_comm_group_start(comm) == GC_OK);
  CHECK(gc_comm_send(comm, &ta, 0, nullptr) == GC_OK);
  CHECK(gc_comm_group_start(comm) == GC_OK);  // nested: the outer end issues
  CHECK(gc_comm_recv(comm, &tra, 0, nullptr) == GC_OK);
  CHECK(gc_comm_send(comm, &tb, 0, nullptr) == GC_OK);
  CHECK(gc_comm_recv(comm, &trb, 0, nullptr) == GC_OK);
  CHECK(gc_comm_group_end(comm) == GC_OK);
  CHECK(ra[0] == 0.f);  // not yet
  CHECK(gc_comm_group_end(comm) == GC_OK);
  CHECK(equal(a, ra, 4) && equal(b, rb, 2));
  CHECK_FAILS(gc_comm_group_end(comm), GC_ERROR_INVALID_ARGUMENT, "no group is open");
  gc_comm_destroy(comm);
}

TEST(single_send_recv_mismatches_fail_at_group_end) {
  gc_comm* comm = single();
  float a[4] = {}, r3[3] = {};
  gc_tensor ta = test::cpu(a, {4}), tr3 = test::cpu(r3, {3});
  CHECK(gc_comm_group_start(comm) == GC_OK);
  CHECK(gc_comm_send(comm, &ta, 0, nullptr) == GC_OK);
  CHECK_FAILS(gc_comm_group_end(comm), GC_ERROR_INVALID_ARGUMENT, "1 send(s) to rank 0 but 0 recv(s)");
  CHECK(gc_comm_group_start(comm) == GC_OK);  // the failed group was dropped
  CHECK(gc_comm_send(comm, &ta, 0, nullptr) == GC_OK);
  CHECK(gc_comm_recv(comm, &tr3, 0, nullptr) == GC_OK);
  CHECK_FAILS(gc_comm_group_end(comm), GC_ERROR_SHAPE, "send #0 has 4 float32 elements but the recv it matches has 3");
  gc_comm_destroy(comm);
}

TEST(empty_tensors_need_no_memory) {
  gc_comm* comm = single();
  gc_tensor e = test::cpu(static_cast<float*>(nullptr), {0, 4});  // torch's empty tensors have a NULL pointer
  CHECK(gc_comm_all_reduce(comm, &e, &e, GC_REDUCE_SUM, nullptr) == GC_OK);
  CHECK(gc_comm_all_gather(comm, &e, &e, nullptr) == GC_OK);
  CHECK(gc_comm_reduce_scatter(comm, &e, &e, GC_REDUCE_MAX, nullptr) == GC_OK);
  CHECK(gc_comm_broadcast(comm, &e, &e, 0, nullptr) == GC_OK);
  CHECK(gc_comm_group_start(comm) == GC_OK);
  CHECK(gc_comm_send(comm, &e, 0, nullptr) == GC_OK);
  CHECK(gc_comm_recv(comm, &e, 0, nullptr) == GC_OK);
  CHECK(gc_comm_group_end(comm) == GC_OK);
  gc_comm_destroy(comm);
}

TEST(sizes_dtypes_ranks_and_ops_are_checked) {
  gc_comm* comm = single();
  float f[6] = {};
  int64_t i[6] = {};
  gc_tensor f6 = test::cpu(f, {6}), f4 = test::cpu(f, {4}), i6 = test::cpu(i, {6});
  CHECK_FAILS(gc_comm_all_reduce(comm, &f6, &f4, GC_REDUCE_SUM, nullptr), GC_ERROR_SHAPE,
              "'recv' has 4 elements (shape [4]) but 'send' has 6");
  CHECK_FAILS(gc_comm_all_gather(comm, &f6, &f4, nullptr), GC_ERROR_SHAPE,
              "'recv' has 4 elements (shape [4]) but needs world x numel(send) = 1 x 6 = 6");
  CHECK_FAILS(gc_comm_reduce_scatter(comm, &f4, &f6, GC_REDUCE_SUM, nullptr), GC_ERROR_SHAPE,
              "'send' has 4 elements (shape [4]) but needs world x numel(recv) = 1 x 6 = 6");
  CHECK_FAILS(gc_comm_all_reduce(comm, &f6, &i6, GC_REDUCE_SUM, nullptr), GC_ERROR_DTYPE,
              "'recv' has dtype int64 but 'send' has float32");
  CHECK_FAILS(gc_comm_all_reduce(comm, &f6, &f6, static_cast<gc_reduce_op>(9), nullptr), GC_ERROR_INVALID_ARGUMENT,
              "unknown reduce op 9");
  CHECK_FAILS(gc_comm_broadcast(comm, &f6, &f6, 1, nullptr), GC_ERROR_INVALID_ARGUMENT,
              "root = 1 is not a rank of this single communicator (world 1: ranks 0..0)");
  CHECK_FAILS(gc_comm_broadcast(comm, nullptr, &f6, 0, nullptr), GC_ERROR_INVALID_ARGUMENT,
              "'send' is required on the root");
  CHECK_FAILS(gc_comm_send(comm, &f6, -1, nullptr), GC_ERROR_INVALID_ARGUMENT, "peer = -1 is not a rank");
  CHECK_FAILS(gc_comm_all_reduce(comm, nullptr, &f6, GC_REDUCE_SUM, nullptr), GC_ERROR_INVALID_ARGUMENT,
              "'send' is NULL");

  gc_tensor strided = test::cpu(f, {2, 3});
  strided.strides[0] = 1;
  strided.strides[1] = 2;
  CHECK_FAILS(gc_comm_all_reduce(comm, &strided, &f6, GC_REDUCE_SUM, nullptr), GC_ERROR_LAYOUT, "is not contiguous");
  gc_tensor absent = test::cpu(static_cast<float*>(nullptr), {6});
  CHECK_FAILS(gc_comm_all_gather(comm, &f6, &absent, nullptr), GC_ERROR_INVALID_ARGUMENT, "'recv' is required");
  gc_comm_destroy(comm);
}

TEST(nccl_entry_points_match_the_build) {
  gc_comm_id id;
  gc_comm* comm = nullptr;
  if (gc_get_build_info()->nccl_version == 0) {
    CHECK_FAILS(gc_comm_unique_id(&id), GC_ERROR_DEVICE, "built without NCCL");
    CHECK_FAILS(gc_comm_init_nccl(&id, 0, 1, 0, &comm), GC_ERROR_DEVICE, "built without NCCL");
    CHECK(comm == nullptr);
  }
  CHECK_FAILS(gc_comm_init_nccl(&id, 2, 2, 0, &comm), GC_ERROR_INVALID_ARGUMENT, "rank = 2 is outside [0, world)");
  CHECK_FAILS(gc_comm_init_nccl(&id, 0, 0, 0, &comm), GC_ERROR_INVALID_ARGUMENT, "world = 0");
  CHECK_FAILS(gc_comm_unique_id(nullptr), GC_ERROR_INVALID_ARGUMENT, "out is NULL");
}

TEST_MAIN()
