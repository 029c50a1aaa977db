/* fathom.h - the Fathom user API.
 *
 * Flow: fm_ctx_init() loads the backend plugins; a fm_graph records tensors and
 * ops (builders only validate shapes and record, nothing computes); a
 * fm_session places every node on a backend, plans memory, and runs.
 *
 * Conventions
 * - Shapes are row-major and listed outermost first, like numpy: a [T, K]
 *   matrix has ne[0] = T rows of ne[1] = K contiguous elements. A weight is
 *   [out, in] as in Hugging Face checkpoints; fm_matmul(x [T,K], w [N,K]) is
 *   y = x w^T, [T, N].
 * - Activations are F32. Weights may be F32, BF16, F16 or F8_E4M3 (with F32
 *   block scales, one per 128x128 block; see fm_weight).
 * - Every fallible call returns fm_status; on failure fm_ctx_error() says what
 *   and where. Graph builders return NULL instead, and the graph keeps the first
 *   error (fm_graph_status); a builder given NULL returns NULL, so a whole graph
 *   can be built and checked once.
 * - Ownership: whoever calls *_init calls the matching *_free. Host data passed
 *   to fm_weight / fm_state is borrowed and must outlive every session using it.
 * - Units: sizes in elements unless named *_bytes; times in nanoseconds (ns).
 */
#ifndef FATHOM_H
#define FATHOM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FM_API __declspec(dllexport)
#else
#define FM_API __attribute__((visibility("default")))
#endif

#define FM_VERSION_STRING "0.1.0"
#define FM_MAX_DIMS 4

/* ---- status ------------------------------------------------------------- */

typedef enum fm_status {
    FM_OK          = 0,
    FM_UNSUPPORTED = 1,  /* not an error of the input: this backend can't (fallback applies) */
    FM_FAILED      = -1, /* a backend or kernel failed at run time */
    FM_EINVAL      = -2, /* bad input: file, shape, config, argument */
    FM_ENOMEM      = -3, /* an allocation failed; nothing leaked */
    FM_EIO         = -4, /* a file could not be read or written */
    FM_ENOTFOUND   = -5  /* a named file, tensor or backend does not exist */
} fm_status;

FM_API const char *fm_status_name(fm_status s);

/* ---- dtypes --------------------------------------------------------------- */

typedef enum fm_dtype {
    FM_F32      = 0,
    FM_BF16     = 1,
    FM_F16      = 2,
    FM_F8_E4M3  = 3, /* e4m3fn: bias 7, no inf, 0x7f/0xff NaN, max 448; block-scaled */
    FM_I32      = 4,
    FM_DTYPE_COUNT
} fm_dtype;

FM_API const char *fm_dtype_name(fm_dtype t);    /* "f32", "bf16", ... */
FM_API size_t      fm_dtype_size(fm_dtype t);    /* bytes per element */
FM_API int         fm_dtype_parse(const char *s); /* name -> fm_dtype, -1 if unknown */

/* Scalar conversions, exact where the format allows. */
FM_API float    fm_bf16_to_f32(uint16_t h);
FM_API uint16_t fm_f32_to_bf16(float f);          /* round to nearest even */
FM_API float    fm_f16_to_f32(uint16_t h);
FM_API uint16_t fm_f32_to_f16(float f);           /* round to nearest even */
FM_API float    fm_e4m3_to_f32(uint8_t c);
FM_API uint8_t  fm_f32_to_e4m3(float f);          /* nearest, ties to even code, saturates to +-448 */

/* ---- ops ------------------------------------------------------------------ */

typedef enum fm_op {
#define X(id, name, nsrc, ndst, params) FM_OP_##id,
#include "fathom/ops.def"
#undef X
    FM_OP_COUNT
} fm_op;

FM_API const char *fm_op_name(fm_op op);        /* "matmul", ... */
FM_API int         fm_op_parse(const char *s);  /* name -> fm_op, -1 if unknown */

/* Parameters of each op (the last column of ops.def). Plain data, copied into the graph. */
typedef struct fm_noparams { int32_t unused; } fm_noparams;

typedef struct fm_matmul_params {
    int32_t act_quant; /* 1: F8_E4M3 weights multiply e4m3-quantized activations (per token and
                          128 channels, DeepSeek's act_quant + fp8_gemm); 0: weights decoded to f32 */
} fm_matmul_params;

