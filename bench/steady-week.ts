/**
 * `npm run bench:steady`: one week of a steady 10-service cluster on `sim`, in compressed
 * time, to measure what a long-lived cluster writes to Temporal. The workflows run with
 * `tuning.timeScale` (default 600: a steady service's 10-minute health-check ceiling becomes
 * 1 s, a week 16.8 minutes), so every timer-driven event happens as often per simulated hour
 * as it would per real hour. Prints, per workflow id, the runs (continue-as-new) and events
 * over the week, the events per simulated hour once steady, and the largest carried input.
 *
 * Environment: BENCH_DAYS (default 7), BENCH_TIME_SCALE (600), BENCH_SERVICES (10),
 * BENCH_INSTANCES (instances per service, 2), BENCH_SCALE_EVERY_HOURS (a scale request to one
 * service, round robin, every this many simulated hours; default 0: none, a steady cluster).
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { DefaultLogger, Runtime } from '@temporalio/worker';
import { startApi } from '../api/main.js';
import { payloadDataConverter } from '../model/payload-codec.js';
import { ClusterDefinitionSchema } from '../model/definition.js';
import { openSqliteStore } from '../store/index.js';
import { clusterStatusQuery, clusterWorkflowId, scaleUpdate, teardownSignal } from '../workflows/messages.js';
import { startClusterWorkflow } from '../test/cluster-start.js';
import { loadPayloadKeys } from '../store/secret.js';
import { startBenchStack } from './bench-stack.js';
import { startWorker } from '../workers/worker.js';

const days = Number(process.env.BENCH_DAYS ?? 7);
const timeScale = Number(process.env.BENCH_TIME_SCALE ?? 600);
const serviceCount = Number(process.env.BENCH_SERVICES ?? 10);
const perService = Number(process.env.BENCH_INSTANCES ?? 2);
const scaleEveryHours = Number(process.env.BENCH_SCALE_EVERY_HOURS ?? 0);
const HOUR_MS = 3_600_000 / timeScale;
const log = (msg: string) => console.error(`[bench:steady] ${msg}`);
Runtime.install({ logger: new DefaultLogger('WARN') });

const { dataDir, temporal, config, sizeWarnings } = await startBenchStack('steady', { bootMs: 2_000, readyDelayMs: 500 });
// The API takes the guests' phone-home reports.
const api = await startApi(config);
const worker = await startWorker(config);
const connection = await Connection.connect({ address: temporal.address });
// The worker's payload keys (<dataDir>/payload-keys): queries and results come back encrypted.
const client = new Client({ connection, dataConverter: payloadDataConverter(loadPayloadKeys(config)) });
const store = await openSqliteStore(path.join(dataDir, 'cloudgate.sqlite'));

const clusterId = 'steady-week';
const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };
const names = Array.from({ length: serviceCount }, (_, n) => `svc${n}`);
const definition = ClusterDefinitionSchema.parse({
  name: clusterId,
  services: names.map((name) => ({ name, image: 'cernvm', offering, min: perService, max: perService + 1 })),
});

/** Per workflow id: its runs and their events (history length), from Temporal's visibility. */
async function census() {
  const byId = new Map<string, { runs: number; events: number; running: number }>();
  for await (const wf of client.workflow.list({ query: `CloudgateClusterId = "${clusterId}"` })) {
    const x = byId.get(wf.workflowId) ?? { runs: 0, events: 0, running: 0 };
    x.runs++;
    // Visibility has a run's length only once it closed; describe reads the running one's.
    x.events += (await client.workflow.getHandle(wf.workflowId, wf.runId).describe()).historyLength;
    if (wf.status.name === 'RUNNING') x.running++;
    byId.set(wf.workflowId, x);
  }
  return byId;
}

/** The largest input among the runs (what continue-as-new carried), in bytes. */
async function largestInput(): Promise<number> {
  let max = 0;
  for await (const wf of client.workflow.list({ query: `CloudgateClusterId = "${clusterId}"` })) {
    const h = await client.workflow.getHandle(wf.workflowId, wf.runId).fetchHistory();
    const started = h.events?.[0]?.workflowExecutionStartedEventAttributes;
    const bytes = (started?.input?.payloads ?? []).reduce((n, p) => n + (p.data?.length ?? 0), 0);
    max = Math.max(max, bytes);
  }
  return max;
}

