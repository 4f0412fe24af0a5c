/* http.c: a strict HTTP/1.1 request-head parser and chunked body decoder.
 *
 * The API server (Lua on luv) reads bytes off a socket and hands them here
 * through the FFI. The head parser is stateless: it walks the buffer from the
 * start each call, validating every byte against RFC 9112's grammar as it
 * goes, so garbage is refused as soon as it arrives and a complete head comes
 * back as offsets into the caller's buffer. The chunked decoder is a byte
 * state machine whose whole state fits in a small struct, so a body may arrive
 * split anywhere.
 *
 * Where RFC 9112 lets a recipient choose, we take the strict side, because a
 * proxy in front of us may choose differently and the difference is how
 * request smuggling works: bare LF and bare CR are refused, obs-fold is
 * refused, whitespace before a field's colon is refused, Content-Length must
 * be digits (repeats only with the same value), Transfer-Encoding must end in
 * exactly one chunked and may not come with Content-Length or on HTTP/1.0,
 * an HTTP/1.1 request needs exactly one Host, a request target is printable
 * ASCII (anything else must be percent-encoded) and chunk sizes take no
 * whitespace. Messages never echo request bytes (only hex codes), so they are
 * safe to send back in a 400. */
#include <stdint.h>
#include <string.h>

#include "error.h"
#include "exo.h"

#define HTTP_NEED 1                     /* internal: the head is not complete yet */
#define HTTP_MAX_HEAD 0x7fffffffu       /* the head length must fit the int return */
#define HTTP_CHUNK_LINE_MAX 4096u       /* one size line (with extensions) or trailer line */
#define HTTP_CHUNK_FRAMING_SLACK 65536u /* framing allowed beyond max_body */

#define HTTP_FAIL(req_, status_, code_, ...) \
    ((req_)->status = (status_), exo__error_set((code_), "bad HTTP request: " __VA_ARGS__))

/* tchar (RFC 9110 5.6.2): the characters of methods, field names and tokens. */
static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
        return 1;
    default:
        return 0;
    }
}

/* field-vchar: VCHAR or obs-text. */
static int is_field_vchar(unsigned char c)
{
    return (c > 0x20 && c < 0x7f) || c >= 0x80;
}

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static int lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* s[0..n) equals the lowercase literal lit, ignoring ASCII case. */
static int ci_equal(const char *s, size_t n, const char *lit)
{
    size_t i = 0;
    for (; i < n; i++)
        if (lit[i] == '\0' || lower((unsigned char)s[i]) != (unsigned char)lit[i]) return 0;
    return lit[i] == '\0';
}

/* Next element of a comma-separated token list (RFC 9110 5.6.1; empty
 * elements are skipped): 1 with its span, 0 at the end, -1 when an element is
 * not a single token. */
static int list_next(const char *s, size_t n, size_t *pos, size_t *off, size_t *len)
{
    size_t p = *pos;
    while (p < n && (is_ws((unsigned char)s[p]) || s[p] == ',')) p++;
    if (p == n) {
        *pos = p;
        return 0;
    }
    size_t start = p;
    while (p < n && is_tchar((unsigned char)s[p])) p++;
    if (p == start) return -1;
    *off = start;
    *len = p - start;
    while (p < n && is_ws((unsigned char)s[p])) p++;
    if (p < n && s[p] != ',') return -1;
    *pos = p;
    return 1;
}

struct head {
    const char *buf;
    size_t lim;  /* min(len, max_head_bytes): nothing at or past it is read */
    size_t p;
    int line;    /* 1-based, for messages */
    exo_http_request *req;
    int n_host;
    int te_seen, te_chunked, te_last_chunked, te_other;
    int conn_close, conn_keep_alive;
    int expect_other;
};

/* Consumes the LF after a CR at h->p. */
static int line_end(struct head *h)
{
    if (h->p + 1 >= h->lim) return HTTP_NEED;
    if (h->buf[h->p + 1] != '\n')
        return HTTP_FAIL(h->req, 400, EXO_EFORMAT, "bare CR (not followed by LF) on line %d", h->line);
    h->p += 2;
    h->line++;
    return 0;
}

