/* cpu.h - internals of the cpu backend plugin (not part of the SDK).
 *
 * Layout of the plugin:
 *   cpu_plugin.c     the fm_plugin table: init, buffers, supports, compute, control
 *   cpu_sys.c        cpuid feature detection, CPU model string, hwloc topology
 *   cpu_pool.c       persistent thread pool (spin, then futex sleep)
 *   cpu_gemm.c       GEMM driver: blocking, packing, threading, fp8 act_quant
 *   cpu_ops.c        op dispatch; embed, rmsnorm, rope, add, swiglu, mla_cache
 *   cpu_route.c      MOE_ROUTE
 *   cpu_moe.c        MOE_EXPERTS grouped GEMM
 *   cpu_mla.c        MLA_ATTN (absorbed)
 *   kern_scalar.c    portable kernels (also the fallback slots of every ISA)
 *   kern_avx2.c      AVX2 + FMA kernels
 *   kern_avx512.c    AVX-512F/BW/VL/DQ kernels
 *   kern_avx512bf16.c  vdpbf16ps kernels (bf16-compute mode)
 */
#ifndef FM_CPU_H
#define FM_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "fathom/plugin.h"

#define CPU_HIDDEN __attribute__((visibility("hidden")))
#define CPU_QB 128 /* fp8 block (weights 128x128, activations 1x128) */

typedef enum cpu_isa { CPU_ISA_SCALAR, CPU_ISA_AVX2, CPU_ISA_AVX512, CPU_ISA_AVX512BF16, CPU_ISA_COUNT } cpu_isa;

/* ---- cpu_sys.c ---- */
CPU_HIDDEN const char *cpu_isa_name(cpu_isa isa);
CPU_HIDDEN int cpu_isa_parse(const char *s); /* -1 if unknown */
CPU_HIDDEN int cpu_isa_supported(cpu_isa isa); /* by this machine (cpuid + OS state) */
CPU_HIDDEN int cpu_has_vbmi(void);        /* AVX512-VBMI (vpermi2b), with AVX-512 */
CPU_HIDDEN cpu_isa cpu_isa_best(void);      /* best f32-accurate level (never avx512bf16) */
CPU_HIDDEN void cpu_model_name(char *out, size_t n);

/* ---- cpu_pool.c ---- */
typedef struct cpu_pool cpu_pool;
/* fn(arg, tid, nthreads) runs once on each of the pool's threads; tid 0 is the caller. */
typedef void (*cpu_task)(void *arg, int tid, int nt);
/* n threads in all (the caller counts as one). pin: bind worker i to core i (hwloc). */
CPU_HIDDEN int  cpu_pool_create(cpu_pool **out, int n, int pin, char *why, size_t whyn);
CPU_HIDDEN void cpu_pool_destroy(cpu_pool *p);
CPU_HIDDEN int  cpu_pool_size(const cpu_pool *p);
CPU_HIDDEN void cpu_pool_run(cpu_pool *p, cpu_task fn, void *arg);
/* Dynamic distribution inside a task: next item index, or -1 when none is left.
 * cpu_pool_for sets the range up and runs fn on every thread. */
typedef void (*cpu_item_fn)(void *arg, int64_t item, int tid);
CPU_HIDDEN void cpu_pool_for(cpu_pool *p, int64_t n_items, cpu_item_fn fn, void *arg);
CPU_HIDDEN int  cpu_physical_cores(void);

/* ---- weights ---- */
typedef struct cpu_wmat {  /* a weight matrix [N, K], row-major, any float dtype */
    int32_t dtype;         /* fm_dtype */
    const void *data;
    int64_t N, K;
    const float *scale;    /* F8_E4M3: [ceil(N/128), ceil(K/128)] */
    int64_t scale_ld;      /* = ceil(K/128) */
} cpu_wmat;

