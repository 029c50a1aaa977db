/* stub.c - the smallest complete Fathom plugin.
 *
 * It computes a few ops by calling the host's reference kernels, so its results
 * are the reference's, and it can be told to misbehave (control slot):
 *   refuse=OP[,OP...]  supports() says no to these ops ("" to clear)
 *   fail_at=N          compute of the node with graph index N fails (-1 off)
 *   fail_alloc=N       the N-th buffer_alloc from now fails (0 off)
 *   reset=1            all of the above off
 * It is the loader's test double (built broken on purpose with STUB_VARIANT_*:
 * badabi, badsize, noentry, initfail, unavail; devmem keeps its buffers out of
 * the host's reach so the executor must copy) and the worked example of
 * docs/plugin-guide.md. */
#define _POSIX_C_SOURCE 200809L /* strtok_r */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fathom/plugin.h"

#ifndef STUB_NAME
#define STUB_NAME "stub"
#endif
#ifdef STUB_VARIANT_devmem
#define STUB_HOST_MEMORY 0
#else
#define STUB_HOST_MEMORY FM_DEV_HOST_MEMORY
#endif

typedef struct stub {
    const fm_host_services *host;
    uint64_t refuse;        /* bit per op */
    int64_t fail_at;        /* node index whose compute fails, -1 = never */
    int64_t fail_alloc;     /* countdown to a failing buffer_alloc, 0 = never */
    fm_counters counters;
    char err[1024];
} stub;

/* The ops this backend implements (through the reference kernels); the
 * private-memory variant takes every op so states and copies get exercised. */
#ifdef STUB_VARIANT_devmem
static const uint64_t stub_ops = (1ull << FM_OP_COUNT) - 1;
#else
static const uint64_t stub_ops = (1ull << FM_OP_EMBED) | (1ull << FM_OP_MATMUL) | (1ull << FM_OP_RMSNORM) |
                                 (1ull << FM_OP_ADD) | (1ull << FM_OP_SWIGLU) | (1ull << FM_OP_MOE_EXPERTS);
#endif

static fm_status stub_init(const fm_host_services *host, void **state, char *why, size_t why_size) {
#if defined(STUB_VARIANT_initfail)
    (void)host, (void)state;
    snprintf(why, why_size, "injected init failure");
    return FM_FAILED;
#elif defined(STUB_VARIANT_unavail)
    (void)host, (void)state;
    snprintf(why, why_size, "no device present (injected)");
    return FM_UNSUPPORTED;
#else
    if (host->struct_size < sizeof *host) {
        snprintf(why, why_size, "host services too old");
        return FM_FAILED;
    }
    stub *s = host->alloc(host->host_ctx, sizeof *s);
    if (!s) {
        snprintf(why, why_size, "out of memory");
        return FM_ENOMEM;
    }
    s->host = host;
    s->fail_at = -1;
    *state = s;
    return FM_OK;
#endif
}

static void stub_destroy(void *state) {
    stub *s = state;
    s->host->free(s->host->host_ctx, s);
}

static fm_status stub_device_info(void *state, fm_device_info *out) {
    (void)state;
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "test double (reference kernels%s)",
             STUB_HOST_MEMORY ? "" : ", private memory");
    snprintf(out->kind, sizeof out->kind, "test");
    out->ops = stub_ops;
    out->flags = STUB_HOST_MEMORY;
    return FM_OK;
}

static int stub_supports(void *state, const fm_pl_node *node, float *cost) {
    stub *s = state;
    if (cost) *cost = 1.0f;
    return (stub_ops >> node->op & 1) && !(s->refuse >> node->op & 1);
}

static fm_status stub_buffer_alloc(void *state, uint64_t size, void **buffer, void **host) {
    stub *s = state;
    if (s->fail_alloc > 0 && --s->fail_alloc == 0) {
        snprintf(s->err, sizeof s->err, "injected allocation failure (%llu bytes)", (unsigned long long)size);
        return FM_ENOMEM;
    }
    void *p = s->host->alloc(s->host->host_ctx, (size_t)size);
    if (!p) {
        snprintf(s->err, sizeof s->err, "out of memory (%llu bytes)", (unsigned long long)size);
        return FM_ENOMEM;
    }
    *buffer = p;
    *host = STUB_HOST_MEMORY ? p : NULL;
    return FM_OK;
}

static void stub_buffer_free(void *state, void *buffer) {
    stub *s = state;
    s->host->free(s->host->host_ctx, buffer);
}

static fm_status stub_upload(void *state, void *buffer, uint64_t offset, const void *src, uint64_t size) {
    (void)state;
    memcpy((char *)buffer + offset, src, (size_t)size);
    return FM_OK;
}