typedef struct fm_rmsnorm_params {
    float eps;         /* y = x / sqrt(mean(x^2) + eps) * w */
} fm_rmsnorm_params;

typedef struct fm_rope_params {
    int32_t head_dim;      /* stride of one head in the row; row length % head_dim == 0 */
    int32_t rope_off;      /* first rotated element inside each head */
    int32_t rope_dim;      /* rotated elements per head (even); adjacent pairs (2i, 2i+1) */
    float   theta;         /* base: inv_freq[i] = theta^(-2i/rope_dim) */
    float   yarn_factor;   /* <= 1: plain RoPE; else YaRN frequency correction */
    int32_t yarn_orig_max; /* original_max_position_embeddings */
    float   yarn_beta_fast;
    float   yarn_beta_slow;
} fm_rope_params;

enum { FM_SCORE_SOFTMAX = 0, FM_SCORE_SIGMOID = 1 };
enum { FM_TOPK_GREEDY = 0, FM_TOPK_GROUP_LIMITED = 1, FM_TOPK_NOAUX_TC = 2 };

typedef struct fm_moe_route_params {
    int32_t n_experts;  /* E routed experts */
    int32_t top_k;      /* k picked per token */
    int32_t n_group;    /* experts form n_group contiguous groups (1 = no groups) */
    int32_t topk_group; /* groups kept */
    int32_t scoring;    /* FM_SCORE_* */
    int32_t method;     /* FM_TOPK_*; bias (noaux_tc) is used for selection only */
    int32_t renorm;     /* 1: picked weights divided by their sum */
    float   scale;      /* routed_scaling_factor */
} fm_moe_route_params;

typedef struct fm_moe_experts_params {
    int32_t n_experts;
    int32_t act_quant;  /* as fm_matmul_params.act_quant, for F8_E4M3 expert weights */
} fm_moe_experts_params;

typedef struct fm_mla_cache_params {
    int32_t kv_lora;    /* c_kv width: normalised with the norm weight */
    float   eps;        /* RMSNorm eps for c_kv */
    fm_rope_params rope;/* applied to k_pe (head_dim = rope_off + rope_dim = rope slice alone) */
} fm_mla_cache_params;

enum { FM_MLA_ABSORB = 0, FM_MLA_NAIVE = 1 };

typedef struct fm_mla_attn_params {
    int32_t n_heads;
    int32_t nope;       /* qk_nope_head_dim */
    int32_t rope;       /* qk_rope_head_dim */
    int32_t v;          /* v_head_dim */
    int32_t kv_lora;    /* kv_lora_rank */
    float   scale;      /* softmax scale (incl. YaRN mscale^2) */
    int32_t mode;       /* FM_MLA_ABSORB or FM_MLA_NAIVE */
    int32_t act_quant;  /* naive form with F8_E4M3 kv_b: quantize its input as a fp8 linear */
} fm_mla_attn_params;

/* ---- context: plugins, errors, allocator ---------------------------------- */

typedef struct fm_ctx fm_ctx;

/* Loads every plugin found on FATHOM_PLUGIN_PATH (colon list), then in the
 * plugins folder beside the library. A plugin that is refused or unavailable
 * is listed with its reason; it never fails the init. */
FM_API fm_status   fm_ctx_init(fm_ctx **out);
FM_API void        fm_ctx_free(fm_ctx *ctx);
FM_API const char *fm_ctx_error(const fm_ctx *ctx);      /* last error message, "" if none */

/* Drops every backend copy of host memory in [data, data + bytes) (see fm_weight). */
FM_API void        fm_ctx_release(fm_ctx *ctx, const void *data, size_t bytes);

/* Fault injection for tests: the n-th allocation made through the context
 * from now on (1 = the next one) fails; 0 disables. */
FM_API void        fm_ctx_fail_alloc_after(fm_ctx *ctx, int64_t n);

typedef enum fm_backend_status {
    FM_BACKEND_READY = 0,
    FM_BACKEND_UNAVAILABLE = 1, /* loaded, but says it can't run here (no device) */
    FM_BACKEND_REFUSED = 2      /* not loaded: bad ABI, missing symbol, failed init */
} fm_backend_status;

