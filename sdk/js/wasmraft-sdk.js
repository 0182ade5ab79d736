// The wasmraft guest SDK for JavaScript: write a replicated state machine as a plain object.
//
//     import { defineStateMachine, toJson, fromJson } from '../../sdk/js/wasmraft-sdk.js';
//     export default defineStateMachine({
//       apply(entry, kv) { kv.set('last', entry.payload); return toJson({ ok: true }); },
//       query(request, kv) { return kv.get('last') ?? ''; },
//     });
//
// `build.mjs` turns such a module into a component (`entry.js` wires it to the WIT imports);
// `testing.js` runs it in plain node. Nothing here reads a clock or randomness: a plugin must be
// deterministic.

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** Pairs fetched per host `scan` call while iterating. */
const SCAN_PAGE = 256;

/** Stack frames an error result carries after its `TypeName: message` line. */
const STACK_FRAMES = 4;

/** First bytes of the default snapshot stream ("wrkv", format 1): the Rust SDK's format. */
export const MAGIC = Uint8Array.of(0x77, 0x72, 0x6b, 0x76, 0, 0, 0, 1);

/** A deterministic refusal: its message alone (no type name, no stack) is the error result. */
export class PluginError extends Error {
  name = 'PluginError';
}

/** `value` as bytes: a Uint8Array as is, a string as UTF-8. */
export function bytes(value) {
  if (value instanceof Uint8Array) return value;
  if (typeof value === 'string') return encoder.encode(value);
  throw new TypeError(`expected a Uint8Array or a string, got ${value === null ? 'null' : typeof value}`);
}

/** UTF-8 bytes as a string; invalid UTF-8 is a PluginError. */
export function text(data) {
  try {
    return decoder.decode(data);
  } catch {
    throw new PluginError('not valid UTF-8');
  }
}

/** `value` as compact JSON text in UTF-8 bytes. */
export function toJson(value) {
  return encoder.encode(JSON.stringify(value));
}

/** The value of JSON text given as UTF-8 bytes or a string (throws SyntaxError). */
export function fromJson(data) {
  return JSON.parse(typeof data === 'string' ? data : text(data));
}

/**
 * The error result for a thrown value: a PluginError's message, a thrown string as is, otherwise
 * `TypeName: message` and the first stack frames the engine recorded.
 */
export function errorText(err) {
  if (err instanceof PluginError) return err.message;
  const head = String(err);
  if (!(err instanceof Error) || typeof err.stack !== 'string') return head;
  // V8 starts the stack with the head line(s) and writes frames as `at f (file:1:2)`;
  // SpiderMonkey lists frames only, as `f@file:1:2`.
  const stack = err.stack.startsWith(head) ? err.stack.slice(head.length) : err.stack;
  const frames = stack.split('\n').map((line) => line.trim()).filter((line) => /^at |@/.test(line));
  return [head, ...frames.slice(0, STACK_FRAMES).map((frame) => `  ${frame}`)].join('\n');
}

/** The smallest key after `key`: where the next page of a scan starts. */
function successor(key) {
  const next = new Uint8Array(key.length + 1);
  next.set(key);
  return next;
}

/**
 * The plugin's durable kv space, ordered bytewise. Keys and values are Uint8Arrays (strings are
 * taken as UTF-8). An entry's writes commit with it, or not at all; queries may not write.
 */
export class Kv {
  #host;

  constructor(host) {
    this.#host = host;
  }

  /** The value at `key`, or undefined. */
  get(key) {
    return this.#host.get(bytes(key)) ?? undefined;
  }

  /** The JSON value at `key`, decoded, or undefined. */
  getJson(key) {
    const value = this.get(key);
    return value === undefined ? undefined : fromJson(value);
  }

  set(key, value) {
    this.#host.set(bytes(key), bytes(value));
  }

  /** Stores `value` at `key` as JSON. */
  setJson(key, value) {
    this.set(key, toJson(value));
  }

  /** Removes `key` (a missing key is fine). */
  delete(key) {
    this.#host.delete(bytes(key));
  }

  /** Several writes in one host call, in order: `[key, value]` sets, `[key, undefined]` deletes. */
  writeBatch(writes) {
    this.#host.writeBatch(writes.map(([key, value]) => [bytes(key), value == null ? undefined : bytes(value)]));
  }

  /**
   * Iterates `[key, value]` pairs with `start <= key < end` (no `end`: to the end of the space)
   * in key order, at most `limit` of them, fetching them from the host page by page.
   */
  *scan(start = '', end = undefined, limit = Infinity) {
    let from = bytes(start);
    const to = end == null ? undefined : bytes(end);
    while (limit > 0) {
      const asked = Math.min(limit, SCAN_PAGE);
      const page = this.#host.scan(from, to, asked);
      yield* page;
      if (page.length < asked) return;
      limit -= page.length;
      from = successor(page[page.length - 1][0]);
    }
  }
}

