/**
 * Versioned migrations of the store, for both engines, run by Kysely's `Migrator` at every
 * open (it records what ran in `kysely_migration`; on PostgreSQL it takes an advisory lock,
 * so replicas starting together migrate once). Add a migration by appending to
 * {@link migrations} under the next number; never edit one that has shipped.
 *
 * `0001-baseline` is the schema as the store had it before migrations, made with
 * `IF NOT EXISTS` throughout: on a new database it creates everything, and on a SQLite file
 * made by an earlier cloudgate it adopts the tables as they are and adds the columns that
 * stores older still lack (the checks the store used to make at every open). After it, every
 * database is at one known version, whichever way it got there.
 */
import { sql, type ColumnDefinitionBuilder, type CreateTableBuilder, type Kysely } from 'kysely';
import { Migrator, type Migration } from 'kysely/migration';
import type { Engine } from './tables.js';

// Migrations see the database as it was when they were written, not as Tables types it now.
type AnyDb = Kysely<any>;
type Table = CreateTableBuilder<string, never>;

/** An auto-increment integer primary key: SQLite's `INTEGER PRIMARY KEY AUTOINCREMENT`, PostgreSQL's identity column. */
const autoId = (engine: Engine) => (t: Table): Table =>
  engine === 'sqlite'
    ? t.addColumn('id', 'integer', (c) => c.primaryKey().autoIncrement())
    : t.addColumn('id', 'bigint', (c) => c.primaryKey().generatedByDefaultAsIdentity());

/**
 * The insertion order of rows whose key is random (tokens, contexts), the tie-break of lists
 * ordered by creation time: SQLite has it as the implicit `rowid`, PostgreSQL gets a column of
 * that name.
 */
const rowid = (engine: Engine) => (t: Table): Table => (engine === 'sqlite' ? t : t.addColumn('rowid', 'bigint', (c) => c.notNull().generatedAlwaysAsIdentity()));

const notNull = (c: ColumnDefinitionBuilder) => c.notNull();

/**
 * Columns added to the SQLite store over time, before migrations: a table made by an older
 * cloudgate lacks them and `CREATE TABLE IF NOT EXISTS` leaves it so. Each is added where it
 * is missing.
 */
const LATER_COLUMNS: { table: string; column: string; type: 'text' | 'integer'; notNullDefault?: number }[] = [
  { table: 'clouds', column: 'info', type: 'text' }, // endpoints and credential references
  { table: 'contexts', column: 'deleted_at', type: 'text' }, // contexts could be deleted
  { table: 'contexts', column: 'owner', type: 'text' }, // owners (their rows have none: only admins see them)
  { table: 'cluster_definitions', column: 'owner', type: 'text' },
  { table: 'cluster_definitions', column: 'deleted_at', type: 'text' }, // definitions could be deleted
  { table: 'clusters', column: 'contexts', type: 'text' }, // clusters pinned context versions
  { table: 'clusters', column: 'lifetime', type: 'text' }, // sessions (issue 13)
  { table: 'clusters', column: 'windows', type: 'text' }, // schedule windows (issue 13)
  { table: 'cluster_views', column: 'expires_at', type: 'text' },
  { table: 'cluster_views', column: 'drain_until', type: 'text' },
  { table: 'cluster_views', column: 'change', type: 'text' }, // changes of running clusters (issue 13)
  { table: 'instances', column: 'host', type: 'text' }, // hypervisor hosts (issue 12)
  { table: 'instances', column: 'spec', type: 'text' },
  { table: 'pairings', column: 'lookup', type: 'text' }, // PIN lookup halves and miss budgets (issue 11)
  { table: 'pairings', column: 'misses', type: 'integer', notNullDefault: 0 },
];

