// The SDK and its native test host: `node --test sdk/js/test/*.test.js`.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkBatchIndependence, checkSnapshotRoundTrip, TestHost } from '../testing.js';
import { errorText, MAGIC, PluginError } from '../wasmraft-sdk.js';

const fixture = (name) => new URL(`./fixtures/${name}.js`, import.meta.url);
const utf8 = (bytes) => Buffer.from(bytes).toString();

/** A host whose kv holds key/00000 .. key/N-1. */
async function filled(n) {
  const host = await TestHost.load(fixture('ranges'));
  assert.deepEqual(host.applyJson({ fill: n }), { ok: { filled: n } });
  return host;
}

test('an entry that writes then throws is rolled back, its error names the type and message, and the batch goes on', async () => {
  const host = await TestHost.load(fixture('write-then-throw'));
  const [first, failed, last] = host.applyBatch(['a', 'throw', 'b']);
  assert.equal(utf8(first.ok), 'applied a at index 1, term 1, time 0');
  const lines = failed.err.split('\n');
  assert.equal(lines[0], 'RangeError: payload out of range');
  assert.ok(lines.length > 1 && lines.length <= 5, `a few stack frames: ${failed.err}`);
  assert.match(lines[1], /write-then-throw\.js/);
  assert.equal(utf8(last.ok), 'applied b at index 3, term 1, time 0');
  assert.deepEqual(host.kv().map(([key]) => utf8(key)), ['written/a', 'written/b']);
});

test('entries carry the index, term and timestamp the host sets', async () => {
  const host = await TestHost.load(fixture('write-then-throw'));
  Object.assign(host, { nextIndex: 41, term: 3, timestampMs: 1_700_000_000_000 });
  assert.equal(utf8(host.apply('a').ok), 'applied a at index 41, term 3, time 1700000000000');
  assert.equal(host.nextIndex, 42);
});

test('an exception in a query or in init is its error result', async () => {
  const host = await TestHost.load(fixture('write-then-throw'));
  assert.match(host.query('throw').err, /^TypeError: .*method/);
  await assert.rejects(TestHost.load(fixture('ranges'), { config: 'refuse' }), /^Error: init failed: Error: config refused\n/);
});

test('error text: a PluginError or a thrown string as is, other errors with their type and at most 4 frames', () => {
  assert.equal(errorText(new PluginError('refused')), 'refused');
  assert.equal(errorText('plain text'), 'plain text');
  const deep = (n) => (n === 0 ? new TypeError('deep') : deep(n - 1));
  const lines = errorText(deep(10)).split('\n');
  assert.equal(lines[0], 'TypeError: deep');
  assert.equal(lines.length, 5);
  assert.ok(lines.slice(1).every((line) => line.startsWith('  at ')), lines.join('\n'));
});

test('a write in a query fails the query even when the plugin catches the exception', async () => {
  const host = await TestHost.load(fixture('query-writes'));
  assert.deepEqual(host.query('x'), { err: 'read-only: a query tried to write to kv' });
  assert.deepEqual(host.kv(), []);
});

test('a plugin whose results depend on batching is caught', async () => {
  const payloads = Array.from({ length: 10 }, (_, i) => `entry ${i}`);
  await assert.rejects(
    checkBatchIndependence(fixture('batch-dependent'), payloads),
    /entry 8 gave ok 8 in one batch but ok 1 in batches of 7/,
  );
  await checkBatchIndependence(fixture('ranges'), ['{"fill":3}', '{"fill":1}', '{"fill":2}']);
});

test('scan pages across more than one page of the host', async () => {
  const host = await filled(600);
  assert.deepEqual(host.queryJson({ start: '' }), { ok: { count: 600, first: 'key/00000', last: 'key/00599' } });
  assert.deepEqual(host.queryJson({ start: 'key/00100', end: 'key/00400' }), {
    ok: { count: 300, first: 'key/00100', last: 'key/00399' },
  });
  assert.deepEqual(host.queryJson({ start: 'key/00001', limit: 520 }), {
    ok: { count: 520, first: 'key/00001', last: 'key/00520' },
  });
});

test('a snapshot round trip keeps the state, in the Rust SDK byte format', async () => {
  const host = await filled(600);
  await checkSnapshotRoundTrip(host);
  const small = await filled(2);
  const record = (key, value) => {
    const length = (s) => Buffer.from(Uint32Array.of(s.length).buffer);
    return Buffer.concat([length(key), Buffer.from(key), length(value), Buffer.from(value)]);
  };
  const expected = Buffer.concat([Buffer.from('wrkv\0\0\0\x01', 'latin1'), record('key/00000', '0'), record('key/00001', '1')]);
  assert.deepEqual(Buffer.concat(small.snapshot(7)), expected);
  assert.deepEqual(Buffer.from(MAGIC), expected.subarray(0, 8));
});

test('a truncated or garbled snapshot is refused', async () => {
  const host = await filled(600);
  const stream = Buffer.concat(host.snapshot(61));
  const restore = (chunks) => TestHost.restore(fixture('ranges'), chunks);
  await assert.rejects(restore([stream.subarray(0, -1)]), /restore failed: snapshot stream truncated: \d+ bytes/);
  await assert.rejects(restore([Buffer.from('not a snapshot')]), /bad magic/);
  await assert.rejects(restore([MAGIC.subarray(0, 4)]), /ended before its header/);
  assert.equal((await restore([stream.subarray(0, 100), stream.subarray(100)])).kv().length, 600);
});
