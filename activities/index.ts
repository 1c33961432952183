/**
 * The only place workflows touch the world. `createActivities(deps)` returns plain async
 * functions over the cloud adapters; cloud errors become `ApplicationFailure`s whose type
 * is the error kind, retryable or not as the kind says.
 */
import { ApplicationFailure, Context } from '@temporalio/activity';
import { CloudError, RETRYABLE_KINDS, type CloudAdapter, type CloudInstance, type CloudOffering, type InstanceSpec } from '../clouds/contract.js';
import type { CloudQuota } from '../model/clouds-config.js';
import type { Offering } from '../model/definition.js';
import { smallestFit } from '../model/placement.js';
import type { CapacityLedger } from '../store/capacity.js';
import { CONTEXT_UNAVAILABLE } from '../model/cloud-errors.js';
import { signToken } from '../model/token.js';
import { contextUserDataRenderer, NO_CONTEXT, phoneHomeUrl, type PhoneHome } from '../model/user-data.js';
import type { Context as CloudgateContext } from '../model/context.js';
import { MAX_PUBLISHED_INSTANCES } from '../model/read-model.js';
import { AddressPolicy } from '../model/address-policy.js';
import { checkRepository, cvmfsFailureType, isRetryableCvmfsFailure } from './cvmfs.js';
import { fetchLoad } from './load.js';
import type {
  CloudgateActivities,
  CvmfsCheckInput,
  CvmfsCheckResult,
  CreatedInstance,
  CreateInstancesInput,
  CreateInstancesResult,
  CapacityRefusalKind,
  DescribedInstance,
  DescribeInstancesInput,
  InstanceRef,
  PollLoadInput,
  PollLoadResult,
  PublishClusterInput,
  PublishServiceInput,
  SweepClusterInput,
  SweepResult,
  TerminateInstancesInput,
} from '../workflows/activity-types.js';

export interface ActivityDeps {
  clouds: { get(name: string): CloudAdapter };
  /** Base URL guests phone home to (`<publicUrl>/v1/instances/<id>/readiness`). */
  publicUrl: string;
  /** Signs per-instance tokens; read here, never passed through a workflow. */
  tokenSecret: string;
  /** A token expires this long after its service's readiness timeout (counted from signing). */
  tokenMarginSeconds: number;
  /** Cloud calls in flight per activity (a batch of creates must not hammer one API). */
  concurrency?: number;
  /** Where pinned context versions and their secret values are read (the store). */
  contexts: ContextSource;
  /** The stratum-1 check: default servers, the oldest acceptable manifest, hosts allowed despite the address policy. */
  cvmfs: { servers: string[]; maxAgeSeconds: number; timeoutMs?: number; allowedHosts?: readonly string[] };
  /** Where the workflows' published state goes for the API to read (the store). */
  readModel: ReadModelSink;
  /** The capacity ledger (store/capacity.ts) and what it needs: each cloud's quota and flavors. */
  capacity: CapacitySource;
  /** Pulled load (`autoscale.loadUrl`): hosts read although loopback or private (`CLOUDGATE_LOAD_ALLOWED_HOSTS`), and the timeout. */
  load?: { allowedHosts?: readonly string[]; timeoutMs?: number };
  /** Where cloud calls are counted (the worker's `/metrics`, workers/metrics.ts); unset: nowhere. */
  metrics?: ActivityMetrics;
}

/** The cloud calls an {@link ActivityMetrics} counts. */
export type CountedCloudCall = 'create' | 'terminate';

/**
 * What the activities report of their cloud calls. Labels are bounded: a cloud name, a call,
 * an error kind ({@link CloudErrorKind}, or `Unknown` for an error that is not a `CloudError`).
 */
export interface ActivityMetrics {
  /** One call to the cloud ended: which, how long it took, and the error kind when it failed (every attempt, local retries included). */
  cloudCall(cloud: string, call: CountedCloudCall, seconds: number, errorKind?: string): void;
  /** A create stopped for want of room: the capacity ledger's quota (`Ledger`), or the cloud's `CapacityExhausted` / `QuotaExceeded`. */
  createRefused(cloud: string, reason: 'Ledger' | 'CapacityExhausted' | 'QuotaExceeded'): void;
}

