/**
 * Quotas per owner and the audit trail (issue 11, "Whose is what"), through the real HTTP API
 * of a real stack: the site default and an owner's own quota, submissions and scale-ups over
 * each limit refused with a 403 `quota-exceeded` problem naming the quota, the usage and the
 * request — with nothing stored and no workflow started — scale-downs always allowed, quota
 * freed by a teardown or a rollback (not by a FAILED cluster under `keep`, which still runs),
 * concurrent submissions that cannot both squeeze under a limit; and the audit records and
 * log lines of state-changing requests, with no token or PIN in them.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import Database from 'better-sqlite3';
import { ClusterDefinitionSchema } from '../model/definition.js';
import { openSqliteStore } from '../store/index.js';
import { clusterStatus, ROOT, startStack, waitFor, waitForState, type Stack } from './harness.js';

const DEFAULT_QUOTA = { maxInstances: 6, maxClusters: 3, maxCpus: 12 };
const image = 'cernvm4-micro-2020.07';

let stack: Stack;
beforeAll(async () => {
  // Guests of services named `doomed` report failure: a rollback cluster ends FAILED, a keep one stays FAILED and running.
  stack = await startStack({ captureLogs: true, quota: DEFAULT_QUOTA, simRules: [{ match: '-doomed-\\d+$', behaviour: 'fail' }] });
}, 120_000);
afterAll(async () => {
  await stack?.stop();
});

type Headers = Record<string, string>;
interface User {
  owner: string;
  token: string;
  auth: Headers;
}

/** A user token for `owner` (issued by the admin). */
async function user(owner: string): Promise<User> {
  const r = await stack.http('POST', '/v1/tokens', { owner, role: 'user' });
  expect(r.status).toBe(201);
  return { owner, token: r.body.token, auth: { Authorization: `Bearer ${r.body.token}` } };
}

interface Svc {
  name: string;
  min: number;
  cpus: number;
  max?: number;
}
/** A definition owned by `u`; returns its id. */
async function definition(u: User, name: string, services: Svc[], failurePolicy: 'keep' | 'rollback' = 'keep'): Promise<string> {
  const r = await stack.http(
    'POST',
    '/v1/cluster-definitions',
    {
      name,
      failurePolicy,
      services: services.map((s) => ({
        name: s.name,
        image,
        offering: { cpus: s.cpus, memoryMiB: 1024, diskGiB: 10 },
        min: s.min,
        ...(s.max !== undefined && { max: s.max }),
        readinessTimeoutSeconds: 30,
      })),
    },
    u.auth,
  );
  expect(r.status).toBe(201);
  return r.body.id;
}

const submit = (u: User, definitionId: string) => stack.http('POST', '/v1/clusters', { definitionId }, u.auth);
const quotaOf = async (owner: string, as?: User) => {
  const r = await stack.http('GET', `/v1/owners/${owner}/quota`, undefined, as?.auth ?? {});
  expect(r.status).toBe(200);
  return r.body;
};
const setQuota = async (owner: string, quota: typeof DEFAULT_QUOTA) => {
  const r = await stack.http('PUT', `/v1/owners/${owner}/quota`, quota);
  expect(r.status).toBe(200);
  return r.body;
};
const clusterIds = async (u: User): Promise<string[]> => {
  const r = await stack.http('GET', '/v1/clusters', undefined, u.auth);
  expect(r.status).toBe(200);
  return (r.body.items as { id: string }[]).map((c) => c.id).sort();
};
/** How many cluster workflows carry the owner's search attribute. */
async function workflowsOf(owner: string): Promise<number> {
  let n = 0;
  for await (const _ of stack.client.workflow.list({ query: `CloudgateOwner = "${owner}" AND WorkflowType = "ClusterWorkflow"` })) n++;
  return n;
}
/** Waits until Temporal's visibility shows exactly `count` cluster workflows of the owner, then checks it stays so. */
async function expectWorkflows(owner: string, count: number): Promise<void> {
  await waitFor(async () => (await workflowsOf(owner)) === count, 20_000, `${count} workflows of ${owner}`);
  await new Promise((r) => setTimeout(r, 500));
  expect(await workflowsOf(owner)).toBe(count);
}
/** Asserts a quota-exceeded problem naming the quota, the usage and the request. */
function expectQuotaProblem(r: { status: number; body: any; headers: globalThis.Headers }, quota: string, limit: number, usage: number, requested: number, owner: string) {
  expect(r.status).toBe(403);
  expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(r.body.type).toBe('urn:cloudgate:problem:quota-exceeded');
  expect(r.body.detail).toBe(`${quota} ${limit}: ${owner} uses ${usage}, this asks for ${requested} more`);
  expect(r.body.exceeded).toContainEqual({ quota, limit, usage, requested });
  expect(r.body.owner).toBe(owner);
}
const desiredOf = async (id: string, service: string): Promise<number> =>
  ((await clusterStatus(stack, id)).services as { name: string; desired: number }[]).find((s) => s.name === service)!.desired;

