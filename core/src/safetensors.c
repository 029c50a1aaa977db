/* safetensors.c - mmap-based safetensors reader (single file or sharded index)
 * and a small writer. Format: 8-byte little-endian header length N, N bytes of
 * JSON header, then the data area that the tensors' data_offsets index into. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_INDEX_NAME "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"
/* JSON numbers are doubles: integers above 2^53 are not exact. */
#define ST_MAX_INT ((double)(1ull << 53))

/* Own tables (not fm_dtype_size/fm_dtype_name) so this file stands alone. */
static const struct {
    const char *st;    /* safetensors name */
    const char *lower; /* fathom's name, used in messages */
    size_t size;
} st_dtypes[FM_DTYPE_COUNT] = {
    [FM_F32]     = {"F32", "f32", 4},
    [FM_BF16]    = {"BF16", "bf16", 2},
    [FM_F16]     = {"F16", "f16", 2},
    [FM_F8_E4M3] = {"F8_E4M3", "f8_e4m3", 1},
    [FM_I32]     = {"I32", "i32", 4},
};

size_t fm_st_dtype_size(fm_dtype t)
{
    return ((unsigned)t < FM_DTYPE_COUNT) ? st_dtypes[t].size : 0;
}

const char *fm_st_dtype_str(fm_dtype t)
{
    return ((unsigned)t < FM_DTYPE_COUNT) ? st_dtypes[t].st : "?";
}

static const char *st_lname(fm_dtype t)
{
    return ((unsigned)t < FM_DTYPE_COUNT) ? st_dtypes[t].lower : "?";
}

static int st_dtype_parse(const char *s)
{
    for (int i = 0; i < FM_DTYPE_COUNT; i++)
        if (strcmp(s, st_dtypes[i].st) == 0)
            return i;
    return -1;
}

typedef struct st_kv {
    char *key;
    char *value;
} st_kv;

typedef struct st_map {
    char  *path;
    void  *addr;
    size_t size;
} st_map;

struct fm_st {
    char         *path;
    st_map       *maps;
    int           n_maps, cap_maps;
    fm_st_tensor *tensors;
    int           n_tensors, cap_tensors;
    st_kv        *meta;
    int           n_meta, cap_meta;
};

__attribute__((format(printf, 4, 5)))
static fm_status st_fail(char *err, size_t err_size, fm_status s, const char *fmt, ...)
{
    if (err && err_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return s;
}

static void st_clear_err(char *err, size_t err_size)
{
    if (err && err_size)
        err[0] = '\0';
}

/* Grows *arr (of elem-sized items) so that one more fits. */
static int st_grow(void **arr, int *cap, int n, size_t elem)
{
    if (n < *cap)
        return 0;
    if (*cap > (1 << 29))
        return -1;
    int ncap = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, (size_t)ncap * elem);
    if (!p)
        return -1;
    *arr = p;
    *cap = ncap;
    return 0;
}

static void st_format_shape(char *buf, size_t n, int ndim, const int64_t *ne)
{
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "[");
    for (int i = 0; i < ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, "%s%lld", i ? ", " : "", (long long)ne[i]);
    if (off < n)
        snprintf(buf + off, n - off, "]");
}

static uint64_t st_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* A JSON number that is a whole value in [0, 2^53]; -1 otherwise. */
static int st_json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j))
        return -1;
    double v = j->valuedouble;
    if (!(v >= 0.0 && v <= ST_MAX_INT) || v != (double)(uint64_t)v)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static fm_status st_add_meta(fm_st *st, const char *key, const char *value)
{
    if (st_grow((void **)&st->meta, &st->cap_meta, st->n_meta, sizeof *st->meta))
        return FM_ENOMEM;
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) {
        free(k);
        free(v);
        return FM_ENOMEM;
    }
    st->meta[st->n_meta].key = k;
    st->meta[st->n_meta].value = v;
    st->n_meta++;
    return FM_OK;
}

