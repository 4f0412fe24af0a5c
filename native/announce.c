/* announce.c: the datagrams UDP discovery sends, sealed with the cluster key (docs/discovery.md).
 *
 * An open cluster announces a JSON object in the clear, as the original exo
 * does. A keyed cluster seals it: a 40-byte header (magic "EXOA", version,
 * the key's id, a random 24-byte nonce) and the JSON encrypted with
 * XChaCha20-Poly1305 under a key derived from the cluster key, the header as
 * additional data. A stranger can neither read who is in the cluster nor make
 * a node believe in a peer; what it can replay is refused by the timestamp the
 * JSON carries (discovery/udp.lua). Pure functions: the fuzzer drives them. */
#include <sodium.h>
#include <string.h>

#include "announce.h"
#include "error.h"

static const uint8_t magic[4] = {'E', 'X', 'O', 'A'};
static const char announce_label[14] = {'e', 'x', 'o', '-', 'a', 'n', 'n', 'o', 'u', 'n', 'c', 'e', '-', '1'};

void exo__announce_key(const exo_seal_key *cluster, uint8_t out[32])
{
    crypto_generichash(out, 32, (const uint8_t *)announce_label, sizeof announce_label, cluster->key,
                       sizeof cluster->key);
}

/* The JSON an announcement carries: an object's text, within limits, no NUL. */
static int check_json(const uint8_t *text, size_t len)
{
    if (len == 0) return exo__error_set(EXO_EFORMAT, "an empty announcement");
    if (len > EXO_ANNOUNCE_MAX_JSON)
        return exo__error_set(EXO_ERANGE, "an announcement of %zu bytes (at most %d)", len, EXO_ANNOUNCE_MAX_JSON);
    if (memchr(text, 0, len)) return exo__error_set(EXO_EFORMAT, "an announcement with a NUL byte");
    size_t a = 0, b = len;
    while (a < b && (text[a] == ' ' || text[a] == '\t' || text[a] == '\n' || text[a] == '\r')) a++;
    while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\n' || text[b - 1] == '\r')) b--;
    if (b - a < 2 || text[a] != '{' || text[b - 1] != '}')
        return exo__error_set(EXO_EFORMAT, "an announcement that is not a JSON object");
    return EXO_OK;
}

int exo__announce_seal(const exo_seal_key *cluster, const char *json, size_t len, uint8_t *out, size_t cap,
                       size_t *out_len)
{
    *out_len = 0;
    int rc = check_json((const uint8_t *)json, len);
    if (rc) return rc;
    if (!cluster) {
        if (cap < len) return exo__error_set(EXO_ERANGE, "no room for the announcement");
        memcpy(out, json, len);
        *out_len = len;
        return EXO_OK;
    }
    size_t total = EXO_ANNOUNCE_HEADER + len + crypto_aead_xchacha20poly1305_ietf_ABYTES;
    if (cap < total) return exo__error_set(EXO_ERANGE, "no room for the sealed announcement");
    if (sodium_init() < 0) return exo__error_set(EXO_EIO, "libsodium cannot start");
    memcpy(out, magic, 4);
    out[4] = EXO_ANNOUNCE_VERSION;
    out[5] = out[6] = out[7] = 0;
    memcpy(out + 8, cluster->id, EXO_SEAL_KEY_ID_SIZE);
    randombytes_buf(out + 16, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
    uint8_t key[32];
    exo__announce_key(cluster, key);
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + EXO_ANNOUNCE_HEADER, &clen, (const uint8_t *)json, len, out,
                                               EXO_ANNOUNCE_HEADER, NULL, out + 16, key);
    sodium_memzero(key, sizeof key);
    *out_len = EXO_ANNOUNCE_HEADER + (size_t)clen;
    return EXO_OK;
}

int exo__announce_open(const exo_seal_key *cluster, const uint8_t *dgram, size_t len, char *json, size_t cap,
                       size_t *json_len)
{
    *json_len = 0;
    if (len > EXO_ANNOUNCE_MAX_DATAGRAM)
        return exo__error_set(EXO_ERANGE, "a datagram of %zu bytes (at most %d)", len, EXO_ANNOUNCE_MAX_DATAGRAM);
    int sealed = len >= 4 && memcmp(dgram, magic, 4) == 0;
    if (!cluster) {
        if (sealed) return exo__error_set(EXO_ENOTSUP, "a keyed cluster's announcement (this node has no key)");
        int rc = check_json(dgram, len);
        if (rc) return rc;
        if (cap < len) return exo__error_set(EXO_ERANGE, "no room for the announcement");
        memcpy(json, dgram, len);
        *json_len = len;
        return EXO_OK;
    }
    if (!sealed) return exo__error_set(EXO_ESTATE, "an announcement in the clear (this cluster seals them)");
    if (len < EXO_ANNOUNCE_HEADER + crypto_aead_xchacha20poly1305_ietf_ABYTES + 2)
        return exo__error_set(EXO_EFORMAT, "a sealed announcement of %zu bytes is too short", len);
    if (dgram[4] != EXO_ANNOUNCE_VERSION || dgram[5] || dgram[6] || dgram[7])
        return exo__error_set(EXO_EFORMAT, "announcement version %u (this node reads %d)", dgram[4],
                             EXO_ANNOUNCE_VERSION);
    if (sodium_memcmp(dgram + 8, cluster->id, EXO_SEAL_KEY_ID_SIZE) != 0)
        return exo__error_set(EXO_ENOTSUP, "an announcement of another cluster (another key)");
    size_t plain = len - EXO_ANNOUNCE_HEADER - crypto_aead_xchacha20poly1305_ietf_ABYTES;
    if (cap < plain) return exo__error_set(EXO_ERANGE, "no room for the announcement");
    if (sodium_init() < 0) return exo__error_set(EXO_EIO, "libsodium cannot start");
    uint8_t key[32];
    exo__announce_key(cluster, key);
    unsigned long long mlen = 0;
    int bad = crypto_aead_xchacha20poly1305_ietf_decrypt((uint8_t *)json, &mlen, NULL, dgram + EXO_ANNOUNCE_HEADER,
                                                         len - EXO_ANNOUNCE_HEADER, dgram, EXO_ANNOUNCE_HEADER,
                                                         dgram + 16, key);
    sodium_memzero(key, sizeof key);
    if (bad) return exo__error_set(EXO_ESTATE, "an announcement that fails authentication (forged or damaged)");
    int rc = check_json((const uint8_t *)json, (size_t)mlen);
    if (rc) return rc;
    *json_len = (size_t)mlen;
    return EXO_OK;
}
