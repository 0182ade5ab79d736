#include "json.h"

#include <stdlib.h>
#include <string.h>

void buf_push(buf *b, const void *data, size_t len) {
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap < b->len + len) cap *= 2;
    b->ptr = realloc(b->ptr, cap);
    if (!b->ptr) abort();
    b->cap = cap;
  }
  memcpy(b->ptr + b->len, data, len);
  b->len += len;
}

void buf_str(buf *b, const char *s) { buf_push(b, s, strlen(s)); }

void buf_json_string(buf *b, const uint8_t *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  buf_push(b, "\"", 1);
  for (size_t i = 0; i < len; i++) {
    uint8_t c = s[i];
    const char *esc = NULL;
    switch (c) {
      case '"': esc = "\\\""; break;
      case '\\': esc = "\\\\"; break;
      case '\b': esc = "\\b"; break;
      case '\f': esc = "\\f"; break;
      case '\n': esc = "\\n"; break;
      case '\r': esc = "\\r"; break;
      case '\t': esc = "\\t"; break;
    }
    if (esc) {
      buf_str(b, esc);
    } else if (c < 0x20) {
      char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      buf_push(b, u, 6);
    } else {
      buf_push(b, &c, 1);
    }
  }
  buf_push(b, "\"", 1);
}

typedef struct {
  const uint8_t *p, *end;
} cursor;

static void skip_ws(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static void put_utf8(buf *b, uint32_t cp) {
  uint8_t out[4];
  size_t n;
  if (cp < 0x80) {
    out[0] = cp;
    n = 1;
  } else if (cp < 0x800) {
    out[0] = 0xc0 | (cp >> 6);
    out[1] = 0x80 | (cp & 0x3f);
    n = 2;
  } else if (cp < 0x10000) {
    out[0] = 0xe0 | (cp >> 12);
    out[1] = 0x80 | ((cp >> 6) & 0x3f);
    out[2] = 0x80 | (cp & 0x3f);
    n = 3;
  } else {
    out[0] = 0xf0 | (cp >> 18);
    out[1] = 0x80 | ((cp >> 12) & 0x3f);
    out[2] = 0x80 | ((cp >> 6) & 0x3f);
    out[3] = 0x80 | (cp & 0x3f);
    n = 4;
  }
  buf_push(b, out, n);
}

static int hex4(cursor *c, uint32_t *out) {
  if (c->end - c->p < 4) return 0;
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    uint8_t h = *c->p++;
    v <<= 4;
    if (h >= '0' && h <= '9') v |= h - '0';
    else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
    else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
    else return 0;
  }
  *out = v;
  return 1;
}

// Parses a string literal (cursor on the opening quote) into an owned NUL-terminated buffer.
static const char *parse_string(cursor *c, char **out, size_t *out_len) {
  buf b = {0};
  c->p++;
  for (;;) {
    if (c->p >= c->end) goto eof;
    uint8_t ch = *c->p++;
    if (ch == '"') break;
    if (ch < 0x20) {
      free(b.ptr);
      return "control character in string";
    }
    if (ch != '\\') {
      buf_push(&b, &ch, 1);
      continue;
    }
    if (c->p >= c->end) goto eof;
    uint8_t e = *c->p++;
    const char *simple = NULL;
    switch (e) {
      case '"': simple = "\""; break;
      case '\\': simple = "\\"; break;
      case '/': simple = "/"; break;
      case 'b': simple = "\b"; break;
      case 'f': simple = "\f"; break;
      case 'n': simple = "\n"; break;
      case 'r': simple = "\r"; break;
      case 't': simple = "\t"; break;
    }
    if (simple) {
      buf_push(&b, simple, 1);
      continue;
    }
    if (e != 'u') {
      free(b.ptr);
      return "invalid escape";
    }
    uint32_t cp;
    if (!hex4(c, &cp)) goto bad_unicode;
    if (cp >= 0xdc00 && cp <= 0xdfff) goto bad_unicode;
    if (cp >= 0xd800 && cp <= 0xdbff) {
      uint32_t low;
      if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u') goto bad_unicode;
      c->p += 2;
      if (!hex4(c, &low) || low < 0xdc00 || low > 0xdfff) goto bad_unicode;
      cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
    }
    put_utf8(&b, cp);
  }
  *out_len = b.len;
  buf_push(&b, "", 1);
  *out = (char *)b.ptr;
  return NULL;
eof:
  free(b.ptr);
  return "EOF while parsing a string";
bad_unicode:
  free(b.ptr);
  return "invalid unicode escape";
}

static const char *parse_value(cursor *c, json_value *v) {
  skip_ws(c);
  if (c->p >= c->end) return "EOF while parsing a value";
  if (*c->p == '"') {
    v->kind = JSON_STRING;
    return parse_string(c, &v->str, &v->len);
  }
  if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
    c->p += 4;
    v->kind = JSON_NULL;
    return NULL;
  }
  if (*c->p >= '0' && *c->p <= '9') {
    if (*c->p == '0' && c->end - c->p > 1 && c->p[1] >= '0' && c->p[1] <= '9') return "invalid number";
    uint64_t n = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
      uint64_t d = *c->p++ - '0';
      if (n > (UINT64_MAX - d) / 10) return "number out of range";
      n = n * 10 + d;
    }
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E')) return "expected an integer";
    v->kind = JSON_NUMBER;
    v->num = n;
    return NULL;
  }
  return "expected a string, null or an integer";
}

void json_object_free(json_object *obj) {
  for (size_t i = 0; i < obj->count; i++) {
    free(obj->names[i]);
    free(obj->values[i].str);
  }
  obj->count = 0;
}

const char *json_parse_object(const uint8_t *text, size_t len, json_object *out) {
  cursor c = {text, text + len};
  const char *err = NULL;
  memset(out, 0, sizeof *out);
  skip_ws(&c);
  if (c.p >= c.end || *c.p != '{') return "expected an object";
  c.p++;
  skip_ws(&c);
  if (c.p < c.end && *c.p == '}') {
    c.p++;
    goto end;
  }
  for (;;) {
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '"') {
      err = "expected a field name";
      goto fail;
    }
    if (out->count == JSON_MAX_FIELDS) {
      err = "too many fields";
      goto fail;
    }
    char *name;
    size_t name_len;
    if ((err = parse_string(&c, &name, &name_len))) goto fail;
    for (size_t i = 0; i < out->count; i++) {
      if (strcmp(out->names[i], name) == 0) {
        free(name);
        err = "duplicate field";
        goto fail;
      }
    }
    out->names[out->count] = name;
    json_value *v = &out->values[out->count++];
    skip_ws(&c);
    if (c.p >= c.end || *c.p++ != ':') {
      err = "expected ':'";
      goto fail;
    }
    if ((err = parse_value(&c, v))) goto fail;
    skip_ws(&c);
    if (c.p < c.end && *c.p == ',') {
      c.p++;
      continue;
    }
    if (c.p < c.end && *c.p == '}') {
      c.p++;
      break;
    }
    err = "expected ',' or '}'";
    goto fail;
  }
end:
  skip_ws(&c);
  if (c.p != c.end) {
    err = "trailing characters";
    goto fail;
  }
  return NULL;
fail:
  json_object_free(out);
  return err;
}

const json_value *json_get(const json_object *obj, const char *name) {
  static const json_value absent = {JSON_ABSENT, NULL, 0, 0};
  for (size_t i = 0; i < obj->count; i++) {
    if (strcmp(obj->names[i], name) == 0) return &obj->values[i];
  }
  return &absent;
}
