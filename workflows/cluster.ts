/**
 * `ClusterWorkflow` (id `cluster/<clusterId>`) deploys one cluster from a frozen definition:
 * it starts one child `ServiceWorkflow` per service once every service it depends on has
 * its minimum instances ready, takes scale requests as validated Updates, applies the
 * cluster's failure policy, and on teardown (or rollback) removes every instance and then
 * verifies, by the cluster's tag in the cloud, that nothing is left.
 */
import {
  ApplicationFailure,
  CancellationScope,
  ParentClosePolicy,
  condition,
  isCancellation,
  log,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  startChild,
  upsertSearchAttributes,
  allHandlersFinished,
  type ChildWorkflowHandle,
} from '@temporalio/workflow';
import type { ClusterState } from '../model/status.js';
import type { CloudgateActivities, CvmfsCheckInput } from './activity-types.js';
import { failureReason } from './failures.js';
import {
  CLUSTER_NOT_ACTIVE,
  SA_CLUSTER_ID,
  SA_SERVICE,
  SA_STATE,
  SCALE_OUT_OF_BOUNDS,
  UNKNOWN_SERVICE,
  clusterStatusQuery,
  clusterWorkflowId,
  scaleUpdate,
  serviceReportSignal,
  serviceTeardownSignal,
  serviceWorkflowId,
  setDesiredSignal,
  teardownSignal,
  type ClusterInput,
  type ClusterView,
  type ScaleRequest,
  type ServiceSummary,
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

/** One check per distinct repository (and the servers and pin it is checked with). */
function cvmfsChecks(input: ClusterInput): CvmfsCheckInput[] {
  const checks = new Map<string, CvmfsCheckInput>();
  for (const ctx of Object.values(input.contexts ?? {})) {
    for (const repo of ctx.repositories) {
      const check: CvmfsCheckInput = { repo, ...(ctx.servers && { servers: ctx.servers }), ...(ctx.minRevision?.[repo] !== undefined && { minRevision: ctx.minRevision[repo] }) };
      checks.set(JSON.stringify(check), check);
    }
  }
  return [...checks.values()];
}


export async function ClusterWorkflow(input: ClusterInput): Promise<ClusterView> {
  const { clusterId, definition } = input;
  const specs = new Map(definition.services.map((s) => [s.name, s]));
  const services = new Map<string, ServiceSummary>(
    definition.services.map((s) => [s.name, { name: s.name, state: 'WAITING', desired: s.min, ready: 0, replacements: 0 }]),
  );
  /** Latched: once a service had its minimum ready, its dependents may start (and keep running). */
  const minReached = new Set<string>();
  const children = new Map<string, ChildWorkflowHandle<typeof ServiceWorkflow>>();
  const sentDesired = new Map<string, number>();
  let state: ClusterState = 'PENDING';
  let message: string | undefined;
  let teardown: { reason: string; rollback: boolean } | undefined;
  let everReady = false;
  let dirty = true;

  const view = (): ClusterView => ({
    clusterId,
    name: input.name,
    definitionId: input.definitionId,
    cloud: input.cloud,
    state,
    message,
    services: [...services.values()].map((s) => ({ ...s })),
  });
  const setState = (next: ClusterState, why?: string) => {
    if (why !== undefined) message = why;
    if (next === state) return;
    log.info('cluster state', { from: state, to: next, why });
    state = next;
    upsertSearchAttributes([{ key: SA_STATE, value: next }]);
  };

  setHandler(clusterStatusQuery, view);
  setHandler(teardownSignal, (req) => {
    teardown ??= { reason: req?.reason ?? 'teardown requested', rollback: false };
    dirty = true;
  });
  setHandler(serviceReportSignal, (report) => {
    const s = services.get(report.name);
    if (!s) return;
    Object.assign(s, report);
    const spec = specs.get(report.name)!;
    if (report.ready >= spec.min) minReached.add(report.name);
    dirty = true;
  });
  setHandler(
    scaleUpdate,
    ({ service, instances }: ScaleRequest) => {
      services.get(service)!.desired = instances;
      dirty = true;
      return { service, desired: instances };
    },
    {
      // Rejections here are written nowhere: the update never reaches history.
      validator: ({ service, instances }: ScaleRequest) => {
        const spec = specs.get(service);
        if (!spec) throw ApplicationFailure.nonRetryable(`cluster ${clusterId} has no service "${service}"`, UNKNOWN_SERVICE);
        if (!Number.isInteger(instances) || instances < spec.min || (spec.max !== undefined && instances > spec.max)) {
          throw ApplicationFailure.nonRetryable(
            `instances must be an integer from ${spec.min} (min) to ${spec.max ?? 'unbounded'} (max) for service "${service}"; got ${instances}`,
            SCALE_OUT_OF_BOUNDS,
          );
        }
        if (teardown || state === 'TERMINATING' || state === 'TERMINATED') {
          throw ApplicationFailure.nonRetryable(`cluster ${clusterId} is ${state === 'TERMINATED' ? 'terminated' : 'being torn down'}`, CLUSTER_NOT_ACTIVE);
        }
      },
    },
  );

  const startService = async (name: string) => {
    const spec = specs.get(name)!;
    const summary = services.get(name)!;
    const workflowId = serviceWorkflowId(clusterId, name);
    summary.state = 'DEPLOYING';
    sentDesired.set(name, summary.desired);
    const handle = await startChild(ServiceWorkflow, {
      workflowId,
      args: [
        {
          clusterId,
          cloud: input.cloud,
          failurePolicy: definition.failurePolicy,
          service: spec,
          ...(input.contexts?.[name] && { context: input.contexts[name] }),
          desired: summary.desired,
          parentWorkflowId: clusterWorkflowId(clusterId),
          tuning: input.tuning,
        },
      ],
      parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
      staticSummary:
        `${name} of cluster ${clusterId}: ${summary.desired} × ${spec.image} on ${input.cloud}` +
        (input.contexts?.[name] ? `, context ${input.contexts[name].id} v${input.contexts[name].version} (${input.contexts[name].repositories.join(', ') || 'no repositories'})` : ''),
      typedSearchAttributes: [
        { key: SA_CLUSTER_ID, value: clusterId },
        { key: SA_SERVICE, value: name },
        { key: SA_STATE, value: 'DEPLOYING' },
      ],
    });
    summary.workflowId = workflowId;
    children.set(name, handle);
    // A service workflow only ends on teardown; ending otherwise is a failure the cluster must show.
    void handle.result().then(
      () => undefined,
      (err: unknown) => {
        if (teardown) return;
        summary.state = 'FAILED';
        summary.message = `service workflow ${workflowId} failed: ${err instanceof Error ? (err.cause?.toString() ?? err.message) : String(err)}`;
        dirty = true;
      },
    );
    dirty = true;
  };

  const describe = (): string =>
    [...services.values()].map((s) => `${s.name}: ${s.state} ${s.ready}/${s.desired}`).join(', ');

  /** Fails the cluster before any instance exists when a repository is not fit to deploy with. */
  const checkRepositories = async () => {
    const checks = cvmfsChecks(input);
    if (checks.length === 0) return;
    setCurrentDetails(`**DEPLOYING** — checking ${checks.length} CVMFS ${checks.length === 1 ? 'repository' : 'repositories'} on their stratum-1s`);
    const results = await Promise.allSettled(
      checks.map((c) =>
        checkCvmfsRepository.executeWithOptions({ summary: `CVMFS ${c.repo}: manifest and whitelist on its stratum-1s` }, [c]),
      ),
    );
    const failures = results.flatMap((r) => (r.status === 'rejected' ? [failureReason(r.reason)] : []));
    if (failures.length > 0 && !teardown) {
      teardown = { reason: `CVMFS check failed, nothing was deployed: ${failures.join('; ')}`, rollback: true };
    }
  };

  try {
    setState('DEPLOYING');
    await checkRepositories();
    while (!teardown) {
      dirty = false;
      // Start every service whose dependencies all have their minimum ready.
      const startable = definition.services.filter(
        (s) => services.get(s.name)!.state === 'WAITING' && s.dependsOn.every((d) => minReached.has(d)),
      );
      await Promise.all(startable.map((s) => startService(s.name)));
      // Pass scale requests on to running services.
      for (const [name, handle] of children) {
        const want = services.get(name)!.desired;
        if (sentDesired.get(name) !== want) {
          sentDesired.set(name, want);
          await handle.signal(setDesiredSignal, want);
        }
      }
      const all = [...services.values()];
      const failed = all.find((s) => s.state === 'FAILED');
      if (failed && definition.failurePolicy === 'rollback') {
        teardown = { reason: `rolled back: service ${failed.name} failed: ${failed.message ?? 'unknown reason'}`, rollback: true };
        break;
      }
      if (all.every((s) => s.state === 'READY')) {
        everReady = true;
        setState('READY', undefined);
        message = undefined;
      } else if (failed) {
        setState(everReady || all.some((s) => s.state === 'READY') ? 'DEGRADED' : 'FAILED', `service ${failed.name} failed (retrying, policy keep): ${failed.message ?? ''}`);
      } else {
        // Scaling up is DEPLOYING; losing ready instances is DEGRADED.
        setState(all.some((s) => s.state === 'DEGRADED') ? 'DEGRADED' : 'DEPLOYING');
      }
      setCurrentDetails(`**${state}** — ${describe()}${message ? `\n\n${message}` : ''}`);
      await condition(() => dirty || teardown !== undefined);
    }
  } catch (err) {
    if (!isCancellation(err)) throw err;
    teardown = { reason: 'cluster workflow cancelled', rollback: false };
  }

  // Teardown (requested, rollback or cancel): nothing may be left behind, so no cancellation from here on.
  const { reason, rollback } = teardown!;
  return await CancellationScope.nonCancellable(async () => {
    setState('TERMINATING', reason);
    setCurrentDetails(`**TERMINATING** — ${reason}`);
    for (const s of services.values()) if (s.state === 'WAITING') s.state = 'TERMINATED';
    await Promise.all(
      [...children.entries()].map(async ([name, child]) => {
        // A child that already finished cannot take the signal; its result still tells.
        await child.signal(serviceTeardownSignal).catch(() => undefined);
        const final = await child.result().catch(() => undefined);
        Object.assign(services.get(name)!, { state: 'TERMINATED', ready: 0, ...(final ? { replacements: final.replacements } : {}) });
      }),
    );
    const sweep = await sweepCluster.executeWithOptions({ summary: `verify no instance of ${clusterId} is left on ${input.cloud}` }, [
      { cloud: input.cloud, clusterId },
    ]);
    if (sweep.terminated.length > 0) log.warn('sweep found leftover instances and terminated them', { instances: sweep.terminated });
    for (const s of services.values()) s.state = 'TERMINATED';
    setState(rollback ? 'FAILED' : 'TERMINATED', reason);
    setCurrentDetails(`**${state}** — ${reason}; ${sweep.remaining} instances left in ${input.cloud}`);
    await condition(allHandlersFinished);
    return view();
  });
}
