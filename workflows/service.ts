/**
 * `ServiceWorkflow` keeps N instances of one service of a cluster: it creates them
 * (idempotently, in batches), waits for each guest to phone home ready, replaces guests
 * that fail, stay silent or vanish, scales on request, tears down on request, and
 * continues-as-new before its history grows large.
 *
 * Cost model (the benchmark, `npm run bench`): per-instance work is batched — one create
 * activity per {@link CREATE_BATCH} instances, readiness reports arrive batched per signal,
 * one timer serves every deadline — so a 1,000-instance service needs a few hundred events.
 */
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  continueAsNew,
  getExternalWorkflowHandle,
  isCancellation,
  log,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  sleep,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
  allHandlersFinished,
} from '@temporalio/workflow';
import { PERMANENT_CREATE_FAILURES } from '../model/cloud-errors.js';
import { judgeReadiness } from '../model/readiness.js';
import {
  chunks,
  compactInstance,
  countIn,
  expandInstance,
  HEALTH_CHECK_STEADY_MAX_MS,
  healthCheckTargets,
  instanceId,
  keepRetryBackoffMs,
  liveInstances,
  MAX_CONSECUTIVE_FAILURES,
  nextHealthCheckMs,
  nextWakeMs,
  ordinalOf,
  overdueInstances,
  publishedAsIs,
  publishedFields,
  scalePlan,
  serviceState,
  wakeReason,
  type InstanceRecord,
  type PublishedFields,
} from '../model/service-plan.js';
import {
  MAX_PUBLISHED_INSTANCES,
  type ClusterEvent,
  type ClusterEventKind,
  type PublishedInstance,
  type PublishedService,
  type PublishServiceInput,
} from '../model/read-model.js';
import { serviceClouds, type PlacementStrategy } from '../model/definition.js';
import { cloudRetryMs, MAX_CREATE_FAILURES_PER_CLOUD, placeInstances } from '../model/placement.js';
import { rollingPlan } from '../model/rolling.js';
import type { CloudCount, InstanceStatus, ReadinessReport, ServiceState, ServiceStatus } from '../model/status.js';
import type { CloudgateActivities, CreateInstancesResult, DescribedInstance, InstanceRef } from './activity-types.js';
import { failureReason } from './failures.js';
import {
  readinessSignal,
  retryNowSignal,
  servicePauseSignal,
  serviceReportSignal,
  serviceSpecSignal,
  serviceStatusQuery,
  serviceTeardownSignal,
  setDesiredSignal,
  SA_STATE,
  type BlockedCloud,
  type ServiceCarried,
  type ServiceInput,
  type ServiceSpecChange,
  type ServiceSummary,
} from './messages.js';

/** Instances per create activity: big enough to keep activity count low, small enough to start booting early. */
export const CREATE_BATCH = 50;
/** Instances per terminate / describe activity. */
const CLOUD_BATCH = 200;
/** How often (at most) the cloud is asked whether instances still exist (vanished guests). */
const HEALTH_CHECK_MAX_MS = 30_000;
/**
 * Continue-as-new well before Temporal's 51,200-event limit and our own 10,240 target, and
 * small enough that a worker replays a run well within the 10 s workflow-task timeout: a
 * 4,000-event run took 5–10 s to replay on a loaded 2-core machine (test/soak), and a signal
 * arriving at the handover makes the worker replay it. Runs started before keep 4,000.
 */
const CONTINUE_AS_NEW_EVENTS = 2_000;
const CONTINUE_AS_NEW_EVENTS_BEFORE = 4_000;
/** The `patched()` id of the lower continue-as-new limit. */
const SHORTER_RUNS_PATCH = 'service-shorter-runs';

/** The `patched()` id of honest FAILED states (see {@link ServiceRun.honestFailure}). */
const HONEST_FAILURE_PATCH = 'service-failed-until-ready';
/** The `patched()` id of health checks that back off while a service is steady. */
const QUIET_HEALTH_CHECKS_PATCH = 'service-quiet-health-checks';
/** The `patched()` id of publishing to the read model. */
const READ_MODEL_PATCH = 'service-read-model';
/**
 * The `patched()` id of terminating what a retried create made for an instance the service had
 * already let go of (see {@link ServiceRun.onCreated}); runs before left it in the cloud.
 */
const STRAY_CREATE_PATCH = 'service-stray-create';
/** The `patched()` id of tearing down when the cluster workflow closed without asking (see {@link ServiceRun.report}). */
const ORPHAN_TEARDOWN_PATCH = 'service-orphan-teardown';
/**
 * The `patched()` id of not continuing-as-new when a message arrived during the last publish
 * (its events, or an instance it changed, would miss the read model); runs before did.
 */
const QUIET_HANDOVER_PATCH = 'service-quiet-handover';
/**
 * The `patched()` id of not continuing-as-new while a write to the read model failed (it is kept
 * in this run and not carried: the next run would count its instances as published, and an
 * instance's last change would never reach the read model). Runs before handed over anyway; the
 * cluster workflow always waited (its `continueAsNewIfDue`).
 */
const PUBLISHED_HANDOVER_PATCH = 'service-published-handover';
/** How soon a run that waits to hand over tries a failed read-model write again (after the local activity's own attempts). */
const PUBLISH_RETRY_MS = 5_000;
/**
 * The `patched()` id of health checks that leave out the instances vouched for since the last
 * one (see {@link healthCheckTargets}); runs before asked about every instance each time.
 */
const VOUCHED_SKIP_CHECK_PATCH = 'service-vouched-skip-check';
/**
 * The `patched()` id of letting the activities a workflow task scheduled start before its
 * read-model writes (see {@link ServiceRun.send}). Runs before sent them with the writes.
 */
const SCHEDULED_FIRST_PATCH = 'service-scheduled-first';
/** From this many activities scheduled in one task, they go out before its read-model writes (fewer wait, and add no events). */
const SCHEDULED_FIRST_MIN = 2;

/** Cloud error kinds and activity failures no retry will mend (model/cloud-errors.ts). */
const PERMANENT = [...PERMANENT_CREATE_FAILURES];

