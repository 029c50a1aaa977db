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

#endif
