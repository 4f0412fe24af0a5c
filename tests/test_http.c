/* test_http.c: the HTTP request-head parser and the chunked body decoder.
 *
 * Every input is parsed from an exact-size heap copy, so under ASan a read
 * past len fails the test. Valid heads are also parsed at every shorter
 * prefix (each must ask for more bytes); malformed ones must fail with the
 * right code and status, and every prefix must either ask for more or fail
 * the same way. Chunked bodies are decoded whole, byte by byte and at random
 * split points, and the three must agree. */
#include <stdlib.h>
#include <string.h>

#include "../native/error.h"
#include "../native/exo.h"
#include "check.h"

static uint64_t rng = 12345;
static uint32_t rand32(void)
{
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rng >> 33);
}

static char *copy(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    if (n) memcpy(p, s, n);
    return p;
}

/* Parses s[0..n) from an exact-size copy. */
static int parse_n(const char *s, size_t n, size_t max, exo_http_request *req)
{
    char *p = copy(s, n);
    int rc = exo_http_parse_head(p, n, max, req);
    free(p);
    return rc;
}

/* Parses a valid head: every prefix must ask for more, the whole must give
 * head_len. The request is left in *req, spans relative to s. */
static int parse_ok(const char *s, size_t n, size_t max, exo_http_request *req)
{
    int rc = parse_n(s, n, max, req);
    if (rc <= 0) {
        fprintf(stderr, "  parse_ok: rc %d (%s) for: %.*s\n", rc, exo_last_error(), (int)n, s);
        return rc;
    }
    exo_http_request part;
    for (size_t k = 0; k < (size_t)rc; k++) {
        int r = parse_n(s, k, max, &part);
        CHECK_MSG(r == 0 && part.n_headers == 0 && part.content_length == -1, "prefix %zu of %d gave %d: %s", k,
                  rc, r, exo_last_error());
    }
    CHECK(req->head_len == (uint32_t)rc);
    CHECK(req->status == 0);
    return rc;
}

#define PARSE_OK(lit, req) parse_ok(lit, sizeof(lit) - 1, 65536, req)

/* A malformed head: the whole fails with code and status, and each prefix
 * either asks for more or fails the same way. */
static void check_bad(const char *s, size_t n, size_t max, int code, int status, int line)
{
    exo_http_request req;
    int rc = parse_n(s, n, max, &req);
    if (rc != code || req.status != status) {
        fprintf(stderr, "test_http.c:%d: expected %d/%d, got %d/%d (%s) for: %.*s\n", line, code, status, rc,
                req.status, exo_last_error(), (int)n, s);
        check_failures++;
        return;
    }
    CHECK(exo_last_error()[0] != '\0');
    for (size_t k = 0; k < n; k++) {
        int r = parse_n(s, k, max, &req);
        if (!(r == 0 || (r == code && req.status == status))) {
            fprintf(stderr, "test_http.c:%d: prefix %zu gave %d/%d (%s)\n", line, k, r, req.status, exo_last_error());
            check_failures++;
        }
    }
}

#define BAD(lit, code, status) check_bad(lit, sizeof(lit) - 1, 65536, code, status, __LINE__)

static int span_is(const char *buf, uint32_t off, uint32_t len, const char *want)
{
    return len == strlen(want) && memcmp(buf + off, want, len) == 0;
}

static int header_is(const char *buf, const exo_http_request *r, int i, const char *name, const char *value)
{
    return i < r->n_headers && span_is(buf, r->headers[i].name_off, r->headers[i].name_len, name) &&
           span_is(buf, r->headers[i].value_off, r->headers[i].value_len, value);
}

