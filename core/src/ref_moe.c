/* ref_moe.c - the MoE router (softmax / sigmoid, greedy / group-limited /
 * noaux_tc) and the routed experts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref.h"



/* Index of the largest v[i] not yet taken; ties go to the lower index. */
static int64_t pick_best(const float *v, const unsigned char *taken, int64_t n) {
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++) {
        if (taken[i]) continue;
        if (best < 0 || v[i] > v[best]) best = i;
    }
    return best;
}

static void route_token(const fm_moe_route_params *p, const float *logits, const float *bias, float *scores,
                        float *sel, float *gscore, unsigned char *taken, int32_t *ids, float *wts) {
    int64_t E = p->n_experts;
    if (p->scoring == FM_SCORE_SOFTMAX) {
        float m = logits[0], sum = 0.0f;
        for (int64_t e = 1; e < E; e++)
            if (logits[e] > m) m = logits[e];
        for (int64_t e = 0; e < E; e++) {
            scores[e] = expf(logits[e] - m);
            sum += scores[e];
        }
        for (int64_t e = 0; e < E; e++) scores[e] /= sum;
    } else {
        for (int64_t e = 0; e < E; e++) scores[e] = 1.0f / (1.0f + expf(-logits[e]));
    }
    for (int64_t e = 0; e < E; e++) sel[e] = bias ? scores[e] + bias[e] : scores[e];

    if (p->n_group > 1 && p->method != FM_TOPK_GREEDY && p->topk_group < p->n_group) {
        int64_t G = p->n_group, gs = E / G;
        for (int64_t g = 0; g < G; g++) {
            const float *s = sel + g * gs;
            int64_t a = 0;
            for (int64_t i = 1; i < gs; i++)
                if (s[i] > s[a]) a = i;
            float v = s[a];
            if (p->method == FM_TOPK_NOAUX_TC && gs > 1) {
                int64_t b = a == 0 ? 1 : 0;
                for (int64_t i = 0; i < gs; i++)
                    if (i != a && s[i] > s[b]) b = i;
                v += s[b];
            }
            gscore[g] = v;
        }
        memset(taken, 0, (size_t)G);
        for (int32_t k = 0; k < p->topk_group; k++) taken[pick_best(gscore, taken, G)] = 1;
        for (int64_t e = 0; e < E; e++)
            if (!taken[e / gs]) sel[e] = -INFINITY;
    }

    memset(taken, 0, (size_t)E);
    for (int32_t k = 0; k < p->top_k; k++) {
        int64_t e = pick_best(sel, taken, E);
        taken[e] = 1;
        ids[k] = (int32_t)e;
        wts[k] = scores[e];
    }
    if (p->renorm) {
        float sum = 0.0f;
        for (int32_t k = 0; k < p->top_k; k++) sum += wts[k];
        for (int32_t k = 0; k < p->top_k; k++) wts[k] /= sum;
    }
    for (int32_t k = 0; k < p->top_k; k++) wts[k] *= p->scale;
}

fm_status fm_ref_moe_route(const fm_pl_node *node, char *err, size_t errsz) {
    const fm_moe_route_params *p = node->params;
    const fm_pl_tensor *x = node->src[0], *gw = node->src[1];
    const float *bias = node->n_src > 2 ? node->src[2]->data : NULL;
    int64_t T = fm_pl_rows(x), H = fm_pl_cols(x), E = p->n_experts, k = p->top_k;
    int32_t *ids = node->dst[0]->data;
    float *wts = node->dst[1]->data;
    if (T == 0) return FM_OK;
    char what[160];
    snprintf(what, sizeof what, "moe_route '%s'", NODE_NAME(node));

    float *logits = malloc((size_t)(T * E) * sizeof *logits);
    float *scores = malloc((size_t)E * sizeof *scores);
    float *sel = malloc((size_t)E * sizeof *sel);
    float *gscore = malloc((size_t)p->n_group * sizeof *gscore);
    unsigned char *taken = malloc((size_t)E);
    fm_status st = FM_OK;
    if (!logits || !scores || !sel || !gscore || !taken) {
        st = fm_ref_fail(err, errsz, FM_ENOMEM, "%s: out of memory", what);
        goto out;
    }
    st = fm_ref_linear(x->data, T, H, gw, 0, E, 0, logits, what, err, errsz);
    if (st != FM_OK) goto out;
    for (int64_t t = 0; t < T; t++)
        route_token(p, logits + t * E, bias, scores, sel, gscore, taken, ids + t * k, wts + t * k);
out:
    free(logits);
    free(scores);
    free(sel);
    free(gscore);
    free(taken);
    return st;
}

