/* ref.c - the reference backend: the oracle, built into core, always present.
 * It is an ordinary fm_plugin table, so the executor treats it like any other. */
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "ref.h"

typedef struct ref_state {
    const fm_host_services *host;
    char err[1024];
    fm_counters counters;
} ref_state;

static fm_status ref_init(const fm_host_services *host, void **state, char *why, size_t why_size) {
    ref_state *s = host->alloc(host->host_ctx, sizeof *s);
    if (!s) {
        snprintf(why, why_size, "out of memory");
        return FM_ENOMEM;
    }
    s->host = host;
    *state = s;
    return FM_OK;
}

static void ref_destroy(void *state) {
    ref_state *s = state;
    s->host->free(s->host->host_ctx, s);
}

static fm_status ref_device_info(void *state, fm_device_info *out) {
    (void)state;
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "scalar reference kernels (host, f32 accumulate)");
    snprintf(out->kind, sizeof out->kind, "ref");
    out->ops = (1ull << FM_OP_COUNT) - 1;
    out->flags = FM_DEV_HOST_MEMORY;
    return FM_OK;
}

static int ref_supports(void *state, const fm_pl_node *node, float *cost) {
    (void)state;
    if (cost) *cost = 1000.0f;
    return fm_ref_supports(node);
}

static fm_status ref_buffer_alloc(void *state, uint64_t size, void **buffer, void **host) {
    ref_state *s = state;
    void *p = s->host->alloc(s->host->host_ctx, (size_t)size);
    if (!p) {
        snprintf(s->err, sizeof s->err, "ref: cannot allocate %llu bytes", (unsigned long long)size);
        return FM_ENOMEM;
    }
    *buffer = *host = p;
    return FM_OK;
}

static void ref_buffer_free(void *state, void *buffer) {
    ref_state *s = state;
    s->host->free(s->host->host_ctx, buffer);
}

static fm_status ref_upload(void *state, void *buffer, uint64_t offset, const void *src, uint64_t size) {
    (void)state;
    memcpy((char *)buffer + offset, src, (size_t)size);
    return FM_OK;
}

static fm_status ref_download(void *state, void *buffer, uint64_t offset, void *dst, uint64_t size) {
    (void)state;
    memcpy(dst, (const char *)buffer + offset, (size_t)size);
    return FM_OK;
}

static fm_status ref_compute(void *state, const fm_pl_node *node) {
    ref_state *s = state;
    s->err[0] = 0;
    fm_status st = fm_ref_compute(node, s->err, sizeof s->err);
    if (st == FM_OK) s->counters.nodes++;
    return st;
}

static void ref_counters(void *state, fm_counters *out) { *out = ((ref_state *)state)->counters; }
static const char *ref_last_error(void *state) { return ((ref_state *)state)->err; }

static const fm_plugin ref_plugin = {
    .abi_major       = FM_PLUGIN_ABI_MAJOR,
    .abi_minor       = FM_PLUGIN_ABI_MINOR,
    .struct_size     = sizeof(fm_plugin),
    .name            = "ref",
    .version         = FM_VERSION_STRING,
    .description     = "reference kernels: scalar C, the oracle",
    .init            = ref_init,
    .destroy         = ref_destroy,
    .device_info     = ref_device_info,
    .supports        = ref_supports,
    .buffer_alloc    = ref_buffer_alloc,
    .buffer_free     = ref_buffer_free,
    .buffer_upload   = ref_upload,
    .buffer_download = ref_download,
    .compute         = ref_compute,
    .counters        = ref_counters,
    .last_error      = ref_last_error,
};

const fm_plugin *fm_ref_plugin(void) { return &ref_plugin; }
