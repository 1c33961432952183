/**
 * The service workflow under harder conditions: a cloud that throttles create calls, and
 * histories long enough to continue-as-new (with a lowered limit, so the test stays short);
 * and a steady service, whose history must grow slowly.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  clusterStatusQuery,
  clusterWorkflowId,
  scaleUpdate,
  serviceStatusQuery,
  serviceWorkflowId,
  teardownSignal,
  TASK_QUEUE,
  type ClusterInput,
} from '../workflows/messages.js';
import { ClusterDefinitionSchema } from '../model/definition.js';
import { deploy, msOf, startStack, threeTier, waitFor, waitForState, type Stack } from './harness.js';
import { historyText } from './history-text.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ sim: { throttleRate: 0.3 } });
});
afterAll(async () => {
  await stack?.stop();
});

describe('service workflow', () => {
  it('gets through a throttling cloud to exactly the requested instances', async () => {
    const id = await deploy(stack, threeTier({ proxy: 3, head: 2, workers: 30 }));
    const status = await waitForState(stack, id, 'READY', 120_000);
    expect(status.services.map((s: any) => s.ready)).toEqual([3, 2, 30]);
    expect(stack.worker!.sim!.count({ cluster: id })).toBe(35);
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
    expect(stack.worker!.sim!.count({ cluster: id })).toBe(0);
  });

  it('continues-as-new before its history grows long, keeping its instances', async () => {
    const clusterId = 'can-test';
    const definition = ClusterDefinitionSchema.parse({
      name: 'can-test',
      services: [{ name: 'svc', image: 'cernvm', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, min: 1, max: 8 }],
    });
    const input: ClusterInput = { clusterId, name: clusterId, definitionId: 'def-none', definition, cloud: 'sim', tuning: { serviceHistoryLimit: 40 } };
    const cluster = await stack.client.workflow.start('ClusterWorkflow', { taskQueue: TASK_QUEUE, workflowId: clusterWorkflowId(clusterId), args: [input] });
    const service = stack.client.workflow.getHandle(serviceWorkflowId(clusterId, 'svc'));
    const readyCount = async () => (await service.query(serviceStatusQuery)).ready;
    await waitFor(async () => (await cluster.query(clusterStatusQuery)).state === 'READY', 60_000, 'READY');
    for (const n of [4, 2, 6, 3]) {
      await cluster.executeUpdate(scaleUpdate, { args: [{ service: 'svc', instances: n }] });
      await waitFor(async () => (await readyCount()) === n && (await service.query(serviceStatusQuery)).instances.length === n, 60_000, `${n} ready`);
    }
    let runs = 0;
    for await (const _ of stack.client.workflow.list({ query: `WorkflowId = "${serviceWorkflowId(clusterId, 'svc')}"` })) runs++;
    expect(runs).toBeGreaterThan(1);
    const status = await service.query(serviceStatusQuery);
    expect(status).toMatchObject({ state: 'READY', desired: 3, ready: 3 });
    expect(stack.worker!.sim!.count({ cluster: clusterId })).toBe(3);
    // Ordinals continue across runs: no instance name is ever reused.
    const ids = status.instances.map((i) => i.id);
    expect(new Set(ids).size).toBe(3);

    await cluster.signal(teardownSignal);
    const final = await cluster.result();
    expect(final.state).toBe('TERMINATED');
    expect(stack.worker!.sim!.count({ cluster: clusterId })).toBe(0);
  });

  it('goes quiet once steady: health checks back off, and its timers say what they wait for', async () => {
    // Readiness timeout 10 s: health checks start every 5 s (half of it) while anything moves.
    const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };
    const id = await deploy(stack, { name: 'quiet', services: [{ name: 'svc', image: 'cernvm', offering, min: 2, readinessTimeoutSeconds: 10 }] });
    await waitForState(stack, id, 'READY', 60_000);
    await new Promise((r) => setTimeout(r, 45_000));
    const service = stack.client.workflow.getHandle(serviceWorkflowId(id, 'svc'));
    const history = await service.fetchHistory();
    const checks = (history.events ?? []).filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'describeInstances');
    // A fixed 5 s interval makes 9 or more checks in 45 s; pauses of 5, 10, 20, 40 s make at most 5.
    expect(checks.length).toBeGreaterThanOrEqual(2);
    expect(checks.length).toBeLessThanOrEqual(5);
    // The first check (5 s in) leaves out the instances just made and reported ready; the one after asks about them.
    expect(msOf(checks[0].eventTime) - msOf(history.events![0].eventTime)).toBeGreaterThanOrEqual(8_000);
    expect(historyText([{ workflowId: service.workflowId, history }])).toContain('next health check in');
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED');
  }, 120_000);
});