static int bad_char(struct head *h, const char *where)
{
    unsigned char c = (unsigned char)h->buf[h->p];
    if (c == '\n')
        return HTTP_FAIL(h->req, 400, EXO_EFORMAT, "bare LF (lines must end in CR LF) in %s on line %d", where,
                         h->line);
    return HTTP_FAIL(h->req, 400, EXO_EFORMAT, "invalid character 0x%02x in %s on line %d", c, where, h->line);
}

static int parse_request_line(struct head *h)
{
    exo_http_request *req = h->req;
    const char *b = h->buf;

    size_t start = h->p;
    while (h->p < h->lim && is_tchar((unsigned char)b[h->p])) h->p++;
    if (h->p == h->lim) return HTTP_NEED;
    if (b[h->p] != ' ' || h->p == start) return bad_char(h, "the method");
    req->method_off = (uint32_t)start;
    req->method_len = (uint32_t)(h->p - start);
    h->p++;

    start = h->p;
    while (h->p < h->lim && (unsigned char)b[h->p] > 0x20 && (unsigned char)b[h->p] < 0x7f) h->p++;
    if (h->p == h->lim) return HTTP_NEED;
    if (b[h->p] != ' ' || h->p == start) return bad_char(h, "the request target");
    req->target_off = (uint32_t)start;
    req->target_len = (uint32_t)(h->p - start);
    /* origin-form "/...", asterisk-form "*" (OPTIONS only), or absolute-form
     * "scheme:..." (a server must accept it; RFC 9112 3.2.2). */
    const char *t = b + start;
    size_t tn = h->p - start;
    if (t[0] == '*') {
        if (tn != 1 || req->method_len != 7 || memcmp(b + req->method_off, "OPTIONS", 7) != 0)
            return HTTP_FAIL(req, 400, EXO_EFORMAT, "request target \"*\" is only for OPTIONS");
    } else if (t[0] != '/') {
        size_t i = 0;
        int alpha = (t[0] >= 'a' && t[0] <= 'z') || (t[0] >= 'A' && t[0] <= 'Z');
        while (alpha && i < tn && t[i] != ':') {
            unsigned char c = (unsigned char)t[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
                  c == '-' || c == '.'))
                break;
            i++;
        }
        if (!alpha || i == tn || t[i] != ':')
            return HTTP_FAIL(req, 400, EXO_EFORMAT, "request target is neither a path nor an absolute URI");
    }
    h->p++;

    static const char prefix[] = "HTTP/";
    for (int i = 0; i < 5; i++, h->p++) {
        if (h->p >= h->lim) return HTTP_NEED;
        if (b[h->p] != prefix[i]) return HTTP_FAIL(req, 400, EXO_EFORMAT, "malformed HTTP version");
    }
    int digits[2] = {0, 0};
    for (int i = 0; i < 3; i++, h->p++) {
        if (h->p >= h->lim) return HTTP_NEED;
        char c = b[h->p];
        if (i == 1 ? c != '.' : !(c >= '0' && c <= '9'))
            return HTTP_FAIL(req, 400, EXO_EFORMAT, "malformed HTTP version");
        if (i != 1) digits[i / 2] = c - '0';
    }
    if (h->p >= h->lim) return HTTP_NEED;
    if (b[h->p] != '\r') {
        if (b[h->p] == '\n') return bad_char(h, "the request line");
        return HTTP_FAIL(req, 400, EXO_EFORMAT, "malformed HTTP version");
    }
    int rc = line_end(h);
    if (rc) return rc;
    if (digits[0] != 1 || digits[1] > 1)
        return HTTP_FAIL(req, 505, EXO_ENOTSUP, "HTTP/%d.%d is not supported (only HTTP/1.0 and HTTP/1.1)",
                         digits[0], digits[1]);
    req->version_minor = digits[1];
    return 0;
}

/* The fields whose meaning the parser itself must know: framing (Content-Length,
 * Transfer-Encoding), connection reuse, Expect and Host. */
