/* json.c: the strict JSON reader behind json.h.
 *
 * Recursive descent over the buffer with an explicit depth bound. Values
 * become nodes in one growable array (siblings linked by index, so the array
 * may move while it grows); strings are decoded into one arena of the input's
 * size, which is enough because a decoded string plus its NUL never exceeds
 * its quoted source. The reader exists because the model folders carry JSON
 * that C must read before anything else runs (the Lua side has cjson, the
 * C side had no JSON reader; Debian's JSON libraries are not in the build). */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "grow.h"

#define JSON_MAX_DEPTH 128
#define JSON_MAX_INPUT (1u << 30) /* tokenizer.json files are tens of MiB */
/* A value costs a node of ~56 bytes, so a file of small values (a header of
 * 50 million zeros in one shape) would need 28 times its size before any
 * caller could look at it. Llama 3's tokenizer.json, the largest file these
 * folders carry, has about a million values; four times that bounds a
 * hostile file at ~230 MiB of nodes. */
#define JSON_MAX_VALUES (1 << 22)

struct node {
    uint8_t kind;
    uint8_t is_int;
    int32_t next;   /* next sibling */
    int32_t first;  /* containers: first member */
    int32_t last;   /* containers: last member, for appending */
    uint32_t key_off, key_len;
    uint32_t str_off, str_len;
    int64_t count;  /* containers: members */
    int64_t ival;
    double num;
};

struct exo_json {
    struct node *nodes;
    size_t n_nodes, cap;
    char *strings;
    size_t str_len;
};

struct parser {
    const char *p, *start, *end;
    const char *what;
    exo_json *j;
};

static int fail(const struct parser *ps, const char *msg)
{
    return exo__error_set(EXO_EFORMAT, "%s: %s at byte %zu", ps->what, msg, (size_t)(ps->p - ps->start));
}

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static int new_node(struct parser *ps, int kind, int32_t *out)
{
    exo_json *j = ps->j;
    if (j->n_nodes >= JSON_MAX_VALUES) return fail(ps, "more than 4194304 values");
    if (exo_grow(&j->nodes, &j->cap, j->n_nodes + 1, sizeof *j->nodes))
        return exo__error_set(EXO_ENOMEM, "%s: out of memory", ps->what);
    struct node *n = &j->nodes[j->n_nodes];
    memset(n, 0, sizeof *n);
    n->kind = (uint8_t)kind;
    n->next = n->first = n->last = EXO_JSON_NONE;
    *out = (int32_t)j->n_nodes++;
    return 0;
}

