#!/usr/bin/env node
// Builds a JavaScript plugin (an ES module whose default export is a state machine) into a
// wasmraft component: rolldown bundles it with the SDK into one module, componentize-js turns
// that into a component of the world `state-machine`. Tools come from tools/node_modules
// (installed by ./dev.sh setup; $WASMRAFT_TOOLS names another tools/), at the versions pinned in
// tools/package-lock.json; the WIT from wit/ ($WASMRAFT_WIT).
//
// Usage: sdk/js/build.mjs PLUGIN.js OUT.wasm

import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../..');
// In this repository, tools/ and wit/ beside it; in a project made by `wasmraft new` (which has
// its own copy of this file), `wasmraft build` says where they are.
const modules = join(process.env.WASMRAFT_TOOLS ?? join(repo, 'tools'), 'node_modules');
const wit = process.env.WASMRAFT_WIT ?? join(repo, 'wit');

const [plugin, out] = process.argv.slice(2);
if (!plugin || !out) {
  console.error('usage: sdk/js/build.mjs PLUGIN.js OUT.wasm');
  process.exit(2);
}
const tool = (path) => {
  if (!existsSync(path)) {
    console.error(`${path} is missing: run ./dev.sh setup`);
    process.exit(1);
  }
  return import(pathToFileURL(path));
};
const { build } = await tool(join(modules, 'rolldown/dist/index.mjs'));
const { componentize } = await tool(join(modules, '@bytecodealliance/componentize-js/src/componentize.js'));

const work = await mkdtemp(join(tmpdir(), 'wasmraft-js-'));
try {
  // Named after the plugin, so that stack frames in error results say `kv.js:LINE`.
  const bundle = join(work, basename(plugin));
  await build({
    input: join(here, 'entry.js'),
    external: [/^wasmraft:/],
    resolve: { alias: { 'wasmraft-plugin': resolve(plugin) } },
    output: { file: bundle, format: 'esm' },
    logLevel: 'warn',
  });
  const { component } = await componentize({
    sourcePath: bundle,
    witPath: wit,
    worldName: 'state-machine',
    // Nothing we do not provide: no stdio, random, clocks or http imports.
    disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
  });
  await writeFile(out, component);
} finally {
  await rm(work, { recursive: true, force: true });
}
