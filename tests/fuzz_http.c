/* fuzz_http.c: libFuzzer target for the HTTP request parser and chunked decoder.
 *
 * The input is parsed as a request head from an exact-size copy (ASan catches
 * any read past len) and every span it returns is checked against the
 * grammar. The parse is stateless, so it must also be consistent over
 * prefixes: a prefix of a complete head asks for more, a prefix that fails
 * fails the same way as the whole, and a smaller max_head_bytes gives the
 * same head or a 431. Then the body (what follows a good head, or the whole
 * input) goes through the chunked decoder twice, whole and split at points
 * derived from the input; both must produce the same bytes, the same result
 * and the same consumed count.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Inative tests/fuzz_http.c \
 *       native/http.c native/error.c -o /tmp/fuzz_http
 *   tests/run-fuzz.sh /tmp/fuzz_http tests/fuzz/http/seeds tests/fuzz/http/crashes 120 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "exo.h"

#define MAX_HEAD 65536

static uint64_t hash(const uint8_t *data, size_t size)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 1099511628211ULL;
    return h;
}

static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int parse_copy(const uint8_t *data, size_t n, size_t max, exo_http_request *req)
{
    char *p = malloc(n ? n : 1);
    if (n) memcpy(p, data, n);
    int rc = exo_http_parse_head(p, n, max, req);
    free(p);
    return rc;
}

static int is_tchar(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* The spans of an accepted head, checked against the grammar. */
static void check_head(const uint8_t *d, const exo_http_request *r, int n)
{
    if (r->head_len != (uint32_t)n || r->status != 0 || r->n_headers < 0 || r->n_headers > EXO_HTTP_MAX_HEADERS)
        abort();
    if (n < 16 || memcmp(d + n - 4, "\r\n\r\n", 4) != 0) abort();
    if (r->method_len == 0 || r->target_len == 0 || r->method_off + r->method_len + 1 != r->target_off) abort();
    for (uint32_t i = 0; i < r->method_len; i++)
        if (!is_tchar(d[r->method_off + i])) abort();
    for (uint32_t i = 0; i < r->target_len; i++)
        if (d[r->target_off + i] <= 0x20 || d[r->target_off + i] >= 0x7f) abort();
    if (memcmp(d + r->target_off + r->target_len, " HTTP/1.", 8) != 0) abort();
    if (r->version_minor != d[r->target_off + r->target_len + 8] - '0' || r->version_minor > 1) abort();
    for (int i = 0; i < r->n_headers; i++) {
        const exo_http_header *h = &r->headers[i];
        if (h->name_len == 0 || h->name_off + h->name_len >= (uint32_t)n || d[h->name_off + h->name_len] != ':')
            abort();
        if (h->name_off < 2 || d[h->name_off - 1] != '\n' || d[h->name_off - 2] != '\r') abort();
        for (uint32_t j = 0; j < h->name_len; j++)
            if (!is_tchar(d[h->name_off + j])) abort();
        if (h->value_off <= h->name_off + h->name_len || h->value_off + h->value_len > (uint32_t)n - 4) abort();
        for (uint32_t j = 0; j < h->value_len; j++) {
            uint8_t c = d[h->value_off + j];
            if (c < 0x20 && c != '\t') abort();
            if (c == 0x7f) abort();
        }
        if (h->value_len) {
            uint8_t a = d[h->value_off], z = d[h->value_off + h->value_len - 1];
            if (a == ' ' || a == '\t' || z == ' ' || z == '\t') abort();
        }
        char *name = malloc(h->name_len + 1);
        memcpy(name, d + h->name_off, h->name_len);
        name[h->name_len] = '\0';
        if (exo_http_header_find((const char *)d, r, name, i) != i) abort();
        int first = exo_http_header_find((const char *)d, r, name, 0);
        if (first < 0 || first > i) abort();
        free(name);
    }
    if (r->chunked && r->content_length >= 0) abort();
    if (r->chunked && r->version_minor == 0) abort();
    if (r->content_length < -1) abort();
}