/** The kind of a cloud call's error, as a metric label. */
const errorKindOf = (err: unknown): string => (err instanceof CloudError ? err.kind : 'Unknown');

/** What the create, terminate and sweep activities need to keep the capacity ledger. */
export interface CapacitySource {
  ledger: Pick<CapacityLedger, 'reserveCapacity' | 'releaseCapacity' | 'releaseClusterCapacity'>;
  /** The registry entry's quota (undefined: unlimited). */
  quotaOf(cloud: string): CloudQuota | undefined;
  /** The cloud's flavors as the catalogue last listed them (an instance counts with the flavor that serves its offering). */
  flavorsOf(cloud: string): Promise<CloudOffering[]>;
}

/** The store's context reads the create activity needs. */
export interface ContextSource {
  getContext(id: string, version?: number): Promise<{ context: CloudgateContext } | undefined>;
  getContextSecrets(id: string, version: number): Promise<Record<string, string> | undefined>;
}

/**
 * The store's read-model writes. Each compares the publish's seq with the stored one and
 * writes all or nothing in one transaction, so the publish activities are idempotent.
 */
export interface ReadModelSink {
  /** `writer`: the publishing workflow run (see `Store.publishCluster`, store/index.ts). */
  publishCluster(input: PublishClusterInput, writer?: string): Promise<boolean>;
  publishService(input: PublishServiceInput, writer?: string): Promise<boolean>;
  /** Provider ids of published instances: a service workflow does not carry them across continue-as-new. */
  cloudInstanceIds(clusterId: string, ids: readonly string[]): Promise<Record<string, string>>;
}

/** Failure type of a service publish carrying more instances than {@link MAX_PUBLISHED_INSTANCES}: a workflow bug, not retried. */
export const PUBLISH_TOO_LARGE = 'PublishTooLarge';

export { CONTEXT_UNAVAILABLE };

/** The longest readiness timeout a definition may set (model/definition.ts): the token lifetime of creates scheduled before inputs carried one. */
const MAX_READINESS_TIMEOUT_SECONDS = 86_400;

/**
 * How long a phone-home token lives: the guest reports once, within its service's readiness
 * timeout of the create returning (after that the workflow has failed the instance), so the
 * token needs that plus a margin, not days (issue 11).
 */
export const tokenLifetimeSeconds = (input: Pick<CreateInstancesInput, 'readinessTimeoutSeconds'>, marginSeconds: number): number =>
  (input.readinessTimeoutSeconds ?? MAX_READINESS_TIMEOUT_SECONDS) + marginSeconds;

/** Maps a cloud error to a Temporal failure the retry policy understands. */
export function toFailure(err: unknown, what: string): Error {
  if (err instanceof CloudError) {
    const msg = `${what}: ${err.message}`;
    return RETRYABLE_KINDS.has(err.kind) || err.kind === 'NotFound'
      ? ApplicationFailure.retryable(msg, err.kind)
      : ApplicationFailure.nonRetryable(msg, err.kind);
  }
  if (err instanceof ApplicationFailure) return err;
  return ApplicationFailure.retryable(`${what}: ${err instanceof Error ? err.message : String(err)}`, 'Transient');
}

/**
 * Runs `fn` over `items` with at most `limit` in flight, heartbeating progress. After the
 * first error no new item starts and the error is thrown once the running ones settle, so
 * a retried activity never races its own previous attempt.
 */
async function forEachLimited<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let done = 0;
  let failure: { err: unknown } | undefined;
  const worker = async () => {
    while (next < items.length && !failure) {
      const i = next++;
      try {
        results[i] = await fn(items[i]);
      } catch (err) {
        failure ??= { err };
        return;
      }
      done++;
      heartbeat(done);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.err;
  return results;
}

/** Pauses before retrying one throttled or transient cloud call inside a batch. */
const LOCAL_RETRY_DELAYS_MS = [250, 750, 2000];

/**
 * Retries one cloud call a few times when the cloud says "slow down" or "try again", as
 * cloud SDKs do, so one throttled call does not fail (and redo) a whole batch; after that
 * the activity fails and Temporal's retry policy takes over with its longer backoff.
 */
async function withLocalRetry<R>(call: () => Promise<R>): Promise<R> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await call();
    } catch (err) {
      const again = err instanceof CloudError && (err.kind === 'Throttled' || err.kind === 'Transient');
      if (!again || attempt >= LOCAL_RETRY_DELAYS_MS.length) throw err;
      await new Promise((r) => setTimeout(r, LOCAL_RETRY_DELAYS_MS[attempt] * (0.5 + Math.random())));
    }
  }
}