/* ---- kernels: one table per ISA ---- */
typedef struct cpu_kern {
    const char *name;
    /* f32 GEMM. Packed A: panels of mr rows, [kc][mr] (zero padded). Packed B: panels of
     * nr columns (= weight rows), [kc][nr] (zero padded), decoded to f32 (fp8 x scale). */
    int mr, nr, kc, mc;
    void (*pack_a)(const float *x, int64_t ldx, int rows, int kc, int mr, float *dst);
    void (*pack_b)(const cpu_wmat *w, int64_t n0, int nn, int64_t k0, int kc, int nr, float *dst);
    /* The same from an f32 B stored [K][N] (row stride ldb): columns n0.., rows k0.. */
    void (*pack_b_kn)(const float *b, int64_t ldb, int64_t n0, int nn, int64_t k0, int kc, int nr, float *dst);
    /* c[mr_valid x nr_valid] (add ? += : =) a[kc][MR] * b[kc][NR]. */
    void (*ukr)(int kc, const float *a, const float *b, float *c, int64_t ldc, int mr, int nr, int add);
    /* Few rows: y[t, n - n0] = x[t] . w[n] for n in [n0, n1), t < T (T <= 8), weights decoded in-register. */
    void (*gemv)(const float *x, int64_t ldx, int T, const cpu_wmat *w, int64_t n0, int64_t n1, float *y,
                 int64_t ldy);

    /* fp8 act_quant (exact): values in double, KC = 128. A: [128][fmr] doubles, B: [128][fnr] doubles.
     * c[i, j] += ((float)sum_k a*b * as[i]) * ws, each step rounded to f32. */
    int fmr, fnr;
    void (*ukr_fp8)(int kc, const double *a, const double *b, float *c, int64_t ldc, int mr, int nr,
                    const float *as, float ws);
    /* Few rows: codes x[T][K] (act codes as f32 values), xs[T][nb]; accumulates exactly like ukr_fp8. */
    void (*gemv_fp8)(const float *xv, const float *xs, int T, int64_t K, const cpu_wmat *w, int64_t n0,
                     int64_t n1, float *y, int64_t ldy);

    /* bf16 compute (vdpbf16ps), NULL if the ISA has none. A: [kc/2][bmr] pairs (u32), B: [kc/2][bnr][2]. */
    int bmr, bnr;
    void (*pack_a_bf16)(const float *x, int64_t ldx, int rows, int kc, int mr, uint32_t *dst);
    void (*pack_b_bf16)(const cpu_wmat *w, int64_t n0, int nn, int64_t k0, int kc, int nr, uint16_t *dst);
    void (*ukr_bf16)(int kc2, const uint32_t *a, const uint16_t *b, float *c, int64_t ldc, int mr, int nr, int add);

    /* row helpers */
    float (*dot)(const float *a, const float *b, int64_t n);
    void (*axpy)(float a, const float *x, float *y, int64_t n);         /* y += a x */
    void (*rmsnorm_row)(const float *x, const cpu_wmat *w, float eps, float *y, int64_t n); /* w: [1, n] */
    void (*swiglu_row)(const float *g, const float *u, float *y, int64_t n);
    void (*add_row)(const float *a, const float *b, float *y, int64_t n);
    /* x[i] = exp(x[i] - sub) (0 for x[i] = -inf); returns the sum */
    float (*expsum)(float *x, float sub, int64_t n);
    /* Attention decode, unpacked: s[i, j] = q[i] . c[j] (K long) for i < nq, j < nk */
    void (*scores)(const float *q, int64_t ldq, int nq, const float *c, int64_t ldc, int nk, int K, float *s,
                   int64_t lds);
    /* o[i, :n] += sum_j p[i, j] c[j, :n] */
    void (*pv)(const float *p, int64_t ldp, int nq, const float *c, int64_t ldc, int nk, int n, float *o, int64_t ldo);
    /* y += a * (row r of w, decoded) */
    void (*axpy_w)(float a, const cpu_wmat *w, int64_t r, float *y);
} cpu_kern;

extern CPU_HIDDEN const cpu_kern cpu_kern_scalar;
extern CPU_HIDDEN const cpu_kern cpu_kern_avx2;
extern CPU_HIDDEN const cpu_kern cpu_kern_avx512;
extern CPU_HIDDEN const cpu_kern cpu_kern_avx512bf16;

/* vdpbf16ps kernels (kern_avx512bf16.c); only called when the CPU has AVX512-BF16. */
#define CPU_BF16_MR 14
#define CPU_BF16_NR 32
CPU_HIDDEN void cpu_pack_a_bf16_avx512bf16(const float *x, int64_t ldx, int rows, int kc, int mr, uint32_t *dst);
CPU_HIDDEN void cpu_pack_b_bf16_avx512bf16(const cpu_wmat *w, int64_t n0, int nn, int64_t k0, int kc, int nr,
                                           uint16_t *dst);
