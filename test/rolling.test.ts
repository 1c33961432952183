/**
 * Issue 13, changing a running cluster: `PUT /v1/clusters/:id` replaces the instances of the
 * services whose spec changed, service by service and never below their `min` ready, starts
 * added services, removes dropped ones, and rolls everything back when a service fails on the
 * new spec. Through the REST API, a real Temporal dev server, the worker and the sim cloud;
 * the ready counts are watched with the service workflow's own query as often as it answers.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { ClusterDefinitionInput } from '../model/definition.js';
import { serviceStatusQuery, serviceWorkflowId } from '../workflows/messages.js';
import { clusterInstances, clusterStatus, startStack, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  // The first five instances of `canary` made after its first two report a failed CVMFS probe: a spec that does not work.
  stack = await startStack({ simRules: [{ match: '-canary-([2-9]|\\d{2,})$', behaviour: 'fail', limit: 5 }] });
});
afterAll(async () => {
  await stack?.stop();
});

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };

async function define(def: ClusterDefinitionInput): Promise<string> {
  const d = await stack.http('POST', '/v1/cluster-definitions', def);
  expect(d.status).toBe(201);
  return d.body.id as string;
}

/** Watches a service's ready count through its workflow's query until stopped; resolves to the lowest seen. */
function watchReady(clusterId: string, service: string): { stop: () => Promise<{ lowest: number; samples: number }> } {
  let running = true;
  let lowest = Infinity;
  let samples = 0;
  const handle = stack.client.workflow.getHandle(serviceWorkflowId(clusterId, service));
  const loop = (async () => {
    while (running) {
      const s = await handle.query(serviceStatusQuery).catch(() => undefined);
      if (s) {
        lowest = Math.min(lowest, s.ready);
        samples++;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return { lowest, samples };
    },
  };
}

const events = async (id: string): Promise<string[]> => (await stack.http('GET', `/v1/clusters/${id}/events?limit=500`)).body.items.map((e: any) => e.message);

describe('PUT /v1/clusters/:id', () => {
  it('replaces changed services instance by instance, never below min ready, adds and removes services', async () => {
    const a = await define({
      name: 'rolling',
      services: [
        { name: 'proxy', offering, image: 'cernvm', min: 1, readinessTimeoutSeconds: 30 },
        { name: 'workers', offering, image: 'cernvm', min: 2, max: 6, dependsOn: ['proxy'], readinessTimeoutSeconds: 30 },
        { name: 'extra', offering, image: 'cernvm', min: 1, readinessTimeoutSeconds: 30 },
      ],
    });
    const b = await define({
      name: 'rolling',
      services: [
        { name: 'proxy', offering, image: 'cernvm', min: 1, readinessTimeoutSeconds: 30 },
        { name: 'workers', offering, image: 'cernvm4-micro-2023.06', min: 2, max: 6, dependsOn: ['proxy'], readinessTimeoutSeconds: 30 },
        { name: 'monitor', offering, image: 'cernvm', min: 1, dependsOn: ['proxy'], readinessTimeoutSeconds: 30 },
      ],
    });
    const c = await stack.http('POST', '/v1/clusters', { definitionId: a });
    const id = c.body.id as string;
    await waitForState(stack, id, 'READY');
    // Three workers: a service above its min replaces one at a time without a surge.
    expect((await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 3 })).status).toBe(200);
    await waitFor(async () => (await clusterStatus(stack, id)).services.find((s: any) => s.name === 'workers')?.ready === 3 || undefined, 60_000, 'three workers');
    const before = await clusterInstances(stack, id);
    expect(new Set(before.map((i) => i.spec))).toEqual(new Set([a]));

    // Nothing to change, and a definition that does not exist, are refused before anything happens.
    const same = await stack.http('PUT', `/v1/clusters/${id}`, { definitionId: a });
    expect(same.status).toBe(409);
    expect(same.body.detail).toMatch(/already runs definition/);
    const unknown = await stack.http('PUT', `/v1/clusters/${id}`, { definitionId: 'def-nope' });
    expect(unknown.status).toBe(422);
    expect(unknown.body.errors[0]).toMatchObject({ pointer: '/definitionId' });
    const zero = await stack.http('PUT', `/v1/clusters/${id}`, { definitionId: b, maxUnavailable: 0 });
    expect(zero.status).toBe(422);
    expect(zero.body.errors[0]).toMatchObject({ pointer: '/maxUnavailable' });
    const noContext = await stack.http('PUT', `/v1/clusters/${id}`, { definitionId: b, contextVersions: { workers: 2 } });
    expect(noContext.status).toBe(422);
    expect(noContext.body.errors[0]).toMatchObject({ pointer: '/contextVersions/workers', message: 'service "workers" has no context' });

    const watch = watchReady(id, 'workers');
    const put = await stack.http('PUT', `/v1/clusters/${id}`, { definitionId: b });
    expect(put.status).toBe(202);
    expect(put.body).toMatchObject({ from: a, to: b, maxUnavailable: 1, replace: ['workers'], add: ['monitor'], remove: ['extra'], keep: ['proxy'] });
    // One change at a time.
    const again = await stack.http('PUT', `/v1/clusters/${id}`, { definitionId: a });
    expect(again.status).toBe(409);
    expect(again.body.detail).toMatch(/already changing to/);
    // The read model shows the change once the cluster workflow has published it.
    const during = await waitFor(async () => {
      const s = await clusterStatus(stack, id);
      return s.change ? s : undefined;
    }, 10_000, 'the change in the status');
    expect(during.change).toMatchObject({ from: a, to: b, phase: 'rolling', services: { replace: ['workers'], add: ['monitor'], remove: ['extra'], keep: ['proxy'] } });
    expect(during.definitionId).toBe(b);

    const done = await waitFor(
      async () => {
        const s = await clusterStatus(stack, id);
        return s.state === 'READY' && !s.change && !s.services.some((x: any) => x.name === 'extra') ? s : undefined;
      },
      120_000,
      'the change to finish',
    ).catch(async (err) => {
      console.log(JSON.stringify(await clusterStatus(stack, id), null, 1), (await events(id)).join('\n'));
      throw err;
    });
    const { lowest, samples } = await watch.stop();
    // Sampled all along (how often depends on the machine's load).
    expect(samples).toBeGreaterThanOrEqual(5);
    expect(lowest).toBeGreaterThanOrEqual(2);
    expect(done.definitionId).toBe(b);
    expect(done.services.map((s: any) => [s.name, s.state, s.ready])).toEqual([
      ['proxy', 'READY', 1],
      ['workers', 'READY', 3],
      ['monitor', 'READY', 1],
    ]);
    const after = await clusterInstances(stack, id);
    const specOf = (svc: string) => [...new Set(after.filter((i) => i.service === svc).map((i) => i.spec))];
    expect(specOf('workers')).toEqual([b]);
    expect(specOf('monitor')).toEqual([b]);
    // Untouched: the same proxy instance, still on the spec it was made from.
    expect(specOf('proxy')).toEqual([a]);
    expect(after.filter((i) => i.service === 'proxy').map((i) => i.id)).toEqual(before.filter((i) => i.service === 'proxy').map((i) => i.id));
    // Every old worker was replaced by a new one; extra is gone from the cloud.
    const oldWorkers = before.filter((i) => i.service === 'workers').map((i) => i.id);
    expect(after.filter((i) => i.service === 'workers').some((i) => oldWorkers.includes(i.id))).toBe(false);
    expect(stack.worker!.sim!.count({ cluster: id })).toBe(5);
    const log = await events(id);
    expect(log).toEqual(
      expect.arrayContaining([
        `change from ${a} to ${b}: replace workers (1 at a time); add monitor; remove extra; keep proxy`,
        expect.stringMatching(new RegExp(`^workers: instances are made from ${b} from now on; replacing 3, 1 at a time$`)),
        expect.stringMatching(/^extra: tearing down \(not in /),
        expect.stringMatching(new RegExp(`^changed from ${a} to ${b} in \\d+ s$`)),
      ]),
    );

    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
    expect(stack.worker!.sim!.count({ cluster: id })).toBe(0);
  }, 300_000);

  it('a service at its min gets a new instance before an old one goes; a spec that fails rolls back', async () => {
    const a = await define({ name: 'canary', services: [{ name: 'canary', offering, image: 'cernvm', min: 2, readinessTimeoutSeconds: 30 }] });
    const b = await define({ name: 'canary', services: [{ name: 'canary', offering, image: 'cernvm4', min: 2, readinessTimeoutSeconds: 30 }] });
    const c = await stack.http('POST', '/v1/clusters', { definitionId: a });
    const id = c.body.id as string;
    await waitForState(stack, id, 'READY');
    const before = (await clusterInstances(stack, id)).map((i) => i.id);

    const watch = watchReady(id, 'canary');
    expect((await stack.http('PUT', `/v1/clusters/${id}`, { definitionId: b })).status).toBe(202);
    const done = await waitFor(
      async () => {
        const s = await clusterStatus(stack, id);
        return s.state === 'READY' && !s.change && (await events(id)).some((m) => m.includes('rolled back')) ? s : undefined;
      },
      180_000,
      'the change to roll back',
    );
    const { lowest } = await watch.stop();
    expect(lowest).toBeGreaterThanOrEqual(2);
    expect(done.definitionId).toBe(a);
    const log = await events(id);
    expect(log).toEqual(
      expect.arrayContaining([
        expect.stringMatching(new RegExp(`^change to ${b} failed: canary failed on the new spec: .*; rolling back to ${a}$`)),
        expect.stringMatching(new RegExp(`^change to ${b} failed \\(canary failed on the new spec: .*\\); rolled back to ${a} in \\d+ s$`)),
      ]),
    );
    // The instances that were never replaced are still there, on the old spec; nothing of the new one is left.
    const after = await clusterInstances(stack, id);
    expect(after.map((i) => i.id)).toEqual(before);
    expect(new Set(after.map((i) => i.spec))).toEqual(new Set([a]));
    expect(stack.worker!.sim!.count({ cluster: id })).toBe(2);

    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
  }, 300_000);
});
