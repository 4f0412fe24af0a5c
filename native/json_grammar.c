/* json_grammar.c: sampling constrained to one valid JSON object (response_format json_object).
 *
 * A byte-level recogniser of JSON (RFC 8259) whose state is a few bytes and a
 * stack of open containers, so checking a token is copying the state and
 * feeding it the token's bytes. Before each draw every token whose bytes would
 * make the output invalid gets -inf; once the top-level object closes only
 * end-of-generation tokens remain. Sampling then draws from what is left, so
 * the distribution is the model's own restricted to valid continuations and
 * the answer is JSON by construction, never by retrying. Strings are kept valid
 * UTF-8 across token boundaries, control characters are refused inside them,
 * and runs of whitespace are bounded (a model can otherwise pad forever).
 *
 * A JSON schema (a subset: type, properties, required, items, string enum;
 * an object with properties takes no others) narrows it further: the state
 * then also knows the schema node of each open container and of the value
 * being typed, which keys an object has had, and the text of the key or enum
 * string being typed, so a key is one of the object's properties not yet
 * given, a value has its type, and an object closes only with its required
 * properties. The schema is built once by exo_json_schema_* calls. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "exo.h"

#define MAX_DEPTH 64
#define MAX_WHITESPACE 16 /* in a row, between tokens of the JSON text */

enum {
    J_VALUE,       /* a value: at the start (an object only) or after ':' or ',' in an array */
    J_ARRAY_FIRST, /* after '[': a value or ']' */
    J_OBJ_FIRST,   /* after '{': a key or '}' */
    J_OBJ_KEY,     /* after ',' in an object: a key */
    J_COLON,       /* after a key */
    J_AFTER,       /* after a value in a container: ',' or its closer */
    J_STRING,
    J_ESCAPE,
    J_UNICODE,     /* in \uXXXX: hex digits left in count */
    J_NUM_MINUS, J_NUM_ZERO, J_NUM_INT, J_NUM_DOT, J_NUM_FRAC, J_NUM_E, J_NUM_ESIGN, J_NUM_EXP,
    J_LITERAL,     /* in true, false or null */
    J_DONE,        /* the object is complete */
};

#define SCHEMA_MAX_NODES 127
#define SCHEMA_MAX_PROPS 64     /* properties of one object */
#define SCHEMA_MAX_DEPTH 16     /* nested objects that follow a schema */
#define SCHEMA_MAX_TEXT 63      /* bytes of a property name or an enum string */

enum { T_OBJECT = 1, T_ARRAY = 2, T_STRING = 4, T_NUMBER = 8, T_INTEGER = 16, T_BOOLEAN = 32, T_NULL = 64 };

typedef struct schema_node {
    uint16_t types;               /* T_* bits; 0: any */
    int8_t items;                 /* an array's item node, -1: any */
    int8_t closed;                /* an object with properties takes no other */
    int16_t first, count;         /* its properties, or its enum strings, in the texts */
} schema_node;

typedef struct schema_text {
    char text[SCHEMA_MAX_TEXT + 1]; /* a property name or an enum string, as written inside quotes */
    uint8_t len;
    int8_t node;                  /* a property's value node (-1: any) */
    uint8_t required;
} schema_text;

typedef struct json_schema {
    schema_node nodes[SCHEMA_MAX_NODES];
    schema_text texts[SCHEMA_MAX_NODES * 4];
    int n_nodes, n_texts, root;
} json_schema;

typedef struct json_state {
    uint8_t state, is_key, literal, literal_pos, utf8_left, count, depth, whitespace;
    uint8_t stack[MAX_DEPTH]; /* '{' or '[' */
    /* With a schema: */
    const json_schema *schema;
    int8_t value_node;            /* the node of the value about to start or being typed (-1: any) */
    int8_t cnode[MAX_DEPTH];      /* each open container's node */
    uint64_t seen[SCHEMA_MAX_DEPTH]; /* the properties each open object has had */
    uint8_t buf_len, buf_on;      /* the key or enum string typed so far, when it is checked */
    char buf[SCHEMA_MAX_TEXT + 1];
} json_state;

struct exo_json_grammar {
    const exo_tokenizer *tok;
    int n_vocab;
    const char **piece;
    size_t *piece_len;
    uint8_t *kind;         /* 0 text, 1 end of generation, 2 other control token or empty */
    json_state st;
    json_schema *schema;   /* NULL: any JSON object */
};

static const char *const literals[3] = {"true", "false", "null"};

