/**
 * Cluster routes: create (start a ClusterWorkflow), list, show, instances and events (the
 * read model), scale (update) and tear down (signal). The store holds what was asked for and
 * what the workflows last published of what is; reads answer from it without a worker.
 */
import { createHash, randomInt } from 'node:crypto';
import express, { type Router } from 'express';
import {
  WorkflowExecutionAlreadyStartedError,
  type Client,
  type WorkflowExecutionDescription,
} from '@temporalio/client';
import type { SearchAttributePair } from '@temporalio/common';
import { clusterClouds, NameSchema } from '../model/definition.js';
import { humanSeconds, resolveLifetime } from '../model/session.js';
import { nextWindowOpening, resolveWindows } from '../model/windows.js';
import type { ServiceDefinition } from '../model/definition.js';
import type { PublishedService } from '../model/read-model.js';
import { CLUSTER_STATES, type ClusterState } from '../model/status.js';
import { imageErrors } from '../model/images.js';
import { smallestFit } from '../model/placement.js';
import {
  DuplicateKeyError,
  InvalidCursorError,
  QuotaExceededError,
  type CloudRecord,
  type ClusterDefinitionRecord,
  type ClusterRecord,
  type ClusterViewRecord,
  type Page,
  type ServiceViewRecord,
  type Store,
} from '../store/index.js';
import {
  CHANGE_REFUSED,
  changeUpdate,
  CLUSTER_NOT_ACTIVE,
  clusterWorkflowId,
  SA_CLOUDS,
  SA_CLUSTER_ID,
  SA_DEFINITION,
  SA_OWNER,
  SA_STATE,
  scaleUpdate,
  SCALE_OUT_OF_BOUNDS,
  teardownSignal,
  UNKNOWN_SERVICE,
  type ChangeResult,
  type ClusterInput,
} from '../workflows/messages.js';
import { canSee, listOwner, principalOf, type Principal } from './auth.js';
import { NoQuerySchema, pageOf, queryOf } from './paging.js';
import { claimOf, DEFAULT_QUOTA, quotaProblem, releaseEnded } from './quotas.js';
import type { Quota } from '../model/config.js';
import { conflict, invalid, notFound, parseOr422, unavailable, type FieldError, type Problem } from './problem.js';
import { pinContexts, userDataMisfits } from './context-pins.js';
import { bodyOf, param } from './request.js';
import {
  ChangeClusterRequestSchema,
  CreateClusterRequestSchema,
  IdempotencyKeySchema,
  InstancesQuerySchema,
  ClusterListQuerySchema,
  PageQuerySchema,
  ScaleRequestSchema,
  type ClusterDetail,
  type CreateClusterRequest,
} from './schemas.js';
import { isWorkflowGone, QUERY_DEADLINE_MS, SIGNAL_DEADLINE_MS, temporalProblem, UPDATE_DEADLINE_MS, updateProblem } from './temporal-errors.js';

/** What the cluster routes use; `json` is the app's body parser (limit and error mapping). */
export interface ClusterRouteDeps {
  store: Store;
  temporal: Client;
  config: { temporalUiUrl: string; namespace: string; taskQueue: string; publicUrl: string; tokenSecret: string; quota?: Quota; maxLifetimeSeconds: number };
  json: express.RequestHandler;
}

/** What `read` gives of cluster `id` if the caller may see it; someone else's is a 404 exactly like an unknown one. */
async function visible<T>(id: string, p: Principal, read: (id: string) => Promise<T | undefined>, owner: (found: T) => string | undefined): Promise<T> {
  const found = isName(id) ? await read(id) : undefined;
  if (!found || !canSee(p, owner(found))) throw notFound(`no cluster "${id}"`);
  return found;
}

/** The cluster `id` if the caller may see it (see {@link visible}). */
export const visibleCluster = (store: Pick<Store, 'getCluster'>, id: string, p: Principal): Promise<ClusterRecord> =>
  visible(id, p, (i) => store.getCluster(i), (c) => c.owner);

/** Route parameters that cannot name a cluster or service get a 404 without a store or Temporal round trip. */
const isName = (s: string): boolean => NameSchema.safeParse(s).success;
/** Cluster ids are `<prefix>-<6 base36>` and must stay valid names (≤ 40 chars). */
const ID_PREFIX_MAX = 40 - 7;
/** How long a seen worker counts as present before the task queue is asked again. */
const WORKER_SEEN_TTL_MS = 5_000;
/** Services declared without `max` may still not exceed the schema's bound. */
const HARD_MAX_INSTANCES = 10_000;

const newClusterId = (base: string): string =>
  `${base.slice(0, ID_PREFIX_MAX).replace(/-+$/, '')}-${randomInt(36 ** 6).toString(36).padStart(6, '0')}`;

