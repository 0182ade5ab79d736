// {{name}}: a wasmraft plugin keeping one counter per key, with all of its state in kv.
//
//   {"op":"add","key":"a","by":2}   ->  {"key":"a","value":2}
//   {"op":"add","key":"a"}          ->  {"key":"a","value":3}     (by defaults to 1)
//   {"op":"reset","key":"a"}        ->  {"key":"a","value":0}
//
// The query {"key":"a"} answers {"key":"a","value":3} (0 for a key never set). Values stay within
// ±(2^53 - 1), the integers every SDK language (JavaScript too) holds exactly: an add past that
// fails with "overflow" and, like every failed command, changes nothing.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasmraft.h"

#define LIMIT 9007199254740991LL  // 2^53 - 1

// The counter at `key`, stored as decimal text (0 when absent).
static int64_t load(wr_bytes key) {
  wr_buf text = {0};
  int64_t value = 0;
  if (wr_kv_get(key, &text)) {
    wr_buf_push(&text, "", 1);  // NUL-terminated for strtoll
    value = strtoll((const char *)text.ptr, NULL, 10);
  }
  wr_buf_free(&text);
  return value;
}

// Appends {"key":KEY,"value":VALUE} to the result.
static bool reply(wr_result *r, wr_bytes key, int64_t value) {
  wr_ok(r, "{\"key\":");
  wr_json_string(&r->ok, key);
  return wr_ok(r, ",\"value\":%lld}", (long long)value);
}

static bool run(const wr_json *cmd, wr_result *r) {
  const char *op = (const char *)wr_json_get(cmd, "op")->str.ptr;
  wr_bytes key = wr_json_get(cmd, "key")->str;
  const wr_json_value *by = wr_json_get(cmd, "by");
  if (strcmp(op, "add") == 0) {
    uint64_t magnitude = by->kind == WR_JSON_INT ? by->num : 1;
    if (magnitude > LIMIT) return wr_err(r, "overflow");
    int64_t value = load(key) + (by->negative ? -(int64_t)magnitude : (int64_t)magnitude);
    if (value > LIMIT || value < -LIMIT) return wr_err(r, "overflow");
    char text[24];
    snprintf(text, sizeof text, "%lld", (long long)value);
    wr_kv_set(key, wr_str(text));
    return reply(r, key, value);
  }
  if (strcmp(op, "reset") == 0) {
    wr_kv_delete(key);
    return reply(r, key, 0);
  }
  return wr_err(r, "unknown op \"%s\"", op);
}

bool wr_init(const wr_init_ctx *ctx, wr_result *r) {
  (void)ctx;
  (void)r;
  return true;
}

bool wr_apply(const wr_entry *entry, wr_result *r) {
  wr_json cmd;
  const char *err = wr_json_parse(entry->payload, &cmd);
  if (!err) err = wr_json_check(&cmd, "op:s key:s by:i?");
  bool ok = err ? wr_err(r, "malformed command: %s", err) : run(&cmd, r);
  wr_json_free(&cmd);
  return ok;
}

bool wr_query(wr_bytes request, wr_result *r) {
  wr_json query;
  const char *err = wr_json_parse(request, &query);
  if (!err) err = wr_json_check(&query, "key:s");
  wr_bytes key = wr_json_get(&query, "key")->str;
  bool ok = err ? wr_err(r, "malformed query: %s", err) : reply(r, key, load(key));
  wr_json_free(&query);
  return ok;
}
