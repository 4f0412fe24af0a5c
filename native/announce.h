/* announce.h: UDP discovery's datagrams (internal; docs/discovery.md is the format).
 *
 * Open clusters announce JSON in the clear; keyed ones seal it with a key
 * derived from the cluster key (announce.c). exo_wire holds the key, so the
 * public entry points are exo_wire_announce_seal/open (exo.h). */
#ifndef EXO_ANNOUNCE_H
#define EXO_ANNOUNCE_H

#include <stddef.h>
#include <stdint.h>

#include "seal.h"

#define EXO_ANNOUNCE_VERSION 1
#define EXO_ANNOUNCE_HEADER 40          /* "EXOA", version, 3 zero bytes, key id, 24-byte nonce */
#define EXO_ANNOUNCE_MAX_JSON 4096
#define EXO_ANNOUNCE_MAX_DATAGRAM (EXO_ANNOUNCE_HEADER + EXO_ANNOUNCE_MAX_JSON + 16)

/* The announcement key of a cluster key. */
void exo__announce_key(const exo_seal_key *cluster, uint8_t out[32]);
/* json -> a datagram in out: the JSON itself (cluster NULL: an open cluster)
 * or sealed. EXO_EFORMAT when json is not an object's text, EXO_ERANGE when
 * too long or out is too small. */
int exo__announce_seal(const exo_seal_key *cluster, const char *json, size_t len, uint8_t *out, size_t cap,
                       size_t *out_len);
/* A received datagram -> its JSON. EXO_EFORMAT malformed, EXO_ERANGE too
 * long, EXO_ENOTSUP another cluster's (another key, or keyed for an open
 * node), EXO_ESTATE not authentic (forged, damaged, or in the clear for a
 * keyed node). */
int exo__announce_open(const exo_seal_key *cluster, const uint8_t *dgram, size_t len, char *json, size_t cap,
                       size_t *json_len);

#endif
