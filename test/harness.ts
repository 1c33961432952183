/**
 * Test harness: a real Temporal dev server (the CLI's, on a temp SQLite file), the real
 * worker and the real API, all on 127.0.0.1 with free ports. Suites use `startStack()`
 * and talk to the API over HTTP like a user does.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { stringify as stringifyYaml } from 'yaml';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import type { DataConverter } from '@temporalio/common';
import type protos from '@temporalio/proto';
import { DefaultLogger, Runtime, bundleWorkflowCode, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { apiLogger, startApi } from '../api/main.js';
import type { SimRule } from '../clouds/sim.js';
import type { CloudConfigInput } from '../model/clouds-config.js';
import { ConfigSchema, type Config } from '../model/config.js';
import { payloadDataConverter } from '../model/payload-codec.js';
import { loadPayloadKeys } from '../store/secret.js';
import type { ClusterDefinitionInput } from '../model/definition.js';
import type { PublishedInstance } from '../model/read-model.js';
import { extractPhoneHome } from '../model/user-data.js';
import { freePort, startDevServer, type DevServer } from '../workers/dev-server.js';
import { startWorker, WORKFLOW_BUNDLE_OPTIONS, type RunningWorker } from '../workers/worker.js';
import { SA_CLUSTER_ID } from '../workflows/messages.js';
import { useHistoryKeys } from './history-text.js';

// Workflow logs (state changes, replacements) are for operators, not for test output.
try {
  Runtime.install({ logger: new DefaultLogger('ERROR') });
} catch {
  // already installed by an earlier import in this jest worker
}

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The `cloudgate` command as users run it: the compiled JavaScript (`npm run build`). */
export const CLI_BIN = path.join(ROOT, 'dist', 'cli', 'main.js');

/**
 * The environment the command runs in under test: this process's without any `CLOUDGATE_*`,
 * NODE_OPTIONS (jest's) or XDG_CONFIG_HOME, with HOME in the test's folder, plus `env`.
 */
export function cliEnv(home: string, env: Record<string, string> = {}): NodeJS.ProcessEnv {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CLOUDGATE_') && k !== 'NODE_OPTIONS' && k !== 'XDG_CONFIG_HOME'));
  return { ...base, HOME: home, ...env };
}

let bundlePromise: Promise<WorkflowBundleWithSourceMap> | undefined;
/** The workflow bundle, built once per test file. */
export function workflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  bundlePromise ??= bundleWorkflowCode({ ...WORKFLOW_BUNDLE_OPTIONS, logger: quietLogger });
  return bundlePromise;
}
const quietLogger = { log() {}, trace() {}, debug() {}, info() {}, warn() {}, error() {} };

export interface StackOptions {
  sim?: Partial<Config['sim']>;
  simRules?: SimRule[];
  /** Run the worker as a separate process (so it can be killed with SIGKILL). */
  workerProcess?: boolean;
  /** The cloud registry (written to a YAML file the worker reads); default: only `sim`. */
  clouds?: CloudConfigInput[];
  /** Extra environment for a worker process (credentials the registry references). */
  env?: Record<string, string>;
  /** Stratum-1 URL templates the gateway checks repositories on (default: the config's CERN list). */
  cvmfsServers?: string[];
  /**
   * Hosts (`host:port`) the gateway may fetch stratum-1 files from although they are loopback
   * (`CLOUDGATE_CVMFS_ALLOWED_HOSTS`); the hosts of `cvmfsServers` are always added.
   */
  cvmfsAllowedHosts?: string[];
  /** Who may call the API: an OIDC issuer and its claims (`config.auth`). */
  auth?: Partial<Config['auth']>;
  /** The API's port, when a peer must know its URL before the stack starts (an OIDC client's redirect URI); default a free one. */
  apiPort?: number;
  /** Write the worker process's and the API's logs (info level) to worker.log and api.log in the data folder. */
  captureLogs?: boolean;
  /** The site-wide default quota (`config.quota`); default the config's. */
  quota?: Config['quota'];
  /** The site-wide cap of a cluster's lifetime (`config.maxLifetimeSeconds`); default the config's. */
  maxLifetimeSeconds?: number;
}

