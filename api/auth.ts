/**
 * Who is asking. Every route but a few public ones needs `Authorization: Bearer <token>`,
 * where the token is either an API token cloudgate issued (`cg_…`, stored as a hash, see
 * `POST /v1/tokens`) or an OIDC access token (a JWT) from the site's identity provider,
 * verified with the keys its discovery document names (`jose`, keys cached and fetched
 * again on an unknown `kid`). The answer is a {@link Principal}: an owner and a role.
 *
 * Ownership is answered in one place too: {@link canSee} — a user sees what they own, an
 * admin sees everything; everything else is a 404, exactly as if it did not exist.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { createRemoteJWKSet, errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import type { Logger } from 'pino';
import type { Config } from '../model/config.js';
import type { InstanceState } from '../model/status.js';
import { readToken, tokenOrdinal, type TokenClaims } from '../model/token.js';
import type { Role, Store } from '../store/index.js';
import { ensurePrivateDir } from '../store/private-files.js';
import { createOnce } from '../store/secret.js';
import { Problem } from './problem.js';
import { OWNER_RE, type OidcLogin } from './schemas.js';

/** Who a request comes from. */
export interface Principal {
  owner: string;
  role: Role;
  /** How they proved it: an API token (with its id) or an OIDC access token. */
  via: 'token' | 'oidc';
  tokenId?: string;
}


/**
 * Routes anyone may call: health, the API description, how to sign in, a guest's phone-home
 * and drain notice (they check the instance's own token, api/readiness.ts) and a laptop's PIN.
 */
const PUBLIC: { method: string; path: RegExp }[] = [
  { method: 'GET', path: /^\/healthz$/ },
  { method: 'GET', path: /^\/openapi\.json$/ },
  { method: 'GET', path: /^\/v1\/login-options$/ },
  { method: 'POST', path: /^\/v1\/instances\/[^/]+\/readiness$/ },
  { method: 'GET', path: /^\/v1\/instances\/[^/]+\/notice$/ },
  { method: 'GET', path: /^\/v1\/pair\/[^/]+$/ },
];

/**
 * Routes a guest may call with its instance's phone-home token instead of a user's bearer:
 * only the load report (issue 13), so a cluster's head node reports its batch system's load
 * without a user's credentials. The route itself checks that the token's cluster is the one
 * in the path (api/sessions.ts); on any other route such a token is an unknown bearer (401).
 */
const INSTANCE_TOKEN_ROUTES: { method: string; path: RegExp }[] = [{ method: 'POST', path: /^\/v1\/clusters\/[^/]+\/services\/[^/]+\/load$/ }];

/**
 * Instance states (by the read model) in which an instance's phone-home token is good for the
 * long-lived phone-home routes: its instance is still there. Not FAILED, TERMINATING or
 * REMOVED, and not unknown to the read model (nothing of it published, or long gone).
 */
const LIVE_INSTANCE_STATES: ReadonlySet<InstanceState | 'REMOVED' | undefined> = new Set(['CREATING', 'BOOTING', 'RUNNING', 'READY']);

const CHALLENGE = 'Bearer realm="cloudgate"';

/** 401 with the challenge RFC 6750 asks for; `invalid` marks a token that was sent but is no good. */
export function unauthorized(detail: string, invalid = false): Problem {
  return new Problem(401, 'Unauthorized', detail, {
    slug: 'unauthorized',
    headers: { 'WWW-Authenticate': invalid ? `${CHALLENGE}, error="invalid_token"` : CHALLENGE },
  });
}

/** Verifies OIDC access tokens of one issuer. */
export interface OidcVerifier {
  verify(token: string): Promise<Omit<Principal, 'via'>>;
}

/** After fetching the JWKS, an unknown `kid` waits this long before the next fetch (a flood of bad tokens costs one fetch per pause). */
export const JWKS_COOLDOWN_MS = 5_000;

/** Asymmetric algorithms only: `none` and HMAC (a public key used as a shared secret) never verify. */
const OIDC_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];

/** The value at a dotted claim path (`realm_access.roles`), or undefined. */
function claimAt(payload: JWTPayload, dotted: string): unknown {
  let at: unknown = payload;
  for (const key of dotted.split('.')) {
    if (typeof at !== 'object' || at === null || !Object.hasOwn(at, key)) return undefined;
    at = (at as Record<string, unknown>)[key];
  }
  return at;
}

/**
 * A verifier for `config.auth`'s issuer. The discovery document is fetched on first use (so
 * the API starts while the identity provider is down) and kept once it was read; the JWKS is
 * jose's remote key set: cached, fetched again when a token names an unknown `kid`.
 */
