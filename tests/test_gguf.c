/* test_gguf.c: the GGUF reader and writer.
 *
 * A file written with the writer (every value type the writer has, numeric and
 * string arrays, tensors of every supported dtype) is read back and compared
 * value by value and byte by byte. Value types the writer does not produce and
 * every corruption class are built byte by byte with a small builder, opened
 * from an exactly sized heap copy (so a sanitizer build catches any overread),
 * and must fail with the right code and a message naming what is wrong.
 * Setting EXO_TEST_REAL_GGUF=path also checks a real SmolLM2-135M file. */
#define _POSIX_C_SOURCE 200809L /* O_CLOEXEC, strdup, mkdtemp */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "dtype.h"
#include "error.h"
#include "gguf.h"

static char tmpdir[64];

static void tmp_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmpdir, name);
}

/* ------------------------------------------------------------ byte builder */

struct bb {
    uint8_t *p;
    size_t n, cap;
};

static void bb_put(struct bb *b, const void *v, size_t n)
{
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 256;
        while (nc < b->n + n) nc *= 2;
        b->p = realloc(b->p, nc);
        if (!b->p) abort();
        b->cap = nc;
    }
    if (n) memcpy(b->p + b->n, v, n);
    b->n += n;
}

static void bb_u8(struct bb *b, uint8_t v) { bb_put(b, &v, 1); }
static void bb_u16(struct bb *b, uint16_t v) { bb_put(b, &v, 2); }
static void bb_u32(struct bb *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(struct bb *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_f32(struct bb *b, float v) { bb_put(b, &v, 4); }
static void bb_f64(struct bb *b, double v) { bb_put(b, &v, 8); }

static void bb_str(struct bb *b, const char *s)
{
    bb_u64(b, strlen(s));
    bb_put(b, s, strlen(s));
}

static void bb_free(struct bb *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* kv helpers: key then type then value */
static void kv_u32(struct bb *b, const char *k, uint32_t v) { bb_str(b, k); bb_u32(b, EXO_GGUF_UINT32); bb_u32(b, v); }
static void kv_i32(struct bb *b, const char *k, int32_t v) { bb_str(b, k); bb_u32(b, EXO_GGUF_INT32); bb_u32(b, (uint32_t)v); }
static void kv_str(struct bb *b, const char *k, const char *v) { bb_str(b, k); bb_u32(b, EXO_GGUF_STRING); bb_str(b, v); }

struct tinfo {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[5];
    uint32_t type;
    uint64_t offset;
};

/* A whole file: header, the given kv bytes, tensor infos, padding to align,
 * then data_bytes of patterned data. */
static void build(struct bb *out, uint32_t version, const struct bb *kvs, uint64_t n_kv,
                  const struct tinfo *t, uint64_t n_t, size_t align, size_t data_bytes)
{
    memset(out, 0, sizeof *out);
    bb_put(out, "GGUF", 4);
    bb_u32(out, version);
    bb_u64(out, n_t);
    bb_u64(out, n_kv);
    if (kvs) bb_put(out, kvs->p, kvs->n);
    for (uint64_t i = 0; i < n_t; i++) {
        bb_str(out, t[i].name);
        bb_u32(out, t[i].n_dims);
        for (uint32_t d = 0; d < t[i].n_dims && d < 5; d++) bb_u64(out, t[i].ne[d]);
        bb_u32(out, t[i].type);
        bb_u64(out, t[i].offset);
    }
    while (out->n % align) bb_u8(out, 0);
    for (size_t i = 0; i < data_bytes; i++) bb_u8(out, (uint8_t)(i * 7 + 1));
}

/* Opens an exactly sized heap copy (so ASan sees any overread) and expects
 * failure with code and a message containing both substrings. */
static void expect_fail_at(int line, const void *data, size_t n, int code, const char *s1,
                           const char *s2)
{
    void *copy = malloc(n ? n : 1);
    if (n) memcpy(copy, data, n);
    exo_gguf *g = (exo_gguf *)0x1;
    int rc = exo__gguf_open_memory(copy, n, &g);
    const char *msg = exo_last_error();
    CHECK_MSG(rc == code, "line %d: rc %d (%s), expected %d; message: %s", line, rc,
              exo_error_name(rc), code, msg);
    CHECK_MSG(g == NULL, "line %d: out not NULL", line);
    CHECK_MSG(s1 == NULL || strstr(msg, s1), "line %d: message '%s' lacks '%s'", line, msg, s1);
    CHECK_MSG(s2 == NULL || strstr(msg, s2), "line %d: message '%s' lacks '%s'", line, msg, s2);
    if (rc == 0) exo__gguf_close(g);
    free(copy);
}
#define expect_fail(b, code, s1, s2) expect_fail_at(__LINE__, (b)->p, (b)->n, code, s1, s2)

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    CHECK(fwrite(p, 1, n, f) == n);
    fclose(f);
}

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(sz > 0 ? (size_t)sz : 1);
    *n = fread(p, 1, (size_t)sz, f);
    fclose(f);
    return p;
}

/* ------------------------------------------------------------ round trip */

struct rt_tensor {
    const char *name;
    int dtype;
    int n_dims;
    int64_t ne[4];
    size_t size;
};

/* bytes: F32 4/elt, F16/BF16 2, Q4_0 18/32, Q4_1 20/32, Q5_0 22/32, Q5_1 24/32,
 * Q8_0 34/32, IQ4_NL 18/32, Q2_K 84/256, Q3_K 110/256, Q4_K 144/256, Q5_K
 * 176/256, Q6_K 210/256, IQ4_XS 136/256 */
static const struct rt_tensor rt_tensors[] = {
    {"f32.weight", EXO_DTYPE_F32, 2, {4, 3, 1, 1}, 48},
    {"f16.weight", EXO_DTYPE_F16, 1, {8, 1, 1, 1}, 16},
    {"bf16.weight", EXO_DTYPE_BF16, 4, {2, 2, 2, 2}, 32},
    {"q4_0.weight", EXO_DTYPE_Q4_0, 2, {64, 2, 1, 1}, 72},
    {"q4_1.weight", EXO_DTYPE_Q4_1, 1, {32, 1, 1, 1}, 20},
    {"q8_0.weight", EXO_DTYPE_Q8_0, 3, {32, 1, 2, 1}, 68},
    {"q4_k.weight", EXO_DTYPE_Q4_K, 1, {256, 1, 1, 1}, 144},
    {"q5_k.weight", EXO_DTYPE_Q5_K, 1, {256, 1, 1, 1}, 176},
    {"q6_k.weight", EXO_DTYPE_Q6_K, 2, {256, 2, 1, 1}, 420},
    {"q5_0.weight", EXO_DTYPE_Q5_0, 2, {32, 2, 1, 1}, 44},
    {"q5_1.weight", EXO_DTYPE_Q5_1, 1, {64, 1, 1, 1}, 48},
    {"iq4_nl.weight", EXO_DTYPE_IQ4_NL, 1, {96, 1, 1, 1}, 54},
    {"q2_k.weight", EXO_DTYPE_Q2_K, 1, {256, 1, 1, 1}, 84},
    {"q3_k.weight", EXO_DTYPE_Q3_K, 2, {256, 2, 1, 1}, 220},
    {"iq4_xs.weight", EXO_DTYPE_IQ4_XS, 1, {512, 1, 1, 1}, 272},
};
#define N_RT (sizeof rt_tensors / sizeof rt_tensors[0])

static uint8_t pattern(size_t tensor, size_t i)
{
    return (uint8_t)(i * 31 + tensor * 101 + 7);
}

static const uint8_t arr_u8[] = {0, 1, 255};
static const int8_t arr_i8[] = {-128, 0, 127};
static const uint16_t arr_u16[] = {0, 65535};
static const int16_t arr_i16[] = {-32768, 32767};
static const uint32_t arr_u32[] = {1, 2, 4000000000u};
static const int32_t arr_i32[] = {INT32_MIN, -1, INT32_MAX};
static const float arr_f32[] = {0.5f, -2.25f, 1e30f};
static const uint8_t arr_bool[] = {1, 0, 1, 1};
static const uint64_t arr_u64[] = {UINT64_MAX, 0};
static const int64_t arr_i64[] = {INT64_MIN, INT64_MAX};
static const double arr_f64[] = {3.141592653589793, -1e300};
static const char *const arr_str[] = {"hello", "", "w\xc3\xb6rld", "a longer string with spaces"};

struct num_arr {
    const char *key;
    int type;
    const void *data;
    uint64_t n;
    size_t esz;
};

static const struct num_arr num_arrs[] = {
    {"arr.u8", EXO_GGUF_UINT8, arr_u8, 3, 1},
    {"arr.i8", EXO_GGUF_INT8, arr_i8, 3, 1},
    {"arr.u16", EXO_GGUF_UINT16, arr_u16, 2, 2},
    {"arr.i16", EXO_GGUF_INT16, arr_i16, 2, 2},
    {"arr.u32", EXO_GGUF_UINT32, arr_u32, 3, 4},
    {"arr.i32", EXO_GGUF_INT32, arr_i32, 3, 4},
    {"arr.f32", EXO_GGUF_FLOAT32, arr_f32, 3, 4},
    {"arr.bool", EXO_GGUF_BOOL, arr_bool, 4, 1},
    {"arr.u64", EXO_GGUF_UINT64, arr_u64, 2, 8},
    {"arr.i64", EXO_GGUF_INT64, arr_i64, 2, 8},
    {"arr.f64", EXO_GGUF_FLOAT64, arr_f64, 2, 8},
    {"arr.empty", EXO_GGUF_FLOAT32, NULL, 0, 4},
};
#define N_NUM_ARRS (sizeof num_arrs / sizeof num_arrs[0])

/* Writes the round-trip file; alignment 0 means the default. */
static void write_roundtrip(const char *path, uint32_t alignment)
{
    exo_gguf_writer *w = exo__gguf_writer_new();
    CHECK(w != NULL);
    CHECK(exo__gguf_writer_add_str(w, "general.architecture", "llama") == 0);
    if (alignment) CHECK(exo__gguf_writer_add_u32(w, "general.alignment", alignment) == 0);
    CHECK(exo__gguf_writer_add_u32(w, "test.u32", 4000000000u) == 0);
    CHECK(exo__gguf_writer_add_u32(w, "test.u32_small", 30) == 0);
    CHECK(exo__gguf_writer_add_i32(w, "test.i32", -123456) == 0);
    CHECK(exo__gguf_writer_add_i32(w, "test.i32_pos", 77) == 0);
    CHECK(exo__gguf_writer_add_f32(w, "test.f32", 1e-5f) == 0);
    CHECK(exo__gguf_writer_add_bool(w, "test.true", true) == 0);
    CHECK(exo__gguf_writer_add_bool(w, "test.false", false) == 0);
    CHECK(exo__gguf_writer_add_str(w, "test.empty_str", "") == 0);
    for (size_t i = 0; i < N_NUM_ARRS; i++)
        CHECK(exo__gguf_writer_add_arr(w, num_arrs[i].key, num_arrs[i].type, num_arrs[i].data,
                                      num_arrs[i].n) == 0);
    CHECK(exo__gguf_writer_add_str_arr(w, "arr.str", arr_str, 4) == 0);
    CHECK(exo__gguf_writer_add_str_arr(w, "arr.str_empty", NULL, 0) == 0);
    for (size_t i = 0; i < N_RT; i++) {
        uint8_t *d = malloc(rt_tensors[i].size);
        for (size_t j = 0; j < rt_tensors[i].size; j++) d[j] = pattern(i, j);
        CHECK(exo__gguf_writer_add_tensor(w, rt_tensors[i].name, rt_tensors[i].dtype,
                                         rt_tensors[i].n_dims, rt_tensors[i].ne, d,
                                         rt_tensors[i].size) == 0);
        free(d);
    }
    CHECK_MSG(exo__gguf_writer_write(w, path) == 0, "%s", exo_last_error());
    exo__gguf_writer_free(w);
}

static void check_roundtrip(const char *path, size_t alignment)
{
    exo_gguf *g = NULL;
    int rc = exo__gguf_open(path, &g);
    CHECK_MSG(rc == 0, "%s", exo_last_error());
    if (rc) return;
    CHECK(exo__gguf_version(g) == 3);
    CHECK(exo__gguf_alignment(g) == alignment);
    CHECK(exo__gguf_kv_count(g) == 9 + (int64_t)N_NUM_ARRS + 2 + (alignment != 32));
    CHECK(exo__gguf_tensor_count(g) == (int64_t)N_RT);

    const char *s;
    size_t len;
    CHECK(exo__gguf_get_str(g, "general.architecture", &s, &len) == 0 && len == 5 &&
          memcmp(s, "llama", 5) == 0);
    CHECK(exo__gguf_get_str(g, "test.empty_str", &s, &len) == 0 && len == 0);

    uint32_t u32;
    int64_t i64;
    float f;
    bool b;
    CHECK(exo__gguf_get_u32(g, "test.u32", &u32) == 0 && u32 == 4000000000u);
    CHECK(exo__gguf_get_i64(g, "test.u32", &i64) == 0 && i64 == 4000000000ll);
    CHECK(exo__gguf_get_i64(g, "test.i32", &i64) == 0 && i64 == -123456);
    CHECK(exo__gguf_get_u32(g, "test.i32_pos", &u32) == 0 && u32 == 77);
    CHECK(exo__gguf_get_u32(g, "test.i32", &u32) == EXO_ERANGE);
    CHECK(strstr(exo_last_error(), "test.i32") != NULL);
    CHECK(exo__gguf_get_f32(g, "test.f32", &f) == 0 && f == 1e-5f);
    CHECK(exo__gguf_get_f32(g, "test.u32_small", &f) == 0 && f == 30.0f);
    CHECK(exo__gguf_get_f32(g, "test.i32", &f) == 0 && f == -123456.0f);
    CHECK(exo__gguf_get_bool(g, "test.true", &b) == 0 && b);
    CHECK(exo__gguf_get_bool(g, "test.false", &b) == 0 && !b);
    CHECK(exo__gguf_get_i64(g, "test.true", &i64) == 0 && i64 == 1);
    /* wrong types and missing keys name the key */
    CHECK(exo__gguf_get_bool(g, "test.u32", &b) == EXO_EFORMAT);
    CHECK(strstr(exo_last_error(), "test.u32") != NULL);
    CHECK(exo__gguf_get_i64(g, "test.f32", &i64) == EXO_EFORMAT);
    CHECK(exo__gguf_get_f32(g, "general.architecture", &f) == EXO_EFORMAT);
    CHECK(exo__gguf_get_str(g, "test.u32", &s, &len) == EXO_EFORMAT);
    CHECK(exo__gguf_get_i64(g, "no.such.key", &i64) == EXO_EINVAL);
    CHECK(strstr(exo_last_error(), "no.such.key") != NULL);
    CHECK(exo__gguf_find_key(g, "no.such.key") == -1);
    CHECK(exo__gguf_find_key(g, "") == -1);
    CHECK(exo__gguf_find_key(g, "test") == -1);

    /* keys come back in order written with their types */
    CHECK(strcmp(exo__gguf_key_name(g, 0), "general.architecture") == 0);
    CHECK(exo__gguf_kv_type(g, 0) == EXO_GGUF_STRING);
    CHECK(exo__gguf_key_name(g, exo__gguf_kv_count(g)) == NULL);
    CHECK(exo__gguf_kv_type(g, -1) < 0);
    for (int64_t i = 0; i < exo__gguf_kv_count(g); i++)
        CHECK(exo__gguf_find_key(g, exo__gguf_key_name(g, i)) == i);

    for (size_t i = 0; i < N_NUM_ARRS; i++) {
        int et;
        uint64_t n;
        CHECK_MSG(exo__gguf_get_arr(g, num_arrs[i].key, &et, &n) == 0, "%s", num_arrs[i].key);
        CHECK(et == num_arrs[i].type && n == num_arrs[i].n);
        int64_t k = exo__gguf_find_key(g, num_arrs[i].key);
        CHECK(exo__gguf_kv_type(g, k) == EXO_GGUF_ARRAY);
        const void *d = exo__gguf_arr_data(g, k);
        CHECK(d != NULL);
        if (d && n) CHECK_MSG(memcmp(d, num_arrs[i].data, n * num_arrs[i].esz) == 0, "%s", num_arrs[i].key);
        CHECK(exo__gguf_arr_str(g, k, 0, &s, &len) == EXO_EFORMAT);
    }
    int et;
    uint64_t n;
    CHECK(exo__gguf_get_arr(g, "arr.str", &et, &n) == 0 && et == EXO_GGUF_STRING && n == 4);
    int64_t k = exo__gguf_find_key(g, "arr.str");
    for (uint64_t j = 0; j < 4; j++) {
        CHECK(exo__gguf_arr_str(g, k, j, &s, &len) == 0);
        CHECK(len == strlen(arr_str[j]) && memcmp(s, arr_str[j], len) == 0);
    }
    CHECK(exo__gguf_arr_str(g, k, 4, &s, &len) == EXO_ERANGE);
    CHECK(strstr(exo_last_error(), "arr.str") != NULL);
    CHECK(exo__gguf_arr_data(g, k) == NULL);
    CHECK(exo__gguf_get_arr(g, "arr.str_empty", &et, &n) == 0 && et == EXO_GGUF_STRING && n == 0);
    CHECK(exo__gguf_arr_str(g, exo__gguf_find_key(g, "arr.str_empty"), 0, &s, &len) == EXO_ERANGE);
    CHECK(exo__gguf_get_arr(g, "test.u32", &et, &n) == EXO_EFORMAT);

    uint64_t expect_off = 0;
    for (size_t i = 0; i < N_RT; i++) {
        int64_t ti = exo__gguf_find_tensor(g, rt_tensors[i].name);
        CHECK_MSG(ti == (int64_t)i, "tensor %s at %lld", rt_tensors[i].name, (long long)ti);
        const exo_gguf_tensor *t = exo__gguf_tensor_at(g, ti);
        if (!t) continue;
        CHECK(strcmp(t->name, rt_tensors[i].name) == 0);
        CHECK(t->dtype == rt_tensors[i].dtype);
        CHECK(t->n_dims == rt_tensors[i].n_dims);
        for (int d = 0; d < 4; d++) CHECK(t->ne[d] == rt_tensors[i].ne[d]);
        CHECK_MSG(t->size == rt_tensors[i].size, "%s size %zu", t->name, t->size);
        CHECK(t->offset == expect_off); /* llama.cpp's layout: back to back, padded */
        CHECK(((uintptr_t)t->data - (uintptr_t)exo__gguf_tensor_at(g, 0)->data) == t->offset);
        CHECK((t->offset % alignment) == 0);
        expect_off += (t->size + alignment - 1) / alignment * alignment;
        bool same = true;
        for (size_t j = 0; j < t->size; j++)
            if (((const uint8_t *)t->data)[j] != pattern(i, j)) same = false;
        CHECK_MSG(same, "tensor %s data differs", t->name);
    }
    CHECK(exo__gguf_find_tensor(g, "nope") == -1);
    CHECK(exo__gguf_tensor_at(g, (int64_t)N_RT) == NULL);
    CHECK(exo__gguf_tensor_at(g, -1) == NULL);
    /* the data section starts aligned within the file */
    const uint8_t *first = exo__gguf_tensor_at(g, 0)->data;
    CHECK(exo__gguf_file_size(g) >= expect_off);
    (void)first;
    exo__gguf_close(g);
}

static void test_writer_errors(void)
{
    exo_gguf_writer *w = exo__gguf_writer_new();
    int64_t ne[4] = {32, 1, 1, 1};
    uint8_t d[64] = {0};
    CHECK(exo__gguf_writer_add_u32(w, "a", 1) == 0);
    CHECK(exo__gguf_writer_add_i32(w, "a", 1) == EXO_EINVAL);
    CHECK(strstr(exo_last_error(), "duplicate key 'a'") != NULL);
    CHECK(exo__gguf_writer_add_u32(w, "", 1) == EXO_EINVAL);
    CHECK(exo__gguf_writer_add_u32(w, "general.alignment", 3) == EXO_EINVAL);
    CHECK(exo__gguf_writer_add_i32(w, "general.alignment", 32) == EXO_EINVAL);
    CHECK(exo__gguf_writer_add_arr(w, "x", EXO_GGUF_STRING, d, 1) == EXO_EINVAL);
    CHECK(exo__gguf_writer_add_arr(w, "x", 13, d, 1) == EXO_EINVAL);
    uint8_t bad_bool[1] = {2};
    CHECK(exo__gguf_writer_add_arr(w, "x", EXO_GGUF_BOOL, bad_bool, 1) == EXO_EINVAL);
    CHECK(exo__gguf_writer_add_tensor(w, "t", EXO_DTYPE_Q8_0, 1, ne, d, 34) == 0);
    CHECK(exo__gguf_writer_add_tensor(w, "t", EXO_DTYPE_Q8_0, 1, ne, d, 34) == EXO_EINVAL);
    CHECK(strstr(exo_last_error(), "duplicate tensor 't'") != NULL);
    CHECK(exo__gguf_writer_add_tensor(w, "u", EXO_DTYPE_Q8_0, 1, ne, d, 33) == EXO_EINVAL);
    CHECK(exo__gguf_writer_add_tensor(w, "u", 16, 1, ne, d, 22) == EXO_ENOTSUP);
    CHECK(strstr(exo_last_error(), "unsupported dtype 16 (IQ2_XXS) for tensor 'u'") != NULL);
    CHECK(exo__gguf_writer_add_tensor(w, "u", EXO_DTYPE_Q8_K, 1, ne, d, 22) == EXO_ENOTSUP);
    CHECK(exo__gguf_writer_add_tensor(w, "u", EXO_DTYPE_F32, 0, ne, d, 4) == EXO_EINVAL);
    CHECK(exo__gguf_writer_add_tensor(w, "u", EXO_DTYPE_F32, 5, ne, d, 4) == EXO_EINVAL);
    int64_t ne_bad[4] = {16, 1, 1, 1};
    CHECK(exo__gguf_writer_add_tensor(w, "u", EXO_DTYPE_Q4_0, 1, ne_bad, d, 9) == EXO_EINVAL);
    int64_t ne_zero[4] = {4, 0, 1, 1};
    CHECK(exo__gguf_writer_add_tensor(w, "u", EXO_DTYPE_F32, 2, ne_zero, d, 0) == EXO_EINVAL);
    char longname[80];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    CHECK(exo__gguf_writer_add_tensor(w, longname, EXO_DTYPE_F32, 1, ne, d, 128) == EXO_EINVAL);
    /* the failed adds left the writer usable: it still writes a valid file */
    char path[128];
    tmp_path(path, sizeof path, "after_errors.gguf");
    CHECK(exo__gguf_writer_write(w, path) == 0);
    exo_gguf *g = NULL;
    CHECK_MSG(exo__gguf_open(path, &g) == 0, "%s", exo_last_error());
    CHECK(exo__gguf_kv_count(g) == 1 && exo__gguf_tensor_count(g) == 1);
    exo__gguf_close(g);
    tmp_path(path, sizeof path, "no/such/dir.gguf");
    CHECK(exo__gguf_writer_write(w, path) == EXO_EIO);
    CHECK(strstr(exo_last_error(), path) != NULL);
    exo__gguf_writer_free(w);
}

/* Scalar types the writer has no call for, built by hand. */
static void test_all_scalar_types(void)
{
    struct bb kv = {0}, f;
    bb_str(&kv, "u8"); bb_u32(&kv, EXO_GGUF_UINT8); bb_u8(&kv, 200);
    bb_str(&kv, "i8"); bb_u32(&kv, EXO_GGUF_INT8); bb_u8(&kv, 0x80);
    bb_str(&kv, "u16"); bb_u32(&kv, EXO_GGUF_UINT16); bb_u16(&kv, 60000);
    bb_str(&kv, "i16"); bb_u32(&kv, EXO_GGUF_INT16); bb_u16(&kv, 0xffff);
    bb_str(&kv, "u64big"); bb_u32(&kv, EXO_GGUF_UINT64); bb_u64(&kv, UINT64_MAX);
    bb_str(&kv, "u64"); bb_u32(&kv, EXO_GGUF_UINT64); bb_u64(&kv, 1ull << 33);
    bb_str(&kv, "i64"); bb_u32(&kv, EXO_GGUF_INT64); bb_u64(&kv, (uint64_t)-5);
    bb_str(&kv, "f64"); bb_u32(&kv, EXO_GGUF_FLOAT64); bb_f64(&kv, 0.25);
    bb_str(&kv, "f64big"); bb_u32(&kv, EXO_GGUF_FLOAT64); bb_f64(&kv, 1e300);
    bb_str(&kv, "f32"); bb_u32(&kv, EXO_GGUF_FLOAT32); bb_f32(&kv, -1.5f);
    build(&f, 2, &kv, 10, NULL, 0, 32, 0); /* version 2 has the same layout */
    exo_gguf *g = NULL;
    int rc = exo__gguf_open_memory(f.p, f.n, &g);
    CHECK_MSG(rc == 0, "%s", exo_last_error());
    if (!rc) {
        int64_t v;
        uint32_t u;
        float x;
        CHECK(exo__gguf_version(g) == 2);
        CHECK(exo__gguf_get_i64(g, "u8", &v) == 0 && v == 200);
        CHECK(exo__gguf_get_i64(g, "i8", &v) == 0 && v == -128);
        CHECK(exo__gguf_get_u32(g, "i8", &u) == EXO_ERANGE);
        CHECK(exo__gguf_get_i64(g, "u16", &v) == 0 && v == 60000);
        CHECK(exo__gguf_get_i64(g, "i16", &v) == 0 && v == -1);
        CHECK(exo__gguf_get_i64(g, "u64big", &v) == EXO_ERANGE);
        CHECK(strstr(exo_last_error(), "u64big") != NULL);
        CHECK(exo__gguf_get_u32(g, "u64", &u) == EXO_ERANGE);
        CHECK(exo__gguf_get_i64(g, "u64", &v) == 0 && v == (1ll << 33));
        CHECK(exo__gguf_get_i64(g, "i64", &v) == 0 && v == -5);
        CHECK(exo__gguf_get_f32(g, "f64", &x) == 0 && x == 0.25f);
        CHECK(exo__gguf_get_f32(g, "f64big", &x) == EXO_ERANGE);
        CHECK(exo__gguf_get_f32(g, "i64", &x) == 0 && x == -5.0f);
        CHECK(exo__gguf_get_f32(g, "f32", &x) == 0 && x == -1.5f);
        CHECK(exo__gguf_get_f32(g, "u8", &x) == 0 && x == 200.0f);
        CHECK(exo__gguf_kv_type(g, exo__gguf_find_key(g, "f64")) == EXO_GGUF_FLOAT64);
        CHECK(exo__gguf_tensor_count(g) == 0);
        exo__gguf_close(g);
    }
    bb_free(&kv);
    bb_free(&f);
}

/* Every prefix of a valid file must fail cleanly, up to the end of the last
 * tensor's data (only the trailing padding may be cut). */
static void test_truncation(const char *path)
{
    size_t n;
    uint8_t *full = read_file(path, &n);
    CHECK(full != NULL);
    if (!full) return;
    exo_gguf *g = NULL;
    CHECK(exo__gguf_open_memory(full, n, &g) == 0);
    size_t end = 0;
    for (int64_t i = 0; i < exo__gguf_tensor_count(g); i++) {
        const exo_gguf_tensor *t = exo__gguf_tensor_at(g, i);
        size_t e = (size_t)((const uint8_t *)t->data - full) + t->size;
        if (e > end) end = e;
    }
    exo__gguf_close(g);
    CHECK(end > 0 && end <= n);
    int bad = 0;
    for (size_t len = 0; len < end; len++) {
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, full, len);
        g = (exo_gguf *)0x1;
        int rc = exo__gguf_open_memory(copy, len, &g);
        const char *msg = exo_last_error();
        bool ok = rc == EXO_EFORMAT && g == NULL &&
                  (strstr(msg, "truncated") || strstr(msg, "past the end") || strstr(msg, "too short"));
        if (!ok && bad++ < 5)
            fprintf(stderr, "truncated at %zu of %zu: rc %d, message: %s\n", len, n, rc, msg);
        if (rc == 0) exo__gguf_close(g);
        free(copy);
    }
    CHECK_MSG(bad == 0, "%d truncations did not fail cleanly", bad);
    /* the trailing padding after the last tensor is not needed */
    CHECK(exo__gguf_open_memory(full, end, &g) == 0);
    exo__gguf_close(g);

    /* and from disk, where the message names the path */
    char tpath[128];
    tmp_path(tpath, sizeof tpath, "truncated.gguf");
    size_t cuts[] = {0, 3, 23, 24, 40, end / 2, end - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_file(tpath, full, cuts[i]);
        g = (exo_gguf *)0x1;
        CHECK(exo__gguf_open(tpath, &g) == EXO_EFORMAT && g == NULL);
        CHECK_MSG(strstr(exo_last_error(), tpath) != NULL, "%s", exo_last_error());
    }
    free(full);
}

