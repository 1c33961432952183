/**
 * Durability: the worker process is killed with SIGKILL mid-deployment and a new one
 * started; then the Temporal dev server is restarted on its SQLite file mid-deployment.
 * Both times the cluster reaches READY with exactly the requested instances in the cloud.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import path from 'node:path';
import { createSimCloud } from '../clouds/sim.js';
import { clusterInstances, clusterStatus, deploy, startStack, threeTier, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ workerProcess: true, sim: { bootMs: 2_000, readyDelayMs: 1_000 } });
});
afterAll(async () => {
  await stack?.stop();
});

/** Counts the cluster's live instances in the sim cloud's own state file, as the cloud sees them. */
async function countInCloud(clusterId: string): Promise<{ count: number; names: string[] }> {
  const cloud = createSimCloud({ name: 'sim', file: path.join(stack.dataDir, 'sim-cloud.sqlite'), ...stack.config.sim });
  try {
    const live = await cloud.listInstances({ cluster: clusterId });
    return { count: live.length, names: live.map((i) => i.name).sort() };
  } finally {
    await cloud.close();
  }
}

const expectExactly = async (id: string, total: number) => {
  const { count, names } = await countInCloud(id);
  expect(count).toBe(total);
  const listed = (await clusterInstances(stack, id)).map((i) => i.id).sort();
  expect(names).toEqual(listed);
  expect(new Set(names).size).toBe(total);
};

describe('restarts mid-deployment', () => {
  it('survives kill -9 of the worker: READY with exactly the requested instances', async () => {
    const id = await deploy(stack, threeTier({ proxy: 3, head: 2, workers: 12 }));
    await waitFor(async () => (await clusterStatus(stack, id)).services[1].state === 'DEPLOYING', 120_000, 'head deploying');
    await stack.killWorker();
    await new Promise((r) => setTimeout(r, 1_000));
    await stack.startWorker();
    await waitForState(stack, id, 'READY', 180_000);
    await expectExactly(id, 17);
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED', 120_000);
    expect((await countInCloud(id)).count).toBe(0);
  }, 400_000);

  it('survives a restart of the Temporal dev server on its SQLite file', async () => {
    const id = await deploy(stack, threeTier({ proxy: 2, head: 2, workers: 10 }));
    await waitFor(async () => (await clusterStatus(stack, id)).services[1].state === 'DEPLOYING', 120_000, 'head deploying');
    await stack.restartTemporal();
    await waitForState(stack, id, 'READY', 180_000);
    await expectExactly(id, 14);
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED', 120_000);
    expect((await countInCloud(id)).count).toBe(0);
  }, 400_000);
});