static int hex4(struct parser *ps, uint32_t *out)
{
    if (ps->end - ps->p < 4) return fail(ps, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = *ps->p++;
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return fail(ps, "bad hex digit in \\u escape");
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, uint32_t cp)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | (cp >> 6 & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of a valid UTF-8 sequence at p (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    uint32_t cp, min;
    if (c < 0x80) return 1;
    if ((c & 0xE0) == 0xC0) n = 2, cp = c & 0x1F, min = 0x80;
    else if ((c & 0xF0) == 0xE0) n = 3, cp = c & 0x0F, min = 0x800;
    else if ((c & 0xF8) == 0xF0) n = 4, cp = c & 0x07, min = 0x10000;
    else return 0;
    if ((size_t)(end - p) < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

/* A string at ps->p (on the quote) into the arena. */
static int parse_string(struct parser *ps, uint32_t *off, uint32_t *len)
{
    exo_json *j = ps->j;
    ps->p++;
    *off = (uint32_t)j->str_len;
    char *o = j->strings + j->str_len;
    for (;;) {
        if (ps->p >= ps->end) return fail(ps, "unterminated string");
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"') {
            ps->p++;
            break;
        }
        if (c < 0x20) return fail(ps, "control character in string");
        if (c != '\\') {
            size_t n = utf8_len((const unsigned char *)ps->p, (const unsigned char *)ps->end);
            if (!n) return fail(ps, "invalid UTF-8 in string");
            memcpy(o, ps->p, n);
            o += n, ps->p += n;
            continue;
        }
        ps->p++;
        if (ps->p >= ps->end) return fail(ps, "unterminated escape");
        char e = *ps->p++;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            int rc = hex4(ps, &cp);
            if (rc) return rc;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(ps, "lone low surrogate");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') return fail(ps, "lone high surrogate");
                ps->p += 2;
                if ((rc = hex4(ps, &lo))) return rc;
                if (lo < 0xDC00 || lo > 0xDFFF) return fail(ps, "high surrogate without its low half");
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            o += put_utf8(o, cp);
            break;
        }
        default: return fail(ps, "unknown escape");
        }
    }
    *len = (uint32_t)(o - (j->strings + *off));
    *o++ = 0;
    j->str_len = (size_t)(o - j->strings);
    return 0;
}

static int parse_number(struct parser *ps, struct node *n)
{
    const char *s = ps->p;
    bool is_int = true;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    if (ps->p >= ps->end) return fail(ps, "truncated number");
    if (*ps->p == '0') ps->p++;
    else if (*ps->p >= '1' && *ps->p <= '9') while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    else return fail(ps, "bad number");
    if (ps->p < ps->end && *ps->p == '.') {
        is_int = false;
        ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return fail(ps, "no digits after the decimal point");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        is_int = false;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') return fail(ps, "no digits in the exponent");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    /* strtod needs a terminated copy; a number of 64 characters or more
     * (none in a model's files) reads as infinite, never as an integer. */
    char buf[64];
    size_t len = (size_t)(ps->p - s);
    if (len >= sizeof buf) {
        n->num = s[0] == '-' ? -HUGE_VAL : HUGE_VAL;
        n->is_int = 0;
        return 0;
    }
    memcpy(buf, s, len);
    buf[len] = 0;
    n->num = strtod(buf, NULL);
    if (is_int) {
        errno = 0;
        long long v = strtoll(buf, NULL, 10);
        if (errno == 0) n->ival = v, n->is_int = 1;
    }
    return 0;
}

static int parse_value(struct parser *ps, int depth, int32_t *out);

static int parse_container(struct parser *ps, int depth, bool object, int32_t self)
{
    ps->p++;
    skip_ws(ps);
    char close = object ? '}' : ']';
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return 0;
    }
    for (;;) {
        uint32_t koff = 0, klen = 0;
        int rc;
        if (object) {
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != '"') return fail(ps, "expected a string key");
            if ((rc = parse_string(ps, &koff, &klen))) return rc;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') return fail(ps, "expected ':'");
            ps->p++;
        }
        int32_t child;
        if ((rc = parse_value(ps, depth + 1, &child))) return rc;
        struct node *c = &ps->j->nodes[child], *me = &ps->j->nodes[self];
        c->key_off = koff, c->key_len = klen;
        if (me->last == EXO_JSON_NONE) me->first = child;
        else ps->j->nodes[me->last].next = child;
        me->last = child;
        me->count++;
        skip_ws(ps);
        if (ps->p >= ps->end) return fail(ps, object ? "unterminated object" : "unterminated array");
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            return 0;
        }
        return fail(ps, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int literal(struct parser *ps, const char *word, int kind, int32_t *out)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n)) return fail(ps, "unexpected character");
    ps->p += n;
    return new_node(ps, kind, out);
}

static int parse_value(struct parser *ps, int depth, int32_t *out)
{
    if (depth > JSON_MAX_DEPTH) return fail(ps, "nested too deeply");
    skip_ws(ps);
    if (ps->p >= ps->end) return fail(ps, "expected a value");
    int rc;
    switch (*ps->p) {
    case '{':
    case '[': {
        bool object = *ps->p == '{';
        if ((rc = new_node(ps, object ? EXO_JSON_OBJECT : EXO_JSON_ARRAY, out))) return rc;
        return parse_container(ps, depth, object, *out);
    }
    case '"': {
        uint32_t off, len;
        if ((rc = parse_string(ps, &off, &len))) return rc;
        if ((rc = new_node(ps, EXO_JSON_STRING, out))) return rc;
        ps->j->nodes[*out].str_off = off;
        ps->j->nodes[*out].str_len = len;
        return 0;
    }
    case 't': return literal(ps, "true", EXO_JSON_TRUE, out);
    case 'f': return literal(ps, "false", EXO_JSON_FALSE, out);
    case 'n': return literal(ps, "null", EXO_JSON_NULL, out);
    default: {
        if (*ps->p != '-' && (*ps->p < '0' || *ps->p > '9')) return fail(ps, "unexpected character");
        if ((rc = new_node(ps, EXO_JSON_NUMBER, out))) return rc;
        struct node tmp = ps->j->nodes[*out];
        if ((rc = parse_number(ps, &tmp))) return rc;
        ps->j->nodes[*out] = tmp;
        return 0;
    }
    }
}

