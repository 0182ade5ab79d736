// The kv example plugin in JavaScript: the same commands and results as the Rust `kv` plugin.
//
// Commands and queries are JSON objects tagged by "op": put, get, delete, cas, scan (see
// plugins/kv/src/lib.rs for the table). Results are compact JSON, byte-for-byte what the Rust
// plugin returns. State lives only in the host kv space; snapshots stream it in the SDK's default
// format (magic, then length-prefixed key/value records), so they are interchangeable with Rust's.

import * as kv from 'wasmraft:plugin/kv@0.1.0';
import * as entries from 'wasmraft:plugin/entries@0.1.0';

const MAX_SCAN_LIMIT = 1000;
const SCAN_PAGE = 256;
const MAGIC = new Uint8Array([0x77, 0x72, 0x6b, 0x76, 0, 0, 0, 1]); // "wrkv" 0 0 0 1

const FIELDS = {
  put: [['key', 'value'], []],
  get: [['key'], []],
  delete: [['key'], []],
  cas: [['key', 'value'], ['expected']],
  scan: [['start'], ['end', 'limit']],
};

class Refused extends Error {}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });
const bytes = (s) => encoder.encode(s);
const dumps = (value) => encoder.encode(JSON.stringify(value));

function text(raw) {
  try {
    return decoder.decode(raw);
  } catch {
    throw new Refused('stored value is not UTF-8');
  }
}

function parse(payload, what) {
  let op;
  try {
    op = JSON.parse(text(payload));
  } catch (err) {
    throw new Refused(`malformed ${what}: ${err.message}`);
  }
  if (op === null || typeof op !== 'object' || Array.isArray(op) || !Object.hasOwn(FIELDS, op.op)) {
    throw new Refused(`malformed ${what}: unknown or missing op`);
  }
  const [required, optional] = FIELDS[op.op];
  const fields = Object.keys(op).filter((f) => f !== 'op');
  if (!required.every((f) => fields.includes(f)) || !fields.every((f) => required.includes(f) || optional.includes(f))) {
    throw new Refused(`malformed ${what}: fields of ${op.op} must be ${[...required, ...optional].sort().join(', ')}`);
  }
  for (const name of ['key', 'value', 'start']) {
    if (name in op && typeof op[name] !== 'string') throw new Refused(`malformed ${what}: ${name} must be a string`);
  }
  for (const name of ['expected', 'end']) {
    if (op[name] != null && typeof op[name] !== 'string') {
      throw new Refused(`malformed ${what}: ${name} must be a string or null`);
    }
  }
  const limit = op.limit;
  if (limit != null && !(Number.isInteger(limit) && limit >= 0 && limit < 2 ** 32)) {
    throw new Refused(`malformed ${what}: limit must be a u32`);
  }
  return op;
}

function get(key) {
  const raw = kv.get(bytes(key));
  return raw == null ? null : text(raw);
}

function read(op) {
  if (op.op === 'get') return { value: get(op.key) };
  if (op.op === 'scan') {
    const limit = op.limit == null ? MAX_SCAN_LIMIT : Math.min(op.limit, MAX_SCAN_LIMIT);
    const pairs = kv.scan(bytes(op.start), op.end == null ? undefined : bytes(op.end), limit);
    return { items: pairs.map(([k, v]) => ({ key: text(k), value: text(v) })) };
  }
  throw new Refused(`${op.op} is a write: send it as a command, not a query`);
}

function applyOp(op) {
  switch (op.op) {
    case 'put': {
      const previous = get(op.key);
      kv.set(bytes(op.key), bytes(op.value));
      return { previous };
    }
    case 'delete': {
      const deleted = kv.get(bytes(op.key)) != null;
      kv.delete(bytes(op.key));
      return { deleted };
    }
    case 'cas': {
      const current = get(op.key);
      if (current === (op.expected ?? null)) {
        kv.set(bytes(op.key), bytes(op.value));
        return { swapped: true, current: op.value };
      }
      return { swapped: false, current };
    }
    default:
      return read(op);
  }
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function lengthPrefix(n) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n, true);
  return out;
}

