/* bench_probe.c - the machine's limits, measured in the same run as the
 * benchmark: FMA throughput from register-only loops (no memory traffic) and
 * memory bandwidth from a streaming read of a buffer far larger than the
 * last-level cache, each at the benchmark's thread count. */
#include <cpuid.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

int bench_cpu_has(const char *what) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (!((c >> 27) & 1) || !((c >> 28) & 1) || !((c >> 12) & 1)) return 0; /* osxsave, avx, fma */
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6 || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    int avx2 = (b >> 5) & 1;
    int avx512 = avx2 && (lo & 0xe6) == 0xe6 && ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1);
    if (!strcmp(what, "avx2")) return avx2;
    if (!strcmp(what, "avx512")) return avx512;
    if (!strcmp(what, "avx512bf16")) {
        if (!avx512 || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
        return (a >> 5) & 1;
    }
    return 0;
}

typedef struct probe_job {
    int kind; /* 0 f32 avx512, 1 bf16, 2 f32 avx2, 3 read */
    int64_t iters;
    const float *buf;
    size_t n;
    pthread_barrier_t *bar;
    double sink;
    double t0, t1;            /* this thread's own start and end */
} probe_job;

static void *probe_thread(void *arg) {
    probe_job *j = arg;
    pthread_barrier_wait(j->bar);
    j->t0 = bench_now();
    switch (j->kind) {
    case 0: j->sink = bench_fma_loop_avx512(j->iters); break;
    case 1: j->sink = bench_bf16_loop_avx512bf16(j->iters); break;
    case 2: j->sink = bench_fma_loop_avx2(j->iters); break;
    default:
        if (bench_cpu_has("avx2")) {
            j->sink = bench_read_avx2(j->buf, j->n);
        } else {
            float acc = 0;
            for (size_t i = 0; i < j->n; i += 16) acc += j->buf[i];
            j->sink = acc;
        }
        break;
    }
    j->t1 = bench_now();
    pthread_barrier_wait(j->bar);
    return NULL;
}

/* Wall seconds for nt threads each running job kind (best of reps). */
static double run_threads(int nt, int kind, int64_t iters, const float *buf, size_t n_per, int reps) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, (unsigned)nt + 1);
        pthread_t *th = calloc((size_t)nt, sizeof *th);
        probe_job *jb = calloc((size_t)nt, sizeof *jb);
        if (!th || !jb) {
            free(th), free(jb);
            return 0;
        }
        for (int i = 0; i < nt; i++) {
            jb[i] = (probe_job){.kind = kind, .iters = iters, .buf = buf ? buf + (size_t)i * n_per : NULL, .n = n_per, .bar = &bar};
            pthread_create(&th[i], NULL, probe_thread, &jb[i]);
        }
        pthread_barrier_wait(&bar);
        pthread_barrier_wait(&bar);
        for (int i = 0; i < nt; i++) pthread_join(th[i], NULL);
        /* the threads time themselves: this thread may not run while they do */
        double a = jb[0].t0, b = jb[0].t1;
        for (int i = 1; i < nt; i++) a = jb[i].t0 < a ? jb[i].t0 : a, b = jb[i].t1 > b ? jb[i].t1 : b;
        double t = b - a;
        pthread_barrier_destroy(&bar);
        free(th), free(jb);
        if (t < best) best = t;
    }
    return best;
}

double bench_probe_fma_f32(int nt) {
    int64_t it = 20000000;
    if (bench_cpu_has("avx512")) return it * 12.0 * 32 * nt / run_threads(nt, 0, it, NULL, 0, 3) * 1e-9;
    if (bench_cpu_has("avx2")) return it * 12.0 * 16 * nt / run_threads(nt, 2, it, NULL, 0, 3) * 1e-9;
    return 0;
}

double bench_probe_fma_bf16(int nt) {
    int64_t it = 20000000;
    if (!bench_cpu_has("avx512bf16")) return 0;
    return it * 12.0 * 64 * nt / run_threads(nt, 1, it, NULL, 0, 3) * 1e-9;
}

/* The bandwidth probe as a contender of bench_interleave: one pass per call. */
int bench_bw_open(bench_bw *b, int threads, size_t bytes) {
    b->nt = threads > 0 ? threads : 1;
    b->n = bytes / sizeof(float);
    b->n -= b->n % ((size_t)b->nt * 64);
    b->buf = NULL;
    if (posix_memalign((void **)&b->buf, 4096, b->n * sizeof(float))) return -1;
    for (size_t i = 0; i < b->n; i++) b->buf[i] = (float)(i & 7); /* touch every page */
    return 0;
}
int bench_bw_run(void *ctx) {
    bench_bw *b = ctx;
    return run_threads(b->nt, 3, 0, b->buf, b->n / (size_t)b->nt, 1) > 0 ? 0 : -1;
}
void bench_bw_close(bench_bw *b) {
    free(b->buf);
    b->buf = NULL;
}

/* iters sized so that one pass takes about `seconds` at gflops_hint (the probe
 * measured before the runs): long enough that starting the threads is a small part */
void bench_fma_open(bench_fma *f, int threads, double seconds, double gflops_hint) {
    f->nt = threads > 0 ? threads : 1;
    double it = seconds * gflops_hint * 1e9 / (12.0 * 64 * f->nt);
    f->iters = it < 1e5 ? 100000 : (int64_t)it;
}
int bench_fma_run(void *ctx) {
    bench_fma *f = ctx;
    return run_threads(f->nt, 1, f->iters, NULL, 0, 1) > 0 ? 0 : -1;
}
double bench_fma_gflops(const bench_fma *f, double seconds) {
    return seconds > 0 ? (double)f->iters * 12.0 * 64 * f->nt / seconds * 1e-9 : 0;
}

double bench_probe_bw(int nt, size_t bytes) {
    bench_bw b;
    if (bench_bw_open(&b, nt, bytes)) return 0;
    double t = run_threads(b.nt, 3, 0, b.buf, b.n / (size_t)b.nt, 4);
    double gbs = t > 0 ? (double)(b.n * sizeof(float)) / t * 1e-9 : 0;
    bench_bw_close(&b);
    return gbs;
}
