// llama_refdump.c: writes llama.cpp's outputs for a model file, the reference exo's tests compare with.
//
// Not part of the build: it links llama.cpp, which is built outside this repository (its source
// ships in the PyPI sdist of llama-cpp-python, vendor/llama.cpp). Given a prompt (text tokenized
// by llama.cpp, or ids), it writes the ids, a greedy continuation (token by token), and the top-k
// logits at every position of prompt + continuation evaluated in one batch (teacher forcing).
// tests/fixtures/llama_cpp/*/README.md say which files were made with it and how.
//
// build: cc -O2 llama_refdump.c -I$LLAMA/include -I$LLAMA/ggml/include -L$BUILD/bin -lllama -lggml \
//           -lggml-base -Wl,-rpath,$BUILD/bin -o refdump
// usage: refdump MODEL.gguf --out PREFIX [--prompt-file FILE [--parse-special]] [--ids "1,2,3"]
//                [--greedy N] [--topk K] [--threads T]
#include "llama.h"
#include "ggml-backend.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *m) { fprintf(stderr, "refdump: %s\n", m); exit(1); }

static char *read_file(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open prompt file");
    fseek(f, 0, SEEK_END); *len = ftell(f); fseek(f, 0, SEEK_SET);
    char *b = malloc(*len + 1);
    if (fread(b, 1, *len, f) != (size_t)*len) die("short read");
    b[*len] = 0; fclose(f);
    return b;
}

static FILE *openout(const char *prefix, const char *ext) {
    char p[4096];
    snprintf(p, sizeof p, "%s%s", prefix, ext);
    FILE *f = fopen(p, "wb");
    if (!f) die("cannot open output file");
    return f;
}

// first index of the maximum (ties -> lowest id)
static llama_token argmax(const float *l, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (l[i] > l[b]) b = i;
    return b;
}