class SnapshotWriter {
  constructor() {
    this.nextKey = new Uint8Array(0);
    this.pending = MAGIC;
  }

  nextChunk(maxBytes) {
    maxBytes = Math.max(maxBytes, 1);
    const parts = [this.pending];
    let size = this.pending.length;
    while (size < maxBytes && this.nextKey !== null) {
      const pairs = kv.scan(this.nextKey, undefined, SCAN_PAGE);
      this.nextKey = pairs.length === SCAN_PAGE ? concat([pairs[pairs.length - 1][0], new Uint8Array(1)]) : null;
      for (const [key, value] of pairs) {
        parts.push(lengthPrefix(key.length), key, lengthPrefix(value.length), value);
        size += 8 + key.length + value.length;
      }
    }
    const all = concat(parts);
    if (all.length === 0) return undefined;
    this.pending = all.slice(maxBytes);
    return all.slice(0, maxBytes);
  }
}

class SnapshotReader {
  constructor() {
    this.buffer = new Uint8Array(0);
    this.seenMagic = false;
  }

  push(chunk) {
    this.buffer = concat([this.buffer, chunk]);
    let at = 0;
    if (!this.seenMagic) {
      if (this.buffer.length < MAGIC.length) return;
      if (!MAGIC.every((b, i) => this.buffer[i] === b)) throw new Refused('not a wasmraft kv snapshot (bad magic)');
      this.seenMagic = true;
      at = MAGIC.length;
    }
    const writes = [];
    for (;;) {
      const record = this.decode(at);
      if (record === null) break;
      writes.push([record[0], record[1]]);
      at = record[2];
    }
    if (writes.length > 0) kv.writeBatch(writes);
    this.buffer = this.buffer.slice(at);
  }

  decode(at) {
    const parts = [];
    const view = new DataView(this.buffer.buffer, this.buffer.byteOffset, this.buffer.byteLength);
    for (let i = 0; i < 2; i++) {
      if (this.buffer.length < at + 4) return null;
      const length = view.getUint32(at, true);
      if (this.buffer.length < at + 4 + length) return null;
      parts.push(this.buffer.slice(at + 4, at + 4 + length));
      at += 4 + length;
    }
    return [parts[0], parts[1], at];
  }

  finish() {
    if (!this.seenMagic) throw new Refused('snapshot stream ended before its header');
    if (this.buffer.length > 0) {
      throw new Refused(`snapshot stream truncated: ${this.buffer.length} bytes of an incomplete record`);
    }
  }
}

let writer = null;
let reader = null;

// A deterministic error result: the message, as the WIT `err` payload.
function refuse(err) {
  if (err instanceof Refused) throw err.message;
  throw `${err}`;
}

export function init(_ctx) {}

export function apply() {
  for (let entry = entries.next(); entry != null; entry = entries.next()) {
    try {
      entries.finish({ tag: 'ok', val: dumps(applyOp(parse(entry.payload, 'command'))) });
    } catch (err) {
      entries.finish({ tag: 'err', val: err instanceof Refused ? err.message : `${err}` });
    }
  }
}

export function query(request) {
  try {
    return dumps(read(parse(request, 'query')));
  } catch (err) {
    refuse(err);
  }
}

export function snapshotBegin() {
  writer = new SnapshotWriter();
}

export function snapshotNext(maxBytes) {
  const chunk = writer ? writer.nextChunk(maxBytes) : undefined;
  if (chunk === undefined) writer = null;
  return chunk;
}

export function restoreBegin() {
  reader = new SnapshotReader();
}

export function restoreChunk(chunk) {
  if (reader === null) throw 'restore-chunk called before restore-begin';
  try {
    reader.push(chunk);
  } catch (err) {
    refuse(err);
  }
}

export function restoreFinish() {
  const done = reader;
  reader = null;
  if (done === null) throw 'restore-finish called before restore-begin';
  try {
    done.finish();
  } catch (err) {
    refuse(err);
  }
}
