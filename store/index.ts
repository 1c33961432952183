/**
 * cloudgate's own state outside Temporal: cluster definitions, the clusters made from them
 * (so the API can list and idempotently create them) and the clouds a worker registered.
 *
 * SQLite through better-sqlite3 by default. The {@link Store} interface is synchronous
 * because better-sqlite3 is; it uses nothing SQLite-specific in its shape, so a PostgreSQL
 * implementation can follow (its callers would then await the same methods).
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { ClusterDefinition, Lifetime } from '../model/definition.js';
import type { Window } from '../model/windows.js';
import type { CloudOffering } from '../clouds/contract.js';
import type { Context, PinnedContext } from '../model/context.js';
import type { ClusterEvent, PublishClusterInput, PublishedInstance, PublishedService, PublishServiceInput } from '../model/read-model.js';
import type { ClusterState, InstanceState } from '../model/status.js';
import type { ChangeView } from '../model/rolling.js';
import { loadSecretsKey, SECRETS_KEY_BYTES } from './secret.js';
import { ensurePrivateFile } from './private-files.js';
import type { Quota } from '../model/config.js';
import type { CloudQuota } from '../model/clouds-config.js';
import { CAPACITY_SCHEMA, capacityLedger, type CapacityLedger } from './capacity.js';
import { QUOTA_AUDIT_SCHEMA, quotaAuditStatements, toAuditRecord, type AuditFilter, type AuditRecord, type OwnerQuotaRecord, type OwnerQuotaUsage, type QuotaClaim, type QuotaUsage, type ReserveScaleOptions } from './quotas-audit.js';

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

/** Thrown by the list methods for a cursor they did not make (the API answers 422). */
export class InvalidCursorError extends Error {
  constructor(message = 'not a cursor this list made') {
    super(message);
    this.name = 'InvalidCursorError';
  }
}

export interface Store extends CapacityLedger {
  createDefinition(input: { name: string; definition: ClusterDefinition; owner?: string }): ClusterDefinitionRecord;
  getDefinition(id: string): ClusterDefinitionRecord | undefined;
  /** Oldest first. */
  listDefinitions(): ClusterDefinitionRecord[];
  /** Soft-deletes a definition: it leaves the list, clusters made from it keep reading it. False if unknown or already deleted. */
  deleteDefinition(id: string, at?: Date): boolean;
  /** The clusters made from one definition. */
  clustersOfDefinition(definitionId: string): ClusterRecord[];

  /**
   * Inserts the row; throws {@link DuplicateKeyError} if the id or idempotency key exists. With
   * `quota`, in the same IMMEDIATE transaction the claim is checked against its owner's quota
   * (their own, else `defaultQuota`) and reserved; {@link QuotaExceededError} writes nothing.
   */
  createCluster(input: Omit<ClusterRecord, 'createdAt'> & { createdAt?: string }, quota?: { claim: QuotaClaim; defaultQuota: Quota }): ClusterRecord;
  getCluster(id: string): ClusterRecord | undefined;
  /** Oldest first. */
  listClusters(): ClusterRecord[];
  /** Removes a row and its quota reservation (used to undo an insert when starting its workflow failed). True if it existed. */
  deleteCluster(id: string): boolean;
  findClusterByIdempotencyKey(key: string): ClusterRecord | undefined;

  /** Stores version 1 of a new context. */
  /** Version 1 of a new context, owned by `owner`. */
  createContext(input: ContextVersionInput, owner?: string): ContextRecord;
  /** Adds version n+1 (earlier versions are kept); undefined for an unknown id. */
  updateContext(id: string, input: ContextVersionInput): ContextRecord | undefined;
  /** The given version, else the latest; undefined if either is unknown. */
  getContext(id: string, version?: number): ContextRecord | undefined;
  /** The latest version of each context, oldest context first. */
  listContexts(): ContextRecord[];
  /** Every version of one context, oldest first; empty for an unknown id. */
  listContextVersions(id: string): ContextRecord[];
  /** The decrypted secret values of one version (for rendering user-data); undefined if unknown. */
  getContextSecrets(id: string, version: number): Record<string, string> | undefined;
  /**
   * Soft-deletes a context: it leaves {@link listContexts} and {@link updateContext} refuses it,
   * but its versions and encrypted secrets stay, because running clusters are pinned to a
   * version and must still render it. False for an unknown or already deleted id.
   */
  deleteContext(id: string, at?: Date): boolean;

  /**
   * Issues a pairing PIN for one context version. Undefined when the PIN is held by a pairing
   * that is neither used nor expired at `createdAt` (default now), or when such a pairing has
   * the same `lookup` (the part of the PIN that names its pairing); a used or expired row with
   * the same PIN is replaced. Throws if the context version does not exist.
   */
  createPairing(input: { pin: string; lookup?: string; contextId: string; version: number; expiresAt: Date; createdAt?: Date }): PairingRecord | undefined;
  /**
   * Marks the pairing used if it is unused and unexpired at `now` (one conditional UPDATE, so of
   * concurrent takes, even from several processes on one file, exactly one gets `ok`).
   */
  takePairing(pin: string, now?: Date): PairingTake;
  /** Forgets pairings that expired before `expiredBefore` (their PINs then read as unknown); returns how many. */
  purgePairings(expiredBefore: Date): number;
  /**
   * Charges one wrong guess to the live pairing with this `lookup`, if there is one; its
   * `budget`-th wrong guess uses it up (its PIN then fails like a used one). True if one was charged.
   */
  chargePairingMiss(lookup: string, now: Date, budget: number): boolean;
  /** When each live (unused, unexpired at `now`) pairing of `owner`'s contexts expires, soonest first. */
  livePairingExpiries(owner: string, now: Date): string[];

  /** Inserts or replaces a cloud registration. */
  upsertCloud(cloud: CloudRecord): void;
  /** Sorted by name. */
  listClouds(): CloudRecord[];
  getCloud(name: string): CloudRecord | undefined;
  /** Forgets a cloud the worker no longer has. */
  deleteCloud(name: string): boolean;

