/**
 * `sim`: a simulated cloud whose guests behave like CernVM guests — they boot, read their
 * user-data and phone home a CVMFS probe result over real HTTP — with configurable boot
 * latency and injected failures, silence, vanishing and throttling. It is the demo default
 * and the benchmark target.
 *
 * State lives in SQLite, not in memory, because the point of the demo is that a worker can
 * be `kill -9`ed and restarted and still find every instance it made (and the guests still
 * phone home). One process drives the guests at a time; a second one on the same file sees
 * the same cloud (WAL + busy timeout + immediate transactions keep that safe).
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { z } from 'zod';
import { DEFAULT_SIM_IMAGES, type ImageMap } from '../model/images.js';
import { extractPhoneHome } from '../model/user-data.js';
import {
  CloudError,
  type CloudAdapter,
  type CloudInstance,
  type CloudOffering,
  type InstanceFilter,
  type InstanceSpec,
} from './contract.js';
import { requireImage, smallestFit } from './registry.js';

/** What a simulated guest does after boot. */
export const SIM_BEHAVIOURS = ['ok', 'fail', 'silent', 'vanish'] as const;
export type SimBehaviour = (typeof SIM_BEHAVIOURS)[number];

/**
 * Rules that pin guest behaviour by instance name, e.g. from `SIM_RULES` as JSON:
 * `[{"match": "-workers-", "behaviour": "fail", "limit": 3}]`.
 */
export const SimRulesSchema = z.array(
  z
    .object({
      /** RegExp source tested against the instance name. */
      match: z.string().refine(
        (s) => {
          try {
            new RegExp(s);
            return true;
          } catch {
            return false;
          }
        },
        { message: 'not a valid regular expression' },
      ),
      behaviour: z.enum(SIM_BEHAVIOURS),
      /** Applies only to the first N instances matching (counted across restarts). */
      limit: z.number().int().min(0).optional(),
    })
    .strict(),
);
export type SimRule = z.infer<typeof SimRulesSchema>[number];

/** Sends one readiness report; resolves to the HTTP status, rejects on network errors. */
export type PhoneHomeSender = (url: string, token: string, body: unknown) => Promise<number>;

export interface SimCloudOptions {
  /** Adapter name in the registry; default `sim`. */
  name?: string;
  /** SQLite file holding the cloud's state, or `:memory:`. */
  file: string;
  /** PENDING → RUNNING after this long. */
  bootMs: number;
  /** A running guest reports this long after boot. */
  readyDelayMs: number;
  /** Share of guests (by seeded hash of their name) that report a failed probe. */
  failureRate: number;
  /** Share of guests that never report. */
  silentRate: number;
  /** Share of create calls rejected with `CloudError('Throttled')`. */
  throttleRate: number;
  seed: string;
  rules?: SimRule[];
  /** Guest ticker period; default 50 ms (how late a guest may phone home, past its readiness, when nothing waits before it). */
  tickMs?: number;
  /** Default: HTTP POST of JSON with `Authorization: Bearer <token>` over keep-alive connections. */
  phoneHome?: PhoneHomeSender;
  offerings?: CloudOffering[];
  /** Image name → reference, from the registry entry; default {@link DEFAULT_SIM_IMAGES}. Any other image is refused. */
  images?: ImageMap;
  /** Unexpected ticker errors (SQLite busy, bugs); default `console.error`. Network errors are not reported. */
  onError?: (err: unknown) => void;
  /** Live instances the cloud has room for; a create beyond it is answered `CapacityExhausted` (default: unlimited). */
  capacity?: number;
  /** Share of creates answered with a retryable internal error (`Transient`), as a failing cloud does (default 0). */
  createFailureRate?: number;
}

/** The sim adapter plus the handles a process and tests need. */
export interface SimCloud extends CloudAdapter {
  /** Starts the guest ticker (boot, vanish, phone home). Idempotent. */
  start(): void;
  /** Stops the ticker and waits for phone-homes in flight; unsent ones stay due in the file. */
  stop(): Promise<void>;
  /** `stop()` and close the SQLite file. */
  close(): Promise<void>;
  /** Live instances, optionally of one cluster. */
  count(filter?: InstanceFilter): number;
  /** The instance disappears as if the hypervisor lost it. */
  vanish(id: string): void;
  /** The most instances that were ever live at once in this cloud's file (checked on every create, in its transaction). */
  peakLive(): number;
  /**
   * The guests of one service (recently terminated ones too), as a batch system on them would
   * see them: the job queue (clouds/sim-queue.ts) runs jobs on those that are up.
   */
  guests(cluster: string, service: string): SimGuest[];
}

