/**
 * `npm run bench`: the project's fixed benchmark (README, "npm run bench"). One three-tier cluster on `sim` —
 * proxy 10, head 40 (after proxy), workers 950 (after head) — every guest booting in
 * exactly 20 s and phoning home ready 5 s later, no injected failures. Prints wall time,
 * ideal time (levels × (boot + readiness)), their ratio, the largest workflow history,
 * events per instance, peak worker RSS, and teardown time. Everything runs on 127.0.0.1.
 *
 * Then, in the same command and stack, the same cluster again with `workers` placed `fill`
 * over two simulated clouds, the first with room for 500 (a quota): 500 workers there, the
 * rest spilled to the second. Both ratios are printed; the spilled run must stay within 5 %
 * of the single-cloud one (the command exits 1 otherwise).
 *
 * Environment: BENCH_BOOT_MS, BENCH_READY_MS and BENCH_SCALE (multiplies instance counts)
 * for quick trial runs; the published figures use the defaults.
 */
import { spawn } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { stringify as stringifyYaml } from 'yaml';
import { startApi } from '../api/main.js';
import { payloadDataConverter } from '../model/payload-codec.js';
import { clusterStatusQuery, clusterWorkflowId } from '../workflows/messages.js';
import { loadPayloadKeys } from '../store/secret.js';
import { startBenchStack } from './bench-stack.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bootMs = Number(process.env.BENCH_BOOT_MS ?? 20_000);
const readyMs = Number(process.env.BENCH_READY_MS ?? 5_000);
const scale = Number(process.env.BENCH_SCALE ?? 1);
/** Reads of the cluster answer per second during the deployment (0: none). */
const readRate = Number(process.env.BENCH_READ_RATE ?? 200);
const counts = { proxy: Math.round(10 * scale), head: Math.round(40 * scale), workers: Math.round(950 * scale) };
const total = counts.proxy + counts.head + counts.workers;
const log = (msg: string) => console.error(`[bench] ${msg}`);

/** Room on the first cloud of the second run: about half the instances (500 at the default scale). */
const roomOnA = Math.round(500 * scale);
/** `sim` for the single-cloud run; `sim-a` (a quota of {@link roomOnA} instances) and `sim-b` for the spilled one. */
const REGISTRY = {
  clouds: [
    { name: 'sim', kind: 'sim' },
    { name: 'sim-a', kind: 'sim', quota: { instances: roomOnA } },
    { name: 'sim-b', kind: 'sim' },
  ],
};

const { dataDir, temporal, config: baseConfig, sizeWarnings } = await startBenchStack('bench', { bootMs, readyDelayMs: readyMs });
const cloudsFile = path.join(dataDir, 'clouds.yaml');
writeFileSync(cloudsFile, stringifyYaml(REGISTRY));
const config = { ...baseConfig, cloudsFile };
const api = await startApi(config);
const worker = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'workers/main.ts')], {
  env: {
    ...process.env,
    CLOUDGATE_DATA_DIR: dataDir,
    CLOUDGATE_API_PORT: String(config.apiPort),
    TEMPORAL_ADDRESS: temporal.address,
    CLOUDGATE_TOKEN_SECRET: config.tokenSecret,
    CLOUDGATE_LOG_LEVEL: 'warn',
    SIM_BOOT_MS: String(bootMs),
    SIM_READY_DELAY_MS: String(readyMs),
    SIM_SEED: 'bench',
    CLOUDGATE_CLOUDS: cloudsFile,
  },
  stdio: ['ignore', 'inherit', 'inherit'],
});
// Histories of a 10,000-instance service come in pages over gRPC's default 4 MB.
const connection = await Connection.connect({ address: temporal.address, channelArgs: { 'grpc.max_receive_message_length': 64 * 1024 * 1024 } });
// The worker's payload keys (<dataDir>/payload-keys): queries and results come back encrypted.
const client = new Client({ connection, dataConverter: payloadDataConverter(loadPayloadKeys(config)) });

