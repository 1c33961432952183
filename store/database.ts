/**
 * The store's database: one Kysely query builder over SQLite (better-sqlite3, the default: a
 * file in the data folder) or PostgreSQL (`pg`, `CLOUDGATE_DATABASE_URL=postgres://…`, so
 * several API replicas and workers share one database). Every query of the store is written
 * once against {@link Tables}; the few things the two engines do differently are here and
 * only here:
 *
 * - **Write transactions** ({@link StoreDatabase.write}). SQLite: `BEGIN IMMEDIATE`, which
 *   takes the file's write lock up front, so a read-check-write (a quota check, a publish's
 *   seq check, a capacity reservation) is never interleaved with another writer, in this
 *   process (Kysely's SQLite driver has one connection behind a mutex) or in another one on
 *   the same file (`busy_timeout` waits for it). PostgreSQL: `SERIALIZABLE`, retried from
 *   the start when the server reports a serialization failure or deadlock, so the same
 *   read-check-write holds across any number of processes and pool connections: of two
 *   replicas racing for the last room in a quota, one commits and the other runs again and
 *   sees the first one's row.
 * - **Serialized writes** ({@link StoreDatabase.writeSerially}): a read-check-write that
 *   every writer of one key contends for (the capacity ledger of a cloud, which each create
 *   batch of every cluster reserves in). Under SERIALIZABLE, dozens of such transactions at
 *   once mostly abort each other (each reads the aggregate the others insert into) and burn
 *   their retries; so on PostgreSQL these take a transaction-scoped advisory lock on the key
 *   first and run READ COMMITTED: they queue instead of failing, and each statement after
 *   the lock sees every earlier holder's committed rows. SQLite's `BEGIN IMMEDIATE` already
 *   queues every writer.
 * - **Unique violations** ({@link StoreDatabase.uniqueViolation}): SQLite names the column in
 *   its message, PostgreSQL the constraint.
 * - **DDL**: auto-increment keys, the audit log's append-only triggers, and the insertion
 *   order column (SQLite's implicit `rowid`; a `rowid` identity column on PostgreSQL), all in
 *   store/migrations.ts.
 * - **Integers**: PostgreSQL answers `COUNT` and `SUM` as `bigint`, which `pg` returns as a
 *   string; this pool parses them to numbers (every count here is far below 2^53).
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, PostgresDialect, sql, SqliteDialect } from 'kysely';
import pg from 'pg';
import { ensurePrivateFile } from './private-files.js';
import { migrateToLatest } from './migrations.js';
import type { Db, Engine, Tables } from './tables.js';

export type { Db, Engine, Tables } from './tables.js';


/** An open store database: the builder, and the engine's ways of writing and failing. */
export interface StoreDatabase {
  engine: Engine;
  db: Db;
  /**
   * Runs `fn` as one write transaction (see the file's notes): all of it or nothing, never
   * interleaved with another writer's read-check-write. On PostgreSQL `fn` may run more than
   * once (a serialization failure retries it), so it must do nothing but database work.
   */
  write<T>(fn: (trx: Db) => Promise<T>): Promise<T>;
  /**
   * Runs `fn` as one write transaction after every earlier one of the same `key` (in any
   * process on the database) has ended: for a read-check-write all writers of `key` contend
   * for. Rows of `key` only: `fn`'s reads of anything else are not isolated.
   */
  writeSerially<T>(key: string, fn: (trx: Db) => Promise<T>): Promise<T>;
  /** The text naming the column or constraint `err` violated, if it is a unique (or primary key) violation. */
  uniqueViolation(err: unknown): string | undefined;
  close(): Promise<void>;
}

/** The driver's error code of `err` or of the error it wraps (a failed migration wraps its cause). */
function codeOf(err: unknown): string {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    if (typeof e.code === 'string') return e.code;
  }
  return '';
}

/** SQLITE_BUSY and friends: another process holds the file's lock longer than `busy_timeout`, or a deferred transaction lost its snapshot. */
const isSqliteBusy = (err: unknown) => codeOf(err).startsWith('SQLITE_BUSY');

/**
 * Opens a SQLite database file (`':memory:'`: a private one) and migrates it; a file this
 * process has open already is shared (see below). The file is
 * created 0600 before SQLite opens it (its -wal and -shm then get the same mode): it holds
 * tokens' hashes and encrypted secrets. WAL mode lets the API read while a worker writes.
 */
export async function openSqliteDatabase(file: string): Promise<StoreDatabase> {
  const inMemory = file === ':memory:' || file === '';
  if (inMemory) return openSqliteConnection(file);
  // One connection per file per process, shared by every store opened on it (the API and the worker of `npm start`,
  // a test beside them): each connection's BEGIN IMMEDIATE waits for the others synchronously (better-sqlite3
  // blocks), so two connections of one process would wait for each other's async transactions until busy_timeout.
  const key = path.resolve(file);
  let shared = sqliteFiles.get(key);
  if (!shared) {
    const opening = openSqliteConnection(file);
    shared = { users: 0, opening };
    sqliteFiles.set(key, shared);
    opening.catch(() => sqliteFiles.delete(key));
  }
  shared.users++;
  const database = await shared.opening;
  let closed = false;
  return {
    ...database,
    close: async () => {
      if (closed) return;
      closed = true;
      if (--shared.users > 0) return;
      sqliteFiles.delete(key);
      await database.close();
    },
  };
}

/** The open SQLite files of this process, by absolute path, with how many stores use each. */
const sqliteFiles = new Map<string, { users: number; opening: Promise<StoreDatabase> }>();