void fm_st_close(fm_st *st)
{
    if (!st)
        return;
    for (int i = 0; i < st->n_maps; i++) {
        if (st->maps[i].addr)
            munmap(st->maps[i].addr, st->maps[i].size);
        free(st->maps[i].path);
    }
    for (int i = 0; i < st->n_tensors; i++)
        free((char *)st->tensors[i].name);
    for (int i = 0; i < st->n_meta; i++) {
        free(st->meta[i].key);
        free(st->meta[i].value);
    }
    free(st->maps);
    free(st->tensors);
    free(st->meta);
    free(st->path);
    free(st);
}

/* ---- one file --------------------------------------------------------------- */

typedef struct st_span {
    uint64_t    begin, end;
    const char *name;
} st_span;

static int st_span_cmp(const void *a, const void *b)
{
    const st_span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static fm_status st_parse_metadata(fm_st *st, const char *path, const cJSON *m,
                                   char *err, size_t err_size)
{
    if (!cJSON_IsObject(m))
        return st_fail(err, err_size, FM_EINVAL, "%s: __metadata__ is not an object", path);
    for (const cJSON *kv = m->child; kv; kv = kv->next) {
        if (!cJSON_IsString(kv))
            return st_fail(err, err_size, FM_EINVAL,
                           "%s: __metadata__ '%s' is not a string", path, kv->string);
        if (st_add_meta(st, kv->string, kv->valuestring) != FM_OK)
            return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
    }
    return FM_OK;
}

/* Parses one tensor entry of the header into st->tensors. */
static fm_status st_parse_tensor(fm_st *st, const char *path, const cJSON *item,
                                 const unsigned char *data, uint64_t data_size,
                                 char *err, size_t err_size)
{
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return st_fail(err, err_size, FM_EINVAL, "%s: tensor '%s': entry is not an object",
                       path, name);

    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(jd))
        return st_fail(err, err_size, FM_EINVAL, "%s: tensor '%s': %s", path, name,
                       jd ? "dtype is not a string" : "missing dtype");
    int dt = st_dtype_parse(jd->valuestring);
    if (dt < 0)
        return st_fail(err, err_size, FM_EINVAL,
                       "%s: tensor '%s': dtype '%s' is not supported (F32, BF16, F16, F8_E4M3, I32)",
                       path, name, jd->valuestring);

    if (!cJSON_IsArray(js))
        return st_fail(err, err_size, FM_EINVAL, "%s: tensor '%s': %s", path, name,
                       js ? "shape is not an array" : "missing shape");
    int ndim = cJSON_GetArraySize(js);
    if (ndim > FM_MAX_DIMS)
        return st_fail(err, err_size, FM_EINVAL,
                       "%s: tensor '%s': shape has %d dims, at most %d supported",
                       path, name, ndim, FM_MAX_DIMS);
    int64_t ne[FM_MAX_DIMS] = {1, 1, 1, 1};
    uint64_t need = st_dtypes[dt].size;
    int overflow = 0;
    int d = 0;
    for (const cJSON *e = js->child; e; e = e->next, d++) {
        uint64_t v;
        if (st_json_uint(e, &v))
            return st_fail(err, err_size, FM_EINVAL,
                           "%s: tensor '%s': shape[%d] is not a non-negative integer",
                           path, name, d);
        ne[d] = (int64_t)v;
        if (__builtin_mul_overflow(need, v, &need))
            overflow = 1;
    }
    char shape[160];
    st_format_shape(shape, sizeof shape, ndim, ne);

    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2)
        return st_fail(err, err_size, FM_EINVAL, "%s: tensor '%s': %s", path, name,
                       jo ? "data_offsets is not an array [begin, end]" : "missing data_offsets");
    uint64_t begin, end;
    if (st_json_uint(jo->child, &begin) || st_json_uint(jo->child->next, &end))
        return st_fail(err, err_size, FM_EINVAL,
                       "%s: tensor '%s': data_offsets are not non-negative integers", path, name);
    if (begin > end)
        return st_fail(err, err_size, FM_EINVAL,
                       "%s: tensor '%s': data_offsets [%llu, %llu] run backwards", path, name,
                       (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return st_fail(err, err_size, FM_EINVAL,
                       "%s: tensor '%s': data_offsets [%llu, %llu] run past the data area (%llu bytes)",
                       path, name, (unsigned long long)begin, (unsigned long long)end,
                       (unsigned long long)data_size);
    if (overflow || end - begin != need) {
        if (overflow)
            return st_fail(err, err_size, FM_EINVAL,
                           "%s: tensor '%s': shape %s %s is too large", path, name, shape,
                           st_dtypes[dt].lower);
        return st_fail(err, err_size, FM_EINVAL,
                       "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but shape %s %s needs %llu",
                       path, name, (unsigned long long)begin, (unsigned long long)end,
                       (unsigned long long)(end - begin), shape, st_dtypes[dt].lower,
                       (unsigned long long)need);
    }

    if (st_grow((void **)&st->tensors, &st->cap_tensors, st->n_tensors, sizeof *st->tensors))
        return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
    char *nm = strdup(name);
    if (!nm)
        return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
    fm_st_tensor *t = &st->tensors[st->n_tensors++];
    t->name = nm;
    t->dtype = (fm_dtype)dt;
    t->ndim = ndim;
    memcpy(t->ne, ne, sizeof ne);
    t->data = data + begin;
    t->nbytes = (size_t)need;
    t->path = NULL; /* set by the caller, which owns the path string */
    return FM_OK;
}

/* Rejects tensors whose byte ranges overlap. Empty tensors hold no bytes. */
static fm_status st_check_overlap(fm_st *st, int first, const char *path,
                                  const unsigned char *data, char *err, size_t err_size)
{
    int n = st->n_tensors - first;
    if (n < 2)
        return FM_OK;
    st_span *sp = malloc((size_t)n * sizeof *sp);
    if (!sp)
        return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
    int m = 0;
    for (int i = first; i < st->n_tensors; i++) {
        const fm_st_tensor *t = &st->tensors[i];
        if (t->nbytes == 0)
            continue;
        uint64_t b = (uint64_t)((const unsigned char *)t->data - data);
        sp[m++] = (st_span){b, b + t->nbytes, t->name};
    }
    qsort(sp, (size_t)m, sizeof *sp, st_span_cmp);
    fm_status s = FM_OK;
    for (int i = 1; i < m; i++) {
        if (sp[i].begin < sp[i - 1].end) {
            s = st_fail(err, err_size, FM_EINVAL,
                        "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap", path,
                        sp[i - 1].name, (unsigned long long)sp[i - 1].begin,
                        (unsigned long long)sp[i - 1].end, sp[i].name,
                        (unsigned long long)sp[i].begin, (unsigned long long)sp[i].end);
            break;
        }
    }
    free(sp);
    return s;
}

/* Maps path and appends its tensors and metadata to st. On failure, whatever was
 * appended stays registered in st and is released by fm_st_close. */
static fm_status st_load_file(fm_st *st, const char *path, char *err, size_t err_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return st_fail(err, err_size, e == ENOENT ? FM_ENOTFOUND : FM_EIO,
                       "%s: cannot open: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return st_fail(err, err_size, FM_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return st_fail(err, err_size, FM_EINVAL, "%s: not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return st_fail(err, err_size, FM_EINVAL,
                       "%s: file is %lld bytes, too short for the 8-byte header length",
                       path, (long long)sb.st_size);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return st_fail(err, err_size, FM_EIO, "%s: file too large to map", path);
    }
    size_t size = (size_t)sb.st_size;
    void *addr = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (addr == MAP_FAILED)
        return st_fail(err, err_size, FM_EIO, "%s: cannot map: %s", path, strerror(map_errno));

    char *pcopy = strdup(path);
    if (!pcopy || st_grow((void **)&st->maps, &st->cap_maps, st->n_maps, sizeof *st->maps)) {
        free(pcopy);
        munmap(addr, size);
        return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
    }
    st->maps[st->n_maps++] = (st_map){pcopy, addr, size};

    const unsigned char *base = addr;
    uint64_t hlen = st_le64(base);
    uint64_t avail = (uint64_t)size - 8;
    if (hlen > FM_ST_MAX_HEADER)
        return st_fail(err, err_size, FM_EINVAL,
                       "%s: header length %llu is absurd (limit %llu)", path,
                       (unsigned long long)hlen, (unsigned long long)FM_ST_MAX_HEADER);
    if (hlen > avail)
        return st_fail(err, err_size, FM_EINVAL,
                       "%s: header length %llu runs past the end of the file (%llu bytes follow the length field)",
                       path, (unsigned long long)hlen, (unsigned long long)avail);

    const char *hdr = (const char *)base + 8;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end, 0);
    if (!root) {
        size_t at = end ? (size_t)(end - hdr) : 0;
        return st_fail(err, err_size, FM_EINVAL,
                       "%s: header is not valid JSON (error at header byte %zu of %llu)",
                       path, at, (unsigned long long)hlen);
    }
    fm_status s = FM_OK;
    for (const char *p = end; p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            s = st_fail(err, err_size, FM_EINVAL,
                        "%s: header has stray bytes after the JSON object (header byte %zu)",
                        path, (size_t)(p - hdr));
            goto out;
        }
    }
    if (!cJSON_IsObject(root)) {
        s = st_fail(err, err_size, FM_EINVAL, "%s: header is not a JSON object", path);
        goto out;
    }

    const unsigned char *data = base + 8 + hlen;
    uint64_t data_size = avail - hlen;
    int first = st->n_tensors;
    for (const cJSON *item = root->child; item && s == FM_OK; item = item->next) {
        if (strcmp(item->string, "__metadata__") == 0)
            s = st_parse_metadata(st, path, item, err, err_size);
        else
            s = st_parse_tensor(st, path, item, data, data_size, err, err_size);
    }
    for (int i = first; i < st->n_tensors; i++)
        st->tensors[i].path = pcopy;
    if (s == FM_OK)
        s = st_check_overlap(st, first, path, data, err, err_size);
