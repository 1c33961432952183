/**
 * Wires a cloudgate worker: clouds, the store's cloud registrations (the registry's static
 * part; offerings come from the cloud catalogue schedule it keeps), activities and the
 * Temporal worker. `workers/main.ts` runs it as a process;
 * tests and the benchmark run it in-process.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection, ScheduleAlreadyRunning, ScheduleOverlapPolicy, type ScheduleOptions } from '@temporalio/client';
import { msToNumber } from '@temporalio/common';
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import type { Logger } from 'pino';
import { createCatalogueActivities, staticCloudRecord } from '../activities/catalogue.js';
import { createActivities } from '../activities/index.js';
import { createWindowActivities } from '../activities/windows.js';
import { createCloudRegistry } from '../clouds/registry.js';
import type { SimCloud, SimRule } from '../clouds/sim.js';
import { createSimJobQueue, serveSimJobQueue, type SimJobQueue } from '../clouds/sim-queue.js';
import type { CloudsFile } from '../model/clouds-config.js';
import { publicUrlOf, temporalAddressOf, type Config } from '../model/config.js';
import { AesGcmPayloadCodec, payloadDataConverter } from '../model/payload-codec.js';
import { openStore, type Store } from '../store/index.js';
import { loadMetricsToken, loadPayloadKeys, loadTokenSecret } from '../store/secret.js';
import { CLOUD_CATALOGUE_INTERVAL, CLOUD_CATALOGUE_SCHEDULE_ID, CLOUD_CATALOGUE_SCHEDULED_WORKFLOW_ID } from '../workflows/catalogue.js';
import { buildClouds, liveQuotas, loadCloudsFile } from './clouds.js';
import { createWorkerMetrics, serveWorkerMetrics, type ServedWorkerMetrics, type WorkerMetrics } from './metrics.js';

/**
 * The workflows' entry for the bundler: `workflows/index.ts` beside this source under tsx and
 * jest, `index.js` beside the compiled `dist/workers/worker.js` (npm run build). The image runs
 * a bundle made once at build time instead (`CLOUDGATE_WORKFLOW_BUNDLE`, workers/bundle-workflows.ts).
 */
export const WORKFLOWS_PATH = fileURLToPath(new URL(`../workflows/index${path.extname(fileURLToPath(import.meta.url))}`, import.meta.url));
/** Failure messages into encrypted payloads; bundle it into the workflow code too (`bundleWorkflowCode({failureConverterPath})`). */
export const FAILURE_CONVERTER_PATH = fileURLToPath(new URL('./failure-converter.cjs', import.meta.url));

type WebpackConfig = Parameters<NonNullable<NonNullable<WorkerOptions['bundlerOptions']>['webpackConfigHook']>>[0];
/** What the bundler compiles the workflows' TypeScript for: the worker's Node, as tsconfig.json's target (`npm run build` does the same). */
const WORKFLOW_TARGET = 'es2022';
/**
 * The SDK's bundler compiles TypeScript for es2017, which turns every object spread into helper
 * calls: a 10,000-instance service's workflow spent 5 of its 19 busy seconds in them. Sets the
 * swc loader's target to {@link WORKFLOW_TARGET}; a bundler without that loader is an error
 * (an SDK upgrade changed it), not a silently slower worker.
 */
export function compileForNode(config: WebpackConfig): WebpackConfig {
  const jsc = (config.module?.rules ?? []).flatMap((rule) => {
    const use = rule && typeof rule === 'object' ? rule.use : undefined;
    const swc = use && typeof use === 'object' && !Array.isArray(use) && typeof use.loader === 'string' && use.loader.includes('swc-loader');
    const options = swc ? (use.options as { jsc?: { target?: string } } | undefined) : undefined;
    return options?.jsc ? [options.jsc] : [];
  });
  if (jsc.length === 0) throw new Error('the workflow bundler has no swc-loader with jsc options any more: see compileForNode in workers/worker.ts');
  for (const j of jsc) j.target = WORKFLOW_TARGET;
  return config;
}
/** How every bundle of cloudgate's workflows is made: the worker's own, the image's (bundle-workflows.ts), the tests' and the benchmark's. */
export const WORKFLOW_BUNDLE_OPTIONS = { workflowsPath: WORKFLOWS_PATH, failureConverterPath: FAILURE_CONVERTER_PATH, webpackConfigHook: compileForNode };

