/**
 * The cloud catalogue (issue 12), through the real stack: offerings are listed by an activity
 * on a Temporal Schedule (and on an admin's `POST /v1/clouds/:id/refresh`), never at worker
 * start, so a cloud that is down at start (an OCCI entry on a closed port; a CloudStack entry
 * whose credentials are not set) holds up neither the worker nor the `sim` cloud, and shows
 * its offerings once it comes up and is refreshed.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { DEFAULT_SIM_IMAGES } from '../model/images.js';
import { freePort } from '../workers/dev-server.js';
import type { CloudCatalogueResult } from '../workflows/catalogue.js';
import { startOcciFake, type OcciFake } from './fakes/occi-fake.js';
import { OCCI_FAKE_IMAGES } from './peers/occi.js';
import { startStack, waitFor, type Stack } from './harness.js';

const UNSET_KEY_ENV = 'CLOUDGATE_TEST_CATALOGUE_UNSET_API_KEY';
const UNSET_SECRET_ENV = 'CLOUDGATE_TEST_CATALOGUE_UNSET_SECRET_KEY';

let stack: Stack;
let occiPort: number;
let startedInMs: number;
let fake: OcciFake | undefined;
let proxy: Server | undefined;
const sockets = new Set<Socket>();

beforeAll(async () => {
  delete process.env[UNSET_KEY_ENV];
  delete process.env[UNSET_SECRET_ENV];
  occiPort = await freePort();
  const closedPort = await freePort();
  const t0 = Date.now();
  stack = await startStack({
    clouds: [
      { name: 'sim', kind: 'sim', images: { ...DEFAULT_SIM_IMAGES } },
      // Nothing listens here until the test starts the OCCI fake behind it.
      { name: 'later', kind: 'occi', endpoint: `http://127.0.0.1:${occiPort}`, images: { ...OCCI_FAKE_IMAGES } },
      // Never answers: its credentials are not set (read only inside the activity) and nothing listens.
      {
        name: 'nocreds',
        kind: 'cloudstack',
        endpoint: `http://127.0.0.1:${closedPort}/client/api`,
        zoneId: 'zone-1',
        credentials: { apiKey: { env: UNSET_KEY_ENV }, secretKey: { env: UNSET_SECRET_ENV } },
        images: { 'cernvm4-micro': 'template-1' },
        quota: { instances: 4 },
      },
    ],
  });
  startedInMs = Date.now() - t0;
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => (proxy ? proxy.close(() => r()) : r()));
  await fake?.stop();
  await stack?.stop();
});

const cloud = async (name: string) => ((await stack.http('GET', '/v1/clouds')).body.items as any[]).find((c) => c.name === name);

/** Forwards `127.0.0.1:<port>` to `target` (the fake listens on a port of its own choosing). */
async function forward(port: number, target: string): Promise<Server> {
  const { port: targetPort } = new URL(target);
  const server = createServer((client) => {
    const upstream = connect(Number(targetPort), '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  return server;
}

describe('the cloud catalogue', () => {
  it('is a Temporal Schedule every 5 minutes that says what it does', async () => {
    const desc = await stack.client.schedule.getHandle('cloud-catalogue').describe();
    expect(desc.spec.intervals?.map((i) => i.every)).toEqual([5 * 60_000]);
    expect(desc.action).toMatchObject({ type: 'startWorkflow', workflowType: 'CloudCatalogueWorkflow', taskQueue: stack.config.taskQueue });
    expect(desc.state.paused).toBe(false);
    expect(desc.state.note).toMatch(/offerings/);
    expect(desc.memo?.description).toBe(desc.state.note);
    // Triggered once at start: at least one run already.
    expect(desc.info.recentActions.length + desc.info.runningActions.length).toBeGreaterThanOrEqual(1);
  });

  it('a cloud that does not answer at start holds up neither the worker nor the sim cloud', async () => {
    // startStack returns once the worker polls and sim lists its offerings.
    expect(startedInMs).toBeLessThan(60_000);
    const sim = await cloud('sim');
    expect(sim.offerings.length).toBeGreaterThan(0);
    expect(sim.usage).toEqual({ instances: 0, cpus: 0, memoryMiB: 0 });
    const later = await cloud('later');
    expect(later).toMatchObject({ kind: 'occi', endpoint: `http://127.0.0.1:${occiPort}`, offerings: [] });
    expect(later.images).toEqual(expect.arrayContaining(['cernvm4-micro']));
    const nocreds = await cloud('nocreds');
    // Registry information without any cloud call: credential references (never values) and the quota.
    expect(nocreds).toMatchObject({ kind: 'cloudstack', offerings: [], credentials: { apiKey: `env:${UNSET_KEY_ENV}`, secretKey: `env:${UNSET_SECRET_ENV}` }, quota: { instances: 4 } });
    expect(nocreds.usage).toEqual({ instances: 0, cpus: 0, memoryMiB: 0 });

    // The schedule's run says which clouds answered and which did not.
    const run = await waitFor(async () => {
      for await (const wf of stack.client.workflow.list({ query: `WorkflowType = 'CloudCatalogueWorkflow' AND ExecutionStatus = 'Completed'` })) return wf;
      return undefined;
    }, 30_000, 'a completed catalogue run');
    expect(run.workflowId).toMatch(/^cloud-catalogue\/all/);
    const result = (await stack.client.workflow.getHandle(run.workflowId, run.runId).result()) as CloudCatalogueResult;
    expect(result.answered).toEqual(['sim']);
    expect(result.failed.map((f) => f.cloud).sort()).toEqual(['later', 'nocreds']);
    expect(result.failed.find((f) => f.cloud === 'nocreds')?.error).toContain(UNSET_KEY_ENV);
  });

  it('POST /v1/clouds/:id/refresh lists a cloud now, for admins only', async () => {
    const ok = await stack.http('POST', '/v1/clouds/sim/refresh');
    expect(ok.status).toBe(200);
    expect(ok.body).toMatchObject({ name: 'sim', kind: 'sim', usage: { instances: 0, cpus: 0, memoryMiB: 0 } });
    expect(ok.body.offerings.length).toBeGreaterThan(0);
    expect(ok.body).toEqual(await cloud('sim'));

    const user = await stack.http('POST', '/v1/tokens', { owner: 'carol', role: 'user' });
    expect(user.status).toBe(201);
    const asUser = await stack.http('POST', '/v1/clouds/sim/refresh', undefined, { authorization: `Bearer ${user.body.token}` });
    expect(asUser.status).toBe(403);
    expect(asUser.headers.get('content-type')).toMatch(/application\/problem\+json/);
    // A user still reads the catalogue.
    expect((await stack.http('GET', '/v1/clouds', undefined, { authorization: `Bearer ${user.body.token}` })).status).toBe(200);

    const unknown = await stack.http('POST', '/v1/clouds/nowhere/refresh');
    expect(unknown.status).toBe(404);
    expect(unknown.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(unknown.body.detail).toContain('nowhere');
  });

  it('a refresh of a cloud that does not answer is a 502 naming it and why', async () => {
    const down = await stack.http('POST', '/v1/clouds/later/refresh');
    expect(down.status).toBe(502);
    expect(down.headers.get('content-type')).toMatch(/application\/problem\+json/);
    expect(down.body).toMatchObject({ type: 'urn:cloudgate:problem:cloud-unreachable', cloud: 'later', offeringsKept: 0 });
    expect(down.body.detail).toContain('later');
    expect(down.body.workflowId).toMatch(/^cloud-catalogue\/later\//);

    const nocreds = await stack.http('POST', '/v1/clouds/nocreds/refresh');
    expect(nocreds.status).toBe(502);
    expect(nocreds.body.cloud).toBe('nocreds');
    expect(nocreds.body.detail).toContain(UNSET_KEY_ENV);
  });

  it('a cloud that comes up shows its offerings after a refresh, and the refresh is audited', async () => {
    fake = await startOcciFake();
    proxy = await forward(occiPort, fake.endpoint);
    const up = await stack.http('POST', '/v1/clouds/later/refresh');
    expect(up.status).toBe(200);
    expect(up.body.name).toBe('later');
    expect(up.body.offerings.length).toBeGreaterThan(0);
    expect((await cloud('later')).offerings).toEqual(up.body.offerings);

    const audit = await stack.http('GET', '/v1/audit?target=later');
    expect(audit.status).toBe(200);
    expect(audit.body.items.map((a: any) => [a.route, a.result])).toEqual([
      ['POST /v1/clouds/:id/refresh', 200],
      ['POST /v1/clouds/:id/refresh', 502],
    ]);
  });

  it('a worker starting puts back the schedule it keeps', async () => {
    const handle = stack.client.schedule.getHandle('cloud-catalogue');
    await handle.update((prev) => ({
      ...prev,
      spec: { intervals: [{ every: '1 hour' }] },
      action: { ...prev.action, args: [{ clouds: ['sim'] }] } as typeof prev.action,
    }));
    expect((await handle.describe()).spec.intervals?.[0].every).toBe(3_600_000);
    await stack.worker!.shutdown();
    await stack.startWorker();
    await waitFor(async () => (await handle.describe()).spec.intervals?.[0].every === 5 * 60_000, 30_000, 'the schedule to be put back');
    const desc = await handle.describe();
    expect(desc.action).toMatchObject({ workflowType: 'CloudCatalogueWorkflow', args: [{}] });
    // And the new worker serves refreshes.
    expect((await stack.http('POST', '/v1/clouds/sim/refresh')).status).toBe(200);
  });

  it('documents the routes', async () => {
    const doc = (await stack.http('GET', '/openapi.json')).body;
    expect(Object.keys(doc.paths['/v1/clouds/{id}/refresh'])).toEqual(['post']);
    expect(Object.keys(doc.paths['/v1/clouds/{id}/refresh'].post.responses).sort()).toEqual(['200', '401', '403', '404', '422', '502', '503']);
    expect(Object.keys(doc.components.schemas.Cloud.properties)).toEqual(expect.arrayContaining(['offerings', 'quota', 'usage']));
  });
});