/** The cluster of the scale tests, looked at again by the audit tests. */
let finnCluster = '';

describe('quotas', () => {
  it('applies the site default to an owner without a quota of their own', async () => {
    const dora = await user('dora');
    expect(await quotaOf('dora', dora)).toEqual({ owner: 'dora', quota: DEFAULT_QUOTA, usage: { instances: 0, clusters: 0, cpus: 0 }, source: 'default' });
    const big = await definition(dora, 'too-big', [{ name: 'workers', min: 7, cpus: 1 }]);
    const r = await submit(dora, big);
    expectQuotaProblem(r, 'maxInstances', 6, 0, 7, 'dora');
    expect(r.body.source).toBe('default');
    expect(await clusterIds(dora)).toEqual([]);
    await expectWorkflows('dora', 0);
    // Within the default it goes.
    const small = await definition(dora, 'small', [{ name: 'workers', min: 2, cpus: 3 }]);
    expect((await submit(dora, small)).status).toBe(202);
    expect((await quotaOf('dora', dora)).usage).toEqual({ instances: 2, clusters: 1, cpus: 6 });
  });

  it('lets an admin set a quota; the owner and admins read it with usage, anyone else gets 404', async () => {
    const emma = await user('emma');
    const other = await user('otto');
    const set = await setQuota('emma', { maxInstances: 3, maxClusters: 1, maxCpus: 4 });
    expect(set).toMatchObject({ owner: 'emma', quota: { maxInstances: 3, maxClusters: 1, maxCpus: 4 }, source: 'owner', usage: { instances: 0, clusters: 0, cpus: 0 } });
    expect(await quotaOf('emma', emma)).toEqual(set);
    expect(await quotaOf('emma')).toEqual(set); // the admin
    const foreign = await stack.http('GET', '/v1/owners/emma/quota', undefined, other.auth);
    expect(foreign.status).toBe(404);
    expect(JSON.stringify(foreign.body)).not.toMatch(/maxInstances/);
    // Only admins set quotas, with whole, plain-number bodies.
    expect((await stack.http('PUT', '/v1/owners/emma/quota', { maxInstances: 100, maxClusters: 100, maxCpus: 100 }, emma.auth)).status).toBe(403);
    const bad = await stack.http('PUT', '/v1/owners/emma/quota', { maxInstances: '5', maxClusters: -1, extra: 1 });
    expect(bad.status).toBe(422);
    expect((bad.body.errors as { field: string }[]).map((e) => e.field).sort()).toEqual(['extra', 'maxClusters', 'maxCpus', 'maxInstances']);
    expect((await stack.http('PUT', '/v1/owners/no%20body/quota', { maxInstances: 1, maxClusters: 1, maxCpus: 1 })).status).toBe(422);
    expect((await quotaOf('emma')).quota).toEqual({ maxInstances: 3, maxClusters: 1, maxCpus: 4 });
  });

  it('refuses submissions over maxClusters, maxInstances and maxCpus, storing nothing and starting no workflow', async () => {
    const emma = await user('emma');
    const first = await submit(emma, await definition(emma, 'first', [{ name: 'workers', min: 2, cpus: 1 }]));
    expect(first.status).toBe(202);
    const before = await clusterIds(emma);
    expect(before).toEqual([first.body.id]);

    const tiny = await definition(emma, 'tiny', [{ name: 'workers', min: 1, cpus: 1 }]);
    expectQuotaProblem(await submit(emma, tiny), 'maxClusters', 1, 1, 1, 'emma');

    await setQuota('emma', { maxInstances: 3, maxClusters: 5, maxCpus: 4 });
    const wide = await definition(emma, 'wide', [
      { name: 'a', min: 1, cpus: 1 },
      { name: 'b', min: 1, cpus: 1 },
    ]);
    expectQuotaProblem(await submit(emma, wide), 'maxInstances', 3, 2, 2, 'emma');
    const fat = await definition(emma, 'fat', [{ name: 'workers', min: 1, cpus: 4 }]);
    expectQuotaProblem(await submit(emma, fat), 'maxCpus', 4, 2, 4, 'emma');

    expect(await clusterIds(emma)).toEqual(before);
    await expectWorkflows('emma', 1);
    expect((await quotaOf('emma', emma)).usage).toEqual({ instances: 2, clusters: 1, cpus: 2 });
    // What fits still goes.
    expect((await submit(emma, tiny)).status).toBe(202);
    expect((await quotaOf('emma', emma)).usage).toEqual({ instances: 3, clusters: 2, cpus: 3 });
  });

  it('refuses a scale-up over quota (desired unchanged), allows scale-downs even over quota, and undoes the reservation of a failed scale', async () => {
    const finn = await user('finn');
    await setQuota('finn', { maxInstances: 4, maxClusters: 2, maxCpus: 8 });
    const r = await submit(finn, await definition(finn, 'scaler', [{ name: 'workers', min: 1, max: 10, cpus: 2 }]));
    expect(r.status).toBe(202);
    const id: string = r.body.id;
    finnCluster = id;
    await waitForState(stack, id, 'READY');

    const over = await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 5 }, finn.auth);
    expectQuotaProblem(over, 'maxInstances', 4, 1, 4, 'finn');
    expect(over.body.exceeded).toContainEqual({ quota: 'maxCpus', limit: 8, usage: 2, requested: 8 });
    expect(await desiredOf(id, 'workers')).toBe(1);
    expect((await quotaOf('finn', finn)).usage).toEqual({ instances: 1, clusters: 1, cpus: 2 });

    const up = await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 3 }, finn.auth);
    expect(up).toMatchObject({ status: 200, body: { service: 'workers', desired: 3 } });
    expect((await quotaOf('finn', finn)).usage).toEqual({ instances: 3, clusters: 1, cpus: 6 });

    // Lowered under what finn holds: scaling down is always allowed, scaling up is not.
    await setQuota('finn', { maxInstances: 2, maxClusters: 2, maxCpus: 8 });
    expectQuotaProblem(await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 4 }, finn.auth), 'maxInstances', 2, 3, 1, 'finn');
    expect((await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 2 }, finn.auth)).status).toBe(200);
    expect((await quotaOf('finn', finn)).usage).toEqual({ instances: 2, clusters: 1, cpus: 4 });
    expect((await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 1 }, finn.auth)).status).toBe(200);
    expect((await quotaOf('finn', finn)).usage).toEqual({ instances: 1, clusters: 1, cpus: 2 });
    await waitFor(async () => (await desiredOf(id, 'workers')) === 1, 30_000, 'desired 1');

    // A scale-up the workflow refuses (the cluster is being torn down) gives its reservation back.
    await setQuota('finn', { maxInstances: 10, maxClusters: 2, maxCpus: 20 });
    expect((await stack.http('DELETE', `/v1/clusters/${id}`, undefined, finn.auth)).status).toBe(202);
    const refused = await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 3 }, finn.auth);
    expect(refused.status).toBe(409);
    const db = new Database(path.join(stack.dataDir, 'cloudgate.sqlite'), { readonly: true });
    try {
      const row = db.prepare<[string], { instances: number; services: string }>('SELECT instances, services FROM quota_reservations WHERE cluster_id = ?').get(id)!;
      expect(row.instances).toBe(1);
      expect(JSON.parse(row.services)).toEqual([{ service: 'workers', instances: 1, cpus: 2 }]);
    } finally {
      db.close();
    }
    await waitForState(stack, id, 'TERMINATED');
  }, 120_000);

  it('frees the quota of a torn-down cluster', async () => {
    const gus = await user('gus');
    await setQuota('gus', { maxInstances: 10, maxClusters: 1, maxCpus: 10 });
    const def = await definition(gus, 'once', [{ name: 'workers', min: 2, cpus: 1 }]);
    const a = await submit(gus, def);
    expect(a.status).toBe(202);
    expectQuotaProblem(await submit(gus, def), 'maxClusters', 1, 1, 1, 'gus');
    expect((await stack.http('DELETE', `/v1/clusters/${a.body.id}`, undefined, gus.auth)).status).toBe(202);
    // Counted while it tears down, free once the read model says TERMINATED.
    await waitForState(stack, a.body.id, 'TERMINATED');
    expect((await quotaOf('gus', gus)).usage).toEqual({ instances: 0, clusters: 0, cpus: 0 });
    expect((await submit(gus, def)).status).toBe(202);
  }, 120_000);

  it('frees the quota of a rolled-back cluster once its workflow ended, but not of a FAILED cluster under keep, which still runs', async () => {
    const jack = await user('jack');
    await setQuota('jack', { maxInstances: 10, maxClusters: 2, maxCpus: 10 });
    const rollback = await submit(jack, await definition(jack, 'rb', [{ name: 'doomed', min: 1, cpus: 1 }], 'rollback'));
    const keep = await submit(jack, await definition(jack, 'kp', [{ name: 'doomed', min: 2, cpus: 1 }], 'keep'));
    expect([rollback.status, keep.status]).toEqual([202, 202]);
    expect((await quotaOf('jack', jack)).usage).toEqual({ instances: 3, clusters: 2, cpus: 3 });
    const rolledBack = await waitForState(stack, rollback.body.id, 'FAILED', 120_000);
    expect(rolledBack.message).toMatch(/rolled back/);
    await waitForState(stack, keep.body.id, 'FAILED', 120_000);
    // The rollback's workflow ends just after its last publish: then only the keep cluster counts.
    await waitFor(async () => (await quotaOf('jack', jack)).usage.clusters === 1, 30_000, 'the rolled-back cluster to stop counting');
    expect((await quotaOf('jack', jack)).usage).toEqual({ instances: 2, clusters: 1, cpus: 2 });
    expect((await stack.http('DELETE', `/v1/clusters/${keep.body.id}`, undefined, jack.auth)).status).toBe(202);
    await waitForState(stack, keep.body.id, 'TERMINATED');
    expect((await quotaOf('jack', jack)).usage).toEqual({ instances: 0, clusters: 0, cpus: 0 });
  }, 240_000);

  it('lets exactly one of two concurrent submissions through when only one fits', async () => {
    const hana = await user('hana');
    await setQuota('hana', { maxInstances: 3, maxClusters: 10, maxCpus: 100 });
    const def = await definition(hana, 'race', [{ name: 'workers', min: 2, cpus: 1 }]);
    const answers = await Promise.all([submit(hana, def), submit(hana, def)]);
    expect(answers.map((a) => a.status).sort()).toEqual([202, 403]);
    const refused = answers.find((a) => a.status === 403)!;
    expectQuotaProblem(refused, 'maxInstances', 3, 2, 2, 'hana');
    const accepted = answers.find((a) => a.status === 202)!;
    expect(await clusterIds(hana)).toEqual([accepted.body.id]);
    await expectWorkflows('hana', 1);

    // A burst: with room for two clusters, exactly two of six get in.
    const ines = await user('ines');
    await setQuota('ines', { maxInstances: 100, maxClusters: 2, maxCpus: 100 });
    const one = await definition(ines, 'burst', [{ name: 'workers', min: 1, cpus: 1 }]);
    const burst = await Promise.all(Array.from({ length: 6 }, () => submit(ines, one)));
    expect(burst.filter((b) => b.status === 202)).toHaveLength(2);
    expect(burst.filter((b) => b.status === 403)).toHaveLength(4);
    expect(await clusterIds(ines)).toEqual(burst.filter((b) => b.status === 202).map((b) => b.body.id as string).sort());
    await expectWorkflows('ines', 2);
    expect((await quotaOf('ines')).usage).toEqual({ instances: 2, clusters: 2, cpus: 2 });
  });

  it('holds the limit across processes sharing one store file (the check and the reservation are one IMMEDIATE transaction)', async () => {
    // Several processes on one file, each with its own connection: only the file's write lock keeps their checks
    // and inserts apart. Six of them race 40 submissions each for 50 places.
    const file = path.join(stack.dataDir, 'race.sqlite');
    const secretsKey = Buffer.alloc(32);
    const setup = await openSqliteStore(file, { secretsKey });
    const def = await setup.createDefinition({ name: 'race', owner: 'race', definition: ClusterDefinitionSchema.parse({ name: 'race', services: [{ name: 'w', image, offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 } }] }) });
    await setup.setOwnerQuota('race', { maxInstances: 1_000, maxClusters: 50, maxCpus: 1_000 });
    const startAt = Date.now() + 3_000;
    const racers = Array.from({ length: 6 }, () => {
      const proc = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'test/quota-racer.ts'), file, def.id, String(startAt), '40'], {
        cwd: ROOT,
        env: { ...process.env, NODE_OPTIONS: '' },
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
      return new Promise<{ ok: number; refused: number }>((resolve, reject) =>
        proc.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as { ok: number; refused: number }) : reject(new Error(`racer exited ${code}`)))),
      );
    });
    const results = await Promise.all(racers);
    expect(results.reduce((n, r) => n + r.ok, 0)).toBe(50);
    expect(results.reduce((n, r) => n + r.refused, 0)).toBe(6 * 40 - 50);
    expect(await setup.quotaUsage('race')).toEqual({ instances: 50, clusters: 50, cpus: 50 });
    expect((await setup.listClusters()).filter((c) => c.owner === 'race')).toHaveLength(50);
    await setup.close();
  }, 60_000);
});

