/* json.h: a small strict JSON reader (RFC 8259) for the files that come with
 * Hugging Face models (safetensors headers, config.json, tokenizer.json).
 *
 * One call parses a whole buffer into a read-only tree held in two arrays
 * (nodes and decoded strings), both sized from the input length before the
 * walk, so a hostile input costs at most a constant times its own size.
 * Nesting is bounded; anything outside the grammar (comments, trailing commas,
 * bare control characters, lone surrogates, leading zeros) is an error that
 * names its byte offset. Nodes are addressed by index; 0 is the root. */
#ifndef EXO_JSON_H
#define EXO_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum exo_json_kind { EXO_JSON_NULL, EXO_JSON_FALSE, EXO_JSON_TRUE, EXO_JSON_NUMBER, EXO_JSON_STRING,
                     EXO_JSON_ARRAY, EXO_JSON_OBJECT };

typedef struct exo_json exo_json;

/* Parses data[0..size) (one value, whitespace around it). On failure returns
 * a negative EXO_E* code with a message "what: ... at byte N". */
int exo__json_parse(const char *data, size_t size, const char *what, exo_json **out);
void exo__json_free(exo_json *j);

#define EXO_JSON_NONE (-1)
int exo__json_kind(const exo_json *j, int32_t node);
/* Strings (values and keys) are decoded, NUL-terminated; len excludes the NUL
 * (a string may hold "\u0000", so len is the truth). */
const char *exo__json_str(const exo_json *j, int32_t node, size_t *len);
double exo__json_num(const exo_json *j, int32_t node);
/* Whether a number node is an integer (no fraction or exponent) that fits. */
bool exo__json_int(const exo_json *j, int32_t node, int64_t *out);
/* Arrays and objects: member count, first member, next sibling
 * (EXO_JSON_NONE at the end); an object member's key. */
int64_t exo__json_count(const exo_json *j, int32_t node);
int32_t exo__json_first(const exo_json *j, int32_t node);
int32_t exo__json_next(const exo_json *j, int32_t node);
const char *exo__json_key(const exo_json *j, int32_t member, size_t *len);
/* The member of an object under key (the first one), or EXO_JSON_NONE
 * (also when node is not an object). Linear in the object's size. */
int32_t exo__json_get(const exo_json *j, int32_t object, const char *key);

#endif
