/**
 * cloudgate's own state outside Temporal: cluster definitions, the clusters made from them
 * (so the API can list and idempotently create them), the clouds a worker registered,
 * contexts, tokens, quotas, the audit trail and the read model the workflows publish.
 *
 * One asynchronous {@link Store} with one implementation over Kysely (store/database.ts):
 * SQLite through better-sqlite3 by default (a file in the data folder), PostgreSQL when
 * `CLOUDGATE_DATABASE_URL` names one ({@link openStore}), so several API replicas and workers
 * share it. Whatever must hold across processes — an idempotency key, a quota, a pairing
 * PIN's single use, a token's revocation, the PIN lookup limit — is decided by the database
 * (a unique key, a write transaction, a conditional UPDATE), never by one process's memory.
 * test/store-contract.test.ts runs the same assertions on both engines.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes, randomUUID } from 'node:crypto';
import path from 'node:path';
import DataLoader from 'dataloader';
import { sql, type Compilable, type CompiledQuery, type Selectable } from 'kysely';
import { jsonArrayFrom as pgJsonArrayFrom, jsonObjectFrom as pgJsonObjectFrom } from 'kysely/helpers/postgres';
import { jsonArrayFrom as sqliteJsonArrayFrom, jsonObjectFrom as sqliteJsonObjectFrom } from 'kysely/helpers/sqlite';
import type { ClusterDefinition, Lifetime } from '../model/definition.js';
import type { Window } from '../model/windows.js';
import type { CloudOffering } from '../clouds/contract.js';
import type { Context, PinnedContext } from '../model/context.js';
import type { ClusterEvent, PublishClusterInput, PublishedInstance, PublishedService, PublishServiceInput } from '../model/read-model.js';
import type { ClusterState, InstanceState } from '../model/status.js';
import type { ChangeView } from '../model/rolling.js';
import { loadSecretsKey, SECRETS_KEY_BYTES } from './secret.js';
import type { Config, Quota } from '../model/config.js';
import type { CloudQuota } from '../model/clouds-config.js';
import { capacityLedger, type CapacityLedger } from './capacity.js';
import { openPostgresDatabase, openSqliteDatabase, type Db, type StoreDatabase } from './database.js';
import type { Tables } from './tables.js';
import { ownerQuotaKey, quotaAuditStatements, toAuditRecord, type AuditFilter, type AuditRecord, type OwnerQuotaRecord, type OwnerQuotaUsage, type QuotaClaim, type QuotaUsage, type ReserveScaleOptions } from './quotas-audit.js';

export { QuotaExceededError, type AuditRecord, type OwnerQuotaRecord, type OwnerQuotaUsage, type QuotaClaim, type QuotaExcess, type QuotaUsage, type ReserveScaleOptions } from './quotas-audit.js';

/** A stored cluster definition; `definition` is the parsed (defaults applied) schema output. */
export interface ClusterDefinitionRecord {
  id: string;
  name: string;
  definition: ClusterDefinition;
  /** Who created it (absent in stores made before owners: only admins see those). */
  owner?: string;
  createdAt: string;
  /** When it was deleted (soft: clusters made from it still read it); absent while it is live. */
  deletedAt?: string;
}

/** Who a bearer is: a user sees only what they own; an admin sees everything. */
export type Role = 'user' | 'admin';

/** An API token as stored: its hash only, never its value. */
export interface ApiTokenRecord {
  /** `tok-` and 12 hex digits. */
  id: string;
  owner: string;
  role: Role;
  createdAt: string;
  /** Absent: it never expires. */
  expiresAt?: string;
  revokedAt?: string;
}

/** A cluster made from a definition; its live state is the cluster workflow's. */
export interface ClusterRecord {
  id: string;
  name: string;
  definitionId: string;
  cloud: string;
  owner?: string;
  /** Client-chosen `Idempotency-Key` of the request that created the cluster. */
  idempotencyKey?: string;
  /** Hash of that request's body, to tell a retry from a different request with the same key. */
  requestHash?: string;
  /** The context version each service was pinned to at submission (a retried create reuses them). */
  contexts?: Record<string, PinnedContext>;
  /** The session lifetime it runs with (the definition's, overridden by the submission's). */
  lifetime?: Lifetime;
  /** The windows it is active in (the definition's, or the submission's instead); absent: always active. */
  windows?: Window[];
  createdAt: string;
}

/** A cloud a worker can deploy to, as registered by the worker at startup. */
export interface CloudRecord {
  name: string;
  kind: string;
  offerings: CloudOffering[];
  /** Where the cloud is (URL or libvirt URI); shown by the API. */
  endpoint?: string;
  /** Credential references (`env:NAME`, `file:/path`), never values. */
  credentials?: Record<string, string>;
  /** The image names its registry entry offers (the only ones a cluster on it may name); none when absent. */
  images?: string[];
  /** What cloudgate may use there, over all clusters (the capacity ledger's limits); unlimited when absent. */
  quota?: CloudQuota;
}

/**
 * One immutable version of a context definition, in its stored form: password hashes and
 * secret names only. Secret values live encrypted beside it ({@link Store.getContextSecrets}).
 */
export interface ContextRecord {
  /** `ctx-` and 12 hex digits. */
  id: string;
  /** 1 for the first version, n+1 for each update. */
  version: number;
  name: string;
  context: Context;
  /** Who created the context (absent in stores made before owners: only admins see those). */
  owner?: string;
  createdAt: string;
  /** When the context was deleted (soft: its versions and secrets are kept for pinned clusters); absent while it is live. */
  deletedAt?: string;
}

/**
 * A short-lived, single-use PIN that hands one context version's user-data to a CernVM a
 * user boots on a laptop ({@link Store.createPairing}, {@link Store.takePairing}).
 */
export interface PairingRecord {
  /** The whole PIN, as the API makes it (api/contexts.ts). */
  pin: string;
  contextId: string;
  version: number;
  createdAt: string;
  expiresAt: string;
  usedAt?: string;
}

/**
 * What {@link Store.takePairing} found: `ok` exactly once per PIN (the caller then renders
 * the user-data), `used` or `expired` afterwards, `unknown` for a PIN never issued (or purged).
 */
export type PairingTake =
  | { status: 'ok'; contextId: string; version: number }
  | { status: 'unknown' }
  | { status: 'used'; usedAt: string }
  | { status: 'expired'; expiresAt: string };

/** What a new context version is made of; `secrets` are the plain values, encrypted before they are written. */
export interface ContextVersionInput {
  name: string;
  context: Context;
  secrets: Record<string, string>;
}

/** Token values: `cg_` and 43 base64url characters (32 random bytes). */
const newTokenValue = (): string => `cg_${randomBytes(32).toString('base64url')}`;
/** Tokens are stored as their SHA-256: they are random, so no slow hash is needed to keep them unguessable. */
export const tokenHash = (token: string): string => createHash('sha256').update(token).digest('hex');

/** Thrown by {@link Store.createCluster} when the id or idempotency key is already taken. */
export class DuplicateKeyError extends Error {
  constructor(
    message: string,
    readonly field: 'id' | 'idempotencyKey',
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'DuplicateKeyError';
  }
}

/** What the cluster workflow last published ({@link Store.publishCluster}), without its events (they go to the log). */
export type ClusterViewRecord = Omit<PublishClusterInput, 'events'>;

/** What one service workflow last published about itself ({@link Store.publishService}). */
export type ServiceViewRecord = Pick<PublishServiceInput, 'clusterId' | 'service' | 'seq' | 'observedAt' | 'summary'>;

/** One page of a list; `next` (opaque) is present only when more items follow. */
export interface Page<T> {
  items: T[];
  next?: string;
}

/** Which instances {@link Store.listInstances} returns. */
export interface InstanceQuery {
  service?: string;
  state?: InstanceState;
  /** `next` of the previous page, made with the same query. */
  cursor?: string;
  limit: number;
}

/** Which events {@link Store.listEvents} returns. */
export interface EventQuery {
  cursor?: string;
  limit: number;
}

