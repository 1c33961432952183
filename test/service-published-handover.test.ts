/**
 * The service workflow hands over to its next run (continue-as-new) only once its last write to
 * the read model succeeded (patch `service-published-handover` in workflows/service.ts). A write
 * that failed is kept in the run and not carried: had the run handed over anyway, the next run
 * would count its instances as published, and an instance's last change would never reach the
 * read model.
 *
 * Fault injection: the store the worker (and the API) open refuses a cluster's service
 * publishes, from the first one that carries an instance READY until the test lets it recover.
 * So the write that fails is the instance's last change and nothing newer waits behind it (a
 * change or event after the failed write keeps the run from handing over by another rule,
 * `service-quiet-handover`). The refusal is non-retryable, so the `publishService` local
 * activity gives up at once rather than after its ten attempts (about 2.5 minutes of backoff):
 * the workflow sees the same failed publish either way, sooner.
 */
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { ClusterDefinitionSchema } from '../model/definition.js';
import type { Store } from '../store/index.js';
import { serviceStatusQuery, serviceWorkflowId, teardownSignal, type ClusterView } from '../workflows/messages.js';
import type { Stack } from './harness.js';

/**
 * Fault injection: while `cluster` is set, the store refuses that cluster's service publishes
 * (service view and instance rows) from the first one that carries an instance READY on.
 */
const publishFault: { cluster?: string; refusing: boolean; refused: number } = { refusing: false, refused: 0 };

function withPublishFault(store: Store): Store {
  return {
    ...store,
    async publishService(input) {
      if (publishFault.cluster === input.clusterId && (publishFault.refusing || input.upserts.some((i) => i.state === 'READY'))) {
        publishFault.refusing = true;
        publishFault.refused++;
        throw ApplicationFailure.nonRetryable(`injected fault: the read model refuses ${input.clusterId}/${input.service} seq ${input.seq}`, 'InjectedStoreFault');
      }
      return store.publishService(input);
    },
  };
}

// The harness's worker and API open their store with openStore: they get it with the fault injection.
// (Registered before the harness is imported, so its imports of the store module meet the wrapper.)
const realStore = await import('../store/index.js');
jest.unstable_mockModule('../store/index.js', () => ({
  ...realStore,
  openStore: async (...args: Parameters<typeof realStore.openStore>) => withPublishFault(await realStore.openStore(...args)),
}));
const { clusterInstances, startClusterWorkflow, startStack, waitFor, waitForState } = await import('./harness.js');

/** The service workflow continues-as-new past this many events (the default is 2,000). */
const HISTORY_LIMIT = 55;

let stack: Stack;
/** The test's own handle on the same store (no fault injection): cluster rows, as the API would write them. */
let store: Store;
beforeAll(async () => {
  stack = await startStack();
  store = await realStore.openSqliteStore(path.join(stack.config.dataDir, 'cloudgate.sqlite'));
});
afterAll(async () => {
  await store?.close();
  await stack?.stop();
});

describe('service workflow and a failing read model', () => {
  it('does not continue-as-new while its last read-model write failed, and hands over once the instance reached the read model', async () => {
    const clusterId = 'published-handover';
    // The store takes the instance's creation, and refuses the write that says it is READY (and every write after).
    publishFault.cluster = clusterId;
    const definition = ClusterDefinitionSchema.parse({
      name: clusterId,
      services: [{ name: 'svc', image: 'cernvm', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, min: 1 }],
    });
    const cluster = await startClusterWorkflow(stack.client, store, clusterId, definition, { serviceHistoryLimit: HISTORY_LIMIT });
    const service = stack.client.workflow.getHandle(serviceWorkflowId(clusterId, 'svc'));

    // The instance becomes READY (its readiness report) in the service's first run; the write that says so failed.
    const status = await waitFor(
      async () => {
        const s = await service.query(serviceStatusQuery);
        return s.instances.length === 1 && s.instances[0].state === 'READY' && s;
      },
      60_000,
      'the instance READY in the service workflow',
    );
    const instanceId = status.instances[0].id;
    const first = await service.describe();
    expect(publishFault.refused).toBeGreaterThan(0);
    // The instance changed before the run was due to hand over (about 40 events by now): the change the rule protects.
    expect(first.historyLength).toBeLessThan(HISTORY_LIMIT);
    const refusedAtReady = publishFault.refused;

    // The store keeps failing: the run tries the write again every 5 s, each try a few more events,
    // until its history is well past the limit (due to continue-as-new for several tries), or it handed over.
    const whileFailing = await waitFor(
      async () => {
        const d = await service.describe();
        return (d.runId !== first.runId || d.historyLength > HISTORY_LIMIT + 8) && d;
      },
      90_000,
      'the service run past its history limit while the store fails',
    );
    const handedOverWhileFailing = whileFailing.runId !== first.runId;
    const retriesWhileFailing = publishFault.refused - refusedAtReady;
    // Meanwhile the read model shows the instance as it was before it became READY.
    expect((await clusterInstances(stack, clusterId, 'svc')).map((i) => ({ id: i.id, ready: i.state === 'READY' }))).toEqual([{ id: instanceId, ready: false }]);

    // The store recovers. Once the read model has the service's summary and a later run runs, look at what a user sees.
    publishFault.cluster = undefined;
    publishFault.refusing = false;
    await waitFor(
      async () => {
        const views = await store.getServiceViews(clusterId);
        return views.some((v) => v.service === 'svc' && v.summary.ready === 1) && (await service.describe()).runId !== first.runId;
      },
      60_000,
      "the service's summary in the read model and a later run",
    );
    const published = (await clusterInstances(stack, clusterId, 'svc')).map((i) => ({ id: i.id, state: i.state }));
    expect({ handedOverWhileFailing, published }).toEqual({ handedOverWhileFailing: false, published: [{ id: instanceId, state: 'READY' }] });
    // Meanwhile it kept trying the write (every 5 s).
    expect(retriesWhileFailing).toBeGreaterThanOrEqual(2);

    // The first run handed over normally once the write succeeded; the later run keeps the instance in the read model.
    expect((await stack.client.workflow.getHandle(service.workflowId, first.runId).describe()).status.name).toBe('CONTINUED_AS_NEW');
    expect((await service.describe()).status.name).toBe('RUNNING');
    expect((await clusterInstances(stack, clusterId, 'svc')).map((i) => ({ id: i.id, state: i.state }))).toEqual([{ id: instanceId, state: 'READY' }]);
    expect(await waitForState(stack, clusterId, 'READY')).toMatchObject({ state: 'READY' });

    await cluster.signal(teardownSignal, { reason: 'end of test' });
    expect(((await cluster.result()) as ClusterView).state).toBe('TERMINATED');
    expect(stack.worker!.sim!.count({ cluster: clusterId })).toBe(0);
  }, 180_000);
});
