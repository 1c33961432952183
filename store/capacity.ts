/**
 * The capacity ledger (issue 12): what cloudgate uses of each cloud, summed over every
 * cluster and owner, against the cloud's `quota` in the registry.
 *
 * One row per instance per cloud, keyed by the instance id (its idempotency key): the create
 * activity reserves before it asks the cloud, and the terminate activity (or the cluster's
 * sweep) releases once the instance is gone. So a retried or replayed create finds its own
 * reservation and never counts twice; a worker killed between the reservation and the create
 * leaves a reservation its retry reuses — and the instance, created or not, is terminated by
 * key and released later like any other. A create batch reserves for all its instances in
 * one check-and-insert, a write transaction serialized per cloud (IMMEDIATE on SQLite, an
 * advisory lock on PostgreSQL: store/database.ts `writeSerially`), so creates racing for the
 * last room — from any number of activities, workers or processes on one store — cannot
 * both pass: the ledger never grants more than the quota. (Reserving one instance per
 * SERIALIZABLE transaction made 190 batches of a 10,000-instance service abort each other
 * until their retries ran out.)
 *
 * Why a transactional store rather than a per-cloud entity workflow granting reservations by
 * Update: a create batch would need one Update round trip (and two history events) per
 * instance on a workflow every cluster of the site contends for, and that workflow would be
 * a single point that must itself continue-as-new; the store already serializes the read
 * model's writes this way and answers `GET /v1/clouds` without a worker. (docs/architecture.md)
 */
import type { StoreDatabase } from './database.js';
import type { Db } from './tables.js';
import type { CloudQuota } from '../model/clouds-config.js';

/** What cloudgate holds on one cloud: instances, and the cpus and memory of their flavors. */
export interface CapacityUsage {
  instances: number;
  cpus: number;
  memoryMiB: number;
}

/** One instance's claim on a cloud. */
export interface CapacityClaim {
  instanceId: string;
  clusterId: string;
  cpus: number;
  memoryMiB: number;
  /** Record the claim whatever the quota says (an instance the cloud already has). */
  force?: boolean;
}

/** What a reservation granted: the claims' instance ids held now, and why the others were not. */
export interface CapacityGrant {
  granted: string[];
  /** Set when a claim was refused: the first limit it would cross. */
  refusal?: CapacityRefusal;
}

/** Why a reservation was refused: the first limit it would cross, and the cloud's usage before it. */
export interface CapacityRefusal {
  cloud: string;
  limit: keyof CloudQuota;
  quota: CloudQuota;
  usage: CapacityUsage;
  /** "cloudgate's quota for hlt is used up: quota 30 instances; in use 30 instances, 30 cpus, 61440 MiB" */
  message: string;
}

export interface CapacityLedger {
  /**
   * Reserves room for the claims in order until the first that would cross the quota; that
   * one and every later claim not forced are refused (nothing written for them). A claim
   * already held (same cloud and instance id) is granted again without counting twice.
   */
  reserveCapacity(cloud: string, quota: CloudQuota | undefined, claims: readonly CapacityClaim[]): Promise<CapacityGrant>;
  /** Releases the claims of instances that are gone; the number released. */
  releaseCapacity(cloud: string, instanceIds: readonly string[]): Promise<number>;
  /** Releases every claim of a cluster on a cloud (after its sweep found nothing left). */
  releaseClusterCapacity(cloud: string, clusterId: string): Promise<number>;
  capacityUsage(cloud: string): Promise<CapacityUsage>;
}

const LIMITS: { limit: keyof CloudQuota; of: keyof CapacityUsage; unit: string }[] = [
  { limit: 'instances', of: 'instances', unit: 'instances' },
  { limit: 'cpus', of: 'cpus', unit: 'cpus' },
  { limit: 'memoryMiB', of: 'memoryMiB', unit: 'MiB of memory' },
];

/** "quota 30 instances, 40 cpus; in use 30 instances, 30 cpus, 61440 MiB" — what a waiting service shows of a cloud. */
export function describeCapacity(quota: CloudQuota | undefined, usage: CapacityUsage): string {
  const limits = LIMITS.filter((l) => quota?.[l.limit] !== undefined).map((l) => `${quota![l.limit]} ${l.unit}`);
  return `quota ${limits.join(', ') || 'unlimited'}; in use ${usage.instances} instances, ${usage.cpus} cpus, ${usage.memoryMiB} MiB`;
}

