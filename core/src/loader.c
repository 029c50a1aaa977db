/* loader.c - finds, checks and initialises backend plugins. */
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const char *const required_slots[] = {"init", "destroy", "device_info", "supports", "buffer_alloc",
                                             "buffer_free", "buffer_upload", "buffer_download", "compute",
                                             "last_error"};

static const char *missing_slot(const fm_plugin *p) {
    const void *slots[] = {(const void *)p->init,         (const void *)p->destroy,
                           (const void *)p->device_info,  (const void *)p->supports,
                           (const void *)p->buffer_alloc, (const void *)p->buffer_free,
                           (const void *)p->buffer_upload, (const void *)p->buffer_download,
                           (const void *)p->compute,      (const void *)p->last_error};
    for (size_t i = 0; i < sizeof slots / sizeof *slots; i++)
        if (!slots[i]) return required_slots[i];
    return NULL;
}

static fm_backend *add_backend(fm_ctx *ctx) {
    fm_backend *nb = realloc(ctx->be, (size_t)(ctx->n_be + 1) * sizeof *nb);
    if (!nb) return NULL;
    ctx->be = nb;
    fm_backend *b = &ctx->be[ctx->n_be++];
    memset(b, 0, sizeof *b);
    return b;
}

/* Runs the checks every plugin passes, built in or loaded. Sets status and reason. */
static void start_backend(fm_ctx *ctx, fm_backend *b, const fm_plugin *p, const char *file) {
    if (p->abi_major != FM_PLUGIN_ABI_MAJOR) {
        snprintf(b->reason, sizeof b->reason, "%s: plugin ABI %u.%u, host ABI %d.%d (major must match)",
                 file, p->abi_major, p->abi_minor, FM_PLUGIN_ABI_MAJOR, FM_PLUGIN_ABI_MINOR);
        return;
    }
    if (p->struct_size < FM_PLUGIN_SIZE_1_0) {
        snprintf(b->reason, sizeof b->reason,
                 "%s: struct_size %u is smaller than %zu, the size of ABI %d.0's table (plugin says ABI %u.%u)",
                 file, p->struct_size, (size_t)FM_PLUGIN_SIZE_1_0, FM_PLUGIN_ABI_MAJOR, p->abi_major,
                 p->abi_minor);
        return;
    }
    if (!p->name || !*p->name) {
        snprintf(b->reason, sizeof b->reason, "%s: plugin table has no name", file);
        return;
    }
    const char *miss = missing_slot(p);
    if (miss) {
        snprintf(b->reason, sizeof b->reason, "%s: required slot '%s' is NULL", file, miss);
        return;
    }
    snprintf(b->name, sizeof b->name, "%s", p->name);
    snprintf(b->version, sizeof b->version, "%s", p->version ? p->version : "?");
    char why[400] = "";
    void *state = NULL;
    fm_status s = p->init(&ctx->services, &state, why, sizeof why);
    if (s == FM_UNSUPPORTED) {
        b->status = FM_BACKEND_UNAVAILABLE;
        b->pl = p;
        snprintf(b->reason, sizeof b->reason, "%s", *why ? why : "plugin reports no usable device");
        return;
    }
    if (s != FM_OK) {
        snprintf(b->reason, sizeof b->reason, "%s: init failed (%s): %s", file, fm_status_name(s),
                 *why ? why : "no reason given");
        return;
    }
    b->pl = p;
    b->state = state;
    if (p->device_info(state, &b->info) != FM_OK) {
        snprintf(b->reason, sizeof b->reason, "%s: device_info failed: %s", file, p->last_error(state));
        p->destroy(state);
        b->pl = NULL;
        b->state = NULL;
        return;
    }
    b->info.name[sizeof b->info.name - 1] = 0;
    b->info.kind[sizeof b->info.kind - 1] = 0;
    b->status = FM_BACKEND_READY;
}

static bool is_loaded_path(const fm_ctx *ctx, const char *real) {
    for (int i = 0; i < ctx->n_be; i++)
        if (strcmp(ctx->be[i].path, real) == 0) return true;
    return false;
}