/** A simulated guest as its batch system sees it. */
export interface SimGuest {
  /** The instance name (cloudgate's instance id). */
  name: string;
  /** Job slots: its flavor's cpus. */
  slots: number;
  /** When it had booted and phoned home ok (epoch ms); undefined while booting, silent or failed. */
  upAt?: number;
  /** When it was terminated (or vanished); undefined while live. */
  goneAt?: number;
}

/** Default flavors, shaped like a small OpenStack/CloudStack catalogue. */
export const SIM_OFFERINGS: readonly CloudOffering[] = [
  { id: 'sim.small', name: 'sim.small', cpus: 1, memoryMiB: 2048, diskGiB: 20 },
  { id: 'sim.medium', name: 'sim.medium', cpus: 2, memoryMiB: 4096, diskGiB: 40 },
  { id: 'sim.large', name: 'sim.large', cpus: 4, memoryMiB: 8192, diskGiB: 80 },
  { id: 'sim.xlarge', name: 'sim.xlarge', cpus: 8, memoryMiB: 16384, diskGiB: 160 },
  { id: 'sim.huge', name: 'sim.huge', cpus: 32, memoryMiB: 131072, diskGiB: 1000 },
];

/**
 * Phone-homes in flight at once (and sockets to the gateway). Real guests report on their own,
 * all at once; the gateway answers a report once its batch is signalled to the service
 * workflow (a few hundred ms under load), so the sim's guests deliver at most
 * `PHONE_HOMES_IN_FLIGHT / latency` reports a second: 32 held a 2,850-instance tier to about 170 a
 * second (45 s instead of 25 to READY in the scale bench). 512 keeps a burst of thousands
 * of guests a burst, without a socket per guest.
 */
export const PHONE_HOMES_IN_FLIGHT = 512;
/** How many due phone-homes the ticker queues at once. */
const QUEUE_BATCH = 1024;
/** A real guest agent stops retrying eventually; the service then replaces the instance. */
const GIVE_UP_MS = 10 * 60_000;
/** Like EC2, terminated instances stay describable (as TERMINATED) for a while. */
const TERMINATED_RETENTION_MS = 60 * 60_000;
const PHONE_HOME_TIMEOUT_MS = 30_000;
/**
 * How long a ticker's claim on the due phone-homes it queued lasts. Several processes may run
 * guests of one state file (the production topology's workers): each claims what it queues,
 * so a guest phones home once, not once per process (which doubled the gateway's load). A
 * claim of a process killed meanwhile runs out, and another process sends those.
 */
const CLAIM_MS = 15_000;

interface Row {
  id: string;
  name: string;
  key: string;
  cluster: string;
  service: string;
  image: string;
  flavor: string;
  guest: SimBehaviour;
  created_at: number;
  running_at: number;
  terminated_at: number | null;
  phone_attempts: number;
  phone_result: string | null;
  phoned_at: number | null;
}

