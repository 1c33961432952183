/**
 * The one contract every cloud adapter implements (after Apache Libcloud's NodeDriver).
 * Adapters normalise provider states to {@link CloudInstanceState} and provider errors to
 * {@link CloudError} kinds; the activity layer maps kinds to retryable or not.
 */
import { CLOUD_ERROR_KINDS, RETRYABLE_KINDS, type CloudErrorKind } from '../model/cloud-errors.js';
import type { Offering } from '../model/definition.js';

export const CLOUD_INSTANCE_STATES = ['PENDING', 'RUNNING', 'STOPPED', 'TERMINATED', 'ERROR', 'UNKNOWN'] as const;
export type CloudInstanceState = (typeof CLOUD_INSTANCE_STATES)[number];

/** A flavor the cloud offers (EC2 instance type, CloudStack service offering, ...). */
export interface CloudOffering extends Offering {
  id: string;
  name: string;
}

/** What to create. `userData` is the rendered contextualization (carries the phone-home token). */
export interface InstanceSpec {
  name: string;
  image: string;
  offering: Offering;
  userData: string;
  /** Tags the cloud stores with the instance, so teardown can find everything of a cluster. */
  tags: { cluster: string; service: string; key: string };
}

export interface CloudInstance {
  id: string;
  name: string;
  state: CloudInstanceState;
  idempotencyKey?: string;
  tags?: Record<string, string>;
  createdAt?: string;
  /** The hypervisor host it runs on, for clouds that say (a libvirt farm). */
  host?: string;
  /** Provider-specific data. */
  extra?: Record<string, unknown>;
}

/** The error kinds and which are retried are defined once, in model/cloud-errors.ts. */
export { CLOUD_ERROR_KINDS, RETRYABLE_KINDS, type CloudErrorKind };

export class CloudError extends Error {
  constructor(
    readonly kind: CloudErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = kind;
  }
}

export interface InstanceFilter {
  /** Only instances tagged with this cluster id. */
  cluster?: string;
}

export interface CloudAdapter {
  readonly name: string;
  readonly kind: string;
  listOfferings(): Promise<CloudOffering[]>;
  /** Creates an instance; a second call with the same key must not make a second instance. */
  createInstance(spec: InstanceSpec, idempotencyKey: string): Promise<CloudInstance>;
  /** Throws `CloudError('NotFound')` when the instance does not exist (any more). */
  describeInstance(id: string): Promise<CloudInstance>;
  /** The live (not terminated) instance created with this key, if any. */
  findInstance(idempotencyKey: string): Promise<CloudInstance | undefined>;
  /** Live instances matching the filter (by tag), for teardown verification. */
  listInstances(filter: InstanceFilter): Promise<CloudInstance[]>;
  /** Idempotent: terminating a gone instance succeeds. */
  terminateInstance(id: string): Promise<void>;
  close?(): Promise<void>;
}
