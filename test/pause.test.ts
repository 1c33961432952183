/**
 * Issue 13, pause and resume (the HLT farm lent to offline computing): a paused cluster
 * vacates — after a grace period every instance is terminated and a sweep verifies nothing is
 * left — and keeps its identity; resume deploys it again in dependency order. Through the REST
 * API, a real Temporal dev server, the worker and the sim cloud.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { clusterInstances, clusterStatus, phoneHomeToken, startStack, threeTier, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => {
  await stack?.stop();
});

const inCloud = (id: string) => stack.worker!.sim!.count({ cluster: id });

describe('pause and resume', () => {
  it('vacates after the grace period, keeps the cluster, and comes back in dependency order', async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', threeTier({ proxy: 1, head: 1, workers: 3 }));
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id });
    const id = c.body.id as string;
    await waitForState(stack, id, 'READY');
    const before = (await clusterInstances(stack, id)).map((i) => i.id);
    expect(before).toHaveLength(5);

    // The drain notice a guest polls with its phone-home token: nothing while the cluster runs.
    const notice = (instance: string, token = phoneHomeToken(stack, instance)) =>
      stack.http('GET', `/v1/instances/${instance}/notice`, undefined, { authorization: `Bearer ${token}` });
    const head = `${id}-head-0`;
    expect(await notice(head)).toMatchObject({ status: 200, body: {} });

    const p = await stack.http('POST', `/v1/clusters/${id}/pause`, { graceSeconds: 5 });
    expect(p.status).toBe(200);
    expect(p.body.state).toBe('PAUSING');
    const graceEnds = Date.parse(p.body.pausedAt);
    // During the grace period: drain, until the grace ends (what a head node's `condor_off -peaceful` hook acts on).
    const draining = await notice(head);
    expect(draining.status).toBe(200);
    expect(draining.body).toEqual({ drain: { until: p.body.pausedAt, reason: expect.stringMatching(/^pausing: instances may drain until /) } });
    // Another instance's token, or none: 401.
    expect((await notice(head, phoneHomeToken(stack, `${id}-proxy-0`))).status).toBe(401);
    expect((await stack.http('GET', `/v1/instances/${head}/notice`, undefined, { authorization: '' })).status).toBe(401);
    // During the grace period the instances stay (they may drain), and the cluster says until when.
    const pausing = await clusterStatus(stack, id);
    expect(pausing.state).toBe('PAUSING');
    expect(pausing.message).toMatch(/^pausing: instances may drain until .*, then every one is terminated$/);
    expect(await inCloud(id)).toBe(5);
    // Nothing else while it pauses.
    expect((await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 5 })).status).toBe(409);
    expect((await stack.http('POST', `/v1/clusters/${id}/pause`, {})).status).toBe(409);
    expect((await stack.http('POST', `/v1/clusters/${id}/resume`)).status).toBe(409);

    const paused = await waitForState(stack, id, 'PAUSED', 60_000);
    expect(Date.now()).toBeGreaterThanOrEqual(graceEnds);
    expect(paused.message).toMatch(/^paused: 0 instances on sim/);
    expect(paused.services.map((s: any) => [s.name, s.state])).toEqual([['proxy', 'PAUSED'], ['head', 'PAUSED'], ['workers', 'PAUSED']]);
    expect(await inCloud(id)).toBe(0);
    expect(await clusterInstances(stack, id)).toEqual([]);

    const r = await stack.http('POST', `/v1/clusters/${id}/resume`);
    expect(r.status).toBe(200);
    expect(r.body.state).toBe('DEPLOYING');
    const ready = await waitForState(stack, id, 'READY', 90_000);
    expect(ready.services.map((s: any) => [s.name, s.ready])).toEqual([['proxy', 1], ['head', 1], ['workers', 3]]);
    expect(await inCloud(id)).toBe(5);
    // Resumed: the new instances have no notice; the old ones' tokens died with them.
    expect(await notice(`${id}-head-1`)).toMatchObject({ status: 200, body: {} });
    expect((await notice(head)).status).toBe(401);
    // Dependency order again: head after proxy was ready, workers after head.
    const after = await clusterInstances(stack, id);
    const first = (svc: string) => Math.min(...after.filter((i) => i.service === svc).map((i) => Date.parse(i.createdAt!)));
    const readyAt = (svc: string) => Math.min(...after.filter((i) => i.service === svc).map((i) => Date.parse(i.readyAt!)));
    expect(first('head')).toBeGreaterThanOrEqual(readyAt('proxy'));
    expect(first('workers')).toBeGreaterThanOrEqual(readyAt('head'));
    // Same cluster, new instances (names never reused).
    expect(after.map((i) => i.id).filter((i) => before.includes(i))).toEqual([]);
    const events = (await stack.http('GET', `/v1/clusters/${id}/events`)).body.items.map((e: any) => e.message);
    expect(events).toEqual(expect.arrayContaining([expect.stringMatching(/^READY → PAUSING: pausing/), expect.stringMatching(/^PAUSING → PAUSED: paused/), expect.stringMatching(/^PAUSED → DEPLOYING: resuming/)]));

    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
    expect(await inCloud(id)).toBe(0);
  }, 240_000);

  it('pauses at once without a body, and tears down from PAUSED', async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', threeTier({ proxy: 1, head: 1, workers: 1 }));
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id });
    const id = c.body.id as string;
    await waitForState(stack, id, 'READY');
    expect((await stack.http('POST', `/v1/clusters/${id}/pause`)).status).toBe(200);
    await waitForState(stack, id, 'PAUSED', 60_000);
    expect(await inCloud(id)).toBe(0);
    expect((await stack.http('POST', `/v1/clusters/${id}/pause`, { graceSeconds: -1 })).status).toBe(422);
    expect((await stack.http('DELETE', `/v1/clusters/${id}`)).status).toBe(202);
    const done = await waitForState(stack, id, 'TERMINATED');
    expect(done.services.every((s: any) => s.state === 'TERMINATED')).toBe(true);
    expect((await stack.http('POST', `/v1/clusters/${id}/resume`)).status).toBe(409);
    await waitFor(async () => (await inCloud(id)) === 0 || undefined, 10_000, 'nothing left');
  }, 180_000);
});
