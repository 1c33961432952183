/**
 * `ClusterWorkflow` (id `cluster/<clusterId>`) deploys one cluster from a frozen definition:
 * it starts one child `ServiceWorkflow` per service once every service it depends on has
 * its minimum instances ready, takes scale requests as validated Updates, applies the
 * cluster's failure policy, and on teardown (or rollback) removes every instance and then
 * verifies, by the cluster's tag in the cloud, that nothing is left. A cluster lives for
 * weeks: it continues-as-new before its history grows long, carrying {@link ClusterCarried};
 * its services run on (they are started with `ABANDON`, since Temporal applies a parent
 * close policy on continue-as-new too) and the next run reaches them by workflow id.
 */
import {
  ApplicationFailure,
  CancellationScope,
  ParentClosePolicy,
  condition,
  continueAsNew,
  getExternalWorkflowHandle,
  isCancellation,
  log,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  setHandler,
  startChild,
  upsertSearchAttributes,
  workflowInfo,
  allHandlersFinished,
  type ChildWorkflowHandle,
} from '@temporalio/workflow';
import { clusterVerdict, cvmfsChecks, startableServices } from '../model/cluster-plan.js';
import { DEFAULT_LOAD_POLL_SECONDS, clusterClouds, expandLoadUrl, loadUrlHost, serviceClouds, type ServiceDefinition } from '../model/definition.js';
import { autoscaleDecision } from '../model/autoscale.js';
import { diffSpecs, sameSpec, specLabel, type ClusterSpec, type SpecDiff } from '../model/rolling.js';
import { expiryReason, humanSeconds, sessionExpiry, sessionStart, type SessionDeadlines } from '../model/session.js';
import { nextWindowOpening, openWindowAt, windowName } from '../model/windows.js';
import type { ClusterEvent, ClusterEventKind, PublishClusterInput, PublishedService } from '../model/read-model.js';
import { RETRYABLE_SERVICE_STATES, type ClusterState } from '../model/status.js';
import type { CloudgateActivities, PollLoadResult } from './activity-types.js';
import { failureReason } from './failures.js';
import {
  CHANGE_REFUSED,
  CLUSTER_NOT_ACTIVE,
  LIFETIME_OUT_OF_BOUNDS,
  NO_AUTOSCALE,
  NO_LIFETIME,
  SA_CLOUDS,
  SA_CLUSTER_ID,
  SA_OWNER,
  SA_SERVICE,
  SA_STATE,
  SCALE_OUT_OF_BOUNDS,
  UNKNOWN_SERVICE,
  changeUpdate,
  clusterStatusQuery,
  clusterWorkflowId,
  extendUpdate,
  keepaliveUpdate,
  loadUpdate,
  NOTHING_TO_RETRY,
  NOT_PAUSABLE,
  pauseUpdate,
  resumeUpdate,
  retryNowSignal,
  retryUpdate,
  servicePauseSignal,
  serviceSpecSignal,
  scaleUpdate,
  serviceReportSignal,
  serviceTeardownSignal,
  serviceWorkflowId,
  setDesiredSignal,
  teardownSignal,
  type ChangeRequest,
  type ChangeResult,
  type ChangeView,
  windowOpenSignal,
  type ClusterCarried,
  type ClusterInput,
  type ClusterView,
  type ScaleRequest,
  type ScaleResult,
  type AutoscaleMemory,
  type LoadRequest,
  type LoadResult,
  type PauseState,
  type ServiceSummary,
  type SessionView,
  type WindowState,
} from './messages.js';
import { ServiceWorkflow } from './service.js';
import type { WindowActivities } from './windows.js';

/**
 * The workflow task timeout of each service workflow (see startService). The cluster workflow
 * keeps Temporal's 10 s: with 30 s (tried once), test/elastic-crash.test.ts got 503 for a pause
 * right after a worker kill — as we read it, a task in flight on the killed worker holds every
 * update of the cluster until it times out. Its replay after a refused continue-as-new can pass 10 s on a loaded machine
 * (the soak measured up to 6 s); the API answers 503 with Retry-After meanwhile.
 */
const SERVICE_TASK_TIMEOUT = '30 seconds';

/** The sweep must finish whatever it takes: no attempt limit, slow backoff. */
const { sweepCluster } = proxyActivities<CloudgateActivities>({
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '5 minutes' },
});

/**
 * Stratum-1 lookups: a few quick retries when no server answers (a network blip), none for
 * a repository that is missing, stale or expired (the activity marks those non-retryable).
 */
const { checkCvmfsRepository } = proxyActivities<CloudgateActivities>({
  startToCloseTimeout: '5 minutes',
  retry: { initialInterval: '5s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 5 },
});

/**
 * A cluster's window schedules (issue 13). Creating them is retried for a few minutes, then the
 * cluster fails (nothing deployed); deleting them at teardown must finish whatever it takes.
 */
const { ensureWindowSchedules } = proxyActivities<WindowActivities>({
  startToCloseTimeout: '1 minute',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});
const { deleteWindowSchedules } = proxyActivities<WindowActivities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '5 minutes' },
});

/**
 * Pulled load: one read of a `loadUrl`. A bad answer comes back as a value (the next poll is
 * the retry); only a lost worker or a crash is retried here, once.
 */
const { pollLoad } = proxyActivities<CloudgateActivities>({
  // The read itself times out after 10 s (activities/load.ts); a read lost with its worker is retried after this.
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '5s', maximumAttempts: 2 },
});

/** Writes to the read model: local activities in the worker (see the service workflow's). */
const { publishCluster } = proxyLocalActivities<CloudgateActivities>({
  startToCloseTimeout: '10 seconds',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 10 },
});

/** The `patched()` id of publishing to the read model (runs started before do not). */
const READ_MODEL_PATCH = 'cluster-read-model';
/**
 * The `patched()` id of continuing-as-new: services are started with `ABANDON` and reached by
 * workflow id. Runs started before keep one run, whose services go with it (`REQUEST_CANCEL`).
 */
const CONTINUE_AS_NEW_PATCH = 'cluster-continue-as-new';
/**
 * The `patched()` id of the cluster owning each service's desired count: a service's report
 * no longer overwrites it. Before, a report sent before a newer scale request landed carried
 * the old count back, the cluster took it for a new wish and sent it to the service, and two
 * quick scales could make cluster and service signal each other back and forth for ever.
 */
const OWNS_DESIRED_PATCH = 'cluster-owns-desired';
/**
 * The `patched()` id of not continuing-as-new when a message arrived during the last publish:
 * a scale accepted then had its event lost (it was not published, and events are not carried).
 */
const QUIET_HANDOVER_PATCH = 'cluster-quiet-handover';
/** Continue-as-new well before Temporal's 51,200-event limit, and short enough to replay within a workflow task's 10 s (see the service workflow's). */
const CONTINUE_AS_NEW_EVENTS = 2_000;
/** Runs started before the lower limit (a replay of one must hand over where it did). See the service workflow's. */
const CONTINUE_AS_NEW_EVENTS_BEFORE = 4_000;
/** The `patched()` id of the lower continue-as-new limit. */
const SHORTER_RUNS_PATCH = 'cluster-shorter-runs';
/** While teardown waits for a service to report TERMINATED, it asks again this often (a closed service counts as done). */
const TEARDOWN_ASK_AGAIN = '10 minutes';
/** A write to the read model that failed is tried again after this long, even when nothing else happens. */
const PUBLISH_RETRY = '30 seconds';
/**
 * Windows whose gap is shorter than this count as one: at a window's end the cluster stays
 * active if its cron expressions open a window by then (its signal may be a moment late).
 */
const WINDOW_JOIN_MS = 5_000;

const iso = (ms: number): string => new Date(ms).toISOString();

