/**
 * Determinism guard: workflow histories replayed against today's workflow code must not
 * diverge. Two sources: histories recorded just now from a real run (scale, failure,
 * replacement and teardown included), and histories committed under
 * test/fixtures/histories/ from earlier versions (refresh them with
 * `RECORD_HISTORIES=1 npm test -- test/replay.test.ts` only when a change is meant to be
 * incompatible, and then version the workflow instead).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Worker } from '@temporalio/worker';
import { temporal } from '@temporalio/proto';
import { ROOT, deploy, startStack, waitFor, waitForState, workflowBundle, clusterStatus, type Stack } from './harness.js';

const FIXTURES = path.join(ROOT, 'test/fixtures/histories');
let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ simRules: [{ match: '-svc-b-0$', behaviour: 'fail' }] });
});
afterAll(async () => {
  await stack?.stop();
});

async function replay(histories: { workflowId: string; history: temporal.api.history.v1.IHistory }[]) {
  const results = [];
  for await (const r of Worker.runReplayHistories({ workflowBundle: await workflowBundle() }, histories)) results.push(r);
  return results;
}

describe('workflow replay', () => {
  it('replays freshly recorded histories without nondeterminism', async () => {
    const id = await deploy(stack, {
      name: 'replay',
      services: [
        { name: 'svc-a', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, image: 'cernvm', min: 1, max: 4 },
        { name: 'svc-b', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, image: 'cernvm', min: 2, dependsOn: ['svc-a'] },
      ],
    });
    await waitForState(stack, id, 'READY');
    expect((await stack.http('POST', `/v1/clusters/${id}/services/svc-a/scale`, { instances: 3 })).status).toBe(200);
    await waitFor(async () => (await clusterStatus(stack, id)).services[0].ready === 3, 60_000, 'scale to 3');
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');

    const histories = [];
    for await (const wf of stack.client.workflow.list({ query: `CloudgateClusterId = "${id}"` })) {
      const history = await stack.client.workflow.getHandle(wf.workflowId, wf.runId).fetchHistory();
      histories.push({ workflowId: wf.workflowId, history });
    }
    expect(histories.map((h) => h.workflowId).sort()).toEqual([`cluster/${id}`, `cluster/${id}/svc-a`, `cluster/${id}/svc-b`]);
    const results = await replay(histories);
    expect(results.map((r) => r.error)).toEqual(histories.map(() => undefined));

    // Phone-home tokens and the secret that signs them never reach workflow history.
    const recorded = JSON.stringify(histories);
    expect(recorded).not.toContain(stack.config.tokenSecret!);
    expect(recorded).not.toMatch(/Bearer|"token"|x-cloudgate-phone-home/);

    if (process.env.RECORD_HISTORIES) {
      for (const h of histories) {
        const file = path.join(FIXTURES, `${h.workflowId.split('/').slice(2).join('-') || 'cluster'}.json`);
        const History = temporal.api.history.v1.History;
        const history = History.toObject(History.fromObject(h.history), { longs: String, enums: String, bytes: String });
        writeFileSync(file, `${JSON.stringify({ workflowId: h.workflowId, history })}\n`);
      }
    }
  });

  it('replays the committed histories of earlier versions', async () => {
    const files = readdirSync(FIXTURES).filter((f) => f.endsWith('.json'));
    expect(files.length).toBeGreaterThanOrEqual(3);
    const histories = files.map((f) => {
      const { workflowId, history } = JSON.parse(readFileSync(path.join(FIXTURES, f), 'utf8'));
      return { workflowId, history: temporal.api.history.v1.History.fromObject(history) };
    });
    const results = await replay(histories);
    expect(results.map((r) => `${r.workflowId}: ${r.error ?? 'ok'}`)).toEqual(histories.map((h) => `${h.workflowId}: ok`));
  });
});
