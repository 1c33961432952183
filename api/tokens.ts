/**
 * `/v1/tokens`: API tokens. An admin issues them (`POST`, the value shown once); everyone
 * lists and revokes their own, an admin anyone's. A token of someone else is a 404.
 * `GET /v1/me` says who a bearer is (owner, role, how): a client such as the web portal
 * checks a pasted token with it and learns whose quota to show. `GET /v1/login-options`
 * (public) says how else to get a bearer: the site's OIDC sign-in, if it offers one.
 */
import express, { type Router } from 'express';
import type { ApiTokenRecord, Store } from '../store/index.js';
import { canSee, listOwner, principalOf, requireAdmin } from './auth.js';
import { notFound, parseOr422 } from './problem.js';
import { bodyOf, param } from './request.js';
import { NoQuerySchema, pageOf, queryOf } from './paging.js';
import { CreateTokenRequestSchema, ListQuerySchema, type LoginOptions, type OidcLogin } from './schemas.js';

const view = (r: ApiTokenRecord) => ({
  id: r.id,
  owner: r.owner,
  role: r.role,
  createdAt: r.createdAt,
  ...(r.expiresAt && { expiresAt: r.expiresAt }),
  ...(r.revokedAt && { revokedAt: r.revokedAt }),
});

export function tokenRoutes(deps: { store: Store; json: express.RequestHandler; now?: () => Date; oidcLogin?: OidcLogin }): Router {
  const { store, json } = deps;
  const now = deps.now ?? (() => new Date());
  const router = express.Router();

  router.post('/v1/tokens', requireAdmin, json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const { owner, role, ttlSeconds } = parseOr422(CreateTokenRequestSchema, bodyOf(req));
    const expiresAt = ttlSeconds === undefined ? undefined : new Date(now().getTime() + ttlSeconds * 1000);
    const { record, token } = await store.createApiToken({ owner, role, ...(expiresAt && { expiresAt }) });
    res.status(201).location(`/v1/tokens/${record.id}`).set('Cache-Control', 'no-store').json({ ...view(record), token, expiresAt: record.expiresAt ?? null });
  });

  router.get('/v1/login-options', (req, res) => {
    queryOf(req, NoQuerySchema);
    res.json({ ...(deps.oidcLogin && { oidc: deps.oidcLogin }) } satisfies LoginOptions);
  });

  router.get('/v1/me', (req, res) => {
    queryOf(req, NoQuerySchema);
    const { owner, role, via, tokenId } = principalOf(res);
    res.set('Cache-Control', 'no-store').json({ owner, role, via, ...(tokenId !== undefined && { tokenId }) });
  });

  router.get('/v1/tokens', async (req, res) => {
    const { owner, cursor, limit } = queryOf(req, ListQuerySchema);
    const scope = listOwner(principalOf(res), owner);
    const page = pageOf(scope.none ? [] : await store.listApiTokens(scope.owner), { cursor, limit });
    res.json({ ...page, items: page.items.map(view) });
  });

  router.delete('/v1/tokens/:id', async (req, res) => {
    queryOf(req, NoQuerySchema);
    const id = param(req, 'id');
    const rec = await store.getApiToken(id);
    if (!rec || !canSee(principalOf(res), rec.owner)) throw notFound(`no token "${id}"`);
    await store.revokeApiToken(id, now());
    res.status(204).end();
  });

  return router;
}
