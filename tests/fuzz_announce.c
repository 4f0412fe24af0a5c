/* fuzz_announce.c: libFuzzer target for UDP discovery's datagrams (announce.c).
 *
 * The first input byte picks the receiver: an open node (no key) or a keyed
 * one, given the rest as a datagram from anyone; or (odd bytes >= 2) a key
 * holder that seals the rest as an announcement, maybe flips one bit of the
 * datagram, and opens it: an untouched datagram must give back exactly what
 * was sealed, a touched one must be refused. Whatever opens must be an
 * object's text within the limits. Nothing may read past the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "announce.h"
#include "error.h"
#include "fuzz_key.h"


static void check_opened(const char *json, size_t n)
{
    if (n == 0 || n > EXO_ANNOUNCE_MAX_JSON || memchr(json, 0, n)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    uint8_t mode = data[0];
    size_t len = size - 1;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return 0;
    memcpy(copy, data + 1, len);
    static char json[EXO_ANNOUNCE_MAX_DATAGRAM];
    static uint8_t dgram[EXO_ANNOUNCE_MAX_DATAGRAM];
    size_t n = 0;
    if (mode < 2) {
        if (exo__announce_open(mode ? &cluster_key : NULL, copy, len, json, sizeof json, &n) == 0) {
            check_opened(json, n);
            if (mode == 0 && (n != len || memcmp(json, copy, n))) abort(); /* the clear text is itself */
        }
    } else if (len >= 1) {
        uint8_t flip = copy[0];
        const char *text = (const char *)copy + 1;
        size_t text_len = len - 1;
        if (exo__announce_seal(&cluster_key, text, text_len, dgram, sizeof dgram, &n) == 0) {
            int tampered = flip & 1;
            if (tampered) dgram[(flip >> 1) % n] ^= (uint8_t)(1u << (flip % 8));
            size_t m = 0;
            int rc = exo__announce_open(&cluster_key, dgram, n, json, sizeof json, &m);
            if (tampered && rc == 0) abort();
            if (!tampered && (rc != 0 || m != text_len || memcmp(json, text, m))) abort();
        }
    }
    free(copy);
    return 0;
}
