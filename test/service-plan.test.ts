/** The service workflow's decisions (model/service-plan.ts), as pure functions. */
import { describe, expect, it } from '@jest/globals';
import {
  chunks,
  compactInstance,
  expandInstance,
  healthCheckTargets,
  instanceId,
  keepRetryBackoffMs,
  liveInstances,
  MAX_CONSECUTIVE_FAILURES,
  HEALTH_CHECK_STEADY_MAX_MS,
  nextHealthCheckMs,
  nextWakeMs,
  overdueInstances,
  publishedAsIs,
  publishedFields,
  scalePlan,
  serviceState,
  wakeReason,
  type InstanceRecord,
  type ServiceCounts,
} from '../model/service-plan.js';
import type { InstanceState } from '../model/status.js';

const inst = (ordinal: number, state: InstanceState, extra: Partial<InstanceRecord> = {}): InstanceRecord => ({
  id: instanceId('c1', 'workers', ordinal),
  ordinal,
  state,
  ...extra,
});

describe('instanceId', () => {
  it('is <clusterId>-<service>-<ordinal>, the idempotency key every cloud finds the instance by', () => {
    expect(instanceId('t3-abc123', 'workers', 17)).toBe('t3-abc123-workers-17');
  });
});

describe('serviceState', () => {
  const base: ServiceCounts = { desired: 3, ready: 0, held: 3, inFlight: 0, consecutiveFailures: 0, tearingDown: false, degraded: false };
  it.each([
    ['DEPLOYING while fewer than desired are ready', {}, 'DEPLOYING'],
    ['READY with the desired number ready', { ready: 3 }, 'READY'],
    ['READY above the desired number (scaling down)', { ready: 4, desired: 3 }, 'READY'],
    ['DEGRADED after losing ready instances', { ready: 2, degraded: true }, 'DEGRADED'],
    ['FAILED after the failure budget', { consecutiveFailures: MAX_CONSECUTIVE_FAILURES }, 'FAILED'],
    ['FAILED wins over READY counts', { ready: 3, consecutiveFailures: MAX_CONSECUTIVE_FAILURES }, 'FAILED'],
    ['FAILED while failing (latched), even with the budget reset for a new round', { failing: true }, 'FAILED'],
    ['TERMINATING wins over failing', { failing: true, tearingDown: true }, 'TERMINATING'],
    ['TERMINATING while instances are held', { tearingDown: true }, 'TERMINATING'],
    ['TERMINATING while an activity is in flight', { tearingDown: true, held: 0, inFlight: 1 }, 'TERMINATING'],
    ['TERMINATED when nothing is held or in flight', { tearingDown: true, held: 0 }, 'TERMINATED'],
  ] as const)('%s', (_what, counts, state) => {
    expect(serviceState({ ...base, ...counts })).toBe(state);
  });
});

describe('scalePlan', () => {
  it('creates the missing instances with fresh ordinals', () => {
    expect(scalePlan([inst(0, 'READY')], 3, 5, false)).toEqual({ terminate: [], create: [5, 6] });
  });
  it('creates nothing while the service is FAILED (it waits for its next round)', () => {
    expect(scalePlan([inst(0, 'READY')], 3, 5, true)).toEqual({ terminate: [], create: [] });
  });
  it('scales down not-ready instances first, then the newest, never one still being created', () => {
    const live = [inst(0, 'READY'), inst(1, 'READY'), inst(2, 'BOOTING'), inst(3, 'READY'), inst(4, 'CREATING')];
    expect(scalePlan(live, 2, 5, false).terminate.map((i) => i.ordinal)).toEqual([2, 3, 1]);
    expect(scalePlan(live, 4, 5, false).terminate.map((i) => i.ordinal)).toEqual([2]);
  });
  it('scales down even when FAILED, and does nothing at the desired number', () => {
    expect(scalePlan([inst(0, 'READY'), inst(1, 'READY')], 1, 2, true).terminate.map((i) => i.ordinal)).toEqual([1]);
    expect(scalePlan([inst(0, 'READY')], 1, 1, false)).toEqual({ terminate: [], create: [] });
  });
});

