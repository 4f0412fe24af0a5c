/* test_safetensors.c: the safetensors header parser and the JSON reader.
 *
 * Valid images parse to exactly the tensors they declare; each way a header
 * can be wrong (length, JSON, entry keys, dtype, shape, offsets, overlap,
 * duplicate names, metadata) is refused with a message naming the problem;
 * the JSON reader decodes escapes and surrogate pairs and refuses what RFC
 * 8259 does not allow. The whole-folder path (logits, tokenizer) is
 * tests/lua/test_safetensors.lua. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "error.h"
#include "json.h"
#include "safetensors.h"

/* An image: the 8-byte length, header, then data_size bytes. Caller frees. */
static unsigned char *image(const char *header, size_t data_size, size_t *size)
{
    size_t n = strlen(header);
    *size = 8 + n + data_size;
    unsigned char *b = calloc(1, *size);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(b + 8, header, n);
    for (size_t i = 0; i < data_size; i++) b[8 + n + i] = (unsigned char)i;
    return b;
}

/* Parses header + data; expect NULL: must succeed, else must fail with a
 * message containing expect. */
static void parse_case(const char *header, size_t data_size, const char *expect)
{
    size_t size;
    unsigned char *b = image(header, data_size, &size);
    exo_st_file *f = (exo_st_file *)1;
    int rc = exo__safetensors_parse(b, size, "case", &f);
    if (!expect) {
        CHECK_MSG(rc == 0 && f, "%s: %s", header, exo_last_error());
    } else {
        CHECK_MSG(rc == EXO_EFORMAT && !f, "%s: rc %d", header, rc);
        CHECK_MSG(strstr(exo_last_error(), expect), "%s: message '%s' lacks '%s'", header, exo_last_error(), expect);
    }
    exo__safetensors_close(rc ? NULL : f);
    free(b);
}

static void test_valid(void)
{
    size_t size;
    unsigned char *b = image("{\"__metadata__\":{\"format\":\"pt\"},"
                             "\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[8,20]},"
                             "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}  ",
                             20, &size);
    exo_st_file *f;
    CHECK(exo__safetensors_parse(b, size, "valid", &f) == 0);
    CHECK(exo__safetensors_count(f) == 2);
    const exo_st_tensor *w = exo__safetensors_at(f, 0), *v = exo__safetensors_at(f, 1);
    CHECK(!strcmp(w->name, "w") && w->dtype == EXO_DTYPE_BF16 && w->n_dims == 2 && w->shape[0] == 2 &&
          w->shape[1] == 3 && w->size == 12);
    size_t data = size - 20;
    CHECK((const unsigned char *)w->data == b + data + 8);
    CHECK(!strcmp(v->name, "v") && v->dtype == EXO_DTYPE_F32 && v->size == 8 && (const unsigned char *)v->data == b + data);
    CHECK(exo__safetensors_at(f, 2) == NULL);
    exo__safetensors_close(f);
    free(b);
    /* Empty tensors, scalars, dtypes exo cannot load (they parse; loading says no). */
    parse_case("{\"z\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,0]},"
               "\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}}",
               8, NULL);
    parse_case("{}", 0, NULL);
}

