// The kv example plugin in JavaScript, on the JS SDK (sdk/js): the same commands and byte-identical
// results as the Rust `kv` plugin (plugins/kv-core/src/lib.rs has the table). Commands and queries
// are JSON objects tagged by "op"; results are compact JSON. State lives only in kv, so the SDK's
// default snapshot (interchangeable with the Rust SDK's) covers it.

import { defineStateMachine, fromJson, PluginError, text, toJson } from '../../sdk/js/wasmraft-sdk.js';

/** Most pairs one scan returns; a larger limit is clamped to it. */
const MAX_SCAN_LIMIT = 1000;

/** The fields of each op besides `op`: required, then optional. */
const FIELDS = {
  put: [['key', 'value'], []],
  get: [['key'], []],
  delete: [['key'], []],
  cas: [['key', 'value'], ['expected']],
  scan: [['start'], ['end', 'limit']],
};

/** Decodes a command or query, refusing what the Rust plugin's serde types refuse. */
function parse(payload, what) {
  const refuse = (why) => {
    throw new PluginError(`malformed ${what}: ${why}`);
  };
  let op;
  try {
    op = fromJson(payload);
  } catch (err) {
    refuse(err.message);
  }
  if (op === null || typeof op !== 'object' || typeof op.op !== 'string' || !Object.hasOwn(FIELDS, op.op)) {
    refuse('unknown or missing op');
  }
  const [required, optional] = FIELDS[op.op];
  const fields = Object.keys(op).filter((field) => field !== 'op');
  if (!required.every((f) => fields.includes(f)) || !fields.every((f) => required.includes(f) || optional.includes(f))) {
    refuse(`fields of ${op.op} must be ${[...required, ...optional].sort().join(', ')}`);
  }
  for (const name of ['key', 'value', 'start']) {
    if (name in op && typeof op[name] !== 'string') refuse(`${name} must be a string`);
  }
  for (const name of ['expected', 'end']) {
    if (op[name] != null && typeof op[name] !== 'string') refuse(`${name} must be a string or null`);
  }
  if (op.limit != null && !(Number.isInteger(op.limit) && op.limit >= 0 && op.limit < 2 ** 32)) {
    refuse('limit must be a u32');
  }
  return op;
}

/** Stored bytes as text (null when absent). */
function stored(raw) {
  if (raw === undefined) return null;
  try {
    return text(raw);
  } catch {
    throw new PluginError('stored value is not UTF-8');
  }
}

/** Answers `get` and `scan`, the ops a query may send. */
function read(kv, op) {
  if (op.op === 'get') return { value: stored(kv.get(op.key)) };
  if (op.op === 'scan') {
    const pairs = kv.scan(op.start, op.end, Math.min(op.limit ?? MAX_SCAN_LIMIT, MAX_SCAN_LIMIT));
    return { items: Array.from(pairs, ([key, value]) => ({ key: stored(key), value: stored(value) })) };
  }
  throw new PluginError(`${op.op} is a write: send it as a command, not a query`);
}

export default defineStateMachine({
  apply(entry, kv) {
    const op = parse(entry.payload, 'command');
    switch (op.op) {
      case 'put': {
        const previous = stored(kv.get(op.key));
        kv.set(op.key, op.value);
        return toJson({ previous });
      }
      case 'delete': {
        const deleted = kv.get(op.key) !== undefined;
        kv.delete(op.key);
        return toJson({ deleted });
      }
      case 'cas': {
        const current = stored(kv.get(op.key));
        if (current !== (op.expected ?? null)) return toJson({ swapped: false, current });
        kv.set(op.key, op.value);
        return toJson({ swapped: true, current: op.value });
      }
      default:
        return toJson(read(kv, op));
    }
  },

  query: (request, kv) => toJson(read(kv, parse(request, 'query'))),
});
