/* internal.h - core structures shared by ctx, loader, graph and executor. */
#ifndef FM_INTERNAL_H
#define FM_INTERNAL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdbool.h>

#include "fathom/plugin.h"

#define FM_NAME_MAX 96

/* ---- context ---- */

typedef struct fm_wcache_ent {
    const void *key;       /* host address of the weight or state */
    void       *buffer;    /* backend buffer holding the copy */
    uint64_t    size;
    uint64_t    version;   /* state: host version this copy reflects */
} fm_wcache_ent;

typedef struct fm_backend {
    char name[32];
    char version[32];
    char path[512];
    char reason[512];
    fm_backend_status status;
    const fm_plugin *pl;       /* NULL when refused */
    void *state;
    void *dl;                  /* dlopen handle, NULL for built-ins */
    fm_device_info info;
    fm_wcache_ent *wc;         /* weights / states copied to this (device) backend */
    int n_wc, cap_wc;
} fm_backend;

typedef struct fm_trace_ev {
    const char *name;          /* node name (copied into the string pool) */
    const char *cat;           /* op name (static) */
    int32_t     tid;           /* backend index */
    uint64_t    ts_ns, dur_ns;
} fm_trace_ev;

struct fm_ctx {
    char err[2048];
    int64_t fail_alloc_after;  /* > 0: count down; the allocation reaching 0 fails */
    fm_backend *be;
    int n_be;
    fm_host_services services;
    fm_trace_ev *trace;
    size_t n_trace, cap_trace;
    char *trace_str;           /* string pool for trace names */
    size_t n_trace_str, cap_trace_str;
    uint64_t t0_ns;
    /* state coherence: host version of each state buffer written by a device */
};

fm_status fm_err(fm_ctx *ctx, fm_status s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void     *fm_alloc(fm_ctx *ctx, size_t size);   /* 64-byte aligned, zeroed; fault-injectable */
void     *fm_alloc_stream(fm_ctx *ctx, size_t size); /* the same; from 2 MiB on in huge pages (KV caches) */
void      fm_free(void *p);
void     *fm_realloc_array(fm_ctx *ctx, void *p, size_t *cap, size_t need, size_t elem);
uint64_t  fm_now_ns(void);
void      fm_json_str(FILE *f, const char *s); /* s as a JSON string literal */
void      fm_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* loader.c */
fm_status fm_loader_init(fm_ctx *ctx);
void      fm_loader_free(fm_ctx *ctx);
const fm_plugin *fm_ref_plugin(void);

/* ---- graph ---- */

enum { FM_T_INPUT, FM_T_WEIGHT, FM_T_STATE, FM_T_NODE };

struct fm_tensor {
    fm_graph *g;
    int32_t id;
    int32_t kind;              /* FM_T_* */
    fm_dtype dtype;
    int32_t ndim;
    int64_t ne[FM_MAX_DIMS];
    char name[FM_NAME_MAX];
    void *data;                /* weight / state host memory */
    fm_tensor *scale;          /* F8_E4M3 block scales */
    int32_t node;              /* producer node, -1 for leaves */
    int32_t alias;             /* tensor id whose storage this is (in-place ops), -1 if none */
    bool output;
};

typedef union fm_params {
#define X(id, name, nsrc, ndst, params) params p_##id;
#include "fathom/ops.def"
#undef X
} fm_params;

typedef struct fm_node {
    fm_op op;
    int32_t n_src, n_dst;
    int32_t *src;              /* tensor ids */
    int32_t dst[2];
    fm_params params;
} fm_node;

struct fm_graph {
    fm_ctx *ctx;
    fm_tensor **t;
    int n_t;
    size_t cap_t;
    fm_node *nodes;
    int n_nodes;
    size_t cap_nodes;
    fm_status status;
    char err[1024];
};


#endif
