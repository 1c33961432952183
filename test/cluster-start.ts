/**
 * Starting a cluster workflow the way the API does, for tests and benches that need tuning the
 * API never sets. Apart from test/harness.ts, which installs the Temporal runtime when it is
 * imported: a bench that installs its own can import this.
 */
import type { Client } from '@temporalio/client';
import type { ClusterDefinition } from '../model/definition.js';
import type { Store } from '../store/index.js';
import { SA_CLUSTER_ID, SA_STATE, TASK_QUEUE, clusterWorkflowId, type ClusterInput } from '../workflows/messages.js';

/** Starts a cluster workflow as the API would (a cluster row on the sim cloud, then the workflow), with tuning the API never sets. */
export async function startClusterWorkflow(client: Client, store: Store, clusterId: string, definition: ClusterDefinition, tuning?: ClusterInput['tuning']) {
  const def = await store.createDefinition({ name: clusterId, definition });
  await store.createCluster({ id: clusterId, name: clusterId, definitionId: def.id, cloud: 'sim' });
  const input: ClusterInput = { clusterId, name: clusterId, definitionId: def.id, definition, cloud: 'sim', tuning };
  return client.workflow.start('ClusterWorkflow', {
    taskQueue: TASK_QUEUE,
    workflowId: clusterWorkflowId(clusterId),
    args: [input],
    typedSearchAttributes: [
      { key: SA_CLUSTER_ID, value: clusterId },
      { key: SA_STATE, value: 'PENDING' },
    ],
  });
}