const { createInstances } = proxyActivities<CloudgateActivities>({
  startToCloseTimeout: '5 minutes',
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 8, nonRetryableErrorTypes: PERMANENT },
});
/**
 * Creates of a service with several clouds give up sooner (about 10 s of retries): a cloud
 * that keeps failing is left for the next one after {@link MAX_CREATE_FAILURES_PER_CLOUD}
 * failed creates in a row, not after many minutes of backoff.
 */
const { createInstances: createInstancesElsewhereNext } = proxyActivities<CloudgateActivities>({
  startToCloseTimeout: '5 minutes',
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '5s', maximumAttempts: 3, nonRetryableErrorTypes: PERMANENT },
});
const { describeInstances } = proxyActivities<CloudgateActivities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 5 },
});
/** Terminations must finish whatever it takes (an operator may have to fix credentials): no attempt limit. */
const { terminateInstances } = proxyActivities<CloudgateActivities>({
  startToCloseTimeout: '5 minutes',
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '5 minutes' },
});

/**
 * Writes to the read model run in the worker as local activities (one marker event each, no
 * task queue round trip); the store's sequence check makes a retried write harmless.
 */
const { publishService } = proxyLocalActivities<CloudgateActivities>({
  startToCloseTimeout: '10 seconds',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 10 },
});
/** Instance-only changes (counts and states unchanged) are published at most this often. */
const PUBLISH_INTERVAL_MS = 2_000;

/** Everything a service workflow knows, in one object; what continue-as-new carries is {@link ServiceCarried}. */
interface ServiceRunState extends Omit<ServiceCarried, 'instances' | 'blocked'> {
  /** Clouds not placed on for now (no room, or failing creates), by name. */
  blocked: Map<string, BlockedCloud>;
  /** Failed creates in a row per cloud (no success between). */
  createFailures: Map<string, number>;
  /** Instances the last reconcile could not place: every cloud of the service is blocked. */
  unplaced: number;
  /** Idle instances the cluster asked to terminate (autoscale), ahead of the scale plan's own choice. */
  retiring: Set<string>;
  /** Instances of an earlier spec replaced at once while a change rolls (model/rolling.ts). */
  maxUnavailable: number;
  desired: number;
  /** Cloud activities still running. */
  inFlight: number;
  /** Something changed since the last reconcile. */
  dirty: boolean;
  /** Workflow-clock ms at which a FAILED service under `keep` tries again (0: not waiting). */
  failedUntil: number;
  nextHealthCheck: number;
  /** The pause before the last scheduled health check (grows while the service is steady). */
  healthCheckPauseMs: number;
  /** The last health check found every instance where it should be. */
  lastCheckClean: boolean;
  /** Instances made, or reported ready, since the last health check: the next one leaves them out. */
  vouched: Set<string>;
  /** The last report sent to the cluster workflow (only changes are sent). */
  lastReport: string;
  /** The state last written to the search attribute. */
  reportedState: ServiceState;
  pubSeq: number;
  /** What the read model was last sent: each instance's fields, the summary, when. */
  published: Map<string, PublishedFields>;
  publishedSummary: string;
  lastPublishAt: number;
  /** What happened since the last publish. */
  events: ClusterEvent[];
}

/** One run of a service workflow: its state, message handlers, reconcile step and main loop. */
class ServiceRun {
  private readonly s: ServiceRunState;
  private readonly instances: Map<string, InstanceRecord>;
  private repositories: string[];
  private readonly healthCheckMs: number;
  /** The longest pause between health checks of a steady service. */
  private readonly healthCheckMaxMs: number;
  private readonly historyLimit: number;
  /** The clouds its instances may go to, in order (its placement's, else the cluster's cloud), and how. */
  private clouds: string[];
  private strategy: PlacementStrategy;
  /** Pauses before a blocked cloud is tried again. */
  private readonly cloudRetry: number[] | undefined;
  private readonly timeScale: number;
  /**
   * A service that used up its failure budget stays FAILED until an instance becomes ready
   * (through every backoff and retry), with `retryingAt` while it waits. Runs started before
   * this existed keep flipping back to DEPLOYING for each new round, as their histories say.
   */
  private readonly honestFailure: boolean;
  /** Health checks back off while the service is steady (runs started before keep the fixed interval). */
  private readonly quietHealthChecks: boolean;
  /** Health checks leave out the instances vouched for since the last one (runs started before ask about all). */
  private readonly skipVouched: boolean;
  /** The service publishes its state to the read model (runs started before do not). */
  private readonly readModel: boolean;
  /** A write to the read model that failed, to send again first. */
  private pendingPublish?: { input: PublishServiceInput; done: () => void };
  /** Activities scheduled in the workflow task that began at history length `at`, not yet sent to the server (see {@link send}). */
  private unsent = { at: 0, count: 0 };