export function createOidcVerifier(auth: Config['auth'], fetchImpl: typeof fetch = fetch): OidcVerifier | undefined {
  const { oidcIssuer: issuer, oidcAudience: audience } = auth;
  if (!issuer || !audience) return undefined;
  let keys: Promise<ReturnType<typeof createRemoteJWKSet>> | undefined;
  const discover = async () => {
    const url = `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
    const res = await fetchImpl(url, { redirect: 'error', signal: AbortSignal.timeout(10_000) });
    if (!res.ok) throw new Error(`${url} answered ${res.status}`);
    const doc = (await res.json()) as { issuer?: unknown; jwks_uri?: unknown };
    if (doc.issuer !== issuer) throw new Error(`${url} names issuer ${String(doc.issuer)}, not ${issuer}`);
    if (typeof doc.jwks_uri !== 'string') throw new Error(`${url} has no jwks_uri`);
    return createRemoteJWKSet(new URL(doc.jwks_uri), { timeoutDuration: 10_000, cooldownDuration: JWKS_COOLDOWN_MS, cacheMaxAge: 10 * 60_000 });
  };
  return {
    async verify(token) {
      keys ??= discover().catch((err: unknown) => {
        keys = undefined; // try again on the next request
        throw err;
      });
      const jwks = await keys;
      const { payload } = await jwtVerify(token, jwks, { issuer, audience, algorithms: OIDC_ALGORITHMS, clockTolerance: 30 });
      const named = claimAt(payload, auth.oidcOwnerClaim);
      const owner = typeof named === 'string' && named !== '' ? named : payload.sub;
      if (!owner || !OWNER_RE.test(owner)) throw new joseErrors.JWTClaimValidationFailed(`the token names no usable owner (${auth.oidcOwnerClaim} or sub)`, payload, auth.oidcOwnerClaim);
      const admin = claimAt(payload, auth.oidcAdminClaim);
      const isAdmin = Array.isArray(admin) ? admin.includes(auth.oidcAdminValue) : admin === auth.oidcAdminValue;
      return { owner, role: isAdmin ? 'admin' : 'user' };
    },
  };
}

/** The OIDC sign-in the site offers clients (`GET /v1/login-options`), or undefined when it takes API tokens only. */
export function oidcLoginOf(auth: Config['auth']): OidcLogin | undefined {
  if (!auth.oidcIssuer || !auth.oidcAudience) return undefined;
  return {
    issuer: auth.oidcIssuer,
    ...(auth.oidcClientId && { clientId: auth.oidcClientId }),
    scope: auth.oidcScopes,
    ...(auth.oidcResource && { resource: auth.oidcResource }),
  };
}

/** Why a JWT was refused, in words that help the caller and tell an attacker nothing new. */
function jwtProblem(err: unknown): Problem {
  if (err instanceof joseErrors.JWTExpired) return unauthorized('the access token has expired', true);
  if (err instanceof joseErrors.JWTClaimValidationFailed) return unauthorized(`the access token was refused: ${err.message}`, true);
  if (err instanceof joseErrors.JOSEError) return unauthorized('the access token could not be verified', true);
  return new Problem(503, 'Service Unavailable', 'the identity provider could not be reached to verify the access token; try again', { slug: 'oidc-unavailable' });
}

/** What the long-lived phone-home routes need to judge an instance's token. */
export interface InstanceTokenDeps {
  tokenSecret: string;
  /** The read model: whether the token's instance is still there. */
  store: Pick<Store, 'instanceStanding'>;
}

/**
 * The claims of a phone-home token used on a long-lived route (load reports, drain notices),
 * else a 401. A token's `exp` bounds it to the readiness timeout plus a margin (issue 11): the
 * one readiness report is due by then. A head node reports load, and a guest polls for drain
 * notices, for as long as the cluster lives — weeks — so here the bound is its instance's
 * life instead: the signature must be good (the claims are ours) and the instance it names
 * must be live in the read model (creating, booting, running or ready). Once the instance is
 * failed, terminating, replaced or gone the token is worth nothing anywhere, however young.
 * `instanceId`: the instance the route is about (the token must be that instance's).
 */
export async function liveInstanceClaims(token: string, deps: InstanceTokenDeps, instanceId?: string): Promise<TokenClaims> {
  const read = readToken(token, deps.tokenSecret);
  if (!read.ok) throw unauthorized(`invalid token: ${read.reason}`, true);
  const { claims } = read;
  if (instanceId !== undefined && claims.iid !== instanceId) throw unauthorized('invalid token: token belongs to another instance', true);
  const ordinal = tokenOrdinal(claims);
  const standing = ordinal === undefined ? undefined : await deps.store.instanceStanding(claims.cluster, claims.service, claims.iid, ordinal);
  if (!LIVE_INSTANCE_STATES.has(standing)) {
    throw unauthorized(
      `the token's instance ${claims.iid} is ${standing === undefined ? 'not (or no longer) in its cluster' : standing}: a phone-home token is good only while its instance lives`,
      true,
    );
  }
  return claims;
}

/** Who called a route that also takes a phone-home token: a user (or admin), or a guest by its instance's token. */
export type Caller = { principal: Principal; instance?: never } | { instance: TokenClaims; principal?: never };

/** The caller of a route listed in {@link INSTANCE_TOKEN_ROUTES}. */
export function callerOf(res: Response): Caller {
  const instance = res.locals.instance as TokenClaims | undefined;
  return instance ? { instance } : { principal: principalOf(res) };
}

