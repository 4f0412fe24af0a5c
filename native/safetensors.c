/* safetensors.c: the .safetensors file parser.
 *
 * A file is an 8-byte little-endian header length, a JSON header, then the
 * data. Nothing in it is trusted: the length is checked against the file and
 * a limit before the JSON is read, and every tensor's bytes must lie inside
 * the data section, match its dtype and shape, and overlap no other; names
 * are unique. safetensors_model.c builds on this to read whole model folders;
 * fuzz_safetensors fuzzes this file alone (with the JSON reader). */
#define _POSIX_C_SOURCE 200809L /* O_CLOEXEC */

#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "exo_defs.h"
#include "json.h"

/* Limits: far above real files, low enough that a corrupt number cannot make
 * the reader allocate or loop absurdly. The header limit is the format's own. */
#define ST_MAX_HEADER (100u << 20)
#define ST_MAX_TENSORS (1u << 20)
#define ST_MAX_NAME 256
#define ST_MAX_DIM (1ll << 40)

/* ---- the parser ------------------------------------------------------------ */

struct exo_st_file {
    void *map;
    size_t map_size;
    exo_json *json;
    exo_st_tensor *t;
    int64_t n;
};

static const struct {
    const char *name;
    int dtype;
    int bytes;
} st_dtypes[] = {
    {"F32", EXO_DTYPE_F32, 4}, {"F16", EXO_DTYPE_F16, 2}, {"BF16", EXO_DTYPE_BF16, 2}, {"F64", -1, 8},
    {"I64", -1, 8},  {"I32", -1, 4},  {"I16", -1, 2},  {"I8", -1, 1},  {"U64", -1, 8}, {"U32", -1, 4},
    {"U16", -1, 2},  {"U8", -1, 1},   {"BOOL", -1, 1}, {"F8_E4M3", -1, 1}, {"F8_E5M2", -1, 1},
};

static int cmp_offset(const void *a, const void *b)
{
    const exo_st_tensor *x = *(const exo_st_tensor *const *)a, *y = *(const exo_st_tensor *const *)b;
    const char *xa = x->data, *ya = y->data;
    return xa < ya ? -1 : xa > ya ? 1 : 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const exo_st_tensor *const *)a)->name, (*(const exo_st_tensor *const *)b)->name);
}

/* One tensor entry of the header: exactly dtype, shape and data_offsets. */
static int parse_entry(const exo_json *j, int32_t m, const char *label, const uint8_t *data, uint64_t data_size,
                       exo_st_tensor *t)
{
    size_t nlen;
    t->name = exo__json_key(j, m, &nlen);
    if (nlen == 0 || nlen > ST_MAX_NAME || strlen(t->name) != nlen)
        return exo__error_set(EXO_EFORMAT, "%s: tensor name of %zu bytes (1..%d, no NUL)", label, nlen, ST_MAX_NAME);
    if (exo__json_kind(j, m) != EXO_JSON_OBJECT)
        return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' is not an object", label, t->name);
    int32_t dt = exo__json_get(j, m, "dtype"), sh = exo__json_get(j, m, "shape"),
            off = exo__json_get(j, m, "data_offsets");
    if (exo__json_count(j, m) != 3 || dt < 0 || sh < 0 || off < 0)
        return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' must have exactly dtype, shape and data_offsets", label,
                             t->name);
    const char *dname = exo__json_str(j, dt, NULL);
    int bytes = 0;
    for (size_t i = 0; dname && i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (!strcmp(st_dtypes[i].name, dname)) t->dtype = st_dtypes[i].dtype, bytes = st_dtypes[i].bytes;
    if (!bytes)
        return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' has unknown dtype %s", label, t->name,
                             dname ? dname : "(not a string)");
    t->dtype_name = dname;
    int64_t nd = exo__json_count(j, sh);
    if (exo__json_kind(j, sh) != EXO_JSON_ARRAY || nd > EXO_ST_MAX_DIMS)
        return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' shape is not an array of at most %d sizes", label, t->name,
                             EXO_ST_MAX_DIMS);
    t->n_dims = (int)nd;
    uint64_t nel = 1;
    int d = 0;
    for (int32_t e = exo__json_first(j, sh); e != EXO_JSON_NONE; e = exo__json_next(j, e), d++) {
        int64_t v;
        if (!exo__json_int(j, e, &v) || v < 0 || v > ST_MAX_DIM)
            return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' dimension %d is not an integer in 0..2^40", label,
                                 t->name, d);
        t->shape[d] = v;
        if (v && nel > (UINT64_MAX >> 4) / (uint64_t)v)
            return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' has too many elements", label, t->name);
        nel *= (uint64_t)v;
    }
    int64_t b, e;
    int32_t ob = exo__json_first(j, off), oe = exo__json_next(j, ob);
    if (exo__json_kind(j, off) != EXO_JSON_ARRAY || exo__json_count(j, off) != 2 || !exo__json_int(j, ob, &b) ||
        !exo__json_int(j, oe, &e))
        return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' data_offsets is not [begin, end]", label, t->name);
    if (b < 0 || e < b || (uint64_t)e > data_size)
        return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' data_offsets [%lld, %lld] are outside the %llu data bytes",
                             label, t->name, (long long)b, (long long)e, (unsigned long long)data_size);
    if ((uint64_t)(e - b) != nel * (uint64_t)bytes)
        return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' holds %lld bytes; its %s shape needs %llu", label, t->name,
                             (long long)(e - b), dname, (unsigned long long)(nel * (uint64_t)bytes));
    t->data = data + b;
    t->size = (size_t)(e - b);
    return 0;
}

