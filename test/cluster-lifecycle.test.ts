/**
 * End to end through the REST API, a real Temporal dev server, the real worker and the
 * sim cloud: dependency order, diamonds, parallel services, scaling, idempotent submits,
 * replacement of failed and silent guests, rollback and teardown.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { PublishedInstance } from '../model/read-model.js';
import { clusterInstances, clusterStatus, deploy, startStack, threeTier, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({
    simRules: [
      { match: '^flaky-.*-bad-0$', behaviour: 'fail' },
      { match: '^flaky-.*-quiet-0$', behaviour: 'silent' },
      { match: '^flaky-.*-gone-0$', behaviour: 'vanish' },
      { match: '^doomed-.*-broken-', behaviour: 'fail' },
    ],
  });
});
afterAll(async () => {
  await stack?.stop();
});

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };
const image = 'cernvm4-micro';
const service = (name: string, dependsOn: string[] = [], min = 1, extra: Record<string, unknown> = {}) => ({
  name,
  offering,
  image,
  min,
  dependsOn,
  readinessTimeoutSeconds: 20,
  ...extra,
});

const ms = (iso: string) => new Date(iso).getTime();
/** When a service first had its `min` instances ready: the min-th earliest readyAt of its instances. */
const minReadyAt = (instances: PublishedInstance[], min: number) =>
  instances
    .filter((i) => i.readyAt)
    .map((i) => ms(i.readyAt!))
    .sort((a, b) => a - b)[min - 1];
const firstCreatedAt = (instances: PublishedInstance[]) => Math.min(...instances.map((i) => ms(i.createdAt!)));
const byName = (status: any, name: string) => status.services.find((s: any) => s.name === name);
/** The cluster's instances grouped by service (one paged read of the instances route). */
async function instancesByService(clusterId: string): Promise<(service: string) => PublishedInstance[]> {
  const all = await clusterInstances(stack, clusterId);
  return (service) => all.filter((i) => i.service === service);
}

async function cloudCount(clusterId: string): Promise<number> {
  return stack.worker!.sim!.count({ cluster: clusterId });
}

