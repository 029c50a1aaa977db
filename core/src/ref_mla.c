/* ref_mla.c - Multi-head Latent Attention: the latent KV-cache append and the
 * attention over it, absorbed (DeepSeek model.py attn_impl="absorb") or naive.
 * The cache is f32 or bf16: rows are computed in f32 and stored rounded to
 * nearest even; attention reads them widened to f32 (exact). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref.h"



static fm_status check_positions(const fm_pl_node *node, const int32_t *pos, int64_t T, int64_t L, char *err,
                                 size_t errsz) {
    const char *op = fm_op_name((fm_op)node->op);
    for (int64_t t = 0; t < T; t++) {
        if (pos[t] < 0)
            return fm_ref_fail(err, errsz, FM_EINVAL, "%s '%s': negative position %d at row %lld", op,
                               NODE_NAME(node), pos[t], (long long)t);
        if (pos[t] >= L)
            return fm_ref_fail(err, errsz, FM_EINVAL, "%s '%s': position %d past the cache size %lld", op,
                               NODE_NAME(node), pos[t], (long long)L);
    }
    return FM_OK;
}

fm_status fm_ref_mla_cache(const fm_pl_node *node, char *err, size_t errsz) {
    const fm_mla_cache_params *p = node->params;
    const fm_pl_tensor *cache = node->src[0], *kv = node->src[1];
    const int32_t *pos = node->src[3]->data;
    int64_t L = fm_pl_rows(cache), D = fm_pl_cols(cache), T = fm_pl_rows(kv), C = p->kv_lora;
    fm_status st = check_positions(node, pos, T, L, err, errsz);
    if (st != FM_OK) return st;

    float *w = malloc((size_t)C * sizeof *w);
    float *inv = malloc((size_t)(p->rope.rope_dim / 2 + 1) * sizeof *inv);
    float *row = malloc((size_t)D * sizeof *row);
    if (!w || !inv || !row) {
        free(w);
        free(inv);
        free(row);
        return fm_ref_fail(err, errsz, FM_ENOMEM, "mla_cache '%s': out of memory", NODE_NAME(node));
    }
    fm_weight_row_f32(node->src[2], 0, w);
    fm_rope_inv_freq(&p->rope, inv);
    char *out = node->dst[0]->data;
    size_t es = fm_dtype_size((fm_dtype)cache->dtype);
    if (out != cache->data) memcpy(out, cache->data, (size_t)(L * D) * es);
    const float *kd = kv->data;
    for (int64_t t = 0; t < T; t++) {
        const float *src = kd + t * D;
        fm_ref_rmsnorm_row(src, C, w, p->eps, row);
        memcpy(row + C, src + C, (size_t)(D - C) * sizeof *row);
        fm_ref_rope_row(row + C, D - C, &p->rope, inv, pos[t]);
        char *dst = out + (size_t)((int64_t)pos[t] * D) * es;
        if (cache->dtype == FM_BF16)
            for (int64_t i = 0; i < D; i++) ((uint16_t *)dst)[i] = fm_f32_to_bf16(row[i]);
        else
            memcpy(dst, row, (size_t)D * sizeof *row);
    }
    free(w);
    free(inv);
    free(row);
    return FM_OK;
}

static float dot(const float *a, const float *b, int64_t n) {
    float acc = 0.0f;
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

/* In place: p[j] = exp(s[j] - max) / sum. */
static void softmax(float *s, int64_t n) {
    float m = s[0], sum = 0.0f;
    for (int64_t j = 1; j < n; j++)
        if (s[j] > m) m = s[j];
    for (int64_t j = 0; j < n; j++) {
        s[j] = expf(s[j] - m);
        sum += s[j];
    }
    for (int64_t j = 0; j < n; j++) s[j] /= sum;
}

typedef struct mla_dims {
    int64_t T, H, nope, rope, v, C, D; /* D = cache row = C + rope */
    float scale;
} mla_dims;

/* Per head: q_abs = W_UK^T q_nope, scores against the latent rows, o_lat = the
 * softmax-weighted latent, out = W_UV o_lat. kv_b is decoded to f32 (FP8 included:
 * the absorbed form never quantizes activations). */
static fm_status attn_absorb(const fm_pl_node *node, const mla_dims *m, const float *cache, int64_t rows, char *err,
                             size_t errsz) {
    const float *q = node->src[0]->data;
    const int32_t *pos = node->src[2]->data;
    const fm_pl_tensor *kvb = node->src[3];
    float *out = node->dst[0]->data;
    int64_t C = m->C, hs = m->nope + m->v, qs = m->H * (m->nope + m->rope);
    float *wh = malloc((size_t)(hs * C) * sizeof *wh);
    float *qabs = malloc((size_t)C * sizeof *qabs);
    float *olat = malloc((size_t)C * sizeof *olat);
    float *sc = malloc((size_t)rows * sizeof *sc);
    fm_status st = FM_OK;
    if (!wh || !qabs || !olat || !sc) {
        st = fm_ref_fail(err, errsz, FM_ENOMEM, "mla_attn '%s': out of memory (%lld cache rows)", NODE_NAME(node),
                         (long long)rows);
        goto out;
    }
    for (int64_t h = 0; h < m->H; h++) {
        for (int64_t r = 0; r < hs; r++) fm_weight_row_f32(kvb, h * hs + r, wh + r * C);
        const float *wuk = wh, *wuv = wh + m->nope * C;
        for (int64_t t = 0; t < m->T; t++) {
            const float *qn = q + t * qs + h * (m->nope + m->rope), *qp = qn + m->nope;
            for (int64_t c = 0; c < C; c++) {
                float acc = 0.0f;
                for (int64_t d = 0; d < m->nope; d++) acc += qn[d] * wuk[d * C + c];
                qabs[c] = acc;
            }
            int64_t n = (int64_t)pos[t] + 1;
            for (int64_t j = 0; j < n; j++) {
                const float *row = cache + j * m->D;
                sc[j] = (dot(qabs, row, C) + dot(qp, row + C, m->rope)) * m->scale;
            }
            softmax(sc, n);
            memset(olat, 0, (size_t)C * sizeof *olat);
            for (int64_t j = 0; j < n; j++) {
                const float *row = cache + j * m->D;
                for (int64_t c = 0; c < C; c++) olat[c] += sc[j] * row[c];
            }
            float *o = out + t * m->H * m->v + h * m->v;
            for (int64_t d = 0; d < m->v; d++) o[d] = dot(wuv + d * C, olat, C);
        }
    }
out:
    free(wh);
    free(qabs);
    free(olat);
    free(sc);
    return st;
}

