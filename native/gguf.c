/* gguf.c: the GGUF v2/v3 reader and the v3 writer.
 *
 * Reader: the file is mapped read-only (or a caller's buffer is used) and one
 * pass walks header, key/value pairs and tensor infos through a bounds-checked
 * cursor. Nothing read from the file is trusted: every count is checked against
 * a named limit and against the bytes left before anything is allocated for it,
 * every string length against the bytes left, every type against dtype.c's table,
 * and every tensor's shape, dtype, offset and size against the data section.
 * Only then are names copied (NUL-terminated, into one arena), hash indexes
 * built for keys and tensor names, and an offset index built for each string
 * array so that element j is found in O(1). After a successful open no accessor
 * needs to re-check the file.
 *
 * Writer: keys are serialised as they are added; tensors are copied and laid
 * out back to back, each padded to the alignment, which is the layout
 * llama.cpp's loader expects (it checks every offset against that layout). */
#define _POSIX_C_SOURCE 200809L /* O_CLOEXEC, strdup */

#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dtype.h"
#include "error.h"
#include "grow.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads little-endian GGUF with plain loads; add byte swapping for this host"
#endif

/* Limits. Each is far above what real models use, and low enough that a
 * corrupt count cannot make the reader allocate or loop absurdly. */
#define GGUF_MAGIC 0x46554747u              /* "GGUF" read as a little-endian u32 */
#define GGUF_HEADER_SIZE 24                 /* magic, version, tensor_count, kv_count */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ALIGNMENT (64u << 10)      /* larger than any page size in use */
#define GGUF_MAX_KVS (1u << 16)             /* models carry tens of keys */
#define GGUF_MAX_TENSORS (1u << 20)         /* the largest MoE models have a few thousand */
#define GGUF_MAX_KEY_LEN 65535              /* the GGUF spec's own limit */
#define GGUF_MAX_STRING_LEN (16u << 20)     /* one string value; chat templates are KiBs, some
                                               old files embed a tokenizer.json of a few MiB */
#define GGUF_MAX_ARRAY_STRING_LEN (1u << 20) /* one element of a string array (a token, a merge) */
#define GGUF_MAX_ARRAY_LEN (1u << 26)       /* vocabularies and merge lists are ~10^5 */
#define GGUF_MAX_TENSOR_NAME 256            /* reader; llama.cpp itself allows 63 */
#define GGUF_WRITER_MAX_TENSOR_NAME 63      /* writer: stay loadable by llama.cpp */

/* Smallest encodings, used to reject counts that cannot fit in the bytes left
 * before allocating for them: a kv is key length (8) + a 1-byte key + type (4)
 * + a 1-byte value; a tensor info is name length (8) + a 1-byte name + n_dims
 * (4) + one dim (8) + type (4) + offset (8). */
#define GGUF_MIN_KV_BYTES 14u
#define GGUF_MIN_TENSOR_INFO_BYTES 33u

/* A type number read from a file or given to the writer, looked up in
 * dtype.c's table (NULL when GGUF never defined it). */
static const exo_dtype_info *dtype_named(uint32_t t)
{
    return t <= INT32_MAX ? exo__dtype_info_get((int)t) : NULL;
}

/* The same, only for a type a model may hold (exo has kernels for it). */
static const exo_dtype_info *dtype_loadable(uint32_t t)
{
    const exo_dtype_info *d = dtype_named(t);
    return d && d->loadable ? d : NULL;
}

static const char *const value_type_names[] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool", "string", "array", "uint64", "int64", "float64",
};
#define VALUE_TYPE_COUNT (sizeof value_type_names / sizeof value_type_names[0])

static const char *type_name(uint32_t t)
{
    return t < VALUE_TYPE_COUNT ? value_type_names[t] : "unknown";
}

