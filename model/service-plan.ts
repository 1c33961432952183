/**
 * The decisions of a service workflow as pure functions: which instances are overdue, what to
 * terminate and create to reach the desired count, which instances a health check asks
 * about, what state the service is in, and when the workflow must wake next. The workflow
 * (workflows/service.ts) holds the state and runs the activities; these decide.
 */
import type { InstanceState, ServiceState } from './status.js';

/** cloudgate's id of an instance, also its idempotency key in every cloud: `<clusterId>-<service>-<ordinal>`. */
export const instanceId = (clusterId: string, service: string, ordinal: number): string => `${clusterId}-${service}-${ordinal}`;

/** The ordinal at the end of an {@link instanceId}. */
export const ordinalOf = (id: string): number => Number(id.slice(id.lastIndexOf('-') + 1));

/** One instance as a service workflow keeps it. */
export interface InstanceRecord {
  id: string;
  ordinal: number;
  state: InstanceState;
  /** The cloud it was placed on (records before placement existed have none: the cluster's cloud). */
  cloud?: string;
  /** The hypervisor host it runs on, where the cloud says (libvirt farms). */
  host?: string;
  cloudInstanceId?: string;
  createdAt?: string;
  readyAt?: string;
  /** Workflow-clock ms by which the guest must have phoned home. */
  deadline?: number;
  message?: string;
  /** The spec it was made from (model/rolling.ts); unset in services started before changes existed. */
  spec?: string;
}

/** Failures in a row (no instance becoming ready in between) before the service is FAILED. */
export const MAX_CONSECUTIVE_FAILURES = 5;

/** Backoff after a service failed under the `keep` policy before it tries again, by round. */
export const KEEP_RETRY_BACKOFF_MS = [30_000, 60_000, 120_000, 300_000, 600_000];

/** The pause before the next round of attempts of a FAILED service under `keep` (round counts from 0). */
export const keepRetryBackoffMs = (round: number, table: readonly number[] = KEEP_RETRY_BACKOFF_MS): number =>
  table[Math.min(round, table.length - 1)];

/** Instances not failed and not on their way out: the ones that count towards the desired number. */
export const liveInstances = (instances: Iterable<InstanceRecord>): InstanceRecord[] =>
  [...instances].filter((i) => i.state !== 'FAILED' && i.state !== 'TERMINATING');

/** How many instances are in one of `states`. */
export function countIn(instances: Iterable<InstanceRecord>, ...states: InstanceState[]): number {
  let n = 0;
  for (const i of instances) if (states.includes(i.state)) n++;
  return n;
}

/** Booted guests whose readiness deadline has passed without a report. */
export const overdueInstances = (instances: Iterable<InstanceRecord>, now: number): InstanceRecord[] =>
  [...instances].filter((i) => (i.state === 'BOOTING' || i.state === 'RUNNING') && i.deadline !== undefined && i.deadline <= now);

/** What the counts of a service say about it. */
export interface ServiceCounts {
  desired: number;
  ready: number;
  /** Instances the workflow still holds (any state). */
  held: number;
  /** Cloud activities still running. */
  inFlight: number;
  consecutiveFailures: number;
  tearingDown: boolean;
  /** Lost ready instances since it was last fully ready. */
  degraded: boolean;
  /** The failure budget was used up and nothing became ready since (latched; backing off or retrying). */
  failing?: boolean;
  /** Instances are missing and none of the service's clouds has room for them. */
  waitingCapacity?: boolean;
  /** Its cluster is paused: every instance goes, and none is made until it resumes. */
  paused?: boolean;
}

/**
 * A service's state: TERMINATING until nothing is held or in flight after a teardown; FAILED
 * once {@link MAX_CONSECUTIVE_FAILURES} failures came in a row, and (`failing`) until an
 * instance becomes ready again, through every backoff and retry of the `keep` policy; READY
 * with the desired number ready; WAITING_CAPACITY while instances are missing and no cloud of
 * the service has room; DEGRADED after losing ready instances; DEPLOYING otherwise (including
 * scaling up).
 */
export function serviceState(c: ServiceCounts): ServiceState {
  if (c.tearingDown) return c.held === 0 && c.inFlight === 0 ? 'TERMINATED' : 'TERMINATING';
  if (c.paused) return c.held === 0 && c.inFlight === 0 ? 'PAUSED' : 'TERMINATING';
  if (c.failing || c.consecutiveFailures >= MAX_CONSECUTIVE_FAILURES) return 'FAILED';
  if (c.ready >= c.desired) return 'READY';
  if (c.waitingCapacity) return 'WAITING_CAPACITY';
  return c.degraded ? 'DEGRADED' : 'DEPLOYING';
}

