/**
 * Names and shapes of everything that crosses a workflow boundary: workflow ids, inputs,
 * queries, signals, updates and search attributes. The API and tests import these; the
 * workflows implement them.
 */
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import type { PinnedContext } from '../model/context.js';
import type { ClusterDefinition, ServiceDefinition, FailurePolicy, Lifetime } from '../model/definition.js';
import type { SessionDeadlines } from '../model/session.js';
import type { Window } from '../model/windows.js';
import type { LoadReport } from '../model/autoscale.js';
import type { PublishedService } from '../model/read-model.js';
import type { CarriedInstance, InstanceRecord } from '../model/service-plan.js';
import type { ChangeView, ClusterSpec, SpecDiff } from '../model/rolling.js';
export type { ChangeView } from '../model/rolling.js';
import type { ClusterState, ReadinessReport, ServiceStatus } from '../model/status.js';

export const TASK_QUEUE = 'cloudgate';

export const clusterWorkflowId = (clusterId: string): string => `cluster/${clusterId}`;
export const serviceWorkflowId = (clusterId: string, service: string): string => `cluster/${clusterId}/${service}`;
/**
 * The Temporal Schedule that opens window `n` of a cluster (issue 13), and the id its runs of
 * `ClusterWindowWorkflow` start with (the server appends the time of each run).
 */
export const windowScheduleId = (clusterId: string, n: number): string => `cluster-window/${clusterId}/${n}`;
export const windowWorkflowId = windowScheduleId;

/**
 * The cluster (and service) a workflow id names, for log lines: `cluster/<id>` and
 * `cluster-window/<id>/…` name a cluster, `cluster/<id>/<service>` a service of it; other
 * workflows (the cloud catalogue) none. Cluster ids and service names never hold a `/`.
 */
export function idsOfWorkflowId(workflowId: string): { clusterId?: string; service?: string } {
  const [kind, clusterId, service] = workflowId.split('/');
  if (!clusterId) return {};
  if (kind === 'cluster') return service ? { clusterId, service } : { clusterId };
  if (kind === 'cluster-window') return { clusterId };
  return {};
}

/** Custom search attributes; `npm start` and the test harness register them with the server. */
export const SA_CLUSTER_ID = defineSearchAttributeKey('CloudgateClusterId', SearchAttributeType.KEYWORD);
export const SA_DEFINITION = defineSearchAttributeKey('CloudgateDefinition', SearchAttributeType.KEYWORD);
export const SA_OWNER = defineSearchAttributeKey('CloudgateOwner', SearchAttributeType.KEYWORD);
export const SA_STATE = defineSearchAttributeKey('CloudgateState', SearchAttributeType.KEYWORD);
export const SA_SERVICE = defineSearchAttributeKey('CloudgateService', SearchAttributeType.KEYWORD);
/** Every cloud a cluster (or service) may place instances on: `CloudgateClouds IN ("hlt")` finds every cluster on `hlt`. */
export const SA_CLOUDS = defineSearchAttributeKey('CloudgateClouds', SearchAttributeType.KEYWORD_LIST);
export const SEARCH_ATTRIBUTES = [SA_CLUSTER_ID, SA_DEFINITION, SA_OWNER, SA_STATE, SA_SERVICE, SA_CLOUDS];

/** The CLI's name of a search attribute type (`--search-attribute Name=Type`). */
export const cliSearchAttributeType = (sa: (typeof SEARCH_ATTRIBUTES)[number]): string =>
  sa.type === SearchAttributeType.KEYWORD_LIST ? 'KeywordList' : 'Keyword';

