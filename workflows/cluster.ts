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
import { expiryReason, humanSeconds, sessionExpiry, sessionStart, type SessionDeadlines } from '../model/session.js';
import type { ClusterEvent, ClusterEventKind, PublishClusterInput, PublishedService } from '../model/read-model.js';
import type { ClusterState } from '../model/status.js';
import type { CloudgateActivities, PollLoadResult } from './activity-types.js';
import { failureReason } from './failures.js';
import {
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
  scaleUpdate,
  serviceReportSignal,
  serviceTeardownSignal,
  serviceWorkflowId,
  setDesiredSignal,
  teardownSignal,
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
} from './messages.js';
import { ServiceWorkflow } from './service.js';

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
/** Continue-as-new well before Temporal's 51,200-event limit (a steady cluster writes almost nothing). */
const CONTINUE_AS_NEW_EVENTS = 4_000;
/** While teardown waits for a service to report TERMINATED, it asks again this often (a closed service counts as done). */
const TEARDOWN_ASK_AGAIN = '10 minutes';
/** A write to the read model that failed is tried again after this long, even when nothing else happens. */
const PUBLISH_RETRY = '30 seconds';

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
}

/** One run of a cluster workflow: its state, message handlers, services and teardown. */
class ClusterRun {
  private readonly s: ClusterRunState;
  private readonly specs: Map<string, ServiceDefinition>;
  private readonly children = new Map<string, ChildWorkflowHandle<typeof ServiceWorkflow>>();
  private readonly readModel: boolean;
  /** This run may continue-as-new (and its services outlive it); runs started before may not. */
  private readonly continues: boolean;
  /** Service reports leave the desired counts alone (see {@link OWNS_DESIRED_PATCH}). */
  private readonly ownsDesired: boolean;
  /** A write to the read model that failed, to send again first. */
  private pendingPublish?: PublishClusterInput;

