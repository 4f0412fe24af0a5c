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
 * and runs of whitespace are bounded (a model can otherwise pad forever). */
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

typedef struct json_state {
    uint8_t state, is_key, literal, literal_pos, utf8_left, count, depth, whitespace;
    uint8_t stack[MAX_DEPTH]; /* '{' or '[' */
} json_state;

struct exo_json_grammar {
    const exo_tokenizer *tok;
    int n_vocab;
    const char **piece;
    size_t *piece_len;
    uint8_t *kind;         /* 0 text, 1 end of generation, 2 other control token or empty */
    json_state st;
};

static const char *const literals[3] = {"true", "false", "null"};

static int is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static int is_hex(uint8_t c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static void value_done(json_state *s) { s->state = s->depth == 0 ? J_DONE : J_AFTER; }

static int open_container(json_state *s, uint8_t c)
{
    if (s->depth == MAX_DEPTH) return 0;
    s->stack[s->depth++] = c;
    s->state = c == '{' ? J_OBJ_FIRST : J_ARRAY_FIRST;
    return 1;
}

static int close_container(json_state *s, uint8_t c)
{
    if (s->depth == 0 || s->stack[s->depth - 1] != (c == '}' ? '{' : '[')) return 0;
    s->depth--;
    value_done(s);
    return 1;
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
        if (s->depth == 0) return c == '{' && open_container(s, c); /* an object at the top */
        if (c == '{' || c == '[') return open_container(s, c);
        if (c == '"') {
            s->state = J_STRING;
            s->is_key = 0;
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
        return 1;
    case J_COLON:
        if (c != ':') return 0;
        s->state = J_VALUE;
        return 1;
    case J_AFTER:
        if (c == ',') {
            s->state = s->stack[s->depth - 1] == '{' ? J_OBJ_KEY : J_VALUE;
            return 1;
        }
        if (c == '}' || c == ']') return close_container(s, c);
        return 0;
    case J_STRING:
        if (s->utf8_left) {
            if ((c & 0xC0) != 0x80) return 0;
            s->utf8_left--;
            return 1;
        }
        if (c == '"') {
            if (s->is_key) s->state = J_COLON;
            else value_done(s);
            return 1;
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
        return 1;
    case J_UNICODE:
        if (!is_hex(c)) return 0;
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
        if (c == '.' && (s->state == J_NUM_ZERO || s->state == J_NUM_INT)) return s->state = J_NUM_DOT, 1;
        if ((c == 'e' || c == 'E') && s->state != J_NUM_EXP) return s->state = J_NUM_E, 1;
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
    free(g);
}

void exo_json_grammar_reset(exo_json_grammar *g)
{
    if (!g) return;
    memset(&g->st, 0, sizeof g->st);
    g->st.state = J_VALUE;
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