typedef struct fm_backend_info {
    const char *name;      /* "ref", "cpu", ... */
    const char *version;
    const char *path;      /* file it came from; "(built in)" for ref */
    const char *reason;    /* why unavailable / refused; "" when ready */
    const char *device;    /* device description, "" if none */
    const char *kind;      /* "ref", "cpu", "gpu", "fpga", "sim", "test" */
    fm_backend_status status;
    uint64_t ops;          /* bit (1 << fm_op) set for each op it may support */
    uint32_t flags;        /* FM_DEV_* from plugin.h */
} fm_backend_info;

FM_API int       fm_backend_count(const fm_ctx *ctx);
FM_API fm_status fm_backend_info_get(const fm_ctx *ctx, int i, fm_backend_info *out);
FM_API int       fm_backend_find(const fm_ctx *ctx, const char *name); /* index or -1 */
/* Backend-specific knob (e.g. the stub's fault injection). */
FM_API fm_status fm_backend_control(fm_ctx *ctx, const char *backend, const char *key, const char *value);

/* ---- graph ---------------------------------------------------------------- */

typedef struct fm_graph  fm_graph;
typedef struct fm_tensor fm_tensor;

FM_API fm_status fm_graph_init(fm_ctx *ctx, fm_graph **out);
FM_API void      fm_graph_free(fm_graph *g);
FM_API fm_status fm_graph_status(const fm_graph *g); /* first builder error, or FM_OK */
FM_API int       fm_graph_node_count(const fm_graph *g);

/* Leaf tensors. ne lists ndim sizes, outermost first. */
/* An input: data given per run with fm_session_set_input. */
FM_API fm_tensor *fm_input(fm_graph *g, const char *name, fm_dtype t, int ndim, const int64_t *ne);
/* A constant weight in host memory (borrowed; e.g. mmapped). For F8_E4M3, scale is
 * a F32 weight [ceil(ne[0]/128), ceil(ne[1]/128)]; NULL for other dtypes.
 * Backends with their own memory keep a copy, keyed by the host address, for the
 * context's lifetime: call fm_ctx_release before freeing or reusing that memory. */
FM_API fm_tensor *fm_weight(fm_graph *g, const char *name, fm_dtype t, int ndim, const int64_t *ne,
                            const void *data, fm_tensor *scale);
/* Persistent mutable state in host memory (borrowed; e.g. the KV cache). It keeps
 * its content between runs and between graphs sharing the same memory. */
FM_API fm_tensor *fm_state(fm_graph *g, const char *name, fm_dtype t, int ndim, const int64_t *ne,
                           void *data);

/* Op builders. Each returns the output tensor (F32 unless stated) or NULL. */
FM_API fm_tensor *fm_embed(fm_graph *g, fm_tensor *table /* [V,H] */, fm_tensor *ids /* I32 [T] */);
FM_API fm_tensor *fm_matmul(fm_graph *g, fm_tensor *x /* [T,K] */, fm_tensor *w /* [N,K] */, int act_quant);
FM_API fm_tensor *fm_rmsnorm(fm_graph *g, fm_tensor *x /* [T,H] */, fm_tensor *w /* [H] */, float eps);
FM_API fm_tensor *fm_rope(fm_graph *g, fm_tensor *x /* [T,C] */, fm_tensor *pos /* I32 [T] */,
                          const fm_rope_params *p);
FM_API fm_tensor *fm_add(fm_graph *g, fm_tensor *a, fm_tensor *b);
FM_API fm_tensor *fm_swiglu(fm_graph *g, fm_tensor *gate, fm_tensor *up); /* silu(gate) * up */
/* Router: x [T,H], gate_w [E,H], bias [E] F32 or NULL. Writes ids (I32 [T,k], in
 * descending selection score) and weights (F32 [T,k]). */
FM_API fm_status  fm_moe_route(fm_graph *g, fm_tensor *x, fm_tensor *gate_w, fm_tensor *bias,
                               const fm_moe_route_params *p, fm_tensor **ids, fm_tensor **weights);
/* Routed experts: y[t] = sum_j weights[t,j] * down_e(silu(gate_e x) * up_e x), e = ids[t,j].
 * gate[e], up[e]: [I,H]; down[e]: [H,I]; n_experts of each. */
FM_API fm_tensor *fm_moe_experts(fm_graph *g, fm_tensor *x, fm_tensor *ids, fm_tensor *weights,
                                 int n_experts, fm_tensor *const *gate, fm_tensor *const *up,
                                 fm_tensor *const *down, int act_quant);
