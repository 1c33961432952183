/**
 * The API against a real Temporal dev server and no worker: every bad input gets its 4xx
 * problem+json naming the field or rule, and leaves nothing behind (no store rows, no
 * workflows). Then the cluster lifecycle calls that need no worker (create, idempotent
 * replay, list, status from the store, teardown, rollback when the start fails).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Client } from '@temporalio/client';
import supertest, { type Response } from 'supertest';
import type { App } from 'supertest/types.js';
import { ApiFixture, asAdmin } from './api-fixture.js';
import { createApp, type CloudgateApp } from '../api/app.js';
import { signToken } from '../model/token.js';
import { openSqliteStore, type Store } from '../store/index.js';
import { clusterWorkflowId, SA_CLUSTER_ID, SA_STATE } from '../workflows/messages.js';

const api = new ApiFixture('api');
const { config } = api;
let temporal: Client;
let store: Store;
let app: CloudgateApp;
/** Every call as an admin: the API needs a bearer (api/auth.ts). */
const request = (a: App) => asAdmin(a, store);
const now = () => Math.floor(Date.now() / 1000);

beforeAll(async () => {
  ({ temporal, store, app } = await api.start(() => openSqliteStore(':memory:'), { readinessBatching: { maxDelayMs: 5 } }));
  await store.upsertCloud({ name: 'sim', kind: 'sim', offerings: [{ id: 'small', name: 'small', cpus: 1, memoryMiB: 2048, diskGiB: 20 }], images: ['cernvm', 'cernvm4', 'i'] });
});

afterAll(() => api.stop());

const offering = { cpus: 1, memoryMiB: 2048, diskGiB: 20 };
const svc = (name: string, extra: Record<string, unknown> = {}) => ({ name, image: 'cernvm4', offering, ...extra });
const validDefinition = {
  name: 't3-box',
  services: [svc('proxy'), svc('workers', { min: 2, max: 5, dependsOn: ['proxy'] })],
};

/** Asserts a problem+json response and returns its body. */
function problem(res: Response, status: number) {
  expect({ status: res.status, body: res.body as unknown }).toMatchObject({ status });
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  const body = res.body as { type: string; title: string; status: number; detail: string; instance?: string; errors?: { field: string; message: string }[] };
  expect(body).toMatchObject({ status, type: expect.any(String), title: expect.any(String), detail: expect.any(String) });
  expect(JSON.stringify(body)).not.toMatch(/\n\s+at /); // no stack traces
  return body;
}
const fields = (res: Response) => ((res.body as { errors?: { field: string }[] }).errors ?? []).map((e) => e.field);
const messageFor = (res: Response, field: string) => (res.body as { errors: { field: string; message: string }[] }).errors.find((e) => e.field === field)?.message;

const postDef = (body: unknown) => request(app).post('/v1/cluster-definitions').send(body as object);

