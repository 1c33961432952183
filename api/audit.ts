/**
 * The audit trail: one structured log line (`audit: true`) per state-changing request
 * (POST, PUT, PATCH, DELETE) — who (owner, role, token id), the matched route *pattern*,
 * the target resource id and the status code — and, for authenticated callers, the same as a
 * row in the store's append-only `audit_log`, listed by `GET /v1/audit` (admins only).
 *
 * Nothing secret goes in: no bodies, no headers, no token values, no raw paths (a route
 * pattern never holds a value; the target is only ever an `:id` or `:owner` path value, or
 * the id in a creation's `Location`, never a pairing PIN). Guests' phone-home reports
 * (`POST /v1/instances/:instanceId/readiness`) are not audited: they are not a user's
 * action, carry their own token and arrive by the thousand; the cluster's events record them.
 * Requests refused before authentication (401) are logged without an owner but not stored,
 * so an anonymous caller cannot grow the table; neither is a head node's load report sent with
 * its instance's phone-home token (logged with the `instance`, recorded as the cluster's event).
 */
import express, { type Request, type RequestHandler, type Router } from 'express';
import type { Logger } from 'pino';
import type { Store } from '../store/index.js';
import { requireAdmin, type Principal } from './auth.js';
import { InvalidCursorError } from '../store/index.js';
import { invalid } from './problem.js';
import { AuditQuerySchema } from './schemas.js';
import { queryOf } from './paging.js';
import { routePattern } from './request.js';

const STATE_CHANGING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const PHONE_HOME = /^\/v1\/instances\/[^/]+\/readiness$/;
/** Path parameters that name the request's resource, in order of preference; never `:pin`. */
const TARGET_PARAMS = ['id', 'owner'];
/** Creations whose `Location` names the new resource's id. */
const CREATED = /^\/v1\/(?:clusters|cluster-definitions|contexts|tokens)\/([A-Za-z0-9._@-]{1,200})$/;
const MAX_TARGET = 200;

/**
 * The resource a request was about: a target parameter of the matched pattern, read from the
 * path by position (Express clears `req.params` when a handler throws), else the id in the
 * `Location` of a creation.
 */
function targetOf(req: Request, pattern: string | undefined, location: string | undefined): string | undefined {
  if (pattern !== undefined) {
    const names = pattern.split('/');
    const values = req.path.split('/');
    for (const name of TARGET_PARAMS) {
      const i = names.indexOf(`:${name}`);
      if (i < 0 || names.length !== values.length) continue;
      try {
        return decodeURIComponent(values[i]).slice(0, MAX_TARGET);
      } catch {
        return undefined; // a malformed escape: the request never reached a handler
      }
    }
  }
  return location === undefined ? undefined : CREATED.exec(location)?.[1];
}

/** The audit middleware, and a way to wait for the records it is still writing. */
export type AuditTrail = RequestHandler & {
  /** Resolves once every record whose answer was sent before this call is stored (or failed to be). */
  settled(): Promise<void>;
};

/**
 * Express middleware (mounted ahead of authentication): writes the audit line and record when
 * the answer is sent. The record is written after the answer, so `GET /v1/audit` first waits
 * for this process's pending ones ({@link AuditTrail.settled}): a client sees its own request
 * in the trail as soon as it has the answer, as it did when the store was synchronous.
 */
export function auditTrail(deps: { store: Store; logger: Logger }): AuditTrail {
  const { store, logger } = deps;
  const pending = new Set<Promise<void>>();
  const handler: RequestHandler = (req, res, next) => {
    if (!STATE_CHANGING.has(req.method) || PHONE_HOME.test(req.path)) return next();
    res.on('finish', () => {
      const p = res.locals.principal as Principal | undefined;
      const instance = (res.locals.instance as { iid: string } | undefined)?.iid;
      const pattern = routePattern(req);
      const location = res.getHeader('Location');
      const target = targetOf(req, pattern, typeof location === 'string' ? location : undefined);
      const rec = {
        at: new Date().toISOString(),
        route: `${req.method} ${pattern ?? '(no route)'}`,
        ...(target !== undefined && { target }),
        result: res.statusCode,
      };
      logger.info({ audit: true, owner: p?.owner, role: p?.role, tokenId: p?.tokenId, ...(instance !== undefined && { instance }), ...rec }, 'audit');
      if (!p) return;
      const write = store
        .appendAudit({ ...rec, owner: p.owner, role: p.role, ...(p.tokenId !== undefined && { tokenId: p.tokenId }) })
        .then(
          () => undefined,
          (err: unknown) => logger.error({ err, route: rec.route }, 'could not store an audit record'),
        )
        .finally(() => pending.delete(write));
      pending.add(write);
    });
    next();
  };
  return Object.assign(handler, { settled: async () => void (await Promise.all([...pending])) });
}

/** `GET /v1/audit`: admins only; newest first, a page at a time, filtered by owner, target and time. */
export function auditRoutes(deps: { store: Store; trail?: Pick<AuditTrail, 'settled'> }): Router {
  const { store, trail } = deps;
  const router = express.Router();
  router.get('/v1/audit', requireAdmin, async (req, res) => {
    const query = queryOf(req, AuditQuerySchema);
    await trail?.settled();
    try {
      res.set('Cache-Control', 'no-store').json(await store.listAudit(query));
    } catch (err) {
      if (err instanceof InvalidCursorError) {
        throw invalid([{ field: 'cursor', pointer: '/cursor', message: 'is not a cursor of this list; pass the `next` of a previous page' }]);
      }
      throw err;
    }
  });
  return router;
}
