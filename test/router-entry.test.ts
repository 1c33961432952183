/**
 * `enteredByItsPaths` (api/request.ts): a router is skipped by requests on other paths, and
 * still answers every request Express would route to it — any letter case, a trailing slash,
 * a parameter — and a router with a path-less layer is entered by everything.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express from 'express';
import { enteredByItsPaths } from '../api/request.js';

describe('routers entered by their own paths', () => {
  let server: Server;
  let base: string;
  const entered: string[] = [];

  beforeAll(async () => {
    const app = express();
    const clusters = express.Router();
    clusters.use('/v1/clusters', (_req, _res, next) => (entered.push('clusters'), next()));
    clusters.get('/v1/clusters/:id', (req, res) => void res.json({ cluster: req.params.id }));
    const tokens = express.Router();
    tokens.use((_req, _res, next) => (entered.push('tokens'), next()));
    tokens.get('/v1/me', (_req, res) => void res.json({ me: true }));
    const definitions = express.Router();
    definitions.get('/v1/cluster-definitions', (_req, res) => void res.json({ definitions: [] }));
    app.use(enteredByItsPaths(tokens), enteredByItsPaths(clusters), enteredByItsPaths(definitions));
    app.use((_req, res) => void res.status(404).json({ found: false }));
    server = app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  const get = async (path: string) => {
    entered.length = 0;
    const res = await fetch(`${base}${path}`);
    return { status: res.status, body: await res.json(), entered: [...entered] };
  };

  it('serves each route as Express would: any letter case, a trailing slash, parameters', async () => {
    expect(await get('/v1/clusters/c-1')).toEqual({ status: 200, body: { cluster: 'c-1' }, entered: ['tokens', 'clusters'] });
    expect((await get('/V1/Clusters/c-2')).body).toEqual({ cluster: 'c-2' });
    expect((await get('/v1/cluster-definitions/')).body).toEqual({ definitions: [] });
    expect((await get('/v1/me')).body).toEqual({ me: true });
  });

  it('skips a router none of whose paths can match, but enters one with a path-less layer', async () => {
    expect(await get('/v1/cluster-definitions')).toMatchObject({ status: 200, entered: ['tokens'] });
    expect(await get('/v1/nothing')).toEqual({ status: 404, body: { found: false }, entered: ['tokens'] });
  });
});
