/* tokenizer.c: text <-> token ids, built from a GGUF file's tokenizer.* metadata.
 *
 * Two model families are implemented, following llama.cpp's behaviour (the
 * reference the tests compare against): byte-level BPE ("gpt2": GPT-2's
 * byte-to-unicode alphabet, a pre-tokenizer that splits text into words with
 * the regexes named by tokenizer.ggml.pre, then merges by rank) and
 * SentencePiece-style ("llama": spaces become U+2581, adjacent pieces merge by
 * score, characters outside the vocabulary fall back to <0xNN> byte tokens).
 *
 * Why it is built this way: the vocabulary is copied into one text pool and
 * one piece pool (the bytes each token decodes to, precomputed) so the model
 * file can be closed and decoding is a table lookup; token text -> id is an
 * open-addressing hash table; BPE merges are keyed by the pair of token ids,
 * so a merge step is one integer hash probe, and each word is merged over a
 * linked list of symbols with a binary heap ordered by (rank, position) -
 * O(n log n) per word, no string building. Pre-tokenizer regexes run through
 * PCRE2 (UTF + UCP, JIT) rather than a hand-written matcher; several regexes
 * apply in sequence, each splitting the pieces the previous one produced
 * (matches and the gaps between them both become pieces), as llama.cpp does.
 * The loaded object is immutable, so encode/decode may run on any thread.
 *
 * Special tokens (CONTROL, USER_DEFINED, UNKNOWN types) are cut out of the
 * text before the model runs, longest text first, as llama.cpp does. With
 * parse_special = 0, CONTROL and UNKNOWN tokens are not recognised (their text
 * is encoded as ordinary text); USER_DEFINED tokens are always recognised, as
 * in llama.cpp and Hugging Face tokenizers (they are ordinary added words, not
 * control tokens).
 *
 * Invalid UTF-8 in the input is kept byte for byte, so decode(encode(s)) == s
 * for any bytes the vocabulary has tokens for: the regexes run with
 * PCRE2_MATCH_INVALID_UTF, where a byte that is not part of a well-formed
 * character never matches, so it ends up in a gap piece of its own and is
 * encoded through the byte alphabet (BPE) or as <0xNN> byte tokens (SPM).
 * llama.cpp instead replaces such bytes with U+FFFD. A byte the vocabulary
 * has no token for is dropped (BPE) or becomes the unknown token (SPM), as in
 * llama.cpp; SmolLM2, for one, has none for 0x04 0x06 0x13 0x14 0x16 0x1D and
 * the bytes that never occur in UTF-8 (the load warning counts them).
 *
 * Hostile vocabularies: counts, array types and lengths are checked; token
 * types outside 0..6 count as UNDEFINED (decode to nothing, as in llama.cpp);
 * special-token ids out of range are ignored (with a warning); merges that
 * lack a separator or name a token (or a merged result) missing from the
 * vocabulary are skipped and counted in the warning. */
#define _GNU_SOURCE /* memmem */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <ctype.h>
#include <limits.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "grow.h"
#include "exo.h"
#include "gguf.h"
#include "safetensors.h"

#define MAX_VOCAB (1 << 22)   /* real vocabularies are <= ~262k */
#define MAX_MERGES (1 << 23)
#define MAX_REGEXES 8
#define MAX_TEXT_LEN ((size_t)INT_MAX / 4) /* one encode call; keeps token counts in int */

/* Attributes derived from the type plus name-based fixes (llama.cpp's attrs). */
enum {
    A_NORMAL = 1 << 0,
    A_UNKNOWN = 1 << 1,
    A_CONTROL = 1 << 2,
    A_USER_DEFINED = 1 << 3,
    A_BYTE = 1 << 4,
    A_UNUSED = 1 << 5,
    A_UNDEFINED = 1 << 6,
    A_RSTRIP = 1 << 7,
    A_EOG = 1 << 8,
};

enum { KIND_BPE = 1, KIND_SPM = 2 };

struct token {
    uint32_t text_off, text_len;   /* vocabulary text in tok->text */
    uint32_t piece_off, piece_len; /* decoded bytes in tok->piece */
    float score;
    uint16_t attr;
    int8_t type; /* the GGUF type as stored (0..6; other values read as 0) */
};

struct merge_slot {
    uint64_t key; /* left id << 32 | right id; EMPTY_KEY when free */
    int32_t rank;
    int32_t result;
};
#define EMPTY_KEY UINT64_MAX

struct exo_tokenizer {
    int kind;
    int32_t n_vocab;
    struct token *tokens;
    char *text;
    char *piece;
    int32_t *index; /* text -> id, open addressing, -1 = free */
    uint64_t index_mask;
    struct merge_slot *merges;
    uint64_t merge_mask;
    int32_t byte_token[256]; /* BPE: token of byte b's alphabet char; SPM: <0xNN>; -1 if none */
    pcre2_code *re[MAX_REGEXES];
    int n_re;
    bool ignore_merges; /* a word that is itself a token is emitted whole (llama3 family) */
    int32_t *specials;  /* ids recognised in text, longest text first */
    int n_specials;
    bool has_user_defined;
    int32_t bos, eos, eot, unk;
    bool add_bos, add_space_prefix;
    /* SPM, when the space prefix comes from a tokenizer.json Metaspace
     * (tokenizer.exo.prefix_scheme): no prefix for text that already starts
     * with a space or U+2581, and with "first" only for text at the very
     * start, as Hugging Face's tokenizers does. */
    bool prefix_unless_space, prefix_first_only;
    char model[16];
    char pre[48];
    char warning[512];
};

/* ---- small helpers ----------------------------------------------------------------- */

static void warn(exo_tokenizer *t, const char *fmt, ...) EXO_PRINTF(2, 3);
static void warn(exo_tokenizer *t, const char *fmt, ...)
{
    size_t used = strlen(t->warning);
    if (used + 8 >= sizeof t->warning) return;
    if (used) {
        memcpy(t->warning + used, "; ", 3);
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->warning + used, sizeof t->warning - used, fmt, ap);
    va_end(ap);
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t key)
{
    key *= 0x9E3779B97F4A7C15ull;
    return key ^ (key >> 31);
}

static uint64_t pow2_at_least(uint64_t n)
{
    uint64_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* Length of the well-formed UTF-8 character at s (RFC 3629: no overlongs, no
 * surrogates, <= U+10FFFF). Returns its length (1..4); 0 when the bytes are a
 * valid but incomplete prefix (more are needed); -k when the first k bytes
 * (k >= 1) can never start a character and should be replaced. */
static int utf8_char(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    int len;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return -1;
    }
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return 0;
        if (s[i] < lo || s[i] > hi) return -i;
        lo = 0x80, hi = 0xBF;
    }
    return len;
}

/* Bytes of the character at s for splitting text into symbols: a whole
 * well-formed character, else one byte. */
static size_t char_len(const char *s, size_t n)
{
    int k = utf8_char((const uint8_t *)s, n);
    return k > 0 ? (size_t)k : 1;
}

static size_t utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

/* GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves; the
 * other 68 (0x00-0x20, 0x7F-0xA0, 0xAD) map in order to U+0100..U+0143, so
 * every byte is a visible character. */
static uint32_t byte_to_cp(int b)
{
    if (b <= 0x20) return 0x100 + (uint32_t)b;
    if (b >= 0x7F && b <= 0xA0) return 0x100 + 0x21 + (uint32_t)(b - 0x7F);
    if (b == 0xAD) return 0x143;
    return (uint32_t)b;
}

/* The byte a code point of the alphabet stands for, or -1. */
static int cp_to_byte(uint32_t cp)
{
    if (cp < 0x100) return byte_to_cp((int)cp) == cp ? (int)cp : -1;
    if (cp < 0x121) return (int)(cp - 0x100);
    if (cp < 0x143) return 0x7F + (int)(cp - 0x121);
    if (cp == 0x143) return 0xAD;
    return -1;
}

