/**
 * `npm start`: the whole stack on embedded defaults — a Temporal dev server on a SQLite
 * file under the data folder (Web UI on 8233, search attributes registered) unless
 * `TEMPORAL_ADDRESS` names one, then the worker and the API as child processes.
 * Ctrl-C (or SIGTERM) stops everything; the next start finds its clusters still there.
 *
 * Each process writes its own log, `<data>/logs/api.log`, `worker.log` and `temporal.log`
 * (JSON lines, appended across starts); the terminal shows this launcher's lines and each
 * process's warnings and errors, prefixed with its name, instead of one interleaved stream.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Connection } from '@temporalio/client';
import { startSimStratum1, type SimStratum1 } from '../clouds/sim-stratum1.js';
import { configFromEnv, publicUrlOf, temporalUiUrlOf } from '../model/config.js';
import { ensurePrivateDir } from '../store/private-files.js';
import { ensureSearchAttributes, startDevServer, type DevServer } from './dev-server.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const config = configFromEnv(process.env);
// Everything this process and its children (API, worker, Temporal dev server) create is owner-only (issue 11).
process.umask(0o077);
ensurePrivateDir(config.dataDir);
const say = (msg: string) => console.log(`[cloudgate] ${msg}`);
const logDir = path.join(config.dataDir, 'logs');
mkdirSync(logDir, { recursive: true, mode: 0o700 });

/** pino's numeric levels: what reaches the terminal from a process's log. */
const LEVEL_NAMES: Record<number, string> = { 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/**
 * One line of a process's output as the terminal shows it, or undefined to leave it to the
 * file: a JSON log line at warn or above as `LEVEL message (ids, error)`; any other line (a
 * crash's stack trace, a native library's complaint) as it is.
 */
function terminalLine(line: string): string | undefined {
  if (line.trim() === '') return undefined;
  let entry: { level?: unknown; msg?: unknown; clusterId?: unknown; service?: unknown; workflowId?: unknown; err?: { message?: unknown } } | undefined;
  try {
    entry = JSON.parse(line) as typeof entry;
  } catch {
    return line;
  }
  if (typeof entry?.level !== 'number') return line;
  if (entry.level < 40) return undefined;
  const about = [entry.clusterId, entry.service].filter((x) => typeof x === 'string').join('/') || (typeof entry.workflowId === 'string' ? entry.workflowId : '');
  const err = typeof entry.err?.message === 'string' ? `: ${entry.err.message}` : '';
  return `${LEVEL_NAMES[entry.level] ?? 'WARN'} ${String(entry.msg ?? '')}${about ? ` (${about})` : ''}${err}`;
}

/** Appends `streams` to `<data>/logs/<name>.log` and echoes what {@link terminalLine} keeps, prefixed `[name]`. */
function keepApart(name: string, streams: Readable[]): void {
  const file = createWriteStream(path.join(logDir, `${name}.log`), { flags: 'a' });
  for (const stream of streams) {
    createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
      file.write(`${line}\n`);
      const shown = terminalLine(line);
      if (shown !== undefined) console.error(`[${name}] ${shown}`);
    });
  }
}

let devServer: DevServer | undefined;
let address = config.temporalAddress;
if (!address) {
  const logFile = path.join(logDir, 'temporal.log');
  const out = createWriteStream(logFile, { flags: 'a' });
  say(`starting Temporal dev server on 127.0.0.1:${config.temporalPort} (state ${path.join(config.dataDir, 'temporal.sqlite')}, log ${logFile})`);
  devServer = await startDevServer({
    dbFile: path.join(config.dataDir, 'temporal.sqlite'),
    port: config.temporalPort,
    uiPort: config.temporalUiPort,
    // The UI decodes the encrypted payloads through the API (api/codec.ts; docs/operations.md says how to sign in).
    uiCodecEndpoint: `${publicUrlOf(config)}/codec`,
    onOutput: (s) => out.write(s),
  });
  address = devServer.address;
} else {
  const connection = await Connection.connect({ address });
  await ensureSearchAttributes(connection, config.namespace);
  await connection.close();
  say(`using Temporal at ${address}`);
}