describe('instance selections', () => {
  const all = [
    inst(0, 'CREATING'),
    inst(1, 'BOOTING', { cloudInstanceId: 'i-1', deadline: 1000 }),
    inst(2, 'RUNNING', { cloudInstanceId: 'i-2', deadline: 5000 }),
    inst(3, 'READY', { cloudInstanceId: 'i-3' }),
    inst(4, 'FAILED', { cloudInstanceId: 'i-4' }),
    inst(5, 'TERMINATING', { cloudInstanceId: 'i-5' }),
  ];
  it('live: everything not failed or leaving', () => {
    expect(liveInstances(all).map((i) => i.ordinal)).toEqual([0, 1, 2, 3]);
  });
  it('overdue: booted guests past their deadline, at the deadline included', () => {
    expect(overdueInstances(all, 999)).toEqual([]);
    expect(overdueInstances(all, 1000).map((i) => i.ordinal)).toEqual([1]);
    expect(overdueInstances(all, 9999).map((i) => i.ordinal)).toEqual([1, 2]);
  });
  it('health check: instances the cloud accepted and that are staying', () => {
    expect(healthCheckTargets(all).map((i) => i.ordinal)).toEqual([1, 2, 3]);
  });
  it('health check: not those vouched for since the last one (just made, or just reported ready)', () => {
    const vouched = new Set([all[1].id, all[3].id]);
    expect(healthCheckTargets(all, vouched).map((i) => i.ordinal)).toEqual([2]);
    expect(healthCheckTargets(all, new Set()).map((i) => i.ordinal)).toEqual([1, 2, 3]);
  });
  it('health check: one vouched for is still asked about when its readiness deadline comes before the check after next', () => {
    const vouched = new Set([all[1].id, all[3].id]); // 1 is BOOTING with deadline 1000; 3 is READY, no deadline
    expect(healthCheckTargets(all, vouched, 1000).map((i) => i.ordinal)).toEqual([2]);
    expect(healthCheckTargets(all, vouched, 1001).map((i) => i.ordinal)).toEqual([1, 2]);
  });
});

describe('nextWakeMs', () => {
  const now = 10_000;
  it('wakes for the health check, an earlier deadline, or the end of a keep-policy backoff', () => {
    expect(nextWakeMs(now, now + 30_000, [], 0)).toBe(30_001);
    expect(nextWakeMs(now, now + 30_000, [inst(1, 'BOOTING', { deadline: now + 5_000 })], 0)).toBe(5_001);
    expect(nextWakeMs(now, now + 30_000, [], now + 2_000)).toBe(2_001);
    expect(nextWakeMs(now, now + 30_000, [], now - 1)).toBe(30_001); // a backoff already over does not count
  });
  it('never sooner than a second', () => {
    expect(nextWakeMs(now, now - 5_000, [], 0)).toBe(1000);
  });
});

describe('keepRetryBackoffMs and chunks', () => {
  it('grows per failed round and stays at the last step', () => {
    expect([0, 1, 2, 3, 4, 5, 9].map((r) => keepRetryBackoffMs(r))).toEqual([30_000, 60_000, 120_000, 300_000, 600_000, 600_000, 600_000]);
  });
  it('splits into runs of at most n', () => {
    expect(chunks([1, 2, 3, 4, 5], 2)).toEqual([[1, 2], [3, 4], [5]]);
    expect(chunks([], 3)).toEqual([]);
  });
});

describe('what the read model was sent of an instance', () => {
  it('is as is until one of its published fields changes; an unset field and an empty one are the same', () => {
    const i = inst(3, 'BOOTING', { cloudInstanceId: 'sim-1', createdAt: '2026-12-04T10:00:00.000Z', deadline: 1 });
    const sent = publishedFields(i);
    expect(publishedAsIs(sent, i)).toBe(true);
    expect(publishedAsIs(undefined, i)).toBe(false);
    // Not published: the deadline.
    expect(publishedAsIs(sent, { ...i, deadline: 2 })).toBe(true);
    expect(publishedAsIs(sent, { ...i, message: '' })).toBe(true);
    for (const change of [{ state: 'READY' as const }, { readyAt: '2026-12-04T10:00:25.000Z' }, { message: 'probe failed' }, { host: 'node-7' }, { spec: 'v2' }, { cloudInstanceId: 'sim-2' }, { createdAt: undefined }]) {
      expect(publishedAsIs(sent, { ...i, ...change })).toBe(false);
    }
    // A copy: changing the instance afterwards does not change what was sent.
    i.state = 'RUNNING';
    expect(sent.state).toBe('BOOTING');
    expect(publishedAsIs(sent, i)).toBe(false);
  });
});

