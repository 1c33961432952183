/**
 * Issue 13, durability: the worker process is killed with SIGKILL in the middle of a pause,
 * of a resume and of an autoscale step, and a new one started; each converges — nothing left
 * in the cloud when PAUSED, exactly the wanted instances when READY, no duplicate. Counted in
 * the sim cloud's own state file, as the cloud sees it.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import path from 'node:path';
import { createSimCloud } from '../clouds/sim.js';
import { clusterInstances, clusterStatus, startStack, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  // Slow enough guests that a kill lands mid-step.
  stack = await startStack({ workerProcess: true, sim: { bootMs: 2_000, readyDelayMs: 1_000 } });
}, 180_000);
afterAll(async () => {
  await stack?.stop();
});

async function namesInCloud(clusterId: string): Promise<string[]> {
  const cloud = createSimCloud({ name: 'sim', file: path.join(stack.dataDir, 'sim-cloud.sqlite'), ...stack.config.sim });
  try {
    return (await cloud.listInstances({ cluster: clusterId })).map((i) => i.name).sort();
  } finally {
    await cloud.close();
  }
}

async function killAndRestart(): Promise<void> {
  await stack.killWorker();
  await stack.startWorker();
}

const offering = { cpus: 1, memoryMiB: 2048, diskGiB: 20 };

describe('kill -9 of the worker during pause, resume and autoscale', () => {
  it('converges each time', async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'hlt',
      services: [
        { name: 'head', image: 'cernvm4-micro', offering, min: 1, readinessTimeoutSeconds: 60 },
        { name: 'workers', image: 'cernvm4-micro', offering, min: 2, max: 10, dependsOn: ['head'], readinessTimeoutSeconds: 60, autoscale: { jobsPerInstance: 1, scaleDownIdleSeconds: 0, cooldownSeconds: 0 } },
      ],
    });
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id });
    const id = c.body.id as string;
    await waitForState(stack, id, 'READY', 120_000);

    // Autoscale up to 8, killed while the new workers boot.
    const up = await stack.http('POST', `/v1/clusters/${id}/services/workers/load`, { queued: 6, running: 2 });
    expect(up.body).toMatchObject({ action: 'up', desired: 8 });
    await waitFor(async () => (await namesInCloud(id)).length > 3 || undefined, 30_000, 'new workers created');
    await killAndRestart();
    await waitForState(stack, id, 'READY', 180_000);
    let names = await namesInCloud(id);
    expect(names).toHaveLength(9);
    expect(names).toEqual((await clusterInstances(stack, id)).map((i) => i.id).sort());

    // Pause, killed while vacating.
    expect((await stack.http('POST', `/v1/clusters/${id}/pause`, {})).status).toBe(200);
    await killAndRestart();
    await waitForState(stack, id, 'PAUSED', 180_000);
    expect(await namesInCloud(id)).toEqual([]);

    // Resume, killed while the head boots.
    expect((await stack.http('POST', `/v1/clusters/${id}/resume`)).status).toBe(200);
    await waitFor(async () => (await namesInCloud(id)).length > 0 || undefined, 30_000, 'the head created again');
    await killAndRestart();
    const ready = await waitForState(stack, id, 'READY', 180_000);
    expect(ready.services.map((s: any) => [s.name, s.ready])).toEqual([['head', 1], ['workers', 8]]);
    names = await namesInCloud(id);
    expect(names).toHaveLength(9);
    expect(new Set(names).size).toBe(9);
    expect(names).toEqual((await clusterInstances(stack, id)).map((i) => i.id).sort());

    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED', 120_000);
    expect(await namesInCloud(id)).toEqual([]);
    expect((await clusterStatus(stack, id)).state).toBe('TERMINATED');
  }, 600_000);
});