describe('bad input gets a 4xx problem naming the field, and leaves nothing behind', () => {
  it('malformed JSON → 400 naming the body', async () => {
    const res = await request(app).post('/v1/cluster-definitions').set('Content-Type', 'application/json').send('{"name": "x",');
    const p = problem(res, 400);
    expect(p.detail).toMatch(/body is not valid JSON/);
    expect(fields(res)).toEqual(['body']);
  });

  it('a body that is not JSON → 415; no body → 400; an empty JSON body → 422', async () => {
    problem(await request(app).post('/v1/cluster-definitions').set('Content-Type', 'text/plain').send('name=x'), 415);
    let res = await request(app).post('/v1/clusters');
    problem(res, 400);
    expect(fields(res)).toEqual(['body']);
    // An empty JSON body parses as {}: its required fields are named.
    res = await request(app).post('/v1/clusters').set('Content-Type', 'application/json');
    problem(res, 422);
    expect(fields(res)).toEqual(['definitionId']);
  });

  it('a body too large → 413', async () => {
    const huge = { ...validDefinition, description: 'x'.repeat(2_000_000) };
    problem(await postDef(huge), 413);
  });

  it('wrong types → 422 naming each field', async () => {
    const res = await postDef({ name: 42, services: [svc('proxy', { offering: { cpus: 'two', memoryMiB: 2048, diskGiB: 20 }, min: 1.5 })] });
    problem(res, 422);
    expect(fields(res)).toEqual(expect.arrayContaining(['name', 'services[0].offering.cpus', 'services[0].min']));
  });

  it('missing fields → 422 naming each', async () => {
    const res = await postDef({ services: [{ name: 'proxy' }] });
    problem(res, 422);
    expect(fields(res)).toEqual(expect.arrayContaining(['name', 'services[0].image', 'services[0].offering']));
  });

  it('unknown fields → 422 naming them (definitions are strict)', async () => {
    const res = await postDef({ ...validDefinition, colour: 'blue' });
    problem(res, 422);
    expect(fields(res)).toEqual(['colour']);
  });

  it('unknown dependency → 422 at services[i].dependsOn[j]', async () => {
    const res = await postDef({ name: 'x', services: [svc('a'), svc('b', { dependsOn: ['a', 'nope'] })] });
    problem(res, 422);
    expect(fields(res)).toEqual(['services[1].dependsOn[1]']);
    expect(messageFor(res, 'services[1].dependsOn[1]')).toMatch(/unknown dependency "nope"/);
  });

  it('a dependency cycle → 422 spelling the cycle out', async () => {
    const res = await postDef({ name: 'x', services: [svc('a', { dependsOn: ['b'] }), svc('b', { dependsOn: ['a'] })] });
    const p = problem(res, 422);
    expect(messageFor(res, 'services')).toContain('a → b → a');
    expect(p.detail).toContain('a → b → a');
  });

  it('duplicate service names → 422', async () => {
    const res = await postDef({ name: 'x', services: [svc('a'), svc('a')] });
    problem(res, 422);
    expect(fields(res)).toEqual(['services[1].name']);
    expect(messageFor(res, 'services[1].name')).toMatch(/duplicate service name "a"/);
  });

  it('min > max → 422', async () => {
    const res = await postDef({ name: 'x', services: [svc('a', { min: 5, max: 2 })] });
    problem(res, 422);
    expect(messageFor(res, 'services[0].min')).toMatch(/min \(5\) is greater than max \(2\)/);
  });

  it('unknown definition id → 404', async () => {
    problem(await request(app).get('/v1/cluster-definitions/def-000000000000'), 404);
  });

  it('create cluster: unknown definitionId and unknown cloud → 422 naming both', async () => {
    const res = await request(app).post('/v1/clusters').send({ definitionId: 'def-000000000000', cloud: 'mars' });
    problem(res, 422);
    expect(fields(res)).toEqual(['definitionId', 'cloud']);
    expect(messageFor(res, 'cloud')).toMatch(/unknown cloud "mars" \(registered: sim\)/);
  });

  it('create cluster: bad body shapes → 422', async () => {
    let res = await request(app).post('/v1/clusters').send({ definitionId: 'def-1', name: 'Not A Name', extra: 1 });
    problem(res, 422);
    expect(fields(res)).toEqual(expect.arrayContaining(['name', 'extra']));
    res = await request(app).post('/v1/clusters').send({});
    problem(res, 422);
    expect(fields(res)).toEqual(['definitionId']);
    res = await request(app).post('/v1/clusters').set('Content-Type', 'application/json').send('[1,');
    problem(res, 400);
  });

  it('create cluster: a bad Idempotency-Key → 422 naming the header', async () => {
    const res = await request(app).post('/v1/clusters').set('Idempotency-Key', 'has spaces in it').send({ definitionId: 'def-1' });
    problem(res, 422);
    expect(fields(res)).toEqual(['Idempotency-Key']);
  });

  it('unknown cluster → 404 on every cluster route', async () => {
    problem(await request(app).get('/v1/clusters/nope-abcdef'), 404);
    problem(await request(app).delete('/v1/clusters/nope-abcdef'), 404);
    problem(await request(app).post('/v1/clusters/nope-abcdef/services/a/scale').send({ instances: 1 }), 404);
    problem(await request(app).get('/v1/clusters/..%2F..%2Fetc'), 404);
  });

  it('readiness without a valid token → 401 with WWW-Authenticate, nothing signalled', async () => {
    const iid = 'c1-abcdef-workers-0';
    const good = { iid, cluster: 'c1-abcdef', service: 'workers', exp: now() + 600 };
    const url = `/v1/instances/${iid}/readiness`;
    const body = { status: 'ok', checks: { cvmfs: 'ok' } };
    const cases: [string, string | undefined, RegExp][] = [
      ['no header', undefined, /Authorization: Bearer/],
      ['not bearer', 'Basic dXNlcjpwYXNz', /Authorization: Bearer/],
      ['garbage', 'Bearer garbage', /malformed token/],
      ['wrong secret', `Bearer ${signToken(good, 'another-secret-0123456789')}`, /bad signature/],
      ['expired', `Bearer ${signToken({ ...good, exp: now() - 1 }, config.tokenSecret)}`, /token expired/],
      ['other instance', `Bearer ${signToken({ ...good, iid: 'c1-abcdef-workers-1' }, config.tokenSecret)}`, /another instance/],
    ];
    for (const [label, auth, why] of cases) {
      // A public route: anonymous here, only the guest's own token counts.
      const req = supertest(app).post(url);
      if (auth) void req.set('Authorization', auth);
      const res = await req.send(body);
      const p = problem(res, 401);
      expect({ label, detail: p.detail }).toEqual({ label, detail: expect.stringMatching(why) });
      expect(res.headers['www-authenticate']).toMatch(/^Bearer/);
    }
  });

  it('drain notice and load reports with a phone-home token: 401 unless signed and its instance lives', async () => {
    const iid = 'c1-abcdef-workers-0';
    const good = { iid, cluster: 'c1-abcdef', service: 'workers', exp: now() + 600 };
    const cases: [string, string | undefined, RegExp][] = [
      ['no header', undefined, /Authorization: Bearer/],
      ['garbage', 'Bearer garbage', /malformed token/],
      ['wrong secret', `Bearer ${signToken(good, 'another-secret-0123456789')}`, /bad signature/],
      ['other instance', `Bearer ${signToken({ ...good, iid: 'c1-abcdef-workers-1' }, config.tokenSecret)}`, /another instance/],
      // Signed and young, but the read model has never seen the instance: not live.
      ['unknown instance', `Bearer ${signToken(good, config.tokenSecret)}`, /instance c1-abcdef-workers-0 is not \(or no longer\) in its cluster/],
    ];
    for (const [label, auth, why] of cases) {
      const req = supertest(app).get(`/v1/instances/${iid}/notice`);
      if (auth) void req.set('Authorization', auth);
      const p = problem(await req, 401);
      expect({ label, detail: p.detail }).toEqual({ label, detail: expect.stringMatching(why) });
    }
    // The load route: the same judgement (an API token's routes never see a phone-home token).
    const load = await request(app).post('/v1/clusters/c1-abcdef/services/workers/load').set('Authorization', `Bearer ${signToken(good, config.tokenSecret)}`).send({ queued: 1, running: 0 });
    expect(problem(load, 401).detail).toMatch(/not \(or no longer\) in its cluster/);
  });

  it('readiness with a valid token but a bad body → 422; for a service that is not running → 410', async () => {
    const iid = 'c1-abcdef-workers-0';
    const token = signToken({ iid, cluster: 'c1-abcdef', service: 'workers', exp: now() + 600 }, config.tokenSecret);
    const url = `/v1/instances/${iid}/readiness`;
    let res = await request(app).post(url).set('Authorization', `Bearer ${token}`).send({ status: 'great' });
    problem(res, 422);
    expect(fields(res)).toEqual(['status']);
    res = await request(app).post(url).set('Authorization', `Bearer ${token}`).send({ status: 'ok' });
    problem(res, 410);
  });

  it('unknown routes and bad paths → 4xx problems', async () => {
    problem(await request(app).get('/v1/nothing-here'), 404);
    // A known path with a method it does not take: 405 naming the ones it does.
    const wrong = await request(app).put('/v1/clusters');
    problem(wrong, 405);
    expect(wrong.headers.allow).toBe('GET, HEAD, POST');
    expect((await request(app).patch('/v1/contexts/ctx-000000000000')).headers.allow).toBe('DELETE, GET, HEAD, PUT');
    problem(await request(app).get('/v1/cluster-definitions/%E0%A4%A'), 400);
  });

  it('stored nothing and started no workflow', async () => {
    expect(await store.listDefinitions()).toEqual([]);
    expect(await store.listClusters()).toEqual([]);
    const started: string[] = [];
    for await (const wf of temporal.workflow.list()) started.push(wf.workflowId);
    expect(started).toEqual([]);
  });
});

