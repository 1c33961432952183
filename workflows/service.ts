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
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
  allHandlersFinished,
} from '@temporalio/workflow';
import { judgeReadiness } from '../model/readiness.js';
import type { InstanceState, InstanceStatus, ReadinessReport, ServiceState, ServiceStatus } from '../model/status.js';
import type { CloudgateActivities, CreatedInstance, DescribedInstance, InstanceRef } from './activity-types.js';
import { failureReason } from './failures.js';
import {
  readinessSignal,
  serviceReportSignal,
  serviceStatusQuery,
  serviceTeardownSignal,
  setDesiredSignal,
  SA_STATE,
  type ServiceInput,
  type ServiceSummary,
} from './messages.js';

/** Instances per create activity: big enough to keep activity count low, small enough to start booting early. */
export const CREATE_BATCH = 50;
/** Instances per terminate / describe activity. */
const CLOUD_BATCH = 200;
/** Failures in a row (no instance becoming ready in between) before the service is FAILED. */
export const MAX_CONSECUTIVE_FAILURES = 5;
/** How often (at most) the cloud is asked whether instances still exist (vanished guests). */
const HEALTH_CHECK_MAX_MS = 30_000;
/** Continue-as-new well before Temporal's 51,200-event limit and our own 10,240 target. */
const CONTINUE_AS_NEW_EVENTS = 4_000;
/** Backoff after a service failed under the `keep` policy before it tries again. */
const KEEP_RETRY_BACKOFF_MS = [30_000, 60_000, 120_000, 300_000, 600_000];

/** Cloud error kinds (clouds/contract.ts) and activity failures no retry will mend. */
const PERMANENT = ['InvalidCredentials', 'QuotaExceeded', 'InvalidOffering', 'InvalidRequest', 'UnreadableAnswer', 'ContextUnavailable'];

