/** States and status views shared by workflows (which own them) and the API (which shows them). */

/** PAUSING / PAUSED (issue 13): vacated on request (the HLT farm lent out), keeping identity, definition and pins; resumable. */
export const CLUSTER_STATES = ['PENDING', 'DEPLOYING', 'READY', 'DEGRADED', 'FAILED', 'PAUSING', 'PAUSED', 'TERMINATING', 'TERMINATED'] as const;
export type ClusterState = (typeof CLUSTER_STATES)[number];

/**
 * A service waits for its dependencies, deploys, is READY (min instances ready), or not;
 * WAITING_CAPACITY: it lacks instances and none of its clouds has room (it goes on by itself when one does);
 * PAUSED: its cluster is paused and none of its instances is left (TERMINATING while they go).
 */
export const SERVICE_STATES = ['WAITING', 'DEPLOYING', 'WAITING_CAPACITY', 'READY', 'DEGRADED', 'FAILED', 'PAUSED', 'TERMINATING', 'TERMINATED'] as const;
export type ServiceState = (typeof SERVICE_STATES)[number];
/** The states of a started service that a user's retry re-runs now (`POST /v1/clusters/:id/retry`). */
export const RETRYABLE_SERVICE_STATES: ReadonlySet<string> = new Set<ServiceState>(['FAILED', 'WAITING_CAPACITY']);

/**
 * One instance's life as cloudgate sees it: CREATING (create call in flight) → BOOTING
 * (cloud accepted it) → RUNNING (cloud says running) → READY (guest phoned home ok).
 * FAILED instances are being replaced; TERMINATING ones are on their way out.
 */
export const INSTANCE_STATES = ['CREATING', 'BOOTING', 'RUNNING', 'READY', 'FAILED', 'TERMINATING'] as const;
export type InstanceState = (typeof INSTANCE_STATES)[number];

export interface InstanceStatus {
  /** cloudgate's id of the instance: `<clusterId>-<service>-<ordinal>`, also its idempotency key. */
  id: string;
  name: string;
  state: InstanceState;
  /** The cloud it was placed on. */
  cloud: string;
  /** The hypervisor host it runs on (libvirt farms). */
  host?: string;
  /** The provider's own id, once the cloud has accepted the create. */
  cloudInstanceId?: string;
  createdAt?: string;
  readyAt?: string;
  /** Why the instance is failed or was last replaced. */
  message?: string;
  /** The spec it runs (model/rolling.ts `specLabel`): the definition, and context version, it was made from. */
  spec?: string;
}

/**
 * A service in brief — counts, no instances: what the cluster answer shows, what a service
 * workflow reports to its cluster (`ServiceSummary` adds the workflow id) and publishes.
 */
export interface ServiceBrief {
  name: string;
  state: ServiceState;
  desired: number;
  ready: number;
  /** Instances replaced so far, and the latest reason. */
  replacements: number;
  message?: string;
  /** A FAILED service under `keep` waiting for its next round of attempts: when that round starts (ISO). */
  retryingAt?: string;
  /** Per cloud it uses: its instances there (live, not failed or leaving) and how many are ready. */
  clouds?: Record<string, CloudCount>;
  /** The spec its instances run or are being replaced with (services started since changes exist). */
  spec?: string;
  /** Live instances still on an earlier spec while a change replaces them. */
  outdated?: number;
}

/** A service's instances on one cloud. */
export interface CloudCount {
  instances: number;
  ready: number;
}

/** A service with its instances (the service workflow's query). */
export interface ServiceStatus extends ServiceBrief {
  instances: InstanceStatus[];
}

export interface ClusterStatus {
  id: string;
  name: string;
  definitionId: string;
  cloud: string;
  state: ClusterState;
  message?: string;
  services: ServiceStatus[];
}

/** What a guest reports to the phone-home endpoint. */
export interface ReadinessReport {
  instanceId: string;
  status: 'ok' | 'failed';
  checks?: Record<string, unknown>;
  /** ISO time the gateway received it. */
  receivedAt: string;
}
