/**
 * Issue 12: the worker process is killed with SIGKILL while a service spills from a cloud
 * at its quota to the next one, and a new worker is started. The service still ends with
 * exactly its instances — none twice, on either cloud — the capacity ledger holds exactly
 * what the first cloud has, and teardown leaves nothing on either cloud or in the ledger.
 * Counted in each simulated cloud's own state file, as the cloud sees it.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import path from 'node:path';
import { createSimCloud } from '../clouds/sim.js';
import { clusterInstances, clusterStatus, startStack, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({
    workerProcess: true,
    clouds: [
      { name: 'sim-a', kind: 'sim', quota: { instances: 20 } },
      { name: 'sim-b', kind: 'sim' },
    ],
    // A quarter of cloud calls are throttled (and retried after a pause): the creates take long enough to be killed halfway.
    env: { SIM_THROTTLE_RATE: '0.25' },
  });
}, 180_000);
afterAll(async () => {
  await stack?.stop();
});

/** The cluster's live instance names in one simulated cloud's own file. */
async function namesIn(cloud: string, clusterId: string): Promise<string[]> {
  const sim = createSimCloud({ name: cloud, file: path.join(stack.dataDir, `${cloud}-cloud.sqlite`), ...stack.config.sim });
  try {
    return (await sim.listInstances({ cluster: clusterId })).map((i) => i.name).sort();
  } finally {
    await sim.close();
  }
}

async function usageOf(cloud: string): Promise<number> {
  const r = await stack.http('GET', '/v1/clouds');
  return r.body.items.find((c: any) => c.name === cloud).usage.instances;
}

describe('kill -9 mid-spill', () => {
  it('leaves no duplicate and no leak', async () => {
    const total = 120;
    const d = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'spill',
      services: [
        {
          name: 'workers',
          offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 },
          image: 'cernvm4-micro',
          min: total,
          readinessTimeoutSeconds: 120,
          placement: { clouds: ['sim-a', 'sim-b'], strategy: 'fill' },
        },
      ],
    });
    expect(d.status).toBe(201);
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id, cloud: 'sim-a' });
    expect(c.status).toBe(202);
    const id = c.body.id as string;

    // Spilling: the first cloud refused the rest and creates have begun on the second.
    const seen = await waitFor(async () => {
      const b = await namesIn('sim-b', id);
      return b.length > 0 && b.length < total - 20 && b.length;
    }, 120_000, 'creates to begin on sim-b');
    expect(seen).toBeGreaterThan(0);
    await stack.killWorker();
    await stack.startWorker();

    const ready = await waitForState(stack, id, 'READY', 300_000);
    expect(ready.services[0].clouds).toEqual({ 'sim-a': { instances: 20, ready: 20 }, 'sim-b': { instances: total - 20, ready: total - 20 } });
    const [a, b] = [await namesIn('sim-a', id), await namesIn('sim-b', id)];
    expect([a.length, b.length]).toEqual([20, total - 20]);
    // No instance twice: not within a cloud, not across the two.
    expect(new Set([...a, ...b]).size).toBe(total);
    const listed = (await clusterInstances(stack, id)).map((i) => i.id).sort();
    expect([...a, ...b].sort()).toEqual(listed);
    expect(await usageOf('sim-a')).toBe(20);
    expect(await usageOf('sim-b')).toBe(total - 20);

    expect((await stack.http('DELETE', `/v1/clusters/${id}`)).status).toBe(202);
    await waitForState(stack, id, 'TERMINATED', 300_000);
    expect([(await namesIn('sim-a', id)).length, (await namesIn('sim-b', id)).length]).toEqual([0, 0]);
    expect([await usageOf('sim-a'), await usageOf('sim-b')]).toEqual([0, 0]);
    expect((await clusterStatus(stack, id)).state).toBe('TERMINATED');
  }, 600_000);
});
