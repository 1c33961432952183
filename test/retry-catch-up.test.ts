/**
 * `POST /v1/clusters/:id/retry` right after `GET` showed a service FAILED: the service's own
 * publish reaches the read model just before its cluster workflow hears of it, so the
 * workflow's Update validator may refuse for a moment what the answer just showed
 * (api/sessions.ts, retryOnceHeard). Seen once in `npm test` (test/retry.test.ts got 409):
 * the window is a few milliseconds wide, so here the Update is a stand-in that refuses the
 * way the cluster workflow does.
 */
import { describe, expect, it } from '@jest/globals';
import { WorkflowUpdateFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { retryOnceHeard } from '../api/sessions.js';
import { CLUSTER_NOT_ACTIVE, NOTHING_TO_RETRY } from '../workflows/messages.js';

const refusal = (type: string) => new WorkflowUpdateFailedError('Workflow Update failed', ApplicationFailure.nonRetryable('refused', type));
const shows = (state: string) => async () => [{ summary: { state } as never }];

/** An Update refused `refusals` times with `type`, then answering; counts its calls. */
function update(refusals: number, type = NOTHING_TO_RETRY) {
  const calls = { n: 0 };
  const run = async () => {
    calls.n++;
    if (calls.n <= refusals) throw refusal(type);
    return { services: ['workers'] };
  };
  return { run, calls };
}

describe('a retry asked for while the cluster workflow catches up with the read model', () => {
  it('is asked again while the read model shows a FAILED service, and goes through once the workflow has heard', async () => {
    const { run, calls } = update(2);
    await expect(retryOnceHeard(run, shows('FAILED'))).resolves.toEqual({ services: ['workers'] });
    expect(calls.n).toBe(3);
  });

  it('is asked again for a service shown WAITING_CAPACITY too', async () => {
    const { run, calls } = update(1);
    await expect(retryOnceHeard(run, shows('WAITING_CAPACITY'))).resolves.toEqual({ services: ['workers'] });
    expect(calls.n).toBe(2);
  });

  it('is refused at once when the read model shows nothing to retry', async () => {
    const { run, calls } = update(5);
    await expect(retryOnceHeard(run, shows('READY'))).rejects.toThrow(WorkflowUpdateFailedError);
    expect(calls.n).toBe(1);
  });

  it('gives up after its wait when the workflow keeps refusing, with the workflow\'s refusal', async () => {
    const { run, calls } = update(1_000);
    const t0 = Date.now();
    const err = await retryOnceHeard(run, shows('FAILED'), 300).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
    expect(((err as WorkflowUpdateFailedError).cause as ApplicationFailure).type).toBe(NOTHING_TO_RETRY);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
    expect(calls.n).toBeGreaterThan(1);
  });

  it('passes any other refusal on at once', async () => {
    const { run, calls } = update(5, CLUSTER_NOT_ACTIVE);
    const err = await retryOnceHeard(run, shows('FAILED')).catch((e: unknown) => e);
    expect(((err as WorkflowUpdateFailedError).cause as ApplicationFailure).type).toBe(CLUSTER_NOT_ACTIVE);
    expect(calls.n).toBe(1);
  });
});
