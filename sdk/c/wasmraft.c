// The wasmraft C SDK (see wasmraft.h) over the bindings of `wit-bindgen c`.
//
// Ownership rules of those bindings: arguments an export receives are ours to free; values an
// import returns are ours to free; values an export returns are freed by the generated post-return
// functions (only when not empty); arguments passed to imports stay ours. Lists the host hands us
// empty carry a dummy pointer: never free them ourselves.

#include "wasmraft.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "state_machine.h"

typedef state_machine_list_u8_t list;
typedef state_machine_list_tuple2_list_u8_list_u8_t pairs;
typedef state_machine_tuple2_list_u8_option_list_u8_t batch_item;
typedef state_machine_list_tuple2_list_u8_option_list_u8_t batch_list;

// Pairs fetched per kv scan call.
#define SCAN_PAGE 256u

static const uint8_t MAGIC[8] = {'w', 'r', 'k', 'v', 0, 0, 0, 1};

// --- memory and bytes ---

static _Noreturn void out_of_memory(void) {
  state_machine_string_t message;
  state_machine_string_set(&message, "out of memory");
  wasmraft_plugin_log_panic_message(&message);
  abort();
}

static void *check(void *p) {
  if (!p) out_of_memory();
  return p;
}

// Grows `b` to hold `extra` more bytes.
static void reserve(wr_buf *b, size_t extra) {
  if (extra > SIZE_MAX - b->len) out_of_memory();
  size_t need = b->len + extra;
  if (need <= b->cap) return;
  size_t cap = b->cap > SIZE_MAX / 2 ? SIZE_MAX : b->cap * 2;
  if (cap < need) cap = need;
  if (cap < 64) cap = 64;
  b->ptr = check(realloc(b->ptr, cap));
  b->cap = cap;
}

wr_bytes wr_str(const char *s) { return (wr_bytes){(const uint8_t *)s, strlen(s)}; }

wr_bytes wr_view(const wr_buf *b) { return (wr_bytes){b->ptr, b->len}; }

bool wr_eq(wr_bytes a, wr_bytes b) { return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0); }

void wr_buf_push(wr_buf *b, const void *data, size_t len) {
  if (len == 0) return;
  reserve(b, len);
  memcpy(b->ptr + b->len, data, len);
  b->len += len;
}

void wr_buf_free(wr_buf *b) {
  free(b->ptr);
  *b = (wr_buf){0};
}

// An argument for an import: borrowed, never freed by the callee.
static list arg(wr_bytes b) { return (list){(uint8_t *)b.ptr, b.len}; }

static wr_bytes bytes_of(const list *l) { return (wr_bytes){l->ptr, l->len}; }

// Hands an owned buffer to an export's return value, which the post-return frees if not empty.
static list give(wr_buf *b) {
  list out = {b->len ? b->ptr : NULL, b->len};
  if (!b->len) free(b->ptr);
  *b = (wr_buf){0};
  return out;
}