out:
    cJSON_Delete(root);
    return s;
}

/* ---- lookup ------------------------------------------------------------------ */

static int st_tensor_cmp(const void *a, const void *b)
{
    return strcmp(((const fm_st_tensor *)a)->name, ((const fm_st_tensor *)b)->name);
}

static int st_name_cmp(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const fm_st_tensor *)elem)->name);
}

/* Sorts the tensors by name and rejects duplicates. */
static fm_status st_index_tensors(fm_st *st, char *err, size_t err_size)
{
    if (st->n_tensors > 1)
        qsort(st->tensors, (size_t)st->n_tensors, sizeof *st->tensors, st_tensor_cmp);
    for (int i = 1; i < st->n_tensors; i++) {
        const fm_st_tensor *a = &st->tensors[i - 1], *b = &st->tensors[i];
        if (strcmp(a->name, b->name) == 0) {
            if (strcmp(a->path, b->path) == 0)
                return st_fail(err, err_size, FM_EINVAL, "%s: tensor '%s' appears twice",
                               a->path, a->name);
            return st_fail(err, err_size, FM_EINVAL, "%s: tensor '%s' is in both %s and %s",
                           st->path, a->name, a->path, b->path);
        }
    }
    return FM_OK;
}

int fm_st_count(const fm_st *st)
{
    return st ? st->n_tensors : 0;
}

