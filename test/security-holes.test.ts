/**
 * Holes a security review found (issue 11, "Holes to close"), each tried again through the
 * real HTTP API of a real stack: password hashes in context answers; pairing PINs that
 * could be guessed from many addresses, told used from unknown, and sat in the request log;
 * phone-home reports that could crash a batch or grow a finished workflow's history, and
 * week-long phone-home tokens; data files readable by others; and the API on loopback
 * answering any Host (DNS rebinding).
 */
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, existsSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { startApi } from '../api/main.js';
import { MAX_LIVE_PINS_PER_OWNER, PIN_FAILURE_BUDGET } from '../api/contexts.js';
import { MAX_REPORT_BYTES, MAX_REPORT_DEPTH } from '../api/readiness.js';
import { ConfigSchema } from '../model/config.js';
import { signToken, type TokenClaims } from '../model/token.js';
import { serviceWorkflowId } from '../workflows/messages.js';
import { startWorker } from '../workers/worker.js';
import { clusterInstances, deploy, startStack, waitFor, waitForState, workflowBundle, type Stack } from './harness.js';

jest.setTimeout(180_000);

let stack: Stack;
let frank: Record<string, string>;
beforeAll(async () => {
  // Guests of services named "waiting" never phone home by themselves: the tests report for them.
  stack = await startStack({ captureLogs: true, simRules: [{ match: '-waiting-\\d+$', behaviour: 'silent' }] });
  const t = await stack.http('POST', '/v1/tokens', { owner: 'frank', role: 'user' });
  frank = { Authorization: `Bearer ${t.body.token}` };
});
afterAll(async () => {
  await stack?.stop();
});

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };
const image = 'cernvm4-micro-2020.07';

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  body: any;
}

/**
 * One request over plain node:http, so a test can choose what fetch will not let it: the
 * `Host` header and the source address (any 127.x.y.z on Linux: "many addresses").
 */
function raw(method: string, urlPath: string, opts: { headers?: Record<string, string>; body?: string; from?: string } = {}): Promise<RawResponse> {
  const url = new URL(stack.api.url);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: url.hostname, port: url.port, path: urlPath, method, headers: opts.headers, localAddress: opts.from },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            // not JSON
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body });
        });
      },
    );
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** A different loopback source address per call: the per-IP miss limit never sees the same client twice. */
let nextFrom = 1;
const freshAddress = () => {
  const n = nextFrom++;
  return `127.0.${Math.floor(n / 250) + 1}.${(n % 250) + 1}`;
};
/** A wrong PIN with the same lookup half (its first 6 symbols) as `pin`: a guess charged to `pin`. */
const wrong = (pin: string, i: number) => `${pin.slice(0, 7)}Z${i}-ZZZ${i}`;
const fetchPin = (pin: string) => raw('GET', `/v1/pair/${encodeURIComponent(pin)}`, { from: freshAddress() });

async function newContext(owner: Record<string, string>, name = 'ctx'): Promise<string> {
  const res = await stack.http(
    'POST',
    '/v1/contexts',
    {
      name,
      repositories: ['alice.cern.ch'],
      users: [{ name: 'alice', password: 'correct-horse-battery' }, { name: 'bob' }],
      secrets: { POOL_PASSWORD: 'pool-s3cr3t-value' },
    },
    owner,
  );
  expect(res.status).toBe(201);
  return res.body.id as string;
}

const PIN_RE = /^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$/;
/** Every PIN the tests were given, to look for in the request log. */
const issued: string[] = [];
async function newPin(contextId: string, owner: Record<string, string> = frank): Promise<string> {
  const res = await stack.http('POST', `/v1/contexts/${contextId}/pairings`, {}, owner);
  expect(res.status).toBe(201);
  issued.push(res.body.pin);
  return res.body.pin as string;
}

/** The store's own file, for what no route shows (expiring a pairing, reading a guest's token). */
const storeDb = () => new Database(path.join(stack.dataDir, 'cloudgate.sqlite'));

