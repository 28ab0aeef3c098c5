// Linear on CUDA: cuBLASLt products with its fused epilogues (bias, GELU with the
// pre-activation as aux output, residual as C with beta = 1, bias gradient as BGRADB), and
// small kernels where cuBLASLt cannot fuse: dy * gelu'(pre) before the backward products, and
// an epilogue pass when no cuBLASLt algorithm takes the fused form (e.g. an aux ld not a
// multiple of 8, a bias or aux pointer off a 16-byte boundary, any heuristic or matmul failure).
//
// Row-major y[M, N] = x[M, K] W[N, K]^T is column-major y^T = W^T x^T: transa = T on W,
// transb = N on x, m = N, n = M, k = K.
//
// Each product's plan (matmul description, layouts, algorithm) is chosen once per problem,
// epilogue and operand alignment, and cached: cuBLASLt's heuristic costs far more than the
// launch. The heuristic is told each pointer's real alignment, since by default it may pick
// kernels that assume 256-byte-aligned operands, and a view at an offset (x[1:]) would then
// fault with a misaligned address.
#include <cublasLt.h>

#include <map>
#include <memory>
#include <mutex>
#include <tuple>
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

#define GC_LT_RETURN_IF_ERROR(expr)                                   \
  do {                                                                \
    const cublasStatus_t gc_lt_status_ = (expr);                      \
    if (gc_lt_status_ != CUBLAS_STATUS_SUCCESS) return gc_lt_status_; \
  } while (0)

namespace gc {
namespace {

constexpr size_t kLtWorkspace = size_t{32} << 20;  // what cuBLAS suggests for Hopper
constexpr size_t kAlign = 256;
constexpr size_t kMaxPlans = 4096;  // past this the cache starts afresh (shapes that never repeat)

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The caller's workspace moved up to a 256-byte boundary, as cuBLASLt wants it (the sizes
// reserve the room).
char* aligned_workspace(void* p) { return reinterpret_cast<char*>(align_up(reinterpret_cast<uintptr_t>(p))); }

// The largest power of two dividing p's address, at most 256: what cuBLASLt may assume of it.
uint32_t alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t low = a & (~a + 1);  // the lowest set bit; 0 for a null pointer
  return low == 0 || low >= kAlign ? static_cast<uint32_t>(kAlign) : static_cast<uint32_t>(low);
}

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

// What selects a plan: the device, the problem, the epilogue and what may be assumed of each
// address (the pointers themselves change from call to call).
struct PlanKey {
  int device;
  cudaDataType_t type;
  cublasOperation_t trans_a, trans_b;
  int64_t m, n, k, lda, ldb;
  cublasLtEpilogue_t epilogue;
  uint32_t align_a, align_b, align_c, align_d, align_bias, align_aux;

  bool operator<(const PlanKey& o) const {
    return std::tie(device, type, trans_a, trans_b, m, n, k, lda, ldb, epilogue, align_a, align_b, align_c, align_d,
                    align_bias, align_aux) < std::tie(o.device, o.type, o.trans_a, o.trans_b, o.m, o.n, o.k, o.lda,
                                                      o.ldb, o.epilogue, o.align_a, o.align_b, o.align_c, o.align_d,
                                                      o.align_bias, o.align_aux);
  }
};

// A matmul description, its layouts and the algorithm the heuristic chose; `status` says why
// there is none (heuristic failed or found nothing). The bias and aux pointers live in `op`,
// so a call sets them and launches under `mutex`.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, cd = nullptr;
  cublasLtMatmulAlgo_t algo{};
  cublasStatus_t status = CUBLAS_STATUS_NOT_INITIALIZED;
  std::mutex mutex;

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (cd) cublasLtMatrixLayoutDestroy(cd);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
  bool usable() const { return status == CUBLAS_STATUS_SUCCESS; }
};

// A preference freed on every return path.
struct Preference {
  cublasLtMatmulPreference_t pref = nullptr;
  ~Preference() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
  }
};

cublasStatus_t set_pref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, uint32_t value) {
  return cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
}

