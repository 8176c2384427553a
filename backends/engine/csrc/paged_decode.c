/* Paged decode attention for the CPU engine: one call per layer for every decoding sequence.
 *
 * Role in the data flow: backends/engine/paged_attention.py calls paged_decode() (through
 * native.py / ctypes) once per layer of a step whose decode rows are float32 on the CPU. Each
 * sequence has one query token; its keys and values are read in place from the KV pool through
 * its block table: no gather, no padding to the longest context, no per-sequence kernel launch.
 *
 * Layout (see KVCache): the layer's k (and v) pool is [n_kv_heads, num_slots, head_dim] with
 * slot = block * block_size + offset; q and out are [B, n_heads, head_dim] (q rows may be strided,
 * heads contiguous). GQA: the g = n_heads / n_kv_heads query heads of a kv head are computed
 * together, so each key and value vector is read once for all g of them.
 *
 * Work item = (sequence, kv head). Items are split over n_threads threads of torch's OpenMP team
 * (parallel.h) in contiguous ranges of equal total context length. Per item: scores = q.k * scale
 * for the whole context (one pass over K), exact softmax (max, exp, sum), out = p.V (one pass
 * over V), in float32 throughout.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parallel.h"

typedef struct {
    const float *q;
    const float *k;
    const float *v;
    float *out;
    const int32_t *tables;
    const int32_t *ctx_lens;
    int64_t q_stride;      /* elements between consecutive sequences' q rows */
    int64_t head_stride;   /* elements between kv heads in the pool (num_slots * head_dim) */
    int n_heads, n_kv_heads, head_dim, block_size, max_blocks;
    float scale;
    int64_t item_begin, item_end;
    int status;
} job_t;

/* 8 float lanes (AVX2's width; GCC lowers it to whatever vector unit -march=native has) */
#define VL 8
typedef float vf __attribute__((vector_size(VL * sizeof(float)), aligned(4)));

static inline float hsum(vf x) {
    float s = 0.f;
    for (int i = 0; i < VL; i++) s += x[i];
    return s;
}

/* out[t] = scale * q . k_t for the n consecutive vectors k_t of one block; d % VL == 0.
 * Four tokens at a time, so four independent FMA chains hide the FMA latency. */
static void block_dots_v(const float *q, const float *k, int n, int d, float scale, float *out) {
    const int nv = d / VL;
    int t = 0;
    for (; t + 4 <= n; t += 4) {
        const float *k0 = k + (int64_t)t * d;
        vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int c = 0; c < nv; c++) {
            const vf qc = *(const vf *)(q + c * VL);
            a0 += qc * *(const vf *)(k0 + c * VL);
            a1 += qc * *(const vf *)(k0 + d + c * VL);
            a2 += qc * *(const vf *)(k0 + 2 * d + c * VL);
            a3 += qc * *(const vf *)(k0 + 3 * d + c * VL);
        }
        out[t] = hsum(a0) * scale;
        out[t + 1] = hsum(a1) * scale;
        out[t + 2] = hsum(a2) * scale;
        out[t + 3] = hsum(a3) * scale;
    }
    for (; t < n; t++) {
        const float *kt = k + (int64_t)t * d;
        vf a = {0};
        for (int c = 0; c < nv; c++) a += *(const vf *)(q + c * VL) * *(const vf *)(kt + c * VL);
        out[t] = hsum(a) * scale;
    }
}

static void block_dots(const float *q, const float *k, int n, int d, float scale, float *out) {
    for (int t = 0; t < n; t++) {
        const float *kt = k + (int64_t)t * d;
        float s = 0.f;
        for (int i = 0; i < d; i++) s += q[i] * kt[i];
        out[t] = s * scale;
    }
}

/* acc += sum_t p[t] * v_t over the n consecutive vectors v_t of one block; d % VL == 0.
 * 32 lanes of acc at a time stay in four registers across the block's tokens (a variable-length
 * register array would be spilled to the stack). */