describe('password hashes', () => {
  it('no context answer carries a password hash: passwordSet: true per user with a password; the preview masks them', async () => {
    const id = await newContext(frank, 'passwords');
    const answers = [
      await stack.http('GET', `/v1/contexts/${id}`, undefined, frank),
      await stack.http('GET', '/v1/contexts', undefined, frank),
      await stack.http('GET', `/v1/contexts/${id}/versions`, undefined, frank),
      await stack.http('PUT', `/v1/contexts/${id}`, { name: 'passwords v2', users: [{ name: 'alice', password: 'another-horse-battery' }, { name: 'bob' }] }, frank),
      await stack.http('GET', `/v1/contexts/${id}?version=1`, undefined, frank),
      await stack.http('GET', '/v1/contexts', undefined), // the admin's list
    ];
    for (const res of answers) {
      expect(res.status).toBe(200);
      const text = JSON.stringify(res.body);
      expect(text).not.toContain('$6$');
      expect(text).not.toContain('passwordHash');
    }
    const users = [{ name: 'alice', passwordSet: true }, { name: 'bob' }];
    expect(answers[0].body.context.users).toEqual(users);
    expect(answers[1].body.items.find((c: any) => c.id === id).context.users).toEqual(users);
    expect(answers[2].body.items.map((v: any) => v.context.users)).toEqual([users]);
    expect(answers[3].body.context.users).toEqual(users);
    const preview = await stack.http('GET', `/v1/contexts/${id}/preview`, undefined, frank);
    expect(preview.status).toBe(200);
    expect(preview.body).not.toContain('$6$');
    expect(preview.body).toMatch(/users=alice:alice:\*{8},bob:bob:/);
    // The hash is still stored: the guests need it.
    const db = storeDb();
    const stored = db.prepare<[string], { context: string }>('SELECT context FROM context_versions WHERE context_id = ? AND version = 2').get(id);
    db.close();
    expect(JSON.parse(stored!.context).users[0].passwordHash).toMatch(/^\$6\$/);
  });
});