/* Latent KV-cache append: for each row t, cache[pos[t]] = [rmsnorm(kv[t, :kv_lora]) * norm_w,
 * rope(kv[t, kv_lora:], pos[t])]. cache: state [L, kv_lora + rope_dim], F32 or BF16 (the
 * row is computed in f32, then rounded to nearest even). Returns the updated cache (same
 * storage and dtype), to be passed to fm_mla_attn. */
FM_API fm_tensor *fm_mla_cache(fm_graph *g, fm_tensor *cache, fm_tensor *kv, fm_tensor *norm_w,
                               fm_tensor *pos, const fm_mla_cache_params *p);
/* MLA attention of q [T, H*(nope+rope)] (rope already applied) against cache rows
 * 0..pos[t] (causal); cache F32 or BF16 (widened exactly). kv_b: [H*(nope+v), kv_lora].
 * Output [T, H*v]. */
FM_API fm_tensor *fm_mla_attn(fm_graph *g, fm_tensor *q, fm_tensor *cache, fm_tensor *pos,
                              fm_tensor *kv_b, const fm_mla_attn_params *p);

/* Keep a tensor readable after a run (memory planning may reuse others). */
FM_API void       fm_graph_output(fm_graph *g, fm_tensor *t);
FM_API const char *fm_tensor_name(const fm_tensor *t);
FM_API fm_dtype   fm_tensor_dtype(const fm_tensor *t);
FM_API int        fm_tensor_ndim(const fm_tensor *t);
FM_API int64_t    fm_tensor_ne(const fm_tensor *t, int dim);
FM_API int64_t    fm_tensor_nelem(const fm_tensor *t);
FM_API size_t     fm_tensor_bytes(const fm_tensor *t);
FM_API void       fm_tensor_set_name(fm_tensor *t, const char *name);

/* ---- session: placement, memory plan, run --------------------------------- */

typedef struct fm_session fm_session;

enum {
    FM_RUN_STRICT = 1u << 0, /* a node failing at run time fails the run (no re-run elsewhere) */
    FM_RUN_GUARD  = 1u << 1, /* guard bytes around every planned tensor, checked after each node */
    FM_RUN_TRACE  = 1u << 2  /* record trace events in the context (fm_ctx_write_trace) */
};

/* backends: priority list, e.g. "cpu,ref" (NULL or "" = every ready backend, ref last).
 * place: per-op overrides, e.g. "moe_experts=stub,mla_attn=cpu" (NULL = none).
 * The first backend whose `supports` accepts a node takes it; ref is the last resort. */
FM_API fm_status fm_session_init(fm_ctx *ctx, fm_graph *g, const char *backends, const char *place,
                                 uint32_t flags, fm_session **out);
FM_API void      fm_session_free(fm_session *s);
/* Re-place between runs; weights already uploaded to a backend stay cached in the context. */
FM_API fm_status fm_session_place(fm_session *s, const char *backends, const char *place);
FM_API void      fm_session_set_flags(fm_session *s, uint32_t flags);
FM_API fm_status fm_session_set_input(fm_session *s, const fm_tensor *t, const void *data, size_t bytes);
FM_API fm_status fm_session_run(fm_session *s);
/* Copies a graph output, input, weight or state to host memory. */
FM_API fm_status fm_session_read(fm_session *s, const fm_tensor *t, void *dst, size_t bytes);

typedef struct fm_node_stat {
    const char *name;      /* node name ("layers.3.moe_experts" or op name) */
    fm_op       op;
    const char *backend;   /* backend that produced the result in the last run */
    int32_t     backend_index; /* its index (fm_backend_info_get) */
    const char *planned;   /* backend chosen by placement */
    uint64_t    time_ns;   /* wall time of the node in the last run (incl. fallback) */
    uint64_t    cycles;    /* cycles reported by the backend, 0 if none */
    int32_t     fallbacks; /* times the node was re-run elsewhere in the last run */
} fm_node_stat;

