/**
 * A fake batch system for the simulated cloud (issue 13): a job queue per cluster service, so
 * the demo and the tests can drive a realistic load curve through pulled autoscaling
 * (`autoscale.loadUrl`). Like a small HTCondor pool: jobs are submitted with a run time, each
 * runs on one slot of an instance of the service that is up (booted and phoned home ok), one
 * job per slot (an instance has as many slots as its flavor has cpus), least busy instance
 * first; a job whose instance is terminated before it ends is evicted (recorded) and queued
 * again. Its load answer, `{queued, running, idleInstances}`, is what `loadUrl` points at.
 *
 * State is in SQLite beside the sim's own (a worker killed and restarted finds its queues),
 * and the queue is advanced on every request and on a short ticker. Served over HTTP on
 * 127.0.0.1 by the worker that hosts the sim (`SIM_QUEUE_PORT`), unauthenticated: a fake.
 *
 *   POST /sim/queues/<clusterId>/<service>/jobs  {"count": 12, "seconds": 30}  → 201 {submitted, queued, running}
 *   GET  /sim/queues/<clusterId>/<service>/load                                → {queued, running, idleInstances}
 *   GET  /sim/queues/<clusterId>/<service>                                     → every instance's jobs, and the evictions
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { z } from 'zod';
import { openSimSqlite, type SimCloud } from './sim.js';

export interface SimJobQueueOptions {
  /** SQLite file of the queues, or `:memory:`. */
  file: string;
  /** The simulated clouds whose guests run the jobs (a service may be placed over several). */
  clouds: Pick<SimCloud, 'guests'>[];
  /** How often every queue with open jobs is advanced; default 250 ms. */
  tickMs?: number;
}

/** One service's queue as a batch system's status command shows it. */
export interface SimQueueStatus {
  cluster: string;
  service: string;
  queued: number;
  running: number;
  finished: number;
  /** Each instance the service had: its slots, whether it is up, and its jobs. */
  instances: { name: string; slots: number; up: boolean; gone: boolean; running: number; ran: number }[];
  /** Jobs whose instance was terminated while they ran (queued again). Empty when autoscaling retired only idle instances. */
  evictions: { job: number; instance: string; at: string }[];
}

export interface SimJobQueue {
  /** Queues `count` jobs of `seconds` each; returns the queue's load after starting what can start. */
  submit(cluster: string, service: string, count: number, seconds: number): { submitted: number; queued: number; running: number };
  /** What `loadUrl` answers: jobs queued and running, and the up instances running none. */
  load(cluster: string, service: string): { queued: number; running: number; idleInstances: string[] };
  status(cluster: string, service: string): SimQueueStatus;
  /** Starts the ticker (idempotent). */
  start(): void;
  close(): void;
}

