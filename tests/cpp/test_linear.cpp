// gc_linear_* against hand-computed values, and the shared GELU helpers against double formulas.
#include <vector>

#include "check.h"
#include "common/cpu_math.h"
#include "common/math.h"

namespace {

double gelu_ref(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }

double gelu_grad_ref(double x) {
  const double s = std::sqrt(2 / M_PI), t = std::tanh(s * (x + 0.044715 * x * x * x));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * s * (1 + 3 * 0.044715 * x * x);
}

// x [2, 3], weight [2, 3]: x W^T = [[1*1 + 2*0 + 3*-1, 1*2 + 2*1 + 3*0], [0 + 0 + -2, 0 + -1 + 0]]
//                               = [[-2, 4], [-2, -1]].
struct Case {
  std::vector<float> x{1, 2, 3, 0, -1, 2}, w{1, 0, -1, 2, 1, 0}, b{0.5f, -1}, res{10, 20, 30, 40};
  std::vector<float> y = std::vector<float>(4), pre = std::vector<float>(4);
  gc_linear_fwd_params p{};
  Case() {
    p.x = test::cpu(x.data(), {2, 3});
    p.weight = test::cpu(w.data(), {2, 3});
    p.y = test::cpu(y.data(), {2, 2});
  }
  gc_status run() {
    size_t bytes = 1;
    const gc_status s = gc_linear_fwd_workspace_size(&p, &bytes);
    if (s != GC_OK) return s;
    if (bytes != 0) return GC_ERROR_INTERNAL;  // the CPU forward needs no scratch
    return gc_linear_fwd(&p, nullptr, 0, nullptr);
  }
};

const double kProduct[4] = {-2, 4, -2, -1};

}  // namespace

TEST(gelu_matches_double_formulas) {
  for (double x : {-30.0, -9.0, -5.0, -2.5, -1.0, -0.3, 0.0, 1e-3, 0.7, 1.5, 3.0, 8.0, 40.0}) {
    const double tol_abs = 2e-7 + 2e-6 * std::fabs(gelu_ref(x));
    CHECK_NEAR(gc::gelu_tanh(static_cast<float>(x)), gelu_ref(x), tol_abs);
    CHECK_NEAR(gc::gelu_tanh_fast(static_cast<float>(x)), gelu_ref(x), tol_abs);
    const double tol_grad = 2e-6 * (1 + std::fabs(gelu_grad_ref(x)));
    CHECK_NEAR(gc::gelu_tanh_grad(static_cast<float>(x)), gelu_grad_ref(x), tol_grad);
    CHECK_NEAR(gc::gelu_tanh_grad_fast(static_cast<float>(x)), gelu_grad_ref(x), tol_grad);
  }
  CHECK(gc::gelu_tanh(-200.f) == 0.f && gc::gelu_tanh(200.f) == 200.f);
  CHECK(gc::gelu_tanh_grad(-200.f) == 0.f && gc::gelu_tanh_grad(200.f) == 1.f);
}

TEST(forward_each_epilogue) {
  Case none;
  CHECK(none.run() == GC_OK);
  for (int i = 0; i < 4; ++i) CHECK_NEAR(none.y[i], kProduct[i], 1e-6);

  Case bias;
  bias.p.bias = test::cpu(bias.b.data(), {2});
  CHECK(bias.run() == GC_OK);
  for (int i = 0; i < 4; ++i) CHECK_NEAR(bias.y[i], kProduct[i] + bias.b[i % 2], 1e-6);

  Case gelu;
  gelu.p.bias = test::cpu(gelu.b.data(), {2});
  gelu.p.pre_act = test::cpu(gelu.pre.data(), {2, 2});
  gelu.p.activation = GC_ACTIVATION_GELU_TANH;
  CHECK(gelu.run() == GC_OK);
  // pre = [[-1.5, 3], [-1.5, -2]]; GELU(-1.5) = -0.100428, GELU(3) = 2.996363, GELU(-2) = -0.045402.
  const double want[4] = {-0.10042842, 2.99636261, -0.10042842, -0.04540231};
  for (int i = 0; i < 4; ++i) {
    CHECK_NEAR(gelu.pre[i], kProduct[i] + gelu.b[i % 2], 1e-6);
    CHECK_NEAR(gelu.y[i], want[i], 1e-6);
  }

  Case residual;
  residual.p.bias = test::cpu(residual.b.data(), {2});
  residual.p.residual = test::cpu(residual.res.data(), {2, 2});
  CHECK(residual.run() == GC_OK);
  for (int i = 0; i < 4; ++i) CHECK_NEAR(residual.y[i], kProduct[i] + residual.b[i % 2] + residual.res[i], 1e-6);
}