/** How to get from the live instances to the desired number. */
export interface ScalePlan {
  /** Instances to terminate (scale down). */
  terminate: InstanceRecord[];
  /** Ordinals of the instances to create (scale up). */
  create: number[];
}

/**
 * Scale down by dropping instances on an earlier spec than `spec` first, then those that are not ready, then the newest (never one whose
 * create is still in flight); scale up with fresh ordinals from `nextOrdinal`, unless the
 * service is FAILED (it waits for its next round).
 */
export function scalePlan(live: InstanceRecord[], desired: number, nextOrdinal: number, failed: boolean, spec?: string): ScalePlan {
  if (live.length > desired) {
    // Instances on an earlier spec go first (a scale-down during a change), then as always.
    const outdated = (i: InstanceRecord) => Number(spec !== undefined && i.spec !== spec);
    const terminate = live
      .filter((i) => i.state !== 'CREATING')
      .sort((a, b) => outdated(b) - outdated(a) || Number(a.state === 'READY') - Number(b.state === 'READY') || b.ordinal - a.ordinal)
      .slice(0, live.length - desired);
    return { terminate, create: [] };
  }
  if (live.length < desired && !failed) {
    return { terminate: [], create: Array.from({ length: desired - live.length }, (_, n) => nextOrdinal + n) };
  }
  return { terminate: [], create: [] };
}

/**
 * Instances a health check asks the cloud about: those the cloud has accepted and that are not
 * going away, less those vouched for since the last check (`vouched`: the cloud made them, or
 * their guest reported ready) whose readiness deadline, if they still have one, is not before
 * `keepUntil`. Each of those is asked about at the check after; so an instance goes unconfirmed
 * for at most two check intervals, and a wave of 9,500 new instances phoning home is not
 * described while it does (48 activities in the middle of the wave, at 10,000). The caller passes
 * the time of the check after next as `keepUntil`: an instance left out is still asked about
 * before its readiness timeout, so a guest that vanished is told apart from one that stayed silent.
 */
export const healthCheckTargets = (instances: Iterable<InstanceRecord>, vouched?: ReadonlySet<string>, keepUntil = 0): InstanceRecord[] =>
  [...instances].filter(
    (i) => (i.state === 'BOOTING' || i.state === 'RUNNING' || i.state === 'READY') && !(vouched?.has(i.id) && (i.deadline === undefined || i.deadline >= keepUntil)),
  );

/**
 * One instance as a service workflow hands it to its next run: `[ordinal, state code]`, plus
 * the readiness deadline while it has one. Everything else (provider id, times, messages) is
 * in the read model; the id derives from the ordinal. About 12 bytes a ready instance, so a
 * 10,000-instance service carries ~120 KB where whole records took 1.8 MB. An instance on
 * another cloud than the service's first has that cloud's index after its state letter (`Y1`).
 */
export type CarriedInstance = [ordinal: number, state: string] | [ordinal: number, state: string, deadline: number];

const STATE_CODES: Record<InstanceState, string> = { CREATING: 'C', BOOTING: 'B', RUNNING: 'R', READY: 'Y', FAILED: 'F', TERMINATING: 'T' };
const STATES_BY_CODE = new Map(Object.entries(STATE_CODES).map(([state, code]) => [code, state as InstanceState]));

/** The carried form of an instance; `clouds` are the service's clouds in order (its first is left out). */
export function compactInstance(i: InstanceRecord, clouds: readonly string[] = []): CarriedInstance {
  const at = i.cloud === undefined ? 0 : clouds.indexOf(i.cloud);
  const code = at > 0 ? `${STATE_CODES[i.state]}${at}` : STATE_CODES[i.state];
  return i.deadline === undefined ? [i.ordinal, code] : [i.ordinal, code, i.deadline];
}

/**
 * An instance from what a previous run carried: the compact form, or a whole record (runs
 * before the compact form). `clouds` as for {@link compactInstance}: without an index the
 * instance is on the first (records before placement: `cloud` stays as carried).
 */