interface JobRow {
  id: number;
  instance: string | null;
  ends_at: number | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  cluster TEXT NOT NULL,
  service TEXT NOT NULL,
  duration_ms INTEGER NOT NULL,
  submitted_at INTEGER NOT NULL,
  instance TEXT,
  started_at INTEGER,
  ends_at INTEGER,
  finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(cluster, service, id) WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS evictions (
  job INTEGER NOT NULL,
  cluster TEXT NOT NULL,
  service TEXT NOT NULL,
  instance TEXT NOT NULL,
  at INTEGER NOT NULL
);
`;

export function createSimJobQueue(opts: SimJobQueueOptions): SimJobQueue {
  const db = openSimSqlite(opts.file);
  db.exec(SCHEMA);
  type Key = { cluster: string; service: string };
  const q = {
    insert: db.prepare<Key & { duration: number; at: number }>('INSERT INTO jobs (cluster, service, duration_ms, submitted_at) VALUES (@cluster, @service, @duration, @at)'),
    open: db.prepare<Key, JobRow & { duration_ms: number }>('SELECT id, instance, ends_at, duration_ms FROM jobs WHERE cluster = @cluster AND service = @service AND finished_at IS NULL ORDER BY id'),
    finish: db.prepare<{ id: number; at: number }>('UPDATE jobs SET finished_at = @at WHERE id = @id'),
    requeue: db.prepare<{ id: number }>('UPDATE jobs SET instance = NULL, started_at = NULL, ends_at = NULL WHERE id = @id'),
    start: db.prepare<{ id: number; instance: string; at: number; ends: number }>('UPDATE jobs SET instance = @instance, started_at = @at, ends_at = @ends WHERE id = @id'),
    evict: db.prepare<Key & { job: number; instance: string; at: number }>('INSERT INTO evictions (job, cluster, service, instance, at) VALUES (@job, @cluster, @service, @instance, @at)'),
    evictions: db.prepare<Key, { job: number; instance: string; at: number }>('SELECT job, instance, at FROM evictions WHERE cluster = @cluster AND service = @service ORDER BY at, job'),
    finished: db.prepare<Key, { n: number }>('SELECT count(*) AS n FROM jobs WHERE cluster = @cluster AND service = @service AND finished_at IS NOT NULL'),
    ranOn: db.prepare<Key, { instance: string; n: number }>(
      'SELECT instance, count(*) AS n FROM jobs WHERE cluster = @cluster AND service = @service AND finished_at IS NOT NULL GROUP BY instance',
    ),
    openQueues: db.prepare<[], Key>('SELECT DISTINCT cluster, service FROM jobs WHERE finished_at IS NULL'),
  };

  /**
   * Brings one queue up to `now`: ends jobs whose time is up, evicts those whose instance went
   * first, then starts queued jobs on free slots. Returns the jobs open afterwards and the guests.
   */
  const advanceTx = db.transaction((cluster: string, service: string, now: number) => {
    const key = { cluster, service };
    const guests = opts.clouds.flatMap((c) => c.guests(cluster, service));
    const byName = new Map(guests.map((g) => [g.name, g]));
    const busy = new Map<string, number>();
    const queued: number[] = [];
    const durations = new Map<number, number>();
    let running = 0;
    for (const job of q.open.all(key)) {
      durations.set(job.id, job.duration_ms);
      if (job.instance === null) {
        queued.push(job.id);
        continue;
      }
      const guest = byName.get(job.instance);
      // A guest the cloud no longer lists at all vanished long ago: gone by now at the latest.
      const goneAt = guest ? guest.goneAt : now;
      if (goneAt !== undefined && goneAt < job.ends_at!) {
        q.evict.run({ ...key, job: job.id, instance: job.instance, at: goneAt });
        q.requeue.run({ id: job.id });
        queued.push(job.id);
      } else if (job.ends_at! <= now) {
        q.finish.run({ id: job.id, at: job.ends_at! });
      } else {
        busy.set(job.instance, (busy.get(job.instance) ?? 0) + 1);
        running++;
      }
    }
    queued.sort((a, b) => a - b);
    const up = guests.filter((g) => g.upAt !== undefined && g.upAt <= now && g.goneAt === undefined);
    while (queued.length > 0) {
      // The least busy instance with a free slot (HTCondor's breadth-first fill); ties by name order.
      const free = up.filter((g) => (busy.get(g.name) ?? 0) < g.slots).sort((a, b) => (busy.get(a.name) ?? 0) - (busy.get(b.name) ?? 0));
      if (free.length === 0) break;
      const id = queued.shift()!;
      q.start.run({ id, instance: free[0].name, at: now, ends: now + durations.get(id)! });
      busy.set(free[0].name, (busy.get(free[0].name) ?? 0) + 1);
      running++;
    }
    return { queued: queued.length, running, busy, guests, up };
  });
  const advance = (cluster: string, service: string) => advanceTx.immediate(cluster, service, Date.now());

  let timer: NodeJS.Timeout | undefined;
  const tick = () => {
    for (const { cluster, service } of q.openQueues.all()) advance(cluster, service);
  };

  return {
    submit(cluster, service, count, seconds) {
      const at = Date.now();
      db.transaction(() => {
        for (let i = 0; i < count; i++) q.insert.run({ cluster, service, duration: Math.round(seconds * 1000), at });
      }).immediate();
      const { queued, running } = advance(cluster, service);
      return { submitted: count, queued, running };
    },

    load(cluster, service) {
      const { queued, running, busy, up } = advance(cluster, service);
      return { queued, running, idleInstances: up.filter((g) => !busy.has(g.name)).map((g) => g.name) };
    },

    status(cluster, service) {
      const key = { cluster, service };
      const { queued, running, busy, guests } = advance(cluster, service);
      const ran = new Map(q.ranOn.all(key).map((r) => [r.instance, r.n]));
      return {
        cluster,
        service,
        queued,
        running,
        finished: q.finished.get(key)!.n,
        instances: guests.map((g) => ({ name: g.name, slots: g.slots, up: g.upAt !== undefined, gone: g.goneAt !== undefined, running: busy.get(g.name) ?? 0, ran: ran.get(g.name) ?? 0 })),
        evictions: q.evictions.all(key).map((e) => ({ job: e.job, instance: e.instance, at: new Date(e.at).toISOString() })),
      };
    },

    start() {
      if (timer) return;
      timer = setInterval(() => {
        try {
          tick();
        } catch (err) {
          console.error('sim job queue:', err);
        }
      }, opts.tickMs ?? 250);
      timer.unref();
    },

    close() {
      if (timer) clearInterval(timer);
      timer = undefined;
      if (db.open) db.close();
    },
  };
}

const SubmitSchema = z
  .object({
    count: z.number().int().min(1).max(10_000),
    seconds: z.number().positive().max(86_400),
  })
  .strict();

const NAME = '[a-z0-9][a-z0-9-]{0,80}';
const ROUTE = new RegExp(`^/sim/queues/(${NAME})/(${NAME})(?:/(jobs|load))?$`);

/** The queue over HTTP on `host:port` (port 0: any free one). */
export async function serveSimJobQueue(queue: SimJobQueue, opts: { host?: string; port: number }): Promise<{ url: string; host: string; close(): Promise<void> }> {
  const send = (res: http.ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(body));
  };
  const server = http.createServer((req, res) => {
    const m = ROUTE.exec(new URL(req.url ?? '/', 'http://sim').pathname);
    if (!m) return send(res, 404, { error: 'not a sim queue route: POST /sim/queues/<clusterId>/<service>/jobs, GET …/load, GET /sim/queues/<clusterId>/<service>' });
    const [, cluster, service, leaf] = m;
    try {
      if (req.method === 'GET' && leaf === 'load') return send(res, 200, queue.load(cluster, service));
      if (req.method === 'GET' && leaf === undefined) return send(res, 200, queue.status(cluster, service));
      if (req.method !== 'POST' || leaf !== 'jobs') return send(res, 405, { error: `${req.method} is not allowed here` });
    } catch (err) {
      return send(res, 500, { error: err instanceof Error ? err.message : String(err) });
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > 4096) req.destroy();
      else chunks.push(c);
    });
    req.on('end', () => {
      let body: unknown;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        return send(res, 400, { error: 'send JSON: {"count": n, "seconds": s}' });
      }
      const parsed = SubmitSchema.safeParse(body);
      if (!parsed.success) return send(res, 422, { error: parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ') });
      try {
        send(res, 201, queue.submit(cluster, service, parsed.data.count, parsed.data.seconds));
      } catch (err) {
        send(res, 500, { error: err instanceof Error ? err.message : String(err) });
      }
    });
  });
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${host}:${port}`,
    host: `${host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
