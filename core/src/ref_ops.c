/* ref_ops.c - the reference dispatcher and the dense ops: embed, matmul,
 * rmsnorm, rope, add, swiglu. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref.h"


fm_status fm_ref_fail(char *err, size_t errsz, fm_status s, const char *fmt, ...) {
    if (err && errsz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsz, fmt, ap);
        va_end(ap);
    }
    return s;
}


/* ---- shared numerics ------------------------------------------------------ */

/* As DeepSeek's RMSNorm in float32: x * rsqrt(mean(x*x) + eps), then times w. */
void fm_ref_rmsnorm_row(const float *x, int64_t H, const float *w, float eps, float *y) {
    float ss = 0.0f;
    for (int64_t i = 0; i < H; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)H + eps);
    for (int64_t i = 0; i < H; i++) y[i] = (x[i] * r) * w[i];
}

/* Rotates, in place, the rope slice of every head of one row by pos. */
void fm_ref_rope_row(float *x, int64_t C, const fm_rope_params *p, const float *inv_freq, int32_t pos) {
    for (int64_t h = 0; h + p->head_dim <= C; h += p->head_dim) {
        float *r = x + h + p->rope_off;
        for (int32_t i = 0; i < p->rope_dim / 2; i++) {
            float ang = (float)pos * inv_freq[i];
            float c = cosf(ang), s = sinf(ang);
            float a = r[2 * i], b = r[2 * i + 1];
            r[2 * i] = a * c - b * s;
            r[2 * i + 1] = a * s + b * c;
        }
    }
}

/* model.py precompute_freqs_cis, in its float32 / float64 mix: the correction
 * range is Python float arithmetic, everything per frequency is torch float32. */
void fm_rope_inv_freq(const fm_rope_params *p, float *inv_freq) {
    int32_t dim = p->rope_dim, half = dim / 2;
    for (int32_t i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)dim;
        inv_freq[i] = 1.0f / powf(p->theta, e);
    }
    if (!(p->yarn_factor > 1.0f)) return;
    const double two_pi = 6.283185307179586;
    double ln_theta2 = 2.0 * log((double)p->theta);
    double d_fast = (double)dim * log((double)p->yarn_orig_max / ((double)p->yarn_beta_fast * two_pi)) / ln_theta2;
    double d_slow = (double)dim * log((double)p->yarn_orig_max / ((double)p->yarn_beta_slow * two_pi)) / ln_theta2;
    double low = floor(d_fast), high = ceil(d_slow);
    if (low < 0.0) low = 0.0;
    if (high > (double)(dim - 1)) high = (double)(dim - 1);
    if (low == high) high += 0.001;
    float span = (float)(high - low), flow = (float)low, factor = p->yarn_factor;
    for (int32_t i = 0; i < half; i++) {
        float ramp = ((float)i - flow) / span;
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        float smooth = 1.0f - ramp;
        float f = inv_freq[i];
        inv_freq[i] = f / factor * (1.0f - smooth) + f * smooth;
    }
}

/* ---- kernels -------------------------------------------------------------- */

static fm_status ref_embed(const fm_pl_node *node, char *err, size_t errsz) {
    const fm_pl_tensor *tab = node->src[0], *idt = node->src[1];
    const int32_t *ids = idt->data;
    float *y = node->dst[0]->data;
    int64_t V = tab->ne[0], H = tab->ne[1], T = fm_pl_nelem(idt);
    for (int64_t t = 0; t < T; t++) {
        if (ids[t] < 0)
            return fm_ref_fail(err, errsz, FM_EINVAL, "embed '%s': token id %d at row %lld is negative",
                               NODE_NAME(node), ids[t], (long long)t);
        if (ids[t] >= V)
            return fm_ref_fail(err, errsz, FM_EINVAL, "embed '%s': token id %d at row %lld >= vocab %lld",
                               NODE_NAME(node), ids[t], (long long)t, (long long)V);
    }
    for (int64_t t = 0; t < T; t++) fm_weight_row_f32(tab, ids[t], y + t * H);
    return FM_OK;
}