/** The ledger's queries over an open store database (store/index.ts wires them into its Store). */
export function capacityLedger({ db, writeSerially }: StoreDatabase): CapacityLedger {
  const usage = async (executor: Db, cloud: string): Promise<CapacityUsage> => {
    const r = await executor
      .selectFrom('capacity_reservations')
      .select((eb) => [eb.fn.countAll<number>().as('instances'), eb.fn.sum<number | null>('cpus').as('cpus'), eb.fn.sum<number | null>('memory_mib').as('memoryMiB')])
      .where('cloud', '=', cloud)
      .executeTakeFirstOrThrow();
    return { instances: r.instances, cpus: r.cpus ?? 0, memoryMiB: r.memoryMiB ?? 0 };
  };
  /** Records claims (held ones stay as they are), in slices far below either engine's parameter limit. */
  const insertClaims = async (executor: Db, cloud: string, claims: readonly CapacityClaim[]): Promise<void> => {
    const reservedAt = new Date().toISOString();
    for (let i = 0; i < claims.length; i += 500) {
      await executor
        .insertInto('capacity_reservations')
        .values(claims.slice(i, i + 500).map((c) => ({ cloud, instance_id: c.instanceId, cluster_id: c.clusterId, cpus: c.cpus, memory_mib: c.memoryMiB, reserved_at: reservedAt })))
        .onConflict((oc) => oc.doNothing())
        .execute();
    }
  };
  return {
    reserveCapacity: async (cloud, quota, claims) => {
      if (claims.length === 0) return { granted: [] };
      // No limit to check (a cloud without a quota, like most public clouds here): record the claims, no turn to wait for.
      if (!LIMITS.some((l) => quota?.[l.limit] !== undefined)) {
        await insertClaims(db, cloud, claims);
        return { granted: claims.map((c) => c.instanceId) };
      }
      return writeSerially(`capacity:${cloud}`, async (trx): Promise<CapacityGrant> => {
        const ids = claims.map((c) => c.instanceId);
        const held = new Set<string>();
        for (let i = 0; i < ids.length; i += 500) {
          const rows = await trx.selectFrom('capacity_reservations').select('instance_id').where('cloud', '=', cloud).where('instance_id', 'in', ids.slice(i, i + 500)).execute();
          for (const r of rows) held.add(r.instance_id);
        }
        const now = await usage(trx, cloud);
        const granted: string[] = [];
        const adding: CapacityClaim[] = [];
        let refusal: CapacityRefusal | undefined;
        for (const claim of claims) {
          if (held.has(claim.instanceId)) {
            granted.push(claim.instanceId);
            continue;
          }
          const adds: CapacityUsage = { instances: 1, cpus: claim.cpus, memoryMiB: claim.memoryMiB };
          const crossed = claim.force || refusal ? undefined : LIMITS.find((l) => quota?.[l.limit] !== undefined && now[l.of] + adds[l.of] > quota[l.limit]!);
          if (crossed) {
            const msg = `cloudgate's quota for ${cloud} is used up: ${describeCapacity(quota, now)}`;
            refusal = { cloud, limit: crossed.limit, quota: quota!, usage: { ...now }, message: msg };
          }
          if (refusal && !claim.force) continue;
          for (const l of LIMITS) now[l.of] += adds[l.of];
          held.add(claim.instanceId);
          granted.push(claim.instanceId);
          adding.push(claim);
        }
        await insertClaims(trx, cloud, adding);
        return refusal ? { granted, refusal } : { granted };
      });
    },
    releaseCapacity: async (cloud, ids) => {
      let released = 0;
      // In slices: one statement's parameters stay far below either engine's limit.
      for (let i = 0; i < ids.length; i += 500) {
        const r = await db.deleteFrom('capacity_reservations').where('cloud', '=', cloud).where('instance_id', 'in', ids.slice(i, i + 500)).executeTakeFirst();
        released += Number(r.numDeletedRows);
      }
      return released;
    },
    releaseClusterCapacity: async (cloud, clusterId) => {
      const r = await db.deleteFrom('capacity_reservations').where('cloud', '=', cloud).where('cluster_id', '=', clusterId).executeTakeFirst();
      return Number(r.numDeletedRows);
    },
    capacityUsage: (cloud) => usage(db, cloud),
  };
}
