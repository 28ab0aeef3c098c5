// The C API's plumbing: status names, the thread-local last error, dtype codes, views.
#include <thread>

#include "check.h"

TEST(status_names_are_fixed) {
  CHECK(std::strcmp(gc_status_name(GC_OK), "GC_OK") == 0);
  CHECK(std::strcmp(gc_status_name(GC_ERROR_SHAPE), "GC_ERROR_SHAPE") == 0);
  CHECK(std::strcmp(gc_status_name(GC_ERROR_WORKSPACE), "GC_ERROR_WORKSPACE") == 0);
  CHECK(std::strcmp(gc_status_name(static_cast<gc_status>(999)), "GC_ERROR_UNKNOWN") == 0);
}

TEST(dtype_codes_sizes_and_names) {
  CHECK(GC_FLOAT32 == 0 && GC_FLOAT16 == 1 && GC_BFLOAT16 == 2 && GC_INT64 == 5);  // ABI: never renumbered
  CHECK(gc_dtype_size(GC_FLOAT32) == 4 && gc_dtype_size(GC_BFLOAT16) == 2 && gc_dtype_size(GC_INT64) == 8);
  CHECK(gc_dtype_size(GC_UINT16) == 2 && gc_dtype_size(GC_UINT8) == 1 && gc_dtype_size(77) == 0);
  CHECK(std::strcmp(gc_dtype_name(GC_BFLOAT16), "bfloat16") == 0);
  CHECK(std::strcmp(gc_dtype_name(-3), "unknown") == 0);
}

TEST(views_are_row_major_and_contiguity_is_checked) {
  float data[24];
  const int64_t shape[3] = {2, 3, 4};
  gc_tensor t = gc_make_tensor(data, GC_FLOAT32, GC_CPU, 0, 3, shape);
  CHECK(t.strides[0] == 12 && t.strides[1] == 4 && t.strides[2] == 1);
  CHECK(gc_tensor_numel(&t) == 24 && gc_tensor_is_contiguous(&t));
  std::swap(t.strides[1], t.strides[2]);  // a transposed view
  CHECK(!gc_tensor_is_contiguous(&t));
  CHECK(gc_make_tensor(data, GC_FLOAT32, GC_CPU, 0, 9, shape).ndim == -1);  // rejected later by every op
}

TEST(null_params_and_last_error) {
  CHECK_FAILS(gc_layer_norm_fwd(nullptr, nullptr), GC_ERROR_INVALID_ARGUMENT, "params is NULL");
  float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 1, 1}, y[4], mean, rstd;
  gc_layer_norm_fwd_params p{};
  p.x = test::cpu(x, {1, 4});
  p.weight = test::cpu(w, {4});
  p.y = test::cpu(y, {1, 4});
  p.mean = test::cpu(&mean, {1});
  p.rstd = test::cpu(&rstd, {1});
  p.eps = 1e-5f;
  CHECK(gc_layer_norm_fwd(&p, nullptr) == GC_OK);
  CHECK(std::strcmp(gc_last_error(), "") == 0);  // a success clears the message
}

TEST(last_error_is_per_thread) {
  CHECK_FAILS(gc_layer_norm_fwd(nullptr, nullptr), GC_ERROR_INVALID_ARGUMENT, "params is NULL");
  std::string other = "unset";
  std::thread([&] { other = gc_last_error(); }).join();
  CHECK(other.empty());
  CHECK(std::strstr(gc_last_error(), "params is NULL") != nullptr);
}

TEST(build_info_and_devices) {
  const gc_build_info* info = gc_get_build_info();
  CHECK(std::strcmp(info->version, "0.1.0") == 0);
  CHECK(info->cuda == 0 || info->cuda_runtime_version >= 12000);
  int count = -1;
  CHECK(gc_cuda_device_count(&count) == GC_OK && count >= 0);
  gc_device_properties props;
  CHECK_FAILS(gc_cuda_device_properties(count, &props), GC_ERROR_DEVICE, "");
}

TEST_MAIN()
