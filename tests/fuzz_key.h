/* fuzz_key.h: the cluster key the keyed fuzz targets (handshake, announce) hold,
 * derived once before fuzzing starts (Argon2id is slow on purpose). */
#ifndef EXO_FUZZ_KEY_H
#define EXO_FUZZ_KEY_H

#include <stdlib.h>
#include <string.h>

#include "seal.h"

static exo_seal_key cluster_key;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *key = "exo-fuzzing-cluster-key-0123456789";
    if (exo__seal_key_derive(key, strlen(key), &cluster_key) != 0) abort();
    return 0;
}

#endif