/* Experts run one at a time on the tokens routed to them, in ascending expert
 * order, and add into the output in that order (as DeepSeek's MoE.forward). */
fm_status fm_ref_moe_experts(const fm_pl_node *node, char *err, size_t errsz) {
    const fm_moe_experts_params *p = node->params;
    const fm_pl_tensor *x = node->src[0];
    const int32_t *ids = node->src[1]->data;
    const float *wts = node->src[2]->data, *xd = x->data;
    int64_t T = fm_pl_rows(x), H = fm_pl_cols(x), k = fm_pl_cols(node->src[1]), E = p->n_experts;
    float *y = node->dst[0]->data;
    char what[160];

    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < k; j++) {
            int32_t e = ids[t * k + j];
            if (e < 0 || e >= E)
                return fm_ref_fail(err, errsz, FM_EINVAL,
                                   "moe_experts '%s': expert id %d at row %lld, slot %lld outside [0, %lld)",
                                   NODE_NAME(node), e, (long long)t, (long long)j, (long long)E);
        }

    int64_t *count = calloc((size_t)E, sizeof *count);
    if (!count) return fm_ref_fail(err, errsz, FM_ENOMEM, "moe_experts '%s': out of memory", NODE_NAME(node));
    int64_t maxc = 0, maxI = 0;
    for (int64_t i = 0; i < T * k; i++) count[ids[i]]++;
    for (int64_t e = 0; e < E; e++) {
        if (count[e] > maxc) maxc = count[e];
        if (node->src[3 + 3 * e]->ne[0] > maxI) maxI = node->src[3 + 3 * e]->ne[0];
    }
    free(count);

    memset(y, 0, (size_t)(T * H) * sizeof *y);
    int64_t *slot = malloc((size_t)(maxc > 0 ? maxc : 1) * sizeof *slot);
    float *xe = malloc((size_t)(maxc * H + 1) * sizeof *xe);
    float *g = malloc((size_t)(maxc * maxI + 1) * sizeof *g);
    float *u = malloc((size_t)(maxc * maxI + 1) * sizeof *u);
    float *o = malloc((size_t)(maxc * H + 1) * sizeof *o);
    fm_status st = FM_OK;
    if (!slot || !xe || !g || !u || !o) {
        st = fm_ref_fail(err, errsz, FM_ENOMEM, "moe_experts '%s': out of memory (%lld tokens per expert)",
                         NODE_NAME(node), (long long)maxc);
        goto out;
    }
    for (int64_t e = 0; e < E && st == FM_OK; e++) {
        const fm_pl_tensor *wg = node->src[3 + 3 * e], *wu = node->src[4 + 3 * e], *wd = node->src[5 + 3 * e];
        int64_t n = 0, I = wg->ne[0];
        for (int64_t i = 0; i < T * k; i++)
            if (ids[i] == e) {
                slot[n] = i;
                memcpy(xe + n * H, xd + (i / k) * H, (size_t)H * sizeof *xe);
                n++;
            }
        if (n == 0) continue;
        snprintf(what, sizeof what, "moe_experts '%s' expert %lld", NODE_NAME(node), (long long)e);
        st = fm_ref_linear(xe, n, H, wg, 0, I, p->act_quant, g, what, err, errsz);
        if (st == FM_OK) st = fm_ref_linear(xe, n, H, wu, 0, I, p->act_quant, u, what, err, errsz);
        if (st != FM_OK) break;
        for (int64_t i = 0; i < n * I; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
        st = fm_ref_linear(g, n, I, wd, 0, H, p->act_quant, o, what, err, errsz);
        if (st != FM_OK) break;
        for (int64_t r = 0; r < n; r++) {
            float wt = wts[slot[r]];
            float *yr = y + (slot[r] / k) * H;
            const float *orow = o + r * H;
            for (int64_t h = 0; h < H; h++) yr[h] += orow[h] * wt;
        }
    }
out:
    free(slot);
    free(xe);
    free(g);
    free(u);
    free(o);
    return st;
}