/** Thrown by {@link Store.createPairing} when the owner holds as many live pairings as its `ownerLimit` allows; nothing was written. */
export class LivePairingLimitError extends Error {
  constructor(
    readonly owner: string,
    /** When each of the owner's live pairings expires, soonest first. */
    readonly expiries: string[],
  ) {
    super(`${owner} holds ${expiries.length} live pairing PINs`);
    this.name = 'LivePairingLimitError';
  }
}

/** Thrown by the list methods for a cursor they did not make (the API answers 422). */
export class InvalidCursorError extends Error {
  constructor(message = 'not a cursor this list made') {
    super(message);
    this.name = 'InvalidCursorError';
  }
}

export interface Store extends CapacityLedger {
  createDefinition(input: { name: string; definition: ClusterDefinition; owner?: string }): Promise<ClusterDefinitionRecord>;
  getDefinition(id: string): Promise<ClusterDefinitionRecord | undefined>;
  /** Oldest first. */
  listDefinitions(): Promise<ClusterDefinitionRecord[]>;
  /** Soft-deletes a definition: it leaves the list, clusters made from it keep reading it. False if unknown or already deleted. */
  deleteDefinition(id: string, at?: Date): Promise<boolean>;
  /** The clusters made from one definition. */
  clustersOfDefinition(definitionId: string): Promise<ClusterRecord[]>;

  /**
   * Inserts the row; throws {@link DuplicateKeyError} if the id or idempotency key exists. With
   * `quota`, in the same IMMEDIATE transaction the claim is checked against its owner's quota
   * (their own, else `defaultQuota`) and reserved; {@link QuotaExceededError} writes nothing.
   */
  createCluster(input: Omit<ClusterRecord, 'createdAt'> & { createdAt?: string }, quota?: { claim: QuotaClaim; defaultQuota: Quota }): Promise<ClusterRecord>;
  getCluster(id: string): Promise<ClusterRecord | undefined>;
  /** Oldest first. */
  listClusters(): Promise<ClusterRecord[]>;
  /** Removes a row and its quota reservation (used to undo an insert when starting its workflow failed). True if it existed. */
  deleteCluster(id: string): Promise<boolean>;
  findClusterByIdempotencyKey(key: string): Promise<ClusterRecord | undefined>;

  /** Stores version 1 of a new context. */
  /** Version 1 of a new context, owned by `owner`. */
  createContext(input: ContextVersionInput, owner?: string): Promise<ContextRecord>;
  /** Adds version n+1 (earlier versions are kept); undefined for an unknown id. */
  updateContext(id: string, input: ContextVersionInput): Promise<ContextRecord | undefined>;
  /** The given version, else the latest; undefined if either is unknown. */
  getContext(id: string, version?: number): Promise<ContextRecord | undefined>;
  /** The latest version of each context, oldest context first. */
  listContexts(): Promise<ContextRecord[]>;
  /** Every version of one context, oldest first; empty for an unknown id. */
  listContextVersions(id: string): Promise<ContextRecord[]>;
  /** The decrypted secret values of one version (for rendering user-data); undefined if unknown. */
  getContextSecrets(id: string, version: number): Promise<Record<string, string> | undefined>;
  /**
   * Soft-deletes a context: it leaves {@link listContexts} and {@link updateContext} refuses it,
   * but its versions and encrypted secrets stay, because running clusters are pinned to a
   * version and must still render it. False for an unknown or already deleted id.
   */
  deleteContext(id: string, at?: Date): Promise<boolean>;

  /**
   * Issues a pairing PIN for one context version. Undefined when the PIN is held by a pairing
   * that is neither used nor expired at `createdAt` (default now), or when such a pairing has
   * the same `lookup` (the part of the PIN that names its pairing); a used or expired row with
   * the same PIN is replaced. Throws if the context version does not exist.
   */
  createPairing(input: {
    pin: string;
    lookup?: string;
    contextId: string;
    version: number;
    expiresAt: Date;
    createdAt?: Date;
    /** Refuse (throw {@link LivePairingLimitError}) when `owner` holds `limit` live pairings already; checked in the same transaction as the insert. */
    ownerLimit?: { owner: string; limit: number };
  }): Promise<PairingRecord | undefined>;
  /**
   * Marks the pairing used if it is unused and unexpired at `now` (one conditional UPDATE, so of
   * concurrent takes, even from several processes on one file, exactly one gets `ok`).
   */
  takePairing(pin: string, now?: Date): Promise<PairingTake>;
  /** Forgets pairings that expired before `expiredBefore` (their PINs then read as unknown); returns how many. */
  purgePairings(expiredBefore: Date): Promise<number>;
  /**
   * Charges one wrong guess to the live pairing with this `lookup`, if there is one; its
   * `budget`-th wrong guess uses it up (its PIN then fails like a used one). True if one was charged.
   */
  chargePairingMiss(lookup: string, now: Date, budget: number): Promise<boolean>;
  /** When each live (unused, unexpired at `now`) pairing of `owner`'s contexts expires, soonest first. */
  livePairingExpiries(owner: string, now: Date): Promise<string[]>;
  /**
   * The limit of failed PIN lookups per client (api/contexts.ts), shared by every process on
   * the store. Counts this lookup as a miss unless `client` has `limit` misses within
   * `windowMs` before `now` already, in one write transaction (so concurrent lookups at
   * several replicas cannot overshoot): then the seconds until its oldest miss leaves the
   * window. A lookup that turns out right gives its charge back ({@link refundPinLookup}).
   */
  chargePinLookup(client: string, now: Date, limit: { limit: number; windowMs: number }): Promise<{ charge: number } | { retryAfterSeconds: number }>;
  refundPinLookup(charge: number): Promise<void>;

  /** Inserts or replaces a cloud registration. */
  upsertCloud(cloud: CloudRecord): Promise<void>;
  /** Sorted by name. */
  listClouds(): Promise<CloudRecord[]>;
  getCloud(name: string): Promise<CloudRecord | undefined>;
  /** Forgets a cloud the worker no longer has. */
  deleteCloud(name: string): Promise<boolean>;

  /**
   * The read model. The workflows publish through activities; the API reads only these, so
   * reads never wait for a worker. A publish is kept only if it is later than the one stored
   * for its cluster (cluster publishes) or its service (service publishes): a later
   * `observedAt`, or the same with a higher `seq`. One with a later `observedAt` but a `seq`
   * not above the stored one is a lost workflow task's next attempt: it replaces that task's
   * writes, events included. Otherwise nothing at all is written and the result is false. So
   * a retried or late publish is harmless, and a publish and its events are written together
   * or not at all. `writer` names the workflow run that publishes (its events are marked with
   * it, and only its own are replaced).
   */
  publishCluster(input: PublishClusterInput, writer?: string): Promise<boolean>;
  /**
   * Keeps the service's summary, inserts or updates `upserts` and deletes `removed` (only
   * among the service's own instances), appends `events`; all or nothing, under the same
   * seq rule as {@link publishCluster}. Instances are stored under `input.service`. An update
   * keeps the provider id, creation and ready times it has when the upsert leaves them out:
   * a service workflow does not carry them across continue-as-new (they live here).
   */
  publishService(input: PublishServiceInput, writer?: string): Promise<boolean>;
  /** The provider ids of published instances, by instance id (ids without one are absent). */
  cloudInstanceIds(clusterId: string, ids: readonly string[]): Promise<Record<string, string>>;
  /**
   * Where a phone-home's instance stands in the read model: its published state; `REMOVED`
   * when it is not there but its service has published an instance with a higher ordinal
   * (ordinals are never reused and a batch is published lowest first, so it was there and
   * left); undefined when the read model cannot tell (not published yet, or nothing of the
   * service published).
   */
  instanceStanding(clusterId: string, service: string, instanceId: string, ordinal: number): Promise<InstanceState | 'REMOVED' | undefined>;
  /** The cluster workflow's last publish; undefined before its first. */
  getClusterView(clusterId: string): Promise<ClusterViewRecord | undefined>;
  /** Each service's last own publish, by service name; empty before the first. */
  getServiceViews(clusterId: string): Promise<ServiceViewRecord[]>;
  /**
   * A cluster with its views ({@link getCluster}, {@link getClusterView}, {@link getServiceViews})
   * in one statement — one round trip, one connection: what `GET /v1/clusters/:id` reads, and
   * pollers ask for it hundreds of times a second.
   */
  getClusterRead(id: string): Promise<{ cluster: ClusterRecord; view?: ClusterViewRecord; services: ServiceViewRecord[] } | undefined>;
  /** Published instances ordered by service, then ordinal; filters combine with AND. Throws {@link InvalidCursorError}. */
  listInstances(clusterId: string, query: InstanceQuery): Promise<Page<PublishedInstance>>;
  /**
   * Events oldest first, in the order they were accepted (a log, read forward like the
   * history it summarises; a page boundary never moves as new events arrive). Throws
   * {@link InvalidCursorError}.
   */
  listEvents(clusterId: string, query: EventQuery): Promise<Page<ClusterEvent>>;

