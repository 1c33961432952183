/**
 * The read model: what the workflows publish (through activities) for the API to read from
 * the store, so that reads never go through the worker and still answer when no worker runs.
 * Every publish carries a sequence number that grows along a workflow's runs (continue-as-new
 * carries it); the store keeps a publish only if its number is higher than the one it has,
 * so a late or retried write never overwrites a newer one.
 */
import type { ClusterState, InstanceStatus, ServiceBrief } from './status.js';
import type { PinnedContext } from './context.js';
import type { ChangeView } from './rolling.js';

/** What happened, for `GET /v1/clusters/:id/events`. */
/** `placement`: a cloud had no room or kept failing, and instances went to another (or wait for room). */
/** `session`: a session's lifetime was extended. */
export const CLUSTER_EVENT_KINDS = ['state', 'scale', 'replace', 'failure', 'retry', 'teardown', 'placement', 'session', 'update'] as const;
export type ClusterEventKind = (typeof CLUSTER_EVENT_KINDS)[number];

/** One thing that happened to a cluster or one of its services. */
export interface ClusterEvent {
  /** ISO time (workflow clock). */
  at: string;
  kind: ClusterEventKind;
  service?: string;
  instance?: string;
  /** A sentence a user can read: what happened and why. */
  message: string;
}

/** A service as published: its brief (model/status.ts), the one shape of a service's counts and state. */
export type PublishedService = ServiceBrief;

/** One instance as `GET /v1/clusters/:id/instances` lists it. */
export interface PublishedInstance extends InstanceStatus {
  service: string;
  ordinal: number;
}

/** The cluster workflow's publish: its state and its services' summaries. */
export interface PublishClusterInput {
  clusterId: string;
  seq: number;
  /** When the workflow saw this state (ISO, workflow clock). */
  observedAt: string;
  state: ClusterState;
  message?: string;
  services: PublishedService[];
  /** When a session ends unless kept alive or extended (clusters with a lifetime). */
  expiresAt?: string;
  /** Sent when a change started or ended: the definition and contexts the cluster now runs (or converges to). */
  spec?: { definitionId: string; contexts?: Record<string, PinnedContext> };
  /** With `spec`: the change in progress, or null once none is. */
  change?: ChangeView | null;
  /**
   * While the cluster is PAUSING: when its instances are terminated (the end of the grace
   * period). Guests read it as their drain notice (`GET /v1/instances/:id/notice`).
   */
  drainUntil?: string;
  events: ClusterEvent[];
}

/** Most instances one service publish carries (keeps each activity payload far below 512 KB). */
export const MAX_PUBLISHED_INSTANCES = 1000;

/** A service workflow's publish: its summary and the instances that changed since its last publish. */
export interface PublishServiceInput {
  clusterId: string;
  service: string;
  seq: number;
  observedAt: string;
  summary: PublishedService;
  /** Instances added or changed since the last publish, whole (at most {@link MAX_PUBLISHED_INSTANCES}). */
  upserts: PublishedInstance[];
  /** Ids of instances gone since the last publish. */
  removed: string[];
  events: ClusterEvent[];
}
