/**
 * Issue 12 end to end — one cluster across several clouds, through the REST API, a real
 * Temporal dev server, the real worker and several simulated clouds (each its own SQLite
 * file, counted in the cloud's own state): spread and fill with exact counts per cloud,
 * spill-over when the capacity ledger refuses (quota), when the cloud itself is full
 * (CapacityExhausted) and when its creates keep failing, five clusters racing for one
 * cloud's quota, a service that waits for room and goes on when room frees, and teardown
 * leaving nothing on any cloud and nothing held in the ledger.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import { readFileSync, writeFileSync } from 'node:fs';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import type { SimCloud } from '../clouds/sim.js';
import type { ClusterDefinitionInput } from '../model/definition.js';
import { Worker } from '@temporalio/worker';
import { clusterInstances, clusterStatus, startStack, waitFor, waitForState, workflowBundle, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({
    clouds: [
      { name: 'sim-a', kind: 'sim', quota: { instances: 4 } },
      { name: 'sim-b', kind: 'sim' },
      { name: 'sim-c', kind: 'sim', capacity: 3 },
      { name: 'sim-d', kind: 'sim', createFailureRate: 1 },
      { name: 'sim-q', kind: 'sim', quota: { instances: 30, cpus: 60 } },
      { name: 'sim-r', kind: 'sim', quota: { instances: 2 } },
    ],
  });
}, 120_000);
afterAll(async () => {
  await stack?.stop();
});

const sim = (name: string): SimCloud => stack.worker!.sims.get(name)!;
const offering = { cpus: 2, memoryMiB: 2048, diskGiB: 20 };
const image = 'cernvm4-micro';

/** A one-service cluster definition placed on `clouds`. */
function placed(name: string, instances: number, clouds: string[], strategy: 'fill' | 'spread'): ClusterDefinitionInput {
  return {
    name,
    failurePolicy: 'keep',
    services: [{ name: 'workers', offering, image, min: instances, max: 100, readinessTimeoutSeconds: 60, placement: { clouds, strategy } }],
  };
}

/** Every cluster the suite submitted: their histories are replayed at the end. */
const submitted: string[] = [];

async function submit(def: ClusterDefinitionInput, cloud = 'sim-b'): Promise<string> {
  const d = await stack.http('POST', '/v1/cluster-definitions', def);
  expect(d.status).toBe(201);
  const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id, cloud });
  if (c.status !== 202) throw new Error(`cluster rejected: ${JSON.stringify(c.body)}`);
  submitted.push(c.body.id);
  return c.body.id as string;
}

/** What the ledger holds on each cloud, as `GET /v1/clouds` shows it. */
async function usage(): Promise<Record<string, { instances: number; cpus: number; memoryMiB: number }>> {
  const r = await stack.http('GET', '/v1/clouds');
  expect(r.status).toBe(200);
  return Object.fromEntries(r.body.items.map((c: any) => [c.name, c.usage]));
}

/** Tears a cluster down and checks nothing of it is left on any cloud. */
async function tearDown(id: string): Promise<void> {
  expect((await stack.http('DELETE', `/v1/clusters/${id}`)).status).toBe(202);
  await waitForState(stack, id, 'TERMINATED');
  for (const name of stack.worker!.sims.keys()) expect([name, sim(name).count({ cluster: id })]).toEqual([name, 0]);
}

const workersOf = (status: any) => status.services.find((s: any) => s.name === 'workers');

/** A payload of a history as the UI shows it: decrypted with the stack's codec, then read. */
async function readPayload(payload: Payload): Promise<string> {
  let p = payload;
  for (const codec of [...(stack.dataConverter.payloadCodecs ?? [])].reverse()) [p] = await codec.decode([p]);
  return defaultPayloadConverter.fromPayload(p);
}