  /** The input, with the service's spec as the last change made it (see {@link changeSpec}). */
  constructor(private input: ServiceInput) {
    const carried = input.carried;
    this.clouds = serviceClouds(input.service, input.cloud);
    this.strategy = input.service.placement?.strategy ?? 'fill';
    this.cloudRetry = input.tuning?.cloudRetryMs;
    this.instances = new Map(
      (carried?.instances ?? [])
        .map((c) => expandInstance(c, input.clusterId, input.service.name, this.clouds))
        // A run continues-as-new only once every instance runs its spec.
        .map((i) => [i.id, input.spec !== undefined ? { ...i, spec: input.spec } : i]),
    );
    /** What every guest must report OK before it counts as ready. */
    this.repositories = input.context?.repositories ?? [];
    // Often enough that a vanished guest is noticed before its readiness timeout would.
    const timeScale = (this.timeScale = input.tuning?.timeScale ?? 1);
    this.healthCheckMs = Math.min(HEALTH_CHECK_MAX_MS, (input.service.readinessTimeoutSeconds * 1000) / 2) / timeScale;
    this.healthCheckMaxMs = HEALTH_CHECK_STEADY_MAX_MS / timeScale;
    this.historyLimit = input.tuning?.serviceHistoryLimit ?? (patched(SHORTER_RUNS_PATCH) ? CONTINUE_AS_NEW_EVENTS : CONTINUE_AS_NEW_EVENTS_BEFORE);
    this.honestFailure = patched(HONEST_FAILURE_PATCH);
    this.quietHealthChecks = patched(QUIET_HEALTH_CHECKS_PATCH);
    this.skipVouched = patched(VOUCHED_SKIP_CHECK_PATCH);
    this.readModel = patched(READ_MODEL_PATCH);
    this.s = {
      nextOrdinal: carried?.nextOrdinal ?? 0,
      replacements: carried?.replacements ?? 0,
      consecutiveFailures: carried?.consecutiveFailures ?? 0,
      everReady: carried?.everReady ?? false,
      degraded: carried?.degraded ?? false,
      failedRounds: carried?.failedRounds ?? 0,
      message: carried?.message,
      tearingDown: carried?.tearingDown ?? false,
      failing: carried?.failing ?? false,
      paused: carried?.paused ?? false,
      desired: input.desired,
      inFlight: 0,
      dirty: true,
      failedUntil: 0,
      nextHealthCheck: Date.now() + this.healthCheckMs,
      healthCheckPauseMs: this.healthCheckMs,
      lastCheckClean: false,
      vouched: new Set(),
      pubSeq: carried?.pubSeq ?? 0,
      published: new Map(),
      publishedSummary: '',
      lastPublishAt: 0,
      events: [],
      lastReport: '',
      reportedState: 'DEPLOYING',
      blocked: new Map((carried?.blocked ?? []).map((b) => [b.cloud, b])),
      createFailures: new Map(),
      unplaced: 0,
      retiring: new Set(),
      maxUnavailable: 1,
    };
    // The previous run published everything before it continued as new: its instances are in
    // the read model as they are here (minus what is not carried, which the store keeps).
    if (this.readModel && (carried?.pubSeq ?? 0) > 0) for (const i of this.instances.values()) this.s.published.set(i.id, publishedFields(i));
    setHandler(serviceStatusQuery, () => this.view());
    setHandler(setDesiredSignal, (n, retire) => {
      if (n !== this.s.desired) this.emit('scale', `desired instances ${this.s.desired} → ${n}${retire?.length ? `, retiring idle ${retire.join(', ')}` : ''}`);
      for (const id of retire ?? []) this.s.retiring.add(id);
      this.s.desired = n;
      this.s.lastCheckClean = false;
      this.s.dirty = true;
    });
    setHandler(serviceTeardownSignal, () => {
      if (!this.s.tearingDown) this.emit('teardown', 'tearing down: terminating every instance');
      this.s.tearingDown = true;
      this.s.dirty = true;
    });
    setHandler(readinessSignal, (reports) => this.onReadiness(reports));
    setHandler(retryNowSignal, () => this.retryNow());
    setHandler(serviceSpecSignal, (change) => this.changeSpec(change));
    setHandler(servicePauseSignal, (paused) => {
      if (paused !== this.s.paused) this.emit('state', paused ? `${this.name}: pausing: terminating every instance` : `${this.name}: resuming: deploying ${this.s.desired} instances`);
      this.s.paused = paused;
      this.s.lastCheckClean = false;
      this.s.dirty = true;
    });
  }

  private get name(): string {
    return this.input.service.name;
  }

  /**
   * A change of the cluster: instances are made from the new spec from now on, and those of
   * another spec are replaced (see {@link reconcile}). The failure budget starts afresh: a
   * FAILED service gets its chance with the new spec (or, rolling back, the old one again).
   */
  private changeSpec({ service, context, spec, maxUnavailable, legacy }: ServiceSpecChange): void {
    if (legacy !== undefined) for (const i of this.instances.values()) i.spec ??= legacy;
    const { context: _old, ...rest } = this.input;
    this.input = { ...rest, service, ...(context && { context }), spec };
    this.clouds = serviceClouds(service, this.input.cloud);
    this.strategy = service.placement?.strategy ?? 'fill';
    this.repositories = context?.repositories ?? [];
    this.s.maxUnavailable = maxUnavailable;
    const outdated = liveInstances(this.instances.values()).filter((i) => i.spec !== spec).length;
    this.emit('update', `${this.name}: instances are made from ${spec} from now on${outdated > 0 ? `; replacing ${outdated}, ${maxUnavailable} at a time` : ''}`);
    Object.assign(this.s, { consecutiveFailures: 0, failing: false, failedUntil: 0, failedRounds: 0, lastCheckClean: false, dirty: true });
  }

  /** Instances still held on another spec than the service's (a change replacing them, until the last is gone from the cloud). */
  private outdated(): number {
    const { spec } = this.input;
    if (spec === undefined) return 0;
    let n = 0;
    for (const i of this.instances.values()) if (i.spec !== spec) n++;
    return n;
  }

  private readyCount(): number {
    return countIn(this.instances.values(), 'READY');
  }

  state(): ServiceState {
    const { desired, inFlight, consecutiveFailures, tearingDown, degraded } = this.s;
    const failing = this.honestFailure && this.s.failing === true;
    const waitingCapacity = this.s.unplaced > 0;
    const paused = this.s.paused === true;
    return serviceState({ desired, ready: this.readyCount(), held: this.instances.size, inFlight, consecutiveFailures, tearingDown, degraded, failing, waitingCapacity, paused });
  }

  /** When a FAILED service under `keep` starts its next round of attempts (ISO), while it waits for it. */
  private retryingAt(): string | undefined {
    const { failedUntil, consecutiveFailures } = this.s;
    return this.honestFailure && failedUntil > 0 && consecutiveFailures >= MAX_CONSECUTIVE_FAILURES ? new Date(failedUntil).toISOString() : undefined;
  }

  view(): ServiceStatus {
    return {
      name: this.name,
      state: this.state(),
      desired: this.s.desired,
      ready: this.readyCount(),
      replacements: this.s.replacements,
      message: this.s.message,
      ...(this.retryingAt() && { retryingAt: this.retryingAt() }),
      instances: [...this.instances.values()].sort((a, b) => a.ordinal - b.ordinal).map((i) => this.instanceStatus(i)),
    };
  }

  private instanceStatus(i: InstanceRecord): InstanceStatus {
    return {
      id: i.id,
      name: i.id,
      state: i.state,
      cloud: this.cloudOf(i),
      ...(i.host && { host: i.host }),
      cloudInstanceId: i.cloudInstanceId,
      createdAt: i.createdAt,
      readyAt: i.readyAt,
      message: i.message,
      ...(i.spec && { spec: i.spec }),
    };
  }

