/**
 * `/v1/cluster-definitions`: store, list, show and delete cluster definitions. A definition
 * belongs to whoever stored it; anyone else's is a 404. Deleting is soft (clusters made from
 * it keep reading it) and refused (409) while a cluster made from it is still running.
 */
import express, { type Router } from 'express';
import type { Client } from '@temporalio/client';
import { ClusterDefinitionSchema } from '../model/definition.js';
import type { ClusterDefinitionRecord, Store } from '../store/index.js';
import { clusterWorkflowId } from '../workflows/messages.js';
import { canSee, listOwner, principalOf, type Principal } from './auth.js';
import { contextReferenceErrors } from './context-pins.js';
import { NoQuerySchema, pageOf, queryOf } from './paging.js';
import { conflict, invalid, notFound, parseOr422 } from './problem.js';
import { bodyOf, param } from './request.js';
import { ListQuerySchema } from './schemas.js';
import { isWorkflowGone, temporalProblem } from './temporal-errors.js';

export function definitionRoutes(deps: { store: Store; temporal: Client; json: express.RequestHandler; now?: () => Date }): Router {
  const { store, temporal, json } = deps;
  const now = deps.now ?? (() => new Date());
  const router = express.Router();

  /** The live definition `id` if the caller may see it; else 404 (deleted ones too). */
  const definitionOr404 = async (id: string, p: Principal): Promise<ClusterDefinitionRecord> => {
    const rec = await store.getDefinition(id);
    if (!rec || rec.deletedAt || !canSee(p, rec.owner)) throw notFound(`no cluster definition "${id}"`);
    return rec;
  };

  /** A cluster still uses its definition until its workflow has ended (TERMINATED, or FAILED after a rollback). */
  async function stillRunning(clusterId: string): Promise<boolean> {
    if ((await store.getClusterView(clusterId))?.state === 'TERMINATED') return false;
    try {
      const desc = await temporal.workflow.getHandle(clusterWorkflowId(clusterId)).describe();
      return desc.status.name === 'RUNNING';
    } catch (err) {
      if (isWorkflowGone(err)) return false;
      throw temporalProblem(err, `could not tell whether cluster "${clusterId}" still runs`);
    }
  }

  router.post('/v1/cluster-definitions', json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const p = principalOf(res);
    const definition = parseOr422(ClusterDefinitionSchema, bodyOf(req));
    const unknownContexts = await contextReferenceErrors(definition, store, (owner) => canSee(p, owner));
    if (unknownContexts.length > 0) throw invalid(unknownContexts);
    const rec = await store.createDefinition({ name: definition.name, definition, owner: p.owner });
    res.status(201).location(`/v1/cluster-definitions/${rec.id}`).json(rec);
  });

  router.get('/v1/cluster-definitions', async (req, res) => {
    const { owner, cursor, limit } = queryOf(req, ListQuerySchema);
    const scope = listOwner(principalOf(res), owner);
    const mine = scope.none ? [] : (await store.listDefinitions()).filter((d) => scope.owner === undefined || d.owner === scope.owner);
    res.json(pageOf(mine, { cursor, limit }));
  });

  router.get('/v1/cluster-definitions/:id', async (req, res) => {
    queryOf(req, NoQuerySchema);
    res.json(await definitionOr404(param(req, 'id'), principalOf(res)));
  });

  router.delete('/v1/cluster-definitions/:id', async (req, res) => {
    queryOf(req, NoQuerySchema);
    const rec = await definitionOr404(param(req, 'id'), principalOf(res));
    const running = [];
    for (const c of await store.clustersOfDefinition(rec.id)) if (await stillRunning(c.id)) running.push(c.id);
    if (running.length > 0) {
      throw conflict(`cluster definition "${rec.id}" is used by ${running.length === 1 ? 'cluster' : 'clusters'} ${running.join(', ')}; tear ${running.length === 1 ? 'it' : 'them'} down first`);
    }
    await store.deleteDefinition(rec.id, now());
    res.status(204).end();
  });

  return router;
}