export interface Stack {
  config: Config;
  dataDir: string;
  /** The API's first admin token (`<dataDir>/admin-token`); {@link Stack.http} sends it unless told otherwise. */
  adminToken: string;
  temporal: DevServer;
  client: Client;
  /** Where the worker serves the sim's job queue (`POST /sim/queues/<cluster>/<service>/jobs`, `GET …/load`). */
  simQueueUrl: string;
  /** The payload codec of the client and the worker (replay needs it to read recorded histories). */
  dataConverter: DataConverter;
  api: { url: string; close(): Promise<void> };
  worker?: RunningWorker;
  workerProc?: ChildProcess;
  /** Starts (another) worker in-process or as a process, per the stack's options. */
  startWorker(): Promise<void>;
  /** SIGKILL the worker process. */
  killWorker(): Promise<void>;
  /** Stop and start the Temporal dev server on the same SQLite file. */
  restartTemporal(): Promise<void>;
  /** Calls the API as the admin, or with the `Authorization` header given (`''`: none). */
  http<T = any>(method: string, url: string, body?: unknown, headers?: Record<string, string>): Promise<{ status: number; body: T; headers: Headers }>;
  /** Stops everything; the data folder is removed unless `keepDataDir`. */
  stop(opts?: { keepDataDir?: boolean }): Promise<void>;
}

/** What the helpers below need of a stack: its API, called as the admin, and a Temporal client (a {@link Stack}, or test/topology.ts's replicas behind their proxy). */
export type ApiClient = Pick<Stack, 'http' | 'client'>;

