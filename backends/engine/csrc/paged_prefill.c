/* Paged prompt attention for the CPU engine: the causal attention of a step's prefill rows (whole
 * prompts and prompt chunks after earlier context), one call per layer for every such sequence.
 *
 * Role in the data flow: backends/engine/paged_attention.py writes the step's k/v into the KV pool,
 * then calls paged_prefill() (through native.py / ctypes) for the float32 prefill rows on the CPU.
 * Query row i of a sequence sits at absolute position start + i (start = ctx_len - q_len) and
 * attends to keys 0 .. start + i, read from the pool through the sequence's block table: a chunk
 * after earlier context needs no gather and no mask tensor.
 *
 * Layout (see KVCache): the layer's k (and v) pool is [n_kv_heads, num_slots, head_dim] with
 * slot = block * block_size + offset; q and out rows are [n_heads, head_dim] with a row stride.
 *
 * The method is flash attention's: per work item (sequence, kv head, tile of QT query positions),
 * the g = n_heads / n_kv_heads query heads of the kv head times QT positions form R = g * QT rows
 * that share every key and value read (GQA without repeating k/v). Keys go by chunks of KC: scores
 * S = scale * Q K^T for the chunk, then an online softmax (running max and sum per row, the output
 * rescaled when the max grows), then O += P V. Chunks past a tile's last position are skipped
 * (causal), and only the chunk holding the diagonal is masked. Two phases, each on n_threads threads
 * of torch's OpenMP team (parallel.h): (1) K is packed transposed per chunk, [d][KC], so the score
 * micro-kernel broadcasts one q value against 16 keys in two vector registers (6 rows x 16 keys
 * of accumulators); (2) the items, most expensive first, taken from a shared atomic counter.
 * float32 throughout; head_dim must be a multiple of 8.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parallel.h"

#define VL 8
typedef float vf __attribute__((vector_size(VL * sizeof(float)), aligned(4)));
typedef float vfa __attribute__((vector_size(VL * sizeof(float))));  /* aligned: packed buffers */

#define QT 16          /* query positions per work item */
#define KC 64          /* keys per chunk */
#define MR 6           /* rows of the score micro-kernel */
#define PR 3           /* rows of the P.V micro-kernel */
#define NEG_BIG (-1e30f)  /* "minus infinity" that stays finite (built with -ffast-math) */

typedef struct {
    /* inputs */
    const float *q, *k, *v;
    float *out;
    const int32_t *tables, *row_starts, *q_lens, *ctx_lens;
    int n_seqs, max_blocks;
    int64_t q_stride, out_stride, head_stride;
    int n_heads, n_kv_heads, head_dim, block_size;
    float scale;
    /* derived */
    int g, rows;                    /* query heads per kv head; rows per item (padded to MR) */
    int tiles_per_head;             /* QT-position tiles of the longest possible sequence */
    int64_t *kt_offset;             /* per (seq, kv head): offset of its packed K^T in kt */
    float *kt;                      /* packed K^T chunks: [chunk][head_dim][KC] */
    int64_t *items;                 /* (seq, kv head, tile) packed, most expensive first */
    int64_t n_items;
    int64_t next;                   /* shared counters (atomic) */
    int64_t pack_next;
    int status[MAX_THREADS];        /* per thread: 0, or -1 when its scratch was not available */
} prob_t;

static inline const float *key_row(const prob_t *p, const float *base, const int32_t *table, int t) {
    const int bs = p->block_size;
    return base + ((int64_t)table[t / bs] * bs + t % bs) * p->head_dim;
}

