/**
 * Schedule windows (issue 13): a cluster may carry `windows: [{cron, durationSeconds}]` and is
 * then active only inside them — each window opens at every time its cron expression names
 * and stays open `durationSeconds`; outside every window the cluster is PAUSED. A Temporal
 * Schedule per window opens it (workflows/windows.ts); the cluster workflow computes here,
 * with the same expression, whether it is inside a window now and until when, and when the
 * next one opens.
 *
 * The expression is read exactly as Temporal Schedules read it, so the cluster's arithmetic
 * and the Schedules page agree (checked against a real server in test/windows.test.ts):
 * - UTC (a Schedule without a time zone is UTC; windows have no time zone of their own);
 * - 5 fields (minute hour day-of-month month day-of-week), or 6 with a *seconds* field first
 *   (sent to Temporal as 7 fields with a year `*`, since Temporal's own 6-field form ends
 *   with a year instead), or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`;
 * - day of month AND day of week when both are restricted (Temporal does not implement
 *   Vixie cron's "or"; croner's `domAndDow` does the same);
 * - digits, month and weekday names, `*`, `,`, `-`, `/` only: no `?`, `L`, `W`, `#` (croner
 *   reads them, Temporal does not), and steps only as `* /n` or `a-b/n` (croner's rule).
 *
 * Pure: no I/O, no clock of its own (every function takes `now`), so workflow code may call it.
 */
import { Cron } from 'croner';
import { z } from 'zod';
import { humanSeconds } from './session.js';

/** The shorthands both croner and Temporal read the same way. */
const SHORTHANDS = ['@hourly', '@daily', '@weekly', '@monthly', '@yearly'];

/** Month and weekday names, as both croner and Temporal read them (any case). */
const NAMES = /jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec|sun|mon|tue|wed|thu|fri|sat/gi;

/** The most windows one cluster may carry (one Temporal Schedule each). */
export const MAX_WINDOWS = 16;

/** croner, set up to read an expression as a Temporal Schedule does (UTC, day-of-month AND day-of-week); it never runs anything. */
const cronOf = (expr: string): Cron => new Cron(expr.trim(), { utcOffset: 0, domAndDow: true, mode: '5-or-6-parts', paused: true });

/** Why `expr` is not a window's cron expression, or undefined when it is one. */
export function cronProblem(expr: string): string | undefined {
  const e = expr.trim();
  if (e.startsWith('@')) {
    if (!SHORTHANDS.includes(e.toLowerCase())) return `unknown shorthand "${e}": use ${SHORTHANDS.join(', ')}, or 5 fields`;
  } else {
    const fields = e.split(/\s+/);
    if (fields.length !== 5 && fields.length !== 6) {
      return `has ${fields.length} field${fields.length === 1 ? '' : 's'}: use 5 (minute hour day-of-month month day-of-week, e.g. "0 18 * * MON-FRI") or 6 with seconds first ("*/30 * * * * *"), in UTC`;
    }
    const odd = fields.find((f) => !/^[0-9*,/-]+$/.test(f.replace(NAMES, '0')));
    if (odd !== undefined) return `field "${odd}" has something cloudgate does not read: only digits, 3-letter month and weekday names, * , - and / (no ? L W # +)`;
  }
  let cron: Cron;
  try {
    cron = cronOf(e);
  } catch (err) {
    return (err instanceof Error ? err.message : String(err)).replace(/^CronPattern: /, '');
  }
  // Far enough ahead for any real calendar (a leap day is at most 8 years away).
  if (cron.nextRun(new Date(Date.UTC(2000, 0, 1))) === null) return 'never names a time (e.g. the 31st of a month that has 30 days)';
  return undefined;
}

export const WindowSchema = z
  .object({
    cron: z
      .string()
      .min(1)
      .max(200)
      .superRefine((expr, ctx) => {
        const problem = cronProblem(expr);
        if (problem) ctx.addIssue({ code: 'custom', message: `not a cron expression for a window: ${problem}` });
      })
      .describe('When the window opens, as a cron expression in UTC read as Temporal Schedules read it: 5 fields, 6 with seconds first, or @hourly/@daily/@weekly/@monthly/@yearly'),
    durationSeconds: z
      .number({ error: 'must be a whole number of seconds > 0' })
      .int('must be a whole number of seconds > 0')
      .min(1, 'must be a whole number of seconds > 0')
      .max(31_536_000, 'must be at most a year (31536000 seconds)')
      .describe('How long the window stays open after each opening'),
  })
  .strict();
export type Window = z.infer<typeof WindowSchema>;

/** A cluster's windows: inside any of them it is active, outside all of them PAUSED. An empty list: no windows. */
export const WindowsSchema = z.array(WindowSchema).max(MAX_WINDOWS);

/** The windows a cluster runs with: the submission's list replaces the definition's (`[]`: none); undefined when it has none. */
export function resolveWindows(defaults: Window[] | undefined, override: Window[] | undefined): Window[] | undefined {
  const w = override ?? defaults;
  return w && w.length > 0 ? w : undefined;
}

/** The expression as a Temporal Schedule's `cronExpressions` entry: 6 fields (seconds first) gain a year `*` (Temporal's 7-field form). */
export function temporalCron(expr: string): string {
  const e = expr.trim();
  return e.split(/\s+/).length === 6 ? `${e} *` : e;
}

/** `window 0 ("0 18 * * MON-FRI", 14 h)`: how messages and summaries name a window. */
export const windowName = (windows: readonly Window[], i: number): string => `window ${i} ("${windows[i].cron}", ${humanSeconds(windows[i].durationSeconds)})`;

/** The latest opening of `w` at or before `now` (ms), if any. croner's previous runs are strictly before their reference, in whole seconds. */
function lastOpening(w: Window, now: number): number | undefined {
  return cronOf(w.cron)
    .previousRuns(1, new Date(Math.floor(now / 1000) * 1000 + 1000))[0]
    ?.getTime();
}

/**
 * Whether a window is open at `now`: the latest end among the windows open then, and which
 * window that is; undefined outside every window. Windows that overlap or follow each other
 * without a gap count as one: the caller asks again at `until` (the next may have opened).
 */
export function openWindowAt(windows: readonly Window[], now: number): { until: number; window: number } | undefined {
  let open: { until: number; window: number } | undefined;
  windows.forEach((w, window) => {
    const at = lastOpening(w, now);
    const until = at === undefined ? undefined : at + w.durationSeconds * 1000;
    if (until !== undefined && until > now && (!open || until > open.until)) open = { until, window };
  });
  return open;
}

/** The first opening of any window strictly after `after` (ms), and which window; undefined if none ever opens again. */
export function nextWindowOpening(windows: readonly Window[], after: number): { at: number; window: number } | undefined {
  let next: { at: number; window: number } | undefined;
  windows.forEach((w, window) => {
    const at = cronOf(w.cron).nextRun(new Date(after))?.getTime();
    if (at !== undefined && (!next || at < next.at)) next = { at, window };
  });
  return next;
}
