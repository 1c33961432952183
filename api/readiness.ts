/**
 * The phone-home endpoint guests call once their CVMFS probes ran. Authenticated by the
 * per-instance token from the instance's user-data; reports go to the instance's service
 * workflow in batches (see readiness-batcher.ts).
 */
import express, { type Router } from 'express';
import type { Client } from '@temporalio/client';
import type { ReadinessReport } from '../model/status.js';
import { verifyToken, type TokenClaims } from '../model/token.js';
import { readinessSignal, serviceWorkflowId } from '../workflows/messages.js';
import { bodyOf, param } from './request.js';
import { parseOr422, Problem } from './problem.js';
import { Batcher, type BatcherOptions } from './readiness-batcher.js';
import { ReadinessRequestSchema } from './schemas.js';
import { isWorkflowGone, SIGNAL_DEADLINE_MS, temporalProblem } from './temporal-errors.js';

/** What the phone-home route uses; `json` is the app's body parser. */
export interface ReadinessRouteDeps {
  temporal: Client;
  tokenSecret: string;
  json: express.RequestHandler;
  batching?: BatcherOptions;
  /** Seconds since the epoch; injectable for expiry tests. */
  now?: () => number;
}

const unauthorized = (detail: string, error?: string) =>
  new Problem(401, 'Unauthorized', detail, {
    slug: 'unauthorized',
    headers: { 'WWW-Authenticate': error ? `Bearer realm="cloudgate", error="${error}"` : 'Bearer realm="cloudgate"' },
  });

/** The router plus the batcher behind it, so the app can drain it on shutdown. */
export function readinessRoutes(deps: ReadinessRouteDeps): { router: Router; batcher: Batcher<ReadinessReport> } {
  const { temporal, tokenSecret, json } = deps;
  const now = deps.now ?? (() => Math.floor(Date.now() / 1000));
  const batcher = new Batcher<ReadinessReport>(
    (workflowId, reports) =>
      temporal.withDeadline(Date.now() + SIGNAL_DEADLINE_MS, () => temporal.workflow.getHandle(workflowId).signal(readinessSignal, reports)),
    deps.batching,
  );
  const router = express.Router();

  // Authenticate before parsing the body: strangers learn nothing about what we accept.
  router.post('/v1/instances/:instanceId/readiness', (req, _res, next) => {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.get('Authorization') ?? '');
    if (!m) throw unauthorized('send the instance token as "Authorization: Bearer <token>"');
    const check = verifyToken(m[1], tokenSecret, param(req, 'instanceId'), now());
    if (!check.ok) throw unauthorized(`invalid token: ${check.reason}`, 'invalid_token');
    claimsOf(_res).claims = check.claims;
    next();
  }, json, async (req, res) => {
    const body = parseOr422(ReadinessRequestSchema, bodyOf(req));
    const { claims } = claimsOf(res);
    const report: ReadinessReport = {
      instanceId: claims.iid,
      status: body.status,
      ...(body.checks && { checks: body.checks }),
      receivedAt: new Date().toISOString(),
    };
    try {
      await batcher.submit(serviceWorkflowId(claims.cluster, claims.service), report);
    } catch (err) {
      if (isWorkflowGone(err)) {
        throw new Problem(410, 'Gone', `the service "${claims.service}" of cluster "${claims.cluster}" is no longer running`, { slug: 'gone' });
      }
      throw temporalProblem(err, 'could not deliver the readiness report');
    }
    res.status(202).json({ instanceId: report.instanceId, receivedAt: report.receivedAt });
  });
  return { router, batcher };
}

/** Verified claims travel from the auth step to the handler in `res.locals`. */
const claimsOf = (res: express.Response): { claims: TokenClaims } => res.locals as { claims: TokenClaims };
