// Runs the plugin natively on the SDK's test host: node --test

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkBatchIndependence, checkSnapshotRoundTrip, TestHost } from './sdk/testing.js';

const plugin = new URL('./plugin.js', import.meta.url);
const add = (key, by) => (by === undefined ? { op: 'add', key } : { op: 'add', key, by });
const text = (result) => ({ ...result, ok: result.ok && Buffer.from(result.ok).toString() });

test('adds accumulate per key', async () => {
  const host = await TestHost.load(plugin);
  assert.deepEqual(text(host.apply('{"op":"add","key":"a"}')), { ok: '{"key":"a","value":1}' });
  assert.deepEqual(host.applyJson(add('a', 4)), { ok: { key: 'a', value: 5 } });
  assert.deepEqual(host.applyJson(add('b', -3)), { ok: { key: 'b', value: -3 } });
  assert.deepEqual(host.applyJson({ op: 'reset', key: 'a' }), { ok: { key: 'a', value: 0 } });
  assert.equal(host.kv().length, 1, 'reset deletes the key');
});

test('a failed command changes nothing', async () => {
  const host = await TestHost.load(plugin);
  host.applyJson(add('a', Number.MAX_SAFE_INTEGER));
  const before = host.kv();
  assert.deepEqual(host.applyJson(add('a')), { err: 'overflow' });
  assert.deepEqual(host.applyJson({ op: 'double', key: 'a' }), { err: 'unknown op "double"' });
  assert.match(host.applyJson(add('a', '1')).err, /^malformed command/);
  assert.deepEqual(host.kv(), before);
});

test('queries read the current value', async () => {
  const host = await TestHost.load(plugin);
  host.applyJson(add('a', 2));
  assert.deepEqual(text(host.query('{"key":"a"}')), { ok: '{"key":"a","value":2}' });
  assert.deepEqual(host.queryJson({ key: 'b' }), { ok: { key: 'b', value: 0 } });
});

test('state survives a snapshot round trip', async () => {
  const host = await TestHost.load(plugin);
  for (let i = 0; i < 30; i++) host.applyJson(add(`k${i % 7}`, i));
  await checkSnapshotRoundTrip(host);
});

test('results do not depend on batching', async () => {
  const commands = Array.from({ length: 30 }, (_, i) => {
    if (i % 5 === 0) return { op: 'reset', key: `k${i % 3}` };
    if (i % 5 === 4) return { op: 'nope', key: 'k' };
    return add(`k${i % 3}`, i - 10);
  });
  await checkBatchIndependence(plugin, commands.map((c) => JSON.stringify(c)));
});
