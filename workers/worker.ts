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
import type { CloudAdapter } from '../clouds/contract.js';
import type { SimCloud, SimRule } from '../clouds/sim.js';
import { publicCloudInfo, type CloudsFile } from '../model/clouds-config.js';
import { publicUrlOf, temporalAddressOf, type Config } from '../model/config.js';
import { AesGcmPayloadCodec } from '../model/payload-codec.js';
import { openSqliteStore, type Store } from '../store/index.js';
import { loadPayloadKeys, loadTokenSecret } from '../store/secret.js';
import { buildClouds, loadCloudsFile } from './clouds.js';

export const WORKFLOWS_PATH = fileURLToPath(new URL('../workflows/index.ts', import.meta.url));
/** Failure messages into encrypted payloads; bundle it into the workflow code too (`bundleWorkflowCode({failureConverterPath})`). */
export const FAILURE_CONVERTER_PATH = fileURLToPath(new URL('./failure-converter.cjs', import.meta.url));

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
  /** The simulated cloud, when the registry has one. */
  sim?: SimCloud;
  /** Resolves when the worker has shut down. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export async function startWorker(config: Config, opts: StartWorkerOptions = {}): Promise<RunningWorker> {
  const store = openSqliteStore(path.join(config.dataDir, 'cloudgate.sqlite'));
  const registryFile = loadCloudsFile(config.cloudsFile);
  const { adapters, sim } = await buildClouds(registryFile, config, opts.simRules);
  const clouds = createCloudRegistry(adapters);
  const registration = registerClouds(store, registryFile, clouds, opts.logger);
  await registration.first;
  const connection = await NativeConnection.connect({ address: temporalAddressOf(config) });
  const worker = await Worker.create({
    connection,
    namespace: config.namespace,
    taskQueue: config.taskQueue,
    // Payloads (failure messages included) are encrypted before they reach Temporal (model/payload-codec.ts).
    dataConverter: { payloadCodecs: [new AesGcmPayloadCodec(loadPayloadKeys(config))], failureConverterPath: FAILURE_CONVERTER_PATH },
    ...(opts.workflowBundle ? { workflowBundle: opts.workflowBundle } : { workflowsPath: WORKFLOWS_PATH }),
    activities: createActivities({
      clouds,
      publicUrl: publicUrlOf(config),
      tokenSecret: loadTokenSecret(config),
      tokenMarginSeconds: config.tokenMarginSeconds,
      contexts: store,
      cvmfs: config.cvmfs,
      readModel: store,
    }),
    maxConcurrentActivityTaskExecutions: 200,
    ...opts.tuning,
  });
  sim?.start();
  const done = worker.run().finally(async () => {
    registration.stop();
    await sim?.stop();
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

/** How long one cloud may take to list its offerings at startup before the worker goes on without. */
const REGISTER_TIMEOUT_MS = 15_000;
const REGISTER_RETRY_MS = 60_000;

/**
 * Publishes the registry to the store (what `GET /v1/clouds` shows and what submissions are
 * checked against): each cloud with its offerings, endpoint, credential references and the
 * image names it offers (`publicCloudInfo`).
 * A cloud that cannot list its offerings yet is registered without any and tried again
 * every minute, so one unreachable cloud does not keep the worker from serving the others.
 */
function registerClouds(
  store: Store,
  file: CloudsFile,
  registry: { get(name: string): CloudAdapter },
  logger?: Logger,
): { first: Promise<void>; stop(): void } {
  const known = new Set(file.clouds.map((c) => c.name));
  for (const stale of store.listClouds()) if (!known.has(stale.name)) store.deleteCloud(stale.name);
  const pending = new Set(file.clouds.map((c) => c.name));
  const attempt = async () => {
    await Promise.all(
      file.clouds
        .filter((c) => pending.has(c.name))
        .map(async (c) => {
          const info = { name: c.name, kind: c.kind, ...publicCloudInfo(c) };
          let timer: NodeJS.Timeout | undefined;
          try {
            const offerings = await Promise.race([
              registry.get(c.name).listOfferings(),
              new Promise<never>((_, reject) => {
                timer = setTimeout(() => reject(new Error(`no answer within ${REGISTER_TIMEOUT_MS} ms`)), REGISTER_TIMEOUT_MS);
              }),
            ]);
            store.upsertCloud({ ...info, offerings });
            pending.delete(c.name);
          } catch (err) {
            // Keep the offerings listed before; endpoint, credential references and images are the file's now.
            store.upsertCloud({ ...info, offerings: store.getCloud(c.name)?.offerings ?? [] });
            logger?.warn({ cloud: c.name, err: err instanceof Error ? err.message : String(err) }, 'cannot list offerings yet; will retry');
          } finally {
            clearTimeout(timer);
          }
        }),
    );
  };
  const first = attempt();
  const interval = setInterval(() => {
    if (pending.size > 0) void attempt();
  }, REGISTER_RETRY_MS);
  interval.unref();
  return { first, stop: () => clearInterval(interval) };
}