function baseline(engine: Engine): Migration {
  return {
    async up(db: AnyDb) {
      const s = db.schema;
      await s
        .createTable('cluster_definitions')
        .ifNotExists()
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', notNull)
        .addColumn('definition', 'text', notNull)
        .addColumn('created_at', 'text', notNull)
        .addColumn('owner', 'text')
        .addColumn('deleted_at', 'text')
        .execute();
      await s
        .createTable('api_tokens')
        .ifNotExists()
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('token_hash', 'text', (c) => c.notNull().unique())
        .addColumn('owner', 'text', notNull)
        .addColumn('role', 'text', notNull)
        .addColumn('created_at', 'text', notNull)
        .addColumn('expires_at', 'text')
        .addColumn('revoked_at', 'text')
        .$call(rowid(engine))
        .execute();
      await s
        .createTable('clusters')
        .ifNotExists()
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', notNull)
        .addColumn('definition_id', 'text', (c) => c.notNull().references('cluster_definitions.id'))
        .addColumn('cloud', 'text', notNull)
        .addColumn('owner', 'text')
        .addColumn('idempotency_key', 'text', (c) => c.unique())
        .addColumn('request_hash', 'text')
        .addColumn('contexts', 'text')
        .addColumn('lifetime', 'text')
        .addColumn('windows', 'text')
        .addColumn('created_at', 'text', notNull)
        .execute();
      await s
        .createTable('clouds')
        .ifNotExists()
        .addColumn('name', 'text', (c) => c.primaryKey())
        .addColumn('kind', 'text', notNull)
        .addColumn('offerings', 'text', notNull)
        .addColumn('info', 'text')
        .addColumn('updated_at', 'text', notNull)
        .execute();
      await s
        .createTable('contexts')
        .ifNotExists()
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('created_at', 'text', notNull)
        .addColumn('deleted_at', 'text')
        .addColumn('owner', 'text')
        .$call(rowid(engine))
        .execute();
      // secrets: AES-256-GCM of the JSON map of secret values, 'v1:' base64(iv | tag | ciphertext).
      await s
        .createTable('context_versions')
        .ifNotExists()
        .addColumn('context_id', 'text', (c) => c.notNull().references('contexts.id'))
        .addColumn('version', 'integer', notNull)
        .addColumn('name', 'text', notNull)
        .addColumn('context', 'text', notNull)
        .addColumn('secrets', 'text', notNull)
        .addColumn('created_at', 'text', notNull)
        .addPrimaryKeyConstraint('context_versions_pk', ['context_id', 'version'])
        .execute();
      await s
        .createTable('pairings')
        .ifNotExists()
        .addColumn('pin', 'text', (c) => c.primaryKey())
        .addColumn('context_id', 'text', notNull)
        .addColumn('version', 'integer', notNull)
        .addColumn('created_at', 'text', notNull)
        .addColumn('expires_at', 'text', notNull)
        .addColumn('used_at', 'text')
        .addColumn('lookup', 'text')
        .addColumn('misses', 'integer', (c) => c.notNull().defaultTo(0))
        .addForeignKeyConstraint('pairings_context_version', ['context_id', 'version'], 'context_versions', ['context_id', 'version'])
        .execute();
      // The read model. No foreign keys to clusters: a publish must never fail (and be retried forever) because of a row the API owns.
      await s
        .createTable('cluster_views')
        .ifNotExists()
        .addColumn('cluster_id', 'text', (c) => c.primaryKey())
        .addColumn('seq', 'integer', notNull)
        .addColumn('observed_at', 'text', notNull)
        .addColumn('state', 'text', notNull)
        .addColumn('message', 'text')
        .addColumn('services', 'text', notNull)
        .addColumn('expires_at', 'text')
        .addColumn('change', 'text')
        .addColumn('drain_until', 'text')
        .execute();
      await s
        .createTable('service_views')
        .ifNotExists()
        .addColumn('cluster_id', 'text', notNull)
        .addColumn('service', 'text', notNull)
        .addColumn('seq', 'integer', notNull)
        .addColumn('observed_at', 'text', notNull)
        .addColumn('summary', 'text', notNull)
        .addPrimaryKeyConstraint('service_views_pk', ['cluster_id', 'service'])
        .execute();
      await s
        .createTable('instances')
        .ifNotExists()
        .addColumn('cluster_id', 'text', notNull)
        .addColumn('id', 'text', notNull)
        .addColumn('service', 'text', notNull)
        .addColumn('ordinal', 'integer', notNull)
        .addColumn('name', 'text', notNull)
        .addColumn('state', 'text', notNull)
        .addColumn('cloud', 'text', notNull)
        .addColumn('cloud_instance_id', 'text')
        .addColumn('created_at', 'text')
        .addColumn('ready_at', 'text')
        .addColumn('message', 'text')
        .addColumn('host', 'text')
        .addColumn('spec', 'text')
        .addPrimaryKeyConstraint('instances_pk', ['cluster_id', 'id'])
        .execute();
      await s
        .createTable('cluster_events')
        .ifNotExists()
        .$call(autoId(engine))
        .addColumn('cluster_id', 'text', notNull)
        .addColumn('at', 'text', notNull)
        .addColumn('kind', 'text', notNull)
        .addColumn('service', 'text')
        .addColumn('instance', 'text')
        .addColumn('message', 'text', notNull)
        .execute();
      // Quotas and the audit trail (store/quotas-audit.ts).
      await s
        .createTable('owner_quotas')
        .ifNotExists()
        .addColumn('owner', 'text', (c) => c.primaryKey())
        .addColumn('max_instances', 'integer', notNull)
        .addColumn('max_clusters', 'integer', notNull)
        .addColumn('max_cpus', 'integer', notNull)
        .addColumn('updated_at', 'text', notNull)
        .execute();
      // One row per cluster submitted under quotas; totals beside the per-service JSON they sum.
      await s
        .createTable('quota_reservations')
        .ifNotExists()
        .addColumn('cluster_id', 'text', (c) => c.primaryKey())
        .addColumn('owner', 'text', notNull)
        .addColumn('instances', 'integer', notNull)
        .addColumn('cpus', 'integer', notNull)
        .addColumn('services', 'text', notNull)
        .addColumn('created_at', 'text', notNull)
        .addColumn('released_at', 'text')
        .execute();
      await s
        .createTable('audit_log')
        .ifNotExists()
        .$call(autoId(engine))
        .addColumn('at', 'text', notNull)
        .addColumn('owner', 'text', notNull)
        .addColumn('role', 'text', notNull)
        .addColumn('token_id', 'text')
        .addColumn('route', 'text', notNull)
        .addColumn('target', 'text')
        .addColumn('result', 'integer', notNull)
        .execute();
      // The capacity ledger (store/capacity.ts).
      await s
        .createTable('capacity_reservations')
        .ifNotExists()
        .addColumn('cloud', 'text', notNull)
        .addColumn('instance_id', 'text', notNull)
        .addColumn('cluster_id', 'text', notNull)
        .addColumn('cpus', 'integer', notNull)
        .addColumn('memory_mib', 'integer', notNull)
        .addColumn('reserved_at', 'text', notNull)
        .addPrimaryKeyConstraint('capacity_reservations_pk', ['cloud', 'instance_id'])
        .execute();

      // A table made by an older store lacks the columns added since (SQLite files only: PostgreSQL starts here).
      const tables = await db.introspection.getTables();
      for (const { table, column, type, notNullDefault } of LATER_COLUMNS) {
        const has = tables.find((t) => t.name === table)?.columns.some((c) => c.name === column);
        if (has) continue;
        await s
          .alterTable(table)
          .addColumn(column, type, (c) => (notNullDefault === undefined ? c : c.notNull().defaultTo(notNullDefault)))
          .execute();
      }

      // The listing order of instances, and the keyset its cursors continue from.
      await s.createIndex('instances_by_service').ifNotExists().on('instances').columns(['cluster_id', 'service', 'ordinal']).execute();
      await s.createIndex('cluster_events_by_cluster').ifNotExists().on('cluster_events').columns(['cluster_id', 'id']).execute();
      await s.createIndex('quota_reservations_by_owner').ifNotExists().on('quota_reservations').column('owner').execute();
      await s.createIndex('audit_log_by_owner').ifNotExists().on('audit_log').columns(['owner', 'id']).execute();
      await s.createIndex('audit_log_by_target').ifNotExists().on('audit_log').columns(['target', 'id']).execute();
      await s.createIndex('capacity_reservations_cluster').ifNotExists().on('capacity_reservations').columns(['cloud', 'cluster_id']).execute();

      // The audit log is append-only: the database itself refuses UPDATE and DELETE (and, on PostgreSQL, TRUNCATE).
      if (engine === 'sqlite') {
        await sql`CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END`.execute(db);
        await sql`CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END`.execute(db);
      } else {
        await sql`CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$`.execute(db);
        await sql`CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()`.execute(db);
        await sql`CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()`.execute(db);
      }
    },
  };
}