interface PhoneRow {
  user_data: string;
  guest: SimBehaviour;
  phone_due_at: number;
  phone_attempts: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS instances (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  key TEXT NOT NULL,
  cluster TEXT NOT NULL,
  service TEXT NOT NULL,
  image TEXT NOT NULL,
  flavor TEXT NOT NULL,
  user_data TEXT NOT NULL,
  guest TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  running_at INTEGER NOT NULL,
  terminated_at INTEGER,
  phone_due_at INTEGER,
  -- NULL once the guest has nothing more to send (reported, gave up, silent, terminated).
  phone_next_at INTEGER,
  phone_attempts INTEGER NOT NULL DEFAULT 0,
  phone_result TEXT,
  phoned_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS instances_live_key ON instances(key) WHERE terminated_at IS NULL;
CREATE INDEX IF NOT EXISTS instances_live_cluster ON instances(cluster) WHERE terminated_at IS NULL;
CREATE INDEX IF NOT EXISTS instances_phone_due ON instances(phone_next_at) WHERE phone_next_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS instances_vanishing ON instances(running_at) WHERE guest = 'vanish' AND terminated_at IS NULL;
CREATE INDEX IF NOT EXISTS instances_terminated ON instances(terminated_at) WHERE terminated_at IS NOT NULL;
-- Each guest's user-data, apart from its row: a phone-home updates the row twice (its claim,
-- its outcome), and with the user-data (4 KB and more) in the row each update wrote a page of
-- it to the WAL again. Rows made before keep theirs in instances.user_data (now '').
CREATE TABLE IF NOT EXISTS guest_user_data (id TEXT PRIMARY KEY, user_data TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS guest_user_data_delete AFTER DELETE ON instances
  BEGIN DELETE FROM guest_user_data WHERE id = OLD.id; END;
-- Where an instance's user-data is found, wherever it is kept (the guests' phone-homes, the tests).
CREATE VIEW IF NOT EXISTS instance_user_data AS
  SELECT i.id, i.name, i.key, i.cluster, i.service, i.created_at, coalesce(u.user_data, i.user_data) AS user_data
  FROM instances i LEFT JOIN guest_user_data u ON u.id = i.id;
CREATE TABLE IF NOT EXISTS rule_use (rule TEXT PRIMARY KEY, used INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS peak (id INTEGER PRIMARY KEY CHECK (id = 1), live INTEGER NOT NULL);
-- Rows not terminated (vanished guests' included), counted by triggers: every create asks how
-- many instances are live, and counting the rows took 5 ms at 10,000 (each row's user-data is
-- read on the way to its terminated_at), so a 10,000-instance deployment spent minutes counting.
CREATE TABLE IF NOT EXISTS unterminated (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
INSERT OR IGNORE INTO unterminated (id, n) SELECT 1, count(*) FROM instances WHERE terminated_at IS NULL;
CREATE TRIGGER IF NOT EXISTS unterminated_insert AFTER INSERT ON instances WHEN NEW.terminated_at IS NULL
  BEGIN UPDATE unterminated SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS unterminated_terminate AFTER UPDATE OF terminated_at ON instances
  WHEN OLD.terminated_at IS NULL AND NEW.terminated_at IS NOT NULL
  BEGIN UPDATE unterminated SET n = n - 1 WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS unterminated_delete AFTER DELETE ON instances WHEN OLD.terminated_at IS NULL
  BEGIN UPDATE unterminated SET n = n - 1 WHERE id = 1; END;
`;

/**
 * Live = not terminated and not a vanish guest past its boot. The ticker deletes vanished
 * rows, but reads must not depend on the ticker having run (tests and a second process
 * may read without one).
 */
const LIVE = `terminated_at IS NULL AND (guest <> 'vanish' OR running_at > @now)`;
const COLUMNS = `id, name, key, cluster, service, image, flavor, guest, created_at, running_at,
  terminated_at, phone_attempts, phone_result, phoned_at`;

/** Opens (or creates) the simulated cloud in `opts.file`. Call `start()` to run its guests. */
export function createSimCloud(opts: SimCloudOptions): SimCloud {
  const name = opts.name ?? 'sim';
  const tickMs = opts.tickMs ?? 50;
  const offerings = (opts.offerings ?? SIM_OFFERINGS).map((o) => ({ ...o }));
  const images: ImageMap = { ...(opts.images ?? DEFAULT_SIM_IMAGES) };
  const phoneHome = opts.phoneHome ?? postJson;
  const onError = opts.onError ?? ((err: unknown) => console.error(`sim cloud "${name}":`, err));
  const rules = SimRulesSchema.parse(opts.rules ?? []).map((r, i) => ({
    ...r,
    re: new RegExp(r.match),
    // Index and text together, so editing the rules between runs starts fresh counts.
    id: `${i}:${r.behaviour}:${r.match}`,
  }));
  const throttleRandom = mulberry32(hashUnit32(`${opts.seed}\0throttle`));
  const failRandom = mulberry32(hashUnit32(`${opts.seed}\0create-failure`));

  const db = openSimSqlite(opts.file);
  // In WAL mode NORMAL loses nothing on a process crash (only on power loss), and saves an fsync per create.
  db.pragma('synchronous = NORMAL');
  // In one transaction, so a second process opening the file meanwhile never sees the counter without its triggers.
  db.transaction(() => db.exec(SCHEMA)).immediate();

  type Now = { now: number };
  const byId = db.prepare<{ id: string }, Row>(`SELECT ${COLUMNS} FROM instances WHERE id = @id`);
  const liveByKey = db.prepare<Now & { key: string }, Row>(`SELECT ${COLUMNS} FROM instances WHERE key = @key AND ${LIVE}`);
  const liveAll = db.prepare<Now, Row>(`SELECT ${COLUMNS} FROM instances WHERE ${LIVE} ORDER BY created_at, id`);
  const liveByCluster = db.prepare<Now & { cluster: string }, Row>(
    `SELECT ${COLUMNS} FROM instances WHERE cluster = @cluster AND ${LIVE} ORDER BY created_at, id`,
  );
  // LIVE, counted: the rows not terminated less the vanished guests among them (see `unterminated`).
  const countAll = db.prepare<Now, { n: number }>(
    `SELECT (SELECT n FROM unterminated WHERE id = 1)
       - (SELECT count(*) FROM instances WHERE guest = 'vanish' AND terminated_at IS NULL AND running_at <= @now) AS n`,
  );
  const countCluster = db.prepare<Now & { cluster: string }, { n: number }>(
    `SELECT count(*) AS n FROM instances WHERE cluster = @cluster AND ${LIVE}`,
  );
  const insert = db.prepare(
    `INSERT INTO instances (id, name, key, cluster, service, image, flavor, user_data, guest, created_at, running_at,
       phone_due_at, phone_next_at)
     VALUES (@id, @name, @key, @cluster, @service, @image, @flavor, '', @guest, @created_at, @running_at,
       @phone_due_at, @phone_due_at)`,
  );
  const insertUserData = db.prepare<{ id: string; user_data: string }>(`INSERT INTO guest_user_data (id, user_data) VALUES (@id, @user_data)`);
  const dropVanishedKey = db.prepare<Now & { key: string }>(
    `DELETE FROM instances WHERE key = @key AND guest = 'vanish' AND terminated_at IS NULL AND running_at <= @now`,
  );
  const terminate = db.prepare<Now & { id: string }>(
    `UPDATE instances SET terminated_at = @now, phone_next_at = NULL WHERE id = @id AND terminated_at IS NULL`,
  );
  const deleteById = db.prepare<{ id: string }>(`DELETE FROM instances WHERE id = @id`);
  const peakGet = db.prepare<[], { live: number }>(`SELECT live FROM peak WHERE id = 1`);
  const peakSet = db.prepare<{ live: number }>(`INSERT INTO peak (id, live) VALUES (1, @live) ON CONFLICT(id) DO UPDATE SET live = max(live, @live)`);
  const ruleUsed = db.prepare<{ rule: string }, { used: number }>(`SELECT used FROM rule_use WHERE rule = @rule`);
  const ruleBump = db.prepare<{ rule: string }>(
    `INSERT INTO rule_use (rule, used) VALUES (@rule, 1) ON CONFLICT(rule) DO UPDATE SET used = used + 1`,
  );
  const deleteVanished = db.prepare<Now>(
    `DELETE FROM instances WHERE guest = 'vanish' AND terminated_at IS NULL AND running_at <= @now`,
  );
  const purgeTerminated = db.prepare<{ before: number }>(
    `DELETE FROM instances WHERE terminated_at IS NOT NULL AND terminated_at <= @before`,
  );
  // Claims (see CLAIM_MS) the longest due phone-homes: they fall due again when the claim runs out.
  const claimDuePhoneHomes = db.prepare<Now & { limit: number; until: number }, { id: string }>(
    `UPDATE instances SET phone_next_at = @until
     WHERE id IN (SELECT id FROM instances WHERE phone_next_at <= @now ORDER BY phone_next_at LIMIT @limit)
     RETURNING id`,
  );
  // Gives a claimed, unsent phone-home back (a stopping ticker): due now, for whoever runs next.
  const unclaim = db.prepare<Now & { id: string }>(
    `UPDATE instances SET phone_next_at = @now WHERE id = @id AND terminated_at IS NULL AND phone_next_at IS NOT NULL`,
  );
  const phoneRow = db.prepare<{ id: string }, PhoneRow>(
    `SELECT d.user_data, i.guest, i.phone_due_at, i.phone_attempts
     FROM instances i JOIN instance_user_data d ON d.id = i.id
     WHERE i.id = @id AND i.terminated_at IS NULL AND i.phone_next_at IS NOT NULL`,
  );
  const phoneDone = db.prepare<{ id: string; at: number; result: string }>(
    `UPDATE instances SET phone_next_at = NULL, phone_attempts = phone_attempts + 1, phone_result = @result, phoned_at = @at
     WHERE id = @id AND terminated_at IS NULL`,
  );
  const serviceGuests = db.prepare<{ cluster: string; service: string }, Row>(
    `SELECT ${COLUMNS} FROM instances WHERE cluster = @cluster AND service = @service ORDER BY created_at, id`,
  );
  const phoneRetry = db.prepare<{ id: string; next: number; result: string }>(
    `UPDATE instances SET phone_next_at = @next, phone_attempts = phone_attempts + 1, phone_result = @result
     WHERE id = @id AND terminated_at IS NULL`,
  );

  /** First matching rule with quota left, else the seeded hash of the name. Runs inside the create transaction. */
  const decideGuest = (instanceName: string): SimBehaviour => {
    for (const r of rules) {
      if (!r.re.test(instanceName)) continue;
      if (r.limit !== undefined) {
        if ((ruleUsed.get({ rule: r.id })?.used ?? 0) >= r.limit) continue;
        ruleBump.run({ rule: r.id });
      }
      return r.behaviour;
    }
    const u = hashUnit32(`${opts.seed}\0${instanceName}`) / 2 ** 32;
    if (u < opts.failureRate) return 'fail';
    if (u < opts.failureRate + opts.silentRate) return 'silent';
    return 'ok';
  };

  /** One create, inside the transaction of its turn's creates ({@link makeCreates}). */
  const createOne = (spec: InstanceSpec, image: string, key: string, flavor: CloudOffering, now: number): Row => {
    dropVanishedKey.run({ key, now });
    const existing = liveByKey.get({ key, now });
    if (existing) return existing;
    const live = countAll.get({ now })!.n;
    if (opts.capacity !== undefined && live >= opts.capacity) {
      throw new CloudError('CapacityExhausted', `cloud ${name} is full: ${live} of ${opts.capacity} instances live`);
    }
    peakSet.run({ live: live + 1 });
    const guest = decideGuest(spec.name);
    const runningAt = now + opts.bootMs;
    const row = {
      id: `sim-${randomBytes(6).toString('hex')}`,
      name: spec.name,
      key,
      cluster: spec.tags.cluster,
      service: spec.tags.service,
      image,
      flavor: flavor.id,
      user_data: spec.userData,
      guest,
      created_at: now,
      running_at: runningAt,
      phone_due_at: guest === 'ok' || guest === 'fail' ? runningAt + opts.readyDelayMs : null,
    };
    insert.run(row);
    insertUserData.run(row);
    return { ...row, terminated_at: null, phone_attempts: 0, phone_result: null, phoned_at: null };
  };

  /**
   * The creates asked in one turn of the event loop, made in one transaction. A commit each
   * cost the worker about 0.5 ms of CPU a create (WAL pages of the table and its indexes): 5.5 s
   * of the 14 s in which one worker created 9,500 instances, in a profile of the scale bench.
   * Each create still gets its own answer or error, after the commit; capacity counts the
   * creates before it, and a key asked twice gets the first one's instance.
   */
  const creates: { run: () => Row; settle: (answer: { row: Row } | { err: unknown }) => void }[] = [];
  const makeCreates = (): void => {
    const batch = creates.splice(0);
    const answers: (() => void)[] = [];
    try {
      db.transaction(() => {
        for (const c of batch) {
          try {
            const row = c.run();
            answers.push(() => c.settle({ row }));
          } catch (err) {
            answers.push(() => c.settle({ err }));
          }
        }
      }).immediate();
    } catch (err) {
      for (const c of batch) c.settle({ err });
      return;
    }
    for (const answer of answers) answer();
  };
  const create = (run: () => Row): Promise<Row> =>
    new Promise((resolve, reject) => {
      if (creates.push({ run, settle: (a) => ('row' in a ? resolve(a.row) : reject(a.err)) }) === 1) setImmediate(makeCreates);
    });

  const toInstance = (r: Row, now: number): CloudInstance => ({
    id: r.id,
    name: r.name,
    state: r.terminated_at !== null ? 'TERMINATED' : now >= r.running_at ? 'RUNNING' : 'PENDING',
    idempotencyKey: r.key,
    tags: { cluster: r.cluster, service: r.service, key: r.key },
    createdAt: new Date(r.created_at).toISOString(),
    extra: {
      flavor: r.flavor,
      image: r.image,
      guest: r.guest,
      runningAt: new Date(r.running_at).toISOString(),
      ...(r.terminated_at !== null && { terminatedAt: new Date(r.terminated_at).toISOString() }),
      phoneHome: {
        attempts: r.phone_attempts,
        ...(r.phone_result !== null && { result: r.phone_result }),
        ...(r.phoned_at !== null && { at: new Date(r.phoned_at).toISOString() }),
      },
    },
  });

  // ---- guest ticker -------------------------------------------------------------------
  let started = false;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  /** Due phone-homes not yet sent, and those in flight; both keyed by instance id so none is sent twice. */
  const queue: string[] = [];
  const queued = new Set<string>();
  const inFlight = new Map<string, Promise<void>>();
  /**
   * The phone-homes' outcomes not yet written: written together once per turn of the event
   * loop, in one transaction, not a commit each: at 10,000 guests answers come back hundreds a
   * second, and the guests' own SQLite work (the re-read and the write) was about 0.6 ms of the
   * worker's CPU apiece in a profile of that run.
   */
  const outcomes: (() => void)[] = [];
  const writeOutcomes = (): void => {
    const writes = outcomes.splice(0);
    if (writes.length === 0 || !db.open) return;
    try {
      db.transaction(() => writes.forEach((w) => w()))();
    } catch (err) {
      onError(err);
    }
  };
  const record = (write: () => void): void => {
    if (outcomes.push(write) === 1) setImmediate(writeOutcomes);
  };

  const tick = (): void => {
    const now = Date.now();
    deleteVanished.run({ now });
    purgeTerminated.run({ before: now - TERMINATED_RETENTION_MS });
    if (queued.size < QUEUE_BATCH) {
      for (const { id } of claimDuePhoneHomes.all({ now, limit: QUEUE_BATCH - queued.size, until: now + CLAIM_MS })) {
        // Our own claim ran out while the phone-home waited or was in flight.
        if (queued.has(id) || inFlight.has(id)) continue;
        queued.add(id);
        queue.push(id);
      }
    }
    pump();
  };

  // Synchronous tick rescheduled only after it returns, so ticks never overlap.
  const runTick = (): void => {
    timer = undefined;
    if (!started) return;
    try {
      tick();
    } catch (err) {
      onError(err);
    }
    if (started) {
      timer = setTimeout(runTick, tickMs);
      timer.unref();
    }
  };

  // Refills from the queue as each phone-home finishes, so a burst is not paced by the tick.
  const pump = (): void => {
    while (started && inFlight.size < PHONE_HOMES_IN_FLIGHT && queue.length > 0) {
      const id = queue.shift()!;
      queued.delete(id);
      const p = sendPhoneHome(id)
        .catch(onError)
        .finally(() => {
          inFlight.delete(id);
          pump();
        });
      inFlight.set(id, p);
    }
  };

  const sendPhoneHome = async (id: string): Promise<void> => {
    // Re-read: the instance may have been terminated or vanished since it was queued.
    const row = phoneRow.get({ id });
    if (!row) return;
    const ph = extractPhoneHome(row.user_data);
    if (!ph) {
      record(() => phoneDone.run({ id, at: Date.now(), result: 'no phone-home part in user-data' }));
      return;
    }
    const probe = row.guest === 'ok' ? 'OK' : 'FAILED';
    const cvmfs = Object.fromEntries((ph.repositories ?? []).map((repo) => [repo, probe]));
    // What `cvmfs_config probe` prints, as the guest agent reports it per repository.
    const output = Object.fromEntries(Object.keys(cvmfs).map((repo) => [repo, `Probing /cvmfs/${repo}... ${probe === 'OK' ? 'OK' : 'Failed!'}`]));
    const body =
      row.guest === 'ok'
        ? { status: 'ok', checks: { cvmfs, output } }
        : { status: 'failed', checks: { cvmfs, output, message: 'simulated probe failure' } };
    let status: number | undefined;
    let failure = '';
    try {
      status = await phoneHome(ph.url, ph.token, body);
    } catch (err) {
      failure = errorText(err);
    }
    const at = Date.now();
    // 2xx: delivered. 4xx: the gateway refuses this guest (bad/expired token, instance gone); retrying won't help.
    if (status !== undefined && ((status >= 200 && status < 300) || (status >= 400 && status < 500))) {
      record(() => phoneDone.run({ id, at, result: String(status) }));
      return;
    }
    const result = status !== undefined ? `HTTP ${status}` : failure;
    if (at - row.phone_due_at >= GIVE_UP_MS) {
      record(() => phoneDone.run({ id, at, result: `gave up: ${result}` }));
      return;
    }
    const attempts = row.phone_attempts + 1;
    const backoff = Math.min(1000 * 2 ** (attempts - 1), 30_000) * (1 + Math.random() * 0.25);
    record(() => phoneRetry.run({ id, next: at + Math.round(backoff), result }));
  };

  const stop = async (): Promise<void> => {
    started = false;
    if (timer) clearTimeout(timer);
    timer = undefined;
    // Unsent phone-homes are still due in the file; whoever starts next sends them.
    const now = Date.now();
    if (queue.length > 0 && db.open) db.transaction(() => queue.forEach((id) => unclaim.run({ id, now })))();
    queue.length = 0;
    queued.clear();
    await Promise.all(inFlight.values());
    writeOutcomes();
  };

  return {
    name,
    kind: 'sim',

    async listOfferings() {
      return offerings.map((o) => ({ ...o }));
    },

    async createInstance(spec, idempotencyKey) {
      // Like a real API, throttling happens before anything else is looked at.
      if (opts.throttleRate > 0 && throttleRandom() < opts.throttleRate) {
        throw new CloudError('Throttled', `${name}: request limit exceeded creating "${spec.name}"; retry later`);
      }
      if (opts.createFailureRate && failRandom() < opts.createFailureRate) {
        throw new CloudError('Transient', `${name}: internal error creating "${spec.name}" (simulated failing cloud)`);
      }
      const image = requireImage(name, images, spec.image);
      const flavor = smallestFit(offerings, spec.offering);
      if (!flavor) {
        const o = spec.offering;
        throw new CloudError(
          'InvalidOffering',
          `${name}: no flavor fits ${o.cpus} cpus / ${o.memoryMiB} MiB / ${o.diskGiB} GiB (largest: ${offerings
            .map((f) => `${f.name} ${f.cpus}/${f.memoryMiB}/${f.diskGiB}`)
            .join(', ')})`,
        );
      }
      const now = Date.now();
      return toInstance(await create(() => createOne(spec, image, idempotencyKey, flavor, now)), now);
    },

    async describeInstance(id) {
      const now = Date.now();
      const row = byId.get({ id });
      if (!row || (row.terminated_at === null && row.guest === 'vanish' && row.running_at <= now)) {
        throw new CloudError('NotFound', `${name}: no instance "${id}"`);
      }
      return toInstance(row, now);
    },

    async findInstance(idempotencyKey) {
      const now = Date.now();
      const row = liveByKey.get({ key: idempotencyKey, now });
      return row && toInstance(row, now);
    },

    async listInstances(filter) {
      const now = Date.now();
      const rows = filter.cluster !== undefined ? liveByCluster.all({ cluster: filter.cluster, now }) : liveAll.all({ now });
      return rows.map((r) => toInstance(r, now));
    },

    async terminateInstance(id) {
      terminate.run({ id, now: Date.now() });
    },

    start() {
      if (started || closed) return;
      started = true;
      runTick();
    },

    stop,

    async close() {
      if (closed) return;
      await stop();
      closed = true;
      db.close();
    },

    count(filter) {
      const now = Date.now();
      return filter?.cluster !== undefined ? countCluster.get({ cluster: filter.cluster, now })!.n : countAll.get({ now })!.n;
    },

    vanish(id) {
      deleteById.run({ id });
    },

    peakLive: () => peakGet.get()?.live ?? 0,

    guests(cluster, service) {
      const slots = new Map(offerings.map((o) => [o.id, o.cpus]));
      return serviceGuests.all({ cluster, service }).map((r) => {
        const goneAt = r.terminated_at ?? (r.guest === 'vanish' ? r.running_at : undefined);
        // Up once its readiness report was delivered (2xx): the guest agent ran, so would a batch daemon.
        const up = r.guest === 'ok' && r.phoned_at !== null && /^2\d\d$/.test(r.phone_result ?? '');
        return { name: r.name, slots: slots.get(r.flavor) ?? 1, ...(up && { upAt: r.phoned_at! }), ...(goneAt !== undefined && { goneAt }) };
      });
    },
  };
}

/**
 * Opens (or creates) a SQLite file of the simulated cloud, owner-only (0600 before SQLite opens
 * it, so its -wal and -shm get the same mode: the sim's holds every guest's user-data), in WAL
 * mode with a busy timeout, so a second process may read it while the first writes.
 */
export function openSimSqlite(file: string): Database.Database {
  if (file !== ':memory:' && !file.startsWith('file:')) {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    closeSync(openSync(file, 'a', 0o600));
    chmodSync(file, 0o600);
  }
  const db = new Database(file);
  db.pragma('busy_timeout = 5000');
  // Two workers opening a new file at once both switch it to WAL; SQLite answers the second
  // SQLITE_BUSY at once, without its busy handler (seen starting the bench's topology, and 12
  // times in 60 two-process races), so the switch is tried again for as long as the timeout.
  for (let waited = 0; ; waited += 20) {
    try {
      db.pragma('journal_mode = WAL');
      break;
    } catch (err) {
      if ((err as { code?: string }).code !== 'SQLITE_BUSY' || waited >= 5000) throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
  return db;
}

// One keep-alive pool per process, sized to the in-flight cap: a burst reuses a few dozen sockets.
const httpAgent = new http.Agent({ keepAlive: true, maxSockets: PHONE_HOMES_IN_FLIGHT });
const httpsAgent = new https.Agent({ keepAlive: true, maxSockets: PHONE_HOMES_IN_FLIGHT });

/**
 * Default sender: what a guest's `curl -X POST` does. node:http rather than fetch because
 * it costs far less CPU per request, and the worker running the sim also runs activities.
 */
function postJson(url: string, token: string, body: unknown): Promise<number> {
  const payload = Buffer.from(JSON.stringify(body));
  const u = new URL(url);
  const mod = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(
      u,
      {
        method: 'POST',
        agent: u.protocol === 'https:' ? httpsAgent : httpAgent,
        headers: { 'content-type': 'application/json', 'content-length': payload.length, authorization: `Bearer ${token}` },
        timeout: PHONE_HOME_TIMEOUT_MS,
      },
      (res) => {
        // Drain the answer so the socket goes back to the pool.
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`phone-home to ${u.origin} timed out after ${PHONE_HOME_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

function hashUnit32(s: string): number {
  return createHash('sha256').update(s).digest().readUInt32BE(0);
}

/** Small seeded PRNG: same seed and call sequence, same throttling decisions. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

function errorText(err: unknown): string {
  if (err instanceof Error) {
    const cause = err.cause instanceof Error ? `: ${(err.cause as NodeJS.ErrnoException).code ?? err.cause.message}` : '';
    return `${err.name}: ${err.message}${cause}`;
  }
  return String(err);
}
