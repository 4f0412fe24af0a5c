/* fuzz_tokenizer_json.c: libFuzzer target for a model folder's tokenizer.json:
 * its reading into GGUF tokenizer metadata (safetensors_model.c) and the
 * tokenizer the engine builds from that (tokenizer.c).
 *
 * tokenizer.json comes from whoever published the folder, so it is as hostile
 * as a model file. Each input is written as the tokenizer.json of a scratch
 * folder beside a fixed config.json, and the folder is opened as
 * exo_tokenizer_load opens it. An accepted vocabulary must then encode and
 * decode a few texts (control tokens parsed and not, bytes outside UTF-8)
 * within the buffers it is given; a refused one must leave a message. Files
 * are used rather than a memory interface so the code under test is exactly
 * the code that runs.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Inative tests/fuzz_tokenizer_json.c <sources in
 *       CMakeLists.txt> -lpcre2-8 -o /tmp/fuzz_tokenizer_json
 *   tests/run-fuzz.sh /tmp/fuzz_tokenizer_json tests/fuzz/tokenizer_json/seeds tests/fuzz/tokenizer_json/crashes 120 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "exo.h"

static char dir[PATH_MAX];
static volatile uint64_t sink;

static int write_file(const char *name, const void *data, size_t size)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t put = size ? fwrite(data, 1, size, f) : 0;
    return fclose(f) == 0 && put == size ? 0 : -1;
}

/* A Llama-shaped config: the tokenizer needs only the architecture from it. */
static const char config[] = "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"hidden_size\":64,"
                             "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                             "\"num_key_value_heads\":2,\"vocab_size\":300,\"max_position_embeddings\":256,"
                             "\"rms_norm_eps\":1e-5,\"rope_theta\":10000.0}";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(dir, sizeof dir, "%s/exo-fuzz-tok.%ld", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (long)getpid());
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    if (system(cmd) != 0 || write_file("config.json", config, sizeof config - 1) != 0) abort();
    return 0;
}

static const char *const texts[] = {
    "Hello, world! 12345",  "  leading spaces\tand\ttabs\n\nnewlines", "<|im_start|>user\nhi<|im_end|>",
    "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80", "\xff\xfe broken \xc3 utf-8", "<s></s><unk>",
};

static void exercise(const exo_tokenizer *tok)
{
    int32_t ids[512];
    char out[4096];
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        for (int special = 0; special < 2; special++) {
            int n = 0;
            if (exo_tokenizer_encode(tok, texts[i], strlen(texts[i]), special, special, ids, 512, &n) != 0) {
                if (exo_last_error()[0] == '\0') abort();
                continue;
            }
            if (n < 0 || n > 512) abort();
            size_t len = 0;
            if (exo_tokenizer_decode(tok, ids, n, 1, out, sizeof out, &len) == 0 && len >= sizeof out) abort();
            for (int k = 0; k < n; k++) {
                const char *s;
                size_t sl;
                if (exo_tokenizer_token_piece(tok, ids[k], &s, &sl) == 0 && sl) sink += (uint8_t)s[0] + (uint8_t)s[sl - 1];
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (write_file("tokenizer.json", data, size) != 0) abort();
    exo_tokenizer *tok = NULL;
    if (exo_tokenizer_load(dir, &tok) == 0) {
        exercise(tok);
        exo_tokenizer_free(tok);
    } else if (tok != NULL || exo_last_error()[0] == '\0') {
        abort(); /* failures must be reported */
    }
    return 0;
}
