/* grow.h: the one growable-array helper libexo's parsers and buffers share.
 *
 * Header-only (static inline) so that the GGUF reader, which is fuzzed and
 * compiled on its own, needs no other source file. */
#ifndef EXO_GROW_H
#define EXO_GROW_H

#include <stdint.h>
#include <stdlib.h>

/* Makes the array *pp (of *cap items of elem bytes; pp is the address of the
 * array pointer, any pointer type) hold at least need items, doubling its
 * capacity from 16 so appends cost amortised O(1). Returns 0, or -1 when the
 * size overflows or memory runs out (the array is then unchanged); callers
 * say what ran out. */
static inline int exo_grow(void *pp, size_t *cap, size_t need, size_t elem)
{
    void **p = (void **)pp;
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > SIZE_MAX / 2) return -1;
        c *= 2;
    }
    if (c > SIZE_MAX / elem) return -1;
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

#endif
