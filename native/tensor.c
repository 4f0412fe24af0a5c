/* tensor.c: typed views of memory, and the memory helpers.
 *
 * Row strides come from the dtype's block layout in dtype.c's table (a row
 * of a quantized matrix is ne[0] / block_size blocks), so every consumer
 * indexes rows the same way whether the bytes are floats or Q4_K
 * super-blocks. Also the memory helpers:
 * aligned scratch, and huge-page memory for weights read on every token. */
#define _GNU_SOURCE
#include "tensor.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dtype.h"
#include "error.h"

static int tensor_init(exo_tensor *t, int dtype, int n_dims, const int64_t *ne)
{
    memset(t, 0, sizeof *t);
    const exo_dtype_info *info = exo__dtype_info_get(dtype);
    if (!info || !info->block_size)
        return exo__error_set(EXO_ENOTSUP, "unsupported dtype %d (%s)", dtype, info ? info->name : "unknown");
    if (n_dims < 1 || n_dims > EXO_MAX_DIMS) return exo__error_set(EXO_EINVAL, "tensor with %d dims", n_dims);
    t->dtype = dtype;
    t->n_dims = n_dims;
    for (int i = 0; i < EXO_MAX_DIMS; i++) t->ne[i] = i < n_dims ? ne[i] : 1;
    for (int i = 0; i < EXO_MAX_DIMS; i++)
        if (t->ne[i] < 1) return exo__error_set(EXO_EINVAL, "tensor dim %d is %lld", i, (long long)t->ne[i]);
    if (t->ne[0] % info->block_size)
        return exo__error_set(EXO_EFORMAT, "row of %lld elements is not a multiple of %s's block of %d",
                             (long long)t->ne[0], info->name, (int)info->block_size);
    t->nb[0] = info->type_size;
    t->nb[1] = (size_t)(t->ne[0] / info->block_size) * info->type_size;
    for (int i = 2; i < EXO_MAX_DIMS; i++) t->nb[i] = t->nb[i - 1] * (size_t)t->ne[i - 1];
    return EXO_OK;
}

int exo__tensor_view(exo_tensor *t, int dtype, int n_dims, const int64_t *ne, const void *data)
{
    int rc = tensor_init(t, dtype, n_dims, ne);
    if (rc) return rc;
    t->data = (void *)data;
    return EXO_OK;
}

void *exo__aligned_alloc(size_t size)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, size ? (size + 63) / 64 * 64 : 64) != 0) return NULL;
    return p;
}

void exo__aligned_free(void *p)
{
    free(p);
}

#define HUGE_PAGE ((size_t)2 << 20)

static size_t round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

void *exo__weights_alloc(size_t size)
{
    /* Over-allocate by one huge page and trim, so the run starts on a 2 MiB
     * boundary (only aligned 2 MiB runs can become huge pages). */
    size_t len = round_up(size ? size : 1, HUGE_PAGE);
    uint8_t *raw = mmap(NULL, len + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    uint8_t *p = (uint8_t *)round_up((uintptr_t)raw, HUGE_PAGE);
    if (p > raw) munmap(raw, (size_t)(p - raw));
    size_t tail = (size_t)(raw + len + HUGE_PAGE - (p + len));
    if (tail) munmap(p + len, tail);
#ifdef MADV_HUGEPAGE
    madvise(p, len, MADV_HUGEPAGE); /* a hint: without THP the memory still works */
#endif
    return p;
}

void exo__weights_free(void *p, size_t size)
{
    if (p) munmap(p, round_up(size ? size : 1, HUGE_PAGE));
}

void exo__release_pages(const void *p, size_t size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t first = round_up((uintptr_t)p, page), last = ((uintptr_t)p + size) / page * page;
    if (last <= first) return;
    madvise((void *)first, last - first, MADV_DONTNEED);
    /* Rows read later (embedding lookups) then map only their own pages, not
     * the 64 KiB the kernel maps around a fault by default: 512 random
     * lookups brought back 14 MiB of the embedding. */
    madvise((void *)first, last - first, MADV_RANDOM);
}