/** Everything a cluster workflow knows, in one object. */
interface ClusterRunState {
  /** What each service reported last (children report transitions). */
  services: Map<string, ServiceSummary>;
  /** Latched: once a service had its minimum ready, its dependents may start (and keep running). */
  minReached: Set<string>;
  /** The desired count last sent to each running service. */
  sentDesired: Map<string, number>;
  state: ClusterState;
  message?: string;
  teardown?: { reason: string; rollback: boolean };
  everReady: boolean;
  dirty: boolean;
  /** The read model: the last publish's sequence number and content, and what happened since. */
  pubSeq: number;
  published: string;
  events: ClusterEvent[];
  /** A session's deadlines (clusters with a lifetime), and a counter its watcher wakes on when they move. */
  session?: SessionDeadlines & { moved: number };
  /** Per autoscaled service: its last change and idle bookkeeping. */
  autoscale: Map<string, AutoscaleMemory>;
  /** Idle instances to terminate with the next desired count sent to their service (autoscale). */
  retire: Map<string, string[]>;
  /** Services to tell to retry now (a user's retry). */
  retryNow: Set<string>;
  /** A pause in progress or in force. */
  pause?: PauseState;
  /** A change of definition or context versions in progress (`PUT /v1/clusters/:id`). */
  change?: ChangeState;
  /** The cluster's spec changed and the read model does not know yet (its definition, its change). */
  specUnpublished: boolean;
  /** Clusters with windows: inside one or not, and a counter the window watcher wakes on when the end moves. */
  windows?: WindowState & { moved: number };
}

/**
 * A change rolling through the cluster: replaced services are told the new spec once the
 * replaced services they depend on have finished (dependency order), added ones start as
 * usual, removed ones are torn down once everything else succeeded. A replaced or added
 * service that fails rolls the whole change back to `from`. Not carried: a run does not
 * continue-as-new during a change.
 */
interface ChangeState {
  from: ClusterSpec;
  to: ClusterSpec;
  phase: 'rolling' | 'rolling back' | 'removing';
  maxUnavailable: number;
  startedAt: number;
  diff: SpecDiff;
  /** Replaced services not yet told (their dependencies are still rolling). */
  waiting: string[];
  /** Services told a spec, and the label each must reach. */
  target: Record<string, string>;
  /** The label each replaced service had before (rollback returns to it). */
  before: Record<string, string>;
  /** Services told to tear down (removed, or added by a change rolled back). */
  tearing: string[];
  reason?: string;
}

/** One run of a cluster workflow: its state, message handlers, services and teardown. */
class ClusterRun {
  private readonly s: ClusterRunState;
  /** The definition and pinned contexts the cluster runs (or, during a change, converges to). */
  private spec: ClusterSpec;
  /** Its services' definitions by name (during a change: those of both specs, the one converged to winning). */
  private specs: Map<string, ServiceDefinition>;
  private readonly children = new Map<string, ChildWorkflowHandle<typeof ServiceWorkflow>>();
  private readonly readModel: boolean;
  /** This run may continue-as-new (and its services outlive it); runs started before may not. */
  private readonly continues: boolean;
  /** Service reports leave the desired counts alone (see {@link OWNS_DESIRED_PATCH}). */
  private readonly ownsDesired: boolean;
  /** This run continues-as-new at the lower limit (see {@link SHORTER_RUNS_PATCH}). */
  private readonly shorterRuns: boolean;
  /** A write to the read model that failed, to send again first. */
  private pendingPublish?: PublishClusterInput;

  constructor(private readonly input: ClusterInput) {
    const { definition, carried } = input;
    this.spec = { definitionId: input.definitionId, definition, ...(input.contexts && { contexts: input.contexts }) };
    this.specs = new Map(definition.services.map((s) => [s.name, s]));
    const fresh = (s: ServiceDefinition): ServiceSummary => ({ name: s.name, state: 'WAITING', desired: s.min, ready: 0, replacements: 0 });
    const services = new Map(definition.services.map((s) => [s.name, fresh(s)]));
    for (const x of carried?.services ?? []) services.set(x.name, { ...x });
    this.s = {
      services,
      minReached: new Set(carried?.minReached),
      // A run continues-as-new only once every started service was sent its desired count.
      sentDesired: new Map((carried?.services ?? []).filter((x) => x.workflowId).map((x) => [x.name, x.desired])),
      state: carried?.state ?? 'PENDING',
      message: carried?.message,
      everReady: carried?.everReady ?? false,
      dirty: true,
      pubSeq: carried?.pubSeq ?? 0,
      published: '',
      events: [],
      ...(input.lifetime && { session: { ...(carried?.session ?? sessionStart(input.lifetime, Date.now())), moved: 0 } }),
      autoscale: new Map(Object.entries(carried?.autoscale ?? {})),
      retire: new Map(),
      retryNow: new Set(),
      ...(carried?.pause && { pause: { ...carried.pause } }),
      specUnpublished: false,
      ...(input.windows && { windows: { ...(carried?.windows ?? { open: false, openUntil: 0, edge: false }), moved: 0 } }),
    };
    this.readModel = patched(READ_MODEL_PATCH);
    this.continues = patched(CONTINUE_AS_NEW_PATCH);
    this.ownsDesired = patched(OWNS_DESIRED_PATCH);
    this.shorterRuns = patched(SHORTER_RUNS_PATCH);
    setHandler(clusterStatusQuery, () => this.view());
    setHandler(teardownSignal, (req) => {
      if (!this.s.teardown) this.emit('teardown', req?.reason ?? 'teardown requested');
      this.s.teardown ??= { reason: req?.reason ?? 'teardown requested', rollback: false };
      this.s.dirty = true;
    });
    setHandler(serviceReportSignal, (report) => this.onServiceReport(report));
    setHandler(windowOpenSignal, (req) => this.openWindow(req));
    setHandler(scaleUpdate, (req) => this.scale(req), { validator: (req) => this.validateScale(req) });
    setHandler(loadUpdate, (req) => this.load(req), { validator: (req) => this.validateLoad(req) });
    setHandler(retryUpdate, () => this.retry(), { validator: () => this.validateRetry() });
    setHandler(pauseUpdate, (req) => this.pauseCluster(req.graceSeconds ?? 0), { validator: (_req) => this.validatePause() });
    setHandler(resumeUpdate, () => this.resumeCluster(), { validator: () => this.validateResume() });
    setHandler(keepaliveUpdate, () => this.keepalive(), { validator: () => this.validateSession('keep alive') });
    setHandler(extendUpdate, (req) => this.extend(req.seconds), { validator: (req) => this.validateExtend(req.seconds) });
    setHandler(changeUpdate, (req) => this.startChange(req), { validator: (req) => this.validateChange(req) });
  }

  private get clusterId(): string {
    return this.input.clusterId;
  }

  view(): ClusterView {
    const { input, s } = this;
    return {
      clusterId: input.clusterId,
      name: input.name,
      definitionId: this.spec.definitionId,
      cloud: input.cloud,
      state: s.state,
      message: s.message,
      services: [...s.services.values()].map((x) => ({ ...x })),
      ...(this.expiresAt() && { expiresAt: this.expiresAt() }),
      ...(s.change && { change: this.changeView(s.change) }),
      ...(s.windows && { window: { open: s.windows.open, ...(s.windows.open && { until: iso(s.windows.openUntil) }) } }),
    };
  }

  /** When the session ends unless kept alive or extended (ISO); undefined without a lifetime. */
  private expiresAt(): string | undefined {
    const at = this.s.session && sessionExpiry(this.s.session)?.at;
    return at === undefined ? undefined : new Date(at).toISOString();
  }

  private sessionView(): SessionView {
    const { idleUntil, maxUntil } = this.s.session!;
    return {
      expiresAt: this.expiresAt()!,
      ...(idleUntil !== undefined && { idleExpiresAt: new Date(idleUntil).toISOString() }),
      ...(maxUntil !== undefined && { maxExpiresAt: new Date(maxUntil).toISOString() }),
    };
  }

  /** Rejections here are written nowhere (validators): a cluster without a lifetime, or one on its way out. */
  private validateSession(what: string): void {
    const { clusterId } = this;
    if (!this.s.session) throw ApplicationFailure.nonRetryable(`cluster ${clusterId} has no lifetime: there is nothing to ${what}`, NO_LIFETIME);
    const gone = this.notActive();
    if (gone) throw gone;
  }