static int oom(void)
{
    return exo__error_set(EXO_ENOMEM, "tokenizer: out of memory");
}

/* ---- vocabulary lookup -------------------------------------------------------------- */

static int32_t lookup(const exo_tokenizer *t, const char *s, size_t n)
{
    if (n == 0) return -1;
    uint64_t i = hash_bytes(s, n) & t->index_mask;
    for (;;) {
        int32_t id = t->index[i];
        if (id < 0) return -1;
        const struct token *tk = &t->tokens[id];
        if (tk->text_len == n && memcmp(t->text + tk->text_off, s, n) == 0) return id;
        i = (i + 1) & t->index_mask;
    }
}

static bool merge_find(const exo_tokenizer *t, int32_t left, int32_t right, int32_t *rank, int32_t *result)
{
    if (!t->merges || left < 0 || right < 0) return false;
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint64_t i = hash_pair(key) & t->merge_mask;
    for (;;) {
        const struct merge_slot *m = &t->merges[i];
        if (m->key == EMPTY_KEY) return false;
        if (m->key == key) {
            *rank = m->rank;
            *result = m->result;
            return true;
        }
        i = (i + 1) & t->merge_mask;
    }
}

/* ---- pre-tokenizers ------------------------------------------------------------------ */

/* The regexes come from each model's tokenizer.json (via llama.cpp's table of
 * tokenizer.ggml.pre names). Contractions are spelled with explicit case
 * classes instead of (?i:...) so Unicode case folding (U+017F for 's') does
 * not widen them. */
#define RE_CONTRACTIONS "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define RE_LLAMA3                                                                                  \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|" \
                    "\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                   \
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"     \
                    "\\s+(?!\\S)|\\s+"
#define RE_CJK_DEEPSEEK "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"

static const char *const re_default[] = {"[\\p{P}\\$\\+<=>\\^~\\|]+", RE_GPT2, "\\p{N}+", "[0-9][0-9][0-9]", NULL};
static const char *const re_gpt2[] = {RE_GPT2, NULL};
static const char *const re_llama3[] = {RE_LLAMA3, NULL};
static const char *const re_qwen2[] = {RE_QWEN2, NULL};
static const char *const re_qwen35[] = {
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|"
                    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    NULL};
static const char *const re_starcoder[] = {"\\p{N}", RE_GPT2, NULL};
static const char *const re_falcon[] = {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RE_GPT2, "[0-9][0-9][0-9]", NULL};
static const char *const re_deepseek_llm[] = {
    "[\\r\\n]",
    "\\s?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}"
    "\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}"
    "\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}"
    "\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}"
    "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}"
    "\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}"
    "\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}"
    "\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}"
    "\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}"
    "\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}"
    "\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}"
    "\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}"
    "\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}"
    "\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}"
    "\\x{1E900}-\\x{1E943}]+",
    "\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
    "\\s+$",
    RE_CJK_DEEPSEEK,
    "\\p{N}+",
    NULL};
