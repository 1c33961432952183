/**
 * The phone-home endpoint guests call once their CVMFS probes ran. Authenticated by the
 * per-instance token from the instance's user-data; reports go to the instance's service
 * workflow in batches (see readiness-batcher.ts). And the drain notice guests poll:
 * `GET /v1/instances/:instanceId/notice` answers `{drain: {until, reason}}` while the cluster
 * is PAUSING (its instances are terminated at `until`), `{}` otherwise — from the read model,
 * so a poll costs no Temporal round trip.
 *
 * What reaches a workflow is bounded (issue 11): a report is at most
 * {@link MAX_REPORT_BYTES} and {@link MAX_REPORT_DEPTH} levels deep (else 413 / 422 before
 * the batcher); a report for an instance that no longer waits for one (READY, FAILED,
 * TERMINATING or gone by the read model, or whose report was already delivered) is answered
 * 200 and dropped, so replaying a guest's report costs the workflow nothing; and in a batch
 * that fails, each report is tried again on its own.
 */
import express, { type Router } from 'express';
import type { Client } from '@temporalio/client';
import type { ReadinessReport } from '../model/status.js';
import { verdictInput } from '../model/readiness.js';
import { tokenOrdinal, verifyToken, type TokenClaims } from '../model/token.js';
import type { Store } from '../store/index.js';
import { readinessSignal, serviceWorkflowId } from '../workflows/messages.js';
import { liveInstanceClaims } from './auth.js';
import { NoQuerySchema, queryOf } from './paging.js';
import { bodyOf, param } from './request.js';
import { invalid, parseOr422, Problem } from './problem.js';
import { Batcher, type BatcherOptions } from './readiness-batcher.js';
import { ReadinessRequestSchema } from './schemas.js';
import { isTemporalUnreachable, isWorkflowGone, SIGNAL_DEADLINE_MS, temporalProblem } from './temporal-errors.js';
import type { PhoneHomeMetrics } from './metrics.js';

/** What the phone-home route uses. */
export interface ReadinessRouteDeps {
  temporal: Client;
  tokenSecret: string;
  /** The read model: which instances still wait for a report (and live), and whether their cluster is pausing. */
  store: Pick<Store, 'instanceStanding' | 'getClusterView'>;
  batching?: BatcherOptions;
  /** Where reports and signals are counted (`/metrics`); unset: nowhere. */
  metrics?: PhoneHomeMetrics;
  /** Seconds since the epoch; injectable for expiry tests. */
  now?: () => number;
}

/**
 * The largest report body. The guest agent sends `{status, checks: {cvmfs: {<repo>: "OK"},
 * output: {<repo>: text}}}` with each output cut at 2,000 bytes: a few KB in practice.
 */
export const MAX_REPORT_BYTES = 32 * 1024;
/** The deepest nesting of objects and arrays in a report (the agent's is 3). */
export const MAX_REPORT_DEPTH = 8;
/** A signal batch stays well below Temporal's payload limits (warning at 512 KB, error at 2 MB). */
const MAX_BATCH_BYTES = 256 * 1024;
/** How long a delivered report's instance is remembered (longer than the read model takes to show it). */
const DELIVERED_TTL_MS = 10 * 60_000;
/** Bounds that memory; the oldest entries go first. */
const MAX_DELIVERED = 100_000;

/** Instance states (by the read model) in which the workflow ignores a report: it no longer waits for one. */
const NOT_WAITING = new Set(['READY', 'FAILED', 'TERMINATING', 'REMOVED']);

const unauthorized = (detail: string, error?: string) =>
  new Problem(401, 'Unauthorized', detail, {
    slug: 'unauthorized',
    headers: { 'WWW-Authenticate': error ? `Bearer realm="cloudgate", error="${error}"` : 'Bearer realm="cloudgate"' },
  });

/** True when `value` nests objects or arrays deeper than `max` levels (iterative: a deep value cannot overflow the stack). */
export function nestsDeeperThan(value: unknown, max: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth + 1 > max) return true;
    for (const child of Object.values(v as object)) stack.push([child, depth + 1]);
  }
  return false;
}