static void block_axpy_v(const float *p, const float *v, int n, int d, float *acc) {
    int c0 = 0;
    for (; c0 + 4 * VL <= d; c0 += 4 * VL) {
        vf a0 = *(const vf *)(acc + c0), a1 = *(const vf *)(acc + c0 + VL);
        vf a2 = *(const vf *)(acc + c0 + 2 * VL), a3 = *(const vf *)(acc + c0 + 3 * VL);
        for (int t = 0; t < n; t++) {
            const float *vt = v + (int64_t)t * d + c0;
            const float pt = p[t];
            a0 += pt * *(const vf *)vt;
            a1 += pt * *(const vf *)(vt + VL);
            a2 += pt * *(const vf *)(vt + 2 * VL);
            a3 += pt * *(const vf *)(vt + 3 * VL);
        }
        *(vf *)(acc + c0) = a0;
        *(vf *)(acc + c0 + VL) = a1;
        *(vf *)(acc + c0 + 2 * VL) = a2;
        *(vf *)(acc + c0 + 3 * VL) = a3;
    }
    for (; c0 < d; c0 += VL) {
        vf a = *(const vf *)(acc + c0);
        for (int t = 0; t < n; t++) a += p[t] * *(const vf *)(v + (int64_t)t * d + c0);
        *(vf *)(acc + c0) = a;
    }
}

static void block_axpy(const float *p, const float *v, int n, int d, float *acc) {
    for (int t = 0; t < n; t++)
        for (int i = 0; i < d; i++) acc[i] += p[t] * v[(int64_t)t * d + i];
}

/* A block that does not follow the previous one in the pool is in another page, where the
 * hardware prefetcher stops: fetch it while the current block is computed (measured, 64
 * sequences with shuffled tables: 8.9 -> 6.4 ms per layer; consecutive blocks: no gain). */
static inline void prefetch_block(const float *p, int n) {
    for (int i = 0; i < n; i += 64 / sizeof(float)) __builtin_prefetch(p + i, 0, 3);
}

/* The vectors of block i of a sequence (table) in one head's pool (base); prefetches block i + 1
 * when it is not the next block in the pool. Shared by the K and the V pass. */
static inline const float *block_at(const float *base, const int32_t *table, int i, int n_blocks,
                                    int bs, int d) {
    if (i + 1 < n_blocks && table[i + 1] != table[i] + 1)
        prefetch_block(base + ((int64_t)table[i + 1] * bs) * d, bs * d);
    return base + ((int64_t)table[i] * bs) * d;
}

static void attend_item(const job_t *j, int64_t item, float *scores, float *acc) {
    const int b = (int)(item / j->n_kv_heads), kh = (int)(item % j->n_kv_heads);
    const int g = j->n_heads / j->n_kv_heads, d = j->head_dim, bs = j->block_size;
    const int len = j->ctx_lens[b], n_blocks = (len + bs - 1) / bs;
    const int32_t *table = j->tables + (int64_t)b * j->max_blocks;
    const float *q = j->q + (int64_t)b * j->q_stride + (int64_t)kh * g * d;
    const float *kbase = j->k + (int64_t)kh * j->head_stride;
    const float *vbase = j->v + (int64_t)kh * j->head_stride;
    float *out = j->out + ((int64_t)b * j->n_heads + (int64_t)kh * g) * d;

    /* scores[r * len + t] = scale * q_r . k_t */
    for (int t0 = 0; t0 < len; t0 += bs) {
        const int n = len - t0 < bs ? len - t0 : bs;
        const float *kb = block_at(kbase, table, t0 / bs, n_blocks, bs, d);
        for (int r = 0; r < g; r++) {
            float *sr = scores + (int64_t)r * len + t0;
            if (d % VL == 0) block_dots_v(q + (int64_t)r * d, kb, n, d, j->scale, sr);
            else block_dots(q + (int64_t)r * d, kb, n, d, j->scale, sr);
        }
    }
    /* softmax per query head; 1 / sum folded into the output */
    float inv_sum[64];
    for (int r = 0; r < g; r++) {
        float *sr = scores + (int64_t)r * len;
        float m = sr[0];
        for (int t = 1; t < len; t++) m = sr[t] > m ? sr[t] : m;
        float sum = 0.f;
        for (int t = 0; t < len; t++) {
            sr[t] = expf(sr[t] - m);
            sum += sr[t];
        }
        inv_sum[r] = 1.f / sum;
    }
    /* acc[r] = sum_t p[r, t] * v_t, a block of V (L1-resident) at a time for all g rows */
    memset(acc, 0, sizeof(float) * (size_t)g * d);
    for (int t0 = 0; t0 < len; t0 += bs) {
        const int n = len - t0 < bs ? len - t0 : bs;
        const float *vb = block_at(vbase, table, t0 / bs, n_blocks, bs, d);
        for (int r = 0; r < g; r++) {
            const float *p = scores + (int64_t)r * len + t0;
            if (d % VL == 0) block_axpy_v(p, vb, n, d, acc + (int64_t)r * d);
            else block_axpy(p, vb, n, d, acc + (int64_t)r * d);
        }
    }
    for (int r = 0; r < g; r++)
        for (int i = 0; i < d; i++) out[(int64_t)r * d + i] = acc[(int64_t)r * d + i] * inv_sum[r];
}