int exo__safetensors_parse(const void *buf, size_t size, const char *label, exo_st_file **out)
{
    *out = NULL;
    if (!label) label = "<memory>";
    if (size < 8) return exo__error_set(EXO_EFORMAT, "%s: %zu bytes, too short for a safetensors header", label, size);
    const uint8_t *p = buf;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | p[i];
    if (n > ST_MAX_HEADER || n > size - 8)
        return exo__error_set(EXO_EFORMAT, "%s: header of %llu bytes in a file of %zu (at most %u)", label,
                             (unsigned long long)n, size, ST_MAX_HEADER);
    if (n < 2 || p[8] != '{')
        return exo__error_set(EXO_EFORMAT, "%s: the header does not start with a JSON object", label);
    exo_st_file *f = calloc(1, sizeof *f);
    if (!f) return exo__error_set(EXO_ENOMEM, "%s: out of memory", label);
    char what[300];
    snprintf(what, sizeof what, "%s: header", label);
    int rc = exo__json_parse((const char *)p + 8, (size_t)n, what, &f->json);
    const uint8_t *data = p + 8 + n;
    uint64_t data_size = size - 8 - n;
    exo_st_tensor **order = NULL;
    if (rc) goto fail;
    if (exo__json_kind(f->json, 0) != EXO_JSON_OBJECT) {
        rc = exo__error_set(EXO_EFORMAT, "%s: the header is not a JSON object", label);
        goto fail;
    }
    int64_t count = exo__json_count(f->json, 0);
    if (count > ST_MAX_TENSORS) {
        rc = exo__error_set(EXO_EFORMAT, "%s: %lld tensors, over %u", label, (long long)count, ST_MAX_TENSORS);
        goto fail;
    }
    f->t = calloc((size_t)count + 1, sizeof *f->t);
    order = calloc((size_t)count + 1, sizeof *order);
    if (!f->t || !order) {
        rc = exo__error_set(EXO_ENOMEM, "%s: out of memory", label);
        goto fail;
    }
    for (int32_t m = exo__json_first(f->json, 0); m != EXO_JSON_NONE; m = exo__json_next(f->json, m)) {
        const char *key = exo__json_key(f->json, m, NULL);
        if (!strcmp(key, "__metadata__")) {
            /* Free-form, but the format says string to string. */
            if (exo__json_kind(f->json, m) != EXO_JSON_OBJECT) {
                rc = exo__error_set(EXO_EFORMAT, "%s: __metadata__ is not an object", label);
                goto fail;
            }
            for (int32_t v = exo__json_first(f->json, m); v != EXO_JSON_NONE; v = exo__json_next(f->json, v))
                if (exo__json_kind(f->json, v) != EXO_JSON_STRING) {
                    rc = exo__error_set(EXO_EFORMAT, "%s: __metadata__ value '%s' is not a string", label,
                                        exo__json_key(f->json, v, NULL));
                    goto fail;
                }
            continue;
        }
        exo_st_tensor *t = &f->t[f->n];
        if ((rc = parse_entry(f->json, m, label, data, data_size, t))) goto fail;
        order[f->n++] = t;
    }
    qsort(order, (size_t)f->n, sizeof *order, cmp_name);
    for (int64_t i = 1; i < f->n; i++)
        if (!strcmp(order[i - 1]->name, order[i]->name)) {
            rc = exo__error_set(EXO_EFORMAT, "%s: tensor '%s' appears twice", label, order[i]->name);
            goto fail;
        }
    qsort(order, (size_t)f->n, sizeof *order, cmp_offset);
    for (int64_t i = 1; i < f->n; i++) {
        const exo_st_tensor *a = order[i - 1], *b = order[i];
        if (a->size && b->size && (const char *)a->data + a->size > (const char *)b->data) {
            rc = exo__error_set(EXO_EFORMAT, "%s: tensors '%s' and '%s' overlap", label, a->name, b->name);
            goto fail;
        }
    }
    free(order);
    *out = f;
    return 0;
fail:
    free(order);
    exo__safetensors_close(f);
    return rc;
}

int exo__safetensors_map(const char *path, size_t max, void **map, size_t *size)
{
    *map = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return exo__error_set(EXO_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return exo__error_set(EXO_EIO, "%s: not a readable regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return exo__error_set(EXO_EFORMAT, "%s: %lld bytes, over the %zu this file may have", path,
                             (long long)st.st_size, max);
    }
    *size = (size_t)st.st_size;
    if (*size) {
        void *m = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            return exo__error_set(EXO_EIO, "%s: cannot mmap: %s", path, strerror(e));
        }
        *map = m;
    }
    close(fd);
    return 0;
}

int exo__safetensors_open(const char *path, exo_st_file **out)
{
    *out = NULL;
    void *map;
    size_t size;
    int rc = exo__safetensors_map(path, SIZE_MAX, &map, &size);
    if (rc) return rc;
    rc = exo__safetensors_parse(map, size, path, out);
    if (rc) {
        if (map) munmap(map, size);
        return rc;
    }
    (*out)->map = map;
    (*out)->map_size = size;
    return 0;
}

void exo__safetensors_close(exo_st_file *f)
{
    if (!f) return;
    exo__json_free(f->json);
    free(f->t);
    if (f->map) munmap(f->map, f->map_size);
    free(f);
}

int64_t exo__safetensors_count(const exo_st_file *f)
{
    return f ? f->n : 0;
}

const exo_st_tensor *exo__safetensors_at(const exo_st_file *f, int64_t i)
{
    return f && i >= 0 && i < f->n ? &f->t[i] : NULL;
}