  /** Phone-home reports: ready, or failed with the verdict's reason. Reports of replaced or leaving instances change nothing. */
  private onReadiness(reports: ReadinessReport[]): void {
    for (const r of reports) {
      const inst = this.instances.get(r.instanceId);
      if (!inst || inst.state === 'FAILED' || inst.state === 'TERMINATING' || inst.state === 'READY') continue;
      const verdict = judgeReadiness(r, this.repositories);
      if (verdict.ready) {
        inst.state = 'READY';
        inst.readyAt = r.receivedAt;
        this.s.vouched.add(inst.id);
        inst.deadline = undefined;
        inst.message = undefined;
        this.s.consecutiveFailures = 0;
        this.s.failedRounds = 0;
        this.s.failing = false;
      } else {
        this.fail(inst, verdict.reason);
      }
    }
    this.s.dirty = true;
  }

  /**
   * Marks an instance failed; the reconcile step terminates it and creates a replacement.
   * `counts` false: a create on a cloud the service is leaving for another, not a failure of the service.
   */
  private fail(inst: InstanceRecord, reason: string, counts = true): void {
    if (inst.state === 'FAILED' || inst.state === 'TERMINATING') return;
    inst.state = 'FAILED';
    inst.message = reason;
    this.s.message = `${inst.id}: ${reason}`;
    if (counts) this.s.consecutiveFailures++;
    this.s.replacements++;
    if (this.s.everReady) this.s.degraded = true;
    this.s.lastCheckClean = false;
    this.emit('replace', `${inst.id} failed: ${reason}; replacing it`, inst.id);
    log.warn('instance failed; replacing it', { instance: inst.id, reason });
    this.s.dirty = true;
  }

  /** Runs one cloud activity without blocking the loop; its outcome is folded into state. */
  private launch(work: () => Promise<void>): void {
    // A task's commands (these activities' schedules) go to the server when the task completes.
    const at = workflowInfo().historyLength;
    this.unsent = { at, count: (this.unsent.at === at ? this.unsent.count : 0) + 1 };
    this.s.inFlight++;
    void work().finally(() => {
      this.s.inFlight--;
      this.s.dirty = true;
    });
  }

  private createBatch(batch: InstanceRecord[], cloud: string): void {
    const { input } = this;
    const create = this.clouds.length > 1 ? createInstancesElsewhereNext : createInstances;
    const where = this.clouds.length > 1 ? ` on ${cloud}${this.clouds[0] !== cloud ? ` (placement ${this.clouds.join(' → ')})` : ''}` : '';
    this.launch(async () => {
      try {
        const result = await create.executeWithOptions(
          { summary: `create ${batch.length} × ${this.name}${where} (${batch[0].id} … ${batch[batch.length - 1].id})` },
          [
            {
              cloud,
              clusterId: input.clusterId,
              service: this.name,
              image: input.service.image,
              offering: input.service.offering,
              ...(input.context && { context: { id: input.context.id, version: input.context.version } }),
              readinessTimeoutSeconds: input.service.readinessTimeoutSeconds,
              ids: batch.map((i) => i.id),
            },
          ],
        );
        this.onCreated(cloud, Array.isArray(result) ? { created: result } : result);
      } catch (err) {
        this.onCreateFailed(cloud, batch, err);
      }
    });
  }

  /**
   * A create batch that failed. With another cloud open, the instances are placed again
   * without counting against the service, and the cloud is left for a while after
   * {@link MAX_CREATE_FAILURES_PER_CLOUD} failures in a row (or one no retry mends); on its
   * last open cloud a service counts failures as it always did.
   */
  private onCreateFailed(cloud: string, batch: InstanceRecord[], err: unknown): void {
    const reason = failureReason(err);
    const failures = (this.s.createFailures.get(cloud) ?? 0) + 1;
    this.s.createFailures.set(cloud, failures);
    const elsewhere = this.clouds.some((c) => c !== cloud && !this.isBlocked(c, Date.now()));
    const on = this.clouds.length > 1 ? ` on ${cloud}` : '';
    for (const inst of batch) if (inst.state === 'CREATING') this.fail(inst, `create${on} failed: ${reason}`, !elsewhere);
    if (elsewhere && (isPermanent(err) || failures >= MAX_CREATE_FAILURES_PER_CLOUD)) {
      this.block(cloud, `${failures} creates in a row failed: ${reason}`, false);
    } else if (isPermanent(err)) {
      this.s.consecutiveFailures = Math.max(this.s.consecutiveFailures, MAX_CONSECUTIVE_FAILURES);
    }
  }

  /** The cloud an instance is on. */
  private cloudOf(i: InstanceRecord): string {
    return i.cloud ?? this.input.cloud;
  }

  private isBlocked(cloud: string, now: number): boolean {
    return (this.s.blocked.get(cloud)?.until ?? 0) > now;
  }

  /** Leaves a cloud alone for a while (longer each time in a row), and says so. */
  private block(cloud: string, reason: string, full: boolean): void {
    const now = Date.now();
    const prev = this.s.blocked.get(cloud);
    if (prev && prev.until > now) {
      prev.reason = reason;
      return;
    }
    const round = prev ? prev.round + 1 : 0;
    const until = now + cloudRetryMs(round, this.cloudRetry) / this.timeScale;
    this.s.blocked.set(cloud, { cloud, until, reason, round, full });
    this.s.createFailures.delete(cloud);
    const next = this.clouds.find((c) => c !== cloud && !this.isBlocked(c, now));
    const then = next ? `placing on ${next}` : `waiting for room; trying ${cloud} again in ${Math.round((until - now) / 1000)} s`;
    // The status says it too: the service's last problem until something else happens.
    this.s.message = `${full ? 'no room on' : 'leaving'} ${cloud} (${reason}); ${then}`;
    this.emit('placement', `${this.name}: ${this.s.message}`);
    log.warn('cloud passed over', { cloud, reason, until: new Date(until).toISOString() });
    this.s.dirty = true;
  }

  /** Live instances per cloud (not failed, not leaving), and how many are ready. */
  private cloudCounts(): Record<string, CloudCount> {
    const counts: Record<string, CloudCount> = {};
    for (const i of liveInstances(this.instances.values())) {
      const c = (counts[this.cloudOf(i)] ??= { instances: 0, ready: 0 });
      c.instances++;
      if (i.state === 'READY') c.ready++;
    }
    return counts;
  }

