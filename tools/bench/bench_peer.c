/* bench_peer.c - OpenBLAS and BLIS as peers, each loaded with dlopen(RTLD_LOCAL)
 * from its Debian soname (both export cblas_sgemm, so they are never linked
 * together). A missing library makes the peer "unavailable", never a failure. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

enum { CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112 };

static const char *const openblas_libs[] = {
    "libopenblas.so.0", "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0", "libopenblasp-r0.3.21.so", NULL};
static const char *const blis_libs[] = {
    "libblis.so.4", "/usr/lib/x86_64-linux-gnu/blis-pthread/libblis.so.4",
    "/usr/lib/x86_64-linux-gnu/blis-openmp/libblis.so.4", "libblis.so.3", NULL};

int bench_peer_load(bench_peer *p, const char *name, int threads) {
    memset(p, 0, sizeof *p);
    const char *const *libs = NULL;
    if (!strcmp(name, "openblas")) p->name = "openblas", libs = openblas_libs;
    else if (!strcmp(name, "blis")) p->name = "blis", libs = blis_libs;
    else {
        p->name = name;
        snprintf(p->why, sizeof p->why, "unknown peer %s", name);
        return -1;
    }
    for (int i = 0; libs[i] && !p->h; i++) {
        p->h = dlopen(libs[i], RTLD_NOW | RTLD_LOCAL);
        if (p->h) snprintf(p->lib, sizeof p->lib, "%s", libs[i]);
    }
    if (!p->h) {
        snprintf(p->why, sizeof p->why, "%s not installed (no %s)", name, libs[0]);
        return -1;
    }
    *(void **)&p->sgemm = dlsym(p->h, "cblas_sgemm");
    if (!p->sgemm) {
        snprintf(p->why, sizeof p->why, "%s has no cblas_sgemm", p->lib);
        dlclose(p->h);
        p->h = NULL;
        return -1;
    }
    if (threads > 0) {
        if (!strcmp(name, "openblas")) {
            void (*set)(int);
            *(void **)&set = dlsym(p->h, "openblas_set_num_threads");
            if (set) set(threads);
        } else {
            void (*set)(long);
            *(void **)&set = dlsym(p->h, "bli_thread_set_num_threads");
            if (set) set(threads);
        }
    }
    p->ok = 1;
    return 0;
}

int bench_peers_load(const char *which, int threads, bench_peer peers[2]) {
    static const char *const names[2] = {"openblas", "blis"};
    int np = 0;
    for (int i = 0; i < 2; i++) {
        if (strcmp(which, "auto") && strcmp(which, names[i])) continue;
        if (bench_peer_load(&peers[np], names[i], threads) == 0) np++;
        else bench_progress("peer %s unavailable: %s", names[i], peers[np].why);
    }
    return np;
}

void bench_peer_unload(bench_peer *p) {
    /* not dlclose'd: OpenMP/pthread runtimes inside may still hold threads */
    p->ok = 0;
}

void bench_peer_gemm(const bench_peer *p, int64_t m, int64_t n, int64_t k, const float *x, int64_t ldx,
                     const float *w, float *y, int64_t ldy) {
    p->sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f, x, (int)ldx, w, (int)k, 0.0f, y,
             (int)ldy);
}