  private validateExtend(seconds: number): void {
    this.validateSession('extend');
    const session = this.s.session!;
    const { clusterId } = this;
    if (session.maxUntil === undefined) throw ApplicationFailure.nonRetryable(`cluster ${clusterId} has no maximum lifetime to extend (only an idle limit)`, NO_LIFETIME);
    const cap = this.input.lifetime!.capSeconds;
    const wanted = Math.round((session.maxUntil - session.startedAt) / 1000) + seconds;
    if (!Number.isInteger(seconds) || seconds < 1 || wanted > cap) {
      throw ApplicationFailure.nonRetryable(
        `seconds must be a positive integer that keeps the lifetime within the site's cap of ${humanSeconds(cap)}; the lifetime is ${humanSeconds(wanted - seconds)} and ${seconds} more would make it ${humanSeconds(wanted)}`,
        LIFETIME_OUT_OF_BOUNDS,
      );
    }
  }

  /** The rejection of a request to a cluster on its way out (validators), or undefined. */
  private notActive(): ApplicationFailure | undefined {
    const { state, teardown } = this.s;
    return teardown || state === 'TERMINATING' || state === 'TERMINATED'
      ? ApplicationFailure.nonRetryable(`cluster ${this.clusterId} is ${state === 'TERMINATED' ? 'terminated' : 'being torn down'}`, CLUSTER_NOT_ACTIVE)
      : undefined;
  }

  private validatePause(): void {
    const gone = this.notActive();
    if (gone) throw gone;
    if (this.s.change) throw ApplicationFailure.nonRetryable(`cluster ${this.clusterId} is changing to ${this.s.change.to.definitionId} (${this.s.change.phase}): pause it once that is done`, NOT_PAUSABLE);
    // A pause the end of a window made may become the user's (see pauseCluster).
    const pause = this.s.pause;
    if (pause && !(pause.byWindow && pause.phase !== 'resuming')) {
      throw ApplicationFailure.nonRetryable(`cluster ${this.clusterId} is already ${pause.phase === 'resuming' ? 'resuming' : this.s.state.toLowerCase()}`, NOT_PAUSABLE);
    }
  }

  private validateResume(): void {
    const gone = this.notActive();
    if (gone) throw gone;
    if (this.s.pause?.phase !== 'paused') {
      throw ApplicationFailure.nonRetryable(`cluster ${this.clusterId} is ${this.s.pause ? `still ${this.s.pause.phase}` : this.s.state}, not PAUSED: there is nothing to resume`, NOT_PAUSABLE);
    }
  }

  /**
   * Vacates after a grace period; the cluster keeps its identity, definition, pins and history.
   * `byWindow`: the end of a window pauses it (at once), and the next opening resumes it. A
   * user's pause of a cluster a window's end paused makes that pause the user's: windows no
   * longer resume it, only `resume` does.
   */
  private pauseCluster(graceSeconds: number, byWindow = false): { state: ClusterState; pausedAt?: string } {
    const held = this.s.pause;
    if (!byWindow && held?.byWindow && held.phase !== 'resuming') {
      held.byWindow = undefined;
      this.emit('session', 'paused by a user: windows no longer resume it; POST …/resume does');
      if (held.phase === 'paused') this.setState('PAUSED', 'paused by a user (it was outside its windows): windows do not resume it; POST …/resume deploys it again');
      this.s.dirty = true;
      return { state: this.s.state, pausedAt: new Date(held.graceUntil).toISOString() };
    }
    const graceUntil = Date.now() + graceSeconds * 1000;
    this.s.pause = { phase: graceSeconds > 0 ? 'grace' : 'vacating', graceUntil, waiting: [], ...(byWindow && { byWindow }) };
    this.setState(
      'PAUSING',
      byWindow
        ? 'pausing: its window ended; terminating every instance'
        : graceSeconds > 0
          ? `pausing: instances may drain until ${new Date(graceUntil).toISOString()}, then every one is terminated`
          : 'pausing: terminating every instance',
    );
    if (graceSeconds > 0) void this.endGrace();
    this.s.dirty = true;
    return { state: this.s.state, pausedAt: new Date(graceUntil).toISOString() };
  }

  /** One timer for the grace period of a pause; a teardown ends it early. */
  private async endGrace(): Promise<void> {
    const pause = this.s.pause!;
    await condition(() => this.s.teardown !== undefined, pause.graceUntil - Date.now(), { summary: `pause: instances drain until ${new Date(pause.graceUntil).toISOString()}` });
    if (this.s.pause === pause && pause.phase === 'grace') pause.phase = 'vacating';
    this.s.dirty = true;
  }

  /** Deploys again: each started service once its dependencies have their minimum ready again. */
  private resumeCluster(why = 'resuming: deploying again in dependency order'): { state: ClusterState } {
    const pause = this.s.pause!;
    pause.phase = 'resuming';
    pause.waiting = [...this.s.services.values()].filter((x) => x.workflowId).map((x) => x.name);
    this.s.minReached.clear();
    this.setState('DEPLOYING', why);
    this.s.dirty = true;
    return { state: this.s.state };
  }

  /**
   * One step of a pause: tell every started service to vacate; once all report PAUSED, verify
   * with a sweep of every cloud that nothing is left, and the cluster is PAUSED. Resuming:
   * tell each service to deploy again once its dependencies have had their minimum ready.
   * Returns true while the pause holds the cluster (the normal reconcile then waits).
   */
  private async reconcilePause(): Promise<boolean> {
    const { s } = this;
    const pause = s.pause;
    if (!pause) return false;
    const started = [...s.services.values()].filter((x) => x.workflowId);
    if (pause.phase === 'grace') return true;
    if (pause.phase === 'vacating') {
      await Promise.all(started.filter((x) => x.state !== 'PAUSED').map((x) => this.service(x.name).signal(servicePauseSignal, true)));
      if (started.every((x) => x.state === 'PAUSED')) {
        const { clouds, left } = await this.sweepEveryCloud('pause: ');
        pause.phase = 'paused';
        const vacated = `${left} instances on ${clouds.join(', ')}`;
        this.setState('PAUSED', pause.byWindow ? this.outsideWindows(vacated) : `paused: ${vacated}; POST …/resume deploys it again`);
      }
      return true;
    }
    if (pause.phase === 'paused') return true;
    // Resuming, in dependency order.
    const ready = pause.waiting.filter((name) => this.specs.get(name)!.dependsOn.every((d) => s.minReached.has(d)));
    for (const name of ready) await this.service(name).signal(servicePauseSignal, false);
    pause.waiting = pause.waiting.filter((name) => !ready.includes(name));
    if (pause.waiting.length === 0) s.pause = undefined;
    return false;
  }

  private validateChange(req: ChangeRequest): void {
    const gone = this.notActive();
    if (gone) throw gone;
    this.notPaused();
    const { clusterId, s } = this;
    if (s.change) throw ApplicationFailure.nonRetryable(`cluster ${clusterId} is already changing to ${s.change.to.definitionId} (${s.change.phase}); wait until that is done`, CHANGE_REFUSED);
    if (sameSpec(this.spec, req)) throw ApplicationFailure.nonRetryable(`cluster ${clusterId} already runs definition ${req.definitionId} with these context versions: nothing to change`, CHANGE_REFUSED);
    if (s.state === 'PENDING' || (s.state === 'DEPLOYING' && !s.everReady)) {
      throw ApplicationFailure.nonRetryable(`cluster ${clusterId} is still deploying for the first time; change it once it is READY (or tear it down and submit again)`, CHANGE_REFUSED);
    }
  }

