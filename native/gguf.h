/* gguf.h: reading and writing GGUF v3 model files (internal API).
 *
 * The reader maps the file read-only and validates every count, length, type,
 * offset and size against the file size and sane limits before anything uses
 * it; after exo__gguf_open() succeeds, every accessor is safe. Strings in the
 * file are not NUL-terminated, so they are handed out as (pointer, length).
 * A split model (llama.cpp's gguf-split: PREFIX-00001-of-0000N.gguf ...)
 * opens from any of its parts: every part is mapped and validated and their
 * tensors joined into one table, so callers see one model.
 * The writer keeps metadata and copies of tensor data as they are added, then
 * writes the file in one go (or asks a callback for each tensor added "later"
 * as it writes); it is what the tiny test model and the fuzz seeds use. */
#ifndef EXO_GGUF_H
#define EXO_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "exo_defs.h"

/* Value types: enum exo_gguf_type, in exo_defs.h (Lua reads them too). */

#define EXO_GGUF_MAX_DIMS 4

typedef struct exo_gguf exo_gguf;

typedef struct exo_gguf_tensor {
    const char *name;       /* NUL-terminated copy owned by the exo_gguf */
    int dtype;              /* enum exo_dtype */
    int n_dims;
    int64_t ne[EXO_GGUF_MAX_DIMS]; /* elements per dimension, ne[0] innermost; unused dims are 1 */
    uint64_t offset;        /* from the start of the data section (of its own part, in a split model) */
    size_t size;            /* bytes */
    const void *data;       /* into the mapping */
} exo_gguf_tensor;

/* Opens and validates path (for a split model: every part, found by name from
 * the one given; a missing part, parts of different models, a tensor in two
 * parts are refused naming the file). On failure returns a negative EXO_E* code, sets
 * *out to NULL and leaves a message naming the problem (and the path). */
int exo__gguf_open(const char *path, exo_gguf **out);
/* Same, over a caller-owned buffer (the fuzzer uses this; the buffer must
 * outlive the exo_gguf). */
int exo__gguf_open_memory(const void *data, size_t size, exo_gguf **out);
void exo__gguf_close(exo_gguf *g);

uint32_t exo__gguf_version(const exo_gguf *g);
size_t exo__gguf_alignment(const exo_gguf *g);
/* Whether tensor data lives in a read-only mapping of the file (exo__gguf_open),
 * whose pages can be dropped and read again, rather than in caller memory. */
bool exo__gguf_is_file_mapped(const exo_gguf *g);
/* Bytes of the file (of every part together, for a split model). */
size_t exo__gguf_file_size(const exo_gguf *g);
/* 1, or the number of parts of a split model. */
uint32_t exo__gguf_part_count(const exo_gguf *g);

/* Metadata. Keys are looked up by exact name; -1 when absent. */
int64_t exo__gguf_kv_count(const exo_gguf *g);
int64_t exo__gguf_find_key(const exo_gguf *g, const char *key);
const char *exo__gguf_key_name(const exo_gguf *g, int64_t i); /* NUL-terminated copy */
int exo__gguf_kv_type(const exo_gguf *g, int64_t i);          /* enum exo_gguf_type */

/* Typed getters. Integer getters accept any integer type (and bool) whose value
 * fits; the float getter accepts float32/float64 and integers. Return 0 or
 * EXO_EFORMAT (wrong type) / EXO_ERANGE (value does not fit) / EXO_EINVAL
 * (absent key) with a message naming the key. */
int exo__gguf_get_i64(const exo_gguf *g, const char *key, int64_t *out);
int exo__gguf_get_u32(const exo_gguf *g, const char *key, uint32_t *out);
int exo__gguf_get_f32(const exo_gguf *g, const char *key, float *out);
int exo__gguf_get_bool(const exo_gguf *g, const char *key, bool *out);
int exo__gguf_get_str(const exo_gguf *g, const char *key, const char **s, size_t *len);

/* Arrays: element type and length; numeric arrays expose their raw (little
 * endian, possibly unaligned) data; string arrays are read element by element
 * in O(1) (the reader keeps an index). */
int exo__gguf_get_arr(const exo_gguf *g, const char *key, int *elem_type, uint64_t *len);
const void *exo__gguf_arr_data(const exo_gguf *g, int64_t kv_index);
int exo__gguf_arr_str(const exo_gguf *g, int64_t kv_index, uint64_t j, const char **s, size_t *len);

/* Tensors. */
int64_t exo__gguf_tensor_count(const exo_gguf *g);
int64_t exo__gguf_find_tensor(const exo_gguf *g, const char *name);
const exo_gguf_tensor *exo__gguf_tensor_at(const exo_gguf *g, int64_t i);

/* Writer. Keys and tensors are written in the order added. Tensor data is
 * copied on add (the writer owns it) and laid out at the alignment (default
 * 32, or general.alignment if that key is added as a uint32). */
typedef struct exo_gguf_writer exo_gguf_writer;
exo_gguf_writer *exo__gguf_writer_new(void);
void exo__gguf_writer_free(exo_gguf_writer *w);
int exo__gguf_writer_add_u32(exo_gguf_writer *w, const char *key, uint32_t v);
int exo__gguf_writer_add_u16(exo_gguf_writer *w, const char *key, uint16_t v);
/* Copies key/value pair i of an open file, its value byte for byte. */
int exo__gguf_writer_copy_kv(exo_gguf_writer *w, const exo_gguf *g, int64_t i);
int exo__gguf_writer_add_i32(exo_gguf_writer *w, const char *key, int32_t v);
int exo__gguf_writer_add_f32(exo_gguf_writer *w, const char *key, float v);
int exo__gguf_writer_add_bool(exo_gguf_writer *w, const char *key, bool v);
int exo__gguf_writer_add_str(exo_gguf_writer *w, const char *key, const char *v);
/* Numeric array of elem_type (not STRING/ARRAY); data holds n elements. */
int exo__gguf_writer_add_arr(exo_gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n);
int exo__gguf_writer_add_str_arr(exo_gguf_writer *w, const char *key, const char *const *strs, uint64_t n);
/* ne[0] innermost, as in exo_gguf_tensor; data is the tensor's bytes in dtype's layout. */
int exo__gguf_writer_add_tensor(exo_gguf_writer *w, const char *name, int dtype, int n_dims,
                               const int64_t *ne, const void *data, size_t size);
int exo__gguf_writer_write(exo_gguf_writer *w, const char *path);
/* A tensor whose bytes the write's fill callback supplies, so a file larger
 * than memory (an 8B-shape F16 model) is written one tensor at a time. */
int exo__gguf_writer_add_tensor_later(exo_gguf_writer *w, const char *name, int dtype, int n_dims,
                                     const int64_t *ne, size_t size);
/* Called in file order for each deferred tensor (index in the order added);
 * fills buf's size bytes and returns 0, or a negative EXO_E* code. */
typedef int (*exo_gguf_fill_fn)(void *ud, size_t index, void *buf, size_t size);
int exo__gguf_writer_write_fill(exo_gguf_writer *w, const char *path, exo_gguf_fill_fn fill, void *ud);

/* Writes in as a split model, gguf-split's format: PREFIX-00001-of-0000N.gguf
 * ... with part 1 holding the metadata and the tensors shared out in order
 * (none in part 1 with no_tensor_first). */
int exo__gguf_split_write(const exo_gguf *in, const char *prefix, int parts, bool no_tensor_first);

#endif