/**
 * Stable hash of the (defaulted) request, to tell a retry from a different request with the same
 * key. A request's `windows` count only when given, so keys stored before windows keep their hashes.
 */
const requestHash = (r: CreateClusterRequest): string =>
  createHash('sha256')
    // Later fields only when given: hashes stored before they existed still match.
    .update(JSON.stringify([r.definitionId, r.name ?? null, r.cloud, ...(r.windows ? [r.windows] : []), ...(r.lifetime ? [{ lifetime: r.lifetime }] : [])]))
    .digest('hex');

const isClusterState = (s: unknown): s is ClusterState => (CLUSTER_STATES as readonly unknown[]).includes(s);

/**
 * The state to show for a described workflow: the workflow's own search attribute, unless
 * the execution was closed from outside (terminated, timed out) without saying so.
 */
export function stateOf(desc: WorkflowExecutionDescription): ClusterState {
  const sa = desc.typedSearchAttributes.get(SA_STATE);
  const state: ClusterState = isClusterState(sa) ? sa : 'PENDING';
  const closed = desc.status.name !== 'RUNNING' && desc.status.name !== 'CONTINUED_AS_NEW';
  if (!closed || state === 'TERMINATED' || state === 'FAILED') return state;
  return desc.status.name === 'COMPLETED' ? 'TERMINATED' : 'FAILED';
}

/**
 * The services of the cluster answer, in the cluster workflow's list (its order, and services
 * not started yet), each summary whole from one source. A service's own publish is fresher
 * for counts (it reports to the cluster workflow only when its state, "minimum reached",
 * desired count or failure changes), so it is used, unless it shows another state than the
 * cluster workflow's copy and is older than the cluster's publish: a service signals the
 * cluster workflow before its own publish lands, and without this a FAILED or READY cluster
 * could show the service that made it so still DEPLOYING. Services that published before
 * the cluster listed them come last, by name; those it no longer lists and that are
 * TERMINATED (removed by a change) are left out.
 */
export function mergeServices(view: ClusterViewRecord | undefined, serviceViews: ServiceViewRecord[]): PublishedService[] {
  const own = new Map(serviceViews.map((v) => [v.service, v]));
  const listed = view?.services ?? [];
  const names = new Set(listed.map((s) => s.name));
  return [
    ...listed.map((copy) => {
      const o = own.get(copy.name);
      const behind = o !== undefined && o.summary.state !== copy.state && Date.parse(o.observedAt) < Date.parse(view!.observedAt);
      // Per-cloud counts are only in the service's own publish: kept even when its state is behind.
      return o && !behind ? o.summary : { ...copy, ...(o?.summary.clouds && { clouds: o.summary.clouds }) };
    }),
    // A service a change removed is no longer listed; its own last publish (TERMINATED) stays in the store.
    ...serviceViews.filter((v) => !names.has(v.service) && !(view && v.summary.state === 'TERMINATED')).map((v) => v.summary),
  ];
}

/**
 * Weak ETag of a cluster answer built from the read model. Everything else in the answer
 * (name, definition, cloud, pinned contexts, links) never changes for a cluster, so the
 * cluster's and its services' publishes identify the answer, each by its seq and time (a
 * lost workflow task's publish is replaced by one with the same seq, later: see the store's
 * `publishCluster`) — with, for a cluster with windows, its `nextWindowAt`, which moves with
 * the clock.
 */
export function readModelEtag(view: ClusterViewRecord, serviceViews: ServiceViewRecord[], nextWindowAt?: string): string {
  const seqs = [view.seq, view.observedAt, serviceViews.map((v) => [v.service, v.seq, v.observedAt])];
  const key = JSON.stringify(nextWindowAt === undefined ? seqs : [...seqs, nextWindowAt]);
  return `W/"${createHash('sha256').update(key).digest('base64url').slice(0, 22)}"`;
}

/** A store page, with a cursor the store did not make as a 422 naming `cursor`. */
async function pageOr422<T>(list: () => Promise<Page<T>>): Promise<Page<T>> {
  try {
    return await list();
  } catch (err) {
    if (err instanceof InvalidCursorError) {
      throw invalid([{ field: 'cursor', pointer: '/cursor', message: 'is not a cursor of this list; pass the `next` of a previous page' }]);
    }
    throw err;
  }
}

