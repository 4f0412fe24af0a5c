/* wire.h: the frame format peers speak to each other (internal).
 *
 * Every frame is a fixed 24-byte little-endian header followed by a payload.
 * The header's first six bytes (magic, version) keep their place in every
 * protocol version, so any two versions can tell each other apart and refuse
 * cleanly. docs/wire.md is the specification; this header and frame.c are its
 * implementation. Decoding is pure (no allocation, no I/O) so the fuzzer and
 * the unit tests drive it directly. */
#ifndef EXO_WIRE_H
#define EXO_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "exo_defs.h"

#define EXO_WIRE_MAGIC 0x574f5845u /* the bytes "EXOW" read as a little-endian u32 */
#define EXO_WIRE_VERSION 2
#define EXO_WIRE_HEADER_SIZE 24
#define EXO_WIRE_TENSOR_HEADER_SIZE 24

/* Payload limits by frame type: a length past its limit is refused before
 * anything is allocated. */
#define EXO_WIRE_MAX_HELLO (4u << 10)
#define EXO_WIRE_MAX_CONTROL (1u << 20)
#define EXO_WIRE_MAX_TENSOR (64u << 20)
#define EXO_WIRE_MAX_ERROR (4u << 10)
#define EXO_WIRE_AUTH_SIZE 40 /* X25519 public key, cluster key id (seal.h) */
#define EXO_WIRE_SEAL_TAG 16  /* a sealed frame's payload ends in its tag */
#define EXO_WIRE_MAX_ROWS 65536u
#define EXO_WIRE_MAX_ROW_LEN (1u << 20)
/* A CHUNK carries a piece of a model file: transfer id and offset, then at
 * most EXO_WIRE_MAX_CHUNK bytes (docs/wire.md, "Sharing model files"). */
#define EXO_WIRE_CHUNK_HEADER_SIZE 16
#define EXO_WIRE_MAX_CHUNK (256u << 10)
/* A TENSOR_BATCH carries the rows of up to EXO_WIRE_MAX_PARTS requests: a
 * 16-byte header (dtype, row_len, n_parts), a 24-byte entry a part (request
 * id, position, n_rows, flags), then each part's rows in the table's order.
 * Sent only to a peer whose hello lists EXO_WIRE_FEATURE_BATCH in
 * `wire_features` (docs/wire.md, "Versioning rule"). */
#define EXO_WIRE_BATCH_HEADER_SIZE 16
#define EXO_WIRE_BATCH_PART_SIZE 24
#define EXO_WIRE_MAX_PARTS 64u
#define EXO_WIRE_FEATURE_BATCH "tensor_batch"

/* Where replies to a request go (exo_defs.h says why). */
#define EXO_WIRE_REPLY_OFFSET (1ULL << EXO_WIRE_REPLY_SHIFT)

/* Token ids travel as GGUF's I32 type number. */
#define EXO_WIRE_DTYPE_I32 26

enum exo_wire_frame_type {
    EXO_WIRE_HELLO = 1,   /* JSON: who the sender is; the first frame each way */
    EXO_WIRE_CONTROL = 2, /* JSON for the control plane (Lua) */
    EXO_WIRE_TENSOR = 3,  /* token ids or hidden states for the shard executor */
    EXO_WIRE_PING = 4,    /* 8 opaque bytes, answered at once by a PONG with the same bytes */
    EXO_WIRE_PONG = 5,
    EXO_WIRE_ERROR = 6,   /* UTF-8 text: why the sender is closing the connection */
    EXO_WIRE_AUTH = 7,    /* a keyed cluster's handshake: the first frame each way, never sealed */
    EXO_WIRE_CHUNK = 8,   /* bytes of a model file a peer asked for: transfer id, offset, bytes */
    EXO_WIRE_TENSOR_BATCH = 9 /* rows of several requests for one shard's pass; request_id 0 */
};

/* Tensor flags: enum exo_wire_tensor_flag, in exo_defs.h. */

typedef struct exo_wire_header {
    uint32_t magic;
    uint16_t version;
    uint8_t type;
    uint8_t flags;        /* none defined yet; must be 0 */
    uint64_t request_id;  /* 0 for frames about the connection itself */
    uint32_t payload_len;
    uint32_t reserved;    /* must be 0 */
} exo_wire_header;
_Static_assert(sizeof(exo_wire_header) == EXO_WIRE_HEADER_SIZE, "wire header size");

