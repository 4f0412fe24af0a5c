// llama_tokenize_many.c: llama.cpp's tokenization of many texts in one process, the reference
// for exo's prompt tests (tools/reference/prompt_refs.py drives it).
//
// Not part of the build: it links llama.cpp, built outside this repository from the source in
// the PyPI sdist of llama-cpp-python (vendor/llama.cpp). Reads texts separated by NUL bytes from
// stdin and writes one line of space-separated ids per text: special tokens parsed (as a chat
// prompt is tokenized whole), no BOS added.
//
// build: cc -O2 llama_tokenize_many.c -I$LLAMA/include -I$LLAMA/ggml/include -L$BUILD/bin -lllama \
//           -lggml -lggml-base -Wl,-rpath,$BUILD/bin -o tokenize_many
// usage: tokenize_many MODEL.gguf < texts > ids
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *m) { fprintf(stderr, "tokenize_many: %s\n", m); exit(1); }

static void quiet(enum ggml_log_level level, const char *text, void *data) { (void)level, (void)text, (void)data; }

int main(int argc, char **argv) {
    if (argc != 2) die("usage: tokenize_many MODEL.gguf < texts > ids");
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) die("cannot load the model");
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    int c;
    int n_ids_cap = 1 << 16;
    llama_token *ids = malloc(sizeof *ids * n_ids_cap);
    for (;;) {
        c = getchar();
        if (c == EOF && len == 0) break;
        if (c != 0 && c != EOF) {
            if (len + 1 >= cap) buf = realloc(buf, cap *= 2);
            buf[len++] = (char)c;
            continue;
        }
        int n = llama_tokenize(vocab, buf, (int32_t)len, ids, n_ids_cap, false, true);
        if (n < 0) die("a text has too many tokens");
        for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        len = 0;
        if (c == EOF) break;
    }
    llama_model_free(model);
    return 0;
}