/** Input of `ClusterWorkflow`: a frozen snapshot of the definition, no secrets. */
export interface ClusterInput {
  clusterId: string;
  name: string;
  definitionId: string;
  definition: ClusterDefinition;
  cloud: string;
  owner?: string;
  /** Per service name: the context version pinned at submission (services without a context are absent). */
  contexts?: Record<string, PinnedContext>;
  /** Knobs for tests and operators; the API never sets them. */
  tuning?: WorkflowTuning;
  /** Set only on continue-as-new. */
  carried?: ClusterCarried;
  /** A session's lifetime (the definition's, overridden by the submission's) and the site-wide cap of its maximum. */
  lifetime?: Lifetime & { capSeconds: number };
  /** When it is active (the definition's windows, or the submission's instead); absent: always. */
  windows?: Window[];
}

export interface WorkflowTuning {
  /** A service workflow continues-as-new once its history has this many events (default 4,000). */
  serviceHistoryLimit?: number;
  /** A cluster workflow continues-as-new once its history has this many events (default 4,000). */
  clusterHistoryLimit?: number;
  /** Pauses between rounds of attempts of a FAILED service under `keep` (default KEEP_RETRY_BACKOFF_MS). */
  keepRetryBackoffMs?: number[];
  /**
   * Divides the pauses between health checks (their base interval and a steady service's
   * ceiling): compressed time, so a benchmark lives a week of a steady cluster in minutes.
   */
  timeScale?: number;
  /** Pauses before a cloud that refused (no room) or kept failing is tried again, by times in a row (default CLOUD_RETRY_MS). */
  cloudRetryMs?: number[];
}

/** What a cluster workflow hands its next run on continue-as-new (its events went to the read model first). */
export interface ClusterCarried {
  /** What each service reported last; `workflowId` is set on those started. */
  services: ServiceSummary[];
  /** Services that have had their minimum ready (their dependents may start). */
  minReached: string[];
  state: ClusterState;
  message?: string;
  everReady: boolean;
  /** The sequence number of the last publish to the read model (the next run continues from it). */
  pubSeq: number;
  /** A session's deadlines (clusters with a lifetime). */
  session?: SessionDeadlines;
  /** Per autoscaled service: when it last changed its count, and since when each instance has been reported idle. */
  autoscale?: Record<string, AutoscaleMemory>;
  /** A pause in progress or in force (issue 13). */
  pause?: PauseState;
  /** Where a cluster with windows stands. */
  windows?: WindowState;
}

/**
 * Where a cluster with windows stands (issue 13). `open` is true inside a window, until
 * `openUntil` (workflow clock, ms; overlapping windows extend it); `edge` says `open` changed
 * and the cluster has not acted on it yet (pause at a close, resume at an opening).
 */
export interface WindowState {
  open: boolean;
  openUntil: number;
  edge: boolean;
}

/**
 * A cluster's pause: `grace` until `graceUntil` (instances may drain), then `vacating` (services
 * terminate everything), `paused` (nothing left, verified by a sweep), and on resume
 * `resuming` until every service in `waiting` has been told to deploy again, in dependency order.
 */
export interface PauseState {
  phase: 'grace' | 'vacating' | 'paused' | 'resuming';
  graceUntil: number;
  /** Resuming: the started services not yet told to deploy again. */
  waiting: string[];
  /** The end of a window paused it (not a user): the next window's opening resumes it. */
  byWindow?: boolean;
}

/** What the cluster remembers of a service's load reports between them. */
export interface AutoscaleMemory {
  lastChangeAt: number;
  idleSince: Record<string, number>;
  /** Pulled load (`autoscale.loadUrl`): when it was last read (workflow clock), so the next run keeps the pace. */
  polledAt?: number;
  /** Why the last read gave no load; an event is written only when this changes, not at every poll. */
  pollProblem?: string;
}

/** A load report for one service. */
export interface LoadRequest extends LoadReport {
  service: string;
}

/** What the cluster did with a load report (also an event, unless it held). */
export interface LoadResult {
  service: string;
  action: 'up' | 'down' | 'hold';
  desired: number;
  retire: string[];
  reason: string;
}

/** What the cluster workflow knows of each service (children report transitions). */
export interface ServiceSummary extends PublishedService {
  /** Set once the service's workflow has been started. */
  workflowId?: string;
}

