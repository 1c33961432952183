/**
 * `npm run bench -- --scale` (README, "Scale, measured"): how far one machine goes. On the
 * production topology (test/topology.ts: PostgreSQL, the real Temporal server on it,
 * `BENCH_APIS` (2) API processes behind nginx — guests' requests to all but the last, users' to
 * the last; `BENCH_GUESTS_APART=0` for round robin —, worker processes) when its peers are installed (`node
 * scripts/setup.mjs --test`), else on the Temporal dev server with the same processes. Every
 * guest boots in exactly `BENCH_BOOT_MS` (20 s) and phones home ready `BENCH_READY_MS` (5 s)
 * later, so the ideal time of the three-tier cluster is 3 × 25 s = 75 s.
 *
 * Scenarios (each deployed, measured to READY, torn down to TERMINATED):
 * 1. the three-tier cluster (1 % proxy, 4 % head after it, 95 % workers after head) at each
 *    size of `BENCH_SIZES` (default 1000,5000,10000) with one worker process, and the largest
 *    again with two: wall, ratio to the ideal, `GET /v1/clusters/:id` p50/p99 at
 *    `BENCH_READ_RATE` (200) requests/s through the deployment, also by 10 s of the run and as
 *    the APIs' own histograms saw them, with the APIs' event-loop delay (`BENCH_LARGEST_WORKERS`, default
 *    `1,2`: the worker counts of the largest size's runs), peak RSS of each worker and API
 *    process, the largest history and payload-size warnings, and the time to replay the
 *    largest run of each workflow;
 * 2. `BENCH_CLUSTERS` (50) clusters of 100 instances (2 → 8 → 90) submitted at once: time to
 *    all READY and its ratio to the ideal.
 * Targets (issue 14): ratio ≤ 1.10 at 10,000 instances, API p99 < 50 ms, no payload over
 * 512 KB. The figures are printed as a table at the end; the command fails only when a
 * deployment does.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import Database from 'better-sqlite3';
import type { DataConverter } from '@temporalio/common';
import { bundleWorkflowCode, DefaultLogger, Worker } from '@temporalio/worker';
import { startApi } from '../api/main.js';
import { payloadDataConverter } from '../model/payload-codec.js';
import { loadPayloadKeys } from '../store/secret.js';
import { WORKFLOW_BUNDLE_OPTIONS } from '../workers/worker.js';
import { startBenchStack } from './bench-stack.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bootMs = Number(process.env.BENCH_BOOT_MS ?? 20_000);
const readyMs = Number(process.env.BENCH_READY_MS ?? 5_000);
const sizes = (process.env.BENCH_SIZES ?? '1000,5000,10000').split(',').map(Number);
const readRate = Number(process.env.BENCH_READ_RATE ?? 200);
const manyClusters = Number(process.env.BENCH_CLUSTERS ?? 50);
/** The worker processes of each run of the largest size (`BENCH_LARGEST_WORKERS`, default `1,2`); smaller sizes run with one. */
const largestWorkers = (process.env.BENCH_LARGEST_WORKERS ?? '1,2').split(',').filter(Boolean).map(Number);
const ideal = (3 * (bootMs + readyMs)) / 1000;
const log = (msg: string) => console.error(`[bench:scale] ${msg}`);

/** The processes and clients a scenario runs against, whichever Temporal serves them. */
interface Site {
  kind: string;
  /** Where users (and the reader) call the API. */
  url: string;
  /** The data folder the workers share (the sim cloud's state file is in it). */
  dataDir: string;
  authorization: string;
  client: Client;
  /** The workers' data converter (payloads are encrypted), for replays. */
  dataConverter: DataConverter;
  /** Temporal's warnings of payloads or histories over its limits so far. */
  sizeWarnings(): number;
  /** Runs exactly `n` worker processes. */
  workers(n: number): Promise<void>;
  /** Each API process's own address (its `/metrics`). */
  apiUrls(): string[];
  /** The process ids to watch: API processes and running workers. */
  pids(): { name: string; pid: number }[];
  stop(): Promise<void>;
}

