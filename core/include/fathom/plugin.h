/* plugin.h - the Fathom backend SDK.
 *
 * A backend is a shared object named libfathom-<name>.so exporting one symbol,
 *
 *     const fm_plugin *fm_plugin_entry(void);
 *
 * that returns a static, constant table. The loader checks, in order: the symbol
 * exists; abi_major == FM_PLUGIN_ABI_MAJOR (exact); struct_size is at least the
 * size of the slots of the table's abi_minor (minor versions only append slots,
 * SQLite's iVersion rule: a host reads only the slots both sides know); init
 * succeeds. A failure refuses the plugin with a message naming the file and
 * both versions; the process goes on.
 *
 * Lifetime: each context calls init once, then any slots, then destroy once; it
 * never unloads the object while anything it made is alive. Whoever allocates
 * frees: buffers from buffer_alloc go back through buffer_free.
 *
 * Threads: the host calls a plugin's slots from one thread at a time.
 */
#ifndef FATHOM_PLUGIN_H
#define FATHOM_PLUGIN_H

#include "fathom/fathom.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FM_PLUGIN_ABI_MAJOR 1
#define FM_PLUGIN_ABI_MINOR 0

/* A tensor as a backend sees it during compute. */
enum {
    FM_PL_WEIGHT = 1u << 0, /* constant across runs; a backend may cache derived forms keyed by data/buffer */
    FM_PL_STATE  = 1u << 1  /* persistent (KV cache); written in place by MLA_CACHE */
};

typedef struct fm_pl_tensor {
    int32_t  dtype;                   /* fm_dtype */
    int32_t  ndim;                    /* 1..FM_MAX_DIMS */
    int64_t  ne[FM_MAX_DIMS];         /* sizes, outermost first; row-major, contiguous */
    void    *data;                    /* host address, when the memory is host-addressable; else NULL */
    void    *buffer;                  /* backend buffer holding it (from buffer_alloc), or NULL */
    uint64_t offset;                  /* bytes from the start of buffer to element 0 */
    const struct fm_pl_tensor *scale; /* F8_E4M3: F32 [ceil(ne[0]/128), ceil(ne[1]/128)]; else NULL */
    const char *name;                 /* for messages; never NULL */
    uint32_t flags;                   /* FM_PL_* */
} fm_pl_tensor;

/* One op to compute. Sources and destinations follow the op table (ops.def) and
 * the builders in fathom.h; params points to the op's params struct. */
typedef struct fm_pl_node {
    int32_t op;                        /* fm_op */
    int32_t index;                     /* position in the graph (0-based) */
    int32_t n_src;
    int32_t n_dst;
    const fm_pl_tensor *const *src;
    const fm_pl_tensor *const *dst;    /* destinations are written, never read before */
    const void *params;
    const char *name;                  /* node name for messages */
} fm_pl_node;

/* What the host gives a plugin at init. Read only; valid until destroy. */
typedef struct fm_host_services {
    uint32_t struct_size;
    uint32_t abi_minor;
    /* 64-byte aligned allocation; NULL on failure (tests inject failures here). */
    void *(*alloc)(void *host_ctx, size_t size);
    void  (*free)(void *host_ctx, void *p);
    /* level: 0 error, 1 warning, 2 info, 3 debug. */
    void  (*log)(void *host_ctx, int level, const char *fmt, ...);
    /* The reference kernel of any op, on host-addressable tensors (data != NULL).
     * On failure writes a message into err (may be NULL). */
    fm_status (*ref_compute)(const fm_pl_node *node, char *err, size_t err_size);
    void *host_ctx;                    /* first argument of alloc/free/log */
} fm_host_services;

/* Device description filled by device_info. */
enum {
    FM_DEV_HOST_MEMORY   = 1u << 0, /* buffers are host memory: buffer_alloc returns a host pointer,
                                       and compute accepts any host-addressable tensor (no copies) */
    FM_DEV_REPORTS_CYCLES = 1u << 1 /* counters report device cycles */
};