  /**
   * Starts a change: the cluster converges to `to` from now on (added services start once
   * their dependencies have their minimum, replaced ones are told their new spec in
   * dependency order by {@link reconcileChange}).
   */
  private startChange(req: ChangeRequest): ChangeResult {
    const { s } = this;
    const from = this.spec;
    const to: ClusterSpec = { definitionId: req.definitionId, definition: req.definition, ...(req.contexts && { contexts: req.contexts }) };
    const maxUnavailable = req.maxUnavailable ?? 1;
    const diff = diffSpecs(from, to);
    const before = Object.fromEntries(diff.replace.map((name) => [name, s.services.get(name)?.spec ?? specLabel(from.definitionId, from.contexts?.[name])]));
    s.change = { from, to, phase: 'rolling', maxUnavailable, startedAt: Date.now(), diff, waiting: [...diff.replace], target: {}, before, tearing: [] };
    this.useSpec(to, from);
    // An added service whose load is pulled gets its poller (those of the others run on as they were).
    for (const name of diff.add) if (this.specs.get(name)!.autoscale?.loadUrl) void this.pullLoad(name);
    for (const spec of to.definition.services) {
      if (!s.services.has(spec.name)) s.services.set(spec.name, { name: spec.name, state: 'WAITING', desired: spec.min, ready: 0, replacements: 0 });
      // New bounds hold at once; the count moves into them.
      const summary = s.services.get(spec.name)!;
      summary.desired = Math.min(Math.max(summary.desired, spec.min), spec.max ?? Infinity);
    }
    const parts = [
      diff.replace.length > 0 && `replace ${diff.replace.join(', ')} (${maxUnavailable} at a time)`,
      diff.add.length > 0 && `add ${diff.add.join(', ')}`,
      diff.remove.length > 0 && `remove ${diff.remove.join(', ')}`,
      diff.keep.length > 0 && `keep ${diff.keep.join(', ')}`,
    ].filter(Boolean);
    this.emit('update', `change from ${from.definitionId} to ${to.definitionId}: ${parts.join('; ')}`);
    this.setState(s.state, `changing to ${to.definitionId}: ${parts.join('; ')}`);
    s.specUnpublished = true;
    s.dirty = true;
    return { from: from.definitionId, to: to.definitionId, maxUnavailable, ...diff };
  }

  /** Converges to `spec`; the services of `also` (the other side of a change) stay known until it ends. */
  private useSpec(spec: ClusterSpec, also?: ClusterSpec): void {
    this.spec = spec;
    this.specs = new Map([...(also?.definition.services ?? []), ...spec.definition.services].map((x) => [x.name, x]));
  }

  private changeView(c: ChangeState): ChangeView {
    return {
      from: c.from.definitionId,
      to: c.to.definitionId,
      phase: c.phase,
      maxUnavailable: c.maxUnavailable,
      startedAt: new Date(c.startedAt).toISOString(),
      services: c.diff,
      ...(c.reason && { reason: c.reason }),
    };
  }

  /** A service told a spec has every instance on it and is READY. */
  private rolled(name: string, label: string): boolean {
    const x = this.s.services.get(name)!;
    return x.spec === label && x.outdated === 0 && x.state === 'READY';
  }

  /** Tells a service its spec (from `spec`, the label its instances must carry); one not started yet will start with it. */
  private async tellSpec(name: string, spec: ClusterSpec, label: string): Promise<void> {
    const c = this.s.change!;
    c.target[name] = label;
    if (!this.s.services.get(name)!.workflowId) return;
    const context = spec.contexts?.[name];
    await this.service(name).signal(serviceSpecSignal, {
      service: spec.definition.services.find((x) => x.name === name)!,
      ...(context && { context }),
      spec: label,
      maxUnavailable: c.maxUnavailable,
      legacy: c.before[name],
    });
  }

  /** A replaced or added service failed: every service told goes back to its spec from before. */
  private async rollBack(c: ChangeState, reason: string): Promise<void> {
    const { s } = this;
    c.phase = 'rolling back';
    c.reason = reason;
    c.waiting = [];
    this.useSpec(c.from, c.to);
    this.emit('update', `change to ${c.to.definitionId} failed: ${reason}; rolling back to ${c.from.definitionId}`);
    this.setState(s.state, `rolling back to ${c.from.definitionId}: ${reason}`);
    for (const name of Object.keys(c.target)) {
      // Its FAILED report belongs to the new spec: the service starts afresh with the old one and reports again.
      const x = s.services.get(name)!;
      if (x.state === 'FAILED') x.state = 'DEPLOYING';
      await this.tellSpec(name, c.from, c.before[name]);
    }
    for (const name of c.diff.add) if (s.services.get(name)?.state === 'FAILED') s.services.get(name)!.state = 'TERMINATING';
    s.specUnpublished = true;
  }

  /**
   * Tears down services a change leaves out (removed ones once it succeeded, added ones when
   * it rolls back) and forgets them once they report TERMINATED. True when none is left.
   */
  private removeServices(names: readonly string[]): boolean {
    const { s } = this;
    const c = s.change!;
    let gone = true;
    for (const name of names) {
      const x = s.services.get(name);
      if (!x) continue;
      if (!x.workflowId || x.state === 'TERMINATED') {
        for (const m of [s.services, s.sentDesired, s.retire, s.autoscale, this.children]) m.delete(name);
        s.minReached.delete(name);
        continue;
      }
      gone = false;
      if (!c.tearing.includes(name)) {
        c.tearing.push(name);
        this.emit('teardown', `${name}: tearing down (${c.phase === 'removing' ? `not in ${c.to.definitionId}` : `added by the change to ${c.to.definitionId}, which is rolled back`})`, name);
        void this.service(name).signal(serviceTeardownSignal);
      }
    }
    return gone;
  }

  /** The change is over: done (removing), rolled back, or given up because the rollback failed too (`failure`). */
  private endChange(c: ChangeState, failure?: string): void {
    const { s } = this;
    const done = c.phase === 'removing';
    this.useSpec(done ? c.to : c.from);
    s.change = undefined;
    s.specUnpublished = true;
    const took = Math.round((Date.now() - c.startedAt) / 1000);
    const message = done
      ? `changed from ${c.from.definitionId} to ${c.to.definitionId} in ${took} s`
      : failure
        ? `change to ${c.to.definitionId} failed (${c.reason}) and so did its rollback: ${failure}`
        : `change to ${c.to.definitionId} failed (${c.reason}); rolled back to ${c.from.definitionId} in ${took} s`;
    this.emit(done ? 'update' : 'failure', message);
    log.info('change ended', { message });
    s.message = message;
    s.dirty = true;
  }

  /**
   * One step of a change. Rolling: tell each replaced service its new spec once the replaced
   * services it depends on are done; a replaced or added service that FAILED turns it into a
   * rollback. Once every replaced service runs the new spec and every added one is READY, the
   * removed services are torn down and the change is done. Rolling back: every service told
   * goes back to its label from before, added services are torn down; a service that fails
   * again ends the change, and the failure policy judges the cluster as always.
   */
  private async reconcileChange(c: ChangeState): Promise<void> {
    const { s } = this;
    const failed = (names: readonly string[]) => names.find((n) => s.services.get(n)?.state === 'FAILED');
    if (c.phase === 'rolling') {
      const bad = failed([...Object.keys(c.target), ...c.diff.add]);
      if (bad) return this.rollBack(c, `${bad} failed on the new spec: ${s.services.get(bad)!.message ?? 'no reason given'}`);
      const doneRolling = (n: string) => !c.diff.replace.includes(n) || (c.target[n] !== undefined && this.rolled(n, c.target[n]));
      const next = c.waiting.filter((n) => this.specs.get(n)!.dependsOn.every(doneRolling));
      for (const name of next) await this.tellSpec(name, c.to, specLabel(c.to.definitionId, c.to.contexts?.[name]));
      c.waiting = c.waiting.filter((n) => !next.includes(n));
      if (c.waiting.length === 0 && c.diff.replace.every(doneRolling) && c.diff.add.every((n) => s.services.get(n)!.state === 'READY')) {
        c.phase = 'removing';
        s.specUnpublished = true;
      }
    }
    if (c.phase === 'rolling back') {
      const bad = failed(Object.keys(c.target));
      if (bad) return this.endChange(c, `${bad}: ${s.services.get(bad)!.message ?? 'no reason given'}`);
      if (!this.removeServices(c.diff.add)) return;
      if (Object.entries(c.target).every(([n, label]) => this.rolled(n, label))) this.endChange(c);
      return;
    }
    if (c.phase === 'removing' && this.removeServices(c.diff.remove)) this.endChange(c);
  }
  /** The services a retry re-runs: started ones that failed or wait for room. */
  private retryable(): string[] {
    return [...this.s.services.values()].filter((x) => x.workflowId && RETRYABLE_SERVICE_STATES.has(x.state)).map((x) => x.name);
  }