static void test_paths(void)
{
    exo_gguf *g = (exo_gguf *)0x1;
    char path[128];
    tmp_path(path, sizeof path, "does-not-exist.gguf");
    CHECK(exo__gguf_open(path, &g) == EXO_EIO && g == NULL);
    CHECK(strstr(exo_last_error(), path) != NULL);
    CHECK(strstr(exo_last_error(), "No such file") != NULL);
    g = (exo_gguf *)0x1;
    CHECK(exo__gguf_open(tmpdir, &g) == EXO_EIO && g == NULL);
    CHECK(strstr(exo_last_error(), tmpdir) != NULL);
    CHECK(strstr(exo_last_error(), "not a regular file") != NULL);
    tmp_path(path, sizeof path, "empty.gguf");
    write_file(path, "", 0);
    CHECK(exo__gguf_open(path, &g) == EXO_EFORMAT);
    CHECK(strstr(exo_last_error(), "too short") != NULL);
    CHECK(exo__gguf_open(NULL, &g) == EXO_EINVAL);
    CHECK(exo__gguf_open_memory(NULL, 0, &g) == EXO_EFORMAT && g == NULL);
}

/* One tensor file: name "t", dims, type, offset; data_bytes of data. */
static void one_tensor(struct bb *f, uint32_t n_dims, uint64_t ne0, uint64_t ne1, uint32_t type,
                       uint64_t offset, size_t data_bytes)
{
    struct tinfo t = {"t", n_dims, {ne0, ne1, 1, 1, 1}, type, offset};
    build(f, 3, NULL, 0, &t, 1, 32, data_bytes);
}

