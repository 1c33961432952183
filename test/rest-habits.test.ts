/**
 * REST habits (issue 11), through the real HTTP API of a real stack: lists page and filter
 * instead of ignoring parameters, an unknown query parameter is a 422 on every route,
 * terminated clusters leave the default list, definitions can be deleted (409 while a
 * running cluster uses one), a known path with the wrong method is a 405 with Allow, and
 * one service of a cluster has its own route.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { startStack, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => {
  await stack?.stop();
});

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };

/** Every item of a list, following `next`, with the page sizes seen. */
async function walk(url: string, limit: number, key = (x: any): string => x.id): Promise<{ ids: string[]; pages: number[] }> {
  const ids: string[] = [];
  const pages: number[] = [];
  let next: string | undefined;
  do {
    const sep = url.includes('?') ? '&' : '?';
    const res = await stack.http('GET', `${url}${sep}limit=${limit}${next ? `&cursor=${encodeURIComponent(next)}` : ''}`);
    expect(res.status).toBe(200);
    pages.push(res.body.items.length);
    ids.push(...res.body.items.map(key));
    next = res.body.next;
  } while (next);
  return { ids, pages };
}

describe('REST habits', () => {
  let defId: string;
  let clusterId: string;
  let ctxId: string;

  beforeAll(async () => {
    for (let n = 0; n < 5; n++) expect((await stack.http('POST', '/v1/contexts', { name: `ctx-${n}` })).status).toBe(201);
    ctxId = (await stack.http('GET', '/v1/contexts?limit=1')).body.items[0].id;
    for (let v = 2; v <= 3; v++) expect((await stack.http('PUT', `/v1/contexts/${ctxId}`, { name: `ctx-0 v${v}` })).status).toBe(200);
    const def = await stack.http('POST', '/v1/cluster-definitions', { name: 'habits', services: [{ name: 'svc', image: 'cernvm', offering, min: 2, max: 4 }] });
    defId = def.body.id;
    clusterId = (await stack.http('POST', '/v1/clusters', { definitionId: defId })).body.id;
    await waitForState(stack, clusterId, 'READY');
  });

  it('lists come a page at a time: every item exactly once, in order, through next', async () => {
    const all = (await stack.http('GET', '/v1/contexts')).body;
    expect(all.items).toHaveLength(5);
    expect(all.next).toBeUndefined();
    const walked = await walk('/v1/contexts', 2);
    expect(walked.pages).toEqual([2, 2, 1]);
    expect(walked.ids).toEqual(all.items.map((c: any) => c.id));
    expect((await walk(`/v1/contexts/${ctxId}/versions`, 2, (v) => `${v.version}`)).ids).toEqual(['1', '2', '3']);
    expect((await walk('/v1/tokens', 1)).ids.length).toBeGreaterThanOrEqual(1);
    // Bad paging parameters name themselves.
    for (const q of ['limit=0', 'limit=1001', 'limit=two', 'cursor=not-a-cursor']) {
      const res = await stack.http('GET', `/v1/contexts?${q}`);
      expect({ q, status: res.status, field: res.body.errors?.[0]?.field }).toEqual({ q, status: 422, field: q.split('=')[0] });
    }
  });

  it('an unknown query parameter is a 422 naming it on every route, instead of being ignored', async () => {
    const doc = (await stack.http('GET', '/openapi.json')).body as { paths: Record<string, Record<string, unknown>> };
    const ids: Record<string, string> = { id: clusterId, service: 'svc' };
    let checked = 0;
    for (const [path, ops] of Object.entries(doc.paths)) {
      if (['/healthz', '/openapi.json'].includes(path) || path.startsWith('/v1/pair/') || path.startsWith('/v1/instances/') || path.startsWith('/codec')) continue;
      for (const method of Object.keys(ops)) {
        if (method === 'delete') continue; // not worth losing the fixtures over; covered by the routes' own code path
        let url = path.replace(/\{(\w+)\}/g, (_m, k: string) => (path.startsWith('/v1/contexts') && k === 'id' ? ctxId : path.startsWith('/v1/cluster-definitions') ? defId : path.startsWith('/v1/owners') ? 'admin' : (ids[k] ?? 'x')));
        url += '?bogus=1';
        const res = await stack.http(method.toUpperCase(), url, method === 'get' ? undefined : {});
        expect({ route: `${method.toUpperCase()} ${path}`, status: res.status, field: res.body.errors?.[0]?.field }).toEqual({
          route: `${method.toUpperCase()} ${path}`,
          status: 422,
          field: 'bogus',
        });
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(15);
  });

  it('one service of a cluster has its own route: counts, state and where its instances are', async () => {
    const svc = await stack.http('GET', `/v1/clusters/${clusterId}/services/svc`);
    expect(svc.status).toBe(200);
    expect(svc.body).toMatchObject({ name: 'svc', state: 'READY', desired: 2, ready: 2, links: { instances: `/v1/clusters/${clusterId}/instances?service=svc` } });
    expect(Date.parse(svc.body.observedAt)).toBeGreaterThan(0);
    const instances = await stack.http('GET', svc.body.links.instances);
    expect(instances.body.items).toHaveLength(2);
    expect((await stack.http('GET', `/v1/clusters/${clusterId}/services/nope`)).status).toBe(404);
  });

  it('a known path with the wrong method is a 405 with Allow', async () => {
    for (const [method, url, allow] of [
      ['PUT', '/v1/clusters', 'GET, HEAD, POST'],
      ['PATCH', `/v1/clusters/${clusterId}`, 'DELETE, GET, HEAD, PUT'],
      ['POST', `/v1/cluster-definitions/${defId}`, 'DELETE, GET, HEAD'],
      ['GET', `/v1/clusters/${clusterId}/services/svc/scale`, 'POST'],
    ] as const) {
      const res = await stack.http(method, url);
      expect({ url, status: res.status, allow: res.headers.get('allow') }).toEqual({ url, status: 405, allow });
      expect(res.headers.get('content-type')).toMatch(/problem\+json/);
    }
    expect((await stack.http('GET', '/v1/no-such-thing')).status).toBe(404);
  });

  it('deleting a definition: 409 while a running cluster uses it, 204 once it is torn down; then it is gone', async () => {
    const busy = await stack.http('DELETE', `/v1/cluster-definitions/${defId}`);
    expect(busy.status).toBe(409);
    expect(busy.body.detail).toContain(clusterId);

    expect((await stack.http('DELETE', `/v1/clusters/${clusterId}`)).status).toBe(202);
    await waitForState(stack, clusterId, 'TERMINATED');
    expect((await stack.http('DELETE', `/v1/cluster-definitions/${defId}`)).status).toBe(204);

    expect((await stack.http('GET', `/v1/cluster-definitions/${defId}`)).status).toBe(404);
    expect((await stack.http('GET', '/v1/cluster-definitions')).body.items.map((d: any) => d.id)).not.toContain(defId);
    const submit = await stack.http('POST', '/v1/clusters', { definitionId: defId });
    expect(submit.status).toBe(422);
    expect(submit.body.errors[0].field).toBe('definitionId');
    // The torn-down cluster made from it still answers (it reads its definition).
    expect((await stack.http('GET', `/v1/clusters/${clusterId}/services/svc`)).body.state).toBe('TERMINATED');
  });

  it('terminated clusters leave the default list; ?state= finds them, and filters by any state', async () => {
    expect((await stack.http('GET', '/v1/clusters')).body.items.map((c: any) => c.id)).not.toContain(clusterId);
    await waitFor(async () => (await stack.http('GET', '/v1/clusters?state=TERMINATED')).body.items.some((c: any) => c.id === clusterId), 10_000, 'listed as TERMINATED');
    expect((await stack.http('GET', '/v1/clusters?state=READY')).body.items.map((c: any) => c.id)).not.toContain(clusterId);
    const bad = await stack.http('GET', '/v1/clusters?state=DONE');
    expect(bad.status).toBe(422);
    expect(bad.body.errors[0].field).toBe('state');
  });
});