// Describes g (with the alignments of `key`) and asks the heuristic for an algorithm;
// CUBLAS_STATUS_NOT_SUPPORTED when it has none.
cublasStatus_t build_plan(cublasLtHandle_t handle, const Gemm& g, const PlanKey& key, Plan* plan) {
  GC_LT_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  GC_LT_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &g.trans_a, sizeof(g.trans_a)));
  GC_LT_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &g.trans_b, sizeof(g.trans_b)));
  GC_LT_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &g.epilogue, sizeof(g.epilogue)));
  if (g.bias) {
    const int32_t bias_type = key.type;
    GC_LT_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
    GC_LT_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                         sizeof(bias_type)));
  }
  if (g.aux) {
    const int64_t ld = g.m;
    GC_LT_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux, sizeof(g.aux)));
    GC_LT_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
  }
  const bool ta = g.trans_a == CUBLAS_OP_T, tb = g.trans_b == CUBLAS_OP_T;
  GC_LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->a, key.type, ta ? g.k : g.m, ta ? g.m : g.k, g.lda));
  GC_LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->b, key.type, tb ? g.n : g.k, tb ? g.k : g.n, g.ldb));
  GC_LT_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->cd, key.type, g.m, g.n, g.m));
  Preference pref;
  GC_LT_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref.pref));
  const uint64_t workspace_bytes = kLtWorkspace;
  GC_LT_RETURN_IF_ERROR(cublasLtMatmulPreferenceSetAttribute(pref.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &workspace_bytes, sizeof(workspace_bytes)));
  GC_LT_RETURN_IF_ERROR(set_pref(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a));
  GC_LT_RETURN_IF_ERROR(set_pref(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b));
  GC_LT_RETURN_IF_ERROR(set_pref(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c));
  GC_LT_RETURN_IF_ERROR(set_pref(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  GC_LT_RETURN_IF_ERROR(cublasLtMatmulAlgoGetHeuristic(handle, plan->op, plan->a, plan->b, plan->cd, plan->cd,
                                                       pref.pref, 1, &result, &found));
  if (found == 0) return CUBLAS_STATUS_NOT_SUPPORTED;
  plan->algo = result.algo;
  return CUBLAS_STATUS_SUCCESS;
}

// The cached plan for g, built on first use. A heuristic answer (an algorithm, or none) is
// kept; any other failure is returned uncached, to be tried again on the next call.
std::shared_ptr<Plan> find_plan(cublasLtHandle_t handle, const Gemm& g, const PlanKey& key) {
  static std::mutex mutex;
  static auto& plans = *new std::map<PlanKey, std::shared_ptr<Plan>>;  // never freed: no teardown at exit
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = plans.find(key);
    if (it != plans.end()) return it->second;
  }
  auto plan = std::make_shared<Plan>();
  plan->status = build_plan(handle, g, key, plan.get());
  if (plan->status != CUBLAS_STATUS_SUCCESS && plan->status != CUBLAS_STATUS_NOT_SUPPORTED) return plan;
  std::lock_guard<std::mutex> lock(mutex);
  if (plans.size() >= kMaxPlans) plans.clear();  // plans in use live on in their callers' shared_ptr
  return plans.emplace(key, plan).first->second;  // another thread's plan if it came first
}

// Runs g. *ran = false (nothing ran, *why says what failed) when cuBLASLt has no algorithm for
// g or its matmul fails: the caller then takes the unfused path or reports the failure.
template <class T>
gc_status run_gemm(const Gemm& g, void* workspace, cudaStream_t stream, bool* ran, cublasStatus_t* why = nullptr) {
  *ran = false;
  int device = 0;
  GC_CUDA_TRY(cudaGetDevice(&device));
  cublasLtHandle_t handle;
  GC_TRY(lt_handle(device, &handle));
  const void* c = g.c ? g.c : g.d;
  const PlanKey key{device, cuda_type<T>(), g.trans_a, g.trans_b, g.m, g.n, g.k, g.lda, g.ldb, g.epilogue,
                    alignment(g.a), alignment(g.b), alignment(c), alignment(g.d), alignment(g.bias),
                    alignment(g.aux)};
  const std::shared_ptr<Plan> plan = find_plan(handle, g, key);
  cublasStatus_t status = plan->status;
  if (plan->usable()) {
    std::lock_guard<std::mutex> lock(plan->mutex);
    if (g.bias)
      status = cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias));
    if (g.aux && status == CUBLAS_STATUS_SUCCESS)
      status = cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &g.aux,
                                              sizeof(g.aux));
    const float alpha = 1.f, beta = g.c ? 1.f : 0.f;
    if (status == CUBLAS_STATUS_SUCCESS)
      status = cublasLtMatmul(handle, plan->op, &alpha, g.a, plan->a, g.b, plan->b, &beta, c, plan->cd, g.d, plan->cd,
                              &plan->algo, workspace, kLtWorkspace, stream);
    if (status != CUBLAS_STATUS_SUCCESS) (void)cudaGetLastError();  // a refused launch must not fail the next check
  }
  if (why) *why = status;
  *ran = status == CUBLAS_STATUS_SUCCESS;
  return GC_OK;
}

// Runs g, which has no epilogue to give up: no algorithm, or a failed matmul, is an error.
template <class T>
gc_status run_plain_gemm(const Gemm& g, void* workspace, cudaStream_t stream, const char* what) {
  bool ran = false;
  cublasStatus_t why = CUBLAS_STATUS_SUCCESS;
  GC_TRY(run_gemm<T>(g, workspace, stream, &ran, &why));
  if (!ran)
    return fail(GC_ERROR_CUDA,
                "cuBLASLt could not run the %s product (m = %lld, n = %lld, k = %lld, operand alignments %u/%u/%u "
                "bytes): %s",
                what, (long long)g.m, (long long)g.n, (long long)g.k, alignment(g.a), alignment(g.b), alignment(g.d),
                why == CUBLAS_STATUS_NOT_SUPPORTED ? "no algorithm" : cublasLtGetStatusString(why));
  return GC_OK;
}