/** `POST/GET /v1/clusters`, `GET/DELETE /v1/clusters/:id`, its instances and events, and the scale route. */
export function clusterRoutes(deps: ClusterRouteDeps): Router {
  const { store, temporal, config, json } = deps;
  const router = express.Router();
  const defaultQuota = config.quota ?? DEFAULT_QUOTA;

  /**
   * Scales of one cluster run one at a time in this process, so the quota reservation, the
   * update and the reservation's settling (or undoing) after it are not interleaved with
   * another scale of the same cluster.
   */
  const scaling = new Map<string, Promise<unknown>>();
  async function oneAtATime<T>(key: string, f: () => Promise<T>): Promise<T> {
    const run = (scaling.get(key) ?? Promise.resolve()).then(f, f);
    const tail = run.catch(() => undefined);
    scaling.set(key, tail);
    try {
      return await run;
    } finally {
      if (scaling.get(key) === tail) scaling.delete(key);
    }
  }

  const links = (id: string) => ({
    self: `/v1/clusters/${id}`,
    temporalUi: `${config.temporalUiUrl.replace(/\/+$/, '')}/namespaces/${encodeURIComponent(config.namespace)}/workflows/${encodeURIComponent(clusterWorkflowId(id))}`,
  });

  /**
   * Queries and updates wait for a worker; with none polling they would hang until their
   * deadline. The task queue's poller list answers at once (remembered for a few seconds);
   * it only catches a worker that is gone for minutes, the deadlines cover the rest.
   */
  let workerSeenAt = -Infinity;
  async function requireWorker(): Promise<void> {
    if (Date.now() - workerSeenAt < WORKER_SEEN_TTL_MS) return;
    let pollers: unknown[] | null | undefined;
    try {
      ({ pollers } = await temporal.withDeadline(Date.now() + QUERY_DEADLINE_MS, () =>
        temporal.workflowService.describeTaskQueue({
          namespace: config.namespace,
          taskQueue: { name: config.taskQueue },
          taskQueueType: 1 /* TASK_QUEUE_TYPE_WORKFLOW */,
        }),
      ));
    } catch (err) {
      throw temporalProblem(err, 'could not look for a worker');
    }
    if (!pollers?.length) throw unavailable(`the cloudgate worker is not reachable: nothing polls task queue "${config.taskQueue}"`);
    workerSeenAt = Date.now();
  }

  const clusterOr404 = (id: string, p: Principal): Promise<ClusterRecord> => visibleCluster(store, id, p);

  /** A service of the cluster's definition, else 404. */
  const serviceOr404 = async (c: ClusterRecord, service: string): Promise<ServiceDefinition> => {
    const s = isName(service) ? (await store.getDefinition(c.definitionId))?.definition.services.find((x) => x.name === service) : undefined;
    if (!s) throw notFound(`cluster "${c.id}" has no service "${service}"`);
    return s;
  };

  /**
   * The state of a cluster whose workflow has published none yet (just submitted, or started
   * before workflows published): its `CloudgateState` search attribute. A describe is
   * answered by Temporal itself, so this too works with no worker running.
   */
  async function workflowState(id: string): Promise<{ state: ClusterState; gone: boolean }> {
    try {
      return { state: stateOf(await temporal.workflow.getHandle(clusterWorkflowId(id)).describe()), gone: false };
    } catch (err) {
      if (isWorkflowGone(err)) return { state: 'PENDING', gone: true };
      throw temporalProblem(err, `could not read the state of cluster "${id}"`);
    }
  }

  /** Starts (or finds) the cluster's workflow. A closed one is never started again. */
  async function startWorkflow(c: ClusterRecord, def: ClusterDefinitionRecord, contexts: ClusterInput['contexts']): Promise<void> {
    const d = def.definition;
    const input: ClusterInput = {
      clusterId: c.id,
      name: c.name,
      definitionId: def.id,
      definition: d,
      cloud: c.cloud,
      ...(c.owner && { owner: c.owner }),
      ...(contexts && Object.keys(contexts).length > 0 && { contexts }),
      ...(c.lifetime && { lifetime: { ...c.lifetime, capSeconds: config.maxLifetimeSeconds } }),
      ...(c.windows && { windows: c.windows }),
    };
    // Every cloud a service may use (placement's, else the cluster's): `CloudgateClouds = "hlt"` finds the clusters that may touch hlt.
    const clouds = clusterClouds(d.services, c.cloud);
    const attrs: SearchAttributePair[] = [
      { key: SA_CLUSTER_ID, value: c.id },
      { key: SA_DEFINITION, value: def.id }, // the id: search attributes are plaintext in Temporal, names go in encrypted payloads
      { key: SA_STATE, value: 'PENDING' },
      ...(c.owner ? [{ key: SA_OWNER, value: c.owner }] : []),
      { key: SA_CLOUDS, value: clouds },
    ];
    const minInstances = d.services.reduce((n, s) => n + s.min, 0);
    await temporal.workflow.start('ClusterWorkflow', {
      taskQueue: config.taskQueue,
      workflowId: clusterWorkflowId(c.id),
      args: [input],
      typedSearchAttributes: attrs,
      staticSummary: `cluster ${c.name} from ${d.name} on ${clouds.length > 1 ? `clouds ${clouds.join(', ')}` : clouds[0]}: ${d.services.length} services, ${minInstances} instances min`,
      workflowIdConflictPolicy: 'USE_EXISTING',
      // A torn-down cluster must stay down even if a client replays its create request.
      workflowIdReusePolicy: 'REJECT_DUPLICATE',
    });
  }

  const created = (c: ClusterRecord) => ({ id: c.id, name: c.name, state: 'PENDING' as const, links: links(c.id) });

  /** Answers a repeated create: same body → the same cluster (its workflow started if a crash left it unstarted). */
  async function replay(existing: ClusterRecord, hash: string, p: Principal): Promise<ClusterRecord> {
    if (existing.requestHash !== hash) {
      throw invalid([{ field: 'Idempotency-Key', message: 'this key was already used with a different request body' }]);
    }
    const def = await store.getDefinition(existing.definitionId);
    if (def) {
      try {
        // Only reached when a crash left the row without its workflow: the versions pinned then still hold.
        await startWorkflow(existing, def, existing.contexts ?? (await pinContexts(def.definition, store, (owner) => canSee(p, owner))).pins);
      } catch (err) {
        if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw temporalProblem(err, 'could not start the cluster workflow');
      }
    }
    return existing;
  }

  /**
   * Whether clusters of definition `definitionId` may run on cloud `cloudName` (a submission, or
   * a change of a running cluster): the definition is the caller's, every cloud a service may
   * land on is registered and has an offering that fits, every context pins (`contextVersions`
   * overriding a service's version), its user data fits each cloud, and its images are ones
   * the clouds name. Nothing is written.
   */
  async function checkSpec(definitionId: string, cloudName: string, mayUse: (owner: string | undefined) => boolean, contextVersions?: Record<string, number>) {
    const errors: FieldError[] = [];
    const stored = await store.getDefinition(definitionId);
    const def = stored && !stored.deletedAt && mayUse(stored.owner) ? stored : undefined;
    if (!def) errors.push({ field: 'definitionId', pointer: '/definitionId', message: `no cluster definition "${definitionId}"` });
    // Every registered cloud, read once: the checks below look clouds up by name.
    const clouds = new Map((await store.listClouds()).map((c) => [c.name, c]));
    const cloud = clouds.get(cloudName);
    const registered = () => [...clouds.keys()].join(', ') || 'none';
    if (!cloud) errors.push({ field: 'cloud', pointer: '/cloud', message: `unknown cloud "${cloudName}" (registered: ${registered()})` });
    // Every cloud a service may land on (its placement's, else the cluster's) is checked, before anything is written.
    const targets = def ? cloudTargets(def.definition.services, cloud, (name) => clouds.get(name)) : [];
    for (const t of targets) {
      if (!t.cloud) errors.push({ field: t.field, pointer: t.pointer, message: `service "${t.service.name}": unknown cloud "${t.name}" (registered: ${registered()})` });
    }
    errors.push(...offeringMisfits(targets));
    for (const [service, version] of Object.entries(contextVersions ?? {})) {
      const s = def?.definition.services.find((x) => x.name === service);
      if (def && !s?.contextId) {
        errors.push({ field: `contextVersions.${service}`, pointer: `/contextVersions/${service}`, message: s ? `service "${service}" has no context` : `definition "${def.id}" has no service "${service}"` });
      } else if (s) s.contextVersion = version;
    }
    const pinned = def && (await pinContexts(def.definition, store, mayUse));
    if (pinned) errors.push(...pinned.errors);
    if (def && pinned && pinned.errors.length === 0) {
      const registeredOf = (_s: ServiceDefinition, i: number) =>
        targets.flatMap((t) => (t.index === i && t.cloud ? [{ cloud: t.cloud, field: t.field, pointer: t.pointer }] : []));
      errors.push(...(await userDataMisfits(def.definition, registeredOf, pinned.pins, store, config)));
    }
    // Only images the cloud's registry entry names (model/images.ts); nothing else reaches an adapter.
    if (def) errors.push(...imageErrors(def.definition, cloud, (name) => clouds.get(name)));
    return { def, pinned, errors };
  }

  router.post('/v1/clusters', json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const p = principalOf(res);
    const mayUse = (owner: string | undefined) => canSee(p, owner);
    const body = parseOr422(CreateClusterRequestSchema, bodyOf(req));
    const keyHeader = req.get('Idempotency-Key');
    const parsedKey = keyHeader === undefined ? undefined : IdempotencyKeySchema.safeParse(keyHeader);
    if (parsedKey && !parsedKey.success) throw invalid([{ field: 'Idempotency-Key', message: parsedKey.error.issues[0].message }]);
    // Keys are the caller's own: two owners using the same key never meet (keys have no spaces).
    const key = parsedKey && { data: `${p.owner} ${parsedKey.data}` };
    const hash = requestHash(body);

    if (key) {
      const existing = await store.findClusterByIdempotencyKey(key.data);
      if (existing) return void res.status(202).location(links(existing.id).self).json(created(await replay(existing, hash, p)));
    }

    const { def, pinned, errors } = await checkSpec(body.definitionId, body.cloud, mayUse);
    // A session's lifetime: the definition's, overridden by the request's, its maximum within the site's cap.
    const lifetime = def && resolveLifetime(def.definition.lifetime, body.lifetime);
    if (lifetime?.maxSeconds !== undefined && lifetime.maxSeconds > config.maxLifetimeSeconds) {
      const own = body.lifetime?.maxSeconds !== undefined;
      errors.push({
        field: own ? 'lifetime.maxSeconds' : 'definition.lifetime.maxSeconds',
        pointer: own ? '/lifetime/maxSeconds' : '/definition/lifetime/maxSeconds',
        message: `a cluster may live at most ${humanSeconds(config.maxLifetimeSeconds)} on this site; ${humanSeconds(lifetime.maxSeconds)} asked`,
      });
    }
    if (!def || !pinned || errors.length > 0) throw invalid(errors);
    // Schedule windows: the request's list instead of the definition's (`[]`: none).
    const windows = resolveWindows(def.definition.windows, body.windows);

    const name = body.name ?? def.definition.name;
    // Quota: FAILED clusters whose workflow ended stop counting; then check and reserve with the insert (one transaction).
    await releaseEnded(store, temporal, p.owner);
    const quota = { claim: claimOf(p.owner, def.definition), defaultQuota };
    let cluster: ClusterRecord | undefined;
    for (let attempt = 0; !cluster; attempt++) {
      try {
        cluster = await store.createCluster({
          id: newClusterId(name),
          name,
          definitionId: def.id,
          cloud: body.cloud,
          owner: p.owner,
          ...(Object.keys(pinned.pins).length > 0 && { contexts: pinned.pins }),
          ...(lifetime && { lifetime }),
          ...(windows && { windows }),
          ...(key && { idempotencyKey: key.data, requestHash: hash }),
        }, quota);
      } catch (err) {
        if (err instanceof QuotaExceededError) throw quotaProblem(err);
        if (!(err instanceof DuplicateKeyError) || attempt >= 3) throw err;
        if (err.field === 'idempotencyKey' && key) {
          // A concurrent request with the same key won the insert: answer as its retry.
          const winner = await store.findClusterByIdempotencyKey(key.data);
          if (winner) return void res.status(202).location(links(winner.id).self).json(created(await replay(winner, hash, p)));
        }
        // Otherwise an id collision (1 in 2·10⁹): draw another suffix.
      }
    }
    try {
      await startWorkflow(cluster, def, pinned.pins);
    } catch (err) {
      // Nothing half-written: without a workflow the row would be a cluster that never deploys.
      await store.deleteCluster(cluster.id);
      throw temporalProblem(err, 'could not start the cluster workflow');
    }
    res.status(202).location(links(cluster.id).self).json(created(cluster));
  });

  /** Each cluster's state from the read model; only clusters that have published none cost a describe. */
  /** One's clusters (an admin's: everyone's, or one owner's), a page at a time; TERMINATED ones only when `?state=TERMINATED` asks. */
  router.get('/v1/clusters', async (req, res) => {
    const { owner, state: wanted, cursor, limit } = queryOf(req, ClusterListQuerySchema);
    const scope = listOwner(principalOf(res), owner);
    const rows = scope.none ? [] : (await store.listClusters()).filter((c) => scope.owner === undefined || c.owner === scope.owner);
    const items = await Promise.all(
      rows.map(async (c) => {
        const state = (await store.getClusterView(c.id))?.state ?? (await workflowState(c.id)).state;
        return { id: c.id, name: c.name, definitionId: c.definitionId, cloud: c.cloud, ...(c.owner && { owner: c.owner }), state, createdAt: c.createdAt };
      }),
    );
    const shown = items.filter((c) => (wanted === undefined ? c.state !== 'TERMINATED' : c.state === wanted));
    res.json(pageOf(shown, { cursor, limit }));
  });

  /** One service of the cluster as its workflows last published it (before any publish: WAITING with its minimum). */
  router.get('/v1/clusters/:id/services/:service', async (req, res) => {
    queryOf(req, NoQuerySchema);
    const c = await clusterOr404(param(req, 'id'), principalOf(res));
    const spec = await serviceOr404(c, param(req, 'service'));
    const views = await store.getServiceViews(c.id);
    const summary = mergeServices(await store.getClusterView(c.id), views).find((s) => s.name === spec.name) ?? {
      name: spec.name,
      state: 'WAITING' as const,
      desired: spec.min,
      ready: 0,
      replacements: 0,
    };
    const observedAt = views.find((v) => v.service === spec.name)?.observedAt;
    res.set('Cache-Control', 'no-cache').json({
      ...summary,
      ...(observedAt && { observedAt }),
      links: { cluster: `/v1/clusters/${c.id}`, instances: `/v1/clusters/${c.id}/instances?service=${encodeURIComponent(spec.name)}` },
    });
  });

  /**
   * The cluster as its workflows last published it, from the store: no query, no worker.
   * Published answers carry a weak ETag ({@link readModelEtag}) and answer `If-None-Match`
   * with 304. Before the cluster workflow's first publish the answer has the same shape with
   * the state of its search attribute (PENDING for a cluster just submitted; see
   * `workflowState`), a message saying so, the services published so far (usually none),
   * `seq` 0, no `observedAt` and no ETag.
   */
  router.get('/v1/clusters/:id', async (req, res) => {
    queryOf(req, NoQuerySchema);
    const id = param(req, 'id');
    // The cluster and its views in one statement; the views are only used once the cluster is known to be the caller's.
    const { cluster: c, view, services: serviceViews } = await visible(id, principalOf(res), (i) => store.getClusterRead(i), (r) => r.cluster.owner);
    const fixed = {
      id: c.id,
      name: c.name,
      definitionId: c.definitionId,
      cloud: c.cloud,
      ...(c.owner && { owner: c.owner }),
      ...(c.contexts && {
        contexts: Object.fromEntries(Object.entries(c.contexts).map(([svc, p]) => [svc, { id: p.id, version: p.version, repositories: p.repositories }])),
      }),
      ...(c.lifetime && { lifetime: c.lifetime }),
      ...(c.windows && { windows: c.windows }),
      links: { ...links(c.id), instances: `/v1/clusters/${c.id}/instances`, events: `/v1/clusters/${c.id}/events` },
    };
    // Computed now from the windows' cron expressions (the same arithmetic as the cluster workflow's), not published.
    const nextWindowAt = (state: ClusterState): { nextWindowAt: string } | undefined => {
      const next = c.windows && !['TERMINATING', 'TERMINATED', 'FAILED'].includes(state) ? nextWindowOpening(c.windows, Date.now()) : undefined;
      return next && { nextWindowAt: new Date(next.at).toISOString() };
    };
    if (!view) {
      const { state, gone } = await workflowState(c.id);
      const detail: ClusterDetail = {
        ...fixed,
        state,
        message: gone
          ? 'the cluster workflow has not started (or was removed after retention)'
          : 'the cluster workflow has not published its state yet; the state is its search attribute',
        services: mergeServices(undefined, serviceViews),
        ...nextWindowAt(state),
        seq: 0,
      };
      return void res.set('Cache-Control', 'no-cache').json(detail);
    }
    const next = nextWindowAt(view.state);
    res.set({ ETag: readModelEtag(view, serviceViews, next?.nextWindowAt), 'Cache-Control': 'no-cache' });
    // req.fresh compares If-None-Match with the ETag just set (weakly, as RFC 9110 says for GET).
    if (req.fresh) return void res.status(304).end();
    const detail: ClusterDetail = {
      ...fixed,
      state: view.state,
      ...(view.message !== undefined && { message: view.message }),
      services: mergeServices(view, serviceViews),
      ...(view.expiresAt !== undefined && { expiresAt: view.expiresAt }),
      ...(view.change && { change: view.change }),
      ...next,
      observedAt: view.observedAt,
      seq: view.seq,
    };
    res.json(detail);
  });

  /** The cluster's published instances, by service then ordinal, a page at a time. */
  router.get('/v1/clusters/:id/instances', async (req, res) => {
    const c = await clusterOr404(param(req, 'id'), principalOf(res));
    const { service, state, cursor, limit } = queryOf(req, InstancesQuerySchema);
    if (service !== undefined) await serviceOr404(c, service);
    res.set('Cache-Control', 'no-cache').json(await pageOr422(() => store.listInstances(c.id, { service, state, cursor, limit })));
  });

  /** What happened to the cluster, oldest first, a page at a time. */
  router.get('/v1/clusters/:id/events', async (req, res) => {
    const c = await clusterOr404(param(req, 'id'), principalOf(res));
    const { cursor, limit } = queryOf(req, PageQuerySchema);
    res.set('Cache-Control', 'no-cache').json(await pageOr422(() => store.listEvents(c.id, { cursor, limit })));
  });

  router.post('/v1/clusters/:id/services/:service/scale', json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const c = await clusterOr404(param(req, 'id'), principalOf(res));
    const service = param(req, 'service');
    const s = await serviceOr404(c, service);
    const { instances } = parseOr422(ScaleRequestSchema, bodyOf(req));
    const max = s.max ?? HARD_MAX_INSTANCES;
    if (instances < s.min) throw invalid([{ field: 'instances', pointer: '/instances', message: `must be at least the service's min (${s.min})` }]);
    if (instances > max) throw invalid([{ field: 'instances', pointer: '/instances', message: `must be at most the service's max (${max})` }]);
    await requireWorker();
    await oneAtATime(c.id, async () => {
      // Quota: a scale-up reserves its room (checked) before the update and gives it back if the update fails;
      // a scale-down frees its room once accepted. Clusters without an owner (from before owners) are not counted.
      let reserved: { previous: number } | undefined;
      if (c.owner) {
        await releaseEnded(store, temporal, c.owner);
        const def = await store.getDefinition(c.definitionId);
        const published = new Map((await store.getServiceViews(c.id)).map((v) => [v.service, v.summary.desired]));
        try {
          reserved = await store.reserveScale(c.id, service, instances, {
            defaultQuota,
            growOnly: true,
            ...(def && { seed: claimOf(c.owner, def.definition, (name) => published.get(name)) }),
          });
        } catch (err) {
          if (err instanceof QuotaExceededError) throw quotaProblem(err);
          throw err;
        }
      }
      let result: { service: string; desired: number };
      try {
        result = await temporal.withDeadline(Date.now() + UPDATE_DEADLINE_MS, () =>
          temporal.workflow.getHandle(clusterWorkflowId(c.id)).executeUpdate(scaleUpdate, { args: [{ service, instances }] }),
        );
      } catch (err) {
        if (reserved && instances > reserved.previous) await store.reserveScale(c.id, service, reserved.previous, { onlyIf: instances });
        throw scaleProblem(err, c.id);
      }
      if (reserved) await store.reserveScale(c.id, service, result.desired);
      res.json({ service: result.service, desired: result.desired });
    });
  });

  /**
   * Changes a running cluster to another definition or other context versions: checked as a
   * submission is, the quota reserving what it claims beyond what the cluster holds, then one
   * Update of the cluster workflow, which replaces instances service by service (dependency
   * order, `maxUnavailable` at a time, never below a service's `min` ready), starts added
   * services, removes dropped ones and rolls everything back if a service fails on the new spec.
   * Answers 202 with what it replaces, adds, removes and keeps; the cluster's status follows the change.
   */
  router.put('/v1/clusters/:id', json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const p = principalOf(res);
    const c = await clusterOr404(param(req, 'id'), p);
    const body = parseOr422(ChangeClusterRequestSchema, bodyOf(req));
    const { def, pinned, errors } = await checkSpec(body.definitionId, c.cloud, (owner) => canSee(p, owner), body.contextVersions);
    if (!def || !pinned || errors.length > 0) throw invalid(errors.map((e) => (e.field === 'cloud' ? { ...e, message: `the cluster's cloud: ${e.message}` } : e)));
    await requireWorker();
    await oneAtATime(c.id, async () => {
      let held: Awaited<ReturnType<Store['reserveChange']>>;
      if (c.owner) {
        try {
          held = await store.reserveChange(c.id, claimOf(c.owner, def.definition), defaultQuota);
        } catch (err) {
          if (err instanceof QuotaExceededError) throw quotaProblem(err);
          throw err;
        }
      }
      let result: ChangeResult;
      try {
        result = await temporal.withDeadline(Date.now() + UPDATE_DEADLINE_MS, () =>
          temporal.workflow.getHandle(clusterWorkflowId(c.id)).executeUpdate(changeUpdate, {
            args: [{ definitionId: def.id, definition: def.definition, ...(Object.keys(pinned.pins).length > 0 && { contexts: pinned.pins }), maxUnavailable: body.maxUnavailable }],
          }),
        );
      } catch (err) {
        if (held) await store.restoreReservation(c.id, held);
        throw updateProblem(err, c.id, 'change', {
          [CHANGE_REFUSED]: (msg) => conflict(msg, err),
          [CLUSTER_NOT_ACTIVE]: (msg) => conflict(`cluster "${c.id}" is not active: ${msg}`, err),
        });
      }
      res.status(202).location(links(c.id).self).json({ ...result, links: { ...links(c.id), events: `/v1/clusters/${c.id}/events` } });
    });
  });

  router.delete('/v1/clusters/:id', async (req, res) => {
    queryOf(req, NoQuerySchema);
    const c = await clusterOr404(param(req, 'id'), principalOf(res));
    const handle = temporal.workflow.getHandle(clusterWorkflowId(c.id));
    try {
      await temporal.withDeadline(Date.now() + SIGNAL_DEADLINE_MS, () => handle.signal(teardownSignal, { reason: 'requested via the API' }));
      return void res.status(202).json({ id: c.id, state: 'TERMINATING', links: links(c.id) });
    } catch (err) {
      if (!isWorkflowGone(err)) throw temporalProblem(err, `could not tear down cluster "${c.id}"`);
    }
    // Already closed (or never started): deleting again is not an error, report how it ended.
    let state: ClusterState = 'TERMINATED';
    try {
      state = stateOf(await handle.describe());
    } catch (err) {
      if (!isWorkflowGone(err)) throw temporalProblem(err, `could not describe cluster "${c.id}"`);
    }
    res.status(202).json({ id: c.id, state, links: links(c.id) });
  });

  return router;
}

