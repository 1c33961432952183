/**
 * Honest states under `failurePolicy: keep`: a service that used up its failure budget is
 * FAILED, and stays FAILED — with `retryingAt` while it backs off — through every new round
 * of attempts, until an instance becomes ready; the cluster stays DEGRADED meanwhile instead
 * of flipping back to DEPLOYING for each round (what a `CloudgateState` filter would miss).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ClusterDefinitionSchema } from '../model/definition.js';
import type { ClusterState, ServiceState } from '../model/status.js';
import { SA_STATE, clusterStatusQuery, clusterWorkflowId, serviceStatusQuery, serviceWorkflowId, teardownSignal, TASK_QUEUE, type ClusterInput } from '../workflows/messages.js';
import { startStack, waitFor, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  // Every guest of the `bad` service reports a failed CVMFS probe.
  stack = await startStack({ simRules: [{ match: '-bad-\\d+$', behaviour: 'fail' }] });
});
afterAll(async () => {
  await stack?.stop();
});

describe('failurePolicy keep', () => {
  it('keeps a failing service FAILED (cluster DEGRADED) through backoffs and retries, with retryingAt while it waits', async () => {
    const clusterId = 'keep-honest';
    const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };
    const definition = ClusterDefinitionSchema.parse({
      name: clusterId,
      failurePolicy: 'keep',
      services: [
        { name: 'good', image: 'cernvm', offering, min: 1 },
        { name: 'bad', image: 'cernvm', offering, min: 1 },
      ],
    });
    // Short pauses between rounds, so several rounds fit in the test.
    const input: ClusterInput = { clusterId, name: clusterId, definitionId: 'def-none', definition, cloud: 'sim', tuning: { keepRetryBackoffMs: [2_000] } };
    const cluster = await stack.client.workflow.start('ClusterWorkflow', { taskQueue: TASK_QUEUE, workflowId: clusterWorkflowId(clusterId), args: [input] });
    const bad = stack.client.workflow.getHandle(serviceWorkflowId(clusterId, 'bad'));

    const seen: { cluster: ClusterState; bad: ServiceState; replacements: number; retryingAt?: string }[] = [];
    await waitFor(
      async () => {
        const [c, b] = await Promise.all([cluster.query(clusterStatusQuery), bad.query(serviceStatusQuery).catch(() => undefined)]);
        if (b) seen.push({ cluster: c.state, bad: b.state, replacements: b.replacements, ...(b.retryingAt && { retryingAt: b.retryingAt }) });
        return (b?.replacements ?? 0) >= 12; // two whole rounds of five, and into the third
      },
      90_000,
      'three rounds of attempts',
    );

    // From the moment the cluster has taken in the failure (its report reaches it a little after the service's own state changes).
    const firstFailed = seen.findIndex((s) => s.bad === 'FAILED' && s.cluster === 'DEGRADED');
    expect(firstFailed).toBeGreaterThanOrEqual(0);
    const after = seen.slice(firstFailed);
    // Never back to DEPLOYING: FAILED all along, the cluster DEGRADED (its good service is READY).
    expect([...new Set(after.map((s) => s.bad))]).toEqual(['FAILED']);
    expect([...new Set(after.map((s) => s.cluster))]).toEqual(['DEGRADED']);
    // It did try again (replacements grew after it first failed), and said when while it waited.
    expect(after.at(-1)!.replacements).toBeGreaterThan(after[0].replacements);
    const waiting = after.filter((s) => s.retryingAt);
    expect(waiting.length).toBeGreaterThan(0);
    expect(Number.isNaN(Date.parse(waiting[0].retryingAt!))).toBe(false);
    // The Temporal UI's CloudgateState column says the same.
    const described = await bad.describe();
    expect(described.typedSearchAttributes.get(SA_STATE)).toBe('FAILED');
    expect((await cluster.describe()).typedSearchAttributes.get(SA_STATE)).toBe('DEGRADED');

    await cluster.signal(teardownSignal);
    expect((await cluster.result()).state).toBe('TERMINATED');
    expect(stack.worker!.sim!.count({ cluster: clusterId })).toBe(0);
  });
});
