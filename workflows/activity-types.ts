/**
 * Activity input/output shapes shared by workflows (which see only these types) and
 * activities/ (which implement them). No runtime code: workflows import it with `import type`.
 */
import type { LoadReport } from '../model/autoscale.js';
import type { Offering } from '../model/definition.js';
import type { PublishClusterInput, PublishServiceInput } from '../model/read-model.js';

export type { PublishClusterInput, PublishServiceInput };

export interface InstanceRef {
  /** cloudgate id = idempotency key `<clusterId>-<service>-<ordinal>`. */
  id: string;
  /** The provider's id, when known; without it the activity finds the instance by key. */
  cloudInstanceId?: string;
}

export interface CreateInstancesInput {
  cloud: string;
  clusterId: string;
  service: string;
  image: string;
  offering: Offering;
  /**
   * The pinned context version the instances are contextualized with. The activity reads it
   * and its secret values from the store and renders the user-data itself, so neither the
   * secrets nor the per-instance tokens ever enter a workflow's history. Unset: phone-home only.
   */
  context?: { id: string; version: number };
  /** The service's readiness timeout: the phone-home tokens live this long plus a margin. Unset in creates scheduled before it was sent. */
  readinessTimeoutSeconds?: number;
  ids: string[];
}

export interface CreatedInstance {
  id: string;
  cloudInstanceId: string;
  /** Normalised cloud state right after create (usually PENDING). */
  cloudState: string;
  createdAt: string;
  /** The hypervisor host it went to (libvirt farms). */
  host?: string;
}

/** Capacity refusals: the create of these ids was not made and holds no reservation. */
export const CAPACITY_REFUSALS = ['QuotaExceeded', 'CapacityExhausted'] as const;
export type CapacityRefusalKind = (typeof CAPACITY_REFUSALS)[number];

/**
 * What a create batch did: the instances made (or found by key), and — when the capacity
 * ledger refused a reservation (`QuotaExceeded`) or the cloud answered `CapacityExhausted` —
 * the ids not made, so the service can place them elsewhere or wait. Creates recorded before
 * refusals existed return the bare array.
 */
export interface CreateInstancesResult {
  created: CreatedInstance[];
  refused?: { ids: string[]; kind: CapacityRefusalKind; message: string };
}

export interface DescribeInstancesInput {
  cloud: string;
  /** Where instances without a provider id are looked up (the read model), else found by key. */
  clusterId?: string;
  instances: InstanceRef[];
}

/** `GONE` when the cloud no longer knows the instance. */
export interface DescribedInstance {
  id: string;
  cloudState: string;
}

export interface TerminateInstancesInput {
  cloud: string;
  /** Where instances without a provider id are looked up (the read model), else found by key. */
  clusterId?: string;
  instances: InstanceRef[];
}

export interface SweepClusterInput {
  cloud: string;
  clusterId: string;
}

export interface SweepResult {
  /** The cloud swept (set since sweeps cover every cloud a cluster used). */
  cloud?: string;
  /** Instances found still tagged with the cluster and terminated by the sweep. */
  terminated: string[];
  /** Live instances tagged with the cluster after the sweep (always 0 on success). */
  remaining: number;
}

/** One repository to look up on its stratum-1s before a cluster deploys. */
export interface CvmfsCheckInput {
  repo: string;
  /** The context's stratum-1 URLs; unset: the gateway's configured list. */
  servers?: string[];
  minRevision?: number;
}

/** A repository fit to deploy with (failures are thrown, typed `Cvmfs…`). */
export interface CvmfsCheckResult {
  repo: string;
  /** The stratum-1 that answered, `@fqrn@` substituted. */
  server: string;
  revision: number;
  publishedAt: string;
  whitelistExpiresAt: string;
  /** Servers tried first that gave no usable answer (shown in the UI as the fail-over). */
  attempts: { server: string; error: string }[];
}

/** One read of a service's pulled load (`autoscale.loadUrl`, placeholders filled in). */
export interface PollLoadInput {
  clusterId: string;
  service: string;
  url: string;
}

/**
 * What the load URL answered: the load (its idle instances only those of the service), or why
 * there is none — refused by the address policy, no answer, a status other than 200, too
 * large, not JSON or not the shape — in words for the cluster's events. A bad answer is a
 * value, not a failure: the next poll is the retry.
 */
export type PollLoadResult = { ok: true; load: LoadReport } | { ok: false; problem: string };

/** The activity functions `createActivities(deps)` returns; workflows proxy these. */
export interface CloudgateActivities {
  createInstances(input: CreateInstancesInput): Promise<CreateInstancesResult | CreatedInstance[]>;
  describeInstances(input: DescribeInstancesInput): Promise<DescribedInstance[]>;
  terminateInstances(input: TerminateInstancesInput): Promise<number>;
  sweepCluster(input: SweepClusterInput): Promise<SweepResult>;
  checkCvmfsRepository(input: CvmfsCheckInput): Promise<CvmfsCheckResult>;
  /** Writes the cluster's state to the read model; false when the store had a newer one (nothing written). */
  publishCluster(input: PublishClusterInput): Promise<boolean>;
  /** Writes a service's summary and changed instances to the read model; false when the store had a newer one. */
  publishService(input: PublishServiceInput): Promise<boolean>;
  /** Reads a service's load from its `loadUrl`, under the address policy. */
  pollLoad(input: PollLoadInput): Promise<PollLoadResult>;
}