static int on_field(struct head *h, const exo_http_header *f)
{
    exo_http_request *req = h->req;
    const char *name = h->buf + f->name_off;
    const char *v = h->buf + f->value_off;
    size_t n = f->value_len, pos = 0, off, len;
    int r;

    if (ci_equal(name, f->name_len, "content-length")) {
        if (n == 0) return HTTP_FAIL(req, 400, EXO_EFORMAT, "empty Content-Length");
        int64_t value = 0;
        for (size_t i = 0; i < n; i++) {
            if (v[i] < '0' || v[i] > '9')
                return HTTP_FAIL(req, 400, EXO_EFORMAT, "Content-Length is not a decimal number");
            int d = v[i] - '0';
            if (value > (INT64_MAX - d) / 10) return HTTP_FAIL(req, 400, EXO_EFORMAT, "Content-Length overflows");
            value = value * 10 + d;
        }
        if (req->content_length >= 0 && req->content_length != value)
            return HTTP_FAIL(req, 400, EXO_EFORMAT, "Content-Length given twice with different values");
        req->content_length = value;
    } else if (ci_equal(name, f->name_len, "transfer-encoding")) {
        if (req->version_minor == 0)
            return HTTP_FAIL(req, 400, EXO_EFORMAT, "Transfer-Encoding in an HTTP/1.0 request");
        int any = 0;
        while ((r = list_next(v, n, &pos, &off, &len)) > 0) {
            any = 1;
            int chunked = ci_equal(v + off, len, "chunked");
            h->te_chunked += chunked;
            h->te_other |= !chunked;
            h->te_last_chunked = chunked;
        }
        if (r < 0 || !any) return HTTP_FAIL(req, 400, EXO_EFORMAT, "malformed Transfer-Encoding");
        h->te_seen = 1;
    } else if (ci_equal(name, f->name_len, "connection")) {
        while ((r = list_next(v, n, &pos, &off, &len)) > 0) {
            if (ci_equal(v + off, len, "close")) h->conn_close = 1;
            if (ci_equal(v + off, len, "keep-alive")) h->conn_keep_alive = 1;
        }
        if (r < 0) return HTTP_FAIL(req, 400, EXO_EFORMAT, "malformed Connection");
    } else if (ci_equal(name, f->name_len, "expect")) {
        int any = 0;
        while ((r = list_next(v, n, &pos, &off, &len)) > 0) {
            any = 1;
            if (!ci_equal(v + off, len, "100-continue")) h->expect_other = 1;
        }
        if (r < 0 || !any) h->expect_other = 1;
        /* RFC 9110 10.1.1: an HTTP/1.0 client cannot wait for 100; ignore. */
        if (req->version_minor == 1) {
            if (h->expect_other)
                return HTTP_FAIL(req, 417, EXO_ENOTSUP, "unsupported Expect (only 100-continue)");
            req->expect_continue = 1;
        }
    } else if (ci_equal(name, f->name_len, "host")) {
        if (++h->n_host > 1) return HTTP_FAIL(req, 400, EXO_EFORMAT, "more than one Host");
    }
    return 0;
}

/* After the blank line: the checks that need every field. */
static int finish(struct head *h)
{
    exo_http_request *req = h->req;
    if (req->version_minor == 1 && h->n_host == 0)
        return HTTP_FAIL(req, 400, EXO_EFORMAT, "HTTP/1.1 request without Host");
    if (h->te_seen) {
        /* RFC 9112 6.3: when chunked is not the final coding the length is unknowable. */
        if (!h->te_last_chunked) return HTTP_FAIL(req, 400, EXO_EFORMAT, "Transfer-Encoding does not end in chunked");
        if (h->te_chunked > 1) return HTTP_FAIL(req, 400, EXO_EFORMAT, "chunked applied more than once");
        if (h->te_other) return HTTP_FAIL(req, 501, EXO_ENOTSUP, "unsupported transfer coding (only chunked)");
        if (req->content_length >= 0)
            return HTTP_FAIL(req, 400, EXO_EFORMAT, "both Transfer-Encoding and Content-Length");
        req->chunked = 1;
    }
    req->keep_alive = !h->conn_close && (req->version_minor == 1 || h->conn_keep_alive);
    return 0;
}