  private validateRetry(): void {
    const { clusterId } = this;
    const gone = this.notActive();
    if (gone) throw gone;
    this.notPaused();
    if (this.retryable().length === 0) {
      throw ApplicationFailure.nonRetryable(`cluster ${clusterId} has no FAILED or WAITING_CAPACITY service to retry (${this.describe()})`, NOTHING_TO_RETRY);
    }
  }

  /** Tells each failed (or waiting) service to try again now; its instances keep their names, so nothing is made twice. */
  private retry(): { services: string[] } {
    const services = this.retryable();
    for (const name of services) this.s.retryNow.add(name);
    this.emit('retry', `retry requested: ${services.join(', ')} try again now`);
    this.s.dirty = true;
    return { services };
  }

  private validateLoad({ service, queued, running }: LoadRequest): void {
    const spec = this.specs.get(service);
    const { clusterId } = this;
    if (!spec) throw ApplicationFailure.nonRetryable(`cluster ${clusterId} has no service "${service}"`, UNKNOWN_SERVICE);
    if (!spec.autoscale) throw ApplicationFailure.nonRetryable(`service "${service}" of cluster ${clusterId} has no autoscale: its count changes only by scale requests`, NO_AUTOSCALE);
    if (![queued, running].every((n) => Number.isInteger(n) && n >= 0)) throw ApplicationFailure.nonRetryable('queued and running must be integers ≥ 0', SCALE_OUT_OF_BOUNDS);
    const gone = this.notActive();
    if (gone) throw gone;
    this.notPaused();
  }

  /**
   * A load report: the service's new desired count and the idle instances to retire
   * (model/autoscale.ts), sent to the service with the next reconcile. Every change is an
   * event with its inputs; a report also keeps a session alive.
   */
  private load(req: LoadRequest, pulled = false): LoadResult {
    const { service } = req;
    const spec = this.specs.get(service)!;
    const summary = this.s.services.get(service)!;
    const memory = this.s.autoscale.get(service) ?? { lastChangeAt: 0, idleSince: {} };
    // Only this service's instances can be retired.
    const own = `${this.clusterId}-${service}-`;
    const idleInstances = (req.idleInstances ?? []).filter((id) => id.startsWith(own));
    const now = Date.now();
    const d = autoscaleDecision(spec.autoscale!, { min: spec.min, max: spec.max! }, { desired: summary.desired, ...memory }, { ...req, idleInstances }, now);
    memory.idleSince = d.idleSince;
    if (d.action !== 'hold') {
      memory.lastChangeAt = now;
      summary.desired = d.desired;
      if (d.retire.length > 0) this.s.retire.set(service, [...(this.s.retire.get(service) ?? []), ...d.retire]);
      this.emit('scale', `autoscale ${service}: ${d.reason}`, service);
      this.s.dirty = true;
    }
    this.s.autoscale.set(service, memory);
    // A pushed report is someone there; a pulled one is the cluster asking, so only work keeps it alive.
    if (this.s.session && (!pulled || req.queued + req.running > 0)) this.keepalive();
    return { service, action: d.action, desired: d.desired, retire: d.retire, reason: d.reason };
  }

  /** A service's autoscale memory, made when it has none. */
  private autoscaleMemory(service: string): AutoscaleMemory {
    let memory = this.s.autoscale.get(service);
    if (!memory) this.s.autoscale.set(service, (memory = { lastChangeAt: 0, idleSince: {} }));
    return memory;
  }

  /** A pulled load may be read and applied: the service runs, and the cluster is neither on its way out nor paused. */
  private pollable(service: string): boolean {
    const pause = this.s.pause;
    return !this.notActive() && !(pause && pause.phase !== 'resuming') && this.s.services.get(service)?.workflowId !== undefined;
  }

  /**
   * Pulled load (`autoscale.loadUrl`): one timer until the next read, then one activity that
   * reads the URL, whose answer goes through {@link load} as a pushed report does (same
   * decision, events; a session is kept alive only while there is work). While the service has
   * not started, or the cluster is paused, it waits without a timer. A read that gives no load
   * is an event only when its reason changes (and again when reads work again), so a URL that
   * stays broken costs no event per poll; the service holds meanwhile. The pace survives
   * continue-as-new (`polledAt` in the carried autoscale memory). Runs beside the main loop
   * until teardown.
   */
  private async pullLoad(service: string): Promise<void> {
    const { loadUrl, pollSeconds = DEFAULT_LOAD_POLL_SECONDS } = this.specs.get(service)!.autoscale!;
    const url = expandLoadUrl(loadUrl!, { clusterId: this.clusterId, service });
    const host = loadUrlHost(url);
    const gone = () => this.s.teardown !== undefined;
    while (!gone()) {
      const due = (this.autoscaleMemory(service).polledAt ?? 0) + pollSeconds * 1000;
      if (due > Date.now()) await condition(gone, due - Date.now(), { summary: `next read of ${service}'s load from ${host}` });
      if (gone()) return;
      if (!this.pollable(service)) {
        await condition(() => gone() || this.pollable(service));
        continue;
      }
      let got: PollLoadResult;
      try {
        got = await pollLoad.executeWithOptions({ summary: `read ${service}'s load from ${host}` }, [{ clusterId: this.clusterId, service, url }]);
      } catch (err) {
        got = { ok: false, problem: `the read failed: ${failureReason(err)}` };
      }
      const memory = this.autoscaleMemory(service);
      memory.polledAt = Date.now();
      if (gone() || !this.pollable(service)) continue;
      if (memory.pollProblem !== (got.ok ? undefined : got.problem)) {
        const desired = this.s.services.get(service)!.desired;
        if (got.ok) this.emit('scale', `autoscale ${service}: reading the load from ${host} again`, service);
        else this.emit('failure', `autoscale ${service}: no load from ${url}: ${got.problem}; holding at ${desired}`, service);
        memory.pollProblem = got.ok ? undefined : got.problem;
        this.s.dirty = true;
      }
      if (got.ok) this.load({ service, ...got.load }, true);
      // A read that held changed nothing the main loop waits for, but grew the history: let it continue-as-new when due.
      if (this.shouldContinueAsNew()) this.s.dirty = true;
    }
  }

  /** Resets the idle clock (a keepalive, or a load report). */
  private keepalive(): SessionView {
    const session = this.s.session!;
    const idle = this.input.lifetime!.idleSeconds;
    if (idle !== undefined) {
      session.idleUntil = Date.now() + idle * 1000;
      session.moved++;
      this.s.dirty = true;
    }
    return this.sessionView();
  }

  private extend(seconds: number): SessionView {
    const session = this.s.session!;
    session.maxUntil! += seconds * 1000;
    session.moved++;
    this.emit('session', `lifetime extended by ${humanSeconds(seconds)}: it now ends at ${new Date(session.maxUntil!).toISOString()}`);
    this.s.dirty = true;
    return this.sessionView();
  }

  /**
   * One timer on the session's earlier deadline, set again whenever a keepalive or an
   * extension moves it; when it fires, the cluster tears itself down saying which deadline
   * passed. Runs beside the main loop until teardown.
   */
  private async watchSession(): Promise<void> {
    const session = this.s.session!;
    while (!this.s.teardown) {
      const seen = session.moved;
      const expiry = sessionExpiry(session)!;
      const ms = expiry.at - Date.now();
      if (ms <= 0) {
        const reason = `session ended: ${expiryReason(expiry.which, session, this.input.lifetime!)}`;
        this.emit('teardown', reason);
        this.s.teardown = { reason, rollback: false };
        this.s.dirty = true;
        return;
      }
      const summary = `session ends at ${new Date(expiry.at).toISOString()} (${expiry.which === 'idle' ? 'idle limit, unless kept alive' : 'maximum lifetime'})`;
      await condition(() => session.moved !== seen || this.s.teardown !== undefined, ms, { summary });
    }
  }

