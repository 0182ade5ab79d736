// kv.js on the SDK's native test host: `node --test plugins/kv-js/kv.test.js`.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { checkBatchIndependence, checkSnapshotRoundTrip, TestHost } from '../../sdk/js/testing.js';

const plugin = new URL('./kv.js', import.meta.url);
const put = (key, value) => ({ op: 'put', key, value });

test('put returns the previous value and get reads the latest', async () => {
  const host = await TestHost.load(plugin);
  assert.deepEqual(host.applyJson(put('a', '1')), { ok: { previous: null } });
  assert.deepEqual(host.applyJson(put('a', '2')), { ok: { previous: '1' } });
  assert.deepEqual(host.queryJson({ op: 'get', key: 'a' }), { ok: { value: '2' } });
});

test('cas swaps only on the expected value, null meaning absent', async () => {
  const host = await TestHost.load(plugin);
  assert.deepEqual(host.applyJson({ op: 'cas', key: 'a', expected: null, value: '1' }), {
    ok: { swapped: true, current: '1' },
  });
  assert.deepEqual(host.applyJson({ op: 'cas', key: 'a', expected: '0', value: '2' }), {
    ok: { swapped: false, current: '1' },
  });
});

test('queries refuse writes and malformed commands are errors', async () => {
  const host = await TestHost.load(plugin);
  assert.match(host.queryJson(put('a', '1')).err, /is a write: send it as a command/);
  assert.match(host.applyJson({ op: 'put', key: 'a' }).err, /^malformed command: fields of put/);
  assert.deepEqual(host.kv(), []);
});

test('the shared kv script (plugins/kv/cases.jsonl) gives the Rust plugin results byte for byte', async () => {
  const host = await TestHost.load(plugin);
  const lines = readFileSync(new URL('../kv/cases.jsonl', import.meta.url), 'utf8').split('\n');
  for (const line of lines.filter((l) => l.trim() && !l.startsWith('#'))) {
    const step = JSON.parse(line);
    const payload = JSON.stringify(step.apply ?? step.query);
    const result = 'apply' in step ? host.apply(payload) : host.query(payload);
    if ('expect' in step) assert.equal(Buffer.from(result.ok ?? []).toString(), JSON.stringify(step.expect), line);
    else assert.ok(result.err?.includes(step.expect_error), `${line}: ${JSON.stringify(result)}`);
  }
  await checkSnapshotRoundTrip(host);
});

test('results and state do not depend on batching', async () => {
  const keys = ['a', 'b', 'c', 'a', 'z'];
  const log = keys.flatMap((key, i) => [
    JSON.stringify(put(key, String(i))),
    JSON.stringify({ op: 'cas', key, expected: String(i), value: 'x' }),
    JSON.stringify({ op: 'scan', start: '', limit: i }),
    i % 2 ? JSON.stringify({ op: 'delete', key }) : '{"op":"nope"}',
  ]);
  await checkBatchIndependence(plugin, log);
});
