/* safetensors.h: Hugging Face model folders (config.json + *.safetensors +
 * tokenizer.json) read as if they were GGUF files (internal API; the parser
 * is safetensors.c, the folder converter safetensors_model.c).
 *
 * The header parser validates a .safetensors file completely before anything
 * uses it: the 8-byte header length against the file and a limit, the header
 * JSON strictly (each tensor exactly dtype, shape and data_offsets; known
 * dtypes; shapes whose byte size matches their offsets; offsets inside the
 * data; no two tensors overlapping; unique names). The folder reader then
 * builds, in memory, the GGUF a converter would have written: GGUF tensor
 * names, Q/K rows in the order the llama rope expects, hyper-parameters from
 * config.json, the vocabulary and merges from tokenizer.json, the chat
 * template from tokenizer_config.json. Everything downstream (shards,
 * tokenizer, metadata readers) then reads an exo_gguf and never knows. */
#ifndef EXO_SAFETENSORS_H
#define EXO_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

#define EXO_ST_MAX_DIMS 8

typedef struct exo_st_tensor {
    const char *name;     /* NUL-terminated, owned by the file */
    int dtype;            /* EXO_DTYPE_F32/F16/BF16; -1 for the other dtypes safetensors knows */
    const char *dtype_name; /* as the header spells it ("BF16") */
    int n_dims;
    int64_t shape[EXO_ST_MAX_DIMS]; /* outermost first, as safetensors writes it */
    const void *data;
    size_t size;
} exo_st_tensor;

typedef struct exo_st_file exo_st_file;

/* Validates a whole safetensors image in a caller-owned buffer (which must
 * outlive the result): the fuzzer's entry point. label names it in errors. */
int exo__safetensors_parse(const void *data, size_t size, const char *label, exo_st_file **out);
/* Maps and validates path. */
int exo__safetensors_open(const char *path, exo_st_file **out);
/* Maps a whole regular file of at most max bytes read-only (*map NULL when
 * it is empty); the folder reader maps its JSON files with it too. */
int exo__safetensors_map(const char *path, size_t max, void **map, size_t *size);
void exo__safetensors_close(exo_st_file *f);
int64_t exo__safetensors_count(const exo_st_file *f);
const exo_st_tensor *exo__safetensors_at(const exo_st_file *f, int64_t i);

/* Whether path names a safetensors model (a folder with config.json, or a
 * .safetensors file). */
bool exo__safetensors_is_model(const char *path);

/* What exo__model_file_open builds for a safetensors model. */
enum {
    EXO_MODEL_OPEN_ALL = 0,      /* everything (a shard) */
    EXO_MODEL_OPEN_INFO = 1,     /* metadata and tensor infos; the data reads as zeros and takes no memory */
    EXO_MODEL_OPEN_METADATA = 2, /* metadata only: hyper-parameters, tokenizer, template */
};

/* The one entry point the engine opens model files through: a GGUF file is
 * opened as it is; a safetensors model (exo__safetensors_is_model) is
 * converted into an in-memory GGUF. With layer_end > 0 that GGUF holds the
 * shard's part only: layers [layer_start, layer_end), the head and final
 * norm if is_last, the token embedding's data only where the shard reads it
 * (first, or last with a tied head; elsewhere its shape over a hole), so a
 * shard's memory follows its layers. is_first / is_last: 0, 1, or -1 for
 * "from the range", as exo_shard_load takes them. */
int exo__model_file_open(const char *path, int what, int layer_start, int layer_end, int is_first, int is_last,
                         exo_gguf **out);

/* For tools that write safetensors folders from GGUF files (the tests'):
 * the Q/K rows of heads heads between the two layouts (to_hf: GGUF llama's
 * adjacent pairs to HF's halves; else back), the HF name of a GGUF tensor
 * name (0, or -1 when it has none), and the tokenizer.json Split regex that
 * stands for a tokenizer.ggml.pre name (NULL when none does). */
void exo__safetensors_permute_rows(const void *src, void *dst, int64_t rows, size_t row_bytes, int heads, bool to_hf);
int exo__safetensors_hf_name(const char *gguf, char *out, size_t cap);
const char *exo__safetensors_split_regex(const char *pre);

#endif