  /** Issues an API token; its value is returned here once and stored only as a hash. */
  createApiToken(input: { owner: string; role: Role; expiresAt?: Date }): Promise<{ record: ApiTokenRecord; token: string }>;
  /** The record of a token value (revoked and expired ones too: the caller decides); undefined if unknown. */
  findApiToken(token: string): Promise<ApiTokenRecord | undefined>;
  getApiToken(id: string): Promise<ApiTokenRecord | undefined>;
  /** Tokens oldest first, of one owner or all. */
  listApiTokens(owner?: string): Promise<ApiTokenRecord[]>;
  /** Revokes at once; false if unknown or already revoked. */
  revokeApiToken(id: string, at?: Date): Promise<boolean>;

  /** Quotas (store/quotas-audit.ts): an owner's own quota as an admin set it; undefined: the site default applies. */
  getOwnerQuota(owner: string): Promise<OwnerQuotaRecord | undefined>;
  setOwnerQuota(owner: string, quota: Quota, at?: Date): Promise<OwnerQuotaRecord>;
  /** What the owner's counted reservations hold (not released, cluster not TERMINATED in the read model). */
  quotaUsage(owner: string): Promise<QuotaUsage>;
  /** Every owner holding quota now (as {@link quotaUsage} counts it) or given one of their own, by name (the metrics). */
  quotaUsageByOwner(): Promise<OwnerQuotaUsage[]>;
  /** Clusters of the owner that still hold quota while their read model says FAILED (their workflow may have ended). */
  quotaHeldByFailed(owner: string): Promise<string[]>;
  /** Stops counting a cluster's reservation (a FAILED cluster whose workflow ended); false if it held none. */
  releaseQuota(clusterId: string, at?: Date): Promise<boolean>;
  /**
   * Sets a service's reserved instance count in one IMMEDIATE transaction, checking the owner's
   * quota (throws {@link QuotaExceededError}) when it grows and `defaultQuota` is given (see
   * {@link ReserveScaleOptions}). Returns the count before; undefined when the cluster holds
   * no reservation for the service.
   */
  reserveScale(clusterId: string, service: string, instances: number, opts?: ReserveScaleOptions): Promise<{ previous: number } | undefined>;
  /** A change of definition (`PUT /v1/clusters/:id`): reserves what the new definition claims beyond what the cluster holds (checked); returns what it held. */
  reserveChange(clusterId: string, claim: QuotaClaim, defaultQuota: Quota): Promise<QuotaClaim['services'] | undefined>;
  /** Puts a cluster's reservation back to `services` (a change that was refused). */
  restoreReservation(clusterId: string, services: QuotaClaim['services']): Promise<void>;

  /** Appends an audit record (the table refuses UPDATE and DELETE). */
  appendAudit(rec: Omit<AuditRecord, 'id'>): Promise<AuditRecord>;
  /** Audit records newest first; filters combine with AND. Throws {@link InvalidCursorError}. */
  listAudit(query: Omit<AuditFilter, 'beforeId'> & { cursor?: string }): Promise<Page<AuditRecord>>;

  /**
   * Clusters by state, for the metrics: the read model's state, `PENDING` for a cluster whose
   * workflow has not published yet. One grouped query (read at every scrape).
   */
  clusterCountsByState(): Promise<{ state: string; count: number }[]>;
  /** Published (live) instances by cloud and state, for the metrics; one grouped query. */
  instanceCountsByCloudAndState(): Promise<{ cloud: string; state: string; count: number }[]>;