  /**
   * Schedule windows (issue 13), on the first start of a cluster with windows: its Schedules
   * (one per window), then whether it starts inside a window (it deploys, and pauses at the
   * window's end) or outside every one (PAUSED at once, nothing deployed, until the next
   * opening). A Schedule that cannot be made fails the cluster before anything is deployed.
   */
  private async startWindows(): Promise<'inside' | 'outside' | 'failed'> {
    const { input, clusterId } = this;
    const windows = input.windows!;
    const w = this.s.windows!;
    try {
      await ensureWindowSchedules.executeWithOptions(
        { summary: `create the schedules of ${windows.length} window${windows.length === 1 ? '' : 's'} of ${clusterId}` },
        [{ clusterId, ...(input.owner && { owner: input.owner }), windows }],
      );
    } catch (err) {
      this.s.teardown ??= { reason: `could not create the schedules of its windows, nothing was deployed: ${failureReason(err)}`, rollback: true };
      return 'failed';
    }
    const now = Date.now();
    const open = openWindowAt(windows, now);
    // A window's signal may have come first: it set the end already.
    if (open && open.until > w.openUntil) {
      w.openUntil = open.until;
      w.moved++;
    }
    if (open || w.open) {
      w.open = true;
      w.edge = false;
      this.emit('session', `started inside ${open ? windowName(windows, open.window) : 'a window'}: active until ${iso(w.openUntil)}`);
      return 'inside';
    }
    this.s.pause = { phase: 'paused', graceUntil: now, waiting: [], byWindow: true };
    this.setState('PAUSED', this.outsideWindows('nothing deployed yet'));
    return 'outside';
  }

  /** The message of a cluster paused outside its windows: what it holds, when the next window opens, and how to have it sooner. */
  private outsideWindows(holding: string): string {
    const windows = this.input.windows!;
    const next = nextWindowOpening(windows, Date.now());
    const when = next ? `the next opens at ${iso(next.at)} (${windowName(windows, next.window)})` : 'no window opens again';
    return `paused outside its windows: ${holding}; ${when}; POST …/resume deploys it now`;
  }

  /** A window opened (its Schedule's workflow): be active until `until`; overlapping windows keep the later end. */
  private openWindow({ window, until }: { window: number; until: number }): void {
    const w = this.s.windows;
    const windows = this.input.windows;
    // A cluster without windows (a stray signal), or one on its way out, has nothing to open.
    if (!w || !windows || this.s.teardown || until <= Date.now()) return;
    if (until > w.openUntil) {
      w.openUntil = until;
      w.moved++;
    }
    if (!w.open) w.edge = true;
    w.open = true;
    this.emit('session', `${windows[window] ? windowName(windows, window) : `window ${window}`} opened: active until ${iso(w.openUntil)}`);
    this.s.dirty = true;
  }

  /**
   * One timer on the end of the open window(s), set again whenever an opening moves it. At the
   * end the cluster looks at its windows' cron expressions once more: a window that opened by
   * then (its signal not here yet) keeps it active, otherwise the window closes and the
   * reconcile pauses the cluster. Runs beside the main loop until teardown.
   */
  private async watchWindows(): Promise<void> {
    const w = this.s.windows!;
    const windows = this.input.windows!;
    while (!this.s.teardown) {
      const seen = w.moved;
      const woken = () => w.moved !== seen || this.s.teardown !== undefined;
      const now = Date.now();
      if (!w.open) {
        await condition(woken);
      } else if (w.openUntil > now) {
        await condition(woken, w.openUntil - now, { summary: `window closes at ${iso(w.openUntil)}` });
      } else {
        const joined = openWindowAt(windows, now + WINDOW_JOIN_MS);
        if (joined) {
          w.openUntil = joined.until;
          this.emit('session', `${windowName(windows, joined.window)} follows without a gap: active until ${iso(w.openUntil)}`);
        } else {
          w.open = false;
          w.edge = true;
          const next = nextWindowOpening(windows, now);
          this.emit('session', `window closed at ${iso(w.openUntil)}; ${next ? `the next opens at ${iso(next.at)} (${windowName(windows, next.window)})` : 'no window opens again'}`);
        }
        this.s.dirty = true;
      }
    }
  }

  /**
   * Acts once on a window's opening or end. The end pauses an active (or resuming) cluster,
   * marked as the window's pause (once a change in progress has ended). An opening resumes a cluster a window's end paused — once it
   * is PAUSED, if it was still vacating — and leaves one a user paused as it is (a user's pause
   * holds across windows until `resume`).
   */
  private reconcileWindows(): void {
    const w = this.s.windows;
    if (!w?.edge) return;
    const pause = this.s.pause;
    if (!w.open) {
      // A change in progress finishes first (or rolls back); the window's end pauses the cluster then.
      if (this.s.change) return;
      w.edge = false;
      if (!pause || pause.phase === 'resuming') this.pauseCluster(0, true);
      return;
    }
    if (pause?.byWindow && (pause.phase === 'grace' || pause.phase === 'vacating')) return;
    w.edge = false;
    if (pause?.byWindow && pause.phase === 'paused') this.resumeCluster(`resuming: a window opened (active until ${iso(w.openUntil)}); deploying again in dependency order`);
    else if (pause && !pause.byWindow) this.emit('session', `a window opened, but a user paused the cluster: it stays ${this.s.state} until POST …/resume`);
  }

  private setState(next: ClusterState, why?: string): void {
    if (why !== undefined) this.s.message = why;
    if (next === this.s.state) return;
    this.emit('state', `${this.s.state} → ${next}${why ? `: ${why}` : ''}`);
    log.info('cluster state', { from: this.s.state, to: next, why });
    this.s.state = next;
    upsertSearchAttributes([{ key: SA_STATE, value: next }]);
  }

  private onServiceReport(report: Omit<ServiceSummary, 'workflowId'>): void {
    const summary = this.s.services.get(report.name);
    if (!summary) return;
    // The desired count is the cluster's: a report may have left before the last scale request.
    Object.assign(summary, this.ownsDesired ? { ...report, desired: summary.desired } : report);
    if (report.ready >= this.specs.get(report.name)!.min) this.s.minReached.add(report.name);
    this.s.dirty = true;
  }

  private scale({ service, instances }: ScaleRequest): ScaleResult {
    this.emit('scale', `scale ${service} to ${instances} instances (was ${this.s.services.get(service)!.desired})`, service);
    this.s.services.get(service)!.desired = instances;
    this.s.dirty = true;
    return { service, desired: instances };
  }

  /** Rejections here are written nowhere: the update never reaches history. */
  private validateScale({ service, instances }: ScaleRequest): void {
    const spec = this.specs.get(service);
    const { clusterId } = this;
    if (!spec) throw ApplicationFailure.nonRetryable(`cluster ${clusterId} has no service "${service}"`, UNKNOWN_SERVICE);
    if (!Number.isInteger(instances) || instances < spec.min || (spec.max !== undefined && instances > spec.max)) {
      throw ApplicationFailure.nonRetryable(
        `instances must be an integer from ${spec.min} (min) to ${spec.max ?? 'unbounded'} (max) for service "${service}"; got ${instances}`,
        SCALE_OUT_OF_BOUNDS,
      );
    }
    const gone = this.notActive();
    if (gone) throw gone;
    this.notPaused();
  }

  /** Scale, load and retry wait for a paused cluster to resume. */
  private notPaused(): void {
    const pause = this.s.pause;
    if (pause && pause.phase !== 'resuming') throw ApplicationFailure.nonRetryable(`cluster ${this.clusterId} is ${this.s.state}: resume it first`, CLUSTER_NOT_ACTIVE);
  }

