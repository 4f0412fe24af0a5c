/* make_safetensors_seeds.c: writes the safetensors fuzzer's seed corpus.
 *
 * Each seed is a small valid .safetensors image (8-byte little-endian header
 * length, the JSON header, the data), so the fuzzer starts from structure it
 * can mutate: every dtype the format names, 1-D to 4-D and empty shapes, a
 * zero-byte tensor, __metadata__, escaped and non-ASCII names, a header
 * padded with spaces, several tensors with gaps between them, and a model's
 * naming (HF llama layer names). Regenerate after a format change:
 *
 *   cc tests/make_safetensors_seeds.c -o /tmp/mk && /tmp/mk tests/fuzz/safetensors/seeds */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static const char *outdir;
static int failures;

/* header: the JSON text; data_size: bytes after it (a counting pattern). */
static void seed(const char *name, const char *header, size_t data_size)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", outdir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "make_safetensors_seeds: cannot create %s\n", path);
        failures++;
        return;
    }
    uint64_t n = strlen(header);
    for (int i = 0; i < 8; i++) fputc((int)(n >> (8 * i) & 0xFF), f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data_size; i++) fputc((int)(i * 37 & 0xFF), f);
    if (fclose(f)) failures++;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_safetensors_seeds OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    seed("empty.safetensors", "{}", 0);
    seed("one_f32.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 24);
    seed("metadata.safetensors",
         "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\"\"},"
         "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,8]}}    ",
         8);
    seed("dtypes.safetensors",
         "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]},"
         "\"c\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[12,20]},"
         "\"d\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[20,24]},"
         "\"e\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[24,26]},"
         "\"f\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[26,28]},"
         "\"g\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[28,29]},"
         "\"h\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[29,30]},"
         "\"i\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[30,31]},"
         "\"j\":{\"dtype\":\"F8_E5M2\",\"shape\":[1],\"data_offsets\":[31,32]},"
         "\"k\":{\"dtype\":\"U16\",\"shape\":[1],\"data_offsets\":[32,34]},"
         "\"l\":{\"dtype\":\"U32\",\"shape\":[1],\"data_offsets\":[34,38]},"
         "\"m\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[38,46]}}",
         46);
    seed("shapes.safetensors",
         "{\"scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
         "\"zero\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
         "\"four_d\":{\"dtype\":\"F16\",\"shape\":[1,2,2,2],\"data_offsets\":[8,24]}}",
         32);
    seed("names.safetensors",
         "{\"\\u00e9\\t\\/\\\\\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]},"
         "\"\xe6\x97\xa5\xe6\x9c\xac\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[3,4]}}",
         4);
    seed("llama_layer.safetensors",
         "{\"model.embed_tokens.weight\":{\"dtype\":\"BF16\",\"shape\":[8,4],\"data_offsets\":[0,64]},"
         "\"model.layers.0.self_attn.q_proj.weight\":{\"dtype\":\"BF16\",\"shape\":[4,4],\"data_offsets\":[64,96]},"
         "\"model.layers.0.input_layernorm.weight\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[96,112]},"
         "\"model.norm.weight\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[112,120]}}",
         120);
    seed("numbers.safetensors",
         "{\"__metadata__\":{},\"x\":{\"dtype\":\"F32\",\"shape\":[1, 1],\"data_offsets\":[0, 4]},"
         "\"y\" : { \"data_offsets\" : [ 4 , 8 ] , \"shape\" : [ 1 ] , \"dtype\" : \"F32\" } }\n",
         8);
    return failures ? 1 : 0;
}