describe('cluster lifecycle', () => {
  it('deploys a three-tier cluster in dependency order and tears it down leaving nothing', async () => {
    const id = await deploy(stack, threeTier({ proxy: 2, head: 1, workers: 4 }));
    const ready = await waitForState(stack, id, 'READY');
    const [proxy, head, workers] = ['proxy', 'head', 'workers'].map((n) => byName(ready, n));
    expect([proxy.ready, head.ready, workers.ready]).toEqual([2, 1, 4]);
    for (const s of [proxy, head, workers]) expect(s.state).toBe('READY');
    const of = await instancesByService(id);
    for (const name of ['proxy', 'head', 'workers']) {
      for (const i of of(name)) expect(i).toMatchObject({ state: 'READY', cloud: 'sim' });
    }
    // No instance of a service is created before its dependency has its minimum ready.
    expect(firstCreatedAt(of('head'))).toBeGreaterThanOrEqual(minReadyAt(of('proxy'), 2));
    expect(firstCreatedAt(of('workers'))).toBeGreaterThanOrEqual(minReadyAt(of('head'), 1));
    expect(await cloudCount(id)).toBe(7);
    expect(of('proxy').map((i) => i.id)).toEqual([`${id}-proxy-0`, `${id}-proxy-1`]);

    const del = await stack.http('DELETE', `/v1/clusters/${id}`);
    expect(del.status).toBe(202);
    const done = await waitForState(stack, id, 'TERMINATED');
    expect(done.services.every((s: any) => s.state === 'TERMINATED')).toBe(true);
    expect(await cloudCount(id)).toBe(0);
  });

  it('deploys diamonds after both sides and independent services in parallel', async () => {
    const id = await deploy(stack, {
      name: 'diamond',
      services: [service('base'), service('left', ['base']), service('right', ['base']), service('top', ['left', 'right']), service('solo')],
    });
    await waitForState(stack, id, 'READY');
    const of = await instancesByService(id);
    const [base, left, right, top, solo] = ['base', 'left', 'right', 'top', 'solo'].map((n) => of(n));
    expect(firstCreatedAt(left)).toBeGreaterThanOrEqual(minReadyAt(base, 1));
    expect(firstCreatedAt(right)).toBeGreaterThanOrEqual(minReadyAt(base, 1));
    expect(firstCreatedAt(top)).toBeGreaterThanOrEqual(Math.max(minReadyAt(left, 1), minReadyAt(right, 1)));
    // left and right, and base and solo, were deploying at the same time.
    expect(firstCreatedAt(left)).toBeLessThan(minReadyAt(right, 1));
    expect(firstCreatedAt(right)).toBeLessThan(minReadyAt(left, 1));
    expect(firstCreatedAt(solo)).toBeLessThan(minReadyAt(base, 1));
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
    expect(await cloudCount(id)).toBe(0);
  });

  it('scales a service up and down and rejects out-of-bounds requests', async () => {
    const id = await deploy(stack, threeTier({ proxy: 1, head: 1, workers: 2 }));
    await waitForState(stack, id, 'READY');
    const up = await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 5 });
    expect(up).toMatchObject({ status: 200, body: { service: 'workers', desired: 5 } });
    await waitFor(async () => {
      const s = await clusterStatus(stack, id);
      const w = byName(s, 'workers');
      return s.state === 'READY' && w.ready === 5 && w.desired === 5;
    }, 60_000, 'scale up to 5');
    expect(await cloudCount(id)).toBe(1 + 1 + 5);

    const down = await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 2 });
    expect(down).toMatchObject({ status: 200, body: { desired: 2 } });
    await waitFor(async () => (await clusterInstances(stack, id, 'workers')).length === 2 && (await cloudCount(id)) === 4, 60_000, 'scale down to 2');

    for (const [n, rule] of [
      [1, 'min'],
      [21, 'max'],
    ] as const) {
      const bad = await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: n });
      expect(bad.status).toBe(422);
      expect(bad.headers.get('content-type')).toContain('application/problem+json');
      expect(JSON.stringify(bad.body)).toContain(rule);
    }
    expect((await stack.http('POST', `/v1/clusters/${id}/services/nope/scale`, { instances: 3 })).status).toBe(404);
    expect((await stack.http('POST', `/v1/clusters/no-such-cluster/services/workers/scale`, { instances: 3 })).status).toBe(404);
    // The rejected requests reached nothing: desired is still 2.
    expect(byName(await clusterStatus(stack, id), 'workers').desired).toBe(2);

    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
    expect(await cloudCount(id)).toBe(0);
  });

  it('makes one cluster and one workflow for two POSTs with the same Idempotency-Key', async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', { name: 'idem', services: [service('only')] });
    const headers = { 'Idempotency-Key': 'submit-42' };
    const [a, b] = await Promise.all([
      stack.http('POST', '/v1/clusters', { definitionId: d.body.id }, headers),
      stack.http('POST', '/v1/clusters', { definitionId: d.body.id }, headers),
    ]);
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id }, headers);
    expect([a.status, b.status, c.status]).toEqual([202, 202, 202]);
    expect(new Set([a.body.id, b.body.id, c.body.id]).size).toBe(1);
    const list = await stack.http('GET', '/v1/clusters');
    expect(list.body.items.filter((i: any) => i.definitionId === d.body.id)).toHaveLength(1);
    let runs = 0;
    for await (const _ of stack.client.workflow.list({ query: `CloudgateClusterId = "${a.body.id}" AND WorkflowType = "ClusterWorkflow"` })) runs++;
    expect(runs).toBe(1);
    await waitForState(stack, a.body.id, 'READY');
    await stack.http('DELETE', `/v1/clusters/${a.body.id}`);
    await waitForState(stack, a.body.id, 'TERMINATED');
  });

  it('replaces guests that report failure, stay silent or vanish, and shows why', async () => {
    const submitted = Date.now();
    const id = await deploy(stack, {
      name: 'flaky',
      services: [service('bad'), service('quiet', [], 1, { readinessTimeoutSeconds: 5 }), service('gone')],
    });
    const s = await waitForState(stack, id, 'READY', 120_000);
    for (const name of ['bad', 'quiet', 'gone']) {
      const svc = byName(s, name);
      expect(svc.ready).toBe(1);
      expect(svc.replacements).toBeGreaterThanOrEqual(1);
      expect((await clusterInstances(stack, id, name)).map((i) => i.id)).toEqual([`${id}-${name}-1`]);
    }
    expect(byName(s, 'bad').message).toMatch(/guest reported failed/);
    expect(byName(s, 'quiet').message).toMatch(/no readiness report within 5 s/);
    expect(byName(s, 'gone').message).toMatch(/vanished|TERMINATED/);
    // Found by the first health check (10 s in: half its 20 s readiness timeout), not left to race its deadline with the second.
    const [replacement] = await clusterInstances(stack, id, 'gone');
    expect(Date.parse(replacement.createdAt!) - submitted).toBeLessThan(18_000);
    expect(await cloudCount(id)).toBe(3);
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
    expect(await cloudCount(id)).toBe(0);
  }, 240_000);

  it('rolls back everything when a service fails under the rollback policy', async () => {
    const id = await deploy(stack, {
      name: 'doomed',
      failurePolicy: 'rollback',
      services: [service('fine', [], 2), service('broken', [], 1)],
    });
    const s = await waitForState(stack, id, 'FAILED', 120_000);
    expect(s.message).toMatch(/rolled back: service broken failed/);
    expect(await cloudCount(id)).toBe(0);
  }, 180_000);

  it('tears down mid-deployment and leaves zero instances', async () => {
    const id = await deploy(stack, threeTier({ proxy: 2, head: 2, workers: 10 }));
    await waitFor(async () => byName(await clusterStatus(stack, id), 'head').state !== 'WAITING', 60_000, 'head to start');
    const del = await stack.http('DELETE', `/v1/clusters/${id}`);
    expect(del.status).toBe(202);
    await waitForState(stack, id, 'TERMINATED');
    expect(await cloudCount(id)).toBe(0);
    expect(byName(await clusterStatus(stack, id), 'workers').state).toBe('TERMINATED');
  });
});
