// Linear on CUDA: cuBLASLt products with its fused epilogues (bias, GELU with the
// pre-activation as aux output, residual as C with beta = 1, bias gradient as BGRADB), and
// small kernels where cuBLASLt cannot fuse: dy * gelu'(pre) before the backward products, and
// an epilogue pass when no cuBLASLt algorithm takes the fused form (e.g. an aux ld not a
// multiple of 8).
//
// Row-major y[M, N] = x[M, K] W[N, K]^T is column-major y^T = W^T x^T: transa = T on W,
// transb = N on x, m = N, n = M, k = K.
#include <cublasLt.h>

#include <mutex>
#include <vector>

#include "common/cuda_utils.cuh"
#include "common/dispatch.h"
#include "common/math.h"
#include "ops/linear/linear.h"

#define GC_LT_TRY(expr)                                                                                   \
  do {                                                                                                    \
    cublasStatus_t gc_lt_status_ = (expr);                                                                \
    if (gc_lt_status_ != CUBLAS_STATUS_SUCCESS)                                                           \
      return ::gc::fail(GC_ERROR_CUDA, "%s failed: %s (%s:%d)", #expr, cublasLtGetStatusString(gc_lt_status_), \
                        __FILE__, __LINE__);                                                              \
  } while (0)

namespace gc {
namespace {

constexpr size_t kLtWorkspace = size_t{32} << 20;  // what cuBLAS suggests for Hopper
constexpr size_t kAlign = 256;

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// One cuBLASLt handle per device, created on first use and kept for the process.
gc_status lt_handle(int device, cublasLtHandle_t* out) {
  static std::mutex mutex;
  static std::vector<cublasLtHandle_t> handles;
  std::lock_guard<std::mutex> lock(mutex);
  if (static_cast<size_t>(device) >= handles.size()) handles.resize(device + 1, nullptr);
  if (handles[device] == nullptr) GC_LT_TRY(cublasLtCreate(&handles[device]));
  *out = handles[device];
  return GC_OK;
}

template <class T>
cudaDataType_t cuda_type();
template <>
cudaDataType_t cuda_type<float>() {
  return CUDA_R_32F;
}
template <>
cudaDataType_t cuda_type<half_t>() {
  return CUDA_R_16F;
}
template <>
cudaDataType_t cuda_type<bf16_t>() {
  return CUDA_R_16BF;
}

// Column-major D[m, n] = op(A)[m, k] op(B)[k, n] (+ C with beta = 1), then the epilogue.
struct Gemm {
  cublasOperation_t trans_a, trans_b;
  int64_t m, n, k;
  const void* a;
  int64_t lda;
  const void* b;
  int64_t ldb;
  const void* c;  // optional: added with beta = 1 (ld = m)
  void* d;        // ld = m
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  void* bias = nullptr;  // bias (read) or bias gradient (written)
  void* aux = nullptr;   // GELU input (ld = m)
};

// The descriptors of one call, destroyed on every return path.
struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, cd = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescriptors() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (cd) cublasLtMatrixLayoutDestroy(cd);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// Runs g; *fused_ok = false (and nothing runs) when cuBLASLt has no algorithm for g's epilogue.
template <class T>
gc_status run_gemm(const Gemm& g, void* workspace, cudaStream_t stream, bool* fused_ok) {
  int device = 0;
  GC_CUDA_TRY(cudaGetDevice(&device));
  cublasLtHandle_t handle;
  GC_TRY(lt_handle(device, &handle));
  const cudaDataType_t type = cuda_type<T>();
  LtDescriptors desc;
  GC_LT_TRY(cublasLtMatmulDescCreate(&desc.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  GC_LT_TRY(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSA, &g.trans_a, sizeof(g.trans_a)));
  GC_LT_TRY(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSB, &g.trans_b, sizeof(g.trans_b)));
  GC_LT_TRY(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &g.epilogue, sizeof(g.epilogue)));
  if (g.bias) {
    const int32_t bias_type = type;
    GC_LT_TRY(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
    GC_LT_TRY(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  if (g.aux) {
    const int64_t ld = g.m;
    GC_LT_TRY(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof(g.aux)));
    GC_LT_TRY(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
  }
  const bool ta = g.trans_a == CUBLAS_OP_T, tb = g.trans_b == CUBLAS_OP_T;
  GC_LT_TRY(cublasLtMatrixLayoutCreate(&desc.a, type, ta ? g.k : g.m, ta ? g.m : g.k, g.lda));
  GC_LT_TRY(cublasLtMatrixLayoutCreate(&desc.b, type, tb ? g.n : g.k, tb ? g.k : g.n, g.ldb));
  GC_LT_TRY(cublasLtMatrixLayoutCreate(&desc.cd, type, g.m, g.n, g.m));
  GC_LT_TRY(cublasLtMatmulPreferenceCreate(&desc.pref));
  const uint64_t workspace_bytes = kLtWorkspace;
  GC_LT_TRY(cublasLtMatmulPreferenceSetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                                 sizeof(workspace_bytes)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t heuristic = cublasLtMatmulAlgoGetHeuristic(handle, desc.op, desc.a, desc.b, desc.cd, desc.cd,
                                                                  desc.pref, 1, &result, &found);
  if (heuristic == CUBLAS_STATUS_NOT_SUPPORTED || (heuristic == CUBLAS_STATUS_SUCCESS && found == 0)) {
    *fused_ok = false;
    return GC_OK;
  }
  GC_LT_TRY(heuristic);
  *fused_ok = true;
  const float alpha = 1.f, beta = g.c ? 1.f : 0.f;
  GC_LT_TRY(cublasLtMatmul(handle, desc.op, &alpha, g.a, desc.a, g.b, desc.b, &beta, g.c ? g.c : g.d, desc.cd, g.d,
                           desc.cd, &result.algo, workspace, kLtWorkspace, stream));
  return GC_OK;
}

// Runs g, which has no epilogue to give up: no algorithm is an error.
template <class T>
gc_status run_plain_gemm(const Gemm& g, void* workspace, cudaStream_t stream, const char* what) {
  bool ok = false;
  GC_TRY(run_gemm<T>(g, workspace, stream, &ok));
  if (!ok)
    return fail(GC_ERROR_CUDA, "cuBLASLt has no algorithm for the %s product (m = %lld, n = %lld, k = %lld)", what,
                (long long)g.m, (long long)g.n, (long long)g.k);
  return GC_OK;
}

// y = act(in + bias + residual) over [M, N], pre = the activation's input; in absent = 0.
template <class T>
__global__ void epilogue_kernel(const T* __restrict__ in, const T* __restrict__ bias, const T* __restrict__ residual,
                                T* __restrict__ pre, T* __restrict__ y, int64_t total, int N, bool gelu) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i % N);
    float v = in ? to_float(in[i]) : 0.f;
    if (bias) v += to_float(bias[c]);
    if (residual) v += to_float(residual[i]);
    if (gelu) {
      if (pre) pre[i] = from_float<T>(v);
      v = gelu_tanh(v);
    }
    y[i] = from_float<T>(v);
  }
}

// dpre = dy * gelu'(pre).
template <class T>
__global__ void dgelu_kernel(const T* __restrict__ dy, const T* __restrict__ pre, T* __restrict__ dpre, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dpre[i] = from_float<T>(to_float(dy[i]) * gelu_tanh_grad(to_float(pre[i])));
}

// dbias[c] = sum over rows of g[:, c], one thread per column in a fixed order.
template <class T>
__global__ void column_sum_kernel(const T* __restrict__ g, T* __restrict__ out, int64_t M, int N) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= N) return;
  float sum = 0.f;
  for (int64_t r = 0; r < M; ++r) sum += to_float(g[r * N + c]);
  out[c] = from_float<T>(sum);
}