/**
 * One cloud a service may land on: the cluster's `cloud` for a service without placement
 * (errors point at the request's `/cloud`), else each cloud its placement names (errors
 * point into the definition). `cloud` is unset for a name the registry does not hold.
 */
interface CloudTargetOf {
  service: ServiceDefinition;
  index: number;
  name: string;
  cloud?: CloudRecord;
  placed: boolean;
  /** Where an error about this cloud points. */
  field: string;
  pointer: string;
}

/**
 * Every (service, cloud) pair of a submission, services in order and each one's clouds in
 * its order. Services without placement whose cluster cloud is unregistered are left out:
 * the request's unknown `cloud` is reported once, by itself.
 */
function cloudTargets(services: readonly ServiceDefinition[], clusterCloud: CloudRecord | undefined, getCloud: (name: string) => CloudRecord | undefined): CloudTargetOf[] {
  return services.flatMap((service, index): CloudTargetOf[] => {
    if (!service.placement) {
      return clusterCloud ? [{ service, index, name: clusterCloud.name, cloud: clusterCloud, placed: false, field: 'cloud', pointer: '/cloud' }] : [];
    }
    return service.placement.clouds.map((name, j) => ({
      service,
      index,
      name,
      cloud: getCloud(name),
      placed: true,
      field: `definition.services[${index}].placement.clouds[${j}]`,
      pointer: `/definition/services/${index}/placement/clouds/${j}`,
    }));
  });
}