static void test_simple_get(void)
{
    static const char s[] = "GET /v1/models?x=1 HTTP/1.1\r\nHost: localhost:52415\r\nUser-Agent: curl/8.0\r\n"
                            "Accept: */*\r\n\r\n";
    exo_http_request r;
    int n = PARSE_OK(s, &r);
    CHECK(n == (int)sizeof s - 1);
    CHECK(span_is(s, r.method_off, r.method_len, "GET"));
    CHECK(span_is(s, r.target_off, r.target_len, "/v1/models?x=1"));
    CHECK(r.version_minor == 1);
    CHECK(r.n_headers == 3);
    CHECK(header_is(s, &r, 0, "Host", "localhost:52415"));
    CHECK(header_is(s, &r, 1, "User-Agent", "curl/8.0"));
    CHECK(header_is(s, &r, 2, "Accept", "*/*"));
    CHECK(r.content_length == -1 && !r.chunked && r.keep_alive && !r.expect_continue);
    CHECK(exo_http_header_find(s, &r, "user-agent", 0) == 1);
    CHECK(exo_http_header_find(s, &r, "HOST", 0) == 0);
    CHECK(exo_http_header_find(s, &r, "host", 1) == -1);
    CHECK(exo_http_header_find(s, &r, "accep", 0) == -1);
    CHECK(exo_http_header_find(s, &r, "x", 0) == -1);
}