static void test_corruptions(void)
{
    struct bb f, kv = {0};

    /* header */
    build(&f, 3, NULL, 0, NULL, 0, 32, 0);
    expect_fail_at(__LINE__, f.p, 23, EXO_EFORMAT, "too short", NULL);
    f.p[3] = 'X';
    expect_fail(&f, EXO_EFORMAT, "bad magic 'GGUX'", NULL);
    bb_free(&f);
    build(&f, 1, NULL, 0, NULL, 0, 32, 0);
    expect_fail(&f, EXO_ENOTSUP, "version 1", "2 or 3");
    bb_free(&f);
    build(&f, 4, NULL, 0, NULL, 0, 32, 0);
    expect_fail(&f, EXO_ENOTSUP, "version 4", NULL);
    bb_free(&f);
    build(&f, 3u << 24, NULL, 0, NULL, 0, 32, 0);
    expect_fail(&f, EXO_ENOTSUP, "big-endian", NULL);
    bb_free(&f);

    /* absurd counts are rejected before anything is allocated */
    build(&f, 3, NULL, 1ull << 40, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "kv_count 1099511627776", "limit");
    bb_free(&f);
    build(&f, 3, NULL, 0, NULL, 0, 32, 0);
    memcpy(f.p + 8, &(uint64_t){UINT64_MAX}, 8);
    expect_fail(&f, EXO_EFORMAT, "tensor_count 18446744073709551615", "limit");
    memcpy(f.p + 8, &(uint64_t){1000}, 8);
    expect_fail(&f, EXO_EFORMAT, "tensor_count 1000", "bytes");
    memcpy(f.p + 8, &(uint64_t){0}, 8);
    memcpy(f.p + 16, &(uint64_t){60000}, 8);
    expect_fail(&f, EXO_EFORMAT, "kv_count 60000", "bytes");
    bb_free(&f);

    /* keys and string values */
    bb_u64(&kv, 1ull << 62);
    bb_put(&kv, "abcdefghijklmnop", 16);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "key 0 has length 4611686018427387904", "limit");
    bb_free(&f); bb_free(&kv);
    bb_u64(&kv, 100);
    bb_put(&kv, "abcdefghijklmnop", 16);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "truncated", "key 0");
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "k"); bb_u32(&kv, EXO_GGUF_STRING); bb_u64(&kv, UINT64_MAX - 3);
    bb_put(&kv, "abcdefghijklmnop", 16);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "key 'k'", "limit");
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "k"); bb_u32(&kv, EXO_GGUF_STRING); bb_u64(&kv, 1000);
    bb_put(&kv, "abcdefghijklmnop", 16);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "truncated", "string value of key 'k'");
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, ""); bb_u32(&kv, EXO_GGUF_UINT32); bb_u32(&kv, 1);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "empty key", NULL);
    bb_free(&f); bb_free(&kv);
    bb_u64(&kv, 3); bb_put(&kv, "a\0b", 3); bb_u32(&kv, EXO_GGUF_UINT32); bb_u32(&kv, 1);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "'a\\x00b'", "NUL");
    bb_free(&f); bb_free(&kv);

    /* value types */
    bb_str(&kv, "weird"); bb_u32(&kv, 13); bb_u64(&kv, 0);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "key 'weird' has unknown value type 13", NULL);
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "weird"); bb_u32(&kv, 0x80000000u); bb_u64(&kv, 0);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "unknown value type 2147483648", NULL);
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "arr"); bb_u32(&kv, EXO_GGUF_ARRAY); bb_u32(&kv, 13); bb_u64(&kv, 1); bb_u64(&kv, 0);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "key 'arr' is an array of unknown element type 13", NULL);
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "nest"); bb_u32(&kv, EXO_GGUF_ARRAY); bb_u32(&kv, EXO_GGUF_ARRAY); bb_u64(&kv, 1);
    bb_u32(&kv, EXO_GGUF_UINT8); bb_u64(&kv, 1); bb_u8(&kv, 1);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_ENOTSUP, "key 'nest' is an array of arrays", NULL);
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "flag"); bb_u32(&kv, EXO_GGUF_BOOL); bb_u8(&kv, 2);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "key 'flag': bool value 2", NULL);
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "flags"); bb_u32(&kv, EXO_GGUF_ARRAY); bb_u32(&kv, EXO_GGUF_BOOL); bb_u64(&kv, 2);
    bb_u8(&kv, 1); bb_u8(&kv, 7);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "key 'flags': bool element 1 is 7", NULL);
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "big"); bb_u32(&kv, EXO_GGUF_ARRAY); bb_u32(&kv, EXO_GGUF_UINT8); bb_u64(&kv, 1ull << 40);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "key 'big': array length 1099511627776", "limit");
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "nums"); bb_u32(&kv, EXO_GGUF_ARRAY); bb_u32(&kv, EXO_GGUF_UINT64); bb_u64(&kv, 1000);
    bb_u64(&kv, 1);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "truncated", "array 'nums'");
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "toks"); bb_u32(&kv, EXO_GGUF_ARRAY); bb_u32(&kv, EXO_GGUF_STRING); bb_u64(&kv, 1000000);
    bb_str(&kv, "a");
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "truncated", "array 'toks'");
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "toks"); bb_u32(&kv, EXO_GGUF_ARRAY); bb_u32(&kv, EXO_GGUF_STRING); bb_u64(&kv, 3);
    bb_str(&kv, "a"); bb_u64(&kv, 1ull << 50); bb_str(&kv, "c");
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "string element 1 of array 'toks' has length", "limit");
    bb_free(&f); bb_free(&kv);
    bb_str(&kv, "toks"); bb_u32(&kv, EXO_GGUF_ARRAY); bb_u32(&kv, EXO_GGUF_STRING); bb_u64(&kv, 3);
    bb_str(&kv, "a"); bb_u64(&kv, 30); bb_str(&kv, "c");
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "truncated", "string element 1 of array 'toks'");
    bb_free(&f); bb_free(&kv);

    /* duplicate keys */
    kv_u32(&kv, "dup", 1); kv_str(&kv, "other", "x"); kv_i32(&kv, "dup", 2);
    build(&f, 3, &kv, 3, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "duplicate key 'dup'", NULL);
    bb_free(&f); bb_free(&kv);

    /* alignment */
    kv_u32(&kv, "general.alignment", 48);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "general.alignment is 48", "power of two");
    bb_free(&f); bb_free(&kv);
    kv_u32(&kv, "general.alignment", 0);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "general.alignment is 0", NULL);
    bb_free(&f); bb_free(&kv);
    kv_u32(&kv, "general.alignment", 1u << 31);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "general.alignment is 2147483648", NULL);
    bb_free(&f); bb_free(&kv);
    kv_i32(&kv, "general.alignment", 32);
    build(&f, 3, &kv, 1, NULL, 0, 32, 0);
    expect_fail(&f, EXO_EFORMAT, "general.alignment has type int32", "uint32");
    bb_free(&f); bb_free(&kv);
    /* a valid non-default alignment places the data section there */
    {
        struct tinfo t = {"t", 1, {8}, EXO_DTYPE_F32, 0};
        kv_u32(&kv, "general.alignment", 256);
        build(&f, 3, &kv, 1, &t, 1, 256, 32);
        exo_gguf *g = NULL;
        CHECK_MSG(exo__gguf_open_memory(f.p, f.n, &g) == 0, "%s", exo_last_error());
        if (g) {
            CHECK(exo__gguf_alignment(g) == 256);
            CHECK((const uint8_t *)exo__gguf_tensor_at(g, 0)->data == f.p + 256);
            exo__gguf_close(g);
        }
        bb_free(&f); bb_free(&kv);
    }

    /* tensor infos */
    one_tensor(&f, 0, 4, 1, EXO_DTYPE_F32, 0, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't' has n_dims 0", "1..4");
    bb_free(&f);
    one_tensor(&f, 5, 4, 1, EXO_DTYPE_F32, 0, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't' has n_dims 5", NULL);
    bb_free(&f);
    one_tensor(&f, 2, 4, 0, EXO_DTYPE_F32, 0, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't' has ne[1] = 0", NULL);
    bb_free(&f);
    one_tensor(&f, 2, 1ull << 40, 1ull << 40, EXO_DTYPE_F32, 0, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't'", "overflows");
    bb_free(&f);
    one_tensor(&f, 1, 1ull << 60, 1, EXO_DTYPE_F32, 0, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't'", "past the end");
    bb_free(&f);
    one_tensor(&f, 1, UINT64_MAX, 1, EXO_DTYPE_F32, 0, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't' has ne[0] = 18446744073709551615", NULL);
    bb_free(&f);
    one_tensor(&f, 1, 16, 1, EXO_DTYPE_Q4_0, 0, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't': ne[0] = 16", "Q4_0 block size 32");
    bb_free(&f);
    one_tensor(&f, 1, 32, 1, 9, 0, 64);
    expect_fail(&f, EXO_ENOTSUP, "unsupported tensor type 9 (Q8_1) in tensor 't'", NULL);
    bb_free(&f);
    one_tensor(&f, 1, 256, 1, 16, 0, 512);
    expect_fail(&f, EXO_ENOTSUP, "unsupported tensor type 16 (IQ2_XXS) in tensor 't'", NULL);
    bb_free(&f);
    one_tensor(&f, 1, 256, 1, 21, 0, 512);
    expect_fail(&f, EXO_ENOTSUP, "unsupported tensor type 21 (IQ3_S) in tensor 't'", NULL);
    bb_free(&f);
    one_tensor(&f, 1, 256, 1, EXO_DTYPE_Q8_K, 0, 512);
    expect_fail(&f, EXO_ENOTSUP, "unsupported tensor type 15 (Q8_K)", NULL);
    bb_free(&f);
    one_tensor(&f, 1, 32, 1, 1000, 0, 64);
    expect_fail(&f, EXO_EFORMAT, "unknown tensor type 1000 in tensor 't'", NULL);
    bb_free(&f);
    one_tensor(&f, 1, 4, 1, EXO_DTYPE_F32, 8, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't' offset 8 is not a multiple of the alignment 32", NULL);
    bb_free(&f);
    one_tensor(&f, 1, 4, 1, EXO_DTYPE_F32, 1ull << 40, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't' offset 1099511627776 is past the end", NULL);
    bb_free(&f);
    one_tensor(&f, 1, 4, 1, EXO_DTYPE_F32, 64, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't' offset 64 is past the end", NULL);
    bb_free(&f);
    one_tensor(&f, 1, 32, 1, EXO_DTYPE_F32, 32, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't' data [32, +128) extends past the end", NULL);
    bb_free(&f);
    one_tensor(&f, 1, 4, 1, EXO_DTYPE_F32, UINT64_MAX - 31, 64);
    expect_fail(&f, EXO_EFORMAT, "tensor 't' offset 18446744073709551584 is past the end", NULL);
    bb_free(&f);
    /* a tensor name that is empty, too long, or over the limit */
    {
        struct tinfo t = {"", 1, {4}, EXO_DTYPE_F32, 0};
        build(&f, 3, NULL, 0, &t, 1, 32, 16);
        expect_fail(&f, EXO_EFORMAT, "empty tensor name", NULL);
        bb_free(&f);
        char longname[300];
        memset(longname, 'n', sizeof longname - 1);
        longname[sizeof longname - 1] = '\0';
        t.name = longname;
        build(&f, 3, NULL, 0, &t, 1, 32, 16);
        expect_fail(&f, EXO_EFORMAT, "name of tensor 0 has length 299", "limit");
        bb_free(&f);
    }
    /* overlapping and duplicate tensors; 96 bytes of data */
    {
        struct tinfo t[3] = {
            {"a", 1, {8}, EXO_DTYPE_F32, 0},
            {"b", 1, {16}, EXO_DTYPE_F32, 32}, /* [32, 96) */
            {"c", 1, {4}, EXO_DTYPE_F32, 64},  /* inside b */
        };
        build(&f, 3, NULL, 0, t, 3, 32, 96);
        expect_fail(&f, EXO_EFORMAT, "tensors 'b' [32, +64) and 'c' [64, +16) overlap", NULL);
        bb_free(&f);
        t[2].offset = 0; /* same offset as a, listed last */
        build(&f, 3, NULL, 0, t, 3, 32, 96);
        expect_fail(&f, EXO_EFORMAT, "overlap", "'c'");
        bb_free(&f);
        t[2].name = "a";
        t[2].offset = 96;
        build(&f, 3, NULL, 0, t, 3, 32, 128);
        expect_fail(&f, EXO_EFORMAT, "duplicate tensor name 'a'", NULL);
        bb_free(&f);
        /* the same three in reverse file order, disjoint: accepted */
        t[2].name = "c";
        t[0].offset = 96;
        t[1].offset = 0;
        t[2].offset = 64;
        build(&f, 3, NULL, 0, t, 3, 32, 128);
        exo_gguf *g = NULL;
        CHECK_MSG(exo__gguf_open_memory(f.p, f.n, &g) == 0, "%s", exo_last_error());
        if (g) {
            CHECK(exo__gguf_tensor_at(g, exo__gguf_find_tensor(g, "a"))->offset == 96);
            exo__gguf_close(g);
        }
        bb_free(&f);
    }
    /* data section start beyond the file: tensor infos end, padding cut */
    {
        struct tinfo t = {"t", 1, {4}, EXO_DTYPE_F32, 0};
        build(&f, 3, NULL, 0, &t, 1, 1, 0);
        expect_fail(&f, EXO_EFORMAT, "data section starts at", "past the end");
        bb_free(&f);
    }
}

/* A 50k-entry string array: every element is reachable in O(1). */
static void test_big_string_array(void)
{
    enum { N = 50000 };
    char **strs = malloc(N * sizeof *strs);
    for (int i = 0; i < N; i++) {
        strs[i] = malloc(16);
        snprintf(strs[i], 16, "tok%d", i);
    }
    exo_gguf_writer *w = exo__gguf_writer_new();
    CHECK(exo__gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", (const char *const *)strs, N) == 0);
    char path[128];
    tmp_path(path, sizeof path, "big.gguf");
    CHECK(exo__gguf_writer_write(w, path) == 0);
    exo__gguf_writer_free(w);
    exo_gguf *g = NULL;
    CHECK_MSG(exo__gguf_open(path, &g) == 0, "%s", exo_last_error());
    if (g) {
        int64_t k = exo__gguf_find_key(g, "tokenizer.ggml.tokens");
        int bad = 0;
        for (int i = N - 1; i >= 0; i -= 7) {
            const char *s;
            size_t len;
            if (exo__gguf_arr_str(g, k, (uint64_t)i, &s, &len) != 0 || len != strlen(strs[i]) ||
                memcmp(s, strs[i], len) != 0)
                bad++;
        }
        CHECK(bad == 0);
        exo__gguf_close(g);
    }
    for (int i = 0; i < N; i++) free(strs[i]);
    free(strs);
}

static void test_real_file(const char *path)
{
    exo_gguf *g = NULL;
    int rc = exo__gguf_open(path, &g);
    CHECK_MSG(rc == 0, "%s", exo_last_error());
    if (rc) return;
    const char *s;
    size_t len;
    uint32_t u;
    CHECK(exo__gguf_get_str(g, "general.architecture", &s, &len) == 0 && len == 5 &&
          memcmp(s, "llama", 5) == 0);
    CHECK(exo__gguf_get_u32(g, "llama.block_count", &u) == 0 && u == 30);
    CHECK(exo__gguf_tensor_count(g) == 272);
    int64_t ti = exo__gguf_find_tensor(g, "token_embd.weight");
    CHECK(ti >= 0);
    const exo_gguf_tensor *t = exo__gguf_tensor_at(g, ti);
    CHECK(t && t->dtype == EXO_DTYPE_Q8_0 && t->n_dims == 2 && t->ne[0] == 576 && t->ne[1] == 49152);
    CHECK(t && t->size == (size_t)576 / 32 * 34 * 49152);
    int et;
    uint64_t n;
    CHECK(exo__gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n) == 0 && et == EXO_GGUF_STRING &&
          n == 49152);
    int64_t k = exo__gguf_find_key(g, "tokenizer.ggml.tokens");
    CHECK(exo__gguf_arr_str(g, k, 0, &s, &len) == 0);
    CHECK(exo__gguf_arr_str(g, k, n - 1, &s, &len) == 0);
    for (int64_t i = 0; i < exo__gguf_tensor_count(g); i++)
        CHECK(exo__gguf_find_tensor(g, exo__gguf_tensor_at(g, i)->name) == i);
    printf("real file %s: %lld keys, %lld tensors, version %u, alignment %zu\n", path,
           (long long)exo__gguf_kv_count(g), (long long)exo__gguf_tensor_count(g), exo__gguf_version(g),
           exo__gguf_alignment(g));
    exo__gguf_close(g);
}

static void rm_tmpdir(void)
{
    const char *names[] = {"roundtrip.gguf", "roundtrip64.gguf", "after_errors.gguf", "truncated.gguf",
                           "empty.gguf", "big.gguf"};
    char path[128];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        tmp_path(path, sizeof path, names[i]);
        unlink(path);
    }
    rmdir(tmpdir);
}

/* dtype.c's table: every number GGUF defines has a name, the retired ones no
 * layout, and the sizes are those of ggml's block structs. */
static void test_dtype_table(void)
{
    static const struct {
        int dtype;
        const char *name;
        uint32_t block, bytes;
        bool loadable;
    } want[] = {
        {0, "F32", 1, 4, true},         {1, "F16", 1, 2, true},          {2, "Q4_0", 32, 18, true},
        {3, "Q4_1", 32, 20, true},      {6, "Q5_0", 32, 22, true},       {7, "Q5_1", 32, 24, true},
        {8, "Q8_0", 32, 34, true},      {9, "Q8_1", 32, 36, false},      {10, "Q2_K", 256, 84, true},
        {11, "Q3_K", 256, 110, true},   {12, "Q4_K", 256, 144, true},    {13, "Q5_K", 256, 176, true},
        {14, "Q6_K", 256, 210, true},   {15, "Q8_K", 256, 292, false},   {16, "IQ2_XXS", 256, 66, false},
        {17, "IQ2_XS", 256, 74, false}, {18, "IQ3_XXS", 256, 98, false}, {19, "IQ1_S", 256, 50, false},
        {20, "IQ4_NL", 32, 18, true},   {21, "IQ3_S", 256, 110, false},  {22, "IQ2_S", 256, 82, false},
        {23, "IQ4_XS", 256, 136, true}, {24, "I8", 1, 1, false},         {28, "F64", 1, 8, false},
        {29, "IQ1_M", 256, 56, false},  {30, "BF16", 1, 2, true},        {34, "TQ1_0", 256, 54, false},
        {35, "TQ2_0", 256, 66, false},  {39, "MXFP4", 32, 17, false},    {40, "NVFP4", 64, 36, false},
        {41, "Q1_0", 128, 18, false},   {42, "Q2_0", 64, 18, false},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const exo_dtype_info *d = exo__dtype_info_get(want[i].dtype);
        CHECK_MSG(d && strcmp(d->name, want[i].name) == 0 && d->block_size == want[i].block &&
                      d->type_size == want[i].bytes && d->loadable == want[i].loadable,
                  "dtype %d: %s", want[i].dtype, d ? d->name : "missing");
    }
    static const int retired[] = {4, 5, 31, 32, 33, 36, 37, 38};
    for (size_t i = 0; i < sizeof retired / sizeof retired[0]; i++) {
        const exo_dtype_info *d = exo__dtype_info_get(retired[i]);
        CHECK(d && strstr(d->name, "(removed)") && d->block_size == 0 && !d->loadable);
        CHECK(exo__dtype_info_bytes(retired[i], 256) == 0);
    }
    for (int t = 0; t <= 42; t++) CHECK_MSG(exo__dtype_info_get(t) != NULL, "dtype %d has no entry", t);
    CHECK(exo__dtype_info_get(-1) == NULL && exo__dtype_info_get(43) == NULL && exo__dtype_info_get(1 << 30) == NULL);
    CHECK(exo__dtype_info_bytes(EXO_DTYPE_Q5_0, 64) == 44 && exo__dtype_info_bytes(EXO_DTYPE_IQ4_XS, 512) == 272);
    CHECK(exo__dtype_info_bytes(EXO_DTYPE_F16, 7) == 14 && exo__dtype_info_bytes(43, 32) == 0);
}

int main(void)
{
    test_dtype_table();
    snprintf(tmpdir, sizeof tmpdir, "/tmp/exo_test_gguf.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    char path[128];
    tmp_path(path, sizeof path, "roundtrip.gguf");
    write_roundtrip(path, 0);
    check_roundtrip(path, 32);
    test_truncation(path);
    tmp_path(path, sizeof path, "roundtrip64.gguf");
    write_roundtrip(path, 64);
    check_roundtrip(path, 64);
    test_truncation(path);
    test_writer_errors();
    test_all_scalar_types();
    test_paths();
    test_corruptions();
    test_big_string_array();
    const char *real = getenv("EXO_TEST_REAL_GGUF");
    if (real && *real) test_real_file(real);
    else printf("EXO_TEST_REAL_GGUF not set: skipping the real-file checks\n");
    rm_tmpdir();
    CHECK_DONE();
}
