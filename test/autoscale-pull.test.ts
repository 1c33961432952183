/**
 * Issue 13, pulled load: a service with `autoscale.loadUrl` reads its load itself, every
 * `pollSeconds`, from the sim's job queue (clouds/sim-queue.ts, a fake batch system whose jobs
 * run on the service's instances, one per slot) — through the REST API, a real Temporal dev
 * server, the worker and the sim cloud. Jobs submitted → the service grows to
 * ceil(jobs / jobsPerInstance) within max; jobs done → it shrinks back to min, never
 * terminating an instance that runs a job (the queue records every eviction). A URL the
 * address policy refuses is one event, not one per poll, and no scaling. The polling goes on
 * across continue-as-new at its pace, and after the worker process is killed with SIGKILL.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import path from 'node:path';
import { ClusterDefinitionSchema } from '../model/definition.js';
import { openSqliteStore, type Store } from '../store/index.js';
import { clusterWorkflowId } from '../workflows/messages.js';
import { clusterStatus, startClusterWorkflow, startStack, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
let store: Store;
beforeAll(async () => {
  // The worker as a process of its own, so it can be killed with SIGKILL (the sim and its queue live in it).
  stack = await startStack({ workerProcess: true });
  store = await openSqliteStore(path.join(stack.config.dataDir, 'cloudgate.sqlite'));
});
afterAll(async () => {
  await store?.close();
  await stack?.stop();
});

/** 2 cpus: sim.medium, two job slots per instance. */
const offering = { cpus: 2, memoryMiB: 2048, diskGiB: 20 };
const POLL = 5;