static void test_post_and_pipelining(void)
{
    static const char s[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                            "Content-Length: 13\r\n\r\n{\"model\":\"x\"}"
                            "GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                            "\r\nDELETE /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
    size_t len = sizeof s - 1;
    exo_http_request r;
    int n = parse_n(s, len, 65536, &r);
    CHECK(n > 0);
    CHECK(span_is(s, r.method_off, r.method_len, "POST"));
    CHECK(r.content_length == 13 && r.keep_alive);
    CHECK(memcmp(s + n, "{\"model\":\"x\"}", 13) == 0);
    size_t at = (size_t)n + 13;
    n = parse_ok(s + at, len - at, 65536, &r);
    CHECK(n > 0);
    CHECK(span_is(s + at, r.target_off, r.target_len, "/next"));
    CHECK(!r.keep_alive && r.content_length == -1);
    at += (size_t)n;
    /* the stray CR LF before the next request line is skipped */
    n = parse_ok(s + at, len - at, 65536, &r);
    CHECK(n > 0 && at + (size_t)n == len);
    CHECK(r.method_off == 2 && span_is(s + at, r.method_off, r.method_len, "DELETE"));
    CHECK(r.content_length == 0);
}

static void test_versions_and_connection(void)
{
    exo_http_request r;
    CHECK(PARSE_OK("GET / HTTP/1.0\r\n\r\n", &r) > 0);
    CHECK(r.version_minor == 0 && !r.keep_alive && r.n_headers == 0);
    CHECK(PARSE_OK("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &r) > 0);
    CHECK(r.keep_alive);
    CHECK(PARSE_OK("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", &r) > 0);
    CHECK(!r.keep_alive);
    CHECK(PARSE_OK("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\n\r\n", &r) > 0);
    CHECK(!r.keep_alive);
    CHECK(PARSE_OK("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection:\r\n\r\n", &r) > 0);
    CHECK(r.keep_alive);
    CHECK(PARSE_OK("GET / HTTP/1.1\r\nHost: a\r\nConnection: ,, te ,\r\n\r\n", &r) > 0);
    CHECK(r.keep_alive);
    CHECK(PARSE_OK("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", &r) > 0);
    CHECK(PARSE_OK("GET http://example.com:80/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n", &r) > 0);
    CHECK(r.target_len == 25);
    CHECK(PARSE_OK("get /{a|b}^ HTTP/1.1\r\nHost:\r\n\r\n", &r) > 0); /* methods are case-sensitive tokens */
    CHECK(r.method_len == 3 && r.headers[0].value_len == 0);
    CHECK(PARSE_OK("M-SEARCH /~!$&'()*+,;=:@% HTTP/1.1\r\nHost: a\r\n\r\n", &r) > 0);
}

static void test_field_values(void)
{
    static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: \t value with  inner \t spaces \t \r\nX-Empty:\r\n"
                            "X-Blank:  \t \r\nX-Obs: caf\xc3\xa9 \x80\xff\r\nX!#$%&'*+-.^_`|~09: v\r\n"
                            "Content-Length: 5\r\ncontent-length: 0005\r\n\r\n";
    exo_http_request r;
    CHECK(PARSE_OK(s, &r) > 0);
    CHECK(r.n_headers == 8);
    CHECK(header_is(s, &r, 1, "X-A", "value with  inner \t spaces"));
    CHECK(header_is(s, &r, 2, "X-Empty", ""));
    CHECK(header_is(s, &r, 3, "X-Blank", ""));
    CHECK(header_is(s, &r, 4, "X-Obs", "caf\xc3\xa9 \x80\xff"));
    CHECK(header_is(s, &r, 5, "X!#$%&'*+-.^_`|~09", "v"));
    CHECK(r.content_length == 5);
    CHECK(exo_http_header_find(s, &r, "content-length", 0) == 6);
    CHECK(exo_http_header_find(s, &r, "content-length", 7) == 7);
    CHECK(exo_http_header_find(s, &r, "content-length", 8) == -1);
    CHECK(r.headers[2].value_off <= r.head_len && r.headers[3].value_off <= r.head_len);
}

static void test_framing_fields(void)
{
    exo_http_request r;
    CHECK(PARSE_OK("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &r) > 0);
    CHECK(r.chunked && r.content_length == -1);
    CHECK(PARSE_OK("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , CHUNKED ,\r\n\r\n", &r) > 0);
    CHECK(r.chunked);
    CHECK(PARSE_OK("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n", &r) > 0);
    CHECK(r.content_length == INT64_MAX);
    CHECK(PARSE_OK("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nExpect: 100-Continue\r\n\r\n", &r) > 0);
    CHECK(r.expect_continue && r.content_length == 0);
    CHECK(PARSE_OK("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", &r) > 0);
    CHECK(!r.expect_continue);
    CHECK(PARSE_OK("POST / HTTP/1.0\r\nExpect: something-else\r\n\r\n", &r) > 0); /* ignored on 1.0 */
}

static void test_malformed(void)
{
    /* request line */
    BAD(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("G(ET / HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET * HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET foo HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET ?x HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / http/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.10\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/11\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET /\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\rHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("\r\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", EXO_EFORMAT, 400); /* a TLS ClientHello */
    BAD("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", EXO_EFORMAT, 400); /* "*" is for OPTIONS */
    BAD("GET / HTTP/2.0\r\nHost: a\r\n\r\n", EXO_ENOTSUP, 505);
    BAD("GET / HTTP/1.2\r\nHost: a\r\n\r\n", EXO_ENOTSUP, 505);
    BAD("GET / HTTP/0.9\r\nHost: a\r\n\r\n", EXO_ENOTSUP, 505);

    /* field lines */
    BAD("GET / HTTP/1.1\r\nHost : a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHo st: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHo\"st: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", EXO_EFORMAT, 400);    /* obs-fold */
    BAD("GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", EXO_EFORMAT, 400);             /* bare LF */
    BAD("GET / HTTP/1.1\r\nHost: a\r\n\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", EXO_EFORMAT, 400);             /* bare CR */
    BAD("GET / HTTP/1.1\r\nHost: a\r\n\rx", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00z\r\n\r\n", EXO_EFORMAT, 400);       /* NUL */
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01z\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fz\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[31m\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost: a\r\nX\x00: b\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nH\xc3\xa9: b\r\n\r\n", EXO_EFORMAT, 400);

    /* Host */
    BAD("GET / HTTP/1.1\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", EXO_EFORMAT, 400);

    /* Content-Length */
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,5\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", EXO_EFORMAT, 400);

    /* Transfer-Encoding (smuggling defences) */
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", EXO_ENOTSUP, 501);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        EXO_ENOTSUP, 501);

    /* Connection, Expect */
    BAD("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep alive\r\n\r\n", EXO_EFORMAT, 400);
    BAD("GET / HTTP/1.1\r\nHost: a\r\nConnection: close;x\r\n\r\n", EXO_EFORMAT, 400);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue-please\r\n\r\n", EXO_ENOTSUP, 417);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, x\r\n\r\n", EXO_ENOTSUP, 417);
    BAD("POST / HTTP/1.1\r\nHost: a\r\nExpect:\r\n\r\n", EXO_ENOTSUP, 417);
}

static void test_limits(void)
{
    exo_http_request r;
    static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    size_t n = sizeof s - 1;
    /* the head may be exactly max_head_bytes long, not one byte more */
    CHECK(parse_ok(s, n, n, &r) == (int)n);
    CHECK(parse_n(s, n, n - 1, &r) == EXO_ENOMEM && r.status == 431);
    /* more bytes than the limit, the head within it */
    char big[64];
    memcpy(big, s, n);
    memset(big + n, 'x', sizeof big - n);
    CHECK(parse_n(big, sizeof big, n, &r) == (int)n);
    /* incomplete: 0 below the limit, 431 at it */
    CHECK(parse_n(s, 10, 11, &r) == 0 && r.status == 0);
    CHECK(parse_n(s, 10, 10, &r) == EXO_ENOMEM && r.status == 431);
    CHECK(parse_n(s, 12, 10, &r) == EXO_ENOMEM && r.status == 431);
    /* a malformed byte inside the limit is a 400 even at the limit */
    CHECK(parse_n("GET /\x01", 6, 6, &r) == EXO_EFORMAT && r.status == 400);

    /* EXO_HTTP_MAX_HEADERS fields are fine, one more is a 431 */
    char buf[4096];
    size_t len = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 1; i < EXO_HTTP_MAX_HEADERS; i++)
        len += (size_t)snprintf(buf + len, sizeof buf - len, "X-%d: %d\r\n", i, i);
    memcpy(buf + len, "\r\n", 2);
    CHECK(parse_n(buf, len + 2, 65536, &r) == (int)len + 2);
    CHECK(r.n_headers == EXO_HTTP_MAX_HEADERS);
    CHECK(header_is(buf, &r, EXO_HTTP_MAX_HEADERS - 1, "X-63", "63"));
    len += (size_t)snprintf(buf + len, sizeof buf - len, "X-last: z\r\n\r\n");
    CHECK(parse_n(buf, len, 65536, &r) == EXO_ENOMEM && r.status == 431);

    /* bad arguments */
    CHECK(exo_http_parse_head(NULL, 5, 100, &r) == EXO_EINVAL);
    CHECK(exo_http_parse_head(s, n, 0, &r) == EXO_EINVAL);
    CHECK(exo_http_parse_head(s, n, 100, NULL) == EXO_EINVAL);
    CHECK(exo_http_parse_head(NULL, 0, 100, &r) == 0);
    CHECK(exo_http_parse_head(s, n, SIZE_MAX, &r) == (int)n);
}

/* ---- chunked ------------------------------------------------------------- */

struct decoded {
    int rc;
    int done;
    size_t consumed;
    size_t body_len;
    char body[8192];
};

/* Decodes s[0..n) fed in pieces: piece < 0 picks random sizes, otherwise
 * pieces of that size (0: all at once). Each piece is an exact-size copy. */
static void decode(const char *s, size_t n, size_t max_body, long piece, struct decoded *d)
{
    exo_http_chunked st;
    memset(&st, 0, sizeof st);
    memset(d, 0, sizeof *d);
    size_t at = 0;
    do {
        size_t k = n - at;
        if (piece > 0 && (size_t)piece < k) k = (size_t)piece;
        if (piece < 0 && k > 0) k = rand32() % (k + 1);
        char *p = copy(s + at, k);
        size_t consumed, produced;
        int done;
        d->rc = exo_http_chunked_decode(&st, p, k, max_body, &consumed, &produced, &done);
        if (d->body_len + produced <= sizeof d->body) memcpy(d->body + d->body_len, p, produced);
        free(p);
        CHECK(consumed <= k && produced <= consumed);
        d->body_len += produced;
        d->consumed += consumed;
        d->done = done;
        if (d->rc == 0 && !done) CHECK(consumed == k);
        at += consumed;
        if (d->rc == 0) CHECK(st.total == d->body_len);
    } while (d->rc == 0 && !d->done && at < n);
}

/* Decodes whole, byte by byte and at random splits; all must agree. */
static void chunked_case(const char *s, size_t n, size_t max_body, int rc, const char *body, size_t consumed, int line)
{
    struct decoded whole, d;
    decode(s, n, max_body, 0, &whole);
    size_t body_len = body ? strlen(body) : 0;
    if (whole.rc != rc || (rc == 0 && (!whole.done || whole.consumed != consumed || whole.body_len != body_len ||
                                       memcmp(whole.body, body, body_len) != 0))) {
        fprintf(stderr, "test_http.c:%d: chunked: rc %d (%s) done %d consumed %zu body %.*s\n", line, whole.rc,
                exo_last_error(), whole.done, whole.consumed, (int)whole.body_len, whole.body);
        check_failures++;
        return;
    }
    for (int trial = 0; trial < 40; trial++) {
        decode(s, n, max_body, trial == 0 ? 1 : trial == 1 ? 2 : -1, &d);
        int same = d.rc == whole.rc && d.done == whole.done && d.body_len == whole.body_len &&
                   memcmp(d.body, whole.body, d.body_len) == 0 && (rc != 0 || d.consumed == whole.consumed);
        if (!same) {
            fprintf(stderr, "test_http.c:%d: chunked trial %d differs: rc %d done %d body %zu\n", line, trial, d.rc,
                    d.done, d.body_len);
            check_failures++;
            return;
        }
    }
}

#define CHUNKED_OK(lit, body, consumed) chunked_case(lit, sizeof(lit) - 1, SIZE_MAX, 0, body, consumed, __LINE__)
#define CHUNKED_ALL(lit, body) CHUNKED_OK(lit, body, sizeof(lit) - 1)
#define CHUNKED_BAD(lit, code) chunked_case(lit, sizeof(lit) - 1, SIZE_MAX, code, NULL, 0, __LINE__)

static void test_chunked(void)
{
    CHUNKED_ALL("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world");
    CHUNKED_ALL("0\r\n\r\n", "");
    CHUNKED_ALL("000\r\n\r\n", "");
    CHUNKED_ALL("A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", "0123456789abcdefghij");
    CHUNKED_ALL("00000000000000000000001\r\nx\r\n0\r\n\r\n", "x");
    CHUNKED_ALL("5;name=val;q=\"a\\\"b;c\" ; flag\r\nhello\r\n0;last\r\n\r\n", "hello");
    CHUNKED_ALL("5 ;a = b\t;c\r\nhello\r\n0\r\n\r\n", "hello");
    CHUNKED_ALL("3;x=\"\"\r\nabc\r\n0\r\n\r\n", "abc");
    CHUNKED_ALL("3\r\n\r\n\r\r\n0\r\nX-Trailer: v\r\nY:\r\nZ: \t a b \xff\r\n\r\n", "\r\n\r");
    /* what follows the body (the next pipelined request) is left alone */
    CHUNKED_OK("2\r\nok\r\n0\r\n\r\nGET / HTTP/1.1\r\n", "ok", 12);
    CHUNKED_OK("0\r\n\r\n0\r\n\r\n", "", 5);

    CHUNKED_BAD("\r\n", EXO_EFORMAT);
    CHUNKED_BAD("g\r\n", EXO_EFORMAT);
    CHUNKED_BAD("-1\r\n", EXO_EFORMAT);
    CHUNKED_BAD("0x5\r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD(" 5\r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5 \r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5\rhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5\r\nhelloX\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5\r\nhello\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5\r\nhello\r\r0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5;\r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5;a=\r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5;a \r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5;a=b c\r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5;a=\"x\r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5;a=\"x\"y\r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5;a\x00\r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("5;\xff\r\nhello\r\n0\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("0\r\n X: folded\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("0\r\nX : v\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("0\r\n: v\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("0\r\nX: a\x00\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("0\r\nX: a\nY: b\r\n\r\n", EXO_EFORMAT);
    CHUNKED_BAD("0\r\nX: a\r\n\rx", EXO_EFORMAT);
    CHUNKED_BAD("0\r\n\n", EXO_EFORMAT);
    CHUNKED_BAD("0\r\n\r\r", EXO_EFORMAT);
    CHUNKED_BAD("10000000000000000\r\n", EXO_EFORMAT); /* 2^64 */
    struct decoded *d = malloc(sizeof *d);
    decode("ffffffffffffffff\r\nab", 20, SIZE_MAX, 0, d); /* 2^64 - 1 is a size; the body is just long */
    CHECK(d->rc == 0 && !d->done && d->consumed == 20 && d->body_len == 2 && memcmp(d->body, "ab", 2) == 0);

    /* limits */
    static const char hw[] = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    chunked_case(hw, sizeof hw - 1, 11, 0, "hello world", sizeof hw - 1, __LINE__);
    chunked_case(hw, sizeof hw - 1, 10, EXO_ENOMEM, NULL, 0, __LINE__);
    chunked_case("5\r\nhello\r\n0\r\n\r\n", 15, 0, EXO_ENOMEM, NULL, 0, __LINE__);
    chunked_case("0\r\n\r\n", 5, 0, 0, "", 5, __LINE__);
    chunked_case("fffffffff\r\n", 11, 1 << 20, EXO_ENOMEM, NULL, 0, __LINE__);
    static char line[6000];
    memcpy(line, "1;", 2);
    memset(line + 2, 'a', 5000);
    memcpy(line + 5002, "\r\nx\r\n0\r\n\r\n", 10);
    chunked_case(line, 5012, SIZE_MAX, EXO_ENOMEM, NULL, 0, __LINE__);
    memcpy(line, "1;", 2);
    memset(line + 2, 'a', 4000);
    memcpy(line + 4002, "\r\nx\r\n0\r\n\r\n", 10);
    chunked_case(line, 4012, SIZE_MAX, 0, "x", 4012, __LINE__);
    /* framing: 1-byte chunks may not pass max_body + 64 KiB of framing */
    static char many[400000];
    size_t n = 0;
    while (n + 6 < sizeof many - 5) {
        memcpy(many + n, "1\r\nz\r\n", 6);
        n += 6;
    }
    memcpy(many + n, "0\r\n\r\n", 5);
    n += 5;
    decode(many, n, 70000, 0, d);
    CHECK(d->rc == EXO_ENOMEM && strstr(exo_last_error(), "framing") != NULL);
    decode(many, n, SIZE_MAX, 0, d);
    CHECK(d->rc == 0 && d->done && d->consumed == n);
    free(d);

    /* after done: nothing consumed; after a failure: EXO_ESTATE */
    exo_http_chunked st;
    memset(&st, 0, sizeof st);
    char b1[] = "0\r\n\r\nxyz";
    size_t consumed, produced;
    int done;
    CHECK(exo_http_chunked_decode(&st, b1, 8, 100, &consumed, &produced, &done) == 0 && done && consumed == 5);
    CHECK(exo_http_chunked_decode(&st, b1 + 5, 3, 100, &consumed, &produced, &done) == 0 && done && consumed == 0 &&
          produced == 0);
    memset(&st, 0, sizeof st);
    CHECK(exo_http_chunked_decode(&st, b1 + 5, 3, 100, &consumed, &produced, &done) == EXO_EFORMAT && !done);
    CHECK(exo_http_chunked_decode(&st, b1, 5, 100, &consumed, &produced, &done) == EXO_ESTATE);
    memset(&st, 0, sizeof st);
    CHECK(exo_http_chunked_decode(&st, NULL, 0, 100, &consumed, &produced, &done) == 0 && !done && consumed == 0);
    CHECK(exo_http_chunked_decode(&st, NULL, 1, 100, &consumed, &produced, &done) == EXO_EINVAL);
    st.state = 9999;
    CHECK(exo_http_chunked_decode(&st, b1, 5, 100, &consumed, &produced, &done) == EXO_EINVAL);
}

/* Random bodies, random chunk sizes, random splits: the decode is the body. */
static void test_chunked_random(void)
{
    static char body[4096], wire[16384];
    for (int trial = 0; trial < 300; trial++) {
        size_t body_len = rand32() % sizeof body, n = 0, at = 0;
        for (size_t i = 0; i < body_len; i++) body[i] = (char)rand32();
        while (at < body_len) {
            size_t c = 1 + rand32() % (trial % 3 == 0 ? 8 : 700);
            if (c > body_len - at) c = body_len - at;
            n += (size_t)snprintf(wire + n, sizeof wire - n, trial & 1 ? "%zx" : "%zX", c);
            if (rand32() % 4 == 0) n += (size_t)snprintf(wire + n, sizeof wire - n, ";i=%zu", at);
            memcpy(wire + n, "\r\n", 2);
            memcpy(wire + n + 2, body + at, c);
            memcpy(wire + n + 2 + c, "\r\n", 2);
            n += c + 4;
            at += c;
        }
        n += (size_t)snprintf(wire + n, sizeof wire - n, "0\r\n%s\r\n", trial % 5 == 0 ? "T: x\r\n" : "");
        struct decoded d;
        decode(wire, n, SIZE_MAX, -1, &d);
        CHECK(d.rc == 0 && d.done && d.consumed == n && d.body_len == body_len && memcmp(d.body, body, body_len) == 0);
    }
}

/* A whole chunked request, head then body, split at every point a socket
 * could split it. */
static void test_request_with_chunked_body(void)
{
    static const char s[] = "POST /v1/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                            "Expect: 100-continue\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n";
    size_t len = sizeof s - 1;
    exo_http_request r;
    int head = parse_n(s, len, 65536, &r);
    CHECK(head > 0 && r.chunked && r.expect_continue);
    for (size_t cut = (size_t)head; cut <= len; cut++) {
        char *buf = copy(s + head, len - (size_t)head);
        exo_http_chunked st;
        memset(&st, 0, sizeof st);
        size_t c1, p1, c2 = 0, p2 = 0;
        int done;
        CHECK(exo_http_chunked_decode(&st, buf, cut - (size_t)head, 100, &c1, &p1, &done) == 0);
        /* the caller keeps the produced bytes and the unconsumed tail */
        char body[16];
        memcpy(body, buf, p1);
        if (!done)
            CHECK(exo_http_chunked_decode(&st, buf + c1, len - cut, 100, &c2, &p2, &done) == 0);
        memcpy(body + p1, buf + c1, p2);
        CHECK(done && c1 + c2 == len - (size_t)head && p1 + p2 == 7 && memcmp(body, "{\"a\":1}", 7) == 0);
        free(buf);
    }
}

int main(void)
{
    test_simple_get();
    test_post_and_pipelining();
    test_versions_and_connection();
    test_field_values();
    test_framing_fields();
    test_malformed();
    test_limits();
    test_chunked();
    test_chunked_random();
    test_request_with_chunked_body();
    CHECK_DONE();
}