static void load_file(fm_ctx *ctx, const char *path) {
    char real[PATH_MAX];
    if (!realpath(path, real)) snprintf(real, sizeof real, "%s", path);
    if (is_loaded_path(ctx, real)) return;
    fm_backend *b = add_backend(ctx);
    if (!b) return;
    b->status = FM_BACKEND_REFUSED;
    snprintf(b->path, sizeof b->path, "%s", real);
    /* provisional name from the file: libfathom-<name>.so */
    const char *base = strrchr(real, '/');
    base = base ? base + 1 : real;
    snprintf(b->name, sizeof b->name, "%.*s", (int)(strlen(base) - strlen("libfathom-") - strlen(".so")),
             base + strlen("libfathom-"));
    void *dl = dlopen(real, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        snprintf(b->reason, sizeof b->reason, "%s: cannot load: %s", real, dlerror());
        return;
    }
    const fm_plugin *(*entry)(void);
    *(void **)&entry = dlsym(dl, "fm_plugin_entry");
    if (!entry) {
        snprintf(b->reason, sizeof b->reason, "%s: missing entry symbol fm_plugin_entry", real);
        dlclose(dl);
        return;
    }
    const fm_plugin *p = entry();
    if (!p) {
        snprintf(b->reason, sizeof b->reason, "%s: fm_plugin_entry returned NULL", real);
        dlclose(dl);
        return;
    }
    char provisional[32];
    snprintf(provisional, sizeof provisional, "%s", b->name);
    for (int i = 0; i < ctx->n_be - 1; i++) {
        if (p->name && strcmp(ctx->be[i].name, p->name) == 0 && ctx->be[i].status != FM_BACKEND_REFUSED) {
            snprintf(b->reason, sizeof b->reason, "%s: a plugin named '%s' is already loaded from %s", real,
                     p->name, ctx->be[i].path);
            dlclose(dl);
            return;
        }
    }
    start_backend(ctx, b, p, real);
    if (b->status == FM_BACKEND_REFUSED) {
        snprintf(b->name, sizeof b->name, "%s", provisional);
        dlclose(dl);
        return;
    }
    b->dl = dl;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void scan_dir(fm_ctx *ctx, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    char *names[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 256) {
        size_t len = strlen(e->d_name);
        if (len > 13 && strncmp(e->d_name, "libfathom-", 10) == 0 && strcmp(e->d_name + len - 3, ".so") == 0)
            if ((names[n] = strdup(e->d_name))) n++;
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 0; i < n; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        load_file(ctx, path);
        free(names[i]);
    }
}

fm_status fm_loader_init(fm_ctx *ctx) {
    fm_backend *ref = add_backend(ctx);
    if (!ref) return FM_ENOMEM;
    snprintf(ref->path, sizeof ref->path, "(built in)");
    start_backend(ctx, ref, fm_ref_plugin(), "ref");
    if (ref->status != FM_BACKEND_READY) return fm_err(ctx, FM_FAILED, "reference backend: %s", ref->reason);

    const char *env = getenv("FATHOM_PLUGIN_PATH");
    if (env && *env) {
        char *copy = strdup(env);
        if (!copy) return FM_ENOMEM;
        for (char *save = NULL, *tok = strtok_r(copy, ":", &save); tok; tok = strtok_r(NULL, ":", &save))
            scan_dir(ctx, tok);
        free(copy);
    }
    /* then the plugins folder beside the library (or the executable it is linked
     * into): build/plugins, <prefix>/lib/fathom/plugins */
    Dl_info info;
    struct link_map *lm = NULL;
    char lib[PATH_MAX], dir[PATH_MAX + 32];
    if (dladdr1((void *)fm_loader_init, &info, (void **)&lm, RTLD_DL_LINKMAP) && lm &&
        realpath(lm->l_name && *lm->l_name ? lm->l_name : "/proc/self/exe", lib)) {
        char *slash = strrchr(lib, '/');
        if (slash) *slash = 0;
        static const char *const rel[] = {"plugins", "fathom/plugins", "../lib/fathom/plugins"};
        for (size_t i = 0; i < sizeof rel / sizeof *rel; i++) {
            snprintf(dir, sizeof dir, "%s/%s", lib, rel[i]);
            scan_dir(ctx, dir);
        }
    }
    return FM_OK;
}

void fm_loader_free(fm_ctx *ctx) {
    for (int i = ctx->n_be - 1; i >= 0; i--) {
        fm_backend *b = &ctx->be[i];
        if (b->status == FM_BACKEND_READY) {
            for (int j = 0; j < b->n_wc; j++) b->pl->buffer_free(b->state, b->wc[j].buffer);
            b->pl->destroy(b->state);
        }
        free(b->wc);
        if (b->dl) dlclose(b->dl);
    }
    free(ctx->be);
    ctx->be = NULL;
    ctx->n_be = 0;
}