int exo__json_parse(const char *data, size_t size, const char *what, exo_json **out)
{
    *out = NULL;
    if (!what) what = "json";
    if (!data && size) return exo__error_set(EXO_EINVAL, "%s: NULL data", what);
    if (size > JSON_MAX_INPUT) return exo__error_set(EXO_EFORMAT, "%s: %zu bytes of JSON, over %u", what, size, JSON_MAX_INPUT);
    exo_json *j = calloc(1, sizeof *j);
    if (!j || !(j->strings = malloc(size + 1))) {
        free(j);
        return exo__error_set(EXO_ENOMEM, "%s: out of memory", what);
    }
    struct parser ps = {data ? data : "", data ? data : "", (data ? data : "") + size, what, j};
    int32_t root;
    int rc = parse_value(&ps, 0, &root);
    if (!rc) {
        skip_ws(&ps);
        if (ps.p != ps.end) rc = fail(&ps, "trailing characters after the value");
    }
    if (rc) {
        exo__json_free(j);
        return rc;
    }
    *out = j;
    return 0;
}

void exo__json_free(exo_json *j)
{
    if (!j) return;
    free(j->nodes);
    free(j->strings);
    free(j);
}

static const struct node *at(const exo_json *j, int32_t node)
{
    return j && node >= 0 && (size_t)node < j->n_nodes ? &j->nodes[node] : NULL;
}

int exo__json_kind(const exo_json *j, int32_t node)
{
    const struct node *n = at(j, node);
    return n ? n->kind : -1;
}

const char *exo__json_str(const exo_json *j, int32_t node, size_t *len)
{
    const struct node *n = at(j, node);
    if (!n || n->kind != EXO_JSON_STRING) return NULL;
    if (len) *len = n->str_len;
    return j->strings + n->str_off;
}

double exo__json_num(const exo_json *j, int32_t node)
{
    const struct node *n = at(j, node);
    return n && n->kind == EXO_JSON_NUMBER ? n->num : NAN;
}

bool exo__json_int(const exo_json *j, int32_t node, int64_t *out)
{
    const struct node *n = at(j, node);
    if (!n || n->kind != EXO_JSON_NUMBER || !n->is_int) return false;
    *out = n->ival;
    return true;
}

int64_t exo__json_count(const exo_json *j, int32_t node)
{
    const struct node *n = at(j, node);
    return n && (n->kind == EXO_JSON_ARRAY || n->kind == EXO_JSON_OBJECT) ? n->count : 0;
}

int32_t exo__json_first(const exo_json *j, int32_t node)
{
    const struct node *n = at(j, node);
    return n && (n->kind == EXO_JSON_ARRAY || n->kind == EXO_JSON_OBJECT) ? n->first : EXO_JSON_NONE;
}

int32_t exo__json_next(const exo_json *j, int32_t node)
{
    const struct node *n = at(j, node);
    return n ? n->next : EXO_JSON_NONE;
}

const char *exo__json_key(const exo_json *j, int32_t member, size_t *len)
{
    const struct node *n = at(j, member);
    if (!n) return NULL;
    if (len) *len = n->key_len;
    return j->strings + n->key_off;
}

int32_t exo__json_get(const exo_json *j, int32_t object, const char *key)
{
    if (exo__json_kind(j, object) != EXO_JSON_OBJECT) return EXO_JSON_NONE;
    size_t klen = strlen(key);
    for (int32_t m = exo__json_first(j, object); m != EXO_JSON_NONE; m = exo__json_next(j, m)) {
        const struct node *n = &j->nodes[m];
        if (n->key_len == klen && !memcmp(j->strings + n->key_off, key, klen)) return m;
    }
    return EXO_JSON_NONE;
}
