/**
 * Determinism guard: workflow histories replayed against today's workflow code must not
 * diverge. Two sources: histories recorded just now from a real run (scale, failure,
 * replacement and teardown included), and histories committed under
 * test/fixtures/histories/ from earlier versions (refresh them with
 * `RECORD_HISTORIES=<label> npm test -- test/replay.test.ts`, which adds `<label>-*.json` beside
 * the earlier versions' files; never rewrite old ones — a change that cannot replay them must
 * be versioned with `patched()` instead).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Worker } from '@temporalio/worker';
import { temporal } from '@temporalio/proto';
import { ROOT, deploy, startStack, waitFor, waitForState, workflowBundle, clusterStatus, type Stack } from './harness.js';
import { decryptPayloadsInPlace, historyText } from './history-text.js';
import { startStratum1, type FakeStratum1 } from './fakes/stratum1.js';

const FIXTURES = path.join(ROOT, 'test/fixtures/histories');
let stack: Stack;
let stratum1: FakeStratum1;
beforeAll(async () => {
  const now = Date.now();
  stratum1 = await startStratum1({ 'alice.cern.ch': { revision: 7, publishedAt: new Date(now - 60_000), whitelistExpires: new Date(now + 86_400_000) } });
  stack = await startStack({ simRules: [{ match: '-svc-b-0$', behaviour: 'fail' }], cvmfsServers: [stratum1.url] });
});
afterAll(async () => {
  await stack?.stop();
  await stratum1?.stop();
});

async function replay(histories: { workflowId: string; history: temporal.api.history.v1.IHistory }[]) {
  const results = [];
  // The worker's codec: fresh histories hold encrypted payloads; the committed ones predate it and pass through.
  for await (const r of Worker.runReplayHistories({ workflowBundle: await workflowBundle(), dataConverter: stack.dataConverter }, histories)) results.push(r);
  return results;
}

describe('workflow replay', () => {
  it("bundles the workflows for the worker's Node: object spread stays native", async () => {
    // At the SDK's default (es2017) swc made every object spread a helper call: a 10,000-instance
    // service's workflow spent 5 of its 19 busy seconds in them (workers/worker.ts compileForNode).
    const { code } = await workflowBundle();
    expect(code.match(/function _object_spread/g)).toBeNull();
  });

  it('replays freshly recorded histories without nondeterminism', async () => {
    // svc-b has a context: the stratum-1 check, the pinned render and per-repository readiness are recorded too.
    const ctx = await stack.http('POST', '/v1/contexts', { name: 'replay', repositories: ['alice.cern.ch'] });
    expect(ctx.status).toBe(201);
    const id = await deploy(stack, {
      name: 'replay',
      services: [
        { name: 'svc-a', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, image: 'cernvm', min: 1, max: 4 },
        { name: 'svc-b', contextId: ctx.body.id, offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, image: 'cernvm', min: 2, dependsOn: ['svc-a'] },
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
    const recorded = historyText(histories);
    // The (encrypted) payloads were decrypted, so a leak would show: the context id is only ever in payloads.
    expect(recorded).toContain(ctx.body.id);
    expect(recorded).not.toContain(stack.config.tokenSecret!);
    expect(recorded).not.toMatch(/Bearer|"token"|x-cloudgate-phone-home/);

    expect(recorded).toContain('checkCvmfsRepository');

    // RECORD_HISTORIES=<label> adds <label>-cluster.json, <label>-svc-a.json, … beside the earlier versions' files.
    const label = process.env.RECORD_HISTORIES;
    if (label) {
      for (const h of histories) {
        // Fixtures hold plaintext payloads: they must replay without this stack's keys (decode passes them through).
        decryptPayloadsInPlace(h.history);
        const file = path.join(FIXTURES, `${label}-${h.workflowId.split('/').slice(2).join('-') || 'cluster'}.json`);
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