describe('definitions, scale checks and cluster creation', () => {
  let defId: string;

  it('stores a valid definition → 201 + Location, then GET returns it', async () => {
    const res = await postDef(validDefinition);
    expect(res.status).toBe(201);
    defId = (res.body as { id: string }).id;
    expect(defId).toMatch(/^def-[0-9a-f]{12}$/);
    expect(res.headers.location).toBe(`/v1/cluster-definitions/${defId}`);
    expect(res.body).toMatchObject({ name: 't3-box', definition: { failurePolicy: 'keep', services: [{ name: 'proxy', min: 1, dependsOn: [] }, {}] } });
    const got = await request(app).get(`/v1/cluster-definitions/${defId}`);
    expect(got.status).toBe(200);
    expect(got.body).toEqual(res.body);
    const list = await request(app).get('/v1/cluster-definitions');
    expect(list.body).toEqual({ items: [res.body] });
  });

  it('unknown cloud for a known definition → 422 naming cloud, nothing stored', async () => {
    const res = await request(app).post('/v1/clusters').send({ definitionId: defId, cloud: 'ec2' });
    problem(res, 422);
    expect(fields(res)).toEqual(['cloud']);
    expect(await store.listClusters()).toEqual([]);
  });

  it('a service no offering of the cloud fits → 422 naming the cloud and service, nothing stored', async () => {
    const big = await request(app)
      .post('/v1/cluster-definitions')
      .send({ name: 'too-big', services: [{ name: 'fat', image: 'cernvm', offering: { cpus: 64, memoryMiB: 2048, diskGiB: 20 } }] });
    expect(big.status).toBe(201);
    const res = await request(app).post('/v1/clusters').send({ definitionId: big.body.id });
    problem(res, 422);
    expect(messageFor(res, 'cloud')).toMatch(/no offering of cloud "sim" fits service "fat" \(64 cpus.*largest is small \(1 cpus/);
    expect(await store.listClusters()).toEqual([]);
  });

  it('scale: checked against the definition before any workflow call', async () => {
    // A row without a workflow: the checks below must answer before Temporal is asked.
    await store.createCluster({ id: 't3-box-zzzzzz', name: 't3-box', definitionId: defId, cloud: 'sim' });
    try {
      const url = (svcName: string) => `/v1/clusters/t3-box-zzzzzz/services/${svcName}/scale`;
      problem(await request(app).post(url('nope')).send({ instances: 1 }), 404);
      let res = await request(app).post(url('workers')).send({ instances: -1 });
      problem(res, 422);
      expect(fields(res)).toEqual(['instances']);
      res = await request(app).post(url('workers')).send({ instances: 'three' });
      problem(res, 422);
      expect(fields(res)).toEqual(['instances']);
      res = await request(app).post(url('workers')).send({ instances: 2, force: true });
      problem(res, 422);
      expect(fields(res)).toEqual(['force']);
      res = await request(app).post(url('workers')).send({ instances: 1 });
      problem(res, 422);
      expect(messageFor(res, 'instances')).toMatch(/at least the service's min \(2\)/);
      res = await request(app).post(url('workers')).send({ instances: 6 });
      problem(res, 422);
      expect(messageFor(res, 'instances')).toMatch(/at most the service's max \(5\)/);
      // Past the checks the update needs a worker; without one the answer is a quick 503.
      const p = problem(await request(app).post(url('workers')).send({ instances: 3 }), 503);
      expect(p.detail).toMatch(/worker is not reachable/);
    } finally {
      await store.deleteCluster('t3-box-zzzzzz');
    }
  });

  it('rolls the row back when the workflow cannot be started → 503', async () => {
    const broken = createApp({ store, temporal: new Client({ connection: api.connection, namespace: 'no-such-namespace' }), config });
    const res = await request(broken).post('/v1/clusters').send({ definitionId: defId });
    problem(res, 503);
    expect(await store.listClusters()).toEqual([]);
    await broken.drain();
  });

  let clusterId: string;
  it('creates a cluster → 202 and starts its workflow with search attributes and summary', async () => {
    const res = await request(app).post('/v1/clusters').set('Idempotency-Key', 'req-1').send({ definitionId: defId, name: 'qa' });
    expect(res.status).toBe(202);
    const body = res.body as { id: string; name: string; state: string; links: { self: string; temporalUi: string } };
    clusterId = body.id;
    expect(clusterId).toMatch(/^qa-[0-9a-z]{6}$/);
    expect(body).toEqual({
      id: clusterId,
      name: 'qa',
      state: 'PENDING',
      links: {
        self: `/v1/clusters/${clusterId}`,
        temporalUi: `http://127.0.0.1:8233/namespaces/default/workflows/${encodeURIComponent(`cluster/${clusterId}`)}`,
      },
    });
    const desc = await temporal.workflow.getHandle(clusterWorkflowId(clusterId)).describe();
    expect(desc.type).toBe('ClusterWorkflow');
    expect(desc.taskQueue).toBe(config.taskQueue);
    expect(desc.typedSearchAttributes.get(SA_CLUSTER_ID)).toBe(clusterId);
    expect(desc.typedSearchAttributes.get(SA_STATE)).toBe('PENDING');
    expect(await desc.staticSummary()).toBe('cluster qa from t3-box on sim: 2 services, 3 instances min');
  });

  it('replays the same Idempotency-Key and body → same cluster; a different body → 422 naming the header', async () => {
    const again = await request(app).post('/v1/clusters').set('Idempotency-Key', 'req-1').send({ definitionId: defId, name: 'qa', cloud: 'sim' });
    expect(again.status).toBe(202);
    expect((again.body as { id: string }).id).toBe(clusterId);
    expect(await store.listClusters()).toHaveLength(1);
    const other = await request(app).post('/v1/clusters').set('Idempotency-Key', 'req-1').send({ definitionId: defId, name: 'qa2' });
    problem(other, 422);
    expect(fields(other)).toEqual(['Idempotency-Key']);
    // A lifetime is part of the request too.
    const longer = await request(app).post('/v1/clusters').set('Idempotency-Key', 'req-1').send({ definitionId: defId, name: 'qa', lifetime: { idleSeconds: 600 } });
    problem(longer, 422);
    expect(fields(longer)).toEqual(['Idempotency-Key']);
    expect(await store.listClusters()).toHaveLength(1);
  });

  it('defaults the cluster name to the definition name and keeps long ids ≤ 40 chars', async () => {
    const longName = `a${'-b'.repeat(19)}`; // 39 characters
    const res = await request(app).post('/v1/clusters').send({ definitionId: defId, name: longName });
    expect(res.status).toBe(202);
    const id = (res.body as { id: string }).id;
    expect(id.length).toBeLessThanOrEqual(40);
    expect(id).toMatch(/^[a-z][a-z0-9-]*[a-z0-9]$/);
    expect(id).not.toMatch(/--/);
    const plain = await request(app).post('/v1/clusters').send({ definitionId: defId });
    expect((plain.body as { id: string; name: string }).name).toBe('t3-box');
  });

  it('lists clusters with their workflow state', async () => {
    const res = await request(app).get('/v1/clusters');
    expect(res.status).toBe(200);
    const items = (res.body as { items: { id: string; state: string; definitionId: string; cloud: string; createdAt: string }[] }).items;
    expect(items).toHaveLength(3);
    expect(items[0]).toMatchObject({ id: clusterId, name: 'qa', definitionId: defId, cloud: 'sim', state: 'PENDING', createdAt: expect.any(String) });
  });

  it('status without a worker → 200 from the store (PENDING until the workflow publishes)', async () => {
    const res = await request(app).get(`/v1/clusters/${clusterId}`);
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ id: clusterId, state: 'PENDING', services: [], seq: 0 });
  });

  it('teardown → 202 TERMINATING (a signal needs no worker)', async () => {
    const res = await request(app).delete(`/v1/clusters/${clusterId}`);
    expect(res.status).toBe(202);
    expect(res.body).toMatchObject({ id: clusterId, state: 'TERMINATING', links: { self: `/v1/clusters/${clusterId}` } });
  });

  it('teardown of a closed workflow → 202 with its final state', async () => {
    await temporal.workflow.getHandle(clusterWorkflowId(clusterId)).terminate('test');
    const res = await request(app).delete(`/v1/clusters/${clusterId}`);
    expect(res.status).toBe(202);
    expect(res.body).toMatchObject({ id: clusterId, state: 'FAILED' });
    // And a replayed create does not resurrect it.
    const again = await request(app).post('/v1/clusters').set('Idempotency-Key', 'req-1').send({ definitionId: defId, name: 'qa' });
    expect(again.status).toBe(202);
    const desc = await temporal.workflow.getHandle(clusterWorkflowId(clusterId)).describe();
    expect(desc.status.name).toBe('TERMINATED');
  });
});

describe('service endpoints', () => {
  it('/healthz → 200', async () => {
    const res = await request(app).get('/healthz');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: 'ok', checks: { store: 'ok', temporal: 'ok' } });
  });

  it('/v1/clouds lists registered clouds with credential references, never values', async () => {
    await store.upsertCloud({
      name: 'zz-ec2',
      kind: 'ec2',
      endpoint: 'https://ec2.eu-west-1.amazonaws.com',
      credentials: { accessKeyId: 'env:AWS_ACCESS_KEY_ID', secretAccessKey: 'file:/etc/cloudgate/aws-secret' },
      offerings: [{ id: 't3.micro', name: 't3.micro', cpus: 2, memoryMiB: 1024, diskGiB: 1000 }],
    });
    const withRefs = await request(app).get('/v1/clouds');
    expect(withRefs.body.items[1]).toMatchObject({ name: 'zz-ec2', credentials: { secretAccessKey: 'file:/etc/cloudgate/aws-secret' } });
    await store.deleteCloud('zz-ec2');
    const res = await request(app).get('/v1/clouds');
    // With what the capacity ledger holds there (nothing yet).
    expect(res.body).toEqual({
      items: [
        {
          name: 'sim',
          kind: 'sim',
          offerings: [{ id: 'small', name: 'small', cpus: 1, memoryMiB: 2048, diskGiB: 20 }],
          images: ['cernvm', 'cernvm4', 'i'],
          usage: { instances: 0, cpus: 0, memoryMiB: 0 },
        },
      ],
    });
  });

  it('/openapi.json is an OpenAPI 3.1 document covering every route', async () => {
    const res = await request(app).get('/openapi.json');
    expect(res.status).toBe(200);
    const doc = res.body as { openapi: string; paths: Record<string, Record<string, unknown>>; components: { schemas: Record<string, unknown> } };
    expect(doc.openapi).toMatch(/^3\.1\./);
    const routes = Object.entries(doc.paths).flatMap(([p, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${p}`));
    expect(routes.sort()).toEqual(
      [
        'POST /v1/cluster-definitions',
        'GET /v1/cluster-definitions',
        'GET /v1/cluster-definitions/{id}',
        'DELETE /v1/cluster-definitions/{id}',
        'GET /v1/clusters/{id}/services/{service}',
        'POST /v1/clusters',
        'GET /v1/clusters',
        'GET /v1/clusters/{id}',
        'GET /v1/clusters/{id}/instances',
        'GET /v1/clusters/{id}/events',
        'DELETE /v1/clusters/{id}',
        'POST /v1/clusters/{id}/services/{service}/scale',
        'PUT /v1/clusters/{id}',
        'POST /v1/instances/{instanceId}/readiness',
        'GET /v1/instances/{instanceId}/notice',
        'POST /v1/contexts',
        'GET /v1/contexts',
        'GET /v1/contexts/{id}',
        'PUT /v1/contexts/{id}',
        'GET /v1/contexts/{id}/versions',
        'GET /v1/contexts/{id}/preview',
        'DELETE /v1/contexts/{id}',
        'POST /v1/tokens',
        'GET /v1/tokens',
        'DELETE /v1/tokens/{id}',
        'GET /v1/me',
        'GET /v1/login-options',
        'PUT /v1/owners/{owner}/quota',
        'GET /v1/owners/{owner}/quota',
        'GET /v1/audit',
        'POST /v1/contexts/{id}/pairings',
        'GET /v1/pair/{pin}',
        'GET /v1/clouds',
        'POST /v1/clouds/{id}/refresh',
        'POST /v1/clusters/{id}/keepalive',
        'POST /v1/clusters/{id}/retry',
        'POST /v1/clusters/{id}/pause',
        'POST /v1/clusters/{id}/resume',
        'POST /v1/clusters/{id}/services/{service}/load',
        'POST /v1/clusters/{id}/extend',
        'GET /healthz',
        'GET /metrics',
        'GET /openapi.json',
      ].sort(),
    );
    expect(Object.keys(doc.components.schemas)).toEqual(expect.arrayContaining(['ClusterDefinition', 'Problem', 'ClusterDetail']));
  });
});
