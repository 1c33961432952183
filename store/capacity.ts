/**
 * The capacity ledger (issue 12): what cloudgate uses of each cloud, summed over every
 * cluster and owner, against the cloud's `quota` in the registry.
 *
 * One row per instance per cloud, keyed by the instance id (its idempotency key): the create
 * activity reserves before it asks the cloud, and the terminate activity (or the cluster's
 * sweep) releases once the instance is gone. So a retried or replayed create finds its own
 * reservation and never counts twice; a worker killed between the reservation and the create
 * leaves a reservation its retry reuses — and the instance, created or not, is terminated by
 * key and released later like any other. Check-and-insert is one write transaction (IMMEDIATE
 * on SQLite, SERIALIZABLE on PostgreSQL: store/database.ts), so creates racing for the last
 * room — from any number of activities, workers or processes on one store — cannot both
 * pass: the ledger never grants more than the quota.
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
   * Reserves room for one instance, or says why not (nothing written). A claim already held
   * (same cloud and instance id) is granted again without counting twice. `force` records
   * the claim whatever the quota says (an instance the cloud already has).
   */
  reserveCapacity(cloud: string, quota: CloudQuota | undefined, claim: CapacityClaim, force?: boolean): Promise<CapacityRefusal | undefined>;
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
export function capacityLedger({ db, write }: StoreDatabase): CapacityLedger {
  const usage = async (executor: Db, cloud: string): Promise<CapacityUsage> => {
    const r = await executor
      .selectFrom('capacity_reservations')
      .select((eb) => [eb.fn.countAll<number>().as('instances'), eb.fn.sum<number | null>('cpus').as('cpus'), eb.fn.sum<number | null>('memory_mib').as('memoryMiB')])
      .where('cloud', '=', cloud)
      .executeTakeFirstOrThrow();
    return { instances: r.instances, cpus: r.cpus ?? 0, memoryMiB: r.memoryMiB ?? 0 };
  };
  return {
    reserveCapacity: (cloud, quota, claim, force = false) =>
      write(async (trx): Promise<CapacityRefusal | undefined> => {
        const held = await trx.selectFrom('capacity_reservations').select('cloud').where('cloud', '=', cloud).where('instance_id', '=', claim.instanceId).executeTakeFirst();
        if (held) return undefined;
        const now = await usage(trx, cloud);
        const adds: CapacityUsage = { instances: 1, cpus: claim.cpus, memoryMiB: claim.memoryMiB };
        const crossed = force ? undefined : LIMITS.find((l) => quota?.[l.limit] !== undefined && now[l.of] + adds[l.of] > quota[l.limit]!);
        if (crossed) {
          return { cloud, limit: crossed.limit, quota: quota!, usage: now, message: `cloudgate's quota for ${cloud} is used up: ${describeCapacity(quota, now)}` };
        }
        await trx
          .insertInto('capacity_reservations')
          .values({ cloud, instance_id: claim.instanceId, cluster_id: claim.clusterId, cpus: claim.cpus, memory_mib: claim.memoryMiB, reserved_at: new Date().toISOString() })
          .onConflict((oc) => oc.doNothing())
          .execute();
        return undefined;
      }),
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