describe('pairing PINs', () => {
  let ctx: string;
  beforeAll(async () => {
    ctx = await newContext(frank, 'pairing');
  });

  it('a PIN is 12 symbols of Crockford base32 (60 bits), XXXX-XXXX-XXXX; typed in any case, with or without dashes, it works once', async () => {
    const pin = await newPin(ctx);
    expect(pin).toMatch(PIN_RE);
    const typed = pin.toLowerCase().replace(/-/g, '').replace(/0/g, 'o').replace(/1/g, 'l');
    const res = await fetchPin(typed);
    expect(res.status).toBe(200);
    expect(res.text).toContain('pool-s3cr3t-value');
    expect((await fetchPin(pin)).status).toBe(404);
    // Sixty random bits: 20 PINs share no lookup half and no position is constant.
    const pins = [];
    for (let i = 0; i < 5; i++) pins.push(await newPin(ctx));
    expect(new Set(pins.map((p) => p.slice(0, 7))).size).toBe(pins.length);
    for (const p of pins) expect((await fetchPin(p)).status).toBe(200);
  });

  it('unknown, malformed, used, expired and used-up PINs and PINs of a deleted context all get one 404 with the same body', async () => {
    const used = await newPin(ctx);
    expect((await fetchPin(used)).status).toBe(200);
    const expired = await newPin(ctx);
    const db = storeDb();
    db.prepare('UPDATE pairings SET expires_at = ? WHERE pin = ?').run(new Date(Date.now() - 1000).toISOString(), expired.replace(/-/g, ''));
    db.close();
    const doomedCtx = await newContext(frank, 'doomed');
    const ofDeleted = await newPin(doomedCtx);
    expect((await stack.http('DELETE', `/v1/contexts/${doomedCtx}`, undefined, frank)).status).toBe(204);
    const usedUp = await newPin(ctx);
    for (let i = 0; i < PIN_FAILURE_BUDGET; i++) expect((await fetchPin(wrong(usedUp, i))).status).toBe(404);

    const answers = await Promise.all(
      [used, expired, ofDeleted, usedUp, 'ZZZZ-ZZZZ-ZZZZ', '123456', 'abc', 'A'.repeat(300)].map(async (pin) => ({ pin, res: await fetchPin(pin) })),
    );
    const first = answers[0].res;
    expect(first.status).toBe(404);
    expect(first.headers['content-type']).toMatch(/^application\/problem\+json/);
    for (const { pin, res } of answers) {
      expect({ pin, status: res.status }).toEqual({ pin, status: 404 });
      const { instance, ...rest } = res.body;
      expect({ pin, body: rest }).toEqual({ pin, body: { ...first.body, instance: undefined } });
      expect(instance).toBe(`/v1/pair/${encodeURIComponent(pin)}`); // only the caller's own path
      expect(res.text).not.toMatch(/used|expired|deleted|budget/i);
    }
  });

  it(`a PIN's ${PIN_FAILURE_BUDGET}th wrong guess at its secret half uses it up, from however many addresses; fewer do not`, async () => {
    const survivor = await newPin(ctx);
    for (let i = 0; i < PIN_FAILURE_BUDGET - 1; i++) expect((await fetchPin(wrong(survivor, i))).status).toBe(404);
    expect((await fetchPin(survivor)).status).toBe(200);

    const target = await newPin(ctx);
    for (let i = 0; i < PIN_FAILURE_BUDGET; i++) expect((await fetchPin(wrong(target, i))).status).toBe(404);
    expect((await fetchPin(target)).status).toBe(404); // the right PIN, too late
  });

  it(`an owner holds at most ${MAX_LIVE_PINS_PER_OWNER} live PINs: the next is a 429 with Retry-After until one is used or expires`, async () => {
    const gt = await stack.http('POST', '/v1/tokens', { owner: 'grace', role: 'user' });
    const grace = { Authorization: `Bearer ${gt.body.token}` };
    const own = await newContext(grace, 'grace');
    const pins = [];
    for (let i = 0; i < MAX_LIVE_PINS_PER_OWNER; i++) pins.push(await newPin(own, grace));
    const refused = await stack.http('POST', `/v1/contexts/${own}/pairings`, {}, grace);
    expect(refused.status).toBe(429);
    expect(refused.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(refused.body.detail).toMatch(new RegExp(`${MAX_LIVE_PINS_PER_OWNER} live pairing PINs`));
    const wait = Number(refused.headers.get('retry-after'));
    expect(wait).toBeGreaterThan(0);
    expect(wait).toBeLessThanOrEqual(300);
    // Other owners are not held back; a used PIN frees a place.
    expect((await stack.http('POST', `/v1/contexts/${ctx}/pairings`, {}, frank)).status).toBe(201);
    expect((await fetchPin(pins[0])).status).toBe(200);
    await newPin(own, grace);
  });

  it('no PIN reaches the request log: the path is logged as /v1/pair/:pin', async () => {
    const log = readFileSync(path.join(stack.dataDir, 'api.log'), 'utf8');
    expect(log).toContain('"path":"/v1/pair/:pin"');
    expect(issued.length).toBeGreaterThan(10);
    for (const pin of issued) {
      const bare = pin.replace(/-/g, '');
      for (const form of [pin, bare, bare.toLowerCase()]) expect(log).not.toContain(form);
    }
  });
});

describe('phone-home', () => {
  const tokenFor = (claims: Omit<TokenClaims, 'exp'>) => `Bearer ${signToken({ ...claims, exp: Math.floor(Date.now() / 1000) + 600 }, stack.config.tokenSecret!)}`;
  const report = (iid: string, cluster: string, service: string, body: string) =>
    raw('POST', `/v1/instances/${iid}/readiness`, {
      headers: { 'content-type': 'application/json', authorization: tokenFor({ iid, cluster, service }) },
      body,
    });
  const ok = JSON.stringify({ status: 'ok', checks: { cvmfs: { 'alice.cern.ch': 'OK' }, output: { 'alice.cern.ch': 'Probing /cvmfs/alice.cern.ch... OK' } } });

  it(`a report deeper than ${MAX_REPORT_DEPTH} levels (422) or larger than ${MAX_REPORT_BYTES / 1024} KB (413) is refused before the workflow; a valid report beside it lands`, async () => {
    const id = await deploy(stack, { name: 'bounded', services: [{ name: 'waiting', image, offering, min: 2, readinessTimeoutSeconds: 300 }] });
    await waitFor(async () => (await clusterInstances(stack, id)).filter((i) => i.state === 'BOOTING' || i.state === 'RUNNING').length === 2, 60_000, 'two waiting instances');
    const [a, b] = [`${id}-waiting-0`, `${id}-waiting-1`];
    // The review's report: 60 KB of nesting, which the signal's JSON encoder could not even write.
    const bomb = `{"status":"ok","checks":${'{"a":'.repeat(12_000)}1${'}'.repeat(12_000)}}`;
    const deep = `{"status":"ok","checks":${'{"a":'.repeat(MAX_REPORT_DEPTH)}1${'}'.repeat(MAX_REPORT_DEPTH)}}`;
    const [tooLarge, tooDeep, valid] = await Promise.all([report(a, id, 'waiting', bomb), report(a, id, 'waiting', deep), report(b, id, 'waiting', ok)]);
    expect(tooLarge.status).toBe(413);
    expect(tooDeep.status).toBe(422);
    expect(tooDeep.body.detail).toMatch(new RegExp(`deeper than ${MAX_REPORT_DEPTH} levels`));
    expect(valid.status).toBe(202);
    await waitFor(async () => (await clusterInstances(stack, id)).find((i) => i.id === b)?.state === 'READY', 30_000, `${b} READY`);
    expect((await clusterInstances(stack, id)).find((i) => i.id === a)?.state).toMatch(/^(BOOTING|RUNNING)$/);
    // The agent's own shape, at the depth limit, is fine.
    expect((await report(a, id, 'waiting', ok)).status).toBe(202);
    await waitForState(stack, id, 'READY', 30_000);
  });

  it('100 replays of a READY instance’s report are answered 200 and dropped: the service workflow’s history does not grow', async () => {
    const id = await deploy(stack, { name: 'replayed', services: [{ name: 'svc', image, offering, min: 1, readinessTimeoutSeconds: 600 }] });
    await waitForState(stack, id, 'READY', 60_000);
    const iid = `${id}-svc-0`;
    await waitFor(async () => (await clusterInstances(stack, id)).find((i) => i.id === iid)?.state === 'READY', 30_000, `${iid} READY`);
    const handle = stack.client.workflow.getHandle(serviceWorkflowId(id, 'svc'));
    const before = (await handle.describe()).historyLength;
    const answers = [];
    for (let i = 0; i < 100; i++) answers.push(await report(iid, id, 'svc', ok));
    for (const res of answers) {
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ instanceId: iid, ignored: true, note: expect.stringMatching(/READY/) });
    }
    await new Promise((r) => setTimeout(r, 1_500));
    const after = (await handle.describe()).historyLength;
    expect(after - before).toBeLessThanOrEqual(5); // a signal each would be 100+ events
  });

  it("a guest's token lives for its service's readiness timeout plus the margin (15 min by default), not 7 days", async () => {
    const id = await deploy(stack, { name: 'short-lived', services: [{ name: 'waiting', image, offering, min: 1, readinessTimeoutSeconds: 120 }] });
    const token = await waitFor(
      async () => {
        const db = new Database(path.join(stack.dataDir, 'sim-cloud.sqlite'), { readonly: true });
        try {
          const row = db.prepare<[string], { user_data: string; created_at: number }>('SELECT user_data, created_at FROM instance_user_data WHERE key = ?').get(`${id}-waiting-0`);
          const m = row && /CLOUDGATE_TOKEN='?([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)/.exec(row.user_data);
          return m ? { token: m[1], createdAt: row.created_at } : undefined;
        } finally {
          db.close();
        }
      },
      60_000,
      'the instance in the sim cloud',
    );
    const claims = JSON.parse(Buffer.from(token.token.split('.')[0], 'base64url').toString('utf8')) as TokenClaims;
    expect(stack.config.tokenMarginSeconds).toBe(900);
    expect(claims.exp - token.createdAt / 1000).toBeGreaterThan(120 + 900 - 30);
    expect(claims.exp - token.createdAt / 1000).toBeLessThanOrEqual(120 + 900 + 1);
    // And the gateway holds it to that: past exp the report is a 401.
    const expired = signToken({ ...claims, exp: Math.floor(Date.now() / 1000) - 1 }, stack.config.tokenSecret!);
    const res = await raw('POST', `/v1/instances/${claims.iid}/readiness`, { headers: { 'content-type': 'application/json', authorization: `Bearer ${expired}` }, body: ok });
    expect(res.status).toBe(401);
  });
});

