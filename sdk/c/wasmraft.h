// The wasmraft C SDK: write a plugin as three callbacks over plain bytes.
//
// wasmraft.c implements the `state-machine` world's exports on top of the bindings that
// `wit-bindgen c` generates: it runs the entries loop, owns and frees what the bindings allocate,
// and streams the kv space as the default snapshot (the Rust SDK's format). The plugin defines
// `wr_init`, `wr_apply` and `wr_query` and keeps its state in kv.
//
// Memory: `wr_bytes` is borrowed, `wr_buf` is owned (free it with wr_buf_free). Running out of
// memory traps with the message "out of memory", like any other trap.
#ifndef WASMRAFT_H
#define WASMRAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

// --- bytes ---

// A borrowed byte string.
typedef struct {
  const uint8_t *ptr;
  size_t len;
} wr_bytes;

// A growable byte buffer; start from `{0}`.
typedef struct {
  uint8_t *ptr;
  size_t len, cap;
} wr_buf;

wr_bytes wr_str(const char *s);  // a C string, without its NUL
wr_bytes wr_view(const wr_buf *b);
bool wr_eq(wr_bytes a, wr_bytes b);
void wr_buf_push(wr_buf *b, const void *data, size_t len);
void wr_buf_free(wr_buf *b);

// --- the plugin's callbacks ---

typedef struct {
  uint64_t index, term, timestamp_ms;
  wr_bytes payload;
} wr_entry;

typedef struct {
  const wr_bytes *previous_version;  // sha256 hex of the replaced version, or NULL
  wr_bytes config;
} wr_init_ctx;

// What a callback produces: `ok` bytes when it returns true, the `err` message when it returns
// false. The SDK frees both.
typedef struct {
  wr_buf ok;
  char *err;
} wr_result;

// Appends printf-formatted text to r->ok; returns true.
bool wr_ok(wr_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Sets r->err to a printf-formatted message; returns false.
bool wr_err(wr_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Defined by the plugin. Each runs with the kv space of its entry (read-only for wr_query).
bool wr_init(const wr_init_ctx *ctx, wr_result *r);  // r->ok is ignored
bool wr_apply(const wr_entry *entry, wr_result *r);
bool wr_query(wr_bytes request, wr_result *r);

// --- kv ---

// The value at `key`: true and an owned copy in *value, or false.
bool wr_kv_get(wr_bytes key, wr_buf *value);
void wr_kv_set(wr_bytes key, wr_bytes value);
void wr_kv_delete(wr_bytes key);

#define WR_NO_LIMIT UINT64_MAX

// Iterates up to `limit` pairs with start <= key < end (end NULL: to the end of the space) in key
// order, fetching them page by page. Start with wr_scan_begin (`start` and `end` must stay valid
// until the scan ends), loop on wr_scan_next; the pair it gives is valid until the next call. It
// frees itself when it returns false; wr_scan_end stops early.
typedef struct {
  wr_bytes start, end;
  bool has_end, done;
  uint64_t left;
  wr_buf next;  // owns `start` after the first page
  void *page;
  size_t count, at;
} wr_scan;

void wr_scan_begin(wr_scan *s, wr_bytes start, const wr_bytes *end, uint64_t limit);
bool wr_scan_next(wr_scan *s, wr_bytes *key, wr_bytes *value);
void wr_scan_end(wr_scan *s);

// Writes collected (copied) in order and sent in one host call by wr_batch_write, which empties
// the batch. Start from `{0}`.
typedef struct {
  void *items;
  size_t len, cap;
} wr_batch;

void wr_batch_set(wr_batch *b, wr_bytes key, wr_bytes value);
void wr_batch_delete(wr_batch *b, wr_bytes key);
void wr_batch_write(wr_batch *b);

// --- log ---

enum wr_level { WR_TRACE, WR_DEBUG, WR_INFO, WR_WARN, WR_ERROR };
void wr_log(enum wr_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// --- JSON ---

enum wr_json_kind { WR_JSON_ABSENT, WR_JSON_NULL, WR_JSON_BOOL, WR_JSON_INT, WR_JSON_STRING };

typedef struct {
  enum wr_json_kind kind;
  wr_bytes str;  // WR_JSON_STRING: the decoded UTF-8, NUL-terminated (len excludes it)
  uint64_t num;  // WR_JSON_INT: the magnitude; WR_JSON_BOOL: 0 or 1
  bool negative; // WR_JSON_INT: below zero (-num)
} wr_json_value;

#define WR_JSON_MAX_FIELDS 16

// One flat JSON object: values are strings, null, booleans or non-negative integers.
typedef struct {
  size_t count;
  wr_bytes names[WR_JSON_MAX_FIELDS];
  wr_json_value values[WR_JSON_MAX_FIELDS];
} wr_json;

// Parses `text` into *out (free it with wr_json_free). Returns NULL, or a static error message
// (and *out is left empty). Duplicate fields are an error.
const char *wr_json_parse(wr_bytes text, wr_json *out);
void wr_json_free(wr_json *obj);
// The value of field `name`; kind WR_JSON_ABSENT (and zero str/num) when missing.
const wr_json_value *wr_json_get(const wr_json *obj, const char *name);
// Checks the fields against a schema of space-separated `name:type`, type `s` string, `i` integer
// or `b` bool, and `?` after it if the field may be null or missing: "op:s key:s limit:i?".
// Returns NULL, or a static message for an unknown, missing or mistyped field.
const char *wr_json_check(const wr_json *obj, const char *schema);

bool wr_utf8_valid(wr_bytes s);
// Appends `s` (valid UTF-8) as a JSON string literal, escaped exactly as serde_json does.
void wr_json_string(wr_buf *b, wr_bytes s);

#endif