static const char *const re_deepseek_coder[] = {"[\\r\\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RE_CJK_DEEPSEEK, "\\p{N}", NULL};
static const char *const re_deepseek3[] = {
    "\\p{N}{1,3}",
    "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    NULL};
static const char *const re_gpt4o[] = {
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+" RE_CONTRACTIONS "?|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*" RE_CONTRACTIONS "?|"
    "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    NULL};
static const char *const re_tekken[] = {
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    NULL};
static const char *const re_bloom[] = {
    " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{964}\\x{6D4}\\x{60C})]+", NULL};
static const char *const re_viking[] = {
    " ?[^(\\s|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{964}\\x{6D4}\\x{60C})]+", "\\p{N}", NULL};
static const char *const re_seed_coder[] = {
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|"
                    "\\s+(?!\\S)|\\s+",
    NULL};
static const char *const re_minicpm5[] = {
    "\\p{N}{1,3}",
    RE_CONTRACTIONS "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
                    "\\s+(?!\\S)|\\s+",
    NULL};
static const char *const re_laguna[] = {"[^\\n]+|[\\n]+", RE_QWEN2, NULL};

struct pre_def {
    const char *name;
    const char *const *regexes;
    int8_t ignore_merges;
    int8_t add_bos;   /* default for add_bos when the file does not say */
    int8_t no_bos;    /* the model has no BOS token */
};

static const struct pre_def pre_defs[] = {
    {"default", re_default, 0, 0, 0},
    {"gpt2", re_gpt2, 0, 0, 0},
    {"gpt-2", re_gpt2, 0, 0, 0},
    {"phi-2", re_gpt2, 0, 0, 0},
    {"jina-es", re_gpt2, 0, 0, 0},
    {"jina-de", re_gpt2, 0, 0, 0},
    {"jina-v1-en", re_gpt2, 0, 0, 0},
    {"jina-v2-es", re_gpt2, 0, 0, 0},
    {"jina-v2-de", re_gpt2, 0, 0, 0},
    {"jina-v2-code", re_gpt2, 0, 0, 0},
    {"roberta-bpe", re_gpt2, 0, 0, 0},
    {"gigachat", re_gpt2, 0, 0, 0},
    {"a.x-4.0", re_gpt2, 0, 0, 0},
    {"mellum", re_gpt2, 0, 0, 0},
    {"modern-bert", re_gpt2, 0, 0, 0},
    {"mpt", re_gpt2, 0, 0, 0},
    {"olmo", re_gpt2, 0, 0, 0},
    {"jais", re_gpt2, 0, 0, 0},
    {"trillion", re_gpt2, 0, 0, 0},
    {"granite-docling", re_gpt2, 0, 0, 0},
    {"exaone4", re_gpt2, 0, 0, 0},
    {"llama3", re_llama3, 1, 1, 0},
    {"llama-v3", re_llama3, 1, 1, 0},
    {"llama-bpe", re_llama3, 1, 1, 0},
    {"falcon3", re_llama3, 1, 1, 0},
    {"falcon-h1", re_llama3, 1, 1, 0},
    {"pixtral", re_llama3, 1, 1, 0},
    {"midm-2.0", re_llama3, 1, 1, 0},
    {"lfm2", re_llama3, 1, 1, 0},
    {"jina-v5-nano", re_llama3, 1, 1, 0},
    {"dbrx", re_llama3, 0, 0, 0},
    {"smaug-bpe", re_llama3, 0, 0, 0},
    {"chatglm-bpe", re_llama3, 0, 0, 1},
    {"glm4", re_llama3, 1, 0, 1},
    {"glm5", re_llama3, 1, 0, 1},
    {"qwen2", re_qwen2, 0, 0, 0},
    {"deepseek-r1-qwen", re_qwen2, 0, 0, 0},
    {"kormo", re_qwen2, 0, 0, 0},
    {"f2llmv2", re_qwen2, 0, 0, 0},
    {"stablelm2", re_qwen2, 0, 0, 0},
    {"megrez", re_qwen2, 0, 0, 0},
    {"hunyuan", re_qwen2, 0, 0, 0},
    {"solar-open", re_qwen2, 0, 0, 0},
    {"grok-2", re_qwen2, 0, 0, 0},
    {"qwen35", re_qwen35, 0, 0, 0},
    {"starcoder", re_starcoder, 0, 0, 0},
    {"refact", re_starcoder, 0, 0, 0},
    {"command-r", re_starcoder, 0, 0, 0},
    {"smollm", re_starcoder, 0, 0, 0},
    {"codeshell", re_starcoder, 0, 0, 0},
    {"exaone", re_starcoder, 0, 0, 0},
    {"minerva-7b", re_starcoder, 0, 0, 0},
    {"mellum2", re_starcoder, 0, 0, 0},
    {"falcon", re_falcon, 0, 0, 0},
    {"deepseek-llm", re_deepseek_llm, 0, 0, 0},
    {"deepseek-coder", re_deepseek_coder, 0, 0, 0},
    {"deepseek-v3", re_deepseek3, 0, 0, 0},
    {"hunyuan-dense", re_deepseek3, 0, 0, 0},
    {"joyai-llm", re_deepseek3, 0, 0, 0},
    {"hy_v4", re_deepseek3, 0, 0, 0},
    {"gpt-4o", re_gpt4o, 0, 0, 0},
    {"llama4", re_gpt4o, 0, 0, 0},
    {"kanana2", re_gpt4o, 0, 0, 0},
    {"talkie", re_gpt4o, 0, 0, 0},
    {"minimax-m2", re_gpt4o, 0, 0, 0},
    {"tekken", re_tekken, 1, 1, 0},
    {"bloom", re_bloom, 0, 0, 0},
    {"poro-chat", re_bloom, 0, 0, 0},
    {"gpt3-finnish", re_bloom, 0, 0, 0},
    {"viking", re_viking, 0, 0, 0},
    {"seed-coder", re_seed_coder, 0, 0, 0},
    {"minicpm5", re_minicpm5, 1, 0, 0},
    {"laguna", re_laguna, 0, 0, 0},
};

static int compile_regexes(exo_tokenizer *t, const char *const *list)
{
    for (int i = 0; list[i]; i++) {
        if (t->n_re == MAX_REGEXES) return exo__error_set(EXO_ENOTSUP, "tokenizer: too many pre-tokenizer regexes");
        int err;
        PCRE2_SIZE off;
        /* MATCH_INVALID_UTF: invalid bytes never match (they stay in gap pieces);
         * DOLLAR_ENDONLY: '$' means the end of the piece, as in ECMAScript. */
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)list[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_DOLLAR_ENDONLY, &err,
                                       &off, NULL);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(err, msg, sizeof msg);
            return exo__error_set(EXO_ENOTSUP, "tokenizer: regex %d of pre-tokenizer '%s' does not compile at %zu: %s",
                                 i, t->pre, (size_t)off, (const char *)msg);
        }
        pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
        t->re[t->n_re++] = re;
    }
    return 0;
}

/* ---- loading ------------------------------------------------------------------------- */

static int read_num_array(const exo_gguf *g, const char *key, uint64_t need, const void **data)
{
    *data = NULL;
    int64_t ki = exo__gguf_find_key(g, key);
    if (ki < 0) return 0;
    int et;
    uint64_t n;
    if (exo__gguf_get_arr(g, key, &et, &n) || (et != EXO_GGUF_INT32 && et != EXO_GGUF_FLOAT32))
        return exo__error_set(EXO_EFORMAT, "tokenizer: %s must be an int32 or float32 array", key);
    if (n < need)
        return exo__error_set(EXO_EFORMAT, "tokenizer: %s has %llu entries for %llu tokens", key,
                             (unsigned long long)n, (unsigned long long)need);
    *data = exo__gguf_arr_data(g, ki);
    return *data ? 0 : EXO_EFORMAT;
}

static int32_t get_id(exo_tokenizer *t, const exo_gguf *g, const char *key, int32_t dflt)
{
    if (exo__gguf_find_key(g, key) < 0) return dflt;
    int64_t v;
    if (exo__gguf_get_i64(g, key, &v) || v < 0 || v >= t->n_vocab) {
        warn(t, "%s is not a token id in [0, %d); ignored", key, t->n_vocab);
        return dflt;
    }
    return (int32_t)v;
}

static bool get_flag(exo_tokenizer *t, const exo_gguf *g, const char *key, bool dflt)
{
    if (exo__gguf_find_key(g, key) < 0) return dflt;
    bool v;
    if (exo__gguf_get_bool(g, key, &v)) {
        warn(t, "%s is not a bool; ignored", key);
        return dflt;
    }
    return v;
}

static int32_t find_name(const exo_tokenizer *t, const char *const *names)
{
    for (int i = 0; names[i]; i++) {
        int32_t id = lookup(t, names[i], strlen(names[i]));
        if (id >= 0) return id;
    }
    return -1;
}

/* Parses "<0xNN>" into a byte; -1 when text is anything else. */
static int parse_byte_token(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        int c = (unsigned char)s[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

/* The bytes token id decodes to, written at out (capacity >= 4 * text_len + 1). */
static size_t make_piece(const exo_tokenizer *t, int32_t id, char *out)
{
    const struct token *tk = &t->tokens[id];
    const char *s = t->text + tk->text_off;
    size_t n = tk->text_len, o = 0;
    if (tk->attr & (A_CONTROL | A_UNKNOWN | A_USER_DEFINED)) {
        memcpy(out, s, n);
        return n;
    }
    if (tk->attr & A_BYTE) {
        int b = parse_byte_token(s, n);
        if (b < 0) {
            memcpy(out, s, n);
            return n;
        }
        out[0] = (char)b;
        return 1;
    }
    if (!(tk->attr & A_NORMAL)) return 0; /* UNUSED / UNDEFINED: nothing, as llama.cpp */
    if (t->kind == KIND_SPM) {
        for (size_t i = 0; i < n;) {
            if (i + 3 <= n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                out[o++] = ' ';
                i += 3;
            } else {
                out[o++] = s[i++];
            }
        }
        return o;
    }
    /* BPE: undo the byte alphabet; a char outside it is kept as it is. */
    for (size_t i = 0; i < n;) {
        const uint8_t *u = (const uint8_t *)s + i;
        int k = utf8_char(u, n - i);
        if (k <= 0) {
            out[o++] = s[i++];
            continue;
        }
        uint32_t cp = k == 1 ? u[0] : k == 2 ? ((uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F)) : 0x110000;
        int b = cp_to_byte(cp);
        if (b >= 0) {
            out[o++] = (char)b;
        } else {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k;
        }
        i += (size_t)k;
    }
    return o;
}

static int load_vocab(exo_tokenizer *t, const exo_gguf *g)
{
    const char *key = "tokenizer.ggml.tokens";
    int64_t ki = exo__gguf_find_key(g, key);
    int et;
    uint64_t n;
    if (ki < 0) return exo__error_set(EXO_EFORMAT, "tokenizer: no %s in the file", key);
    if (exo__gguf_get_arr(g, key, &et, &n) || et != EXO_GGUF_STRING)
        return exo__error_set(EXO_EFORMAT, "tokenizer: %s must be a string array", key);
    if (n < 1 || n > MAX_VOCAB)
        return exo__error_set(EXO_EFORMAT, "tokenizer: %llu tokens (expected 1..%d)", (unsigned long long)n, MAX_VOCAB);
    t->n_vocab = (int32_t)n;

    const void *scores = NULL, *types = NULL;
    int rc = read_num_array(g, "tokenizer.ggml.scores", n, &scores);
    if (rc) return rc;
    int score_type = 0;
    if (scores) exo__gguf_get_arr(g, "tokenizer.ggml.scores", &score_type, NULL);
    rc = read_num_array(g, "tokenizer.ggml.token_type", n, &types);
    if (rc) return rc;
    int types_type = 0;
    if (types) exo__gguf_get_arr(g, "tokenizer.ggml.token_type", &types_type, NULL);
    if (types && types_type != EXO_GGUF_INT32)
        return exo__error_set(EXO_EFORMAT, "tokenizer: tokenizer.ggml.token_type must be an int32 array");

    t->tokens = calloc(n, sizeof *t->tokens);
    if (!t->tokens) return oom();
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (exo__gguf_arr_str(g, ki, i, &s, &len)) return EXO_EFORMAT;
        total += len;
    }
    if (total >= UINT32_MAX / 4) return exo__error_set(EXO_ENOMEM, "tokenizer: vocabulary text too large");
    t->text = malloc(total + 1);
    if (!t->text) return oom();

    uint64_t cap = pow2_at_least(2 * n);
    t->index = malloc(cap * sizeof *t->index);
    if (!t->index) return oom();
    memset(t->index, 0xff, cap * sizeof *t->index);
    t->index_mask = cap - 1;

    size_t off = 0;
    int n_bad_types = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        exo__gguf_arr_str(g, ki, i, &s, &len);
        struct token *tk = &t->tokens[i];
        memcpy(t->text + off, s, len);
        tk->text_off = (uint32_t)off;
        tk->text_len = (uint32_t)len;
        off += len;
        if (scores) {
            if (score_type == EXO_GGUF_FLOAT32) {
                memcpy(&tk->score, (const char *)scores + 4 * i, 4);
            } else {
                int32_t v;
                memcpy(&v, (const char *)scores + 4 * i, 4);
                tk->score = (float)v;
            }
            if (tk->score != tk->score) tk->score = -1e30f; /* NaN would break the heap order */
        }
        int32_t type = EXO_TOKEN_NORMAL;
        if (types) memcpy(&type, (const char *)types + 4 * i, 4);
        if (type < EXO_TOKEN_UNDEFINED || type > EXO_TOKEN_BYTE) {
            type = EXO_TOKEN_UNDEFINED;
            n_bad_types++;
        }
        tk->type = (int8_t)type;
        static const uint16_t attr_of[] = {A_UNDEFINED, A_NORMAL,  A_UNKNOWN, A_CONTROL,
                                           A_USER_DEFINED, A_UNUSED, A_BYTE};
        tk->attr = attr_of[type];
        if (len == 0) continue; /* an empty token can never be matched */
        /* later duplicates win, as in llama.cpp's map */
        uint64_t h = hash_bytes(s, len) & t->index_mask;
        for (;;) {
            int32_t id = t->index[h];
            if (id < 0 || (t->tokens[id].text_len == len && memcmp(t->text + t->tokens[id].text_off, s, len) == 0)) {
                t->index[h] = (int32_t)i;
                break;
            }
            h = (h + 1) & t->index_mask;
        }
    }
    if (n_bad_types) warn(t, "%d token types outside 0..6 read as undefined", n_bad_types);
    return 0;
}

static int load_merges(exo_tokenizer *t, const exo_gguf *g)
{
    const char *key = "tokenizer.ggml.merges";
    int64_t ki = exo__gguf_find_key(g, key);
    int et;
    uint64_t n;
    if (ki < 0) return exo__error_set(EXO_EFORMAT, "tokenizer: BPE model without %s", key);
    if (exo__gguf_get_arr(g, key, &et, &n) || et != EXO_GGUF_STRING)
        return exo__error_set(EXO_EFORMAT, "tokenizer: %s must be a string array", key);
    if (n > MAX_MERGES) return exo__error_set(EXO_EFORMAT, "tokenizer: %llu merges (limit %d)", (unsigned long long)n, MAX_MERGES);
    uint64_t cap = pow2_at_least(2 * n + 2);
    t->merges = malloc(cap * sizeof *t->merges);
    if (!t->merges) return oom();
    for (uint64_t i = 0; i < cap; i++) t->merges[i].key = EMPTY_KEY;
    t->merge_mask = cap - 1;

    char *buf = NULL;
    size_t buf_cap = 0;
    uint64_t skipped = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (exo__gguf_arr_str(g, ki, i, &s, &len)) {
            free(buf);
            return EXO_EFORMAT;
        }
        /* "left right", split at the first space after the first byte (a left
         * part may itself be a space in some vocabularies). */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp) {
            skipped++;
            continue;
        }
        size_t ln = (size_t)(sp - s), rn = len - ln - 1;
        int32_t left = lookup(t, s, ln), right = lookup(t, sp + 1, rn);
        if (exo_grow(&buf, &buf_cap, ln + rn, 1)) {
            free(buf);
            return oom();
        }
        memcpy(buf, s, ln);
        memcpy(buf + ln, sp + 1, rn);
        int32_t result = lookup(t, buf, ln + rn);
        if (left < 0 || right < 0 || result < 0) {
            skipped++;
            continue;
        }
        uint64_t k = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
        uint64_t h = hash_pair(k) & t->merge_mask;
        while (t->merges[h].key != EMPTY_KEY && t->merges[h].key != k) h = (h + 1) & t->merge_mask;
        if (t->merges[h].key == k) continue; /* the first (best-ranked) entry wins */
        t->merges[h].key = k;
        t->merges[h].rank = (int32_t)i;
        t->merges[h].result = result;
    }
    free(buf);
    if (skipped) warn(t, "%llu of %llu merges skipped (malformed or naming unknown tokens)", (unsigned long long)skipped,
                      (unsigned long long)n);
    return 0;
}

