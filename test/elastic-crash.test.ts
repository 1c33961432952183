/**
 * Issue 13, durability: the worker process is killed with SIGKILL in the middle of a pause,
 * of a resume, of an autoscale step and of a rolling change (`PUT /v1/clusters/:id`), and a
 * new one started; each converges — nothing left in the cloud when PAUSED, exactly the wanted
 * instances when READY (after a change: all on the new spec), no duplicate. Counted in the
 * sim cloud's own state file, as the cloud sees it.
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

describe('kill -9 of the worker during a rolling change', () => {
  it('finishes the change: every instance on the new spec, nothing left over', async () => {
    const service = (image: string) => ({ name: 'workers', image, offering, min: 2, max: 6, dependsOn: ['head'], readinessTimeoutSeconds: 60 });
    const head = { name: 'head', image: 'cernvm4-micro', offering, min: 1, readinessTimeoutSeconds: 60 };
    const a = await stack.http('POST', '/v1/cluster-definitions', { name: 'roll', services: [head, service('cernvm4-micro')] });
    const b = await stack.http('POST', '/v1/cluster-definitions', { name: 'roll', services: [head, service('cernvm4-micro-2023.06')] });
    expect([a.status, b.status]).toEqual([201, 201]);
    const c = await stack.http('POST', '/v1/clusters', { definitionId: a.body.id });
    const id = c.body.id as string;
    await waitForState(stack, id, 'READY', 120_000);
    expect((await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 3 })).status).toBe(200);
    await waitFor(async () => (await clusterStatus(stack, id)).services.find((s: any) => s.name === 'workers')?.ready === 3 || undefined, 120_000, 'three workers');
    const before = await clusterInstances(stack, id, 'workers');
    expect(before.map((i) => i.spec)).toEqual([a.body.id, a.body.id, a.body.id]);

    // Replace the workers' image, one at a time (min 2 of 3), and kill the worker while the first replacement boots.
    const put = await stack.http('PUT', `/v1/clusters/${id}`, { definitionId: b.body.id });
    expect(put.status).toBe(202);
    expect(put.body).toMatchObject({ replace: ['workers'], keep: ['head'], maxUnavailable: 1 });
    const fresh = (names: string[]) => names.filter((n) => !before.some((i) => i.id === n) && !n.includes('-head-'));
    const booting = await waitFor(async () => {
      const names = fresh(await namesInCloud(id));
      return names.length > 0 && names;
    }, 60_000, 'a replacement created');
    await killAndRestart();
    // Mid-change when killed: one replacement at a time, each booting for 3 s.
    expect(booting.length).toBeLessThan(3);

    const done = await waitFor(
      async () => {
        const s = await clusterStatus(stack, id);
        return s.state === 'READY' && !s.change && s.definitionId === b.body.id ? s : undefined;
      },
      240_000,
      'the change to finish after the restart',
    );
    expect(done.services.map((s: any) => [s.name, s.state, s.ready])).toEqual([
      ['head', 'READY', 1],
      ['workers', 'READY', 3],
    ]);
    const after = await clusterInstances(stack, id);
    const workers = after.filter((i) => i.service === 'workers');
    expect(workers).toHaveLength(3);
    expect(workers.map((i) => i.spec)).toEqual([b.body.id, b.body.id, b.body.id]);
    expect(workers.some((i) => before.some((o) => o.id === i.id))).toBe(false);
    // The cloud holds exactly the listed instances: no duplicate, no old worker left behind.
    const names = await namesInCloud(id);
    expect(names).toHaveLength(4);
    expect(names).toEqual(after.map((i) => i.id).sort());
    const log = ((await stack.http('GET', `/v1/clusters/${id}/events?limit=1000`)).body.items as any[]).map((e) => e.message as string);
    expect(log).toEqual(expect.arrayContaining([expect.stringMatching(new RegExp(`^changed from ${a.body.id} to ${b.body.id} in \\d+ s$`))]));
    expect(log.filter((m) => /roll(ing|ed) back/.test(m))).toEqual([]);

    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED', 120_000);
    expect(await namesInCloud(id)).toEqual([]);
  }, 600_000);
});
