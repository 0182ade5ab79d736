// {{name}}: a wasmraft plugin keeping one counter per key, with all of its state in kv.
//
//   {"op":"add","key":"a","by":2}   ->  {"key":"a","value":2}
//   {"op":"add","key":"a"}          ->  {"key":"a","value":3}     (by defaults to 1)
//   {"op":"reset","key":"a"}        ->  {"key":"a","value":0}
//
// The query {"key":"a"} answers {"key":"a","value":3} (0 for a key never set). Values stay within
// ±(2^53 - 1), the integers every SDK language (JavaScript too) holds exactly: an add past that
// fails with "overflow" and, like every failed command, changes nothing. (JSON.parse reads 2.0 and
// 2e0 as the integer 2, which the Rust, Python and C versions refuse: send plain integers.)

import { defineStateMachine, fromJson, PluginError, toJson } from './sdk/wasmraft-sdk.js';

/** The JSON object in `payload`, with a string `key` and no field outside `fields`. */
function parse(payload, what, fields) {
  let obj;
  try {
    obj = fromJson(payload);
  } catch (err) {
    throw new PluginError(`malformed ${what}: ${err.message}`);
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new PluginError(`malformed ${what}: expected an object`);
  }
  const unknown = Object.keys(obj).find((name) => !fields.includes(name));
  if (unknown !== undefined) throw new PluginError(`malformed ${what}: unknown field ${unknown}`);
  if (typeof obj.key !== 'string') throw new PluginError(`malformed ${what}: key must be a string`);
  return obj;
}

/** The counter at `key`, stored as decimal text (0 when absent). */
const load = (kv, key) => kv.getJson(key) ?? 0;

export default defineStateMachine({
  apply(entry, kv) {
    const { op, key, by: given } = parse(entry.payload, 'command', ['op', 'key', 'by']);
    const by = given ?? 1;
    if (typeof op !== 'string' || !Number.isInteger(by)) {
      throw new PluginError('malformed command: op must be a string and by an integer');
    }
    let value;
    if (op === 'add') {
      value = load(kv, key) + by;
      if (!Number.isSafeInteger(by) || !Number.isSafeInteger(value)) throw new PluginError('overflow');
      kv.setJson(key, value);
    } else if (op === 'reset') {
      value = 0;
      kv.delete(key);
    } else {
      throw new PluginError(`unknown op "${op}"`);
    }
    return toJson({ key, value });
  },

  query(request, kv) {
    const { key } = parse(request, 'query', ['key']);
    return toJson({ key, value: load(kv, key) });
  },
});