TEST(backward_with_and_without_gelu) {
  Case f;
  f.p.bias = test::cpu(f.b.data(), {2});
  f.p.pre_act = test::cpu(f.pre.data(), {2, 2});
  f.p.activation = GC_ACTIVATION_GELU_TANH;
  CHECK(f.run() == GC_OK);
  std::vector<float> dy{1, -2, 0.5f, 3}, dx(6), dw(6), db(2);
  for (int32_t act : {GC_ACTIVATION_NONE, GC_ACTIVATION_GELU_TANH}) {
    gc_linear_bwd_params b{};
    b.dy = test::cpu(dy.data(), {2, 2});
    b.x = f.p.x;
    b.weight = f.p.weight;
    b.pre_act = f.p.pre_act;
    b.dx = test::cpu(dx.data(), {2, 3});
    b.dweight = test::cpu(dw.data(), {2, 3});
    b.dbias = test::cpu(db.data(), {2});
    b.activation = act;
    size_t bytes = 0;
    CHECK(gc_linear_bwd_workspace_size(&b, &bytes) == GC_OK && bytes > 0);
    CHECK_FAILS(gc_linear_bwd(&b, nullptr, 0, nullptr), GC_ERROR_WORKSPACE, "gc_linear_bwd_workspace_size");
    std::vector<char> ws(bytes);
    CHECK(gc_linear_bwd(&b, ws.data(), bytes, nullptr) == GC_OK);
    double g[4];
    for (int i = 0; i < 4; ++i) g[i] = dy[i] * (act == GC_ACTIVATION_GELU_TANH ? gelu_grad_ref(f.pre[i]) : 1.0);
    for (int n = 0; n < 2; ++n) CHECK_NEAR(db[n], g[n] + g[2 + n], 4e-6);
    for (int m = 0; m < 2; ++m)
      for (int k = 0; k < 3; ++k) CHECK_NEAR(dx[m * 3 + k], g[m * 2] * f.w[k] + g[m * 2 + 1] * f.w[3 + k], 4e-6);
    for (int n = 0; n < 2; ++n)
      for (int k = 0; k < 3; ++k) CHECK_NEAR(dw[n * 3 + k], g[n] * f.x[k] + g[2 + n] * f.x[3 + k], 4e-6);
  }
}

TEST(empty_inner_dimension_gives_bias) {
  std::vector<float> x(1), w(1), b{1.5f, -2}, y{9, 9, 9, 9, 9, 9};
  gc_linear_fwd_params p{};
  p.x = test::cpu(x.data(), {3, 0});
  p.weight = test::cpu(w.data(), {2, 0});
  p.bias = test::cpu(b.data(), {2});
  p.y = test::cpu(y.data(), {3, 2});
  CHECK(gc_linear_fwd(&p, nullptr, 0, nullptr) == GC_OK);
  for (int i = 0; i < 6; ++i) CHECK(y[i] == b[i % 2]);
}

TEST(bad_input_names_the_argument) {
  Case c;
  c.p.weight = test::cpu(c.w.data(), {3, 2});
  CHECK_FAILS(c.run(), GC_ERROR_SHAPE, "'weight' has shape [3, 2]; expected [N, 3]");
  c.p.weight = test::cpu(c.w.data(), {2, 3});
  c.p.bias = test::cpu(c.b.data(), {3});
  CHECK_FAILS(c.run(), GC_ERROR_SHAPE, "'bias' has shape [3]; expected [2]");
  c.p.bias = gc_tensor{};
  c.p.y.shape[0] = 3;
  CHECK_FAILS(c.run(), GC_ERROR_SHAPE, "'y' has shape [3, 2]; expected [2, 2]");
  c.p.y.shape[0] = 2;
  c.p.x.dtype = GC_FLOAT16;
  CHECK_FAILS(c.run(), GC_ERROR_DTYPE, "'x' has dtype float16; the CPU kernels take float32");
  c.p.x.dtype = GC_FLOAT32;
  c.p.x.strides[1] = 2;
  CHECK_FAILS(c.run(), GC_ERROR_LAYOUT, "'x' (shape [2, 3]) is not contiguous");
  c.p.x.strides[1] = 1;
  c.p.activation = 7;
  CHECK_FAILS(c.run(), GC_ERROR_INVALID_ARGUMENT, "activation = 7 is unknown");
  c.p.activation = GC_ACTIVATION_GELU_TANH;
  c.p.residual = test::cpu(c.res.data(), {2, 2});
  CHECK_FAILS(c.run(), GC_ERROR_INVALID_ARGUMENT, "'residual' cannot be combined with a GELU activation");
  c.p.residual = gc_tensor{};
  c.p.weight.device_type = GC_CUDA;
  CHECK_FAILS(c.run(), GC_ERROR_DEVICE, "'weight'");

  gc_linear_bwd_params b{};
  b.dy = c.p.y;
  b.x = c.p.x;
  b.weight = test::cpu(c.w.data(), {2, 3});
  b.activation = GC_ACTIVATION_GELU_TANH;
  size_t bytes = 0;
  CHECK_FAILS(gc_linear_bwd_workspace_size(&b, &bytes), GC_ERROR_INVALID_ARGUMENT, "'pre_act' is required");
}

TEST_MAIN()