try {
  const cluster = await startClusterWorkflow(client, store, clusterId, definition, { timeScale });
  const t0 = Date.now();
  const simHours = () => (Date.now() - t0) / HOUR_MS;
  for (;;) {
    if ((await cluster.query(clusterStatusQuery)).state === 'READY') break;
    await new Promise((r) => setTimeout(r, 200));
  }
  log(`READY after ${simHours().toFixed(2)} simulated hours (${((Date.now() - t0) / 1000).toFixed(1)} s); ${serviceCount} services × ${perService} instances, time × ${timeScale}`);
  // The first simulated day includes deploying and the health checks' ramp to their ceiling; steady figures start after it.
  const steadyFrom = Math.min(24, (days * 24) / 2);
  let before: Awaited<ReturnType<typeof census>> | undefined;
  let scales = 0;
  for (let hour = Math.ceil(simHours()); hour <= days * 24; hour++) {
    const wait = t0 + hour * HOUR_MS - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    if (hour === steadyFrom) before = await census();
    if (scaleEveryHours > 0 && hour % scaleEveryHours === 0) {
      const service = names[scales % names.length];
      // Each service goes up by one on its first turn, back down on its next, and so on.
      const up = Math.floor(scales / names.length) % 2 === 0;
      await cluster.executeUpdate(scaleUpdate, { args: [{ service, instances: perService + (up ? 1 : 0) }] });
      scales++;
    }
    if (hour % 24 === 0) log(`day ${hour / 24}`);
  }
  const after = await census();
  const steadyHours = days * 24 - steadyFrom;
  const rows = [...after.entries()].sort(([a], [b]) => a.localeCompare(b));
  const perHour = (id: string) => (after.get(id)!.events - (before?.get(id)?.events ?? 0)) / steadyHours;
  const svcRates = rows.filter(([id]) => id !== clusterWorkflowId(clusterId)).map(([id]) => perHour(id));
  const clusterRow = after.get(clusterWorkflowId(clusterId))!;
  const maxInput = await largestInput();

  console.log(`\nA week of a steady ${serviceCount}-service cluster (${serviceCount * perService} instances), time × ${timeScale}${scaleEveryHours ? `, a scale request every ${scaleEveryHours} h (${scales} in all)` : ''}`);
  console.log(`  simulated            ${days} days (${((Date.now() - t0) / 60_000).toFixed(1)} min wall)`);
  console.log(`  cluster workflow     ${clusterRow.runs} run(s), ${clusterRow.events} events, ${perHour(clusterWorkflowId(clusterId)).toFixed(1)} events/hour once steady`);
  console.log(
    `  service workflows    ${Math.min(...rows.slice(1).map(([, x]) => x.runs))}–${Math.max(...rows.slice(1).map(([, x]) => x.runs))} runs each, ` +
      `${Math.min(...svcRates).toFixed(1)}–${Math.max(...svcRates).toFixed(1)} events/hour each once steady`,
  );
  console.log(`  whole cluster        ${(svcRates.reduce((a, b) => a + b, 0) + perHour(clusterWorkflowId(clusterId))).toFixed(0)} events/hour once steady; ${rows.reduce((n, [, x]) => n + x.events, 0)} events in the week`);
  console.log(`  largest run input    ${(maxInput / 1024).toFixed(1)} KB`);
  console.log(`  server size warnings ${sizeWarnings()}`);
  for (const [id, x] of rows) console.log(`    ${id.padEnd(28)} runs ${String(x.runs).padStart(3)}  events ${String(x.events).padStart(6)}  ${perHour(id).toFixed(1).padStart(6)}/h`);

  await cluster.signal(teardownSignal, { reason: 'end of benchmark' });
  const final = (await cluster.result()) as { state: string };
  log(`teardown: ${final.state}, ${worker.sim!.count({ cluster: clusterId })} instances left`);
} finally {
  await store.close();
  await worker.shutdown();
  await api.close();
  await connection.close();
  await temporal.stop();
  rmSync(dataDir, { recursive: true, force: true });
}