/* Per head: k_nope and v of every needed cache row through kv_b as a linear
 * layer (with act_quant for FP8 when asked), then ordinary attention with the
 * shared k_pe. Memory: one head's k/v for the rows in use. */
static fm_status attn_naive(const fm_pl_node *node, const mla_dims *m, const float *cache, int64_t rows,
                            int act_quant, char *err, size_t errsz) {
    const float *q = node->src[0]->data;
    const int32_t *pos = node->src[2]->data;
    const fm_pl_tensor *kvb = node->src[3];
    float *out = node->dst[0]->data;
    int64_t C = m->C, hs = m->nope + m->v, qs = m->H * (m->nope + m->rope);
    float *ckv = malloc((size_t)(rows * C) * sizeof *ckv);
    float *kvh = malloc((size_t)(rows * hs) * sizeof *kvh);
    float *sc = malloc((size_t)rows * sizeof *sc);
    char what[160];
    snprintf(what, sizeof what, "mla_attn '%s'", NODE_NAME(node));
    fm_status st = FM_OK;
    if (!ckv || !kvh || !sc) {
        st = fm_ref_fail(err, errsz, FM_ENOMEM, "%s: out of memory (%lld cache rows)", what, (long long)rows);
        goto out;
    }
    for (int64_t j = 0; j < rows; j++) memcpy(ckv + j * C, cache + j * m->D, (size_t)C * sizeof *ckv);
    for (int64_t h = 0; h < m->H; h++) {
        st = fm_ref_linear(ckv, rows, C, kvb, h * hs, (h + 1) * hs, act_quant, kvh, what, err, errsz);
        if (st != FM_OK) goto out;
        for (int64_t t = 0; t < m->T; t++) {
            const float *qn = q + t * qs + h * (m->nope + m->rope), *qp = qn + m->nope;
            int64_t n = (int64_t)pos[t] + 1;
            for (int64_t j = 0; j < n; j++) {
                const float *kn = kvh + j * hs, *kp = cache + j * m->D + C;
                float acc = 0.0f;
                for (int64_t d = 0; d < m->nope; d++) acc += qn[d] * kn[d];
                for (int64_t r = 0; r < m->rope; r++) acc += qp[r] * kp[r];
                sc[j] = acc * m->scale;
            }
            softmax(sc, n);
            float *o = out + t * m->H * m->v + h * m->v;
            for (int64_t d = 0; d < m->v; d++) {
                float acc = 0.0f;
                for (int64_t j = 0; j < n; j++) acc += sc[j] * kvh[j * hs + m->nope + d];
                o[d] = acc;
            }
        }
    }
out:
    free(ckv);
    free(kvh);
    free(sc);
    return st;
}

fm_status fm_ref_mla_attn(const fm_pl_node *node, char *err, size_t errsz) {
    const fm_mla_attn_params *p = node->params;
    const fm_pl_tensor *q = node->src[0], *cache = node->src[1];
    const int32_t *pos = node->src[2]->data;
    mla_dims m = {
        .T = fm_pl_rows(q), .H = p->n_heads, .nope = p->nope, .rope = p->rope, .v = p->v,
        .C = p->kv_lora, .D = (int64_t)p->kv_lora + p->rope, .scale = p->scale,
    };
    int64_t L = fm_pl_rows(cache);
    fm_status st = check_positions(node, pos, m.T, L, err, errsz);
    if (st != FM_OK || m.T == 0) return st;
    int64_t rows = 0;
    for (int64_t t = 0; t < m.T; t++)
        if ((int64_t)pos[t] + 1 > rows) rows = (int64_t)pos[t] + 1;
    /* A bf16 cache: the rows in use widened to f32 once (exact), then the f32 kernels. */
    const float *kc = cache->data;
    float *wide = NULL;
    if (cache->dtype != FM_F32) {
        if (!(wide = malloc((size_t)(rows * m.D) * sizeof *wide)))
            return fm_ref_fail(err, errsz, FM_ENOMEM, "mla_attn '%s': out of memory (%lld cache rows)",
                               NODE_NAME(node), (long long)rows);
        for (int64_t j = 0; j < rows; j++) fm_weight_row_f32(cache, j, wide + j * m.D);
        kc = wide;
    }
    if (p->mode == FM_MLA_NAIVE)
        st = attn_naive(node, &m, kc, rows, p->act_quant && node->src[3]->dtype == FM_F8_E4M3, err, errsz);
    else
        st = attn_absorb(node, &m, kc, rows, err, errsz);
    free(wide);
    return st;
}
