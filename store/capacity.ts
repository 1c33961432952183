/**
 * The capacity ledger (issue 12): what cloudgate uses of each cloud, summed over every
 * cluster and owner, against the cloud's `quota` in the registry.
 *
 * One row per instance per cloud, keyed by the instance id (its idempotency key): the create
 * activity reserves before it asks the cloud, and the terminate activity (or the cluster's
 * sweep) releases once the instance is gone. So a retried or replayed create finds its own
 * reservation and never counts twice; a worker killed between the reservation and the create
 * leaves a reservation its retry reuses — and the instance, created or not, is terminated by
 * key and released later like any other. Check-and-insert is one IMMEDIATE transaction, so
 * creates racing for the last room — from any number of activities, workers or processes on
 * one store file — cannot both pass: the ledger never grants more than the quota.
 *
 * Why a transactional store rather than a per-cloud entity workflow granting reservations by
 * Update: a create batch would need one Update round trip (and two history events) per
 * instance on a workflow every cluster of the site contends for, and that workflow would be
 * a single point that must itself continue-as-new; the store already serializes the read
 * model's writes this way and answers `GET /v1/clouds` without a worker. (docs/architecture.md)
 */
import type Database from 'better-sqlite3';
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

export const CAPACITY_SCHEMA = `
CREATE TABLE IF NOT EXISTS capacity_reservations (
  cloud TEXT NOT NULL,
  instance_id TEXT NOT NULL,
  cluster_id TEXT NOT NULL,
  cpus INTEGER NOT NULL,
  memory_mib INTEGER NOT NULL,
  reserved_at TEXT NOT NULL,
  PRIMARY KEY (cloud, instance_id)
);
CREATE INDEX IF NOT EXISTS capacity_reservations_cluster ON capacity_reservations (cloud, cluster_id);
`;

export interface CapacityLedger {
  /**
   * Reserves room for one instance, or says why not (nothing written). A claim already held
   * (same cloud and instance id) is granted again without counting twice. `force` records
   * the claim whatever the quota says (an instance the cloud already has).
   */
  reserveCapacity(cloud: string, quota: CloudQuota | undefined, claim: CapacityClaim, force?: boolean): CapacityRefusal | undefined;
  /** Releases the claims of instances that are gone; the number released. */
  releaseCapacity(cloud: string, instanceIds: readonly string[]): number;
  /** Releases every claim of a cluster on a cloud (after its sweep found nothing left). */
  releaseClusterCapacity(cloud: string, clusterId: string): number;
  capacityUsage(cloud: string): CapacityUsage;
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

/** The ledger's statements over an open store database (store/index.ts wires them into its Store). */
export function capacityLedger(db: Database.Database): CapacityLedger {
  const usageOf = db.prepare<[string], { instances: number; cpus: number | null; memoryMiB: number | null }>(
    'SELECT COUNT(*) AS instances, SUM(cpus) AS cpus, SUM(memory_mib) AS memoryMiB FROM capacity_reservations WHERE cloud = ?',
  );
  const held = db.prepare<[string, string], { n: number }>('SELECT 1 AS n FROM capacity_reservations WHERE cloud = ? AND instance_id = ?');
  const insert = db.prepare(
    'INSERT OR IGNORE INTO capacity_reservations (cloud, instance_id, cluster_id, cpus, memory_mib, reserved_at) VALUES (?, ?, ?, ?, ?, ?)',
  );
  const release = db.prepare('DELETE FROM capacity_reservations WHERE cloud = ? AND instance_id = ?');
  const releaseCluster = db.prepare('DELETE FROM capacity_reservations WHERE cloud = ? AND cluster_id = ?');
  const usage = (cloud: string): CapacityUsage => {
    const r = usageOf.get(cloud)!;
    return { instances: r.instances, cpus: r.cpus ?? 0, memoryMiB: r.memoryMiB ?? 0 };
  };
  const reserveTx = db.transaction((cloud: string, quota: CloudQuota | undefined, claim: CapacityClaim, force: boolean): CapacityRefusal | undefined => {
    if (held.get(cloud, claim.instanceId)) return undefined;
    const now = usage(cloud);
    const adds: CapacityUsage = { instances: 1, cpus: claim.cpus, memoryMiB: claim.memoryMiB };
    const crossed = force ? undefined : LIMITS.find((l) => quota?.[l.limit] !== undefined && now[l.of] + adds[l.of] > quota[l.limit]!);
    if (crossed) {
      return { cloud, limit: crossed.limit, quota: quota!, usage: now, message: `cloudgate's quota for ${cloud} is used up: ${describeCapacity(quota, now)}` };
    }
    insert.run(cloud, claim.instanceId, claim.clusterId, claim.cpus, claim.memoryMiB, new Date().toISOString());
    return undefined;
  });
  const releaseTx = db.transaction((cloud: string, ids: readonly string[]) => ids.reduce((n, id) => n + release.run(cloud, id).changes, 0));
  return {
    reserveCapacity: (cloud, quota, claim, force = false) => reserveTx.immediate(cloud, quota, claim, force),
    releaseCapacity: (cloud, ids) => (ids.length === 0 ? 0 : releaseTx.immediate(cloud, ids)),
    releaseClusterCapacity: (cloud, clusterId) => releaseCluster.run(cloud, clusterId).changes,
    capacityUsage: usage,
  };
}