describe('files', () => {
  const modeOf = (f: string) => statSync(f).mode & 0o777;

  it('the running stack keeps its data folder 0700 and its SQLite files 0600 (store, sim cloud, Temporal dev server)', () => {
    expect(modeOf(stack.dataDir)).toBe(0o700);
    for (const name of ['cloudgate.sqlite', 'sim-cloud.sqlite', 'temporal.sqlite']) {
      for (const f of [name, `${name}-wal`, `${name}-shm`].map((n) => path.join(stack.dataDir, n))) {
        if (existsSync(f)) expect({ f, mode: modeOf(f).toString(8) }).toEqual({ f, mode: '600' });
      }
    }
    for (const name of ['admin-token', 'secrets-key', 'payload-keys']) expect(modeOf(path.join(stack.dataDir, name))).toBe(0o600);
  });

  describe('a fresh data folder', () => {
    const parent = mkdtempSync(path.join(os.tmpdir(), 'cloudgate-files-'));
    afterAll(() => rmSync(parent, { recursive: true, force: true }));
    const configFor = (dataDir: string, extra: Record<string, unknown> = {}) =>
      ConfigSchema.parse({ dataDir, apiPort: 0, temporalAddress: stack.temporal.address, logLevel: 'silent', sim: {}, ...extra });

    it('an API started on a 0755 folder makes it 0700 and every file it writes 0600; its answers still come', async () => {
      const dataDir = path.join(parent, 'open');
      mkdirSync(dataDir, { mode: 0o755 });
      chmodSync(dataDir, 0o755);
      const api = await startApi(configFor(dataDir), { temporal: stack.client });
      try {
        const health = await fetch(`${api.url}/healthz`);
        expect(health.status).toBe(200);
      } finally {
        await api.close();
      }
      expect(modeOf(dataDir)).toBe(0o700);
      for (const name of ['cloudgate.sqlite', 'token-secret', 'secrets-key', 'payload-keys', 'admin-token']) {
        expect({ name, mode: modeOf(path.join(dataDir, name)).toString(8) }).toEqual({ name, mode: '600' });
      }
    });

    it.each(['secrets-key', 'token-secret', 'payload-keys', 'admin-token'])('refuses to start with a %s that group or others may read, naming the file and the fix', async (name) => {
      const dataDir = path.join(parent, `leaky-${name}`);
      await (await startApi(configFor(dataDir), { temporal: stack.client })).close(); // writes every key file
      const file = path.join(dataDir, name);
      chmodSync(file, 0o644);
      await expect(startApi(configFor(dataDir), { temporal: stack.client })).rejects.toThrow(`${file} holds a secret but its mode is 0644`);
      await expect(startApi(configFor(dataDir), { temporal: stack.client })).rejects.toThrow(`chmod 600 ${file}`);
      chmodSync(file, 0o600);
      await (await startApi(configFor(dataDir), { temporal: stack.client })).close();
    });

    it('the worker refuses a secrets key that others may read, too', async () => {
      const dataDir = path.join(parent, 'leaky-worker');
      await (await startApi(configFor(dataDir), { temporal: stack.client })).close();
      chmodSync(path.join(dataDir, 'secrets-key'), 0o640);
      const config = configFor(dataDir, { taskQueue: 'security-holes-unused', tokenSecret: stack.config.tokenSecret });
      await expect(startWorker(config, { workflowBundle: await workflowBundle() })).rejects.toThrow(/secrets-key holds a secret but its mode is 0640.*chmod 600/);
    });
  });
});