/* Size of a fixed-size value type, 0 for string/array/unknown. */
static uint32_t value_size(uint32_t t)
{
    switch (t) {
    case EXO_GGUF_UINT8: case EXO_GGUF_INT8: case EXO_GGUF_BOOL: return 1;
    case EXO_GGUF_UINT16: case EXO_GGUF_INT16: return 2;
    case EXO_GGUF_UINT32: case EXO_GGUF_INT32: case EXO_GGUF_FLOAT32: return 4;
    case EXO_GGUF_UINT64: case EXO_GGUF_INT64: case EXO_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static uint64_t load_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* FNV-1a: short keys, no adversarial concern beyond what probing bounds. */
static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static bool is_pow2(uint64_t x)
{
    return x && !(x & (x - 1));
}

/* ---------------------------------------------------------------- reader */

struct kv {
    const char *key;          /* into the names arena, NUL-terminated */
    const uint8_t *key_raw;   /* into the file, until the arena is built */
    uint32_t key_len;
    uint32_t type;
    uint32_t elem_type;       /* arrays only */
    uint64_t n;               /* arrays: elements; strings: bytes */
    const uint8_t *val;       /* scalar value, string bytes, or first array element */
    const uint8_t *raw;       /* the value as serialised (after the type), for copying */
    uint64_t raw_len;
    uint64_t *str_off;        /* string arrays: offset of element j's length field from val */
};

struct exo_gguf {
    const uint8_t *base;
    size_t size;
    void *map;                /* NULL when over a caller's buffer */
    uint32_t version;
    size_t alignment;
    uint64_t data_offset;

    int64_t n_kv;
    struct kv *kvs;
    int64_t n_tensors;
    exo_gguf_tensor *tensors;
    const uint8_t **tensor_name_raw; /* into the file, until the arena is built */
    uint32_t *tensor_name_len;

    char *names;              /* one arena for every key and tensor name */
    uint32_t *key_slots;      /* open addressing, index + 1, 0 = empty */
    size_t key_mask;
    uint32_t *tensor_slots;
    size_t tensor_mask;

    /* A split model (llama.cpp's gguf-split): this is part 1, which holds the
     * metadata; parts[0..n_parts-2] are parts 2..n_parts, whose tensors were
     * moved into this one's table (their names and data stay in their own
     * arenas and mappings). n_parts is 1 for a single file. */
    exo_gguf **parts;
    uint32_t n_parts;
    size_t total_size;
};

/* A bounds-checked cursor over the file; label is the path for messages. */
struct cursor {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    const char *label;
};

static bool has(const struct cursor *c, uint64_t n)
{
    return n <= c->size - c->pos;
}

/* Prefixes every parse error with the path (or "<memory>"). */
EXO_PRINTF(3, 4)
static int fail(const struct cursor *c, int code, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return exo__error_set(code, "%s: %s", c->label, msg);
}

EXO_PRINTF(3, 4)
static int truncated(const struct cursor *c, uint64_t need, const char *what_fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, what_fmt);
    vsnprintf(what, sizeof what, what_fmt, ap);
    va_end(ap);
    return fail(c, EXO_EFORMAT,
                "file truncated: %s at offset %llu needs %llu bytes, only %llu left (file size %llu)",
                what, (unsigned long long)c->pos, (unsigned long long)need,
                (unsigned long long)(c->size - c->pos), (unsigned long long)c->size);
}

/* Renders file bytes for a message: at most ~80 characters, non-printables
 * escaped, so a corrupt name cannot garble the error text. */
static const char *printable(const uint8_t *s, uint64_t n, char *buf, size_t cap)
{
    size_t o = 0;
    uint64_t i;
    for (i = 0; i < n && o + 8 < cap && i < 80; i++) {
        uint8_t ch = s[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\') buf[o++] = (char)ch;
        else o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", ch);
    }
    if (i < n && o + 4 < cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

static int read_u32(struct cursor *c, uint32_t *v)
{
    if (!has(c, 4)) return -1;
    *v = load_u32(c->base + c->pos);
    c->pos += 4;
    return 0;
}

static int read_u64(struct cursor *c, uint64_t *v)
{
    if (!has(c, 8)) return -1;
    *v = load_u64(c->base + c->pos);
    c->pos += 8;
    return 0;
}

/* Reads a gguf string (u64 length + bytes) with length <= max. `what` and
 * `subject` only shape the error message. */
static int read_str(struct cursor *c, uint64_t max, const char *what, const char *subject,
                    const uint8_t **s, uint64_t *len)
{
    uint64_t n;
    if (read_u64(c, &n)) return truncated(c, 8, "length of %s%s", what, subject);
    if (n > max)
        return fail(c, EXO_EFORMAT, "%s%s has length %llu at offset %llu, over the limit of %llu",
                    what, subject, (unsigned long long)n, (unsigned long long)(c->pos - 8),
                    (unsigned long long)max);
    if (!has(c, n)) return truncated(c, n, "%s%s", what, subject);
    *s = c->base + c->pos;
    *len = n;
    c->pos += n;
    return 0;
}

/* Reads one value of type t for the key described by kname into kv. Arrays of
 * arrays are refused: no model uses them and they would need a recursive index. */
static int read_value(struct cursor *c, struct kv *kv, uint32_t t, const char *kname)
{
    uint32_t sz = value_size(t);
    if (sz) {
        if (!has(c, sz))
            return truncated(c, sz, "%s value of key '%s'", type_name(t), kname);
        kv->val = c->base + c->pos;
        if (t == EXO_GGUF_BOOL && *kv->val > 1)
            return fail(c, EXO_EFORMAT, "key '%s': bool value %u at offset %llu is not 0 or 1",
                        kname, *kv->val, (unsigned long long)c->pos);
        c->pos += sz;
        return 0;
    }
    if (t == EXO_GGUF_STRING) {
        uint64_t n;
        if (read_u64(c, &n)) return truncated(c, 8, "string length of key '%s'", kname);
        if (n > GGUF_MAX_STRING_LEN)
            return fail(c, EXO_EFORMAT, "key '%s': string length %llu is over the limit of %u",
                        kname, (unsigned long long)n, GGUF_MAX_STRING_LEN);
        if (!has(c, n)) return truncated(c, n, "string value of key '%s'", kname);
        kv->val = c->base + c->pos;
        kv->n = n;
        c->pos += n;
        return 0;
    }
    if (t != EXO_GGUF_ARRAY)
        return fail(c, EXO_EFORMAT, "key '%s' has unknown value type %u at offset %llu",
                    kname, t, (unsigned long long)(c->pos - 4));

    uint32_t et;
    uint64_t n;
    if (read_u32(c, &et)) return truncated(c, 4, "array element type of key '%s'", kname);
    if (et == EXO_GGUF_ARRAY)
        return fail(c, EXO_ENOTSUP, "key '%s' is an array of arrays, which exo does not support",
                    kname);
    if (et != EXO_GGUF_STRING && !value_size(et))
        return fail(c, EXO_EFORMAT, "key '%s' is an array of unknown element type %u (offset %llu)",
                    kname, et, (unsigned long long)(c->pos - 4));
    if (read_u64(c, &n)) return truncated(c, 8, "array length of key '%s'", kname);
    if (n > GGUF_MAX_ARRAY_LEN)
        return fail(c, EXO_EFORMAT, "key '%s': array length %llu is over the limit of %u",
                    kname, (unsigned long long)n, GGUF_MAX_ARRAY_LEN);
    kv->elem_type = et;
    kv->n = n;
    kv->val = c->base + c->pos;

    if (et != EXO_GGUF_STRING) {
        uint32_t esz = value_size(et);
        uint64_t bytes = n * esz; /* n <= 2^26, esz <= 8: no overflow */
        if (!has(c, bytes))
            return truncated(c, bytes, "%llu %s elements of array '%s'", (unsigned long long)n,
                             type_name(et), kname);
        if (et == EXO_GGUF_BOOL) {
            for (uint64_t j = 0; j < n; j++)
                if (kv->val[j] > 1)
                    return fail(c, EXO_EFORMAT, "key '%s': bool element %llu is %u, not 0 or 1",
                                kname, (unsigned long long)j, kv->val[j]);
        }
        c->pos += bytes;
        return 0;
    }

    /* Every element is at least its 8-byte length, so this bounds the index. */
    if (!has(c, n * 8))
        return truncated(c, n * 8, "%llu string elements of array '%s'", (unsigned long long)n,
                         kname);
    if (n) {
        kv->str_off = malloc(n * sizeof *kv->str_off);
        if (!kv->str_off)
            return fail(c, EXO_ENOMEM, "out of memory indexing %llu strings of array '%s'",
                        (unsigned long long)n, kname);
    }
    uint64_t start = c->pos;
    for (uint64_t j = 0; j < n; j++) {
        uint64_t len;
        kv->str_off[j] = c->pos - start;
        if (read_u64(c, &len))
            return truncated(c, 8, "length of string element %llu of array '%s'",
                             (unsigned long long)j, kname);
        if (len > GGUF_MAX_ARRAY_STRING_LEN)
            return fail(c, EXO_EFORMAT,
                        "string element %llu of array '%s' has length %llu, over the limit of %u",
                        (unsigned long long)j, kname, (unsigned long long)len,
                        GGUF_MAX_ARRAY_STRING_LEN);
        if (!has(c, len))
            return truncated(c, len, "string element %llu of array '%s'", (unsigned long long)j,
                             kname);
        c->pos += len;
    }
    return 0;
}

static int check_name_bytes(const struct cursor *c, const uint8_t *s, uint64_t n,
                            const char *what, uint64_t at)
{
    char buf[400];
    if (n == 0)
        return fail(c, EXO_EFORMAT, "empty %s at offset %llu", what, (unsigned long long)at);
    if (memchr(s, 0, n))
        return fail(c, EXO_EFORMAT, "%s '%s' at offset %llu contains a NUL byte", what,
                    printable(s, n, buf, sizeof buf), (unsigned long long)at);
    return 0;
}

static int read_kvs(struct cursor *c, exo_gguf *g)
{
    for (int64_t i = 0; i < g->n_kv; i++) {
        struct kv *kv = &g->kvs[i];
        const uint8_t *k;
        uint64_t klen, at = c->pos;
        char subj[64], kname[400];
        uint32_t t;
        snprintf(subj, sizeof subj, " %lld", (long long)i);
        int rc = read_str(c, GGUF_MAX_KEY_LEN, "key", subj, &k, &klen);
        if (rc) return rc;
        rc = check_name_bytes(c, k, klen, "key", at);
        if (rc) return rc;
        kv->key_raw = k;
        kv->key_len = (uint32_t)klen;
        printable(k, klen, kname, sizeof kname);
        if (read_u32(c, &t)) return truncated(c, 4, "value type of key '%s'", kname);
        kv->type = t;
        kv->raw = c->base + c->pos;
        rc = read_value(c, kv, t, kname);
        if (rc) return rc;
        kv->raw_len = (uint64_t)(c->base + c->pos - kv->raw);
    }
    return 0;
}

static int read_tensor_infos(struct cursor *c, exo_gguf *g)
{
    for (int64_t i = 0; i < g->n_tensors; i++) {
        exo_gguf_tensor *t = &g->tensors[i];
        const uint8_t *nm;
        uint64_t nlen, at = c->pos;
        uint32_t nd, type;
        char subj[64], tname[400];
        snprintf(subj, sizeof subj, " %lld", (long long)i);
        int rc = read_str(c, GGUF_MAX_TENSOR_NAME, "name of tensor", subj, &nm, &nlen);
        if (rc) return rc;
        rc = check_name_bytes(c, nm, nlen, "tensor name", at);
        if (rc) return rc;
        g->tensor_name_raw[i] = nm;
        g->tensor_name_len[i] = (uint32_t)nlen;
        printable(nm, nlen, tname, sizeof tname);

        if (read_u32(c, &nd)) return truncated(c, 4, "n_dims of tensor '%s'", tname);
        if (nd < 1 || nd > EXO_GGUF_MAX_DIMS)
            return fail(c, EXO_EFORMAT, "tensor '%s' has n_dims %u, expected 1..%d", tname, nd,
                        EXO_GGUF_MAX_DIMS);
        t->n_dims = (int)nd;
        for (int d = 0; d < EXO_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        uint64_t nel = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t ne;
            if (read_u64(c, &ne)) return truncated(c, 8, "ne[%u] of tensor '%s'", d, tname);
            if (ne == 0 || ne > (uint64_t)INT64_MAX)
                return fail(c, EXO_EFORMAT, "tensor '%s' has ne[%u] = %llu, expected 1..2^63-1",
                            tname, d, (unsigned long long)ne);
            if (nel > (uint64_t)INT64_MAX / ne)
                return fail(c, EXO_EFORMAT, "tensor '%s': element count overflows at ne[%u] = %llu",
                            tname, d, (unsigned long long)ne);
            nel *= ne;
            t->ne[d] = (int64_t)ne;
        }

        if (read_u32(c, &type)) return truncated(c, 4, "type of tensor '%s'", tname);
        const exo_dtype_info *di = dtype_loadable(type);
        if (!di) {
            const exo_dtype_info *named = dtype_named(type);
            if (named)
                return fail(c, EXO_ENOTSUP, "unsupported tensor type %u (%s) in tensor '%s'", type,
                            named->name, tname);
            return fail(c, EXO_EFORMAT, "unknown tensor type %u in tensor '%s'", type, tname);
        }
        t->dtype = (int)type;
        if ((uint64_t)t->ne[0] % di->block_size)
            return fail(c, EXO_EFORMAT,
                        "tensor '%s': ne[0] = %lld is not a multiple of the %s block size %u",
                        tname, (long long)t->ne[0], di->name, di->block_size);
        /* ne[0] is a whole number of blocks, so the element count is too */
        uint64_t blocks = nel / di->block_size;
        if (blocks > (uint64_t)SIZE_MAX / di->type_size)
            return fail(c, EXO_EFORMAT, "tensor '%s': data size of %llu %s blocks overflows", tname,
                        (unsigned long long)blocks, di->name);
        t->size = (size_t)(blocks * di->type_size);

        if (read_u64(c, &t->offset)) return truncated(c, 8, "offset of tensor '%s'", tname);
    }
    return 0;
}

/* Copies every key and tensor name into one arena: callers get NUL-terminated
 * names (the file's are not) that live exactly as long as the exo_gguf. */
static int build_names(const struct cursor *c, exo_gguf *g)
{
    uint64_t total = 0;
    for (int64_t i = 0; i < g->n_kv; i++) total += g->kvs[i].key_len + 1u;
    for (int64_t i = 0; i < g->n_tensors; i++) total += g->tensor_name_len[i] + 1u;
    if (total == 0) return 0;
    g->names = malloc(total);
    if (!g->names) return fail(c, EXO_ENOMEM, "out of memory copying %llu bytes of names",
                               (unsigned long long)total);
    char *p = g->names;
    for (int64_t i = 0; i < g->n_kv; i++) {
        memcpy(p, g->kvs[i].key_raw, g->kvs[i].key_len);
        p[g->kvs[i].key_len] = '\0';
        g->kvs[i].key = p;
        p += g->kvs[i].key_len + 1;
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        memcpy(p, g->tensor_name_raw[i], g->tensor_name_len[i]);
        p[g->tensor_name_len[i]] = '\0';
        g->tensors[i].name = p;
        p += g->tensor_name_len[i] + 1;
    }
    return 0;
}

/* Open-addressing table of n entries at load factor <= 1/2. */
static uint32_t *table_new(int64_t n, size_t *mask)
{
    size_t cap = 8;
    while (cap < (size_t)n * 2) cap *= 2;
    *mask = cap - 1;
    return calloc(cap, sizeof(uint32_t));
}

/* Finds name; returns its slot (holding 0 when absent). */
static size_t table_slot(const uint32_t *slots, size_t mask, const char *name,
                         const char *(*name_of)(const exo_gguf *, uint32_t), const exo_gguf *g)
{
    size_t i = (size_t)hash_str(name) & mask;
    while (slots[i] && strcmp(name_of(g, slots[i] - 1), name) != 0) i = (i + 1) & mask;
    return i;
}

static const char *kv_name_of(const exo_gguf *g, uint32_t i)
{
    return g->kvs[i].key;
}

static const char *tensor_name_of(const exo_gguf *g, uint32_t i)
{
    return g->tensors[i].name;
}

static int build_indexes(const struct cursor *c, exo_gguf *g)
{
    char buf[400];
    g->key_slots = table_new(g->n_kv, &g->key_mask);
    g->tensor_slots = table_new(g->n_tensors, &g->tensor_mask);
    if (!g->key_slots || !g->tensor_slots)
        return fail(c, EXO_ENOMEM, "out of memory building the key and tensor indexes");
    for (int64_t i = 0; i < g->n_kv; i++) {
        size_t s = table_slot(g->key_slots, g->key_mask, g->kvs[i].key, kv_name_of, g);
        if (g->key_slots[s])
            return fail(c, EXO_EFORMAT, "duplicate key '%s' (entries %u and %lld)",
                        printable((const uint8_t *)g->kvs[i].key, g->kvs[i].key_len, buf, sizeof buf),
                        g->key_slots[s] - 1, (long long)i);
        g->key_slots[s] = (uint32_t)i + 1;
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        size_t s = table_slot(g->tensor_slots, g->tensor_mask, g->tensors[i].name, tensor_name_of, g);
        if (g->tensor_slots[s])
            return fail(c, EXO_EFORMAT, "duplicate tensor name '%s' (tensors %u and %lld)",
                        printable((const uint8_t *)g->tensors[i].name, g->tensor_name_len[i], buf,
                                  sizeof buf),
                        g->tensor_slots[s] - 1, (long long)i);
        g->tensor_slots[s] = (uint32_t)i + 1;
    }
    return 0;
}

static int read_alignment(const struct cursor *c, exo_gguf *g)
{
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t i = exo__gguf_find_key(g, "general.alignment");
    if (i < 0) return 0;
    const struct kv *kv = &g->kvs[i];
    if (kv->type != EXO_GGUF_UINT32)
        return fail(c, EXO_EFORMAT, "general.alignment has type %s, expected uint32",
                    type_name(kv->type));
    uint32_t a = load_u32(kv->val);
    if (!is_pow2(a) || a > GGUF_MAX_ALIGNMENT)
        return fail(c, EXO_EFORMAT, "general.alignment is %u, expected a power of two in 1..%u", a,
                    GGUF_MAX_ALIGNMENT);
    g->alignment = a;
    return 0;
}

struct span {
    uint64_t offset;
    uint64_t size;
    uint32_t index;
};

static int cmp_span(const void *a, const void *b)
{
    uint64_t oa = ((const struct span *)a)->offset, ob = ((const struct span *)b)->offset;
    return oa < ob ? -1 : oa > ob;
}

/* Places the data section and checks every tensor's range lies inside the
 * file, aligned, and disjoint from the others. */
static int place_tensors(const struct cursor *c, exo_gguf *g)
{
    uint64_t a = g->alignment;
    uint64_t pos = c->pos;
    if (pos > UINT64_MAX - (a - 1))
        return fail(c, EXO_EFORMAT, "data section offset overflows");
    g->data_offset = (pos + a - 1) & ~(a - 1);
    if (g->n_tensors == 0) return 0;
    if (g->data_offset > c->size)
        return fail(c, EXO_EFORMAT,
                    "data section starts at %llu, past the end of the file (size %llu)",
                    (unsigned long long)g->data_offset, (unsigned long long)c->size);
    uint64_t avail = c->size - g->data_offset;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        exo_gguf_tensor *t = &g->tensors[i];
        if (t->offset % a)
            return fail(c, EXO_EFORMAT, "tensor '%s' offset %llu is not a multiple of the alignment %llu",
                        t->name, (unsigned long long)t->offset, (unsigned long long)a);
        if (t->offset >= avail)
            return fail(c, EXO_EFORMAT,
                        "tensor '%s' offset %llu is past the end of the data section (%llu bytes, file size %llu)",
                        t->name, (unsigned long long)t->offset, (unsigned long long)avail,
                        (unsigned long long)c->size);
        if (t->size > avail - t->offset)
            return fail(c, EXO_EFORMAT,
                        "tensor '%s' data [%llu, +%llu) extends past the end of the file "
                        "(data section has %llu bytes, file size %llu)",
                        t->name, (unsigned long long)t->offset, (unsigned long long)t->size,
                        (unsigned long long)avail, (unsigned long long)c->size);
        t->data = c->base + g->data_offset + t->offset;
    }

    struct span *sp = malloc((size_t)g->n_tensors * sizeof *sp);
    if (!sp) return fail(c, EXO_ENOMEM, "out of memory sorting %lld tensors", (long long)g->n_tensors);
    for (int64_t i = 0; i < g->n_tensors; i++)
        sp[i] = (struct span){g->tensors[i].offset, g->tensors[i].size, (uint32_t)i};
    qsort(sp, (size_t)g->n_tensors, sizeof *sp, cmp_span);
    int rc = 0;
    for (int64_t i = 1; i < g->n_tensors; i++) {
        /* both ranges are inside the file, so offset + size cannot overflow */
        if (sp[i - 1].offset + sp[i - 1].size > sp[i].offset) {
            const exo_gguf_tensor *p = &g->tensors[sp[i - 1].index], *t = &g->tensors[sp[i].index];
            rc = fail(c, EXO_EFORMAT, "tensors '%s' [%llu, +%zu) and '%s' [%llu, +%zu) overlap",
                      p->name, (unsigned long long)p->offset, p->size, t->name,
                      (unsigned long long)t->offset, t->size);
            break;
        }
    }
    free(sp);
    return rc;
}

static int parse(exo_gguf *g, const char *label)
{
    struct cursor c = {g->base, g->size, 0, label};
    uint32_t magic, version;
    uint64_t n_tensors, n_kv;

    if (g->size < GGUF_HEADER_SIZE)
        return fail(&c, EXO_EFORMAT, "file too short for a GGUF header: %llu bytes, need %d",
                    (unsigned long long)g->size, GGUF_HEADER_SIZE);
    read_u32(&c, &magic);
    if (magic != GGUF_MAGIC) {
        char buf[40];
        return fail(&c, EXO_EFORMAT, "bad magic '%s', expected 'GGUF' (not a GGUF file)",
                    printable(g->base, 4, buf, sizeof buf));
    }
    read_u32(&c, &version);
    if (version != 2 && version != 3) {
        uint32_t swapped = __builtin_bswap32(version);
        if (swapped == 2 || swapped == 3)
            return fail(&c, EXO_ENOTSUP,
                        "unsupported GGUF version %u (version %u byte-swapped: the file is big-endian); "
                        "only little-endian versions 2 and 3 are supported", version, swapped);
        return fail(&c, EXO_ENOTSUP, "unsupported GGUF version %u, expected 2 or 3", version);
    }
    g->version = version;
    read_u64(&c, &n_tensors);
    read_u64(&c, &n_kv);
    if (n_tensors > GGUF_MAX_TENSORS)
        return fail(&c, EXO_EFORMAT, "tensor_count %llu is over the limit of %u",
                    (unsigned long long)n_tensors, GGUF_MAX_TENSORS);
    if (n_kv > GGUF_MAX_KVS)
        return fail(&c, EXO_EFORMAT, "kv_count %llu is over the limit of %u",
                    (unsigned long long)n_kv, GGUF_MAX_KVS);
    uint64_t min_bytes = n_kv * GGUF_MIN_KV_BYTES + n_tensors * GGUF_MIN_TENSOR_INFO_BYTES;
    if (!has(&c, min_bytes))
        return fail(&c, EXO_EFORMAT,
                    "kv_count %llu and tensor_count %llu need at least %llu bytes, only %llu left "
                    "(file truncated or counts corrupt)",
                    (unsigned long long)n_kv, (unsigned long long)n_tensors,
                    (unsigned long long)min_bytes, (unsigned long long)(c.size - c.pos));
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    if (n_kv && !(g->kvs = calloc(n_kv, sizeof *g->kvs)))
        return fail(&c, EXO_ENOMEM, "out of memory for %llu keys", (unsigned long long)n_kv);
    if (n_tensors) {
        g->tensors = calloc(n_tensors, sizeof *g->tensors);
        g->tensor_name_raw = calloc(n_tensors, sizeof *g->tensor_name_raw);
        g->tensor_name_len = calloc(n_tensors, sizeof *g->tensor_name_len);
        if (!g->tensors || !g->tensor_name_raw || !g->tensor_name_len)
            return fail(&c, EXO_ENOMEM, "out of memory for %llu tensors", (unsigned long long)n_tensors);
    }

    int rc;
    if ((rc = read_kvs(&c, g))) return rc;
    if ((rc = read_tensor_infos(&c, g))) return rc;
    if ((rc = build_names(&c, g))) return rc;
    if ((rc = build_indexes(&c, g))) return rc;
    if ((rc = read_alignment(&c, g))) return rc;
    if ((rc = place_tensors(&c, g))) return rc;
    free(g->tensor_name_raw);
    free(g->tensor_name_len);
    g->tensor_name_raw = NULL;
    g->tensor_name_len = NULL;
    return 0;
}

static int open_common(exo_gguf *g, const char *label, exo_gguf **out)
{
    int rc = parse(g, label);
    if (rc) {
        exo__gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

int exo__gguf_open_memory(const void *data, size_t size, exo_gguf **out)
{
    if (!out) return exo__error_set(EXO_EINVAL, "exo__gguf_open_memory: out is NULL");
    *out = NULL;
    if (!data && size) return exo__error_set(EXO_EINVAL, "exo__gguf_open_memory: data is NULL");
    exo_gguf *g = calloc(1, sizeof *g);
    if (!g) return exo__error_set(EXO_ENOMEM, "<memory>: out of memory");
    g->base = data ? data : (const uint8_t *)"";
    g->size = size;
    return open_common(g, "<memory>", out);
}

/* Maps and validates one file (one part of a split model, or a whole one).
 * header_only: only the header will be read now (parts 2..N of a split model,
 * whose tensors a shard may never touch), so the kernel is asked not to read
 * ahead of the pages the parse faults in (8 MB per part here otherwise). */
static int open_file(const char *path, bool header_only, exo_gguf **out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return exo__error_set(EXO_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return exo__error_set(EXO_EIO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return exo__error_set(EXO_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return exo__error_set(EXO_ENOMEM, "%s: file of %lld bytes does not fit in memory", path,
                             (long long)st.st_size);
    }
    size_t size = (size_t)st.st_size;
    if (size < GGUF_HEADER_SIZE) {
        close(fd);
        return exo__error_set(EXO_EFORMAT, "%s: file too short for a GGUF header: %zu bytes, need %d",
                             path, size, GGUF_HEADER_SIZE);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return exo__error_set(EXO_EIO, "%s: cannot mmap: %s", path, strerror(e));
    exo_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        munmap(map, size);
        return exo__error_set(EXO_ENOMEM, "%s: out of memory", path);
    }
    g->map = map;
    g->base = map;
    g->size = size;
    g->n_parts = 1;
    g->total_size = size;
    if (header_only) (void)posix_madvise(map, size, POSIX_MADV_RANDOM); /* a hint: failure changes nothing */
    int rc = open_common(g, path, out);
    if (header_only && rc == 0) (void)posix_madvise(map, size, POSIX_MADV_NORMAL); /* a shard's reads stream again */
    return rc;
}

/* ---------------------------------------------------------------- split models
 *
 * llama.cpp's gguf-split writes PREFIX-00001-of-0000N.gguf ... : each part is a
 * complete GGUF with split.no (0-based), split.count and split.tensors.count;
 * part 1 has the model's metadata, every part some tensors. Each part is
 * mapped and validated as a single file, then the parts' tensors are joined
 * into part 1's table, so nothing above this reader knows the model is split.
 * Mapping a part costs address space, not memory: a shard's pages are read
 * only when its tensors are touched, so a shard never reads the other parts'
 * weights. */

#define GGUF_MAX_SPLIT_PARTS 1000u /* the largest hub models ship a few dozen */

/* Prefixes the current message with "what: " (the message is copied first,
 * since exo__error_set's argument may not be its own buffer). */
static int with_context(int rc, const char *what)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", exo_last_error());
    return exo__error_set(rc, "%s: %s", what, msg);
}

/* A part's split.* keys; count 0 when the file is not split. */
struct split_info {
    int64_t no, count, tensors;
};

static int read_split_info(const exo_gguf *g, const char *path, struct split_info *si)
{
    *si = (struct split_info){0, 0, -1};
    bool has_count = exo__gguf_find_key(g, "split.count") >= 0;
    bool has_no = exo__gguf_find_key(g, "split.no") >= 0;
    if (!has_count && !has_no) return 0;
    if (!has_count || !has_no)
        return exo__error_set(EXO_EFORMAT, "%s: has %s but not %s (a damaged split GGUF part)", path,
                              has_no ? "split.no" : "split.count", has_no ? "split.count" : "split.no");
    int rc = exo__gguf_get_i64(g, "split.count", &si->count);
    if (!rc) rc = exo__gguf_get_i64(g, "split.no", &si->no);
    if (!rc) rc = exo__gguf_get_i64(g, "split.tensors.count", &si->tensors);
    if (rc) return with_context(rc, path);
    if (si->count < 1 || si->count > GGUF_MAX_SPLIT_PARTS)
        return exo__error_set(EXO_EFORMAT, "%s: split.count is %lld, expected 1..%u", path,
                              (long long)si->count, GGUF_MAX_SPLIT_PARTS);
    if (si->no < 0 || si->no >= si->count)
        return exo__error_set(EXO_EFORMAT, "%s: split.no is %lld, expected 0..%lld (split.count %lld)", path,
                              (long long)si->no, (long long)(si->count - 1), (long long)si->count);
    if (si->tensors < 0 || si->tensors > GGUF_MAX_TENSORS)
        return exo__error_set(EXO_EFORMAT, "%s: split.tensors.count is %lld, expected 0..%u", path,
                              (long long)si->tensors, GGUF_MAX_TENSORS);
    return 0;
}

/* The name of part `no` (0-based) of count, from path, which must be part
 * `is`'s name; the caller frees *out. */
static int part_path(const char *path, int64_t is, int64_t count, int64_t no, char **out)
{
    char suffix[64];
    snprintf(suffix, sizeof suffix, "-%05lld-of-%05lld.gguf", (long long)is + 1, (long long)count);
    size_t n = strlen(path), sn = strlen(suffix);
    if (n <= sn || strcmp(path + n - sn, suffix) != 0)
        return exo__error_set(EXO_EFORMAT,
                              "%s: is part %lld of a split model of %lld parts, but its name does not end "
                              "in '%s', so the other parts cannot be found (keep gguf-split's names)",
                              path, (long long)is + 1, (long long)count, suffix);
    char *p = malloc(n - sn + sizeof suffix);
    if (!p) return exo__error_set(EXO_ENOMEM, "%s: out of memory", path);
    memcpy(p, path, n - sn);
    snprintf(p + n - sn, sizeof suffix, "-%05lld-of-%05lld.gguf", (long long)no + 1, (long long)count);
    *out = p;
    return 0;
}

/* Whether part p (at pp, part no by its name) belongs with part 1 (at path). */
static int check_part(const exo_gguf *p, const char *pp, const char *path, const struct split_info *si, int64_t no)
{
    struct split_info ps;
    int rc = read_split_info(p, pp, &ps);
    if (rc) return rc;
    if (ps.count != si->count)
        return exo__error_set(EXO_EFORMAT, "%s: split.count is %lld, but part 1 (%s) says %lld: parts of different models?",
                              pp, (long long)ps.count, path, (long long)si->count);
    if (ps.no != no)
        return exo__error_set(EXO_EFORMAT, "%s: split.no is %lld, expected %lld (part %lld by its name)", pp,
                              (long long)ps.no, (long long)no, (long long)no + 1);
    if (ps.tensors != si->tensors)
        return exo__error_set(EXO_EFORMAT,
                              "%s: split.tensors.count is %lld, but part 1 (%s) says %lld: parts of different models?",
                              pp, (long long)ps.tensors, path, (long long)si->tensors);
    return 0;
}

/* Opens, checks and keeps (in g->parts) part no of the model whose part 1 is
 * g, at path. */
static int open_part(exo_gguf *g, const char *path, const struct split_info *si, int64_t no)
{
    char *pp;
    int rc = part_path(path, 0, si->count, no, &pp);
    if (rc) return rc;
    exo_gguf *p;
    if (access(pp, F_OK) != 0) {
        rc = exo__error_set(EXO_EIO, "%s: part %lld of %lld of this split model is missing: %s (download every part)",
                            path, (long long)no + 1, (long long)si->count, pp);
    } else if ((rc = open_file(pp, true, &p))) {
        rc = with_context(rc, path);
    } else {
        g->parts[g->n_parts++ - 1] = p; /* g owns it from here */
        rc = check_part(p, pp, path, si, no);
    }
    free(pp);
    return rc;
}

/* The part (1-based) that holds joined tensor i; own is part 1's count. */
static int64_t part_holding(const exo_gguf *g, int64_t own, int64_t i)
{
    int64_t no = 1;
    for (i -= own; i >= 0 && no < (int64_t)g->n_parts; no++) i -= g->parts[no - 1]->n_tensors;
    return no;
}

/* Opens parts 2..count of the split model whose part 1 is g (at path) and
 * joins every part's tensors into g's table. */
static int join_parts(exo_gguf *g, const char *path, const struct split_info *si)
{
    g->parts = calloc((size_t)si->count - 1, sizeof *g->parts);
    if (!g->parts) return exo__error_set(EXO_ENOMEM, "%s: out of memory", path);
    int64_t total = g->n_tensors;
    for (int64_t no = 1; no < si->count; no++) {
        int rc = open_part(g, path, si, no);
        if (rc) return rc;
        exo_gguf *p = g->parts[no - 1];
        total += p->n_tensors; /* each <= 2^20, at most 1000 parts: no overflow */
        g->total_size += p->size;
    }
    if (total != si->tensors)
        return exo__error_set(EXO_EFORMAT, "%s: the %lld parts hold %lld tensors, but split.tensors.count says %lld",
                              path, (long long)si->count, (long long)total, (long long)si->tensors);
    exo_gguf_tensor *all = malloc((size_t)(total ? total : 1) * sizeof *all);
    uint32_t *slots = NULL;
    size_t mask;
    if (!all || !(slots = table_new(total, &mask))) {
        free(all);
        return exo__error_set(EXO_ENOMEM, "%s: out of memory joining %lld tensors", path, (long long)total);
    }
    int64_t n = 0;
    for (int64_t no = 0; no < si->count; no++) {
        const exo_gguf *p = no ? g->parts[no - 1] : g;
        for (int64_t i = 0; i < p->n_tensors; i++) all[n++] = p->tensors[i];
    }
    int64_t own = g->n_tensors;
    free(g->tensors);
    free(g->tensor_slots);
    g->tensors = all;
    g->n_tensors = total;
    g->tensor_slots = slots;
    g->tensor_mask = mask;
    for (int64_t i = 0; i < total; i++) {
        size_t s = table_slot(slots, mask, all[i].name, tensor_name_of, g);
        if (slots[s])
            return exo__error_set(EXO_EFORMAT, "%s: tensor '%s' is in part %lld and again in part %lld of this split model",
                                  path, all[i].name, (long long)part_holding(g, own, slots[s] - 1),
                                  (long long)part_holding(g, own, i));
        slots[s] = (uint32_t)i + 1;
    }
    return 0;
}

int exo__gguf_open(const char *path, exo_gguf **out)
{
    if (!out) return exo__error_set(EXO_EINVAL, "exo__gguf_open: out is NULL");
    *out = NULL;
    if (!path) return exo__error_set(EXO_EINVAL, "exo__gguf_open: path is NULL");
    exo_gguf *g;
    int rc = open_file(path, false, &g);
    if (rc) return rc;
    struct split_info si;
    if ((rc = read_split_info(g, path, &si))) goto fail;
    if (si.count <= 1) {
        *out = g;
        return 0;
    }
    char *first = NULL;
    if (si.no != 0) {
        /* Given another part: the model opens from part 1, which has the metadata. */
        int64_t count = si.count;
        exo__gguf_close(g);
        g = NULL;
        if ((rc = part_path(path, si.no, count, 0, &first))) return rc;
        if (access(first, F_OK) != 0) {
            rc = exo__error_set(EXO_EIO, "%s: part 1 of %lld of this split model is missing: %s (download every part)",
                                path, (long long)count, first);
        } else if ((rc = open_file(first, false, &g)) == 0 && (rc = read_split_info(g, first, &si)) == 0 &&
                   (si.no != 0 || si.count != count)) {
            rc = exo__error_set(EXO_EFORMAT, "%s: split.no %lld and split.count %lld, but by its name it is part 1 of %lld",
                                first, (long long)si.no, (long long)si.count, (long long)count);
        }
        if (rc) {
            free(first);
            goto fail;
        }
    }
    rc = join_parts(g, first ? first : path, &si);
    free(first);
    if (rc) goto fail;
    *out = g;
    return 0;
fail:
    exo__gguf_close(g);
    return rc;
}

void exo__gguf_close(exo_gguf *g)
{
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv && g->kvs; i++) free(g->kvs[i].str_off);
    free(g->kvs);
    free(g->tensors);
    free(g->tensor_name_raw);
    free(g->tensor_name_len);
    free(g->names);
    free(g->key_slots);
    free(g->tensor_slots);
    for (uint32_t i = 0; g->parts && i + 1 < g->n_parts; i++) exo__gguf_close(g->parts[i]);
    free(g->parts);
    if (g->map) munmap(g->map, g->size);
    free(g);
}

uint32_t exo__gguf_version(const exo_gguf *g)
{
    return g ? g->version : 0;
}

bool exo__gguf_is_file_mapped(const exo_gguf *g)
{
    return g && g->map;
}

size_t exo__gguf_alignment(const exo_gguf *g)
{
    return g ? g->alignment : 0;
}

size_t exo__gguf_file_size(const exo_gguf *g)
{
    return !g ? 0 : g->n_parts > 1 ? g->total_size : g->size;
}

uint32_t exo__gguf_part_count(const exo_gguf *g)
{
    return g && g->n_parts > 1 ? g->n_parts : 1;
}

int64_t exo__gguf_kv_count(const exo_gguf *g)
{
    return g ? g->n_kv : 0;
}

int64_t exo__gguf_find_key(const exo_gguf *g, const char *key)
{
    if (!g || !key || !g->key_slots) return -1;
    size_t s = table_slot(g->key_slots, g->key_mask, key, kv_name_of, g);
    return g->key_slots[s] ? (int64_t)g->key_slots[s] - 1 : -1;
}

const char *exo__gguf_key_name(const exo_gguf *g, int64_t i)
{
    if (!g || i < 0 || i >= g->n_kv) {
        exo__error_set(EXO_ERANGE, "gguf: key index %lld out of range", (long long)i);
        return NULL;
    }
    return g->kvs[i].key;
}

int exo__gguf_kv_type(const exo_gguf *g, int64_t i)
{
    if (!g || i < 0 || i >= g->n_kv)
        return exo__error_set(EXO_ERANGE, "gguf: key index %lld out of range", (long long)i);
    return (int)g->kvs[i].type;
}

/* Looks key up for a getter, with the error the getters share. */
static const struct kv *getter_kv(const exo_gguf *g, const char *key, int *rc)
{
    if (!g || !key) {
        *rc = exo__error_set(EXO_EINVAL, "gguf: NULL handle or key");
        return NULL;
    }
    int64_t i = exo__gguf_find_key(g, key);
    if (i < 0) {
        *rc = exo__error_set(EXO_EINVAL, "gguf: key '%s' not found", key);
        return NULL;
    }
    *rc = 0;
    return &g->kvs[i];
}

/* Reads an integer or bool value as either signed or unsigned 64-bit. */
static bool kv_integer(const struct kv *kv, bool *is_signed, int64_t *s, uint64_t *u)
{
    const uint8_t *p = kv->val;
    int8_t i8; int16_t i16; int32_t i32; uint16_t u16;
    *is_signed = false;
    switch (kv->type) {
    case EXO_GGUF_UINT8: case EXO_GGUF_BOOL: *u = p[0]; return true;
    case EXO_GGUF_UINT16: memcpy(&u16, p, 2); *u = u16; return true;
    case EXO_GGUF_UINT32: *u = load_u32(p); return true;
    case EXO_GGUF_UINT64: *u = load_u64(p); return true;
    default: break;
    }
    *is_signed = true;
    switch (kv->type) {
    case EXO_GGUF_INT8: memcpy(&i8, p, 1); *s = i8; return true;
    case EXO_GGUF_INT16: memcpy(&i16, p, 2); *s = i16; return true;
    case EXO_GGUF_INT32: memcpy(&i32, p, 4); *s = i32; return true;
    case EXO_GGUF_INT64: memcpy(s, p, 8); return true;
    default: return false;
    }
}

int exo__gguf_get_i64(const exo_gguf *g, const char *key, int64_t *out)
{
    int rc;
    const struct kv *kv = getter_kv(g, key, &rc);
    if (!kv) return rc;
    bool sg;
    int64_t s;
    uint64_t u;
    if (!kv_integer(kv, &sg, &s, &u))
        return exo__error_set(EXO_EFORMAT, "gguf: key '%s' has type %s, expected an integer", key,
                             type_name(kv->type));
    if (!sg) {
        if (u > (uint64_t)INT64_MAX)
            return exo__error_set(EXO_ERANGE, "gguf: key '%s' value %llu does not fit in int64", key,
                                 (unsigned long long)u);
        s = (int64_t)u;
    }
    *out = s;
    return 0;
}

int exo__gguf_get_u32(const exo_gguf *g, const char *key, uint32_t *out)
{
    int rc;
    const struct kv *kv = getter_kv(g, key, &rc);
    if (!kv) return rc;
    bool sg;
    int64_t s;
    uint64_t u;
    if (!kv_integer(kv, &sg, &s, &u))
        return exo__error_set(EXO_EFORMAT, "gguf: key '%s' has type %s, expected an integer", key,
                             type_name(kv->type));
    if (sg) {
        if (s < 0 || s > (int64_t)UINT32_MAX)
            return exo__error_set(EXO_ERANGE, "gguf: key '%s' value %lld does not fit in uint32", key,
                                 (long long)s);
        u = (uint64_t)s;
    } else if (u > UINT32_MAX) {
        return exo__error_set(EXO_ERANGE, "gguf: key '%s' value %llu does not fit in uint32", key,
                             (unsigned long long)u);
    }
    *out = (uint32_t)u;
    return 0;
}

int exo__gguf_get_f32(const exo_gguf *g, const char *key, float *out)
{
    int rc;
    const struct kv *kv = getter_kv(g, key, &rc);
    if (!kv) return rc;
    if (kv->type == EXO_GGUF_FLOAT32) {
        memcpy(out, kv->val, 4);
        return 0;
    }
    if (kv->type == EXO_GGUF_FLOAT64) {
        double d;
        memcpy(&d, kv->val, 8);
        if (isfinite(d) && fabs(d) > FLT_MAX)
            return exo__error_set(EXO_ERANGE, "gguf: key '%s' value %g does not fit in float32", key, d);
        *out = (float)d;
        return 0;
    }
    bool sg;
    int64_t s;
    uint64_t u;
    if (kv->type == EXO_GGUF_BOOL || !kv_integer(kv, &sg, &s, &u))
        return exo__error_set(EXO_EFORMAT, "gguf: key '%s' has type %s, expected a number", key,
                             type_name(kv->type));
    *out = sg ? (float)s : (float)u;
    return 0;
}

int exo__gguf_get_bool(const exo_gguf *g, const char *key, bool *out)
{
    int rc;
    const struct kv *kv = getter_kv(g, key, &rc);
    if (!kv) return rc;
    if (kv->type != EXO_GGUF_BOOL)
        return exo__error_set(EXO_EFORMAT, "gguf: key '%s' has type %s, expected bool", key,
                             type_name(kv->type));
    *out = kv->val[0] != 0;
    return 0;
}

int exo__gguf_get_str(const exo_gguf *g, const char *key, const char **s, size_t *len)
{
    int rc;
    const struct kv *kv = getter_kv(g, key, &rc);
    if (!kv) return rc;
    if (kv->type != EXO_GGUF_STRING)
        return exo__error_set(EXO_EFORMAT, "gguf: key '%s' has type %s, expected string", key,
                             type_name(kv->type));
    *s = (const char *)kv->val;
    *len = (size_t)kv->n;
    return 0;
}

int exo__gguf_get_arr(const exo_gguf *g, const char *key, int *elem_type, uint64_t *len)
{
    int rc;
    const struct kv *kv = getter_kv(g, key, &rc);
    if (!kv) return rc;
    if (kv->type != EXO_GGUF_ARRAY)
        return exo__error_set(EXO_EFORMAT, "gguf: key '%s' has type %s, expected array", key,
                             type_name(kv->type));
    if (elem_type) *elem_type = (int)kv->elem_type;
    if (len) *len = kv->n;
    return 0;
}

const void *exo__gguf_arr_data(const exo_gguf *g, int64_t kv_index)
{
    if (!g || kv_index < 0 || kv_index >= g->n_kv) {
        exo__error_set(EXO_ERANGE, "gguf: key index %lld out of range", (long long)kv_index);
        return NULL;
    }
    const struct kv *kv = &g->kvs[kv_index];
    if (kv->type != EXO_GGUF_ARRAY || kv->elem_type == EXO_GGUF_STRING) {
        exo__error_set(EXO_EFORMAT, "gguf: key '%s' is not a numeric array", kv->key);
        return NULL;
    }
    return kv->val;
}

int exo__gguf_arr_str(const exo_gguf *g, int64_t kv_index, uint64_t j, const char **s, size_t *len)
{
    if (!g || kv_index < 0 || kv_index >= g->n_kv)
        return exo__error_set(EXO_ERANGE, "gguf: key index %lld out of range", (long long)kv_index);
    const struct kv *kv = &g->kvs[kv_index];
    if (kv->type != EXO_GGUF_ARRAY || kv->elem_type != EXO_GGUF_STRING)
        return exo__error_set(EXO_EFORMAT, "gguf: key '%s' is not a string array", kv->key);
    if (j >= kv->n)
        return exo__error_set(EXO_ERANGE, "gguf: index %llu out of range for array '%s' of %llu strings",
                             (unsigned long long)j, kv->key, (unsigned long long)kv->n);
    const uint8_t *p = kv->val + kv->str_off[j];
    *len = (size_t)load_u64(p);
    *s = (const char *)p + 8;
    return 0;
}

int64_t exo__gguf_tensor_count(const exo_gguf *g)
{
    return g ? g->n_tensors : 0;
}

int64_t exo__gguf_find_tensor(const exo_gguf *g, const char *name)
{
    if (!g || !name || !g->tensor_slots) return -1;
    size_t s = table_slot(g->tensor_slots, g->tensor_mask, name, tensor_name_of, g);
    return g->tensor_slots[s] ? (int64_t)g->tensor_slots[s] - 1 : -1;
}

const exo_gguf_tensor *exo__gguf_tensor_at(const exo_gguf *g, int64_t i)
{
    if (!g || i < 0 || i >= g->n_tensors) {
        exo__error_set(EXO_ERANGE, "gguf: tensor index %lld out of range", (long long)i);
        return NULL;
    }
    return &g->tensors[i];
}

/* ---------------------------------------------------------------- writer */

struct wtensor {
    char *name;
    uint32_t dtype;
    uint32_t n_dims;
    int64_t ne[EXO_GGUF_MAX_DIMS];
    void *data;
    size_t size;
};

struct exo_gguf_writer {
    uint8_t *kv;             /* serialised key/value pairs, in order added */
    size_t kv_len, kv_cap;
    char **keys;             /* for duplicate checks */
    size_t n_keys, keys_cap;
    struct wtensor *t;
    size_t n_t, t_cap;
    uint32_t alignment;
};

exo_gguf_writer *exo__gguf_writer_new(void)
{
    exo_gguf_writer *w = calloc(1, sizeof *w);
    if (!w) {
        exo__error_set(EXO_ENOMEM, "gguf writer: out of memory");
        return NULL;
    }
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void exo__gguf_writer_free(exo_gguf_writer *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n_keys; i++) free(w->keys[i]);
    for (size_t i = 0; i < w->n_t; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    free(w->kv);
    free(w->keys);
    free(w->t);
    free(w);
}

static int put(exo_gguf_writer *w, const void *b, size_t n)
{
    if (n > SIZE_MAX - w->kv_len || exo_grow(&w->kv, &w->kv_cap, w->kv_len + n, 1))
        return exo__error_set(EXO_ENOMEM, "gguf writer: out of memory");
    if (n) memcpy(w->kv + w->kv_len, b, n);
    w->kv_len += n;
    return 0;
}

static int put_u32(exo_gguf_writer *w, uint32_t v)
{
    return put(w, &v, 4);
}

static int put_u64(exo_gguf_writer *w, uint64_t v)
{
    return put(w, &v, 8);
}

static int put_str(exo_gguf_writer *w, const char *s, size_t n)
{
    int rc = put_u64(w, n);
    return rc ? rc : put(w, s, n);
}

/* Checks key and, on success, records it and writes its name and type. The
 * caller then writes the value; a failure there rolls back via kv_len. */
static int begin_key(exo_gguf_writer *w, const char *key, uint32_t type)
{
    if (!w || !key) return exo__error_set(EXO_EINVAL, "gguf writer: NULL writer or key");
    size_t n = strlen(key);
    if (n == 0 || n > GGUF_MAX_KEY_LEN)
        return exo__error_set(EXO_EINVAL, "gguf writer: key length %zu not in 1..%d", n, GGUF_MAX_KEY_LEN);
    if (w->n_keys >= GGUF_MAX_KVS)
        return exo__error_set(EXO_ENOMEM, "gguf writer: more than %u keys", GGUF_MAX_KVS);
    for (size_t i = 0; i < w->n_keys; i++)
        if (strcmp(w->keys[i], key) == 0)
            return exo__error_set(EXO_EINVAL, "gguf writer: duplicate key '%s'", key);
    if (strcmp(key, "general.alignment") == 0 && type != EXO_GGUF_UINT32)
        return exo__error_set(EXO_EINVAL, "gguf writer: general.alignment must be uint32");
    if (exo_grow(&w->keys, &w->keys_cap, w->n_keys + 1, sizeof *w->keys))
        return exo__error_set(EXO_ENOMEM, "gguf writer: out of memory");
    char *copy = strdup(key);
    if (!copy) return exo__error_set(EXO_ENOMEM, "gguf writer: out of memory");
    size_t mark = w->kv_len;
    int rc = put_str(w, key, n);
    if (!rc) rc = put_u32(w, type);
    if (rc) {
        w->kv_len = mark;
        free(copy);
        return rc;
    }
    w->keys[w->n_keys++] = copy;
    return 0;
}

/* Undoes begin_key after the value failed to serialise. */
static int abort_key(exo_gguf_writer *w, size_t mark, int rc)
{
    w->kv_len = mark;
    free(w->keys[--w->n_keys]);
    return rc;
}

static int add_scalar(exo_gguf_writer *w, const char *key, uint32_t type, const void *v, size_t n)
{
    size_t mark = w ? w->kv_len : 0;
    int rc = begin_key(w, key, type);
    if (rc) return rc;
    rc = put(w, v, n);
    return rc ? abort_key(w, mark, rc) : 0;
}

int exo__gguf_writer_add_u32(exo_gguf_writer *w, const char *key, uint32_t v)
{
    if (key && strcmp(key, "general.alignment") == 0 && (!is_pow2(v) || v > GGUF_MAX_ALIGNMENT))
        return exo__error_set(EXO_EINVAL, "gguf writer: general.alignment %u is not a power of two in 1..%u",
                             v, GGUF_MAX_ALIGNMENT);
    int rc = add_scalar(w, key, EXO_GGUF_UINT32, &v, 4);
    if (!rc && strcmp(key, "general.alignment") == 0) w->alignment = v;
    return rc;
}

int exo__gguf_writer_add_u16(exo_gguf_writer *w, const char *key, uint16_t v)
{
    return add_scalar(w, key, EXO_GGUF_UINT16, &v, 2);
}

int exo__gguf_writer_copy_kv(exo_gguf_writer *w, const exo_gguf *g, int64_t i)
{
    if (!g || i < 0 || i >= g->n_kv)
        return exo__error_set(EXO_EINVAL, "gguf writer: key index %lld out of range", (long long)i);
    const struct kv *kv = &g->kvs[i];
    /* The reader checked general.alignment is a power-of-two uint32, and the
     * writer must lay its tensors out by it. */
    if (strcmp(kv->key, "general.alignment") == 0) return exo__gguf_writer_add_u32(w, kv->key, load_u32(kv->val));
    size_t mark = w ? w->kv_len : 0;
    int rc = begin_key(w, kv->key, kv->type);
    if (rc) return rc;
    rc = put(w, kv->raw, (size_t)kv->raw_len);
    return rc ? abort_key(w, mark, rc) : 0;
}

int exo__gguf_writer_add_i32(exo_gguf_writer *w, const char *key, int32_t v)
{
    return add_scalar(w, key, EXO_GGUF_INT32, &v, 4);
}

int exo__gguf_writer_add_f32(exo_gguf_writer *w, const char *key, float v)
{
    return add_scalar(w, key, EXO_GGUF_FLOAT32, &v, 4);
}

int exo__gguf_writer_add_bool(exo_gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return add_scalar(w, key, EXO_GGUF_BOOL, &b, 1);
}

int exo__gguf_writer_add_str(exo_gguf_writer *w, const char *key, const char *v)
{
    if (!v) return exo__error_set(EXO_EINVAL, "gguf writer: NULL string for key '%s'", key ? key : "?");
    size_t n = strlen(v);
    if (n > GGUF_MAX_STRING_LEN)
        return exo__error_set(EXO_EINVAL, "gguf writer: string for key '%s' is %zu bytes, over %u",
                             key ? key : "?", n, GGUF_MAX_STRING_LEN);
    size_t mark = w ? w->kv_len : 0;
    int rc = begin_key(w, key, EXO_GGUF_STRING);
    if (rc) return rc;
    rc = put_str(w, v, n);
    return rc ? abort_key(w, mark, rc) : 0;
}

int exo__gguf_writer_add_arr(exo_gguf_writer *w, const char *key, int elem_type, const void *data,
                            uint64_t n)
{
    if (elem_type < 0 || elem_type == EXO_GGUF_STRING || !value_size((uint32_t)elem_type))
        return exo__error_set(EXO_EINVAL, "gguf writer: bad array element type %d for key '%s'",
                             elem_type, key ? key : "?");
    if (n > GGUF_MAX_ARRAY_LEN)
        return exo__error_set(EXO_EINVAL, "gguf writer: array '%s' of %llu elements, over %u",
                             key ? key : "?", (unsigned long long)n, GGUF_MAX_ARRAY_LEN);
    if (n && !data)
        return exo__error_set(EXO_EINVAL, "gguf writer: NULL data for array '%s'", key ? key : "?");
    if (elem_type == EXO_GGUF_BOOL)
        for (uint64_t j = 0; j < n; j++)
            if (((const uint8_t *)data)[j] > 1)
                return exo__error_set(EXO_EINVAL, "gguf writer: bool array '%s' element %llu is not 0 or 1",
                                     key ? key : "?", (unsigned long long)j);
    size_t mark = w ? w->kv_len : 0;
    int rc = begin_key(w, key, EXO_GGUF_ARRAY);
    if (rc) return rc;
    rc = put_u32(w, (uint32_t)elem_type);
    if (!rc) rc = put_u64(w, n);
    if (!rc) rc = put(w, data, (size_t)n * value_size((uint32_t)elem_type));
    return rc ? abort_key(w, mark, rc) : 0;
}

int exo__gguf_writer_add_str_arr(exo_gguf_writer *w, const char *key, const char *const *strs,
                                uint64_t n)
{
    if (n > GGUF_MAX_ARRAY_LEN)
        return exo__error_set(EXO_EINVAL, "gguf writer: array '%s' of %llu elements, over %u",
                             key ? key : "?", (unsigned long long)n, GGUF_MAX_ARRAY_LEN);
    if (n && !strs)
        return exo__error_set(EXO_EINVAL, "gguf writer: NULL strings for array '%s'", key ? key : "?");
    for (uint64_t j = 0; j < n; j++) {
        if (!strs[j])
            return exo__error_set(EXO_EINVAL, "gguf writer: array '%s' element %llu is NULL",
                                 key ? key : "?", (unsigned long long)j);
        if (strlen(strs[j]) > GGUF_MAX_ARRAY_STRING_LEN)
            return exo__error_set(EXO_EINVAL, "gguf writer: array '%s' element %llu is over %u bytes",
                                 key ? key : "?", (unsigned long long)j, GGUF_MAX_ARRAY_STRING_LEN);
    }
    size_t mark = w ? w->kv_len : 0;
    int rc = begin_key(w, key, EXO_GGUF_ARRAY);
    if (rc) return rc;
    rc = put_u32(w, EXO_GGUF_STRING);
    if (!rc) rc = put_u64(w, n);
    for (uint64_t j = 0; j < n && !rc; j++) rc = put_str(w, strs[j], strlen(strs[j]));
    return rc ? abort_key(w, mark, rc) : 0;
}

/* Checks and records a tensor; data NULL with later set leaves its bytes to
 * exo__gguf_writer_write_fill's callback (nothing is held in memory). */
static int writer_add_tensor(exo_gguf_writer *w, const char *name, int dtype, int n_dims,
                             const int64_t *ne, const void *data, size_t size, bool later)
{
    if (!w || !name || !ne || (!data && size && !later))
        return exo__error_set(EXO_EINVAL, "gguf writer: NULL argument adding tensor '%s'",
                             name ? name : "?");
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen > GGUF_WRITER_MAX_TENSOR_NAME)
        return exo__error_set(EXO_EINVAL, "gguf writer: tensor name '%s' length %zu not in 1..%d",
                             name, nlen, GGUF_WRITER_MAX_TENSOR_NAME);
    const exo_dtype_info *di = dtype < 0 ? NULL : dtype_loadable((uint32_t)dtype);
    if (!di) {
        const exo_dtype_info *named = dtype < 0 ? NULL : dtype_named((uint32_t)dtype);
        return exo__error_set(EXO_ENOTSUP, "gguf writer: unsupported dtype %d (%s) for tensor '%s'", dtype,
                             named ? named->name : "unknown", name);
    }
    if (n_dims < 1 || n_dims > EXO_GGUF_MAX_DIMS)
        return exo__error_set(EXO_EINVAL, "gguf writer: tensor '%s' n_dims %d not in 1..%d", name,
                             n_dims, EXO_GGUF_MAX_DIMS);
    uint64_t nel = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] < 1 || nel > (uint64_t)INT64_MAX / (uint64_t)ne[d])
            return exo__error_set(EXO_EINVAL, "gguf writer: tensor '%s' ne[%d] = %lld is invalid",
                                 name, d, (long long)ne[d]);
        nel *= (uint64_t)ne[d];
    }
    if ((uint64_t)ne[0] % di->block_size)
        return exo__error_set(EXO_EINVAL, "gguf writer: tensor '%s' ne[0] = %lld not a multiple of %u",
                             name, (long long)ne[0], di->block_size);
    uint64_t blocks = nel / di->block_size;
    if (blocks > UINT64_MAX / di->type_size || blocks * di->type_size != size)
        return exo__error_set(EXO_EINVAL, "gguf writer: tensor '%s' data is %zu bytes, expected %llu",
                             name, size, (unsigned long long)(blocks * di->type_size));
    if (w->n_t >= GGUF_MAX_TENSORS)
        return exo__error_set(EXO_ENOMEM, "gguf writer: more than %u tensors", GGUF_MAX_TENSORS);
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return exo__error_set(EXO_EINVAL, "gguf writer: duplicate tensor '%s'", name);
    if (exo_grow(&w->t, &w->t_cap, w->n_t + 1, sizeof *w->t))
        return exo__error_set(EXO_ENOMEM, "gguf writer: out of memory");
    struct wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->data = later ? NULL : malloc(size ? size : 1);
    if (!t->name || (!later && !t->data)) {
        free(t->name);
        free(t->data);
        return exo__error_set(EXO_ENOMEM, "gguf writer: out of memory copying tensor '%s'", name);
    }
    if (!later) memcpy(t->data, data, size);
    t->size = size;
    t->dtype = (uint32_t)dtype;
    t->n_dims = (uint32_t)n_dims;
    for (int d = 0; d < EXO_GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    w->n_t++;
    return 0;
}

int exo__gguf_writer_add_tensor(exo_gguf_writer *w, const char *name, int dtype, int n_dims,
                               const int64_t *ne, const void *data, size_t size)
{
    return writer_add_tensor(w, name, dtype, n_dims, ne, data, size, false);
}

int exo__gguf_writer_add_tensor_later(exo_gguf_writer *w, const char *name, int dtype, int n_dims,
                                     const int64_t *ne, size_t size)
{
    return writer_add_tensor(w, name, dtype, n_dims, ne, NULL, size, true);
}

static size_t pad_to(uint64_t x, uint64_t a)
{
    return (size_t)((a - x % a) % a);
}

/* fwrite wrapper tracking position and the first error. */
struct wfile {
    FILE *f;
    uint64_t pos;
    bool err;
};

static void wf_put(struct wfile *f, const void *b, size_t n)
{
    if (f->err || n == 0) return;
    if (fwrite(b, 1, n, f->f) != n) f->err = true;
    f->pos += n;
}

static void wf_pad(struct wfile *f, uint64_t a)
{
    static const uint8_t zeros[256];
    size_t n = pad_to(f->pos, a);
    while (n) {
        size_t k = n < sizeof zeros ? n : sizeof zeros;
        wf_put(f, zeros, k);
        n -= k;
    }
}

int exo__gguf_writer_write(exo_gguf_writer *w, const char *path)
{
    return exo__gguf_writer_write_fill(w, path, NULL, NULL);
}

int exo__gguf_writer_write_fill(exo_gguf_writer *w, const char *path, exo_gguf_fill_fn fill, void *ud)
{
    if (!w || !path) return exo__error_set(EXO_EINVAL, "gguf writer: NULL writer or path");
    for (size_t i = 0; i < w->n_t; i++)
        if (!w->t[i].data && w->t[i].size && !fill)
            return exo__error_set(EXO_EINVAL, "gguf writer: tensor '%s' has no data", w->t[i].name);
    struct wfile f = {fopen(path, "wb"), 0, false};
    if (!f.f) return exo__error_set(EXO_EIO, "%s: cannot create: %s", path, strerror(errno));
    uint32_t magic = GGUF_MAGIC, version = 3;
    uint64_t nt = w->n_t, nkv = w->n_keys;
    wf_put(&f, &magic, 4);
    wf_put(&f, &version, 4);
    wf_put(&f, &nt, 8);
    wf_put(&f, &nkv, 8);
    wf_put(&f, w->kv, w->kv_len);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const struct wtensor *t = &w->t[i];
        uint64_t nlen = strlen(t->name);
        wf_put(&f, &nlen, 8);
        wf_put(&f, t->name, nlen);
        wf_put(&f, &t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) wf_put(&f, &t->ne[d], 8);
        wf_put(&f, &t->dtype, 4);
        wf_put(&f, &off, 8);
        off += t->size + pad_to(t->size, w->alignment);
    }
    wf_pad(&f, w->alignment);
    int fill_rc = 0;
    for (size_t i = 0; i < w->n_t && !f.err && !fill_rc; i++) {
        const struct wtensor *t = &w->t[i];
        if (t->data || !t->size) {
            wf_put(&f, t->data, t->size);
        } else { /* one deferred tensor in memory at a time */
            void *buf = malloc(t->size);
            fill_rc = buf ? fill(ud, i, buf, t->size)
                          : exo__error_set(EXO_ENOMEM, "gguf writer: out of memory for tensor '%s'", t->name);
            if (!fill_rc) wf_put(&f, buf, t->size);
            free(buf);
        }
        wf_pad(&f, w->alignment);
    }
    int e = errno;
    if (fill_rc) {
        fclose(f.f);
        remove(path);
        return fill_rc < 0 ? fill_rc : exo__error_set(EXO_EIO, "%s: tensor data could not be made", path);
    }
    if (fclose(f.f) != 0 && !f.err) {
        f.err = true;
        e = errno;
    }
    if (f.err) {
        remove(path);
        return exo__error_set(EXO_EIO, "%s: write failed: %s", path, strerror(e));
    }
    return 0;
}

/* ---------------------------------------------------------------- split writer */

struct split_fill {
    const exo_gguf *in;
    int64_t first; /* input index of the part's first tensor */
};

static int split_fill(void *ud, size_t index, void *buf, size_t size)
{
    const struct split_fill *sf = ud;
    memcpy(buf, sf->in->tensors[sf->first + (int64_t)index].data, size);
    return 0;
}

int exo__gguf_split_write(const exo_gguf *in, const char *prefix, int parts, bool no_tensor_first)
{
    if (!in || !prefix) return exo__error_set(EXO_EINVAL, "gguf split: NULL model or prefix");
    int holders = parts - (no_tensor_first ? 1 : 0);
    if (parts < 2 || (uint32_t)parts > GGUF_MAX_SPLIT_PARTS || holders < 1 || holders > in->n_tensors)
        return exo__error_set(EXO_EINVAL, "gguf split: %d parts (%d with tensors) for %lld tensors; want 2..%u parts, "
                              "each holding at least one tensor", parts, holders, (long long)in->n_tensors,
                              GGUF_MAX_SPLIT_PARTS);
    int rc = 0;
    for (int no = 0; no < parts && !rc; no++) {
        exo_gguf_writer *w = exo__gguf_writer_new();
        if (!w) return exo__error_set(EXO_ENOMEM, "gguf split: out of memory");
        /* Part 1 carries the model's metadata (less any split.* of its own
         * input); llama.cpp reads the split keys as these exact types. */
        for (int64_t i = 0; no == 0 && i < in->n_kv && !rc; i++)
            if (strncmp(in->kvs[i].key, "split.", 6) != 0) rc = exo__gguf_writer_copy_kv(w, in, i);
        if (!rc) rc = exo__gguf_writer_add_u16(w, "split.no", (uint16_t)no);
        if (!rc) rc = exo__gguf_writer_add_u16(w, "split.count", (uint16_t)parts);
        if (!rc) rc = exo__gguf_writer_add_i32(w, "split.tensors.count", (int32_t)in->n_tensors);
        int h = no - (no_tensor_first ? 1 : 0);
        struct split_fill sf = {in, h < 0 ? 0 : h * in->n_tensors / holders};
        int64_t end = h < 0 ? 0 : (h + 1) * in->n_tensors / holders;
        for (int64_t i = sf.first; i < end && !rc; i++) {
            const exo_gguf_tensor *t = &in->tensors[i];
            rc = exo__gguf_writer_add_tensor_later(w, t->name, t->dtype, t->n_dims, t->ne, t->size);
        }
        char *path = malloc(strlen(prefix) + 32);
        if (!path) rc = rc ? rc : exo__error_set(EXO_ENOMEM, "gguf split: out of memory");
        if (!rc) {
            sprintf(path, "%s-%05d-of-%05d.gguf", prefix, no + 1, parts);
            rc = exo__gguf_writer_write_fill(w, path, split_fill, &sf);
        }
        free(path);
        exo__gguf_writer_free(w);
    }
    return rc;
}