static struct llama_context *mkctx(struct llama_model *m, int n, int threads) {
    struct llama_context_params cp = llama_context_default_params();
    int nc = n < 512 ? 512 : n;
    cp.n_ctx = nc; cp.n_batch = nc; cp.n_ubatch = nc;
    cp.n_threads = threads; cp.n_threads_batch = threads;
    struct llama_context *c = llama_init_from_model(m, cp);
    if (!c) die("llama_init_from_model failed");
    return c;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *out = NULL, *pfile = NULL, *ids_s = NULL;
    int parse_special = 0, greedy = 0, topk = 10, threads = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(a, "--prompt-file") && i + 1 < argc) pfile = argv[++i];
        else if (!strcmp(a, "--ids") && i + 1 < argc) ids_s = argv[++i];
        else if (!strcmp(a, "--parse-special")) parse_special = 1;
        else if (!strcmp(a, "--greedy") && i + 1 < argc) greedy = atoi(argv[++i]);
        else if (!strcmp(a, "--topk") && i + 1 < argc) topk = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (a[0] != '-' && !model_path) model_path = a;
        else { fprintf(stderr, "unknown/incomplete arg: %s\n", a); return 2; }
    }
    if (!model_path || !out || (!pfile == !ids_s)) {
        fprintf(stderr, "usage: refdump MODEL.gguf --out PREFIX (--prompt-file FILE [--parse-special] | --ids \"1,2,3\") "
                        "[--greedy N] [--topk K] [--threads T]\n");
        return 2;
    }

    llama_backend_init();
    ggml_backend_load_all();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(model_path, mp);
    if (!model) die("model load failed");
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    char arch[256] = "?", desc[256] = "?";
    llama_model_meta_val_str(model, "general.architecture", arch, sizeof arch);
    llama_model_desc(model, desc, sizeof desc);
    printf("n_vocab=%d arch=%s desc=%s add_bos=%d\n", n_vocab, arch, desc, (int)llama_vocab_get_add_bos(vocab));

    // ---- prompt ids
    int cap = 1 << 16, n_prompt = 0;
    llama_token *toks = malloc(sizeof(llama_token) * (cap + greedy + 1));
    if (pfile) {
        long len; char *txt = read_file(pfile, &len);
        n_prompt = llama_tokenize(vocab, txt, (int32_t)len, toks, cap, true, parse_special != 0);
        if (n_prompt < 0) die("tokenize failed / too long");
        free(txt);
    } else {
        const char *s = ids_s;
        while (*s) {
            char *e; long v = strtol(s, &e, 10);
            if (e == s) die("bad --ids");
            if (v < 0 || v >= n_vocab) die("--ids id out of range");
            toks[n_prompt++] = (llama_token)v;
            s = e; while (*s == ',' || *s == ' ') s++;
        }
    }
    if (n_prompt == 0) die("empty prompt");
    FILE *f = openout(out, ".ids");
    for (int i = 0; i < n_prompt; i++) fprintf(f, i ? ",%d" : "%d", toks[i]);
    fclose(f);
    printf("n_prompt=%d\n", n_prompt);

    // ---- greedy generation (incremental decode)
    int n_gen = 0;
    if (greedy > 0) {
        struct llama_context *ctx = mkctx(model, n_prompt + greedy, threads);
        struct llama_batch b = llama_batch_get_one(toks, n_prompt);
        if (llama_decode(ctx, b)) die("decode (prompt) failed");
        while (n_gen < greedy) {
            llama_token t = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
            toks[n_prompt + n_gen++] = t;
            if (llama_vocab_is_eog(vocab, t)) break;   // EOG token is kept in the output
            b = llama_batch_get_one(&toks[n_prompt + n_gen - 1], 1);
            if (llama_decode(ctx, b)) die("decode (gen) failed");
        }
        llama_free(ctx);
        f = openout(out, ".greedy");
        for (int i = 0; i < n_gen; i++) fprintf(f, i ? " %d" : "%d", toks[n_prompt + i]);
        fclose(f);
        int tcap = 64 + n_gen * 256;
        char *txt = malloc(tcap);
        int tl = llama_detokenize(vocab, toks + n_prompt, n_gen, txt, tcap, false, false);
        if (tl < 0) die("detokenize failed");
        f = openout(out, ".greedy.txt"); fwrite(txt, 1, tl, f); fclose(f);
        printf("n_gen=%d\ngreedy: %.*s\n", n_gen, tl, txt);
        free(txt);
    }

    // ---- teacher-forced: whole sequence in one batch, logits for every position
    int n = n_prompt + n_gen;
    struct llama_context *ctx = mkctx(model, n, threads);
    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = toks[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(ctx, b)) die("decode (teacher-forced) failed");
    if (topk > n_vocab) topk = n_vocab;
    int *best = malloc(sizeof(int) * (topk + 1));
    f = openout(out, ".topk");
    for (int p = 0; p < n; p++) {
        const float *l = llama_get_logits_ith(ctx, p);
        int nb = 0;   // insertion into a small sorted list: logit desc, id asc
        for (int i = 0; i < n_vocab; i++) {
            if (nb == topk && l[i] <= l[best[nb - 1]]) continue;
            int j = nb < topk ? nb++ : nb - 1;
            while (j > 0 && l[best[j - 1]] < l[i]) { best[j] = best[j - 1]; j--; }
            best[j] = i;
        }
        fprintf(f, "%d", p);
        for (int k = 0; k < nb; k++) fprintf(f, " %d:%.6f", best[k], l[best[k]]);
        fputc('\n', f);
        if (p == n_prompt - 1) {
            FILE *g = openout(out, ".last.f32");
            fwrite(l, sizeof(float), n_vocab, g); fclose(g);
        }
    }
    fclose(f);
    // consistency check: teacher-forced argmax vs greedy tokens
    int mism = 0;
    for (int i = 0; i < n_gen; i++)
        if (argmax(llama_get_logits_ith(ctx, n_prompt - 1 + i), n_vocab) != toks[n_prompt + i]) mism++;
    printf("teacher-forced positions=%d, greedy/argmax mismatches=%d\n", n, mism);
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    free(best); free(toks);
    return 0;
}