static fm_status ref_matmul(const fm_pl_node *node, char *err, size_t errsz) {
    const fm_matmul_params *p = node->params;
    const fm_pl_tensor *x = node->src[0], *w = node->src[1];
    char what[160];
    snprintf(what, sizeof what, "matmul '%s'", NODE_NAME(node));
    return fm_ref_linear(x->data, fm_pl_rows(x), fm_pl_cols(x), w, 0, w->ne[0], p->act_quant,
                         node->dst[0]->data, what, err, errsz);
}

static fm_status ref_rmsnorm(const fm_pl_node *node, char *err, size_t errsz) {
    const fm_rmsnorm_params *p = node->params;
    const fm_pl_tensor *x = node->src[0];
    int64_t T = fm_pl_rows(x), H = fm_pl_cols(x);
    float *w = malloc((size_t)H * sizeof *w);
    if (!w) return fm_ref_fail(err, errsz, FM_ENOMEM, "rmsnorm '%s': out of memory", NODE_NAME(node));
    fm_weight_row_f32(node->src[1], 0, w);
    const float *xd = x->data;
    float *y = node->dst[0]->data;
    for (int64_t t = 0; t < T; t++) fm_ref_rmsnorm_row(xd + t * H, H, w, p->eps, y + t * H);
    free(w);
    return FM_OK;
}

static fm_status ref_rope(const fm_pl_node *node, char *err, size_t errsz) {
    const fm_rope_params *p = node->params;
    const fm_pl_tensor *x = node->src[0];
    const int32_t *pos = node->src[1]->data;
    int64_t T = fm_pl_rows(x), C = fm_pl_cols(x);
    float *inv = malloc((size_t)(p->rope_dim / 2 + 1) * sizeof *inv);
    if (!inv) return fm_ref_fail(err, errsz, FM_ENOMEM, "rope '%s': out of memory", NODE_NAME(node));
    fm_rope_inv_freq(p, inv);
    float *y = node->dst[0]->data;
    if (y != x->data) memcpy(y, x->data, (size_t)(T * C) * sizeof *y);
    for (int64_t t = 0; t < T; t++) fm_ref_rope_row(y + t * C, C, p, inv, pos[t]);
    free(inv);
    return FM_OK;
}

static fm_status ref_add(const fm_pl_node *node) {
    const float *a = node->src[0]->data, *b = node->src[1]->data;
    float *y = node->dst[0]->data;
    int64_t n = fm_pl_nelem(node->src[0]);
    for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    return FM_OK;
}

static fm_status ref_swiglu(const fm_pl_node *node) {
    const float *g = node->src[0]->data, *u = node->src[1]->data;
    float *y = node->dst[0]->data;
    int64_t n = fm_pl_nelem(node->src[0]);
    for (int64_t i = 0; i < n; i++) y[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    return FM_OK;
}

fm_status fm_ref_compute(const fm_pl_node *node, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    if (!node) return fm_ref_fail(err, err_size, FM_EINVAL, "ref: no node");
    fm_status st = fm_ref_check(node, 1, err, err_size);
    if (st != FM_OK) return st;
    switch ((fm_op)node->op) {
    case FM_OP_EMBED:       return ref_embed(node, err, err_size);
    case FM_OP_MATMUL:      return ref_matmul(node, err, err_size);
    case FM_OP_RMSNORM:     return ref_rmsnorm(node, err, err_size);
    case FM_OP_ROPE:        return ref_rope(node, err, err_size);
    case FM_OP_ADD:         return ref_add(node);
    case FM_OP_SWIGLU:      return ref_swiglu(node);
    case FM_OP_MOE_ROUTE:   return fm_ref_moe_route(node, err, err_size);
    case FM_OP_MOE_EXPERTS: return fm_ref_moe_experts(node, err, err_size);
    case FM_OP_MLA_CACHE:   return fm_ref_mla_cache(node, err, err_size);
    case FM_OP_MLA_ATTN:    return fm_ref_mla_attn(node, err, err_size);
    case FM_OP_COUNT:       break;
    }
    return fm_ref_fail(err, err_size, FM_EINVAL, "ref: unknown op %d", node->op);
}
