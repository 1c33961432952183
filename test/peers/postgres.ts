/**
 * The PostgreSQL test peer: a throwaway cluster of Debian's PostgreSQL server (package
 * `postgresql`, installed by `node scripts/setup.mjs --test`) in a temp folder, listening on
 * 127.0.0.1 at a free port, with one login role and one database of its own. Run as root
 * (initdb refuses root), its processes run as the `postgres` user the package made; run as
 * anyone else, as that user. `stop()` shuts the cluster down and removes the folder.
 *
 * The superuser `postgres` connects over the peer's own Unix socket (trust, in the folder);
 * over TCP every role needs its password (scram-sha-256), as a site's server would ask.
 * fsync is off: the data survives a kill of any process that uses it, not a power cut.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../../workers/dev-server.js';

const execFileP = promisify(execFile);

/** How to get the server binaries, said by every error about them. */
const HOW_TO_GET = 'install the Debian package postgresql (`apt-get install postgresql`, which `node scripts/setup.mjs --test` does as root), or set PG_BIN to a folder holding initdb, postgres and psql';

export interface PostgresPeer {
  host: string;
  port: number;
  /** The peer's login role (CREATEDB) and its password. */
  user: string;
  password: string;
  /** The role's own database. */
  database: string;
  /** `postgres://user:password@127.0.0.1:port/database`. */
  url: string;
  /** Runs SQL as the superuser (over the peer's Unix socket) in `database` (default the role's); returns psql's unaligned output. */
  psql(sql: string, database?: string): Promise<string>;
  /** Creates a database owned by the peer's role (no-op if it exists). */
  createDatabase(name: string): Promise<void>;
  /** Fast shutdown, then the folder is removed. */
  stop(): Promise<void>;
}

export interface PostgresPeerOptions {
  /** Login role; default `cloudgate`. */
  user?: string;
  /** Its database; default the role's name. */
  database?: string;
  /** `max_connections` (default 200: a Temporal server keeps pools per service). */
  maxConnections?: number;
}

/** `$PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin` with an initdb (Debian's layout). */
export function findPostgresBin(env: NodeJS.ProcessEnv = process.env): string {
  const ok = (dir: string) => ['initdb', 'postgres', 'psql'].every((b) => existsSync(path.join(dir, b)));
  if (env.PG_BIN) {
    if (!ok(env.PG_BIN)) throw new Error(`PostgreSQL peer: PG_BIN=${env.PG_BIN} lacks initdb, postgres or psql; ${HOW_TO_GET}`);
    return env.PG_BIN;
  }
  const base = '/usr/lib/postgresql';
  const versions = existsSync(base)
    ? readdirSync(base)
        .filter((v) => /^\d+$/.test(v) && ok(path.join(base, v, 'bin')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions.length === 0) throw new Error(`PostgreSQL peer: no PostgreSQL server found (looked for ${base}/<version>/bin/initdb); ${HOW_TO_GET}`);
  return path.join(base, versions[0], 'bin');
}

/** The uid and gid the server runs as: ours, or the `postgres` user's when we are root. */
function serverUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  if (!line) throw new Error(`PostgreSQL peer: running as root, but there is no \`postgres\` user to run the server as (initdb refuses root); ${HOW_TO_GET}`);
  const [, , uid, gid] = line.split(':');
  return { uid: Number(uid), gid: Number(gid) };
}

const quoteIdent = (s: string) => `"${s.replace(/"/g, '""')}"`;
const quoteLiteral = (s: string) => `'${s.replace(/'/g, "''")}'`;

export async function startPostgresPeer(opts: PostgresPeerOptions = {}): Promise<PostgresPeer> {
  const bin = findPostgresBin();
  const as = serverUser();
  const dir = mkdtempSync(path.join(tmpdir(), 'cg-postgres-'));
  if (as) chownSync(dir, as.uid, as.gid);
  const dataDir = path.join(dir, 'data');
  const user = opts.user ?? 'cloudgate';
  const database = opts.database ?? user;
  const password = randomBytes(18).toString('base64url');
  const port = await freePort();
  const env = { ...process.env, HOME: dir, LC_ALL: 'C.UTF-8', LANG: 'C.UTF-8' };
  const spawnOpts = { env, cwd: dir, ...(as && { uid: as.uid, gid: as.gid }) };

  let server: ChildProcess | undefined;
  let output = '';
  const stopServer = async () => {
    const proc = server;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill('SIGINT'); // fast shutdown: roll back open transactions, checkpoint, exit
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  };
  const cleanup = async () => {
    await stopServer();
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    try {
      await execFileP(path.join(bin, 'initdb'), ['-D', dataDir, '-U', 'postgres', '--auth-local=trust', '--auth-host=scram-sha-256', '-E', 'UTF8', '--no-locale', '--no-instructions'], spawnOpts);
    } catch (err) {
      const e = err as { stderr?: string; message: string };
      throw new Error(`PostgreSQL peer: initdb failed: ${e.stderr || e.message}`, { cause: err });
    }
    server = spawn(
      path.join(bin, 'postgres'),
      [
        '-D', dataDir,
        '-c', 'listen_addresses=127.0.0.1',
        '-c', `port=${port}`,
        '-c', `unix_socket_directories=${dir}`,
        '-c', `max_connections=${opts.maxConnections ?? 200}`,
        '-c', 'fsync=off',
        '-c', 'synchronous_commit=off',
        '-c', 'full_page_writes=off',
        '-c', 'log_min_messages=warning',
      ],
      { ...spawnOpts, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const keep = (b: Buffer) => {
      if (output.length < 20_000) output += b.toString();
    };
    server.stdout!.on('data', keep);
    server.stderr!.on('data', keep);
    let spawnError: Error | undefined;
    server.once('error', (err) => (spawnError = err));

    const psqlRaw = async (sql: string, db: string) => {
      const { stdout } = await execFileP(path.join(bin, 'psql'), ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', dir, '-p', String(port), '-U', 'postgres', '-d', db, '-c', sql], { env });
      return stdout;
    };
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (spawnError) throw new Error(`PostgreSQL peer: cannot start ${bin}/postgres: ${spawnError.message}`);
      if (server.exitCode !== null || server.signalCode !== null) throw new Error(`PostgreSQL peer: the server exited while starting: ${output.slice(-2000)}`);
      const up = await psqlRaw('SELECT 1', 'postgres').then(
        () => true,
        () => false,
      );
      if (up) break;
      if (Date.now() > deadline) throw new Error(`PostgreSQL peer: no answer on 127.0.0.1:${port} within 30 s: ${output.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    await psqlRaw(`CREATE ROLE ${quoteIdent(user)} LOGIN CREATEDB PASSWORD ${quoteLiteral(password)}`, 'postgres');
    const createDatabase = async (name: string) => {
      const exists = (await psqlRaw(`SELECT 1 FROM pg_database WHERE datname = ${quoteLiteral(name)}`, 'postgres')).trim() === '1';
      if (!exists) await psqlRaw(`CREATE DATABASE ${quoteIdent(name)} OWNER ${quoteIdent(user)}`, 'postgres');
    };
    await createDatabase(database);
    // Where psql, pg_dump & co. look for the password (`PGPASSFILE=<dir>/pgpass`), for a person debugging a kept folder.
    writeFileSync(path.join(dir, 'pgpass'), `127.0.0.1:${port}:*:${user}:${password}\n`, { mode: 0o600 });
    return {
      host: '127.0.0.1',
      port,
      user,
      password,
      database,
      url: `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/${encodeURIComponent(database)}`,
      psql: (sql, db) => psqlRaw(sql, db ?? database),
      createDatabase,
      stop: cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