static int parse(struct head *h)
{
    const char *b = h->buf;
    int rc;
    h->line = 1;

    /* RFC 9112 2.2: ignore empty lines before the request line (some clients
     * send a CR LF after a POST body). */
    while (h->p < h->lim && b[h->p] == '\r')
        if ((rc = line_end(h))) return rc;
    if ((rc = parse_request_line(h))) return rc;

    for (;;) {
        if (h->p >= h->lim) return HTTP_NEED;
        unsigned char c = (unsigned char)b[h->p];
        if (c == '\r') {
            if ((rc = line_end(h))) return rc;
            return finish(h);
        }
        if (is_ws(c))
            return HTTP_FAIL(h->req, 400, EXO_EFORMAT, "line %d starts with whitespace (obs-fold)", h->line);
        if (h->req->n_headers == EXO_HTTP_MAX_HEADERS)
            return HTTP_FAIL(h->req, 431, EXO_ENOMEM, "more than %d header fields", EXO_HTTP_MAX_HEADERS);

        size_t name = h->p;
        while (h->p < h->lim && is_tchar((unsigned char)b[h->p])) h->p++;
        if (h->p == h->lim) return HTTP_NEED;
        if (b[h->p] != ':') {
            if (is_ws((unsigned char)b[h->p]))
                return HTTP_FAIL(h->req, 400, EXO_EFORMAT, "whitespace before the colon on line %d", h->line);
            return bad_char(h, "a field name");
        }
        if (h->p == name) return HTTP_FAIL(h->req, 400, EXO_EFORMAT, "empty field name on line %d", h->line);
        size_t name_len = h->p - name;
        h->p++;

        while (h->p < h->lim && is_ws((unsigned char)b[h->p])) h->p++;
        size_t value = h->p, value_end = h->p;
        for (; h->p < h->lim; h->p++) {
            c = (unsigned char)b[h->p];
            if (is_field_vchar(c))
                value_end = h->p + 1;
            else if (!is_ws(c))
                break;
        }
        if (h->p == h->lim) return HTTP_NEED;
        if (c != '\r') return bad_char(h, "a field value");
        if ((rc = line_end(h))) return rc;

        exo_http_header *f = &h->req->headers[h->req->n_headers++];
        f->name_off = (uint32_t)name;
        f->name_len = (uint32_t)name_len;
        f->value_off = (uint32_t)value;
        f->value_len = (uint32_t)(value_end - value);
        if ((rc = on_field(h, f))) return rc;
    }
}

int exo_http_parse_head(const char *buf, size_t len, size_t max_head_bytes, exo_http_request *req)
{
    if (req == NULL) return exo__error_set(EXO_EINVAL, "exo_http_parse_head: req is NULL");
    memset(req, 0, sizeof *req);
    req->content_length = -1;
    if (buf == NULL && len > 0) return exo__error_set(EXO_EINVAL, "exo_http_parse_head: buf is NULL");
    if (max_head_bytes == 0) return exo__error_set(EXO_EINVAL, "exo_http_parse_head: max_head_bytes is 0");
    if (max_head_bytes > HTTP_MAX_HEAD) max_head_bytes = HTTP_MAX_HEAD;

    struct head h = {.buf = buf, .lim = len < max_head_bytes ? len : max_head_bytes, .req = req};
    int rc = parse(&h);
    if (rc == HTTP_NEED) {
        if (len >= max_head_bytes)
            return HTTP_FAIL(req, 431, EXO_ENOMEM, "request head larger than %zu bytes", max_head_bytes);
        memset(req, 0, sizeof *req); /* no half-filled fields for a caller to misread */
        req->content_length = -1;
        return 0;
    }
    if (rc < 0) return rc;
    req->head_len = (uint32_t)h.p;
    return (int)h.p;
}

int exo_http_header_find(const char *buf, const exo_http_request *req, const char *name, int from)
{
    if (buf == NULL || req == NULL || name == NULL) return -1;
    size_t n = strlen(name);
    for (int i = from < 0 ? 0 : from; i < req->n_headers && i < EXO_HTTP_MAX_HEADERS; i++) {
        const exo_http_header *f = &req->headers[i];
        if (f->name_len != n) continue;
        size_t j = 0;
        while (j < n && lower((unsigned char)buf[f->name_off + j]) == lower((unsigned char)name[j])) j++;
        if (j == n) return i;
    }
    return -1;
}

/* ---- chunked bodies ------------------------------------------------------ */

/* RFC 9112 7.1:
 *   chunked-body = *chunk last-chunk trailer-section CRLF
 *   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 *   chunk-ext    = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
 * State 0 is the start of a size line, so a zeroed struct starts a body. */