static int is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static int is_hex(uint8_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static void value_done(json_state *s) { s->state = s->depth == 0 ? J_DONE : J_AFTER; }

/* ---- the schema's rules ---- */

static const schema_node *node_of(const json_state *s, int node)
{
    return s->schema && node >= 0 ? &s->schema->nodes[node] : NULL;
}

/* The innermost open container's node, or NULL. */
static const schema_node *container_node(const json_state *s)
{
    return s->depth ? node_of(s, s->cnode[s->depth - 1]) : NULL;
}

/* Whether a value starting with byte c may be of the node's types. */
static int type_allows(const schema_node *n, uint8_t c)
{
    if (!n || !n->types) return 1;
    if (c == '{') return n->types & T_OBJECT;
    if (c == '[') return n->types & T_ARRAY;
    if (c == '"') return n->types & T_STRING;
    if (c == '-' || is_digit(c)) return n->types & (T_NUMBER | T_INTEGER);
    if (c == 't' || c == 'f') return n->types & T_BOOLEAN;
    if (c == 'n') return n->types & T_NULL;
    return 0;
}

/* An object whose properties are all given may take no further key. */
static int object_has_room(const json_state *s)
{
    const schema_node *n = container_node(s);
    if (!n || !n->closed) return 1;
    uint64_t all = n->count >= 64 ? ~0ULL : ((1ULL << n->count) - 1);
    return (s->seen[s->depth - 1] & all) != all;
}

static int object_may_close(const json_state *s)
{
    const schema_node *n = container_node(s);
    if (!n || !n->closed) return 1;
    for (int i = 0; i < n->count; i++)
        if (s->schema->texts[n->first + i].required && !(s->seen[s->depth - 1] >> i & 1)) return 0;
    return 1;
}

/* The typed key or enum string so far is a prefix of a candidate (exact: all of
 * one); returns its index among the node's texts, or -1. Keys skip properties
 * already given. */
static int text_match(const json_state *s, const schema_node *n, int exact, int is_key)
{
    for (int i = 0; i < n->count; i++) {
        const schema_text *t = &s->schema->texts[n->first + i];
        if (is_key && (s->seen[s->depth - 1] >> i & 1)) continue;
        if (s->buf_len > t->len || memcmp(t->text, s->buf, s->buf_len) != 0) continue;
        if (!exact || s->buf_len == t->len) return i;
    }
    return -1;
}

static int open_container(json_state *s, uint8_t c)
{
    if (s->depth == MAX_DEPTH) return 0;
    const schema_node *n = node_of(s, s->value_node);
    if (n && n->closed && s->depth >= SCHEMA_MAX_DEPTH) return 0;
    s->cnode[s->depth] = (int8_t)(n ? s->value_node : -1);
    if (s->depth < SCHEMA_MAX_DEPTH) s->seen[s->depth] = 0;
    s->stack[s->depth++] = c;
    s->state = c == '{' ? J_OBJ_FIRST : J_ARRAY_FIRST;
    if (c == '[') s->value_node = n ? n->items : -1;
    return 1;
}

static int close_container(json_state *s, uint8_t c)
{
    if (s->depth == 0 || s->stack[s->depth - 1] != (c == '}' ? '{' : '[')) return 0;
    if (c == '}' && !object_may_close(s)) return 0;
    s->depth--;
    value_done(s);
    return 1;
}

/* A byte of a checked key or enum string (an escape's, here): its text so far
 * must still lead to a candidate. */
static int checked_byte(json_state *s, uint8_t c)
{
    if (s->buf_len == SCHEMA_MAX_TEXT) return 0;
    s->buf[s->buf_len++] = (char)c;
    const schema_node *n = s->is_key ? container_node(s) : node_of(s, s->value_node);
    return text_match(s, n, 0, s->is_key) >= 0;
}

static int integer_only(const json_state *s)
{
    const schema_node *n = node_of(s, s->value_node);
    return n && (n->types & T_INTEGER) && !(n->types & T_NUMBER);
}

/* Advances s by one byte; 0 when the byte cannot follow. */
static int feed(json_state *s, uint8_t c)
{
    switch (s->state) {
    case J_VALUE: case J_ARRAY_FIRST: case J_OBJ_FIRST: case J_OBJ_KEY: case J_COLON: case J_AFTER: case J_DONE:
        if (is_ws(c)) return ++s->whitespace <= MAX_WHITESPACE;
        s->whitespace = 0;
        break;
    default: break;
    }
    switch (s->state) {
    case J_ARRAY_FIRST:
        if (c == ']') return close_container(s, c);
        /* else a value */
        /* fall through */
    case J_VALUE:
        if (s->depth == 0) return c == '{' && type_allows(node_of(s, s->value_node), c) && open_container(s, c);
        if (!type_allows(node_of(s, s->value_node), c)) return 0;
        if (c == '{' || c == '[') return open_container(s, c);
        if (c == '"') {
            const schema_node *n = node_of(s, s->value_node);
            s->state = J_STRING;
            s->is_key = 0;
            s->buf_on = n && n->count > 0 && !(n->types & ~T_STRING); /* a string enum */
            s->buf_len = 0;
            return 1;
        }
        if (c == '-') return s->state = J_NUM_MINUS, 1;
        if (c == '0') return s->state = J_NUM_ZERO, 1;
        if (c >= '1' && c <= '9') return s->state = J_NUM_INT, 1;
        for (uint8_t i = 0; i < 3; i++)
            if (c == (uint8_t)literals[i][0]) {
                s->state = J_LITERAL;
                s->literal = i;
                s->literal_pos = 1;
                return 1;
            }
        return 0;
    case J_OBJ_FIRST:
        if (c == '}') return close_container(s, c);
        /* else a key */
        /* fall through */
    case J_OBJ_KEY:
        if (c != '"') return 0;
        s->state = J_STRING;
        s->is_key = 1;
        s->buf_on = container_node(s) && container_node(s)->closed;
        s->buf_len = 0;
        return 1;
    case J_COLON:
        if (c != ':') return 0;
        s->state = J_VALUE;
        return 1;
    case J_AFTER:
        if (c == ',') {
            if (s->stack[s->depth - 1] == '{') {
                if (!object_has_room(s)) return 0;
                s->state = J_OBJ_KEY;
            } else {
                const schema_node *n = container_node(s);
                s->state = J_VALUE;
                s->value_node = n ? n->items : -1;
            }
            return 1;
        }
        if (c == '}' || c == ']') return close_container(s, c);
        return 0;
    case J_STRING:
        if (s->utf8_left) {
            if ((c & 0xC0) != 0x80) return 0;
            s->utf8_left--;
            if (s->buf_on) {
                if (s->buf_len == SCHEMA_MAX_TEXT) return 0;
                s->buf[s->buf_len++] = (char)c;
                const schema_node *n = s->is_key ? container_node(s) : node_of(s, s->value_node);
                if (text_match(s, n, 0, s->is_key) < 0) return 0;
            }
            return 1;
        }
        if (c == '"') {
            if (s->is_key) {
                /* The value that follows has the property's node (any, outside a schema). */
                const schema_node *n = container_node(s);
                s->value_node = -1;
                if (s->buf_on) {
                    int i = text_match(s, n, 1, 1);
                    if (i < 0) return 0;
                    s->seen[s->depth - 1] |= 1ULL << i;
                    s->value_node = s->schema->texts[n->first + i].node;
                }
                s->state = J_COLON;
            } else {
                if (s->buf_on && text_match(s, node_of(s, s->value_node), 1, 0) < 0) return 0;
                value_done(s);
            }
            s->buf_on = 0;
            return 1;
        }
        if (s->buf_on) { /* a key or enum string: its text so far must lead to a candidate */
            if (s->buf_len == SCHEMA_MAX_TEXT) return 0;
            s->buf[s->buf_len++] = (char)c;
            const schema_node *n = s->is_key ? container_node(s) : node_of(s, s->value_node);
            if (text_match(s, n, 0, s->is_key) < 0) return 0;
        }
        if (c == '\\') return s->state = J_ESCAPE, 1;
        if (c < 0x20) return 0;
        if (c < 0x80) return 1;
        if (c >= 0xC2 && c <= 0xDF) return s->utf8_left = 1, 1;
        if (c >= 0xE0 && c <= 0xEF) return s->utf8_left = 2, 1;
        if (c >= 0xF0 && c <= 0xF4) return s->utf8_left = 3, 1;
        return 0;
    case J_ESCAPE:
        if (c == 'u') {
            s->state = J_UNICODE;
            s->count = 4;
            return 1;
        }
        if (!strchr("\"\\/bfnrt", c) || c == 0) return 0;
        s->state = J_STRING;
        return s->buf_on ? checked_byte(s, c) : 1;
    case J_UNICODE:
        if (!is_hex(c)) return 0;
        if (s->buf_on && !checked_byte(s, c)) return 0;
        if (--s->count == 0) s->state = J_STRING;
        return 1;
    case J_NUM_MINUS:
        if (c == '0') return s->state = J_NUM_ZERO, 1;
        if (c >= '1' && c <= '9') return s->state = J_NUM_INT, 1;
        return 0;
    case J_NUM_DOT:
        return is_digit(c) ? (s->state = J_NUM_FRAC, 1) : 0;
    case J_NUM_E:
        if (c == '+' || c == '-') return s->state = J_NUM_ESIGN, 1;
        return is_digit(c) ? (s->state = J_NUM_EXP, 1) : 0;
    case J_NUM_ESIGN:
        return is_digit(c) ? (s->state = J_NUM_EXP, 1) : 0;
    case J_NUM_ZERO: case J_NUM_INT: case J_NUM_FRAC: case J_NUM_EXP:
        if (is_digit(c) && s->state != J_NUM_ZERO) return 1;
        if ((c == '.' || c == 'e' || c == 'E') && integer_only(s)) goto number_ends;
        if (c == '.' && (s->state == J_NUM_ZERO || s->state == J_NUM_INT)) return s->state = J_NUM_DOT, 1;
        if ((c == 'e' || c == 'E') && s->state != J_NUM_EXP) return s->state = J_NUM_E, 1;
    number_ends:
        /* The number ends here: the byte must be what may follow a value. */
        value_done(s);
        return feed(s, c);
    case J_LITERAL: {
        const char *lit = literals[s->literal];
        if (c != (uint8_t)lit[s->literal_pos]) return 0;
        if (lit[++s->literal_pos] == 0) value_done(s);
        return 1;
    }
    case J_DONE:
        return 0;
    }
    return 0;
}

static int feed_bytes(json_state *s, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!feed(s, (uint8_t)p[i])) return 0;
    return 1;
}