FM_API int       fm_session_node_count(const fm_session *s);
FM_API fm_status fm_session_node_stat(const fm_session *s, int i, fm_node_stat *out);
/* Bytes planned on a backend for intermediates (arena), and copies made last run. */
FM_API uint64_t  fm_session_arena_bytes(const fm_session *s, const char *backend);
FM_API int64_t   fm_session_copy_count(const fm_session *s);
/* Chrome trace JSON (opens in Perfetto / chrome://tracing) of every node run by
 * sessions with FM_RUN_TRACE since the context was made (or the trace cleared). */
FM_API fm_status fm_ctx_write_trace(fm_ctx *ctx, const char *path);
FM_API void      fm_ctx_clear_trace(fm_ctx *ctx);

/* ---- model: DeepSeek-V3/V2 from a Hugging Face checkpoint ---------------- */

typedef struct fm_model fm_model;

enum { FM_ATTN_AUTO = 0, FM_ATTN_ABSORB = 1, FM_ATTN_NAIVE = 2 };

typedef struct fm_model_options {
    const char *weights;   /* file or index inside the model dir; NULL: model.safetensors.index.json
                              if present, else model.safetensors */
    int32_t max_seq;       /* KV-cache rows (tokens); 0: min(max_position_embeddings, 4096) */
    int32_t attn;          /* FM_ATTN_AUTO: naive form for prefill (T > 1), absorbed for decode,
                              both on dequantized kv_b; NAIVE / ABSORB force one form, NAIVE with
                              fp8 weights then quantizes kv_b's input as the reference does */
    int32_t act_quant;     /* -1: as the checkpoint says (fp8 + dynamic scheme); 0 off; 1 on */
    int32_t capture;       /* 1: keep per-layer intermediates readable (fm_model_read) */
    const char *backends;  /* placement, as fm_session_init */
    const char *place;
    uint32_t flags;        /* FM_RUN_* */
    int32_t cache_dtype;   /* the latent KV cache's dtype: FM_F32 (0, the default) or FM_BF16
                              (DeepSeek's serving form: each row computed in f32, stored rounded
                              to nearest even, widened exactly when attention reads it) */
} fm_model_options;

/* Maps the checkpoint (no copy) and validates config and tensors. */
FM_API fm_status fm_model_load(fm_ctx *ctx, const char *dir, const fm_model_options *opt, fm_model **out);
FM_API void      fm_model_free(fm_model *m);
/* Changes placement between forwards; the model stays loaded and weights stay cached. */
FM_API fm_status fm_model_place(fm_model *m, const char *backends, const char *place);
/* Feeds n tokens at positions pos0 .. pos0+n-1 (a prefill chunk, or one decode step),
 * appending to the KV cache. logits: NULL, or [n, vocab] floats for every position. */
FM_API fm_status fm_model_forward(fm_model *m, const int32_t *tokens, int n, int32_t pos0, float *logits);
/* Reads an intermediate of the last forward (needs capture): "embed", "final_hidden",
 * "layers.N.attn_out", "layers.N.ffn_out", "layers.N.out", "layers.N.router_indices" (i32),
 * "layers.N.router_weights", and from the cache "layers.N.kv_cache" / "layers.N.pe_cache"
 * (rows 0 .. last position). count: elements expected. */
FM_API fm_status fm_model_read(fm_model *m, const char *name, void *dst, int64_t count);
FM_API int       fm_model_vocab(const fm_model *m);
FM_API int       fm_model_layers(const fm_model *m);
FM_API int32_t   fm_model_max_seq(const fm_model *m);
/* Latent KV cache per token over all layers, in bytes: bf16 = 0 at the dtype the cache is
 * stored in (fm_model_options.cache_dtype: f32 or bf16), bf16 = 1 at bf16 (the released
 * checkpoints' serving dtype) whatever the cache's dtype. */
FM_API int64_t   fm_model_kv_bytes_per_token(const fm_model *m, int bf16);
FM_API fm_dtype  fm_model_cache_dtype(const fm_model *m); /* FM_F32 or FM_BF16 */
FM_API const char *fm_model_describe(const fm_model *m); /* one line: sizes, routing, dtype */
/* Time per op and backend, accumulated over forwards since load or the last reset. */
typedef struct fm_op_time {
    uint64_t time_ns, cycles, nodes;
} fm_op_time;
FM_API fm_op_time fm_model_op_time(const fm_model *m, fm_op op, int backend);
FM_API void       fm_model_reset_stats(fm_model *m);

#ifdef __cplusplus
}
#endif
#endif
