/* seal.h: the cryptography of a keyed cluster's connections (internal).
 *
 * docs/wire.md ("Keyed clusters") is the specification. A cluster key string
 * is stretched once into a 32-byte key; each connection then runs a fresh
 * X25519 exchange (its AUTH frames), mixes the result with the cluster key
 * into one key per direction, and seals every later frame with
 * ChaCha20-Poly1305 under a counter nonce. All of it is libsodium; nothing
 * here does I/O, so the unit tests and the handshake fuzzer drive it
 * directly. */
#ifndef EXO_SEAL_H
#define EXO_SEAL_H

#include <stddef.h>
#include <stdint.h>

#define EXO_SEAL_KEY_MIN 16     /* bytes of a key string, at least */
#define EXO_SEAL_TAG 16         /* bytes a sealed frame's payload grows by */
#define EXO_SEAL_AUTH_SIZE 40   /* an AUTH payload: X25519 public key, key id */
#define EXO_SEAL_KEY_ID_SIZE 8

/* A cluster key, stretched, and its public id. */
typedef struct exo_seal_key {
    uint8_t key[32];
    uint8_t id[EXO_SEAL_KEY_ID_SIZE];
} exo_seal_key;

/* One connection's side of the exchange, then its two directions. */
typedef struct exo_seal {
    uint8_t public_key[32], secret_key[32]; /* this connection's alone */
    uint8_t tx[32], rx[32];
    uint64_t tx_count, rx_count;            /* frames sealed and opened so far: the nonces */
    int dialed;                             /* 1: we are crypto_kx's client */
    int ready;                              /* the peer's AUTH is in: frames are sealed */
} exo_seal;

/* Stretches a key string (EXO_SEAL_KEY_MIN bytes or more) with Argon2id.
 * Slow on purpose (a fraction of a second): once per process. */
int exo__seal_key_derive(const char *key, size_t len, exo_seal_key *out);
/* Starts a connection's exchange: a fresh key pair; writes our AUTH payload. */
int exo__seal_begin(exo_seal *s, const exo_seal_key *key, int dialed, uint8_t auth[EXO_SEAL_AUTH_SIZE]);
/* Takes the peer's AUTH payload: EXO_EFORMAT for a wrong length or a public
 * key the exchange refuses, EXO_ENOTSUP for another cluster key's id. On
 * success both directions' keys are set and the secret key is wiped. */
int exo__seal_accept(exo_seal *s, const exo_seal_key *key, const uint8_t *auth, size_t len);
/* Seals a frame in place: frame holds the 24-byte header (its payload_len
 * already counting the tag) and payload_len - EXO_SEAL_TAG bytes of payload,
 * followed by room for the tag. */
void exo__seal_frame(exo_seal *s, uint8_t *frame, size_t plain_len);
/* Opens a sealed frame in place (header, payload_len bytes of ciphertext and
 * tag): EXO_OK, or EXO_EFORMAT when the tag does not verify. */
int exo__seal_open(exo_seal *s, uint8_t *frame, size_t payload_len);
/* Wipes a connection's keys, or a cluster key. */
void exo__seal_wipe(exo_seal *s);
void exo__seal_key_wipe(exo_seal_key *key);

#endif