async function openSqliteConnection(file: string): Promise<StoreDatabase> {
  const inMemory = file === ':memory:' || file === '';
  if (!inMemory) mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  if (!inMemory && !file.startsWith('file:')) ensurePrivateFile(file);
  const sqlite = new Database(file);
  sqlite.pragma('journal_mode = WAL');
  // The API and the worker may open the same file; wait for each other's short writes.
  sqlite.pragma('busy_timeout = 5000');
  sqlite.pragma('foreign_keys = ON');
  const db = new Kysely<Tables>({ dialect: new SqliteDialect({ database: sqlite }) });
  const store: StoreDatabase = {
    engine: 'sqlite',
    db,
    // One connection behind Kysely's mutex: holding it for the transaction keeps this process's other queries out.
    write: (fn) =>
      db.connection().execute(async (conn) => {
        await sql`BEGIN IMMEDIATE`.execute(conn);
        try {
          const result = await fn(conn);
          await sql`COMMIT`.execute(conn);
          return result;
        } catch (err) {
          if (sqlite.inTransaction) await sql`ROLLBACK`.execute(conn);
          throw err;
        }
      }),
    writeSerially: (_key, fn) => store.write(fn),
    uniqueViolation(err) {
      const e = err as { code?: string; message?: string };
      return e.code === 'SQLITE_CONSTRAINT_UNIQUE' || e.code === 'SQLITE_CONSTRAINT_PRIMARYKEY' ? (e.message ?? '') : undefined;
    },
    close: () => db.destroy(),
  };
  // Two processes opening a new file at once: the one whose deferred migration transaction lost the race runs it again (it then finds it done).
  await withRetries(() => migrateToLatest(db, store.engine), isSqliteBusy, 20);
  return store;
}

/** PostgreSQL's serialization_failure and deadlock_detected: the transaction may simply run again. */
const RETRYABLE_PG = new Set(['40001', '40P01']);
/** Tries of one write transaction on PostgreSQL before its serialization failure is the caller's. */
const PG_WRITE_ATTEMPTS = 12;
const PG_INT8 = 20;

/** Options of {@link openPostgresDatabase}. */
export interface PostgresOptions {
  /** Connections of this process's pool (default 10). */
  maxConnections?: number;
}

/**
 * Connects a pool to `url` (`postgres://user:password@host:port/database`; `pg` reads TLS and
 * other options from the URL) and migrates the database. Several processes may do this at
 * once: Kysely's migrator takes an advisory lock, so one migrates and the others find it done.
 */
export async function openPostgresDatabase(url: string, opts: PostgresOptions = {}): Promise<StoreDatabase> {
  const pool = new pg.Pool({
    connectionString: url,
    max: opts.maxConnections ?? 10,
    // Kept while idle for minutes, not pg's 10 s: a deployment's bursts come 25 s apart (one tier
    // after another), and each otherwise opened its connections again (a backend forked, a
    // SCRAM exchange) while its guests waited.
    idleTimeoutMillis: 5 * 60_000,
    // Idle connections do not keep a process alive that has nothing else to do.
    allowExitOnIdle: true,
    // COUNT and SUM are bigint: numbers here, as SQLite answers them.
    types: { getTypeParser: ((oid: number, format?: string) => (oid === PG_INT8 ? Number : pg.types.getTypeParser(oid, format as 'text'))) as typeof pg.types.getTypeParser },
  });
  // An idle client losing its connection (a server restart) must not kill the process; the pool replaces it.
  pool.on('error', () => undefined);
  const db = new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) });
  // This process's writers of one key queue here, holding no connection: only one per process waits on the
  // advisory lock, so 190 create batches of one worker queueing for a cloud's ledger leave the pool to everything else.
  const turns = new Map<string, Promise<unknown>>();
  const inTurn = <T>(key: string, f: () => Promise<T>): Promise<T> => {
    const run = (turns.get(key) ?? Promise.resolve()).then(f, f);
    const settled = run.catch(() => undefined);
    turns.set(key, settled);
    void settled.then(() => turns.get(key) === settled && turns.delete(key));
    return run;
  };
  const store: StoreDatabase = {
    engine: 'postgres',
    db,
    write: (fn) =>
      withRetries(
        () => db.transaction().setIsolationLevel('serializable').execute(fn),
        (err) => RETRYABLE_PG.has(codeOf(err)),
        PG_WRITE_ATTEMPTS,
      ),
    writeSerially: (key, fn) =>
      inTurn(key, () =>
        withRetries(
          () =>
            db
              .transaction()
              .setIsolationLevel('read committed')
              .execute(async (trx) => {
                await sql`SELECT pg_advisory_xact_lock(hashtextextended(${key}, 0))`.execute(trx);
                return fn(trx);
              }),
          (err) => RETRYABLE_PG.has(codeOf(err)),
          PG_WRITE_ATTEMPTS,
        ),
      ),
    uniqueViolation(err) {
      const e = err as { code?: string; constraint?: string; detail?: string };
      return e.code === '23505' ? `${e.constraint ?? ''} ${e.detail ?? ''}` : undefined;
    },
    close: () => db.destroy(),
  };
  try {
    await withRetries(() => migrateToLatest(db, store.engine), (err) => RETRYABLE_PG.has(codeOf(err)), 5);
  } catch (err) {
    await db.destroy();
    throw err;
  }
  return store;
}

/** Runs `f` until it succeeds, fails with an error `retryable` refuses, or has run `attempts` times; waits a little, jittered, between runs. */
async function withRetries<T>(f: () => Promise<T>, retryable: (err: unknown) => boolean, attempts: number): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await f();
    } catch (err) {
      if (attempt >= attempts || !retryable(err)) throw err;
      await new Promise((r) => setTimeout(r, Math.min(200, 2 ** attempt) * (0.5 + Math.random())));
    }
  }
}
