/**
 * Per-owner quotas and the audit trail, in the same database as the rest of the store
 * (`store/index.ts` wires these into its {@link Store} and re-exports the types).
 *
 * **Quotas.** Every cluster submitted since quotas exist holds a *reservation*: its owner and,
 * per service, the desired instance count and the cpus of one instance. An owner's usage is
 * the sum over their reservations that still count: not released, and whose cluster's read
 * model state is not TERMINATED (a cluster whose workflow has not published yet counts). The
 * check and the write of a reservation are one write transaction in the owner's turn
 * (`writeSerially`: IMMEDIATE on SQLite, an advisory lock per owner on PostgreSQL:
 * store/database.ts), so two submissions or scale-ups racing for the last room — in one
 * process, or in several on one store (API replicas) — cannot both pass. A FAILED cluster's
 * reservation is released explicitly ({@link QuotaAuditStatements.releaseQuota}) once the API has seen that its workflow ended (a FAILED cluster under `keep` still runs).
 *
 * **Audit.** One row per state-changing request: when, who (owner, role, token id), the route
 * pattern, the target resource id and the status code. Append-only: triggers refuse UPDATE
 * and DELETE. No bodies, no token values, no raw paths.
 */
import type { ExpressionBuilder } from 'kysely';
import type { StoreDatabase } from './database.js';
import type { Db, Tables } from './tables.js';
import type { Quota } from '../model/config.js';

/** What an owner's clusters hold: clusters, desired instances, and cpus (instances × the offering's cpus). */
export interface QuotaUsage {
  instances: number;
  clusters: number;
  cpus: number;
}

/** One owner's usage and own quota, for the metrics (`cloudgate_quota_used`, `cloudgate_quota_limit`). */
export interface OwnerQuotaUsage {
  owner: string;
  usage: QuotaUsage;
  /** Their own quota; absent: the site default applies. */
  quota?: Quota;
}

/** What a cluster reserves: its owner and, per service, desired instances and the cpus of one instance. */
export interface QuotaClaim {
  owner: string;
  services: { service: string; instances: number; cpus: number }[];
}

/** An owner's own quota as an admin set it. */
export interface OwnerQuotaRecord {
  owner: string;
  quota: Quota;
  updatedAt: string;
}

/** One limit a request would cross: the limit, what the owner uses now, and what the request adds. */
export interface QuotaExcess {
  quota: keyof Quota;
  limit: number;
  usage: number;
  requested: number;
}

const USAGE_OF: Record<keyof Quota, keyof QuotaUsage> = { maxClusters: 'clusters', maxInstances: 'instances', maxCpus: 'cpus' };

/** Thrown by the reserving store methods when a request does not fit its owner's quota; nothing was written. */
export class QuotaExceededError extends Error {
  constructor(
    readonly owner: string,
    readonly quota: Quota,
    readonly source: 'owner' | 'default',
    readonly usage: QuotaUsage,
    readonly excess: QuotaExcess[],
  ) {
    const e = excess[0];
    super(`${e.quota} ${e.limit}: ${owner} uses ${e.usage}, this asks for ${e.requested} more`);
    this.name = 'QuotaExceededError';
  }
}

/** One stored audit record. */
export interface AuditRecord {
  /** Grows with every record (the cursor of `GET /v1/audit`). */
  id: number;
  /** When the answer was sent (ISO, UTC). */
  at: string;
  owner: string;
  role: 'user' | 'admin';
  /** The API token used (its id, never its value); absent for OIDC access tokens. */
  tokenId?: string;
  /** Method and matched route pattern, e.g. `POST /v1/clusters/:id/services/:service/scale`. */
  route: string;
  /** The resource the request was about (cluster, context, definition or token id, or owner); absent when none. */
  target?: string;
  /** The HTTP status code of the answer. */
  result: number;
}

/** Which audit records {@link QuotaAuditStatements.listAudit} returns, newest first. */
export interface AuditFilter {
  owner?: string;
  target?: string;
  /** ISO UTC times: `since` inclusive, `until` exclusive. */
  since?: string;
  until?: string;
  /** Only records with a smaller id (the keyset of the previous page). */
  beforeId?: number;
  limit: number;
}

/** How {@link QuotaAuditStatements.reserveScale} changes a service's reserved count. */
export interface ReserveScaleOptions {
  /** Check the owner's quota (theirs, else this default) when the count grows; unset: no check. */
  defaultQuota?: Quota;
  /** Change nothing unless the count is this now (undoing a reservation without clobbering a later one). */
  onlyIf?: number;
  /** Change nothing when the count would shrink (a scale-down frees its room only once it was accepted). */
  growOnly?: boolean;
  /** What a cluster from before quotas holds now; reserved (unchecked) when it has no reservation. */
  seed?: QuotaClaim;
}