  /**
   * The read model. The workflows publish through activities; the API reads only these, so
   * reads never wait for a worker. A publish is kept only if its `seq` is higher than the one
   * stored for its cluster (cluster publishes) or its service (service publishes); otherwise
   * nothing at all is written and the result is false. So a retried or late publish is
   * harmless, and a publish and its events are written together or not at all.
   */
  publishCluster(input: PublishClusterInput): boolean;
  /**
   * Keeps the service's summary, inserts or updates `upserts` and deletes `removed` (only
   * among the service's own instances), appends `events`; all or nothing, under the same
   * seq rule as {@link publishCluster}. Instances are stored under `input.service`. An update
   * keeps the provider id, creation and ready times it has when the upsert leaves them out:
   * a service workflow does not carry them across continue-as-new (they live here).
   */
  publishService(input: PublishServiceInput): boolean;
  /** The provider ids of published instances, by instance id (ids without one are absent). */
  cloudInstanceIds(clusterId: string, ids: readonly string[]): Record<string, string>;
  /**
   * Where a phone-home's instance stands in the read model: its published state; `REMOVED`
   * when it is not there but its service has published an instance with a higher ordinal
   * (ordinals are never reused and a batch is published lowest first, so it was there and
   * left); undefined when the read model cannot tell (not published yet, or nothing of the
   * service published).
   */
  instanceStanding(clusterId: string, service: string, instanceId: string, ordinal: number): InstanceState | 'REMOVED' | undefined;
  /** The cluster workflow's last publish; undefined before its first. */
  getClusterView(clusterId: string): ClusterViewRecord | undefined;
  /** Each service's last own publish, by service name; empty before the first. */
  getServiceViews(clusterId: string): ServiceViewRecord[];
  /** Published instances ordered by service, then ordinal; filters combine with AND. Throws {@link InvalidCursorError}. */
  listInstances(clusterId: string, query: InstanceQuery): Page<PublishedInstance>;
  /**
   * Events oldest first, in the order they were accepted (a log, read forward like the
   * history it summarises; a page boundary never moves as new events arrive). Throws
   * {@link InvalidCursorError}.
   */
  listEvents(clusterId: string, query: EventQuery): Page<ClusterEvent>;

  /** Issues an API token; its value is returned here once and stored only as a hash. */
  createApiToken(input: { owner: string; role: Role; expiresAt?: Date }): { record: ApiTokenRecord; token: string };
  /** The record of a token value (revoked and expired ones too: the caller decides); undefined if unknown. */
  findApiToken(token: string): ApiTokenRecord | undefined;
  getApiToken(id: string): ApiTokenRecord | undefined;
  /** Tokens oldest first, of one owner or all. */
  listApiTokens(owner?: string): ApiTokenRecord[];
  /** Revokes at once; false if unknown or already revoked. */
  revokeApiToken(id: string, at?: Date): boolean;

  /** Quotas (store/quotas-audit.ts): an owner's own quota as an admin set it; undefined: the site default applies. */
  getOwnerQuota(owner: string): OwnerQuotaRecord | undefined;
  setOwnerQuota(owner: string, quota: Quota, at?: Date): OwnerQuotaRecord;
  /** What the owner's counted reservations hold (not released, cluster not TERMINATED in the read model). */
  quotaUsage(owner: string): QuotaUsage;
  /** Every owner holding quota now (as {@link quotaUsage} counts it) or given one of their own, by name (the metrics). */
  quotaUsageByOwner(): OwnerQuotaUsage[];
  /** Clusters of the owner that still hold quota while their read model says FAILED (their workflow may have ended). */
  quotaHeldByFailed(owner: string): string[];
  /** Stops counting a cluster's reservation (a FAILED cluster whose workflow ended); false if it held none. */
  releaseQuota(clusterId: string, at?: Date): boolean;
  /**
   * Sets a service's reserved instance count in one IMMEDIATE transaction, checking the owner's
   * quota (throws {@link QuotaExceededError}) when it grows and `defaultQuota` is given (see
   * {@link ReserveScaleOptions}). Returns the count before; undefined when the cluster holds
   * no reservation for the service.
   */
  reserveScale(clusterId: string, service: string, instances: number, opts?: ReserveScaleOptions): { previous: number } | undefined;
  /** A change of definition (`PUT /v1/clusters/:id`): reserves what the new definition claims beyond what the cluster holds (checked); returns what it held. */
  reserveChange(clusterId: string, claim: QuotaClaim, defaultQuota: Quota): QuotaClaim['services'] | undefined;
  /** Puts a cluster's reservation back to `services` (a change that was refused). */
  restoreReservation(clusterId: string, services: QuotaClaim['services']): void;

  /** Appends an audit record (the table refuses UPDATE and DELETE). */
  appendAudit(rec: Omit<AuditRecord, 'id'>): AuditRecord;
  /** Audit records newest first; filters combine with AND. Throws {@link InvalidCursorError}. */
  listAudit(query: Omit<AuditFilter, 'beforeId'> & { cursor?: string }): Page<AuditRecord>;

  /**
   * Clusters by state, for the metrics: the read model's state, `PENDING` for a cluster whose
   * workflow has not published yet. One grouped query (read at every scrape).
   */
  clusterCountsByState(): { state: string; count: number }[];
  /** Published (live) instances by cloud and state, for the metrics; one grouped query. */
  instanceCountsByCloudAndState(): { cloud: string; state: string; count: number }[];