/**
 * Failed pairing-PIN lookups per client, in the database rather than in each API process's
 * memory, so the limit (api/contexts.ts) counts a client's misses at every replica together.
 */
function pinLookupMisses(engine: Engine): Migration {
  return {
    async up(db: AnyDb) {
      await db.schema.createTable('pin_lookup_misses').ifNotExists().$call(autoId(engine)).addColumn('client', 'text', notNull).addColumn('at', 'text', notNull).execute();
      await db.schema.createIndex('pin_lookup_misses_by_client').ifNotExists().on('pin_lookup_misses').columns(['client', 'at']).execute();
    },
  };
}

/**
 * Which publish wrote each event (`run_id`: the workflow run that published it; `pub_seq`: the
 * publish's seq), so a publish that supersedes a lost workflow task's writes replaces that
 * task's events instead of adding to them (store/index.ts, `supersedes`). Events written
 * before have neither and are never replaced.
 */
function eventWriters(): Migration {
  return {
    async up(db: AnyDb) {
      // Each only where missing: a database whose migration record was lost has them already.
      const events = (await db.introspection.getTables()).find((t) => t.name === 'cluster_events');
      for (const [column, type] of [['run_id', 'text'], ['pub_seq', 'integer']] as const) {
        if (!events?.columns.some((c) => c.name === column)) await db.schema.alterTable('cluster_events').addColumn(column, type).execute();
      }
      await db.schema.createIndex('cluster_events_by_run').ifNotExists().on('cluster_events').columns(['cluster_id', 'run_id', 'pub_seq']).execute();
    },
  };
}

/** Every migration, by name; names sort in the order they run. */
export const migrations = (engine: Engine): Record<string, Migration> => ({
  '0001-baseline': baseline(engine),
  '0002-pin-lookup-misses': pinLookupMisses(engine),
  '0003-event-writers': eventWriters(),
});

/** Brings the database to the latest version; throws (naming the migration) if one fails. */
export async function migrateToLatest(db: AnyDb, engine: Engine): Promise<void> {
  const migrator = new Migrator({ db, provider: { getMigrations: () => Promise.resolve(migrations(engine)) } });
  const { error, results } = await migrator.migrateToLatest();
  if (error !== undefined) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName;
    throw new Error(`the store's database could not be migrated${failed ? ` (migration ${failed})` : ''}: ${(error as Error).message ?? String(error)}`, { cause: error });
  }
}
