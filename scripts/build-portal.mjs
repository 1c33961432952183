#!/usr/bin/env node
// Builds the web portal (portal/) into dist/portal/: index.html as it is, and one bundled,
// minified script and style sheet under assets/ (esbuild; preact's JSX). The API serves the
// result at `/` (api/portal.ts). The set-up (scripts/setup.mjs) runs this when the build is
// missing or older than a source; `npm run build:portal` runs it by hand.
import { copyFileSync, existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const src = path.join(root, 'portal');
const out = path.join(root, 'dist', 'portal');
// Built beside it and swapped in at the end: an API serving the old build (a test running
// while another rebuilds) never finds the folder empty or half-written.
const staging = `${out}.building-${process.pid}`;

rmSync(staging, { recursive: true, force: true });
mkdirSync(path.join(staging, 'assets'), { recursive: true });
await build({
  entryPoints: [
    { in: path.join(src, 'src', 'main.tsx'), out: 'portal' },
    { in: path.join(src, 'src', 'portal.css'), out: 'portal' },
  ],
  outdir: path.join(staging, 'assets'),
  bundle: true,
  format: 'esm',
  target: ['es2022', 'chrome110', 'firefox110', 'safari16'],
  platform: 'browser',
  jsx: 'automatic',
  jsxImportSource: 'preact',
  minify: true,
  sourcemap: 'linked',
  legalComments: 'linked',
  logLevel: 'warning',
});
copyFileSync(path.join(src, 'index.html'), path.join(staging, 'index.html'));
// The set-up compares this stamp with the sources' times.
writeFileSync(path.join(staging, '.built'), `${new Date().toISOString()}\n`);
const old = `${out}.old-${process.pid}`;
if (existsSync(out)) renameSync(out, old);
renameSync(staging, out);
rmSync(old, { recursive: true, force: true });
