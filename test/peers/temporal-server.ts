/**
 * The production Temporal test peer: the real Temporal server (v1.32.2, built from the Go
 * module proxy by `node scripts/setup.mjs --test` into `.cache/temporal-1.32.2/`) with its
 * persistence and visibility on a PostgreSQL peer (test/peers/postgres.ts), plugin
 * `postgres12` — what a site runs, not the CLI's dev server on SQLite.
 *
 * Start-up does what a site admin does (README, "Production: Temporal on PostgreSQL"):
 * `sql create-database`, `setup-schema -v 0.0` and `update-schema -d …/versioned` for the
 * `temporal` and `temporal_visibility` databases; a config file; `server start`; then the
 * `default` namespace and cloudgate's search attributes. All four services (frontend,
 * history, matching, worker) run in one process, as `server start` does by default;
 * `stop()`, `kill()` (SIGKILL) and `restart()` act on that process, on the same ports and
 * databases, so clients reconnect to the same address.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Connection } from '@temporalio/client';
import { msToTs } from '@temporalio/common';
import { stringify as stringifyYaml } from 'yaml';
import { ensureSearchAttributes, freePort } from '../../workers/dev-server.js';
import { dynamicConfigFileContent } from '../../workers/temporal-dynamic-config.js';
import type { PostgresPeer } from './postgres.js';

const execFileP = promisify(execFile);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The server version `scripts/setup.mjs` builds (keep the two in step). */
export const TEMPORAL_SERVER_VERSION = '1.32.2';
/** Where `scripts/setup.mjs --test` puts the build: `bin/{server,sql}` and `schema/postgresql/v12/`. */
export const TEMPORAL_CACHE_DIR = path.join(ROOT, '.cache', `temporal-${TEMPORAL_SERVER_VERSION}`);
const HOW_TO_GET =
  `run \`node scripts/setup.mjs --test\` (npm test's set-up: builds the Temporal server ${TEMPORAL_SERVER_VERSION} and its sql tool with Go into ` +
  `${path.relative(ROOT, TEMPORAL_CACHE_DIR)}/, about 7 minutes on 2 cores the first time), or set CLOUDGATE_TEMPORAL_SERVER_DIR to a folder holding both binaries ` +
  `(\`GOTOOLCHAIN=go1.26.10 go install go.temporal.io/server/cmd/server@v${TEMPORAL_SERVER_VERSION} go.temporal.io/server/cmd/tools/sql@v${TEMPORAL_SERVER_VERSION}\`)`;

/** The server and sql tool binaries: `$CLOUDGATE_TEMPORAL_SERVER_DIR`, else the set-up's cache. */
export function findTemporalServer(env: NodeJS.ProcessEnv = process.env): { server: string; sql: string; schema: string } {
  const dir = env.CLOUDGATE_TEMPORAL_SERVER_DIR || path.join(TEMPORAL_CACHE_DIR, 'bin');
  const server = path.join(dir, 'server');
  const sql = path.join(dir, 'sql');
  for (const f of [server, sql]) if (!existsSync(f)) throw new Error(`Temporal server peer: ${f} not found; ${HOW_TO_GET}`);
  const schema = env.CLOUDGATE_TEMPORAL_SCHEMA_DIR || path.join(TEMPORAL_CACHE_DIR, 'schema', 'postgresql', 'v12');
  if (!existsSync(path.join(schema, 'temporal', 'versioned')) || !existsSync(path.join(schema, 'visibility', 'versioned'))) {
    throw new Error(
      `Temporal server peer: the PostgreSQL schemas are not in ${schema} (temporal/ and visibility/ with versioned/); ${HOW_TO_GET} ` +
        `— it copies them from the module's schema/postgresql/v12 — or set CLOUDGATE_TEMPORAL_SCHEMA_DIR`,
    );
  }
  return { server, sql, schema };
}

export interface TemporalServerPeer {
  /** The frontend, `127.0.0.1:<port>`. */
  address: string;
  namespace: string;
  /** The config file `server start` reads (kept in the peer's folder). */
  configFile: string;
  process: ChildProcess;
  /** The server's output so far (the last 200 kB). */
  output(): string;
  /** SIGKILL, as a crashed host; `restart()` brings it back. */
  kill(): Promise<void>;
  /** Stops (SIGTERM, or SIGKILL with `{ kill: true }`) and starts the server again on the same config; resolves when the frontend answers. */
  restart(opts?: { kill?: boolean }): Promise<void>;
  /** For good: graceful stop (SIGTERM, SIGKILL after 20 s), and the folder is removed (the databases stay in the PostgreSQL peer). */
  stop(): Promise<void>;
}

export interface TemporalServerPeerOptions {
  /** Default `default`. */
  namespace?: string;
  /** Default 4: enough for a test machine, and quick to create. */
  numHistoryShards?: number;
}

async function sqlTool(sql: string, pg: PostgresPeer, database: string, args: string[]): Promise<void> {
  const base = ['--plugin', 'postgres12', '--ep', pg.host, '--port', String(pg.port), '--user', pg.user, '--password', pg.password, '--db', database];
  try {
    await execFileP(sql, [...base, ...args]);
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw new Error(`Temporal server peer: sql ${args.join(' ')} on ${database} failed: ${e.stderr || e.stdout || e.message}`, { cause: err });
  }
}