export interface StartWorkerOptions {
  /** Reuse a bundle built once (tests, benchmark); default: `config.workflowBundle`, else bundle {@link WORKFLOWS_PATH}. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  simRules?: SimRule[];
  logger?: Logger;
  /**
   * The Temporal SDK core's own Prometheus endpoint (`http://127.0.0.1:<port>/metrics`, set up by
   * `Runtime.install` in workers/main.ts): appended to the worker's `/metrics`. Unset: only cloudgate's.
   */
  sdkMetricsUrl?: string;
  /** Extra worker options (tuning). */
  tuning?: Partial<Pick<WorkerOptions, 'maxConcurrentActivityTaskExecutions' | 'maxConcurrentWorkflowTaskExecutions' | 'maxCachedWorkflows'>>;
}

export interface RunningWorker {
  worker: Worker;
  /** The (first) simulated cloud, when the registry has one. */
  sim?: SimCloud;
  /** Every simulated cloud of the registry, by name. */
  sims: Map<string, SimCloud>;
  /** The sims' job queue and where it is served (with `config.sim.queuePort` and a sim cloud). */
  simQueue?: { url: string; queue: SimJobQueue };
  /**
   * Resolves once the cloud catalogue schedule exists and was triggered (the worker polls
   * meanwhile; the refresh itself runs as a workflow). Never rejects: a failure is logged.
   */
  catalogueScheduled: Promise<void>;
  /** Where the worker serves `/metrics` (with `config.metrics.workerPort`). */
  metricsUrl?: string;
  /** Resolves when the worker has shut down. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

export async function startWorker(config: Config, opts: StartWorkerOptions = {}): Promise<RunningWorker> {
  // First, before anything is opened: a port in use stops the worker (its operator asked for metrics there).
  const metrics = await startWorkerMetrics(config, opts);
  // The API's store: PostgreSQL when CLOUDGATE_DATABASE_URL is set, else SQLite in the data folder.
  const store = await openStore(config);
  const registryFile = loadCloudsFile(config.cloudsFile);
  metrics?.knowClouds(registryFile.clouds.map((c) => c.name));
  const codec = new AesGcmPayloadCodec(loadPayloadKeys(config));
  const { adapters, sim, sims } = await buildClouds(registryFile, config, opts.simRules);
  // Quotas follow the registry file without a restart (the ledger checks them at every create).
  const quotaOf = liveQuotas(config.cloudsFile, registryFile, (message) => opts.logger?.warn({ file: config.cloudsFile }, message));
  const clouds = createCloudRegistry(adapters);
  // The registry's static part only: no cloud is called and no credential read here (the catalogue activity does both).
  await publishRegistry(store, registryFile);
  const simQueue = await startSimJobQueue(config, sims, opts.logger);
  const connection = await NativeConnection.connect({ address: temporalAddressOf(config) });
  // The worker's own client: the catalogue schedule below and the window activities (a cluster's schedules) use it.
  const temporal = temporalClient(config, codec);
  const worker = await Worker.create({
    connection,
    namespace: config.namespace,
    taskQueue: config.taskQueue,
    // Payloads (failure messages included) are encrypted before they reach Temporal (model/payload-codec.ts).
    dataConverter: { payloadCodecs: [codec], failureConverterPath: FAILURE_CONVERTER_PATH },
    ...(opts.workflowBundle
      ? { workflowBundle: opts.workflowBundle }
      : config.workflowBundle
        ? { workflowBundle: { codePath: config.workflowBundle } }
        : { workflowsPath: WORKFLOW_BUNDLE_OPTIONS.workflowsPath, bundlerOptions: { webpackConfigHook: WORKFLOW_BUNDLE_OPTIONS.webpackConfigHook } }),
    activities: {
      ...createActivities({
        clouds,
        publicUrl: publicUrlOf(config),
        tokenSecret: loadTokenSecret(config),
        tokenMarginSeconds: config.tokenMarginSeconds,
        contexts: store,
        cvmfs: config.cvmfs,
        readModel: store,
        capacity: {
          ledger: store,
          quotaOf,
          flavorsOf: async (cloud) => (await store.getCloud(cloud))?.offerings ?? [],
        },
        // The sim's job queue listens on loopback: its load URLs are read (only its host:port is added).
        load: { allowedHosts: [...config.load.allowedHosts, ...(simQueue ? [simQueue.host] : [])] },
        ...(metrics && { metrics: metrics.activities }),
      }),
      ...createCatalogueActivities({ clouds, registry: registryFile.clouds, store, quotaOf }),
      ...createWindowActivities({ client: temporal.get, taskQueue: config.taskQueue }),
    },
    maxConcurrentActivityTaskExecutions: 200,
    ...opts.tuning,
  });
  for (const s of sims.values()) s.start();
  const running = worker.run();
  // The schedule is made beside the polling worker, which runs the triggered refresh itself.
  const schedule = ensureCatalogueSchedule(config, temporal.get, opts.logger);
  const done = running.finally(async () => {
    await schedule;
    await temporal.close();
    await simQueue?.close();
    await Promise.all([...sims.values()].map((s) => s.stop()));
    await clouds.close();
    await connection.close();
    await store.close();
    await metrics?.served.close();
  });
  return {
    worker,
    sim,
    sims,
    ...(simQueue && { simQueue: { url: simQueue.url, queue: simQueue.queue } }),
    ...(metrics && { metricsUrl: metrics.served.url }),
    catalogueScheduled: schedule,
    done,
    async shutdown() {
      if (worker.getState() === 'RUNNING') worker.shutdown();
      await done;
    },
  };
}

/**
 * The worker's `/metrics` (workers/metrics.ts) at `config.metrics.workerHost:workerPort`, with
 * the scrape token (`loadMetricsToken`) and the SDK core's metrics appended; undefined without
 * a port.
 */
async function startWorkerMetrics(config: Config, opts: StartWorkerOptions): Promise<(WorkerMetrics & { served: ServedWorkerMetrics }) | undefined> {
  if (config.metrics.workerPort === undefined) return undefined;
  const metrics = createWorkerMetrics({ processMetrics: true });
  const served = await serveWorkerMetrics({
    registry: metrics.registry,
    host: config.metrics.workerHost,
    port: config.metrics.workerPort,
    token: loadMetricsToken(config),
    sdkMetricsUrl: opts.sdkMetricsUrl,
    logger: opts.logger,
  });
  return { ...metrics, served };
}

/**
 * The sims' job queue (clouds/sim-queue.ts) at `config.sim.queuePort` on 127.0.0.1, when the
 * registry has a sim cloud; state in `<dataDir>/sim-queue.sqlite`. A port in use is logged and
 * the worker runs on without it (the queue is a demo's and the tests' fake, never needed).
 */
async function startSimJobQueue(
  config: Config,
  sims: Map<string, SimCloud>,
  logger?: Logger,
): Promise<{ url: string; host: string; queue: SimJobQueue; close(): Promise<void> } | undefined> {
  if (config.sim.queuePort === undefined || sims.size === 0) return undefined;
  const queue = createSimJobQueue({ file: path.join(config.dataDir, 'sim-queue.sqlite'), clouds: [...sims.values()] });
  try {
    const served = await serveSimJobQueue(queue, { port: config.sim.queuePort });
    queue.start();
    logger?.info({ url: `${served.url}/sim/queues/<clusterId>/<service>` }, 'sim job queue listening');
    return {
      ...served,
      queue,
      async close() {
        await served.close();
        queue.close();
      },
    };
  } catch (err) {
    queue.close();
    logger?.warn({ err, port: config.sim.queuePort }, 'sim job queue not started');
    if (!logger) console.error(`cloudgate worker: sim job queue not started on port ${config.sim.queuePort}:`, err);
    return undefined;
  }
}

/**
 * Writes what the registry file says of each cloud to the store (kind, endpoint, credential
 * references, images, quota: `publicCloudInfo`), keeping the offerings listed before, and
 * forgets clouds the file no longer names. No cloud is called: the catalogue workflow lists
 * offerings (workflows/catalogue.ts), so a cloud that is down does not hold the worker up.
 */
export async function publishRegistry(store: Store, file: CloudsFile): Promise<void> {
  const known = new Set(file.clouds.map((c) => c.name));
  for (const stale of await store.listClouds()) if (!known.has(stale.name)) await store.deleteCloud(stale.name);
  for (const c of file.clouds) await store.upsertCloud(staticCloudRecord(c, (await store.getCloud(c.name))?.offerings ?? []));
}

/** What the catalogue schedule is for, in the Temporal UI (its note) and its memo. */
export const CLOUD_CATALOGUE_NOTE =
  `Refreshes the cloud catalogue every ${CLOUD_CATALOGUE_INTERVAL}: lists each cloud's offerings through its adapter ` +
  '(an activity: credentials are read there) and writes them with the registry\'s images and quota to the store, ' +
  'which GET /v1/clouds, submissions and placement read. Created by every cloudgate worker at start; ' +
  'POST /v1/clouds/{id}/refresh runs the same workflow for one cloud.';

/** The schedule every worker keeps: its spec and action (compared with the server's copy at start). */
export function catalogueScheduleOptions(config: Pick<Config, 'taskQueue'>): ScheduleOptions {
  return {
    scheduleId: CLOUD_CATALOGUE_SCHEDULE_ID,
    spec: { intervals: [{ every: CLOUD_CATALOGUE_INTERVAL }] },
    action: {
      type: 'startWorkflow',
      workflowType: 'CloudCatalogueWorkflow',
      workflowId: CLOUD_CATALOGUE_SCHEDULED_WORKFLOW_ID,
      taskQueue: config.taskQueue,
      args: [{}],
      // A run stuck on a hung worker must not skip the next ones for ever (overlap: skip).
      workflowExecutionTimeout: '4 minutes',
      staticSummary: 'refresh the offerings of every cloud',
    },
    policies: { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: '1 minute' },
    memo: { description: CLOUD_CATALOGUE_NOTE },
    state: { note: CLOUD_CATALOGUE_NOTE },
  };
}

/**
 * The worker's Temporal client, connected on first use (the catalogue schedule at start, the
 * window activities), with the worker's payload codec so what it writes (schedule arguments
 * and memos) reads like everything else. A failed connect is tried again at the next use.
 */
function temporalClient(config: Config, codec: AesGcmPayloadCodec): { get(): Promise<Client>; close(): Promise<void> } {
  let client: Promise<Client> | undefined;
  return {
    get() {
      client ??= Connection.connect({ address: temporalAddressOf(config) }).then(
        (connection) => new Client({ connection, namespace: config.namespace, dataConverter: payloadDataConverter(codec) }),
        (err: unknown) => {
          client = undefined;
          throw err;
        },
      );
      return client;
    },
    async close() {
      const c = await client?.catch(() => undefined);
      await c?.connection.close();
    },
  };
}

/**
 * Creates the catalogue schedule, or brings an existing one's spec and action up to date
 * (several workers start it alike: an AlreadyExists answer is the normal case), then triggers
 * it once so a fresh stack has offerings within seconds. Runs beside the polling worker; a
 * failure is logged (the schedule is tried again at the next start; `POST .../refresh` works
 * without it). Resolves when done; never rejects.
 */
function ensureCatalogueSchedule(config: Config, temporal: () => Promise<Client>, logger?: Logger): Promise<void> {
  return (async () => {
    const client = await temporal();
    const want = catalogueScheduleOptions(config);
    const handle = client.schedule.getHandle(CLOUD_CATALOGUE_SCHEDULE_ID);
    try {
      await client.schedule.create(want);
      logger?.info({ scheduleId: CLOUD_CATALOGUE_SCHEDULE_ID, every: CLOUD_CATALOGUE_INTERVAL }, 'created the cloud catalogue schedule');
    } catch (err) {
      if (!(err instanceof ScheduleAlreadyRunning)) throw err;
      const have = await handle.describe();
      const action = have.action;
      const same =
        action.type === 'startWorkflow' &&
        action.workflowType === want.action.workflowType &&
        action.taskQueue === want.action.taskQueue &&
        action.workflowId === want.action.workflowId &&
        JSON.stringify(action.args ?? []) === JSON.stringify(want.action.args) &&
        have.spec.intervals?.length === 1 &&
        have.spec.intervals[0].every === msToNumber(CLOUD_CATALOGUE_INTERVAL) &&
        have.state.note === want.state?.note;
      if (!same) {
        await handle.update((prev) => ({ ...prev, spec: want.spec, action: want.action, policies: { ...prev.policies, ...want.policies }, state: { ...prev.state, note: want.state?.note } }));
        logger?.info({ scheduleId: CLOUD_CATALOGUE_SCHEDULE_ID }, 'updated the cloud catalogue schedule');
      }
    }
    // Now, not in five minutes; alongside a run in progress if there is one (a previous worker's may be stuck).
    // At the schedule's own mark the trigger makes no run: the server names runs by the second, and the
    // scheduled run of that second, which does the same, already has the name.
    await handle.trigger(ScheduleOverlapPolicy.ALLOW_ALL);
  })().catch((err: unknown) => {
    logger?.error({ err, scheduleId: CLOUD_CATALOGUE_SCHEDULE_ID }, 'could not create or trigger the cloud catalogue schedule');
    if (!logger) console.error(`cloudgate worker: could not create or trigger the ${CLOUD_CATALOGUE_SCHEDULE_ID} schedule:`, err);
  });
}
