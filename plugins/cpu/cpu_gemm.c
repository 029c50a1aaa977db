/* cpu_gemm.c - y[T, N] = x[T, K] w[N, K]^T on the pool.
 *
 * Three paths share one blocking scheme (Goto/BLIS): for each KC slice of K a
 * block of weight rows is decoded and packed into column panels (nr wide), for
 * each MC slice of x a row block is packed into row panels (mr tall), and a
 * register-blocked micro-kernel multiplies panel pairs.
 *   f32:  weights of any dtype decoded to f32 at pack time (fp8: value x block
 *         scale, the same single f32 product as a dequantized copy); f32 FMAs.
 *   bf16: (bf16 weights in bf16-compute mode) activations rounded to bf16,
 *         vdpbf16ps on k pairs.
 *   fp8 act_quant: DeepSeek's act_quant, then per 128-wide K block the exact
 *         sum of e4m3 products (in double: every partial sum is a multiple of
 *         2^-18 below 2^25, so no rounding), rounded once to f32 and scaled.
 * Few rows (T <= CPU_GEMV_T) skip packing: weight rows stream once, decoded in
 * registers (the decode step, bound by memory bandwidth).
 * Work is split across threads by weight rows (N) when there are enough, else
 * by tokens (M); each thread packs its own blocks.
 */
#include <string.h>

#include "cpu.h"

#define CPU_GEMV_T 8
#define NC_MAX 2048