describe('health checks of a steady service', () => {
  it('double the pause while steady, up to the maximum, and go back to the base interval on any change', () => {
    const pauses: number[] = [];
    let last = 15_000;
    for (let n = 0; n < 8; n++) pauses.push((last = nextHealthCheckMs(15_000, last, true)));
    expect(pauses).toEqual([30_000, 60_000, 120_000, 240_000, 480_000, HEALTH_CHECK_STEADY_MAX_MS, HEALTH_CHECK_STEADY_MAX_MS, HEALTH_CHECK_STEADY_MAX_MS]);
    expect(nextHealthCheckMs(15_000, HEALTH_CHECK_STEADY_MAX_MS, false)).toBe(15_000);
  });
  it('never pause less than the base interval', () => {
    expect(nextHealthCheckMs(15_000, 1_000, true)).toBe(15_000);
  });
});

describe('wakeReason', () => {
  const now = 10_000;
  it('names what the workflow sleeps for, for the timer summary in the UI', () => {
    expect(wakeReason(now, now + 30_000, [], 0)).toBe('next health check in 30 s');
    expect(wakeReason(now, now + 30_000, [inst(1, 'BOOTING', { deadline: now + 5_000 })], 0)).toBe('readiness deadline in 5 s');
    expect(wakeReason(now, now + 30_000, [], now + 2_000)).toBe('next round of attempts in 2 s');
  });
});

describe('what a service workflow carries across continue-as-new', () => {
  it('is [ordinal, state code, deadline?] and expands back to the instance (id from the ordinal)', () => {
    const booting = inst(7, 'BOOTING', { cloudInstanceId: 'i-7', createdAt: '2026-12-01T00:00:00Z', deadline: 123_456 });
    const ready = inst(8, 'READY', { cloudInstanceId: 'i-8', readyAt: '2026-12-01T00:01:00Z' });
    expect(compactInstance(booting)).toEqual([7, 'B', 123_456]);
    expect(compactInstance(ready)).toEqual([8, 'Y']);
    expect(expandInstance(compactInstance(booting), 'c1', 'workers')).toEqual({ id: 'c1-workers-7', ordinal: 7, state: 'BOOTING', deadline: 123_456 });
    for (const state of ['CREATING', 'BOOTING', 'RUNNING', 'READY', 'FAILED', 'TERMINATING'] as const) {
      expect(expandInstance(compactInstance(inst(1, state)), 'c1', 'workers').state).toBe(state);
    }
    // Runs from before the compact form carried whole records; they still expand.
    expect(expandInstance(ready, 'c1', 'workers')).toBe(ready);
    expect(() => expandInstance([1, 'Z'], 'c1', 'workers')).toThrow('unknown state code "Z"');
  });

  it('stays far below 512 KB at 10,000 instances of one service (whole records took 1.8 MB)', () => {
    const instances = Array.from({ length: 10_000 }, (_, n) =>
      inst(n, n % 50 === 0 ? 'BOOTING' : 'READY', {
        cloudInstanceId: `a3f0c2e4-5b6d-4e7f-8a9b-${String(n).padStart(12, '0')}`,
        createdAt: '2026-12-01T10:00:00.000Z',
        ...(n % 50 === 0 ? { deadline: 1_796_144_600_616 } : { readyAt: '2026-12-01T10:00:25.000Z' }),
      }),
    );
    const compact = Buffer.byteLength(JSON.stringify(instances.map((i) => compactInstance(i))));
    const whole = Buffer.byteLength(JSON.stringify(instances));
    expect(compact).toBeLessThan(200 * 1024);
    expect(whole).toBeGreaterThan(1.5 * 1024 * 1024);
  });
});
