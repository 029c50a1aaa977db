/* golden.h - runs a model through a golden case's protocol (prefill `tokens`,
 * then decode `decode_tokens` one at a time) and compares every output the case
 * holds: logits, per-layer intermediates, router choices as sets, the latent
 * caches. Internal to core; used by `fathom check`, `fathom demo` and the tests. */
#ifndef FM_GOLDEN_H
#define FM_GOLDEN_H

#include <stdbool.h>

#include "fathom/fathom.h"
#include "safetensors.h"

typedef struct fm_golden_family {
    const char *name;
    double max_err, worst_ref; /* largest |ours - ref|, and |ref| there */
    char worst[96];            /* tensor[row] of the largest error */
    int64_t compared, bad;     /* values compared; values outside tolerance (router: token rows) */
} fm_golden_family;

enum { FM_GF_LOGITS, FM_GF_EMBED, FM_GF_ATTN, FM_GF_FFN, FM_GF_OUT, FM_GF_FINAL, FM_GF_RW, FM_GF_KV, FM_GF_PE,
       FM_GF_RI, FM_GF_COUNT };

typedef struct fm_golden_run {
    /* in */
    double atol_logits, atol, rtol; /* a value passes iff |ours - ref| <= atol + rtol * |ref| */
    bool intermediates;             /* compare per-layer tensors (needs a model loaded with capture) */
    const char *prefix;             /* golden tensor prefix: "", "dequant." or "naive." */
    /* out */
    fm_golden_family fam[FM_GF_COUNT];
    double prefill_tok_s, decode_tok_s;
    int T, S, missing;              /* prompt and decode lengths; golden tensors absent for this prefix */
} fm_golden_run;

/* Runs the protocol from position 0 (the model's cache is overwritten) and fills r. */
fm_status fm_golden_run_model(fm_ctx *ctx, fm_model *m, const fm_st *g, fm_golden_run *r);
int64_t   fm_golden_bad(const fm_golden_run *r);
/* Sets tolerances from the case's metadata: f32 cases 1e-4; fp8 (gemm_impl fp8) 1e-3. */
void      fm_golden_defaults(const fm_st *g, fm_golden_run *r);
/* The goldens were made with an f32 cache; a bf16 cache (fm_model_options.cache_dtype) rounds
 * every cache value to 8 significant bits. Tolerance for it, atol = rtol, logits and
 * intermediates: about 4x the worst the four cases need (1.6e-2, tiny-yarn; docs/cli.md).
 * With FP8 activation quantization no elementwise tolerance holds (rounding steps of e4m3
 * move and a router choice flips): an FP8 case compares its dequant.* outputs. */
#define FM_GOLDEN_TOL_BF16_CACHE 6e-2
/* Raises r's tolerances to at least FM_GOLDEN_TOL_BF16_CACHE for a bf16 cache; an f32 cache
 * leaves them as they are. */
void      fm_golden_cache_tolerance(fm_dtype cache, fm_golden_run *r);

#endif
