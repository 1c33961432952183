/**
 * The cluster workflow over a long life: it continues-as-new (with a lowered limit, so the
 * test stays short) while its services run on, answers and scales from any later run, lists
 * every run's events, and tears down from a later run leaving nothing behind. And what a
 * cluster workflow terminated by hand (no teardown) leaves: nothing either, once its
 * services notice.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import path from 'node:path';
import { Worker } from '@temporalio/worker';
import { ClusterDefinitionSchema } from '../model/definition.js';
import { openSqliteStore, type Store } from '../store/index.js';
import {
  SA_STATE,
  clusterStatusQuery,
  clusterWorkflowId,
  scaleUpdate,
  serviceWorkflowId,
  teardownSignal,
  type ClusterInput,
  type ClusterView,
} from '../workflows/messages.js';
import { startStack, startClusterWorkflow, waitFor, waitForState, clusterStatus, clusterInstances, msOf, workflowBundle, type Stack } from './harness.js';

let stack: Stack;
let store: Store;
beforeAll(async () => {
  stack = await startStack();
  store = await openSqliteStore(path.join(stack.config.dataDir, 'cloudgate.sqlite'));
});
afterAll(async () => {
  await store?.close();
  await stack?.stop();
});

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };

/** Starts a cluster workflow as the API would, with tuning the API never sets. */
const startCluster = (clusterId: string, services: unknown[], tuning: ClusterInput['tuning']) =>
  startClusterWorkflow(stack.client, store, clusterId, ClusterDefinitionSchema.parse({ name: clusterId, services }), tuning);

async function runsOf(workflowId: string) {
  const runs = [];
  for await (const wf of stack.client.workflow.list({ query: `WorkflowId = "${workflowId}"` })) runs.push(wf);
  return runs;
}

