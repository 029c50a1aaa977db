/* ref.h - the reference kernels: plain scalar C, f32 accumulation, the oracle
 * every backend is checked against. Internal to core. */
#ifndef FM_REF_H
#define FM_REF_H

#include "fathom/plugin.h"

/* Computes node with the reference kernel. Every tensor must be host-addressable
 * (data != NULL). Returns FM_OK, or FM_EINVAL / FM_FAILED with a message naming
 * the node, tensor and what was expected (e.g. a token id >= vocab, a position
 * past the cache size). */
fm_status fm_ref_compute(const fm_pl_node *node, char *err, size_t err_size);

/* 1 if fm_ref_compute handles this node's dtypes and params (it handles every op). */
int fm_ref_supports(const fm_pl_node *node);

/* Shared numerics (also used by the model and tests). */
/* inv_freq[i], i < rope_dim/2, in float32 exactly as DeepSeek's model.py (incl. YaRN). */
void  fm_rope_inv_freq(const fm_rope_params *p, float *inv_freq);
/* DeepSeek act_quant of one row of K (multiple of 128) values: codes[K], scales[K/128]. */
void  fm_act_quant_row(const float *x, int64_t K, uint8_t *codes, float *scales);
/* Decodes row r of a weight (any float dtype, F8_E4M3 with its block scales) to f32. */
void  fm_weight_row_f32(const fm_pl_tensor *w, int64_t r, float *out);

/* ---- shared by the ref_*.c files ---- */
fm_status fm_ref_fail(char *err, size_t errsz, fm_status s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
fm_status fm_ref_check(const fm_pl_node *node, int need_data, char *err, size_t errsz);
/* y[T, n1-n0] = rows n0..n1 of w applied to x[T, K]; act_quant as fm_matmul_params. */
fm_status fm_ref_linear(const float *x, int64_t T, int64_t K, const fm_pl_tensor *w, int64_t n0,
                        int64_t n1, int act_quant, float *y, const char *what, char *err, size_t errsz);
void fm_ref_rmsnorm_row(const float *x, int64_t H, const float *w, float eps, float *y);
void fm_ref_rope_row(float *x, int64_t C, const fm_rope_params *p, const float *inv_freq, int32_t pos);
fm_status fm_ref_moe_route(const fm_pl_node *node, char *err, size_t errsz);
fm_status fm_ref_moe_experts(const fm_pl_node *node, char *err, size_t errsz);
fm_status fm_ref_mla_cache(const fm_pl_node *node, char *err, size_t errsz);
fm_status fm_ref_mla_attn(const fm_pl_node *node, char *err, size_t errsz);
#define NODE_NAME(node) ((node)->name ? (node)->name : "?")

#endif
