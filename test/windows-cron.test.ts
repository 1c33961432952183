/**
 * Schedule windows' arithmetic (model/windows.ts, pure): which cron expressions a window
 * takes, whether a cluster is inside a window and until when, when the next one opens. That
 * Temporal's Schedules read the expressions the same way is checked against a real server
 * in test/windows.test.ts.
 */
import { describe, expect, it } from '@jest/globals';
import { ClusterDefinitionSchema } from '../model/definition.js';
import { cronProblem, nextWindowOpening, openWindowAt, resolveWindows, temporalCron, WindowSchema } from '../model/windows.js';

const at = (iso: string) => Date.parse(iso);

describe('window cron expressions', () => {
  it.each([
    '0 18 * * MON-FRI',
    '*/30 * * * * *',
    '10-40/10 * * * * *',
    '0 0 1 jan *',
    '0,30 9-17 * * 1-5',
    '0 0 * * 7',
    '@daily',
    '@HOURLY',
    '0 9 13 * 5',
  ])('takes %j', (expr) => {
    expect(cronProblem(expr)).toBeUndefined();
  });

  it.each([
    ['* * * *', /has 4 fields: use 5/],
    ['0 0 * * * * *', /has 7 fields/],
    ['0 0 L * *', /field "L" has something cloudgate does not read/],
    ['0 0 ? * MON', /field "\?"/],
    ['0 0 * * 5#2', /field "5#2"/],
    ['0 0 * * +1', /field "\+1"/],
    ['5/10 * * * *', /stepping with numeric prefix/],
    ['61 * * * *', /Invalid value for minute: 61/],
    ['0 0 31 2 *', /never names a time/],
    ['@reboot', /unknown shorthand "@reboot"/],
    ['@every 30s', /unknown shorthand/],
    ['0 0 * * MONDAY', /field "MONDAY"/],
  ])('refuses %j', (expr, why) => {
    expect(cronProblem(expr)).toMatch(why);
  });

  it('sends 6 fields (seconds first) to Temporal as its 7-field form, the rest unchanged', () => {
    expect(temporalCron('*/30 * * * * *')).toBe('*/30 * * * * * *');
    expect(temporalCron(' 0 18 * * MON-FRI ')).toBe('0 18 * * MON-FRI');
    expect(temporalCron('@daily')).toBe('@daily');
  });

  it('names the field at fault in a definition', () => {
    const r = ClusterDefinitionSchema.safeParse({
      name: 'w',
      windows: [{ cron: '0 18 * * MON-FRI', durationSeconds: 3600 }, { cron: 'soon', durationSeconds: 0 }],
      services: [{ name: 'a', offering: { cpus: 1, memoryMiB: 512, diskGiB: 1 }, image: 'cernvm' }],
    });
    expect(r.success).toBe(false);
    const issues = r.error!.issues.map((i) => [i.path.join('/'), i.message]);
    expect(issues).toEqual([
      ['windows/1/cron', expect.stringMatching(/^not a cron expression for a window: has 1 field: use 5/)],
      ['windows/1/durationSeconds', 'must be a whole number of seconds > 0'],
    ]);
    expect(WindowSchema.safeParse({ cron: '@daily', durationSeconds: 1.5 }).success).toBe(false);
  });

  it("uses the request's windows instead of the definition's, and none for an empty list", () => {
    const def = [{ cron: '@daily', durationSeconds: 60 }];
    const own = [{ cron: '@hourly', durationSeconds: 60 }];
    expect(resolveWindows(def, undefined)).toEqual(def);
    expect(resolveWindows(def, own)).toEqual(own);
    expect(resolveWindows(def, [])).toBeUndefined();
    expect(resolveWindows(undefined, undefined)).toBeUndefined();
  });
});

describe('inside a window, and until when', () => {
  const weekdayEvenings = [{ cron: '0 18 * * MON-FRI', durationSeconds: 14 * 3600 }];

  it('is inside from the opening (inclusive) to the end (exclusive), in UTC', () => {
    // 2026-03-02 is a Monday.
    expect(openWindowAt(weekdayEvenings, at('2026-03-02T17:59:59.999Z'))).toBeUndefined();
    expect(openWindowAt(weekdayEvenings, at('2026-03-02T18:00:00.000Z'))).toEqual({ until: at('2026-03-03T08:00:00Z'), window: 0 });
    expect(openWindowAt(weekdayEvenings, at('2026-03-03T07:59:59.999Z'))).toEqual({ until: at('2026-03-03T08:00:00Z'), window: 0 });
    expect(openWindowAt(weekdayEvenings, at('2026-03-03T08:00:00.000Z'))).toBeUndefined();
    // Friday's window runs into Saturday; none opens on Saturday.
    expect(openWindowAt(weekdayEvenings, at('2026-03-07T07:00:00Z'))).toEqual({ until: at('2026-03-07T08:00:00Z'), window: 0 });
    expect(openWindowAt(weekdayEvenings, at('2026-03-07T19:00:00Z'))).toBeUndefined();
  });

  it('takes the later end of overlapping windows', () => {
    const windows = [
      { cron: '0 * * * *', durationSeconds: 600 },
      { cron: '5 * * * *', durationSeconds: 1800 },
    ];
    expect(openWindowAt(windows, at('2026-03-02T10:07:00Z'))).toEqual({ until: at('2026-03-02T10:35:00Z'), window: 1 });
    expect(openWindowAt(windows, at('2026-03-02T10:02:00Z'))).toEqual({ until: at('2026-03-02T10:10:00Z'), window: 0 });
    // A window longer than its period is always open.
    expect(openWindowAt([{ cron: '*/10 * * * * *', durationSeconds: 15 }], at('2026-03-02T10:00:09Z'))).toEqual({ until: at('2026-03-02T10:00:15Z'), window: 0 });
  });

  it('finds the next opening of any window, strictly after the time given', () => {
    const windows = [
      { cron: '0 18 * * MON-FRI', durationSeconds: 3600 },
      { cron: '0 10 * * SAT,SUN', durationSeconds: 3600 },
    ];
    expect(nextWindowOpening(windows, at('2026-03-02T18:00:00Z'))).toEqual({ at: at('2026-03-03T18:00:00Z'), window: 0 });
    expect(nextWindowOpening(windows, at('2026-03-06T19:00:00Z'))).toEqual({ at: at('2026-03-07T10:00:00Z'), window: 1 });
    expect(nextWindowOpening([{ cron: '*/20 * * * * *', durationSeconds: 5 }], at('2026-03-02T10:00:40.5Z'))).toEqual({ at: at('2026-03-02T10:01:00Z'), window: 0 });
  });
});