// No stratum-1 named: the demo checks repositories against the sim cloud's own (real
// formats, every repository healthy), since the real ones may be out of reach.
let stratum1: SimStratum1 | undefined;
if (!process.env.CLOUDGATE_CVMFS_SERVERS) {
  stratum1 = await startSimStratum1();
  say(`CVMFS checks against the simulated stratum-1 ${stratum1.url} (set CLOUDGATE_CVMFS_SERVERS for real ones)`);
}

// The simulated stratum-1 listens on loopback, which the gateway fetches from only when allowed.
const allowSim = stratum1 && [process.env.CLOUDGATE_CVMFS_ALLOWED_HOSTS, new URL(stratum1.url).host].filter(Boolean).join(',');
const env = {
  ...process.env,
  // Each libvirt call holds one of libuv's threads (4 by default), and a farm host that hangs keeps one: room for many hosts.
  UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '64',
  TEMPORAL_ADDRESS: address,
  // The sim's job queue (a fake batch system for pulled autoscaling), served by the worker on 127.0.0.1.
  SIM_QUEUE_PORT: process.env.SIM_QUEUE_PORT ?? '8090',
  // The worker's /metrics (cloudgate's and the Temporal SDK's), on 127.0.0.1 unless CLOUDGATE_WORKER_METRICS_HOST says otherwise.
  CLOUDGATE_WORKER_METRICS_PORT: process.env.CLOUDGATE_WORKER_METRICS_PORT ?? '9464',
  ...(stratum1 && { CLOUDGATE_CVMFS_SERVERS: stratum1.url, CLOUDGATE_CVMFS_ALLOWED_HOSTS: allowSim }),
};
const children: ChildProcess[] = [];
const startChild = (name: string, entry: string) => {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, entry)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  keepApart(name, [child.stdout!, child.stderr!]);
  child.on('exit', (code, signal) => {
    if (!stopping) {
      say(`${name} exited (${signal ?? code}); stopping the stack`);
      void stop(1);
    }
  });
  children.push(child);
};
startChild('worker', 'workers/main.ts');
startChild('api', 'api/main.ts');
say(`API        ${publicUrlOf(config)}  (OpenAPI: ${publicUrlOf(config)}/openapi.json)`);
say(`sim job queue http://127.0.0.1:${env.SIM_QUEUE_PORT}/sim/queues/<clusterId>/<service>  (POST …/jobs {"count", "seconds"}; GET …/load is what an autoscale.loadUrl reads)`);
// The API process writes it on its first start (api/auth.ts); only its path is ever printed.
say(`admin token in ${path.join(config.dataDir, 'admin-token')}  (curl -H "Authorization: Bearer $(cat ${path.join(config.dataDir, 'admin-token')})" …)`);
// The scrape token, like the admin token: its path is printed, never its value.
const scrapeBearer = process.env.CLOUDGATE_METRICS_TOKEN ? '$CLOUDGATE_METRICS_TOKEN' : `$(cat ${path.join(config.dataDir, 'metrics-token')})`;
say(
  `metrics    ${publicUrlOf(config)}/metrics and http://${config.metrics.workerHost}:${env.CLOUDGATE_WORKER_METRICS_PORT}/metrics  ` +
    `(Authorization: Bearer ${scrapeBearer}; a Prometheus scrape config: docs/prometheus.yml)`,
);
say(`logs       ${logDir}/{api,worker,temporal}.log  (warnings and errors also here)`);
say(`Temporal UI ${devServer?.uiUrl ?? temporalUiUrlOf(config)}  (payloads are encrypted: sign in at ${publicUrlOf(config)}/codec/session to read them, see docs/operations.md)`);
say('Ctrl-C stops everything');

let stopping = false;
async function stop(code: number) {
  if (stopping) return;
  stopping = true;
  say('stopping…');
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((resolve) => {
          if (c.exitCode !== null || c.signalCode !== null) return resolve();
          c.once('exit', () => resolve());
          c.kill('SIGTERM');
          setTimeout(() => c.kill('SIGKILL'), 15_000).unref();
        }),
    ),
  );
  await devServer?.stop();
  await stratum1?.stop();
  say('stopped');
  process.exit(code);
}
process.on('SIGINT', () => void stop(0));
process.on('SIGTERM', () => void stop(0));