CPU_HIDDEN void cpu_ukr_bf16_avx512bf16(int kc2, const uint32_t *a, const uint16_t *b, float *c, int64_t ldc, int mr,
                                        int nr, int add);

/* Scalar building blocks, shared as fallbacks by the ISA tables. */
CPU_HIDDEN void cpu_pack_a_scalar(const float *x, int64_t ldx, int rows, int kc, int mr, float *dst);
CPU_HIDDEN void cpu_pack_b_kn_scalar(const float *b, int64_t ldb, int64_t n0, int nn, int64_t k0, int kc, int nr,
                                     float *dst);
CPU_HIDDEN void cpu_pack_b_scalar(const cpu_wmat *w, int64_t n0, int nn, int64_t k0, int kc, int nr, float *dst);
CPU_HIDDEN void cpu_gemv_scalar(const float *x, int64_t ldx, int T, const cpu_wmat *w, int64_t n0, int64_t n1,
                                float *y, int64_t ldy);
CPU_HIDDEN void cpu_ukr_fp8_scalar(int kc, const double *a, const double *b, float *c, int64_t ldc, int mr,
                                   int nr, const float *as, float ws);
CPU_HIDDEN void cpu_gemv_fp8_scalar(const float *xv, const float *xs, int T, int64_t K, const cpu_wmat *w,
                                    int64_t n0, int64_t n1, float *y, int64_t ldy);
CPU_HIDDEN float cpu_dot_scalar(const float *a, const float *b, int64_t n);
CPU_HIDDEN void cpu_axpy_scalar(float a, const float *x, float *y, int64_t n);
CPU_HIDDEN void cpu_rmsnorm_row_scalar(const float *x, const cpu_wmat *w, float eps, float *y, int64_t n);
CPU_HIDDEN void cpu_swiglu_row_scalar(const float *g, const float *u, float *y, int64_t n);
CPU_HIDDEN void cpu_add_row_scalar(const float *a, const float *b, float *y, int64_t n);
CPU_HIDDEN float cpu_expsum_scalar(float *x, float sub, int64_t n);
CPU_HIDDEN void cpu_scores_scalar(const float *q, int64_t ldq, int nq, const float *c, int64_t ldc, int nk, int K,
                                  float *s, int64_t lds);
CPU_HIDDEN void cpu_pv_scalar(const float *p, int64_t ldp, int nq, const float *c, int64_t ldc, int nk, int n, float *o,
                              int64_t ldo);
CPU_HIDDEN void cpu_axpy_w_scalar(float a, const cpu_wmat *w, int64_t r, float *y);
CPU_HIDDEN void cpu_pack_a_bf16_scalar(const float *x, int64_t ldx, int rows, int kc, int mr, uint32_t *dst);
CPU_HIDDEN void cpu_pack_b_bf16_scalar(const cpu_wmat *w, int64_t n0, int nn, int64_t k0, int kc, int nr,
                                       uint16_t *dst);

/* ---- number formats (kern_scalar.c) ---- */
CPU_HIDDEN float    cpu_e4m3_value(uint8_t c);       /* exact; 0x7f/0xff give NaN */
CPU_HIDDEN uint8_t  cpu_e4m3_from_f32(float f);      /* nearest, ties to even code, saturating */
CPU_HIDDEN float    cpu_bf16_value(uint16_t h);
CPU_HIDDEN uint16_t cpu_bf16_from_f32(float f);      /* nearest even */
CPU_HIDDEN float    cpu_f16_value(uint16_t h);
/* Element (n, k) of a weight, decoded to f32 (fp8: value x block scale, one f32 product). */
CPU_HIDDEN float    cpu_w_at(const cpu_wmat *w, int64_t n, int64_t k);
/* Row n, columns k0 .. k0+kc-1, decoded to f32. */
CPU_HIDDEN void     cpu_w_row(const cpu_wmat *w, int64_t n, int64_t k0, int kc, float *out);
/* DeepSeek act_quant of one row: codes[K], scales[ceil(K/128)] (a partial block on its own). */
CPU_HIDDEN void     cpu_act_quant_row(const float *x, int64_t K, uint8_t *codes, float *scales);