/**
 * Services whose offering no flavor of a cloud they may land on can serve: rejected before
 * anything starts. Without placement the error points at the request's `cloud` (as it
 * always has); with one, at the service's offering, once per cloud that cannot serve it.
 */
function offeringMisfits(targets: readonly CloudTargetOf[]): FieldError[] {
  return targets.flatMap(({ service: s, index, cloud, placed }) => {
    if (!cloud || smallestFit(cloud.offerings, s.offering)) return [];
    const largest = [...cloud.offerings].sort((a, b) => b.cpus - a.cpus || b.memoryMiB - a.memoryMiB || b.diskGiB - a.diskGiB)[0];
    return [
      {
        field: placed ? `definition.services[${index}].offering` : 'cloud',
        pointer: placed ? `/definition/services/${index}/offering` : '/cloud',
        message:
          `no offering of cloud "${cloud.name}" fits service "${s.name}" (${s.offering.cpus} cpus, ${s.offering.memoryMiB} MiB, ${s.offering.diskGiB} GiB)` +
          (largest ? `; its largest is ${largest.name} (${largest.cpus} cpus, ${largest.memoryMiB} MiB, ${largest.diskGiB} GiB)` : '; it lists no offerings'),
      },
    ];
  });
}

/** Maps the scale update's rejections (validator failures carry a type) to HTTP. */
function scaleProblem(err: unknown, clusterId: string): Problem {
  return updateProblem(err, clusterId, 'scale', {
    [UNKNOWN_SERVICE]: (msg) => notFound(msg),
    [SCALE_OUT_OF_BOUNDS]: (msg) => invalid([{ field: 'instances', pointer: '/instances', message: msg }]),
    [CLUSTER_NOT_ACTIVE]: (msg) => conflict(`cluster "${clusterId}" is not active: ${msg}`, err),
  });
}