interface ReservationRow {
  cluster_id: string;
  owner: string;
  instances: number;
  cpus: number;
  services: string;
  released_at: string | null;
}
interface OwnerQuotaRow {
  owner: string;
  max_instances: number;
  max_clusters: number;
  max_cpus: number;
  updated_at: string;
}
interface AuditRow {
  id: number;
  at: string;
  owner: string;
  role: string;
  token_id: string | null;
  route: string;
  target: string | null;
  result: number;
}

export const toAuditRecord = (r: AuditRow): AuditRecord => ({
  id: r.id,
  at: r.at,
  owner: r.owner,
  role: r.role === 'admin' ? 'admin' : 'user',
  ...(r.token_id !== null && { tokenId: r.token_id }),
  route: r.route,
  ...(r.target !== null && { target: r.target }),
  result: r.result,
});

const totals = (services: QuotaClaim['services']) => ({
  instances: services.reduce((n, s) => n + s.instances, 0),
  cpus: services.reduce((n, s) => n + s.instances * s.cpus, 0),
});

/** The limits `ask` would cross on top of `usage` (only growing dimensions are checked). */
function excessOf(limit: Quota, usage: QuotaUsage, ask: QuotaUsage): QuotaExcess[] {
  return (Object.keys(USAGE_OF) as (keyof Quota)[]).flatMap((quota) => {
    const k = USAGE_OF[quota];
    return ask[k] > 0 && usage[k] + ask[k] > limit[quota] ? [{ quota, limit: limit[quota], usage: usage[k], requested: ask[k] }] : [];
  });
}

/** A reservation counts until released or until its cluster's read model says TERMINATED (`r` and its `v`). */
const counts = (eb: ExpressionBuilder<{ r: Tables['quota_reservations']; v: Tables['cluster_views'] }, 'r' | 'v'>) =>
  eb.and([eb('r.released_at', 'is', null), eb.or([eb('v.state', 'is', null), eb('v.state', '<>', 'TERMINATED')])]);

const quotaOfRow = (r: OwnerQuotaRow): Quota => ({ maxInstances: r.max_instances, maxClusters: r.max_clusters, maxCpus: r.max_cpus });

/** The `writeSerially` key of the writes that may grow `owner`'s quota usage. */
export const ownerQuotaKey = (owner: string): string => `quota:${owner}`;