  constructor(private readonly input: ClusterInput) {
    const { definition, carried } = input;
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
    };
    this.readModel = patched(READ_MODEL_PATCH);
    this.continues = patched(CONTINUE_AS_NEW_PATCH);
    this.ownsDesired = patched(OWNS_DESIRED_PATCH);
    setHandler(clusterStatusQuery, () => this.view());
    setHandler(teardownSignal, (req) => {
      if (!this.s.teardown) this.emit('teardown', req?.reason ?? 'teardown requested');
      this.s.teardown ??= { reason: req?.reason ?? 'teardown requested', rollback: false };
      this.s.dirty = true;
    });
    setHandler(serviceReportSignal, (report) => this.onServiceReport(report));
    setHandler(scaleUpdate, (req) => this.scale(req), { validator: (req) => this.validateScale(req) });
    setHandler(loadUpdate, (req) => this.load(req), { validator: (req) => this.validateLoad(req) });
    setHandler(retryUpdate, () => this.retry(), { validator: () => this.validateRetry() });
    setHandler(pauseUpdate, (req) => this.pauseCluster(req.graceSeconds ?? 0), { validator: (_req) => this.validatePause() });
    setHandler(resumeUpdate, () => this.resumeCluster(), { validator: () => this.validateResume() });
    setHandler(keepaliveUpdate, () => this.keepalive(), { validator: () => this.validateSession('keep alive') });
    setHandler(extendUpdate, (req) => this.extend(req.seconds), { validator: (req) => this.validateExtend(req.seconds) });
  }

  private get clusterId(): string {
    return this.input.clusterId;
  }

  view(): ClusterView {
    const { input, s } = this;
    return {
      clusterId: input.clusterId,
      name: input.name,
      definitionId: input.definitionId,
      cloud: input.cloud,
      state: s.state,
      message: s.message,
      services: [...s.services.values()].map((x) => ({ ...x })),
      ...(this.expiresAt() && { expiresAt: this.expiresAt() }),
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
    if (this.s.pause) throw ApplicationFailure.nonRetryable(`cluster ${this.clusterId} is already ${this.s.pause.phase === 'resuming' ? 'resuming' : this.s.state.toLowerCase()}`, NOT_PAUSABLE);
  }

  private validateResume(): void {
    const gone = this.notActive();
    if (gone) throw gone;
    if (this.s.pause?.phase !== 'paused') {
      throw ApplicationFailure.nonRetryable(`cluster ${this.clusterId} is ${this.s.pause ? `still ${this.s.pause.phase}` : this.s.state}, not PAUSED: there is nothing to resume`, NOT_PAUSABLE);
    }
  }

  /** Vacates after a grace period; the cluster keeps its identity, definition, pins and history. */
  private pauseCluster(graceSeconds: number): { state: ClusterState; pausedAt?: string } {
    const graceUntil = Date.now() + graceSeconds * 1000;
    this.s.pause = { phase: graceSeconds > 0 ? 'grace' : 'vacating', graceUntil, waiting: [] };
    this.setState('PAUSING', graceSeconds > 0 ? `pausing: instances may drain until ${new Date(graceUntil).toISOString()}, then every one is terminated` : 'pausing: terminating every instance');
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
  private resumeCluster(): { state: ClusterState } {
    const pause = this.s.pause!;
    pause.phase = 'resuming';
    pause.waiting = [...this.s.services.values()].filter((x) => x.workflowId).map((x) => x.name);
    this.s.minReached.clear();
    this.setState('DEPLOYING', 'resuming: deploying again in dependency order');
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
        this.setState('PAUSED', `paused: ${left} instances on ${clouds.join(', ')}; POST …/resume deploys it again`);
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

  /** The services a retry re-runs: started ones that failed or wait for room. */
  private retryable(): string[] {
    return [...this.s.services.values()].filter((x) => x.workflowId && (x.state === 'FAILED' || x.state === 'WAITING_CAPACITY')).map((x) => x.name);
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
    const context = input.contexts?.[name];
    const clouds = serviceClouds(spec, input.cloud);
    summary.state = 'DEPLOYING';
    this.s.sentDesired.set(name, summary.desired);
    const handle = await startChild(ServiceWorkflow, {
      workflowId,
      args: [
        {
          clusterId,
          cloud: input.cloud,
          failurePolicy: input.definition.failurePolicy,
          service: spec,
          ...(context && { context }),
          desired: summary.desired,
          parentWorkflowId: clusterWorkflowId(clusterId),
          tuning: input.tuning,
        },
      ],
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
    const services: PublishedService[] = [...s.services.values()].map(({ name, state, desired, ready, replacements, message, retryingAt }) => ({
      name,
      state,
      desired,
      ready,
      replacements,
      ...(message !== undefined && { message }),
      ...(retryingAt !== undefined && { retryingAt }),
    }));
    // A write that failed is sent again first, unchanged (same seq): the store refuses it if it had landed.
    if (this.pendingPublish && !(await this.send(this.pendingPublish))) return;
    const expiresAt = this.expiresAt();
    // While PAUSING, the guests' drain notice (api/readiness.ts): when they are terminated. It
    // comes and goes with the state PAUSING, so it never makes a publish of its own.
    const drainUntil = s.pause && s.state === 'PAUSING' ? new Date(s.pause.graceUntil).toISOString() : undefined;
    // Clusters without a lifetime or a pause publish exactly what they did before either existed.
    const content = JSON.stringify([s.state, s.message, services, ...(expiresAt ? [expiresAt] : []), ...(drainUntil ? [{ drainUntil }] : [])]);
    if (content === s.published && s.events.length === 0) return;
    const write: PublishClusterInput = {
      clusterId: input.clusterId,
      seq: ++s.pubSeq,
      observedAt: new Date().toISOString(),
      state: s.state,
      ...(s.message !== undefined && { message: s.message }),
      services,
      ...(expiresAt && { expiresAt }),
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
    const checks = cvmfsChecks(this.input.contexts);
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
    if (await this.reconcilePause()) {
      setCurrentDetails(`**${s.state}** — ${this.describe()}${s.message ? `\n\n${s.message}` : ''}`);
      await this.publish();
      return;
    }
    const startable = startableServices(this.input.definition.services, (name) => s.services.get(name)!.state, s.minReached);
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
    const verdict = clusterVerdict([...s.services.values()], this.input.definition.failurePolicy, s.everReady);
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
    const clouds = clusterClouds(input.definition.services, input.cloud);
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
    const limit = this.input.tuning?.clusterHistoryLimit ?? CONTINUE_AS_NEW_EVENTS;
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
    };
  }

  /**
   * Hands the cluster to its next run once no message handler is running and the read model
   * has everything (its events are not carried). Returns when that cannot happen yet.
   */
  private async continueAsNewIfDue(): Promise<void> {
    if (!this.shouldContinueAsNew()) return;
    // A pause's grace timer and its steps live in this run: hand over only a settled pause.
    if (this.s.pause && this.s.pause.phase !== 'paused') return;
    await condition(allHandlersFinished);
    if (this.s.teardown || this.s.dirty) return;
    await this.publish();
    if (this.pendingPublish) return;
    await continueAsNew<typeof ClusterWorkflow>({ ...this.input, carried: this.carried() });
  }

  async run(): Promise<ClusterView> {
    const { s } = this;
    try {
      if (this.s.session) void this.watchSession();
      for (const spec of this.specs.values()) if (spec.autoscale?.loadUrl) void this.pullLoad(spec.name);
      if (!this.input.carried) {
        this.setState('DEPLOYING');
        await this.publish();
        await this.checkRepositories();
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
