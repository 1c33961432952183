/**
 * cloudgate's own state outside Temporal: cluster definitions, the clusters made from them
 * (so the API can list and idempotently create them) and the clouds a worker registered.
 *
 * SQLite through better-sqlite3 by default. The {@link Store} interface is synchronous
 * because better-sqlite3 is; it uses nothing SQLite-specific in its shape, so a PostgreSQL
 * implementation can follow (its callers would then await the same methods).
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { ClusterDefinition } from '../model/definition.js';
import type { CloudOffering } from '../clouds/contract.js';

/** A stored cluster definition; `definition` is the parsed (defaults applied) schema output. */
export interface ClusterDefinitionRecord {
  id: string;
  name: string;
  definition: ClusterDefinition;
  createdAt: string;
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
}

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

export interface Store {
  createDefinition(input: { name: string; definition: ClusterDefinition }): ClusterDefinitionRecord;
  getDefinition(id: string): ClusterDefinitionRecord | undefined;
  /** Oldest first. */
  listDefinitions(): ClusterDefinitionRecord[];

  /** Inserts the row; throws {@link DuplicateKeyError} if the id or idempotency key exists. */
  createCluster(input: Omit<ClusterRecord, 'createdAt'> & { createdAt?: string }): ClusterRecord;
  getCluster(id: string): ClusterRecord | undefined;
  /** Oldest first. */
  listClusters(): ClusterRecord[];
  /** Removes a row (used to undo an insert when starting its workflow failed). True if it existed. */
  deleteCluster(id: string): boolean;
  findClusterByIdempotencyKey(key: string): ClusterRecord | undefined;

  /** Inserts or replaces a cloud registration. */
  upsertCloud(cloud: CloudRecord): void;
  /** Sorted by name. */
  listClouds(): CloudRecord[];
  getCloud(name: string): CloudRecord | undefined;
  /** Forgets a cloud the worker no longer has. */
  deleteCloud(name: string): boolean;

  /** Cheap liveness check for health endpoints; throws if the database is unusable. */
  ping(): void;
  close(): void;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS cluster_definitions (
  id          TEXT PRIMARY KEY,
  name        TEXT NOT NULL,
  definition  TEXT NOT NULL,
  created_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
  id               TEXT PRIMARY KEY,
  name             TEXT NOT NULL,
  definition_id    TEXT NOT NULL REFERENCES cluster_definitions(id),
  cloud            TEXT NOT NULL,
  owner            TEXT,
  idempotency_key  TEXT UNIQUE,
  request_hash     TEXT,
  created_at       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clouds (
  name        TEXT PRIMARY KEY,
  kind        TEXT NOT NULL,
  offerings   TEXT NOT NULL,
  info        TEXT,
  updated_at  TEXT NOT NULL
);
`;

interface DefinitionRow {
  id: string;
  name: string;
  definition: string;
  created_at: string;
}
interface ClusterRow {
  id: string;
  name: string;
  definition_id: string;
  cloud: string;
  owner: string | null;
  idempotency_key: string | null;
  request_hash: string | null;
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
  createdAt: r.created_at,
});

const toCluster = (r: ClusterRow): ClusterRecord => ({
  id: r.id,
  name: r.name,
  definitionId: r.definition_id,
  cloud: r.cloud,
  ...(r.owner !== null && { owner: r.owner }),
  ...(r.idempotency_key !== null && { idempotencyKey: r.idempotency_key }),
  ...(r.request_hash !== null && { requestHash: r.request_hash }),
  createdAt: r.created_at,
});

const toCloud = (r: CloudRow): CloudRecord => ({
  name: r.name,
  kind: r.kind,
  offerings: JSON.parse(r.offerings) as CloudOffering[],
  ...(r.info ? (JSON.parse(r.info) as Pick<CloudRecord, 'endpoint' | 'credentials'>) : {}),
});

/** `def-` and 12 hex digits: short enough to type, random enough for one installation. */
const newDefinitionId = (): string => `def-${randomUUID().replace(/-/g, '').slice(0, 12)}`;

/**
 * Opens (creating if needed) a SQLite store. `':memory:'` gives a private in-memory one.
 * WAL mode lets the API read while a worker writes cloud registrations.
 */
export function openSqliteStore(file: string): Store {
  if (file !== ':memory:' && file !== '') mkdirSync(path.dirname(file), { recursive: true });
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  // The API and the worker may open the same file; wait for each other's short writes.
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  db.exec(SCHEMA);
  // Stores made before clouds had endpoints and credential references.
  const cloudColumns = db.prepare<[], { name: string }>("SELECT name FROM pragma_table_info('clouds')").all();
  if (!cloudColumns.some((c) => c.name === 'info')) db.exec('ALTER TABLE clouds ADD COLUMN info TEXT');

  const q = {
    insertDef: db.prepare('INSERT INTO cluster_definitions (id, name, definition, created_at) VALUES (?, ?, ?, ?)'),
    getDef: db.prepare<[string], DefinitionRow>('SELECT * FROM cluster_definitions WHERE id = ?'),
    listDefs: db.prepare<[], DefinitionRow>('SELECT * FROM cluster_definitions ORDER BY created_at, id'),
    insertCluster: db.prepare(
      `INSERT INTO clusters (id, name, definition_id, cloud, owner, idempotency_key, request_hash, created_at)
       VALUES (@id, @name, @definitionId, @cloud, @owner, @idempotencyKey, @requestHash, @createdAt)`,
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
    ping: db.prepare('SELECT 1'),
  };

  return {
    createDefinition({ name, definition }) {
      const rec: ClusterDefinitionRecord = { id: newDefinitionId(), name, definition, createdAt: new Date().toISOString() };
      q.insertDef.run(rec.id, rec.name, JSON.stringify(definition), rec.createdAt);
      return rec;
    },
    getDefinition: (id) => {
      const r = q.getDef.get(id);
      return r && toDefinition(r);
    },
    listDefinitions: () => q.listDefs.all().map(toDefinition),

    createCluster(input) {
      const rec: ClusterRecord = { ...input, createdAt: input.createdAt ?? new Date().toISOString() };
      try {
        q.insertCluster.run({
          id: rec.id,
          name: rec.name,
          definitionId: rec.definitionId,
          cloud: rec.cloud,
          owner: rec.owner ?? null,
          idempotencyKey: rec.idempotencyKey ?? null,
          requestHash: rec.requestHash ?? null,
          createdAt: rec.createdAt,
        });
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
    deleteCluster: (id) => q.deleteCluster.run(id).changes > 0,
    findClusterByIdempotencyKey: (key) => {
      const r = q.findByKey.get(key);
      return r && toCluster(r);
    },

    deleteCloud(name) {
      return q.deleteCloud.run(name).changes > 0;
    },
    upsertCloud({ name, kind, offerings, endpoint, credentials }) {
      const info = endpoint || credentials ? JSON.stringify({ endpoint, credentials }) : null;
      q.upsertCloud.run(name, kind, JSON.stringify(offerings), info, new Date().toISOString());
    },
    listClouds: () => q.listClouds.all().map(toCloud),
    getCloud: (name) => {
      const r = q.getCloud.get(name);
      return r && toCloud(r);
    },

    ping: () => void q.ping.get(),
    close: () => db.close(),
  };
}