async function productionSite(): Promise<Site | undefined> {
  const { findPostgresBin } = await import('../test/peers/postgres.js');
  const { findTemporalServer } = await import('../test/peers/temporal-server.js');
  const { findNginx } = await import('../test/peers/nginx.js');
  try {
    findPostgresBin();
    findTemporalServer();
    findNginx();
  } catch (err) {
    log(`production topology not available (${(err as Error).message.slice(0, 160)}…): measuring on the dev server`);
    return undefined;
  }
  const { startTopology } = await import('../test/topology.js');
  // Guests' requests to every API replica but the last, users' (and the reader's) to the last, as
  // the README's production section recommends; BENCH_GUESTS_APART=0: round robin over all for everything.
  const guestsApart = process.env.BENCH_GUESTS_APART !== '0';
  const apis = Number(process.env.BENCH_APIS ?? 2);
  const top = await startTopology({ apis, workers: 2, sim: { bootMs, readyDelayMs: readyMs, seed: 'bench-scale' }, guestsApart });
  return {
    kind: `production topology: PostgreSQL 15, Temporal server 1.32.2, ${apis} API processes behind nginx${guestsApart ? ` (guests to ${apis > 2 ? `api-1..${apis - 1}` : 'api-1'}, users to api-${apis})` : ''}`,
    url: top.url,
    dataDir: top.dataDir,
    authorization: `Bearer ${top.adminToken}`,
    client: top.client,
    dataConverter: payloadDataConverter(loadPayloadKeys(top.config)),
    sizeWarnings: () => top.temporal.output().split('\n').filter((l) => /blob size|history size|history count/i.test(l)).length,
    async workers(n) {
      await Promise.all(top.workers.map((w, i) => (i < n ? w.start() : w.stop())));
    },
    apiUrls: () => top.apis.map((a) => a.url!),
    pids: () => [...top.apis, ...top.workers].filter((r) => r.alive()).map((r) => ({ name: r.name, pid: r.proc!.pid! })),
    // BENCH_KEEP=1: the data folder (every process's log, the sim cloud's state) stays for a look afterwards.
    stop: () => top.stop({ keepDataDir: process.env.BENCH_KEEP === '1' }),
  };
}

