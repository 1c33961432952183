/**
 * Issue 13, retry: a service that used up its failure budget waits for its next round of
 * attempts (failurePolicy keep); `POST /v1/clusters/:id/retry` starts that round now. Through
 * the REST API, a real Temporal dev server, the worker and the sim cloud, whose first five
 * `workers` guests of the cluster report a failed probe.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { clusterInstances, clusterStatus, startStack, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ simRules: [{ match: '^flaky-.*-workers-', behaviour: 'fail', limit: 5 }] });
});
afterAll(async () => {
  await stack?.stop();
});

describe('retry', () => {
  it('re-runs a FAILED service now instead of after its backoff, without a duplicate', async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'flaky',
      failurePolicy: 'keep',
      services: [{ name: 'workers', image: 'cernvm4-micro', offering: { cpus: 1, memoryMiB: 2048, diskGiB: 20 }, min: 1, readinessTimeoutSeconds: 30 }],
    });
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id });
    const id = c.body.id as string;
    // One guest at a time, five failures in a row: FAILED, the next round 30 s away.
    const failed = await waitFor(async () => {
      const w = (await clusterStatus(stack, id)).services[0];
      return w.state === 'FAILED' && w.retryingAt && w;
    }, 60_000, 'the service to fail');
    const nextRound = Date.parse(failed.retryingAt);
    expect(nextRound - Date.now()).toBeGreaterThan(15_000);

    const r = await stack.http('POST', `/v1/clusters/${id}/retry`);
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ services: ['workers'] });
    const ready = await waitForState(stack, id, 'READY', 60_000);
    expect(Date.now()).toBeLessThan(nextRound);
    expect(ready.services[0]).toMatchObject({ state: 'READY', ready: 1, replacements: 5 });
    // Exactly the one wanted in the cloud, as the read model lists it.
    const names = (await stack.worker!.sim!.listInstances({ cluster: id })).map((i) => i.name).sort();
    expect(names).toEqual((await clusterInstances(stack, id)).map((i) => i.id).sort());
    expect(names).toHaveLength(1);
    const events = (await stack.http('GET', `/v1/clusters/${id}/events`)).body.items.filter((e: any) => e.kind === 'retry').map((e: any) => e.message);
    expect(events).toEqual(expect.arrayContaining(['retry requested: workers try again now', expect.stringMatching(/^workers: retry requested: attempts start now instead of at /)]));

    // Nothing left to retry: 409, naming the states.
    const again = await stack.http('POST', `/v1/clusters/${id}/retry`);
    expect(again.status).toBe(409);
    expect(again.body.detail).toMatch(/has no FAILED or WAITING_CAPACITY service to retry \(workers: READY 1\/1\)/);
    expect((await stack.http('POST', '/v1/clusters/nope-000000/retry')).status).toBe(404);
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
    expect((await stack.http('POST', `/v1/clusters/${id}/retry`)).status).toBe(409);
  }, 120_000);
});
