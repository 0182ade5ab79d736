// The kv example plugin in C, on the wasmraft C SDK (sdk/c): the same commands and byte-identical
// results as the Rust `kv` plugin (see plugins/kv-core/src/lib.rs for the table). Its state lives
// only in kv, so the SDK's default snapshot stream (interchangeable with Rust's) covers it.

#include "wasmraft.h"

// Most pairs one scan returns; a larger `limit` is clamped to it.
#define MAX_SCAN_LIMIT 1000u

enum { PUT, GET, DELETE, CAS, SCAN, OP_COUNT };

// Each op's name and fields (see wr_json_check).
static const char *const OPS[OP_COUNT][2] = {
    [PUT] = {"put", "op:s key:s value:s"},
    [GET] = {"get", "op:s key:s"},
    [DELETE] = {"delete", "op:s key:s"},
    [CAS] = {"cas", "op:s key:s expected:s? value:s"},
    [SCAN] = {"scan", "op:s start:s end:s? limit:i?"},
};

// Appends a stored value as a JSON string; refuses values that are not UTF-8.
static bool push_text(wr_result *r, wr_bytes text) {
  if (!wr_utf8_valid(text)) return wr_err(r, "stored value is not UTF-8");
  wr_json_string(&r->ok, text);
  return true;
}

// Appends `value` as a JSON string, or null when not `found`.
static bool push_value(wr_result *r, bool found, wr_bytes value) {
  return found ? push_text(r, value) : wr_ok(r, "null");
}

// Appends the value at `key` as a JSON string or null.
static bool push_lookup(wr_result *r, wr_bytes key) {
  wr_buf value = {0};
  bool found = wr_kv_get(key, &value);
  bool ok = push_value(r, found, wr_view(&value));
  wr_buf_free(&value);
  return ok;
}

static bool scan(const wr_json *cmd, wr_result *r) {
  const wr_json_value *end = wr_json_get(cmd, "end"), *limit = wr_json_get(cmd, "limit");
  bool limited = limit->kind == WR_JSON_INT && limit->num < MAX_SCAN_LIMIT;
  wr_scan s;
  wr_scan_begin(&s, wr_json_get(cmd, "start")->str, end->kind == WR_JSON_STRING ? &end->str : NULL,
                limited ? limit->num : MAX_SCAN_LIMIT);
  wr_bytes key, value;
  bool ok = wr_ok(r, "{\"items\":[");
  for (bool first = true; ok && wr_scan_next(&s, &key, &value); first = false) {
    ok = wr_ok(r, first ? "{\"key\":" : ",{\"key\":") && push_text(r, key) && wr_ok(r, ",\"value\":") &&
         push_text(r, value) && wr_ok(r, "}");
  }
  wr_scan_end(&s);
  return ok && wr_ok(r, "]}");
}

static bool run(int op, const wr_json *cmd, wr_result *r) {
  wr_bytes key = wr_json_get(cmd, "key")->str, value = wr_json_get(cmd, "value")->str;
  wr_buf current = {0};
  bool found;
  switch (op) {
    case PUT:
      if (!wr_ok(r, "{\"previous\":") || !push_lookup(r, key)) return false;
      wr_kv_set(key, value);
      return wr_ok(r, "}");
    case GET:
      return wr_ok(r, "{\"value\":") && push_lookup(r, key) && wr_ok(r, "}");
    case DELETE:
      found = wr_kv_get(key, &current);
      wr_buf_free(&current);
      wr_kv_delete(key);
      return wr_ok(r, found ? "{\"deleted\":true}" : "{\"deleted\":false}");
    case CAS: {
      const wr_json_value *expected = wr_json_get(cmd, "expected");
      found = wr_kv_get(key, &current);
      bool swap = expected->kind == WR_JSON_STRING ? found && wr_eq(wr_view(&current), expected->str) : !found;
      if (swap) wr_kv_set(key, value);
      wr_ok(r, swap ? "{\"swapped\":true,\"current\":" : "{\"swapped\":false,\"current\":");
      bool ok = push_value(r, found || swap, swap ? value : wr_view(&current));
      wr_buf_free(&current);
      return ok && wr_ok(r, "}");
    }
    default:
      return scan(cmd, r);
  }
}

// Parses and runs one command, or one query (which may only read).
static bool handle(wr_bytes payload, bool is_query, wr_result *r) {
  const char *what = is_query ? "query" : "command";
  wr_json cmd;
  const char *err = wr_json_parse(payload, &cmd);
  if (err) return wr_err(r, "malformed %s: %s", what, err);
  wr_bytes name = wr_json_get(&cmd, "op")->str;
  int op = 0;
  while (op < OP_COUNT && !wr_eq(name, wr_str(OPS[op][0]))) op++;
  err = op == OP_COUNT ? "unknown or missing op" : wr_json_check(&cmd, OPS[op][1]);
  const wr_json_value *limit = wr_json_get(&cmd, "limit");
  if (!err && (limit->num > UINT32_MAX || limit->negative)) err = "limit out of range";
  bool ok;
  if (err) {
    ok = wr_err(r, "malformed %s: %s", what, err);
  } else if (is_query && op != GET && op != SCAN) {
    ok = wr_err(r, "%s is a write: send it as a command, not a query", OPS[op][0]);
  } else {
    ok = run(op, &cmd, r);
  }
  wr_json_free(&cmd);
  return ok;
}

bool wr_init(const wr_init_ctx *ctx, wr_result *r) {
  (void)ctx;
  (void)r;
  return true;
}

bool wr_apply(const wr_entry *entry, wr_result *r) { return handle(entry->payload, false, r); }

bool wr_query(wr_bytes request, wr_result *r) { return handle(request, true, r); }
