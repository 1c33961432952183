/**
 * Issue 13, sessions: a cluster with a lifetime tears itself down at its deadline, saying
 * which one passed — through the REST API, a real Temporal dev server, the worker and the sim
 * cloud. An idle session ends on time and a kept-alive one does not; the maximum moves with
 * `extend` within the site-wide cap; a worker that is down when the deadline passes still
 * ends the session when it comes back; bad requests are clear 4xx problems.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { ClusterDefinitionInput } from '../model/definition.js';
import { clusterStatus, startStack, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ maxLifetimeSeconds: 120 });
});
afterAll(async () => {
  await stack?.stop();
});

const session = (lifetime?: ClusterDefinitionInput['lifetime']): ClusterDefinitionInput => ({
  name: 'caf',
  ...(lifetime && { lifetime }),
  services: [{ name: 'head', image: 'cernvm4-micro', offering: { cpus: 1, memoryMiB: 2048, diskGiB: 20 }, min: 1, readinessTimeoutSeconds: 30 }],
});

async function submit(def: ClusterDefinitionInput, extra: Record<string, unknown> = {}): Promise<{ status: number; body: any }> {
  const d = await stack.http('POST', '/v1/cluster-definitions', def);
  expect(d.status).toBe(201);
  return stack.http('POST', '/v1/clusters', { definitionId: d.body.id, ...extra });
}

const ms = (iso: string) => Date.parse(iso);
const simCount = (id: string) => stack.worker!.sim!.count({ cluster: id });

describe('sessions', () => {
  it('ends an idle session on time, not while it is kept alive, and says why', async () => {
    const c = await submit(session({ idleSeconds: 15 }));
    expect(c.status).toBe(202);
    const id = c.body.id;
    const ready = await waitForState(stack, id, 'READY');
    expect(ready.lifetime).toEqual({ idleSeconds: 15 });
    const first = ms(ready.expiresAt);

    // Kept alive every 4 s for 25 s — longer than the idle limit — it stays up, its deadline moving on.
    const keptUntil = Date.now() + 25_000;
    let last = first;
    while (Date.now() < keptUntil) {
      const k = await stack.http('POST', `/v1/clusters/${id}/keepalive`);
      expect(k.status).toBe(200);
      expect(ms(k.body.expiresAt)).toBeGreaterThanOrEqual(last);
      expect(k.body.idleExpiresAt).toBe(k.body.expiresAt);
      last = ms(k.body.expiresAt);
      await new Promise((r) => setTimeout(r, 4_000));
    }
    expect(last).toBeGreaterThan(first + 20_000);
    expect((await clusterStatus(stack, id)).state).toBe('READY');
    expect(await simCount(id)).toBe(1);

    // Left alone, it ends within its idle limit of the last keepalive, saying so.
    const done = await waitForState(stack, id, 'TERMINATED', 60_000);
    const endedAt = Date.now();
    expect(endedAt).toBeGreaterThanOrEqual(last - 1_000);
    expect(endedAt).toBeLessThan(last + 15_000);
    expect(done.message).toMatch(/^session ended: idle for 15 s: no keepalive since \d{4}-/);
    expect(await simCount(id)).toBe(0);
    const events = (await stack.http('GET', `/v1/clusters/${id}/events`)).body.items;
    expect(events.some((e: any) => e.kind === 'teardown' && /idle for 15 s/.test(e.message))).toBe(true);
    // A session that ended takes no more keepalives.
    expect((await stack.http('POST', `/v1/clusters/${id}/keepalive`)).status).toBe(409);
  }, 120_000);

  it('ends at its maximum lifetime, which extend moves within the site-wide cap', async () => {
    // The submission overrides the definition's default maximum.
    const c = await submit(session({ maxSeconds: 600, idleSeconds: 600 }), { lifetime: { maxSeconds: 20 } });
    expect(c.status).toBe(202);
    const id = c.body.id;
    const ready = await waitForState(stack, id, 'READY');
    expect(ready.lifetime).toEqual({ maxSeconds: 20, idleSeconds: 600 });
    const before = ms(ready.expiresAt);

    const ext = await stack.http('POST', `/v1/clusters/${id}/extend`, { seconds: 10 });
    expect(ext.status).toBe(200);
    expect(ms(ext.body.maxExpiresAt) - before).toBe(10_000);
    expect(ext.body.expiresAt).toBe(ext.body.maxExpiresAt);
    // Past the cap (120 s here): refused, naming it; nothing changed.
    const over = await stack.http('POST', `/v1/clusters/${id}/extend`, { seconds: 100 });
    expect(over.status).toBe(422);
    expect(over.body.errors[0]).toMatchObject({ field: 'seconds', pointer: '/seconds' });
    expect(over.body.errors[0].message).toMatch(/within the site's cap of 2 min; the lifetime is 30 s and 100 more would make it 130 s/);
    for (const bad of [{ seconds: 0 }, { seconds: 1.5 }, {}, { seconds: 5, extra: 1 }]) {
      expect((await stack.http('POST', `/v1/clusters/${id}/extend`, bad)).status).toBe(422);
    }

    const done = await waitForState(stack, id, 'TERMINATED', 60_000);
    expect(done.message).toBe('session ended: lifetime of 30 s reached');
    expect(await simCount(id)).toBe(0);
    expect((await stack.http('GET', `/v1/clusters/${id}/events`)).body.items.map((e: any) => e.message)).toContain(
      `lifetime extended by 10 s: it now ends at ${ext.body.maxExpiresAt}`,
    );
  }, 120_000);

  it('ends a session whose deadline passed while no worker ran, once one is back', async () => {
    const c = await submit(session({ idleSeconds: 10 }));
    const id = c.body.id;
    await waitForState(stack, id, 'READY');
    await stack.worker!.shutdown();
    await new Promise((r) => setTimeout(r, 12_000));
    await stack.startWorker();
    const done = await waitForState(stack, id, 'TERMINATED', 60_000);
    expect(done.message).toMatch(/^session ended: idle for 10 s/);
    expect(await simCount(id)).toBe(0);
  }, 120_000);

  it('answers clear problems: no lifetime, unknown cluster, a maximum over the cap', async () => {
    const plain = await submit(session());
    expect(plain.status).toBe(202);
    await waitFor(async () => (await clusterStatus(stack, plain.body.id)).state !== 'PENDING' || undefined, 30_000, 'the plain cluster to start');
    const k = await stack.http('POST', `/v1/clusters/${plain.body.id}/keepalive`);
    expect(k.status).toBe(409);
    expect(k.body.detail).toMatch(/has no lifetime: there is nothing to keep alive/);
    expect((await clusterStatus(stack, plain.body.id)).expiresAt).toBeUndefined();
    expect((await stack.http('POST', '/v1/clusters/nope-000000/keepalive')).status).toBe(404);
    expect((await stack.http('POST', `/v1/clusters/${plain.body.id}/keepalive`, undefined, { Authorization: '' })).status).toBe(401);

    const idleOnly = await submit(session({ idleSeconds: 600 }));
    await waitForState(stack, idleOnly.body.id, 'READY');
    const e = await stack.http('POST', `/v1/clusters/${idleOnly.body.id}/extend`, { seconds: 10 });
    expect(e.status).toBe(409);
    expect(e.body.detail).toMatch(/has no maximum lifetime to extend/);

    const tooLong = await submit(session({ idleSeconds: 60 }), { lifetime: { maxSeconds: 500 } });
    expect(tooLong.status).toBe(422);
    expect(tooLong.body.errors).toEqual([
      { field: 'lifetime.maxSeconds', pointer: '/lifetime/maxSeconds', message: 'a cluster may live at most 2 min on this site; 500 s asked' },
    ]);
    const bad = await stack.http('POST', '/v1/cluster-definitions', session({}));
    expect(bad.status).toBe(422);
    for (const id of [plain.body.id, idleOnly.body.id]) {
      await stack.http('DELETE', `/v1/clusters/${id}`);
      await waitForState(stack, id, 'TERMINATED');
    }
  }, 120_000);
});
