/**
 * Issue 13, clusters that live for weeks — the soak: one cluster driven through thousands of
 * scale, load and replacement events in compressed time, through the REST API, a real
 * Temporal dev server, the worker and the sim cloud. An autoscaled `workers` service follows
 * a queue that rises and falls (the idle workers named, so it shrinks), a plain `web` service
 * is scaled up and down by hand, guests vanish from the cloud and are replaced, and half way
 * through `web` moves to another image (a rolling change) while the load goes on.
 *
 * Then every workflow execution of the cluster — the cluster workflow and each service
 * workflow, every run including those continued-as-new — is read back from Temporal: each
 * history must stay under 10,240 events and each payload in it (inputs, results, signal and
 * update arguments, continue-as-new inputs, markers) under 512 KB, measured as stored (the
 * codec's ciphertext). The API cannot lower the workflows' history limits (tuning is not
 * part of it), so the cluster is driven past the default 2,000 events until its workflow
 * has continued-as-new. Every run is then replayed against today's workflow code. Numbers are
 * printed, not asserted on time — events, runs, the longest history, the largest payload, and
 * the workflow tasks that timed out or failed and the slowest one (a service's continue-as-new
 * under signal traffic replays its whole run): speed belongs to the benchmarks.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import protos from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import type { ClusterDefinitionInput } from '../model/definition.js';
import type { PublishedInstance } from '../model/read-model.js';
import { clusterWorkflowId } from '../workflows/messages.js';
import { clusterInstances, clusterStatus, msOf, startStack, waitFor, waitForState, workflowBundle, type Stack } from './harness.js';

const { temporal } = protos;

/** Temporal's limits the done-when names: events per history, bytes per payload. */
const MAX_HISTORY_EVENTS = 10_240;
const MAX_PAYLOAD_BYTES = 512 * 1024;
/** What the soak drives at least: read-model events, and a cluster workflow that continued-as-new. */
const WANT_EVENTS = 2_000;
/** A safety stop (not an assertion): the loop ends here even if the goals were not reached, and the test then fails on them. */
const MAX_ROUNDS = 6_000;

let stack: Stack;
beforeAll(async () => {
  // Compressed time: guests boot and phone home within a few ticks of the sim.
  stack = await startStack({ sim: { bootMs: 100, readyDelayMs: 50 } });
});
afterAll(async () => {
  await stack?.stop();
});

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };
const workers = {
  name: 'workers',
  image: 'cernvm4-micro',
  offering,
  min: 1,
  max: 8,
  readinessTimeoutSeconds: 10,
  autoscale: { jobsPerInstance: 1, scaleDownIdleSeconds: 0, cooldownSeconds: 0 },
};
const web = { name: 'web', image: 'cernvm4-micro', offering, min: 1, max: 4, readinessTimeoutSeconds: 10 };

/** 503s the API answered (with Retry-After): a workflow task that failed or timed out under load; a client tries again. */
const unavailable: string[] = [];

/**
 * How long a caller keeps trying after a first 503. A head node's load reporter keeps trying;
 * the soak gives up after this. Once, in `npm test` with another suite running beside it, the
 * cluster workflow's task at its continue-as-new point took 7–15 s. It timed out at 10 s, was
 * tried again, and kept updates answered 503 for about 30 s before it went through. The
 * slowest task and the timed-out ones are printed below.
 */
const UNAVAILABLE_BUDGET_MS = 120_000;

/** Calls the API as a head node or an operator would: a 503 is tried again after its Retry-After (here at most 1 s). */
async function call(method: string, url: string, body?: unknown): Promise<{ status: number; body: any }> {
  let firstAt: number | undefined;
  for (;;) {
    const r = await stack.http(method, url, body);
    if (r.status !== 503) return r;
    firstAt ??= Date.now();
    if (Date.now() - firstAt > UNAVAILABLE_BUDGET_MS) return r;
    unavailable.push(`${method} ${url.replace(/\/clusters\/[^/]+/, '/clusters/:id')}: ${r.body?.detail ?? r.status}`);
    await new Promise((res) => setTimeout(res, Math.min(1_000, Number(r.headers.get('retry-after') ?? 1) * 1000)));
  }
}

