// Runs a JavaScript plugin in plain node, without wasm, on an in-memory kv with the real host's
// semantics: keys in bytewise order, each entry atomic (a throw rolls back its writes and its
// error text is the result), queries and snapshots read-only, snapshots through the same SDK code
// as in the component. The plugin goes through the same exports the component has (exportsFor),
// over fake host imports.
//
//     const host = await TestHost.load(new URL('./kv.js', import.meta.url));
//     assert.deepEqual(host.applyJson({ op: 'put', key: 'a', value: '1' }), { ok: { previous: null } });
//     await checkSnapshotRoundTrip(host);

import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { bytes, exportsFor, fromJson } from './wasmraft-sdk.js';

/** Chunk size of the snapshots the checks take: small, so records straddle chunk boundaries. */
const CHECK_CHUNK_BYTES = 61;

const hex = (key) => Buffer.from(key).toString('hex');
const unhex = (key) => new Uint8Array(Buffer.from(key, 'hex'));
const copy = (value) => Uint8Array.from(value);

let loads = 0;

/**
 * A fresh instance of the plugin module at `plugin` (a file URL or a path): the module is
 * evaluated anew, so nothing it keeps in JS memory carries over, as when the node restarts it.
 */
async function instantiate(plugin) {
  const url = plugin instanceof URL || String(plugin).startsWith('file:') ? new URL(plugin) : pathToFileURL(resolve(plugin));
  url.searchParams.set('instance', ++loads);
  return (await import(url.href)).default;
}

/** A WIT result as a test result: `{ ok: value }` or `{ err: text }`. */
const settle = ({ tag, val }) => (tag === 'ok' ? { ok: val } : { err: val });

/** A plugin running natively on an in-memory kv space. */
export class TestHost {
  /** The log index of the next entry. */
  nextIndex = 1;
  /** The Raft term the next entries carry. */
  term = 1;
  /** The leader timestamp the next entries carry. */
  timestampMs = 0;

  #plugin;
  #exports;
  #committed = new Map(); // hex key -> value
  #overlay = null; // hex key -> value, or null for a delete: the writes of the call in progress
  #readOnly = null; // what is running while writes are refused ('query', 'snapshot')
  #refused = null; // the error of a refused write
  #batch = [];
  #results = [];

  /** Use TestHost.load. */
  constructor(plugin) {
    this.#plugin = plugin;
  }

  /** The plugin module this host runs. */
  get plugin() {
    return this.#plugin;
  }

  /** A host with an empty kv space on which `init(ctx)` ran; throws if init fails. */
  static async load(plugin, ctx = {}) {
    const host = new TestHost(plugin);
    await host.reload();
    const result = host.init(ctx);
    if ('err' in result) throw new Error(`init failed: ${result.err}`);
    return host;
  }