  /** Cheap liveness check for health endpoints; throws if the database is unusable. */
  ping(): void;
  close(): void;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS cluster_definitions (
  id          TEXT PRIMARY KEY,
  name        TEXT NOT NULL,
  definition  TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  owner       TEXT,
  deleted_at  TEXT
);
CREATE TABLE IF NOT EXISTS api_tokens (
  id          TEXT PRIMARY KEY,
  token_hash  TEXT NOT NULL UNIQUE,
  owner       TEXT NOT NULL,
  role        TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  expires_at  TEXT,
  revoked_at  TEXT
);
CREATE TABLE IF NOT EXISTS clusters (
  id               TEXT PRIMARY KEY,
  name             TEXT NOT NULL,
  definition_id    TEXT NOT NULL REFERENCES cluster_definitions(id),
  cloud            TEXT NOT NULL,
  owner            TEXT,
  idempotency_key  TEXT UNIQUE,
  request_hash     TEXT,
  contexts         TEXT,
  lifetime         TEXT,
  windows          TEXT,
  created_at       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clouds (
  name        TEXT PRIMARY KEY,
  kind        TEXT NOT NULL,
  offerings   TEXT NOT NULL,
  info        TEXT,
  updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contexts (
  id          TEXT PRIMARY KEY,
  created_at  TEXT NOT NULL,
  deleted_at  TEXT,
  owner       TEXT
);
CREATE TABLE IF NOT EXISTS context_versions (
  context_id  TEXT NOT NULL REFERENCES contexts(id),
  version     INTEGER NOT NULL,
  name        TEXT NOT NULL,
  context     TEXT NOT NULL,
  -- AES-256-GCM of the JSON map of secret values: 'v1:' base64(iv | tag | ciphertext)
  secrets     TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  PRIMARY KEY (context_id, version)
);
-- Times are ISO 8601 UTC strings of one length, so they compare as text.
CREATE TABLE IF NOT EXISTS pairings (
  pin         TEXT PRIMARY KEY,
  context_id  TEXT NOT NULL,
  version     INTEGER NOT NULL,
  created_at  TEXT NOT NULL,
  expires_at  TEXT NOT NULL,
  used_at     TEXT,
  FOREIGN KEY (context_id, version) REFERENCES context_versions(context_id, version)
);
-- The read model (publishCluster / publishService). No foreign keys to clusters: a publish
-- must never fail (and be retried forever) because of a row the API owns.
CREATE TABLE IF NOT EXISTS cluster_views (
  cluster_id   TEXT PRIMARY KEY,
  seq          INTEGER NOT NULL,
  observed_at  TEXT NOT NULL,
  state        TEXT NOT NULL,
  message      TEXT,
  services     TEXT NOT NULL,
  expires_at   TEXT,
  change       TEXT,
  drain_until  TEXT
);
CREATE TABLE IF NOT EXISTS service_views (
  cluster_id   TEXT NOT NULL,
  service      TEXT NOT NULL,
  seq          INTEGER NOT NULL,
  observed_at  TEXT NOT NULL,
  summary      TEXT NOT NULL,
  PRIMARY KEY (cluster_id, service)
);
CREATE TABLE IF NOT EXISTS instances (
  cluster_id         TEXT NOT NULL,
  id                 TEXT NOT NULL,
  service            TEXT NOT NULL,
  ordinal            INTEGER NOT NULL,
  name               TEXT NOT NULL,
  state              TEXT NOT NULL,
  cloud              TEXT NOT NULL,
  cloud_instance_id  TEXT,
  created_at         TEXT,
  ready_at           TEXT,
  message            TEXT,
  host               TEXT,
  spec               TEXT,
  PRIMARY KEY (cluster_id, id)
);
-- The listing order, and the keyset its cursors continue from.
CREATE INDEX IF NOT EXISTS instances_by_service ON instances (cluster_id, service, ordinal);
CREATE TABLE IF NOT EXISTS cluster_events (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  cluster_id  TEXT NOT NULL,
  at          TEXT NOT NULL,
  kind        TEXT NOT NULL,
  service     TEXT,
  instance    TEXT,
  message     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cluster_events_by_cluster ON cluster_events (cluster_id, id);
`;

interface ApiTokenRow {
  id: string;
  token_hash: string;
  owner: string;
  role: string;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
}

const toApiToken = (r: ApiTokenRow): ApiTokenRecord => ({
  id: r.id,
  owner: r.owner,
  role: r.role === 'admin' ? 'admin' : 'user',
  createdAt: r.created_at,
  ...(r.expires_at !== null && { expiresAt: r.expires_at }),
  ...(r.revoked_at !== null && { revokedAt: r.revoked_at }),
});

interface DefinitionRow {
  id: string;
  name: string;
  definition: string;
  created_at: string;
  owner: string | null;
  deleted_at: string | null;
}
interface ClusterRow {
  id: string;
  name: string;
  definition_id: string;
  cloud: string;
  owner: string | null;
  idempotency_key: string | null;
  request_hash: string | null;
  contexts: string | null;
  lifetime: string | null;
  windows: string | null;
  created_at: string;
}
interface CloudRow {
  name: string;
  kind: string;
  offerings: string;
  info: string | null;
}

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

interface PairingRow {
  pin: string;
  context_id: string;
  version: number;
  created_at: string;
  expires_at: string;
  used_at: string | null;
}

interface ClusterViewRow {
  cluster_id: string;
  seq: number;
  observed_at: string;
  state: string;
  message: string | null;
  services: string;
  expires_at: string | null;
  change: string | null;
  drain_until: string | null;
}
interface ServiceViewRow {
  cluster_id: string;
  service: string;
  seq: number;
  observed_at: string;
  summary: string;
}
interface InstanceRow {
  cluster_id: string;
  id: string;
  service: string;
  ordinal: number;
  name: string;
  state: string;
  cloud: string;
  cloud_instance_id: string | null;
  created_at: string | null;
  ready_at: string | null;
  message: string | null;
  host: string | null;
  spec: string | null;
}
interface EventRow {
  id: number;
  cluster_id: string;
  at: string;
  kind: string;
  service: string | null;
  instance: string | null;
  message: string;
}

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

/** A context version's columns joined with its context's deletion time. */
const CONTEXT_COLUMNS = 'v.context_id, v.version, v.name, v.context, v.created_at, c.deleted_at, c.owner';

/** `ctx-` and 12 hex digits, like definition ids. */
const newContextId = (): string => `ctx-${randomUUID().replace(/-/g, '').slice(0, 12)}`;

/** Options of {@link openSqliteStore}. */
export interface StoreOptions {
  /**
   * AES-256-GCM key (32 bytes) for context secrets. Default: {@link loadSecretsKey} with the
   * store file's folder as data dir (`CLOUDGATE_SECRETS_KEY`, else `<folder>/secrets-key`);
   * for `':memory:'` a random key that lives as long as the store.
   */
  secretsKey?: Buffer;
}

/** `def-` and 12 hex digits: short enough to type, random enough for one installation. */
const newDefinitionId = (): string => `def-${randomUUID().replace(/-/g, '').slice(0, 12)}`;

/**
 * Opens (creating if needed) a SQLite store. `':memory:'` gives a private in-memory one.
 * WAL mode lets the API read while a worker writes cloud registrations.
 */
export function openSqliteStore(file: string, options: StoreOptions = {}): Store {
  const inMemory = file === ':memory:' || file === '';
  if (!inMemory) mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const secretsKey = options.secretsKey ?? (inMemory ? randomBytes(SECRETS_KEY_BYTES) : loadSecretsKey({ dataDir: path.dirname(file) }));
  if (secretsKey.length !== SECRETS_KEY_BYTES) throw new Error(`the secrets key must be ${SECRETS_KEY_BYTES} bytes, got ${secretsKey.length}`);
  // Created 0600 before SQLite opens it (its -wal and -shm then get the same mode): it holds tokens' hashes and encrypted secrets.
  if (!inMemory && !file.startsWith('file:')) ensurePrivateFile(file);
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  // The API and the worker may open the same file; wait for each other's short writes.
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  db.exec(SCHEMA);
  db.exec(QUOTA_AUDIT_SCHEMA);
  db.exec(CAPACITY_SCHEMA);
  // Stores made before clouds had endpoints and credential references.
  const cloudColumns = db.prepare<[], { name: string }>("SELECT name FROM pragma_table_info('clouds')").all();
  if (!cloudColumns.some((c) => c.name === 'info')) db.exec('ALTER TABLE clouds ADD COLUMN info TEXT');
  // Stores made before contexts could be deleted.
  const contextColumns = db.prepare<[], { name: string }>("SELECT name FROM pragma_table_info('contexts')").all();
  if (!contextColumns.some((c) => c.name === 'deleted_at')) db.exec('ALTER TABLE contexts ADD COLUMN deleted_at TEXT');
  // Stores made before clusters pinned context versions.
  const clusterColumns = db.prepare<[], { name: string }>("SELECT name FROM pragma_table_info('clusters')").all();
  if (!clusterColumns.some((c) => c.name === 'contexts')) db.exec('ALTER TABLE clusters ADD COLUMN contexts TEXT');
  // Stores made before sessions (issue 13): a cluster's lifetime, and when its session ends.
  if (!clusterColumns.some((c) => c.name === 'lifetime')) db.exec('ALTER TABLE clusters ADD COLUMN lifetime TEXT');
  // Stores made before schedule windows (issue 13).
  if (!clusterColumns.some((c) => c.name === 'windows')) db.exec('ALTER TABLE clusters ADD COLUMN windows TEXT');
  const viewColumns = db.prepare<[], { name: string }>("SELECT name FROM pragma_table_info('cluster_views')").all();
  if (!viewColumns.some((c) => c.name === 'expires_at')) db.exec('ALTER TABLE cluster_views ADD COLUMN expires_at TEXT');
  if (!viewColumns.some((c) => c.name === 'drain_until')) db.exec('ALTER TABLE cluster_views ADD COLUMN drain_until TEXT');
  // Stores made before instances showed their hypervisor host (issue 12).
  const instanceColumns = db.prepare<[], { name: string }>("SELECT name FROM pragma_table_info('instances')").all();
  if (!instanceColumns.some((c) => c.name === 'host')) db.exec('ALTER TABLE instances ADD COLUMN host TEXT');
  // Stores made before running clusters could be changed (issue 13): the spec each instance runs, the change in progress.
  if (!instanceColumns.some((c) => c.name === 'spec')) db.exec('ALTER TABLE instances ADD COLUMN spec TEXT');
  if (!viewColumns.some((c) => c.name === 'change')) db.exec('ALTER TABLE cluster_views ADD COLUMN change TEXT');
  // Stores made before owners: their definitions and contexts have none (only admins see them).
  for (const table of ['cluster_definitions', 'contexts']) {
    const columns = db.prepare<[], { name: string }>(`SELECT name FROM pragma_table_info('${table}')`).all();
    if (!columns.some((c) => c.name === 'owner')) db.exec(`ALTER TABLE ${table} ADD COLUMN owner TEXT`);
  }
  // Stores made before definitions could be deleted.
  const definitionColumns = db.prepare<[], { name: string }>("SELECT name FROM pragma_table_info('cluster_definitions')").all();
  if (!definitionColumns.some((c) => c.name === 'deleted_at')) db.exec('ALTER TABLE cluster_definitions ADD COLUMN deleted_at TEXT');
  // Pairings before PINs had a lookup half and a budget of wrong guesses (issue 11).
  const pairingColumns = db.prepare<[], { name: string }>("SELECT name FROM pragma_table_info('pairings')").all();
  if (!pairingColumns.some((c) => c.name === 'lookup')) db.exec('ALTER TABLE pairings ADD COLUMN lookup TEXT; ALTER TABLE pairings ADD COLUMN misses INTEGER NOT NULL DEFAULT 0');

  const q = {
    insertDef: db.prepare('INSERT INTO cluster_definitions (id, name, definition, created_at, owner) VALUES (?, ?, ?, ?, ?)'),
    insertToken: db.prepare(
      'INSERT INTO api_tokens (id, token_hash, owner, role, created_at, expires_at) VALUES (@id, @hash, @owner, @role, @createdAt, @expiresAt)',
    ),
    tokenByHash: db.prepare<[string], ApiTokenRow>('SELECT * FROM api_tokens WHERE token_hash = ?'),
    tokenById: db.prepare<[string], ApiTokenRow>('SELECT * FROM api_tokens WHERE id = ?'),
    listTokens: db.prepare<[], ApiTokenRow>('SELECT * FROM api_tokens ORDER BY created_at, rowid'),
    listOwnerTokens: db.prepare<[string], ApiTokenRow>('SELECT * FROM api_tokens WHERE owner = ? ORDER BY created_at, rowid'),
    revokeToken: db.prepare('UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL'),
    getDef: db.prepare<[string], DefinitionRow>('SELECT * FROM cluster_definitions WHERE id = ?'),
    listDefs: db.prepare<[], DefinitionRow>('SELECT * FROM cluster_definitions WHERE deleted_at IS NULL ORDER BY created_at, id'),
    deleteDef: db.prepare('UPDATE cluster_definitions SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL'),
    clustersOfDef: db.prepare<[string], ClusterRow>('SELECT * FROM clusters WHERE definition_id = ? ORDER BY created_at, id'),
    insertCluster: db.prepare(
      `INSERT INTO clusters (id, name, definition_id, cloud, owner, idempotency_key, request_hash, contexts, lifetime, windows, created_at)
       VALUES (@id, @name, @definitionId, @cloud, @owner, @idempotencyKey, @requestHash, @contexts, @lifetime, @windows, @createdAt)`,
    ),
    getCluster: db.prepare<[string], ClusterRow>('SELECT * FROM clusters WHERE id = ?'),
    listClusters: db.prepare<[], ClusterRow>('SELECT * FROM clusters ORDER BY created_at, id'),
    deleteCluster: db.prepare('DELETE FROM clusters WHERE id = ?'),
    findByKey: db.prepare<[string], ClusterRow>('SELECT * FROM clusters WHERE idempotency_key = ?'),
    upsertCloud: db.prepare(
      `INSERT INTO clouds (name, kind, offerings, info, updated_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, offerings = excluded.offerings, info = excluded.info, updated_at = excluded.updated_at`,
    ),
    listClouds: db.prepare<[], CloudRow>('SELECT name, kind, offerings, info FROM clouds ORDER BY name'),
    getCloud: db.prepare<[string], CloudRow>('SELECT name, kind, offerings, info FROM clouds WHERE name = ?'),
    deleteCloud: db.prepare('DELETE FROM clouds WHERE name = ?'),
    insertContext: db.prepare('INSERT INTO contexts (id, created_at, owner) VALUES (?, ?, ?)'),
    insertContextVersion: db.prepare(
      'INSERT INTO context_versions (context_id, version, name, context, secrets, created_at) VALUES (?, ?, ?, ?, ?, ?)',
    ),
    latestContextVersion: db.prepare<[string], { version: number | null }>('SELECT MAX(version) AS version FROM context_versions WHERE context_id = ?'),
    getContextVersion: db.prepare<[string, number], ContextRow>(
      `SELECT ${CONTEXT_COLUMNS} FROM context_versions v JOIN contexts c ON c.id = v.context_id WHERE v.context_id = ? AND v.version = ?`,
    ),
    getLatestContext: db.prepare<[string], ContextRow>(
      `SELECT ${CONTEXT_COLUMNS} FROM context_versions v JOIN contexts c ON c.id = v.context_id WHERE v.context_id = ? ORDER BY v.version DESC LIMIT 1`,
    ),
    listLatestContexts: db.prepare<[], ContextRow>(
      `SELECT ${CONTEXT_COLUMNS}
       FROM contexts c JOIN context_versions v ON v.context_id = c.id
       WHERE c.deleted_at IS NULL AND v.version = (SELECT MAX(version) FROM context_versions WHERE context_id = c.id)
       ORDER BY c.created_at, c.rowid`, // rowid: creation order within one millisecond (ids are random)
    ),
    listContextVersions: db.prepare<[string], ContextRow>(
      `SELECT ${CONTEXT_COLUMNS} FROM context_versions v JOIN contexts c ON c.id = v.context_id WHERE v.context_id = ? ORDER BY v.version`,
    ),
    contextDeletedAt: db.prepare<[string], { deleted_at: string | null }>('SELECT deleted_at FROM contexts WHERE id = ?'),
    deleteContext: db.prepare('UPDATE contexts SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL'),
    // Replaces a row with the same PIN only if that one is used or expired; else changes nothing.
    insertPairing: db.prepare(
      `INSERT INTO pairings (pin, lookup, context_id, version, created_at, expires_at) VALUES (@pin, @lookup, @contextId, @version, @createdAt, @expiresAt)
       ON CONFLICT(pin) DO UPDATE SET lookup = excluded.lookup, misses = 0, context_id = excluded.context_id, version = excluded.version,
         created_at = excluded.created_at, expires_at = excluded.expires_at, used_at = NULL
       WHERE pairings.used_at IS NOT NULL OR pairings.expires_at <= excluded.created_at`,
    ),
    liveLookup: db.prepare<[string, string], { pin: string }>('SELECT pin FROM pairings WHERE lookup = ? AND used_at IS NULL AND expires_at > ?'),
    // All SET expressions read the row as it was: the budget-th miss also marks it used.
    chargePairingMiss: db.prepare(
      `UPDATE pairings SET misses = misses + 1, used_at = CASE WHEN misses + 1 >= @budget THEN @now ELSE used_at END
       WHERE lookup = @lookup AND used_at IS NULL AND expires_at > @now`,
    ),
    livePairingExpiries: db.prepare<[string, string], { expires_at: string }>(
      `SELECT p.expires_at FROM pairings p JOIN contexts c ON c.id = p.context_id
       WHERE c.owner = ? AND c.deleted_at IS NULL AND p.used_at IS NULL AND p.expires_at > ? ORDER BY p.expires_at`,
    ),
    takePairing: db.prepare('UPDATE pairings SET used_at = ? WHERE pin = ? AND used_at IS NULL AND expires_at > ?'),
    getPairing: db.prepare<[string], PairingRow>('SELECT * FROM pairings WHERE pin = ?'),
    purgePairings: db.prepare('DELETE FROM pairings WHERE expires_at < ?'),
    getContextSecrets: db.prepare<[string, number], { secrets: string }>('SELECT secrets FROM context_versions WHERE context_id = ? AND version = ?'),
    ping: db.prepare('SELECT 1'),

    clusterViewSeq: db.prepare<[string], { seq: number }>('SELECT seq FROM cluster_views WHERE cluster_id = ?'),
    upsertClusterView: db.prepare(
      `INSERT INTO cluster_views (cluster_id, seq, observed_at, state, message, services, expires_at, change, drain_until)
       VALUES (@clusterId, @seq, @observedAt, @state, @message, @services, @expiresAt, @change, @drainUntil)
       ON CONFLICT(cluster_id) DO UPDATE SET seq = excluded.seq, observed_at = excluded.observed_at, state = excluded.state,
         message = excluded.message, services = excluded.services, expires_at = excluded.expires_at, drain_until = excluded.drain_until,
         change = CASE WHEN @changeSent THEN excluded.change ELSE cluster_views.change END`,
    ),
    // A change started or ended: the cluster runs (or converges to) another definition and pins.
    setClusterSpec: db.prepare('UPDATE clusters SET definition_id = ?, contexts = ? WHERE id = ?'),
    getClusterView: db.prepare<[string], ClusterViewRow>('SELECT * FROM cluster_views WHERE cluster_id = ?'),
    serviceViewSeq: db.prepare<[string, string], { seq: number }>('SELECT seq FROM service_views WHERE cluster_id = ? AND service = ?'),
    upsertServiceView: db.prepare(
      `INSERT INTO service_views (cluster_id, service, seq, observed_at, summary) VALUES (@clusterId, @service, @seq, @observedAt, @summary)
       ON CONFLICT(cluster_id, service) DO UPDATE SET seq = excluded.seq, observed_at = excluded.observed_at, summary = excluded.summary`,
    ),
    getServiceViews: db.prepare<[string], ServiceViewRow>('SELECT * FROM service_views WHERE cluster_id = ? ORDER BY service'),
    upsertInstance: db.prepare(
      `INSERT INTO instances (cluster_id, id, service, ordinal, name, state, cloud, cloud_instance_id, created_at, ready_at, message, host, spec)
       VALUES (@clusterId, @id, @service, @ordinal, @name, @state, @cloud, @cloudInstanceId, @createdAt, @readyAt, @message, @host, @spec)
       ON CONFLICT(cluster_id, id) DO UPDATE SET service = excluded.service, ordinal = excluded.ordinal, name = excluded.name,
         state = excluded.state, cloud = excluded.cloud, cloud_instance_id = COALESCE(excluded.cloud_instance_id, instances.cloud_instance_id),
         host = COALESCE(excluded.host, instances.host), spec = COALESCE(excluded.spec, instances.spec),
         created_at = COALESCE(excluded.created_at, instances.created_at), ready_at = COALESCE(excluded.ready_at, instances.ready_at),
         message = excluded.message`,
    ),
    cloudInstanceId: db.prepare<[string, string], { cloud_instance_id: string | null }>(
      'SELECT cloud_instance_id FROM instances WHERE cluster_id = ? AND id = ?',
    ),
    deleteInstance: db.prepare('DELETE FROM instances WHERE cluster_id = ? AND service = ? AND id = ?'),
    clusterCounts: db.prepare<[], { state: string; count: number }>(
      `SELECT COALESCE(v.state, 'PENDING') AS state, COUNT(*) AS count FROM clusters c LEFT JOIN cluster_views v ON v.cluster_id = c.id GROUP BY 1 ORDER BY 1`,
    ),
    instanceCounts: db.prepare<[], { cloud: string; state: string; count: number }>(
      'SELECT cloud, state, COUNT(*) AS count FROM instances GROUP BY cloud, state ORDER BY cloud, state',
    ),
    instanceState: db.prepare<[string, string], { state: InstanceState }>('SELECT state FROM instances WHERE cluster_id = ? AND id = ?'),
    maxOrdinal: db.prepare<[string, string], { ordinal: number | null }>('SELECT MAX(ordinal) AS ordinal FROM instances WHERE cluster_id = ? AND service = ?'),
    // A NULL parameter switches its filter off; (service, ordinal) > cursor continues the keyset.
    listInstances: db.prepare<
      { clusterId: string; service: string | null; state: string | null; afterService: string | null; afterOrdinal: number | null; limit: number },
      InstanceRow
    >(
      `SELECT * FROM instances
       WHERE cluster_id = @clusterId
         AND (@service IS NULL OR service = @service)
         AND (@state IS NULL OR state = @state)
         AND (@afterService IS NULL OR (service, ordinal) > (@afterService, @afterOrdinal))
       ORDER BY service, ordinal
       LIMIT @limit`,
    ),
    insertEvent: db.prepare(
      'INSERT INTO cluster_events (cluster_id, at, kind, service, instance, message) VALUES (@clusterId, @at, @kind, @service, @instance, @message)',
    ),
    listEvents: db.prepare<[string, number, number], EventRow>('SELECT * FROM cluster_events WHERE cluster_id = ? AND id > ? ORDER BY id LIMIT ?'),
  };

  const appendEvents = (clusterId: string, events: ClusterEvent[]) => {
    for (const e of events) {
      q.insertEvent.run({ clusterId, at: e.at, kind: e.kind, service: e.service ?? null, instance: e.instance ?? null, message: e.message });
    }
  };
  // Compare and write in one IMMEDIATE transaction: two writers (retried activity, second
  // worker) cannot both pass the seq check, and a reader never sees half a publish.
  const publishClusterTx = db.transaction((input: PublishClusterInput): boolean => {
    const stored = q.clusterViewSeq.get(input.clusterId);
    if (stored && stored.seq >= input.seq) return false;
    q.upsertClusterView.run({
      clusterId: input.clusterId,
      seq: input.seq,
      observedAt: input.observedAt,
      state: input.state,
      message: input.message ?? null,
      services: JSON.stringify(input.services),
      expiresAt: input.expiresAt ?? null,
      change: input.change ? JSON.stringify(input.change) : null,
      changeSent: input.change !== undefined ? 1 : 0,
      drainUntil: input.drainUntil ?? null,
    });
    if (input.spec) q.setClusterSpec.run(input.spec.definitionId, input.spec.contexts ? JSON.stringify(input.spec.contexts) : null, input.clusterId);
    appendEvents(input.clusterId, input.events);
    return true;
  });
  const publishServiceTx = db.transaction((input: PublishServiceInput): boolean => {
    const stored = q.serviceViewSeq.get(input.clusterId, input.service);
    if (stored && stored.seq >= input.seq) return false;
    q.upsertServiceView.run({
      clusterId: input.clusterId,
      service: input.service,
      seq: input.seq,
      observedAt: input.observedAt,
      summary: JSON.stringify(input.summary),
    });
    for (const i of input.upserts) {
      q.upsertInstance.run({
        clusterId: input.clusterId,
        id: i.id,
        service: input.service,
        ordinal: i.ordinal,
        name: i.name,
        state: i.state,
        cloud: i.cloud,
        cloudInstanceId: i.cloudInstanceId ?? null,
        createdAt: i.createdAt ?? null,
        readyAt: i.readyAt ?? null,
        message: i.message ?? null,
        host: i.host ?? null,
        spec: i.spec ?? null,
      });
    }
    for (const id of input.removed) q.deleteInstance.run(input.clusterId, input.service, id);
    appendEvents(input.clusterId, input.events);
    return true;
  });

  const insertVersion = (id: string, version: number, input: ContextVersionInput, createdAt: string, owner: string | undefined): ContextRecord => {
    const rec: ContextRecord = { id, version, name: input.name, context: input.context, ...(owner !== undefined && { owner }), createdAt };
    q.insertContextVersion.run(id, version, input.name, JSON.stringify(input.context), encryptSecrets(secretsKey, id, version, input.secrets), createdAt);
    return rec;
  };
  const createContextTx = db.transaction((input: ContextVersionInput, owner: string | undefined): ContextRecord => {
    const id = newContextId();
    const createdAt = new Date().toISOString();
    q.insertContext.run(id, createdAt, owner ?? null);
    return insertVersion(id, 1, input, createdAt, owner);
  });
  // Read the latest version and write the next in one transaction: concurrent updates get distinct versions.
  const updateContextTx = db.transaction((id: string, input: ContextVersionInput): ContextRecord | undefined => {
    const ctx = q.contextDeletedAt.get(id);
    if (!ctx || ctx.deleted_at !== null) return undefined;
    const latest = q.latestContextVersion.get(id)?.version;
    if (latest === null || latest === undefined) return undefined;
    return insertVersion(id, latest + 1, input, new Date().toISOString(), q.getLatestContext.get(id)?.owner ?? undefined);
  });

  // The conditional UPDATE alone decides who wins; the transaction only keeps the read that explains a loss consistent with it.
  const qa = quotaAuditStatements(db);
  // The row and its reservation together, after the quota check, or nothing.
  const createClusterTx = db.transaction((row: Record<string, unknown>, quota?: { claim: QuotaClaim; defaultQuota: Quota }) => {
    q.insertCluster.run(row);
    if (quota) qa.reserveNewCluster(row.id as string, quota.claim, quota.defaultQuota);
  });
  const deleteClusterTx = db.transaction((id: string): boolean => {
    qa.deleteReservation(id);
    return q.deleteCluster.run(id).changes > 0;
  });

  const createPairingTx = db.transaction((row: { pin: string; lookup: string | null; contextId: string; version: number; createdAt: string; expiresAt: string }): boolean => {
    if (row.lookup !== null && q.liveLookup.get(row.lookup, row.createdAt)) return false;
    return q.insertPairing.run(row).changes > 0;
  });

  const takePairingTx = db.transaction((pin: string, now: string): PairingTake => {
    const won = q.takePairing.run(now, pin, now).changes > 0;
    const r = q.getPairing.get(pin);
    if (!r) return { status: 'unknown' };
    if (won) return { status: 'ok', contextId: r.context_id, version: r.version };
    if (r.used_at !== null) return { status: 'used', usedAt: r.used_at };
    return { status: 'expired', expiresAt: r.expires_at };
  });

  return {
    ...capacityLedger(db),
    createDefinition({ name, definition, owner }) {
      const rec: ClusterDefinitionRecord = { id: newDefinitionId(), name, definition, ...(owner !== undefined && { owner }), createdAt: new Date().toISOString() };
      q.insertDef.run(rec.id, rec.name, JSON.stringify(definition), rec.createdAt, owner ?? null);
      return rec;
    },
    getDefinition: (id) => {
      const r = q.getDef.get(id);
      return r && toDefinition(r);
    },
    listDefinitions: () => q.listDefs.all().map(toDefinition),
    deleteDefinition: (id, at = new Date()) => q.deleteDef.run(at.toISOString(), id).changes > 0,
    clustersOfDefinition: (definitionId) => q.clustersOfDef.all(definitionId).map(toCluster),

    createCluster(input, quota) {
      const rec: ClusterRecord = { ...input, createdAt: input.createdAt ?? new Date().toISOString() };
      try {
        createClusterTx.immediate({
          id: rec.id,
          name: rec.name,
          definitionId: rec.definitionId,
          cloud: rec.cloud,
          owner: rec.owner ?? null,
          idempotencyKey: rec.idempotencyKey ?? null,
          requestHash: rec.requestHash ?? null,
          contexts: rec.contexts ? JSON.stringify(rec.contexts) : null,
          lifetime: rec.lifetime ? JSON.stringify(rec.lifetime) : null,
          windows: rec.windows ? JSON.stringify(rec.windows) : null,
          createdAt: rec.createdAt,
        }, quota);
      } catch (err) {
        const e = err as { code?: string; message?: string };
        if (e.code === 'SQLITE_CONSTRAINT_UNIQUE' || e.code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
          const field = e.message?.includes('idempotency_key') ? 'idempotencyKey' : 'id';
          throw new DuplicateKeyError(`cluster ${field} already exists`, field, { cause: err });
        }
        throw err;
      }
      return rec;
    },
    getCluster: (id) => {
      const r = q.getCluster.get(id);
      return r && toCluster(r);
    },
    listClusters: () => q.listClusters.all().map(toCluster),
    deleteCluster: (id) => deleteClusterTx.immediate(id),
    findClusterByIdempotencyKey: (key) => {
      const r = q.findByKey.get(key);
      return r && toCluster(r);
    },

    createContext: (input, owner) => createContextTx.immediate(input, owner),
    updateContext: (id, input) => updateContextTx.immediate(id, input),
    getContext: (id, version) => {
      const r = version === undefined ? q.getLatestContext.get(id) : q.getContextVersion.get(id, version);
      return r && toContext(r);
    },
    listContexts: () => q.listLatestContexts.all().map(toContext),
    listContextVersions: (id) => q.listContextVersions.all(id).map(toContext),
    getContextSecrets: (id, version) => {
      const r = q.getContextSecrets.get(id, version);
      return r && decryptSecrets(secretsKey, id, version, r.secrets);
    },
    deleteContext: (id, at = new Date()) => q.deleteContext.run(at.toISOString(), id).changes > 0,

    createPairing({ pin, lookup, contextId, version, expiresAt, createdAt = new Date() }) {
      const rec: PairingRecord = { pin, contextId, version, createdAt: createdAt.toISOString(), expiresAt: expiresAt.toISOString() };
      return createPairingTx.immediate({ ...rec, lookup: lookup ?? null }) ? rec : undefined;
    },
    takePairing: (pin, now = new Date()) => takePairingTx.immediate(pin, now.toISOString()),
    purgePairings: (expiredBefore) => q.purgePairings.run(expiredBefore.toISOString()).changes,
    chargePairingMiss: (lookup, now, budget) => q.chargePairingMiss.run({ lookup, now: now.toISOString(), budget }).changes > 0,
    livePairingExpiries: (owner, now) => q.livePairingExpiries.all(owner, now.toISOString()).map((r) => r.expires_at),

    deleteCloud(name) {
      return q.deleteCloud.run(name).changes > 0;
    },
    upsertCloud({ name, kind, offerings, endpoint, credentials, images, quota }) {
      const info = endpoint || credentials || images || quota ? JSON.stringify({ endpoint, credentials, images, quota }) : null;
      q.upsertCloud.run(name, kind, JSON.stringify(offerings), info, new Date().toISOString());
    },
    listClouds: () => q.listClouds.all().map(toCloud),
    getCloud: (name) => {
      const r = q.getCloud.get(name);
      return r && toCloud(r);
    },

    publishCluster: (input) => publishClusterTx.immediate(input),
    publishService: (input) => publishServiceTx.immediate(input),
    getClusterView: (clusterId) => {
      const r = q.getClusterView.get(clusterId);
      return r && toClusterView(r);
    },
    getServiceViews: (clusterId) => q.getServiceViews.all(clusterId).map(toServiceView),
    cloudInstanceIds(clusterId, ids) {
      const out: Record<string, string> = {};
      for (const id of ids) {
        const found = q.cloudInstanceId.get(clusterId, id)?.cloud_instance_id;
        if (found) out[id] = found;
      }
      return out;
    },
    instanceStanding(clusterId, service, instanceId, ordinal) {
      const found = q.instanceState.get(clusterId, instanceId);
      if (found) return found.state;
      const highest = q.maxOrdinal.get(clusterId, service)?.ordinal;
      return highest !== null && highest !== undefined && highest > ordinal ? 'REMOVED' : undefined;
    },
    listInstances(clusterId, { service, state, cursor, limit }) {
      const after = cursor === undefined ? undefined : instanceCursor(cursor);
      const rows = q.listInstances.all({
        clusterId,
        service: service ?? null,
        state: state ?? null,
        afterService: after?.service ?? null,
        afterOrdinal: after?.ordinal ?? null,
        limit: limit + 1,
      });
      return pageOf(rows, limit, toInstance, (r) => [r.service, r.ordinal]);
    },
    listEvents(clusterId, { cursor, limit }) {
      const rows = q.listEvents.all(clusterId, cursor === undefined ? 0 : eventCursor(cursor), limit + 1);
      return pageOf(rows, limit, toEvent, (r) => [r.id]);
    },

    createApiToken({ owner, role, expiresAt }) {
      const token = newTokenValue();
      const record: ApiTokenRecord = {
        id: `tok-${randomUUID().replace(/-/g, '').slice(0, 12)}`,
        owner,
        role,
        createdAt: new Date().toISOString(),
        ...(expiresAt && { expiresAt: expiresAt.toISOString() }),
      };
      q.insertToken.run({ id: record.id, hash: tokenHash(token), owner, role, createdAt: record.createdAt, expiresAt: record.expiresAt ?? null });
      return { record, token };
    },
    findApiToken: (token) => {
      const r = q.tokenByHash.get(tokenHash(token));
      return r && toApiToken(r);
    },
    getApiToken: (id) => {
      const r = q.tokenById.get(id);
      return r && toApiToken(r);
    },
    listApiTokens: (owner) => (owner === undefined ? q.listTokens.all() : q.listOwnerTokens.all(owner)).map(toApiToken),
    revokeApiToken: (id, at = new Date()) => q.revokeToken.run(at.toISOString(), id).changes > 0,

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
    listAudit({ cursor, limit, ...filter }) {
      const rows = qa.listAuditRows({ ...filter, beforeId: cursor === undefined ? undefined : eventCursor(cursor), limit: limit + 1 });
      return pageOf(rows, limit, toAuditRecord, (r) => [r.id]);
    },

    clusterCountsByState: () => q.clusterCounts.all(),
    instanceCountsByCloudAndState: () => q.instanceCounts.all(),

    ping: () => void q.ping.get(),
    close: () => db.close(),
  };
}