static void check_prefixes(const uint8_t *data, size_t size, int rc, const exo_http_request *whole, uint64_t *seed)
{
    exo_http_request r;
    for (int t = 0; t < 6 && size > 0; t++) {
        size_t k = (size_t)(next(seed) % size);
        int rk = parse_copy(data, k, MAX_HEAD, &r);
        if (rc > 0) {
            if (k < (size_t)rc ? rk != 0 : rk != rc) abort();
        } else if (rc == 0) {
            if (rk != 0) abort();
        } else if (rk != 0 && (rk != rc || r.status != whole->status)) {
            abort();
        }
    }
    /* a smaller limit: the same head when it fits, else a 431 (or an earlier error) */
    size_t max = 1 + (size_t)(next(seed) % (size + 1));
    int rm = parse_copy(data, size, max, &r);
    if (rc > 0) {
        if ((size_t)rc <= max ? rm != rc : (rm != EXO_ENOMEM || r.status != 431)) abort();
    } else if (rc == 0) {
        if (size >= max ? rm != EXO_ENOMEM : rm != 0) abort();
    } else if (rm != rc && rm != EXO_ENOMEM) {
        abort();
    }
}

struct decoded {
    int rc, done;
    size_t consumed, produced;
};

/* Decodes body[0..n) in pieces whose sizes come from seed (seed 0: whole);
 * the produced bytes are appended to out (room for n). */
static struct decoded decode(const uint8_t *body, size_t n, size_t max_body, uint64_t seed, uint8_t *out)
{
    exo_http_chunked st;
    memset(&st, 0, sizeof st);
    struct decoded d = {0, 0, 0, 0};
    size_t at = 0;
    int calls = 0;
    do {
        size_t k = n - at;
        if (seed && k) k = (size_t)(next(&seed) % (k + 1));
        if (++calls > 100000) k = n - at; /* split points of zero length could go on for ever */
        char *p = malloc(k ? k : 1);
        if (k) memcpy(p, body + at, k);
        size_t consumed, produced;
        int done;
        d.rc = exo_http_chunked_decode(&st, p, k, max_body, &consumed, &produced, &done);
        if (consumed > k || produced > consumed) abort();
        if (d.rc == 0 && !done && consumed != k) abort();
        if (d.rc != 0 && done) abort();
        memcpy(out + d.produced, p, produced);
        free(p);
        d.produced += produced;
        d.consumed += consumed;
        d.done = done;
        at += consumed;
        if (d.rc == 0 && st.total != d.produced) abort();
        if (d.produced > max_body) abort();
    } while (d.rc == 0 && !d.done && at < n);
    if (d.rc != 0 && exo_last_error()[0] == '\0') abort();
    if (d.rc != 0 && d.rc != EXO_EFORMAT && d.rc != EXO_ENOMEM) abort();
    return d;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t seed = hash(data, size) | 1;
    exo_http_request req;
    int rc = parse_copy(data, size, MAX_HEAD, &req);
    if (rc > 0) {
        check_head(data, &req, rc);
    } else if (rc < 0) {
        if (exo_last_error()[0] == '\0') abort();
        int ok = (rc == EXO_EFORMAT && req.status == 400) || (rc == EXO_ENOMEM && req.status == 431) ||
                 (rc == EXO_ENOTSUP && (req.status == 417 || req.status == 501 || req.status == 505));
        if (!ok) abort();
    } else if (req.status != 0 || req.n_headers != 0) {
        abort();
    }
    check_prefixes(data, size, rc, &req, &seed);

    const uint8_t *body = rc > 0 ? data + rc : data;
    size_t n = rc > 0 ? size - (size_t)rc : size;
    size_t max_body = next(&seed) & 1 ? SIZE_MAX : (size_t)(next(&seed) % 4096);
    uint8_t *out1 = malloc(n + 1), *out2 = malloc(n + 1);
    struct decoded a = decode(body, n, max_body, 0, out1);
    struct decoded b = decode(body, n, max_body, next(&seed) | 1, out2);
    if (a.rc != b.rc || a.done != b.done || a.produced != b.produced || memcmp(out1, out2, a.produced) != 0) abort();
    if (a.consumed != b.consumed) abort();
    free(out1);
    free(out2);
    return 0;
}