const { createInstances } = proxyActivities<CloudgateActivities>({
  startToCloseTimeout: '5 minutes',
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 8, nonRetryableErrorTypes: PERMANENT },
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

interface Instance {
  id: string;
  ordinal: number;
  state: InstanceState;
  cloudInstanceId?: string;
  createdAt?: string;
  readyAt?: string;
  /** Workflow-clock ms by which the guest must have phoned home. */
  deadline?: number;
  message?: string;
}

/** State carried across continue-as-new. */
interface Carried {
  instances: Instance[];
  nextOrdinal: number;
  replacements: number;
  consecutiveFailures: number;
  everReady: boolean;
  degraded: boolean;
  failedRounds: number;
  message?: string;
  tearingDown: boolean;
}

export async function ServiceWorkflow(input: ServiceInput): Promise<ServiceStatus> {
  const { clusterId, cloud, service } = input;
  /** What every guest must report OK before it counts as ready. */
  const repositories = input.context?.repositories ?? [];
  const carried = input.carried as Carried | undefined;
  let desired = input.desired;
  const instances = new Map<string, Instance>((carried?.instances ?? []).map((i) => [i.id, i]));
  let nextOrdinal = carried?.nextOrdinal ?? 0;
  let replacements = carried?.replacements ?? 0;
  let consecutiveFailures = carried?.consecutiveFailures ?? 0;
  let everReady = carried?.everReady ?? false;
  /** Lost ready instances since it was last fully ready (as opposed to merely scaling up). */
  let degraded = carried?.degraded ?? false;
  let failedRounds = carried?.failedRounds ?? 0;
  let message = carried?.message;
  let tearingDown = carried?.tearingDown ?? false;
  let inFlight = 0;
  let dirty = true;
  let failedUntil = 0;
  // Often enough that a vanished guest is noticed before its readiness timeout would.
  const healthCheckMs = Math.min(HEALTH_CHECK_MAX_MS, (service.readinessTimeoutSeconds * 1000) / 2);
  let nextHealthCheck = Date.now() + healthCheckMs;
  let lastReport = '';
  let serviceState: ServiceState = 'DEPLOYING';

  const count = (...states: InstanceState[]) => [...instances.values()].filter((i) => states.includes(i.state)).length;
  const readyCount = () => count('READY');
  const live = () => [...instances.values()].filter((i) => i.state !== 'FAILED' && i.state !== 'TERMINATING');

  const computeState = (): ServiceState => {
    if (tearingDown) return instances.size === 0 && inFlight === 0 ? 'TERMINATED' : 'TERMINATING';
    if (consecutiveFailures >= MAX_CONSECUTIVE_FAILURES) return 'FAILED';
    const ready = readyCount();
    if (ready >= desired) return 'READY';
    return degraded ? 'DEGRADED' : 'DEPLOYING';
  };

  const view = (): ServiceStatus => ({
    name: service.name,
    state: computeState(),
    desired,
    ready: readyCount(),
    replacements,
    message,
    instances: [...instances.values()]
      .sort((a, b) => a.ordinal - b.ordinal)
      .map(
        (i): InstanceStatus => ({
          id: i.id,
          name: i.id,
          state: i.state,
          cloud,
          cloudInstanceId: i.cloudInstanceId,
          createdAt: i.createdAt,
          readyAt: i.readyAt,
          message: i.message,
        }),
      ),
  });

  /** Marks an instance failed; the reconcile step terminates it and creates a replacement. */
  const fail = (inst: Instance, reason: string) => {
    if (inst.state === 'FAILED' || inst.state === 'TERMINATING') return;
    inst.state = 'FAILED';
    inst.message = reason;
    message = `${inst.id}: ${reason}`;
    consecutiveFailures++;
    replacements++;
    if (everReady) degraded = true;
    log.warn('instance failed; replacing it', { instance: inst.id, reason });
    dirty = true;
  };

  setHandler(serviceStatusQuery, view);
  setHandler(setDesiredSignal, (n) => {
    desired = n;
    dirty = true;
  });
  setHandler(serviceTeardownSignal, () => {
    tearingDown = true;
    dirty = true;
  });
  setHandler(readinessSignal, (reports: ReadinessReport[]) => {
    for (const r of reports) {
      const inst = instances.get(r.instanceId);
      // Reports from instances already replaced or being removed change nothing.
      if (!inst || inst.state === 'FAILED' || inst.state === 'TERMINATING' || inst.state === 'READY') continue;
      const verdict = judgeReadiness(r, repositories);
      if (verdict.ready) {
        inst.state = 'READY';
        inst.readyAt = r.receivedAt;
        inst.deadline = undefined;
        inst.message = undefined;
        consecutiveFailures = 0;
        failedRounds = 0;
      } else {
        fail(inst, verdict.reason);
      }
    }
    dirty = true;
  });

  /** Runs one cloud activity without blocking the loop; its outcome is folded into state. */
  const launch = (work: () => Promise<void>) => {
    inFlight++;
    void work().finally(() => {
      inFlight--;
      dirty = true;
    });
  };

  const createBatch = (batch: Instance[]) =>
    launch(async () => {
      try {
        const created = await createInstances.executeWithOptions(
          { summary: `create ${batch.length} × ${service.name} (${batch[0].id} … ${batch[batch.length - 1].id})` },
          [
            {
              cloud,
              clusterId,
              service: service.name,
              image: service.image,
              offering: service.offering,
              ...(input.context && { context: { id: input.context.id, version: input.context.version } }),
              ids: batch.map((i) => i.id),
            },
          ],
        );
        onCreated(created);
      } catch (err) {
        const reason = failureReason(err);
        for (const inst of batch) if (inst.state === 'CREATING') fail(inst, `create failed: ${reason}`);
        if (isPermanent(err)) consecutiveFailures = Math.max(consecutiveFailures, MAX_CONSECUTIVE_FAILURES);
      }
    });

  const onCreated = (created: CreatedInstance[]) => {
    const now = Date.now();
    for (const c of created) {
      const inst = instances.get(c.id);
      if (!inst) continue;
      inst.cloudInstanceId = c.cloudInstanceId;
      inst.createdAt = c.createdAt;
      if (inst.state === 'CREATING') {
        inst.state = c.cloudState === 'RUNNING' ? 'RUNNING' : 'BOOTING';
        inst.deadline = now + service.readinessTimeoutSeconds * 1000;
      }
    }
  };

  const terminate = (batch: Instance[], why: string) =>
    launch(async () => {
      const what = batch.length === 1 ? batch[0].id : `${batch.length} × ${service.name}`;
      const refs: InstanceRef[] = batch.map((i) => ({ id: i.id, cloudInstanceId: i.cloudInstanceId }));
      try {
        await terminateInstances.executeWithOptions({ summary: `terminate ${what}: ${why}` }, [
          { cloud, instances: refs },
        ]);
        for (const i of batch) instances.delete(i.id);
      } catch (err) {
        // Only cancellation ends an unlimited retry; hand the instances back so teardown tries again.
        log.warn('terminate did not finish; will try again', { error: failureReason(err) });
        for (const i of batch) if (instances.get(i.id)?.state === 'TERMINATING') instances.get(i.id)!.state = 'FAILED';
      }
    });

  const healthCheck = (batch: Instance[]) =>
    launch(async () => {
      let described: DescribedInstance[];
      try {
        described = await describeInstances.executeWithOptions({ summary: `check ${batch.length} × ${service.name} still exist` }, [
          { cloud, instances: batch.map((i) => ({ id: i.id, cloudInstanceId: i.cloudInstanceId! })) },
        ]);
      } catch (err) {
        log.warn('health check failed; will try again', { error: failureReason(err) });
        return;
      }
      for (const d of described) {
        const inst = instances.get(d.id);
        if (!inst || !['BOOTING', 'RUNNING', 'READY'].includes(inst.state)) continue;
        if (d.cloudState === 'GONE' || d.cloudState === 'TERMINATED' || d.cloudState === 'ERROR' || d.cloudState === 'STOPPED') {
          fail(inst, d.cloudState === 'GONE' ? 'vanished from the cloud' : `cloud reports it ${d.cloudState}`);
        } else if (d.cloudState === 'RUNNING' && inst.state === 'BOOTING') {
          inst.state = 'RUNNING';
        }
      }
    });

  /** One pass of "make the world match the wish". Starts activities; never waits for them. */
  const reconcile = () => {
    const now = Date.now();
    if (tearingDown) {
      // CREATING instances are picked up once their create returns (or fails, then by key).
      const rest = [...instances.values()].filter((i) => i.state !== 'TERMINATING' && i.state !== 'CREATING');
      for (const inst of rest) inst.state = 'TERMINATING';
      for (const batch of chunks(rest, CLOUD_BATCH)) terminate(batch, 'teardown');
      return;
    }
    // Guests that did not phone home in time.
    for (const inst of instances.values()) {
      if ((inst.state === 'BOOTING' || inst.state === 'RUNNING') && inst.deadline !== undefined && inst.deadline <= now) {
        fail(inst, `no readiness report within ${service.readinessTimeoutSeconds} s`);
      }
    }
    // Failed instances go away (a replacement is created below).
    const failed = [...instances.values()].filter((i) => i.state === 'FAILED');
    for (const inst of failed) inst.state = 'TERMINATING';
    for (const batch of chunks(failed, CLOUD_BATCH)) terminate(batch, batch.length === 1 ? `replace it (${batch[0].message})` : 'replace failed instances');

    const current = live();
    if (current.length > desired) {
      // Scale down: drop instances that are not ready first, then the newest.
      const victims = [...current]
        .filter((i) => i.state !== 'CREATING')
        .sort((a, b) => Number(a.state === 'READY') - Number(b.state === 'READY') || b.ordinal - a.ordinal)
        .slice(0, current.length - desired);
      for (const inst of victims) inst.state = 'TERMINATING';
      for (const batch of chunks(victims, CLOUD_BATCH)) terminate(batch, `scale down to ${desired}`);
    } else if (current.length < desired && computeState() !== 'FAILED') {
      const fresh: Instance[] = [];
      for (let n = current.length; n < desired; n++) {
        const ordinal = nextOrdinal++;
        const inst: Instance = { id: `${clusterId}-${service.name}-${ordinal}`, ordinal, state: 'CREATING' };
        instances.set(inst.id, inst);
        fresh.push(inst);
      }
      for (const batch of chunks(fresh, CREATE_BATCH)) createBatch(batch);
    }

    if (now >= nextHealthCheck) {
      nextHealthCheck = now + healthCheckMs;
      const known = [...instances.values()].filter((i) => i.cloudInstanceId && ['BOOTING', 'RUNNING', 'READY'].includes(i.state));
      for (const batch of chunks(known, CLOUD_BATCH)) healthCheck(batch);
    }
  };

  /** Tells the cluster workflow about state changes (not every count change: its history stays small). */
  const report = async () => {
    const state = computeState();
    const minReached = readyCount() >= service.min;
    const key = `${state}|${minReached}|${desired}|${state === 'FAILED' ? message : ''}`;
    if (key === lastReport) return;
    lastReport = key;
    if (state !== serviceState) {
      serviceState = state;
      upsertSearchAttributes([{ key: SA_STATE, value: state }]);
    }
    setCurrentDetails(`**${service.name}**: ${state}, ${readyCount()}/${desired} ready, ${replacements} replaced${message ? `\n\nlast problem: ${message}` : ''}`);
    const summary: Omit<ServiceSummary, 'workflowId'> = { name: service.name, state, desired, ready: readyCount(), replacements, message };
    try {
      await getExternalWorkflowHandle(input.parentWorkflowId).signal(serviceReportSignal, summary);
    } catch (err) {
      log.warn('could not report to the cluster workflow', { error: failureReason(err) });
    }
  };

  const nextWake = (): number => {
    let wake = nextHealthCheck;
    for (const i of instances.values()) if (i.deadline !== undefined && i.deadline < wake) wake = i.deadline;
    if (failedUntil > Date.now() && failedUntil < wake) wake = failedUntil;
    return Math.max(1000, wake - Date.now() + 1);
  };

  const historyLimit = input.tuning?.serviceHistoryLimit ?? CONTINUE_AS_NEW_EVENTS;
  const shouldContinueAsNew = () => workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > historyLimit;

  try {
    for (;;) {
      dirty = false;
      if (!tearingDown && computeState() === 'FAILED' && input.failurePolicy === 'keep') {
        // Keep what succeeded and start a new round of attempts after a growing pause.
        if (failedUntil === 0) failedUntil = Date.now() + KEEP_RETRY_BACKOFF_MS[Math.min(failedRounds++, KEEP_RETRY_BACKOFF_MS.length - 1)];
        else if (Date.now() >= failedUntil) {
          failedUntil = 0;
          consecutiveFailures = 0;
        }
      }
      if (!shouldContinueAsNew() || tearingDown) reconcile();
      if (readyCount() >= desired) {
        everReady = true;
        degraded = false;
      }
      await report();
      if (tearingDown && instances.size === 0 && inFlight === 0) break;
      if (shouldContinueAsNew() && inFlight === 0 && !tearingDown) {
        await condition(allHandlersFinished);
        const next: Carried = {
          instances: [...instances.values()],
          nextOrdinal,
          replacements,
          consecutiveFailures,
          everReady,
          degraded,
          failedRounds,
          message,
          tearingDown,
        };
        await continueAsNew<typeof ServiceWorkflow>({ ...input, desired, carried: next });
      }
      if (!dirty) await condition(() => dirty, nextWake());
    }
  } catch (err) {
    if (!isCancellation(err)) throw err;
    // Cancelled (the cluster workflow closed, or an operator cancelled): leave nothing behind.
    tearingDown = true;
    await CancellationScope.nonCancellable(async () => {
      while (instances.size > 0 || inFlight > 0) {
        dirty = false;
        reconcile();
        await condition(() => dirty);
      }
    });
  }
  return view();
}

function chunks<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

function isPermanent(err: unknown): boolean {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure && (cause.nonRetryable || PERMANENT.includes(cause.type ?? ''));
}
