/* golden.c - the golden-case protocol and comparisons (see golden.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "golden.h"
#include "internal.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}


static const char *const fam_names[FM_GF_COUNT] = {"logits", "embed", "attn_out", "ffn_out", "layer out", "final_hidden",
                                         "router_weights", "kv_cache", "pe_cache", "router_indices"};


static const fm_st_tensor *gget_as(const fm_st *g, const fm_golden_run *r, const char *name, fm_dtype dt) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", r->prefix, name);
    const fm_st_tensor *t = fm_st_get(g, full);
    return t && t->dtype == dt ? t : NULL;
}

static const fm_st_tensor *gget(const fm_st *g, const fm_golden_run *r, const char *name) {
    return gget_as(g, r, name, FM_F32);
}

static void compare_rows(fm_golden_run *r, int f, const char *name, const float *ours, const fm_st_tensor *ref,
                         int64_t row0, int64_t rows, int64_t width) {
    fm_golden_family *fa = &r->fam[f];
    double atol = f == FM_GF_LOGITS ? r->atol_logits : r->atol;
    for (int64_t i = 0; i < rows * width; i++) {
        float rv;
        memcpy(&rv, (const char *)ref->data + ((row0 * width + i) * 4), 4);
        double d = fabs((double)ours[i] - rv);
        if (!(d <= atol + r->rtol * fabs(rv))) fa->bad++;
        if (!(d <= fa->max_err) || isnan(d)) {
            fa->max_err = isnan(d) ? INFINITY : d;
            fa->worst_ref = fabs(rv);
            snprintf(fa->worst, sizeof fa->worst, "%s[%lld]", name, (long long)(row0 + i / width));
        }
    }
    fa->compared += rows * width;
}

/* Reads an intermediate of the last forward and compares it with golden rows row0.. */
static fm_status compare_named(fm_model *m, const fm_st *g, fm_golden_run *r, int f, const char *ours_name,
                               const char *gold_name, int64_t row0, int64_t rows) {
    const fm_st_tensor *ref = gget(g, r, gold_name);
    if (!ref) {
        r->missing++;
        return FM_OK;
    }
    int64_t width = ref->ndim == 2 ? ref->ne[1] : 1;
    float *buf = malloc((size_t)(rows * width) * 4);
    if (!buf) return FM_ENOMEM;
    fm_status s = fm_model_read(m, ours_name, buf, rows * width);
    if (s == FM_OK) compare_rows(r, f, gold_name, buf, ref, row0, rows, width);
    free(buf);
    return s;
}

static int cmp_i32(const void *a, const void *b) { return *(const int32_t *)a - *(const int32_t *)b; }

static fm_status compare_router(fm_model *m, const fm_st *g, fm_golden_run *r, int l, const char *phase, int64_t row0,
                                int64_t rows) {
    char gi[96], gw[96], oi[64], ow[64];
    snprintf(gi, sizeof gi, "%s.layers.%d.router_indices", phase, l);
    snprintf(gw, sizeof gw, "%s.layers.%d.router_weights", phase, l);
    const fm_st_tensor *ti = gget_as(g, r, gi, FM_I32), *tw = gget(g, r, gw);
    if (!ti) return FM_OK; /* dense layer, or not in the golden for this prefix */
    int64_t k = ti->ne[1];
    snprintf(oi, sizeof oi, "layers.%d.router_indices", l);
    snprintf(ow, sizeof ow, "layers.%d.router_weights", l);
    int32_t *ids = malloc((size_t)(rows * k) * 4);
    float *w = malloc((size_t)(rows * k) * 4);
    fm_status s = ids && w ? fm_model_read(m, oi, ids, rows * k) : FM_ENOMEM;
    if (s == FM_OK) s = fm_model_read(m, ow, w, rows * k);
    for (int64_t t = 0; s == FM_OK && t < rows; t++) {
        int32_t a[256], b[256];
        memcpy(a, ids + t * k, (size_t)k * 4);
        memcpy(b, (const int32_t *)ti->data + (row0 + t) * k, (size_t)k * 4);
        qsort(a, (size_t)k, 4, cmp_i32);
        qsort(b, (size_t)k, 4, cmp_i32);
        r->fam[FM_GF_RI].compared++;
        if (memcmp(a, b, (size_t)k * 4)) {
            r->fam[FM_GF_RI].bad++;
            r->fam[FM_GF_RI].max_err = (double)r->fam[FM_GF_RI].bad;
            snprintf(r->fam[FM_GF_RI].worst, sizeof r->fam[FM_GF_RI].worst, "%s[%lld]", gi, (long long)(row0 + t));
            continue;
        }
        if (!tw) continue;
        /* weights compared expert by expert, whatever the order */
        for (int64_t j = 0; j < k; j++) {
            int32_t e = ((const int32_t *)ti->data)[(row0 + t) * k + j];
            for (int64_t jj = 0; jj < k; jj++)
                if (ids[t * k + jj] == e) {
                    float ref;
                    memcpy(&ref, (const char *)tw->data + ((row0 + t) * k + j) * 4, 4);
                    fm_st_tensor one = *tw;
                    one.data = &ref;
                    compare_rows(r, FM_GF_RW, gw, &w[t * k + jj], &one, 0, 1, 1);
                }
        }
    }
    free(ids);
    free(w);
    return s;
}