int exo_json_grammar_new(const exo_tokenizer *tok, exo_json_grammar **out)
{
    if (!tok || !out) return exo__error_set(EXO_EINVAL, "exo_json_grammar_new: NULL argument");
    *out = NULL;
    exo_json_grammar *g = calloc(1, sizeof *g);
    int n = exo_tokenizer_n_vocab(tok);
    if (!g || n < 1) {
        free(g);
        return exo__error_set(EXO_ENOMEM, "out of memory for a JSON grammar");
    }
    g->tok = tok;
    g->n_vocab = n;
    g->piece = malloc(sizeof *g->piece * (size_t)n);
    g->piece_len = malloc(sizeof *g->piece_len * (size_t)n);
    g->kind = malloc((size_t)n);
    if (!g->piece || !g->piece_len || !g->kind) {
        exo_json_grammar_free(g);
        return exo__error_set(EXO_ENOMEM, "out of memory for a JSON grammar");
    }
    for (int i = 0; i < n; i++) {
        int type = exo_tokenizer_token_type(tok, i);
        g->piece[i] = NULL;
        g->piece_len[i] = 0;
        if (exo_tokenizer_is_eog(tok, i)) g->kind[i] = 1;
        else if (type == EXO_TOKEN_CONTROL || type == EXO_TOKEN_UNKNOWN || type == EXO_TOKEN_UNUSED ||
                 exo_tokenizer_token_piece(tok, i, &g->piece[i], &g->piece_len[i]) != 0 || g->piece_len[i] == 0)
            g->kind[i] = 2;
        else g->kind[i] = 0;
    }
    exo_json_grammar_reset(g);
    *out = g;
    return EXO_OK;
}

