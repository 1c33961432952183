/**
 * The Docker test peer: Debian's `docker.io` daemon, run privately for the suite (its own
 * `--data-root`, `--exec-root`, pid file and socket under the git-ignored `.cache/docker/`, so
 * images and build cache survive between runs and nothing touches a system daemon), and the
 * images test/compose.test.ts needs, built here because no image registry is reachable:
 *
 * - `cloudgate-test/debian:bookworm`: `debootstrap --variant=minbase bookworm` from the
 *   machine's Debian mirror, imported as an image (the base of all below);
 * - `cloudgate-test/node:20-bookworm`: that plus this machine's Node 20 (node, headers, npm),
 *   for the Dockerfile's NODE_IMAGE and NODE_RUNTIME_IMAGE;
 * - `cloudgate-test/postgres:15`, `cloudgate-test/temporal:1.32.2` (server and sql tool from
 *   `scripts/setup.mjs --test`'s build), `cloudgate-test/prometheus:2.42` (Debian's).
 *
 * test/docker/*.Dockerfile say what each stands in for. `node scripts/setup.mjs --test`
 * installs the Debian packages (docker.io, docker-compose, debootstrap).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, cpSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { findTemporalServer } from './temporal-server.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Everything the peer keeps between runs: the daemon's state (images, build cache), logs, build contexts. */
export const DOCKER_CACHE_DIR = path.join(ROOT, '.cache', 'docker');
const TEST_DOCKERFILES = path.join(ROOT, 'test', 'docker');
const HOW_TO_GET = 'run `node scripts/setup.mjs --test` as root (it installs the Debian packages docker.io, docker-compose and debootstrap)';

/**
 * Debian's client (docker.io, 20.10): its built-in BuildKit runs the Dockerfile's `RUN --mount`
 * steps without the buildx plugin, which a newer client on PATH may lack. `$DOCKER_CLI` overrides.
 */
function dockerCli(): string {
  const cli = process.env.DOCKER_CLI || '/usr/bin/docker';
  if (!existsSync(cli)) throw new Error(`Docker peer: ${cli} not found; ${HOW_TO_GET}`);
  return cli;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

/**
 * Runs a command to its end; rejects with its output's tail unless it exits 0 (or `allowFail`).
 * `log` names a file under `.cache/docker/logs/` that gets the whole output (long builds).
 */
export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string; input?: string; log?: string; allowFail?: boolean } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    let logFd: number | undefined;
    if (opts.log) {
      mkdirSync(path.join(DOCKER_CACHE_DIR, 'logs'), { recursive: true });
      logFd = openSync(path.join(DOCKER_CACHE_DIR, 'logs', opts.log), 'w');
    }
    const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: opts.env ?? process.env, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const keep = (which: 'out' | 'err') => (b: Buffer) => {
      if (which === 'out') stdout = (stdout + b.toString()).slice(-1_000_000);
      else stderr = (stderr + b.toString()).slice(-200_000);
      if (logFd !== undefined) writeSync(logFd, b);
    };
    child.stdout!.on('data', keep('out'));
    child.stderr!.on('data', keep('err'));
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    child.once('error', (err) => reject(new Error(`cannot run ${cmd}: ${err.message}; ${HOW_TO_GET}`)));
    child.once('close', (code) => {
      if (logFd !== undefined) closeSync(logFd);
      const result = { stdout, stderr, code: code ?? -1 };
      if (code === 0 || opts.allowFail) resolve(result);
      else {
        const where = opts.log ? ` (whole output: ${path.relative(ROOT, path.join(DOCKER_CACHE_DIR, 'logs', opts.log))})` : '';
        reject(new Error(`${path.basename(cmd)} ${args.join(' ')} exited ${code}${where}:\n${(stderr || stdout).slice(-4000)}`));
      }
    });
  });
}

export interface DockerDaemon {
  /** `unix://…/docker.sock`: the `DOCKER_HOST` of every client call. */
  host: string;
  /** `process.env` with `DOCKER_HOST` set (for docker, docker-compose). */
  env: NodeJS.ProcessEnv;
  /** `docker <args>` against this daemon. */
  docker(args: string[], opts?: { input?: string; log?: string; allowFail?: boolean; env?: NodeJS.ProcessEnv }): Promise<RunResult>;
  /** True when this call started the daemon (and `stop()` ends it). */
  started: boolean;
  stop(): Promise<void>;
}