/** The running activity's logger; undefined outside an activity (direct calls in tests). */
function activityLog(): Context['log'] | undefined {
  try {
    return Context.current().log;
  } catch {
    return undefined;
  }
}

/** The run id of the workflow that called the running activity; undefined outside an activity. */
function workflowRun(): string | undefined {
  try {
    return Context.current().info.workflowExecution?.runId;
  } catch {
    return undefined;
  }
}

function heartbeat(progress: number): void {
  let ctx: Context;
  try {
    ctx = Context.current();
  } catch {
    return; // Outside an activity (direct calls in tests) there is nothing to heartbeat to.
  }
  const now = performance.now();
  if (now - (lastProgressBeat.get(ctx) ?? -Infinity) < PROGRESS_EVERY_MS) return;
  lastProgressBeat.set(ctx, now);
  ctx.heartbeat(progress);
}

/**
 * The least time between two progress heartbeats of one activity. Temporal sends a running
 * activity's heartbeats to the server at most every few tens of seconds anyway, but the SDK
 * takes each call through its pipeline and the payload codec first: one per instance was
 * 19,000 encrypted heartbeats for the 9,500 creates of the scale bench's largest tier: the
 * SDK's heartbeat took 0.4 s of the worker's CPU in a profile of the 10 s the creates ran.
 */
const PROGRESS_EVERY_MS = 1000;
/** When each running activity last heartbeat its progress. */
const lastProgressBeat = new WeakMap<Context, number>();

/** How often {@link beating} tells Temporal the activity is alive (its heartbeat timeout is a minute). */
const ALIVE_EVERY_MS = 10_000;

/**
 * Runs `fn`, heartbeating every {@link ALIVE_EVERY_MS} besides the per-instance progress: a
 * batch of a 10,000-instance deployment may wait its turn on the capacity ledger, or on a
 * busy cloud, longer than the heartbeat timeout while its worker is alive and well (the
 * timeout is there to notice a dead worker; a hung call still ends at startToClose).
 */
async function beating<T>(fn: () => Promise<T>): Promise<T> {
  let ctx: Context;
  try {
    ctx = Context.current();
  } catch {
    return fn();
  }
  const timer = setInterval(() => ctx.heartbeat(), ALIVE_EVERY_MS);
  try {
    return await fn();
  } finally {
    clearInterval(timer);
  }
}