static fm_status compare_layers(fm_model *m, const fm_st *g, fm_golden_run *r, const char *phase, int64_t row0,
                                int64_t rows, bool caches) {
    static const struct { const char *what; int fam; } per[] = {
        {"attn_out", FM_GF_ATTN}, {"ffn_out", FM_GF_FFN}, {"out", FM_GF_OUT}};
    char on[64], gn[96];
    fm_status s = FM_OK;
    snprintf(gn, sizeof gn, "%s.embed", phase);
    if ((s = compare_named(m, g, r, FM_GF_EMBED, "embed", gn, row0, rows))) return s;
    snprintf(gn, sizeof gn, "%s.final_hidden", phase);
    if ((s = compare_named(m, g, r, FM_GF_FINAL, "final_hidden", gn, row0, rows))) return s;
    for (int l = 0; l < fm_model_layers(m); l++) {
        for (int k = 0; k < 3; k++) {
            snprintf(on, sizeof on, "layers.%d.%s", l, per[k].what);
            snprintf(gn, sizeof gn, "%s.layers.%d.%s", phase, l, per[k].what);
            if ((s = compare_named(m, g, r, per[k].fam, on, gn, row0, rows))) return s;
        }
        if ((s = compare_router(m, g, r, l, phase, row0, rows))) return s;
        if (caches) {
            snprintf(on, sizeof on, "layers.%d.kv_cache", l);
            snprintf(gn, sizeof gn, "%s.layers.%d.kv_cache", phase, l);
            if ((s = compare_named(m, g, r, FM_GF_KV, on, gn, 0, rows))) return s;
            snprintf(on, sizeof on, "layers.%d.pe_cache", l);
            snprintf(gn, sizeof gn, "%s.layers.%d.pe_cache", phase, l);
            if ((s = compare_named(m, g, r, FM_GF_PE, on, gn, 0, rows))) return s;
        }
    }
    return FM_OK;
}

static const int32_t *i32_of(const fm_st *g, const char *name, int64_t *n) {
    const fm_st_tensor *t = fm_st_get(g, name);
    if (!t || t->dtype != FM_I32 || t->ndim != 1) return NULL;
    *n = t->ne[0];
    return t->data;
}

fm_status fm_golden_run_model(fm_ctx *ctx, fm_model *m, const fm_st *g, fm_golden_run *r) {
    int64_t T = 0, S = 0, SP = -1;
    const int32_t *tok = i32_of(g, "tokens", &T), *dtok = i32_of(g, "decode_tokens", &S),
                  *dpos = i32_of(g, "decode_positions", &SP);
    if (!tok || !dtok || !dpos || S != SP)
        return fm_err(ctx, FM_EINVAL, "%s: needs i32 vectors 'tokens', 'decode_tokens' and 'decode_positions' of one length",
                          fm_st_path(g));
    for (int f = 0; f < FM_GF_COUNT; f++) r->fam[f] = (fm_golden_family){.name = fam_names[f]};
    r->T = (int)T, r->S = (int)S, r->missing = 0;
    int V = fm_model_vocab(m);
    const fm_st_tensor *pl = gget(g, r, "prefill_logits"), *dl = gget(g, r, "decode_logits");
    if (!pl || !dl || pl->ne[0] != T || pl->ne[1] != V || dl->ne[0] != S || dl->ne[1] != V)
        return fm_err(ctx, FM_EINVAL, "%s: '%sprefill_logits' [%lld, %d] and '%sdecode_logits' [%lld, %d] f32 expected",
                          fm_st_path(g), r->prefix, (long long)T, V, r->prefix, (long long)S, V);
    float *logits = malloc((size_t)(T > 1 ? T : 1) * (size_t)V * 4);
    if (!logits) return FM_ENOMEM;
    double t0 = now_s();
    fm_status s = fm_model_forward(m, tok, (int)T, 0, logits);
    double t1 = now_s();
    if (s == FM_OK) {
        compare_rows(r, FM_GF_LOGITS, "prefill_logits", logits, pl, 0, T, V);
        if (r->intermediates) s = compare_layers(m, g, r, "prefill", 0, T, true);
    }
    double dt = 0;
    for (int64_t i = 0; s == FM_OK && i < S; i++) {
        double a = now_s();
        s = fm_model_forward(m, &dtok[i], 1, dpos[i], logits);
        dt += now_s() - a;
        if (s != FM_OK) break;
        compare_rows(r, FM_GF_LOGITS, "decode_logits", logits, dl, i, 1, V);
        if (r->intermediates) s = compare_layers(m, g, r, "decode", i, 1, false);
    }
    r->prefill_tok_s = T / (t1 - t0);
    r->decode_tok_s = S ? S / dt : 0;
    free(logits);
    return s;
}


int64_t fm_golden_bad(const fm_golden_run *r) {
    int64_t bad = 0;
    for (int i = 0; i < FM_GF_COUNT; i++) bad += r->fam[i].bad;
    return bad;
}

void fm_golden_defaults(const fm_st *g, fm_golden_run *r) {
    const char *gemm = fm_st_metadata(g, "gemm_impl");
    double tol = gemm && !strcmp(gemm, "fp8") ? 1e-3 : 1e-4;
    r->atol_logits = r->atol = r->rtol = tol;
}

void fm_golden_cache_tolerance(fm_dtype cache, fm_golden_run *r) {
    if (cache != FM_BF16) return;
    r->atol_logits = fmax(r->atol_logits, FM_GOLDEN_TOL_BF16_CACHE);
    r->atol = fmax(r->atol, FM_GOLDEN_TOL_BF16_CACHE);
    r->rtol = fmax(r->rtol, FM_GOLDEN_TOL_BF16_CACHE);
}