static void test_invalid(void)
{
    /* The length word. */
    unsigned char small[7] = {0};
    exo_st_file *f;
    CHECK(exo__safetensors_parse(small, sizeof small, "short", &f) == EXO_EFORMAT && !f);
    unsigned char huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    CHECK(exo__safetensors_parse(huge, sizeof huge, "huge", &f) == EXO_EFORMAT && strstr(exo_last_error(), "header of"));
    unsigned char past[12] = {200, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    CHECK(exo__safetensors_parse(past, sizeof past, "past", &f) == EXO_EFORMAT && strstr(exo_last_error(), "header of"));

    parse_case("[]", 0, "JSON object");
    parse_case("{\"a\":1}", 0, "not an object");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "exactly dtype");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4, "exactly dtype");
    parse_case("{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype");
    parse_case("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "dimension 0");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "dimension 0");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "at most 8");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,4]}}", 4,
               "too many elements");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 8, "needs 8");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 4, "outside");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, "outside");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "[begin, end]");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, "overlap");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, "twice");
    parse_case("{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "name");
    parse_case("{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "name");
    parse_case("{\"__metadata__\":{\"k\":1}}", 0, "not a string");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", 4, "string key");
    parse_case("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "trailing");
}

static void json_case(const char *text, const char *expect)
{
    exo_json *j = (exo_json *)1;
    int rc = exo__json_parse(text, strlen(text), "json", &j);
    if (!expect) CHECK_MSG(rc == 0, "%s: %s", text, exo_last_error());
    else CHECK_MSG(rc != 0 && !j && strstr(exo_last_error(), expect), "%s: rc %d, '%s'", text, rc, exo_last_error());
    if (!rc) exo__json_free(j);
}

static void test_json(void)
{
    const char *text = "{\"s\": \"a\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\", \"n\": -12, \"f\": 2.5e3, "
                       "\"l\": [true, false, null], \"big\": 123456789012345678901234567890}";
    exo_json *j;
    CHECK(exo__json_parse(text, strlen(text), "json", &j) == 0);
    size_t len;
    const char *s = exo__json_str(j, exo__json_get(j, 0, "s"), &len);
    CHECK(s && len == 15 && !memcmp(s, "a\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80", 15));
    int64_t v;
    CHECK(exo__json_int(j, exo__json_get(j, 0, "n"), &v) && v == -12);
    CHECK(!exo__json_int(j, exo__json_get(j, 0, "f"), &v) && exo__json_num(j, exo__json_get(j, 0, "f")) == 2500);
    CHECK(!exo__json_int(j, exo__json_get(j, 0, "big"), &v));
    int32_t l = exo__json_get(j, 0, "l");
    CHECK(exo__json_count(j, l) == 3 && exo__json_kind(j, exo__json_first(j, l)) == EXO_JSON_TRUE);
    CHECK(exo__json_get(j, 0, "missing") == EXO_JSON_NONE && exo__json_get(j, l, "s") == EXO_JSON_NONE);
    exo__json_free(j);

    json_case(" [1, {\"a\": []}] ", NULL);
    json_case("01", "byte");
    json_case("1.", "decimal point");
    json_case("1e", "exponent");
    json_case("[1,]", "unexpected");
    json_case("{\"a\" 1}", "':'");
    json_case("\"\\x\"", "unknown escape");
    json_case("\"\\ud83d\"", "lone high surrogate");
    json_case("\"\\ude00\"", "lone low surrogate");
    json_case("\"a\nb\"", "control character");
    json_case("\"\xc3\x28\"", "UTF-8");
    json_case("\"\xed\xa0\x80\"", "UTF-8"); /* an encoded surrogate */
    json_case("\"\xc0\xaf\"", "UTF-8");     /* overlong */
    json_case("tru", "unexpected");
    json_case("// x\n1", "unexpected");
    json_case("", "expected a value");
    json_case("[1] [2]", "trailing");
    char deep[400];
    memset(deep, '[', 200);
    memset(deep + 200, ']', 200);
    exo_json *d;
    CHECK(exo__json_parse(deep, sizeof deep, "deep", &d) == EXO_EFORMAT && strstr(exo_last_error(), "nested"));
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    CHECK(exo__json_parse(deep, 200, "ok-deep", &d) == 0);
    exo__json_free(d);

    /* Many small values: [0,0,...] with 2^22 + 1 zeros is refused while it is
     * read (a node per value would cost ~28 times the input), 2^22 - 1 pass. */
    for (int over = 0; over <= 1; over++) {
        size_t n = ((size_t)1 << 22) + (over ? 1 : -1), len = 2 * n + 1;
        char *many = malloc(len);
        CHECK(many != NULL);
        if (!many) break;
        many[0] = '[';
        for (size_t i = 0; i < n; i++) many[1 + 2 * i] = '0', many[2 + 2 * i] = ',';
        many[len - 1] = ']';
        exo_json *m = NULL;
        int rc = exo__json_parse(many, len, "many", &m);
        if (over) CHECK(rc == EXO_EFORMAT && strstr(exo_last_error(), "values"));
        else CHECK(rc == 0 && exo__json_count(m, 0) == (int64_t)n);
        exo__json_free(m);
        free(many);
    }
}

int main(void)
{
    test_valid();
    test_invalid();
    test_json();
    CHECK_DONE();
}
