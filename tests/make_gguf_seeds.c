/* make_gguf_seeds.c: writes the GGUF fuzzer's seed corpus.
 *
 * Each seed is a small valid file (under 4 KiB) made with exo's own writer, so
 * the corpus can be regenerated after a format change instead of being edited
 * by hand. Between them the seeds cover every value type the writer has,
 * numeric and string arrays, every supported tensor dtype, and a non-default
 * alignment, which gives the fuzzer valid structure to mutate.
 *
 *   cc -Inative tests/make_gguf_seeds.c native/gguf.c native/dtype.c native/error.c -o /tmp/mk
 *   /tmp/mk tests/fuzz/gguf/seeds */
#define _POSIX_C_SOURCE 200809L /* O_CLOEXEC, strdup, mkdtemp */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "gguf.h"

static const char *outdir;
static int failures;

static void ok(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "make_gguf_seeds: %s: %s\n", what, exo_last_error());
        failures++;
    }
}

static void finish(exo_gguf_writer *w, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", outdir, name);
    ok(exo__gguf_writer_write(w, path), name);
    exo__gguf_writer_free(w);
    struct stat st;
    if (stat(path, &st) == 0 && st.st_size >= 4096) {
        fprintf(stderr, "make_gguf_seeds: %s is %lld bytes, over 4 KiB\n", path, (long long)st.st_size);
        failures++;
    }
}

/* ne[0] x ne[1] tensor of dtype with patterned bytes. */
static void tensor(exo_gguf_writer *w, const char *name, int dtype, int64_t ne0, int64_t ne1,
                   size_t bytes)
{
    int64_t ne[4] = {ne0, ne1, 1, 1};
    unsigned char *d = malloc(bytes);
    for (size_t i = 0; i < bytes; i++) d[i] = (unsigned char)(i * 13 + 5);
    ok(exo__gguf_writer_add_tensor(w, name, dtype, ne1 > 1 ? 2 : 1, ne, d, bytes), name);
    free(d);
}

struct seed_tensor {
    const char *name;
    int dtype;
    int64_t ne0, ne1;
    size_t bytes;
};

