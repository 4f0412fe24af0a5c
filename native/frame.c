/* frame.c: encoding and validating wire frames (the format of wire.h).
 *
 * A peer is not trusted: every field of a header or tensor payload is checked
 * here, before the transport allocates a buffer for a payload or hands rows to
 * the shard executor. Decoding reads bytes explicitly little-endian, so the
 * format does not depend on the host's struct layout or byte order. Pure
 * functions only: the fuzzer links this file alone (with dtype.c's table). */
#include <string.h>

#include "dtype.h"
#include "error.h"
#include "wire.h"

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i);
}

static void wr64(uint8_t *p, uint64_t v)
{
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t max_payload(uint8_t type)
{
    switch (type) {
    case EXO_WIRE_HELLO: return EXO_WIRE_MAX_HELLO;
    case EXO_WIRE_CONTROL: return EXO_WIRE_MAX_CONTROL;
    case EXO_WIRE_TENSOR:
    case EXO_WIRE_TENSOR_BATCH: return EXO_WIRE_MAX_TENSOR;
    case EXO_WIRE_PING:
    case EXO_WIRE_PONG: return 8;
    case EXO_WIRE_ERROR: return EXO_WIRE_MAX_ERROR;
    case EXO_WIRE_AUTH: return EXO_WIRE_AUTH_SIZE;
    case EXO_WIRE_CHUNK: return EXO_WIRE_CHUNK_HEADER_SIZE + EXO_WIRE_MAX_CHUNK;
    default: return 0;
    }
}

int exo__wire_decode_header(const uint8_t *buf, size_t len, int sealed, exo_wire_header *h)
{
    if (len < EXO_WIRE_HEADER_SIZE) return 0;
    h->magic = rd32(buf);
    h->version = rd16(buf + 4);
    h->type = buf[6];
    h->flags = buf[7];
    h->request_id = rd64(buf + 8);
    h->payload_len = rd32(buf + 16);
    h->reserved = rd32(buf + 20);
    if (h->magic != EXO_WIRE_MAGIC) return exo__error_set(EXO_EFORMAT, "bad magic 0x%08x (not an exo peer)", h->magic);
    if (h->version != EXO_WIRE_VERSION)
        return exo__error_set(EXO_ENOTSUP, "protocol version %u is not supported (this node speaks %d)", h->version,
                             EXO_WIRE_VERSION);
    uint32_t limit = max_payload(h->type);
    if (!limit) return exo__error_set(EXO_EFORMAT, "unknown frame type %u", h->type);
    if (h->flags || h->reserved)
        return exo__error_set(EXO_EFORMAT, "frame type %u has nonzero flags or reserved bits", h->type);
    if (h->type == EXO_WIRE_TENSOR_BATCH && h->request_id) /* its parts name the requests */
        return exo__error_set(EXO_EFORMAT, "a tensor batch frame names request %llu in its header (0 expected)",
                             (unsigned long long)h->request_id);
    if (sealed && h->type == EXO_WIRE_AUTH) return exo__error_set(EXO_EFORMAT, "an AUTH after the handshake");
    uint32_t tag = sealed ? EXO_WIRE_SEAL_TAG : 0;
    if (h->payload_len < tag)
        return exo__error_set(EXO_EFORMAT, "a sealed frame of %u bytes is shorter than its tag", h->payload_len);
    uint32_t plain = h->payload_len - tag;
    if (plain > limit)
        return exo__error_set(EXO_ENOMEM, "frame type %u carries %u bytes, more than its limit of %u", h->type, plain,
                             limit);
    if ((h->type == EXO_WIRE_PING || h->type == EXO_WIRE_PONG) && plain != 8)
        return exo__error_set(EXO_EFORMAT, "a ping or pong carries 8 bytes, not %u", plain);
    if (h->type == EXO_WIRE_AUTH && plain != EXO_WIRE_AUTH_SIZE)
        return exo__error_set(EXO_EFORMAT, "an AUTH carries %d bytes, not %u", EXO_WIRE_AUTH_SIZE, plain);
    return EXO_WIRE_HEADER_SIZE;
}

void exo__wire_set_payload_len(uint8_t *buf, uint32_t payload_len) { wr32(buf + 16, payload_len); }

void exo__wire_encode_header(uint8_t *buf, uint8_t type, uint64_t request_id, uint32_t payload_len)
{
    wr32(buf, EXO_WIRE_MAGIC);
    wr16(buf + 4, EXO_WIRE_VERSION);
    buf[6] = type;
    buf[7] = 0;
    wr64(buf + 8, request_id);
    wr32(buf + 16, payload_len);
    wr32(buf + 20, 0);
}

size_t exo__wire_tensor_bytes(uint32_t dtype, uint32_t n_rows, uint32_t row_len)
{
    if (n_rows < 1 || n_rows > EXO_WIRE_MAX_ROWS || row_len < 1 || row_len > EXO_WIRE_MAX_ROW_LEN) return 0;
    size_t row;
    switch (dtype) {
    case EXO_DTYPE_F32:
    case EXO_DTYPE_F16:
    case EXO_DTYPE_Q8_0:
        if (row_len % exo__dtype_info_get((int)dtype)->block_size) return 0;
        row = exo__dtype_info_bytes((int)dtype, row_len);
        break;
    case EXO_WIRE_DTYPE_I32:
        if (row_len != 1) return 0;
        row = 4;
        break;
    default: return 0;
    }
    /* Both factors are bounded above (2^16 rows, 2^22 bytes a row), so the
     * product fits in 64 bits. */
    return row * n_rows;
}

int exo__wire_decode_tensor(const uint8_t *payload, size_t len, exo_wire_tensor *t, const uint8_t **data)
{
    if (len < EXO_WIRE_TENSOR_HEADER_SIZE)
        return exo__error_set(EXO_EFORMAT, "tensor frame of %zu bytes is shorter than its %d-byte header", len,
                             EXO_WIRE_TENSOR_HEADER_SIZE);
    t->position = (int32_t)rd32(payload);
    t->dtype = rd32(payload + 4);
    t->n_rows = rd32(payload + 8);
    t->row_len = rd32(payload + 12);
    t->flags = rd32(payload + 16);
    t->reserved = rd32(payload + 20);
    if (t->position < 0) return exo__error_set(EXO_EFORMAT, "tensor frame at negative position %d", t->position);
    if (t->flags & ~EXO_WIRE_TENSOR_ALL_LOGITS || t->reserved)
        return exo__error_set(EXO_EFORMAT, "tensor frame has unknown flags or reserved bits");
    size_t bytes = exo__wire_tensor_bytes(t->dtype, t->n_rows, t->row_len);
    if (!bytes)
        return exo__error_set(EXO_EFORMAT, "tensor frame with dtype %u and shape [%u][%u] is not allowed", t->dtype,
                             t->n_rows, t->row_len);
    if (bytes != len - EXO_WIRE_TENSOR_HEADER_SIZE)
        return exo__error_set(EXO_EFORMAT, "tensor frame shape [%u][%u] needs %zu bytes but %zu came", t->n_rows,
                             t->row_len, bytes, len - EXO_WIRE_TENSOR_HEADER_SIZE);
    *data = payload + EXO_WIRE_TENSOR_HEADER_SIZE;
    return EXO_OK;
}

void exo__wire_encode_tensor(uint8_t *buf, const exo_wire_tensor *t)
{
    wr32(buf, (uint32_t)t->position);
    wr32(buf + 4, t->dtype);
    wr32(buf + 8, t->n_rows);
    wr32(buf + 12, t->row_len);
    wr32(buf + 16, t->flags);
    wr32(buf + 20, 0);
}

int exo__wire_decode_batch(const uint8_t *payload, size_t len, exo_wire_batch *b)
{
    if (len < EXO_WIRE_BATCH_HEADER_SIZE)
        return exo__error_set(EXO_EFORMAT, "tensor batch of %zu bytes is shorter than its %d-byte header", len,
                             EXO_WIRE_BATCH_HEADER_SIZE);
    b->dtype = rd32(payload);
    b->row_len = rd32(payload + 4);
    b->n_parts = rd32(payload + 8);
    if (rd32(payload + 12)) return exo__error_set(EXO_EFORMAT, "tensor batch has nonzero reserved bits");
    if (b->n_parts < 1 || b->n_parts > EXO_WIRE_MAX_PARTS)
        return exo__error_set(EXO_EFORMAT, "tensor batch of %u parts (1 .. %u)", b->n_parts, EXO_WIRE_MAX_PARTS);
    if (!exo__wire_tensor_bytes(b->dtype, 1, b->row_len))
        return exo__error_set(EXO_EFORMAT, "tensor batch with dtype %u rows of %u is not allowed", b->dtype,
                             b->row_len);
    size_t at = EXO_WIRE_BATCH_HEADER_SIZE + (size_t)b->n_parts * EXO_WIRE_BATCH_PART_SIZE;
    if (len < at)
        return exo__error_set(EXO_EFORMAT, "tensor batch of %zu bytes is shorter than its table of %u parts", len,
                             b->n_parts);
    uint32_t rows = 0;
    for (uint32_t i = 0; i < b->n_parts; i++) {
        const uint8_t *q = payload + EXO_WIRE_BATCH_HEADER_SIZE + (size_t)i * EXO_WIRE_BATCH_PART_SIZE;
        exo_wire_part *p = &b->parts[i];
        p->request_id = rd64(q);
        p->position = (int32_t)rd32(q + 8);
        p->n_rows = rd32(q + 12);
        p->flags = rd32(q + 16);
        /* 0 is the connection's; ids stay below 2^52, replies below 2^53. */
        if (p->request_id == 0 || p->request_id >> (EXO_WIRE_REPLY_SHIFT + 1))
            return exo__error_set(EXO_EFORMAT, "tensor batch part %u names request %llu", i,
                                 (unsigned long long)p->request_id);
        for (uint32_t k = 0; k < i; k++)
            if (b->parts[k].request_id == p->request_id)
                return exo__error_set(EXO_EFORMAT, "tensor batch carries request %llu twice",
                                     (unsigned long long)p->request_id);
        if (p->position < 0)
            return exo__error_set(EXO_EFORMAT, "tensor batch part %u at negative position %d", i, p->position);
        if (p->flags & ~EXO_WIRE_TENSOR_ALL_LOGITS || rd32(q + 20))
            return exo__error_set(EXO_EFORMAT, "tensor batch part %u has unknown flags or reserved bits", i);
        if (p->n_rows < 1 || p->n_rows > EXO_WIRE_MAX_ROWS - rows)
            return exo__error_set(EXO_EFORMAT, "tensor batch part %u of %u rows (a frame holds 1 .. %u in all)", i,
                                 p->n_rows, EXO_WIRE_MAX_ROWS);
        rows += p->n_rows;
        size_t bytes = exo__wire_tensor_bytes(b->dtype, p->n_rows, b->row_len);
        if (bytes > len - at)
            return exo__error_set(EXO_EFORMAT, "tensor batch part %u needs %zu bytes but %zu remain", i, bytes,
                                 len - at);
        p->data = payload + at;
        at += bytes;
    }
    if (at != len)
        return exo__error_set(EXO_EFORMAT, "tensor batch has %zu bytes after its last part's rows", len - at);
    return EXO_OK;
}

size_t exo__wire_batch_bytes(const exo_wire_batch *b)
{
    if (b->n_parts < 1 || b->n_parts > EXO_WIRE_MAX_PARTS) return 0;
    size_t n = EXO_WIRE_BATCH_HEADER_SIZE + (size_t)b->n_parts * EXO_WIRE_BATCH_PART_SIZE;
    for (uint32_t i = 0; i < b->n_parts; i++) {
        size_t bytes = exo__wire_tensor_bytes(b->dtype, b->parts[i].n_rows, b->row_len);
        if (!bytes) return 0;
        n += bytes;
    }
    return n;
}

void exo__wire_encode_batch(uint8_t *buf, const exo_wire_batch *b)
{
    wr32(buf, b->dtype);
    wr32(buf + 4, b->row_len);
    wr32(buf + 8, b->n_parts);
    wr32(buf + 12, 0);
    for (uint32_t i = 0; i < b->n_parts; i++) {
        uint8_t *q = buf + EXO_WIRE_BATCH_HEADER_SIZE + (size_t)i * EXO_WIRE_BATCH_PART_SIZE;
        wr64(q, b->parts[i].request_id);
        wr32(q + 8, (uint32_t)b->parts[i].position);
        wr32(q + 12, b->parts[i].n_rows);
        wr32(q + 16, b->parts[i].flags);
        wr32(q + 20, 0);
    }
}

int exo__wire_decode_chunk(const uint8_t *payload, size_t len, uint64_t *transfer_id, uint64_t *offset,
                           const uint8_t **data, size_t *n)
{
    if (len <= EXO_WIRE_CHUNK_HEADER_SIZE)
        return exo__error_set(EXO_EFORMAT, "a chunk frame of %zu bytes carries no bytes after its %d-byte header",
                             len, EXO_WIRE_CHUNK_HEADER_SIZE);
    if (len > EXO_WIRE_CHUNK_HEADER_SIZE + EXO_WIRE_MAX_CHUNK)
        return exo__error_set(EXO_ENOMEM, "a chunk frame of %zu bytes is over its limit", len);
    *transfer_id = rd64(payload);
    *offset = rd64(payload + 8);
    /* Offsets past 2^62 cannot be a file's (and offset + n could wrap). */
    if (*offset >> 62) return exo__error_set(EXO_EFORMAT, "a chunk at offset %llu", (unsigned long long)*offset);
    *data = payload + EXO_WIRE_CHUNK_HEADER_SIZE;
    *n = len - EXO_WIRE_CHUNK_HEADER_SIZE;
    return EXO_OK;
}

void exo__wire_encode_chunk(uint8_t *buf, uint64_t transfer_id, uint64_t offset)
{
    wr64(buf, transfer_id);
    wr64(buf + 8, offset);
}