export function createActivities(deps: ActivityDeps): CloudgateActivities {
  const limit = deps.concurrency ?? 16;
  const { ledger } = deps.capacity;
  const loadPolicy = new AddressPolicy(deps.load?.allowedHosts);

  /** One create or terminate call to a cloud, counted (and timed) whether it succeeds or fails. */
  const counted = async <R>(cloud: string, call: CountedCloudCall, fn: () => Promise<R>): Promise<R> => {
    const m = deps.metrics;
    if (!m) return fn();
    const started = performance.now();
    try {
      const r = await fn();
      m.cloudCall(cloud, call, (performance.now() - started) / 1000);
      return r;
    } catch (err) {
      m.cloudCall(cloud, call, (performance.now() - started) / 1000, errorKindOf(err));
      throw err;
    }
  };

  /** What one instance holds of a cloud: the flavor that serves the offering, else the offering itself. */
  const flavorSize = async (cloud: string, offering: Offering): Promise<{ cpus: number; memoryMiB: number }> => {
    const flavor = smallestFit(await deps.capacity.flavorsOf(cloud), offering) ?? offering;
    return { cpus: flavor.cpus, memoryMiB: flavor.memoryMiB };
  };

  /**
   * Provider ids of the instances of a describe or terminate: those the workflow sent, else
   * what the read model has (a service workflow drops them on continue-as-new).
   */
  const providerIds = async (input: { clusterId?: string; instances: InstanceRef[] }): Promise<Record<string, string>> => {
    const given = Object.fromEntries(input.instances.flatMap((r) => (r.cloudInstanceId ? [[r.id, r.cloudInstanceId]] : [])));
    const missing = input.instances.filter((r) => !r.cloudInstanceId).map((r) => r.id);
    return missing.length && input.clusterId ? { ...(await deps.readModel.cloudInstanceIds(input.clusterId, missing)), ...given } : given;
  };

  /** The pinned context version and its secrets, read once per batch. */
  const loadContext = async (ref: { id: string; version: number }): Promise<{ context: CloudgateContext; secrets: Record<string, string> }> => {
    const what = `context ${ref.id} version ${ref.version}`;
    const rec = await deps.contexts.getContext(ref.id, ref.version);
    const secrets = rec && (await deps.contexts.getContextSecrets(ref.id, ref.version));
    if (!rec || !secrets) throw ApplicationFailure.nonRetryable(`${what} is not in the store`, CONTEXT_UNAVAILABLE);
    return { context: rec.context, secrets };
  };

  const specFor = (input: CreateInstancesInput, id: string, render: (phoneHome: PhoneHome) => string): InstanceSpec => {
    const token = signToken(
      { iid: id, cluster: input.clusterId, service: input.service, exp: Math.floor(Date.now() / 1000) + tokenLifetimeSeconds(input, deps.tokenMarginSeconds) },
      deps.tokenSecret,
    );
    const phoneHome: PhoneHome = {
      url: phoneHomeUrl(deps.publicUrl, id),
      instanceId: id,
      token,
      repositories: [],
    };
    let userData: string;
    try {
      userData = render(phoneHome);
    } catch (err) {
      throw ApplicationFailure.nonRetryable(`cannot render the user-data of ${id}: ${(err as Error).message}`, CONTEXT_UNAVAILABLE);
    }
    return {
      name: id,
      image: input.image,
      offering: input.offering,
      userData,
      tags: { cluster: input.clusterId, service: input.service, key: id },
    };
  };

  /**
   * Idempotent per instance: an instance already made with the key is found, not made again.
   * The batch first reserves room for its new instances in the capacity ledger, in one
   * transaction (keyed by instance id, so a retry reuses its reservations); instances the
   * cloud already has are recorded whatever the quota says (made before the ledger, or a
   * lost reservation). The ids the ledger has no room for, and — once the cloud itself says
   * it is full — every id not made yet, come back as `refused`, their reservations freed.
   */
  const createBatch = async (input: CreateInstancesInput): Promise<CreateInstancesResult> => {
    const cloud = deps.clouds.get(input.cloud);
    const ctx = input.context && (await loadContext(input.context));
    // The batch's user-data renderer (model/user-data.ts): made at the first create, so instances the cloud already has need none.
    let renderer: ((phoneHome: PhoneHome) => string) | undefined;
    const render = (phoneHome: PhoneHome) => (renderer ??= contextUserDataRenderer(ctx?.context ?? NO_CONTEXT, ctx?.secrets))(phoneHome);
    const { ledger } = deps.capacity;
    const size = await flavorSize(input.cloud, input.offering);
    const quota = deps.capacity.quotaOf(input.cloud);
    const found = new Map<string, CloudInstance>();
    await forEachLimited(input.ids, limit, async (id) => {
      try {
        const inst = await withLocalRetry(() => cloud.findInstance(id));
        if (inst) found.set(id, inst);
      } catch (err) {
        throw toFailure(err, `create ${id} on ${input.cloud}`);
      }
    });
    const grant = await ledger.reserveCapacity(
      input.cloud,
      quota,
      input.ids.map((id) => ({ instanceId: id, clusterId: input.clusterId, ...size, ...(found.has(id) && { force: true }) })),
    );
    if (grant.refusal) deps.metrics?.createRefused(input.cloud, 'Ledger');
    let full: { kind: CapacityRefusalKind; message: string } | undefined;
    const made = await forEachLimited(grant.granted, limit, async (id): Promise<CreatedInstance | undefined> => {
      let inst = found.get(id);
      if (!inst && full) return undefined;
      try {
        inst ??= await withLocalRetry(() => counted(input.cloud, 'create', () => cloud.createInstance(specFor(input, id, render), id)));
        return { id, cloudInstanceId: inst.id, cloudState: inst.state, createdAt: inst.createdAt ?? new Date().toISOString(), ...(inst.host && { host: inst.host }) };
      } catch (err) {
        // The cloud's own "full" or "over your quota" (EC2 InstanceLimitExceeded, CloudStack resource limits): room elsewhere may do.
        if (err instanceof CloudError && (err.kind === 'CapacityExhausted' || err.kind === 'QuotaExceeded')) {
          deps.metrics?.createRefused(input.cloud, err.kind);
          const what = err.kind === 'CapacityExhausted' ? 'has no capacity' : 'refused: over its quota';
          full ??= { kind: err.kind, message: `${input.cloud} ${what}: ${err.message}` };
          return undefined;
        }
        throw toFailure(err, `create ${id} on ${input.cloud}`);
      }
    });
    const created = made.filter((c): c is CreatedInstance => c !== undefined);
    const createdIds = new Set(created.map((c) => c.id));
    const unmade = grant.granted.filter((id) => !createdIds.has(id));
    if (unmade.length) await ledger.releaseCapacity(input.cloud, unmade);
    const refusal = full ?? (grant.refusal && { kind: 'QuotaExceeded' as const, message: grant.refusal.message });
    if (!refusal) return { created };
    return { created, refused: { ...refusal, ids: input.ids.filter((id) => !createdIds.has(id)) } };
  };

  return {
    createInstances: (input) => beating(() => createBatch(input)),

    async describeInstances(input: DescribeInstancesInput) {
      const cloud = deps.clouds.get(input.cloud);
      const known = await providerIds(input);
      return forEachLimited(input.instances, limit, async (ref): Promise<DescribedInstance> => {
        try {
          // Without a provider id anywhere, the key finds the instance (or nothing: it is gone).
          const cloudId = known[ref.id] ?? (await withLocalRetry(() => cloud.findInstance(ref.id)))?.id;
          if (!cloudId) return { id: ref.id, cloudState: 'GONE' };
          const inst = await withLocalRetry(() => cloud.describeInstance(cloudId));
          return { id: ref.id, cloudState: inst.state };
        } catch (err) {
          if (err instanceof CloudError && err.kind === 'NotFound') return { id: ref.id, cloudState: 'GONE' };
          throw toFailure(err, `describe ${ref.id} on ${input.cloud}`);
        }
      });
    },

    async terminateInstances(input: TerminateInstancesInput) {
      const cloud = deps.clouds.get(input.cloud);
      const known = await providerIds(input);
      const gone = await forEachLimited(input.instances, limit, async (ref) => {
        try {
          // Without the provider id (create failed midway) the key finds what may have been made.
          const id = known[ref.id] ?? (await withLocalRetry(() => cloud.findInstance(ref.id)))?.id;
          if (id) await withLocalRetry(() => counted(input.cloud, 'terminate', () => cloud.terminateInstance(id)));
          // A create retried after we looked may have made another one with the same key.
          const again = await withLocalRetry(() => cloud.findInstance(ref.id));
          if (again) await withLocalRetry(() => counted(input.cloud, 'terminate', () => cloud.terminateInstance(again.id)));
          // Gone: its room on the cloud is free for anyone.
          await ledger.releaseCapacity(input.cloud, [ref.id]);
          return 1;
        } catch (err) {
          throw toFailure(err, `terminate ${ref.id} on ${input.cloud}`);
        }
      });
      return gone.length;
    },

    /**
     * Looks the repository up on its stratum-1s (manifest name, root path, revision, age;
     * whitelist expiry). Only "no server answered" is retried; a missing, stale, renamed or
     * expired repository, or a nested catalog's manifest served as the root's, fails at once
     * with a message naming the repository and the server (types: `cvmfsFailureType`).
     */
    async checkCvmfsRepository(input: CvmfsCheckInput): Promise<CvmfsCheckResult> {
      const servers = input.servers?.length ? input.servers : deps.cvmfs.servers;
      if (!servers.length) throw ApplicationFailure.nonRetryable(`no stratum-1 servers configured to check ${input.repo}`, 'CvmfsNoServers');
      const check = await checkRepository({
        repo: input.repo,
        servers,
        minRevision: input.minRevision,
        maxAgeSeconds: deps.cvmfs.maxAgeSeconds,
        now: new Date(),
        timeoutMs: deps.cvmfs.timeoutMs,
        allowedHosts: deps.cvmfs.allowedHosts,
        // The cause of a generic "no usable answer" is for the operator only (it would scan ports for a user).
        onNoAnswer: (url, detail) => activityLog()?.warn('no usable answer from a stratum-1', { repo: input.repo, url, detail }),
      });
      if (check.ok) {
        const { repo, server, revision, publishedAt, whitelistExpiresAt, attempts } = check;
        return { repo, server, revision, publishedAt, whitelistExpiresAt, attempts };
      }
      const type = cvmfsFailureType(check.reason);
      const details = { repo: check.repo, reason: check.reason, server: check.server, attempts: check.attempts };
      throw isRetryableCvmfsFailure(check.reason)
        ? ApplicationFailure.create({ message: check.message, type, details: [details] })
        : ApplicationFailure.create({ message: check.message, type, nonRetryable: true, details: [details] });
    },

    /**
     * Writes the cluster's state to the read model. Retries are safe: a publish no later than
     * the one stored (its time, then its seq) changes nothing and returns false. Store errors (a
     * busy database) are thrown as they are and retried by the activity's policy.
     */
    async publishCluster(input: PublishClusterInput): Promise<boolean> {
      return await deps.readModel.publishCluster(input, workflowRun());
    },

    /** Writes a service's summary and changed instances to the read model; idempotent like {@link publishCluster}. */
    async publishService(input: PublishServiceInput): Promise<boolean> {
      if (input.upserts.length > MAX_PUBLISHED_INSTANCES) {
        // The same input would fail again; the workflow must split its changes over several publishes.
        throw ApplicationFailure.nonRetryable(
          `publish of ${input.clusterId}/${input.service} seq ${input.seq} carries ${input.upserts.length} instances, more than ${MAX_PUBLISHED_INSTANCES}`,
          PUBLISH_TOO_LARGE,
        );
      }
      return await deps.readModel.publishService(input, workflowRun());
    },

    /**
     * Reads a service's load from its `loadUrl` under the address policy (activities/load.ts).
     * A bad answer comes back as a problem, not a failure: the workflow polls again anyway.
     */
    async pollLoad(input: PollLoadInput): Promise<PollLoadResult> {
      return fetchLoad(input.url, {
        policy: loadPolicy,
        timeoutMs: deps.load?.timeoutMs,
        idlePrefix: `${input.clusterId}-${input.service}-`,
        // The cause of a generic "no usable answer" is for the operator only (it would scan ports for a user).
        onNoAnswer: (url, detail) => activityLog()?.warn('no usable answer from a load URL', { cluster: input.clusterId, service: input.service, url, detail }),
      });
    },

    /** Terminates whatever still carries the cluster's tag, then checks that nothing does. */
    async sweepCluster(input: SweepClusterInput): Promise<SweepResult> {
      const cloud = deps.clouds.get(input.cloud);
      try {
        const leftovers = await cloud.listInstances({ cluster: input.clusterId });
        await forEachLimited(leftovers, limit, (i) => withLocalRetry(() => counted(input.cloud, 'terminate', () => cloud.terminateInstance(i.id))));
        const remaining = await cloud.listInstances({ cluster: input.clusterId });
        if (remaining.length > 0) {
          throw ApplicationFailure.retryable(
            `${remaining.length} instances of cluster ${input.clusterId} still live on ${input.cloud} after terminating them: ${remaining
              .slice(0, 5)
              .map((i) => i.id)
              .join(', ')}`,
            'InstancesRemaining',
          );
        }
        // Nothing of the cluster is left on the cloud: nothing of it may hold room there.
        await deps.capacity.ledger.releaseClusterCapacity(input.cloud, input.clusterId);
        return { cloud: input.cloud, terminated: leftovers.map((i) => i.name || i.id), remaining: 0 };
      } catch (err) {
        throw toFailure(err, `sweep cluster ${input.clusterId} on ${input.cloud}`);
      }
    },
  };
}
