/* ctx.c - context: error messages, allocator with fault injection, trace, backend queries. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "internal.h"

uint64_t fm_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int fm_log_level(void) {
    static int level = -1;
    if (level < 0) {
        const char *e = getenv("FATHOM_LOG");
        level = e ? atoi(e) : 1;
    }
    return level;
}

static void fm_vlog(int level, const char *fmt, va_list ap) {
    static const char *tag[] = {"error", "warning", "info", "debug"};
    if (level > fm_log_level()) return;
    fprintf(stderr, "fathom: %s: ", tag[level < 0 ? 0 : level > 3 ? 3 : level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void fm_log(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fm_vlog(level, fmt, ap);
    va_end(ap);
}

fm_status fm_err(fm_ctx *ctx, fm_status s, const char *fmt, ...) {
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
        va_end(ap);
    }
    return s;
}

const char *fm_ctx_error(const fm_ctx *ctx) { return ctx ? ctx->err : "no context"; }

void fm_ctx_fail_alloc_after(fm_ctx *ctx, int64_t n) { ctx->fail_alloc_after = n; }

void *fm_alloc(fm_ctx *ctx, size_t size) {
    if (ctx && ctx->fail_alloc_after > 0 && --ctx->fail_alloc_after == 0) return NULL;
    size_t rounded = (size + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (p) memset(p, 0, rounded ? rounded : 64);
    return p;
}

/* fm_alloc for a buffer that each decode step reads whole, cold, as a stream (a
 * layer's KV cache): from 2 MiB on it is rounded up to whole 2 MiB spans, starts on a
 * 2 MiB boundary and is marked for transparent huge pages (a hint; the usual THP mode,
 * "madvise", grants them only when asked), as the kernel maps a checkpoint's weights
 * from the page cache. In 4 KiB pages every 4 KiB of the stream costs a page walk (MLA
 * decode, docs/cpu.md), in a last partial span too: hence the rounding (at most 2 MiB
 * more per buffer). Not for scratch: physically contiguous pages put power-of-two
 * strides in the same cache sets (the grouped experts' packing buffers lost up to 30%). */
#define FM_HUGE ((size_t)2 << 20)
void *fm_alloc_stream(fm_ctx *ctx, size_t size) {
    if (size < FM_HUGE) return fm_alloc(ctx, size);
    if (ctx && ctx->fail_alloc_after > 0 && --ctx->fail_alloc_after == 0) return NULL;
    if (size > SIZE_MAX - FM_HUGE) return NULL;
    size_t rounded = (size + FM_HUGE - 1) & ~(FM_HUGE - 1);
    void *p = NULL;
    if (posix_memalign(&p, FM_HUGE, rounded)) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, rounded, MADV_HUGEPAGE);
#endif
    memset(p, 0, rounded);
    return p;
}

void fm_free(void *p) { free(p); }

void *fm_realloc_array(fm_ctx *ctx, void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return p;
    if (ctx && ctx->fail_alloc_after > 0 && --ctx->fail_alloc_after == 0) return NULL;
    size_t n = *cap ? *cap : 16;
    while (n < need) n *= 2;
    void *q = realloc(p, n * elem);
    if (!q) return NULL;
    *cap = n;
    return q;
}

static void *svc_alloc(void *host_ctx, size_t size) { return fm_alloc(host_ctx, size); }
static void  svc_free(void *host_ctx, void *p) { (void)host_ctx; fm_free(p); }
static void  svc_log(void *host_ctx, int level, const char *fmt, ...) {
    (void)host_ctx;
    va_list ap;
    va_start(ap, fmt);
    fm_vlog(level, fmt, ap);
    va_end(ap);
}

#include "ref.h"

fm_status fm_ctx_init(fm_ctx **out) {
    *out = NULL;
    fm_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return FM_ENOMEM;
    ctx->t0_ns = fm_now_ns();
    ctx->services = (fm_host_services){
        .struct_size = sizeof(fm_host_services),
        .abi_minor   = FM_PLUGIN_ABI_MINOR,
        .alloc       = svc_alloc,
        .free        = svc_free,
        .log         = svc_log,
        .ref_compute = fm_ref_compute,
        .host_ctx    = ctx,
    };
    fm_status s = fm_loader_init(ctx);
    if (s != FM_OK) {
        fm_ctx_free(ctx);
        return s;
    }
    *out = ctx;
    return FM_OK;
}

void fm_ctx_free(fm_ctx *ctx) {
    if (!ctx) return;
    fm_loader_free(ctx);
    free(ctx->trace);
    free(ctx->trace_str);
    free(ctx);
}

