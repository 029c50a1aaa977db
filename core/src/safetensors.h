/* safetensors.h - read-only, zero-copy access to safetensors checkpoints, and a
 * small writer. Internal to core (and used by tools and tests).
 *
 * Reading: fm_st_open() maps every file read-only (MAP_PRIVATE) and validates its
 * header completely before returning; tensor data is never copied, so a
 * fm_st_tensor's data points into the mapping and lives until fm_st_close().
 * A path may be a single .safetensors file, a sharded checkpoint's
 * model.safetensors.index.json, or a directory holding one of those (the index
 * first, then model.safetensors).
 *
 * Errors: every fallible call returns fm_status and, unless err is NULL or
 * err_size is 0, writes one NUL-terminated line into err naming the file, the
 * tensor and what was expected versus found. Nothing leaks on any error path.
 */
#ifndef FM_SAFETENSORS_H
#define FM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "fathom/fathom.h"

/* Headers longer than this are refused as corrupt (same cap as the reference
 * safetensors implementation). */
#define FM_ST_MAX_HEADER ((uint64_t)100000000)

/* One tensor of an open checkpoint. Every pointer is owned by the fm_st and
 * stays valid until fm_st_close(). */
typedef struct fm_st_tensor {
    const char *name;
    fm_dtype    dtype;
    int         ndim;              /* 0..FM_MAX_DIMS; 0 = scalar (one element) */
    int64_t     ne[FM_MAX_DIMS];   /* outermost first, as in the file; unused dims = 1 */
    const void *data;              /* read-only mapping; little-endian; aligned only as
                                      far as the file's offsets are (the data area starts
                                      8-byte aligned when the header length is a multiple
                                      of 8, and tensors follow each other unpadded) */
    size_t      nbytes;            /* = prod(ne) * element size */
    const char *path;              /* file the tensor came from (a shard for an index) */
} fm_st_tensor;

typedef struct fm_st fm_st;

/* Opens path (file, index or directory, see above). On success *out owns the
 * mappings; on failure *out is NULL. FM_ENOTFOUND: a file (or a shard named by
 * the index) does not exist; FM_EIO: it cannot be read or mapped; FM_EINVAL: a
 * header, index or tensor entry is malformed; FM_ENOMEM. */
fm_status fm_st_open(const char *path, fm_st **out, char *err, size_t err_size);

/* Unmaps every file and frees everything; NULL is a no-op. */
void fm_st_close(fm_st *st);

/* Tensors, sorted by name (strcmp), 0 <= i < fm_st_count(). */
int                 fm_st_count(const fm_st *st);
const fm_st_tensor *fm_st_at(const fm_st *st, int i);

/* NULL if no tensor has this name. */
const fm_st_tensor *fm_st_get(const fm_st *st, const char *name);

/* As fm_st_get, with a message: FM_ENOTFOUND ("<path>: no tensor 'x'"). */
fm_status fm_st_find(const fm_st *st, const char *name, const fm_st_tensor **out,
                     char *err, size_t err_size);

/* Looks a tensor up and checks it: dtype (-1 = any) and shape (ndim dims; an
 * entry of -1 in ne matches any size; ne may be NULL to check ndim only).
 * FM_ENOTFOUND or FM_EINVAL, e.g. "<file>: tensor 'w': expected [64, -1] bf16,
 * found [32, 64] f32". */
fm_status fm_st_expect(const fm_st *st, const char *name, int dtype, int ndim,
                       const int64_t *ne, const fm_st_tensor **out,
                       char *err, size_t err_size);

/* __metadata__ (string -> string). For an index, the index's own "metadata"
 * (numbers rendered as text) comes first, then each shard's __metadata__ in
 * shard order; the first key that matches wins. NULL if absent. Owned by st. */
const char *fm_st_metadata(const fm_st *st, const char *key);
int         fm_st_metadata_count(const fm_st *st);
/* i-th key/value in the order fm_st_metadata searches them. */
void        fm_st_metadata_at(const fm_st *st, int i, const char **key, const char **value);

/* The path given to fm_st_open (owned by st). */
const char *fm_st_path(const fm_st *st);

/* Element size and safetensors dtype name ("F32", "BF16", "F16", "F8_E4M3",
 * "I32"); 0 / "?" for an invalid dtype. */
size_t      fm_st_dtype_size(fm_dtype t);
const char *fm_st_dtype_str(fm_dtype t);

/* ---- writer -------------------------------------------------------------- */

/* One tensor to write: prod(ne[0..ndim)) * element size bytes at data (borrowed;
 * data may be NULL only when that is 0). */
typedef struct fm_st_entry {
    const char *name;
    fm_dtype    dtype;
    int         ndim;
    int64_t     ne[FM_MAX_DIMS];
    const void *data;
} fm_st_entry;

/* Writes a safetensors file: the header (tensors in the given order, data laid
 * out back to back in that order, header padded with spaces to a multiple of 8
 * so the data starts 8-byte aligned), then the data. meta holds n_meta
 * key/value pairs as 2*n_meta strings (key0, value0, key1, ...), written as
 * __metadata__ when n_meta > 0; meta may be NULL when n_meta is 0. Names must be
 * unique and not "__metadata__". On failure no partial file is left behind. */
fm_status fm_st_write(const char *path, int n, const fm_st_entry *entries,
                      int n_meta, const char *const *meta, char *err, size_t err_size);

#endif