  /** Cheap liveness check for health endpoints; throws if the database is unusable. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

type ApiTokenRow = Selectable<Tables['api_tokens']>;

const toApiToken = (r: ApiTokenRow): ApiTokenRecord => ({
  id: r.id,
  owner: r.owner,
  role: r.role === 'admin' ? 'admin' : 'user',
  createdAt: r.created_at,
  ...(r.expires_at !== null && { expiresAt: r.expires_at }),
  ...(r.revoked_at !== null && { revokedAt: r.revoked_at }),
});

type DefinitionRow = Selectable<Tables['cluster_definitions']>;
type ClusterRow = Selectable<Tables['clusters']>;
type CloudRow = Pick<Selectable<Tables['clouds']>, 'name' | 'kind' | 'offerings' | 'info'>;

const toDefinition = (r: DefinitionRow): ClusterDefinitionRecord => ({
  id: r.id,
  name: r.name,
  definition: JSON.parse(r.definition) as ClusterDefinition,
  ...(r.owner !== null && { owner: r.owner }),
  createdAt: r.created_at,
  ...(r.deleted_at !== null && { deletedAt: r.deleted_at }),
});

const toCluster = (r: ClusterRow): ClusterRecord => ({
  id: r.id,
  name: r.name,
  definitionId: r.definition_id,
  cloud: r.cloud,
  ...(r.owner !== null && { owner: r.owner }),
  ...(r.idempotency_key !== null && { idempotencyKey: r.idempotency_key }),
  ...(r.request_hash !== null && { requestHash: r.request_hash }),
  ...(r.contexts !== null && { contexts: JSON.parse(r.contexts) as Record<string, PinnedContext> }),
  ...(r.lifetime !== null && r.lifetime !== undefined && { lifetime: JSON.parse(r.lifetime) as Lifetime }),
  ...(r.windows !== null && r.windows !== undefined && { windows: JSON.parse(r.windows) as Window[] }),
  createdAt: r.created_at,
});

const toCloud = (r: CloudRow): CloudRecord => ({
  name: r.name,
  kind: r.kind,
  offerings: JSON.parse(r.offerings) as CloudOffering[],
  ...(r.info ? (JSON.parse(r.info) as Pick<CloudRecord, 'endpoint' | 'credentials' | 'images' | 'quota'>) : {}),
});

interface ContextRow {
  context_id: string;
  version: number;
  name: string;
  context: string;
  created_at: string;
  deleted_at: string | null;
  owner: string | null;
}

const toContext = (r: ContextRow): ContextRecord => ({
  id: r.context_id,
  version: r.version,
  name: r.name,
  context: JSON.parse(r.context) as Context,
  ...(r.owner !== null && { owner: r.owner }),
  createdAt: r.created_at,
  ...(r.deleted_at !== null && { deletedAt: r.deleted_at }),
});


/**
 * Whether a publish is kept over the one stored: it was observed later, or at the same time
 * with a higher `seq`. A workflow's time is its workflow task's start, so its writes come in
 * that order (one task's writes share a time and count up). Why the time comes first:
 * workflows publish through local activities, which run before their workflow task completes.
 * When the task is lost (it timed out on a loaded worker, or the worker died), its writes have
 * landed but its history has not, and the task's next attempt runs the same code on more
 * history (a signal that came in between) and publishes under the same seqs again, later.
 * Its writes replace the lost task's; a write of the lost task that lands after them, or a
 * retried copy of any write, is not later than what is stored and is refused.
 */
const supersedes = (input: { seq: number; observedAt: string }, stored: { seq: number; observed_at: string } | undefined): boolean =>
  stored === undefined || input.observedAt > stored.observed_at || (input.observedAt === stored.observed_at && input.seq > stored.seq);

/** The read model's rows, as store/tables.ts has them. */
type ClusterViewRow = Selectable<Tables['cluster_views']>;
type ServiceViewRow = Selectable<Tables['service_views']>;
type InstanceRow = Selectable<Tables['instances']>;
type EventRow = Selectable<Tables['cluster_events']>;

const toClusterView = (r: ClusterViewRow): ClusterViewRecord => ({
  clusterId: r.cluster_id,
  seq: r.seq,
  observedAt: r.observed_at,
  state: r.state as ClusterState,
  ...(r.message !== null && { message: r.message }),
  services: JSON.parse(r.services) as PublishedService[],
  ...(r.expires_at !== null && { expiresAt: r.expires_at }),
  ...(r.change !== null && { change: JSON.parse(r.change) as ChangeView }),
  ...(r.drain_until !== null && { drainUntil: r.drain_until }),
});

const toServiceView = (r: ServiceViewRow): ServiceViewRecord => ({
  clusterId: r.cluster_id,
  service: r.service,
  seq: r.seq,
  observedAt: r.observed_at,
  summary: JSON.parse(r.summary) as PublishedService,
});

const toInstance = (r: InstanceRow): PublishedInstance => ({
  id: r.id,
  name: r.name,
  service: r.service,
  ordinal: r.ordinal,
  state: r.state as InstanceState,
  cloud: r.cloud,
  ...(r.host !== null && { host: r.host }),
  ...(r.cloud_instance_id !== null && { cloudInstanceId: r.cloud_instance_id }),
  ...(r.created_at !== null && { createdAt: r.created_at }),
  ...(r.ready_at !== null && { readyAt: r.ready_at }),
  ...(r.message !== null && { message: r.message }),
  ...(r.spec !== null && { spec: r.spec }),
});

const toEvent = (r: EventRow): ClusterEvent => ({
  at: r.at,
  kind: r.kind as ClusterEvent['kind'],
  ...(r.service !== null && { service: r.service }),
  ...(r.instance !== null && { instance: r.instance }),
  message: r.message,
});

/**
 * Cursors are the keyset of the last item returned, base64url JSON: opaque to clients, and
 * stable under inserts (a page boundary does not shift when instances or events are added).
 */
const encodeCursor = (key: unknown[]): string => Buffer.from(JSON.stringify(key), 'utf8').toString('base64url');

function decodeCursor(cursor: string): unknown[] {
  try {
    const key: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (Array.isArray(key)) return key;
  } catch {
    // Falls through to the same error as a well-formed non-cursor.
  }
  throw new InvalidCursorError();
}

/** `[service, ordinal]` after which an instance page starts. */
function instanceCursor(cursor: string): { service: string; ordinal: number } {
  const [service, ordinal, ...rest] = decodeCursor(cursor);
  if (typeof service !== 'string' || !Number.isSafeInteger(ordinal) || rest.length > 0) throw new InvalidCursorError();
  return { service, ordinal: ordinal as number };
}

/** `[eventId]` after which an event page starts. */
function eventCursor(cursor: string): number {
  const [id, ...rest] = decodeCursor(cursor);
  if (!Number.isSafeInteger(id) || rest.length > 0) throw new InvalidCursorError();
  return id as number;
}

/** Reads one more row than asked, to know whether a `next` page exists without a count. */
function pageOf<R, T>(rows: R[], limit: number, map: (r: R) => T, keyOf: (r: R) => unknown[]): Page<T> {
  const items = rows.slice(0, limit);
  return {
    items: items.map(map),
    ...(rows.length > limit && { next: encodeCursor(keyOf(items[items.length - 1])) }),
  };
}

const SECRETS_FORMAT = 'v1:';
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** Binds a ciphertext to its row, so one version's secrets cannot be pasted into another. */
const secretsAad = (id: string, version: number): Buffer => Buffer.from(`cloudgate-context-secrets:${id}:${version}`, 'utf8');

function encryptSecrets(key: Buffer, id: string, version: number, secrets: Record<string, string>): string {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(secretsAad(id, version));
  const data = Buffer.concat([cipher.update(JSON.stringify(secrets), 'utf8'), cipher.final()]);
  return SECRETS_FORMAT + Buffer.concat([iv, cipher.getAuthTag(), data]).toString('base64');
}

function decryptSecrets(key: Buffer, id: string, version: number, stored: string): Record<string, string> {
  if (!stored.startsWith(SECRETS_FORMAT)) throw new Error(`secrets of context ${id} v${version} are in an unknown format`);
  const raw = Buffer.from(stored.slice(SECRETS_FORMAT.length), 'base64');
  const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, IV_BYTES));
  decipher.setAAD(secretsAad(id, version));
  decipher.setAuthTag(raw.subarray(IV_BYTES, IV_BYTES + TAG_BYTES));
  try {
    const plain = Buffer.concat([decipher.update(raw.subarray(IV_BYTES + TAG_BYTES)), decipher.final()]).toString('utf8');
    return JSON.parse(plain) as Record<string, string>;
  } catch (err) {
    throw new Error(`cannot decrypt the secrets of context ${id} v${version} (wrong secrets key?)`, { cause: err });
  }
}

/** `ctx-` and 12 hex digits, like definition ids. */
const newContextId = (): string => `ctx-${randomUUID().replace(/-/g, '').slice(0, 12)}`;

/** `def-` and 12 hex digits: short enough to type, random enough for one installation. */
const newDefinitionId = (): string => `def-${randomUUID().replace(/-/g, '').slice(0, 12)}`;

/** Rows changed by an UPDATE, DELETE or upsert, as a number. */
const changed = (r: { numUpdatedRows?: bigint; numDeletedRows?: bigint; numInsertedOrUpdatedRows?: bigint }): number =>
  Number(r.numUpdatedRows ?? r.numDeletedRows ?? r.numInsertedOrUpdatedRows ?? 0n);

/** Rows per statement of a batched insert or `IN` list: far below either engine's parameter limit. */
const BATCH = 200;
const slices = <T>(items: readonly T[]): T[][] => Array.from({ length: Math.ceil(items.length / BATCH) }, (_, i) => items.slice(i * BATCH, (i + 1) * BATCH));

/** Options of {@link openSqliteStore} and {@link openPostgresStore}. */
export interface StoreOptions {
  /**
   * AES-256-GCM key (32 bytes) for context secrets. Default: {@link loadSecretsKey} with the
   * store file's folder (PostgreSQL: `dataDir`) as data dir (`CLOUDGATE_SECRETS_KEY`, else
   * `<folder>/secrets-key`); for `':memory:'` a random key that lives as long as the store.
   */
  secretsKey?: Buffer;
  /** PostgreSQL only: where `<dataDir>/secrets-key` is when `secretsKey` and `CLOUDGATE_SECRETS_KEY` are unset. */
  dataDir?: string;
  /** PostgreSQL only: connections of this process's pool (default 10). */
  maxConnections?: number;
}

/**
 * Opens (creating and migrating if needed) a SQLite store. `':memory:'` gives a private
 * in-memory one. WAL mode lets the API read while a worker writes cloud registrations.
 */
export async function openSqliteStore(file: string, options: StoreOptions = {}): Promise<Store> {
  const inMemory = file === ':memory:' || file === '';
  const secretsKey = options.secretsKey ?? (inMemory ? randomBytes(SECRETS_KEY_BYTES) : loadSecretsKey({ dataDir: path.dirname(file) }));
  checkSecretsKey(secretsKey);
  return createStore(await openSqliteDatabase(file), secretsKey);
}

/**
 * Opens a PostgreSQL store at `url` (`postgres://user:password@host:port/database`) and
 * migrates its database. Every API replica and worker that opens the same database shares
 * one store: they must also share the secrets key (`CLOUDGATE_SECRETS_KEY`, or the same
 * `<dataDir>/secrets-key`).
 */
export async function openPostgresStore(url: string, options: StoreOptions = {}): Promise<Store> {
  const secretsKey = options.secretsKey ?? loadSecretsKey({ dataDir: options.dataDir ?? 'data' });
  checkSecretsKey(secretsKey);
  return createStore(await openPostgresDatabase(url, { maxConnections: options.maxConnections }), secretsKey);
}

