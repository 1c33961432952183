/**
 * Activity input/output shapes shared by workflows (which see only these types) and
 * activities/ (which implement them). No runtime code: workflows import it with `import type`.
 */
import type { Offering } from '../model/definition.js';

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
  /** CVMFS repositories the guest probes before it reports ready. */
  repositories: string[];
  ids: string[];
}

export interface CreatedInstance {
  id: string;
  cloudInstanceId: string;
  /** Normalised cloud state right after create (usually PENDING). */
  cloudState: string;
  createdAt: string;
}

export interface DescribeInstancesInput {
  cloud: string;
  instances: Required<InstanceRef>[];
}

/** `GONE` when the cloud no longer knows the instance. */
export interface DescribedInstance {
  id: string;
  cloudState: string;
}

export interface TerminateInstancesInput {
  cloud: string;
  instances: InstanceRef[];
}

export interface SweepClusterInput {
  cloud: string;
  clusterId: string;
}

export interface SweepResult {
  /** Instances found still tagged with the cluster and terminated by the sweep. */
  terminated: string[];
  /** Live instances tagged with the cluster after the sweep (always 0 on success). */
  remaining: number;
}

/** The activity functions `createActivities(deps)` returns; workflows proxy these. */
export interface CloudgateActivities {
  createInstances(input: CreateInstancesInput): Promise<CreatedInstance[]>;
  describeInstances(input: DescribeInstancesInput): Promise<DescribedInstance[]>;
  terminateInstances(input: TerminateInstancesInput): Promise<number>;
  sweepCluster(input: SweepClusterInput): Promise<SweepResult>;
}
