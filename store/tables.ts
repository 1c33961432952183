/**
 * The store's tables as Kysely types them (store/database.ts opens them, store/migrations.ts
 * makes them). Column names are the database's; times are ISO 8601 UTC text of one length
 * (so they compare as text on both engines), JSON documents are text.
 */
import type { Generated, Kysely } from 'kysely';

/** The tables, as Kysely types them (column names as in the database; times are ISO 8601 UTC text, JSON is text). */
export interface Tables {
  cluster_definitions: { id: string; name: string; definition: string; created_at: string; owner: string | null; deleted_at: string | null };
  api_tokens: {
    id: string;
    token_hash: string;
    owner: string;
    role: string;
    created_at: string;
    expires_at: string | null;
    revoked_at: string | null;
    /** Insertion order (SQLite's implicit rowid; a generated column on PostgreSQL). */
    rowid: Generated<number>;
  };
  clusters: {
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
  };
  clouds: { name: string; kind: string; offerings: string; info: string | null; updated_at: string };
  contexts: { id: string; created_at: string; deleted_at: string | null; owner: string | null; rowid: Generated<number> };
  context_versions: { context_id: string; version: number; name: string; context: string; secrets: string; created_at: string };
  pairings: {
    pin: string;
    lookup: string | null;
    misses: Generated<number>;
    context_id: string;
    version: number;
    created_at: string;
    expires_at: string;
    used_at: string | null;
  };
  cluster_views: {
    cluster_id: string;
    seq: number;
    observed_at: string;
    state: string;
    message: string | null;
    services: string;
    expires_at: string | null;
    change: string | null;
    drain_until: string | null;
  };
  service_views: { cluster_id: string; service: string; seq: number; observed_at: string; summary: string };
  instances: {
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
  };
  /** `run_id` and `pub_seq` (migration 0003): the workflow run and publish that wrote the event (none before it). */
  cluster_events: {
    id: Generated<number>;
    cluster_id: string;
    at: string;
    kind: string;
    service: string | null;
    instance: string | null;
    message: string;
    run_id: string | null;
    pub_seq: number | null;
  };
  owner_quotas: { owner: string; max_instances: number; max_clusters: number; max_cpus: number; updated_at: string };
  quota_reservations: { cluster_id: string; owner: string; instances: number; cpus: number; services: string; created_at: string; released_at: string | null };
  audit_log: { id: Generated<number>; at: string; owner: string; role: string; token_id: string | null; route: string; target: string | null; result: number };
  capacity_reservations: { cloud: string; instance_id: string; cluster_id: string; cpus: number; memory_mib: number; reserved_at: string };
  /** Failed pairing-PIN lookups by client (migration 0002), so the miss limit holds across API replicas. */
  pin_lookup_misses: { id: Generated<number>; client: string; at: string };
}

/** The query builder, or one transaction of it: what every store function takes. */
export type Db = Kysely<Tables>;

export type Engine = 'sqlite' | 'postgres';