describe('Host header (DNS rebinding)', () => {
  it('on loopback the API answers only its own host names (any port); any other Host gets 421 problem+json naming it', async () => {
    for (const host of ['localhost', 'localhost:9999', '127.0.0.1', `127.0.0.1:${new URL(stack.api.url).port}`, '[::1]', '[::1]:80', 'LOCALHOST']) {
      expect({ host, status: (await raw('GET', '/healthz', { headers: { host } })).status }).toEqual({ host, status: 200 });
    }
    for (const host of ['evil.example', 'evil.example:8080', 'localhost.evil.example', '127.0.0.1.nip.io', '[::2]']) {
      const res = await raw('GET', '/healthz', { headers: { host } });
      expect({ host, status: res.status }).toEqual({ host, status: 421 });
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.body.detail).toContain(JSON.stringify(host));
    }
    // What a rebinding page would try with a stolen… no: with the browser's own reach to loopback.
    const res = await raw('POST', '/v1/tokens', {
      headers: { host: 'evil.example', 'content-type': 'application/json', authorization: `Bearer ${stack.adminToken}` },
      body: JSON.stringify({ owner: 'mallory', role: 'admin' }),
    });
    expect(res.status).toBe(421);
    expect((await stack.http('GET', '/v1/tokens?owner=mallory')).body.items).toEqual([]);
  });

  it('names in CLOUDGATE_ALLOWED_HOST_NAMES and the public URL’s host are answered too', async () => {
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'cloudgate-hosts-'));
    const config = ConfigSchema.parse({
      dataDir,
      apiPort: 0,
      temporalAddress: stack.temporal.address,
      logLevel: 'silent',
      publicUrl: 'http://gateway.example.org:8080',
      allowedHostNames: 'cloudgate.internal, other.example:8443',
      sim: {},
    });
    const api = await startApi(config, { temporal: stack.client });
    try {
      const get = (host: string) =>
        new Promise<number>((resolve, reject) => {
          const u = new URL(api.url);
          httpRequest({ host: u.hostname, port: u.port, path: '/healthz', headers: { host } }, (r) => {
            r.resume();
            resolve(r.statusCode ?? 0);
          })
            .on('error', reject)
            .end();
        });
      for (const host of ['gateway.example.org', 'gateway.example.org:8080', 'cloudgate.internal:1', 'other.example', 'localhost']) expect({ host, status: await get(host) }).toEqual({ host, status: 200 });
      expect(await get('evil.example')).toBe(421);
    } finally {
      await api.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
