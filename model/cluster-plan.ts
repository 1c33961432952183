/**
 * The decisions of a cluster workflow as pure functions: which services may start, what
 * state the cluster is in given its services' states and its failure policy, and which
 * CVMFS repositories to check before deploying. The workflow (workflows/cluster.ts) holds
 * the state and runs the children and activities; these decide.
 */
import type { PinnedContext } from './context.js';
import type { FailurePolicy, ServiceDefinition } from './definition.js';
import type { ClusterState, ServiceBrief, ServiceState } from './status.js';

/** The services a definition lists whose dependencies have all had their minimum ready (and that have not started). */
export function startableServices(services: readonly ServiceDefinition[], stateOf: (name: string) => ServiceState, minReached: ReadonlySet<string>): ServiceDefinition[] {
  return services.filter((s) => stateOf(s.name) === 'WAITING' && s.dependsOn.every((d) => minReached.has(d)));
}

/** The cluster's verdict on its services. */
export type ClusterVerdict =
  /** Tear everything down: a service failed under `rollback`. */
  | { rollback: true; reason: string }
  | { rollback: false; state: ClusterState; message?: string };

/**
 * The state of a running cluster: READY when every service is; with a FAILED service,
 * rollback under `rollback`, else DEGRADED if anything is or was up (FAILED if not);
 * DEGRADED while a service replaces lost instances; DEPLOYING otherwise (including scale-ups),
 * with a message while a service waits for room on its clouds (DEGRADED if the cluster was READY).
 * `message` is set only where the state needs one (a failure), undefined clears it.
 */
export function clusterVerdict(services: readonly Pick<ServiceBrief, 'name' | 'state' | 'message'>[], policy: FailurePolicy, everReady: boolean): ClusterVerdict {
  const failed = services.find((s) => s.state === 'FAILED');
  if (failed && policy === 'rollback') return { rollback: true, reason: `rolled back: service ${failed.name} failed: ${failed.message ?? 'unknown reason'}` };
  if (services.every((s) => s.state === 'READY')) return { rollback: false, state: 'READY' };
  if (failed) {
    return {
      rollback: false,
      state: everReady || services.some((s) => s.state === 'READY') ? 'DEGRADED' : 'FAILED',
      message: `service ${failed.name} failed (retrying, policy keep): ${failed.message ?? ''}`,
    };
  }
  const waiting = services.find((s) => s.state === 'WAITING_CAPACITY');
  // A cluster that was READY and now lacks instances no cloud has room for is DEGRADED, as one that lost them.
  const state = services.some((s) => s.state === 'DEGRADED') || (waiting && everReady) ? 'DEGRADED' : 'DEPLOYING';
  return waiting ? { rollback: false, state, message: `service ${waiting.name} ${waiting.message ?? 'is waiting for room on its clouds'}` } : { rollback: false, state };
}

/** One stratum-1 check: a repository, the servers to ask, the lowest revision accepted. */
export interface CvmfsCheck {
  repo: string;
  /** Stratum-1 URLs (`@fqrn@`); unset: the gateway's configured list. */
  servers?: string[];
  minRevision?: number;
}

/** One check per distinct repository, server list and pin among the pinned contexts. */
export function cvmfsChecks(contexts: Readonly<Record<string, PinnedContext>> | undefined): CvmfsCheck[] {
  const checks = new Map<string, CvmfsCheck>();
  for (const ctx of Object.values(contexts ?? {})) {
    for (const repo of ctx.repositories) {
      const check: CvmfsCheck = { repo, ...(ctx.servers && { servers: ctx.servers }), ...(ctx.minRevision?.[repo] !== undefined && { minRevision: ctx.minRevision[repo] }) };
      checks.set(JSON.stringify(check), check);
    }
  }
  return [...checks.values()];
}