async function define(def: ClusterDefinitionInput): Promise<string> {
  const d = await stack.http('POST', '/v1/cluster-definitions', def);
  expect(d.status).toBe(201);
  return d.body.id as string;
}

/** Every event of the cluster's read model, following the cursors. */
async function allEvents(id: string): Promise<{ kind: string; service?: string; message: string }[]> {
  const items: any[] = [];
  let cursor: string | undefined;
  do {
    const r = await stack.http('GET', `/v1/clusters/${id}/events?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    expect(r.status).toBe(200);
    items.push(...r.body.items);
    cursor = r.body.next;
  } while (cursor !== undefined);
  return items;
}

/** The stored size of a Payload (its protobuf encoding: metadata and data as Temporal keeps them). */
const payloadBytes = (p: protos.temporal.api.common.v1.IPayload): number => temporal.api.common.v1.Payload.encode(p).finish().length;

/** A Payload: bytes in `data`, or (an empty one) nothing but byte-valued `metadata`. */
function isPayload(v: object): v is protos.temporal.api.common.v1.IPayload {
  const { data, metadata } = v as { data?: unknown; metadata?: unknown };
  if (data instanceof Uint8Array) return true;
  return metadata !== null && typeof metadata === 'object' && Object.keys(metadata).length > 0 && Object.values(metadata).every((x) => x instanceof Uint8Array);
}

const { EventType } = temporal.api.enums.v1;

/** Workflow tasks that timed out or failed (by cause), and the longest one (started → completed), of one history. */
function workflowTasks(events: protos.temporal.api.history.v1.IHistoryEvent[]): { timedOut: number; failed: string[]; slowestMs: number; slowestAt: number } {
  let timedOut = 0;
  const failed: string[] = [];
  let slowestMs = 0;
  let slowestAt = 0;
  let startedAt = 0;
  for (const e of events) {
    if (e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED) startedAt = msOf(e.eventTime);
    else if (e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT) timedOut++;
    else if (e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED) {
      failed.push(temporal.api.enums.v1.WorkflowTaskFailedCause[e.workflowTaskFailedEventAttributes?.cause ?? 0].replace(/^WORKFLOW_TASK_FAILED_CAUSE_/, ''));
    } else if (e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED && msOf(e.eventTime) - startedAt > slowestMs) {
      slowestMs = msOf(e.eventTime) - startedAt;
      slowestAt = Number(e.eventId);
    }
  }
  return { timedOut, failed, slowestMs, slowestAt };
}

/** The largest Payload anywhere in `value` (every field of every event, maps and lists included), in bytes, and how many there are. */
function largestPayload(value: unknown): { max: number; count: number } {
  let max = 0;
  let count = 0;
  const walk = (v: unknown): void => {
    if (v === null || typeof v !== 'object' || v instanceof Uint8Array) return;
    if (Array.isArray(v)) return v.forEach(walk);
    if (isPayload(v)) {
      max = Math.max(max, payloadBytes(v));
      count++;
      return;
    }
    for (const x of Object.values(v)) walk(x);
  };
  walk(value);
  return { max, count };
}

/** What a cluster's workflows are doing: for a test that timed out. */
async function diagnose(id: string): Promise<void> {
  const out: string[] = [JSON.stringify(await clusterStatus(stack, id))];
  out.push(`read model: ${(await clusterInstances(stack, id)).map((i) => `${i.id} ${i.state} ${i.cloudInstanceId}`).join(', ')}`);
  out.push(`cloud: ${(await stack.worker!.sim!.listInstances({ cluster: id })).map((i) => `${i.name} ${i.id} ${i.state}`).join(', ')}`);
  out.push(...(await allEvents(id)).slice(-25).map((e) => `  event: ${e.message}`));
  for await (const wf of stack.client.workflow.list({ query: `CloudgateClusterId = '${id}'` })) {
    const h = stack.client.workflow.getHandle(wf.workflowId, wf.runId);
    const d = await h.describe();
    out.push(`${wf.workflowId} ${wf.runId} ${d.status.name} ${d.historyLength} events; pending activities: ${JSON.stringify(d.raw.pendingActivities?.map((a) => [a.activityType?.name, a.attempt, a.lastFailure?.message]))}`);
    if (d.status.name === 'RUNNING') {
      const events = (await h.fetchHistory()).events ?? [];
      out.push(...events.slice(-30).map((e) => `    ${e.eventId} ${EventType[e.eventType ?? 0]} ${new Date(msOf(e.eventTime)).toISOString()}`));
    }
  }
  console.log(out.join('\n'));
}

describe('soak: one cluster through thousands of scale, load and replacement events', () => {
  it('keeps every history and payload within Temporal limits, and converges', async () => {
    const a = await define({ name: 'soak', services: [workers, web] });
    const b = await define({ name: 'soak', services: [workers, { ...web, image: 'cernvm4-micro-2023.06' }] });
    const c = await stack.http('POST', '/v1/clusters', { definitionId: a });
    expect(c.status).toBe(202);
    const id = c.body.id as string;
    await waitForState(stack, id, 'READY');
    const sim = stack.worker!.sim!;
    const clusterHandle = stack.client.workflow.getHandle(clusterWorkflowId(id));
    const firstRun = (await clusterHandle.describe()).runId;

    const counts = { reports: 0, up: 0, down: 0, hold: 0, scales: 0, vanished: 0, rounds: 0 };
    let changeAt: number | undefined;
    let continued = false;
    const load = (body: unknown) => call('POST', `/v1/clusters/${id}/services/workers/load`, body);
    const live = (list: PublishedInstance[], service: string) =>
      list.filter((i) => i.service === service && i.state !== 'TERMINATING' && i.state !== 'FAILED').sort((x, y) => x.ordinal - y.ordinal);
    const t0 = Date.now();

    for (let n = 0; n < MAX_ROUNDS; n++) {
      counts.rounds++;
      const instances = await clusterInstances(stack, id);
      const readyWorkers = live(instances, 'workers').filter((i) => i.state === 'READY').length;

      // The queue: a triangle wave of 0 → 10 jobs and back, every 20 reports; the oldest workers run the jobs, the rest are idle.
      const phase = n % 20;
      const jobs = phase <= 10 ? phase : 20 - phase;
      const running = Math.min(jobs, readyWorkers);
      const idle = live(instances, 'workers')
        .slice(running)
        .map((i) => i.id);
      const r = await load({ queued: jobs - running, running, idleInstances: idle });
      expect(r.status).toBe(200);
      counts.reports++;
      counts[r.body.action as 'up' | 'down' | 'hold']++;

      // `web` is scaled by hand every round: 1 → 2 → 3 → 4 → 3 → 2 → 1 …
      const step = n % 6;
      const s = await call('POST', `/v1/clusters/${id}/services/web/scale`, { instances: 1 + (step <= 3 ? step : 6 - step) });
      expect(s.status).toBe(200);
      counts.scales++;

      // Every fifth round a ready guest vanishes from the cloud, web and workers by turns: the oldest, which a scale-down
      // (highest ordinal first) or an autoscale retirement (a busy worker is not named idle) leaves for the health check to find.
      if (n % 5 === 4 && (n % 10 === 4 || running > 0)) {
        const pool = live(instances, n % 10 === 4 ? 'web' : 'workers').filter((i) => i.state === 'READY' && i.cloudInstanceId);
        const victim = pool[0];
        if (victim) {
          sim.vanish(victim.cloudInstanceId!);
          counts.vanished++;
        }
      }

      if (n % 25 === 24) {
        const events = (await allEvents(id)).length;
        const status = await clusterStatus(stack, id);
        continued ||= (await clusterHandle.describe()).runId !== firstRun;
        // Half way (by events): `web` moves to another image while the load goes on.
        if (changeAt === undefined && events >= WANT_EVENTS / 2) {
          const put = await call('PUT', `/v1/clusters/${id}`, { definitionId: b });
          expect(put.status).toBe(202);
          expect(put.body).toMatchObject({ replace: ['web'], keep: ['workers'] });
          changeAt = n;
        }
        const changeDone = changeAt !== undefined && !status.change && status.definitionId === b;
        if (events >= WANT_EVENTS && continued && changeDone) break;
      }
    }
    const driveMs = Date.now() - t0;

    // Converged: the change done, READY, `web` entirely on the new definition, the cloud holding exactly the listed instances (by name).
    await waitFor(
      async () => {
        const s = await clusterStatus(stack, id);
        return s.state === 'READY' && !s.change && s.definitionId === b ? s : undefined;
      },
      120_000,
      'the cluster READY on the new definition',
    ).catch(async (err) => {
      await diagnose(id);
      throw err;
    });
    const final = await waitFor(
      async () => {
        // The last load report and scale may land after the cluster first shows READY: the wanted count is read each time.
        const want = (await clusterStatus(stack, id)).services.reduce((sum: number, s: any) => sum + s.desired, 0);
        const list = await clusterInstances(stack, id);
        const cloud = (await sim.listInstances({ cluster: id })).map((i) => i.name).sort();
        const listed = list.map((i) => i.id).sort();
        return list.length === want && list.every((i) => i.state === 'READY') && JSON.stringify(cloud) === JSON.stringify(listed) ? list : undefined;
      },
      60_000,
      'the read model and the cloud to hold exactly the wanted instances',
    ).catch(async (err) => {
      await diagnose(id);
      throw err;
    });
    expect(new Set(final.filter((i) => i.service === 'web').map((i) => i.spec))).toEqual(new Set([b]));
    const log = await allEvents(id);
    const events = log.length;
    expect(log.map((e) => e.message)).toEqual(expect.arrayContaining([expect.stringMatching(new RegExp(`^changed from ${a} to ${b} in \\d+ s$`))]));
    const vanishedSeen = log.filter((e) => /vanished from the cloud; replacing it$/.test(e.message)).length;
    const replacements = (await clusterStatus(stack, id)).services.reduce((sum: number, s: any) => sum + s.replacements, 0);

    expect((await call('DELETE', `/v1/clusters/${id}`)).status).toBe(202);
    await waitForState(stack, id, 'TERMINATED', 120_000).catch(async (err) => {
      await diagnose(id);
      throw err;
    });
    expect(sim.count({ cluster: id })).toBe(0);

    // Every run of every workflow of this cluster, closed ones included.
    const runs: { workflowId: string; runId: string }[] = [];
    await waitFor(
      async () => {
        runs.length = 0;
        for await (const wf of stack.client.workflow.list({ query: `CloudgateClusterId = '${id}'` })) runs.push({ workflowId: wf.workflowId, runId: wf.runId });
        return runs.length > 0 && runs.length === new Set(runs.map((x) => x.runId)).size;
      },
      30_000,
      'the visibility list of the cluster runs',
    );
    type Tally = { runs: number; events: number; longest: number; payload: number; payloads: number; timedOut: number; failed: string[]; slowestMs: number; slowestAt: string };
    const perWorkflow = new Map<string, Tally>();
    const histories: { workflowId: string; history: protos.temporal.api.history.v1.IHistory }[] = [];
    for (const { workflowId, runId } of runs) {
      const history = await stack.client.workflow.getHandle(workflowId, runId).fetchHistory();
      histories.push({ workflowId, history });
      const length = history.events?.length ?? 0;
      const { max, count } = largestPayload(history.events);
      const wft = workflowTasks(history.events ?? []);
      const x = perWorkflow.get(workflowId) ?? { runs: 0, events: 0, longest: 0, payload: 0, payloads: 0, timedOut: 0, failed: [], slowestMs: 0, slowestAt: '' };
      perWorkflow.set(workflowId, {
        runs: x.runs + 1,
        events: x.events + length,
        longest: Math.max(x.longest, length),
        payload: Math.max(x.payload, max),
        payloads: x.payloads + count,
        timedOut: x.timedOut + wft.timedOut,
        failed: [...x.failed, ...wft.failed],
        ...(wft.slowestMs > x.slowestMs ? { slowestMs: wft.slowestMs, slowestAt: `event ${wft.slowestAt} of ${length}` } : { slowestMs: x.slowestMs, slowestAt: x.slowestAt }),
      });
    }
    // Every run replays against today's workflow code: thousands of updates, signals, a change and continue-as-new, deterministic.
    const replayStart = Date.now();
    const replayed = [];
    for await (const r of Worker.runReplayHistories({ workflowBundle: await workflowBundle(), dataConverter: stack.dataConverter }, histories)) replayed.push(r);
    const replayMs = Date.now() - replayStart;
    const ids = [...perWorkflow.keys()].sort();
    expect(ids).toEqual([clusterWorkflowId(id), `${clusterWorkflowId(id)}/web`, `${clusterWorkflowId(id)}/workers`]);
    const rows = ids.map((w) => [w, perWorkflow.get(w)!] as const);
    const longest = Math.max(...rows.map(([, x]) => x.longest));
    const largest = Math.max(...rows.map(([, x]) => x.payload));
    console.log(
      [
        `soak of ${id}: ${counts.rounds} rounds in ${(driveMs / 1000).toFixed(0)} s — ${counts.reports} load reports (${counts.up} up, ${counts.down} down, ${counts.hold} hold), ` +
          `${counts.scales} web scales, ${counts.vanished} guests vanished (${vanishedSeen} seen vanished, ${replacements} replacements in all), change to ${b} at round ${changeAt}`,
        `  read-model events: ${events}`,
        ...rows.map(
          ([w, x]) =>
            `  ${w.padEnd(48)} runs ${String(x.runs).padStart(2)}  events ${String(x.events).padStart(6)}  longest ${String(x.longest).padStart(5)}  payloads ${x.payloads}, largest ${(x.payload / 1024).toFixed(1)} KB  ` +
            `workflow tasks: ${x.timedOut} timed out, ${x.failed.length} failed${x.failed.length ? ` (${x.failed.join(', ')})` : ''}, slowest ${x.slowestMs.toFixed(0)} ms (${x.slowestAt})`,
        ),
        `  replayed ${histories.length} runs (${histories.reduce((n, h) => n + (h.history.events?.length ?? 0), 0)} events) in ${(replayMs / 1000).toFixed(1)} s; 503s answered and retried: ${unavailable.length}${unavailable.length ? ` (${[...new Set(unavailable)].join('; ')})` : ''}`,
        `  longest history ${longest} events (limit ${MAX_HISTORY_EVENTS}); largest payload ${(largest / 1024).toFixed(1)} KB (limit ${MAX_PAYLOAD_BYTES / 1024} KB)`,
      ].join('\n'),
    );

    expect(replayed.map((r) => r.error)).toEqual(histories.map(() => undefined));
    expect(events).toBeGreaterThanOrEqual(WANT_EVENTS);
    expect(counts.down).toBeGreaterThan(0);
    expect(vanishedSeen).toBeGreaterThan(0);
    // The default limit (2,000 events) is what bounds these histories: the cluster workflow went past it and continued-as-new.
    expect(perWorkflow.get(clusterWorkflowId(id))!.runs).toBeGreaterThan(1);
    for (const [, x] of rows) {
      expect(x.longest).toBeLessThan(MAX_HISTORY_EVENTS);
      expect(x.payload).toBeLessThan(MAX_PAYLOAD_BYTES);
    }
  }, 600_000);
});
