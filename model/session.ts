/**
 * Sessions (issue 13): when a cluster with a lifetime ends by itself, as pure functions. The
 * cluster workflow keeps the deadlines (workflow clock, ms) and a timer on the earlier one;
 * a keepalive moves the idle deadline, an extension the maximum one.
 */
import type { Lifetime } from './definition.js';

/** The site-wide cap of a cluster's lifetime when the config names none: 30 days. */
export const DEFAULT_MAX_LIFETIME_SECONDS = 30 * 86_400;

/** A running session's deadlines. */
export interface SessionDeadlines {
  /** When the cluster started (the maximum counts from it; extensions are capped from it). */
  startedAt: number;
  idleUntil?: number;
  maxUntil?: number;
}

/** The lifetime a cluster runs with: the definition's defaults, overridden field by field by the submission's. */
export function resolveLifetime(defaults: Lifetime | undefined, override: Lifetime | undefined): Lifetime | undefined {
  const l = { ...defaults, ...override };
  return l.idleSeconds === undefined && l.maxSeconds === undefined ? undefined : l;
}

/** The deadlines of a session starting at `now`. */
export function sessionStart(lifetime: Lifetime, now: number): SessionDeadlines {
  return {
    startedAt: now,
    ...(lifetime.idleSeconds !== undefined && { idleUntil: now + lifetime.idleSeconds * 1000 }),
    ...(lifetime.maxSeconds !== undefined && { maxUntil: now + lifetime.maxSeconds * 1000 }),
  };
}

/** The deadline that comes first, and which one it is (the maximum wins a tie). */
export function sessionExpiry(d: SessionDeadlines): { at: number; which: 'idle' | 'max' } | undefined {
  if (d.maxUntil !== undefined && (d.idleUntil === undefined || d.maxUntil <= d.idleUntil)) return { at: d.maxUntil, which: 'max' };
  if (d.idleUntil !== undefined) return { at: d.idleUntil, which: 'idle' };
  return undefined;
}

/** `7 days`, `2 h`, `90 s`: a duration as people say it (whole units only, else seconds). */
export function humanSeconds(seconds: number): string {
  if (seconds >= 86_400 && seconds % 86_400 === 0) return `${seconds / 86_400} day${seconds === 86_400 ? '' : 's'}`;
  if (seconds >= 3_600 && seconds % 3_600 === 0) return `${seconds / 3_600} h`;
  if (seconds >= 60 && seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}

/** Why a session ended: `idle for 1800 s`, `lifetime of 7 days reached`. */
export function expiryReason(which: 'idle' | 'max', d: SessionDeadlines, lifetime: Lifetime): string {
  if (which === 'idle') return `idle for ${lifetime.idleSeconds} s: no keepalive since ${new Date(d.idleUntil! - lifetime.idleSeconds! * 1000).toISOString()}`;
  return `lifetime of ${humanSeconds(Math.round((d.maxUntil! - d.startedAt) / 1000))} reached`;
}
