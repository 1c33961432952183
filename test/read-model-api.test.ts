/**
 * The read routes against a real Temporal dev server and no worker: what the workflows
 * publish to the store (published here through the store's own methods, as the publish
 * activities do) is what `GET /v1/clusters/:id`, `/instances` and `/events` answer, with an
 * ETag and 304s, paging and filters, 422s naming the field and 404s, and a PENDING answer of
 * the same shape before anything was published.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { Response } from 'supertest';
import type { App } from 'supertest/types.js';
import { ApiFixture, asAdmin } from './api-fixture.js';
import type { CloudgateApp } from '../api/app.js';
import type { ClusterEvent, PublishClusterInput, PublishedInstance, PublishedService, PublishServiceInput } from '../model/read-model.js';
import type { InstanceState } from '../model/status.js';
import { openSqliteStore, type Store } from '../store/index.js';

// Nothing ever polls its task queue: every answer below is given with no worker.
const api = new ApiFixture('read-model');
let store: Store;
let app: CloudgateApp;
/** Every call as an admin: the API needs a bearer (api/auth.ts). */
const request = (a: App) => asAdmin(a, store);

const offering = { cpus: 1, memoryMiB: 2048, diskGiB: 20 };
let defId: string;

beforeAll(async () => {
  ({ store, app } = await api.start(() => openSqliteStore(path.join(api.dir, 'store', 'cloudgate.sqlite'))));
  await store.upsertCloud({ name: 'sim', kind: 'sim', offerings: [{ id: 'small', name: 'small', ...offering }], images: ['cernvm', 'cernvm4'] });
  const def = await request(app)
    .post('/v1/cluster-definitions')
    .send({
      name: 'farm',
      services: [
        { name: 'proxy', image: 'cernvm4', offering },
        { name: 'workers', image: 'cernvm4', offering, min: 2, max: 50, dependsOn: ['proxy'] },
        { name: 'monitor', image: 'cernvm4', offering, dependsOn: ['workers'] },
      ],
    });
  expect(def.status).toBe(201);
  defId = (def.body as { id: string }).id;
});

afterAll(() => api.stop());

/** Starts a cluster through the API (its workflow starts; no worker runs it). */
async function submit(name: string): Promise<string> {
  const res = await request(app).post('/v1/clusters').send({ definitionId: defId, name });
  expect(res.status).toBe(202);
  return (res.body as { id: string }).id;
}

const at = (s: number) => new Date(Date.UTC(2030, 0, 1, 12, 0, s)).toISOString();
const summary = (name: string, extra: Partial<PublishedService> = {}): PublishedService => ({
  name,
  state: 'DEPLOYING',
  desired: 1,
  ready: 0,
  replacements: 0,
  ...extra,
});
const instance = (clusterId: string, service: string, ordinal: number, state: InstanceState = 'BOOTING'): PublishedInstance => ({
  id: `${clusterId}-${service}-${ordinal}`,
  name: `${clusterId}-${service}-${ordinal}`,
  service,
  ordinal,
  state,
  cloud: 'sim',
  cloudInstanceId: `sim-${service}-${ordinal}`,
  createdAt: at(ordinal),
  ...(state === 'READY' && { readyAt: at(ordinal + 30) }),
});
const event = (message: string, extra: Partial<ClusterEvent> = {}): ClusterEvent => ({ at: at(0), kind: 'state', message, ...extra });
const publishCluster = (clusterId: string, seq: number, extra: Partial<PublishClusterInput> = {}) =>
  store.publishCluster({ clusterId, seq, observedAt: at(seq), state: 'DEPLOYING', services: [], events: [], ...extra });
const publishService = (clusterId: string, service: string, seq: number, extra: Partial<PublishServiceInput> = {}) =>
  store.publishService({ clusterId, service, seq, observedAt: at(seq), summary: summary(service), upserts: [], removed: [], events: [], ...extra });

/** Asserts a problem+json answer and returns the fields its errors name. */
function problem(res: Response, status: number): string[] {
  expect({ status: res.status, body: res.body as unknown }).toMatchObject({ status });
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  return ((res.body as { errors?: { field: string }[] }).errors ?? []).map((e) => e.field);
}