const queue = (id: string) => `${stack.simQueueUrl}/sim/queues/${id}/workers`;
const submit = async (id: string, count: number, seconds: number) => {
  const r = await fetch(`${queue(id)}/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ count, seconds }) });
  expect(r.status).toBe(201);
};
const queueStatus = async (id: string) => (await fetch(queue(id))).json() as Promise<any>;
const workers = async (id: string) => (await clusterStatus(stack, id)).services.find((s: any) => s.name === 'workers');
const autoscaleEvents = async (id: string) =>
  ((await stack.http('GET', `/v1/clusters/${id}/events?limit=1000`)).body.items as any[]).filter((e) => /^autoscale workers:/.test(e.message)).map((e) => e.message as string);

function definition(name: string, autoscale: Record<string, unknown>) {
  return {
    name,
    services: [
      { name: 'head', image: 'cernvm4-micro', offering: { cpus: 1, memoryMiB: 2048, diskGiB: 20 }, min: 1 },
      { name: 'workers', image: 'cernvm4-micro', offering, min: 1, max: 5, dependsOn: ['head'], autoscale: { jobsPerInstance: 2, ...autoscale } },
    ],
  };
}

describe('pulled autoscale', () => {
  it('follows the sim job queue up to ceil(jobs / jobsPerInstance) and back to min, never terminating a busy instance', async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', definition('pull', {
      scaleDownIdleSeconds: 4,
      cooldownSeconds: 0,
      // One definition, many clusters: the placeholders name each cluster's own queue.
      loadUrl: `${stack.simQueueUrl}/sim/queues/{clusterId}/{service}/load`,
      pollSeconds: POLL,
    }));
    expect(d.status).toBe(201);
    const id = (await stack.http('POST', '/v1/clusters', { definitionId: d.body.id })).body.id as string;
    await waitForState(stack, id, 'READY');

    // 7 jobs of 12 s at 2 per instance → 4 instances (max 5); the first worker starts two at once.
    const t0 = Date.now();
    await submit(id, 7, 12);
    await waitFor(async () => (await workers(id)).ready === 4, 60_000, 'four workers ready');
    const upReaction = Date.now() - t0;
    expect((await workers(id)).desired).toBe(4);
    await waitFor(async () => (await queueStatus(id)).running === 7, 30_000, 'every job running');

    // The jobs end; idle workers go, busy ones stay, down to min.
    await waitFor(async () => (await queueStatus(id)).finished === 7, 60_000, 'every job done');
    const t1 = Date.now();
    await waitFor(async () => {
      const w = await workers(id);
      return w.desired === 1 && (await queueStatus(id)).instances.filter((i: any) => !i.gone).length === 1;
    }, 60_000, 'workers back to one');
    const downReaction = Date.now() - t1;

    // From the queue's side: every job ran to its end, no instance was terminated under one.
    const status = await queueStatus(id);
    expect(status).toMatchObject({ queued: 0, running: 0, finished: 7, evictions: [] });
    const ranJobs = status.instances.filter((i: any) => i.ran > 0).map((i: any) => i.name);
    expect(ranJobs.length).toBeGreaterThanOrEqual(4);
    expect(status.instances.filter((i: any) => i.gone).length).toBe(3);

    const events = await autoscaleEvents(id);
    expect(events[0]).toMatch(/^autoscale workers: [0-9]+ queued \+ [0-9]+ running at 2 per instance → 4 wanted \(min 1, max 5\), [0-9]+ idle: scale up 1 → 4$/);
    expect(events.some((e) => /scale down .* → 1, retiring idle/.test(e))).toBe(true);
    // No event for the polls that held.
    expect(events.every((e) => /scale (up|down)/.test(e))).toBe(true);
    console.log(`pulled autoscale (poll every ${POLL} s, sim boot ${stack.config.sim.bootMs} ms): 7 jobs submitted → 4 workers READY ${upReaction} ms; last job done → back to 1 worker ${downReaction} ms; ${events.length} autoscale events`);

    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
  }, 240_000);

  it('reads nothing from a URL the address policy refuses: one event, no scaling', async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', definition('ssrf', { loadUrl: 'http://169.254.169.254/latest/meta-data/', pollSeconds: POLL }));
    expect(d.status).toBe(201);
    const id = (await stack.http('POST', '/v1/clusters', { definitionId: d.body.id })).body.id as string;
    await waitForState(stack, id, 'READY');
    const events = await waitFor(async () => {
      const all = ((await stack.http('GET', `/v1/clusters/${id}/events`)).body.items as any[]).filter((e) => e.service === 'workers' && e.kind === 'failure');
      return all.length > 0 && all;
    }, 30_000, 'the refused read as an event');
    expect(events[0].message).toMatch(
      /^autoscale workers: no load from http:\/\/169\.254\.169\.254\/latest\/meta-data\/: the URL names a link-local address \(169\.254\.169\.254\): the gateway does not read from .*CLOUDGATE_LOAD_ALLOWED_HOSTS.*; holding at 1$/,
    );
    // Two more polls: still one event, still one worker.
    await new Promise((r) => setTimeout(r, 2 * POLL * 1000 + 1000));
    expect(((await stack.http('GET', `/v1/clusters/${id}/events`)).body.items as any[]).filter((e) => e.kind === 'failure')).toHaveLength(1);
    expect(await workers(id)).toMatchObject({ desired: 1, ready: 1 });

    // Bad definitions are 422s naming the field.
    for (const [autoscale, pointer, message] of [
      [{ loadUrl: 'ftp://example.org/load' }, '/services/1/autoscale/loadUrl', /only http and https/],
      [{ loadUrl: 'https://user:pw@example.org/load' }, '/services/1/autoscale/loadUrl', /carries credentials/],
      [{ loadUrl: 'not a url' }, '/services/1/autoscale/loadUrl', /is not a URL/],
      [{ loadUrl: 'https://example.org/load', pollSeconds: 1 }, '/services/1/autoscale/pollSeconds', /5/],
      [{ pollSeconds: 30 }, '/services/1/autoscale/pollSeconds', /needs a loadUrl/],
    ] as const) {
      const r = await stack.http('POST', '/v1/cluster-definitions', definition('bad', autoscale));
      expect(r.status).toBe(422);
      expect(r.body.errors).toEqual(expect.arrayContaining([expect.objectContaining({ pointer, message: expect.stringMatching(message) })]));
    }
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
  }, 120_000);

  it('goes on polling across continue-as-new and a killed worker, at its pace', async () => {
    // Started as the API would, with the history limit lowered (tuning the API never sets) so the run continues-as-new every few polls.
    const clusterId = 'pull-can-abcdef';
    const def = definition(clusterId, { scaleDownIdleSeconds: 0, cooldownSeconds: 0, loadUrl: `${stack.simQueueUrl}/sim/queues/{clusterId}/{service}/load`, pollSeconds: POLL });
    const started = Date.now();
    const handle = await startClusterWorkflow(stack.client, store, clusterId, ClusterDefinitionSchema.parse(def), { clusterHistoryLimit: 60 });
    await waitForState(stack, clusterId, 'READY');
    const runs = async () => {
      const ids: string[] = [];
      for await (const wf of stack.client.workflow.list({ query: `WorkflowId = "${clusterWorkflowId(clusterId)}"` })) ids.push(wf.runId);
      return ids;
    };
    // A steady service's reads hold and change nothing, yet the run still continues-as-new.
    await waitFor(async () => (await runs()).length >= 3, 120_000, 'two continues-as-new');
    // kill -9 of the worker (mid-timer or mid-read), and a new one: the timer and the read are Temporal's.
    await stack.killWorker();
    await stack.startWorker();
    // (The dead worker's poller is still listed a while, so wait for the new process itself: it serves the queue.)
    await waitFor(async () => (await fetch(queue(clusterId))).ok, 120_000, 'the new worker process serving the sim queue');
    // The later run still reads the queue: jobs submitted now scale the service.
    await submit(clusterId, 6, 30);
    await waitFor(async () => (await workers(clusterId)).ready === 3, 90_000, 'three workers ready after continue-as-new and the kill');
    // At its pace: one read per pollSeconds over the whole life, not one more at each new run.
    const elapsed = Date.now() - started;
    let reads = 0;
    const all = await runs();
    for (const runId of all) {
      const history = await stack.client.workflow.getHandle(clusterWorkflowId(clusterId), runId).fetchHistory();
      reads += (history.events ?? []).filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'pollLoad').length;
    }
    expect(reads).toBeGreaterThan(2);
    expect(reads).toBeLessThanOrEqual(Math.floor(elapsed / (POLL * 1000)) + 2);
    console.log(`pulled autoscale across ${all.length} runs: ${reads} reads in ${Math.round(elapsed / 1000)} s`);
    expect(handle.workflowId).toBe(clusterWorkflowId(clusterId));
    expect((await stack.http('DELETE', `/v1/clusters/${clusterId}`)).status).toBe(202);
    await waitForState(stack, clusterId, 'TERMINATED', 150_000);
  }, 330_000);
});