/** Creates the databases and schemas on `pg`, starts the server and readies the namespace. */
export async function startTemporalServerPeer(pg: PostgresPeer, opts: TemporalServerPeerOptions = {}): Promise<TemporalServerPeer> {
  const bins = findTemporalServer();
  const namespace = opts.namespace ?? 'default';
  // The schema tool, as a site runs it once per database (README).
  for (const [database, schema] of [
    ['temporal', 'temporal'],
    ['temporal_visibility', 'visibility'],
  ] as const) {
    await sqlTool(bins.sql, pg, database, ['create-database']);
    await sqlTool(bins.sql, pg, database, ['setup-schema', '-v', '0.0']);
    await sqlTool(bins.sql, pg, database, ['update-schema', '-d', path.join(bins.schema, schema, 'versioned')]);
  }

  const dir = mkdtempSync(path.join(tmpdir(), 'cg-temporal-'));
  const frontendPort = await freePort();
  const port = async () => (await freePort()) as number;
  const rpc = async (grpcPort: number) => ({ grpcPort, membershipPort: await freePort() /* below 32768: the membership table stores it as SMALLINT */, bindOnLocalHost: true });
  const datastore = (databaseName: string, maxConns: number) => ({
    sql: {
      pluginName: 'postgres12',
      databaseName,
      connectAddr: `${pg.host}:${pg.port}`,
      connectProtocol: 'tcp',
      user: pg.user,
      password: pg.password,
      maxConns,
      maxIdleConns: maxConns,
      maxConnLifetime: '1h',
    },
  });
  const dynamicConfigFile = path.join(dir, 'dynamicconfig.yaml');
  writeFileSync(
    dynamicConfigFile,
    // cloudgate's settings (workers/temporal-dynamic-config.ts), as the dev server and docker/temporal/dynamicconfig.yaml have them.
    stringifyYaml(dynamicConfigFileContent()),
  );
  const config = {
    log: { stdout: true, level: 'warn' },
    persistence: {
      defaultStore: 'postgres-default',
      visibilityStore: 'postgres-visibility',
      numHistoryShards: opts.numHistoryShards ?? 4,
      datastores: { 'postgres-default': datastore('temporal', 20), 'postgres-visibility': datastore('temporal_visibility', 5) },
    },
    global: { membership: { maxJoinDuration: '30s', broadcastAddress: '127.0.0.1' } },
    services: {
      frontend: { rpc: { ...(await rpc(frontendPort)), httpPort: await port() } },
      history: { rpc: await rpc(await port()) },
      matching: { rpc: await rpc(await port()) },
      worker: { rpc: await rpc(await port()) },
    },
    clusterMetadata: {
      enableGlobalNamespace: false,
      failoverVersionIncrement: 10,
      masterClusterName: 'active',
      currentClusterName: 'active',
      clusterInformation: { active: { enabled: true, initialFailoverVersion: 1, rpcName: 'frontend', rpcAddress: `127.0.0.1:${frontendPort}` } },
    },
    dcRedirectionPolicy: { policy: 'noop' },
    dynamicConfigClient: { filepath: dynamicConfigFile, pollInterval: '10s' },
  };
  const configFile = path.join(dir, 'temporal.yaml');
  writeFileSync(configFile, stringifyYaml(config), { mode: 0o600 });
  const address = `127.0.0.1:${frontendPort}`;

  let output = '';
  let proc: ChildProcess;
  const launch = async () => {
    const child = spawn(bins.server, ['--config-file', configFile, '--allow-no-auth', 'start'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    proc = child;
    const keep = (b: Buffer) => {
      output += b.toString();
      if (output.length > 200_000) output = output.slice(-200_000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    let spawnError: Error | undefined;
    child.once('error', (err) => (spawnError = err));
    const deadline = Date.now() + 120_000;
    for (;;) {
      if (spawnError) throw new Error(`Temporal server peer: cannot start ${bins.server}: ${spawnError.message}`);
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`Temporal server peer: the server exited (${child.exitCode ?? child.signalCode}) while starting: ${output.slice(-4000)}`);
      try {
        const conn = await Connection.connect({ address, connectTimeout: 1000 });
        try {
          await conn.workflowService.getSystemInfo({});
        } finally {
          await conn.close();
        }
        return;
      } catch (err) {
        if (Date.now() > deadline) {
          child.kill('SIGKILL');
          throw new Error(`Temporal server peer: the frontend did not answer on ${address} within 120 s: ${output.slice(-4000)}`, { cause: err });
        }
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  };
  const halt = async (signal: NodeJS.Signals) => {
    const child = proc;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(timer);
  };

  try {
    await launch();
    // The namespace, as `temporal operator namespace create --namespace default` does, and the search attributes.
    const conn = await Connection.connect({ address });
    try {
      await conn.workflowService.registerNamespace({ namespace, workflowExecutionRetentionPeriod: msToTs('1 day') }).catch((err: { code?: number }) => {
        if (err.code !== 6) throw err; // ALREADY_EXISTS
      });
      const deadline = Date.now() + 60_000;
      for (;;) {
        try {
          await conn.workflowService.describeNamespace({ namespace });
          await ensureSearchAttributes(conn, namespace);
          break;
        } catch (err) {
          if (Date.now() > deadline) throw new Error(`Temporal server peer: namespace ${namespace} not usable within 60 s: ${output.slice(-2000)}`, { cause: err });
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    } finally {
      await conn.close();
    }
  } catch (err) {
    await halt('SIGKILL').catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }

  const peer: TemporalServerPeer = {
    address,
    namespace,
    configFile,
    get process() {
      return proc;
    },
    output: () => output,
    kill: () => halt('SIGKILL'),
    async restart(restartOpts) {
      await halt(restartOpts?.kill ? 'SIGKILL' : 'SIGTERM');
      await launch();
    },
    async stop() {
      await halt('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return peer;
}