export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'cloudgate-test-'));
  const temporalPort = await freePort();
  const dbFile = path.join(dataDir, 'temporal.sqlite');
  let temporal = await startDevServer({ dbFile, port: temporalPort });
  const apiPort = opts.apiPort ?? (await freePort());
  // The sim's job queue (clouds/sim-queue.ts): a fixed port, so a restarted worker process serves it at the same URL.
  const simQueuePort = await freePort();
  let cloudsFile: string | undefined;
  if (opts.clouds) {
    cloudsFile = path.join(dataDir, 'clouds.yaml');
    writeFileSync(cloudsFile, stringifyYaml({ clouds: opts.clouds }));
  }
  const config = ConfigSchema.parse({
    cloudsFile,
    dataDir,
    apiPort,
    temporalAddress: temporal.address,
    tokenSecret: 'test-secret-0123456789abcdef',
    logLevel: 'warn',
    sim: { bootMs: 300, readyDelayMs: 200, seed: 'test', queuePort: simQueuePort, ...opts.sim },
    cvmfs: {
      ...(opts.cvmfsServers && { servers: opts.cvmfsServers.join(';') }),
      // The test stratum-1s listen on 127.0.0.1, which the address policy refuses unless allowed.
      allowedHosts: [...(opts.cvmfsServers ?? []).map((u) => new URL(u.replace(/@fqrn@|@org@/g, 'x')).host), ...(opts.cvmfsAllowedHosts ?? [])],
    },
    ...(opts.auth && { auth: opts.auth }),
    ...(opts.quota && { quota: opts.quota }),
    ...(opts.maxLifetimeSeconds !== undefined && { maxLifetimeSeconds: opts.maxLifetimeSeconds }),
  });
  const connection = await Connection.connect({ address: temporal.address });
  // The same payload keys as the API and the worker (<dataDir>/payload-keys), so the client reads what they wrote.
  const keyring = loadPayloadKeys(config);
  useHistoryKeys(keyring);
  const dataConverter = payloadDataConverter(keyring);
  const client = new Client({ connection, dataConverter });
  const api = await startApi(
    config,
    opts.captureLogs ? { logger: apiLogger({ logLevel: 'info' }, pino.destination({ dest: path.join(dataDir, 'api.log'), sync: true })) } : {},
  );
  /**
   * Ready when the worker polls the task queue and has registered its clouds with their
   * offerings: the cloud catalogue schedule's run the worker triggers at start lists them
   * (workflows/catalogue.ts). Suites submit clusters right after, and submissions are checked
   * against offerings. A cloud that did not answer that run (a suite's unreachable cloud)
   * does not hold the stack up once a catalogue run has completed since the worker started.
   */
  const workerReady = async (since: Date, timeoutMs: number, what: string) => {
    // Closed since, not started since: the run the worker triggers at start is not made when the schedule
    // started one in the same second (the server names runs by the second: the 5-minute mark), and that
    // run, started before, is the one this worker completes.
    const sinceIso = since.toISOString();
    const catalogueRuns = `WorkflowType = 'CloudCatalogueWorkflow' AND (StartTime >= '${sinceIso}' OR CloseTime >= '${sinceIso}' OR ExecutionStatus = 'Running')`;
    try {
      await waitFor(
        async () => {
          const clouds = await stack.http('GET', '/v1/clouds');
          const want = (opts.clouds ?? [{ name: 'sim' }]).map((c) => c.name);
          const listed = want.map((n) => (clouds.body.items as any[] | undefined)?.find((c) => c.name === n));
          if (listed.some((c) => c === undefined)) return false;
          const tq = await client.workflowService.describeTaskQueue({ namespace: config.namespace, taskQueue: { name: config.taskQueue }, taskQueueType: 1 });
          if ((tq.pollers ?? []).length === 0) return false;
          if (listed.every((c) => c.offerings.length > 0)) return true;
          const completed = `WorkflowType = 'CloudCatalogueWorkflow' AND ExecutionStatus = 'Completed' AND CloseTime >= '${sinceIso}'`;
          for await (const _run of client.workflow.list({ query: completed, pageSize: 1 })) return true;
          return false;
        },
        timeoutMs,
        `${what} to poll and list its clouds' offerings`,
      );
    } catch (err) {
      // Say what the catalogue runs since then did (which one waits, on what), so a failure explains itself.
      const runs: string[] = [];
      try {
        for await (const run of client.workflow.list({ query: catalogueRuns, pageSize: 10 })) {
          const { raw } = await client.workflow.getHandle(run.workflowId, run.runId).describe();
          const pending = (raw.pendingActivities ?? []).map((a) => `${a.activityType?.name} state ${a.state} attempt ${a.attempt}${a.lastFailure?.message ? ` (${a.lastFailure.message})` : ''}`);
          runs.push(`${run.workflowId} ${run.status.name} started ${run.startTime.toISOString()}${pending.length ? `; pending: ${pending.join(', ')}` : ''}`);
          if (runs.length >= 10) break;
        }
      } catch (listErr) {
        runs.push(`(could not list them: ${(listErr as Error).message})`);
      }
      throw new Error(`${(err as Error).message}; catalogue runs started or closed since ${sinceIso}, or running: ${runs.length ? runs.join(' | ') : 'none'}`, { cause: err });
    }
  };
  const stack: Stack = {
    config,
    dataDir,
    adminToken: readFileSync(api.adminTokenFile, 'utf8').trim(),
    temporal,
    client,
    simQueueUrl: `http://127.0.0.1:${simQueuePort}`,
    dataConverter,
    api,
    async startWorker() {
      const since = new Date();
      if (opts.workerProcess) {
        const env = {
          ...process.env,
          NODE_OPTIONS: '',
          CLOUDGATE_DATA_DIR: dataDir,
          CLOUDGATE_API_PORT: String(apiPort),
          TEMPORAL_ADDRESS: temporal.address,
          CLOUDGATE_TOKEN_SECRET: config.tokenSecret,
          CLOUDGATE_LOG_LEVEL: opts.captureLogs ? 'info' : 'warn',
          SIM_BOOT_MS: String(config.sim.bootMs),
          SIM_READY_DELAY_MS: String(config.sim.readyDelayMs),
          SIM_SEED: config.sim.seed,
          SIM_QUEUE_PORT: String(config.sim.queuePort ?? ''),
          SIM_RULES: opts.simRules ? JSON.stringify(opts.simRules) : '',
          CLOUDGATE_CLOUDS: cloudsFile ?? '',
          CLOUDGATE_CVMFS_SERVERS: config.cvmfs.servers.join(';'),
          CLOUDGATE_CVMFS_ALLOWED_HOSTS: config.cvmfs.allowedHosts.join(','),
          ...opts.env,
        };
        const log = opts.captureLogs ? openSync(path.join(dataDir, 'worker.log'), 'a') : 'inherit';
        const proc = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'workers/main.ts')], { env, stdio: ['ignore', log, log] });
        stack.workerProc = proc;
        await workerReady(since, 120_000, 'worker process');
      } else {
        stack.worker = await startWorker(config, { workflowBundle: await workflowBundle(), simRules: opts.simRules });
        await workerReady(since, 60_000, 'worker');
      }
    },
    async killWorker() {
      const proc = stack.workerProc;
      if (!proc || proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await exited;
    },
    async restartTemporal() {
      await temporal.stop();
      temporal = await startDevServer({ dbFile, port: temporalPort });
      stack.temporal = temporal;
    },
    http: (method, url, body, headers) => adminHttp(api.url, stack.adminToken)(method, url, body, headers),
    async stop(stopOpts) {
      await stack.killWorker();
      await stack.worker?.shutdown().catch(() => undefined);
      await api.close();
      await connection.close();
      await temporal.stop();
      if (!stopOpts?.keepDataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
  try {
    await stack.startWorker();
  } catch (err) {
    // Nothing left running: a worker, API or server left over keeps jest from ever exiting.
    await stack.stop().catch(() => undefined);
    throw err;
  }
  return stack;
}

/**
 * A stack's `http`: JSON to `baseUrl`, as the admin unless the caller sends its own Authorization
 * ('' sends none: anonymous); the answer's body parsed when it is JSON.
 */
export function adminHttp(baseUrl: string, adminToken: string): Stack['http'] {
  return async (method, url, body, headers = {}) => {
    // As the admin unless the caller sends its own Authorization ('' sends none: anonymous).
    const auth = Object.entries(headers).find(([k]) => k.toLowerCase() === 'authorization');
    const sent = { ...headers };
    if (auth?.[1] === '') delete sent[auth[0]];
    const res = await fetch(`${baseUrl}${url}`, {
      method,
      headers: {
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(auth ? {} : { authorization: `Bearer ${adminToken}` }),
        ...sent,
      },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return { status: res.status, body: parsed as any, headers: res.headers };
  };
}

/** Polls `fn` until it returns a truthy value (or throws the last error after `timeoutMs`). */
export async function waitFor<T>(fn: () => Promise<T | undefined | false>, timeoutMs = 60_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`, { cause: last });
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The three-tier test cluster (proxy → head → workers). */
export function threeTier(overrides: Partial<Record<'proxy' | 'head' | 'workers', number>> = {}): ClusterDefinitionInput {
  const offering = { cpus: 1, memoryMiB: 2048, diskGiB: 20 };
  const image = 'cernvm4-micro-2020.07';
  return {
    name: 'three-tier',
    failurePolicy: 'keep',
    services: [
      { name: 'proxy', offering, image, min: overrides.proxy ?? 2, readinessTimeoutSeconds: 30 },
      { name: 'head', offering, image, min: overrides.head ?? 1, dependsOn: ['proxy'], readinessTimeoutSeconds: 30 },
      { name: 'workers', offering, image, min: overrides.workers ?? 4, max: Math.max(20, overrides.workers ?? 4), dependsOn: ['head'], readinessTimeoutSeconds: 30 },
    ],
  };
}

/** POSTs a definition and a cluster from it; returns the cluster id. */
export async function deploy(stack: ApiClient, def: ClusterDefinitionInput, headers: Record<string, string> = {}): Promise<string> {
  const d = await stack.http('POST', '/v1/cluster-definitions', def);
  if (d.status !== 201) throw new Error(`definition rejected: ${JSON.stringify(d.body)}`);
  const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id }, headers);
  if (c.status !== 202) throw new Error(`cluster rejected: ${JSON.stringify(c.body)}`);
  return c.body.id as string;
}

export async function clusterStatus(stack: ApiClient, id: string): Promise<any> {
  const r = await stack.http('GET', `/v1/clusters/${id}`);
  if (r.status !== 200) throw new Error(`GET cluster ${id}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/**
 * A cluster's published instances (of one service, if named), by service then ordinal, from
 * `GET /v1/clusters/:id/instances`, following its cursors to the last page. The cluster
 * answer carries counts only; suites read instances through this one helper.
 */
export async function clusterInstances(stack: ApiClient, id: string, service?: string): Promise<PublishedInstance[]> {
  const items: PublishedInstance[] = [];
  let cursor: string | undefined;
  do {
    const query = new URLSearchParams({ ...(service !== undefined && { service }), ...(cursor !== undefined && { cursor }) });
    const r = await stack.http<{ items: PublishedInstance[]; next?: string }>('GET', `/v1/clusters/${id}/instances?${query}`);
    if (r.status !== 200) throw new Error(`GET instances of ${id}${service ? ` (${service})` : ''}: ${r.status} ${JSON.stringify(r.body)}`);
    items.push(...r.body.items);
    cursor = r.body.next;
  } while (cursor !== undefined);
  return items;
}

/**
 * Waits for a cluster to reach `state`. On a timeout the error says where the cluster was
 * instead: its state and message, each service's state and counts, its last events and what
 * its workflows were waiting on (pending activities with their attempts and last failures) —
 * what an operator would look at first, so a failure in CI explains itself.
 */
export async function waitForState(stack: ApiClient, id: string, state: string, timeoutMs = 90_000): Promise<any> {
  let seen: any;
  try {
    return await waitFor(
      async () => {
        seen = await clusterStatus(stack, id);
        return seen.state === state ? seen : undefined;
      },
      timeoutMs,
      `cluster ${id} to be ${state}`,
    );
  } catch (err) {
    throw new Error(`${(err as Error).message}; ${await whereIs(stack, id, seen)}`, { cause: err });
  }
}

/** Where a cluster is, in one paragraph (see {@link waitForState}). */
async function whereIs(stack: ApiClient, id: string, seen: any): Promise<string> {
  const parts: string[] = [];
  if (seen) {
    parts.push(`last seen ${seen.state}${seen.message ? ` (${seen.message})` : ''}`);
    parts.push(`services ${(seen.services ?? []).map((s: any) => `${s.name} ${s.state} ${s.ready}/${s.desired}${s.message ? ` (${s.message})` : ''}`).join(', ')}`);
  }
  try {
    const events = ((await stack.http('GET', `/v1/clusters/${id}/events`)).body.items as { at: string; message: string }[]) ?? [];
    parts.push(`last events: ${events.slice(-5).map((e) => `${e.at} ${e.message}`).join(' | ')}`);
  } catch (err) {
    parts.push(`events not read: ${(err as Error).message}`);
  }
  try {
    for await (const wf of stack.client.workflow.list({ query: `${SA_CLUSTER_ID.name} = '${id}' AND ExecutionStatus = 'Running'` })) {
      const { raw } = await stack.client.workflow.getHandle(wf.workflowId, wf.runId).describe();
      const pending = (raw.pendingActivities ?? []).map((a) => `${a.activityType?.name} attempt ${a.attempt}${a.lastFailure?.message ? ` (${a.lastFailure.message})` : ''}`);
      parts.push(`${wf.workflowId} running, ${raw.workflowExecutionInfo?.historyLength ?? '?'} events${pending.length > 0 ? `, pending: ${pending.join('; ')}` : ''}`);
    }
  } catch (err) {
    parts.push(`workflows not listed: ${(err as Error).message}`);
  }
  return parts.join('; ');
}

/**
 * The phone-home token in a sim instance's user-data (the cloud's own record of it), as the
 * guest reads it: what a head node sends to report load or poll its drain notice.
 */
export function phoneHomeToken(stack: Stack, instanceId: string): string {
  const db = new Database(path.join(stack.dataDir, 'sim-cloud.sqlite'), { readonly: true });
  try {
    const row = db.prepare('SELECT user_data FROM instance_user_data WHERE name = ? ORDER BY created_at DESC LIMIT 1').get(instanceId) as { user_data: string } | undefined;
    const token = row && extractPhoneHome(row.user_data)?.token;
    if (!token) throw new Error(`no phone-home token for ${instanceId} in the sim cloud`);
    return token;
  } finally {
    db.close();
  }
}

/** A history event's time, in ms since the epoch (0 when it has none). */
export const msOf = (t: protos.google.protobuf.ITimestamp | null | undefined): number => (t ? Number(t.seconds ?? 0) * 1000 + (t.nanos ?? 0) / 1e6 : 0);

/** Starts a cluster workflow as the API would (test/cluster-start.ts: no Temporal runtime is installed by importing it, so a bench may too). */
export { startClusterWorkflow } from './cluster-start.js';