/* End-of-generation and related tokens, found by metadata key or by name as
 * llama.cpp does (tokenizer.json does not mark them). */
static void find_special_ids(exo_tokenizer *t, const exo_gguf *g)
{
    static const char *const eot_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                                            "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
                                            "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
                                            "<end_of_utterance>", NULL};
    static const char *const eom_names[] = {"<|eom_id|>", NULL};
    static const char *const fim_pad_names[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
    static const char *const fim_rep_names[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
                                                NULL};
    static const char *const fim_sep_names[] = {"<|file_sep|>", NULL};
    static const char *const eog_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
                                            "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>",
                                            "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
                                            "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
                                            "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
                                            "[e~[", NULL};

    int32_t eot = get_id(t, g, "tokenizer.ggml.eot_token_id", -1);
    if (eot < 0) eot = find_name(t, eot_names);
    int32_t eom = get_id(t, g, "tokenizer.ggml.eom_token_id", -1);
    if (eom < 0) eom = find_name(t, eom_names);
    int32_t fim[3] = {get_id(t, g, "tokenizer.ggml.fim_pad_token_id", -1),
                      get_id(t, g, "tokenizer.ggml.fim_rep_token_id", -1),
                      get_id(t, g, "tokenizer.ggml.fim_sep_token_id", -1)};
    if (fim[0] < 0) fim[0] = find_name(t, fim_pad_names);
    if (fim[1] < 0) fim[1] = find_name(t, fim_rep_names);
    if (fim[2] < 0) fim[2] = find_name(t, fim_sep_names);
    t->eot = eot;

    /* Tokens that end generation are control tokens whatever the file says. */
    int32_t marks[] = {eot, eom, fim[0], fim[1], fim[2], t->eos};
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++) {
        if (marks[i] < 0) continue;
        if (i < 5) t->tokens[marks[i]].attr |= A_CONTROL;
        t->tokens[marks[i]].attr |= A_EOG;
    }
    for (int i = 0; eog_names[i]; i++) {
        int32_t id = lookup(t, eog_names[i], strlen(eog_names[i]));
        if (id >= 0) t->tokens[id].attr |= A_EOG | A_CONTROL;
    }
    /* gpt-oss (harmony): <|end|> ends a message, not the generation. */
    int32_t end = lookup(t, "<|end|>", 7);
    if (end >= 0 && ((lookup(t, "<|return|>", 10) >= 0 && lookup(t, "<|call|>", 8) >= 0) ||
                     (lookup(t, "<|calls|>", 9) >= 0 && lookup(t, "<|flush|>", 9) >= 0))) {
        t->tokens[end].attr = (uint16_t)((t->tokens[end].attr & ~(A_EOG | A_CONTROL)) | A_USER_DEFINED);
        if (t->eot == end) t->eot = -1;
    }
    for (const char *const *nm = (const char *const[]){"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>", NULL};
         *nm; nm++) {
        int32_t id = lookup(t, *nm, strlen(*nm));
        if (id >= 0) t->tokens[id].attr = A_USER_DEFINED;
    }
    /* Gemma 4 and PLaMo have an ordinary </s>. */
    int32_t s_end = lookup(t, "</s>", 4);
    if (s_end >= 0 && s_end != t->eos &&
        (lookup(t, "<|tool_response>", 16) >= 0 || lookup(t, "<|plamo:eos|>", 13) >= 0)) {
        t->tokens[s_end].attr = (uint16_t)((t->tokens[s_end].attr & ~(A_EOG | A_CONTROL)) | A_NORMAL);
    }

    /* Phi-3 strips whitespace after its special tokens. */
    const char *name;
    size_t name_len;
    if (exo__gguf_get_str(g, "general.name", &name, &name_len) == 0) {
        char low[128];
        size_t m = name_len < sizeof low - 1 ? name_len : sizeof low - 1;
        for (size_t i = 0; i < m; i++) low[i] = (char)tolower((unsigned char)name[i]);
        low[m] = 0;
        if (strstr(low, "phi-3") || strstr(low, "phi3")) {
            for (int32_t id = 0; id < t->n_vocab; id++)
                if (t->tokens[id].attr & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN)) t->tokens[id].attr |= A_RSTRIP;
            for (const char *const *nm = (const char *const[]){"<unk>", "<s>", "<|endoftext|>", NULL}; *nm; nm++) {
                int32_t id = lookup(t, *nm, strlen(*nm));
                if (id >= 0) t->tokens[id].attr &= (uint16_t)~A_RSTRIP;
            }
            if (s_end >= 0) t->tokens[s_end].attr |= A_RSTRIP;
        }
    }
}