export function expandInstance(carried: CarriedInstance | InstanceRecord, clusterId: string, service: string, clouds: readonly string[] = []): InstanceRecord {
  if (!Array.isArray(carried)) return carried;
  const [ordinal, code, deadline] = carried;
  const state = STATES_BY_CODE.get(code[0]);
  const at = code.length > 1 ? Number(code.slice(1)) : 0;
  if (!state || !Number.isInteger(at) || (at > 0 && at >= clouds.length)) throw new Error(`carried instance ${ordinal} has an unknown state code "${code}"`);
  return {
    id: instanceId(clusterId, service, ordinal),
    ordinal,
    state,
    ...(clouds.length > 0 && { cloud: clouds[at] }),
    ...(deadline !== undefined && { deadline }),
  };
}

/**
 * Milliseconds until the workflow must look again: the next health check, the earliest
 * readiness deadline, the end of a keep-policy backoff (`retryAt`), a publish that is due
 * (`publishAt`) or a cloud to look for room on again (`roomAt`), whichever comes first (at
 * least 1 s). Times not in the future are ignored.
 */
export function nextWakeMs(now: number, nextHealthCheck: number, instances: Iterable<InstanceRecord>, retryAt: number, publishAt = 0, roomAt = 0): number {
  let wake = nextHealthCheck;
  for (const i of instances) if (i.deadline !== undefined && i.deadline < wake) wake = i.deadline;
  for (const at of [retryAt, publishAt, roomAt]) if (at > now && at < wake) wake = at;
  return Math.max(1000, wake - now + 1);
}

/** The longest pause between health checks of a steady READY service. */
export const HEALTH_CHECK_STEADY_MAX_MS = 10 * 60_000;

/**
 * The pause before the next health check: the base interval while anything is in motion; for
 * a READY service whose last check found every instance in place, twice the last pause, up
 * to {@link HEALTH_CHECK_STEADY_MAX_MS} (a steady service is quiet in its history).
 */
export function nextHealthCheckMs(base: number, last: number, steady: boolean, max = HEALTH_CHECK_STEADY_MAX_MS): number {
  return steady ? Math.max(base, Math.min(max, last * 2)) : base;
}

/** What the workflow waits for when it sleeps (timer summaries in the Temporal UI); arguments as {@link nextWakeMs}. */
export function wakeReason(now: number, nextHealthCheck: number, instances: Iterable<InstanceRecord>, retryAt: number, publishAt = 0, roomAt = 0): string {
  const ms = nextWakeMs(now, nextHealthCheck, instances, retryAt, publishAt, roomAt);
  const at = now + ms - 1;
  if (retryAt > now && retryAt <= at) return `next round of attempts in ${Math.round(ms / 1000)} s`;
  if (roomAt > now && roomAt <= at) return `look for room on a full cloud again in ${Math.round(ms / 1000)} s`;
  if (publishAt > now && publishAt <= at) return `publish instance changes in ${Math.round(ms / 1000)} s`;
  if (nextHealthCheck <= at) return `next health check in ${Math.round(ms / 1000)} s`;
  return `readiness deadline in ${Math.round(ms / 1000)} s`;
}

/** An instance's fields as last sent to the read model (unset ones as ''): a publish sends the instances whose fields changed. */
export interface PublishedFields {
  state: InstanceState;
  cloudInstanceId: string;
  createdAt: string;
  readyAt: string;
  message: string;
  host: string;
  spec: string;
}

/** A copy of what a publish sends of `i`, to compare with later ({@link publishedAsIs}). */
export const publishedFields = (i: InstanceRecord): PublishedFields => ({
  state: i.state,
  cloudInstanceId: i.cloudInstanceId ?? '',
  createdAt: i.createdAt ?? '',
  readyAt: i.readyAt ?? '',
  message: i.message ?? '',
  host: i.host ?? '',
  spec: i.spec ?? '',
});

/**
 * Whether the read model has `i` as it is now. Field by field, building nothing: a service
 * compares all its instances on every turn of its loop (10,000 of them at scale), and building
 * a string of each one's fields for that cost the workflow thread 1.3 s of its 9.1 s in a
 * profiled 10,000-instance deployment.
 */
export const publishedAsIs = (p: PublishedFields | undefined, i: InstanceRecord): boolean =>
  p !== undefined &&
  p.state === i.state &&
  p.cloudInstanceId === (i.cloudInstanceId ?? '') &&
  p.createdAt === (i.createdAt ?? '') &&
  p.readyAt === (i.readyAt ?? '') &&
  p.message === (i.message ?? '') &&
  p.host === (i.host ?? '') &&
  p.spec === (i.spec ?? '');

/** `items` in runs of at most `size`. */
export function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}