/** The principal of a request that passed {@link authenticate}. */
export function principalOf(res: Response): Principal {
  const p = res.locals.principal as Principal | undefined;
  if (!p) throw new Error('no principal: the route is not behind authenticate()');
  return p;
}

/** A user sees what they own; an admin sees everything (records without an owner included). */
export const canSee = (p: Principal, owner: string | undefined): boolean => p.role === 'admin' || (owner !== undefined && owner === p.owner);

/**
 * Which owner's records a list shows: one's own for a user (a `?owner=` naming someone else
 * shows nothing of theirs), everything or the named owner's for an admin.
 */
export function listOwner(p: Principal, requested: string | undefined): { owner?: string; none?: true } {
  if (p.role === 'admin') return requested === undefined ? {} : { owner: requested };
  if (requested !== undefined && requested !== p.owner) return { none: true };
  return { owner: p.owner };
}

/**
 * Express middleware: sets `res.locals.principal`, or answers 401 (public routes and CORS
 * preflights pass). With `tokenSecret`, a phone-home token (two dot-separated parts, never an
 * API token's `cg_…` nor a JWT's three) on a route of {@link INSTANCE_TOKEN_ROUTES} sets
 * `res.locals.instance` to its claims instead ({@link liveInstanceClaims}).
 */
export function authenticate(deps: { store: Store; oidc?: OidcVerifier; now?: () => Date; tokenSecret?: string }): RequestHandler {
  const { store, oidc, tokenSecret } = deps;
  const now = deps.now ?? (() => new Date());
  return async (req: Request, res: Response, next: NextFunction) => {
    if (req.method === 'OPTIONS' || PUBLIC.some((r) => (r.method === req.method || (r.method === 'GET' && req.method === 'HEAD')) && r.path.test(req.path))) return next();
    const header = req.headers.authorization;
    if (!header) return next(unauthorized('this route needs Authorization: Bearer <token> (an API token or an OIDC access token)'));
    const m = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/i.exec(header);
    if (!m) return next(unauthorized('the Authorization header must be "Bearer <token>"', true));
    const token = m[1];
    if (token.startsWith('cg_')) {
      const rec = await store.findApiToken(token);
      if (!rec) return next(unauthorized('unknown API token', true));
      if (rec.revokedAt) return next(unauthorized(`API token ${rec.id} was revoked at ${rec.revokedAt}`, true));
      if (rec.expiresAt && rec.expiresAt <= now().toISOString()) return next(unauthorized(`API token ${rec.id} expired at ${rec.expiresAt}`, true));
      res.locals.principal = { owner: rec.owner, role: rec.role, via: 'token', tokenId: rec.id } satisfies Principal;
      return next();
    }
    if (tokenSecret && token.split('.').length === 2 && INSTANCE_TOKEN_ROUTES.some((r) => r.method === req.method && r.path.test(req.path))) {
      try {
        res.locals.instance = await liveInstanceClaims(token, { tokenSecret, store });
      } catch (err) {
        return next(err);
      }
      return next();
    }
    if (!oidc || token.split('.').length !== 3) return next(unauthorized('unknown API token', true));
    oidc.verify(token).then(
      (who) => {
        res.locals.principal = { ...who, via: 'oidc' } satisfies Principal;
        next();
      },
      (err: unknown) => next(jwtProblem(err)),
    );
  };
}

/** Admin-only routes: a user gets 403 (the route exists for them, only not this power). */
export const requireAdmin: RequestHandler = (_req, res, next) => {
  if (principalOf(res).role !== 'admin') return next(new Problem(403, 'Forbidden', 'only an admin may do this', { slug: 'admin-only' }));
  next();
};

/**
 * `npm start`'s first admin: a token for owner `admin` written to `<dataDir>/admin-token`
 * (mode 0600) on first start, and again if the store no longer honours the one in the file
 * (a new store, or the token was revoked). Returns the file's path; the token itself is
 * never logged.
 */
export async function ensureAdminToken(store: Store, dataDir: string, logger?: Logger): Promise<string> {
  const file = path.join(dataDir, 'admin-token');
  ensurePrivateDir(dataDir);
  let current: string | undefined;
  try {
    current = readFileSync(file, 'utf8').trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read ${file}`, { cause: err });
  }
  const rec = current ? await store.findApiToken(current) : undefined;
  if (rec && !rec.revokedAt && rec.role === 'admin') return file;
  const { record, token } = await store.createApiToken({ owner: 'admin', role: 'admin' });
  if (current === undefined) {
    // Another process may have written the file meanwhile: theirs wins, ours is revoked.
    if (!createOnce(file, () => `${token}\n`)) {
      await store.revokeApiToken(record.id);
      return file;
    }
  } else {
    const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`;
    writeFileSync(tmp, `${token}\n`, { mode: 0o600, flag: 'wx' });
    renameSync(tmp, file);
  }
  logger?.info({ file, tokenId: record.id }, current === undefined ? 'created the first admin token' : 'replaced the admin token the store no longer honours');
  return file;
}