unsigned grid_for(int64_t total) {
  const int64_t blocks = (total + 255) / 256;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

template <class T>
gc_status fwd(const gc_linear_fwd_params& p, LinearDims d, void* workspace, cudaStream_t stream) {
  const bool gelu = p.activation == GC_ACTIVATION_GELU_TANH;
  T* y = static_cast<T*>(p.y.data);
  T* pre = gelu ? static_cast<T*>(p.pre_act.data) : nullptr;
  const T* bias = static_cast<const T*>(p.bias.data);
  const T* residual = static_cast<const T*>(p.residual.data);
  const int64_t total = d.M * d.N;
  if (d.K == 0) {  // no product: the epilogue alone
    epilogue_kernel<T><<<grid_for(total), 256, 0, stream>>>(nullptr, bias, residual, pre, y, total,
                                                             static_cast<int>(d.N), gelu);
    return check_launch("linear epilogue_kernel");
  }
  Gemm g{CUBLAS_OP_T, CUBLAS_OP_N, d.N, d.M, d.K, p.weight.data, d.K, p.x.data, d.K, residual, y};
  g.bias = const_cast<T*>(bias);
  bool fused_ok = false;
  if (gelu && pre) {
    if (d.N % 8 == 0) {  // cuBLASLt wants the aux ld divisible by 8
      g.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
      g.aux = pre;
      GC_TRY(run_gemm<T>(g, workspace, stream, &fused_ok));
    }
  } else if (gelu) {
    g.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    GC_TRY(run_gemm<T>(g, workspace, stream, &fused_ok));
  } else {
    g.epilogue = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    GC_TRY(run_gemm<T>(g, workspace, stream, &fused_ok));
  }
  if (fused_ok) return GC_OK;
  // Unfused: the product (+ residual) into pre_act or y, then one epilogue pass.
  T* product = pre ? pre : y;
  Gemm plain = g;
  plain.d = product;
  plain.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  plain.bias = nullptr;
  plain.aux = nullptr;
  GC_TRY(run_plain_gemm<T>(plain, workspace, stream, "forward"));
  if (!gelu && !bias) return GC_OK;
  epilogue_kernel<T><<<grid_for(total), 256, 0, stream>>>(product, bias, nullptr, pre, y, total, static_cast<int>(d.N),
                                                           gelu);
  return check_launch("linear epilogue_kernel");
}

template <class T>
gc_status bwd(const gc_linear_bwd_params& p, LinearDims d, void* workspace, cudaStream_t stream) {
  const bool gelu = p.activation == GC_ACTIVATION_GELU_TANH;
  const int64_t total = d.M * d.N;
  const T* g = static_cast<const T*>(p.dy.data);
  char* lt_workspace = static_cast<char*>(workspace);
  if (gelu) {  // cuBLASLt's DGELU epilogues act on a product's output; here gelu' scales an input
    T* dpre = static_cast<T*>(workspace);
    lt_workspace += align_up(total * sizeof(T));
    if (total > 0) {
      dgelu_kernel<T><<<grid_for(total), 256, 0, stream>>>(g, static_cast<const T*>(p.pre_act.data), dpre, total);
      GC_TRY(check_launch("linear dgelu_kernel"));
    }
    g = dpre;
  }
  T* dbias = static_cast<T*>(p.dbias.data);
  bool dbias_done = dbias == nullptr;
  if (p.dweight.data) {
    // dW^T [K, N] (column-major) = x^T [K, M] dpre [M, N]; the bias gradient sums B over k = M.
    if (d.M == 0) {
      GC_CUDA_TRY(cudaMemsetAsync(p.dweight.data, 0, d.N * d.K * sizeof(T), stream));
    } else if (d.K > 0 && d.N > 0) {
      Gemm gw{CUBLAS_OP_N, CUBLAS_OP_T, d.K, d.N, d.M, p.x.data, d.K, g, d.N, nullptr, p.dweight.data};
      if (dbias) {
        gw.epilogue = CUBLASLT_EPILOGUE_BGRADB;
        gw.bias = dbias;
        GC_TRY(run_gemm<T>(gw, lt_workspace, stream, &dbias_done));
      }
      if (!dbias_done || !dbias) {
        gw.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
        gw.bias = nullptr;
        GC_TRY(run_plain_gemm<T>(gw, lt_workspace, stream, "weight gradient"));
      }
    }
  }
  if (!dbias_done && d.N > 0) {
    column_sum_kernel<T><<<static_cast<unsigned>((d.N + 255) / 256), 256, 0, stream>>>(g, dbias, d.M,
                                                                                       static_cast<int>(d.N));
    GC_TRY(check_launch("linear column_sum_kernel"));
  }
  if (p.dx.data && d.M > 0 && d.K > 0) {
    // dx^T [K, M] (column-major) = W^T [K, N] dpre^T [N, M].
    if (d.N == 0) {
      GC_CUDA_TRY(cudaMemsetAsync(p.dx.data, 0, d.M * d.K * sizeof(T), stream));
    } else {
      const Gemm gx{CUBLAS_OP_N, CUBLAS_OP_N, d.K, d.M, d.N, p.weight.data, d.K, g, d.N, nullptr, p.dx.data};
      GC_TRY(run_plain_gemm<T>(gx, lt_workspace, stream, "input gradient"));
    }
  }
  return GC_OK;
}

}  // namespace

size_t linear_fwd_workspace_cuda(const gc_linear_fwd_params&, LinearDims) { return kLtWorkspace; }

size_t linear_bwd_workspace_cuda(const gc_linear_bwd_params& p, LinearDims d) {
  const size_t dpre = p.activation == GC_ACTIVATION_GELU_TANH ? align_up(d.M * d.N * gc_dtype_size(p.x.dtype)) : 0;
  return dpre + kLtWorkspace;
}

gc_status linear_fwd_cuda(const gc_linear_fwd_params& p, LinearDims d, void* workspace, size_t, void* stream) {
  DeviceGuard guard(p.x.device_index);
  GC_CUDA_TRY(guard.status());
  return GC_FLOAT_SWITCH(p.x.dtype, T, [&] { return fwd<T>(p, d, workspace, as_stream(stream)); });
}

gc_status linear_bwd_cuda(const gc_linear_bwd_params& p, LinearDims d, void* workspace, size_t, void* stream) {
  DeviceGuard guard(p.x.device_index);
  GC_CUDA_TRY(guard.status());
  return GC_FLOAT_SWITCH(p.x.dtype, T, [&] { return bwd<T>(p, d, workspace, as_stream(stream)); });
}

}  // namespace gc