void exo_json_grammar_free(exo_json_grammar *g)
{
    if (!g) return;
    free(g->piece);
    free(g->piece_len);
    free(g->kind);
    free(g->schema);
    free(g);
}

void exo_json_grammar_reset(exo_json_grammar *g)
{
    if (!g) return;
    memset(&g->st, 0, sizeof g->st);
    g->st.state = J_VALUE;
    g->st.schema = g->schema;
    g->st.value_node = (int8_t)(g->schema ? g->schema->root : -1);
}

/* ---- building a schema ---- */

static json_schema *schema_of(exo_json_grammar *g)
{
    if (!g->schema) {
        g->schema = calloc(1, sizeof *g->schema);
        if (g->schema) g->schema->root = -1;
    }
    return g->schema;
}

int exo_json_grammar_schema_node(exo_json_grammar *g, int types, int items)
{
    json_schema *sc = g ? schema_of(g) : NULL;
    if (!sc) return exo__error_set(EXO_ENOMEM, "out of memory for a JSON schema");
    if (sc->n_nodes == SCHEMA_MAX_NODES)
        return exo__error_set(EXO_ERANGE, "a JSON schema of more than %d parts", SCHEMA_MAX_NODES);
    if (items < -1 || items >= sc->n_nodes || types < 0 || types > 127)
        return exo__error_set(EXO_EINVAL, "exo_json_grammar_schema_node: bad arguments");
    schema_node *n = &sc->nodes[sc->n_nodes];
    n->types = (uint16_t)types;
    n->items = (int8_t)items;
    n->first = -1;
    return sc->n_nodes++;
}