/* A file of the given tensors, with only an architecture key. */
static void tensors_file(const char *file, const char *arch, const struct seed_tensor *t, size_t n)
{
    exo_gguf_writer *w = exo__gguf_writer_new();
    ok(exo__gguf_writer_add_str(w, "general.architecture", arch), "arch");
    for (size_t i = 0; i < n; i++) tensor(w, t[i].name, t[i].dtype, t[i].ne0, t[i].ne1, t[i].bytes);
    finish(w, file);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
        return 2;
    }
    outdir = argv[1];
    mkdir(outdir, 0755);

    exo_gguf_writer *w = exo__gguf_writer_new();
    finish(w, "empty.gguf");

    w = exo__gguf_writer_new();
    ok(exo__gguf_writer_add_str(w, "general.architecture", "llama"), "arch");
    ok(exo__gguf_writer_add_str(w, "general.name", "seed scalars"), "name");
    ok(exo__gguf_writer_add_u32(w, "llama.block_count", 2), "u32");
    ok(exo__gguf_writer_add_i32(w, "test.i32", -7), "i32");
    ok(exo__gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f), "f32");
    ok(exo__gguf_writer_add_bool(w, "test.bool", true), "bool");
    {
        unsigned char u8[] = {1, 2, 3};
        signed char i8[] = {-1, 0, 1};
        unsigned short u16[] = {1, 65535};
        short i16[] = {-2, 2};
        unsigned u32[] = {7, 8};
        int i32[] = {-9, 9};
        float f32[] = {0.5f, 1.5f};
        unsigned char b[] = {0, 1};
        unsigned long long u64[] = {1ull << 40};
        long long i64[] = {-(1ll << 40)};
        double f64[] = {2.5};
        ok(exo__gguf_writer_add_arr(w, "a.u8", EXO_GGUF_UINT8, u8, 3), "a.u8");
        ok(exo__gguf_writer_add_arr(w, "a.i8", EXO_GGUF_INT8, i8, 3), "a.i8");
        ok(exo__gguf_writer_add_arr(w, "a.u16", EXO_GGUF_UINT16, u16, 2), "a.u16");
        ok(exo__gguf_writer_add_arr(w, "a.i16", EXO_GGUF_INT16, i16, 2), "a.i16");
        ok(exo__gguf_writer_add_arr(w, "a.u32", EXO_GGUF_UINT32, u32, 2), "a.u32");
        ok(exo__gguf_writer_add_arr(w, "a.i32", EXO_GGUF_INT32, i32, 2), "a.i32");
        ok(exo__gguf_writer_add_arr(w, "a.f32", EXO_GGUF_FLOAT32, f32, 2), "a.f32");
        ok(exo__gguf_writer_add_arr(w, "a.bool", EXO_GGUF_BOOL, b, 2), "a.bool");
        ok(exo__gguf_writer_add_arr(w, "a.u64", EXO_GGUF_UINT64, u64, 1), "a.u64");
        ok(exo__gguf_writer_add_arr(w, "a.i64", EXO_GGUF_INT64, i64, 1), "a.i64");
        ok(exo__gguf_writer_add_arr(w, "a.f64", EXO_GGUF_FLOAT64, f64, 1), "a.f64");
    }
    finish(w, "scalars.gguf");

    /* one tensor of every supported dtype, at the smallest legal size; the
     * formats hub files use besides those (K-quant mixes, IQ4) in a file of
     * their own, to stay under the size limit */
    static const struct seed_tensor common[] = {
        {"f32", EXO_DTYPE_F32, 4, 2, 32},       {"f16", EXO_DTYPE_F16, 8, 1, 16},
        {"bf16", EXO_DTYPE_BF16, 4, 2, 16},     {"q4_0", EXO_DTYPE_Q4_0, 32, 1, 18},
        {"q4_1", EXO_DTYPE_Q4_1, 32, 2, 40},    {"q8_0", EXO_DTYPE_Q8_0, 32, 1, 34},
        {"q4_k", EXO_DTYPE_Q4_K, 256, 1, 144},  {"q5_k", EXO_DTYPE_Q5_K, 256, 1, 176},
        {"q6_k", EXO_DTYPE_Q6_K, 256, 1, 210},
    };
    static const struct seed_tensor hub[] = {
        {"q5_0", EXO_DTYPE_Q5_0, 32, 2, 44},    {"q5_1", EXO_DTYPE_Q5_1, 32, 1, 24},
        {"iq4_nl", EXO_DTYPE_IQ4_NL, 64, 1, 36}, {"q2_k", EXO_DTYPE_Q2_K, 256, 1, 84},
        {"q3_k", EXO_DTYPE_Q3_K, 256, 1, 110},  {"iq4_xs", EXO_DTYPE_IQ4_XS, 256, 1, 136},
    };
    tensors_file("tensors.gguf", "llama", common, sizeof common / sizeof common[0]);
    tensors_file("tensors_hub.gguf", "gemma3", hub, sizeof hub / sizeof hub[0]);

    /* a tokenizer-shaped file: string arrays with parallel numeric arrays */
    w = exo__gguf_writer_new();
    {
        enum { N = 40 };
        const char *toks[N];
        char buf[N][8];
        float scores[N];
        int types[N];
        for (int i = 0; i < N; i++) {
            snprintf(buf[i], sizeof buf[i], i % 5 ? "t%d" : "<%d>", i);
            toks[i] = buf[i];
            scores[i] = -(float)i;
            types[i] = i % 5 ? 1 : 3;
        }
        const char *merges[] = {"t 1", "t 2", "\xc4\xa0 t", ""};
        ok(exo__gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2"), "model");
        ok(exo__gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", toks, N), "tokens");
        ok(exo__gguf_writer_add_arr(w, "tokenizer.ggml.scores", EXO_GGUF_FLOAT32, scores, N), "scores");
        ok(exo__gguf_writer_add_arr(w, "tokenizer.ggml.token_type", EXO_GGUF_INT32, types, N), "types");
        ok(exo__gguf_writer_add_str_arr(w, "tokenizer.ggml.merges", merges, 4), "merges");
        ok(exo__gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 0), "bos");
        ok(exo__gguf_writer_add_str(w, "tokenizer.chat_template", "{% for m in messages %}{{ m }}{% endfor %}"),
           "template");
    }
    finish(w, "tokenizer.gguf");

    /* non-default alignment with a 2-D weight and a 1-D norm */
    w = exo__gguf_writer_new();
    ok(exo__gguf_writer_add_u32(w, "general.alignment", 64), "alignment");
    ok(exo__gguf_writer_add_str(w, "general.architecture", "llama"), "arch");
    tensor(w, "blk.0.attn_norm.weight", EXO_DTYPE_F32, 8, 1, 32);
    tensor(w, "blk.0.attn_q.weight", EXO_DTYPE_Q8_0, 32, 8, 272);
    tensor(w, "output_norm.weight", EXO_DTYPE_F32, 8, 1, 32);
    finish(w, "align64.gguf");

    return failures ? 1 : 0;
}