/* ---- phase 1: K^T packing, one (seq, kv head) at a time ----------------------------------------- */
static void pack_one(const prob_t *p, int64_t which) {
    const int s = (int)(which / p->n_kv_heads), kh = (int)(which % p->n_kv_heads);
    const int d = p->head_dim, len = p->ctx_lens[s];
    const int32_t *table = p->tables + (int64_t)s * p->max_blocks;
    const float *kbase = p->k + (int64_t)kh * p->head_stride;
    float *dst = p->kt + p->kt_offset[which];
    const int n_chunks = (len + KC - 1) / KC;
    for (int c = 0; c < n_chunks; c++) {
        float *kt = dst + (int64_t)c * d * KC;
        const int n = len - c * KC < KC ? len - c * KC : KC;
        for (int j = 0; j < n; j++) {
            const float *kr = key_row(p, kbase, table, c * KC + j);
            for (int i = 0; i < d; i++) kt[(int64_t)i * KC + j] = kr[i];
        }
        for (int j = n; j < KC; j++)
            for (int i = 0; i < d; i++) kt[(int64_t)i * KC + j] = 0.f;
    }
}

/* ---- phase 2 micro-kernels ------------------------------------------------------------------------ */
/* S[r][0:ncols] = scale * q_r . K^T[:, 0:ncols] for MR rows (q row pointers), K^T packed [d][KC];
 * ncols a multiple of 2 VL (the packed columns past the context are zeros). */
static void scores_mr(const float *const *qr, const float *kt, int d, int ncols, float scale, float *s) {
    for (int j = 0; j < ncols; j += 2 * VL) {
        vfa a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0};
        vfa a30 = {0}, a31 = {0}, a40 = {0}, a41 = {0}, a50 = {0}, a51 = {0};
        const float *q0 = qr[0], *q1 = qr[1], *q2 = qr[2], *q3 = qr[3], *q4 = qr[4], *q5 = qr[5];
        for (int i = 0; i < d; i++) {
            const vfa k0 = *(const vfa *)(kt + (int64_t)i * KC + j);
            const vfa k1 = *(const vfa *)(kt + (int64_t)i * KC + j + VL);
            float b;
            b = q0[i]; a00 += b * k0; a01 += b * k1;
            b = q1[i]; a10 += b * k0; a11 += b * k1;
            b = q2[i]; a20 += b * k0; a21 += b * k1;
            b = q3[i]; a30 += b * k0; a31 += b * k1;
            b = q4[i]; a40 += b * k0; a41 += b * k1;
            b = q5[i]; a50 += b * k0; a51 += b * k1;
        }
        *(vfa *)(s + 0 * KC + j) = a00 * scale; *(vfa *)(s + 0 * KC + j + VL) = a01 * scale;
        *(vfa *)(s + 1 * KC + j) = a10 * scale; *(vfa *)(s + 1 * KC + j + VL) = a11 * scale;
        *(vfa *)(s + 2 * KC + j) = a20 * scale; *(vfa *)(s + 2 * KC + j + VL) = a21 * scale;
        *(vfa *)(s + 3 * KC + j) = a30 * scale; *(vfa *)(s + 3 * KC + j + VL) = a31 * scale;
        *(vfa *)(s + 4 * KC + j) = a40 * scale; *(vfa *)(s + 4 * KC + j + VL) = a41 * scale;
        *(vfa *)(s + 5 * KC + j) = a50 * scale; *(vfa *)(s + 5 * KC + j + VL) = a51 * scale;
    }
}