typedef struct fm_device_info {
    char     name[96];      /* e.g. "AMD Ryzen 9 7950X (AVX-512, 2 threads)" */
    char     kind[16];      /* "cpu", "gpu", "fpga", "sim", "test" */
    uint64_t memory_bytes;  /* usable device memory, 0 if unknown */
    uint64_t ops;           /* bit (1 << fm_op) for every op it may support */
    uint32_t flags;         /* FM_DEV_* */
} fm_device_info;

typedef struct fm_counters {
    uint64_t nodes;         /* nodes computed */
    uint64_t cycles;        /* device cycles, if FM_DEV_REPORTS_CYCLES */
    uint64_t bytes_moved;   /* bytes read + written by kernels, if known */
} fm_counters;

typedef struct fm_plugin {
    uint32_t abi_major;     /* FM_PLUGIN_ABI_MAJOR */
    uint32_t abi_minor;     /* FM_PLUGIN_ABI_MINOR */
    uint32_t struct_size;   /* sizeof(fm_plugin) as compiled by the plugin */
    const char *name;       /* short name: the <name> in libfathom-<name>.so */
    const char *version;    /* plugin version string */
    const char *description;

    /* ---- ABI 1.0 ---- */
    /* Make the backend. FM_UNSUPPORTED: loaded fine but unavailable here (write why);
     * any other failure refuses it. On success *state is passed to every slot. */
    fm_status (*init)(const fm_host_services *host, void **state, char *why, size_t why_size);
    /* Release everything init made. Called once, after every buffer was freed. */
    void (*destroy)(void *state);
    /* Describe the device. */
    fm_status (*device_info)(void *state, fm_device_info *out);
    /* 1 if compute can run this node (shapes, dtypes, params), else 0. cost (may be
     * NULL) receives a relative cost hint, lower is better (reserved: placement
     * follows the priority list today). Must not compute. */
    int (*supports)(void *state, const fm_pl_node *node, float *cost);
    /* Allocate size bytes of device memory. *buffer: the handle; *host: its host
     * address if FM_DEV_HOST_MEMORY, else NULL. FM_ENOMEM on failure. */
    fm_status (*buffer_alloc)(void *state, uint64_t size, void **buffer, void **host);
    void (*buffer_free)(void *state, void *buffer);
    /* Copy between host memory and a buffer (bytes, offset in the buffer). */
    fm_status (*buffer_upload)(void *state, void *buffer, uint64_t offset, const void *src, uint64_t size);
    fm_status (*buffer_download)(void *state, void *buffer, uint64_t offset, void *dst, uint64_t size);
    /* Compute one node. Any failure but FM_EINVAL (bad input, e.g. a token id past the
     * vocabulary) makes the host re-run it on the next backend (unless strict);
     * last_error should say why. */
    fm_status (*compute)(void *state, const fm_pl_node *node);
    /* (optional) Wait until queued work is done. */
    fm_status (*synchronize)(void *state);
    /* (optional) Cumulative counters since init. */
    void (*counters)(void *state, fm_counters *out);
    /* Message of the last failure, "" if none. Valid until the next call. */
    const char *(*last_error)(void *state);
    /* (optional) Backend-specific setting: FM_ENOTFOUND for an unknown key. */
    fm_status (*control)(void *state, const char *key, const char *value);
} fm_plugin;

/* Bytes of the table up to and including the last slot of ABI 1.0. */
#define FM_PLUGIN_SIZE_1_0 (offsetof(fm_plugin, control) + sizeof(void (*)(void)))

#if defined(_WIN32)
#define FM_PLUGIN_EXPORT __declspec(dllexport)
#else
#define FM_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* The one symbol a plugin exports. */
FM_PLUGIN_EXPORT const fm_plugin *fm_plugin_entry(void);

/* Helpers for plugins (inline, no link dependency). */
static inline int64_t fm_pl_nelem(const fm_pl_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->ne[i];
    return n;
}
static inline int64_t fm_pl_rows(const fm_pl_tensor *t) { return t->ndim > 1 ? fm_pl_nelem(t) / t->ne[t->ndim - 1] : 1; }
static inline int64_t fm_pl_cols(const fm_pl_tensor *t) { return t->ne[t->ndim - 1]; }

#ifdef __cplusplus
}
#endif
#endif
