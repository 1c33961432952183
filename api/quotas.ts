/**
 * Per-owner quotas: `PUT /v1/owners/:owner/quota` (admins) and `GET /v1/owners/:owner/quota`
 * (the owner or an admin; anyone else gets 404), and the helpers the cluster routes use to
 * check a submission or a scale-up. The check and the reservation are one transaction in the
 * store (store/quotas-audit.ts); here they become HTTP: over quota is a 403 problem+json
 * `urn:cloudgate:problem:quota-exceeded` naming the quota, the usage and the request.
 */
import express, { type Router } from 'express';
import type { Client } from '@temporalio/client';
import { ConfigSchema, type Quota } from '../model/config.js';
import type { ClusterDefinition } from '../model/definition.js';
import type { QuotaClaim, QuotaExceededError, Store } from '../store/index.js';
import { clusterWorkflowId } from '../workflows/messages.js';
import { principalOf, requireAdmin } from './auth.js';
import { invalid, notFound, parseOr422, Problem } from './problem.js';
import { bodyOf, param } from './request.js';
import { NoQuerySchema, queryOf } from './paging.js';
import { OwnerSchema, QuotaRequestSchema } from './schemas.js';
import { isWorkflowGone } from './temporal-errors.js';

/** The config's default when the API is built without one (tests that build the app directly). */
export const DEFAULT_QUOTA: Quota = ConfigSchema.shape.quota.parse(undefined);

/** What a cluster of `definition` reserves at submission: each service's `min`, at its offering's cpus. */
export const claimOf = (owner: string, definition: ClusterDefinition, desired: (service: string) => number | undefined = () => undefined): QuotaClaim => ({
  owner,
  services: definition.services.map((s) => ({ service: s.name, instances: desired(s.name) ?? s.min, cpus: s.offering.cpus })),
});

/** 403: the request is valid, its owner may not have that much more. */
export function quotaProblem(err: QuotaExceededError): Problem {
  return new Problem(403, 'Quota exceeded', err.message, {
    slug: 'quota-exceeded',
    extensions: {
      owner: err.owner,
      quota: err.quota,
      source: err.source,
      usage: err.usage,
      exceeded: err.excess,
    },
  });
}

/**
 * Releases the reservations of `owner`'s FAILED clusters whose workflow has ended (a rollback
 * or a failed CVMFS check: the cluster is gone). A FAILED cluster under `keep` still runs and
 * keeps counting. One describe per such cluster, once: a released reservation is not asked
 * about again. A describe that fails leaves the reservation counted (the safe side).
 */
export async function releaseEnded(store: Store, temporal: Client, owner: string): Promise<void> {
  await Promise.all(
    (await store.quotaHeldByFailed(owner)).map(async (id) => {
      try {
        const desc = await temporal.workflow.getHandle(clusterWorkflowId(id)).describe();
        if (desc.status.name !== 'RUNNING' && desc.status.name !== 'CONTINUED_AS_NEW') await store.releaseQuota(id);
      } catch (err) {
        if (isWorkflowGone(err)) await store.releaseQuota(id);
      }
    }),
  );
}

/** The `:owner` of the path, or a 422 naming it. */
function ownerOr422(owner: string): string {
  const r = OwnerSchema.safeParse(owner);
  if (!r.success) throw invalid([{ field: 'owner', message: r.error.issues[0].message }]);
  return r.data;
}

export function quotaRoutes(deps: { store: Store; temporal: Client; defaultQuota?: Quota; json: express.RequestHandler }): Router {
  const { store, temporal, json } = deps;
  const defaultQuota = deps.defaultQuota ?? DEFAULT_QUOTA;
  const router = express.Router();

  const status = async (owner: string) => {
    const own = await store.getOwnerQuota(owner);
    return {
      owner,
      quota: own?.quota ?? defaultQuota,
      usage: await store.quotaUsage(owner),
      source: own ? ('owner' as const) : ('default' as const),
      ...(own && { updatedAt: own.updatedAt }),
    };
  };

  router.put('/v1/owners/:owner/quota', requireAdmin, json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const owner = ownerOr422(param(req, 'owner'));
    const quota = parseOr422(QuotaRequestSchema, bodyOf(req));
    await store.setOwnerQuota(owner, quota);
    res.json(await status(owner));
  });

  router.get('/v1/owners/:owner/quota', async (req, res) => {
    queryOf(req, NoQuerySchema);
    const p = principalOf(res);
    const owner = param(req, 'owner');
    // Someone else's quota is a 404, exactly like an owner that does not exist.
    if (p.role !== 'admin' && owner !== p.owner) throw notFound(`no owner "${owner}"`);
    ownerOr422(owner);
    await releaseEnded(store, temporal, owner);
    res.set('Cache-Control', 'no-cache').json(await status(owner));
  });

  return router;
}
