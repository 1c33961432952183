/**
 * Issue 13, elastic scaling: a service with `autoscale` follows the load its head node
 * reports — through the REST API, a real Temporal dev server, the worker and the sim cloud.
 * It grows with the queue within `max`, holds inside the cooldown, and shrinks only by
 * instances reported idle long enough: a busy instance is never terminated. Every decision
 * is an event with its inputs. The reaction times are printed (measured, not asserted).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { signToken } from '../model/token.js';
import { clusterInstances, clusterStatus, phoneHomeToken, startStack, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => {
  await stack?.stop();
});

const offering = { cpus: 1, memoryMiB: 2048, diskGiB: 20 };

describe('autoscale', () => {
  it('follows a queue that rises and falls, never terminating a busy instance', async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'caf',
      services: [
        { name: 'head', image: 'cernvm4-micro', offering, min: 1 },
        {
          name: 'workers',
          image: 'cernvm4-micro',
          offering,
          min: 1,
          max: 6,
          dependsOn: ['head'],
          autoscale: { jobsPerInstance: 4, scaleDownIdleSeconds: 6, cooldownSeconds: 3 },
        },
      ],
    });
    expect(d.status).toBe(201);
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id });
    const id = c.body.id as string;
    await waitForState(stack, id, 'READY');
    const load = (body: unknown) => stack.http('POST', `/v1/clusters/${id}/services/workers/load`, body);
    const workers = async () => (await clusterStatus(stack, id)).services.find((s: any) => s.name === 'workers');

    // The queue rises: 14 queued + 2 running at 4 jobs per instance → 4 instances.
    const t0 = Date.now();
    const up = await load({ queued: 14, running: 2 });
    expect(up.status).toBe(200);
    expect(up.body).toMatchObject({ service: 'workers', action: 'up', desired: 4, retire: [] });
    await waitFor(async () => (await workers()).ready === 4, 60_000, 'four workers ready');
    const upReaction = Date.now() - t0;

    // Inside the cooldown a bigger queue waits; after it, the count grows to max (6), not to 8.
    const held = await load({ queued: 30, running: 0 });
    expect(held.body.action).toBe('hold');
    expect(held.body.reason).toMatch(/cooldown until/);
    await new Promise((r) => setTimeout(r, 3_000));
    const max = await load({ queued: 30, running: 0 });
    expect(max.body).toMatchObject({ action: 'up', desired: 6 });
    await waitFor(async () => (await workers()).ready === 6, 60_000, 'six workers ready');

    // The queue drains: 2 jobs still run on workers-0 and workers-1; the other four are idle.
    const all = (await clusterInstances(stack, id, 'workers')).map((i) => i.id).sort();
    expect(all).toHaveLength(6);
    const busy = all.filter((i) => /-workers-[01]$/.test(i));
    const idle = all.filter((i) => !busy.includes(i));
    // Past the cooldown of the last scale-up, but not yet idle for 6 s: hold. An instance of another service named idle is ignored.
    await new Promise((r) => setTimeout(r, 3_000));
    const early = await load({ queued: 0, running: 2, idleInstances: [...idle, `${id}-head-0`] });
    expect(early.body).toMatchObject({ action: 'hold', desired: 6 });
    expect(early.body.reason).toMatch(/no instance idle for 6 s yet/);
    // Idle in every report for 6 s: those four go, and only those.
    const t1 = Date.now();
    let down: any;
    await waitFor(async () => {
      const r = await load({ queued: 0, running: 2, idleInstances: idle });
      if (r.body.action === 'down') down = r.body;
      return down;
    }, 30_000, 'the scale-down');
    expect(down).toMatchObject({ desired: 2, retire: idle });
    expect(down.reason).toMatch(/0 queued \+ 2 running at 4 per instance → 1 wanted \(min 1, max 6\), 4 idle: scale down 6 → 2, retiring idle/);
    await waitFor(async () => stack.worker!.sim!.count({ cluster: id }) === 3, 60_000, 'the idle workers terminated');
    const downReaction = Date.now() - t1;
    // The read model follows within its publish interval.
    const left = await waitFor(async () => {
      const ids = (await clusterInstances(stack, id, 'workers')).map((i) => i.id).sort();
      return ids.length === 2 && ids;
    }, 10_000, 'the read model to drop the retired workers');
    expect(left).toEqual(busy);
    expect((await workers())).toMatchObject({ state: 'READY', desired: 2, ready: 2 });

    // Every decision is an event with its inputs.
    const events = (await stack.http('GET', `/v1/clusters/${id}/events`)).body.items.filter((e: any) => /^autoscale workers:/.test(e.message));
    expect(events.map((e: any) => e.message.replace(/, retiring idle .*/, ''))).toEqual([
      'autoscale workers: 14 queued + 2 running at 4 per instance → 4 wanted (min 1, max 6), 0 idle: scale up 1 → 4',
      'autoscale workers: 30 queued + 0 running at 4 per instance → 6 wanted (min 1, max 6), 0 idle: scale up 4 → 6',
      'autoscale workers: 0 queued + 2 running at 4 per instance → 1 wanted (min 1, max 6), 4 idle: scale down 6 → 2',
    ]);
    console.log(`autoscale reaction (sim boot ${stack.config.sim.bootMs} ms + ready ${stack.config.sim.readyDelayMs} ms): load report → 4 workers READY ${upReaction} ms; idle for 6 s → 4 terminated ${downReaction} ms after the first idle report`);

    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
  }, 180_000);

  it("takes a head node's phone-home token for its own cluster's load, while the instance lives", async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'condor',
      services: [
        { name: 'head', image: 'cernvm4-micro', offering, min: 1 },
        { name: 'workers', image: 'cernvm4-micro', offering, min: 1, max: 4, dependsOn: ['head'], autoscale: { jobsPerInstance: 2, scaleDownIdleSeconds: 0, cooldownSeconds: 0 } },
      ],
    });
    const other = await stack.http('POST', '/v1/cluster-definitions', { name: 'other', services: [{ name: 'solo', image: 'cernvm4-micro', offering, min: 1 }] });
    const id = (await stack.http('POST', '/v1/clusters', { definitionId: d.body.id })).body.id as string;
    const otherId = (await stack.http('POST', '/v1/clusters', { definitionId: other.body.id })).body.id as string;
    await waitForState(stack, id, 'READY');
    await waitForState(stack, otherId, 'READY');
    const as = (token: string) => ({ authorization: `Bearer ${token}` });
    const load = (token: string, body: unknown, cluster = id) => stack.http('POST', `/v1/clusters/${cluster}/services/workers/load`, body, as(token));
    const head = phoneHomeToken(stack, `${id}-head-0`);

    // The head node reports with its own token, no user's credentials: the service scales.
    const up = await load(head, { queued: 6, running: 0 });
    expect(up.status).toBe(200);
    expect(up.body).toMatchObject({ action: 'up', desired: 3 });
    await waitFor(async () => (await clusterStatus(stack, id)).services[1].ready === 3, 60_000, 'three workers ready');
    // Its token's exp bounds only the readiness report: past it, a live head still reports.
    const claims = { iid: `${id}-head-0`, cluster: id, service: 'head' };
    const expired = signToken({ ...claims, exp: Math.floor(Date.now() / 1000) - 3600 }, stack.config.tokenSecret!);
    expect((await load(expired, { queued: 6, running: 0 })).body).toMatchObject({ action: 'hold', desired: 3 });

    // Another cluster's token: as if the cluster did not exist (other owners' clusters answer 404 too).
    const stranger = phoneHomeToken(stack, `${otherId}-solo-0`);
    const refused = await load(stranger, { queued: 6, running: 0 });
    expect(refused.status).toBe(404);
    expect(refused.headers.get('content-type')).toMatch(/application\/problem\+json/);
    // A forged or bent token: 401 problem+json.
    for (const bad of [signToken({ ...claims, exp: 0 }, 'not-the-secret-0123456789'), `${head.split('.')[0]}x.${head.split('.')[1]}`]) {
      const r = await load(bad, { queued: 6, running: 0 });
      expect(r.status).toBe(401);
      expect(r.headers.get('content-type')).toMatch(/application\/problem\+json/);
      expect(r.body.detail).toMatch(/invalid token: (bad signature|malformed token)/);
    }
    // The token opens no other route: not the cluster, not its scale route, not its pause.
    expect((await stack.http('GET', `/v1/clusters/${id}`, undefined, as(head))).status).toBe(401);
    expect((await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 4 }, as(head))).status).toBe(401);
    expect((await stack.http('POST', `/v1/clusters/${id}/pause`, undefined, as(head))).status).toBe(401);
    // It is tied to the cluster, not a service: head has no autoscale, so the cluster answers (409).
    expect((await stack.http('POST', `/v1/clusters/${id}/services/head/load`, { queued: 1, running: 0 }, as(head))).status).toBe(409);

    // A retired instance's token is worth nothing once it is terminating or gone.
    const retired = `${id}-workers-2`;
    const retiredToken = phoneHomeToken(stack, retired);
    expect((await load(retiredToken, { queued: 0, running: 2 })).status).toBe(200);
    const down = await load(head, { queued: 0, running: 2, idleInstances: [retired, `${id}-workers-1`] });
    expect(down.body).toMatchObject({ action: 'down', desired: 1 });
    await waitFor(async () => !(await clusterInstances(stack, id, 'workers')).some((i) => i.id === retired && i.state !== 'TERMINATING'), 30_000, 'the retired worker leaving');
    const dead = await load(retiredToken, { queued: 0, running: 2 });
    expect(dead.status).toBe(401);
    expect(dead.body.detail).toMatch(new RegExp(`instance ${retired} is (TERMINATING|REMOVED|not \\(or no longer\\) in its cluster)`));

    // And every token of a torn-down cluster.
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await stack.http('DELETE', `/v1/clusters/${otherId}`);
    await waitForState(stack, id, 'TERMINATED');
    expect((await load(head, { queued: 1, running: 0 })).status).toBe(401);
    await waitForState(stack, otherId, 'TERMINATED');
  }, 180_000);

  it('answers clear problems', async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'plain',
      services: [{ name: 'head', image: 'cernvm4-micro', offering, min: 1 }],
    });
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id });
    const id = c.body.id as string;
    await waitForState(stack, id, 'READY');
    const no = await stack.http('POST', `/v1/clusters/${id}/services/head/load`, { queued: 1, running: 0 });
    expect(no.status).toBe(409);
    expect(no.body.detail).toMatch(/has no autoscale/);
    expect((await stack.http('POST', `/v1/clusters/${id}/services/nope/load`, { queued: 1, running: 0 })).status).toBe(404);
    for (const bad of [{ queued: -1, running: 0 }, { queued: 1 }, { queued: 1, running: 0, idle: [] }, { queued: 1.5, running: 0 }]) {
      expect((await stack.http('POST', `/v1/clusters/${id}/services/head/load`, bad)).status).toBe(422);
    }
    // autoscale needs a max.
    const noMax = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'nomax',
      services: [{ name: 'w', image: 'cernvm4-micro', offering, autoscale: { jobsPerInstance: 2 } }],
    });
    expect(noMax.status).toBe(422);
    expect(JSON.stringify(noMax.body.errors)).toMatch(/autoscale needs a max/);
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
  }, 120_000);
});