interface PageBody<T> {
  items: T[];
  next?: string;
}

/** Follows `next` from the first page; returns the pages. */
async function pages<T>(url: string, query: Record<string, string | number>): Promise<T[][]> {
  const out: T[][] = [];
  let cursor: string | undefined;
  do {
    const res = await request(app)
      .get(url)
      .query({ ...query, ...(cursor !== undefined && { cursor }) });
    expect(res.status).toBe(200);
    const body = res.body as PageBody<T>;
    out.push(body.items);
    cursor = body.next;
  } while (cursor !== undefined);
  return out;
}

describe('GET /v1/clusters/:id from the read model, with no worker', () => {
  it('before any publish: PENDING from the search attribute, seq 0, no observedAt, no ETag', async () => {
    const id = await submit('fresh');
    const res = await request(app).get(`/v1/clusters/${id}`);
    expect(res.status).toBe(200);
    expect(res.headers.etag).toBeUndefined();
    expect(res.body).toEqual({
      id,
      name: 'fresh',
      owner: 'admin',
      definitionId: defId,
      cloud: 'sim',
      state: 'PENDING',
      message: expect.stringMatching(/has not published its state yet/),
      services: [],
      links: {
        self: `/v1/clusters/${id}`,
        temporalUi: expect.stringContaining(encodeURIComponent(`cluster/${id}`)),
        instances: `/v1/clusters/${id}/instances`,
        events: `/v1/clusters/${id}/events`,
      },
      seq: 0,
    });
    // The instances and events of a cluster that published nothing are empty lists, not errors.
    expect((await request(app).get(`/v1/clusters/${id}/instances`)).body).toEqual({ items: [] });
    expect((await request(app).get(`/v1/clusters/${id}/events`)).body).toEqual({ items: [] });
    // The same cluster's scale needs the worker: proof that none runs.
    const scale = await request(app).post(`/v1/clusters/${id}/services/workers/scale`).send({ instances: 3 });
    expect(scale.status).toBe(503);
  });

  it('a cluster row without a workflow answers PENDING saying so', async () => {
    await store.createCluster({ id: 'orphan-aaaaaa', name: 'orphan', definitionId: defId, cloud: 'sim' });
    const res = await request(app).get('/v1/clusters/orphan-aaaaaa');
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({ state: 'PENDING', message: expect.stringMatching(/has not started/), services: [], seq: 0 });
    expect(res.body).not.toHaveProperty('observedAt');
    await store.deleteCluster('orphan-aaaaaa');
  });

  it('answers what was published, each service from its own publish unless that is behind the cluster’s; no instances', async () => {
    const id = await submit('shown');
    expect(
      (await publishCluster(id, 3, {
        observedAt: at(10),
        state: 'FAILED',
        message: 'service workers failed',
        services: [
          summary('proxy', { state: 'READY', ready: 1 }),
          summary('workers', { state: 'FAILED', desired: 2, message: 'create failed: InvalidRequest' }),
          summary('monitor', { state: 'WAITING' }),
        ],
      })),
    ).toBe(true);
    // proxy: same state as the cluster's copy, fresher counts → its own publish.
    const proxy = summary('proxy', { state: 'READY', ready: 1, replacements: 2, message: 'proxy-0 never phoned home' });
    expect(await publishService(id, 'proxy', 2, { observedAt: at(5), summary: proxy, upserts: [instance(id, 'proxy', 1, 'READY')] })).toBe(true);
    // workers: another state than the cluster's copy and older than the cluster's publish (the
    // cluster heard of the failure before the workers' own publish landed) → the cluster's copy.
    expect(await publishService(id, 'workers', 7, { observedAt: at(4), summary: summary('workers', { state: 'DEPLOYING', desired: 2, ready: 1 }), upserts: [instance(id, 'workers', 0, 'READY')] })).toBe(true);
    // monitor: another state, but newer than the cluster's publish (its report is on its way) → its own.
    expect(await publishService(id, 'monitor', 1, { observedAt: at(11), summary: summary('monitor', { state: 'DEPLOYING' }) })).toBe(true);

    const res = await request(app).get(`/v1/clusters/${id}`);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({
      id,
      name: 'shown',
      owner: 'admin',
      definitionId: defId,
      cloud: 'sim',
      state: 'FAILED',
      message: 'service workers failed',
      services: [proxy, summary('workers', { state: 'FAILED', desired: 2, message: 'create failed: InvalidRequest' }), summary('monitor', { state: 'DEPLOYING' })],
      links: expect.objectContaining({ self: `/v1/clusters/${id}`, instances: `/v1/clusters/${id}/instances` }),
      observedAt: at(10),
      seq: 3,
    });
    expect(JSON.stringify(res.body)).not.toContain('"instances":[');

    // The list takes the state from the store too.
    const list = await request(app).get('/v1/clusters');
    const items = (list.body as { items: { id: string; state: string }[] }).items;
    expect(items.find((c) => c.id === id)?.state).toBe('FAILED');
  });

  it('shows a service that published before the cluster workflow listed it as it published itself', async () => {
    const id = await submit('early');
    expect(await publishService(id, 'proxy', 1, { summary: summary('proxy', { state: 'DEPLOYING', desired: 2 }) })).toBe(true);
    const before = await request(app).get(`/v1/clusters/${id}`);
    expect(before.body).toMatchObject({ state: 'PENDING', seq: 0, services: [summary('proxy', { state: 'DEPLOYING', desired: 2 })] });
    expect(await publishCluster(id, 1, { services: [summary('workers', { state: 'WAITING' })] })).toBe(true);
    const after = await request(app).get(`/v1/clusters/${id}`);
    expect((after.body as { services: PublishedService[] }).services).toEqual([summary('workers', { state: 'WAITING' }), summary('proxy', { state: 'DEPLOYING', desired: 2 })]);
  });

  it('carries a weak ETag that changes with every accepted publish; If-None-Match → 304', async () => {
    const id = await submit('tagged');
    expect(await publishCluster(id, 1, { services: [summary('proxy')] })).toBe(true);
    const first = await request(app).get(`/v1/clusters/${id}`);
    const etag = first.headers.etag;
    expect(etag).toMatch(/^W\/".+"$/);
    expect(first.headers['cache-control']).toBe('no-cache');

    const unchanged = await request(app).get(`/v1/clusters/${id}`).set('If-None-Match', etag);
    expect(unchanged.status).toBe(304);
    expect(unchanged.text).toBeFalsy();
    expect(unchanged.headers.etag).toBe(etag);
    // Any one of several tags, and the strong form of a weak tag, match (weak comparison).
    expect((await request(app).get(`/v1/clusters/${id}`).set('If-None-Match', `W/"other", ${etag}`)).status).toBe(304);
    expect((await request(app).get(`/v1/clusters/${id}`).set('If-None-Match', etag.slice(2))).status).toBe(304);
    expect((await request(app).get(`/v1/clusters/${id}`).set('If-None-Match', 'W/"other"')).status).toBe(200);

    // A rejected (stale) publish changes nothing, so the tag holds.
    expect(await publishCluster(id, 1, { state: 'READY' })).toBe(false);
    expect((await request(app).get(`/v1/clusters/${id}`).set('If-None-Match', etag)).status).toBe(304);

    // A service's publish alone changes the answer, and so the tag.
    expect(await publishService(id, 'proxy', 1, { summary: summary('proxy', { state: 'READY', ready: 1 }) })).toBe(true);
    const afterService = await request(app).get(`/v1/clusters/${id}`).set('If-None-Match', etag);
    expect(afterService.status).toBe(200);
    expect(afterService.headers.etag).not.toBe(etag);
    expect((afterService.body as { services: PublishedService[] }).services[0]).toMatchObject({ ready: 1 });

    expect(await publishCluster(id, 2, { state: 'READY', services: [summary('proxy', { state: 'READY', ready: 1 })] })).toBe(true);
    const afterCluster = await request(app).get(`/v1/clusters/${id}`).set('If-None-Match', afterService.headers.etag);
    expect(afterCluster.status).toBe(200);
    expect(afterCluster.body).toMatchObject({ state: 'READY', seq: 2 });
    expect(new Set([etag, afterService.headers.etag, afterCluster.headers.etag]).size).toBe(3);

    // A lost workflow task's publish replaced by its next attempt's (the same seq, later): a new answer, a new tag.
    expect(await publishCluster(id, 2, { observedAt: at(9), state: 'DEGRADED', services: [summary('proxy', { state: 'READY', ready: 1 })] })).toBe(true);
    const replaced = await request(app).get(`/v1/clusters/${id}`).set('If-None-Match', afterCluster.headers.etag);
    expect(replaced.status).toBe(200);
    expect(replaced.body).toMatchObject({ state: 'DEGRADED', seq: 2, observedAt: at(9) });
    expect(replaced.headers.etag).not.toBe(afterCluster.headers.etag);
  });

  it('404 for an unknown cluster', async () => {
    problem(await request(app).get('/v1/clusters/nope-000000'), 404);
    problem(await request(app).get('/v1/clusters/NOT_A_NAME'), 404);
  });
});