// Appends printf-formatted text and a NUL that `len` excludes.
static void vappend(wr_buf *b, const char *fmt, va_list ap) {
  size_t plain = 0;
  while (fmt[plain] && fmt[plain] != '%') plain++;
  if (!fmt[plain]) {  // plain text: skip the costly printf
    wr_buf_push(b, fmt, plain + 1);
    b->len--;
    return;
  }
  va_list copy;
  va_copy(copy, ap);
  int n = vsnprintf(NULL, 0, fmt, copy);
  va_end(copy);
  if (n < 0) n = 0;  // an encoding error: append nothing
  reserve(b, (size_t)n + 1);
  if (n) vsnprintf((char *)b->ptr + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
  b->ptr[b->len] = 0;
}

// --- results and the exports that call the plugin ---

bool wr_ok(wr_result *r, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vappend(&r->ok, fmt, ap);
  va_end(ap);
  return true;
}

bool wr_err(wr_result *r, const char *fmt, ...) {
  wr_buf message = {0};
  va_list ap;
  va_start(ap, fmt);
  vappend(&message, fmt, ap);
  va_end(ap);
  free(r->err);
  r->err = (char *)message.ptr;
  return false;
}

// An error message for an export's return value.
static bool fail(state_machine_string_t *err, const char *fmt, ...) {
  wr_buf message = {0};
  va_list ap;
  va_start(ap, fmt);
  vappend(&message, fmt, ap);
  va_end(ap);
  list l = give(&message);
  *err = (state_machine_string_t){l.ptr, l.len};
  return false;
}

// The message of a failed callback.
static const char *message(const wr_result *r) { return r->err ? r->err : "failed without a message"; }

static void result_free(wr_result *r) {
  free(r->err);
  wr_buf_free(&r->ok);
}

bool exports_state_machine_init(state_machine_init_context_t *ctx, state_machine_string_t *err) {
  wr_bytes previous = {ctx->previous_version.val.ptr, ctx->previous_version.val.len};
  wr_init_ctx init = {ctx->previous_version.is_some ? &previous : NULL, bytes_of(&ctx->config)};
  wr_result r = {0};
  bool ok = wr_init(&init, &r);
  if (!ok) fail(err, "%s", message(&r));
  result_free(&r);
  state_machine_init_context_free(ctx);
  return ok;
}

void exports_state_machine_apply(void) {
  wasmraft_plugin_entries_entry_t e;
  while (wasmraft_plugin_entries_next(&e)) {
    wr_entry entry = {e.index, e.term, e.timestamp_ms, bytes_of(&e.payload)};
    wr_result r = {0};
    bool ok = wr_apply(&entry, &r);
    wasmraft_plugin_entries_entry_result_t outcome = {.is_err = !ok};
    if (ok) {
      outcome.val.ok = arg(wr_view(&r.ok));
    } else {
      state_machine_string_set(&outcome.val.err, message(&r));
    }
    wasmraft_plugin_entries_finish(&outcome);
    result_free(&r);
    wasmraft_plugin_entries_entry_free(&e);
  }
}

bool exports_state_machine_query(list *request, list *ret, state_machine_string_t *err) {
  wr_result r = {0};
  bool ok = wr_query(bytes_of(request), &r);
  state_machine_list_u8_free(request);
  if (ok) {
    *ret = give(&r.ok);
  } else {
    fail(err, "%s", message(&r));
  }
  result_free(&r);
  return ok;
}

// --- kv ---

bool wr_kv_get(wr_bytes key, wr_buf *value) {
  list k = arg(key), v;
  *value = (wr_buf){0};
  if (!wasmraft_plugin_kv_get(&k, &v)) return false;
  if (v.len) *value = (wr_buf){v.ptr, v.len, v.len};
  return true;
}

void wr_kv_set(wr_bytes key, wr_bytes value) {
  list k = arg(key), v = arg(value);
  wasmraft_plugin_kv_set(&k, &v);
}

void wr_kv_delete(wr_bytes key) {
  list k = arg(key);
  wasmraft_plugin_kv_delete(&k);
}

void wr_scan_begin(wr_scan *s, wr_bytes start, const wr_bytes *end, uint64_t limit) {
  *s = (wr_scan){.start = start, .end = end ? *end : (wr_bytes){0}, .has_end = end != NULL, .left = limit};
}

static void free_page(wr_scan *s) {
  pairs page = {s->page, s->count};
  state_machine_list_tuple2_list_u8_list_u8_free(&page);
  s->page = NULL;
  s->count = s->at = 0;
}

void wr_scan_end(wr_scan *s) {
  free_page(s);
  wr_buf_free(&s->next);
  s->done = true;
}

bool wr_scan_next(wr_scan *s, wr_bytes *key, wr_bytes *value) {
  if (s->at == s->count) {
    free_page(s);
    if (s->done || s->left == 0) {
      wr_scan_end(s);
      return false;
    }
    uint32_t n = s->left < SCAN_PAGE ? (uint32_t)s->left : SCAN_PAGE;
    list start = arg(s->start), end = arg(s->end);
    pairs page;
    wasmraft_plugin_kv_scan(&start, s->has_end ? &end : NULL, n, &page);
    s->page = page.ptr;
    s->count = page.len;
    s->left -= page.len;
    s->done = page.len < n;
    if (page.len == 0) {
      wr_scan_end(s);
      return false;
    }
    // The next page starts right after the last key: the key plus a zero byte.
    list *last = &page.ptr[page.len - 1].f0;
    s->next.len = 0;
    wr_buf_push(&s->next, last->ptr, last->len);
    wr_buf_push(&s->next, "", 1);
    s->start = wr_view(&s->next);
  }
  state_machine_tuple2_list_u8_list_u8_t *pair = (state_machine_tuple2_list_u8_list_u8_t *)s->page + s->at++;
  *key = bytes_of(&pair->f0);
  *value = bytes_of(&pair->f1);
  return true;
}

// An owned copy for the bindings, which free it only when it is not empty.
static list copy(wr_bytes b) {
  list out = {NULL, b.len};
  if (b.len) out.ptr = memcpy(check(malloc(b.len)), b.ptr, b.len);
  return out;
}

// Appends a write holding copies of `key` and, when `set`, `value`.
static void batch_push(wr_batch *b, wr_bytes key, bool set, wr_bytes value) {
  if (b->len == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 16;
    if (cap > SIZE_MAX / sizeof(batch_item)) out_of_memory();
    b->items = check(realloc(b->items, cap * sizeof(batch_item)));
    b->cap = cap;
  }
  batch_item *item = (batch_item *)b->items + b->len++;
  *item = (batch_item){copy(key), {set, copy(value)}};
}

void wr_batch_set(wr_batch *b, wr_bytes key, wr_bytes value) { batch_push(b, key, true, value); }

void wr_batch_delete(wr_batch *b, wr_bytes key) { batch_push(b, key, false, (wr_bytes){0}); }

void wr_batch_write(wr_batch *b) {
  batch_list writes = {b->items, b->len};
  if (b->len) wasmraft_plugin_kv_write_batch(&writes);
  state_machine_list_tuple2_list_u8_option_list_u8_free(&writes);
  *b = (wr_batch){0};
}

// --- log ---

void wr_log(enum wr_level level, const char *fmt, ...) {
  wr_buf text = {0};
  va_list ap;
  va_start(ap, fmt);
  vappend(&text, fmt, ap);
  va_end(ap);
  state_machine_string_t message = {text.ptr, text.len};
  wasmraft_plugin_log_log((wasmraft_plugin_log_level_t)level, &message);
  wr_buf_free(&text);
}

// --- the default snapshot: MAGIC, then [key len u32 LE][key][value len u32 LE][value] in key order ---

static struct {
  wr_scan scan;
  wr_buf pending;
} writer;

static void push_part(wr_buf *b, wr_bytes part) {
  uint32_t n = (uint32_t)part.len;  // the host caps keys and values far below 4 GiB
  uint8_t le[4] = {n & 0xff, (n >> 8) & 0xff, (n >> 16) & 0xff, n >> 24};
  wr_buf_push(b, le, 4);
  wr_buf_push(b, part.ptr, part.len);
}

void exports_state_machine_snapshot_begin(void) {
  wr_scan_end(&writer.scan);
  writer.pending.len = 0;
  wr_buf_push(&writer.pending, MAGIC, sizeof MAGIC);
  wr_scan_begin(&writer.scan, (wr_bytes){0}, NULL, WR_NO_LIMIT);
}

bool exports_state_machine_snapshot_next(uint32_t max_bytes, list *ret) {
  size_t max = max_bytes ? max_bytes : 1;
  wr_bytes key, value;
  while (writer.pending.len < max && wr_scan_next(&writer.scan, &key, &value)) {
    push_part(&writer.pending, key);
    push_part(&writer.pending, value);
  }
  if (writer.pending.len == 0) return false;
  wr_buf chunk = {0};
  size_t n = writer.pending.len < max ? writer.pending.len : max;
  wr_buf_push(&chunk, writer.pending.ptr, n);
  memmove(writer.pending.ptr, writer.pending.ptr + n, writer.pending.len - n);
  writer.pending.len -= n;
  *ret = give(&chunk);
  return true;
}

static struct {
  bool active, seen_magic;
  wr_buf buffer;
} reader;

void exports_state_machine_restore_begin(void) {
  wr_buf_free(&reader.buffer);
  reader.active = true;
  reader.seen_magic = false;
}

// Reads the part (u32 LE length, then bytes) at *at and moves past it; false if incomplete.
static bool read_part(const wr_buf *b, size_t *at, wr_bytes *part) {
  if (b->len - *at < 4) return false;
  const uint8_t *p = b->ptr + *at;
  size_t n = (size_t)p[0] | (size_t)p[1] << 8 | (size_t)p[2] << 16 | (size_t)p[3] << 24;
  if (b->len - *at - 4 < n) return false;
  *part = (wr_bytes){p + 4, n};
  *at += 4 + n;
  return true;
}

bool exports_state_machine_restore_chunk(list *chunk, state_machine_string_t *err) {
  if (reader.active) wr_buf_push(&reader.buffer, chunk->ptr, chunk->len);
  state_machine_list_u8_free(chunk);
  if (!reader.active) return fail(err, "restore-chunk called before restore-begin");
  size_t at = 0;
  if (!reader.seen_magic) {
    if (reader.buffer.len < sizeof MAGIC) return true;
    if (memcmp(reader.buffer.ptr, MAGIC, sizeof MAGIC) != 0) return fail(err, "not a wasmraft kv snapshot (bad magic)");
    reader.seen_magic = true;
    at = sizeof MAGIC;
  }
  wr_batch batch = {0};
  wr_bytes key, value;
  for (size_t next = at; read_part(&reader.buffer, &next, &key) && read_part(&reader.buffer, &next, &value); at = next) {
    wr_batch_set(&batch, key, value);
  }
  wr_batch_write(&batch);
  if (at) memmove(reader.buffer.ptr, reader.buffer.ptr + at, reader.buffer.len - at);
  reader.buffer.len -= at;
  return true;
}

bool exports_state_machine_restore_finish(state_machine_string_t *err) {
  bool active = reader.active, seen_magic = reader.seen_magic;
  size_t left = reader.buffer.len;
  wr_buf_free(&reader.buffer);
  reader.active = false;
  if (!active) return fail(err, "restore-finish called before restore-begin");
  if (!seen_magic) return fail(err, "snapshot stream ended before its header");
  if (left) return fail(err, "snapshot stream truncated: %zu bytes of an incomplete record", left);
  return true;
}

// --- JSON ---

// Strict, as Rust's from_utf8: no overlong forms, surrogates or code points past U+10FFFF.
bool wr_utf8_valid(wr_bytes s) {
  for (size_t i = 0; i < s.len;) {
    uint8_t c = s.ptr[i];
    size_t n = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (n == 0 || n > s.len - i) return false;
    uint32_t cp = n == 1 ? c : c & (0x7fu >> n);
    for (size_t k = 1; k < n; k++) {
      if ((s.ptr[i + k] & 0xc0) != 0x80) return false;
      cp = cp << 6 | (s.ptr[i + k] & 0x3fu);
    }
    if (n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) return false;
    if (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) return false;
    i += n;
  }
  return true;
}

// The letter after the backslash when JSON escapes byte `c` with one (as serde_json does), or 0.
static char short_escape(uint8_t c) {
  switch (c) {
    case '"': return '"';
    case '\\': return '\\';
    case '\b': return 'b';
    case '\f': return 'f';
    case '\n': return 'n';
    case '\r': return 'r';
    case '\t': return 't';
    default: return 0;
  }
}

// The byte a one-letter escape stands for, or 0 for an invalid escape.
static uint8_t unescape(uint8_t letter) {
  switch (letter) {
    case '"': case '\\': case '/': return letter;
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    default: return 0;
  }
}

void wr_json_string(wr_buf *b, wr_bytes s) {
  static const char hex[] = "0123456789abcdef";
  wr_buf_push(b, "\"", 1);
  for (size_t i = 0; i < s.len; i++) {
    uint8_t c = s.ptr[i];
    char esc[2] = {'\\', short_escape(c)};
    if (esc[1]) {
      wr_buf_push(b, esc, 2);
    } else if (c < 0x20) {
      char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      wr_buf_push(b, u, 6);
    } else {
      wr_buf_push(b, &c, 1);
    }
  }
  wr_buf_push(b, "\"", 1);
}

typedef struct {
  const uint8_t *p, *end;
} cursor;

static void skip_ws(cursor *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

// Whether the text at the cursor starts with `word`; moves past it if so.
static bool take(cursor *c, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return false;
  c->p += n;
  return true;
}

static void push_utf8(wr_buf *b, uint32_t cp) {
  uint8_t out[4];
  size_t n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
  static const uint8_t lead[5] = {0, 0, 0xc0, 0xe0, 0xf0};
  for (size_t i = n - 1; i > 0; i--, cp >>= 6) out[i] = 0x80 | (cp & 0x3f);
  out[0] = (uint8_t)(lead[n] | cp);
  wr_buf_push(b, out, n);
}

static bool hex4(cursor *c, uint32_t *out) {
  if (c->end - c->p < 4) return false;
  *out = 0;
  for (int i = 0; i < 4; i++) {
    uint8_t h = *c->p++;
    int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
    if (d < 0) return false;
    *out = *out << 4 | (uint32_t)d;
  }
  return true;
}

// The code point of a \u escape (the cursor after the `u`), joining a surrogate pair.
static bool unicode_escape(cursor *c, uint32_t *cp) {
  uint32_t low;
  if (!hex4(c, cp) || (*cp >= 0xdc00 && *cp <= 0xdfff)) return false;
  if (*cp < 0xd800 || *cp > 0xdbff) return true;
  if (!take(c, "\\u") || !hex4(c, &low) || low < 0xdc00 || low > 0xdfff) return false;
  *cp = 0x10000 + ((*cp - 0xd800) << 10) + (low - 0xdc00);
  return true;
}

// Parses a string literal (the cursor on its opening quote) into owned, NUL-terminated bytes.
static const char *parse_string(cursor *c, wr_bytes *out) {
  wr_buf b = {0};
  const char *err = NULL;
  c->p++;
  while (!err) {
    if (c->p >= c->end) {
      err = "EOF while parsing a string";
      break;
    }
    uint8_t ch = *c->p++;
    if (ch == '"') break;
    if (ch < 0x20) {
      err = "control character in string";
    } else if (ch != '\\') {
      wr_buf_push(&b, &ch, 1);
    } else if (c->p >= c->end) {
      err = "EOF while parsing a string";
    } else if ((ch = *c->p++) == 'u') {
      uint32_t cp;
      if (unicode_escape(c, &cp)) {
        push_utf8(&b, cp);
      } else {
        err = "invalid unicode escape";
      }
    } else if ((ch = unescape(ch))) {
      wr_buf_push(&b, &ch, 1);
    } else {
      err = "invalid escape";
    }
  }
  if (!err && !wr_utf8_valid(wr_view(&b))) err = "invalid UTF-8 in a string";
  if (err) {
    wr_buf_free(&b);
    return err;
  }
  reserve(&b, 1);
  b.ptr[b.len] = 0;
  *out = wr_view(&b);
  return NULL;
}

static const char *parse_value(cursor *c, wr_json_value *v) {
  skip_ws(c);
  if (c->p >= c->end) return "EOF while parsing a value";
  if (*c->p == '"') {
    v->kind = WR_JSON_STRING;
    return parse_string(c, &v->str);
  }
  if (take(c, "null")) {
    v->kind = WR_JSON_NULL;
  } else if (take(c, "true")) {
    v->kind = WR_JSON_BOOL;
    v->num = 1;
  } else if (take(c, "false")) {
    v->kind = WR_JSON_BOOL;
  } else if ((*c->p >= '0' && *c->p <= '9') || *c->p == '-') {
    if (*c->p == '-') {
      c->p++;
      if (c->p >= c->end || *c->p < '0' || *c->p > '9') return "invalid number";
      v->negative = true;
    }
    if (*c->p == '0' && c->end - c->p > 1 && c->p[1] >= '0' && c->p[1] <= '9') return "invalid number";
    v->kind = WR_JSON_INT;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
      uint64_t d = *c->p++ - '0';
      if (v->num > (UINT64_MAX - d) / 10) return "number out of range";
      v->num = v->num * 10 + d;
    }
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E')) return "expected an integer";
    if (v->num == 0) v->negative = false;  // -0 is 0
  } else {
    return "expected a string, null, a boolean or an integer";
  }
  return NULL;
}

// The index of field `name`, or obj->count.
static size_t find(const wr_json *obj, wr_bytes name) {
  size_t i = 0;
  while (i < obj->count && !wr_eq(obj->names[i], name)) i++;
  return i;
}

void wr_json_free(wr_json *obj) {
  for (size_t i = 0; i < obj->count; i++) {
    free((void *)obj->names[i].ptr);
    free((void *)obj->values[i].str.ptr);
  }
  obj->count = 0;
}

const char *wr_json_parse(wr_bytes text, wr_json *out) {
  cursor c = {text.ptr, text.len ? text.ptr + text.len : text.ptr};
  const char *err = NULL;
  *out = (wr_json){0};
  skip_ws(&c);
  if (!take(&c, "{")) return "expected an object";
  skip_ws(&c);
  bool more = !take(&c, "}");
  while (more && !err) {
    skip_ws(&c);
    wr_bytes name;
    if (c.p >= c.end || *c.p != '"') {
      err = "expected a field name";
    } else if (out->count == WR_JSON_MAX_FIELDS) {
      err = "too many fields";
    } else if (!(err = parse_string(&c, &name))) {
      bool duplicate = find(out, name) < out->count;
      out->names[out->count] = name;
      wr_json_value *v = &out->values[out->count++];
      skip_ws(&c);
      err = duplicate ? "duplicate field" : !take(&c, ":") ? "expected ':'" : parse_value(&c, v);
      skip_ws(&c);
      more = take(&c, ",");
      if (!err && !more && !take(&c, "}")) err = "expected ',' or '}'";
    }
  }
  skip_ws(&c);
  if (!err && c.p != c.end) err = "trailing characters";
  if (err) wr_json_free(out);
  return err;
}

const wr_json_value *wr_json_get(const wr_json *obj, const char *name) {
  static const wr_json_value absent = {WR_JSON_ABSENT, {NULL, 0}, 0};
  size_t i = find(obj, wr_str(name));
  return i < obj->count ? &obj->values[i] : &absent;
}

const char *wr_json_check(const wr_json *obj, const char *schema) {
  size_t seen = 0;
  for (const char *p = schema; *p;) {
    const char *name = p;
    while (*p && *p != ':') p++;
    if (!*p || !p[1]) return "malformed schema";
    size_t i = find(obj, (wr_bytes){(const uint8_t *)name, (size_t)(p - name)});
    enum wr_json_kind want = p[1] == 's' ? WR_JSON_STRING : p[1] == 'i' ? WR_JSON_INT : WR_JSON_BOOL;
    bool optional = p[2] == '?';
    enum wr_json_kind kind = i < obj->count ? obj->values[i].kind : WR_JSON_ABSENT;
    if (kind == WR_JSON_ABSENT && !optional) return "missing field";
    if (kind != WR_JSON_ABSENT && kind != want && !(optional && kind == WR_JSON_NULL)) return "a field has the wrong type";
    seen += i < obj->count;
    p += 2 + optional;
    while (*p == ' ') p++;
  }
  return seen == obj->count ? NULL : "unknown field";
}