static int64_t rup(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
static int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

enum { PATH_F32, PATH_BF16, PATH_FP8 };

typedef struct gemm_job {
    const cpu_state *s;
    const cpu_kern *k;
    const float *x;
    int64_t T, ldx;
    const cpu_wmat *w;
    int64_t n0, n1;        /* weight rows computed */
    int path;
    float *y;
    int64_t ldy;
    /* fp8 */
    const float *xv;       /* act codes as values [T][K] */
    const float *xs;       /* act scales [T][nb] */
    /* threading */
    const float *bkn;      /* f32 B stored [K][N] (cpu_sgemm), row stride ldb; else NULL */
    int64_t ldb;
    int accumulate;        /* C += instead of C = */
    int pm, pn;            /* thread grid */
    int64_t nalign, malign;
    char *scratch;
    size_t per_thread;
} gemm_job;

static int choose_path(const cpu_state *s, const cpu_wmat *w, int act_quant) {
    if (act_quant && w->dtype == FM_F8_E4M3) return PATH_FP8;
    if (s->bf16_compute && w->dtype == FM_BF16 && s->k->ukr_bf16) return PATH_BF16;
    return PATH_F32;
}

/* Per-thread scratch for a block of rows [.. M) x cols nn. */
static size_t thread_bytes(const cpu_kern *k, int path, int64_t M, int64_t nn, int64_t T) {
    if (T <= CPU_GEMV_T) return 0;
    int64_t nc = imin(nn, NC_MAX);
    switch (path) {
    case PATH_FP8: {
        int64_t mc = imin(rup(M, k->fmr), rup(k->mc, k->fmr));
        return (size_t)(CPU_QB * rup(nc, k->fnr) * 8 + CPU_QB * mc * 8 + 64 * 8) + 256;
    }
    case PATH_BF16: {
        int64_t mc = imin(rup(M, k->bmr), rup(k->mc, k->bmr));
        int64_t kc = 2 * k->kc;
        return (size_t)(kc * rup(nc, k->bnr) * 2 + kc / 2 * mc * 4) + 256;
    }
    default: {
        int64_t mc = imin(rup(M, k->mr), rup(k->mc, k->mr));
        return (size_t)(k->kc * rup(nc, k->nr) * 4 + k->kc * mc * 4) + 256;
    }
    }
}

/* ---- one thread's rectangle ---- */

static void rect_f32(const gemm_job *j, int64_t m0, int64_t m1, int64_t n0, int64_t n1, char *scr) {
    const cpu_kern *k = j->k;
    const int mr = k->mr, nr = k->nr;
    int64_t K = j->w->K, mcmax = rup(k->mc, mr);
    float *bp = (float *)scr;
    float *ap = (float *)(scr + rup(k->kc * rup(imin(n1 - n0, NC_MAX), nr) * 4, 64));
    for (int64_t nc0 = n0; nc0 < n1; nc0 += NC_MAX) {
        int nc = (int)imin(NC_MAX, n1 - nc0);
        for (int64_t pc = 0; pc < K; pc += k->kc) {
            int kc = (int)imin(k->kc, K - pc);
            if (j->bkn) k->pack_b_kn(j->bkn, j->ldb, nc0, nc, pc, kc, nr, bp);
            else k->pack_b(j->w, nc0, nc, pc, kc, nr, bp);
            for (int64_t mc0 = m0; mc0 < m1; mc0 += mcmax) {
                int mc = (int)imin(mcmax, m1 - mc0);
                k->pack_a(j->x + mc0 * j->ldx + pc, j->ldx, mc, kc, mr, ap);
                for (int jr = 0; jr < nc; jr += nr) {
                    const float *b = bp + (int64_t)jr * kc;
                    float *c = j->y + mc0 * j->ldy + (nc0 - j->n0) + jr;
                    int nv = (int)imin(nr, nc - jr);
                    for (int ir = 0; ir < mc; ir += mr)
                        k->ukr(kc, ap + (int64_t)ir * kc, b, c + ir * j->ldy, j->ldy, (int)imin(mr, mc - ir), nv,
                               pc > 0 || j->accumulate);
                }
            }
        }
    }
}

static void rect_bf16(const gemm_job *j, int64_t m0, int64_t m1, int64_t n0, int64_t n1, char *scr) {
    const cpu_kern *k = j->k;
    const int mr = k->bmr, nr = k->bnr;
    const int KC = 2 * k->kc;
    int64_t K = j->w->K, mcmax = rup(k->mc, mr);
    uint16_t *bp = (uint16_t *)scr;
    uint32_t *ap = (uint32_t *)(scr + rup((int64_t)KC * rup(imin(n1 - n0, NC_MAX), nr) * 2, 64));
    for (int64_t nc0 = n0; nc0 < n1; nc0 += NC_MAX) {
        int nc = (int)imin(NC_MAX, n1 - nc0);
        for (int64_t pc = 0; pc < K; pc += KC) {
            int kc = (int)imin(KC, K - pc), kc2 = (kc + 1) / 2;
            k->pack_b_bf16(j->w, nc0, nc, pc, kc, nr, bp);
            for (int64_t mc0 = m0; mc0 < m1; mc0 += mcmax) {
                int mc = (int)imin(mcmax, m1 - mc0);
                k->pack_a_bf16(j->x + mc0 * j->ldx + pc, j->ldx, mc, kc, mr, ap);
                for (int jr = 0; jr < nc; jr += nr) {
                    const uint16_t *b = bp + (int64_t)jr * kc2 * 2;
                    float *c = j->y + mc0 * j->ldy + (nc0 - j->n0) + jr;
                    int nv = (int)imin(nr, nc - jr);
                    for (int ir = 0; ir < mc; ir += mr)
                        k->ukr_bf16(kc2, ap + (int64_t)ir * kc2, b, c + ir * j->ldy, j->ldy, (int)imin(mr, mc - ir),
                                    nv, pc > 0);
                }
            }
        }
    }
}

static void rect_fp8(const gemm_job *j, int64_t m0, int64_t m1, int64_t n0, int64_t n1, char *scr) {
    const cpu_kern *k = j->k;
    const cpu_wmat *w = j->w;
    const int mr = k->fmr, nr = k->fnr;
    int64_t K = w->K, nb = (K + CPU_QB - 1) / CPU_QB, mcmax = imin(rup(k->mc, mr), rup(m1 - m0, mr));
    double *bp = (double *)scr;
    double *ap = (double *)(scr + rup(CPU_QB * rup(imin(n1 - n0, NC_MAX), nr) * 8, 64));
    float *as = (float *)(ap + CPU_QB * mcmax);
    for (int64_t m = m0; m < m1; m++) memset(j->y + m * j->ldy + (n0 - j->n0), 0, (size_t)(n1 - n0) * 4);
    for (int64_t nc0 = n0; nc0 < n1; nc0 += NC_MAX) {
        int nc = (int)imin(NC_MAX, n1 - nc0);
        for (int64_t blk = 0; blk < nb; blk++) {
            int64_t pc = blk * CPU_QB;
            int kc = (int)imin(CPU_QB, K - pc);
            /* B: codes -> exact values, [panel][kc][nr] */
            for (int jp = 0; jp < nc; jp += nr) {
                double *d = bp + (int64_t)jp * kc;
                for (int jj = 0; jj < nr; jj++) {
                    if (jp + jj >= nc) {
                        for (int kk = 0; kk < kc; kk++) d[kk * nr + jj] = 0;
                        continue;
                    }
                    const uint8_t *src = (const uint8_t *)w->data + (nc0 + jp + jj) * K + pc;
                    for (int kk = 0; kk < kc; kk++) d[kk * nr + jj] = cpu_e4m3_value(src[kk]);
                }
            }
            for (int64_t mc0 = m0; mc0 < m1; mc0 += mcmax) {
                int mc = (int)imin(mcmax, m1 - mc0);
                for (int ir = 0; ir < mc; ir += mr) {
                    double *d = ap + (int64_t)ir * kc;
                    for (int ii = 0; ii < mr; ii++) {
                        if (ir + ii >= mc) {
                            for (int kk = 0; kk < kc; kk++) d[kk * mr + ii] = 0;
                            continue;
                        }
                        const float *src = j->xv + (mc0 + ir + ii) * K + pc;
                        for (int kk = 0; kk < kc; kk++) d[kk * mr + ii] = src[kk];
                    }
                }
                for (int jr = 0; jr < nc; jr += nr) {
                    int64_t n = nc0 + jr;
                    float ws = w->scale[(n / CPU_QB) * w->scale_ld + blk];
                    float *c = j->y + mc0 * j->ldy + (n - j->n0);
                    int nv = (int)imin(nr, nc - jr);
                    for (int ir = 0; ir < mc; ir += mr) {
                        int mv = (int)imin(mr, mc - ir);
                        for (int ii = 0; ii < mv; ii++) as[ii] = j->xs[(mc0 + ir + ii) * nb + blk];
                        k->ukr_fp8(kc, ap + (int64_t)ir * kc, bp + (int64_t)jr * kc, c + ir * j->ldy, j->ldy, mv, nv,
                                   as, ws);
                    }
                }
            }
        }
    }
}

static void rect(const gemm_job *j, int64_t m0, int64_t m1, int64_t n0, int64_t n1, char *scr) {
    if (m1 <= m0 || n1 <= n0) return;
    if (j->T <= CPU_GEMV_T) {
        float *y = j->y + m0 * j->ldy + (n0 - j->n0);
        if (j->bkn) { /* y[t, n] (+)= sum_k x[t, k] b[k, n]: rows of b streamed once */
            for (int64_t t = m0; t < m1; t++) {
                float *yr = j->y + t * j->ldy + (n0 - j->n0);
                if (!j->accumulate) memset(yr, 0, (size_t)(n1 - n0) * 4);
            }
            for (int64_t kk = 0; kk < j->w->K; kk++)
                for (int64_t t = m0; t < m1; t++)
                    j->k->axpy(j->x[t * j->ldx + kk], j->bkn + kk * j->ldb + n0, j->y + t * j->ldy + (n0 - j->n0),
                               n1 - n0);
            return;
        }
        if (j->path == PATH_FP8) {
            int64_t nb = (j->w->K + CPU_QB - 1) / CPU_QB;
            j->k->gemv_fp8(j->xv + m0 * j->w->K, j->xs + m0 * nb, (int)(m1 - m0), j->w->K, j->w, n0, n1, y, j->ldy);
        } else {
            j->k->gemv(j->x + m0 * j->ldx, j->ldx, (int)(m1 - m0), j->w, n0, n1, y, j->ldy);
        }
        return;
    }
    switch (j->path) {
    case PATH_FP8:  rect_fp8(j, m0, m1, n0, n1, scr); break;
    case PATH_BF16: rect_bf16(j, m0, m1, n0, n1, scr); break;
    default:        rect_f32(j, m0, m1, n0, n1, scr); break;
    }
}

static void split(int64_t n, int parts, int i, int64_t align, int64_t *a, int64_t *b) {
    int64_t units = (n + align - 1) / align;
    int64_t u0 = units * i / parts, u1 = units * (i + 1) / parts;
    *a = imin(u0 * align, n);
    *b = imin(u1 * align, n);
}

static void gemm_task(void *arg, int tid, int nt) {
    const gemm_job *j = arg;
    (void)nt;
    int im = tid / j->pn, in = tid % j->pn;
    int64_t m0, m1, n0, n1;
    split(j->T, j->pm, im, j->malign, &m0, &m1);
    split(j->n1 - j->n0, j->pn, in, j->nalign, &n0, &n1);
    rect(j, m0, m1, j->n0 + n0, j->n0 + n1, j->scratch + (size_t)tid * j->per_thread);
}

static void quant_task(void *arg, int64_t t, int tid) {
    (void)tid;
    const gemm_job *j = arg;
    int64_t K = j->w->K, nb = (K + CPU_QB - 1) / CPU_QB;
    uint8_t codes[1024];
    float *xv = (float *)j->xv + t * K;
    for (int64_t k0 = 0; k0 < K; k0 += 1024) {
        int64_t l = imin(1024, K - k0);
        cpu_act_quant_row(j->x + t * j->ldx + k0, l, codes, (float *)j->xs + t * nb + k0 / CPU_QB);
        for (int64_t k = 0; k < l; k++) xv[k0 + k] = cpu_e4m3_value(codes[k]);
    }
}

static int64_t nalign_of(const cpu_kern *k, int path) {
    switch (path) {
    case PATH_FP8:  return CPU_QB;
    case PATH_BF16: return k->bnr;
    default:        return k->nr;
    }
}

fm_status cpu_matmul(cpu_state *s, const float *x, int64_t T, int64_t ldx, const cpu_wmat *w, int act_quant,
                     float *y, int64_t ldy) {
    if (T <= 0 || w->N <= 0) return FM_OK;
    const cpu_kern *k = s->k;
    int nt = cpu_pool_size(s->pool);
    gemm_job j = {.s = s, .k = k, .x = x, .T = T, .ldx = ldx, .w = w, .n0 = 0, .n1 = w->N,
                  .path = choose_path(s, w, act_quant), .y = y, .ldy = ldy};
    int64_t K = w->K, nb = (K + CPU_QB - 1) / CPU_QB;
    j.nalign = T <= CPU_GEMV_T ? 16 : nalign_of(k, j.path);
    j.malign = j.path == PATH_FP8 ? k->fmr : j.path == PATH_BF16 ? k->bmr : k->mr;
    /* thread grid: as many N parts as keep >= 2 alignment units each */
    j.pn = 1;
    for (int pn = nt; pn >= 1; pn--)
        if (nt % pn == 0 && (w->N + j.nalign - 1) / j.nalign >= 2 * pn) {
            j.pn = pn;
            break;
        }
    j.pm = nt / j.pn;
    if (T <= CPU_GEMV_T) j.pm = 1, j.pn = nt; /* few rows: weight rows only */
    size_t qbytes = j.path == PATH_FP8 ? (size_t)rup(T * K * 4, 64) + (size_t)rup(T * nb * 4, 64) : 0;
    int64_t mpart = (T + j.pm - 1) / j.pm + j.malign, npart = (w->N + j.pn - 1) / j.pn + j.nalign;
    j.per_thread = (size_t)rup((int64_t)thread_bytes(k, j.path, mpart, npart, T), 64);
    char *scr = cpu_scratch(s, qbytes + j.per_thread * (size_t)nt);
    if (!scr) return cpu_fail(s, FM_ENOMEM, "matmul: out of memory for %zu bytes of scratch",
                              qbytes + j.per_thread * (size_t)nt);
    if (j.path == PATH_FP8) {
        j.xv = (const float *)scr;
        j.xs = (const float *)(scr + rup(T * K * 4, 64));
        cpu_pool_for(s->pool, T, quant_task, &j);
    }
    j.scratch = scr + qbytes;
    cpu_pool_run(s->pool, gemm_task, &j);
    return FM_OK;
}

fm_status cpu_sgemm(cpu_state *s, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const float *B,
                    int64_t ldb, int b_kn, float *C, int64_t ldc, int accumulate) {
    if (M <= 0 || N <= 0) return FM_OK;
    if (K <= 0) {
        if (!accumulate)
            for (int64_t m = 0; m < M; m++) memset(C + m * ldc, 0, (size_t)N * 4);
        return FM_OK;
    }
    const cpu_kern *k = s->k;
    int nt = cpu_pool_size(s->pool);
    cpu_wmat w = {.dtype = FM_F32, .data = B, .N = N, .K = K, .scale = NULL, .scale_ld = 1};
    gemm_job j = {.s = s, .k = k, .x = A, .T = M, .ldx = lda, .w = &w, .n0 = 0, .n1 = N, .path = PATH_F32,
                  .y = C, .ldy = ldc, .bkn = b_kn ? B : NULL, .ldb = ldb, .accumulate = accumulate};
    if (!b_kn && (ldb != K || accumulate)) return cpu_fail(s, FM_FAILED, "sgemm: unsupported B layout");
    j.nalign = M <= CPU_GEMV_T ? 16 : k->nr;
    j.malign = k->mr;
    j.pn = 1;
    for (int pn = nt; pn >= 1; pn--)
        if (nt % pn == 0 && (N + j.nalign - 1) / j.nalign >= 2 * pn) {
            j.pn = pn;
            break;
        }
    j.pm = nt / j.pn;
    if (M <= CPU_GEMV_T) j.pm = 1, j.pn = nt;
    int64_t mpart = (M + j.pm - 1) / j.pm + j.malign, npart = (N + j.pn - 1) / j.pn + j.nalign;
    j.per_thread = (size_t)rup((int64_t)thread_bytes(k, PATH_F32, mpart, npart, M), 64);
    j.scratch = cpu_scratch(s, j.per_thread * (size_t)nt);
    if (!j.scratch) return cpu_fail(s, FM_ENOMEM, "sgemm: out of memory for scratch");
    cpu_pool_run(s->pool, gemm_task, &j);
    return FM_OK;
}

/* ---- serial entry (MoE experts run many small products in parallel) ---- */

size_t cpu_matmul_scratch_bytes(const cpu_state *s, int64_t T, const cpu_wmat *w, int act_quant) {
    int path = choose_path(s, w, act_quant);
    int64_t K = w->K, nb = (K + CPU_QB - 1) / CPU_QB;
    size_t q = path == PATH_FP8 ? (size_t)rup(T * K * 4, 64) + (size_t)rup(T * nb * 4, 64) : 0;
    return q + (size_t)rup((int64_t)thread_bytes(s->k, path, T, w->N, T), 64);
}

void cpu_act_quant_rows(const float *x, int64_t T, int64_t ldx, int64_t K, float *xv, float *xs) {
    int64_t nb = (K + CPU_QB - 1) / CPU_QB;
    uint8_t codes[1024];
    for (int64_t t = 0; t < T; t++)
        for (int64_t k0 = 0; k0 < K; k0 += 1024) {
            int64_t l = imin(1024, K - k0);
            cpu_act_quant_row(x + t * ldx + k0, l, codes, xs + t * nb + k0 / CPU_QB);
            for (int64_t k = 0; k < l; k++) xv[t * K + k0 + k] = cpu_e4m3_value(codes[k]);
        }
}

void cpu_matmul_serial(const cpu_state *s, const float *x, int64_t T, int64_t ldx, const cpu_wmat *w, int64_t n0,
                       int64_t n1, int act_quant, const float *xv, const float *xs, float *y, int64_t ldy,
                       void *scratch) {
    gemm_job j = {.s = s, .k = s->k, .x = x, .T = T, .ldx = ldx, .w = w, .n0 = n0, .n1 = n1,
                  .path = choose_path(s, w, act_quant), .y = y, .ldy = ldy};
    char *scr = scratch;
    if (j.path == PATH_FP8 && xv) {
        j.xv = xv;
        j.xs = xs;
    } else if (j.path == PATH_FP8) {
        int64_t K = w->K, nb = (K + CPU_QB - 1) / CPU_QB;
        j.xv = (const float *)scr;
        j.xs = (const float *)(scr + rup(T * K * 4, 64));
        for (int64_t t = 0; t < T; t++) quant_task(&j, t, 0);
        scr += rup(T * K * 4, 64) + rup(T * nb * 4, 64);
    }
    rect(&j, 0, T, n0, n1, scr);
}

/* ---- the node ---- */

int cpu_wmat_from(const fm_pl_tensor *t, cpu_wmat *w) {
    if (!t || t->ndim != 2) return 0;
    if (t->dtype != FM_F32 && t->dtype != FM_BF16 && t->dtype != FM_F16 && t->dtype != FM_F8_E4M3) return 0;
    w->dtype = t->dtype;
    w->data = t->data;
    w->N = t->ne[0];
    w->K = t->ne[1];
    w->scale = NULL;
    w->scale_ld = (w->K + CPU_QB - 1) / CPU_QB;
    if (t->dtype == FM_F8_E4M3) {
        const fm_pl_tensor *sc = t->scale;
        if (!sc || sc->dtype != FM_F32 || sc->ndim != 2 || sc->ne[0] != (w->N + CPU_QB - 1) / CPU_QB ||
            sc->ne[1] != w->scale_ld)
            return 0;
        w->scale = sc->data;
    }
    return 1;
}

int cpu_matmul_supports(const fm_pl_node *node) {
    if (node->n_src != 2 || node->n_dst != 1) return 0;
    const fm_pl_tensor *x = node->src[0], *y = node->dst[0];
    cpu_wmat w;
    if (!cpu_wmat_from(node->src[1], &w)) return 0;
    if (!x || x->dtype != FM_F32 || x->ndim != 2 || x->ne[1] != w.K) return 0;
    if (!y || y->dtype != FM_F32 || fm_pl_nelem(y) != x->ne[0] * w.N) return 0;
    return 1;
}

fm_status cpu_matmul_node(cpu_state *s, const fm_pl_node *node) {
    const fm_pl_tensor *x = node->src[0], *y = node->dst[0];
    const fm_matmul_params *p = node->params;
    cpu_wmat w;
    cpu_wmat_from(node->src[1], &w);
    return cpu_matmul(s, x->data, x->ne[0], w.K, &w, p && p->act_quant, y->data, w.N);
}