struct spec_sort {
    uint32_t len;
    int32_t id;
};

static int spec_cmp(const void *a, const void *b)
{
    const struct spec_sort *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int build_specials(exo_tokenizer *t)
{
    int n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if ((t->tokens[id].attr & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN)) && t->tokens[id].text_len) n++;
    if (!n) return 0;
    struct spec_sort *tmp = malloc((size_t)n * sizeof *tmp);
    t->specials = malloc((size_t)n * sizeof *t->specials);
    if (!tmp || !t->specials) {
        free(tmp);
        return oom();
    }
    int k = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const struct token *tk = &t->tokens[id];
        if ((tk->attr & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN)) && tk->text_len) tmp[k++] = (struct spec_sort){tk->text_len, id};
    }
    qsort(tmp, (size_t)n, sizeof *tmp, spec_cmp);
    for (int i = 0; i < n; i++) {
        t->specials[i] = tmp[i].id;
        if (!(t->tokens[tmp[i].id].attr & (A_CONTROL | A_UNKNOWN))) t->has_user_defined = true;
    }
    t->n_specials = n;
    free(tmp);
    return 0;
}

static int build_pieces(exo_tokenizer *t)
{
    size_t total = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) total += t->tokens[id].text_len;
    /* a piece is never longer than its text (escapes and alphabet chars shrink) */
    t->piece = malloc(total + 1);
    if (!t->piece) return oom();
    size_t off = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t n = make_piece(t, id, t->piece + off);
        t->tokens[id].piece_off = (uint32_t)off;
        t->tokens[id].piece_len = (uint32_t)n;
        off += n;
    }
    return 0;
}

static void find_byte_tokens(exo_tokenizer *t)
{
    int missing = 0;
    for (int b = 0; b < 256; b++) {
        char buf[8];
        int32_t id;
        if (t->kind == KIND_BPE) {
            id = lookup(t, buf, utf8_put(buf, byte_to_cp(b)));
        } else {
            snprintf(buf, sizeof buf, "<0x%02X>", b);
            id = lookup(t, buf, 6);
            if (id < 0) {
                buf[0] = (char)b;
                id = lookup(t, buf, 1);
            }
        }
        t->byte_token[b] = id;
        if (id < 0) missing++;
    }
    if (missing)
        warn(t, "%d of 256 bytes have no token (%s); text needing them %s", missing,
             t->kind == KIND_BPE ? "byte alphabet" : "<0xNN>",
             t->kind == KIND_BPE ? "loses those bytes" : "encodes as the unknown token");
}

static int load_from(exo_tokenizer *t, const exo_gguf *g)
{
    const char *s;
    size_t n;
    if (exo__gguf_get_str(g, "tokenizer.ggml.model", &s, &n))
        return exo__error_set(EXO_EFORMAT, "tokenizer: no tokenizer.ggml.model string in the file");
    if (n == 4 && !memcmp(s, "gpt2", 4)) t->kind = KIND_BPE;
    else if (n == 5 && !memcmp(s, "llama", 5)) t->kind = KIND_SPM;
    else return exo__error_set(EXO_ENOTSUP, "tokenizer: model '%.*s' is not supported (gpt2 and llama are)", (int)(n > 64 ? 64 : n), s);
    memcpy(t->model, s, n);

    int rc = load_vocab(t, g);
    if (rc) return rc;

    const struct pre_def *pre = NULL;
    if (t->kind == KIND_BPE) {
        if (exo__gguf_get_str(g, "tokenizer.ggml.pre", &s, &n) == 0) {
            for (size_t i = 0; i < sizeof pre_defs / sizeof pre_defs[0]; i++)
                if (strlen(pre_defs[i].name) == n && !memcmp(pre_defs[i].name, s, n)) pre = &pre_defs[i];
            snprintf(t->pre, sizeof t->pre, "%.*s", (int)(n < sizeof t->pre ? n : sizeof t->pre - 1), s);
            if (!pre) {
                warn(t, "unknown pre-tokenizer '%s'; using the GPT-2 regex (tokens may differ from the model's)", t->pre);
                pre = &pre_defs[1];
            }
        } else {
            warn(t, "no tokenizer.ggml.pre; using llama.cpp's default pre-tokenizer");
            pre = &pre_defs[0];
            snprintf(t->pre, sizeof t->pre, "default");
        }
        rc = compile_regexes(t, pre->regexes);
        if (rc) return rc;
        t->ignore_merges = pre->ignore_merges;
        rc = load_merges(t, g);
        if (rc) return rc;
    }

    /* Special ids: SentencePiece's conventional defaults, then the file's. */
    bool spm = t->kind == KIND_SPM;
    int32_t dflt_bos = spm && t->n_vocab > 1 ? 1 : -1, dflt_eos = spm && t->n_vocab > 2 ? 2 : -1;
    t->bos = get_id(t, g, "tokenizer.ggml.bos_token_id", dflt_bos);
    t->eos = get_id(t, g, "tokenizer.ggml.eos_token_id", dflt_eos);
    t->unk = get_id(t, g, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1);
    if (pre && pre->no_bos) t->bos = -1;
    t->add_bos = get_flag(t, g, "tokenizer.ggml.add_bos_token", spm || (pre && pre->add_bos));
    if (t->bos < 0) t->add_bos = false;
    t->add_space_prefix = spm && get_flag(t, g, "tokenizer.ggml.add_space_prefix", true);
    if (t->add_space_prefix && exo__gguf_get_str(g, "tokenizer.exo.prefix_scheme", &s, &n) == 0) {
        t->prefix_unless_space = true;
        t->prefix_first_only = n == 5 && !memcmp(s, "first", 5);
    }

    find_special_ids(t, g);
    find_byte_tokens(t);
    rc = build_specials(t);
    if (rc) return rc;
    return build_pieces(t);
}

int exo_tokenizer_load(const char *gguf_path, exo_tokenizer **out)
{
    if (!gguf_path || !out) return exo__error_set(EXO_EINVAL, "exo_tokenizer_load: NULL argument");
    *out = NULL;
    exo_gguf *g;
    int rc = exo__model_file_open(gguf_path, EXO_MODEL_OPEN_METADATA, 0, -1, 1, 1, &g);
    if (rc) return rc;
    exo_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        exo__gguf_close(g);
        return oom();
    }
    t->bos = t->eos = t->eot = t->unk = -1;
    rc = load_from(t, g);
    exo__gguf_close(g);
    if (rc) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", exo_last_error());
        exo_tokenizer_free(t);
        return exo__error_set(rc, "%s (%s)", msg, gguf_path);
    }
    *out = t;
    return 0;
}