  /** Why a service waits for room: each of its clouds and what it said. */
  private waitingMessage(): string {
    const why = this.clouds.map((c) => `${c}: ${this.s.blocked.get(c)?.reason ?? 'no room'}`);
    return `waiting for room for ${this.s.unplaced} more instance${this.s.unplaced === 1 ? '' : 's'} — ${why.join('; ')}`;
  }

  private onCreated(cloud: string, { created, refused }: CreateInstancesResult): void {
    const now = Date.now();
    if (created.length > 0) this.s.createFailures.delete(cloud);
    if (created.length > 0 && !refused) this.s.blocked.delete(cloud);
    if (refused) {
      // Not made and holding no room anywhere: placed again on a cloud with room, or waiting for one.
      for (const id of refused.ids) if (this.instances.get(id)?.state === 'CREATING') this.instances.delete(id);
      this.block(cloud, refused.message, true);
    }
    /**
     * A create can come back for an instance the service let go of meanwhile. Its first attempt
     * made the instance and was lost with its worker (killed); the guest phoned home a failed
     * probe, and the instance was failed, found by its key, terminated and dropped — all while
     * the create waited out its heartbeat timeout. The retried create then found no instance
     * under the key and made it again. Such an instance is terminated (again: terminating by
     * key is idempotent, and the create that could make it once more has returned).
     */
    const strays: InstanceRecord[] = [];
    for (const c of created) {
      let inst = this.instances.get(c.id);
      if ((!inst || inst.state === 'TERMINATING') && patched(STRAY_CREATE_PATCH)) {
        if (!inst) {
          inst = { id: c.id, ordinal: ordinalOf(c.id), state: 'TERMINATING', cloud, message: 'made by a create retried after the instance was let go' };
          this.instances.set(c.id, inst);
        }
        strays.push(inst);
      }
      if (!inst) continue;
      inst.cloudInstanceId = c.cloudInstanceId;
      inst.createdAt = c.createdAt;
      if (c.host) inst.host = c.host;
      if (inst.state === 'CREATING') {
        inst.state = c.cloudState === 'RUNNING' ? 'RUNNING' : 'BOOTING';
        inst.deadline = now + this.input.service.readinessTimeoutSeconds * 1000;
        this.s.vouched.add(inst.id);
      }
    }
    if (strays.length > 0) {
      log.warn('a retried create made instances the service had let go of; terminating them', { instances: strays.map((i) => i.id) });
      this.terminate(strays, 'made again by a retried create after it was let go');
    }
  }

  /** Terminates instances, one activity per cloud they are on. */
  private terminate(batch: InstanceRecord[], why: string): void {
    for (const [cloud, some] of this.byCloud(batch)) this.terminateOn(cloud, some, why);
  }

  /** `instances` grouped by the cloud they are on, in the order of the service's clouds (one group for a one-cloud service). */
  private byCloud(instances: InstanceRecord[]): [string, InstanceRecord[]][] {
    const groups = new Map<string, InstanceRecord[]>();
    for (const i of instances) {
      const list = groups.get(this.cloudOf(i)) ?? [];
      list.push(i);
      groups.set(this.cloudOf(i), list);
    }
    return [...groups.entries()];
  }

  private terminateOn(cloud: string, batch: InstanceRecord[], why: string): void {
    this.launch(async () => {
      const what = batch.length === 1 ? batch[0].id : `${batch.length} × ${this.name}`;
      const refs: InstanceRef[] = batch.map((i) => ({ id: i.id, cloudInstanceId: i.cloudInstanceId }));
      try {
        const on = this.clouds.length > 1 ? ` on ${cloud}` : '';
        await terminateInstances.executeWithOptions({ summary: `terminate ${what}${on}: ${why}` }, [{ cloud, clusterId: this.input.clusterId, instances: refs }]);
        for (const i of batch) this.instances.delete(i.id);
      } catch (err) {
        // Only cancellation ends an unlimited retry; hand the instances back so teardown tries again.
        log.warn('terminate did not finish; will try again', { error: failureReason(err) });
        for (const i of batch) if (this.instances.get(i.id)?.state === 'TERMINATING') this.instances.get(i.id)!.state = 'FAILED';
      }
    });
  }

  private healthCheck(batch: InstanceRecord[]): void {
    for (const [cloud, some] of this.byCloud(batch)) this.healthCheckOn(cloud, some);
  }

  private healthCheckOn(cloud: string, batch: InstanceRecord[]): void {
    this.launch(async () => {
      let described: DescribedInstance[];
      const on = this.clouds.length > 1 ? ` on ${cloud}` : '';
      try {
        described = await describeInstances.executeWithOptions({ summary: `check ${batch.length} × ${this.name}${on} still exist` }, [
          { cloud, clusterId: this.input.clusterId, instances: batch.map((i) => ({ id: i.id, ...(i.cloudInstanceId && { cloudInstanceId: i.cloudInstanceId }) })) },
        ]);
      } catch (err) {
        log.warn('health check failed; will try again', { error: failureReason(err) });
        this.s.lastCheckClean = false;
        return;
      }
      for (const d of described) {
        const inst = this.instances.get(d.id);
        if (!inst || !['BOOTING', 'RUNNING', 'READY'].includes(inst.state)) continue;
        if (d.cloudState === 'GONE' || d.cloudState === 'TERMINATED' || d.cloudState === 'ERROR' || d.cloudState === 'STOPPED') {
          this.fail(inst, d.cloudState === 'GONE' ? 'vanished from the cloud' : `cloud reports it ${d.cloudState}`);
        } else if (d.cloudState === 'RUNNING' && inst.state === 'BOOTING') {
          inst.state = 'RUNNING';
        }
      }
    });
  }

