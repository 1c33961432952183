/**
 * Changing a running cluster (issue 13): which services a new definition (or new context
 * versions) changes, what each instance runs, and — per service — which old instances to
 * replace now. Pure functions; the cluster workflow (workflows/cluster.ts) drives the change
 * service by service in dependency order, each service workflow (workflows/service.ts)
 * replaces its instances with {@link rollingPlan}.
 */
import type { PinnedContext } from './context.js';
import type { ClusterDefinition, ServiceDefinition } from './definition.js';
import type { InstanceRecord } from './service-plan.js';

/** A cluster's definition and the context versions pinned for it: what `PUT /v1/clusters/:id` replaces. */
export interface ClusterSpec {
  definitionId: string;
  definition: ClusterDefinition;
  contexts?: Record<string, PinnedContext>;
}

/**
 * The spec an instance runs, as its status shows it: the definition its service's
 * instance-shaping fields came from, and its context version (`def-1a2b` or
 * `def-1a2b ctx-9f8e v3`). Services a change leaves alone keep theirs.
 */
export const specLabel = (definitionId: string, context?: Pick<PinnedContext, 'id' | 'version'>): string =>
  context ? `${definitionId} ${context.id} v${context.version}` : definitionId;

/** What makes an instance what it is: a change to any of these replaces every instance of the service. */
const shapeOf = (s: ServiceDefinition, ctx: PinnedContext | undefined): string =>
  JSON.stringify([s.image, s.offering, s.placement ?? null, ctx ? [ctx.id, ctx.version] : null]);

/** How a change touches each service. */
export interface SpecDiff {
  /** Services whose instances are replaced (image, offering, placement or context version changed). */
  replace: string[];
  /** Services only the new definition has: they start. */
  add: string[];
  /** Services only the old definition has: torn down once the change succeeded. */
  remove: string[];
  /** Services whose instances stay (bounds, dependencies, autoscale or timeouts may still change). */
  keep: string[];
}

export function diffSpecs(from: ClusterSpec, to: ClusterSpec): SpecDiff {
  const old = new Map(from.definition.services.map((s) => [s.name, s]));
  const diff: SpecDiff = { replace: [], add: [], remove: [], keep: [] };
  for (const s of to.definition.services) {
    const before = old.get(s.name);
    if (!before) diff.add.push(s.name);
    else if (shapeOf(before, from.contexts?.[s.name]) !== shapeOf(s, to.contexts?.[s.name])) diff.replace.push(s.name);
    else diff.keep.push(s.name);
  }
  const names = new Set(to.definition.services.map((s) => s.name));
  diff.remove = from.definition.services.filter((s) => !names.has(s.name)).map((s) => s.name);
  return diff;
}

/** The same spec: nothing to change at all (same definition content and context pins). */
export const sameSpec = (a: ClusterSpec, b: ClusterSpec): boolean =>
  JSON.stringify([a.definition, a.contexts ?? {}]) === JSON.stringify([b.definition, b.contexts ?? {}]);

/** A change in progress, as the cluster's status shows it. */
export interface ChangeView {
  /** The definition ids it goes from and to. */
  from: string;
  to: string;
  /** Replacing (and starting added services), rolling back after a failure, or tearing down removed services. */
  phase: 'rolling' | 'rolling back' | 'removing';
  maxUnavailable: number;
  startedAt: string;
  services: SpecDiff;
  /** Why it is rolling back. */
  reason?: string;
}

/** One step of replacing a service's instances. */
export interface RollingStep {
  /** Old instances to terminate now (each gets a replacement on the new spec). */
  terminate: InstanceRecord[];
  /** How many live instances the service should hold now (more than desired while it surges). */
  target: number;
  /** Live instances still on another spec (after this step's terminations). */
  outdated: number;
}

/**
 * Replaces the instances of a service that are not on `spec`, keeping at least
 * `max(min, desired − maxUnavailable)` ready at all times:
 * - old instances that are not ready count for nothing: replaced at once;
 * - old ready ones are terminated as far as that floor allows (oldest first), each replaced
 *   by the scale plan with a new one on `spec`;
 * - when the floor allows none (a service at its `min`, or `maxUnavailable` used up by
 *   replacements still booting is not this case) and no replacement is on its way, up to
 *   `maxUnavailable` new instances are made first (a surge) and an old one goes once they are ready.
 * Instances being created are never terminated (their create may still land).
 */
export function rollingPlan(live: readonly InstanceRecord[], spec: string | undefined, desired: number, min: number, maxUnavailable: number): RollingStep {
  const old = live.filter((i) => i.spec !== spec);
  if (old.length === 0) return { terminate: [], target: desired, outdated: 0 };
  const ready = live.filter((i) => i.state === 'READY').length;
  const oldNotReady = old.filter((i) => i.state !== 'READY' && i.state !== 'CREATING');
  const oldReady = old.filter((i) => i.state === 'READY').sort((a, b) => a.ordinal - b.ordinal);
  const floor = Math.max(min, desired - maxUnavailable);
  const drop = Math.max(0, Math.min(oldReady.length, ready - floor));
  const terminate = [...oldNotReady, ...oldReady.slice(0, drop)];
  const left = live.length - terminate.length;
  const outdated = old.length - terminate.length;
  const pending = live.some((i) => i.spec === spec && i.state !== 'READY');
  const surge = outdated > 0 && drop === 0 && !pending ? Math.min(maxUnavailable, outdated) : 0;
  // A replacement still booting is never taken back to reach a lower count.
  return { terminate, target: Math.max(desired + surge, pending ? left : 0), outdated };
}
