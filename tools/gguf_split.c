/* gguf_split.c: writes a GGUF model as a split model, in llama.cpp's
 * gguf-split format (PREFIX-00001-of-0000N.gguf ...).
 *
 * The tests' way to get split files without llama.cpp: part 1 holds the
 * model's metadata, every part some tensors, each part a complete GGUF with
 * split.no, split.count and split.tensors.count. exo must load the parts and
 * give the logits of the single file; llama.cpp's own loader accepts them too
 * (docs/models.md says how that was checked).
 *
 * usage: exo-gguf-split IN.gguf OUTPREFIX --parts N [--no-tensor-first]
 * --no-tensor-first leaves part 1 metadata only, as gguf-split's option of
 * that name does. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../native/error.h"
#include "../native/gguf.h"

int main(int argc, char **argv)
{
    const char *usage = "usage: exo-gguf-split IN.gguf OUTPREFIX --parts N [--no-tensor-first]\n";
    if (argc < 3) {
        fputs(usage, stderr);
        return 2;
    }
    int parts = 0;
    bool no_tensor_first = false;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--parts") && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            parts = *end || v < 2 || v > 1000 ? -1 : (int)v;
        } else if (!strcmp(argv[i], "--no-tensor-first")) {
            no_tensor_first = true;
        } else {
            fprintf(stderr, "exo-gguf-split: unknown option %s\n%s", argv[i], usage);
            return 2;
        }
    }
    if (parts <= 0) {
        fprintf(stderr, "exo-gguf-split: --parts N with N in 2..1000 is required\n%s", usage);
        return 2;
    }
    exo_gguf *in;
    if (exo__gguf_open(argv[1], &in)) {
        fprintf(stderr, "exo-gguf-split: %s\n", exo_last_error());
        return 1;
    }
    int rc = exo__gguf_split_write(in, argv[2], parts, no_tensor_first);
    if (rc) fprintf(stderr, "exo-gguf-split: %s\n", exo_last_error());
    else printf("%s-00001-of-%05d.gguf ... %s-%05d-of-%05d.gguf: %lld tensors in %d parts\n", argv[2], parts,
                argv[2], parts, parts, (long long)exo__gguf_tensor_count(in), parts);
    exo__gguf_close(in);
    return rc ? 1 : 0;
}