  /** One pass of "make the world match the wish". Starts activities; never waits for them. */
  reconcile(): void {
    const now = Date.now();
    const all = () => this.instances.values();
    if (this.s.tearingDown || this.s.paused) {
      // CREATING instances are picked up once their create returns (or fails, then by key).
      const rest = [...all()].filter((i) => i.state !== 'TERMINATING' && i.state !== 'CREATING');
      for (const inst of rest) inst.state = 'TERMINATING';
      for (const batch of chunks(rest, CLOUD_BATCH)) this.terminate(batch, this.s.tearingDown ? 'teardown' : 'pause: vacate');
      this.s.unplaced = 0;
      return;
    }
    for (const inst of overdueInstances(all(), now)) this.fail(inst, `no readiness report within ${this.input.service.readinessTimeoutSeconds} s`);
    // Failed instances go away (a replacement is created below).
    const failed = [...all()].filter((i) => i.state === 'FAILED');
    for (const inst of failed) inst.state = 'TERMINATING';
    for (const batch of chunks(failed, CLOUD_BATCH)) this.terminate(batch, batch.length === 1 ? `replace it (${batch[0].message})` : 'replace failed instances');

    // Autoscale's idle instances go first, so the scale plan never picks a busy one to reach the lower count.
    const retired = [...this.s.retiring].map((id) => this.instances.get(id)).filter((i): i is InstanceRecord => i !== undefined && liveInstances([i]).length === 1 && i.state !== 'CREATING');
    this.s.retiring.clear();
    for (const inst of retired) inst.state = 'TERMINATING';
    for (const batch of chunks(retired, CLOUD_BATCH)) this.terminate(batch, `scale down to ${this.s.desired}: idle (autoscale)`);

    // No new instances while the failure budget is used up (a keep-policy backoff, or a rollback to come).
    const holdCreates = this.honestFailure ? this.s.consecutiveFailures >= MAX_CONSECUTIVE_FAILURES : this.state() === 'FAILED';
    // A change: instances of another spec are replaced, never below the service's floor of ready ones.
    const { spec } = this.input;
    const rolling = spec !== undefined ? rollingPlan(liveInstances(all()), spec, this.s.desired, this.input.service.min, this.s.maxUnavailable) : undefined;
    for (const inst of rolling?.terminate ?? []) inst.state = 'TERMINATING';
    for (const batch of chunks(rolling?.terminate ?? [], CLOUD_BATCH)) this.terminate(batch, `replace with ${spec}`);
    const plan = scalePlan(liveInstances(all()), rolling?.target ?? this.s.desired, this.s.nextOrdinal, holdCreates, spec);
    for (const inst of plan.terminate) inst.state = 'TERMINATING';
    for (const batch of chunks(plan.terminate, CLOUD_BATCH)) this.terminate(batch, `scale down to ${this.s.desired}`);
    // Each new instance goes to a cloud of the service with room (model/placement.ts); none: it waits for room.
    const open = new Set(this.clouds.filter((c) => !this.isBlocked(c, now)));
    const places = placeInstances(plan.create.length, this.clouds, this.strategy, this.liveByCloud(), new Set(this.clouds.filter((c) => !open.has(c))));
    const wasWaiting = this.s.unplaced > 0;
    this.s.unplaced = plan.create.length - places.length;
    if (this.s.unplaced > 0) this.s.message = this.waitingMessage();
    else if (wasWaiting) {
      this.s.message = undefined;
      const where = [...new Set(places)].join(', ');
      this.emit(
        'placement',
        places.length > 0
          ? `${this.name}: looking for room again: placing ${places.length} instance${places.length === 1 ? '' : 's'} on ${where}`
          : `${this.name}: no longer waiting for room (scaled to ${this.s.desired})`,
      );
    }
    const fresh = places.map((cloud, n): InstanceRecord => {
      const ordinal = this.s.nextOrdinal + n;
      return { id: instanceId(this.input.clusterId, this.name, ordinal), ordinal, state: 'CREATING', cloud, ...(spec !== undefined && { spec }) };
    });
    for (const inst of fresh) this.instances.set(inst.id, inst);
    this.s.nextOrdinal += fresh.length;
    for (const [cloud, some] of this.byCloud(fresh)) for (const batch of chunks(some, CREATE_BATCH)) this.createBatch(batch, cloud);

    if (now >= this.s.nextHealthCheck) {
      const steady = this.quietHealthChecks && this.s.lastCheckClean && this.state() === 'READY';
      this.s.healthCheckPauseMs = nextHealthCheckMs(this.healthCheckMs, this.s.healthCheckPauseMs, steady, this.healthCheckMaxMs);
      this.s.nextHealthCheck = now + this.s.healthCheckPauseMs;
      // One left out is asked about at the next check, which must come before its readiness deadline.
      const targets = healthCheckTargets(all(), this.skipVouched ? this.s.vouched : undefined, now + 2 * this.s.healthCheckPauseMs);
      this.s.vouched.clear();
      // Clean until a batch finds an instance gone or cannot ask (fail() and the error path clear it).
      this.s.lastCheckClean = targets.length > 0;
      for (const batch of chunks(targets, CLOUD_BATCH)) this.healthCheck(batch);
    }
  }

  /** Live instances per cloud (placement balances on these). */
  private liveByCloud(): Map<string, number> {
    return new Map(Object.entries(this.cloudCounts()).map(([c, n]) => [c, n.instances]));
  }

  /** For the Temporal UI: instances per cloud and the clouds passed over, for a service with several clouds. */
  private placementDetails(): string {
    if (this.clouds.length === 1) return '';
    const counts = this.cloudCounts();
    const now = Date.now();
    const per = this.clouds.map((c) => {
      const b = this.isBlocked(c, now) ? this.s.blocked.get(c) : undefined;
      return `${c} ${counts[c]?.ready ?? 0}/${counts[c]?.instances ?? 0} ready${b ? ` (passed over until ${new Date(b.until).toISOString()}: ${b.reason})` : ''}`;
    });
    return `\n\n${this.strategy} over ${per.join(', ')}`;
  }

  /** When the earliest blocked cloud may be tried again while instances wait for room (0: none). */
  private roomAt(): number {
    if (this.s.unplaced === 0) return 0;
    const now = Date.now();
    const untils = [...this.s.blocked.values()].map((b) => b.until).filter((u) => u > now);
    return untils.length ? Math.min(...untils) : 0;
  }