const fm_st_tensor *fm_st_at(const fm_st *st, int i)
{
    if (!st || i < 0 || i >= st->n_tensors)
        return NULL;
    return &st->tensors[i];
}

const fm_st_tensor *fm_st_get(const fm_st *st, const char *name)
{
    if (!st || !name || st->n_tensors == 0)
        return NULL;
    return bsearch(name, st->tensors, (size_t)st->n_tensors, sizeof *st->tensors, st_name_cmp);
}

fm_status fm_st_find(const fm_st *st, const char *name, const fm_st_tensor **out,
                     char *err, size_t err_size)
{
    if (out)
        *out = NULL;
    if (!st || !name)
        return st_fail(err, err_size, FM_EINVAL, "fm_st_find: NULL argument");
    const fm_st_tensor *t = fm_st_get(st, name);
    if (!t)
        return st_fail(err, err_size, FM_ENOTFOUND, "%s: no tensor '%s'", st->path, name);
    if (out)
        *out = t;
    st_clear_err(err, err_size);
    return FM_OK;
}

fm_status fm_st_expect(const fm_st *st, const char *name, int dtype, int ndim,
                       const int64_t *ne, const fm_st_tensor **out,
                       char *err, size_t err_size)
{
    const fm_st_tensor *t;
    if (out)
        *out = NULL;
    fm_status s = fm_st_find(st, name, &t, err, err_size);
    if (s != FM_OK)
        return s;
    int ok = (dtype < 0 || (int)t->dtype == dtype) && t->ndim == ndim;
    for (int i = 0; ok && ne && i < ndim; i++)
        if (ne[i] >= 0 && ne[i] != t->ne[i])
            ok = 0;
    if (!ok) {
        char want[160], have[160];
        int64_t wne[FM_MAX_DIMS] = {-1, -1, -1, -1};
        int wn = ndim < 0 ? 0 : (ndim > FM_MAX_DIMS ? FM_MAX_DIMS : ndim);
        if (ne)
            memcpy(wne, ne, (size_t)wn * sizeof *ne);
        st_format_shape(want, sizeof want, wn, wne);
        st_format_shape(have, sizeof have, t->ndim, t->ne);
        return st_fail(err, err_size, FM_EINVAL, "%s: tensor '%s': expected %s %s, found %s %s",
                       t->path, name, want,
                       dtype < 0 ? "(any dtype)" : st_lname((fm_dtype)dtype), have,
                       st_lname(t->dtype));
    }
    if (out)
        *out = t;
    return FM_OK;
}