static void run_job(void *arg, int t) {
    job_t *j = (job_t *)arg + t;
    const int g = j->n_heads / j->n_kv_heads;
    int max_len = 1;
    for (int64_t it = j->item_begin; it < j->item_end; it++) {
        const int len = j->ctx_lens[it / j->n_kv_heads];
        if (len > max_len) max_len = len;
    }
    float *scores = (float *)malloc(sizeof(float) * ((size_t)g * max_len + (size_t)g * j->head_dim));
    if (!scores) {
        j->status = -1;
        return;
    }
    float *acc = scores + (size_t)g * max_len;
    for (int64_t it = j->item_begin; it < j->item_end; it++) attend_item(j, it, scores, acc);
    free(scores);
    j->status = 0;
}

/* Returns 0 on success, -1 on bad arguments, -2 when memory was not available. */
int paged_decode(const float *q, const float *k, const float *v, float *out,
                 const int32_t *tables, const int32_t *ctx_lens, int n_seqs, int max_blocks,
                 int64_t q_stride, int64_t head_stride, int n_heads, int n_kv_heads, int head_dim,
                 int block_size, float scale, int n_threads) {
    if (n_seqs <= 0) return 0;
    if (n_kv_heads <= 0 || n_heads % n_kv_heads || n_heads / n_kv_heads > 64 || head_dim <= 0 ||
        block_size <= 0)
        return -1;
    for (int b = 0; b < n_seqs; b++)
        if (ctx_lens[b] <= 0 || ctx_lens[b] > max_blocks * block_size) return -1;
    const int64_t n_items = (int64_t)n_seqs * n_kv_heads;
    int64_t work = 0;
    for (int b = 0; b < n_seqs; b++) work += (int64_t)ctx_lens[b] * n_kv_heads;
    /* each thread gets an item and at least ~8k (token, kv head) pairs of work */
    const int64_t limit = work / 8192 + 1 < n_items ? work / 8192 + 1 : n_items;
    n_threads = team_size(n_threads, limit);

    job_t jobs[MAX_THREADS];
    const job_t base = {q, k, v, out, tables, ctx_lens, q_stride, head_stride, n_heads, n_kv_heads,
                        head_dim, block_size, max_blocks, scale, 0, 0, 0};
    /* contiguous item ranges of about equal total context length (the cost of an item) */
    int64_t it = 0, done = 0;
    for (int t = 0; t < n_threads; t++) {
        jobs[t] = base;
        jobs[t].item_begin = it;
        const int64_t target = work * (t + 1) / n_threads;
        while (it < n_items && (t == n_threads - 1 || done + ctx_lens[it / n_kv_heads] / 2 < target)) {
            done += ctx_lens[it / n_kv_heads];
            it++;
        }
        jobs[t].item_end = it;
    }
    run_jobs(run_job, jobs, n_threads);
    int status = 0;
    for (int t = 0; t < n_threads; t++)
        if (jobs[t].item_begin != jobs[t].item_end && jobs[t].status) status = -2;
    return status ? -2 : 0;
}