/** The router plus the batcher behind it, so the app can drain it on shutdown. */
export function readinessRoutes(deps: ReadinessRouteDeps): { router: Router; batcher: Batcher<ReadinessReport> } {
  const { temporal, tokenSecret, store } = deps;
  const now = deps.now ?? (() => Math.floor(Date.now() / 1000));
  const { metrics } = deps;
  const signal = (workflowId: string, reports: ReadinessReport[]) =>
    temporal.withDeadline(Date.now() + SIGNAL_DEADLINE_MS, () => temporal.workflow.getHandle(workflowId).signal(readinessSignal, reports));
  const batcher = new Batcher<ReadinessReport>(
    metrics
      ? async (workflowId, reports) => {
          const started = performance.now();
          try {
            await signal(workflowId, reports);
            metrics.signal(true, (performance.now() - started) / 1000, reports.length);
          } catch (err) {
            metrics.signal(false, (performance.now() - started) / 1000, reports.length);
            throw err;
          }
        }
      : signal,
    deps.batching,
    {
      weigh: (r) => Buffer.byteLength(JSON.stringify(r)),
      maxBatchWeight: MAX_BATCH_BYTES,
      // A gone workflow or an unreachable server fails every report alike; anything else may be one report's doing.
      isolate: (err) => !isWorkflowGone(err) && !isTemporalUnreachable(err),
    },
  );
  /** Instances whose report reached their workflow, by id → when (insertion order is age order). */
  const delivered = new Map<string, number>();
  const remember = (iid: string, at: number) => {
    delivered.delete(iid);
    delivered.set(iid, at);
    for (const [id, t] of delivered) {
      if (delivered.size <= MAX_DELIVERED && t > at - DELIVERED_TTL_MS) break;
      delivered.delete(id);
    }
  };
  const json = express.json({ limit: MAX_REPORT_BYTES });
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
    const raw = bodyOf(req);
    if (nestsDeeperThan(raw, MAX_REPORT_DEPTH)) {
      throw invalid([{ field: 'checks', pointer: '/checks', message: `nests deeper than ${MAX_REPORT_DEPTH} levels` }]);
    }
    const body = parseOr422(ReadinessRequestSchema, raw);
    const { claims } = claimsOf(res);
    const receivedAt = new Date().toISOString();
    // No longer waiting: the workflow would ignore the report, so it never hears of it.
    const ordinal = tokenOrdinal(claims);
    const standing = ordinal === undefined ? undefined : await store.instanceStanding(claims.cluster, claims.service, claims.iid, ordinal);
    const seen = delivered.get(claims.iid);
    if ((standing !== undefined && NOT_WAITING.has(standing)) || (seen !== undefined && seen > Date.now() - DELIVERED_TTL_MS)) {
      const why = standing !== undefined && NOT_WAITING.has(standing) ? `the instance is ${standing}` : 'a report of this instance was already delivered';
      metrics?.report('ignored');
      res.status(200).json({ instanceId: claims.iid, receivedAt, ignored: true, note: `${why}; this report was not forwarded` });
      return;
    }
    // Only what the workflow's verdict can read travels (model/readiness.ts).
    const judged = verdictInput(body);
    const report: ReadinessReport = {
      instanceId: claims.iid,
      status: judged.status,
      ...(judged.checks && { checks: judged.checks }),
      receivedAt,
    };
    const submitted = performance.now();
    try {
      await batcher.submit(serviceWorkflowId(claims.cluster, claims.service), report);
      metrics?.report('delivered', (performance.now() - submitted) / 1000);
    } catch (err) {
      metrics?.report(isWorkflowGone(err) ? 'gone' : 'failed');
      if (isWorkflowGone(err)) {
        throw new Problem(410, 'Gone', `the service "${claims.service}" of cluster "${claims.cluster}" is no longer running`, { slug: 'gone' });
      }
      throw temporalProblem(err, 'could not deliver the readiness report');
    }
    remember(claims.iid, Date.now());
    res.status(202).json({ instanceId: report.instanceId, receivedAt: report.receivedAt });
  });

  /**
   * The drain notice (issue 13): what a guest, polling with its phone-home token, should know
   * of its cluster's plans for it. While the cluster is PAUSING its instances may drain until
   * `drainUntil` and are terminated then (a past `until`: now); a head node stops taking work
   * (HTCondor: `condor_off -peaceful`). The token is good as long as its instance lives, not
   * only until its `exp` (api/auth.ts, liveInstanceClaims): pauses come weeks after boot.
   */
  router.get('/v1/instances/:instanceId/notice', async (req, res) => {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.get('Authorization') ?? '');
    if (!m) throw unauthorized('send the instance token as "Authorization: Bearer <token>"');
    const claims = await liveInstanceClaims(m[1], { tokenSecret, store }, param(req, 'instanceId'));
    queryOf(req, NoQuerySchema);
    const view = await store.getClusterView(claims.cluster);
    const notice = view?.drainUntil !== undefined ? { drain: { until: view.drainUntil, reason: view.message ?? `cluster ${claims.cluster} is ${view.state}` } } : {};
    res.set('Cache-Control', 'no-store').json(notice);
  });
  return { router, batcher };
}

/** Verified claims travel from the auth step to the handler in `res.locals`. */
const claimsOf = (res: express.Response): { claims: TokenClaims } => res.locals as { claims: TokenClaims };