// y = act(in + bias + residual) over [M, N], pre = the activation's input; in absent = 0.
// in may be pre or y (the unfused path's product is written there first): each element is
// read and then written by the same thread, so none of in, residual, pre, y is __restrict__.
template <class T>
__global__ void epilogue_kernel(const T* in, const T* __restrict__ bias, const T* residual, T* pre, T* y,
                                int64_t total, int N, bool gelu) {
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

// cuBLASLt reads a bias or aux vector with wide accesses: a pointer off a 16-byte boundary
// takes the unfused path instead.
bool epilogue_aligned(const void* p) { return p == nullptr || aligned16(p); }

template <class T>
gc_status fwd(const gc_linear_fwd_params& p, LinearDims d, char* workspace, cudaStream_t stream) {
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
  const Gemm plain{CUBLAS_OP_T, CUBLAS_OP_N, d.N, d.M, d.K, p.weight.data, d.K, p.x.data, d.K, residual, y};
  if (gelu || bias) {  // first the fused form, when cuBLASLt may take it
    Gemm fused = plain;
    fused.bias = const_cast<T*>(bias);
    bool fusable = epilogue_aligned(bias);
    if (gelu && pre) {
      fused.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
      fused.aux = pre;
      fusable = fusable && d.N % 8 == 0 && epilogue_aligned(pre);  // cuBLASLt wants the aux ld divisible by 8
    } else if (gelu) {
      fused.epilogue = bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    } else {
      fused.epilogue = CUBLASLT_EPILOGUE_BIAS;
    }
    bool ran = false;
    if (fusable) GC_TRY(run_gemm<T>(fused, workspace, stream, &ran));
    if (ran) return GC_OK;
  }
  // Unfused: the product (+ residual) into pre_act or y, then one epilogue pass over it. The bias
  // goes into the product when cuBLASLt takes it alone, so x W^T + b is rounded once, as the
  // fused form (and PyTorch's addmm) rounds it; else the pass adds it to the rounded product.
  T* product = pre ? pre : y;
  Gemm g = plain;
  g.d = product;
  bool bias_done = false;
  if (gelu && bias && epilogue_aligned(bias)) {
    Gemm with_bias = g;
    with_bias.epilogue = CUBLASLT_EPILOGUE_BIAS;
    with_bias.bias = const_cast<T*>(bias);
    GC_TRY(run_gemm<T>(with_bias, workspace, stream, &bias_done));
  }
  if (!bias_done) GC_TRY(run_plain_gemm<T>(g, workspace, stream, "forward"));
  const T* pass_bias = bias_done ? nullptr : bias;
  if (!gelu && !pass_bias) return GC_OK;
  epilogue_kernel<T><<<grid_for(total), 256, 0, stream>>>(product, pass_bias, nullptr, pre, y, total,
                                                           static_cast<int>(d.N), gelu);
  return check_launch("linear epilogue_kernel");
}

template <class T>
gc_status bwd(const gc_linear_bwd_params& p, LinearDims d, char* workspace, cudaStream_t stream) {
  const bool gelu = p.activation == GC_ACTIVATION_GELU_TANH;
  const int64_t total = d.M * d.N;
  const T* g = static_cast<const T*>(p.dy.data);
  char* lt_workspace = workspace;
  if (gelu) {  // cuBLASLt's DGELU epilogues act on a product's output; here gelu' scales an input
    T* dpre = reinterpret_cast<T*>(workspace);
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
      if (dbias && epilogue_aligned(dbias)) {
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

size_t linear_fwd_workspace_cuda(const gc_linear_fwd_params&, LinearDims) { return kAlign + kLtWorkspace; }

size_t linear_bwd_workspace_cuda(const gc_linear_bwd_params& p, LinearDims d) {
  const size_t dpre = p.activation == GC_ACTIVATION_GELU_TANH ? align_up(d.M * d.N * gc_dtype_size(p.x.dtype)) : 0;
  return kAlign + dpre + kLtWorkspace;
}

gc_status linear_fwd_cuda(const gc_linear_fwd_params& p, LinearDims d, void* workspace, size_t, void* stream) {
  DeviceGuard guard(p.x.device_index);
  GC_CUDA_TRY(guard.status());
  return GC_FLOAT_SWITCH(p.x.dtype, T, [&] { return fwd<T>(p, d, aligned_workspace(workspace), as_stream(stream)); });
}

gc_status linear_bwd_cuda(const gc_linear_bwd_params& p, LinearDims d, void* workspace, size_t, void* stream) {
  DeviceGuard guard(p.x.device_index);
  GC_CUDA_TRY(guard.status());
  return GC_FLOAT_SWITCH(p.x.dtype, T, [&] { return bwd<T>(p, d, aligned_workspace(workspace), as_stream(stream)); });
}

}  // namespace gc
