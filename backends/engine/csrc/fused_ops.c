/* Fused row-wise ops of the decoder layer for the CPU engine (float32), one pass over memory each.
 *
 * Role in the data flow: backends/engine/fused_ops.py calls these (through native.py / ctypes) from
 * model.py's decoder layer when the step's activations are float32 on the CPU; elsewhere the same
 * math runs as PyTorch ops. Each replaces several PyTorch ops (each its own pass over the
 * activations and its own parallel region):
 *   add_rms_norm  residual = x + residual; out = residual * rsqrt(mean(residual^2) + eps) * weight
 *   silu_mul      out = silu(gate) * up, from the fused [gate | up] projection output
 *   rope          rotate-half RoPE in place on the q and k heads of the fused qkv rows
 * Rows are split over n_threads threads of torch's OpenMP team (parallel.h) when the work pays for it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "parallel.h"

#define MIN_FLOATS_PER_THREAD 32768

typedef void (*rows_fn)(const void *args, int64_t r0, int64_t r1);

typedef struct {
    rows_fn fn;
    const void *args;
    int64_t n_rows;
    int n_spans;
} spans_t;

static void run_span(void *arg, int t) {
    const spans_t *s = (const spans_t *)arg;
    s->fn(s->args, s->n_rows * t / s->n_spans, s->n_rows * (t + 1) / s->n_spans);
}

/* fn(args, r0, r1) over rows [0, n_rows) in contiguous spans, one per thread */
static void parallel_rows(rows_fn fn, const void *args, int64_t n_rows, int64_t floats_per_row, int n_threads) {
    const int64_t by_work = n_rows * floats_per_row / MIN_FLOATS_PER_THREAD;
    n_threads = team_size(n_threads, by_work < n_rows ? by_work : n_rows);
    spans_t s = {fn, args, n_rows, n_threads};
    run_jobs(run_span, &s, n_threads);
}

/* ---- add_rms_norm ------------------------------------------------------------------------------ */
typedef struct {
    const float *x, *weight;
    float *residual, *out;   /* residual may be NULL: then it is not added, and x is the residual */
    float *res_out;          /* where the new residual goes (may equal residual) */
    int64_t dim;
    float eps;
} norm_args;

static void norm_rows(const void *a_, int64_t r0, int64_t r1) {
    const norm_args *a = (const norm_args *)a_;
    const int64_t n = a->dim;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = a->x + r * n;
        float *res = a->res_out + r * n, *out = a->out + r * n;
        float ss = 0.f;
        if (a->residual) {
            const float *old = a->residual + r * n;
            for (int64_t i = 0; i < n; i++) {
                const float h = x[i] + old[i];
                res[i] = h;
                ss += h * h;
            }
        } else {
            for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
            res = (float *)x;
        }
        const float inv = 1.f / sqrtf(ss / (float)n + a->eps);
        for (int64_t i = 0; i < n; i++) out[i] = res[i] * inv * a->weight[i];
    }
}

void add_rms_norm(const float *x, float *residual, float *res_out, const float *weight, float *out,
                  int64_t n_rows, int64_t dim, float eps, int n_threads) {
    const norm_args a = {x, weight, residual, out, res_out, dim, eps};
    parallel_rows(norm_rows, &a, n_rows, dim, n_threads);
}

/* ---- silu_mul ---------------------------------------------------------------------------------- */
typedef struct {
    const float *gate_up;  /* [rows][2 * n]: gate then up */
    float *out;            /* [rows][n] */
    int64_t n;
} silu_args;

static void silu_rows(const void *a_, int64_t r0, int64_t r1) {
    const silu_args *a = (const silu_args *)a_;
    const int64_t n = a->n;
    for (int64_t r = r0; r < r1; r++) {
        const float *g = a->gate_up + r * 2 * n, *u = g + n;
        float *o = a->out + r * n;
        for (int64_t i = 0; i < n; i++) o[i] = g[i] / (1.f + expf(-g[i])) * u[i];
    }
}

void silu_mul(const float *gate_up, float *out, int64_t n_rows, int64_t n, int n_threads) {
    const silu_args a = {gate_up, out, n};
    parallel_rows(silu_rows, &a, n_rows, 3 * n, n_threads);
}

/* ---- rope -------------------------------------------------------------------------------------- */
typedef struct {
    float *x;                 /* row r, head h: x + r * row_stride + h * head_dim */
    const float *cos, *sin;   /* [rows][head_dim], full width: [cos | cos], [-sin | sin] */
    int64_t row_stride;
    int n_heads, head_dim;
} rope_args;

static void rope_rows(const void *a_, int64_t r0, int64_t r1) {
    const rope_args *a = (const rope_args *)a_;
    const int d = a->head_dim, half = d / 2;
    for (int64_t r = r0; r < r1; r++) {
        const float *c = a->cos + r * d, *s = a->sin + r * d;
        for (int h = 0; h < a->n_heads; h++) {
            float *x = a->x + r * a->row_stride + (int64_t)h * d;
            /* x * cos + [x2 | x1] * sin, x1 = x[:half], x2 = x[half:] */
            for (int i = 0; i < half; i++) {
                const float x1 = x[i], x2 = x[i + half];
                x[i] = x1 * c[i] + x2 * s[i];
                x[i + half] = x2 * c[i + half] + x1 * s[i + half];
            }
        }
    }
}

void rope(float *x, const float *cos, const float *sin, int64_t n_rows, int64_t row_stride, int n_heads,
          int head_dim, int n_threads) {
    const rope_args a = {x, cos, sin, row_stride, n_heads, head_dim};
    parallel_rows(rope_rows, &a, n_rows, (int64_t)n_heads * head_dim, n_threads);
}