void exo_tokenizer_free(exo_tokenizer *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_re; i++) pcre2_code_free(t->re[i]);
    free(t->tokens);
    free(t->text);
    free(t->piece);
    free(t->index);
    free(t->merges);
    free(t->specials);
    free(t);
}

/* ---- encoding ------------------------------------------------------------------------ */

struct sym {
    int32_t id;          /* BPE: current token; SPM: unused */
    int32_t prev, next;  /* -1 at the ends */
    uint32_t start, len; /* SPM: bytes in the escaped text (len 0 = merged away) */
};

struct bigram {
    float score;  /* SPM: higher first */
    int32_t rank; /* BPE: lower first */
    int32_t left, right;
    int32_t a, b; /* BPE: ids when queued; SPM: a = merged length */
    int32_t result; /* BPE: the merged token */
};

struct frag {
    size_t off, len;
    int32_t id; /* -1: text */
};

struct enc {
    const exo_tokenizer *t;
    int32_t *out;
    int cap, n;
    struct sym *sym;
    size_t sym_cap;
    struct bigram *heap;
    size_t heap_n, heap_cap;
    char *buf;
    size_t buf_cap;
    struct frag *frags, *frags2;
    size_t frags_cap, frags2_cap;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
};

static void emit(struct enc *e, int32_t id)
{
    if (e->n < e->cap) e->out[e->n] = id;
    e->n++;
}

static bool before(const exo_tokenizer *t, const struct bigram *x, const struct bigram *y)
{
    if (t->kind == KIND_BPE) {
        if (x->rank != y->rank) return x->rank < y->rank;
    } else {
        if (x->score != y->score) return x->score > y->score;
    }
    return x->left < y->left;
}

static int heap_push(struct enc *e, struct bigram b)
{
    if (exo_grow(&e->heap, &e->heap_cap, e->heap_n + 1, sizeof *e->heap)) return -1;
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(e->t, &b, &e->heap[p])) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = b;
    return 0;
}

static struct bigram heap_pop(struct enc *e)
{
    struct bigram top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(e->t, &e->heap[c + 1], &e->heap[c])) c++;
        if (!before(e->t, &e->heap[c], &last)) break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n) e->heap[i] = last;
    return top;
}

static int bpe_pair(struct enc *e, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return 0;
    int32_t rank, result;
    if (!merge_find(e->t, e->sym[l].id, e->sym[r].id, &rank, &result)) return 0;
    return heap_push(e, (struct bigram){0, rank, l, r, e->sym[l].id, e->sym[r].id, result});
}

/* One pre-tokenized word through the merges. */
static int bpe_word(struct enc *e, const char *s, size_t n)
{
    const exo_tokenizer *t = e->t;
    if (n == 0) return 0;
    if (n == 1) {
        int32_t id = t->byte_token[(uint8_t)s[0]];
        if (id >= 0) emit(e, id);
        return 0;
    }
    if (t->ignore_merges) {
        if (exo_grow(&e->buf, &e->buf_cap, 2 * n, 1)) return oom();
        size_t m = 0;
        for (size_t i = 0; i < n; i++) m += utf8_put(e->buf + m, byte_to_cp((uint8_t)s[i]));
        int32_t id = lookup(t, e->buf, m);
        if (id >= 0) {
            emit(e, id);
            return 0;
        }
    }
    if (n > INT32_MAX || exo_grow(&e->sym, &e->sym_cap, n, sizeof *e->sym)) return oom();
    for (size_t i = 0; i < n; i++)
        e->sym[i] = (struct sym){t->byte_token[(uint8_t)s[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, 0, 1};
    e->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (bpe_pair(e, (int32_t)i, (int32_t)i + 1)) return oom();
    while (e->heap_n) {
        struct bigram b = heap_pop(e);
        struct sym *L = &e->sym[b.left], *R = &e->sym[b.right];
        /* stale if either side died or changed since it was queued */
        if (!L->len || !R->len || L->next != b.right || L->id != b.a || R->id != b.b) continue;
        L->id = b.result;
        L->next = R->next;
        if (R->next >= 0) e->sym[R->next].prev = b.left;
        R->len = 0;
        if (bpe_pair(e, L->prev, b.left) || bpe_pair(e, b.left, L->next)) return oom();
    }
    for (int32_t i = 0; i >= 0; i = e->sym[i].next)
        if (e->sym[i].id >= 0) emit(e, e->sym[i].id); /* a byte without a token is dropped, as llama.cpp */
    return 0;
}

static int regex_error(int rc)
{
    PCRE2_UCHAR msg[160];
    pcre2_get_error_message(rc, msg, sizeof msg);
    return exo__error_set(rc == PCRE2_ERROR_NOMEMORY ? EXO_ENOMEM : EXO_ENOTSUP, "tokenizer: pre-tokenizer regex failed: %s",
                         (const char *)msg);
}

/* Applies regex `level` to s[0..n): matches and the gaps between them are the
 * pieces handed to the next level (or to BPE after the last one). An empty
 * match only marks a split point. */
static int split(struct enc *e, const char *s, size_t n, int level)
{
    const exo_tokenizer *t = e->t;
    if (level == t->n_re) return bpe_word(e, s, n);
    const pcre2_code *re = t->re[level];
    size_t pos = 0, prev = 0;
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, 0, e->md, e->mctx);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !e->jit_stack) {
            /* deep backtracking on a long piece: retry with a large JIT stack */
            e->jit_stack = pcre2_jit_stack_create(32 << 10, 256 << 20, NULL);
            e->mctx = pcre2_match_context_create(NULL);
            if (!e->jit_stack || !e->mctx) return oom();
            pcre2_jit_stack_assign(e->mctx, NULL, e->jit_stack);
            continue;
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) return regex_error(rc);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t a = ov[0], b = ov[1];
        if (a > prev) {
            int r = split(e, s + prev, a - prev, level + 1);
            if (r) return r;
        }
        if (b > a) {
            int r = split(e, s + a, b - a, level + 1);
            if (r) return r;
            pos = b;
        } else {
            pos = a + char_len(s + a, n - a);
        }
        prev = b > a ? b : a;
    }
    if (prev < n) return split(e, s + prev, n - prev, level + 1);
    return 0;
}

static int spm_pair(struct enc *e, const char *text, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) return 0;
    const exo_tokenizer *t = e->t;
    uint32_t len = e->sym[l].len + e->sym[r].len;
    int32_t id = lookup(t, text + e->sym[l].start, len);
    if (id < 0 || (t->tokens[id].attr & (A_CONTROL | A_UNKNOWN | A_BYTE))) return 0;
    return heap_push(e, (struct bigram){t->tokens[id].score, 0, l, r, (int32_t)len, 0, id});
}

/* One text fragment, SentencePiece style: merge the best-scoring adjacent pair
 * whose concatenation is a token until none is left. Pieces never form
 * control, unknown or byte tokens from plain text. */