/**
 * Checks and returns a state machine: `{ init?(ctx, kv), apply(entry, kv), query(request, kv) }`.
 *
 * - `init` runs once when the version is activated; `ctx` is `{ previousVersion, config }`
 *   (previousVersion: sha256 hex or null; config: Uint8Array).
 * - `apply` gets `{ index, term, timestampMs, payload }` (numbers and a Uint8Array) and returns
 *   the result as a Uint8Array or a string. It must depend only on the entry and kv: keep no
 *   state in JS memory, as replicas batch entries differently and restart.
 * - `query` gets the request bytes and a read-only kv, and returns like `apply`.
 *
 * A throw from any of them becomes the call's error result (see `errorText`); a failed entry's
 * kv writes are rolled back and the next entry applies as usual.
 */
export function defineStateMachine(machine) {
  for (const name of ['apply', 'query']) {
    if (typeof machine?.[name] !== 'function') throw new TypeError(`state machine: ${name} must be a function`);
  }
  if (machine.init !== undefined && typeof machine.init !== 'function') {
    throw new TypeError('state machine: init, when given, must be a function');
  }
  return machine;
}

/** `f()` as a WIT result: `{ tag: 'ok', val }`, or `{ tag: 'err', val: text }` if it threw. */
function outcome(f) {
  try {
    return { tag: 'ok', val: f() };
  } catch (err) {
    return { tag: 'err', val: errorText(err) };
  }
}

/**
 * The exports of the WIT world `state-machine` for `machine`, over the host imports
 * `{ kv, entries }`: the real ones in a component (entry.js), a fake in tests (testing.js).
 */
export function exportsFor(machine, { kv: hostKv, entries }) {
  const kv = new Kv(hostKv);
  let writer;
  let reader;
  return {
    init: ({ previousVersion, config }) =>
      outcome(() => {
        machine.init?.({ previousVersion: previousVersion ?? null, config }, kv);
      }),
    apply() {
      for (let next = entries.next(); next != null; next = entries.next()) {
        const entry = {
          index: Number(next.index),
          term: Number(next.term),
          timestampMs: Number(next.timestampMs),
          payload: next.payload,
        };
        entries.finish(outcome(() => bytes(machine.apply(entry, kv))));
      }
    },
    query: (request) => outcome(() => bytes(machine.query(request, kv))),
    snapshotBegin() {
      writer = new SnapshotWriter(kv);
    },
    snapshotNext(maxBytes) {
      const chunk = writer?.next(maxBytes);
      if (chunk === undefined) writer = undefined;
      return chunk;
    },
    restoreBegin() {
      reader = new SnapshotReader();
    },
    restoreChunk: (chunk) =>
      outcome(() => {
        if (!reader) throw new PluginError('restore-chunk called before restore-begin');
        reader.push(kv, chunk);
      }),
    restoreFinish() {
      const done = reader;
      reader = undefined;
      return outcome(() => {
        if (!done) throw new PluginError('restore-finish called before restore-begin');
        done.finish();
      });
    },
  };
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function u32le(n) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, n, true);
  return out;
}

/**
 * Streams the kv space out as MAGIC then `[key len u32 LE][key][value len u32 LE][value]` records
 * in key order: the Rust SDK's default snapshot, byte for byte.
 */
export class SnapshotWriter {
  #pairs;
  #pending = MAGIC;

  constructor(kv) {
    this.#pairs = kv.scan();
  }

  /** The next chunk, at most `maxBytes` long (at least one byte), or undefined at the end. */
  next(maxBytes) {
    maxBytes = Math.max(maxBytes, 1);
    const parts = [this.#pending];
    let size = this.#pending.length;
    while (size < maxBytes) {
      const { value: pair, done } = this.#pairs.next();
      if (done) break;
      for (const part of pair) {
        parts.push(u32le(part.length), part);
        size += 4 + part.length;
      }
    }
    const all = concat(parts);
    if (all.length === 0) return undefined;
    this.#pending = all.slice(maxBytes);
    return all.slice(0, maxBytes);
  }
}

/** Restores a stream written by SnapshotWriter (chunked anywhere) into an empty kv space. */
export class SnapshotReader {
  #buffer = new Uint8Array(0);
  #seenMagic = false;

  /** Takes the next chunk and writes every complete record in it. */
  push(kv, chunk) {
    const buffer = concat([this.#buffer, chunk]);
    let at = 0;
    if (!this.#seenMagic) {
      if (buffer.length < MAGIC.length) {
        this.#buffer = buffer;
        return;
      }
      if (!MAGIC.every((b, i) => buffer[i] === b)) throw new PluginError('not a wasmraft kv snapshot (bad magic)');
      this.#seenMagic = true;
      at = MAGIC.length;
    }
    const view = new DataView(buffer.buffer);
    const part = (from) => {
      if (buffer.length < from + 4) return undefined;
      const end = from + 4 + view.getUint32(from, true);
      return buffer.length < end ? undefined : [buffer.slice(from + 4, end), end];
    };
    const writes = [];
    for (;;) {
      const key = part(at);
      const value = key && part(key[1]);
      if (!value) break;
      writes.push([key[0], value[0]]);
      at = value[1];
    }
    if (writes.length > 0) kv.writeBatch(writes);
    this.#buffer = buffer.slice(at);
  }

  /** Checks that the stream ended on a record boundary. */
  finish() {
    if (!this.#seenMagic) throw new PluginError('snapshot stream ended before its header');
    if (this.#buffer.length > 0) {
      throw new PluginError(`snapshot stream truncated: ${this.#buffer.length} bytes of an incomplete record`);
    }
  }
}