const char *fm_st_metadata(const fm_st *st, const char *key)
{
    if (!st || !key)
        return NULL;
    for (int i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta[i].key, key) == 0)
            return st->meta[i].value;
    return NULL;
}

int fm_st_metadata_count(const fm_st *st)
{
    return st ? st->n_meta : 0;
}

void fm_st_metadata_at(const fm_st *st, int i, const char **key, const char **value)
{
    int ok = st && i >= 0 && i < st->n_meta;
    if (key)
        *key = ok ? st->meta[i].key : NULL;
    if (value)
        *value = ok ? st->meta[i].value : NULL;
}

const char *fm_st_path(const fm_st *st)
{
    return st ? st->path : NULL;
}

/* ---- sharded index ------------------------------------------------------------- */

static char *st_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

static char *st_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    if (slash == path)
        return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

/* Reads a whole (small) file into a NUL-terminated buffer. */
static fm_status st_read_text(const char *path, char **out, size_t *len, char *err, size_t err_size)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return st_fail(err, err_size, e == ENOENT ? FM_ENOTFOUND : FM_EIO,
                       "%s: cannot open: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return st_fail(err, err_size, FM_EIO, "%s: not a readable regular file", path);
    }
    if ((uint64_t)sb.st_size > 4 * FM_ST_MAX_HEADER) {
        close(fd);
        return st_fail(err, err_size, FM_EINVAL, "%s: index is %lld bytes, too large", path,
                       (long long)sb.st_size);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return st_fail(err, err_size, FM_EIO, "%s: read failed: %s", path, strerror(e));
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return FM_OK;
}

static int st_str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int st_unsafe_shard_name(const char *s)
{
    if (s[0] == '\0' || s[0] == '/')
        return 1;
    for (const char *p = s; *p; ) {
        const char *q = strchr(p, '/');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return 1;
        if (!q)
            break;
        p = q + 1;
    }
    return 0;
}

static fm_status st_index_metadata(fm_st *st, const char *path, const cJSON *m,
                                   char *err, size_t err_size)
{
    if (!m || cJSON_IsNull(m))
        return FM_OK;
    if (!cJSON_IsObject(m))
        return st_fail(err, err_size, FM_EINVAL, "%s: 'metadata' is not an object", path);
    for (const cJSON *kv = m->child; kv; kv = kv->next) {
        char num[64];
        const char *v = NULL;
        if (cJSON_IsString(kv)) {
            v = kv->valuestring;
        } else if (cJSON_IsNumber(kv)) {
            double d = kv->valuedouble;
            if (d >= -ST_MAX_INT && d <= ST_MAX_INT && d == (double)(long long)d)
                snprintf(num, sizeof num, "%lld", (long long)d);
            else
                snprintf(num, sizeof num, "%.17g", d);
            v = num;
        } else {
            continue;
        }
        if (st_add_meta(st, kv->string, v) != FM_OK)
            return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
    }
    return FM_OK;
}

