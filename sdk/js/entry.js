// The root module of a JavaScript plugin component: the plugin's state machine (the default
// export of the module build.mjs aliases as `wasmraft-plugin`) wired to the host's WIT imports.
// Only the component build reads this file; tests use testing.js instead.

import * as kv from 'wasmraft:plugin/kv@0.1.0';
import * as entries from 'wasmraft:plugin/entries@0.1.0';
import machine from 'wasmraft-plugin';
import { exportsFor } from './wasmraft-sdk.js';

export const { init, apply, query, snapshotBegin, snapshotNext, restoreBegin, restoreChunk, restoreFinish } =
  exportsFor(machine, { kv, entries });