static fm_status stub_download(void *state, void *buffer, uint64_t offset, void *dst, uint64_t size) {
    (void)state;
    memcpy(dst, (const char *)buffer + offset, (size_t)size);
    return FM_OK;
}

/* A tensor in one of our buffers, seen at its host address. */
static void to_host(fm_pl_tensor *t, fm_pl_tensor *scale) {
    if (t->buffer && !t->data) t->data = (char *)t->buffer + t->offset;
    if (t->scale) {
        *scale = *t->scale;
        if (scale->buffer && !scale->data) scale->data = (char *)scale->buffer + scale->offset;
        t->scale = scale;
    }
}

static fm_status stub_compute(void *state, const fm_pl_node *node) {
    stub *s = state;
    s->err[0] = 0;
    if (node->index == s->fail_at) {
        snprintf(s->err, sizeof s->err, "injected failure at node %d", node->index);
        return FM_FAILED;
    }
    int n = node->n_src + node->n_dst;
    fm_pl_tensor *t = malloc((size_t)n * 2 * sizeof *t);
    const fm_pl_tensor **pp = malloc((size_t)n * sizeof *pp);
    if (!t || !pp) {
        free(t);
        free(pp);
        snprintf(s->err, sizeof s->err, "out of memory");
        return FM_ENOMEM;
    }
    for (int i = 0; i < n; i++) {
        t[i] = i < node->n_src ? *node->src[i] : *node->dst[i - node->n_src];
        to_host(&t[i], &t[n + i]);
        pp[i] = &t[i];
    }
    fm_pl_node local = *node;
    local.src = pp;
    local.dst = pp + node->n_src;
    fm_status st = s->host->ref_compute(&local, s->err, sizeof s->err);
    free(t);
    free(pp);
    if (st == FM_OK) s->counters.nodes++;
    return st;
}

static void stub_counters(void *state, fm_counters *out) { *out = ((stub *)state)->counters; }
static const char *stub_last_error(void *state) { return ((stub *)state)->err; }

static int op_parse(const char *name) {
    static const char *const names[] = {
#define X(id, nm, nsrc, ndst, params) nm,
#include "fathom/ops.def"
#undef X
    };
    for (int i = 0; i < FM_OP_COUNT; i++)
        if (strcmp(names[i], name) == 0) return i;
    return -1;
}

static fm_status stub_control(void *state, const char *key, const char *value) {
    stub *s = state;
    if (strcmp(key, "fail_at") == 0) s->fail_at = strtoll(value, NULL, 10);
    else if (strcmp(key, "fail_alloc") == 0) s->fail_alloc = strtoll(value, NULL, 10);
    else if (strcmp(key, "reset") == 0) s->refuse = 0, s->fail_at = -1, s->fail_alloc = 0;
    else if (strcmp(key, "refuse") == 0) {
        s->refuse = 0;
        char buf[256];
        snprintf(buf, sizeof buf, "%s", value);
        for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            int op = op_parse(tok);
            if (op < 0) {
                snprintf(s->err, sizeof s->err, "refuse: unknown op '%s'", tok);
                return FM_EINVAL;
            }
            s->refuse |= 1ull << op;
        }
    } else {
        snprintf(s->err, sizeof s->err, "unknown key '%s' (known: refuse, fail_at, fail_alloc, reset)", key);
        return FM_ENOTFOUND;
    }
    return FM_OK;
}

static const fm_plugin stub_plugin = {
#ifdef STUB_VARIANT_badabi
    .abi_major       = FM_PLUGIN_ABI_MAJOR + 98,
#else
    .abi_major       = FM_PLUGIN_ABI_MAJOR,
#endif
    .abi_minor       = FM_PLUGIN_ABI_MINOR,
#ifdef STUB_VARIANT_badsize
    .struct_size     = 40,
#else
    .struct_size     = sizeof(fm_plugin),
#endif
    .name            = STUB_NAME,
    .version         = "1.0",
    .description     = "test double and plugin-authoring example",
    .init            = stub_init,
    .destroy         = stub_destroy,
    .device_info     = stub_device_info,
    .supports        = stub_supports,
    .buffer_alloc    = stub_buffer_alloc,
    .buffer_free     = stub_buffer_free,
    .buffer_upload   = stub_upload,
    .buffer_download = stub_download,
    .compute         = stub_compute,
    .counters        = stub_counters,
    .last_error      = stub_last_error,
    .control         = stub_control,
};

#ifndef STUB_VARIANT_noentry
FM_PLUGIN_EXPORT const fm_plugin *fm_plugin_entry(void) { return &stub_plugin; }
#else
FM_PLUGIN_EXPORT const fm_plugin *fm_plugin_entry_misspelt(void) { return &stub_plugin; }
#endif
