/* test_gguf_split.c: split GGUF models (llama.cpp's gguf-split format).
 *
 * A model written with the writer (metadata of several types, a string array,
 * tensors of several dtypes, a non-default alignment) is split by
 * exo__gguf_split_write (what exo-gguf-split runs) into 2, 3 and 5 parts, with
 * and without tensors in part 1, and opened from each part: every key, every
 * tensor's shape and bytes must be the unsplit file's. Parts written by hand
 * then break the rules one at a time (a missing part, a tensor in two parts,
 * parts of different models, a wrong split.no, a tensor count that does not
 * add up, names that do not follow the pattern, absurd counts): each must fail
 * with a clear message naming the file, never crash. The split tiny model's
 * logits are checked in tests/lua/test_gguf_split.lua. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

#define N_TENSORS 7

/* The unsplit model: a few keys of each kind and N_TENSORS tensors whose
 * bytes depend on their index, laid out at a 64-byte alignment. */
static void write_model(const char *path)
{
    exo_gguf_writer *w = exo__gguf_writer_new();
    CHECK(w != NULL);
    CHECK(exo__gguf_writer_add_str(w, "general.architecture", "llama") == 0);
    CHECK(exo__gguf_writer_add_u32(w, "general.alignment", 64) == 0);
    CHECK(exo__gguf_writer_add_u32(w, "llama.block_count", 3) == 0);
    CHECK(exo__gguf_writer_add_f32(w, "llama.rope.freq_base", 10000.0f) == 0);
    CHECK(exo__gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", true) == 0);
    const char *toks[] = {"<s>", "</s>", "hello", "wor\xc3\xb6ld"};
    CHECK(exo__gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", toks, 4) == 0);
    int32_t types[] = {3, 3, 1, 1};
    CHECK(exo__gguf_writer_add_arr(w, "tokenizer.ggml.token_type", EXO_GGUF_INT32, types, 4) == 0);
    for (int i = 0; i < N_TENSORS; i++) {
        char name[32];
        snprintf(name, sizeof name, "blk.%d.weight", i);
        int64_t ne[2] = {32, 3 + i};
        int dtype = i % 2 ? EXO_DTYPE_F16 : EXO_DTYPE_F32;
        size_t size = (size_t)(ne[0] * ne[1]) * (dtype == EXO_DTYPE_F16 ? 2 : 4);
        uint8_t *d = malloc(size);
        for (size_t j = 0; j < size; j++) d[j] = (uint8_t)(j * 7 + (size_t)i * 31);
        CHECK(exo__gguf_writer_add_tensor(w, name, dtype, 2, ne, d, size) == 0);
        free(d);
    }
    CHECK_MSG(exo__gguf_writer_write(w, path) == 0, "%s", exo_last_error());
    exo__gguf_writer_free(w);
}

/* Every key of want (but split.*) and every tensor is in got, the same. */
static void check_same(const exo_gguf *want, const exo_gguf *got, const char *what)
{
    CHECK_MSG(exo__gguf_tensor_count(got) == N_TENSORS, "%s: %lld tensors", what,
              (long long)exo__gguf_tensor_count(got));
    for (int64_t i = 0; i < exo__gguf_kv_count(want); i++) {
        const char *key = exo__gguf_key_name(want, i);
        int64_t j = exo__gguf_find_key(got, key);
        CHECK_MSG(j >= 0 && exo__gguf_kv_type(got, j) == exo__gguf_kv_type(want, i), "%s: key %s", what, key);
    }
    const char *s;
    size_t n;
    CHECK(exo__gguf_get_str(got, "general.architecture", &s, &n) == 0 && n == 5 && !memcmp(s, "llama", 5));
    CHECK(exo__gguf_alignment(got) == 64);
    int64_t kt = exo__gguf_find_key(got, "tokenizer.ggml.tokens");
    CHECK(kt >= 0 && exo__gguf_arr_str(got, kt, 3, &s, &n) == 0 && n == 7 && !memcmp(s, "wor\xc3\xb6ld", 7));
    for (int64_t i = 0; i < N_TENSORS; i++) {
        const exo_gguf_tensor *a = exo__gguf_tensor_at(want, i);
        int64_t k = exo__gguf_find_tensor(got, a->name);
        const exo_gguf_tensor *b = exo__gguf_tensor_at(got, k);
        CHECK_MSG(k == i && b, "%s: tensor %s at %lld, want %lld", what, a->name, (long long)k, (long long)i);
        if (!b) continue;
        CHECK(!strcmp(a->name, b->name) && a->dtype == b->dtype && a->n_dims == b->n_dims);
        CHECK(!memcmp(a->ne, b->ne, sizeof a->ne) && a->size == b->size);
        CHECK_MSG(!memcmp(a->data, b->data, a->size), "%s: tensor %s bytes differ", what, a->name);
    }
}

static void test_round_trip(const exo_gguf *model)
{
    int shapes[][2] = {{2, 0}, {3, 0}, {5, 0}, {3, 1}, {N_TENSORS, 0}, {N_TENSORS + 1, 1}};
    for (size_t c = 0; c < sizeof shapes / sizeof *shapes; c++) {
        int parts = shapes[c][0];
        bool no_first = shapes[c][1];
        char prefix[128], path[192];
        snprintf(prefix, sizeof prefix, "%s/rt%zu", tmpdir, c);
        CHECK_MSG(exo__gguf_split_write(model, prefix, parts, no_first) == 0, "%s", exo_last_error());
        size_t sum = 0;
        for (int no = 0; no < parts; no++) {
            snprintf(path, sizeof path, "%s-%05d-of-%05d.gguf", prefix, no + 1, parts);
            /* each part is a valid GGUF by itself (parsed alone from memory) */
            exo_gguf *g = NULL;
            FILE *f = fopen(path, "rb");
            CHECK_MSG(f != NULL, "%s not written", path);
            if (f) {
                fseek(f, 0, SEEK_END);
                size_t size = (size_t)ftell(f);
                rewind(f);
                void *buf = malloc(size);
                CHECK(buf && fread(buf, 1, size, f) == size);
                CHECK_MSG(exo__gguf_open_memory(buf, size, &g) == 0, "%s alone: %s", path, exo_last_error());
                exo__gguf_close(g);
                g = NULL;
                free(buf);
                fclose(f);
                sum += size;
            }
            /* and the whole model opens from any of them */
            CHECK_MSG(exo__gguf_open(path, &g) == 0, "%s", exo_last_error());
            if (!g) continue;
            char what[256];
            snprintf(what, sizeof what, "%d parts%s, opened from part %d", parts, no_first ? " (none in part 1)" : "",
                     no + 1);
            check_same(model, g, what);
            CHECK(exo__gguf_part_count(g) == (uint32_t)parts);
            if (no == parts - 1) CHECK(exo__gguf_file_size(g) == sum);
            exo__gguf_close(g);
        }
    }
    /* more parts than tensors, or one part: refused */
    CHECK(exo__gguf_split_write(model, "/nonexistent/x", N_TENSORS + 1, false) == EXO_EINVAL);
    CHECK(exo__gguf_split_write(model, "/nonexistent/x", 1, false) == EXO_EINVAL);
}

/* One hand-made part: its split.* keys (a negative value leaves the key out)
 * and the named tensors, 16 floats each. */
static void write_part(const char *path, int no, int count, int total, const char *const *names, int n)
{
    exo_gguf_writer *w = exo__gguf_writer_new();
    if (no == 0) CHECK(exo__gguf_writer_add_str(w, "general.architecture", "llama") == 0);
    if (no >= 0) CHECK(exo__gguf_writer_add_u16(w, "split.no", (uint16_t)no) == 0);
    if (count >= 0) CHECK(exo__gguf_writer_add_u16(w, "split.count", (uint16_t)count) == 0);
    if (total >= 0) CHECK(exo__gguf_writer_add_i32(w, "split.tensors.count", total) == 0);
    float d[16] = {0};
    int64_t ne[1] = {16};
    for (int i = 0; i < n; i++) CHECK(exo__gguf_writer_add_tensor(w, names[i], EXO_DTYPE_F32, 1, ne, d, sizeof d) == 0);
    CHECK_MSG(exo__gguf_writer_write(w, path) == 0, "%s", exo_last_error());
    exo__gguf_writer_free(w);
}

/* Opening path must fail with code and a message holding both needles. */
static void expect_error(const char *path, int code, const char *needle1, const char *needle2, const char *what)
{
    exo_gguf *g = (exo_gguf *)1;
    int rc = exo__gguf_open(path, &g);
    const char *msg = exo_last_error();
    CHECK_MSG(rc == code && g == NULL, "%s: rc %d (%s), want %d: %s", what, rc, exo_error_name(rc), code, msg);
    CHECK_MSG(strstr(msg, needle1) && (!needle2 || strstr(msg, needle2)), "%s: message '%s' lacks '%s' / '%s'", what,
              msg, needle1, needle2 ? needle2 : "");
    printf("%-28s %s\n", what, msg);
}

static void test_errors(void)
{
    const char *a[] = {"a"}, *b[] = {"b"}, *c[] = {"c"};
    char p1[160], p2[160], p3[160], other[160];
    tmp_path(p1, sizeof p1, "e-00001-of-00003.gguf");
    tmp_path(p2, sizeof p2, "e-00002-of-00003.gguf");
    tmp_path(p3, sizeof p3, "e-00003-of-00003.gguf");

    /* a good model, then each part broken in turn */
    write_part(p1, 0, 3, 3, a, 1);
    write_part(p2, 1, 3, 3, b, 1);
    write_part(p3, 2, 3, 3, c, 1);
    exo_gguf *g = NULL;
    CHECK_MSG(exo__gguf_open(p2, &g) == 0 && exo__gguf_tensor_count(g) == 3, "%s", exo_last_error());
    exo__gguf_close(g);

    unlink(p3);
    expect_error(p1, EXO_EIO, "part 3 of 3", "e-00003-of-00003.gguf", "missing last part");
    write_part(p3, 2, 3, 3, c, 1);
    unlink(p1);
    expect_error(p3, EXO_EIO, "part 1 of 3", "e-00001-of-00003.gguf", "missing first part");

    write_part(p1, 0, 3, 3, a, 1);
    write_part(p3, 2, 3, 3, a, 1);
    expect_error(p1, EXO_EFORMAT, "tensor 'a' is in part 1 and again in part 3", NULL, "tensor in two parts");

    write_part(p3, 1, 3, 3, c, 1);
    expect_error(p1, EXO_EFORMAT, "split.no is 1, expected 2", "e-00003-of-00003.gguf", "split.no twice");

    write_part(p3, 2, 4, 3, c, 1);
    expect_error(p1, EXO_EFORMAT, "split.count is 4", "different models", "split.count mismatch");

    write_part(p3, 2, 3, 4, c, 1);
    expect_error(p1, EXO_EFORMAT, "split.tensors.count is 4", "e-00003-of-00003.gguf", "tensors.count mismatch");

    const char *cd[] = {"c", "d"};
    write_part(p1, 0, 3, 4, a, 1);
    write_part(p2, 1, 3, 4, b, 1);
    write_part(p3, 2, 3, 4, c, 1);
    expect_error(p1, EXO_EFORMAT, "hold 3 tensors, but split.tensors.count says 4", NULL, "tensors do not add up");
    write_part(p3, 2, 3, 4, cd, 2);
    CHECK_MSG(exo__gguf_open(p1, &g) == 0 && exo__gguf_tensor_count(g) == 4, "%s", exo_last_error());
    exo__gguf_close(g);

    /* a part 1 that claims to be part 2 (two parts 2, no part 1) */
    write_part(p1, 1, 3, 4, a, 1);
    expect_error(p2, EXO_EFORMAT, "split.no 1", "part 1 of 3", "two parts 2");

    /* one part 1 alone, whose keys or name are wrong */
    static const struct {
        const char *file, *needle, *what;
        int no, count;
    } alone[] = {
        {"renamed.gguf", "does not end in '-00001-of-00003.gguf'", "name off the pattern", 0, 3},
        {"r-00001-of-00002.gguf", "does not end in '-00001-of-00003.gguf'", "name says another count", 0, 3},
        {"big-00001-of-05000.gguf", "split.count is 5000, expected 1..1000", "too many parts", 0, 5000},
        {"no-00001-of-00002.gguf", "split.no is 5, expected 0..1", "split.no out of range", 5, 2},
        {"no-00001-of-00002.gguf", "has split.no but not split.count", "split.count absent", 0, -1},
    };
    for (size_t i = 0; i < sizeof alone / sizeof *alone; i++) {
        tmp_path(other, sizeof other, alone[i].file);
        write_part(other, alone[i].no, alone[i].count, 3, a, 1);
        expect_error(other, EXO_EFORMAT, alone[i].needle, NULL, alone[i].what);
    }
    write_part(other, 0, 2, -1, a, 1);
    expect_error(other, EXO_EINVAL, "split.tensors.count", other, "split.tensors.count absent");

    /* split.count 1: a whole model that went through gguf-split */
    tmp_path(other, sizeof other, "one.gguf");
    write_part(other, 0, 1, 1, a, 1);
    CHECK_MSG(exo__gguf_open(other, &g) == 0 && exo__gguf_part_count(g) == 1, "%s", exo_last_error());
    exo__gguf_close(g);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/exo_test_gguf_split.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    char path[128];
    tmp_path(path, sizeof path, "model.gguf");
    write_model(path);
    exo_gguf *model = NULL;
    CHECK_MSG(exo__gguf_open(path, &model) == 0, "%s", exo_last_error());
    if (model) {
        test_round_trip(model);
        exo__gguf_close(model);
    }
    test_errors();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    CHECK_DONE();
}
