/**
 * Sessions and elastic scaling over REST (issue 13): `POST /v1/clusters/:id/keepalive` resets
 * a session's idle clock, `POST /v1/clusters/:id/extend {seconds}` moves its maximum (within
 * the site-wide cap), `POST /v1/clusters/:id/services/:service/load` reports a service's
 * load (autoscale; it keeps the session alive too), `POST /v1/clusters/:id/retry` re-runs
 * its failed services now, and `POST /v1/clusters/:id/pause {graceSeconds?}` / `resume`
 * vacate a cluster (the HLT farm lent out) and deploy it again. All are Updates of the cluster workflow,
 * validated there (a rejected one leaves no trace in its history). The owner or an admin may
 * call them; anyone else gets 404, as for every other cluster route. The load report also takes
 * the phone-home token of any live instance of that cluster (api/auth.ts), so a head node
 * reports without a user's credentials; a token of another cluster gets the same 404.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import express, { type Router } from 'express';
import type { Client } from '@temporalio/client';
import { RETRYABLE_SERVICE_STATES } from '../model/status.js';
import type { ServiceViewRecord, Store } from '../store/index.js';
import {
  CLUSTER_NOT_ACTIVE,
  clusterWorkflowId,
  extendUpdate,
  keepaliveUpdate,
  LIFETIME_OUT_OF_BOUNDS,
  loadUpdate,
  NO_AUTOSCALE,
  NO_LIFETIME,
  NOTHING_TO_RETRY,
  NOT_PAUSABLE,
  pauseUpdate,
  resumeUpdate,
  retryUpdate,
  UNKNOWN_SERVICE,
} from '../workflows/messages.js';
import { callerOf, principalOf } from './auth.js';
import { NoQuerySchema, queryOf } from './paging.js';
import { conflict, invalid, notFound, parseOr422, type Problem } from './problem.js';
import { bodyOf, optionalBodyOf, param } from './request.js';
import { ExtendRequestSchema, LoadRequestSchema, PauseRequestSchema } from './schemas.js';
import { refusedAs, UPDATE_DEADLINE_MS, updateProblem } from './temporal-errors.js';
import { visibleCluster } from './clusters.js';

/** The default site-wide cap of a cluster's lifetime (`config.maxLifetimeSeconds`). */
export { DEFAULT_MAX_LIFETIME_SECONDS } from '../model/session.js';

export function sessionRoutes(deps: { store: Store; temporal: Client; json: express.RequestHandler }): Router {
  const { store, temporal, json } = deps;
  const router = express.Router();

  /**
   * The cluster of the path, as the caller may see it (else 404): a user's or admin's by
   * ownership; a guest's (load reports only) when its token names this very cluster.
   */
  const clusterOf = async (req: express.Request, res: express.Response, guests: boolean) => {
    const id = param(req, 'id');
    const caller = guests ? callerOf(res) : { principal: principalOf(res) };
    if (!caller.instance) return await visibleCluster(store, id, caller.principal);
    const c = caller.instance.cluster === id ? await store.getCluster(id) : undefined;
    if (!c) throw notFound(`no cluster "${id}"`);
    return c;
  };

  /** Runs one session Update on the cluster the caller may see (else 404), mapping its rejections to problems. */
  const update = async <T>(req: express.Request, res: express.Response, run: (id: string) => Promise<T>, what: string, guests = false): Promise<void> => {
    queryOf(req, NoQuerySchema);
    // Only the load route takes a guest's token (INSTANCE_TOKEN_ROUTES in api/auth.ts); every other one has a principal.
    const c = await clusterOf(req, res, guests);
    let view: T;
    try {
      view = await temporal.withDeadline(Date.now() + UPDATE_DEADLINE_MS, () => run(c.id));
    } catch (err) {
      throw sessionProblem(err, c.id, what);
    }
    res.set('Cache-Control', 'no-store').json(view);
  };

  router.post('/v1/clusters/:id/keepalive', async (req, res) => {
    await update(req, res, (id) => temporal.workflow.getHandle(clusterWorkflowId(id)).executeUpdate(keepaliveUpdate), 'keep alive');
  });

  router.post('/v1/clusters/:id/extend', json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const { seconds } = parseOr422(ExtendRequestSchema, bodyOf(req));
    await update(req, res, (id) => temporal.workflow.getHandle(clusterWorkflowId(id)).executeUpdate(extendUpdate, { args: [{ seconds }] }), 'extend');
  });

  router.post('/v1/clusters/:id/pause', json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    // The body is optional: no grace period without one.
    const { graceSeconds } = parseOr422(PauseRequestSchema, optionalBodyOf(req) ?? {});
    await update(req, res, (id) => temporal.workflow.getHandle(clusterWorkflowId(id)).executeUpdate(pauseUpdate, { args: [{ graceSeconds }] }), 'pause');
  });

  router.post('/v1/clusters/:id/resume', async (req, res) => {
    await update(req, res, (id) => temporal.workflow.getHandle(clusterWorkflowId(id)).executeUpdate(resumeUpdate), 'resume');
  });

  router.post('/v1/clusters/:id/retry', async (req, res) => {
    await update(
      req,
      res,
      (id) => retryOnceHeard(() => temporal.workflow.getHandle(clusterWorkflowId(id)).executeUpdate(retryUpdate), () => store.getServiceViews(id)),
      'retry',
    );
  });

  router.post('/v1/clusters/:id/services/:service/load', json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const load = parseOr422(LoadRequestSchema, bodyOf(req));
    const service = param(req, 'service');
    await update(req, res, (id) => temporal.workflow.getHandle(clusterWorkflowId(id)).executeUpdate(loadUpdate, { args: [{ service, ...load }] }), 'report the load of', true);
  });

  return router;
}

/** How long a retry waits for its cluster workflow to hear what the read model already shows, and how often it asks again. */
const RETRY_CATCH_UP_MS = 3_000;
const RETRY_CATCH_UP_STEP_MS = 100;

/**
 * A service publishes its own state (which `GET /v1/clusters/:id` shows) just before its
 * cluster workflow hears of it: a retry asked for in between would be refused although the
 * answer just read says FAILED. So while the read model (`shown`) has a service to retry, a
 * refusal is tried again every {@link RETRY_CATCH_UP_STEP_MS} for at most `waitMs` (a refused
 * Update leaves nothing in the workflow's history); any other failure is thrown at once.
 */
export async function retryOnceHeard<T>(run: () => Promise<T>, shown: () => Promise<Pick<ServiceViewRecord, 'summary'>[]>, waitMs = RETRY_CATCH_UP_MS): Promise<T> {
  const until = Date.now() + waitMs;
  for (;;) {
    try {
      return await run();
    } catch (err) {
      if (!refusedAs(err, NOTHING_TO_RETRY) || Date.now() >= until) throw err;
      if (!(await shown()).some((v) => RETRYABLE_SERVICE_STATES.has(v.summary.state))) throw err;
      await sleep(RETRY_CATCH_UP_STEP_MS);
    }
  }
}

function sessionProblem(err: unknown, clusterId: string, what: string): Problem {
  const refused = (msg: string) => conflict(msg, err);
  return updateProblem(err, clusterId, what, {
    [LIFETIME_OUT_OF_BOUNDS]: (msg) => invalid([{ field: 'seconds', pointer: '/seconds', message: msg }]),
    [UNKNOWN_SERVICE]: (msg) => notFound(msg),
    ...Object.fromEntries([NO_LIFETIME, NO_AUTOSCALE, NOTHING_TO_RETRY, NOT_PAUSABLE, CLUSTER_NOT_ACTIVE].map((type) => [type, refused])),
  });
}