enum {
    CH_SIZE0 = 0,     /* first hex digit of a size */
    CH_SIZE,          /* more hex digits, or what ends them */
    CH_BWS_SEMI,      /* whitespace that must lead to ';' */
    CH_EXT_NAME0,     /* after ';': whitespace, then a name */
    CH_EXT_NAME,
    CH_EXT_AFTER_NAME, /* whitespace after a name: '=' or ';' next */
    CH_EXT_VAL0,      /* after '=': whitespace, then a token or quoted string */
    CH_EXT_TOKEN,
    CH_EXT_QUOTED,
    CH_EXT_QUOTED_ESC,
    CH_EXT_END,       /* after a quoted string */
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER,       /* start of a trailer line (or the final CR LF) */
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF,
    CH_FINAL_LF,
    CH_DONE,
    CH_FAILED
};

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int chunk_fail(exo_http_chunked *st, int code, const char *what)
{
    st->state = CH_FAILED;
    return exo__error_set(code, "bad chunked body: %s", what);
}

/* One framing byte. Returns 0 or a code. */
static int chunk_step(exo_http_chunked *st, unsigned char c, size_t max_body)
{
    int d;
    switch (st->state) {
    case CH_SIZE0:
    case CH_SIZE:
        if ((d = hex_value(c)) >= 0) {
            if (st->remaining > (UINT64_MAX >> 4)) return chunk_fail(st, EXO_EFORMAT, "chunk size overflows");
            st->remaining = st->remaining * 16 + (uint64_t)d;
            if (st->remaining > (uint64_t)max_body - st->total)
                return chunk_fail(st, EXO_ENOMEM, "body larger than the limit");
            st->state = CH_SIZE;
        } else if (st->state == CH_SIZE0) {
            return chunk_fail(st, EXO_EFORMAT, "chunk size is not hexadecimal");
        } else if (is_ws(c)) {
            st->state = CH_BWS_SEMI;
        } else if (c == ';') {
            st->state = CH_EXT_NAME0;
        } else if (c == '\r') {
            st->state = CH_SIZE_LF;
        } else {
            return chunk_fail(st, EXO_EFORMAT, "invalid character after the chunk size");
        }
        return 0;
    case CH_BWS_SEMI:
        if (c == ';') st->state = CH_EXT_NAME0;
        else if (!is_ws(c)) return chunk_fail(st, EXO_EFORMAT, "whitespace not followed by ';' in a chunk size line");
        return 0;
    case CH_EXT_NAME0:
        if (is_tchar(c)) st->state = CH_EXT_NAME;
        else if (!is_ws(c)) return chunk_fail(st, EXO_EFORMAT, "malformed chunk extension");
        return 0;
    case CH_EXT_NAME:
    case CH_EXT_AFTER_NAME:
        if (st->state == CH_EXT_NAME && is_tchar(c)) return 0;
        if (is_ws(c)) st->state = CH_EXT_AFTER_NAME;
        else if (c == '=') st->state = CH_EXT_VAL0;
        else if (c == ';') st->state = CH_EXT_NAME0;
        else if (c == '\r' && st->state == CH_EXT_NAME) st->state = CH_SIZE_LF;
        else return chunk_fail(st, EXO_EFORMAT, "malformed chunk extension");
        return 0;
    case CH_EXT_VAL0:
        if (c == '"') st->state = CH_EXT_QUOTED;
        else if (is_tchar(c)) st->state = CH_EXT_TOKEN;
        else if (!is_ws(c)) return chunk_fail(st, EXO_EFORMAT, "malformed chunk extension");
        return 0;
    case CH_EXT_TOKEN:
    case CH_EXT_END:
        if (st->state == CH_EXT_TOKEN && is_tchar(c)) return 0;
        if (is_ws(c)) st->state = CH_BWS_SEMI;
        else if (c == ';') st->state = CH_EXT_NAME0;
        else if (c == '\r') st->state = CH_SIZE_LF;
        else return chunk_fail(st, EXO_EFORMAT, "malformed chunk extension");
        return 0;
    case CH_EXT_QUOTED:
        /* qdtext: HTAB, SP, VCHAR except '"' and '\', obs-text */
        if (c == '"') st->state = CH_EXT_END;
        else if (c == '\\') st->state = CH_EXT_QUOTED_ESC;
        else if (!is_ws(c) && !is_field_vchar(c)) return chunk_fail(st, EXO_EFORMAT, "malformed chunk extension");
        return 0;
    case CH_EXT_QUOTED_ESC:
        if (!is_ws(c) && !is_field_vchar(c)) return chunk_fail(st, EXO_EFORMAT, "malformed chunk extension");
        st->state = CH_EXT_QUOTED;
        return 0;
    case CH_SIZE_LF:
        if (c != '\n') return chunk_fail(st, EXO_EFORMAT, "chunk size line does not end in CR LF");
        st->state = st->remaining ? CH_DATA : CH_TRAILER;
        st->line_len = 0;
        return 0;
    case CH_DATA_CR:
        if (c != '\r') return chunk_fail(st, EXO_EFORMAT, "chunk data not followed by CR LF");
        st->state = CH_DATA_LF;
        return 0;
    case CH_DATA_LF:
        if (c != '\n') return chunk_fail(st, EXO_EFORMAT, "chunk data not followed by CR LF");
        st->state = CH_SIZE0;
        st->line_len = 0;
        return 0;
    case CH_TRAILER:
        if (c == '\r') st->state = CH_FINAL_LF;
        else if (is_tchar(c)) st->state = CH_TRAILER_NAME;
        else return chunk_fail(st, EXO_EFORMAT, "malformed trailer field");
        return 0;
    case CH_TRAILER_NAME:
        if (c == ':') st->state = CH_TRAILER_VALUE;
        else if (!is_tchar(c)) return chunk_fail(st, EXO_EFORMAT, "malformed trailer field");
        return 0;
    case CH_TRAILER_VALUE:
        if (c == '\r') st->state = CH_TRAILER_LF;
        else if (!is_ws(c) && !is_field_vchar(c)) return chunk_fail(st, EXO_EFORMAT, "malformed trailer field");
        return 0;
    case CH_TRAILER_LF:
        if (c != '\n') return chunk_fail(st, EXO_EFORMAT, "trailer line does not end in CR LF");
        st->state = CH_TRAILER;
        st->line_len = 0;
        return 0;
    case CH_FINAL_LF:
        if (c != '\n') return chunk_fail(st, EXO_EFORMAT, "chunked body does not end in CR LF");
        st->state = CH_DONE;
        return 0;
    default:
        return chunk_fail(st, EXO_EINVAL, "decoder state is corrupt");
    }
}

