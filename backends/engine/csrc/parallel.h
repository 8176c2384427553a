/* The one way the native kernels run work on several threads: torch's own OpenMP thread team.
 *
 * native.py compiles the kernels with -fopenmp and links them against the OpenMP runtime that torch
 * already loaded (same library name, so the process keeps one runtime and one team of threads).
 * A parallel region then reuses torch's worker threads, still warm from the matmul before it,
 * instead of starting POSIX threads that the OS has to place beside torch's spinning workers
 * (measured, 512-token prefill of SmolLM2-135M, 30 layers of prompt attention: 152-186 ms with
 * POSIX threads started per call vs 110-126 ms in torch's team). Built without OpenMP (no runtime
 * to link), the jobs run one after another on the calling thread.
 */
#ifndef INFER_BENCH_PARALLEL_H
#define INFER_BENCH_PARALLEL_H

#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_THREADS 64

/* How many threads to ask for: the caller's request (torch's thread count), at least 1, at most
 * MAX_THREADS and at most `limit` (what the work pays for: items to share, work per thread). */
static inline int team_size(int requested, int64_t limit) {
    int64_t n = requested;
    if (n > limit) n = limit;
    if (n > MAX_THREADS) n = MAX_THREADS;
    return n < 1 ? 1 : (int)n;
}

/* job(arg, t) for t = 0 .. n_jobs - 1, on up to n_jobs threads (the caller is one of them). The
 * team may be smaller than asked: each thread then takes every team-size-th job. */
static inline void run_jobs(void (*job)(void *arg, int t), void *arg, int n_jobs) {
#ifdef _OPENMP
    if (n_jobs > 1) {
#pragma omp parallel num_threads(n_jobs)
        for (int t = omp_get_thread_num(); t < n_jobs; t += omp_get_num_threads()) job(arg, t);
        return;
    }
#endif
    for (int t = 0; t < n_jobs; t++) job(arg, t);
}

#endif
