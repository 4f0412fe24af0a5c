/* fuzz_handshake.c: libFuzzer target for a keyed connection's handshake and
 * sealed frames (seal.c, with frame.c's decoder), as the receiving side of a
 * connection runs them.
 *
 * The first input byte picks who is talking:
 *   0 (even): a stranger. The rest of the input is the byte stream it sends:
 *     frames are decoded the way wire.c does (AUTH first, then everything
 *     sealed), and no frame may open unless the stranger holds the key, which
 *     it cannot: any frame that opens is a failure.
 *   1 (odd): a peer that holds the key. The input is cut into frames the peer
 *     seals ([type][length][payload], lengths capped), and each is delivered
 *     with one byte flipped when the input says so. Untampered frames must
 *     open in order and give back their exact bytes; the first tampered one
 *     must be refused (and the connection is then over).
 * Nothing may read past the input or its copies (ASan checks).
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Inative tests/fuzz_handshake.c \
 *       native/seal.c native/frame.c native/dtype.c native/error.c -lsodium -o /tmp/fuzz_handshake
 *   tests/run-fuzz.sh /tmp/fuzz_handshake tests/fuzz/handshake/seeds tests/fuzz/handshake/crashes 120 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fuzz_key.h"
#include "seal.h"
#include "wire.h"


static void stranger(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return;
    memcpy(buf, data, size);
    exo_seal receiver;
    uint8_t our_auth[EXO_SEAL_AUTH_SIZE];
    if (exo__seal_begin(&receiver, &cluster_key, 0, our_auth) != 0) abort();
    size_t off = 0;
    while (off < size) {
        exo_wire_header h;
        int rc = exo__wire_decode_header(buf + off, size - off, receiver.ready, &h);
        if (rc <= 0) break;
        if (size - off - EXO_WIRE_HEADER_SIZE < h.payload_len) break;
        if (!receiver.ready) {
            if (h.type != EXO_WIRE_AUTH) break; /* wire.c refuses anything else first */
            if (exo__seal_accept(&receiver, &cluster_key, buf + off + EXO_WIRE_HEADER_SIZE, h.payload_len) != 0)
                break;
        } else if (exo__seal_open(&receiver, buf + off, h.payload_len) == 0) {
            abort(); /* a frame opened without the key */
        } else {
            break;
        }
        off += EXO_WIRE_HEADER_SIZE + h.payload_len;
    }
    exo__seal_wipe(&receiver);
    free(buf);
}

static void key_holder(const uint8_t *data, size_t size)
{
    exo_seal peer, receiver;
    uint8_t auth_peer[EXO_SEAL_AUTH_SIZE], auth_receiver[EXO_SEAL_AUTH_SIZE];
    if (exo__seal_begin(&peer, &cluster_key, 1, auth_peer) || exo__seal_begin(&receiver, &cluster_key, 0, auth_receiver))
        abort();
    if (exo__seal_accept(&peer, &cluster_key, auth_receiver, sizeof auth_receiver) ||
        exo__seal_accept(&receiver, &cluster_key, auth_peer, sizeof auth_peer))
        abort(); /* two holders of the key always agree */
    size_t off = 0;
    while (off + 3 <= size) {
        uint8_t type = (uint8_t)(1 + data[off] % 6), flip = data[off + 1];
        size_t len = data[off + 2];
        off += 3;
        if (len > size - off) len = size - off;
        if (type == EXO_WIRE_PING || type == EXO_WIRE_PONG) len = len < 8 ? 0 : 8;
        if ((type == EXO_WIRE_PING || type == EXO_WIRE_PONG) && len != 8) break;
        uint8_t *frame = malloc(EXO_WIRE_HEADER_SIZE + len + EXO_WIRE_SEAL_TAG);
        if (!frame) break;
        exo__wire_encode_header(frame, type, off, (uint32_t)(len + EXO_WIRE_SEAL_TAG));
        memcpy(frame + EXO_WIRE_HEADER_SIZE, data + off, len);
        exo__seal_frame(&peer, frame, len);
        size_t total = EXO_WIRE_HEADER_SIZE + len + EXO_WIRE_SEAL_TAG;
        int tampered = flip & 1;
        if (tampered) frame[(flip >> 1) % total] ^= (uint8_t)(1u << (flip % 8));
        exo_wire_header h;
        int rc = exo__wire_decode_header(frame, total, 1, &h);
        if (!tampered && rc != EXO_WIRE_HEADER_SIZE) abort();
        if (rc == EXO_WIRE_HEADER_SIZE && h.payload_len == total - EXO_WIRE_HEADER_SIZE) {
            int opened = exo__seal_open(&receiver, frame, h.payload_len) == 0;
            if (opened == tampered) abort(); /* a tampered frame opened, or a true one did not */
            if (opened && memcmp(frame + EXO_WIRE_HEADER_SIZE, data + off, len) != 0) abort();
        }
        free(frame);
        if (tampered) break; /* the connection is closed */
        off += len;
    }
    exo__seal_wipe(&peer);
    exo__seal_wipe(&receiver);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    if (data[0] & 1) key_holder(data + 1, size - 1);
    else stranger(data + 1, size - 1);
    return 0;
}
