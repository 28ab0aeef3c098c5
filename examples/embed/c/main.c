/* gptcore's kernels from plain C: layer norm, cross-entropy and attention forward on buffers this
 * program owns, each checked against a reference it computes itself in double precision.
 * Exit status 0 when every check passes. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "gptcore/gptcore.h"

/* A fixed pseudo-random sequence in [-1, 1), so every run checks the same numbers. */
static uint32_t rng_state = 12345u;
static float uniform(void) {
  rng_state = rng_state * 1664525u + 1013904223u;
  return (float)(rng_state >> 8) / (float)(1u << 23) - 1.0f;
}

static void fill(float* x, int64_t n) {
  int64_t i;
  for (i = 0; i < n; ++i) x[i] = uniform();
}

static int failures = 0;

/* Stops on a failed call: the C API says why in gc_last_error(). */
static void call(gc_status status, const char* what) {
  if (status != GC_OK) {
    fprintf(stderr, "%s: %s: %s\n", what, gc_status_name(status), gc_last_error());
    exit(1);
  }
}

static void expect_close(const char* what, const float* got, const double* want, int64_t n, double tol) {
  double worst = 0.0;
  int64_t i;
  for (i = 0; i < n; ++i) {
    double err = fabs((double)got[i] - want[i]) / (1.0 + fabs(want[i]));
    if (!(err <= worst)) worst = err;
    if (isnan(worst)) break; /* a NaN fails the check below */
  }
  printf("%-14s max relative error %.2e (tolerance %.0e)\n", what, worst, tol);
  if (!(worst <= tol)) ++failures;
}

static gc_tensor view(void* data, int32_t dtype, int32_t ndim, const int64_t* shape) {
  return gc_make_tensor(data, dtype, GC_CPU, 0, ndim, shape);
}

static void check_layer_norm(void) {
  enum { N = 6, C = 67 };
  static float x[N * C], w[C], b[C], y[N * C], mean[N], rstd[N];
  static double want[N * C];
  const int64_t xs[2] = {N, C}, cs[1] = {C}, ns[1] = {N};
  const float eps = 1e-5f;
  gc_layer_norm_fwd_params p = {0};
  int64_t r, c;

  fill(x, N * C);
  fill(w, C);
  fill(b, C);
  p.x = view(x, GC_FLOAT32, 2, xs);
  p.weight = view(w, GC_FLOAT32, 1, cs);
  p.bias = view(b, GC_FLOAT32, 1, cs);
  p.y = view(y, GC_FLOAT32, 2, xs);
  p.mean = view(mean, GC_FLOAT32, 1, ns);
  p.rstd = view(rstd, GC_FLOAT32, 1, ns);
  p.eps = eps;
  call(gc_layer_norm_fwd(&p, NULL), "gc_layer_norm_fwd");

  for (r = 0; r < N; ++r) {
    double mu = 0.0, var = 0.0, inv;
    for (c = 0; c < C; ++c) mu += x[r * C + c];
    mu /= C;
    for (c = 0; c < C; ++c) var += (x[r * C + c] - mu) * (x[r * C + c] - mu);
    inv = 1.0 / sqrt(var / C + eps);
    for (c = 0; c < C; ++c) want[r * C + c] = (x[r * C + c] - mu) * inv * w[c] + b[c];
  }
  expect_close("layer norm", y, want, N * C, 1e-5);
}

static void check_cross_entropy(void) {
  enum { N = 5, V = 131 };
  static float logits[N * V], lse[N], loss[N];
  static double want[N];
  int64_t target[N] = {0, 130, 17, -100, 64}; /* -100: ignored, loss 0 */
  const int64_t ls[2] = {N, V}, ns[1] = {N};
  gc_cross_entropy_fwd_params p = {0};
  int64_t r, v;

  fill(logits, N * V);
  for (r = 0; r < N * V; ++r) logits[r] *= 4.0f;
  p.logits = view(logits, GC_FLOAT32, 2, ls);
  p.target = view(target, GC_INT64, 1, ns);
  p.lse = view(lse, GC_FLOAT32, 1, ns);
  p.loss = view(loss, GC_FLOAT32, 1, ns);
  p.vocab_start = 0;
  p.vocab_total = V;
  p.ignore_index = -100;
  call(gc_cross_entropy_fwd(&p, NULL), "gc_cross_entropy_fwd");

  for (r = 0; r < N; ++r) {
    double m = logits[r * V], s = 0.0;
    for (v = 1; v < V; ++v) m = fmax(m, logits[r * V + v]);
    for (v = 0; v < V; ++v) s += exp(logits[r * V + v] - m);
    want[r] = target[r] == -100 ? 0.0 : m + log(s) - logits[r * V + target[r]];
  }
  expect_close("cross-entropy", loss, want, N, 1e-5);
}

static void check_attention(void) {
  enum { B = 2, H = 3, T = 9, D = 32 };
  static float q[B * H * T * D], k[B * H * T * D], v[B * H * T * D], out[B * H * T * D], lse[B * H * T];
  static double want[B * H * T * D];
  const int64_t qs[4] = {B, H, T, D}, ls[3] = {B, H, T};
  const double scale = 1.0 / sqrt((double)D);
  gc_attention_fwd_params p = {0};
  int64_t bh, i, j, d;

  fill(q, B * H * T * D);
  fill(k, B * H * T * D);
  fill(v, B * H * T * D);
  p.q = view(q, GC_FLOAT32, 4, qs);
  p.k = view(k, GC_FLOAT32, 4, qs);
  p.v = view(v, GC_FLOAT32, 4, qs);
  p.out = view(out, GC_FLOAT32, 4, qs);
  p.lse = view(lse, GC_FLOAT32, 3, ls);
  p.scale = (float)scale;
  p.causal = 1; /* cu_seqlens stays absent: its data pointer is NULL */
  call(gc_attention_fwd(&p, NULL), "gc_attention_fwd");

  for (bh = 0; bh < B * H; ++bh) {
    const float *qb = q + bh * T * D, *kb = k + bh * T * D, *vb = v + bh * T * D;
    for (i = 0; i < T; ++i) {
      double s[T], m = -INFINITY, sum = 0.0;
      for (j = 0; j <= i; ++j) { /* causal: query i sees keys 0..i */
        s[j] = 0.0;
        for (d = 0; d < D; ++d) s[j] += (double)qb[i * D + d] * kb[j * D + d];
        s[j] *= scale;
        m = fmax(m, s[j]);
      }
      for (j = 0; j <= i; ++j) sum += (s[j] = exp(s[j] - m));
      for (d = 0; d < D; ++d) {
        double o = 0.0;
        for (j = 0; j <= i; ++j) o += s[j] / sum * vb[j * D + d];
        want[(bh * T + i) * D + d] = o;
      }
    }
  }
  expect_close("attention", out, want, B * H * T * D, 1e-5);
}

int main(void) {
  printf("gptcore %s, C API %d (compiled against %d)\n", gc_version(), gc_api_version(), GPTCORE_API_VERSION);
  if (gc_api_version() != GPTCORE_API_VERSION) {
    fprintf(stderr, "libgptcore.so speaks C API %d, this program was compiled against %d\n", gc_api_version(),
            GPTCORE_API_VERSION);
    return 1;
  }
  check_layer_norm();
  check_cross_entropy();
  check_attention();
  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
