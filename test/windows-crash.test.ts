/**
 * Issue 13, schedule windows under kill -9: the worker process is killed before a window
 * opens and started again after the opening, then killed inside the window and started
 * again after its end. The window still opens until its scheduled end (not until the late
 * start plus the duration), the cluster deploys, and it pauses at the end with nothing left
 * in the cloud; teardown leaves no schedule. The sim cloud's own state file is the witness.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import path from 'node:path';
import { ScheduleNotFoundError } from '@temporalio/client';
import { createSimCloud } from '../clouds/sim.js';
import { windowScheduleId } from '../workflows/messages.js';
import { startStack, threeTier, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ workerProcess: true });
}, 180_000);
afterAll(async () => {
  await stack?.stop();
});

async function inCloud(clusterId: string): Promise<number> {
  const cloud = createSimCloud({ name: 'sim', file: path.join(stack.dataDir, 'sim-cloud.sqlite'), ...stack.config.sim });
  try {
    return (await cloud.listInstances({ cluster: clusterId })).length;
  } finally {
    await cloud.close();
  }
}
const sleepUntil = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, ms - Date.now())));
const iso = (ms: number) => new Date(ms).toISOString();
const events = async (id: string): Promise<string[]> => (await stack.http('GET', `/v1/clusters/${id}/events?limit=1000`)).body.items.map((e: any) => e.message);

describe('kill -9 of the worker around a window', () => {
  it('opens the window until its scheduled end and pauses the cluster at that end', async () => {
    // One window, once an hour, opening in 12 s for 80 s (long enough for a worker restart and a deployment inside it).
    const opens = Math.floor((Date.now() + 12_000) / 1000) * 1000;
    const ends = opens + 80_000;
    const at = new Date(opens);
    const windows = [{ cron: `${at.getUTCSeconds()} ${at.getUTCMinutes()} * * * *`, durationSeconds: 80 }];
    const d = await stack.http('POST', '/v1/cluster-definitions', { ...threeTier({ proxy: 1, head: 1, workers: 1 }), name: 'farm' });
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id, windows });
    expect(c.status).toBe(202);
    const id = c.body.id as string;
    await waitForState(stack, id, 'PAUSED', 10_000);

    // Down across the opening: the schedule starts the window's workflow, which waits for a worker.
    await stack.killWorker();
    await sleepUntil(opens + 2_000);
    await stack.startWorker();
    await waitForState(stack, id, 'READY', Math.max(10_000, ends - Date.now() - 5_000));
    expect(await inCloud(id)).toBe(3);
    // Active until the scheduled opening plus the duration, not from when the worker came back.
    expect(await events(id)).toContain(`window 0 ("${windows[0].cron}", 80 s) opened: active until ${iso(ends)}`);

    // Down across the end: the end's timer fires when a worker is back, and the cluster vacates.
    await stack.killWorker();
    await sleepUntil(ends + 2_000);
    expect(await inCloud(id)).toBe(3);
    await stack.startWorker();
    const paused = await waitForState(stack, id, 'PAUSED', 90_000);
    expect(paused.message).toMatch(/^paused outside its windows: 0 instances on sim; the next opens at /);
    expect(await inCloud(id)).toBe(0);

    expect((await stack.http('DELETE', `/v1/clusters/${id}`)).status).toBe(202);
    await waitForState(stack, id, 'TERMINATED', 60_000);
    expect(await inCloud(id)).toBe(0);
    await expect(stack.client.schedule.getHandle(windowScheduleId(id, 0)).describe()).rejects.toBeInstanceOf(ScheduleNotFoundError);
  }, 300_000);
});