describe('GET /v1/clusters/:id/instances', () => {
  let id: string;
  const workerStates: InstanceState[] = ['READY', 'BOOTING', 'READY', 'FAILED', 'RUNNING'];
  beforeAll(async () => {
    id = await submit('paged');
    const workers = Array.from({ length: 23 }, (_, n) => instance(id, 'workers', n, workerStates[n % workerStates.length]));
    // Two publishes of workers (the second removes one), one of proxy.
    expect(await publishService(id, 'workers', 1, { upserts: workers.slice(0, 20) })).toBe(true);
    expect(await publishService(id, 'workers', 2, { upserts: workers.slice(20), removed: [workers[4].id] })).toBe(true);
    expect(await publishService(id, 'proxy', 1, { upserts: [instance(id, 'proxy', 0, 'READY')], events: [event('proxy-0 created'), event('proxy-0 ready')] })).toBe(true);
  });
  const url = () => `/v1/clusters/${id}/instances`;
  /** The workers' ordinals still published (4 was removed). */
  const workerOrdinals = (state?: InstanceState) =>
    Array.from({ length: 23 }, (_, n) => n).filter((n) => n !== 4 && (!state || workerStates[n % workerStates.length] === state));
  const expectedWorkers = (state?: InstanceState) => workerOrdinals(state).map((n) => `${id}-workers-${n}`);

  it('lists every instance by service, then ordinal, whole, a page at a time', async () => {
    const all = [`${id}-proxy-0`, ...expectedWorkers()];
    const one = await request(app).get(url());
    expect(one.status).toBe(200);
    expect(one.headers['content-type']).toMatch(/^application\/json/);
    const body = one.body as PageBody<PublishedInstance>;
    expect(body.next).toBeUndefined(); // default limit (100) holds them all
    expect(body.items.map((i) => i.id)).toEqual(all);
    expect(body.items[1]).toEqual(instance(id, 'workers', 0, 'READY'));

    for (const limit of [1, 5, 23]) {
      const got = await pages<PublishedInstance>(url(), { limit });
      expect(got.flat().map((i) => i.id)).toEqual(all);
      expect(got.length).toBe(Math.ceil(all.length / limit));
      expect(got.every((p) => p.length <= limit)).toBe(true);
    }
  });

  it('filters by service and state, also across pages', async () => {
    expect((await pages<PublishedInstance>(url(), { service: 'workers', state: 'READY', limit: 2 })).flat().map((i) => i.id)).toEqual(expectedWorkers('READY'));
    expect((await pages<PublishedInstance>(url(), { service: 'proxy' })).flat().map((i) => i.id)).toEqual([`${id}-proxy-0`]);
    expect((await pages<PublishedInstance>(url(), { state: 'FAILED', limit: 3 })).flat().map((i) => i.id)).toEqual(expectedWorkers('FAILED'));
    // A service of the definition with nothing published yet: an empty list.
    expect((await request(app).get(url()).query({ service: 'monitor' })).body).toEqual({ items: [] });
  });

  it('422 naming the field for a bad state, limit or cursor', async () => {
    expect(problem(await request(app).get(url()).query({ state: 'SLEEPING' }), 422)).toEqual(['state']);
    for (const limit of ['0', '1001', 'ten', '1.5', '-1', '']) {
      expect(problem(await request(app).get(url()).query({ limit }), 422)).toEqual(['limit']);
    }
    expect(problem(await request(app).get(url()).query({ cursor: 'garbage' }), 422)).toEqual(['cursor']);
    // An events cursor is no instances cursor.
    const events = (await request(app).get(`/v1/clusters/${id}/events`).query({ limit: 1 })).body as PageBody<ClusterEvent>;
    expect(events.next).toEqual(expect.any(String));
    expect(problem(await request(app).get(url()).query({ cursor: events.next }), 422)).toEqual(['cursor']);
    // Every bad field at once.
    expect(problem(await request(app).get(url()).query({ state: 'x', limit: '0' }), 422).sort()).toEqual(['limit', 'state']);
    // A repeated parameter is not one value.
    expect(problem(await request(app).get(`${url()}?state=READY&state=FAILED`), 422)).toEqual(['state']);
  });

  it('404 for an unknown cluster or a service the definition does not have', async () => {
    problem(await request(app).get('/v1/clusters/nope-000000/instances'), 404);
    problem(await request(app).get(url()).query({ service: 'database' }), 404);
    problem(await request(app).get(url()).query({ service: 'Not A Name' }), 404);
  });
});