int exo_http_chunked_decode(exo_http_chunked *st, char *buf, size_t len, size_t max_body, size_t *consumed,
                            size_t *produced, int *done)
{
    if (st == NULL || consumed == NULL || produced == NULL || done == NULL || (buf == NULL && len > 0))
        return exo__error_set(EXO_EINVAL, "exo_http_chunked_decode: NULL argument");
    *consumed = *produced = 0;
    *done = 0;
    if (st->state == CH_DONE) {
        *done = 1;
        return 0;
    }
    if (st->state == CH_FAILED) return exo__error_set(EXO_ESTATE, "chunked body: the decoder failed earlier");
    if (st->state < 0 || st->state > CH_FAILED || st->total > max_body)
        return exo__error_set(EXO_EINVAL, "exo_http_chunked_decode: state not zeroed or max_body changed");

    uint64_t framing_max = (uint64_t)max_body + HTTP_CHUNK_FRAMING_SLACK;
    if (framing_max < max_body) framing_max = UINT64_MAX;
    size_t i = 0, out = 0;
    int rc = 0;
    while (i < len) {
        if (st->state == CH_DATA) {
            size_t n = len - i;
            if (n > st->remaining) n = (size_t)st->remaining;
            if (out != i) memmove(buf + out, buf + i, n);
            out += n;
            i += n;
            st->remaining -= n;
            st->total += n;
            if (st->remaining == 0) st->state = CH_DATA_CR;
            continue;
        }
        if (++st->framing > framing_max) {
            rc = chunk_fail(st, EXO_ENOMEM, "framing larger than the limit");
            break;
        }
        if (++st->line_len > HTTP_CHUNK_LINE_MAX) {
            rc = chunk_fail(st, EXO_ENOMEM, "size or trailer line longer than 4 KiB");
            break;
        }
        if ((rc = chunk_step(st, (unsigned char)buf[i++], max_body)) != 0) break;
        if (st->state == CH_DONE) break;
    }
    *consumed = i;
    *produced = out;
    *done = st->state == CH_DONE;
    return rc;
}
