// gc_layer_norm_* against hand-computed values and double-precision formulas.
#include <vector>

#include "check.h"

namespace {

struct Fwd {
  std::vector<float> x, residual, w, b, y, sum, mean, rstd;
  gc_layer_norm_fwd_params p{};
  Fwd(std::vector<float> x_, std::vector<float> w_, std::vector<float> b_, int64_t rows)
      : x(x_), w(w_), b(b_), y(x_.size()), sum(x_.size()), mean(rows), rstd(rows) {
    const int64_t C = static_cast<int64_t>(w.size());
    p.x = test::cpu(x.data(), {rows, C});
    p.weight = test::cpu(w.data(), {C});
    if (!b.empty()) p.bias = test::cpu(b.data(), {C});
    p.y = test::cpu(y.data(), {rows, C});
    p.mean = test::cpu(mean.data(), {rows});
    p.rstd = test::cpu(rstd.data(), {rows});
    p.eps = 0.f;
  }
};

}  // namespace

TEST(forward_hand_computed) {
  // Row [1, 2, 3, 4]: mean 2.5, variance 1.25.
  Fwd f({1, 2, 3, 4}, {1, 2, 1, 1}, {0, 0, 0, 10}, 1);
  CHECK(gc_layer_norm_fwd(&f.p, nullptr) == GC_OK);
  const double rstd = 1 / std::sqrt(1.25);
  CHECK_NEAR(f.mean[0], 2.5, 1e-7);
  CHECK_NEAR(f.rstd[0], rstd, 1e-6);
  CHECK_NEAR(f.y[0], -1.5 * rstd, 1e-6);
  CHECK_NEAR(f.y[1], 2 * -0.5 * rstd, 1e-6);
  CHECK_NEAR(f.y[3], 1.5 * rstd + 10, 1e-6);
}

TEST(fused_add_normalizes_the_sum) {
  Fwd f({1, 2, 3, 4, 0, 0, 0, 2}, {1, 1, 1, 1}, {}, 2);
  f.residual = {1, 0, -1, 0, 1, 1, 1, 1};
  f.p.residual = test::cpu(f.residual.data(), {2, 4});
  f.p.sum = test::cpu(f.sum.data(), {2, 4});
  CHECK(gc_layer_norm_fwd(&f.p, nullptr) == GC_OK);
  CHECK(f.sum[0] == 2 && f.sum[2] == 2 && f.sum[7] == 3);
  CHECK_NEAR(f.mean[0], 2.5, 1e-7);  // [2, 2, 2, 4]
  CHECK_NEAR(f.mean[1], 1.5, 1e-7);  // [1, 1, 1, 3]
  CHECK_NEAR(f.y[3], 1.5 / std::sqrt(0.75), 1e-5);
}

TEST(backward_matches_the_formula_in_double) {
  const int64_t rows = 3, C = 5;
  std::vector<float> x(rows * C), dy(rows * C), w(C);
  for (int64_t i = 0; i < rows * C; ++i) {
    x[i] = std::sin(0.7 * i) * 3;
    dy[i] = std::cos(1.3 * i);
  }
  for (int64_t c = 0; c < C; ++c) w[c] = 0.5f + 0.1f * c;
  Fwd f(x, w, {}, rows);
  f.p.eps = 1e-5f;
  CHECK(gc_layer_norm_fwd(&f.p, nullptr) == GC_OK);
  std::vector<float> dx(rows * C), dw(C), db(C);
  gc_layer_norm_bwd_params b{};
  b.dy = test::cpu(dy.data(), {rows, C});
  b.x = test::cpu(x.data(), {rows, C});
  b.weight = test::cpu(w.data(), {C});
  b.mean = test::cpu(f.mean.data(), {rows});
  b.rstd = test::cpu(f.rstd.data(), {rows});
  b.dx = test::cpu(dx.data(), {rows, C});
  b.dweight = test::cpu(dw.data(), {C});
  b.dbias = test::cpu(db.data(), {C});
  size_t bytes = 0;
  CHECK(gc_layer_norm_bwd_workspace_size(&b, &bytes) == GC_OK && bytes > 0);
  CHECK_FAILS(gc_layer_norm_bwd(&b, nullptr, 0, nullptr), GC_ERROR_WORKSPACE, "gc_layer_norm_bwd_workspace_size");
  std::vector<char> ws(bytes);
  CHECK(gc_layer_norm_bwd(&b, ws.data(), bytes, nullptr) == GC_OK);
  std::vector<double> dw_ref(C, 0), db_ref(C, 0);
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t c = 0; c < C; ++c) mean += x[r * C + c] / double(C);
    for (int64_t c = 0; c < C; ++c) var += (x[r * C + c] - mean) * (x[r * C + c] - mean) / C;
    const double rstd = 1 / std::sqrt(var + 1e-5);
    double sg = 0, sgx = 0;
    for (int64_t c = 0; c < C; ++c) {
      const double xhat = (x[r * C + c] - mean) * rstd, g = dy[r * C + c] * w[c];
      sg += g / C;
      sgx += g * xhat / C;
      dw_ref[c] += dy[r * C + c] * xhat;
      db_ref[c] += dy[r * C + c];
    }
    for (int64_t c = 0; c < C; ++c) {
      const double xhat = (x[r * C + c] - mean) * rstd;
      CHECK_NEAR(dx[r * C + c], rstd * (dy[r * C + c] * w[c] - sg - xhat * sgx), 1e-5);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    CHECK_NEAR(dw[c], dw_ref[c], 1e-5);
    CHECK_NEAR(db[c], db_ref[c], 1e-5);
  }
}

TEST(bad_input_names_the_argument) {
  Fwd g({1, 2, 3, 4}, {1, 1, 1, 1}, {}, 1);
  g.p.weight.shape[0] = 3;
  CHECK_FAILS(gc_layer_norm_fwd(&g.p, nullptr), GC_ERROR_SHAPE, "'weight' has shape [3]; expected [4]");
  g.p.weight.shape[0] = 4;
  g.p.mean.dtype = GC_FLOAT16;
  CHECK_FAILS(gc_layer_norm_fwd(&g.p, nullptr), GC_ERROR_DTYPE, "'mean' has dtype float16");
  g.p.mean.dtype = GC_FLOAT32;
  g.p.x.strides[1] = 2;
  CHECK_FAILS(gc_layer_norm_fwd(&g.p, nullptr), GC_ERROR_LAYOUT, "'x' (shape [1, 4]) is not contiguous");
  g.p.x.strides[1] = 1;
  g.p.eps = -1.f;
  CHECK_FAILS(gc_layer_norm_fwd(&g.p, nullptr), GC_ERROR_INVALID_ARGUMENT, "eps must be >= 0");
  g.p.eps = 0.f;
  g.p.residual = g.p.x;  // a residual without a sum output
  CHECK_FAILS(gc_layer_norm_fwd(&g.p, nullptr), GC_ERROR_INVALID_ARGUMENT, "'sum' is required");
  g.p.residual = gc_tensor{};
  g.p.y.device_type = GC_CUDA;
  CHECK_FAILS(gc_layer_norm_fwd(&g.p, nullptr), GC_ERROR_DEVICE, "'y'");
}

TEST_MAIN()