/* A property (value_node >= -1) or, with value_node -2, a string enum member. */
static int add_text(exo_json_grammar *g, int node, const char *text, size_t len, int value_node, int required)
{
    json_schema *sc = g ? g->schema : NULL;
    if (!sc || node < 0 || node >= sc->n_nodes || value_node < -2 || value_node >= sc->n_nodes || !text)
        return exo__error_set(EXO_EINVAL, "a JSON schema property or enum for no such part");
    schema_node *n = &sc->nodes[node];
    if (len > SCHEMA_MAX_TEXT)
        return exo__error_set(EXO_ERANGE, "a JSON schema name or enum string of %zu bytes (at most %d)", len,
                             SCHEMA_MAX_TEXT);
    if (n->first >= 0 && n->first + n->count != sc->n_texts)
        return exo__error_set(EXO_ESTATE, "a JSON schema part's properties are given together");
    if (n->count == SCHEMA_MAX_PROPS || sc->n_texts == (int)(sizeof sc->texts / sizeof sc->texts[0]))
        return exo__error_set(EXO_ERANGE, "a JSON schema with too many properties or enum strings");
    if (n->first < 0) n->first = (int16_t)sc->n_texts;
    schema_text *t = &sc->texts[sc->n_texts++];
    memcpy(t->text, text, len);
    t->len = (uint8_t)len;
    t->node = (int8_t)(value_node == -2 ? -1 : value_node);
    t->required = (uint8_t)(required != 0);
    n->count++;
    if (value_node != -2) n->closed = 1;
    return EXO_OK;
}

int exo_json_grammar_schema_property(exo_json_grammar *g, int node, const char *name, size_t len, int value_node,
                                     int required)
{
    if (value_node < -1) return exo__error_set(EXO_EINVAL, "a property's node is -1 (any) or a part");
    return add_text(g, node, name, len, value_node, required);
}

int exo_json_grammar_schema_enum(exo_json_grammar *g, int node, const char *text, size_t len)
{
    return add_text(g, node, text, len, -2, 0);
}

int exo_json_grammar_schema_root(exo_json_grammar *g, int node)
{
    if (!g || !g->schema || node < 0 || node >= g->schema->n_nodes)
        return exo__error_set(EXO_EINVAL, "exo_json_grammar_schema_root: no such part");
    if (!(g->schema->nodes[node].types & T_OBJECT))
        return exo__error_set(EXO_ENOTSUP, "the schema's top level must be an object");
    g->schema->root = node;
    exo_json_grammar_reset(g);
    return EXO_OK;
}

int exo_json_grammar_mask(exo_json_grammar *g, float *logits, int n_vocab)
{
    if (!g || !logits || n_vocab != g->n_vocab)
        return exo__error_set(EXO_EINVAL, "exo_json_grammar_mask: bad arguments (n_vocab %d, the grammar's %d)", n_vocab,
                             g ? g->n_vocab : -1);
    int allowed = 0, done = g->st.state == J_DONE;
    for (int i = 0; i < n_vocab; i++) {
        if (logits[i] == -INFINITY) continue;
        int ok;
        if (g->kind[i] == 1) ok = done;
        else if (g->kind[i] == 2 || done) ok = 0;
        else {
            json_state s = g->st;
            ok = feed_bytes(&s, g->piece[i], g->piece_len[i]);
        }
        if (ok) allowed++;
        else logits[i] = -INFINITY;
    }
    if (!allowed) return exo__error_set(EXO_ESTATE, "no token can continue the JSON (the vocabulary lacks one)");
    return EXO_OK;
}

int exo_json_grammar_accept(exo_json_grammar *g, int32_t id)
{
    if (!g || id < 0 || id >= g->n_vocab) return exo__error_set(EXO_EINVAL, "exo_json_grammar_accept: bad token %d", id);
    if (g->kind[id] == 1) {
        if (g->st.state == J_DONE) return EXO_OK;
        return exo__error_set(EXO_ESTATE, "generation ended before the JSON object was complete");
    }
    json_state s = g->st;
    if (g->kind[id] == 2 || !feed_bytes(&s, g->piece[id], g->piece_len[id]))
        return exo__error_set(EXO_EFORMAT, "token %d cannot continue the JSON", id);
    g->st = s;
    return EXO_OK;
}

int exo_json_grammar_done(const exo_json_grammar *g) { return g && g->st.state == J_DONE; }

int exo_json_grammar_check(const char *text, size_t len)
{
    json_state s = {.state = J_VALUE};
    if (!feed_bytes(&s, text, len)) return 0;
    return s.state == J_DONE;
}