static int spm_fragment(struct enc *e, const char *s, size_t n, bool prefix)
{
    const exo_tokenizer *t = e->t;
    if (n > MAX_TEXT_LEN || exo_grow(&e->buf, &e->buf_cap, 3 * n + 3, 1)) return oom();
    char *text = e->buf;
    size_t m = 0;
    if (prefix) {
        memcpy(text, "\xE2\x96\x81", 3);
        m = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(text + m, "\xE2\x96\x81", 3);
            m += 3;
        } else {
            text[m++] = s[i];
        }
    }
    if (m == 0) return 0;
    if (exo_grow(&e->sym, &e->sym_cap, m, sizeof *e->sym)) return oom();
    int32_t ns = 0;
    for (size_t i = 0; i < m;) {
        size_t k = char_len(text + i, m - i);
        e->sym[ns] = (struct sym){-1, ns - 1, -1, (uint32_t)i, (uint32_t)k};
        if (ns) e->sym[ns - 1].next = ns;
        ns++;
        i += k;
    }
    e->heap_n = 0;
    for (int32_t i = 0; i + 1 < ns; i++)
        if (spm_pair(e, text, i, i + 1)) return oom();
    while (e->heap_n) {
        struct bigram b = heap_pop(e);
        struct sym *L = &e->sym[b.left], *R = &e->sym[b.right];
        if (!L->len || !R->len || L->len + R->len != (uint32_t)b.a) continue;
        L->len += R->len;
        R->len = 0;
        L->next = R->next;
        if (R->next >= 0) e->sym[R->next].prev = b.left;
        if (spm_pair(e, text, L->prev, b.left) || spm_pair(e, text, b.left, L->next)) return oom();
    }
    for (int32_t i = 0; i >= 0; i = e->sym[i].next) {
        const struct sym *y = &e->sym[i];
        int32_t id = lookup(t, text + y->start, y->len);
        if (id >= 0 && !(t->tokens[id].attr & (A_CONTROL | A_UNKNOWN | A_BYTE))) {
            emit(e, id);
            continue;
        }
        for (uint32_t j = 0; j < y->len; j++) {
            int32_t bt = t->byte_token[(uint8_t)text[y->start + j]];
            if (bt < 0) bt = t->unk;
            if (bt >= 0) emit(e, bt);
        }
    }
    return 0;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

/* Whether [at, end) overlaps one of the n_plain ranges of plain (byte offsets
 * start, end pairs): text where control tokens are not recognised. */
static bool in_plain(const size_t *plain, int n_plain, size_t at, size_t end)
{
    for (int i = 0; i < n_plain; i++)
        if (plain[2 * i] < end && at < plain[2 * i + 1]) return true;
    return false;
}

/* Cuts special tokens out of the text: each candidate, longest first, splits
 * every text fragment it occurs in (llama.cpp's order, so the same text gives
 * the same tokens). A control token is not recognised where it overlaps a
 * plain range: a chat message's content, inside one pass over the whole
 * prompt so that everything else tokenizes as the whole string would. */
static int partition(struct enc *e, const char *text, size_t len, int parse_special, const size_t *plain, int n_plain,
                     size_t *n_frags)
{
    const exo_tokenizer *t = e->t;
    if (exo_grow(&e->frags, &e->frags_cap, 1, sizeof *e->frags)) return oom();
    e->frags[0] = (struct frag){0, len, -1};
    size_t nf = 1;
    if (parse_special || t->has_user_defined) {
        for (int k = 0; k < t->n_specials; k++) {
            int32_t id = t->specials[k];
            const struct token *tk = &t->tokens[id];
            bool control = (tk->attr & (A_CONTROL | A_UNKNOWN)) != 0;
            if (!parse_special && control) continue;
            if (tk->text_len > len) continue;
            const char *needle = t->text + tk->text_off;
            size_t nl = tk->text_len, nf2 = 0;
            for (size_t f = 0; f < nf; f++) {
                struct frag fr = e->frags[f];
                /* worst case this fragment splits into text, token, text, ... */
                size_t most = fr.id < 0 ? 2 * (fr.len / nl) + 1 : 1;
                if (exo_grow(&e->frags2, &e->frags2_cap, nf2 + most + (nf - f), sizeof *e->frags2)) return oom();
                if (fr.id >= 0) {
                    e->frags2[nf2++] = fr;
                    continue;
                }
                size_t pos = fr.off, from = fr.off, end = fr.off + fr.len;
                for (;;) {
                    const char *hit = end - from >= nl ? memmem(text + from, end - from, needle, nl) : NULL;
                    if (!hit) break;
                    size_t at = (size_t)(hit - text);
                    if (control && in_plain(plain, n_plain, at, at + nl)) {
                        from = at + 1;
                        continue;
                    }
                    if (at > pos) e->frags2[nf2++] = (struct frag){pos, at - pos, -1};
                    e->frags2[nf2++] = (struct frag){at, nl, id};
                    pos = at + nl;
                    if (tk->attr & A_RSTRIP)
                        while (pos < end && is_space(text[pos])) pos++;
                    from = pos;
                }
                if (pos < end) e->frags2[nf2++] = (struct frag){pos, end - pos, -1};
            }
            struct frag *sw = e->frags;
            e->frags = e->frags2;
            e->frags2 = sw;
            size_t sc = e->frags_cap;
            e->frags_cap = e->frags2_cap;
            e->frags2_cap = sc;
            nf = nf2;
        }
    }
    *n_frags = nf;
    return 0;
}

/* Whether text starts with what a Metaspace turns into its marker (a space)
 * or with the marker itself. */
static bool spaced(const char *s, size_t n)
{
    return (n && s[0] == ' ') || (n >= 3 && !memcmp(s, "\xE2\x96\x81", 3));
}

int exo_tokenizer_encode(const exo_tokenizer *tok, const char *text, size_t len, int add_bos, int parse_special,
                         int32_t *out, int cap, int *n_out)
{
    return exo_tokenizer_encode_spans(tok, text, len, add_bos, parse_special, NULL, 0, out, cap, n_out);
}

int exo_tokenizer_encode_spans(const exo_tokenizer *tok, const char *text, size_t len, int add_bos, int parse_special,
                               const size_t *plain, int n_plain, int32_t *out, int cap, int *n_out)
{
    if (n_out) *n_out = 0;
    if (!tok || (!text && len) || (!out && cap > 0) || cap < 0 || !n_out || n_plain < 0 || (!plain && n_plain))
        return exo__error_set(EXO_EINVAL, "exo_tokenizer_encode: bad argument");
    for (int i = 0; i < n_plain; i++)
        if (plain[2 * i] > plain[2 * i + 1] || plain[2 * i + 1] > len)
            return exo__error_set(EXO_ERANGE, "exo_tokenizer_encode: plain range %d [%zu, %zu) is not inside the %zu "
                                              "bytes of text", i, plain[2 * i], plain[2 * i + 1], len);
    if (len > MAX_TEXT_LEN) return exo__error_set(EXO_ENOMEM, "exo_tokenizer_encode: text of %zu bytes is too long", len);
    if (add_bos < 0) add_bos = tok->add_bos;
    if (add_bos && tok->bos < 0) return exo__error_set(EXO_ENOTSUP, "exo_tokenizer_encode: this model has no BOS token");

    struct enc e = {.t = tok, .out = out, .cap = cap};
    int rc = 0;
    if (add_bos) emit(&e, tok->bos);
    size_t nf = 0;
    if (len) rc = partition(&e, text, len, parse_special, plain, n_plain, &nf);
    if (!rc && tok->kind == KIND_BPE && nf) {
        e.md = pcre2_match_data_create(1, NULL);
        if (!e.md) rc = exo__error_set(EXO_ENOMEM, "tokenizer: out of memory");
    }
    bool prev_special = true; /* SPM: a space is prefixed at the start and after each special token */
    for (size_t f = 0; f < nf && !rc; f++) {
        const struct frag *fr = &e.frags[f];
        if (fr->id >= 0) {
            emit(&e, fr->id);
            prev_special = true;
            continue;
        }
        if (tok->kind == KIND_BPE) rc = split(&e, text + fr->off, fr->len, 0);
        else rc = spm_fragment(&e, text + fr->off, fr->len,
                               tok->add_space_prefix && prev_special && !(tok->prefix_first_only && fr->off) &&
                                   !(tok->prefix_unless_space && spaced(text + fr->off, fr->len)));
        prev_special = false;
    }
    pcre2_match_data_free(e.md);
    pcre2_match_context_free(e.mctx);
    pcre2_jit_stack_free(e.jit_stack);
    free(e.sym);
    free(e.heap);
    free(e.buf);
    free(e.frags);
    free(e.frags2);
    if (rc) return rc;
    *n_out = e.n;
    if (e.n > cap)
        return exo__error_set(EXO_ERANGE, "exo_tokenizer_encode: %d tokens do not fit in %d", e.n, cap);
    return 0;
}