int fm_backend_count(const fm_ctx *ctx) { return ctx->n_be; }

int fm_backend_find(const fm_ctx *ctx, const char *name) {
    for (int i = 0; i < ctx->n_be; i++)
        if (strcmp(ctx->be[i].name, name) == 0) return i;
    return -1;
}

fm_status fm_backend_info_get(const fm_ctx *ctx, int i, fm_backend_info *out) {
    if (i < 0 || i >= ctx->n_be) return FM_ENOTFOUND;
    const fm_backend *b = &ctx->be[i];
    *out = (fm_backend_info){
        .name = b->name, .version = b->version, .path = b->path, .reason = b->reason,
        .device = b->info.name, .kind = b->info.kind, .status = b->status,
        .ops = b->info.ops, .flags = b->info.flags,
    };
    return FM_OK;
}

fm_status fm_backend_control(fm_ctx *ctx, const char *backend, const char *key, const char *value) {
    int i = fm_backend_find(ctx, backend);
    if (i < 0) return fm_err(ctx, FM_ENOTFOUND, "backend '%s' not found", backend);
    fm_backend *b = &ctx->be[i];
    if (b->status == FM_BACKEND_REFUSED)
        return fm_err(ctx, FM_UNSUPPORTED, "backend '%s' was refused: %s", backend, b->reason);
    if (!b->pl->control)
        return fm_err(ctx, FM_UNSUPPORTED, "backend '%s' has no settings (key '%s')", backend, key);
    fm_status s = b->pl->control(b->state, key, value);
    if (s != FM_OK)
        return fm_err(ctx, s, "backend '%s': setting %s=%s: %s", backend, key, value,
                      b->pl->last_error ? b->pl->last_error(b->state) : fm_status_name(s));
    return FM_OK;
}

/* ---- trace ---- */

void fm_trace_add(fm_ctx *ctx, const char *name, const char *cat, int tid, uint64_t t0, uint64_t dur);
void fm_trace_add(fm_ctx *ctx, const char *name, const char *cat, int tid, uint64_t t0, uint64_t dur) {
    size_t len = strlen(name) + 1;
    size_t need_str = ctx->n_trace_str + len;
    char *pool = fm_realloc_array(NULL, ctx->trace_str, &ctx->cap_trace_str, need_str, 1);
    if (!pool) return; /* tracing is best effort: a full trace drops events, never fails a run */
    ctx->trace_str = pool;
    fm_trace_ev *ev = fm_realloc_array(NULL, ctx->trace, &ctx->cap_trace, ctx->n_trace + 1, sizeof *ev);
    if (!ev) return;
    ctx->trace = ev;
    memcpy(pool + ctx->n_trace_str, name, len);
    /* store the offset; pointers are made at write time since the pool moves */
    ev[ctx->n_trace] = (fm_trace_ev){.name = (const char *)(uintptr_t)ctx->n_trace_str, .cat = cat,
                                     .tid = tid, .ts_ns = t0 - ctx->t0_ns, .dur_ns = dur};
    ctx->n_trace_str += len;
    ctx->n_trace++;
}

void fm_ctx_clear_trace(fm_ctx *ctx) { ctx->n_trace = 0; ctx->n_trace_str = 0; }

void fm_json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
        else fputc(*s, f);
    }
    fputc('"', f);
}

fm_status fm_ctx_write_trace(fm_ctx *ctx, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return fm_err(ctx, FM_EIO, "trace '%s': cannot open for writing", path);
    fprintf(f, "{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n");
    for (int i = 0; i < ctx->n_be; i++) {
        fprintf(f, "{\"ph\":\"M\",\"pid\":1,\"tid\":%d,\"name\":\"thread_name\",\"args\":{\"name\":", i);
        fm_json_str(f, ctx->be[i].name);
        fprintf(f, "}},\n");
    }
    for (size_t i = 0; i < ctx->n_trace; i++) {
        const fm_trace_ev *e = &ctx->trace[i];
        fprintf(f, "{\"ph\":\"X\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"cat\":", e->tid,
                e->ts_ns / 1e3, e->dur_ns / 1e3);
        fm_json_str(f, e->cat);
        fprintf(f, ",\"name\":");
        fm_json_str(f, ctx->trace_str + (uintptr_t)e->name);
        fprintf(f, "},\n");
    }
    fprintf(f, "{\"ph\":\"M\",\"pid\":1,\"name\":\"process_name\",\"args\":{\"name\":\"fathom\"}}\n]}\n");
    if (fclose(f) != 0) return fm_err(ctx, FM_EIO, "trace '%s': write failed", path);
    return FM_OK;
}
