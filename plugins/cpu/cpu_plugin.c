/* cpu_plugin.c - the cpu backend's plugin table.
 *
 * Environment (read at init):
 *   FATHOM_CPU_ISA=scalar|avx2|avx512|avx512bf16  force a kernel level; a level the
 *                  machine lacks falls back to the best one with a logged warning
 *   FATHOM_CPU_THREADS=N   pool size (default: one thread per physical core)
 *   FATHOM_CPU_PIN=0       do not bind workers to cores
 * Control keys: "threads" (N or "auto"), "isa" (a level or "auto"; FM_UNSUPPORTED
 * if the machine lacks it), "bf16_compute" ("1"/"0"; the avx512bf16 level), "mla_bf16"
 * ("1"/"0", default from FATHOM_CPU_MLA_BF16; bf16 latent cache in absorbed decode).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu.h"
#include "cpu_ops.h"

#define CPU_PLUGIN_VERSION "0.1.0"

const cpu_kern *cpu_kern_for(cpu_isa isa) {
    switch (isa) {
    case CPU_ISA_AVX2:       return &cpu_kern_avx2;
    case CPU_ISA_AVX512:     return &cpu_kern_avx512;
    case CPU_ISA_AVX512BF16: return &cpu_kern_avx512bf16;
    default:                 return &cpu_kern_scalar;
    }
}

fm_status cpu_fail(cpu_state *s, fm_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return st;
}

void *cpu_scratch_slot(cpu_state *s, int slot, size_t size) {
    if (size <= s->ws_size[slot] && s->ws[slot]) return s->ws[slot];
    if (s->ws[slot]) s->host->free(s->host->host_ctx, s->ws[slot]);
    s->ws[slot] = NULL;
    s->ws_size[slot] = 0;
    size_t want = size + size / 4 + 4096;
    s->ws[slot] = s->host->alloc(s->host->host_ctx, want);
    if (!s->ws[slot]) return NULL;
    s->ws_size[slot] = want;
    return s->ws[slot];
}

void *cpu_scratch(cpu_state *s, size_t size) { return cpu_scratch_slot(s, 0, size); }

static void set_isa(cpu_state *s, cpu_isa isa) {
    s->isa = isa;
    s->k = cpu_kern_for(isa);
    s->bf16_compute = isa == CPU_ISA_AVX512BF16;
}

static int set_threads(cpu_state *s, int n, char *why, size_t whyn) {
    if (n < 1) n = cpu_physical_cores();
    if (n > 256) n = 256;
    cpu_pool *p = NULL;
    if (cpu_pool_create(&p, n, s->pin, why, whyn)) return -1;
    cpu_pool_destroy(s->pool);
    s->pool = p;
    s->nthreads = n;
    return 0;
}

static fm_status cpu_init(const fm_host_services *host, void **state, char *why, size_t why_size) {
    cpu_state *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(why, why_size, "out of memory");
        return FM_ENOMEM;
    }
    s->host = host;
    cpu_model_name(s->model, sizeof s->model);
    s->vbmi = cpu_has_vbmi();
    cpu_isa isa = cpu_isa_best();
    const char *e = getenv("FATHOM_CPU_ISA");
    if (e && *e && strcmp(e, "auto")) {
        int want = cpu_isa_parse(e);
        if (want < 0)
            host->log(host->host_ctx, 1, "cpu: FATHOM_CPU_ISA=%s is not one of scalar, avx2, avx512, avx512bf16; using %s",
                      e, cpu_isa_name(isa));
        else if (!cpu_isa_supported((cpu_isa)want))
            host->log(host->host_ctx, 1, "cpu: FATHOM_CPU_ISA=%s but this CPU (%s) lacks it; using %s", e, s->model,
                      cpu_isa_name(isa));
        else
            isa = (cpu_isa)want;
    }
    set_isa(s, isa);
    const char *mb = getenv("FATHOM_CPU_MLA_BF16");
    s->mla_bf16 = mb && mb[0] == '1';
    const char *pin = getenv("FATHOM_CPU_PIN");
    s->pin = !(pin && !strcmp(pin, "0"));
    int n = 0;
    const char *t = getenv("FATHOM_CPU_THREADS");
    if (t && *t) {
        n = atoi(t);
        if (n < 1) host->log(host->host_ctx, 1, "cpu: FATHOM_CPU_THREADS=%s ignored (expected a count >= 1)", t);
    }
    if (set_threads(s, n, why, why_size)) {
        free(s);
        return FM_FAILED;
    }
    *state = s;
    return FM_OK;
}

static void cpu_destroy(void *state) {
    cpu_state *s = state;
    if (!s) return;
    cpu_pool_destroy(s->pool);
    for (int i = 0; i < 4; i++)
        if (s->ws[i]) s->host->free(s->host->host_ctx, s->ws[i]);
    free(s);
}

static const char *isa_label(const cpu_state *s) {
    switch (s->isa) {
    case CPU_ISA_AVX2:       return "AVX2";
    case CPU_ISA_AVX512:     return "AVX-512";
    case CPU_ISA_AVX512BF16: return "AVX-512 BF16-compute";
    default:                 return "scalar";
    }
}

static fm_status cpu_device_info(void *state, fm_device_info *out) {
    cpu_state *s = state;
    memset(out, 0, sizeof *out);
    char name[160];
    snprintf(name, sizeof name, "%s (%s, %d thread%s)", s->model, isa_label(s), s->nthreads,
             s->nthreads == 1 ? "" : "s");
    size_t l = strlen(name) < sizeof out->name - 1 ? strlen(name) : sizeof out->name - 1;
    memcpy(out->name, name, l);
    out->name[l] = 0;
    snprintf(out->kind, sizeof out->kind, "cpu");
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    out->memory_bytes = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 0;
    out->ops = cpu_ops_mask();
    out->flags = FM_DEV_HOST_MEMORY;
    return FM_OK;
}

static int cpu_supports(void *state, const fm_pl_node *node, float *cost) {
    cpu_state *s = state;
    int ok = cpu_ops_supports(s, node);
    if (ok && cost) *cost = s->isa == CPU_ISA_SCALAR ? 4.0f : 1.0f;
    return ok;
}

static fm_status cpu_buffer_alloc(void *state, uint64_t size, void **buffer, void **host) {
    cpu_state *s = state;
    *buffer = *host = NULL;
    if (size > (uint64_t)SIZE_MAX - 64) return cpu_fail(s, FM_ENOMEM, "buffer of %llu bytes", (unsigned long long)size);
    void *p = s->host->alloc(s->host->host_ctx, size ? (size_t)size : 1);
    if (!p) return cpu_fail(s, FM_ENOMEM, "out of memory allocating a buffer of %llu bytes", (unsigned long long)size);
    *buffer = *host = p;
    return FM_OK;
}

static void cpu_buffer_free(void *state, void *buffer) {
    cpu_state *s = state;
    if (buffer) s->host->free(s->host->host_ctx, buffer);
}

static fm_status cpu_buffer_upload(void *state, void *buffer, uint64_t offset, const void *src, uint64_t size) {
    cpu_state *s = state;
    if (!buffer || (size && !src)) return cpu_fail(s, FM_EINVAL, "upload: NULL buffer or source");
    if (size) memcpy((char *)buffer + offset, src, (size_t)size);
    s->cnt.bytes_moved += size;
    return FM_OK;
}

static fm_status cpu_buffer_download(void *state, void *buffer, uint64_t offset, void *dst, uint64_t size) {
    cpu_state *s = state;
    if (!buffer || (size && !dst)) return cpu_fail(s, FM_EINVAL, "download: NULL buffer or destination");
    if (size) memcpy(dst, (const char *)buffer + offset, (size_t)size);
    s->cnt.bytes_moved += size;
    return FM_OK;
}

static fm_status cpu_compute(void *state, const fm_pl_node *node) {
    cpu_state *s = state;
    s->err[0] = 0;
    if (!cpu_ops_supports(s, node))
        return cpu_fail(s, FM_UNSUPPORTED, "cpu: node %s (%s): op, dtypes or shapes not supported",
                        node->name ? node->name : "?", fm_op_name_cpu(node->op));
    for (int i = 0; i < node->n_src + node->n_dst; i++) {
        const fm_pl_tensor *t = i < node->n_src ? node->src[i] : node->dst[i - node->n_src];
        if ((t && !t->data) || (t && t->scale && !t->scale->data))
            return cpu_fail(s, FM_FAILED, "cpu: node %s: tensor %s has no host address", node->name ? node->name : "?",
                            t->name ? t->name : "?");
    }
    fm_status st = cpu_ops_compute(s, node);
    if (st == FM_OK) s->cnt.nodes++;
    return st;
}

static fm_status cpu_synchronize(void *state) {
    (void)state;
    return FM_OK;
}

static void cpu_counters(void *state, fm_counters *out) {
    cpu_state *s = state;
    *out = s->cnt;
}

static const char *cpu_last_error(void *state) {
    cpu_state *s = state;
    return s->err;
}

static fm_status cpu_control(void *state, const char *key, const char *value) {
    cpu_state *s = state;
    if (!key) return cpu_fail(s, FM_EINVAL, "control: NULL key");
    if (!value) value = "";
    if (!strcmp(key, "threads")) {
        int n = !strcmp(value, "auto") || !*value ? 0 : atoi(value);
        if (n < 0 || (n == 0 && strcmp(value, "auto") && strcmp(value, "0") && *value))
            return cpu_fail(s, FM_EINVAL, "control threads=%s: expected a count >= 1 or \"auto\"", value);
        char why[256];
        if (set_threads(s, n, why, sizeof why)) return cpu_fail(s, FM_FAILED, "control threads=%s: %s", value, why);
        return FM_OK;
    }
    if (!strcmp(key, "isa")) {
        int isa = !strcmp(value, "auto") ? (int)cpu_isa_best() : cpu_isa_parse(value);
        if (isa < 0)
            return cpu_fail(s, FM_EINVAL, "control isa=%s: expected scalar, avx2, avx512, avx512bf16 or auto", value);
        if (!cpu_isa_supported((cpu_isa)isa))
            return cpu_fail(s, FM_UNSUPPORTED, "control isa=%s: this CPU (%s) lacks it", value, s->model);
        set_isa(s, (cpu_isa)isa);
        return FM_OK;
    }
    if (!strcmp(key, "bf16_compute")) {
        int on = !strcmp(value, "1") || !strcmp(value, "on") || !strcmp(value, "true");
        if (on) {
            if (!cpu_isa_supported(CPU_ISA_AVX512BF16))
                return cpu_fail(s, FM_UNSUPPORTED, "control bf16_compute=1: this CPU (%s) lacks AVX512-BF16", s->model);
            set_isa(s, CPU_ISA_AVX512BF16);
        } else if (s->isa == CPU_ISA_AVX512BF16) {
            set_isa(s, CPU_ISA_AVX512);
        }
        return FM_OK;
    }
    if (!strcmp(key, "mla_bf16")) {
        s->mla_bf16 = !strcmp(value, "1") || !strcmp(value, "on") || !strcmp(value, "true");
        return FM_OK;
    }
    return cpu_fail(s, FM_ENOTFOUND, "control: unknown key \"%s\" (threads, isa, bf16_compute, mla_bf16)", key);
}

FM_PLUGIN_EXPORT const fm_plugin *fm_plugin_entry(void) {
    static const fm_plugin plugin = {
        .abi_major = FM_PLUGIN_ABI_MAJOR,
        .abi_minor = FM_PLUGIN_ABI_MINOR,
        .struct_size = sizeof(fm_plugin),
        .name = "cpu",
        .version = CPU_PLUGIN_VERSION,
        .description = "x86-64 CPU: AVX-512/AVX2/scalar kernels, bf16 and fp8 weights decoded in the kernels",
        .init = cpu_init,
        .destroy = cpu_destroy,
        .device_info = cpu_device_info,
        .supports = cpu_supports,
        .buffer_alloc = cpu_buffer_alloc,
        .buffer_free = cpu_buffer_free,
        .buffer_upload = cpu_buffer_upload,
        .buffer_download = cpu_buffer_download,
        .compute = cpu_compute,
        .synchronize = cpu_synchronize,
        .counters = cpu_counters,
        .last_error = cpu_last_error,
        .control = cpu_control,
    };
    return &plugin;
}
