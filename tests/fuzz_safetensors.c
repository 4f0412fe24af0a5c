/* fuzz_safetensors.c: libFuzzer target for the safetensors header parser and
 * the JSON reader under it.
 *
 * The input is parsed as a whole .safetensors image with
 * exo__safetensors_parse; when it is accepted every tensor is walked (name,
 * dtype, shape, first and last data byte), so under ASan a tensor the
 * validation let reach past the buffer is caught. The same bytes then go
 * through exo__json_parse alone and the accepted tree is walked, keys and
 * strings read to their stated lengths. A failure must leave a message.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Inative tests/fuzz_safetensors.c native/safetensors.c \
 *       native/json.c native/error.c -o /tmp/fuzz_safetensors
 *   tests/run-fuzz.sh /tmp/fuzz_safetensors tests/fuzz/safetensors/seeds tests/fuzz/safetensors/crashes 120 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "json.h"
#include "safetensors.h"

static volatile uint64_t sink;

static void touch(const void *p, size_t n)
{
    const uint8_t *b = p;
    if (n) sink += b[0] + b[n - 1];
}

static void walk(const exo_json *j, int32_t node, int depth)
{
    size_t len;
    const char *s = exo__json_str(j, node, &len);
    if (s) touch(s, len + 1);
    int64_t v;
    if (exo__json_int(j, node, &v)) sink += (uint64_t)v;
    int64_t seen = 0;
    for (int32_t c = exo__json_first(j, node); c != EXO_JSON_NONE; c = exo__json_next(j, c), seen++) {
        const char *k = exo__json_key(j, c, &len);
        if (exo__json_kind(j, node) == EXO_JSON_OBJECT) touch(k, len + 1);
        walk(j, c, depth + 1);
    }
    if (seen != exo__json_count(j, node) || depth > 200) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    exo_st_file *f = NULL;
    if (exo__safetensors_parse(data, size, "fuzz", &f) == 0) {
        for (int64_t i = 0; i < exo__safetensors_count(f); i++) {
            const exo_st_tensor *t = exo__safetensors_at(f, i);
            touch(t->name, strlen(t->name) + 1);
            touch(t->dtype_name, strlen(t->dtype_name) + 1);
            for (int d = 0; d < t->n_dims; d++) sink += (uint64_t)t->shape[d];
            touch(t->data, t->size);
        }
        exo__safetensors_close(f);
    } else if (f != NULL || exo_last_error()[0] == '\0') {
        abort(); /* failures must be reported */
    }

    exo_json *j = NULL;
    if (exo__json_parse((const char *)data, size, "fuzz", &j) == 0) {
        walk(j, 0, 0);
        exo__json_free(j);
    } else if (j != NULL || exo_last_error()[0] == '\0') {
        abort();
    }
    return 0;
}
