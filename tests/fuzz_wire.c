/* fuzz_wire.c: libFuzzer target for the wire frame decoder.
 *
 * The input is read as a stream of frames, the way a connection reads them:
 * decode a header, take its payload if it is all there, go on. Every header
 * that decodes must encode back to the same bytes; every tensor payload that
 * decodes must describe exactly the bytes it came with, with the rows inside
 * the payload; every tensor batch that decodes has 1 .. 64 parts of distinct
 * nonzero requests, 1 .. 65536 rows in all, each part's rows right after the
 * previous part's and the last ending where the payload does, and encodes
 * back to the same header and table; every chunk that decodes holds 1 .. 256 KiB of bytes that end
 * where its payload ends. Nothing may read past the input (ASan checks: the input is an
 * exact-size copy).
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Inative tests/fuzz_wire.c \
 *       native/frame.c native/error.c -o /tmp/fuzz_wire
 *   tests/run-fuzz.sh /tmp/fuzz_wire tests/fuzz/wire/seeds tests/fuzz/wire/crashes 120 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    size_t off = 0;
    while (off < size) {
        exo_wire_header h;
        int rc = exo__wire_decode_header(buf + off, size - off, 0, &h);
        if (rc <= 0) break;
        uint8_t again[EXO_WIRE_HEADER_SIZE];
        exo__wire_encode_header(again, h.type, h.request_id, h.payload_len);
        if (memcmp(again, buf + off, EXO_WIRE_HEADER_SIZE) != 0) abort();
        if (size - off - EXO_WIRE_HEADER_SIZE < h.payload_len) break;
        const uint8_t *payload = buf + off + EXO_WIRE_HEADER_SIZE;
        if (h.type == EXO_WIRE_TENSOR) {
            exo_wire_tensor t;
            const uint8_t *rows = NULL;
            if (exo__wire_decode_tensor(payload, h.payload_len, &t, &rows) == 0) {
                size_t bytes = exo__wire_tensor_bytes(t.dtype, t.n_rows, t.row_len);
                if (!bytes || rows != payload + EXO_WIRE_TENSOR_HEADER_SIZE ||
                    bytes + EXO_WIRE_TENSOR_HEADER_SIZE != h.payload_len)
                    abort();
                volatile uint8_t sink = rows[bytes - 1]; /* the last row byte is inside the input */
                (void)sink;
            }
        }
        if (h.type == EXO_WIRE_TENSOR_BATCH) {
            static exo_wire_batch b;
            if (exo__wire_decode_batch(payload, h.payload_len, &b) == 0) {
                size_t table = EXO_WIRE_BATCH_HEADER_SIZE + (size_t)b.n_parts * EXO_WIRE_BATCH_PART_SIZE;
                if (h.request_id || b.n_parts < 1 || b.n_parts > EXO_WIRE_MAX_PARTS ||
                    exo__wire_batch_bytes(&b) != h.payload_len)
                    abort();
                const uint8_t *at = payload + table;
                uint64_t rows = 0;
                for (uint32_t i = 0; i < b.n_parts; i++) {
                    const exo_wire_part *q = &b.parts[i];
                    if (q->data != at || !q->request_id || q->position < 0) abort();
                    for (uint32_t k = 0; k < i; k++)
                        if (b.parts[k].request_id == q->request_id) abort();
                    at += exo__wire_tensor_bytes(b.dtype, q->n_rows, b.row_len);
                    rows += q->n_rows;
                }
                if (at != payload + h.payload_len || rows > EXO_WIRE_MAX_ROWS) abort();
                volatile uint8_t sink = at[-1];
                (void)sink;
                static uint8_t again_table[EXO_WIRE_BATCH_HEADER_SIZE + EXO_WIRE_MAX_PARTS * EXO_WIRE_BATCH_PART_SIZE];
                exo__wire_encode_batch(again_table, &b);
                if (memcmp(again_table, payload, table) != 0) abort();
            }
        }
        if (h.type == EXO_WIRE_CHUNK) {
            uint64_t id, at;
            const uint8_t *bytes = NULL;
            size_t n = 0;
            if (exo__wire_decode_chunk(payload, h.payload_len, &id, &at, &bytes, &n) == 0) {
                if (!n || n > EXO_WIRE_MAX_CHUNK || bytes + n != payload + h.payload_len || at >> 62) abort();
                volatile uint8_t sink = bytes[n - 1];
                (void)sink;
            }
        }
        off += EXO_WIRE_HEADER_SIZE + h.payload_len;
    }
    free(buf);
    return 0;
}