/* ---- plugin state ---- */
typedef struct cpu_state {
    const fm_host_services *host;
    cpu_isa isa;           /* level in use */
    int bf16_compute;      /* bf16 weights multiply bf16-rounded activations with vdpbf16ps */
    int mla_bf16;          /* with bf16_compute: absorbed MLA decode rounds the latent cache to bf16 */
    int vbmi;              /* the CPU has AVX512-VBMI */
    const cpu_kern *k;
    cpu_pool *pool;
    int nthreads;
    int pin;
    char model[64];
    char err[512];
    fm_counters cnt;
    void *ws[4];           /* scratch slots, grown on demand: 0 the GEMM's, 1-3 the ops' */
    size_t ws_size[4];
} cpu_state;

CPU_HIDDEN const cpu_kern *cpu_kern_for(cpu_isa isa);
CPU_HIDDEN fm_status cpu_fail(cpu_state *s, fm_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Scratch of at least size bytes (64-byte aligned), valid until the next call; NULL on failure.
 * cpu_scratch is the GEMM's (cpu_matmul uses it); ops keep their buffers in slots 1-3. */
CPU_HIDDEN void *cpu_scratch(cpu_state *s, size_t size);
CPU_HIDDEN void *cpu_scratch_slot(cpu_state *s, int slot, size_t size);
CPU_HIDDEN int cpu_wmat_from(const fm_pl_tensor *t, cpu_wmat *w); /* 0 if unusable */

/* ---- cpu_gemm.c ---- */
/* y[T, ldy] (cols n0..n1 of the product written at y[t*ldy + n - n0]) = x[T, K] w[n0:n1]^T.
 * act_quant: fp8 weights with DeepSeek activation quantization. Runs on the pool. */
CPU_HIDDEN fm_status cpu_matmul(cpu_state *s, const float *x, int64_t T, int64_t ldx, const cpu_wmat *w,
                                int act_quant, float *y, int64_t ldy);
/* The same on the calling thread only (for callers that are already parallel); scratch
 * comes from the caller: cpu_matmul_scratch_bytes() bytes, 64-byte aligned. */
CPU_HIDDEN size_t cpu_matmul_scratch_bytes(const cpu_state *s, int64_t T, const cpu_wmat *w, int act_quant);
/* xv/xs: for fp8 act_quant, the activations already quantized by cpu_act_quant_rows
 * (then x is unused and the scratch needs no room for them); NULL to quantize x here. */
CPU_HIDDEN void cpu_matmul_serial(const cpu_state *s, const float *x, int64_t T, int64_t ldx, const cpu_wmat *w,
                                  int64_t n0, int64_t n1, int act_quant, const float *xv, const float *xs, float *y,
                                  int64_t ldy, void *scratch);
/* DeepSeek act_quant of T rows: values of the e4m3 codes xv[T][K], scales xs[T][ceil(K/128)]. */
CPU_HIDDEN void cpu_act_quant_rows(const float *x, int64_t T, int64_t ldx, int64_t K, float *xv, float *xs);
/* General f32 product on the pool: C[M, N] (accumulate ? += : =) A[M, K] B, with B given
 * as [N, K] (b_kn = 0) or [K, N] (b_kn = 1), row stride ldb. */
CPU_HIDDEN fm_status cpu_sgemm(cpu_state *s, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                               const float *B, int64_t ldb, int b_kn, float *C, int64_t ldc, int accumulate);
CPU_HIDDEN int cpu_matmul_supports(const fm_pl_node *node);
CPU_HIDDEN fm_status cpu_matmul_node(cpu_state *s, const fm_pl_node *node);

/* ---- MLA kernels ---- */
/* Absorbed-MLA decode over one range of cache rows (kern_mla_avx512.c: f32 FMA;
 * kern_mla_avx512bf16.c: vdpbf16ps; avx512bf16 with FATHOM_CPU_MLA_BF16=1). Lanes: query rows
 * (token x head), nl = 16 * nqv of them (nqv <= 8), padded past nq. Per block of
 * cache rows: scores S[row][lane] as a small GEMM (cache elements broadcast, q
 * transposed), an online softmax in f32 (running max m and sum l per lane, keys
 * past lim[lane] masked), O[lane][C] += P C. m, l, O are the caller's (m = -inf,
 * l = 0, O = 0 before the first range). */
#define CPU_MLA_DEC_ROWS 128 /* query rows (token x head) a decode block may have: DeepSeek-V3's 128 heads */
typedef struct cpu_mla_dec {
    int nq, nqv;
    int64_t C, D;            /* latent length, cache row length (C + rope) */
    const float *q;          /* [nq][D]: q_abs | q_pe */
    const float *cache;      /* [rows][D], or NULL when cache16 */
    const uint16_t *cache16; /* [rows][D] bf16 (bf16 kernel only), or NULL */
    const int32_t *lim;      /* [nl]: last cache row each lane sees (-1: none) */
    float scale;
} cpu_mla_dec;
/* The decode kernels: cache rows [k0, k1) into the running m, l, O of lanes (rows of
 * O: nq). prep: first call on this scratch (the queries are laid out in it; later
 * calls with prep 0 reuse them). */
CPU_HIDDEN size_t cpu_mla_dec_scratch_avx512(const cpu_mla_dec *d);
CPU_HIDDEN void cpu_mla_dec_avx512(const cpu_mla_dec *d, int64_t k0, int64_t k1, float *m, float *l, float *O,
                                   void *scratch, int prep);
/* What the bf16 kernel requests from memory while it runs, besides its own next block:
 * knext, the first row of the caller's next range (its first block, during this
 * range's last), or -1, and knext_n, that range's rows; and a side stream spread over
 * the whole call (the W_UV rows the thread projects afterwards): side_n spans of
 * side_bytes, side_pitch apart. */
typedef struct cpu_mla_pf {
    int64_t knext, knext_n;
    const char *side;
    int64_t side_bytes, side_pitch;
    int side_n;
} cpu_mla_pf;
CPU_HIDDEN size_t cpu_mla_dec_scratch_avx512bf16(const cpu_mla_dec *d);
CPU_HIDDEN void cpu_mla_dec_avx512bf16(const cpu_mla_dec *d, int64_t k0, int64_t k1, float *m, float *l, float *O,
                                       void *scratch, int prep, const cpu_mla_pf *pf);
/* The bf16 kernel's O keeps each whole group of 32 columns in its unpack order, in and
 * out (zeros, and sums of its outputs, are in that order too): o = a O of one row, back
 * in column order. */
CPU_HIDDEN void cpu_mla_o_row_avx512bf16(const float *O, float a, int64_t C, float *o);
/* Online-softmax step of one block (kern_mla_avx512.c, shared by both): S[kn][nl]
 * scores of rows kb.., scaled and masked into p = exp(s - m_new); m, l updated;
 * corr[nl] = exp(m_old - m_new). p goes back into S, or with Pp rounded to bf16 (l
 * sums the rounded values) into Pp[(kn + 1) / 2][nl] as the pairs of two rows (an odd
 * last row paired with zeros): P.V's broadcast operand. */
CPU_HIDDEN void cpu_mla_softmax_avx512(float *S, int kn, int nqv, int64_t kb, const int32_t *lim, float scale, float *m,
                                       float *l, float *corr, uint32_t *Pp);
/* y[0:K) = sum over d < nrows of q[d] * (row r0 + d of w, decoded): one head's q_abs.
 * rnext: the first row the caller reads next (requested at the end), or -1. */
CPU_HIDDEN void cpu_mla_qabs_avx512(const float *q, int64_t nrows, const cpu_wmat *w, int64_t r0, float *y, int64_t rnext);
/* fp8 kv_b on vdpbf16ps (kern_mla_avx512bf16.c; AVX512-VBMI too, K a multiple of 64):
 * the codes decoded exactly to bf16, each 128-column block's f32 sum times its scale.
 * q_abs as cpu_mla_qabs_avx512, q as the sum of two bf16 (its f32 value to 16 bits).
 * The output projection y[r] = row n0 + r of w . o for r < n, from o16 =
 * cpu_mla_o16_avx512bf16(o): o rounded to bf16, in the decode's column order. */
CPU_HIDDEN void cpu_mla_qabs_fp8_avx512bf16(const float *q, int64_t nrows, const cpu_wmat *w, int64_t r0, float *y,
                                            int64_t rnext);
CPU_HIDDEN void cpu_mla_o16_avx512bf16(const float *o, int64_t C, uint16_t *o16);
CPU_HIDDEN void cpu_mla_wuv_fp8_avx512bf16(const uint16_t *o16, const cpu_wmat *w, int64_t n0, int64_t n, float *y);

#endif