/* O[r][c0 : c0 + 4 VL] += sum_j P[r][j] v_j[c0 : c0 + 4 VL] for PR rows; vrow[j] -> value j. */
static void pv_pr(const float *pm, const float *const *vrow, int n, int c0, float *o, int d) {
    float *o0 = o + c0, *o1 = o + d + c0, *o2 = o + 2 * d + c0;
    vfa a00 = *(vfa *)o0, a01 = *(vfa *)(o0 + VL), a02 = *(vfa *)(o0 + 2 * VL), a03 = *(vfa *)(o0 + 3 * VL);
    vfa a10 = *(vfa *)o1, a11 = *(vfa *)(o1 + VL), a12 = *(vfa *)(o1 + 2 * VL), a13 = *(vfa *)(o1 + 3 * VL);
    vfa a20 = *(vfa *)o2, a21 = *(vfa *)(o2 + VL), a22 = *(vfa *)(o2 + 2 * VL), a23 = *(vfa *)(o2 + 3 * VL);
    for (int j = 0; j < n; j++) {
        const float *vj = vrow[j] + c0;
        const vf v0 = *(const vf *)vj, v1 = *(const vf *)(vj + VL);
        const vf v2 = *(const vf *)(vj + 2 * VL), v3 = *(const vf *)(vj + 3 * VL);
        float b;
        b = pm[j];          a00 += b * v0; a01 += b * v1; a02 += b * v2; a03 += b * v3;
        b = pm[KC + j];     a10 += b * v0; a11 += b * v1; a12 += b * v2; a13 += b * v3;
        b = pm[2 * KC + j]; a20 += b * v0; a21 += b * v1; a22 += b * v2; a23 += b * v3;
    }
    *(vfa *)o0 = a00; *(vfa *)(o0 + VL) = a01; *(vfa *)(o0 + 2 * VL) = a02; *(vfa *)(o0 + 3 * VL) = a03;
    *(vfa *)o1 = a10; *(vfa *)(o1 + VL) = a11; *(vfa *)(o1 + 2 * VL) = a12; *(vfa *)(o1 + 3 * VL) = a13;
    *(vfa *)o2 = a20; *(vfa *)(o2 + VL) = a21; *(vfa *)(o2 + 2 * VL) = a22; *(vfa *)(o2 + 3 * VL) = a23;
}

/* the same for one vector of columns (head_dim not a multiple of 4 VL) */
static void pv_pr1(const float *pm, const float *const *vrow, int n, int c0, float *o, int d) {
    vfa a0 = *(vfa *)(o + c0), a1 = *(vfa *)(o + d + c0), a2 = *(vfa *)(o + 2 * d + c0);
    for (int j = 0; j < n; j++) {
        const vf vj = *(const vf *)(vrow[j] + c0);
        a0 += pm[j] * vj;
        a1 += pm[KC + j] * vj;
        a2 += pm[2 * KC + j] * vj;
    }
    *(vfa *)(o + c0) = a0; *(vfa *)(o + d + c0) = a1; *(vfa *)(o + 2 * d + c0) = a2;
}

typedef struct {
    float *s;        /* [rows][KC] scores, then probabilities */
    float *o;        /* [rows][d] output accumulators */
    float *m, *l;    /* [rows] running max and sum */
    const float **qr;
    const float *zero;
} scratch_t;

