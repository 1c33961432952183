/**
 * Wires a cloudgate worker: clouds (the `sim` cloud for now), the store's cloud
 * registrations, activities and the Temporal worker. `workers/main.ts` runs it as a process;
 * tests and the benchmark run it in-process.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import type { Logger } from 'pino';
import { createActivities } from '../activities/index.js';
import { createCloudRegistry } from '../clouds/registry.js';
import { createSimCloud, type SimCloud, type SimRule } from '../clouds/sim.js';
import { publicUrlOf, temporalAddressOf, type Config } from '../model/config.js';
import { openSqliteStore } from '../store/index.js';
import { loadTokenSecret } from '../store/secret.js';

export const WORKFLOWS_PATH = fileURLToPath(new URL('../workflows/index.ts', import.meta.url));

export interface StartWorkerOptions {
  /** Reuse a bundle built once (tests, benchmark); default: bundle `workflows/index.ts`. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  simRules?: SimRule[];
  logger?: Logger;
  /** Extra worker options (tuning). */
  tuning?: Partial<Pick<WorkerOptions, 'maxConcurrentActivityTaskExecutions' | 'maxConcurrentWorkflowTaskExecutions' | 'maxCachedWorkflows'>>;
}

export interface RunningWorker {
  worker: Worker;
  sim: SimCloud;
  /** Resolves when the worker has shut down. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export async function startWorker(config: Config, opts: StartWorkerOptions = {}): Promise<RunningWorker> {
  const store = openSqliteStore(path.join(config.dataDir, 'cloudgate.sqlite'));
  const sim = createSimCloud({ name: 'sim', file: path.join(config.dataDir, 'sim-cloud.sqlite'), ...config.sim, rules: opts.simRules });
  const clouds = createCloudRegistry([sim]);
  for (const cloud of clouds.list()) {
    store.upsertCloud({ name: cloud.name, kind: cloud.kind, offerings: await cloud.listOfferings() });
  }
  const connection = await NativeConnection.connect({ address: temporalAddressOf(config) });
  const worker = await Worker.create({
    connection,
    namespace: config.namespace,
    taskQueue: config.taskQueue,
    ...(opts.workflowBundle ? { workflowBundle: opts.workflowBundle } : { workflowsPath: WORKFLOWS_PATH }),
    activities: createActivities({
      clouds,
      publicUrl: publicUrlOf(config),
      tokenSecret: loadTokenSecret(config),
      tokenTtlSeconds: config.tokenTtlSeconds,
    }),
    maxConcurrentActivityTaskExecutions: 200,
    ...opts.tuning,
  });
  sim.start();
  const done = worker.run().finally(async () => {
    await sim.stop();
    await clouds.close();
    await connection.close();
    store.close();
  });
  return {
    worker,
    sim,
    done,
    async shutdown() {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await done;
    },
  };
}