  /** Tells the cluster workflow about state changes (not every count change: its history stays small). */
  private async report(): Promise<void> {
    const state = this.state();
    const ready = this.readyCount();
    const { desired, replacements, message } = this.s;
    const retryingAt = this.retryingAt();
    const { spec } = this.input;
    const outdated = this.outdated();
    // Services with a spec also report when it changes and when its last outdated instance goes.
    const key = `${state}|${ready >= this.input.service.min}|${desired}|${state === 'FAILED' ? message : ''}${this.honestFailure ? `|${retryingAt ?? ''}` : ''}${spec !== undefined ? `|${spec}|${outdated > 0}` : ''}`;
    if (key === this.s.lastReport) return;
    this.s.lastReport = key;
    if (state !== this.s.reportedState) {
      this.emit(state === 'FAILED' ? 'failure' : 'state', `${this.name}: ${this.s.reportedState} → ${state}${state === 'FAILED' && message ? ` (${message})` : ''}`);
      this.s.reportedState = state;
      upsertSearchAttributes([{ key: SA_STATE, value: state }]);
    }
    const retrying = retryingAt ? `, next attempt at ${retryingAt}` : '';
    setCurrentDetails(
      `**${this.name}**: ${state}${retrying}, ${ready}/${desired} ready, ${replacements} replaced${this.placementDetails()}${message ? `\n\nlast problem: ${message}` : ''}`,
    );
    const summary: Omit<ServiceSummary, 'workflowId'> = {
      name: this.name,
      state,
      desired,
      ready,
      replacements,
      message,
      ...(retryingAt && { retryingAt }),
      ...(spec !== undefined && { spec, outdated }),
    };
    // The service's own view first: the cluster publishes what it is told, and must not be ahead of it.
    await this.publish(true);
    try {
      await getExternalWorkflowHandle(this.input.parentWorkflowId).signal(serviceReportSignal, summary);
    } catch (err) {
      // Only a closed workflow cannot be signalled: the cluster was terminated (or reset) without
      // a teardown, and nobody would ever remove these instances. Leave nothing behind.
      if (!this.s.tearingDown && patched(ORPHAN_TEARDOWN_PATCH)) {
        this.emit('teardown', `${this.name}: cluster workflow ${this.input.parentWorkflowId} is closed (${failureReason(err)}); tearing down`);
        log.warn('cluster workflow is closed; tearing down', { error: failureReason(err) });
        this.s.tearingDown = true;
        this.s.dirty = true;
      } else {
        log.warn('could not report to the cluster workflow', { error: failureReason(err) });
      }
    }
  }

  /** Notes what happened, for the read model's event list (nothing in runs without it). */
  private emit(kind: ClusterEventKind, message: string, instance?: string): void {
    if (!this.readModel) return;
    this.s.events.push({ at: new Date().toISOString(), kind, service: this.name, ...(instance && { instance }), message });
  }

  private publishedSummary(): PublishedService {
    const { desired, replacements, message } = this.s;
    const retryingAt = this.retryingAt();
    const { spec } = this.input;
    return {
      name: this.name,
      state: this.state(),
      desired,
      ready: this.readyCount(),
      replacements,
      ...(message && { message }),
      ...(retryingAt && { retryingAt }),
      ...(spec !== undefined && { spec, outdated: this.outdated() }),
    };
  }

  /** When instance-only changes wait to be published (0: nothing waits). */
  private publishDueAt(): number {
    const { s } = this;
    if (!this.readModel) return 0;
    for (const i of this.instances.values()) if (!publishedAsIs(s.published.get(i.id), i)) return s.lastPublishAt + PUBLISH_INTERVAL_MS;
    for (const id of s.published.keys()) if (!this.instances.has(id)) return s.lastPublishAt + PUBLISH_INTERVAL_MS;
    return 0;
  }

  /**
   * One write to the read model. A write that fails (after the local activity's retries) is
   * kept and sent again, unchanged and with the same sequence number, before anything newer:
   * if it had landed after all, the store refuses the copy, so no event is written twice.
   */
  private async send(input: PublishServiceInput, done: () => void): Promise<boolean> {
    // A workflow task that runs local activities completes (and sends its commands) only when
    // they are done: 190 creates of a 9,500-instance wave waited 1.7 s behind the ten writes of
    // its 9,500 new instances. A timer due at once ends the task; the writes follow in the next.
    const { at, count } = this.unsent;
    if (count >= SCHEDULED_FIRST_MIN && at === workflowInfo().historyLength && patched(SCHEDULED_FIRST_PATCH)) {
      this.unsent = { at, count: 0 };
      await sleep(1, { summary: `let the ${count} activities just scheduled start before the read-model write` });
    }
    try {
      await publishService.executeWithOptions(
        { summary: `publish ${this.name}: ${input.summary.state}, ${input.summary.ready}/${input.summary.desired} ready, ${input.upserts.length} instance changes` },
        [input],
      );
    } catch (err) {
      log.warn('could not publish to the read model; will try again', { error: failureReason(err) });
      this.pendingPublish = { input, done };
      return false;
    }
    done();
    return true;
  }

  /**
   * Sends what changed to the read model: the summary and events at once when they changed,
   * instance changes at most every {@link PUBLISH_INTERVAL_MS} (or all of them when `flush`),
   * in runs of {@link MAX_PUBLISHED_INSTANCES}, each instance recorded as it was when
   * it was sent (a change during the write is sent next time).
   */
  private async publish(flush = false): Promise<void> {
    const { s, input } = this;
    if (!this.readModel) return;
    if (this.pendingPublish) {
      const { input: again, done } = this.pendingPublish;
      this.pendingPublish = undefined;
      if (!(await this.send(again, done))) return;
    }
    const summary = this.publishedSummary();
    const summaryKey = JSON.stringify(summary);
    const now = Date.now();
    const urgent = flush || summaryKey !== s.publishedSummary || s.events.length > 0;
    if (!urgent && (now < s.lastPublishAt + PUBLISH_INTERVAL_MS || this.publishDueAt() === 0)) return;
    const changed: { i: InstanceRecord; fields: PublishedFields }[] = [];
    for (const i of this.instances.values()) if (!publishedAsIs(s.published.get(i.id), i)) changed.push({ i, fields: publishedFields(i) });
    const removed: string[] = [];
    for (const id of s.published.keys()) if (!this.instances.has(id)) removed.push(id);
    const events = s.events.splice(0);
    const runs = Math.max(1, Math.ceil(changed.length / MAX_PUBLISHED_INSTANCES), Math.ceil(removed.length / MAX_PUBLISHED_INSTANCES));
    for (let n = 0; n < runs; n++) {
      const up = changed.slice(n * MAX_PUBLISHED_INSTANCES, (n + 1) * MAX_PUBLISHED_INSTANCES);
      const gone = removed.slice(n * MAX_PUBLISHED_INSTANCES, (n + 1) * MAX_PUBLISHED_INSTANCES);
      const upserts: PublishedInstance[] = up.map(({ i }) => ({ ...this.instanceStatus(i), service: this.name, ordinal: i.ordinal }));
      const write: PublishServiceInput = {
        clusterId: input.clusterId,
        service: this.name,
        seq: ++s.pubSeq,
        observedAt: new Date(now).toISOString(),
        // Per-cloud counts go with every write; their changes alone do not make a write urgent.
        summary: { ...summary, clouds: this.cloudCounts() },
        upserts,
        removed: gone,
        events: n === 0 ? events : [],
      };
      const done = () => {
        for (const { i, fields } of up) s.published.set(i.id, fields);
        for (const id of gone) s.published.delete(id);
      };
      if (!(await this.send(write, done))) return;
    }
    s.publishedSummary = summaryKey;
    s.lastPublishAt = now;
  }

