/* tensor.h: n-dimensional arrays of any exo dtype (internal).
 *
 * A tensor is a typed view: dtype, shape (ne[0] innermost, as GGUF stores it),
 * byte strides, and data it does not own (a mapped model file, a backend's
 * buffer, another tensor's rows). */
#ifndef EXO_TENSOR_H
#define EXO_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "exo_defs.h"

#define EXO_MAX_DIMS 4

typedef struct exo_tensor {
    int dtype;                 /* enum exo_dtype */
    int n_dims;
    int64_t ne[EXO_MAX_DIMS];  /* elements per dimension; unused dims are 1 */
    size_t nb[EXO_MAX_DIMS];   /* bytes between consecutive indices of each dim (nb[0]: one block's worth per block_size elems) */
    void *data;
    /* The backend's own copy of a weight matrix in the layout its kernels read
     * fastest (backend.h: pack), or NULL. Rows stay readable through data. */
    const void *packed;
} exo_tensor;

/* A view over existing memory. Fails when ne[0] is not a multiple of the
 * dtype's block size or the dtype is unknown. */
int exo__tensor_view(exo_tensor *t, int dtype, int n_dims, const int64_t *ne, const void *data);
/* Pointer to row i (index along dim 1, for a 2-D tensor). */
static inline void *exo_tensor_row(const exo_tensor *t, int64_t i)
{
    return (char *)t->data + (size_t)i * t->nb[1];
}

/* 64-byte aligned allocation helpers used for all scratch memory. */
void *exo__aligned_alloc(size_t size);
void exo__aligned_free(void *p);

/* Memory for weights read on every token: mapped in 2 MiB aligned runs and
 * offered to the kernel for transparent huge pages, so streaming the whole
 * model does not miss the TLB on every 4 KiB page. NULL when out of memory. */
void *exo__weights_alloc(size_t size);
void exo__weights_free(void *p, size_t size);

/* Tells the kernel the pages inside [p, p + size) are not needed now: for a
 * read-only file mapping they are dropped and read again from the file if
 * touched later, one page at a time. Only whole pages inside the range are
 * affected. */
void exo__release_pages(const void *p, size_t size);

#endif
