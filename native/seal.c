/* seal.c: a keyed cluster's handshake and frame sealing (seal.h).
 *
 * The construction is Noise's NNpsk0 pattern in libsodium's primitives:
 * crypto_kx gives two fresh session keys from ephemeral X25519 key pairs, and
 * each is hashed with the stretched cluster key, so only a holder of the key
 * who took part in this very exchange can seal or open frames. The first
 * sealed frame each way (the HELLO) is therefore the proof of the key, and a
 * recorded exchange replayed into a new connection meets a fresh key pair.
 * Nonces are frame counters, never sent: a replayed, reordered or dropped
 * frame fails its tag. */
#include <sodium.h>
#include <string.h>

#include "error.h"
#include "seal.h"
#include "wire.h"

static const uint8_t key_salt[crypto_pwhash_SALTBYTES] = "exo-cluster-key";
static const char key_id_context[8] = {'e', 'x', 'o', '-', 'k', 'i', 'd', '1'};
static const char session_label[10] = {'e', 'x', 'o', '-', 'w', 'i', 'r', 'e', '-', '2'};

static int sodium_ready(void)
{
    if (sodium_init() < 0) return exo__error_set(EXO_EIO, "libsodium cannot start (no randomness?)");
    return EXO_OK;
}

int exo__seal_key_derive(const char *key, size_t len, exo_seal_key *out)
{
    if (!key || !out) return exo__error_set(EXO_EINVAL, "exo__seal_key_derive: NULL argument");
    if (len < EXO_SEAL_KEY_MIN)
        return exo__error_set(EXO_EINVAL, "a cluster key has at least %d characters, this one %zu ('exo key' makes one)",
                             EXO_SEAL_KEY_MIN, len);
    int rc = sodium_ready();
    if (rc) return rc;
    if (crypto_pwhash(out->key, sizeof out->key, key, len, key_salt, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                      crypto_pwhash_MEMLIMIT_INTERACTIVE, crypto_pwhash_ALG_ARGON2ID13) != 0)
        return exo__error_set(EXO_ENOMEM, "no memory to derive the cluster key (Argon2id needs 64 MiB)");
    uint8_t in[sizeof key_id_context + 32];
    memcpy(in, key_id_context, sizeof key_id_context);
    memcpy(in + sizeof key_id_context, out->key, 32);
    crypto_generichash(out->id, sizeof out->id, in, sizeof in, NULL, 0);
    sodium_memzero(in, sizeof in);
    return EXO_OK;
}

int exo__seal_begin(exo_seal *s, const exo_seal_key *key, int dialed, uint8_t auth[EXO_SEAL_AUTH_SIZE])
{
    int rc = sodium_ready();
    if (rc) return rc;
    memset(s, 0, sizeof *s);
    s->dialed = dialed;
    crypto_kx_keypair(s->public_key, s->secret_key);
    memcpy(auth, s->public_key, 32);
    memcpy(auth + 32, key->id, EXO_SEAL_KEY_ID_SIZE);
    return EXO_OK;
}

/* A direction's key: crypto_kx's, hashed with the cluster key. */
static void mix(uint8_t out[32], const uint8_t kx[32], const exo_seal_key *key)
{
    uint8_t in[32 + sizeof session_label];
    memcpy(in, kx, 32);
    memcpy(in + 32, session_label, sizeof session_label);
    crypto_generichash(out, 32, in, sizeof in, key->key, sizeof key->key);
    sodium_memzero(in, sizeof in);
}

int exo__seal_accept(exo_seal *s, const exo_seal_key *key, const uint8_t *auth, size_t len)
{
    if (s->ready) return exo__error_set(EXO_EFORMAT, "a second AUTH");
    if (len != EXO_SEAL_AUTH_SIZE)
        return exo__error_set(EXO_EFORMAT, "an AUTH carries %d bytes, not %zu", EXO_SEAL_AUTH_SIZE, len);
    if (sodium_memcmp(auth + 32, key->id, EXO_SEAL_KEY_ID_SIZE) != 0)
        return exo__error_set(EXO_ENOTSUP, "the peer uses another cluster key");
    uint8_t rx[32], tx[32];
    int bad = s->dialed ? crypto_kx_client_session_keys(rx, tx, s->public_key, s->secret_key, auth)
                        : crypto_kx_server_session_keys(rx, tx, s->public_key, s->secret_key, auth);
    sodium_memzero(s->secret_key, sizeof s->secret_key);
    if (bad) return exo__error_set(EXO_EFORMAT, "the peer's AUTH public key is unusable");
    mix(s->rx, rx, key);
    mix(s->tx, tx, key);
    sodium_memzero(rx, sizeof rx);
    sodium_memzero(tx, sizeof tx);
    s->ready = 1;
    return EXO_OK;
}

static void nonce_of(uint8_t nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES], uint64_t count)
{
    memset(nonce, 0, crypto_aead_chacha20poly1305_ietf_NPUBBYTES);
    for (int i = 0; i < 8; i++) nonce[i] = (uint8_t)(count >> 8 * i);
}

void exo__seal_frame(exo_seal *s, uint8_t *frame, size_t plain_len)
{
    uint8_t nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES];
    nonce_of(nonce, s->tx_count++);
    uint8_t *payload = frame + EXO_WIRE_HEADER_SIZE;
    crypto_aead_chacha20poly1305_ietf_encrypt_detached(payload, payload + plain_len, NULL, payload, plain_len, frame,
                                                      EXO_WIRE_HEADER_SIZE, NULL, nonce, s->tx);
}

int exo__seal_open(exo_seal *s, uint8_t *frame, size_t payload_len)
{
    if (payload_len < EXO_SEAL_TAG) return exo__error_set(EXO_EFORMAT, "a sealed frame shorter than its tag");
    uint8_t nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES];
    nonce_of(nonce, s->rx_count);
    uint8_t *payload = frame + EXO_WIRE_HEADER_SIZE;
    size_t plain_len = payload_len - EXO_SEAL_TAG;
    if (crypto_aead_chacha20poly1305_ietf_decrypt_detached(payload, NULL, payload, plain_len, payload + plain_len,
                                                          frame, EXO_WIRE_HEADER_SIZE, nonce, s->rx) != 0)
        return exo__error_set(EXO_EFORMAT, "a frame failed authentication (tampered, replayed, out of order, or "
                                           "sealed with another key)");
    s->rx_count++;
    return EXO_OK;
}

void exo__seal_wipe(exo_seal *s) { sodium_memzero(s, sizeof *s); }

void exo__seal_key_wipe(exo_seal_key *key) { sodium_memzero(key, sizeof *key); }