  private async startService(name: string): Promise<void> {
    const { input, clusterId } = this;
    const spec = this.specs.get(name)!;
    const summary = this.s.services.get(name)!;
    const workflowId = serviceWorkflowId(clusterId, name);
    const context = this.spec.contexts?.[name];
    const clouds = serviceClouds(spec, input.cloud);
    summary.state = 'DEPLOYING';
    this.s.sentDesired.set(name, summary.desired);
    const handle = await startChild(ServiceWorkflow, {
      workflowId,
      args: [
        {
          clusterId,
          cloud: input.cloud,
          failurePolicy: this.spec.definition.failurePolicy,
          service: spec,
          ...(context && { context }),
          spec: specLabel(this.spec.definitionId, context),
          desired: summary.desired,
          parentWorkflowId: clusterWorkflowId(clusterId),
          tuning: input.tuning,
        },
      ],
      // A 10,000-instance service's task can take seconds on a busy worker (its replay after an eviction alone took 7 s
      // at 2,000 events); at the default 10 s it timed out, was replayed again, and timed out again. A killed worker's
      // task in flight is taken over this much later.
      workflowTaskTimeout: SERVICE_TASK_TIMEOUT,
      // A run that continues-as-new must not take its services with it; teardown reaches them by signal.
      parentClosePolicy: this.continues ? ParentClosePolicy.ABANDON : ParentClosePolicy.REQUEST_CANCEL,
      staticSummary:
        `${name} of cluster ${clusterId}: ${summary.desired} × ${spec.image} on ${spec.placement ? `${clouds.join(', ')} (${spec.placement.strategy})` : input.cloud}` +
        (context ? `, context ${context.id} v${context.version} (${context.repositories.join(', ') || 'no repositories'})` : ''),
      typedSearchAttributes: [
        { key: SA_CLUSTER_ID, value: clusterId },
        { key: SA_SERVICE, value: name },
        { key: SA_STATE, value: 'DEPLOYING' },
        { key: SA_CLOUDS, value: clouds },
        // The owner too, so an operator filters a user's services as well as their clusters.
        ...(input.owner ? [{ key: SA_OWNER, value: input.owner }] : []),
      ],
    });
    summary.workflowId = workflowId;
    this.children.set(name, handle);
    // A service workflow only ends on teardown; ending otherwise is a failure the cluster must show.
    void handle.result().then(
      () => undefined,
      (err: unknown) => {
        if (this.s.teardown) return;
        summary.state = 'FAILED';
        summary.message = `service workflow ${workflowId} failed: ${err instanceof Error ? (err.cause?.toString() ?? err.message) : String(err)}`;
        this.s.dirty = true;
      },
    );
    this.s.dirty = true;
  }

  /** Notes what happened, for the read model's event list (nothing in runs without it). */
  private emit(kind: ClusterEventKind, message: string, service?: string): void {
    if (!this.readModel) return;
    this.s.events.push({ at: new Date().toISOString(), kind, ...(service && { service }), message });
  }

  /** Sends the cluster's state, its services' summaries and its events to the read model when any changed. */
  private async publish(): Promise<void> {
    const { s, input } = this;
    if (!this.readModel) return;
    const services: PublishedService[] = [...s.services.values()].map(({ name, state, desired, ready, replacements, message, retryingAt, spec, outdated }) => ({
      name,
      state,
      desired,
      ready,
      replacements,
      ...(message !== undefined && { message }),
      ...(retryingAt !== undefined && { retryingAt }),
      ...(spec !== undefined && { spec, outdated }),
    }));
    // A write that failed is sent again first, unchanged (same seq): the store refuses it if it had landed.
    if (this.pendingPublish && !(await this.send(this.pendingPublish))) return;
    const expiresAt = this.expiresAt();
    // While PAUSING, the guests' drain notice (api/readiness.ts): when they are terminated. It
    // comes and goes with the state PAUSING, so it never makes a publish of its own.
    const drainUntil = s.pause && s.state === 'PAUSING' ? new Date(s.pause.graceUntil).toISOString() : undefined;
    // Clusters without a lifetime or a pause publish exactly what they did before either existed.
    const content = JSON.stringify([s.state, s.message, services, ...(expiresAt ? [expiresAt] : []), ...(drainUntil ? [{ drainUntil }] : [])]);
    if (content === s.published && s.events.length === 0 && !s.specUnpublished) return;
    // After a change started or ended: the spec the cluster runs, and the change in progress (null: none).
    const spec = s.specUnpublished;
    s.specUnpublished = false;
    const write: PublishClusterInput = {
      clusterId: input.clusterId,
      seq: ++s.pubSeq,
      observedAt: new Date().toISOString(),
      state: s.state,
      ...(s.message !== undefined && { message: s.message }),
      services,
      ...(expiresAt && { expiresAt }),
      ...(spec && {
        spec: { definitionId: this.spec.definitionId, ...(this.spec.contexts && { contexts: this.spec.contexts }) },
        change: s.change ? this.changeView(s.change) : null,
      }),
      ...(drainUntil && { drainUntil }),
      events: s.events.splice(0),
    };
    if (await this.send(write)) s.published = content;
  }

  /** One write to the read model; a failed one is kept in {@link pendingPublish}. */
  private async send(write: PublishClusterInput): Promise<boolean> {
    try {
      await publishCluster.executeWithOptions({ summary: `publish ${this.clusterId}: ${write.state}` }, [write]);
      this.pendingPublish = undefined;
      return true;
    } catch (err) {
      log.warn('could not publish to the read model; will try again', { error: failureReason(err) });
      this.pendingPublish = write;
      return false;
    }
  }

  /** A started service: the child handle of this run, or (started by an earlier run) the workflow by id. */
  private service(name: string) {
    return this.children.get(name) ?? getExternalWorkflowHandle(serviceWorkflowId(this.clusterId, name));
  }

  private describe(): string {
    return [...this.s.services.values()].map((x) => `${x.name}: ${x.state} ${x.ready}/${x.desired}`).join(', ');
  }

  /** Fails the cluster before any instance exists when a repository is not fit to deploy with. */
  private async checkRepositories(): Promise<void> {
    const checks = cvmfsChecks(this.spec.contexts);
    if (checks.length === 0) return;
    setCurrentDetails(`**DEPLOYING** — checking ${checks.length} CVMFS ${checks.length === 1 ? 'repository' : 'repositories'} on their stratum-1s`);
    const results = await Promise.allSettled(
      checks.map((c) => checkCvmfsRepository.executeWithOptions({ summary: `CVMFS ${c.repo}: manifest and whitelist on its stratum-1s` }, [c])),
    );
    const failures = results.flatMap((r) => (r.status === 'rejected' ? [failureReason(r.reason)] : []));
    if (failures.length > 0 && !this.s.teardown) {
      this.s.teardown = { reason: `CVMFS check failed, nothing was deployed: ${failures.join('; ')}`, rollback: true };
    }
  }

  /** One pass: start what may start, pass scale requests on, judge the cluster. */
  private async reconcile(): Promise<void> {
    const { s } = this;
    this.reconcileWindows();
    if (await this.reconcilePause()) {
      setCurrentDetails(`**${s.state}** — ${this.describe()}${s.message ? `\n\n${s.message}` : ''}`);
      await this.publish();
      return;
    }
    if (s.change) await this.reconcileChange(s.change);
    const startable = startableServices(this.spec.definition.services, (name) => s.services.get(name)!.state, s.minReached);
    await Promise.all(startable.map((spec) => this.startService(spec.name)));
    // This run's children first, in the order they started (as runs before continue-as-new did), then those an earlier run started.
    const started = [...this.children.keys(), ...[...s.services.values()].filter((x) => x.workflowId && !this.children.has(x.name)).map((x) => x.name)];
    for (const name of started) {
      const want = s.services.get(name)!.desired;
      const retire = s.retire.get(name);
      if (s.sentDesired.get(name) !== want || retire) {
        s.sentDesired.set(name, want);
        s.retire.delete(name);
        // With autoscale's idle instances to terminate; without, exactly as before.
        await (retire ? this.service(name).signal(setDesiredSignal, want, retire) : this.service(name).signal(setDesiredSignal, want));
      }
    }
    for (const name of s.retryNow) await this.service(name).signal(retryNowSignal);
    s.retryNow.clear();
    const verdict = clusterVerdict([...s.services.values()], this.spec.definition.failurePolicy, s.everReady);
    if (verdict.rollback) {
      s.teardown = { reason: verdict.reason, rollback: true };
      return;
    }
    if (verdict.state === 'READY') {
      s.everReady = true;
      this.setState('READY', undefined);
      s.message = undefined;
    } else {
      this.setState(verdict.state, verdict.message);
    }
    setCurrentDetails(`**${s.state}** — ${this.describe()}${s.message ? `\n\n${s.message}` : ''}`);
    await this.publish();
  }