static void attend_item(const prob_t *p, int64_t item, scratch_t *w) {
    const int d = p->head_dim, g = p->g;
    const int tile = (int)(item % p->tiles_per_head);
    const int s = (int)(item / p->tiles_per_head / p->n_kv_heads);
    const int kh = (int)(item / p->tiles_per_head % p->n_kv_heads);
    const int q_len = p->q_lens[s], ctx = p->ctx_lens[s], start = ctx - q_len;
    const int p0 = tile * QT, np = q_len - p0 < QT ? q_len - p0 : QT;
    const int real_rows = np * g, rows = (real_rows + MR - 1) / MR * MR;
    const int32_t *table = p->tables + (int64_t)s * p->max_blocks;
    const float *vbase = p->v + (int64_t)kh * p->head_stride;
    const float *kt_all = p->kt + p->kt_offset[(int64_t)s * p->n_kv_heads + kh];
    const int64_t row0 = p->row_starts[s] + p0;

    /* row r = position (r / g) of the tile, head kh * g + r % g */
    for (int r = 0; r < rows; r++)
        w->qr[r] = r < real_rows ? p->q + (row0 + r / g) * p->q_stride + (int64_t)(kh * g + r % g) * d : w->zero;
    memset(w->o, 0, sizeof(float) * (size_t)rows * d);
    for (int r = 0; r < rows; r++) {
        w->m[r] = NEG_BIG;
        w->l[r] = 0.f;
    }
    const int last_pos = start + p0 + np - 1;       /* keys 0 .. last_pos are needed */
    const float *vrow[KC];
    for (int c0 = 0; c0 <= last_pos; c0 += KC) {
        const int n = last_pos + 1 - c0 < KC ? last_pos + 1 - c0 : KC;
        const float *kt = kt_all + (int64_t)(c0 / KC) * d * KC;
        const int ncols = (n + 2 * VL - 1) / (2 * VL) * (2 * VL);
        for (int r = 0; r < rows; r += MR) scores_mr(w->qr + r, kt, d, ncols, p->scale, w->s + (int64_t)r * KC);
        const int masked = c0 + n - 1 > start + p0;  /* the chunk reaches past the first position */
        for (int r = 0; r < real_rows; r++) {
            float *sr = w->s + (int64_t)r * KC;
            const int pos = start + p0 + r / g;
            int valid = n;
            if (masked && pos + 1 - c0 < valid) valid = pos + 1 - c0 > 0 ? pos + 1 - c0 : 0;  /* keys c0 .. pos */
            float mx = w->m[r];
            for (int j = 0; j < valid; j++) mx = sr[j] > mx ? sr[j] : mx;
            float sum = 0.f;
            for (int j = 0; j < valid; j++) {
                sr[j] = expf(sr[j] - mx);
                sum += sr[j];
            }
            for (int j = valid; j < n; j++) sr[j] = 0.f;
            if (mx != w->m[r]) {
                const float alpha = expf(w->m[r] - mx);
                float *orow = w->o + (int64_t)r * d;
                for (int i = 0; i < d; i++) orow[i] *= alpha;
                w->l[r] *= alpha;
                w->m[r] = mx;
            }
            w->l[r] += sum;
        }
        for (int j = 0; j < n; j++) vrow[j] = key_row(p, vbase, table, c0 + j);
        for (int r = 0; r < real_rows; r += PR) {
            /* the last group may reach into the padding rows (zero q, so all-zero scores that
             * add nothing to their O rows, which are never written out) */
            const float *pm = w->s + (int64_t)r * KC;
            float *orows = w->o + (int64_t)r * d;
            int c0v = 0;
            for (; c0v + 4 * VL <= d; c0v += 4 * VL) pv_pr(pm, vrow, n, c0v, orows, d);
            for (; c0v < d; c0v += VL) pv_pr1(pm, vrow, n, c0v, orows, d);
        }
    }
    for (int r = 0; r < real_rows; r++) {
        float *dst = p->out + (row0 + r / g) * p->out_stride + (int64_t)(kh * g + r % g) * d;
        const float inv = 1.f / w->l[r];
        const float *orow = w->o + (int64_t)r * d;
        for (int i = 0; i < d; i++) dst[i] = orow[i] * inv;
    }
}

static void pack_job(void *arg, int t) {
    prob_t *p = (prob_t *)arg;
    (void)t;
    const int64_t n = (int64_t)p->n_seqs * p->n_kv_heads;
    for (int64_t i; (i = __atomic_fetch_add(&p->pack_next, 1, __ATOMIC_RELAXED)) < n;) pack_one(p, i);
}

static void attend_job(void *arg, int t) {
    prob_t *p = (prob_t *)arg;
    const int rows = p->rows, d = p->head_dim;
    scratch_t w;
    /* 64-byte aligned for the aligned vector loads and stores of s and o */
    float *buf = NULL;
    const size_t n_floats = (size_t)rows * KC + (size_t)rows * d + 2 * (size_t)rows + (size_t)d;
    if (posix_memalign((void **)&buf, 64, sizeof(float) * n_floats + sizeof(float *) * rows)) {
        p->status[t] = -1;
        return;
    }
    w.s = buf;
    w.o = w.s + (size_t)rows * KC;
    w.m = w.o + (size_t)rows * d;
    w.l = w.m + rows;
    float *zero = w.l + rows;
    memset(zero, 0, sizeof(float) * d);
    w.zero = zero;
    w.qr = (const float **)(buf + n_floats);
    for (int64_t i; (i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED)) < p->n_items;)
        attend_item(p, p->items[i], &w);
    free(buf);
}