/** The quota and audit queries and transactions over an open store database. */
export function quotaAuditStatements({ db, writeSerially }: StoreDatabase) {
  /**
   * Every write that may grow an owner's usage runs after the others of that owner, each
   * reading what the ones before committed (`writeSerially`: an advisory lock on PostgreSQL).
   * Fifty clusters of one owner submitted at once as SERIALIZABLE transactions all read the
   * same usage, failed to serialize again and again, and some gave up (a 500). Releases only
   * shrink usage and need no turn.
   */
  const inOwnersTurn = <T>(owner: string, fn: (trx: Db) => Promise<T>): Promise<T> => writeSerially(ownerQuotaKey(owner), fn);
  const getQuota = (executor: Db, owner: string): Promise<OwnerQuotaRow | undefined> => executor.selectFrom('owner_quotas').selectAll().where('owner', '=', owner).executeTakeFirst();
  const getReservation = (executor: Db, clusterId: string): Promise<ReservationRow | undefined> =>
    executor.selectFrom('quota_reservations').selectAll().where('cluster_id', '=', clusterId).executeTakeFirst();
  const usageOf = async (executor: Db, owner: string): Promise<QuotaUsage> =>
    executor
      .selectFrom('quota_reservations as r')
      .leftJoin('cluster_views as v', 'v.cluster_id', 'r.cluster_id')
      .select((eb) => [
        eb.fn.countAll<number>().as('clusters'),
        eb.fn.coalesce(eb.fn.sum<number>('r.instances'), eb.lit(0)).as('instances'),
        eb.fn.coalesce(eb.fn.sum<number>('r.cpus'), eb.lit(0)).as('cpus'),
      ])
      .where('r.owner', '=', owner)
      .where(counts)
      .executeTakeFirstOrThrow();
  const updateReservation = (executor: Db, clusterId: string, services: QuotaClaim['services']) =>
    executor
      .updateTable('quota_reservations')
      .set({ ...totals(services), services: JSON.stringify(services) })
      .where('cluster_id', '=', clusterId)
      .execute();

  const quotaOf = async (executor: Db, owner: string, defaultQuota: Quota): Promise<{ quota: Quota; source: 'owner' | 'default' }> => {
    const r = await getQuota(executor, owner);
    return r ? { quota: quotaOfRow(r), source: 'owner' } : { quota: defaultQuota, source: 'default' };
  };

  /** Throws {@link QuotaExceededError} if `ask` does not fit `owner`'s quota now. Call inside a write transaction. */
  const check = async (trx: Db, owner: string, defaultQuota: Quota, ask: QuotaUsage): Promise<void> => {
    const { quota, source } = await quotaOf(trx, owner, defaultQuota);
    const usage = await usageOf(trx, owner);
    const excess = excessOf(quota, usage, ask);
    if (excess.length > 0) throw new QuotaExceededError(owner, quota, source, usage, excess);
  };

  const insertReservation = (trx: Db, clusterId: string, claim: QuotaClaim) =>
    trx
      .insertInto('quota_reservations')
      .values({ cluster_id: clusterId, owner: claim.owner, ...totals(claim.services), services: JSON.stringify(claim.services), created_at: new Date().toISOString() })
      .execute();

  /** The owner of a cluster's reservation (fixed for its life), or of the seed that would make one. */
  const reservationOwner = async (clusterId: string, seed?: QuotaClaim): Promise<string | undefined> => (await getReservation(db, clusterId))?.owner ?? seed?.owner;

  const reserveScale = async (clusterId: string, service: string, instances: number, opts: ReserveScaleOptions = {}) => {
    const owner = await reservationOwner(clusterId, opts.seed);
    if (owner === undefined) return undefined;
    return inOwnersTurn(owner, async (trx): Promise<{ previous: number } | undefined> => {
      let row = await getReservation(trx, clusterId);
      if (!row && opts.seed) {
        // A cluster from before quotas: it starts holding what it has now, unchecked.
        await insertReservation(trx, clusterId, opts.seed);
        row = await getReservation(trx, clusterId);
      }
      if (!row) return undefined;
      const services = JSON.parse(row.services) as QuotaClaim['services'];
      const entry = services.find((s) => s.service === service);
      if (!entry) return undefined;
      const previous = entry.instances;
      if (opts.onlyIf !== undefined && previous !== opts.onlyIf) return { previous };
      if (opts.growOnly && instances < previous) return { previous };
      if (instances > previous && opts.defaultQuota && row.released_at === null) {
        await check(trx, row.owner, opts.defaultQuota, { clusters: 0, instances: instances - previous, cpus: (instances - previous) * entry.cpus });
      }
      entry.instances = instances;
      await updateReservation(trx, clusterId, services);
      return { previous };
    });
  };

  /**
   * A change of definition: each service of `claim` holds the larger of what it held and what
   * the new definition claims (at its new offering), added services are reserved, removed ones
   * keep theirs until the cluster ends. Growth is checked against the owner's quota. Returns
   * what was held before (to undo with {@link restoreReservation}), or undefined for a cluster
   * without a reservation.
   */
  const reserveChange = async (clusterId: string, claim: QuotaClaim, defaultQuota: Quota) => {
    const owner = await reservationOwner(clusterId);
    if (owner === undefined) return undefined;
    return inOwnersTurn(owner, async (trx): Promise<QuotaClaim['services'] | undefined> => {
      const row = await getReservation(trx, clusterId);
      if (!row) return undefined;
      const before = JSON.parse(row.services) as QuotaClaim['services'];
      const held = new Map(before.map((s) => [s.service, s.instances]));
      const next = [
        ...claim.services.map((s) => ({ ...s, instances: Math.max(s.instances, held.get(s.service) ?? 0) })),
        ...before.filter((b) => !claim.services.some((s) => s.service === b.service)),
      ];
      const [was, will] = [totals(before), totals(next)];
      if (row.released_at === null && (will.instances > was.instances || will.cpus > was.cpus)) {
        await check(trx, row.owner, defaultQuota, { clusters: 0, instances: Math.max(0, will.instances - was.instances), cpus: Math.max(0, will.cpus - was.cpus) });
      }
      await updateReservation(trx, clusterId, next);
      return before;
    });
  };

  return {
    reserveChange,
    /** Puts back what {@link reserveChange} replaced (a change the cluster refused). */
    restoreReservation: async (clusterId: string, services: QuotaClaim['services']): Promise<void> => void (await updateReservation(db, clusterId, services)),
    /** Inside the transaction that inserts the cluster row, in the owner's turn ({@link ownerQuotaKey}): check, then reserve (throws {@link QuotaExceededError}). */
    async reserveNewCluster(trx: Db, clusterId: string, claim: QuotaClaim, defaultQuota: Quota): Promise<void> {
      await check(trx, claim.owner, defaultQuota, { clusters: 1, ...totals(claim.services) });
      await insertReservation(trx, clusterId, claim);
    },
    deleteReservation: async (trx: Db, clusterId: string): Promise<void> => void (await trx.deleteFrom('quota_reservations').where('cluster_id', '=', clusterId).execute()),

    async getOwnerQuota(owner: string): Promise<OwnerQuotaRecord | undefined> {
      const r = await getQuota(db, owner);
      return r && { owner, quota: quotaOfRow(r), updatedAt: r.updated_at };
    },
    async setOwnerQuota(owner: string, quota: Quota, at = new Date()): Promise<OwnerQuotaRecord> {
      const updatedAt = at.toISOString();
      const row = { max_instances: quota.maxInstances, max_clusters: quota.maxClusters, max_cpus: quota.maxCpus, updated_at: updatedAt };
      await db
        .insertInto('owner_quotas')
        .values({ owner, ...row })
        .onConflict((oc) => oc.column('owner').doUpdateSet(row))
        .execute();
      return { owner, quota, updatedAt };
    },
    quotaUsage: (owner: string): Promise<QuotaUsage> => usageOf(db, owner),
    // Every owner holding something now, and every owner an admin gave a quota; counted as `usage` counts.
    async quotaUsageByOwner(): Promise<OwnerQuotaUsage[]> {
      const rows = await db
        .with('used', (w) =>
          w
            .selectFrom('quota_reservations as r')
            .leftJoin('cluster_views as v', 'v.cluster_id', 'r.cluster_id')
            .where(counts)
            .groupBy('r.owner')
            .select((eb) => ['r.owner as owner', eb.fn.countAll<number>().as('clusters'), eb.fn.sum<number>('r.instances').as('instances'), eb.fn.sum<number>('r.cpus').as('cpus')]),
        )
        .selectFrom((eb) => eb.selectFrom('used').select('used.owner').union(eb.selectFrom('owner_quotas').select('owner_quotas.owner')).as('o'))
        .leftJoin('used as u', 'u.owner', 'o.owner')
        .leftJoin('owner_quotas as q', 'q.owner', 'o.owner')
        .select((eb) => [
          'o.owner as owner',
          eb.fn.coalesce('u.clusters', eb.lit(0)).as('clusters'),
          eb.fn.coalesce('u.instances', eb.lit(0)).as('instances'),
          eb.fn.coalesce('u.cpus', eb.lit(0)).as('cpus'),
          'q.max_instances',
          'q.max_clusters',
          'q.max_cpus',
        ])
        .orderBy('o.owner')
        .execute();
      return rows.map((r) => ({
        owner: r.owner,
        usage: { clusters: r.clusters, instances: r.instances, cpus: r.cpus },
        ...(r.max_instances !== null && r.max_clusters !== null && r.max_cpus !== null && { quota: { maxInstances: r.max_instances, maxClusters: r.max_clusters, maxCpus: r.max_cpus } }),
      }));
    },
    quotaHeldByFailed: async (owner: string): Promise<string[]> => {
      const rows = await db
        .selectFrom('quota_reservations as r')
        .innerJoin('cluster_views as v', 'v.cluster_id', 'r.cluster_id')
        .select('r.cluster_id')
        .where('r.owner', '=', owner)
        .where('r.released_at', 'is', null)
        .where('v.state', '=', 'FAILED')
        .orderBy('r.cluster_id')
        .execute();
      return rows.map((r) => r.cluster_id);
    },
    releaseQuota: async (clusterId: string, at = new Date()): Promise<boolean> => {
      const r = await db.updateTable('quota_reservations').set({ released_at: at.toISOString() }).where('cluster_id', '=', clusterId).where('released_at', 'is', null).executeTakeFirst();
      return r.numUpdatedRows > 0n;
    },
    reserveScale,

    async appendAudit(rec: Omit<AuditRecord, 'id'>): Promise<AuditRecord> {
      const { id } = await db
        .insertInto('audit_log')
        .values({ at: rec.at, owner: rec.owner, role: rec.role, token_id: rec.tokenId ?? null, route: rec.route, target: rec.target ?? null, result: rec.result })
        .returning('id')
        .executeTakeFirstOrThrow();
      return { id: Number(id), ...rec };
    },
    /** Newest first, keyset on id; an unset filter is off. */
    listAuditRows: (f: AuditFilter): Promise<AuditRow[]> => {
      let q = db.selectFrom('audit_log').selectAll();
      if (f.owner !== undefined) q = q.where('owner', '=', f.owner);
      if (f.target !== undefined) q = q.where('target', '=', f.target);
      if (f.since !== undefined) q = q.where('at', '>=', f.since);
      if (f.until !== undefined) q = q.where('at', '<', f.until);
      if (f.beforeId !== undefined) q = q.where('id', '<', f.beforeId);
      return q.orderBy('id', 'desc').limit(f.limit).execute();
    },
  };
}

export type QuotaAuditStatements = ReturnType<typeof quotaAuditStatements>;