describe('cluster workflow', () => {
  it('continues-as-new while its services run on, and tears down from a later run', async () => {
    const clusterId = 'cluster-can';
    const cluster = await startCluster(
      clusterId,
      [
        { name: 'head', image: 'cernvm', offering, min: 1 },
        { name: 'workers', image: 'cernvm', offering, min: 1, max: 10, dependsOn: ['head'] },
      ],
      { clusterHistoryLimit: 40 },
    );
    await waitForState(stack, clusterId, 'READY');
    // Scale requests (validated Updates), each waited for: every one lands in some run's history.
    for (const n of [3, 2, 5, 4, 6, 3]) {
      await cluster.executeUpdate(scaleUpdate, { args: [{ service: 'workers', instances: n }] });
      await waitFor(async () => {
        const s = await clusterStatus(stack, clusterId);
        return s.state === 'READY' && s.services[1].ready === n;
      }, 60_000, `workers at ${n}`);
    }
    // Every run but the latest continued-as-new; the latest runs on. (Visibility lags a moment
    // behind a continue-as-new, so the list is asked again until it shows the running run.)
    let runs: Awaited<ReturnType<typeof runsOf>> = [];
    await waitFor(async () => {
      runs = await runsOf(clusterWorkflowId(clusterId));
      const running = runs.filter((r) => r.status.name === 'RUNNING').length;
      return running === 1 && runs.filter((r) => r.status.name === 'CONTINUED_AS_NEW').length === runs.length - 1;
    }, 30_000, 'the running run of the cluster workflow in visibility');
    expect(runs.length).toBeGreaterThan(1);
    expect(runs.map((r) => r.status.name).sort()).toEqual([...runs.slice(1).map(() => 'CONTINUED_AS_NEW'), 'RUNNING']);

    // The services were not taken along: one run each, still running, holding what was asked.
    for (const svc of ['head', 'workers']) {
      const svcRuns = await runsOf(serviceWorkflowId(clusterId, svc));
      expect(svcRuns.map((r) => r.status.name)).toEqual(['RUNNING']);
    }
    expect(stack.worker!.sim!.count({ cluster: clusterId })).toBe(4);

    // The latest run answers, carries the services' states, and the UI's column says READY.
    const view = await cluster.query(clusterStatusQuery);
    expect(view).toMatchObject({ state: 'READY' });
    expect(view.services.map((s) => [s.name, s.state, s.desired, s.ready])).toEqual([
      ['head', 'READY', 1, 1],
      ['workers', 'READY', 3, 3],
    ]);
    expect((await cluster.describe()).typedSearchAttributes.get(SA_STATE)).toBe('READY');
    // The saved view's filter finds the running run (search attributes go on with it).
    // (Visibility lags a moment behind a continue-as-new: asked again until it has caught up.)
    await waitFor(async () => {
      const running = [];
      for await (const wf of stack.client.workflow.list({ query: `CloudgateClusterId = "${clusterId}" AND WorkflowType = "ClusterWorkflow" AND ExecutionStatus = "Running"` })) running.push(wf.runId);
      const now = (await runsOf(clusterWorkflowId(clusterId))).find((r) => r.status.name === 'RUNNING')!.runId;
      return running.length === 1 && running[0] === now;
    }, 30_000, 'the running run in visibility');

    // A later run validates and applies scale requests like the first.
    await expect(cluster.executeUpdate(scaleUpdate, { args: [{ service: 'workers', instances: 11 }] })).rejects.toMatchObject({
      cause: { type: 'ScaleOutOfBounds', message: expect.stringMatching(/from 1 \(min\) to 10 \(max\)/) },
    });
    await cluster.executeUpdate(scaleUpdate, { args: [{ service: 'workers', instances: 2 }] });
    await waitFor(async () => (await clusterStatus(stack, clusterId)).services[1].ready === 2 && stack.worker!.sim!.count({ cluster: clusterId }) === 3, 60_000, 'workers at 2');

    // Every run's events are listed, in order, none twice: all seven scale requests.
    const events = await stack.http('GET', `/v1/clusters/${clusterId}/events?limit=500`);
    expect(events.status).toBe(200);
    const scales = events.body.items.filter((e: any) => e.kind === 'scale' && !e.service?.includes('/') && e.message.startsWith('scale workers'));
    expect(scales.map((e: any) => e.message.match(/to (\d+) instances/)[1])).toEqual(['3', '2', '5', '4', '6', '3', '2']);

    // Teardown from a later run: every service reports TERMINATED, nothing is left in the cloud.
    await cluster.signal(teardownSignal, { reason: 'end of test' });
    const final = (await cluster.result()) as ClusterView;
    expect(final.state).toBe('TERMINATED');
    expect(final.services.map((s) => s.state)).toEqual(['TERMINATED', 'TERMINATED']);
    expect(stack.worker!.sim!.count({ cluster: clusterId })).toBe(0);
    // (Visibility records a close a moment after it: asked again until it has.)
    for (const svc of ['head', 'workers']) {
      let statuses: string[] = [];
      await waitFor(async () => {
        statuses = (await runsOf(serviceWorkflowId(clusterId, svc))).map((r) => r.status.name);
        return statuses.length === 1 && statuses[0] !== 'RUNNING';
      }, 30_000, `the ${svc} service's close in visibility`).catch(() => undefined);
      expect(statuses).toEqual(['COMPLETED']);
    }
    expect((await clusterStatus(stack, clusterId)).state).toBe('TERMINATED');

    // Every run replays against today's code.
    const histories = [];
    for (const r of await runsOf(clusterWorkflowId(clusterId))) {
      histories.push({ workflowId: r.workflowId, history: await stack.client.workflow.getHandle(r.workflowId, r.runId).fetchHistory() });
    }
    const results = [];
    for await (const r of Worker.runReplayHistories({ workflowBundle: await workflowBundle(), dataConverter: stack.dataConverter }, histories)) results.push(r.error);
    expect(results).toEqual(histories.map(() => undefined));
  }, 180_000);

  it('lets a wave of creates start before the read-model writes of its new instances (a task with local activities sends its commands only when they are done)', async () => {
    const clusterId = 'cluster-creates-first';
    // 120 instances: three create batches of 50.
    const cluster = await startCluster(clusterId, [{ name: 'svc', image: 'cernvm', offering, min: 120 }], undefined);
    await waitForState(stack, clusterId, 'READY', 120_000);
    const events = (await stack.client.workflow.getHandle(serviceWorkflowId(clusterId, 'svc')).fetchHistory()).events ?? [];
    // What the service's first task sent: the three creates and a timer due at once, and no read-model write (a local activity's marker).
    const firstTask = events.findIndex((e) => e.workflowTaskCompletedEventAttributes);
    const sent = events.slice(firstTask + 1, events.findIndex((e, n) => n > firstTask && (e.workflowTaskScheduledEventAttributes || e.timerFiredEventAttributes)));
    expect(sent.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'createInstances')).toHaveLength(3);
    expect(sent.filter((e) => e.timerStartedEventAttributes)).toHaveLength(1);
    expect(sent.filter((e) => e.markerRecordedEventAttributes)).toEqual(sent.filter((e) => e.markerRecordedEventAttributes?.markerName === 'core_patch'));
    // The creates started before the task that wrote the new instances to the read model completed.
    const firstWrite = events.find((e) => e.markerRecordedEventAttributes?.markerName === 'core_local_activity')!;
    const firstCreateStarted = Math.min(...events.filter((e) => e.activityTaskStartedEventAttributes).map((e) => msOf(e.eventTime)));
    expect(firstCreateStarted).toBeLessThan(msOf(firstWrite.eventTime));
    expect((await clusterInstances(stack, clusterId, 'svc')).filter((i) => i.state === 'READY')).toHaveLength(120);
    await cluster.signal(teardownSignal, { reason: 'end of test' });
    expect(((await cluster.result()) as ClusterView).state).toBe('TERMINATED');
    expect(stack.worker!.sim!.count({ cluster: clusterId })).toBe(0);
  }, 180_000);

  it('settles on the last of quick scale requests: a service report sent before a newer request does not bring an old count back', async () => {
    const clusterId = 'cluster-quick-scales';
    const cluster = await startCluster(clusterId, [{ name: 'svc', image: 'cernvm', offering, min: 1, max: 5 }], undefined);
    await waitForState(stack, clusterId, 'READY');
    const requests = [3, 2, 1, 3, 2, 1];
    for (const n of requests) await cluster.executeUpdate(scaleUpdate, { args: [{ service: 'svc', instances: n }] });
    await waitFor(async () => {
      const s = await clusterStatus(stack, clusterId);
      return s.state === 'READY' && s.services[0].desired === 1 && s.services[0].ready === 1;
    }, 60_000, 'svc settled at 1');
    // Before the fix, cluster and service kept sending each other the old counts: dozens of setDesired a second.
    await new Promise((r) => setTimeout(r, 2_000));
    const history = await stack.client.workflow.getHandle(serviceWorkflowId(clusterId, 'svc')).fetchHistory();
    const setDesired = (history.events ?? []).filter((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'setDesired');
    expect(setDesired.length).toBeLessThanOrEqual(requests.length);
    await cluster.signal(teardownSignal, { reason: 'end of test' });
    expect(((await cluster.result()) as ClusterView).state).toBe('TERMINATED');
  }, 120_000);

  it('leaves nothing behind when its workflow is terminated by hand: the services notice at their next report and tear down', async () => {
    const clusterId = 'cluster-orphaned';
    // Compressed time (health checks at most 10 s apart), so the service soon notices the vanished instance.
    const cluster = await startCluster(clusterId, [{ name: 'svc', image: 'cernvm', offering, min: 2 }], { timeScale: 60 });
    await waitForState(stack, clusterId, 'READY');
    expect(stack.worker!.sim!.count({ cluster: clusterId })).toBe(2);
    await cluster.terminate('operator pressed Terminate in the UI');
    // Something changes for the service (an instance vanishes), so it reports to a cluster that is gone.
    const [victim] = await clusterInstances(stack, clusterId);
    stack.worker!.sim!.vanish(victim.cloudInstanceId!);
    await waitFor(async () => stack.worker!.sim!.count({ cluster: clusterId }) === 0, 120_000, 'every instance gone');
    const service = stack.client.workflow.getHandle(serviceWorkflowId(clusterId, 'svc'));
    expect((await service.result()).state).toBe('TERMINATED');
    const events = await stack.http('GET', `/v1/clusters/${clusterId}/events?limit=500`);
    expect(events.body.items.map((e: any) => e.message)).toContainEqual(expect.stringMatching(/cluster workflow cluster\/cluster-orphaned is closed .*; tearing down/));
  }, 180_000);
});