// Every route but the public ones needs a bearer: the API's first admin token.
const auth = { authorization: `Bearer ${readFileSync(api.adminTokenFile, 'utf8').trim()}` };
const post = async (url: string, body: unknown) => {
  const res = await fetch(`${api.url}${url}`, { method: 'POST', headers: { 'content-type': 'application/json', ...auth }, body: JSON.stringify(body) });
  const json = (await res.json()) as any;
  if (!res.ok) throw new Error(`${url}: ${res.status} ${JSON.stringify(json)}`);
  return json;
};

/** One deployment measured: the figures `runScenario` prints and the ratio the two runs are compared by. */
interface Scenario {
  label: string;
  ratio: number;
  rows: [string, string][];
}

/**
 * Deploys the three-tier cluster (workers placed as `workersPlacement` says, if at all),
 * measures it to READY and through teardown, and returns its figures.
 */
async function runScenario(label: string, workersPlacement?: { clouds: string[]; strategy: 'fill' | 'spread' }): Promise<Scenario> {
  const offering = { cpus: 1, memoryMiB: 2048, diskGiB: 20 };
  const image = 'cernvm4-micro-2020.07';
  const timeout = Math.ceil((bootMs + readyMs) / 1000) + 120;
  const def = await post('/v1/cluster-definitions', {
    name: 'bench-three-tier',
    services: [
      { name: 'proxy', offering, image, min: counts.proxy, readinessTimeoutSeconds: timeout },
      { name: 'head', offering, image, min: counts.head, dependsOn: ['proxy'], readinessTimeoutSeconds: timeout },
      { name: 'workers', offering, image, min: counts.workers, dependsOn: ['head'], readinessTimeoutSeconds: timeout, ...(workersPlacement && { placement: workersPlacement }) },
    ],
  });
  log(`${label}: deploying ${total} instances (boot ${bootMs} ms + readiness ${readyMs} ms)`);
  const t0 = Date.now();
  const cluster = await post('/v1/clusters', { definitionId: def.id, cloud: 'sim' });
  const handle = client.workflow.getHandle(clusterWorkflowId(cluster.id));
  // A reader in its own process asks for the cluster at a fixed rate all through the deployment.
  const reader =
    readRate > 0
      ? spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'bench/read-load.ts'), `${api.url}/v1/clusters/${cluster.id}`, String(readRate)], {
          stdio: ['pipe', 'pipe', 'inherit'],
          // The bearer goes by environment, never on a command line others can list.
          env: { ...process.env, BENCH_AUTHORIZATION: auth.authorization },
        })
      : undefined;
  const readFigures = reader
    ? new Promise<string>((resolve) => {
        let out = '';
        reader.stdout!.on('data', (d: Buffer) => (out += d.toString('utf8')));
        reader.once('exit', () => resolve(out.trim()));
      })
    : Promise.resolve('');
  let lastLine = '';
  for (;;) {
    const view = await handle.query(clusterStatusQuery);
    const line = view.services.map((s) => `${s.name} ${s.state}`).join(', ');
    if (line !== lastLine) log(`${label}: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${line}`);
    lastLine = line;
    if (view.state === 'READY') break;
    if (view.state === 'FAILED') throw new Error(`cluster failed: ${view.message}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const wall = (Date.now() - t0) / 1000;
  const ideal = (3 * (bootMs + readyMs)) / 1000;
  reader?.stdin!.end();
  const reads = readRate > 0 ? (JSON.parse((await readFigures) || '{}') as Record<string, number>) : undefined;
  // Where the workers went (the read model's per-cloud counts).
  const answer = (await (await fetch(`${api.url}/v1/clusters/${cluster.id}`, { headers: auth })).json()) as any;
  const workersClouds = answer.services?.find((s: any) => s.name === 'workers')?.clouds ?? {};

  // Every run of every workflow of this cluster, continue-as-new runs included.
  let largest = { id: '', events: 0 };
  let events = 0;
  let runs = 0;
  for await (const wf of client.workflow.list({ query: `CloudgateClusterId = "${cluster.id}"` })) {
    const n = (await client.workflow.getHandle(wf.workflowId, wf.runId).fetchHistory()).events?.length ?? 0;
    events += n;
    runs++;
    if (n > largest.events) largest = { id: `${wf.workflowId} (${wf.runId.slice(0, 8)})`, events: n };
  }
  const peakRssMiB = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${worker.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;

  const td0 = Date.now();
  await fetch(`${api.url}/v1/clusters/${cluster.id}`, { method: 'DELETE', headers: auth });
  const final = await handle.result();
  const teardown = (Date.now() - td0) / 1000;

  const rows: [string, string][] = [
    ['instances', String(total)],
    ['workers per cloud', Object.entries(workersClouds).map(([c, n]: [string, any]) => `${c} ${n.instances}`).join(', ')],
    ['wall time to READY', `${wall.toFixed(1)} s`],
    ['ideal (3 levels × (boot + readiness))', `${ideal.toFixed(1)} s`],
    ['ratio wall / ideal', (wall / ideal).toFixed(3)],
    ...(reads
      ? ([
          [`GET /v1/clusters/:id at ${readRate}/s during deploy`, `p50 ${reads.p50} ms, p99 ${reads.p99} ms, max ${reads.max} ms`],
          ['  reads answered', `${reads.answered} of ${reads.sent} (${reads.perSecond}/s), ${reads.non2xx} non-2xx, ${reads.errors} errors`],
        ] as [string, string][])
      : []),
    ['largest workflow history', `${largest.events} events — ${largest.id}`],
    ['workflow runs (incl. continue-as-new)', String(runs)],
    ['events per instance (all histories)', (events / total).toFixed(2)],
    ['peak worker RSS (so far)', `${peakRssMiB.toFixed(0)} MiB`],
    ['server warnings of payload or history size (so far)', String(sizeWarnings())],
    ['teardown to TERMINATED', `${teardown.toFixed(1)} s (${final.state})`],
  ];
  return { label, ratio: wall / ideal, rows };
}

const print = ({ label, rows }: Scenario) => {
  const w = Math.max(...rows.map(([k]) => k.length));
  console.log(`${label}\n${rows.map(([k, v]) => `  ${k.padEnd(w)}  ${v}`).join('\n')}`);
};

try {
  // Wait until the worker is polling (its bundle built) and the catalogue lists every cloud's
  // offerings (submissions are checked against them), so the clock measures orchestration only.
  for (;;) {
    const tq = await client.workflowService.describeTaskQueue({ namespace: 'default', taskQueue: { name: config.taskQueue }, taskQueueType: 1 });
    const clouds = (await (await fetch(`${api.url}/v1/clouds`, { headers: auth })).json()) as { items?: { name: string; offerings: unknown[] }[] };
    const listed = new Set((clouds.items ?? []).filter((c) => c.offerings.length > 0).map((c) => c.name));
    if ((tq.pollers ?? []).length > 0 && REGISTRY.clouds.every((c) => listed.has(c.name))) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const single = await runScenario('run 1: every service on sim');
  print(single);
  const spilled = await runScenario(`run 2: workers fill over sim-a (room for ${roomOnA}) then sim-b`, { clouds: ['sim-a', 'sim-b'], strategy: 'fill' });
  print(spilled);
  const slower = spilled.ratio / single.ratio - 1;
  console.log(
    `spilled vs single-cloud: ratio ${spilled.ratio.toFixed(3)} vs ${single.ratio.toFixed(3)} (${(slower * 100).toFixed(1)} %; within 5 %: ${slower <= 0.05 ? 'yes' : 'NO'})`,
  );
  if (slower > 0.05) process.exitCode = 1;
} finally {
  worker.kill('SIGTERM');
  await new Promise((r) => worker.once('exit', r));
  await api.close();
  await connection.close();
  await temporal.stop();
  rmSync(dataDir, { recursive: true, force: true });
}