static int cmp_cost_desc(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a >> 40, y = *(const int64_t *)b >> 40;
    return (x < y) - (x > y);
}

/* Returns 0 on success, -1 on bad arguments, -2 when memory was not available. */
int paged_prefill(const float *q, const float *k, const float *v, float *out,
                  const int32_t *tables, const int32_t *row_starts, const int32_t *q_lens,
                  const int32_t *ctx_lens, int n_seqs, int max_blocks, int64_t q_stride,
                  int64_t out_stride, int64_t head_stride, int n_heads, int n_kv_heads, int head_dim,
                  int block_size, float scale, int n_threads) {
    if (n_seqs <= 0) return 0;
    if (n_kv_heads <= 0 || n_heads % n_kv_heads || head_dim <= 0 || head_dim % VL || block_size <= 0 ||
        max_blocks <= 0)
        return -1;
    int64_t n_items = 0, work = 0;
    for (int s = 0; s < n_seqs; s++) {
        if (q_lens[s] <= 0 || ctx_lens[s] < q_lens[s] || ctx_lens[s] > max_blocks * block_size) return -1;
        n_items += (int64_t)n_kv_heads * ((q_lens[s] + QT - 1) / QT);
        work += (int64_t)n_kv_heads * q_lens[s] * (ctx_lens[s] - q_lens[s] / 2);
    }
    /* each thread gets an item and at least ~64k (query, key) pairs of a kv head */
    n_threads = team_size(n_threads, work / 65536 + 1 < n_items ? work / 65536 + 1 : n_items);

    prob_t p = {q, k, v, out, tables, row_starts, q_lens, ctx_lens, n_seqs, max_blocks, q_stride,
                out_stride, head_stride, n_heads, n_kv_heads, head_dim, block_size, scale};
    p.g = n_heads / n_kv_heads;
    p.rows = ((QT * p.g) + MR - 1) / MR * MR;
    p.tiles_per_head = (max_blocks * block_size + QT - 1) / QT;
    p.n_items = n_items;
    p.kt_offset = (int64_t *)malloc(sizeof(int64_t) * (size_t)n_seqs * n_kv_heads);
    p.items = (int64_t *)malloc(sizeof(int64_t) * (size_t)n_items);
    int status = -2;
    int64_t kt_floats = 0;
    if (p.kt_offset && p.items) {
        int64_t it = 0;
        for (int s = 0; s < n_seqs; s++) {
            const int start = ctx_lens[s] - q_lens[s];
            for (int kh = 0; kh < n_kv_heads; kh++) {
                p.kt_offset[(int64_t)s * n_kv_heads + kh] = kt_floats;
                kt_floats += (int64_t)((ctx_lens[s] + KC - 1) / KC) * KC * head_dim;
                for (int t = 0; t < (q_lens[s] + QT - 1) / QT; t++) {
                    /* cost (keys read) in the high bits, the item id in the low 40 */
                    const int64_t cost = start + (int64_t)(t + 1) * QT;
                    const int64_t id = ((int64_t)s * n_kv_heads + kh) * p.tiles_per_head + t;
                    p.items[it++] = (cost << 40) | id;
                }
            }
        }
        if (posix_memalign((void **)&p.kt, 64, sizeof(float) * (size_t)kt_floats)) p.kt = NULL;
    }
    if (p.kt) {
        qsort(p.items, (size_t)n_items, sizeof(int64_t), cmp_cost_desc);
        for (int64_t i = 0; i < n_items; i++) p.items[i] &= ((int64_t)1 << 40) - 1;
        run_jobs(pack_job, &p, n_threads);
        run_jobs(attend_job, &p, n_threads);
        status = 0;
        for (int t = 0; t < n_threads; t++)
            if (p.status[t]) status = -2;
    }
    free(p.kt_offset);
    free(p.items);
    free(p.kt);
    return status;
}
