// A small JSON reader and writer for the kv command language: one flat object whose values are
// strings, null, or non-negative integers; output escaped exactly as serde_json escapes.
#ifndef KV_JSON_H
#define KV_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum json_kind { JSON_ABSENT = 0, JSON_NULL, JSON_STRING, JSON_NUMBER };

typedef struct {
  enum json_kind kind;
  char *str;  // JSON_STRING: UTF-8, owned, NUL-terminated (len excludes it)
  size_t len;
  uint64_t num;  // JSON_NUMBER
} json_value;

#define JSON_MAX_FIELDS 8

typedef struct {
  size_t count;
  char *names[JSON_MAX_FIELDS];
  json_value values[JSON_MAX_FIELDS];
} json_object;

// Parses `text` as one flat object. Returns NULL on success, or a static error message.
const char *json_parse_object(const uint8_t *text, size_t len, json_object *out);
void json_object_free(json_object *obj);
// The value of field `name`, or a value of kind JSON_ABSENT.
const json_value *json_get(const json_object *obj, const char *name);

// A growable output buffer.
typedef struct {
  uint8_t *ptr;
  size_t len, cap;
} buf;

void buf_push(buf *b, const void *data, size_t len);
void buf_str(buf *b, const char *s);
// Appends a JSON string literal for `s[0..len]`, escaped as serde_json does.
void buf_json_string(buf *b, const uint8_t *s, size_t len);

#endif
