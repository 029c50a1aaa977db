/* cpu_route.c - MOE_ROUTE: router logits (the GEMM kernels; few tokens stream
 * the gate weight once, split across threads), then one fused pass per token:
 * scores, selection scores, group scores, group mask and top-k, weights. The
 * selection follows the reference step for step (ties go to the lower index). */
#include <math.h>
#include <string.h>

#include "cpu_ops.h"

int cpu_route_supports(const fm_pl_node *nd) {
    const fm_moe_route_params *p = nd->params;
    if (!p || (nd->n_src != 2 && nd->n_src != 3) || nd->n_dst != 2 || !nd->dst[1]) return 0;
    const fm_pl_tensor *x = nd->src[0], *g = nd->src[1], *b = nd->n_src > 2 ? nd->src[2] : NULL;
    const fm_pl_tensor *ids = nd->dst[0], *w = nd->dst[1];
    int64_t E = p->n_experts;
    if (!x || x->dtype != FM_F32 || x->ndim != 2 || !g || g->ndim != 2 || g->ne[0] != E || g->ne[1] != x->ne[1]) return 0;
    if (g->dtype != FM_F32 && g->dtype != FM_BF16 && g->dtype != FM_F16) return 0;
    if (b && (b->dtype != FM_F32 || b->ndim != 1 || b->ne[0] != E)) return 0;
    if (p->n_group < 1 || E % p->n_group || p->topk_group < 1 || p->topk_group > p->n_group || p->top_k < 1 ||
        p->top_k > p->topk_group * (E / p->n_group) || p->scoring < 0 || p->scoring > 1 || p->method < 0 ||
        p->method > 2 || (p->method == FM_TOPK_NOAUX_TC && !b) || E > 4096 || p->n_group > 4096)
        return 0;
    return ids->dtype == FM_I32 && w->dtype == FM_F32 && fm_pl_nelem(ids) == x->ne[0] * p->top_k &&
           fm_pl_nelem(w) == x->ne[0] * p->top_k;
}

static int64_t pick_best(const float *v, const unsigned char *taken, int64_t n) {
    int64_t best = -1;
    for (int64_t i = 0; i < n; i++) {
        if (taken[i]) continue;
        if (best < 0 || v[i] > v[best]) best = i;
    }
    return best;
}

static void route_token(const fm_moe_route_params *p, const float *logits, const float *bias, int32_t *ids, float *wts) {
    int64_t E = p->n_experts;
    float scores[4096], sel[4096], gscore[4096];
    unsigned char taken[4096];
    if (p->scoring == FM_SCORE_SOFTMAX) {
        float m = logits[0], sum = 0.0f;
        for (int64_t e = 1; e < E; e++) m = logits[e] > m ? logits[e] : m;
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

typedef struct route_job {
    const fm_moe_route_params *p;
    const float *logits, *bias;
    int32_t *ids;
    float *wts;
} route_job;

static void route_item(void *arg, int64_t t, int tid) {
    (void)tid;
    const route_job *j = arg;
    int64_t E = j->p->n_experts, k = j->p->top_k;
    route_token(j->p, j->logits + t * E, j->bias, j->ids + t * k, j->wts + t * k);
}

fm_status cpu_route_node(cpu_state *s, const fm_pl_node *nd) {
    const fm_moe_route_params *p = nd->params;
    const fm_pl_tensor *x = nd->src[0];
    int64_t T = x->ne[0], E = p->n_experts;
    if (T == 0) return FM_OK;
    cpu_wmat g = {.dtype = nd->src[1]->dtype, .data = nd->src[1]->data, .N = E, .K = x->ne[1], .scale = NULL, .scale_ld = 1};
    float *logits = cpu_scratch_slot(s, 1, (size_t)(T * E) * 4);
    if (!logits) return cpu_fail(s, FM_ENOMEM, "moe_route '%s': out of memory for %lld logits", nd->name, (long long)(T * E));
    int bf16 = s->bf16_compute; /* router logits stay f32-accurate: bf16 noise flips routing */
    s->bf16_compute = 0;
    fm_status st = cpu_matmul(s, x->data, T, x->ne[1], &g, 0, logits, E);
    s->bf16_compute = bf16;
    if (st != FM_OK) return st;
    route_job j = {p, logits, nd->n_src > 2 && nd->src[2] ? nd->src[2]->data : NULL, nd->dst[0]->data, nd->dst[1]->data};
    cpu_pool_for(T >= 16 ? s->pool : NULL, T, route_item, &j);
    return FM_OK;
}
