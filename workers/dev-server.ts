/**
 * Runs the Temporal CLI's dev server (real Temporal, SQLite-backed) for `npm start`, the
 * tests and the benchmark, and registers cloudgate's search attributes on any server.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Connection } from '@temporalio/client';
import { chmodPrivate } from '../store/private-files.js';
import { cliSearchAttributeType, SEARCH_ATTRIBUTES } from '../workflows/messages.js';
import { devServerDynamicConfigArgs } from './temporal-dynamic-config.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** `$TEMPORAL_CLI`, else `temporal` on PATH, else the one `scripts/setup.mjs` put in `.venv`. */
export function findTemporalCli(env: NodeJS.ProcessEnv = process.env): string {
  if (env.TEMPORAL_CLI) return env.TEMPORAL_CLI;
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, 'temporal');
    if (dir && existsSync(p)) return p;
  }
  const venv = path.join(ROOT, '.venv', 'bin', 'temporal');
  if (existsSync(venv)) return venv;
  throw new Error('no Temporal CLI found: set TEMPORAL_CLI, put `temporal` on PATH, or run `node scripts/setup.mjs`');
}

/** Ports this process has handed out: never handed out twice, even before their server binds. */
const handedOut = new Set<number>();

/**
 * A free TCP port on 127.0.0.1 (for servers run side by side), taken below the kernel's ephemeral
 * range (32768 on, where port 0 and every outgoing connection's local end land): a port picked
 * there can be taken by one of the thousands of connections a test makes between this check and
 * its server's bind, which failed a CI run's Temporal dev server with "address already in use".
 * (Temporal's membership ports must be below 32768 too: its SQL schema stores them as SMALLINT.)
 */
export async function freePort(): Promise<number> {
  for (let i = 0; i < 500; i++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (handedOut.has(port)) continue;
    const free = await new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.unref();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (free) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error('no free TCP port between 20000 and 32000 on 127.0.0.1');
}

export interface DevServerOptions {
  dbFile: string;
  port?: number;
  /** Web UI port; omit for a headless server. */
  uiPort?: number;
  /** The remote payload codec the Web UI decodes payloads with (cloudgate's `<api>/codec`); only with `uiPort`. */
  uiCodecEndpoint?: string;
  executable?: string;
  /** Where the server's own output goes (default: discarded). */
  onOutput?: (chunk: string) => void;
}

export interface DevServer {
  address: string;
  uiUrl?: string;
  process: ChildProcess;
  /** Graceful stop (SIGTERM, then SIGKILL after 10 s). */
  stop(): Promise<void>;
}

export async function startDevServer(opts: DevServerOptions): Promise<DevServer> {
  // A port we picked can still be bound by another process first (another test's server): pick again.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startDevServerOnce(opts, opts.port || (await freePort()));
    } catch (err) {
      if (opts.port || attempt >= 3 || !(err instanceof PortInUseError)) throw err;
    }
  }
}

class PortInUseError extends Error {}

async function startDevServerOnce(opts: DevServerOptions, port: number): Promise<DevServer> {
  // The HTTP API and metrics ports too, from below the ephemeral range (see freePort), not left to the CLI's random pick.
  const args = ['server', 'start-dev', '--ip', '127.0.0.1', '--port', String(port), '--http-port', String(await freePort()), '--metrics-port', String(await freePort())];
  args.push('--db-filename', opts.dbFile, '--log-level', 'warn');
  if (opts.uiPort) {
    args.push('--ui-port', String(opts.uiPort));
    if (opts.uiCodecEndpoint) args.push('--ui-codec-endpoint', opts.uiCodecEndpoint);
  } else args.push('--headless');
  for (const sa of SEARCH_ATTRIBUTES) args.push('--search-attribute', `${sa.name}=${cliSearchAttributeType(sa)}`);
  args.push(...devServerDynamicConfigArgs());
  // Workflow histories live in this file: owner only (the server makes a missing one itself, so it is set once it answers).
  chmodPrivate(opts.dbFile);
  const child = spawn(opts.executable ?? findTemporalCli(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const onData = (b: Buffer) => {
    const s = b.toString();
    if (output.length < 20_000) output += s;
    opts.onOutput?.(s);
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const address = `127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) {
      const message = `Temporal dev server exited (${child.exitCode}) while starting: ${output.slice(-2000)}`;
      throw /address already in use/.test(output) ? new PortInUseError(message) : new Error(message);
    }
    try {
      const conn = await Connection.connect({ address, connectTimeout: 1000 });
      await conn.workflowService.getSystemInfo({});
      await conn.close();
      chmodPrivate(opts.dbFile);
      break;
    } catch (err) {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`Temporal dev server did not answer on ${address} within 60 s`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  return {
    address,
    uiUrl: opts.uiPort ? `http://127.0.0.1:${opts.uiPort}` : undefined,
    process: child,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Registers cloudgate's search attributes on a server we did not start (idempotent). */
export async function ensureSearchAttributes(connection: Connection, namespace: string): Promise<void> {
  const { customAttributes } = await connection.operatorService.listSearchAttributes({ namespace });
  const missing = SEARCH_ATTRIBUTES.filter((sa) => !(customAttributes && sa.name in customAttributes));
  if (missing.length === 0) return;
  await connection.operatorService.addSearchAttributes({
    namespace,
    // INDEXED_VALUE_TYPE_KEYWORD (2) or INDEXED_VALUE_TYPE_KEYWORD_LIST (7).
    searchAttributes: Object.fromEntries(missing.map((sa) => [sa.name, cliSearchAttributeType(sa) === 'KeywordList' ? 7 : 2])),
  });
}