  /** A new host whose kv space is restored from snapshot `chunks`; throws if the plugin refuses them. */
  static async restore(plugin, chunks) {
    const host = new TestHost(plugin);
    await host.reload();
    const result = host.#atomic(() => {
      host.#exports.restoreBegin();
      for (const chunk of chunks) {
        const pushed = host.#exports.restoreChunk(copy(chunk));
        if (pushed.tag === 'err') return pushed;
      }
      return host.#exports.restoreFinish();
    });
    if ('err' in result) throw new Error(`restore failed: ${result.err}`);
    return host;
  }

  /** Replaces the plugin instance by a fresh one, as the node does after a restart or a trap. */
  async reload() {
    this.#exports = exportsFor(await instantiate(this.#plugin), this.#imports());
  }

  /** Runs `init` (as an activation would), atomically: `{ ok: undefined }` or `{ err }`. */
  init({ previousVersion, config = '' } = {}) {
    return this.#atomic(() => this.#exports.init({ previousVersion, config: copy(bytes(config)) }));
  }

  /** Applies one entry (a Uint8Array, or a string as UTF-8): `{ ok: Uint8Array }` or `{ err: text }`. */
  apply(payload) {
    return this.applyBatch([payload])[0];
  }

  /** Applies entries in one `apply` call, as one batch of the log: one result each. */
  applyBatch(payloads) {
    this.#batch = payloads.map((payload) => ({
      index: BigInt(this.nextIndex++),
      term: BigInt(this.term),
      timestampMs: BigInt(this.timestampMs),
      payload: copy(bytes(payload)),
    }));
    this.#results = [];
    this.#exports.apply();
    return this.#results;
  }

  /** `apply` with a JSON value in and out: `{ ok: value }` or `{ err: text }`. */
  applyJson(command) {
    return parsed(this.apply(JSON.stringify(command)));
  }

  /** Answers a query from the committed state; a write fails it, as on the real host. */
  query(request) {
    return this.#readOnlyCall('query', () => settle(this.#exports.query(copy(bytes(request)))));
  }

  /** `query` with a JSON value in and out. */
  queryJson(request) {
    return parsed(this.query(JSON.stringify(request)));
  }

  /** The committed kv space: `[key, value]` Uint8Array pairs in key order. */
  kv() {
    return [...this.#committed.keys()].sort().map((key) => [unhex(key), copy(this.#committed.get(key))]);
  }

  /** The committed value at `key` (a Uint8Array, or a string as UTF-8), or undefined. */
  get(key) {
    const value = this.#committed.get(hex(bytes(key)));
    return value && copy(value);
  }

  /** The plugin's snapshot stream of the committed state, in chunks of at most `chunkBytes`. */
  snapshot(chunkBytes = 4096) {
    const result = this.#readOnlyCall('snapshot', () => {
      this.#exports.snapshotBegin();
      const chunks = [];
      for (let chunk; (chunk = this.#exports.snapshotNext(chunkBytes)) !== undefined; ) chunks.push(chunk);
      return { ok: chunks };
    });
    if ('err' in result) throw new Error(result.err);
    return result.ok;
  }

  /** Runs `f` (returning a WIT result) over a write overlay, committed only on `ok`. */
  #atomic(f) {
    this.#overlay = new Map();
    try {
      const result = f();
      if (result.tag === 'ok') this.#commit();
      return settle(result);
    } finally {
      this.#overlay = null;
    }
  }

  #readOnlyCall(what, f) {
    this.#readOnly = what;
    try {
      const result = f();
      return this.#refused ? { err: this.#refused } : result;
    } finally {
      this.#readOnly = null;
      this.#refused = null;
    }
  }

  #commit() {
    for (const [key, value] of this.#overlay) {
      if (value === null) this.#committed.delete(key);
      else this.#committed.set(key, value);
    }
  }

  #read(key) {
    const value = this.#overlay?.has(key) ? this.#overlay.get(key) : this.#committed.get(key);
    return value ?? undefined;
  }

  #write(key, value) {
    if (this.#readOnly) {
      // The real host aborts the call: nothing the plugin catches can undo that.
      this.#refused ??= `read-only: a ${this.#readOnly} tried to write to kv`;
      throw new Error(this.#refused);
    }
    if (!this.#overlay) throw new Error('kv write outside init, an entry or a restore');
    this.#overlay.set(hex(key), value === undefined ? null : copy(value));
  }

  /** The host imports the SDK calls, over this host's state. */
  #imports() {
    return {
      kv: {
        get: (key) => {
          const value = this.#read(hex(key));
          return value && copy(value);
        },
        scan: (start, end, limit) => {
          const [from, to] = [hex(start), end === undefined ? undefined : hex(end)];
          const keys = new Set([...this.#committed.keys(), ...(this.#overlay?.keys() ?? [])]);
          return [...keys]
            .filter((key) => key >= from && (to === undefined || key < to) && this.#read(key) !== undefined)
            .sort()
            .slice(0, limit)
            .map((key) => [unhex(key), copy(this.#read(key))]);
        },
        set: (key, value) => this.#write(key, value),
        delete: (key) => this.#write(key, undefined),
        writeBatch: (writes) => writes.forEach(([key, value]) => this.#write(key, value)),
      },
      entries: {
        next: () => {
          const entry = this.#batch.shift();
          if (entry !== undefined) this.#overlay = new Map();
          return entry;
        },
        finish: (outcome) => {
          if (outcome.tag === 'ok') this.#commit();
          this.#overlay = null;
          this.#results.push(settle(outcome));
        },
      },
    };
  }
}

/** A result whose `ok` bytes are JSON, decoded. */
function parsed(result) {
  return 'ok' in result ? { ok: fromJson(result.ok) } : result;
}

const equalBytes = (a, b) => Buffer.compare(a, b) === 0;
const sameResult = (a, b) => ('ok' in a ? 'ok' in b && equalBytes(a.ok, b.ok) : a.err === b.err);
const sameKv = (a, b) => a.length === b.length && a.every(([k, v], i) => equalBytes(k, b[i][0]) && equalBytes(v, b[i][1]));
const show = (result) => ('ok' in result ? `ok ${Buffer.from(result.ok)}` : `err ${JSON.stringify(result.err)}`);

/** Snapshots `host`, restores the stream into a fresh host and compares both kv spaces. */
export async function checkSnapshotRoundTrip(host) {
  const restored = await TestHost.restore(host.plugin, host.snapshot(CHECK_CHUNK_BYTES));
  if (!sameKv(host.kv(), restored.kv())) {
    throw new Error(
      `snapshot round trip changed the state: ${host.kv().length} keys before, ${restored.kv().length} after restore`,
    );
  }
}

/**
 * Applies `payloads` to `plugin` three ways: all in one batch on one instance, in batches of 7 and
 * one entry at a time, each batch on a fresh instance (as replicas that batch differently or
 * restart would); throws unless results and kv spaces are identical.
 */
export async function checkBatchIndependence(plugin, payloads) {
  const run = async (batchSize) => {
    const host = await TestHost.load(plugin);
    const results = [];
    for (let at = 0; at < payloads.length; at += batchSize) {
      if (at > 0) await host.reload();
      results.push(...host.applyBatch(payloads.slice(at, at + batchSize)));
    }
    return { results, kv: host.kv() };
  };
  const reference = await run(payloads.length);
  for (const batchSize of [7, 1]) {
    const { results, kv } = await run(batchSize);
    const differs = results.findIndex((result, i) => !sameResult(result, reference.results[i]));
    if (differs >= 0) {
      throw new Error(
        `entry ${differs + 1} gave ${show(reference.results[differs])} in one batch but ` +
          `${show(results[differs])} in batches of ${batchSize}`,
      );
    }
    if (!sameKv(kv, reference.kv)) throw new Error(`kv state differs between one batch and batches of ${batchSize}`);
  }
}