static fm_status st_load_index(fm_st *st, const char *path, char *err, size_t err_size)
{
    char *text = NULL, *dir = NULL, *shard_path = NULL;
    const char **shards = NULL;
    unsigned char *seen = NULL;
    cJSON *root = NULL;
    size_t len = 0;
    fm_status s = st_read_text(path, &text, &len, err, err_size);
    if (s != FM_OK)
        return s;
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        s = st_fail(err, err_size, FM_EINVAL, "%s: not valid JSON (error at byte %zu)", path,
                    end ? (size_t)(end - text) : (size_t)0);
        goto out;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        s = st_fail(err, err_size, FM_EINVAL, "%s: %s", path,
                    wm ? "'weight_map' is not an object" : "missing 'weight_map'");
        goto out;
    }
    s = st_index_metadata(st, path, cJSON_GetObjectItemCaseSensitive(root, "metadata"),
                          err, err_size);
    if (s != FM_OK)
        goto out;

    int n_map = cJSON_GetArraySize(wm);
    shards = malloc((size_t)(n_map ? n_map : 1) * sizeof *shards);
    dir = st_dirname(path);
    if (!shards || !dir) {
        s = st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    int n_sh = 0;
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || st_unsafe_shard_name(e->valuestring)) {
            s = st_fail(err, err_size, FM_EINVAL,
                        "%s: weight_map entry '%s' is not a relative shard file name", path,
                        e->string);
            goto out;
        }
        shards[n_sh++] = e->valuestring;
    }
    qsort(shards, (size_t)n_sh, sizeof *shards, st_str_cmp);
    int u = 0;
    for (int i = 0; i < n_sh; i++)
        if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0)
            shards[u++] = shards[i];

    for (int i = 0; i < u; i++) {
        shard_path = st_join(dir, shards[i]);
        if (!shard_path) {
            s = st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
            goto out;
        }
        s = st_load_file(st, shard_path, err, err_size);
        if (s == FM_ENOTFOUND)
            s = st_fail(err, err_size, FM_ENOTFOUND,
                        "%s: shard '%s' named by weight_map does not exist (%s)", path,
                        shards[i], shard_path);
        free(shard_path);
        shard_path = NULL;
        if (s != FM_OK)
            goto out;
    }
    s = st_index_tensors(st, err, err_size);
    if (s != FM_OK)
        goto out;

    /* Every mapped tensor must be in its shard, and every shard tensor mapped. */
    seen = calloc((size_t)(st->n_tensors ? st->n_tensors : 1), 1);
    if (!seen) {
        s = st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        const fm_st_tensor *t = fm_st_get(st, e->string);
        if (!t) {
            s = st_fail(err, err_size, FM_EINVAL,
                        "%s: weight_map puts tensor '%s' in shard '%s', which has no such tensor",
                        path, e->string, e->valuestring);
            goto out;
        }
        size_t dl = strlen(dir);
        if (strncmp(t->path, dir, dl) != 0 || t->path[dl] != '/' ||
            strcmp(t->path + dl + 1, e->valuestring) != 0) {
            s = st_fail(err, err_size, FM_EINVAL,
                        "%s: weight_map puts tensor '%s' in shard '%s' but it is in %s", path,
                        e->string, e->valuestring, t->path);
            goto out;
        }
        size_t k = (size_t)(t - st->tensors);
        if (seen[k]) {
            s = st_fail(err, err_size, FM_EINVAL, "%s: weight_map lists tensor '%s' twice",
                        path, e->string);
            goto out;
        }
        seen[k] = 1;
    }
    for (int i = 0; i < st->n_tensors; i++) {
        if (!seen[i]) {
            s = st_fail(err, err_size, FM_EINVAL,
                        "%s: tensor '%s' of shard %s is missing from weight_map", path,
                        st->tensors[i].name, st->tensors[i].path);
            goto out;
        }
    }