/* The start of a TENSOR payload; n_rows rows of row_len elements follow. */
typedef struct exo_wire_tensor {
    int32_t position;     /* sequence position of the first row */
    uint32_t dtype;       /* F32, F16, Q8_0 (hidden states) or I32 (token ids, row_len 1) */
    uint32_t n_rows;
    uint32_t row_len;
    uint32_t flags;       /* EXO_WIRE_TENSOR_* */
    uint32_t reserved;    /* must be 0 */
} exo_wire_tensor;
_Static_assert(sizeof(exo_wire_tensor) == EXO_WIRE_TENSOR_HEADER_SIZE, "wire tensor header size");

/* One request's rows in a TENSOR_BATCH; data points at its first row once
 * decoded. */
typedef struct exo_wire_part {
    uint64_t request_id;  /* 1 .. 2^53 - 1 (replies too), each at most once a frame */
    int32_t position;
    uint32_t n_rows;
    uint32_t flags;       /* EXO_WIRE_TENSOR_* */
    const uint8_t *data;
} exo_wire_part;

typedef struct exo_wire_batch {
    uint32_t dtype, row_len; /* one for every part, as a TENSOR's */
    uint32_t n_parts;        /* 1 .. EXO_WIRE_MAX_PARTS */
    exo_wire_part parts[EXO_WIRE_MAX_PARTS];
} exo_wire_batch;

/* Decodes a header from the first len bytes of buf. Returns 0 when fewer than
 * EXO_WIRE_HEADER_SIZE bytes are there, EXO_WIRE_HEADER_SIZE when h is filled
 * and valid, or a code with a message: EXO_EFORMAT (bad magic, unknown type,
 * nonzero flags or reserved field), EXO_ENOTSUP (another protocol version),
 * EXO_ENOMEM (a payload longer than its type allows). On a sealed connection
 * (sealed 1) every payload ends in its EXO_WIRE_SEAL_TAG-byte tag, which the
 * type's limits do not count, and AUTH is refused. */
int exo__wire_decode_header(const uint8_t *buf, size_t len, int sealed, exo_wire_header *h);
/* Writes the 24 header bytes. */
void exo__wire_encode_header(uint8_t *buf, uint8_t type, uint64_t request_id, uint32_t payload_len);
/* Rewrites an encoded header's payload_len (a frame about to be sealed). */
void exo__wire_set_payload_len(uint8_t *buf, uint32_t payload_len);

/* Decodes and checks a TENSOR payload: the dtype is one of the four, the
 * shape is within limits (Q8_0 rows a multiple of 32, I32 rows of length 1)
 * and the data is exactly n_rows rows long. On success *data points at the
 * first row. */
int exo__wire_decode_tensor(const uint8_t *payload, size_t len, exo_wire_tensor *t, const uint8_t **data);
void exo__wire_encode_tensor(uint8_t *buf, const exo_wire_tensor *t);
/* Bytes of n_rows rows of row_len elements of a wire dtype, or 0 when the
 * dtype or shape is not allowed. */
size_t exo__wire_tensor_bytes(uint32_t dtype, uint32_t n_rows, uint32_t row_len);

/* Decodes and checks a TENSOR_BATCH payload: every field of the header and
 * of each part (a request id at most once, rows 1 .. 65536 in all, the
 * dtype and shape rules of a TENSOR), and the rows end exactly where the
 * payload does. One bad part refuses the whole frame. */
int exo__wire_decode_batch(const uint8_t *payload, size_t len, exo_wire_batch *b);
/* Bytes of a batch payload whose parts are b's (0 when a shape is not
 * allowed); exo__wire_encode_batch writes its header and table, the caller
 * the rows after them. */
size_t exo__wire_batch_bytes(const exo_wire_batch *b);
void exo__wire_encode_batch(uint8_t *buf, const exo_wire_batch *b);

/* Decodes a CHUNK payload: at least one byte after its 16-byte header (the
 * header decoder has bounded the length). On success *data points at the
 * bytes and *n counts them. */
int exo__wire_decode_chunk(const uint8_t *payload, size_t len, uint64_t *transfer_id, uint64_t *offset,
                           const uint8_t **data, size_t *n);
void exo__wire_encode_chunk(uint8_t *buf, uint64_t transfer_id, uint64_t offset);

/* Hidden-state rows to and from a wire dtype (F32, F16 or Q8_0). */
void exo__wire_pack_rows(uint32_t dtype, const float *x, int n_rows, int row_len, uint8_t *out);
void exo__wire_unpack_rows(uint32_t dtype, const uint8_t *in, int n_rows, int row_len, float *x);

#endif
