/* exo_defs.h: the types every libexo header shares.
 *
 * Error codes, element types (dtypes) and the ABI version. The dtype numbers are
 * the ones GGUF files store, so a tensor's type read from a file needs no
 * translation. This header is plain C declarations only: native.lua's ffi.cdef
 * is checked against it by a test, so keep it free of macros that LuaJIT's
 * parser cannot read (only the #define lines below, which the test strips). */
#ifndef EXO_DEFS_H
#define EXO_DEFS_H

#include <stddef.h>
#include <stdint.h>

/* Bump when any declaration in exo.h or exo_defs.h changes meaning or layout. */
#define EXO_ABI_VERSION 4

/* Errors: every libexo call returns 0 or one of these, and leaves a message
 * for exo_last_error(). Names and messages come from the one X-macro table in
 * error.c. */
enum exo_error {
    EXO_OK = 0,
    EXO_EINVAL = -1,   /* bad argument (a programming error on the caller's side) */
    EXO_ENOMEM = -2,   /* allocation failed or a size limit was exceeded */
    EXO_EIO = -3,      /* the operating system refused (open, mmap, read, socket) */
    EXO_EFORMAT = -4,  /* malformed input: a corrupt model file, a bad frame */
    EXO_ERANGE = -5,   /* a position, index or count out of range */
    EXO_ENOTSUP = -6,  /* valid but not supported (a dtype, an architecture) */
    EXO_ESTATE = -7,   /* the object is in the wrong state for this call */
    EXO_EAGAIN = -8,   /* nothing ready yet; try again later */
    EXO_EBUSY = -9     /* the resource is taken (a port another process listens on) */
};

/* Element types, numbered as in GGUF. Only the ones listed are supported
 * (native/dtype.c names the others, so an error can say which one a file has). */
enum exo_dtype {
    EXO_DTYPE_F32 = 0,
    EXO_DTYPE_F16 = 1,
    EXO_DTYPE_Q4_0 = 2,
    EXO_DTYPE_Q4_1 = 3,
    EXO_DTYPE_Q5_0 = 6,
    EXO_DTYPE_Q5_1 = 7,
    EXO_DTYPE_Q8_0 = 8,
    EXO_DTYPE_Q2_K = 10,
    EXO_DTYPE_Q3_K = 11,
    EXO_DTYPE_Q4_K = 12,
    EXO_DTYPE_Q5_K = 13,
    EXO_DTYPE_Q6_K = 14,
    EXO_DTYPE_Q8_K = 15,   /* activations only, never stored in a model we load */
    EXO_DTYPE_IQ4_NL = 20,
    EXO_DTYPE_IQ4_XS = 23,
    EXO_DTYPE_BF16 = 30,
    EXO_DTYPE_COUNT = 40   /* one past the largest number GGUF may use that we track */
};

/* Metadata value types, numbered as in GGUF (exo_file_meta_type). */
enum exo_gguf_type {
    EXO_GGUF_UINT8 = 0,
    EXO_GGUF_INT8 = 1,
    EXO_GGUF_UINT16 = 2,
    EXO_GGUF_INT16 = 3,
    EXO_GGUF_UINT32 = 4,
    EXO_GGUF_INT32 = 5,
    EXO_GGUF_FLOAT32 = 6,
    EXO_GGUF_BOOL = 7,
    EXO_GGUF_STRING = 8,
    EXO_GGUF_ARRAY = 9,
    EXO_GGUF_UINT64 = 10,
    EXO_GGUF_INT64 = 11,
    EXO_GGUF_FLOAT64 = 12
};

/* Tensor frame flags (docs/wire.md; exo_wire_send_tokens). */
enum exo_wire_tensor_flag {
    EXO_WIRE_TENSOR_ALL_LOGITS = 1 /* the last shard returns logits for every row (a verify pass), not the last */
};

/* Logits a last shard sends back for request R travel as request
 * R + 2^EXO_WIRE_REPLY_SHIFT (request ids stay below it), so the asking node
 * can hold a shard route and a collector for the same request. */
enum { EXO_WIRE_REPLY_SHIFT = 52 };

#endif