/**
 * The store a process of this installation uses: PostgreSQL when `databaseUrl`
 * (`CLOUDGATE_DATABASE_URL`) is set, else SQLite in `<dataDir>/cloudgate.sqlite`. The API and
 * the workers both open it this way, so they always meet in the same store.
 */
export function openStore(config: Pick<Config, 'dataDir' | 'databaseUrl'>, options: Omit<StoreOptions, 'dataDir'> = {}): Promise<Store> {
  return config.databaseUrl
    ? openPostgresStore(config.databaseUrl, { ...options, dataDir: config.dataDir })
    : openSqliteStore(path.join(config.dataDir, 'cloudgate.sqlite'), options);
}

/** What a store of `config` is, for logs: never the URL (it may hold a password). */
export const describeStore = (config: Pick<Config, 'dataDir' | 'databaseUrl'>): string =>
  config.databaseUrl ? `PostgreSQL at ${safeDatabaseUrl(config.databaseUrl)}` : `SQLite ${path.join(config.dataDir, 'cloudgate.sqlite')}`;

/** `postgres://user@host:port/db`: the URL without its password or query. */
export function safeDatabaseUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.username ? `${decodeURIComponent(u.username)}@` : ''}${u.host}${u.pathname}`;
  } catch {
    return 'postgres://(unparsable URL)';
  }
}

function checkSecretsKey(key: Buffer): void {
  if (key.length !== SECRETS_KEY_BYTES) throw new Error(`the secrets key must be ${SECRETS_KEY_BYTES} bytes, got ${key.length}`);
}

/** A context version's columns joined with its context's deletion time and owner. */
const contextColumns = ['v.context_id', 'v.version', 'v.name', 'v.context', 'v.created_at', 'c.deleted_at', 'c.owner'] as const;

/** How many reads {@link coalesced} puts in one query at most. */
const MAX_COALESCED = 500;

/**
 * A read that concurrent callers share: every call made before the event loop's next check
 * phase (`setImmediate`) goes to the database in one `load` of all their keys — a burst of
 * requests costs one round trip and one compiled query, where each used to take its own pool
 * connection (10,000 guests phoning home within seconds, 200 reads a second of one cluster).
 * An idle caller waits for nothing. Nothing is cached: each call sees what was committed before
 * it was made. `load` answers its keys in order; equal keys (by `keyOf`) are asked once.
 */
function coalesced<K, V>(load: (keys: readonly K[]) => Promise<V[]>, keyOf: (key: K) => string = String): (key: K) => Promise<V> {
  const loader = new DataLoader<K, V>(
    async (keys) => {
      const unique = new Map<string, K>();
      for (const k of keys) unique.set(keyOf(k), k);
      const answers = await load([...unique.values()]);
      const byKey = new Map([...unique.keys()].map((k, i) => [k, answers[i]]));
      return keys.map((k) => byKey.get(keyOf(k)) as V);
    },
    { cache: false, maxBatchSize: MAX_COALESCED, batchScheduleFn: (run) => setImmediate(run) },
  );
  return (key) => loader.load(key);
}

/**
 * A read by keys that is built and compiled once per number of keys, then run with each call's
 * keys: building and compiling a query took kysely about 0.1 ms, and a `GET` of a cluster makes
 * two (its token, its cluster). `build` gets stand-in keys; the compiled parameters that are
 * stand-ins are swapped for the call's keys, every other parameter stays as compiled.
 */
function compiledPerCount<O>(db: Db, build: (keys: string[]) => Compilable<O>): (keys: readonly string[]) => Promise<O[]> {
  const compiled = new Map<number, { query: CompiledQuery<O>; slots: (number | undefined)[] }>();
  return async (keys) => {
    let c = compiled.get(keys.length);
    if (!c) {
      const standIns = keys.map((_, i) => `\u0000cloudgate-key-${i}`);
      const query = build(standIns).compile();
      const slotOf = new Map(standIns.map((s, i) => [s, i]));
      const slots = query.parameters.map((p) => (typeof p === 'string' ? slotOf.get(p) : undefined));
      if (new Set(slots.filter((s) => s !== undefined)).size !== keys.length) throw new Error(`compiledPerCount: not every key is a parameter of ${query.sql}`);
      c = { query, slots };
      compiled.set(keys.length, c); // at most MAX_COALESCED entries: coalesced loads ask no more keys at once
    }
    const { query, slots } = c;
    const parameters = query.parameters.map((p, i) => (slots[i] === undefined ? p : keys[slots[i]]));
    return (await db.executeQuery<O>({ ...query, parameters })).rows;
  };
}

/** The {@link Store} over an open database: one implementation for both engines. */
function createStore(database: StoreDatabase, secretsKey: Buffer): Store {
  const { db, write } = database;
  const qa = quotaAuditStatements(database);

  /** Each cluster's row and views with one statement for all of them (the views as JSON subqueries, each engine's JSON functions; SQLite answers JSON as text). */
  const json = database.engine === 'postgres' ? { array: pgJsonArrayFrom, object: pgJsonObjectFrom } : { array: sqliteJsonArrayFrom, object: sqliteJsonObjectFrom };
  const clusterRows = compiledPerCount(db, (ids) =>
    db
      .selectFrom('clusters as c')
      .selectAll('c')
      .select((eb) => [
        json
          .object(eb.selectFrom('cluster_views as v').select(['v.cluster_id', 'v.seq', 'v.observed_at', 'v.state', 'v.message', 'v.services', 'v.expires_at', 'v.change', 'v.drain_until']).whereRef('v.cluster_id', '=', 'c.id'))
          .as('view'),
        json
          .array(eb.selectFrom('service_views as s').select(['s.cluster_id', 's.service', 's.seq', 's.observed_at', 's.summary']).whereRef('s.cluster_id', '=', 'c.id').orderBy('s.service'))
          .as('service_views'),
      ])
      .where('c.id', 'in', ids),
  );
  const clusterReads = coalesced(async (ids: readonly string[]) => {
    const rows = await clusterRows(ids);
    const parsed = <T>(v: T | string | null): T | null => (typeof v === 'string' ? (JSON.parse(v) as T) : v);
    const byId = new Map(
      rows.map((r) => {
        const view = parsed(r.view);
        return [r.id, { cluster: toCluster(r), ...(view && { view: toClusterView(view) }), services: (parsed(r.service_views) ?? []).map(toServiceView) }];
      }),
    );
    return ids.map((id) => byId.get(id));
  });

  /** Token records by the hashes of their values, all in one statement. */
  const tokenRows = compiledPerCount(db, (hashes) => db.selectFrom('api_tokens').selectAll().where('token_hash', 'in', hashes));
  const tokensByHash = coalesced(async (hashes: readonly string[]) => {
    const rows = await tokenRows(hashes);
    const byHash = new Map(rows.map((r) => [r.token_hash, toApiToken(r)]));
    return hashes.map((h) => byHash.get(h));
  });

  /**
   * Where instances stand in the read model, in at most two statements for all of them: each
   * one's state; for one not (or no longer) there, REMOVED if its service has a higher ordinal.
   */
  const standings = coalesced(
    async (keys: readonly { clusterId: string; service: string; instanceId: string; ordinal: number }[]) => {
      const found = new Map<string, string>();
      const rows = await db
        .selectFrom('instances')
        .select(['cluster_id', 'id', 'state'])
        .where('cluster_id', 'in', [...new Set(keys.map((k) => k.clusterId))]) // the primary key's order: (cluster_id, id)
        .where('id', 'in', [...new Set(keys.map((k) => k.instanceId))])
        .execute();
      for (const r of rows) {
        found.set(`${r.cluster_id}/${r.id}`, r.state);
      }
      const missing = keys.filter((k) => !found.has(`${k.clusterId}/${k.instanceId}`));
      const highest = new Map<string, number>();
      if (missing.length > 0) {
        const rows = await db
          .selectFrom('instances')
          .select((eb) => ['cluster_id', 'service', eb.fn.max('ordinal').as('ordinal')])
          .where('cluster_id', 'in', [...new Set(missing.map((k) => k.clusterId))])
          .where('service', 'in', [...new Set(missing.map((k) => k.service))])
          .groupBy(['cluster_id', 'service'])
          .execute();
        for (const r of rows) if (r.ordinal !== null) highest.set(`${r.cluster_id}/${r.service}`, Number(r.ordinal));
      }
      return keys.map((k): InstanceState | 'REMOVED' | undefined => {
        const state = found.get(`${k.clusterId}/${k.instanceId}`);
        if (state !== undefined) return state as InstanceState;
        return (highest.get(`${k.clusterId}/${k.service}`) ?? -1) > k.ordinal ? 'REMOVED' : undefined;
      });
    },
    (k) => `${k.clusterId}/${k.service}/${k.instanceId}/${k.ordinal}`,
  );

  const contextsJoined = (executor: Db) => executor.selectFrom('context_versions as v').innerJoin('contexts as c', 'c.id', 'v.context_id').select(contextColumns);
  const latestContext = (executor: Db, id: string) => contextsJoined(executor).where('v.context_id', '=', id).orderBy('v.version', 'desc').limit(1).executeTakeFirst();

  const insertVersion = async (trx: Db, id: string, version: number, input: ContextVersionInput, createdAt: string, owner: string | undefined): Promise<ContextRecord> => {
    await trx
      .insertInto('context_versions')
      .values({ context_id: id, version, name: input.name, context: JSON.stringify(input.context), secrets: encryptSecrets(secretsKey, id, version, input.secrets), created_at: createdAt })
      .execute();
    return { id, version, name: input.name, context: input.context, ...(owner !== undefined && { owner }), createdAt };
  };

  /**
   * A publish's events, marked with the run and publish that wrote them. One that supersedes a
   * lost workflow task's writes (`seq` not above the `stored` one, see {@link supersedes}) first
   * deletes what that run wrote from its seq on: the task's next attempt emits them again.
   * Without a writer (a direct call), nothing is deleted.
   */
  const appendEvents = async (trx: Db, clusterId: string, writer: string | undefined, seq: number, stored: { seq: number } | undefined, events: ClusterEvent[]) => {
    if (writer !== undefined && stored !== undefined && seq <= stored.seq) await trx.deleteFrom('cluster_events').where('cluster_id', '=', clusterId).where('run_id', '=', writer).where('pub_seq', '>=', seq).execute();
    for (const part of slices(events)) {
      await trx
        .insertInto('cluster_events')
        .values(
          part.map((e) => ({
            cluster_id: clusterId,
            at: e.at,
            kind: e.kind,
            service: e.service ?? null,
            instance: e.instance ?? null,
            message: e.message,
            run_id: writer ?? null,
            pub_seq: seq,
          })),
        )
        .execute();
    }
  };

  const livePairings = (executor: Db, owner: string, now: string) =>
    executor
      .selectFrom('pairings as p')
      .innerJoin('contexts as c', 'c.id', 'p.context_id')
      .select('p.expires_at')
      .where('c.owner', '=', owner)
      .where('c.deleted_at', 'is', null)
      .where('p.used_at', 'is', null)
      .where('p.expires_at', '>', now)
      .orderBy('p.expires_at')
      .execute();

  return {
    ...capacityLedger(database),
    async createDefinition({ name, definition, owner }) {
      const rec: ClusterDefinitionRecord = { id: newDefinitionId(), name, definition, ...(owner !== undefined && { owner }), createdAt: new Date().toISOString() };
      await db.insertInto('cluster_definitions').values({ id: rec.id, name, definition: JSON.stringify(definition), created_at: rec.createdAt, owner: owner ?? null }).execute();
      return rec;
    },
    async getDefinition(id) {
      const r = await db.selectFrom('cluster_definitions').selectAll().where('id', '=', id).executeTakeFirst();
      return r && toDefinition(r);
    },
    listDefinitions: async () =>
      (await db.selectFrom('cluster_definitions').selectAll().where('deleted_at', 'is', null).orderBy('created_at').orderBy('id').execute()).map(toDefinition),
    deleteDefinition: async (id, at = new Date()) =>
      changed(await db.updateTable('cluster_definitions').set({ deleted_at: at.toISOString() }).where('id', '=', id).where('deleted_at', 'is', null).executeTakeFirst()) > 0,
    clustersOfDefinition: async (definitionId) =>
      (await db.selectFrom('clusters').selectAll().where('definition_id', '=', definitionId).orderBy('created_at').orderBy('id').execute()).map(toCluster),

    async createCluster(input, quota) {
      const rec: ClusterRecord = { ...input, createdAt: input.createdAt ?? new Date().toISOString() };
      try {
        // The row and its reservation together, after the quota check, or nothing.
        // With a quota, in the owner's turn (store/quotas-audit.ts): the check reads what every earlier submission reserved.
        const transaction = <T>(fn: (trx: Db) => Promise<T>) => (quota ? database.writeSerially(ownerQuotaKey(quota.claim.owner), fn) : write(fn));
        await transaction(async (trx) => {
          await trx
            .insertInto('clusters')
            .values({
              id: rec.id,
              name: rec.name,
              definition_id: rec.definitionId,
              cloud: rec.cloud,
              owner: rec.owner ?? null,
              idempotency_key: rec.idempotencyKey ?? null,
              request_hash: rec.requestHash ?? null,
              contexts: rec.contexts ? JSON.stringify(rec.contexts) : null,
              lifetime: rec.lifetime ? JSON.stringify(rec.lifetime) : null,
              windows: rec.windows ? JSON.stringify(rec.windows) : null,
              created_at: rec.createdAt,
            })
            .execute();
          if (quota) await qa.reserveNewCluster(trx, rec.id, quota.claim, quota.defaultQuota);
        });
      } catch (err) {
        const violated = database.uniqueViolation(err);
        if (violated !== undefined) {
          const field = violated.includes('idempotency_key') ? 'idempotencyKey' : 'id';
          throw new DuplicateKeyError(`cluster ${field} already exists`, field, { cause: err });
        }
        throw err;
      }
      return rec;
    },
    async getCluster(id) {
      const r = await db.selectFrom('clusters').selectAll().where('id', '=', id).executeTakeFirst();
      return r && toCluster(r);
    },
    listClusters: async () => (await db.selectFrom('clusters').selectAll().orderBy('created_at').orderBy('id').execute()).map(toCluster),
    deleteCluster: (id) =>
      write(async (trx) => {
        await qa.deleteReservation(trx, id);
        return changed(await trx.deleteFrom('clusters').where('id', '=', id).executeTakeFirst()) > 0;
      }),
    async findClusterByIdempotencyKey(key) {
      const r = await db.selectFrom('clusters').selectAll().where('idempotency_key', '=', key).executeTakeFirst();
      return r && toCluster(r);
    },

    createContext: (input, owner) =>
      write(async (trx) => {
        const id = newContextId();
        const createdAt = new Date().toISOString();
        await trx.insertInto('contexts').values({ id, created_at: createdAt, owner: owner ?? null }).execute();
        return insertVersion(trx, id, 1, input, createdAt, owner);
      }),
    // Concurrent updates get distinct versions: the no-op UPDATE locks the context's row (PostgreSQL; SQLite's
    // transaction holds the file), so the second reads the latest version only after the first wrote it.
    updateContext: (id, input) =>
      write(async (trx) => {
        const live = changed(await trx.updateTable('contexts').set((eb) => ({ deleted_at: eb.ref('deleted_at') })).where('id', '=', id).where('deleted_at', 'is', null).executeTakeFirst());
        if (live === 0) return undefined;
        const latest = await latestContext(trx, id);
        if (!latest) return undefined;
        return insertVersion(trx, id, latest.version + 1, input, new Date().toISOString(), latest.owner ?? undefined);
      }),
    async getContext(id, version) {
      const r = version === undefined ? await latestContext(db, id) : await contextsJoined(db).where('v.context_id', '=', id).where('v.version', '=', version).executeTakeFirst();
      return r && toContext(r);
    },
    listContexts: async () =>
      (
        await contextsJoined(db)
          .where('c.deleted_at', 'is', null)
          .where('v.version', '=', (eb) => eb.selectFrom('context_versions as w').select((w) => w.fn.max('w.version').as('latest')).whereRef('w.context_id', '=', 'c.id'))
          .orderBy('c.created_at')
          .orderBy('c.rowid') // creation order within one millisecond (ids are random)
          .execute()
      ).map(toContext),
    listContextVersions: async (id) => (await contextsJoined(db).where('v.context_id', '=', id).orderBy('v.version').execute()).map(toContext),
    async getContextSecrets(id, version) {
      const r = await db.selectFrom('context_versions').select('secrets').where('context_id', '=', id).where('version', '=', version).executeTakeFirst();
      return r && decryptSecrets(secretsKey, id, version, r.secrets);
    },
    deleteContext: async (id, at = new Date()) =>
      changed(await db.updateTable('contexts').set({ deleted_at: at.toISOString() }).where('id', '=', id).where('deleted_at', 'is', null).executeTakeFirst()) > 0,

    async createPairing({ pin, lookup, contextId, version, expiresAt, createdAt = new Date(), ownerLimit }) {
      const rec: PairingRecord = { pin, contextId, version, createdAt: createdAt.toISOString(), expiresAt: expiresAt.toISOString() };
      const row = { lookup: lookup ?? null, misses: 0, context_id: contextId, version, created_at: rec.createdAt, expires_at: rec.expiresAt, used_at: null };
      const made = await write(async (trx) => {
        if (ownerLimit) {
          const live = await livePairings(trx, ownerLimit.owner, rec.createdAt);
          if (live.length >= ownerLimit.limit) throw new LivePairingLimitError(ownerLimit.owner, live.map((r) => r.expires_at));
        }
        if (lookup !== undefined) {
          const taken = await trx.selectFrom('pairings').select('pin').where('lookup', '=', lookup).where('used_at', 'is', null).where('expires_at', '>', rec.createdAt).executeTakeFirst();
          if (taken) return false;
        }
        // Replaces a row with the same PIN only if that one is used or expired; else changes nothing.
        const r = await trx
          .insertInto('pairings')
          .values({ pin, ...row })
          .onConflict((oc) =>
            oc
              .column('pin')
              .doUpdateSet(row)
              .where((eb) => eb.or([eb('pairings.used_at', 'is not', null), eb('pairings.expires_at', '<=', eb.ref('excluded.created_at'))])),
          )
          .executeTakeFirst();
        return changed(r) > 0;
      });
      return made ? rec : undefined;
    },
    // The conditional UPDATE alone decides who wins (of takes racing in any number of processes, one
    // matches the unused row); the transaction only keeps the read that explains a loss consistent with it.
    takePairing: (pin, now = new Date()) =>
      write(async (trx): Promise<PairingTake> => {
        const at = now.toISOString();
        const won = changed(await trx.updateTable('pairings').set({ used_at: at }).where('pin', '=', pin).where('used_at', 'is', null).where('expires_at', '>', at).executeTakeFirst()) > 0;
        const r = await trx.selectFrom('pairings').selectAll().where('pin', '=', pin).executeTakeFirst();
        if (!r) return { status: 'unknown' };
        if (won) return { status: 'ok', contextId: r.context_id, version: r.version };
        if (r.used_at !== null) return { status: 'used', usedAt: r.used_at };
        return { status: 'expired', expiresAt: r.expires_at };
      }),
    purgePairings: async (expiredBefore) => changed(await db.deleteFrom('pairings').where('expires_at', '<', expiredBefore.toISOString()).executeTakeFirst()),
    // Both SET expressions read the row as it was: the budget-th miss also marks it used.
    chargePairingMiss: async (lookup, now, budget) => {
      const at = now.toISOString();
      const r = await db
        .updateTable('pairings')
        .set((eb) => ({
          misses: eb('misses', '+', 1),
          used_at: eb.case().when(eb(eb('misses', '+', 1), '>=', budget)).then(at).else(eb.ref('used_at')).end(),
        }))
        .where('lookup', '=', lookup)
        .where('used_at', 'is', null)
        .where('expires_at', '>', at)
        .executeTakeFirst();
      return changed(r) > 0;
    },
    livePairingExpiries: async (owner, now) => (await livePairings(db, owner, now.toISOString())).map((r) => r.expires_at),
    chargePinLookup: (client, now, { limit, windowMs }) =>
      write(async (trx) => {
        const at = now.toISOString();
        const since = new Date(now.getTime() - windowMs).toISOString();
        // Misses that left the window are forgotten (everyone's: the table stays as small as the window).
        await trx.deleteFrom('pin_lookup_misses').where('at', '<=', since).execute();
        const recent = await trx.selectFrom('pin_lookup_misses').select('at').where('client', '=', client).orderBy('at').orderBy('id').execute();
        if (recent.length >= limit) return { retryAfterSeconds: Math.max(1, Math.ceil((Date.parse(recent[0].at) + windowMs - now.getTime()) / 1000)) };
        const { id } = await trx.insertInto('pin_lookup_misses').values({ client, at }).returning('id').executeTakeFirstOrThrow();
        return { charge: Number(id) };
      }),
    refundPinLookup: async (charge) => void (await db.deleteFrom('pin_lookup_misses').where('id', '=', charge).execute()),

    deleteCloud: async (name) => changed(await db.deleteFrom('clouds').where('name', '=', name).executeTakeFirst()) > 0,
    async upsertCloud({ name, kind, offerings, endpoint, credentials, images, quota }) {
      const info = endpoint || credentials || images || quota ? JSON.stringify({ endpoint, credentials, images, quota }) : null;
      const row = { kind, offerings: JSON.stringify(offerings), info, updated_at: new Date().toISOString() };
      await db
        .insertInto('clouds')
        .values({ name, ...row })
        .onConflict((oc) => oc.column('name').doUpdateSet(row))
        .execute();
    },
    listClouds: async () => (await db.selectFrom('clouds').select(['name', 'kind', 'offerings', 'info']).orderBy('name').execute()).map(toCloud),
    async getCloud(name) {
      const r = await db.selectFrom('clouds').select(['name', 'kind', 'offerings', 'info']).where('name', '=', name).executeTakeFirst();
      return r && toCloud(r);
    },

    // Compare and write in one write transaction: two writers (retried activity, second worker)
    // cannot both pass the seq check, and a reader never sees half a publish.
    publishCluster: (input, writer) =>
      write(async (trx) => {
        const stored = await trx.selectFrom('cluster_views').select(['seq', 'observed_at']).where('cluster_id', '=', input.clusterId).executeTakeFirst();
        if (!supersedes(input, stored)) return false;
        const row = {
          seq: input.seq,
          observed_at: input.observedAt,
          state: input.state,
          message: input.message ?? null,
          services: JSON.stringify(input.services),
          expires_at: input.expiresAt ?? null,
          drain_until: input.drainUntil ?? null,
        };
        // A publish without `change` keeps the change stored (only one that names it replaces it).
        const change = input.change !== undefined ? { change: input.change ? JSON.stringify(input.change) : null } : {};
        await trx
          .insertInto('cluster_views')
          .values({ cluster_id: input.clusterId, ...row, change: change.change ?? null })
          .onConflict((oc) => oc.column('cluster_id').doUpdateSet({ ...row, ...change }))
          .execute();
        // A change started or ended: the cluster runs (or converges to) another definition and pins.
        if (input.spec) {
          await trx
            .updateTable('clusters')
            .set({ definition_id: input.spec.definitionId, contexts: input.spec.contexts ? JSON.stringify(input.spec.contexts) : null })
            .where('id', '=', input.clusterId)
            .execute();
        }
        await appendEvents(trx, input.clusterId, writer, input.seq, stored, input.events);
        return true;
      }),
    publishService: (input, writer) =>
      write(async (trx) => {
        const stored = await trx
          .selectFrom('service_views')
          .select(['seq', 'observed_at'])
          .where('cluster_id', '=', input.clusterId)
          .where('service', '=', input.service)
          .executeTakeFirst();
        if (!supersedes(input, stored)) return false;
        const view = { seq: input.seq, observed_at: input.observedAt, summary: JSON.stringify(input.summary) };
        await trx
          .insertInto('service_views')
          .values({ cluster_id: input.clusterId, service: input.service, ...view })
          .onConflict((oc) => oc.columns(['cluster_id', 'service']).doUpdateSet(view))
          .execute();
        // One row per instance id (the last upsert of an id wins, as when they were written one by one).
        const upserts = [...new Map(input.upserts.map((i) => [i.id, i])).values()];
        for (const part of slices(upserts)) {
          await trx
            .insertInto('instances')
            .values(
              part.map((i) => ({
                cluster_id: input.clusterId,
                id: i.id,
                service: input.service,
                ordinal: i.ordinal,
                name: i.name,
                state: i.state,
                cloud: i.cloud,
                cloud_instance_id: i.cloudInstanceId ?? null,
                created_at: i.createdAt ?? null,
                ready_at: i.readyAt ?? null,
                message: i.message ?? null,
                host: i.host ?? null,
                spec: i.spec ?? null,
              })),
            )
            .onConflict((oc) =>
              oc.columns(['cluster_id', 'id']).doUpdateSet((eb) => ({
                service: eb.ref('excluded.service'),
                ordinal: eb.ref('excluded.ordinal'),
                name: eb.ref('excluded.name'),
                state: eb.ref('excluded.state'),
                cloud: eb.ref('excluded.cloud'),
                // What the upsert leaves out is kept: a service workflow does not carry it across continue-as-new.
                cloud_instance_id: eb.fn.coalesce(eb.ref('excluded.cloud_instance_id'), eb.ref('instances.cloud_instance_id')),
                host: eb.fn.coalesce(eb.ref('excluded.host'), eb.ref('instances.host')),
                spec: eb.fn.coalesce(eb.ref('excluded.spec'), eb.ref('instances.spec')),
                created_at: eb.fn.coalesce(eb.ref('excluded.created_at'), eb.ref('instances.created_at')),
                ready_at: eb.fn.coalesce(eb.ref('excluded.ready_at'), eb.ref('instances.ready_at')),
                message: eb.ref('excluded.message'),
              })),
            )
            .execute();
        }
        for (const part of slices(input.removed)) {
          await trx.deleteFrom('instances').where('cluster_id', '=', input.clusterId).where('service', '=', input.service).where('id', 'in', part).execute();
        }
        await appendEvents(trx, input.clusterId, writer, input.seq, stored, input.events);
        return true;
      }),
    async getClusterView(clusterId) {
      const r = await db.selectFrom('cluster_views').selectAll().where('cluster_id', '=', clusterId).executeTakeFirst();
      return r && toClusterView(r);
    },
    getServiceViews: async (clusterId) => (await db.selectFrom('service_views').selectAll().where('cluster_id', '=', clusterId).orderBy('service').execute()).map(toServiceView),
    getClusterRead: (id) => clusterReads(id),
    async cloudInstanceIds(clusterId, ids) {
      const out: Record<string, string> = {};
      for (const part of slices(ids)) {
        const rows = await db.selectFrom('instances').select(['id', 'cloud_instance_id']).where('cluster_id', '=', clusterId).where('id', 'in', part).execute();
        for (const r of rows) if (r.cloud_instance_id) out[r.id] = r.cloud_instance_id;
      }
      return out;
    },
    instanceStanding: (clusterId, service, instanceId, ordinal) => standings({ clusterId, service, instanceId, ordinal }),
    async listInstances(clusterId, { service, state, cursor, limit }) {
      const after = cursor === undefined ? undefined : instanceCursor(cursor);
      let q = db.selectFrom('instances').selectAll().where('cluster_id', '=', clusterId);
      if (service !== undefined) q = q.where('service', '=', service);
      if (state !== undefined) q = q.where('state', '=', state);
      // (service, ordinal) > cursor continues the keyset.
      if (after) q = q.where((eb) => eb(eb.refTuple('service', 'ordinal'), '>', eb.tuple(after.service, after.ordinal)));
      const rows = await q.orderBy('service').orderBy('ordinal').limit(limit + 1).execute();
      return pageOf(rows, limit, toInstance, (r) => [r.service, r.ordinal]);
    },
    async listEvents(clusterId, { cursor, limit }) {
      const rows = await db
        .selectFrom('cluster_events')
        .selectAll()
        .where('cluster_id', '=', clusterId)
        .where('id', '>', cursor === undefined ? 0 : eventCursor(cursor))
        .orderBy('id')
        .limit(limit + 1)
        .execute();
      return pageOf(rows, limit, toEvent, (r) => [r.id]);
    },

    async createApiToken({ owner, role, expiresAt }) {
      const token = newTokenValue();
      const record: ApiTokenRecord = {
        id: `tok-${randomUUID().replace(/-/g, '').slice(0, 12)}`,
        owner,
        role,
        createdAt: new Date().toISOString(),
        ...(expiresAt && { expiresAt: expiresAt.toISOString() }),
      };
      await db
        .insertInto('api_tokens')
        .values({ id: record.id, token_hash: tokenHash(token), owner, role, created_at: record.createdAt, expires_at: record.expiresAt ?? null })
        .execute();
      return { record, token };
    },
    findApiToken: (token) => tokensByHash(tokenHash(token)),
    async getApiToken(id) {
      const r = await db.selectFrom('api_tokens').selectAll().where('id', '=', id).executeTakeFirst();
      return r && toApiToken(r);
    },
    async listApiTokens(owner) {
      let q = db.selectFrom('api_tokens').selectAll();
      if (owner !== undefined) q = q.where('owner', '=', owner);
      return (await q.orderBy('created_at').orderBy('rowid').execute()).map(toApiToken);
    },
    revokeApiToken: async (id, at = new Date()) =>
      changed(await db.updateTable('api_tokens').set({ revoked_at: at.toISOString() }).where('id', '=', id).where('revoked_at', 'is', null).executeTakeFirst()) > 0,

    getOwnerQuota: (owner) => qa.getOwnerQuota(owner),
    setOwnerQuota: (owner, quota, at) => qa.setOwnerQuota(owner, quota, at),
    quotaUsage: (owner) => qa.quotaUsage(owner),
    quotaUsageByOwner: () => qa.quotaUsageByOwner(),
    quotaHeldByFailed: (owner) => qa.quotaHeldByFailed(owner),
    releaseQuota: (clusterId, at) => qa.releaseQuota(clusterId, at),
    reserveScale: (clusterId, service, instances, opts) => qa.reserveScale(clusterId, service, instances, opts),
    reserveChange: (clusterId, claim, defaultQuota) => qa.reserveChange(clusterId, claim, defaultQuota),
    restoreReservation: (clusterId, services) => qa.restoreReservation(clusterId, services),
    appendAudit: (rec) => qa.appendAudit(rec),
    async listAudit({ cursor, limit, ...filter }) {
      const rows = await qa.listAuditRows({ ...filter, beforeId: cursor === undefined ? undefined : eventCursor(cursor), limit: limit + 1 });
      return pageOf(rows, limit, toAuditRecord, (r) => [r.id]);
    },

    // A cluster whose workflow has not published is PENDING (grouped here: its NULL and a published PENDING are one state).
    async clusterCountsByState() {
      const rows = await db
        .selectFrom('clusters as c')
        .leftJoin('cluster_views as v', 'v.cluster_id', 'c.id')
        .select((eb) => ['v.state', eb.fn.countAll<number>().as('count')])
        .groupBy('v.state')
        .execute();
      const counts = new Map<string, number>();
      for (const r of rows) counts.set(r.state ?? 'PENDING', (counts.get(r.state ?? 'PENDING') ?? 0) + r.count);
      return [...counts].map(([state, count]) => ({ state, count })).sort((a, b) => (a.state < b.state ? -1 : a.state > b.state ? 1 : 0));
    },
    instanceCountsByCloudAndState: () =>
      db
        .selectFrom('instances')
        .select((eb) => ['cloud', 'state', eb.fn.countAll<number>().as('count')])
        .groupBy(['cloud', 'state'])
        .orderBy('cloud')
        .orderBy('state')
        .execute(),

    ping: async () => void (await sql`SELECT 1`.execute(db)),
    close: () => database.close(),
  };
}