describe('GET /v1/clusters/:id/events', () => {
  it('lists the events of accepted publishes, oldest first, a page at a time; rejected publishes add none', async () => {
    const id = await submit('logged');
    expect(await publishCluster(id, 1, { events: [event('deploying: checking CVMFS repositories')] })).toBe(true);
    expect(
      (await publishService(id, 'workers', 1, {
        events: [
          event('workers-0 created', { kind: 'scale', service: 'workers', instance: `${id}-workers-0`, at: at(1) }),
          event('workers-0 never phoned home; replaced by workers-1', { kind: 'replace', service: 'workers', instance: `${id}-workers-0`, at: at(2) }),
        ],
      })),
    ).toBe(true);
    expect(await publishCluster(id, 1, { events: [event('retried publish')] })).toBe(false);
    expect(await publishCluster(id, 2, { state: 'TERMINATING', events: [event('teardown requested via the API', { kind: 'teardown', at: at(3) })] })).toBe(true);

    const all = (await request(app).get(`/v1/clusters/${id}/events`)).body as PageBody<ClusterEvent>;
    expect(all).toEqual({
      items: [
        event('deploying: checking CVMFS repositories'),
        event('workers-0 created', { kind: 'scale', service: 'workers', instance: `${id}-workers-0`, at: at(1) }),
        event('workers-0 never phoned home; replaced by workers-1', { kind: 'replace', service: 'workers', instance: `${id}-workers-0`, at: at(2) }),
        event('teardown requested via the API', { kind: 'teardown', at: at(3) }),
      ],
    });
    const paged = await pages<ClusterEvent>(`/v1/clusters/${id}/events`, { limit: 3 });
    expect(paged.map((p) => p.length)).toEqual([3, 1]);
    expect(paged.flat()).toEqual(all.items);
  });

  it('422 for a bad limit or cursor, 404 for an unknown cluster', async () => {
    const id = await submit('logless');
    expect(problem(await request(app).get(`/v1/clusters/${id}/events`).query({ limit: '5000' }), 422)).toEqual(['limit']);
    // An instances cursor is no events cursor.
    const instances = (await request(app).get(`/v1/clusters/${id}/instances`)).body as PageBody<PublishedInstance>;
    expect(instances.items).toEqual([]);
    const instancesCursor = Buffer.from(JSON.stringify(['workers', 2])).toString('base64url');
    expect(problem(await request(app).get(`/v1/clusters/${id}/events`).query({ cursor: instancesCursor }), 422)).toEqual(['cursor']);
    expect(problem(await request(app).get(`/v1/clusters/${id}/events`).query({ cursor: '%%%' }), 422)).toEqual(['cursor']);
    problem(await request(app).get('/v1/clusters/nope-000000/events'), 404);
  });
});
