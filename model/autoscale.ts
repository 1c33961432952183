/**
 * Elastic scaling (issue 13) as a pure function: from a service's load report — jobs queued
 * and running, the instances its head node says are idle — to its desired instance count and
 * the instances to retire. Like elastiq for HTCondor: grow to `ceil((queued + running) /
 * jobsPerInstance)` within `min`/`max`; shrink only by instances reported idle for
 * `scaleDownIdleSeconds` in a row (never a busy one); no change inside the cooldown after the
 * last one. The cluster workflow holds the state and applies the decision.
 */
import { z } from 'zod';
import type { Autoscale } from './definition.js';

/**
 * A load report, as a cluster's head node posts it (`POST …/load`) or a `loadUrl` answers it:
 * jobs queued and running, and the instances (cloudgate names, `<cluster>-<service>-<n>`)
 * with no job now — the only ones a scale-down may terminate.
 */
export const LoadReportSchema = z
  .object({
    queued: z.number().int().min(0).max(100_000_000),
    running: z.number().int().min(0).max(100_000_000),
    idleInstances: z.array(z.string().min(1).max(100)).max(10_000).optional(),
  })
  .strict();
export type LoadReport = z.infer<typeof LoadReportSchema>;

export interface AutoscaleState {
  desired: number;
  /** Workflow-clock ms of the last change it made (0: none yet). */
  lastChangeAt: number;
  /** Since when each instance has been reported idle without a break (ms). */
  idleSince: Record<string, number>;
}

export interface AutoscaleDecision {
  action: 'up' | 'down' | 'hold';
  desired: number;
  /** Instances to terminate (scale down): all reported idle long enough. */
  retire: string[];
  /** The inputs and the outcome in one sentence (events, summaries). */
  reason: string;
  /** The idle bookkeeping after this report. */
  idleSince: Record<string, number>;
}

/** What a service with `autoscale` does with one load report at `now`. */
export function autoscaleDecision(
  policy: Autoscale,
  bounds: { min: number; max: number },
  state: AutoscaleState,
  load: LoadReport,
  now: number,
): AutoscaleDecision {
  const idle = new Set(load.idleInstances ?? []);
  // An instance stays "idle since" only while every report names it; one busy report resets it.
  const idleSince = Object.fromEntries([...idle].map((id) => [id, state.idleSince[id] ?? now]));
  const jobs = load.queued + load.running;
  const want = Math.min(bounds.max, Math.max(bounds.min, Math.ceil(jobs / policy.jobsPerInstance)));
  const inputs = `${load.queued} queued + ${load.running} running at ${policy.jobsPerInstance} per instance → ${want} wanted (min ${bounds.min}, max ${bounds.max}), ${idle.size} idle`;
  const cooling = state.lastChangeAt > 0 && now < state.lastChangeAt + policy.cooldownSeconds * 1000;
  const hold = (why: string): AutoscaleDecision => ({ action: 'hold', desired: state.desired, retire: [], reason: `${inputs}: hold at ${state.desired} (${why})`, idleSince });
  if (want === state.desired) return hold('as wanted');
  if (cooling) return hold(`cooldown until ${new Date(state.lastChangeAt + policy.cooldownSeconds * 1000).toISOString()}`);
  if (want > state.desired) return { action: 'up', desired: want, retire: [], reason: `${inputs}: scale up ${state.desired} → ${want}`, idleSince };
  const longIdle = [...idle].filter((id) => now - idleSince[id] >= policy.scaleDownIdleSeconds * 1000).sort();
  const retire = longIdle.slice(0, state.desired - want);
  if (retire.length === 0) return hold(`no instance idle for ${policy.scaleDownIdleSeconds} s yet`);
  const desired = state.desired - retire.length;
  for (const id of retire) delete idleSince[id];
  return { action: 'down', desired, retire, reason: `${inputs}: scale down ${state.desired} → ${desired}, retiring idle ${retire.join(', ')}`, idleSince };
}
