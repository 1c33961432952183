/**
 * `npm run bench:autoscale`: what an autoscaling session writes to Temporal, and how fast it
 * reacts. One session (a head, and `workers` with autoscale, min 1, max 20, 2 jobs per instance,
 * no cooldown) is driven through a load curve by a fake head node: BENCH_REPORTS load reports
 * (default 120: two hours of a report a minute), one every BENCH_REPORT_MS (default 500) in real
 * time, the queue rising and falling over two waves, naming idle the workers beyond the busy
 * ones. Prints the events of the cluster and workers histories (every run), the events per load
 * report, the events per hour at one report a minute, and the reaction times of the scale-ups
 * (report → the wanted workers READY) and scale-downs (report → retired workers gone).
 *
 * Environment: BENCH_REPORTS, BENCH_REPORT_MS, BENCH_BOOT_MS (sim boot, default 2000).
 */
import { readFileSync, rmSync } from 'node:fs';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { startApi } from '../api/main.js';
import { payloadDataConverter } from '../model/payload-codec.js';
import { loadPayloadKeys } from '../store/secret.js';
import { clusterWorkflowId } from '../workflows/messages.js';
import { startWorker } from '../workers/worker.js';
import { startBenchStack } from './bench-stack.js';

const reports = Number(process.env.BENCH_REPORTS ?? 120);
const reportMs = Number(process.env.BENCH_REPORT_MS ?? 500);
const bootMs = Number(process.env.BENCH_BOOT_MS ?? 2_000);
const log = (msg: string) => console.error(`[bench:autoscale] ${msg}`);
Runtime.install({ logger: new DefaultLogger('WARN') });

const { dataDir, temporal, config, sizeWarnings } = await startBenchStack('autoscale', { bootMs, readyDelayMs: 500 });
const api = await startApi(config);
const worker = await startWorker(config);
const connection = await Connection.connect({ address: temporal.address });
const client = new Client({ connection, dataConverter: payloadDataConverter(loadPayloadKeys(config)) });
const auth = { authorization: `Bearer ${readFileSync(api.adminTokenFile, 'utf8').trim()}` };
const call = async (method: string, url: string, body?: unknown) => {
  const res = await fetch(`${api.url}${url}`, { method, headers: { ...auth, ...(body !== undefined && { 'content-type': 'application/json' }) }, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = (await res.json().catch(() => ({}))) as any;
  if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${JSON.stringify(json)}`);
  return json;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

try {
  // The catalogue lists sim's offerings shortly after the worker starts.
  for (;;) {
    const clouds = await call('GET', '/v1/clouds');
    if (clouds.items?.some((c: any) => c.name === 'sim' && c.offerings.length > 0)) break;
    await sleep(250);
  }
  const offering = { cpus: 1, memoryMiB: 2048, diskGiB: 20 };
  const def = await call('POST', '/v1/cluster-definitions', {
    name: 'caf-bench',
    lifetime: { idleSeconds: 3_600 },
    services: [
      { name: 'head', image: 'cernvm4-micro', offering, min: 1 },
      { name: 'workers', image: 'cernvm4-micro', offering, min: 1, max: 20, dependsOn: ['head'], autoscale: { jobsPerInstance: 2, scaleDownIdleSeconds: 0, cooldownSeconds: 0 } },
    ],
  });
  const { id } = await call('POST', '/v1/clusters', { definitionId: def.id });
  for (;;) {
    if ((await call('GET', `/v1/clusters/${id}`)).state === 'READY') break;
    await sleep(250);
  }
  const workers = async () => (await call('GET', `/v1/clusters/${id}`)).services.find((s: any) => s.name === 'workers');
  const workerIds = async () => ((await call('GET', `/v1/clusters/${id}/instances?service=workers&limit=500`)).items as any[]).filter((i) => i.state !== 'TERMINATING').map((i) => i.id);

  const ups: number[] = [];
  const downs: number[] = [];
  const pending: { kind: 'up' | 'down'; at: number; desired: number }[] = [];
  const counts = { up: 0, down: 0, hold: 0 };
  log(`driving ${reports} load reports, one every ${reportMs} ms`);
  for (let n = 0; n < reports; n++) {
    // Two waves of 0 → 36 jobs and back.
    const jobs = Math.round(18 * (1 - Math.cos((4 * Math.PI * n) / reports)));
    const running = Math.min(jobs, 2 * (await workers()).ready);
    const ids = await workerIds();
    // The busy workers are the oldest; the rest have no job.
    const busy = Math.ceil(running / 2);
    const idle = ids.sort((a, b) => Number(a.split('-').pop()) - Number(b.split('-').pop())).slice(busy);
    const r = await call('POST', `/v1/clusters/${id}/services/workers/load`, { queued: jobs - running, running, idleInstances: idle });
    counts[r.action as 'up' | 'down' | 'hold']++;
    if (r.action !== 'hold') pending.push({ kind: r.action, at: Date.now(), desired: r.desired });
    // Reaction: a scale-up is done when that many workers are READY, a scale-down when that few are left.
    const w = await workers();
    const live = (await workerIds()).length;
    for (const p of pending.splice(0)) {
      const done = p.kind === 'up' ? w.ready >= p.desired : live <= p.desired;
      if (done) (p.kind === 'up' ? ups : downs).push(Date.now() - p.at);
      else pending.push(p);
    }
    await sleep(reportMs);
  }

  let events = 0;
  let largest = 0;
  let runs = 0;
  for (const wid of [clusterWorkflowId(id), `${clusterWorkflowId(id)}/workers`]) {
    for await (const wf of client.workflow.list({ query: `WorkflowId = "${wid}"` })) {
      const n = (await client.workflow.getHandle(wf.workflowId, wf.runId).fetchHistory()).events?.length ?? 0;
      events += n;
      largest = Math.max(largest, n);
      runs++;
    }
  }
  const median = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] : NaN);
  const rows: [string, string][] = [
    ['load reports', `${reports} (${counts.up} up, ${counts.down} down, ${counts.hold} hold)`],
    ['events, cluster + workers histories (all runs)', `${events} in ${runs} runs, largest ${largest}`],
    ['events per load report', (events / reports).toFixed(2)],
    ['events per hour at one report a minute', (60 * (events / reports)).toFixed(0)],
    [`scale-up reaction (report → READY; sim boot ${bootMs} ms + 500 ms)`, `median ${median(ups)} ms, max ${Math.max(...ups)} ms over ${ups.length}`],
    ['scale-down reaction (report → retired workers gone)', `median ${median(downs)} ms, max ${Math.max(...downs)} ms over ${downs.length}`],
    ['server warnings of payload or history size', String(sizeWarnings())],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  console.log(rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join('\n'));
  await call('DELETE', `/v1/clusters/${id}`);
} finally {
  await worker.shutdown();
  await api.close();
  await connection.close();
  await temporal.stop();
  rmSync(dataDir, { recursive: true, force: true });
}