export interface ClusterView {
  clusterId: string;
  name: string;
  definitionId: string;
  cloud: string;
  state: ClusterState;
  message?: string;
  services: ServiceSummary[];
  /** When a session tears itself down unless kept alive or extended (clusters with a lifetime). */
  expiresAt?: string;
  /** A change (`PUT /v1/clusters/:id`) in progress. */
  change?: ChangeView;
  /** Clusters with windows: inside one now, and until when (ISO). */
  window?: { open: boolean; until?: string };
}

/** A session's deadlines as the keepalive and extend updates answer them (ISO). */
export interface SessionView {
  expiresAt: string;
  idleExpiresAt?: string;
  maxExpiresAt?: string;
}

export interface ScaleRequest {
  service: string;
  instances: number;
}
export interface ScaleResult {
  service: string;
  desired: number;
}

/** `PUT /v1/clusters/:id`: the new definition (frozen by the API) and its pinned contexts. */
export interface ChangeRequest extends ClusterSpec {
  /** Instances of a service replaced at once (default 1); never fewer than the service's `min` stay ready. */
  maxUnavailable?: number;
}

/** What a change request did: the services it replaces, adds, removes and keeps. */
export interface ChangeResult extends SpecDiff {
  from: string;
  to: string;
  maxUnavailable: number;
}

/** Failure types the scale validator rejects with; the API maps them to 404 / 422 / 409. */
export const UNKNOWN_SERVICE = 'UnknownService';
export const SCALE_OUT_OF_BOUNDS = 'ScaleOutOfBounds';
export const CLUSTER_NOT_ACTIVE = 'ClusterNotActive';
/** A load report for a service without `autoscale`; the API answers 409. */
export const NO_AUTOSCALE = 'NoAutoscale';
/** Keepalive or extend of a cluster without a lifetime (or extend without a maximum); the API answers 409. */
export const NO_LIFETIME = 'NoLifetime';
/** An extension past the site-wide cap; the API answers 422. */
export const LIFETIME_OUT_OF_BOUNDS = 'LifetimeOutOfBounds';

export const clusterStatusQuery = defineQuery<ClusterView>('status');
export const scaleUpdate = defineUpdate<ScaleResult, [ScaleRequest]>('scale');
/** Vacates the cluster after `graceSeconds` (default 0): every instance goes, the cluster stays (PAUSED). */
export const pauseUpdate = defineUpdate<{ state: ClusterState; pausedAt?: string }, [{ graceSeconds?: number }]>('pause');
/** Redeploys a PAUSED cluster in dependency order. */
export const resumeUpdate = defineUpdate<{ state: ClusterState }, []>('resume');
/** Pause of a paused (or pausing) cluster, resume of one that is not PAUSED; the API answers 409. */
export const NOT_PAUSABLE = 'NotPausable';
/** Re-runs the cluster's FAILED (and WAITING_CAPACITY) services now, instead of after their backoff; answers their names. */
export const retryUpdate = defineUpdate<{ services: string[] }, []>('retry');
/** A retry with no service to re-run; the API answers 409. */
export const NOTHING_TO_RETRY = 'NothingToRetry';
/** Applies a new definition or context versions to a running cluster, service by service (rolling). */
export const changeUpdate = defineUpdate<ChangeResult, [ChangeRequest]>('change');
/** A change while another is in progress, or to the spec the cluster already runs; the API answers 409. */
export const CHANGE_REFUSED = 'ChangeRefused';
/** A service's load (autoscale); it also keeps a session alive. */
export const loadUpdate = defineUpdate<LoadResult, [LoadRequest]>('load');
/** Resets a session's idle clock. */
export const keepaliveUpdate = defineUpdate<SessionView, []>('keepalive');
/** Moves a session's maximum by `seconds` (within the site-wide cap). */
export const extendUpdate = defineUpdate<SessionView, [{ seconds: number }]>('extend');
export const teardownSignal = defineSignal<[{ reason?: string }?]>('teardown');
/**
 * Window → cluster (issue 13): window `window` opened; be active until `until` (ms since the
 * epoch: its scheduled opening plus its duration). Sent by `ClusterWindowWorkflow`, which a
 * window's Schedule starts (the TypeScript SDK cannot send an Update from a workflow).
 */
