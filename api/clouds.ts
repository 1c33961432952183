/**
 * The cloud catalogue over REST (issue 12): `GET /v1/clouds` lists the clouds the workers
 * can deploy to as the store has them (registry information, the offerings the catalogue
 * last listed, the quota and what cloudgate uses of it), and `POST /v1/clouds/:id/refresh`
 * (admins) runs the catalogue workflow for one cloud now, instead of waiting for the
 * schedule's next run (workflows/catalogue.ts), and answers the refreshed record — or 502
 * naming the cloud and why when it did not answer.
 */
import { randomBytes } from 'node:crypto';
import express, { type Router } from 'express';
import { WorkflowFailedError, type Client } from '@temporalio/client';
import { TimeoutFailure } from '@temporalio/common';
import type { CloudRecord, Store } from '../store/index.js';
import { cloudRefreshWorkflowId, type CloudCatalogueInput, type CloudCatalogueResult } from '../workflows/catalogue.js';
import { requireAdmin } from './auth.js';
import { NoQuerySchema, queryOf } from './paging.js';
import { notFound, Problem, unavailable } from './problem.js';
import { param } from './request.js';
import type { Cloud } from './schemas.js';
import { temporalProblem } from './temporal-errors.js';

/** How long the refresh workflow may take before the API answers 503 (a cloud's own listing gives up after 20 s). */
export const REFRESH_TIMEOUT_MS = 45_000;
/** The HTTP answer's deadline: the workflow's timeout and a margin to read its outcome. */
const REFRESH_DEADLINE_MS = REFRESH_TIMEOUT_MS + 10_000;

/** A cloud as the API shows it. */
export async function cloudView(store: Pick<Store, 'capacityUsage'>, c: CloudRecord): Promise<Cloud> {
  return {
    name: c.name,
    kind: c.kind,
    ...(c.endpoint !== undefined && { endpoint: c.endpoint }),
    ...(c.credentials !== undefined && { credentials: c.credentials }),
    offerings: c.offerings,
    images: c.images ?? [],
    ...(c.quota !== undefined && { quota: c.quota }),
    usage: await store.capacityUsage(c.name),
  };
}

export function cloudRoutes(deps: { store: Store; temporal: Client; taskQueue: string }): Router {
  const { store, temporal, taskQueue } = deps;
  const router = express.Router();

  router.get('/v1/clouds', async (req, res) => {
    queryOf(req, NoQuerySchema);
    res.json({ items: await Promise.all((await store.listClouds()).map((c) => cloudView(store, c))) });
  });

  router.post('/v1/clouds/:id/refresh', requireAdmin, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const name = param(req, 'id');
    if (!(await store.getCloud(name))) throw notFound(`no cloud named "${name}"; GET /v1/clouds lists them`);
    const workflowId = cloudRefreshWorkflowId(name, `${new Date().toISOString()}-${randomBytes(3).toString('hex')}`);
    const what = `refreshing the catalogue of cloud ${name}`;
    let result: CloudCatalogueResult;
    try {
      result = await temporal.withDeadline(Date.now() + REFRESH_DEADLINE_MS, async () => {
        const handle = await temporal.workflow.start('CloudCatalogueWorkflow', {
          taskQueue,
          workflowId,
          args: [{ clouds: [name] } satisfies CloudCatalogueInput],
          workflowExecutionTimeout: REFRESH_TIMEOUT_MS,
          staticSummary: `refresh the offerings of ${name} (POST /v1/clouds/${name}/refresh)`,
        });
        return (await handle.result()) as CloudCatalogueResult;
      });
    } catch (err) {
      if (err instanceof WorkflowFailedError && err.cause instanceof TimeoutFailure) {
        throw new Problem(503, 'Service Unavailable', `${what}: no cloudgate worker finished it within ${REFRESH_TIMEOUT_MS / 1000} s (is a worker running?)`, {
          slug: 'unavailable',
          headers: { 'Retry-After': '5' },
          extensions: { cloud: name, workflowId },
          cause: err,
        });
      }
      throw temporalProblem(err, what);
    }
    const failed = result.failed.find((f) => f.cloud === name);
    if (failed) {
      const kept = (await store.getCloud(name))?.offerings.length ?? 0;
      const extensions = { cloud: name, error: failed.error, ...(failed.errorKind !== undefined && { errorKind: failed.errorKind }), offeringsKept: kept, workflowId };
      if (failed.errorKind === 'UnknownCloud') {
        // The API's store knows it, the worker's registry does not: a worker of another configuration.
        const p = unavailable(`cloud ${name}: ${failed.error}`);
        throw new Problem(p.status, p.title, p.detail, { ...p.opts, extensions });
      }
      throw new Problem(502, 'Bad Gateway', `cloud ${name} did not answer: ${failed.error} (${kept} offerings listed before are kept)`, {
        slug: 'cloud-unreachable',
        extensions,
      });
    }
    const record = await store.getCloud(name);
    if (!record) throw notFound(`cloud ${name} is no longer in the registry`);
    res.set('Cache-Control', 'no-store').json(await cloudView(store, record));
  });

  return router;
}