out:
    free(seen);
    free(shards);
    free(dir);
    cJSON_Delete(root);
    free(text);
    return s;
}

static fm_status st_load_single(fm_st *st, const char *path, char *err, size_t err_size)
{
    fm_status s = st_load_file(st, path, err, err_size);
    return s == FM_OK ? st_index_tensors(st, err, err_size) : s;
}

static int st_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

fm_status fm_st_open(const char *path, fm_st **out, char *err, size_t err_size)
{
    if (!out)
        return st_fail(err, err_size, FM_EINVAL, "fm_st_open: NULL argument");
    *out = NULL;
    if (!path)
        return st_fail(err, err_size, FM_EINVAL, "fm_st_open: NULL argument");
    st_clear_err(err, err_size);

    fm_st *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
    }

    fm_status s;
    struct stat sb;
    if (stat(path, &sb) != 0) {
        int e = errno;
        s = st_fail(err, err_size, e == ENOENT ? FM_ENOTFOUND : FM_EIO, "%s: %s", path,
                    strerror(e));
    } else if (S_ISDIR(sb.st_mode)) {
        char *idx = st_join(path, ST_INDEX_NAME), *one = st_join(path, ST_SINGLE_NAME);
        if (!idx || !one)
            s = st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
        else if (access(idx, F_OK) == 0)
            s = st_load_index(st, idx, err, err_size);
        else if (access(one, F_OK) == 0)
            s = st_load_single(st, one, err, err_size);
        else
            s = st_fail(err, err_size, FM_ENOTFOUND, "%s: directory has neither %s nor %s",
                        path, ST_INDEX_NAME, ST_SINGLE_NAME);
        free(idx);
        free(one);
    } else if (st_ends_with(path, ".json")) {
        s = st_load_index(st, path, err, err_size);
    } else {
        s = st_load_single(st, path, err, err_size);
    }
    if (s != FM_OK) {
        fm_st_close(st);
        return s;
    }
    *out = st;
    return FM_OK;
}

/* ---- writer ---------------------------------------------------------------------- */

static int st_write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Validates the entries and builds the header JSON; bytes[i] gets each size. */
static fm_status st_build_header(const char *path, int n, const fm_st_entry *entries,
                                 int n_meta, const char *const *meta, uint64_t *bytes,
                                 cJSON **out, char *err, size_t err_size)
{
    *out = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
    fm_status s = FM_OK;
    if (n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; m && i < n_meta; i++) {
            if (!meta[2 * i] || !meta[2 * i + 1]) {
                s = st_fail(err, err_size, FM_EINVAL, "%s: metadata pair %d has a NULL string",
                            path, i);
                goto fail;
            }
            if (!cJSON_AddStringToObject(m, meta[2 * i], meta[2 * i + 1]))
                m = NULL;
        }
        if (!m)
            goto nomem;
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const fm_st_entry *e = &entries[i];
        if (!e->name || !e->name[0] || strcmp(e->name, "__metadata__") == 0) {
            s = st_fail(err, err_size, FM_EINVAL, "%s: entry %d has an invalid name", path, i);
            goto fail;
        }
        if ((unsigned)e->dtype >= FM_DTYPE_COUNT || e->ndim < 0 || e->ndim > FM_MAX_DIMS) {
            s = st_fail(err, err_size, FM_EINVAL, "%s: tensor '%s': invalid dtype %d or ndim %d",
                        path, e->name, (int)e->dtype, e->ndim);
            goto fail;
        }
        uint64_t nb = st_dtypes[e->dtype].size;
        for (int d = 0; d < e->ndim; d++) {
            if (e->ne[d] < 0 || (double)e->ne[d] > ST_MAX_INT ||
                __builtin_mul_overflow(nb, (uint64_t)e->ne[d], &nb)) {
                s = st_fail(err, err_size, FM_EINVAL, "%s: tensor '%s': invalid size ne[%d] = %lld",
                            path, e->name, d, (long long)e->ne[d]);
                goto fail;
            }
        }
        if (nb > 0 && !e->data) {
            s = st_fail(err, err_size, FM_EINVAL, "%s: tensor '%s': NULL data", path, e->name);
            goto fail;
        }
        if (off + nb < off || (double)(off + nb) > ST_MAX_INT) {
            s = st_fail(err, err_size, FM_EINVAL, "%s: data too large", path);
            goto fail;
        }
        bytes[i] = nb;
        cJSON *t = cJSON_AddObjectToObject(root, e->name);
        if (!t || !cJSON_AddStringToObject(t, "dtype", st_dtypes[e->dtype].st))
            goto nomem;
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        if (!shape)
            goto nomem;
        for (int d = 0; d < e->ndim; d++) {
            cJSON *v = cJSON_CreateNumber((double)e->ne[d]);
            if (!v || !cJSON_AddItemToArray(shape, v)) {
                cJSON_Delete(v);
                goto nomem;
            }
        }
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        if (!offs)
            goto nomem;
        for (int k = 0; k < 2; k++) {
            cJSON *v = cJSON_CreateNumber((double)(k ? off + nb : off));
            if (!v || !cJSON_AddItemToArray(offs, v)) {
                cJSON_Delete(v);
                goto nomem;
            }
        }
        off += nb;
    }
    *out = root;
    return FM_OK;
