/**
 * Per-owner quotas and the audit trail, in the same SQLite file as the rest of the store
 * (`store/index.ts` wires these into its {@link Store} and re-exports the types).
 *
 * **Quotas.** Every cluster submitted since quotas exist holds a *reservation*: its owner and,
 * per service, the desired instance count and the cpus of one instance. An owner's usage is
 * the sum over their reservations that still count: not released, and whose cluster's read
 * model state is not TERMINATED (a cluster whose workflow has not published yet counts). The
 * check and the write of a reservation are one IMMEDIATE transaction, so two submissions or
 * scale-ups racing for the last room — in one process or in several on one file — cannot both
 * pass. A FAILED cluster's reservation is released explicitly ({@link QuotaAuditStatements.releaseQuota})
 * once the API has seen that its workflow ended (a FAILED cluster under `keep` still runs).
 *
 * **Audit.** One row per state-changing request: when, who (owner, role, token id), the route
 * pattern, the target resource id and the status code. Append-only: triggers refuse UPDATE
 * and DELETE. No bodies, no token values, no raw paths.
 */
import type Database from 'better-sqlite3';
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

export const QUOTA_AUDIT_SCHEMA = `
CREATE TABLE IF NOT EXISTS owner_quotas (
  owner          TEXT PRIMARY KEY,
  max_instances  INTEGER NOT NULL,
  max_clusters   INTEGER NOT NULL,
  max_cpus       INTEGER NOT NULL,
  updated_at     TEXT NOT NULL
);
-- One row per cluster submitted under quotas; totals beside the per-service JSON they sum.
CREATE TABLE IF NOT EXISTS quota_reservations (
  cluster_id   TEXT PRIMARY KEY,
  owner        TEXT NOT NULL,
  instances    INTEGER NOT NULL,
  cpus         INTEGER NOT NULL,
  services     TEXT NOT NULL,
  created_at   TEXT NOT NULL,
  released_at  TEXT
);
CREATE INDEX IF NOT EXISTS quota_reservations_by_owner ON quota_reservations (owner);
CREATE TABLE IF NOT EXISTS audit_log (
  id        INTEGER PRIMARY KEY AUTOINCREMENT,
  at        TEXT NOT NULL,
  owner     TEXT NOT NULL,
  role      TEXT NOT NULL,
  token_id  TEXT,
  route     TEXT NOT NULL,
  target    TEXT,
  result    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_by_owner ON audit_log (owner, id);
CREATE INDEX IF NOT EXISTS audit_log_by_target ON audit_log (target, id);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
`;

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
export interface AuditRow {
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

/** Prepared statements and transactions over the quota and audit tables of `db` (after {@link QUOTA_AUDIT_SCHEMA} ran). */
export function quotaAuditStatements(db: Database.Database) {
  const q = {
    getQuota: db.prepare<[string], OwnerQuotaRow>('SELECT * FROM owner_quotas WHERE owner = ?'),
    setQuota: db.prepare(
      `INSERT INTO owner_quotas (owner, max_instances, max_clusters, max_cpus, updated_at) VALUES (@owner, @maxInstances, @maxClusters, @maxCpus, @updatedAt)
       ON CONFLICT(owner) DO UPDATE SET max_instances = excluded.max_instances, max_clusters = excluded.max_clusters,
         max_cpus = excluded.max_cpus, updated_at = excluded.updated_at`,
    ),
    // A reservation counts until released or until its cluster's read model says TERMINATED.
    usage: db.prepare<[string], QuotaUsage>(
      `SELECT COUNT(*) AS clusters, COALESCE(SUM(r.instances), 0) AS instances, COALESCE(SUM(r.cpus), 0) AS cpus
       FROM quota_reservations r LEFT JOIN cluster_views v ON v.cluster_id = r.cluster_id
       WHERE r.owner = ? AND r.released_at IS NULL AND (v.state IS NULL OR v.state <> 'TERMINATED')`,
    ),
    // Every owner holding something now, and every owner an admin gave a quota; counted as `usage` counts.
    usageByOwner: db.prepare<[], { owner: string; clusters: number; instances: number; cpus: number; max_instances: number | null; max_clusters: number | null; max_cpus: number | null }>(
      `WITH used AS (
         SELECT r.owner AS owner, COUNT(*) AS clusters, SUM(r.instances) AS instances, SUM(r.cpus) AS cpus
         FROM quota_reservations r LEFT JOIN cluster_views v ON v.cluster_id = r.cluster_id
         WHERE r.released_at IS NULL AND (v.state IS NULL OR v.state <> 'TERMINATED') GROUP BY r.owner)
       SELECT o.owner AS owner, COALESCE(u.clusters, 0) AS clusters, COALESCE(u.instances, 0) AS instances, COALESCE(u.cpus, 0) AS cpus,
              q.max_instances AS max_instances, q.max_clusters AS max_clusters, q.max_cpus AS max_cpus
       FROM (SELECT owner FROM used UNION SELECT owner FROM owner_quotas) o
       LEFT JOIN used u ON u.owner = o.owner LEFT JOIN owner_quotas q ON q.owner = o.owner
       ORDER BY o.owner`,
    ),
    heldByFailed: db.prepare<[string], { cluster_id: string }>(
      `SELECT r.cluster_id FROM quota_reservations r JOIN cluster_views v ON v.cluster_id = r.cluster_id
       WHERE r.owner = ? AND r.released_at IS NULL AND v.state = 'FAILED' ORDER BY r.cluster_id`,
    ),
    getReservation: db.prepare<[string], ReservationRow>('SELECT * FROM quota_reservations WHERE cluster_id = ?'),
    insertReservation: db.prepare(
      `INSERT INTO quota_reservations (cluster_id, owner, instances, cpus, services, created_at)
       VALUES (@clusterId, @owner, @instances, @cpus, @services, @createdAt)`,
    ),
    updateReservation: db.prepare('UPDATE quota_reservations SET instances = @instances, cpus = @cpus, services = @services WHERE cluster_id = @clusterId'),
    deleteReservation: db.prepare('DELETE FROM quota_reservations WHERE cluster_id = ?'),
    releaseReservation: db.prepare('UPDATE quota_reservations SET released_at = ? WHERE cluster_id = ? AND released_at IS NULL'),
    insertAudit: db.prepare(
      `INSERT INTO audit_log (at, owner, role, token_id, route, target, result) VALUES (@at, @owner, @role, @tokenId, @route, @target, @result)`,
    ),
    // A NULL parameter switches its filter off; newest first, keyset on id.
    listAudit: db.prepare<
      { owner: string | null; target: string | null; since: string | null; until: string | null; beforeId: number | null; limit: number },
      AuditRow
    >(
      `SELECT * FROM audit_log
       WHERE (@owner IS NULL OR owner = @owner)
         AND (@target IS NULL OR target = @target)
         AND (@since IS NULL OR at >= @since)
         AND (@until IS NULL OR at < @until)
         AND (@beforeId IS NULL OR id < @beforeId)
       ORDER BY id DESC
       LIMIT @limit`,
    ),
  };

  const quotaOf = (owner: string, defaultQuota: Quota): { quota: Quota; source: 'owner' | 'default' } => {
    const r = q.getQuota.get(owner);
    return r ? { quota: { maxInstances: r.max_instances, maxClusters: r.max_clusters, maxCpus: r.max_cpus }, source: 'owner' } : { quota: defaultQuota, source: 'default' };
  };

  /** Throws {@link QuotaExceededError} if `ask` does not fit `owner`'s quota now. Call inside a write transaction. */
  const check = (owner: string, defaultQuota: Quota, ask: QuotaUsage): void => {
    const { quota, source } = quotaOf(owner, defaultQuota);
    const usage = q.usage.get(owner)!;
    const excess = excessOf(quota, usage, ask);
    if (excess.length > 0) throw new QuotaExceededError(owner, quota, source, usage, excess);
  };

  const insertReservation = (clusterId: string, claim: QuotaClaim) => {
    q.insertReservation.run({ clusterId, owner: claim.owner, ...totals(claim.services), services: JSON.stringify(claim.services), createdAt: new Date().toISOString() });
  };

  const reserveScaleTx = db.transaction(
    (clusterId: string, service: string, instances: number, opts: ReserveScaleOptions): { previous: number } | undefined => {
      let row = q.getReservation.get(clusterId);
      if (!row && opts.seed) {
        // A cluster from before quotas: it starts holding what it has now, unchecked.
        insertReservation(clusterId, opts.seed);
        row = q.getReservation.get(clusterId);
      }
      if (!row) return undefined;
      const services = JSON.parse(row.services) as QuotaClaim['services'];
      const entry = services.find((s) => s.service === service);
      if (!entry) return undefined;
      const previous = entry.instances;
      if (opts.onlyIf !== undefined && previous !== opts.onlyIf) return { previous };
      if (opts.growOnly && instances < previous) return { previous };
      if (instances > previous && opts.defaultQuota && row.released_at === null) {
        check(row.owner, opts.defaultQuota, { clusters: 0, instances: instances - previous, cpus: (instances - previous) * entry.cpus });
      }
      entry.instances = instances;
      q.updateReservation.run({ clusterId, ...totals(services), services: JSON.stringify(services) });
      return { previous };
    },
  );

  /**
   * A change of definition: each service of `claim` holds the larger of what it held and what
   * the new definition claims (at its new offering), added services are reserved, removed ones
   * keep theirs until the cluster ends. Growth is checked against the owner's quota. Returns
   * what was held before (to undo with {@link restoreReservation}), or undefined for a cluster
   * without a reservation.
   */
  const reserveChangeTx = db.transaction((clusterId: string, claim: QuotaClaim, defaultQuota: Quota): QuotaClaim['services'] | undefined => {
    const row = q.getReservation.get(clusterId);
    if (!row) return undefined;
    const before = JSON.parse(row.services) as QuotaClaim['services'];
    const held = new Map(before.map((s) => [s.service, s.instances]));
    const next = [
      ...claim.services.map((s) => ({ ...s, instances: Math.max(s.instances, held.get(s.service) ?? 0) })),
      ...before.filter((b) => !claim.services.some((s) => s.service === b.service)),
    ];
    const [was, will] = [totals(before), totals(next)];
    if (row.released_at === null && (will.instances > was.instances || will.cpus > was.cpus)) {
      check(row.owner, defaultQuota, { clusters: 0, instances: Math.max(0, will.instances - was.instances), cpus: Math.max(0, will.cpus - was.cpus) });
    }
    q.updateReservation.run({ clusterId, ...will, services: JSON.stringify(next) });
    return before;
  });

  return {
    quotaOf,
    reserveChange: (clusterId: string, claim: QuotaClaim, defaultQuota: Quota) => reserveChangeTx.immediate(clusterId, claim, defaultQuota),
    /** Puts back what {@link reserveChangeTx} replaced (a change the cluster refused). */
    restoreReservation: (clusterId: string, services: QuotaClaim['services']) =>
      void q.updateReservation.run({ clusterId, ...totals(services), services: JSON.stringify(services) }),
    /** Inside the transaction that inserts the cluster row: check, then reserve (throws {@link QuotaExceededError}). */
    reserveNewCluster(clusterId: string, claim: QuotaClaim, defaultQuota: Quota): void {
      check(claim.owner, defaultQuota, { clusters: 1, ...totals(claim.services) });
      insertReservation(clusterId, claim);
    },
    deleteReservation: (clusterId: string) => void q.deleteReservation.run(clusterId),

    getOwnerQuota(owner: string): OwnerQuotaRecord | undefined {
      const r = q.getQuota.get(owner);
      return r && { owner, quota: { maxInstances: r.max_instances, maxClusters: r.max_clusters, maxCpus: r.max_cpus }, updatedAt: r.updated_at };
    },
    setOwnerQuota(owner: string, quota: Quota, at = new Date()): OwnerQuotaRecord {
      const updatedAt = at.toISOString();
      q.setQuota.run({ owner, ...quota, updatedAt });
      return { owner, quota, updatedAt };
    },
    quotaUsage: (owner: string): QuotaUsage => q.usage.get(owner)!,
    quotaUsageByOwner: (): OwnerQuotaUsage[] =>
      q.usageByOwner.all().map((r) => ({
        owner: r.owner,
        usage: { clusters: r.clusters, instances: r.instances, cpus: r.cpus },
        ...(r.max_instances !== null && r.max_clusters !== null && r.max_cpus !== null && { quota: { maxInstances: r.max_instances, maxClusters: r.max_clusters, maxCpus: r.max_cpus } }),
      })),
    quotaHeldByFailed: (owner: string): string[] => q.heldByFailed.all(owner).map((r) => r.cluster_id),
    releaseQuota: (clusterId: string, at = new Date()): boolean => q.releaseReservation.run(at.toISOString(), clusterId).changes > 0,
    reserveScale: (clusterId: string, service: string, instances: number, opts: ReserveScaleOptions = {}) =>
      reserveScaleTx.immediate(clusterId, service, instances, opts),

    appendAudit(rec: Omit<AuditRecord, 'id'>): AuditRecord {
      const id = Number(
        q.insertAudit.run({ at: rec.at, owner: rec.owner, role: rec.role, tokenId: rec.tokenId ?? null, route: rec.route, target: rec.target ?? null, result: rec.result })
          .lastInsertRowid,
      );
      return { id, ...rec };
    },
    listAuditRows: (f: AuditFilter): AuditRow[] =>
      q.listAudit.all({
        owner: f.owner ?? null,
        target: f.target ?? null,
        since: f.since ?? null,
        until: f.until ?? null,
        beforeId: f.beforeId ?? null,
        limit: f.limit,
      }),
  };
}

export type QuotaAuditStatements = ReturnType<typeof quotaAuditStatements>;
