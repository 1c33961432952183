/**
 * Two API replicas on one PostgreSQL database: two real `api/main.ts` processes, each with its
 * own data folder and port, sharing `CLOUDGATE_DATABASE_URL` and the secrets every replica of a
 * site shares (token secret, secrets key, payload keys), one Temporal dev server and no worker.
 * What must hold across replicas holds: one Idempotency-Key makes one cluster whichever replica
 * is asked; an owner's quota holds when both are hit at once; a pairing PIN works once; a token
 * revoked at one is refused by the other; failed PIN lookups are counted over both.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { formatPayloadKeys, newPayloadKey } from '../model/payload-codec.js';
import { openPostgresStore, type Store } from '../store/index.js';
import { freePort, startDevServer, type DevServer } from '../workers/dev-server.js';
import { ROOT } from './harness.js';
import { startPostgresPeer, type PostgresPeer } from './peers/postgres.js';

const dir = mkdtempSync(path.join(tmpdir(), 'cloudgate-replicas-'));
const secrets = {
  CLOUDGATE_TOKEN_SECRET: randomBytes(24).toString('hex'),
  CLOUDGATE_SECRETS_KEY: randomBytes(32).toString('hex'),
  CLOUDGATE_PAYLOAD_KEYS: formatPayloadKeys({ current: 'k1', keys: new Map([['k1', newPayloadKey()]]) }).trim().split('\n').join(','),
};

interface Replica {
  url: string;
  proc: ChildProcess;
  output: () => string;
}

let pg: PostgresPeer;
let temporal: DevServer;
let store: Store;
const replicas: Replica[] = [];
let admin: string;

/** Starts `api/main.ts` with its own data folder and port; resolves once `/healthz` answers 200. */
async function startReplica(name: string): Promise<Replica> {
  const port = await freePort();
  const dataDir = path.join(dir, name);
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'api/main.ts')], {
    cwd: ROOT,
    env: {
      ...process.env,
      NODE_OPTIONS: '',
      ...secrets,
      CLOUDGATE_DATABASE_URL: pg.url,
      CLOUDGATE_DATA_DIR: dataDir,
      CLOUDGATE_API_HOST: '127.0.0.1',
      CLOUDGATE_API_PORT: String(port),
      TEMPORAL_ADDRESS: temporal.address,
      CLOUDGATE_TASK_QUEUE: 'replicas-test',
      CLOUDGATE_LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout!.on('data', (b: Buffer) => (output += b.toString()));
  proc.stderr!.on('data', (b: Buffer) => (output += b.toString()));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`replica ${name} exited ${proc.exitCode}: ${output.slice(-2000)}`);
    const ok = await fetch(`${url}/healthz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`replica ${name} did not answer /healthz within 60 s: ${output.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  return { url, proc, output: () => output };
}

/** One request to a replica; the body parsed when it is JSON. */
async function call(r: Replica, method: string, route: string, token: string | undefined, body?: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${r.url}${route}`, {
    method,
    headers: { ...(token && { Authorization: `Bearer ${token}` }), ...(body !== undefined && { 'Content-Type': 'application/json' }), ...headers },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json: json as Record<string, unknown>, text };
}

/** A user token issued by the admin at replica A. */
async function userToken(owner: string): Promise<{ id: string; token: string }> {
  const res = await call(replicas[0], 'POST', '/v1/tokens', admin, { owner, role: 'user' });
  expect(res.status).toBe(201);
  return { id: res.json.id as string, token: res.json.token as string };
}

const definition = (name: string) => ({
  name,
  services: [{ name: 'workers', image: 'cernvm4', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, min: 1 }],
});

beforeAll(async () => {
  pg = await startPostgresPeer();
  temporal = await startDevServer({ dbFile: path.join(dir, 'temporal.sqlite') });
  replicas.push(await startReplica('a'), await startReplica('b'));
  admin = readFileSync(path.join(dir, 'a', 'admin-token'), 'utf8').trim();
  // What a worker would register: the cloud the clusters below name.
  store = await openPostgresStore(pg.url, { secretsKey: Buffer.from(secrets.CLOUDGATE_SECRETS_KEY, 'hex'), maxConnections: 2 });
  await store.upsertCloud({ name: 'sim', kind: 'sim', offerings: [{ id: 'small', name: 'small', cpus: 1, memoryMiB: 1024, diskGiB: 10 }], images: ['cernvm4'] });
}, 180_000);

afterAll(async () => {
  await store?.close();
  await Promise.all(
    replicas.map(
      (r) =>
        new Promise<void>((resolve) => {
          if (r.proc.exitCode !== null) return resolve();
          r.proc.once('exit', () => resolve());
          r.proc.kill('SIGTERM');
        }),
    ),
  );
  await temporal?.stop();
  await pg?.stop();
  rmSync(dir, { recursive: true, force: true });
}, 60_000);

describe('two API replicas on one PostgreSQL database', () => {
  it('make one cluster of one Idempotency-Key, whichever replicas are asked, however often at once', async () => {
    const user = await userToken('ida');
    const def = await call(replicas[0], 'POST', '/v1/cluster-definitions', user.token, definition('idem'));
    expect(def.status).toBe(201);
    const body = { definitionId: def.json.id, cloud: 'sim' };
    const answers = await Promise.all(
      [0, 1, 0, 1, 0, 1].map((i) => call(replicas[i], 'POST', '/v1/clusters', user.token, body, { 'Idempotency-Key': 'deploy-2030-01-01' })),
    );
    expect(answers.map((a) => a.status)).toEqual([202, 202, 202, 202, 202, 202]);
    expect(new Set(answers.map((a) => a.json.id)).size).toBe(1);
    expect((await store.listClusters()).filter((c) => c.owner === 'ida')).toHaveLength(1);
    // Either replica lists it.
    for (const r of replicas) expect(((await call(r, 'GET', '/v1/clusters', user.token)).json.items as unknown[]).length).toBe(1);
  }, 60_000);

  it("hold an owner's quota when both are hit at once", async () => {
    const user = await userToken('quinn');
    expect((await call(replicas[1], 'PUT', '/v1/owners/quinn/quota', admin, { maxInstances: 100, maxClusters: 3, maxCpus: 100 })).status).toBe(200);
    const def = await call(replicas[0], 'POST', '/v1/cluster-definitions', user.token, definition('quota'));
    const answers = await Promise.all(Array.from({ length: 10 }, (_, n) => call(replicas[n % 2], 'POST', '/v1/clusters', user.token, { definitionId: def.json.id, cloud: 'sim' })));
    expect(answers.filter((a) => a.status === 202)).toHaveLength(3);
    expect(answers.filter((a) => a.status === 403).every((a) => a.json.type !== undefined)).toBe(true);
    expect(answers.filter((a) => a.status === 403)).toHaveLength(7);
    for (const r of replicas) {
      expect((await call(r, 'GET', '/v1/owners/quinn/quota', user.token)).json.usage).toEqual({ instances: 3, clusters: 3, cpus: 3 });
    }
  }, 60_000);

  it('let a pairing PIN work once across replicas', async () => {
    const user = await userToken('pia');
    const ctx = await call(replicas[0], 'POST', '/v1/contexts', user.token, { name: 'laptop', repositories: ['alice.cern.ch'], secrets: { TOKEN: 's3cret' } });
    expect(ctx.status).toBe(201);
    const pairing = await call(replicas[1], 'POST', `/v1/contexts/${ctx.json.id as string}/pairings`, user.token);
    expect(pairing.status).toBe(201);
    const link = (pairing.json.links as { userData: string }).userData;
    const takes = await Promise.all([0, 1, 0, 1].map((i) => call(replicas[i], 'GET', link, undefined)));
    expect(takes.map((t) => t.status).sort()).toEqual([200, 404, 404, 404]);
    expect(takes.find((t) => t.status === 200)!.text).toContain('s3cret');
  }, 60_000);

  it('refuse at one replica a token revoked at the other', async () => {
    const user = await userToken('rex');
    for (const r of replicas) expect((await call(r, 'GET', '/v1/tokens', user.token)).status).toBe(200);
    expect((await call(replicas[0], 'DELETE', `/v1/tokens/${user.id}`, admin)).status).toBe(204);
    const refused = await call(replicas[1], 'GET', '/v1/tokens', user.token);
    expect(refused.status).toBe(401);
    expect(refused.json.detail).toMatch(/was revoked/);
  }, 60_000);

  it('count failed PIN lookups of one client over both replicas', async () => {
    // A client of its own (127.0.0.2): the misses of the pairing test above came from 127.0.0.1.
    const lookup = (r: Replica, pin: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.get(`${r.url}/v1/pair/${pin}`, { localAddress: '127.0.0.2' }, (res) => {
          let body = '';
          res.on('data', (b: Buffer) => (body += b.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
      });
    // Ten misses (the limit), alternating between the replicas; the eleventh is refused by either.
    for (let n = 0; n < 10; n++) expect((await lookup(replicas[n % 2], `0000-0000-000${n}`)).status).toBe(404);
    for (const r of replicas) {
      const limited = await lookup(r, '0000-0000-0000');
      expect(limited.status).toBe(429);
      expect(limited.body).toMatch(/too many failed PIN lookups from this client; retry in \d+ s/);
    }
    // Another client is not held up by this one.
    expect((await call(replicas[1], 'GET', '/v1/pair/0000-0000-0000', undefined)).status).toBe(404);
  }, 60_000);
});