describe('audit trail', () => {
  it('records state-changing requests (owner, role, route pattern, target, result) for admins to list, filter and page', async () => {
    const since = new Date().toISOString();
    const ivy = await user('ivy');
    const def = await definition(ivy, 'audited', [{ name: 'workers', min: 1, cpus: 1 }]);
    const created = await submit(ivy, def);
    expect(created.status).toBe(202);
    const id: string = created.body.id;
    expect((await stack.http('DELETE', `/v1/clusters/${id}`, undefined, ivy.auth)).status).toBe(202);
    expect((await stack.http('PUT', '/v1/owners/ivy/quota', DEFAULT_QUOTA, ivy.auth)).status).toBe(403);
    await setQuota('ivy', { maxInstances: 50, maxClusters: 5, maxCpus: 50 });
    const ctx = await stack.http('POST', '/v1/contexts', { name: 'ivy-ctx' }, ivy.auth);
    expect(ctx.status).toBe(201);
    const pairing = await stack.http('POST', `/v1/contexts/${ctx.body.id}/pairings`, {}, ivy.auth);
    expect(pairing.status).toBe(201);
    // Reads are not audited.
    await stack.http('GET', `/v1/clusters/${id}`, undefined, ivy.auth);

    const mine = await stack.http('GET', `/v1/audit?owner=ivy&since=${encodeURIComponent(since)}`);
    expect(mine.status).toBe(200);
    const records = mine.body.items as any[];
    // Newest first.
    expect(records.map((r) => [r.route, r.target, r.result])).toEqual([
      ['POST /v1/contexts/:id/pairings', ctx.body.id, 201],
      ['POST /v1/contexts', ctx.body.id, 201],
      ['PUT /v1/owners/:owner/quota', 'ivy', 403],
      ['DELETE /v1/clusters/:id', id, 202],
      ['POST /v1/clusters', id, 202],
      ['POST /v1/cluster-definitions', def, 201],
    ]);
    for (const r of records) {
      expect(r).toMatchObject({ owner: 'ivy', role: 'user', tokenId: expect.stringMatching(/^tok-/), at: expect.any(String), id: expect.any(Number) });
      expect(r.at >= since).toBe(true);
    }
    const everything = JSON.stringify(records);
    expect(everything).not.toContain(ivy.token);
    expect(everything).not.toContain(pairing.body.pin);

    // The admin's request about ivy is found by target; so is everything about the cluster.
    const aboutIvy = await stack.http('GET', '/v1/audit?target=ivy');
    expect((aboutIvy.body.items as any[]).map((r) => [r.owner, r.role, r.route, r.result])).toEqual([
      ['admin', 'admin', 'PUT /v1/owners/:owner/quota', 200],
      ['ivy', 'user', 'PUT /v1/owners/:owner/quota', 403],
    ]);
    const aboutCluster = await stack.http('GET', `/v1/audit?target=${id}`);
    expect((aboutCluster.body.items as any[]).map((r) => r.route)).toEqual(['DELETE /v1/clusters/:id', 'POST /v1/clusters']);

    // A scale is recorded by its pattern, never its values.
    const scales = await stack.http('GET', `/v1/audit?owner=finn&target=${finnCluster}`);
    const scaleRoutes = (scales.body.items as any[]).filter((r) => r.route.includes('scale'));
    expect(scaleRoutes.length).toBeGreaterThanOrEqual(5);
    expect(new Set(scaleRoutes.map((r) => r.route))).toEqual(new Set(['POST /v1/clusters/:id/services/:service/scale']));
    expect(scaleRoutes.map((r) => r.result)).toEqual(expect.arrayContaining([200, 403, 409]));

    // Time windows: until is exclusive, since inclusive.
    expect((await stack.http('GET', `/v1/audit?owner=ivy&until=${encodeURIComponent(since)}`)).body.items).toEqual([]);
    const middle = records[3].at as string; // the DELETE
    const upToDelete = await stack.http('GET', `/v1/audit?owner=ivy&since=${encodeURIComponent(since)}&until=${encodeURIComponent(middle)}`);
    expect((upToDelete.body.items as any[]).every((r) => r.at < middle)).toBe(true);
    expect((upToDelete.body.items as any[]).map((r) => r.route)).toContain('POST /v1/cluster-definitions');
    const later = new Date(Date.now() + 60_000).toISOString().replace('Z', '+00:00');
    expect((await stack.http('GET', `/v1/audit?owner=ivy&since=${encodeURIComponent(later)}`)).body.items).toEqual([]);

    // Pages: limit and cursor walk the same list.
    const walked: any[] = [];
    let cursor: string | undefined;
    do {
      const page = await stack.http('GET', `/v1/audit?owner=ivy&limit=4${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      expect(page.status).toBe(200);
      expect(page.body.items.length).toBeLessThanOrEqual(4);
      walked.push(...page.body.items);
      cursor = page.body.next;
    } while (cursor);
    expect(walked.map((r) => r.id)).toEqual(records.map((r) => r.id));

    // Bad queries are 422s naming the parameter; users get 403.
    const unknown = await stack.http('GET', '/v1/audit?owner=ivy&state=READY');
    expect(unknown.status).toBe(422);
    expect((unknown.body.errors as { field: string }[]).map((e) => e.field)).toEqual(['state']);
    for (const q of ['since=yesterday', 'until=2026-01-01', 'limit=0', 'cursor=nope']) {
      const bad = await stack.http('GET', `/v1/audit?${q}`);
      expect(bad.status).toBe(422);
      expect((bad.body.errors as { field: string }[]).map((e) => e.field)).toEqual([q.split('=')[0]]);
    }
    const forbidden = await stack.http('GET', '/v1/audit', undefined, ivy.auth);
    expect(forbidden.status).toBe(403);
    expect(forbidden.body.items).toBeUndefined();
  });

  it('writes one audit log line per state-changing request, with owner, route, target and result and no token', async () => {
    const kim = await user('kim');
    const def = await definition(kim, 'logged', [{ name: 'workers', min: 1, cpus: 1 }]);
    const created = await submit(kim, def);
    expect(created.status).toBe(202);
    // Refused before anyone is known: a line without an owner, nothing stored.
    const anonymous = await stack.http('DELETE', `/v1/clusters/${created.body.id}`, undefined, { Authorization: 'Bearer cg_not-a-token' });
    expect(anonymous.status).toBe(401);
    expect((await clusterStatus(stack, created.body.id)).state).not.toBe('TERMINATING');

    const text = await waitFor(async () => {
      const t = readFileSync(path.join(stack.dataDir, 'api.log'), 'utf8');
      return t.includes(created.body.id) ? t : undefined;
    }, 10_000, 'the audit line');
    const lines = text
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.audit === true);
    const kims = lines.filter((l) => l.owner === 'kim');
    expect(kims.map((l) => [l.route, l.target, l.result])).toEqual([
      ['POST /v1/cluster-definitions', def, 201],
      ['POST /v1/clusters', created.body.id, 202],
    ]);
    for (const l of kims) expect(l).toMatchObject({ role: 'user', tokenId: expect.stringMatching(/^tok-/), at: expect.any(String), msg: 'audit' });
    const anon = lines.filter((l) => l.owner === undefined && l.result === 401);
    expect(anon.map((l) => l.route)).toContain('DELETE (no route)');
    expect((await stack.http('GET', `/v1/audit?target=${created.body.id}`)).body.items).toHaveLength(1);
    // No token value, of anyone, anywhere in the log.
    expect(text).not.toContain(kim.token);
    expect(text).not.toContain(stack.adminToken);
    expect(text).not.toContain('cg_not-a-token');
    // One line per state-changing request: the token issued for kim, the definition, the cluster, the 401.
    expect(lines.filter((l) => l.target === created.body.id)).toHaveLength(1);
  });
});