  /** A retry asked for by a user: the next round of attempts, and another look at full clouds, now. */
  private retryNow(): void {
    const now = Date.now();
    const waited = this.s.failedUntil > now ? ` instead of at ${new Date(this.s.failedUntil).toISOString()}` : '';
    this.emit('retry', `${this.name}: retry requested: attempts start now${waited}`);
    if (this.s.failedUntil > now) this.s.failedUntil = now;
    for (const b of this.s.blocked.values()) if (b.until > now) b.until = now;
    this.s.dirty = true;
  }

  /** Under `keep`, a FAILED service starts a new round of attempts after a growing pause. */
  private keepPolicy(): void {
    const budgetUsed = this.s.consecutiveFailures >= MAX_CONSECUTIVE_FAILURES;
    if (this.honestFailure && budgetUsed && !this.s.tearingDown) this.s.failing = true;
    if (this.s.tearingDown || this.input.failurePolicy !== 'keep') return;
    if (this.honestFailure ? !budgetUsed : this.state() !== 'FAILED') return;
    if (this.s.failedUntil === 0) this.s.failedUntil = Date.now() + keepRetryBackoffMs(this.s.failedRounds++, this.input.tuning?.keepRetryBackoffMs);
    else if (Date.now() >= this.s.failedUntil) {
      this.emit('retry', `${this.name}: a new round of attempts (round ${this.s.failedRounds + 1})`);
      this.s.failedUntil = 0;
      this.s.consecutiveFailures = 0;
    }
  }

  private shouldContinueAsNew(): boolean {
    return workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > this.historyLimit;
  }

  private carried(): ServiceCarried {
    const { nextOrdinal, replacements, consecutiveFailures, everReady, degraded, failedRounds, message, tearingDown, failing, pubSeq, paused } = this.s;
    // With the read model, instances travel compact (what decisions need); before it, whole.
    const instances = [...this.instances.values()].map((i) => (this.readModel ? compactInstance(i, this.clouds) : i));
    const blocked = [...this.s.blocked.values()];
    return {
      instances,
      nextOrdinal,
      replacements,
      consecutiveFailures,
      everReady,
      degraded,
      failedRounds,
      message,
      tearingDown,
      failing,
      pubSeq,
      ...(blocked.length > 0 && { blocked }),
      ...(paused && { paused }),
    };
  }

  async run(): Promise<ServiceStatus> {
    const { s } = this;
    try {
      for (;;) {
        s.dirty = false;
        this.keepPolicy();
        if (!this.shouldContinueAsNew() || s.tearingDown || this.outdated() > 0) this.reconcile();
        if (this.readyCount() >= s.desired) {
          s.everReady = true;
          s.degraded = false;
          // Mid-change the old instances are ready while new ones may be failing: that is not the end of a failure.
          if (this.honestFailure && s.failing && this.outdated() === 0) {
            // Scaled down to what is ready: nothing is failing any more.
            s.failing = false;
            s.consecutiveFailures = 0;
            s.failedUntil = 0;
          }
        }
        await this.report();
        const leaving = s.tearingDown && this.instances.size === 0 && s.inFlight === 0;
        await this.publish(leaving);
        if (leaving) break;
        // Mid-change, the carried instances could not say which spec each runs: a run hands over once all run the same.
        if (this.shouldContinueAsNew() && s.inFlight === 0 && !s.tearingDown && this.outdated() === 0) {
          await condition(allHandlersFinished);
          // Everything goes to the read model first: the next run counts its carried instances as published.
          await this.publish(true);
          // A signal handled during that publish: loop once more (reconcile, publish), then hand over.
          const quiet = !s.dirty && s.events.length === 0 && allHandlersFinished();
          // A write that failed is tried again first (the wake-up below comes within PUBLISH_RETRY_MS).
          const published = this.pendingPublish === undefined || !patched(PUBLISHED_HANDOVER_PATCH);
          if (published && (quiet || !patched(QUIET_HANDOVER_PATCH))) await continueAsNew<typeof ServiceWorkflow>({ ...this.input, desired: s.desired, carried: this.carried() });
        }
        if (!s.dirty) {
          const now = Date.now();
          const publishAt = this.pendingPublish && patched(PUBLISHED_HANDOVER_PATCH) ? now + PUBLISH_RETRY_MS : this.publishDueAt();
          const roomAt = this.roomAt();
          const wake = nextWakeMs(now, s.nextHealthCheck, this.instances.values(), s.failedUntil, publishAt, roomAt);
          await condition(() => s.dirty, wake, { summary: wakeReason(now, s.nextHealthCheck, this.instances.values(), s.failedUntil, publishAt, roomAt) });
        }
      }
    } catch (err) {
      if (!isCancellation(err)) throw err;
      // Cancelled (the cluster workflow closed, or an operator cancelled): leave nothing behind.
      s.tearingDown = true;
      await CancellationScope.nonCancellable(async () => {
        while (this.instances.size > 0 || s.inFlight > 0) {
          s.dirty = false;
          this.reconcile();
          await condition(() => s.dirty);
        }
        await this.publish(true);
      });
    }
    return this.view();
  }
}

export async function ServiceWorkflow(input: ServiceInput): Promise<ServiceStatus> {
  return new ServiceRun(input).run();
}

function isPermanent(err: unknown): boolean {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure && (cause.nonRetryable || PERMANENT.includes(cause.type ?? ''));
}