nomem:
    s = st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
fail:
    cJSON_Delete(root);
    return s;
}

fm_status fm_st_write(const char *path, int n, const fm_st_entry *entries,
                      int n_meta, const char *const *meta, char *err, size_t err_size)
{
    if (!path || n < 0 || (n > 0 && !entries) || n_meta < 0 || (n_meta > 0 && !meta))
        return st_fail(err, err_size, FM_EINVAL, "fm_st_write: invalid arguments");
    st_clear_err(err, err_size);

    /* Duplicate names would make an ambiguous file. */
    if (n > 1) {
        const char **names = malloc((size_t)n * sizeof *names);
        if (!names)
            return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
        for (int i = 0; i < n; i++)
            names[i] = entries[i].name ? entries[i].name : "";
        qsort(names, (size_t)n, sizeof *names, st_str_cmp);
        for (int i = 1; i < n; i++) {
            if (strcmp(names[i - 1], names[i]) == 0) {
                fm_status s = st_fail(err, err_size, FM_EINVAL,
                                      "%s: tensor name '%s' given twice", path, names[i]);
                free(names);
                return s;
            }
        }
        free(names);
    }

    uint64_t *bytes = calloc((size_t)(n ? n : 1), sizeof *bytes);
    if (!bytes)
        return st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
    cJSON *root = NULL;
    char *json = NULL, *tmp = NULL;
    int fd = -1;
    fm_status s = st_build_header(path, n, entries, n_meta, meta, bytes, &root, err, err_size);
    if (s != FM_OK)
        goto out;
    json = cJSON_PrintUnformatted(root);
    size_t tmp_len = strlen(path) + 32;
    tmp = malloc(tmp_len);
    if (!json || !tmp) {
        s = st_fail(err, err_size, FM_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    snprintf(tmp, tmp_len, "%s.tmp.%ld", path, (long)getpid());

    size_t jlen = strlen(json);
    size_t pad = (8 - jlen % 8) % 8;
    unsigned char len8[8];
    uint64_t hlen = jlen + pad;
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(hlen >> (8 * i));
    static const char spaces[] = "        ";

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        s = st_fail(err, err_size, FM_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    int bad = st_write_all(fd, len8, 8) || st_write_all(fd, json, jlen) ||
              st_write_all(fd, spaces, pad);
    for (int i = 0; !bad && i < n; i++)
        if (bytes[i])
            bad = st_write_all(fd, entries[i].data, (size_t)bytes[i]);
    int e = bad ? errno : 0;
    if (close(fd) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    fd = -1;
    if (!bad && rename(tmp, path) != 0) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        s = st_fail(err, err_size, FM_EIO, "%s: write failed: %s", path, strerror(e ? e : EIO));
        unlink(tmp);
    }
out:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    free(tmp);
    free(json);
    cJSON_Delete(root);
    free(bytes);
    return s;
}