async function devSite(): Promise<Site> {
  const { dataDir, temporal, config, sizeWarnings } = await startBenchStack('bench-scale', { bootMs, readyDelayMs: readyMs });
  const api = await startApi(config);
  const procs: (ChildProcess | undefined)[] = [undefined, undefined];
  const connection = await Connection.connect({ address: temporal.address, channelArgs: { 'grpc.max_receive_message_length': 64 * 1024 * 1024 } });
  const client = new Client({ connection, dataConverter: payloadDataConverter(loadPayloadKeys(config)) });
  const startWorker = () =>
    spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'workers/main.ts')], {
      env: {
        ...process.env,
        CLOUDGATE_DATA_DIR: dataDir,
        CLOUDGATE_API_PORT: String(config.apiPort),
        TEMPORAL_ADDRESS: temporal.address,
        CLOUDGATE_TOKEN_SECRET: config.tokenSecret,
        CLOUDGATE_LOG_LEVEL: 'warn',
        SIM_BOOT_MS: String(bootMs),
        SIM_READY_DELAY_MS: String(readyMs),
        SIM_SEED: 'bench-scale',
        SIM_QUEUE_PORT: '',
        CLOUDGATE_WORKER_METRICS_PORT: '',
      },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
  const stopProc = async (p: ChildProcess | undefined) => {
    if (!p || p.exitCode !== null) return;
    p.kill('SIGTERM');
    await new Promise((r) => p.once('exit', r));
  };
  const auth = `Bearer ${readFileSync(api.adminTokenFile, 'utf8').trim()}`;
  return {
    kind: `Temporal dev server (SQLite), API in the bench process`,
    url: api.url,
    dataDir,
    authorization: auth,
    client,
    dataConverter: payloadDataConverter(loadPayloadKeys(config)),
    sizeWarnings,
    async workers(n) {
      for (let i = 0; i < procs.length; i++) {
        if (i < n && !procs[i]) procs[i] = startWorker();
        if (i >= n && procs[i]) {
          await stopProc(procs[i]);
          procs[i] = undefined;
        }
      }
      // Polling once its bundle is built.
      for (;;) {
        const tq = await client.workflowService.describeTaskQueue({ namespace: 'default', taskQueue: { name: config.taskQueue }, taskQueueType: 1 });
        const pids = new Set(procs.filter(Boolean).map((p) => p!.pid));
        const polling = new Set((tq.pollers ?? []).map((p) => Number(p.identity?.split('@')[0])).filter((pid) => pids.has(pid)));
        // …and the catalogue lists the sim cloud's offerings (submissions are checked against them).
        const clouds = (await (await fetch(`${api.url}/v1/clouds`, { headers: { authorization: auth } })).json()) as { items?: { name: string; offerings: unknown[] }[] };
        const listed = clouds.items?.some((c) => c.name === 'sim' && c.offerings.length > 0);
        if (polling.size === pids.size && listed) break;
        await new Promise((r) => setTimeout(r, 500));
      }
    },
    apiUrls: () => [api.url],
    pids: () => [{ name: 'api (bench process)', pid: process.pid }, ...procs.flatMap((p, i) => (p ? [{ name: `worker-${i + 1}`, pid: p.pid! }] : []))],
    async stop() {
      await Promise.all(procs.map(stopProc));
      await api.close();
      await connection.close();
      await temporal.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

const site = (process.env.BENCH_DEV === '1' ? undefined : await productionSite()) ?? (await devSite());
log(`measuring on the ${site.kind}`);

/** The bench's own calls. A GET the proxy could not pass on (502: every replica too busy to accept in time) is asked again, and said. */
const request = async (method: string, url: string, body?: unknown): Promise<any> => {
  for (let attempt = 1; ; attempt++) {
    const res = await fetch(`${site.url}${url}`, {
      method,
      headers: { authorization: site.authorization, ...(body !== undefined && { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = (await res.json()) as any;
    if (res.status === 502 && method === 'GET' && attempt < 10) {
      log(`${method} ${url}: 502 (${json.detail}); asking again`);
      continue;
    }
    if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${JSON.stringify(json)}`);
    return json;
  }
};

/** What a process on this machine is, for the CPU figures: cloudgate's node processes by their entry file, the rest by command name. */
function processKind(pid: string): string | undefined {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    const entry = cmd.find((a) => /(api|workers)\/main\.ts$|bench\/(main|read-load)\.ts$/.test(a));
    if (entry) return { 'api/main.ts': 'API processes', 'workers/main.ts': 'worker processes', 'bench/main.ts': 'bench', 'bench/read-load.ts': 'reader' }[entry.split('/').slice(-2).join('/')];
    if (/temporal.*\/server$/.test(cmd[0]) || (/\btemporal$/.test(cmd[0]) && cmd.includes('start-dev'))) return 'Temporal server';
    const comm = readFileSync(`/proc/${pid}/comm`, 'utf8');
    return comm.startsWith('postgres') ? 'PostgreSQL' : comm.startsWith('nginx') ? 'proxy (nginx)' : undefined;
  } catch {
    return undefined; // exited meanwhile
  }
}

/** CPU seconds a process has used so far (user + system), from /proc. */
function cpuSeconds(pid: string): number | undefined {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
  } catch {
    return undefined;
  }
}

/**
 * While `fn` runs (sampled every second): the peak resident memory of each watched process,
 * and the CPU seconds each kind of process on the machine used (cloudgate's, PostgreSQL's, the
 * Temporal server's, the bench's) — where a 2-core machine's time goes —, in all and at each
 * sample (the timeline, for a window of the run).
 */
async function watchProcesses<T>(fn: () => Promise<T>): Promise<{ result: T; rss: Record<string, number>; cpu: Record<string, number>; timeline: CpuSample[] }> {
  const rss: Record<string, number> = {};
  const first = new Map<string, number>();
  const last = new Map<string, { kind: string; cpu: number }>();
  const timeline: CpuSample[] = [];
  const used = (): Record<string, number> => {
    const cpu: Record<string, number> = {};
    for (const [pid, { kind, cpu: now }] of last) cpu[kind] = (cpu[kind] ?? 0) + now - first.get(pid)!;
    return cpu;
  };
  const sample = () => {
    for (const { name, pid } of site.pids()) {
      try {
        const kb = Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
        rss[name] = Math.max(rss[name] ?? 0, Math.round(kb / 1024));
      } catch {
        // exited meanwhile
      }
    }
    for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
      const kind = last.get(pid)?.kind ?? processKind(pid);
      const cpu = kind ? cpuSeconds(pid) : undefined;
      if (!kind || cpu === undefined) continue;
      // A process running before counts from its first sample, one started meanwhile from zero.
      if (!first.has(pid)) first.set(pid, baseline ? cpu : 0);
      last.set(pid, { kind, cpu });
    }
    timeline.push({ at: Date.now(), cpu: used() });
  };
  let baseline = true;
  sample();
  baseline = false;
  const timer = setInterval(sample, 1000);
  let result: T;
  try {
    result = await fn();
  } finally {
    clearInterval(timer);
    sample();
  }
  return { result, rss, cpu: used(), timeline };
}

/** The CPU seconds each kind of process had used since the watch began, at one of its samples. */
interface CpuSample {
  at: number;
  cpu: Record<string, number>;
}

/**
 * The machine's CPU while the last tier's guests phone home: from its first phone-home falling
 * due to READY, each kind's CPU seconds read off the once-a-second samples (straight line
 * between the two around each end). The last tier's end is what the ratio to the ideal is made
 * of; this says whether the machine's cores were the limit, and what a report cost each kind of process.
 */
function lastTierCpuFigure(timeline: CpuSample[], tier: LastTier | undefined, readyAt: number): [string, string] {
  const label = "CPU while the last tier's guests phone home";
  const at = (t: number): Record<string, number> | undefined => {
    const i = timeline.findIndex((x) => x.at >= t);
    if (i <= 0) return undefined;
    const [a, b] = [timeline[i - 1], timeline[i]];
    const f = (t - a.at) / (b.at - a.at);
    return Object.fromEntries(Object.entries(b.cpu).map(([kind, s]) => [kind, (a.cpu[kind] ?? 0) + f * (s - (a.cpu[kind] ?? 0))]));
  };
  const [from, to] = [tier && at(tier.firstDueAt), at(readyAt)];
  if (!tier || !from || !to || readyAt <= tier.firstDueAt) return [label, 'not sampled'];
  const secs = (readyAt - tier.firstDueAt) / 1000;
  const spent = Object.entries(to)
    .map(([kind, s]) => [kind, s - (from[kind] ?? 0)] as const)
    .sort((a, b) => b[1] - a[1]);
  const total = spent.reduce((n, [, s]) => n + s, 0);
  const perReport = (s: number) => ((s * 1000) / tier.reports).toFixed(2);
  return [
    label,
    `${tier.service}, ${tier.reports} reports, ${secs.toFixed(1)} s from the first due to READY: ${(total / secs).toFixed(2)} of ${os.availableParallelism()} cores busy; ` +
      `ms a report: ${spent.map(([kind, s]) => `${kind} ${perReport(s)}`).join(', ')} (all ${perReport(total)}; the reader's load included)`,
  ];
}

/** CPU seconds by kind of process, largest first. */
const cpuFigure = (cpu: Record<string, number>, wall: number): [string, string] => [
  `CPU seconds used (of ${(os.availableParallelism() * wall).toFixed(0)} on ${os.availableParallelism()} cores)`,
  Object.entries(cpu)
    .sort((a, b) => b[1] - a[1])
    .map(([kind, s]) => `${kind} ${s.toFixed(0)}`)
    .join(', '),
];

/** A reader process asking for `url` at `rate`/s until the returned function is called; that resolves its figures. */
/** What bench/read-load.ts prints. */
interface Reads {
  sent: number;
  answered: number;
  non2xx: number;
  p50: number;
  p99: number;
  max: number;
  byWindow: { from: number; p50: number; p99: number }[];
}

function startReader(url: string, rate: number): () => Promise<Reads> {
  const reader = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'bench/read-load.ts'), `${site.url}${url}`, String(rate)], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, BENCH_AUTHORIZATION: site.authorization },
  });
  let out = '';
  reader.stdout!.on('data', (d: Buffer) => (out += d.toString('utf8')));
  const done = new Promise<Reads>((resolve) => reader.once('exit', () => resolve(JSON.parse(out.trim() || '{}') as Reads)));
  return () => {
    reader.stdin!.end();
    return done;
  };
}

const offering = { cpus: 1, memoryMiB: 2048, diskGiB: 20 };
const image = 'cernvm4-micro-2020.07';
const timeoutSeconds = Math.ceil((bootMs + readyMs) / 1000) + 300;
function threeTier(name: string, proxy: number, head: number, workers: number) {
  return {
    name,
    services: [
      { name: 'proxy', offering, image, min: proxy, readinessTimeoutSeconds: timeoutSeconds },
      { name: 'head', offering, image, min: head, dependsOn: ['proxy'], readinessTimeoutSeconds: timeoutSeconds },
      { name: 'workers', offering, image, min: workers, dependsOn: ['head'], readinessTimeoutSeconds: timeoutSeconds },
    ],
  };
}

async function waitAll(ids: string[], state: string, t0: number, label: string): Promise<number> {
  const left = new Set(ids);
  let lastLog = 0;
  let lastLine = '';
  let lastProgress = 0;
  while (left.size > 0) {
    for (const id of [...left]) {
      const c = await request('GET', `/v1/clusters/${id}`);
      // One cluster: each change of its services, timed (where the time goes).
      if (ids.length === 1) {
        const services = c.services as { name: string; state: string; ready: number; desired: number; clouds?: Record<string, { instances: number }> }[];
        const key = services.map((s) => `${s.name} ${s.state}`).join(', ');
        // Each change of state, and every 5 s the instances created and ready of each service.
        if (key !== lastLine || Date.now() - lastProgress > 5000) {
          const created = (s: (typeof services)[number]) => Object.values(s.clouds ?? {}).reduce((n, x) => n + x.instances, 0);
          log(`${label}: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${services.map((s) => `${s.name} ${s.state} ${created(s)} created ${s.ready}/${s.desired} ready`).join(', ')}`);
          lastProgress = Date.now();
        }
        lastLine = key;
      }
      if (c.state === state) left.delete(id);
      else if (c.state === 'FAILED') throw new Error(`${label}: cluster ${id} FAILED: ${c.message}`);
    }
    if (Date.now() - lastLog > 10_000) {
      log(`${label}: ${((Date.now() - t0) / 1000).toFixed(0)} s, ${ids.length - left.size}/${ids.length} ${state}`);
      lastLog = Date.now();
    }
    if (left.size > 0) await new Promise((r) => setTimeout(r, ids.length > 1 ? 1000 : 250));
  }
  return (Date.now() - t0) / 1000;
}

/** The tier whose guests fell due last: its service, when its first phone-home fell due (epoch ms), and how many reports it had. */
interface LastTier {
  service: string;
  firstDueAt: number;
  reports: number;
}

/**
 * Where a service's time went, from the sim cloud's own record of its guests: when the first
 * and last were created (seconds after `t0`), and how late their phone-homes were delivered
 * after falling due (boot + readiness delay after the create): p50, p99, max.
 */
function guestTimes(clusterId: string, t0: number): { text: string; lastTier?: LastTier } {
  const db = new Database(path.join(site.dataDir, 'sim-cloud.sqlite'), { readonly: true, fileMustExist: true });
  try {
    const rows = db
      .prepare<{ cluster: string }, { service: string; created_at: number; due: number | null; late: number | null }>(
        `SELECT service, created_at, phone_due_at AS due, phoned_at - phone_due_at AS late FROM instances WHERE cluster = @cluster AND terminated_at IS NULL ORDER BY service`,
      )
      .all({ cluster: clusterId });
    const services = [...new Set(rows.map((r) => r.service))];
    const s = (ms: number) => (ms / 1000).toFixed(1);
    // The tier whose guests fall due last: the one that ends the deployment.
    let lastTier: LastTier | undefined;
    for (const service of services) {
      const due = rows.flatMap((r) => (r.service === service && r.due !== null ? [r.due] : []));
      const firstDueAt = Math.min(...due);
      if (due.length > 0 && (!lastTier || firstDueAt > lastTier.firstDueAt)) lastTier = { service, firstDueAt, reports: due.length };
    }
    const text = services
      .map((service) => {
        const mine = rows.filter((r) => r.service === service);
        const created = mine.map((r) => r.created_at - t0);
        const late = mine.flatMap((r) => (r.late === null ? [] : [r.late])).sort((a, b) => a - b);
        const at = (q: number) => late[Math.min(late.length - 1, Math.floor(q * late.length))] ?? 0;
        return `${service}: created ${s(Math.min(...created))}–${s(Math.max(...created))} s, phone-homes late p50 ${s(at(0.5))} p99 ${s(at(0.99))} max ${s(late.at(-1) ?? 0)} s`;
      })
      .join('; ');
    return { text, lastTier };
  } finally {
    db.close();
  }
}

/**
 * The phone-home path's counters summed over the API processes (api/metrics.ts), for the
 * difference a run made; and each API process's event-loop delay (p99 and max) since the
 * scrape before, which prom-client measures between scrapes.
 */
async function phoneHomeCounters(): Promise<{ sums: Record<string, number>; lag: string[] }> {
  const sums: Record<string, number> = {};
  const lag: string[] = [];
  for (const [n, url] of site.apiUrls().entries()) {
    const text = await (await fetch(`${url}/metrics`, { headers: { authorization: site.authorization } })).text();
    for (const m of text.matchAll(/^(cloudgate_phone_home_(?:signal_duration_seconds_(?:sum|count)\{result="ok"\}|delivery_seconds_(?:sum|count)|signalled_reports_total)) (\S+)$/gm)) {
      sums[m[1]] = (sums[m[1]] ?? 0) + Number(m[2]);
    }
    // The API's own time for the reader's GETs, summed over its statuses: `le` bucket → count.
    for (const m of text.matchAll(/^cloudgate_http_request_duration_seconds_bucket\{(.*)\} (\S+)$/gm)) {
      if (!m[1].includes('method="GET"') || !m[1].includes('route="/v1/clusters/:id"')) continue;
      const key = `get-le-${/le="([^"]+)"/.exec(m[1])![1]}`;
      sums[key] = (sums[key] ?? 0) + Number(m[2]);
    }
    const ms = (name: string) => Math.round(Number(new RegExp(`^nodejs_eventloop_lag_${name}_seconds (\\S+)$`, 'm').exec(text)?.[1] ?? NaN) * 1000);
    lag.push(`api-${n + 1} p99 ${ms('p99')} ms, max ${ms('max')} ms`);
  }
  return { sums, lag };
}

/** How long the APIs themselves took for `GET /v1/clusters/:id` during the run: the share answered within each bound, from their histograms. */
function apiGetFigure(before: Record<string, number>, after: Record<string, number>): [string, string] {
  const d = (le: string) => (after[`get-le-${le}`] ?? 0) - (before[`get-le-${le}`] ?? 0);
  const all = d('+Inf');
  const share = (le: string) => `${((100 * d(le)) / all).toFixed(1)} % within ${Number(le) * 1000} ms`;
  return ['GET /v1/clusters/:id inside the APIs', all > 0 ? `${all} answered: ${['0.025', '0.05', '0.25', '1'].map(share).join(', ')}` : 'none counted'];
}

/** What a run's readiness reports cost on their way to the workflows: signals, their round trip, batch size, each report's wait. */
function phoneHomeFigure(before: Record<string, number>, after: Record<string, number>): [string, string] {
  const d = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
  const signals = d('cloudgate_phone_home_signal_duration_seconds_count{result="ok"}');
  const reports = d('cloudgate_phone_home_delivery_seconds_count');
  const mean = (sum: number, n: number, scale = 1) => (n > 0 ? ((sum / n) * scale).toFixed(0) : '–');
  return [
    'phone-homes through the APIs',
    `${reports} reports in ${signals} signals (mean ${mean(d('cloudgate_phone_home_signalled_reports_total'), signals)} a signal), ` +
      `signal round trip mean ${mean(d('cloudgate_phone_home_signal_duration_seconds_sum{result="ok"}'), signals, 1000)} ms, ` +
      `report arrival to delivery mean ${mean(d('cloudgate_phone_home_delivery_seconds_sum'), reports, 1000)} ms`,
  ];
}

let bundle: Awaited<ReturnType<typeof bundleWorkflowCode>> | undefined;
const quiet = new DefaultLogger('WARN');

/** Every run of the cluster's workflows: the largest history, and the time to replay the largest run of each workflow. */
async function histories(clusterId: string) {
  let largest = { id: '', events: 0 };
  const biggestRun = new Map<string, { runId: string; events: number }>();
  for await (const wf of site.client.workflow.list({ query: `CloudgateClusterId = "${clusterId}"` })) {
    const n = (await site.client.workflow.getHandle(wf.workflowId, wf.runId).fetchHistory()).events?.length ?? 0;
    if (n > largest.events) largest = { id: wf.workflowId, events: n };
    if (n > (biggestRun.get(wf.workflowId)?.events ?? 0)) biggestRun.set(wf.workflowId, { runId: wf.runId, events: n });
  }
  const replays: string[] = [];
  bundle ??= await bundleWorkflowCode({ ...WORKFLOW_BUNDLE_OPTIONS, logger: quiet });
  for (const [workflowId, { runId, events }] of biggestRun) {
    const history = await site.client.workflow.getHandle(workflowId, runId).fetchHistory();
    const t0 = Date.now();
    await Worker.runReplayHistory({ workflowBundle: bundle, dataConverter: site.dataConverter }, history, workflowId);
    replays.push(`${workflowId.split('/').at(-1)} ${events} events ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
  return { largest, replays };
}

interface Row {
  scenario: string;
  figures: [string, string][];
}
const rows: Row[] = [];

async function threeTierRun(size: number, workers: number): Promise<void> {
  await site.workers(workers);
  const [p, h] = [Math.max(1, Math.round(size * 0.01)), Math.max(1, Math.round(size * 0.04))];
  const w = size - p - h;
  const label = `${size} instances, ${workers} worker${workers === 1 ? '' : 's'}`;
  const def = await request('POST', '/v1/cluster-definitions', threeTier(`scale-${size}-${workers}w`, p, h, w));
  log(`${label}: deploying (proxy ${p} → head ${h} → workers ${w})`);
  const counted = await phoneHomeCounters();
  const { result, rss, cpu, timeline } = await watchProcesses(async () => {
    const t0 = Date.now();
    const cluster = await request('POST', '/v1/clusters', { definitionId: def.id, cloud: 'sim' });
    const stopReader = readRate > 0 ? startReader(`/v1/clusters/${cluster.id}`, readRate) : undefined;
    const wall = await waitAll([cluster.id], 'READY', t0, label);
    const readyAt = Date.now();
    const reads = await stopReader?.();
    return { id: cluster.id as string, wall, readyAt, reads, guests: guestTimes(cluster.id, t0) };
  });
  const after = await phoneHomeCounters();
  const phoneHomes = phoneHomeFigure(counted.sums, after.sums);
  const { largest, replays } = await histories(result.id);
  const td0 = Date.now();
  await request('DELETE', `/v1/clusters/${result.id}`);
  const teardown = await waitAll([result.id], 'TERMINATED', td0, `${label} teardown`);
  rows.push({
    scenario: label,
    figures: [
      ['wall to READY / ideal', `${result.wall.toFixed(1)} s / ${ideal.toFixed(0)} s = ${(result.wall / ideal).toFixed(3)}`],
      ...(result.reads
        ? ([[`GET /v1/clusters/:id at ${readRate}/s`, `p50 ${result.reads.p50} ms, p99 ${result.reads.p99} ms, max ${result.reads.max} ms (${result.reads.answered}/${result.reads.sent} answered, ${result.reads.non2xx} non-2xx)`],
            [
              'GET p99 by 10 s of the run (p50)',
              result.reads.byWindow.map((w) => `${w.from} s: ${w.p99} ms (${w.p50})`).join(', '),
            ],
          ] as [string, string][])
        : []),
      ['guests (the sim cloud\'s record)', result.guests.text],
      phoneHomes,
      apiGetFigure(counted.sums, after.sums),
      ['API event-loop delay during the run', after.lag.join('; ')],
      ['peak RSS', Object.entries(rss).map(([n, mib]) => `${n} ${mib} MiB`).join(', ')],
      cpuFigure(cpu, result.wall),
      lastTierCpuFigure(timeline, result.guests.lastTier, result.readyAt),
      ['largest history', `${largest.events} events (${largest.id})`],
      ['payload or history size warnings (so far)', String(site.sizeWarnings())],
      ['replay of the largest run of each workflow', replays.join('; ')],
      ['teardown to TERMINATED', `${teardown.toFixed(1)} s`],
    ],
  });
  print(rows.at(-1)!);
}

async function manyClustersRun(n: number): Promise<void> {
  await site.workers(2);
  const def = await request('POST', '/v1/cluster-definitions', threeTier('scale-hundred', 2, 8, 90));
  const label = `${n} clusters × 100 instances at once, 2 workers`;
  log(`${label}: submitting`);
  const { result, rss, cpu } = await watchProcesses(async () => {
    const t0 = Date.now();
    const ids = (await Promise.all(Array.from({ length: n }, () => request('POST', '/v1/clusters', { definitionId: def.id, cloud: 'sim' })))).map((c) => c.id as string);
    const submitted = (Date.now() - t0) / 1000;
    const wall = await waitAll(ids, 'READY', t0, label);
    return { ids, wall, submitted };
  });
  const td0 = Date.now();
  await Promise.all(result.ids.map((id) => request('DELETE', `/v1/clusters/${id}`)));
  const teardown = await waitAll(result.ids, 'TERMINATED', td0, `${label} teardown`);
  rows.push({
    scenario: label,
    figures: [
      ['all submitted (202) after', `${result.submitted.toFixed(1)} s`],
      ['all READY / ideal', `${result.wall.toFixed(1)} s / ${ideal.toFixed(0)} s = ${(result.wall / ideal).toFixed(3)}`],
      ['peak RSS', Object.entries(rss).map(([name, mib]) => `${name} ${mib} MiB`).join(', ')],
      cpuFigure(cpu, result.wall),
      ['all TERMINATED after', `${teardown.toFixed(1)} s`],
    ],
  });
  print(rows.at(-1)!);
}

function print({ scenario, figures }: Row): void {
  const w = Math.max(...figures.map(([k]) => k.length));
  console.log(`${scenario}\n${figures.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join('\n')}`);
}

try {
  const started = Date.now();
  const largest = Math.max(...sizes);
  for (const size of sizes.filter((s) => s !== largest)) await threeTierRun(size, 1);
  for (const workers of largestWorkers) await threeTierRun(largest, workers);
  if (manyClusters > 0) await manyClustersRun(manyClusters);
  console.log(`\n=== scale on the ${site.kind} (boot ${bootMs} ms + readiness ${readyMs} ms; ideal ${ideal} s) — ${((Date.now() - started) / 60_000).toFixed(1)} min ===`);
  for (const row of rows) print(row);
  mkdirSync(path.join(ROOT, '.tmp'), { recursive: true });
  writeFileSync(path.join(ROOT, '.tmp', 'bench-scale.json'), JSON.stringify({ site: site.kind, bootMs, readyMs, rows }, null, 1));
} finally {
  await site.stop();
}
