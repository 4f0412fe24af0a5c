/* fuzz_gguf.c: libFuzzer target for the GGUF reader.
 *
 * Opens the input with exo__gguf_open_memory and, when it is accepted, walks
 * everything the accessors can reach: every key through every getter (the
 * getters may refuse a type, never crash), every element of every array
 * (string elements through the O(1) index), and every tensor, reading its
 * first and last data byte. The input buffer is exactly the fuzzer's data, so
 * under ASan any read the validation let through past the end is caught.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Inative tests/fuzz_gguf.c \
 *       native/gguf.c native/error.c -o /tmp/fuzz_gguf
 *   tests/run-fuzz.sh /tmp/fuzz_gguf tests/fuzz/gguf/seeds tests/fuzz/gguf/crashes 120 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "gguf.h"

static volatile uint64_t sink;

static void touch(const void *p, size_t n)
{
    const uint8_t *b = p;
    if (n) sink += b[0] + b[n - 1];
}

static size_t elem_size(int t)
{
    switch (t) {
    case EXO_GGUF_UINT8: case EXO_GGUF_INT8: case EXO_GGUF_BOOL: return 1;
    case EXO_GGUF_UINT16: case EXO_GGUF_INT16: return 2;
    case EXO_GGUF_UINT32: case EXO_GGUF_INT32: case EXO_GGUF_FLOAT32: return 4;
    case EXO_GGUF_UINT64: case EXO_GGUF_INT64: case EXO_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    exo_gguf *g = NULL;
    if (exo__gguf_open_memory(data, size, &g) != 0) {
        if (g != NULL || exo_last_error()[0] == '\0') abort(); /* failures must be reported */
        return 0;
    }
    sink += exo__gguf_version(g) + exo__gguf_alignment(g) + exo__gguf_file_size(g);

    for (int64_t i = 0; i < exo__gguf_kv_count(g); i++) {
        const char *key = exo__gguf_key_name(g, i);
        if (!key || exo__gguf_find_key(g, key) != i) abort();
        int type = exo__gguf_kv_type(g, i);
        int64_t v64;
        uint32_t v32;
        float f;
        bool b;
        const char *s;
        size_t len;
        int et;
        uint64_t n;
        if (exo__gguf_get_i64(g, key, &v64) == 0) sink += (uint64_t)v64;
        if (exo__gguf_get_u32(g, key, &v32) == 0) sink += v32;
        if (exo__gguf_get_f32(g, key, &f) == 0) sink += (uint64_t)(f == f);
        if (exo__gguf_get_bool(g, key, &b) == 0) sink += b;
        if (exo__gguf_get_str(g, key, &s, &len) == 0) {
            if (type != EXO_GGUF_STRING) abort();
            touch(s, len);
        }
        if (exo__gguf_get_arr(g, key, &et, &n) == 0) {
            if (type != EXO_GGUF_ARRAY) abort();
            if (et == EXO_GGUF_STRING) {
                for (uint64_t j = 0; j < n; j++) {
                    if (exo__gguf_arr_str(g, i, j, &s, &len) != 0) abort();
                    touch(s, len);
                }
                if (exo__gguf_arr_str(g, i, n, &s, &len) == 0) abort();
            } else {
                const void *d = exo__gguf_arr_data(g, i);
                if (!d) abort();
                touch(d, (size_t)n * elem_size(et));
            }
        }
    }
    if (exo__gguf_key_name(g, exo__gguf_kv_count(g)) != NULL) abort();

    for (int64_t i = 0; i < exo__gguf_tensor_count(g); i++) {
        const exo_gguf_tensor *t = exo__gguf_tensor_at(g, i);
        if (!t || exo__gguf_find_tensor(g, t->name) != i) abort();
        if (t->n_dims < 1 || t->n_dims > EXO_GGUF_MAX_DIMS || t->size == 0) abort();
        const uint8_t *d = t->data;
        if (d < data || d + t->size > data + size) abort();
        touch(d, t->size);
        sink += strlen(t->name);
    }
    if (exo__gguf_tensor_at(g, exo__gguf_tensor_count(g)) != NULL) abort();
    exo__gguf_close(g);
    return 0;
}