export const windowOpenSignal = defineSignal<[{ window: number; until: number }]>('windowOpen');
/** Child → parent: a service changed state or counts. */
export const serviceReportSignal = defineSignal<[Omit<ServiceSummary, 'workflowId'>]>('serviceReport');

/** Input of `ServiceWorkflow`; `carried` is set only on continue-as-new. */
export interface ServiceInput {
  clusterId: string;
  cloud: string;
  failurePolicy: FailurePolicy;
  service: ServiceDefinition;
  /** The service's pinned context: instances render it, and are ready only when all its repositories probe OK. */
  context?: PinnedContext;
  desired: number;
  parentWorkflowId: string;
  tuning?: WorkflowTuning;
  /** The spec its instances are made from (model/rolling.ts `specLabel`); unset in services started before changes existed. */
  spec?: string;
  /** Set only on continue-as-new. */
  carried?: ServiceCarried;
}

/** What a service workflow hands its next run on continue-as-new. */
export interface ServiceCarried {
  /** Compact records (runs since the read model), or whole ones (runs before it). */
  instances: (CarriedInstance | InstanceRecord)[];
  nextOrdinal: number;
  replacements: number;
  consecutiveFailures: number;
  everReady: boolean;
  /** Lost ready instances since it was last fully ready (as opposed to merely scaling up). */
  degraded: boolean;
  /** Keep-policy rounds failed in a row (picks the backoff). */
  failedRounds: number;
  message?: string;
  tearingDown: boolean;
  /**
   * The failure budget was used up and no instance has become ready since: the service is
   * FAILED, whether it is backing off or trying again (absent in runs before this existed).
   */
  failing?: boolean;
  /** The sequence number of the last publish to the read model (the next run continues from it). */
  pubSeq?: number;
  /** Clouds passed over for now (no room, or failing creates): until when (workflow clock), why, times in a row. */
  blocked?: BlockedCloud[];
  /** Its cluster is paused (issue 13). */
  paused?: boolean;
}

/** A cloud a service does not place instances on until `until`. */
export interface BlockedCloud {
  cloud: string;
  until: number;
  reason: string;
  /** Times in a row it refused or failed (picks the pause). */
  round: number;
  /** It refused for want of room (not failing creates). */
  full: boolean;
}

export const serviceStatusQuery = defineQuery<ServiceStatus>('serviceStatus');
/** Phone-home reports, batched by the API per service workflow. */
export const readinessSignal = defineSignal<[ReadinessReport[]]>('readiness');
/** Cluster → service: the desired count, and (autoscale) the idle instances to terminate to reach it. */
export const setDesiredSignal = defineSignal<[number, string[]?]>('setDesired');
export const serviceTeardownSignal = defineSignal('serviceTeardown');
/** Cluster → service: start the next round of attempts (and look at full clouds again) now. */
export const retryNowSignal = defineSignal('retryNow');
/** Cluster → service: terminate every instance and make none until resumed (true), or deploy again (false). */
export const servicePauseSignal = defineSignal<[boolean]>('servicePause');

/** Cluster → service: make instances from this spec from now on, replacing the others `maxUnavailable` at a time. */
export interface ServiceSpecChange {
  service: ServiceDefinition;
  context?: PinnedContext;
  spec: string;
  maxUnavailable: number;
  /** The label of the instances made before the service had one (services started before changes existed). */
  legacy?: string;
}
export const serviceSpecSignal = defineSignal<[ServiceSpecChange]>('serviceSpec');