/* ---- decoding ------------------------------------------------------------------------ */

static int check_id(const exo_tokenizer *t, int32_t id, const char *fn)
{
    if (id < 0 || id >= t->n_vocab)
        return exo__error_set(EXO_EINVAL, "%s: token id %d is outside [0, %d)", fn, (int)id, (int)t->n_vocab);
    return 0;
}

/* The bytes token id contributes to decoded text: nothing for control tokens
 * unless special is set; SPM's prefixed space dropped from the first text
 * token (*started tracks that). */
static void render(const exo_tokenizer *t, int32_t id, int special, int32_t *started, const char **s, size_t *n)
{
    const struct token *tk = &t->tokens[id];
    *s = t->piece + tk->piece_off;
    *n = tk->piece_len;
    if (tk->attr & (A_CONTROL | A_UNKNOWN)) {
        if (!special) *n = 0;
        return;
    }
    if (!*started) {
        *started = 1;
        if (t->add_space_prefix && *n && **s == ' ') {
            (*s)++;
            (*n)--;
        }
    }
}

int exo_tokenizer_decode(const exo_tokenizer *tok, const int32_t *ids, int n_ids, int special, char *out,
                         size_t cap, size_t *out_len)
{
    if (out_len) *out_len = 0;
    if (!tok || (!ids && n_ids) || n_ids < 0 || (!out && cap) || !out_len)
        return exo__error_set(EXO_EINVAL, "exo_tokenizer_decode: bad argument");
    size_t total = 0;
    int32_t started = 0;
    for (int i = 0; i < n_ids; i++) {
        int rc = check_id(tok, ids[i], "exo_tokenizer_decode");
        if (rc) return rc;
        const char *s;
        size_t n;
        render(tok, ids[i], special, &started, &s, &n);
        if (n && total + n <= cap) memcpy(out + total, s, n);
        total += n;
    }
    *out_len = total;
    if (total > cap)
        return exo__error_set(EXO_ERANGE, "exo_tokenizer_decode: %zu bytes do not fit in %zu", total, cap);
    return 0;
}

static size_t put_replacement(char *out)
{
    memcpy(out, "\xEF\xBF\xBD", 3);
    return 3;
}

int exo_tokenizer_decode_stream(const exo_tokenizer *tok, exo_tokenizer_stream *st, int32_t id, int special,
                                char *out, size_t cap, size_t *out_len)
{
    if (out_len) *out_len = 0;
    if (!tok || !st || (!out && cap) || !out_len || st->n_pending < 0 || st->n_pending > 3)
        return exo__error_set(EXO_EINVAL, "exo_tokenizer_decode_stream: bad argument");
    int rc = check_id(tok, id, "exo_tokenizer_decode_stream");
    if (rc) return rc;
    const char *s;
    size_t n;
    int32_t started = st->started;
    render(tok, id, special, &started, &s, &n);
    size_t total = (size_t)st->n_pending + n;
    if (cap < 3 * total) {
        *out_len = 3 * total;
        return exo__error_set(EXO_ERANGE, "exo_tokenizer_decode_stream: needs %zu bytes of output space", 3 * total);
    }
    st->started = started;
    /* pending bytes, then the piece: one logical buffer, read through at() */
    uint8_t win[4];
    size_t np = (size_t)st->n_pending, o = 0, i = 0;
#define AT(k) ((k) < np ? st->pending[(k)] : (uint8_t)s[(k) - np])
    while (i < total) {
        size_t avail = total - i < 4 ? total - i : 4;
        for (size_t k = 0; k < avail; k++) win[k] = AT(i + k);
        int c = utf8_char(win, avail);
        if (c > 0) {
            memcpy(out + o, win, (size_t)c);
            o += (size_t)c;
            i += (size_t)c;
        } else if (c == 0) {
            break; /* an unfinished character: keep it for the next token */
        } else {
            o += put_replacement(out + o);
            i += (size_t)-c;
        }
    }
    uint8_t keep[4];
    size_t nk = total - i;
    for (size_t k = 0; k < nk; k++) keep[k] = AT(i + k);
#undef AT
    memcpy(st->pending, keep, nk);
    st->n_pending = (int32_t)nk;
    *out_len = o;
    return 0;
}

int exo_tokenizer_decode_stream_flush(const exo_tokenizer *tok, exo_tokenizer_stream *st, char *out, size_t cap,
                                      size_t *out_len)
{
    if (out_len) *out_len = 0;
    if (!tok || !st || (!out && cap) || !out_len)
        return exo__error_set(EXO_EINVAL, "exo_tokenizer_decode_stream_flush: bad argument");
    if (st->n_pending > 0) {
        if (cap < 3) {
            *out_len = 3;
            return exo__error_set(EXO_ERANGE, "exo_tokenizer_decode_stream_flush: needs 3 bytes of output space");
        }
        *out_len = put_replacement(out);
    }
    st->n_pending = 0;
    st->started = 0;
    return 0;
}

/* ---- accessors ----------------------------------------------------------------------- */

int exo_tokenizer_n_vocab(const exo_tokenizer *tok) { return tok ? tok->n_vocab : 0; }
int32_t exo_tokenizer_bos(const exo_tokenizer *tok) { return tok ? tok->bos : -1; }
int32_t exo_tokenizer_eos(const exo_tokenizer *tok) { return tok ? tok->eos : -1; }
int32_t exo_tokenizer_eot(const exo_tokenizer *tok) { return tok ? tok->eot : -1; }
int exo_tokenizer_add_bos(const exo_tokenizer *tok) { return tok ? tok->add_bos : 0; }
const char *exo_tokenizer_model(const exo_tokenizer *tok) { return tok ? tok->model : ""; }
const char *exo_tokenizer_pre(const exo_tokenizer *tok) { return tok ? tok->pre : ""; }
const char *exo_tokenizer_warning(const exo_tokenizer *tok) { return tok ? tok->warning : ""; }

int exo_tokenizer_is_eog(const exo_tokenizer *tok, int32_t id)
{
    return tok && id >= 0 && id < tok->n_vocab && (tok->tokens[id].attr & A_EOG) ? 1 : 0;
}

int exo_tokenizer_token_type(const exo_tokenizer *tok, int32_t id)
{
    return tok && id >= 0 && id < tok->n_vocab ? tok->tokens[id].type : -1;
}

int32_t exo_tokenizer_find(const exo_tokenizer *tok, const char *text, size_t len)
{
    if (!tok || !text) return -1;
    return lookup(tok, text, len);
}

int exo_tokenizer_token_piece(const exo_tokenizer *tok, int32_t id, const char **s, size_t *len)
{
    if (!tok || !s || !len) return exo__error_set(EXO_EINVAL, "exo_tokenizer_token_piece: NULL argument");
    int rc = check_id(tok, id, "exo_tokenizer_token_piece");
    if (rc) return rc;
    *s = tok->piece + tok->tokens[id].piece_off;
    *len = tok->tokens[id].piece_len;
    return 0;
}

int exo_tokenizer_token_text(const exo_tokenizer *tok, int32_t id, const char **s, size_t *len)
{
    if (!tok || !s || !len) return exo__error_set(EXO_EINVAL, "exo_tokenizer_token_text: NULL argument");
    int rc = check_id(tok, id, "exo_tokenizer_token_text");
    if (rc) return rc;
    *s = tok->text + tok->tokens[id].text_off;
    *len = tok->tokens[id].text_len;
    return 0;
}