describe('placement over several clouds', () => {
  it('spreads a service evenly over two clouds, shows per-cloud counts, and is found by CloudgateClouds', async () => {
    const id = await submit(placed('spread', 6, ['sim-a', 'sim-b'], 'spread'));
    const ready = await waitForState(stack, id, 'READY');
    expect(workersOf(ready).clouds).toEqual({ 'sim-a': { instances: 3, ready: 3 }, 'sim-b': { instances: 3, ready: 3 } });
    expect([sim('sim-a').count({ cluster: id }), sim('sim-b').count({ cluster: id })]).toEqual([3, 3]);
    const instances = await clusterInstances(stack, id);
    expect(instances.filter((i) => i.cloud === 'sim-a')).toHaveLength(3);
    expect(instances.filter((i) => i.cloud === 'sim-b')).toHaveLength(3);
    expect((await usage())['sim-a'].instances).toBe(3);

    // An operator finds every cluster (and service) on sim-a.
    const found = await waitFor(async () => {
      const ids: string[] = [];
      for await (const wf of stack.client.workflow.list({ query: 'CloudgateClouds = "sim-a"' })) ids.push(wf.workflowId);
      return ids.includes(`cluster/${id}`) && ids.includes(`cluster/${id}/workers`) && ids;
    }, 30_000, 'visibility to list the cluster under CloudgateClouds');
    expect(found).toContain(`cluster/${id}`);

    await tearDown(id);
    expect((await usage())['sim-a'].instances).toBe(0);
  });

  it('fills the first cloud up to its quota and spills the rest to the next, saying so', async () => {
    const id = await submit(placed('fill', 6, ['sim-a', 'sim-b'], 'fill'));
    const ready = await waitForState(stack, id, 'READY');
    expect(workersOf(ready).clouds).toEqual({ 'sim-a': { instances: 4, ready: 4 }, 'sim-b': { instances: 2, ready: 2 } });
    // The status says where the rest went.
    expect(workersOf(ready).message).toMatch(/^no room on sim-a \(.*quota 4 instances.*\); placing on sim-b$/);
    expect([sim('sim-a').count({ cluster: id }), sim('sim-b').count({ cluster: id })]).toEqual([4, 2]);
    const u = await usage();
    // Counted with the flavor that serves the offering: sim.medium, 2 cpus and 4096 MiB.
    expect(u['sim-a']).toEqual({ instances: 4, cpus: 8, memoryMiB: 16384 });
    const events = await stack.http('GET', `/v1/clusters/${id}/events`);
    const placement = events.body.items.filter((e: any) => e.kind === 'placement').map((e: any) => e.message);
    expect(placement.join('\n')).toMatch(/no room on sim-a \(cloudgate's quota for sim-a is used up: quota 4 instances; in use 4 instances, 8 cpus, 16384 MiB\); placing on sim-b/);
    // The Temporal UI tells it too: the current details list the clouds, and the creates name theirs.
    const svc = stack.client.workflow.getHandle(`cluster/${id}/workers`);
    const meta = await svc.query<{ currentDetails?: string }>('__temporal_workflow_metadata');
    expect(meta.currentDetails).toMatch(/fill over sim-a 4\/4 ready \(passed over until .*: cloudgate's quota for sim-a is used up.*\), sim-b 2\/2 ready/);
    const history = await svc.fetchHistory();
    const summaries: string[] = [];
    for (const e of history.events ?? []) {
      const payload = e.activityTaskScheduledEventAttributes && e.userMetadata?.summary;
      if (payload) summaries.push(await readPayload(payload));
    }
    expect(summaries.some((s) => /^create 4 × workers on sim-b \(placement sim-a → sim-b\)/.test(s) || /^create 2 × workers on sim-b/.test(s))).toBe(true);
    // A replacement goes where there is room: sim-a is full, so a lost instance there comes back on sim-b.
    const onA = (await clusterInstances(stack, id)).find((i) => i.cloud === 'sim-a')!;
    sim('sim-a').vanish(onA.cloudInstanceId!);
    await waitFor(async () => {
      const s = workersOf(await clusterStatus(stack, id));
      return s.state === 'READY' && s.replacements === 1 && s.clouds['sim-a'].instances + s.clouds['sim-b'].instances === 6 && s;
    }, 90_000, 'the lost instance to be replaced');
    await tearDown(id);
    expect((await usage())['sim-a'].instances).toBe(0);
  });

  it('spills when the cloud itself answers CapacityExhausted', async () => {
    const id = await submit(placed('full-cloud', 5, ['sim-c', 'sim-b'], 'fill'));
    const ready = await waitForState(stack, id, 'READY');
    expect(workersOf(ready).clouds).toEqual({ 'sim-c': { instances: 3, ready: 3 }, 'sim-b': { instances: 2, ready: 2 } });
    const events = await stack.http('GET', `/v1/clusters/${id}/events`);
    expect(events.body.items.map((e: any) => e.message).join('\n')).toMatch(/no room on sim-c \(sim-c has no capacity: cloud sim-c is full: 3 of 3 instances live\); placing on sim-b/);
    // Refused creates hold nothing in the ledger.
    expect((await usage())['sim-c'].instances).toBe(3);
    await tearDown(id);
    expect((await usage())['sim-c'].instances).toBe(0);
  });

  it('leaves a cloud whose creates keep failing after three in a row, without failing the service', async () => {
    const id = await submit(placed('failing-cloud', 2, ['sim-d', 'sim-b'], 'fill'));
    const ready = await waitForState(stack, id, 'READY', 180_000);
    expect(workersOf(ready).clouds).toEqual({ 'sim-b': { instances: 2, ready: 2 } });
    const events = (await stack.http('GET', `/v1/clusters/${id}/events`)).body.items;
    expect(events.map((e: any) => e.message).join('\n')).toMatch(/leaving sim-d \(3 creates in a row failed: .*simulated failing cloud.*\); placing on sim-b/);
    expect(events.some((e: any) => e.kind === 'failure')).toBe(false);
    expect(sim('sim-d').count()).toBe(0);
    expect((await usage())['sim-d'].instances).toBe(0);
    await tearDown(id);
  }, 240_000);
});

describe('one quota, many clusters', () => {
  it('never lets five clusters submitted at once hold more than the quota; the short ones wait and go on when room frees', async () => {
    const ids = await Promise.all([0, 1, 2, 3, 4].map((n) => submit(placed(`race-${n}`, 7, ['sim-q'], 'fill'), 'sim-q')));
    // 35 wanted, room for 30: once 30 are live, the clusters short of instances wait, naming the quota.
    const waiting = await waitFor(async () => {
      if (sim('sim-q').count() < 30) return false;
      const states = await Promise.all(ids.map((id) => clusterStatus(stack, id)));
      const short = states.map(workersOf).filter((s) => s.state === 'WAITING_CAPACITY');
      return short.length > 0 && short;
    }, 120_000, '30 instances live and the short services waiting');
    expect(waiting[0].message).toMatch(/waiting for room for \d+ more instances? — sim-q: cloudgate's quota for sim-q is used up: quota 30 instances, 60 cpus; in use 30 instances, 60 cpus/);
    // The cluster says it too, once the service's report has reached it.
    const short = await waitFor<any[]>(async () => {
      const all = await Promise.all(ids.map((id) => clusterStatus(stack, id)));
      const c = all.find((x) => workersOf(x).state === 'WAITING_CAPACITY');
      return c?.message && all;
    }, 30_000, 'a cluster to name its waiting service');
    const waitingCluster = short.find((c) => workersOf(c).state === 'WAITING_CAPACITY')!;
    expect(waitingCluster.state).toBe('DEPLOYING');
    expect(waitingCluster.message).toMatch(/^service workers waiting for room for \d+ more instances? — sim-q: /);
    expect(sim('sim-q').count()).toBe(30);
    expect((await usage())['sim-q'].instances).toBe(30);

    // Room frees: a cluster that has all its instances goes away, and the waiting ones go on by themselves.
    const full = short.find((c) => workersOf(c).clouds?.['sim-q']?.instances === 7)!;
    await tearDown(full.id);
    const rest = ids.filter((id) => id !== full.id);
    for (const id of rest) {
      const ready = await waitForState(stack, id, 'READY', 180_000);
      expect(workersOf(ready).clouds).toEqual({ 'sim-q': { instances: 7, ready: 7 } });
    }
    // At no moment were more than 30 live in the cloud (its own high-water mark, kept in its create transaction).
    expect(sim('sim-q').peakLive()).toBeLessThanOrEqual(30);
    expect(sim('sim-q').peakLive()).toBe(30);
    for (const id of rest) await tearDown(id);
    expect((await usage())['sim-q']).toEqual({ instances: 0, cpus: 0, memoryMiB: 0 });
  }, 400_000);

  it('goes on by itself when an operator raises the quota in the registry file, without a restart', async () => {
    const id = await submit(placed('raise', 3, ['sim-r'], 'fill'), 'sim-r');
    const waiting = await waitFor(async () => {
      const s = workersOf(await clusterStatus(stack, id));
      return s.state === 'WAITING_CAPACITY' && s.clouds?.['sim-r']?.ready === 2 && s;
    }, 60_000, 'two ready and the third waiting for room');
    expect(waiting.message).toMatch(/waiting for room for 1 more instance — sim-r: cloudgate's quota for sim-r is used up: quota 2 instances/);
    // The operator edits the registry: sim-r may now hold 3.
    const file = stack.config.cloudsFile!;
    const registry = parseYaml(readFileSync(file, 'utf8'));
    registry.clouds.find((c: any) => c.name === 'sim-r').quota = { instances: 3 };
    writeFileSync(file, stringifyYaml(registry));
    const ready = await waitForState(stack, id, 'READY', 120_000);
    expect(workersOf(ready).clouds).toEqual({ 'sim-r': { instances: 3, ready: 3 } });
    // The catalogue shows the new quota after its next refresh (an admin can ask for one now).
    const refreshed = await stack.http('POST', '/v1/clouds/sim-r/refresh');
    expect(refreshed.status).toBe(200);
    expect(refreshed.body).toMatchObject({ name: 'sim-r', quota: { instances: 3 }, usage: { instances: 3 } });
    await tearDown(id);
  }, 200_000);
});

describe('determinism', () => {
  it('replays every history of the suite (spills, refusals, waits, pass-over timers) without nondeterminism', async () => {
    const histories = [];
    for (const id of submitted) {
      for (const workflowId of [`cluster/${id}`, `cluster/${id}/workers`]) {
        histories.push({ workflowId, history: await stack.client.workflow.getHandle(workflowId).fetchHistory() });
      }
    }
    expect(submitted).toHaveLength(10);
    expect(histories).toHaveLength(20);
    const failures: string[] = [];
    for await (const r of Worker.runReplayHistories({ workflowBundle: await workflowBundle(), dataConverter: stack.dataConverter }, histories)) {
      if (r.error) failures.push(`${r.workflowId}: ${r.error.message}`);
    }
    expect(failures).toEqual([]);
  }, 120_000);
});