  /** Teardown (requested, rollback or cancel): nothing may be left behind, so no cancellation from here on. */
  private async tearDown(): Promise<ClusterView> {
    const { s } = this;
    const { reason, rollback } = s.teardown!;
    return await CancellationScope.nonCancellable(async () => {
      this.setState('TERMINATING', reason);
      setCurrentDetails(`**TERMINATING** — ${reason}`);
      for (const x of s.services.values()) if (x.state === 'WAITING') x.state = 'TERMINATED';
      await this.publish();
      // Its windows' schedules first: no window opens for a cluster on its way out, and none is left on the Schedules page.
      const windows = this.input.windows;
      if (windows) {
        await deleteWindowSchedules.executeWithOptions({ summary: `delete the schedules of the ${windows.length} window${windows.length === 1 ? '' : 's'} of ${this.clusterId}` }, [
          { clusterId: this.clusterId, windows: windows.map((_, n) => n) },
        ]);
      }
      await Promise.all(
        [...this.children.entries()].map(async ([name, child]) => {
          // A child that already finished cannot take the signal; its result still tells.
          await child.signal(serviceTeardownSignal).catch(() => undefined);
          const final = await child.result().catch(() => undefined);
          Object.assign(s.services.get(name)!, { state: 'TERMINATED', ready: 0, ...(final ? { replacements: final.replacements } : {}) });
        }),
      );
      // Services an earlier run started: they report TERMINATED when their instances are gone.
      const inherited = [...s.services.values()].filter((x) => x.workflowId && !this.children.has(x.name));
      await Promise.all(inherited.map((x) => this.awaitServiceTeardown(x)));
      const { clouds, left } = await this.sweepEveryCloud('');
      for (const x of s.services.values()) x.state = 'TERMINATED';
      this.setState(rollback ? 'FAILED' : 'TERMINATED', reason);
      setCurrentDetails(`**${s.state}** — ${reason}; ${left} instances left in ${clouds.join(', ')}`);
      await this.publish();
      await condition(allHandlersFinished);
      return this.view();
    });
  }

  /**
   * Verifies, by the cluster's tag, that nothing of it is left on any cloud any service may
   * have used (terminating what is), one sweep activity per cloud; `why` prefixes the summaries.
   */
  private async sweepEveryCloud(why: string): Promise<{ clouds: string[]; left: number }> {
    const { input, clusterId } = this;
    // A change may have moved services: the clouds of the spec it started from are swept too.
    const clouds = clusterClouds([...this.spec.definition.services, ...(this.s.change?.from.definition.services ?? []), ...input.definition.services], input.cloud);
    const sweeps = await Promise.all(
      clouds.map((cloud) => sweepCluster.executeWithOptions({ summary: `${why}verify no instance of ${clusterId} is left on ${cloud}` }, [{ cloud, clusterId }])),
    );
    for (const sweep of sweeps) if (sweep.terminated.length > 0) log.warn('sweep found leftover instances and terminated them', { cloud: sweep.cloud, instances: sweep.terminated });
    return { clouds, left: sweeps.reduce((n, sw) => n + sw.remaining, 0) };
  }

  /**
   * Tears down a service an earlier run started, and waits for its TERMINATED report, asking
   * again now and then. A service that cannot take the signal has closed: it counts as done
   * (the sweep that follows removes anything it left).
   */
  private async awaitServiceTeardown(summary: ServiceSummary): Promise<void> {
    const handle = getExternalWorkflowHandle(summary.workflowId!);
    while (summary.state !== 'TERMINATED') {
      try {
        await handle.signal(serviceTeardownSignal);
      } catch (err) {
        log.warn('service workflow is closed; counting it as torn down', { service: summary.name, error: failureReason(err) });
        break;
      }
      await condition(() => summary.state === 'TERMINATED', TEARDOWN_ASK_AGAIN, { summary: `wait for ${summary.name} to report TERMINATED` });
    }
    Object.assign(summary, { state: 'TERMINATED', ready: 0 });
  }

  private shouldContinueAsNew(): boolean {
    const limit = this.input.tuning?.clusterHistoryLimit ?? (this.shorterRuns ? CONTINUE_AS_NEW_EVENTS : CONTINUE_AS_NEW_EVENTS_BEFORE);
    return this.continues && (workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > limit);
  }

  private carried(): ClusterCarried {
    const { s } = this;
    return {
      services: [...s.services.values()].map((x) => ({ ...x })),
      minReached: [...s.minReached],
      state: s.state,
      ...(s.message !== undefined && { message: s.message }),
      everReady: s.everReady,
      pubSeq: s.pubSeq,
      ...(s.session && { session: { startedAt: s.session.startedAt, idleUntil: s.session.idleUntil, maxUntil: s.session.maxUntil } }),
      ...(s.autoscale.size > 0 && { autoscale: Object.fromEntries(s.autoscale) }),
      ...(s.pause && { pause: { ...s.pause } }),
      ...(s.windows && { windows: { open: s.windows.open, openUntil: s.windows.openUntil, edge: s.windows.edge } }),
    };
  }

  /**
   * Hands the cluster to its next run once no message handler is running and the read model
   * has everything (its events are not carried). Returns when that cannot happen yet.
   */
  private async continueAsNewIfDue(): Promise<void> {
    if (!this.shouldContinueAsNew()) return;
    // A pause's grace timer and its steps live in this run: hand over only a settled pause; a change, only once done.
    if ((this.s.pause && this.s.pause.phase !== 'paused') || this.s.change) return;
    await condition(allHandlersFinished);
    if (this.s.teardown || this.s.dirty) return;
    await this.publish();
    if (this.pendingPublish) return;
    // A message handled during that publish: the loop runs again (and publishes it) before handing over.
    const quiet = !this.s.dirty && this.s.events.length === 0 && allHandlersFinished();
    if (!quiet && patched(QUIET_HANDOVER_PATCH)) return;
    // The next run starts from the spec this one runs (a change may have replaced the submitted one).
    const { contexts: _submitted, ...input } = this.input;
    const { definitionId, definition, contexts } = this.spec;
    await continueAsNew<typeof ClusterWorkflow>({ ...input, definitionId, definition, ...(contexts && { contexts }), carried: this.carried() });
  }

  async run(): Promise<ClusterView> {
    const { s } = this;
    try {
      if (this.s.session) void this.watchSession();
      if (this.s.windows) void this.watchWindows();
      for (const spec of this.specs.values()) if (spec.autoscale?.loadUrl) void this.pullLoad(spec.name);
      if (!this.input.carried) {
        // A cluster with windows starts PAUSED outside them (startWindows); every other one deploys.
        const start = this.s.windows ? await this.startWindows() : 'inside';
        if (start === 'inside') this.setState('DEPLOYING');
        await this.publish();
        // Outside its windows too: a repository that is not fit fails the cluster now, not at its first window.
        if (start !== 'failed') await this.checkRepositories();
      }
      while (!s.teardown) {
        s.dirty = false;
        await this.reconcile();
        if (s.teardown) break;
        await this.continueAsNewIfDue();
        // A failed write to the read model is tried again on its own (in runs that may continue-as-new).
        const woken = () => s.dirty || s.teardown !== undefined;
        if (this.continues && this.pendingPublish) await condition(woken, PUBLISH_RETRY, { summary: 'try the read model again' });
        else await condition(woken);
      }
    } catch (err) {
      if (!isCancellation(err)) throw err;
      s.teardown = { reason: 'cluster workflow cancelled', rollback: false };
    }
    return this.tearDown();
  }
}

export async function ClusterWorkflow(input: ClusterInput): Promise<ClusterView> {
  return new ClusterRun(input).run();
}