/**
 * Starts the private daemon (or reuses one a previous run left answering on the same socket).
 * Needs root, as dockerd does; fails saying what is missing.
 */
export async function startDockerDaemon(): Promise<DockerDaemon> {
  const dockerd = ['/usr/sbin/dockerd', '/usr/bin/dockerd'].find((p) => existsSync(p));
  if (!dockerd) throw new Error(`Docker peer: dockerd not found; ${HOW_TO_GET}`);
  if (process.getuid?.() !== 0) throw new Error('Docker peer: dockerd runs as root only, and this test runs as another user');
  const cli = dockerCli();
  const socket = path.join(DOCKER_CACHE_DIR, 'docker.sock');
  const host = `unix://${socket}`;
  const env = { ...process.env, DOCKER_HOST: host };
  const docker: DockerDaemon['docker'] = (args, opts = {}) => run(cli, args, { ...opts, env: { ...env, ...opts.env } });
  const answers = async () => (await docker(['version', '--format', '{{.Server.Version}}'], { allowFail: true })).code === 0;
  if (await answers()) return { host, env, docker, started: false, stop: async () => undefined };

  mkdirSync(DOCKER_CACHE_DIR, { recursive: true });
  const logFile = path.join(DOCKER_CACHE_DIR, 'dockerd.log');
  const out = openSync(logFile, 'a');
  // Loopback only: published ports default to 127.0.0.1 (the compose file names it too).
  const child: ChildProcess = spawn(
    dockerd,
    [
      '--data-root', path.join(DOCKER_CACHE_DIR, 'data'),
      '--exec-root', path.join(DOCKER_CACHE_DIR, 'run'),
      '--pidfile', path.join(DOCKER_CACHE_DIR, 'dockerd.pid'),
      '--host', host,
      '--ip', '127.0.0.1',
    ],
    { stdio: ['ignore', out, out] },
  );
  closeSync(out);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 60_000;
  while (!(await answers())) {
    if (child.exitCode !== null) throw new Error(`Docker peer: dockerd exited (${child.exitCode}) while starting:\n${readFileSync(logFile, 'utf8').slice(-3000)}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`Docker peer: dockerd did not answer on ${socket} within 60 s:\n${readFileSync(logFile, 'utf8').slice(-3000)}`);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  return {
    host,
    env,
    docker,
    started: true,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** The image names test/compose.test.ts hands docker-compose.yml's variables. */
export interface TestImages {
  debian: string;
  node: string;
  postgres: string;
  temporal: string;
  prometheus: string;
}

export const TEST_IMAGES: TestImages = {
  debian: 'cloudgate-test/debian:bookworm',
  node: 'cloudgate-test/node:20-bookworm',
  postgres: 'cloudgate-test/postgres:15',
  temporal: 'cloudgate-test/temporal:1.32.2',
  prometheus: 'cloudgate-test/prometheus:2.42',
};

/** The machine's Debian mirror (the first `…/debian` of its apt sources), for debootstrap. */
function debianMirror(): string {
  for (const f of ['/etc/apt/sources.list.d/debian.sources', '/etc/apt/sources.list']) {
    if (!existsSync(f)) continue;
    const m = /^(?:URIs:|deb)\s+(\S+\/debian)\/?(?:\s|$)/m.exec(readFileSync(f, 'utf8'));
    if (m) return m[1];
  }
  return 'http://deb.debian.org/debian';
}

/**
 * Builds the stand-in images (docker's layer cache makes a second run quick; the debootstrap
 * base and the packed Node are made once). `say` gets one line per step.
 */
export async function buildTestImages(daemon: DockerDaemon, say: (msg: string) => void = () => undefined): Promise<TestImages> {
  const ctxRoot = path.join(DOCKER_CACHE_DIR, 'context');
  const has = async (image: string) => (await daemon.docker(['image', 'inspect', image], { allowFail: true })).code === 0;

  if (!(await has(TEST_IMAGES.debian))) {
    if (!existsSync('/usr/sbin/debootstrap')) throw new Error(`Docker peer: /usr/sbin/debootstrap not found; ${HOW_TO_GET}`);
    const rootfs = path.join(DOCKER_CACHE_DIR, 'rootfs');
    rmSync(rootfs, { recursive: true, force: true });
    const mirror = debianMirror();
    const t0 = Date.now();
    await run('/usr/sbin/debootstrap', ['--variant=minbase', 'bookworm', rootfs, mirror], { log: 'debootstrap.log' });
    // apt inside the builds: the release, its updates and security fixes, over the same mirror host.
    const security = mirror.replace(/\/debian$/, '/debian-security');
    await run('/bin/sh', [
      '-c',
      `printf 'deb ${mirror} bookworm main\\ndeb ${mirror} bookworm-updates main\\ndeb ${security} bookworm-security main\\n' > "$1/etc/apt/sources.list" && rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*`,
      'sh',
      rootfs,
    ]);
    await run('/bin/sh', ['-c', `tar -C "$1" -c . | "$2" import --change 'CMD ["/bin/bash"]' - "$3"`, 'sh', rootfs, dockerCli(), TEST_IMAGES.debian], { env: daemon.env, log: 'import.log' });
    rmSync(rootfs, { recursive: true, force: true });
    say(`base image ${TEST_IMAGES.debian}: debootstrap --variant=minbase bookworm from ${mirror}, imported (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  }

  const build = async (name: keyof TestImages, dockerfile: string, context: string) => {
    const t0 = Date.now();
    await daemon.docker(['build', '--progress=plain', '--build-arg', `BASE_IMAGE=${TEST_IMAGES.debian}`, '-f', path.join(TEST_DOCKERFILES, dockerfile), '-t', TEST_IMAGES[name], context], {
      env: { DOCKER_BUILDKIT: '1' },
      log: `build-${name}.log`,
    });
    say(`image ${TEST_IMAGES[name]} (${dockerfile}): ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  };

  // Node: this machine's installation (node, its headers, npm), packed once per Node and npm version.
  // Not a dpkg-repack of the package: npm here was upgraded after it, and a repack holds only the files dpkg lists.
  const nodeCtx = path.join(ctxRoot, 'node');
  const version = `${process.version} npm ${(await run('npm', ['--version'])).stdout.trim()}`;
  const stamp = path.join(nodeCtx, 'version');
  if (!existsSync(path.join(nodeCtx, 'node.tar.gz')) || !existsSync(stamp) || readFileSync(stamp, 'utf8') !== version) {
    rmSync(nodeCtx, { recursive: true, force: true });
    mkdirSync(nodeCtx, { recursive: true });
    const files = ['usr/bin/node', 'usr/bin/npm', 'usr/bin/npx', 'usr/include/node', 'usr/lib/node_modules/npm'];
    for (const f of files) if (!existsSync(path.join('/', f))) throw new Error(`Docker peer: /${f} not found: the Node image packs this machine's Node 20 (node, headers, npm) from /usr`);
    await run('tar', ['-C', '/', '-czf', path.join(nodeCtx, 'node.tar.gz'), ...files]);
    writeFileSync(stamp, version);
  }
  await build('node', 'node.Dockerfile', nodeCtx);

  const pgCtx = path.join(ctxRoot, 'postgres');
  mkdirSync(pgCtx, { recursive: true });
  copyFileSync(path.join(TEST_DOCKERFILES, 'postgres-entrypoint.sh'), path.join(pgCtx, 'postgres-entrypoint.sh'));
  await build('postgres', 'postgres.Dockerfile', pgCtx);

  // Temporal: the binaries and schemas of the set-up's build (copied: a build context follows no links out of it).
  const bins = findTemporalServer();
  const temporalCtx = path.join(ctxRoot, 'temporal');
  mkdirSync(temporalCtx, { recursive: true });
  for (const b of ['server', 'sql'] as const) copyFileSync(bins[b], path.join(temporalCtx, b));
  rmSync(path.join(temporalCtx, 'schema'), { recursive: true, force: true });
  cpSync(bins.schema, path.join(temporalCtx, 'schema', 'postgresql', 'v12'), { recursive: true, dereference: true });
  await build('temporal', 'temporal.Dockerfile', temporalCtx);

  const promCtx = path.join(ctxRoot, 'prometheus');
  mkdirSync(promCtx, { recursive: true });
  await build('prometheus', 'prometheus.Dockerfile', promCtx);
  return TEST_IMAGES;
}
