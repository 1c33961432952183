/**
 * Context portal: create, read, list, update (immutable versions), versions and preview
 * through the API against a real Temporal dev server; bad input named in 422s; secret
 * values and plain passwords in no response and not in plain text in the SQLite files;
 * the store's round trip, encryption key handling and reopen; soft delete (410s) and
 * pairing a laptop CernVM by single-use PIN, its expiry and the PIN guessing limit.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from '@jest/globals';
import Database from 'better-sqlite3';
import type { Client } from '@temporalio/client';
import type { Response } from 'supertest';
import type { App } from 'supertest/types.js';
import { ApiFixture, asAdmin } from './api-fixture.js';
import { pino } from 'pino';
import { simpleParser } from 'mailparser';
import { verify } from 'unixcrypt';
import { createApp, type CloudgateApp } from '../api/app.js';
import { PAIRING_TTL_MS, PIN_MISS_LIMIT, PIN_MISS_WINDOW_MS } from '../api/contexts.js';
import type { PublicContext } from '../api/schemas.js';

/** The one answer of every failed PIN lookup (unknown, malformed, used, expired, deleted context). */
const NO_PAIRING = 'no pairing with this PIN: a PIN works once, within 5 minutes of being made';
import { ContextInputSchema, contextSecrets, hashContextPasswords, type Context } from '../model/context.js';
import {
  AMICONFIG_CONTENT_TYPE,
  CLOUD_CONFIG_CONTENT_TYPE,
  GUEST_PATHS,
  MASK,
  PHONE_HOME_CONTENT_TYPE,
  UCERNVM_CONTENT_TYPE,
} from '../model/user-data.js';
import { openSqliteStore, type ContextRecord, type Store } from '../store/index.js';
import { loadSecretsKey } from '../store/secret.js';
import { ucernvmRead } from './agents.js';
import { sshKey } from './ssh-key.js';

const api = new ApiFixture('contexts', { publicUrl: 'http://gateway.example.org:8080' });
const { dir, config } = api;
const dbFile = path.join(dir, 'store', 'cloudgate.sqlite');
let temporal: Client;
let store: Store;
let app: CloudgateApp;
/** Every call as an admin: the API needs a bearer (api/auth.ts). */
const request = (a: App) => asAdmin(a, store);

beforeAll(async () => {
  ({ temporal, store, app } = await api.start(() => openSqliteStore(dbFile, { secretsKey: Buffer.alloc(32, 9) })));
});

afterAll(() => api.stop());

/** Distinctive values, so finding them anywhere is certainly a leak. */
const SECRET = 'S3cr3t-VALUE-never-shown-4f1c';
const SECRET2 = 'second-SECRET-value-9d2e';
const PASSWORD = 'plain-PASSWORD-7a3b';

const input = {
  name: 'ALICE analysis',
  repositories: ['alice.cern.ch', 'sft.cern.ch'],
  cvmfs: { proxy: 'http://squid1.cern.ch:3128|http://squid2.cern.ch:3128;DIRECT', branch: 'cernvm-prod.cern.ch' },
  users: [{ name: 'alice', group: 'physics', sshKeys: [sshKey('ssh-ed25519')], password: PASSWORD }],
  services: ['condor'],
  environment: { ALICE_ROOT: '/cvmfs/alice.cern.ch' },
  startupScript: '#!/bin/sh\necho hello\n',
  secrets: { DB_PASSWORD: SECRET, API_TOKEN: SECRET2 },
};

/** Every response body as raw text must be free of the plain values. */
function noLeak(res: Response): void {
  for (const v of [SECRET, SECRET2, PASSWORD]) expect(res.text).not.toContain(v);
}

function problem(res: Response, status: number) {
  expect({ status: res.status, body: res.body as unknown }).toMatchObject({ status });
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  noLeak(res);
  return res.body as { detail: string; errors?: { field: string; message: string }[] };
}
const fields = (res: Response) => ((res.body as { errors?: { field: string }[] }).errors ?? []).map((e) => e.field);

const post = (body: unknown) => request(app).post('/v1/contexts').send(body as object);

describe('context portal routes', () => {
  let created: ContextRecord;

  it('POST /v1/contexts stores version 1: 201, Location, passwordSet and secret names only (hashes stored, never answered)', async () => {
    const res = await post(input);
    expect(res.status).toBe(201);
    noLeak(res);
    created = res.body as ContextRecord;
    expect(created.id).toMatch(/^ctx-[0-9a-f]{12}$/);
    expect(res.headers.location).toBe(`/v1/contexts/${created.id}`);
    expect(created).toMatchObject({ version: 1, name: 'ALICE analysis', createdAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) });
    expect(created.context.secretNames).toEqual(['API_TOKEN', 'DB_PASSWORD']);
    expect(created.context).not.toHaveProperty('secrets');
    const user = created.context.users[0];
    expect(user).not.toHaveProperty('password');
    expect(user).not.toHaveProperty('passwordHash');
    expect(user).toMatchObject({ name: 'alice', passwordSet: true });
    expect(res.text).not.toContain('$6$');
    const stored = (await store.getContext(created.id))?.context.users[0].passwordHash ?? '';
    expect(stored).toMatch(/^\$6\$/);
    expect(verify(PASSWORD, stored)).toBe(true);
    expect(created.context.cvmfs.proxy).toBe(input.cvmfs.proxy);
    // The store decrypts the values for the activity that renders real user-data.
    expect(await store.getContextSecrets(created.id, 1)).toEqual(input.secrets);
  });

  it('GET /v1/contexts/:id returns the latest; GET /v1/contexts lists it', async () => {
    const res = await request(app).get(`/v1/contexts/${created.id}`);
    expect(res.status).toBe(200);
    noLeak(res);
    expect(res.body).toEqual(created);
    const list = await request(app).get('/v1/contexts');
    expect(list.status).toBe(200);
    noLeak(list);
    expect((list.body as { items: ContextRecord[] }).items).toContainEqual(created);
  });

  it('PUT makes version 2 and keeps version 1; omitted secrets carry over, given ones replace', async () => {
    const { secrets: _omit, ...withoutSecrets } = input;
    void _omit;
    let res = await request(app)
      .put(`/v1/contexts/${created.id}`)
      .send({ ...withoutSecrets, services: ['condor', 'httpd'] });
    expect(res.status).toBe(200);
    noLeak(res);
    expect(res.body).toMatchObject({ id: created.id, version: 2, context: { services: ['condor', 'httpd'], secretNames: ['API_TOKEN', 'DB_PASSWORD'] } });
    expect(res.headers['content-location']).toBe(`/v1/contexts/${created.id}?version=2`);
    expect(await store.getContextSecrets(created.id, 2)).toEqual(input.secrets);

    res = await request(app)
      .put(`/v1/contexts/${created.id}`)
      .send({ ...input, name: 'ALICE analysis v3', secrets: { DB_PASSWORD: SECRET2 } });
    expect(res.status).toBe(200);
    noLeak(res);
    expect(res.body).toMatchObject({ version: 3, name: 'ALICE analysis v3', context: { secretNames: ['DB_PASSWORD'] } });
    expect(await store.getContextSecrets(created.id, 3)).toEqual({ DB_PASSWORD: SECRET2 });
    expect(await store.getContextSecrets(created.id, 1)).toEqual(input.secrets);

    const latest = await request(app).get(`/v1/contexts/${created.id}`);
    expect(latest.body).toMatchObject({ version: 3, name: 'ALICE analysis v3' });
    const v1 = await request(app).get(`/v1/contexts/${created.id}?version=1`);
    expect(v1.status).toBe(200);
    expect(v1.body).toEqual(created);

    const versions = await request(app).get(`/v1/contexts/${created.id}/versions`);
    expect(versions.status).toBe(200);
    noLeak(versions);
    const items = (versions.body as { items: ContextRecord[] }).items;
    expect(items.map((v) => v.version)).toEqual([1, 2, 3]);
    expect(items[0]).toEqual(created);

    const list = await request(app).get('/v1/contexts');
    const mine = (list.body as { items: ContextRecord[] }).items.filter((c) => c.id === created.id);
    expect(mine.map((c) => c.version)).toEqual([3]);
  });

  it('PUT of what GET answered keeps each user’s password (passwordSet: true); a new password replaces it, neither removes it', async () => {
    const BOB = 'bob-PASSWORD-55aa';
    const NEW = 'alice-NEW-password-3c9d';
    const users = [
      { name: 'alice', password: PASSWORD },
      { name: 'bob', password: BOB },
      { name: 'carol', sshKeys: [sshKey('ssh-ed25519')] },
    ];
    const first = (await post({ ...input, users })).body as ContextRecord;
    const hashes = async (version: number) => Object.fromEntries((await store.getContext(first.id, version))!.context.users.map((u) => [u.name, u.passwordHash]));
    const v1 = await hashes(1);
    expect(verify(PASSWORD, v1.alice!)).toBe(true);
    expect(verify(BOB, v1.bob!)).toBe(true);

    // What the portal's form and `cloudgate context edit` do: GET, change a field, PUT the context back as shown.
    const shown = (await request(app).get(`/v1/contexts/${first.id}`)).body as { context: PublicContext };
    expect(shown.context.users.map((u) => u.passwordSet)).toEqual([true, true, undefined]);
    const { secretNames: _names, ...editable } = shown.context;
    void _names;
    let res = await request(app)
      .put(`/v1/contexts/${first.id}`)
      .send({ ...editable, services: ['condor', 'httpd'] });
    expect(res.status).toBe(200);
    noLeak(res);
    expect((res.body as { context: PublicContext }).context.users).toEqual(shown.context.users);
    // The very hashes of version 1: the users log in to the new version's VMs as before.
    expect(await hashes(2)).toEqual(v1);
    // The preview shows them there (masked), as it did for version 1.
    const amiconfig = (v: number) => request(app).get(`/v1/contexts/${first.id}/preview?agent=amiconfig&version=${v}`);
    const usersLine = (text: string) => /\n\[cernvm\]\n(?:.*\n)*?users = (.*)\n/.exec(text)?.[1];
    expect(usersLine((await amiconfig(2)).text)).toBe(usersLine((await amiconfig(1)).text));
    expect(usersLine((await amiconfig(2)).text)).toBe('alice:alice:********,bob:bob:********,carol:carol:');

    // A new password gets a new hash; a user sent with neither has no password.
    res = await request(app)
      .put(`/v1/contexts/${first.id}`)
      .send({ ...editable, users: [{ name: 'alice', password: NEW, passwordSet: true }, { name: 'bob' }, users[2]] });
    expect(res.status).toBe(200);
    noLeak(res);
    expect(res.text).not.toContain(NEW);
    expect((res.body as { context: PublicContext }).context.users.map((u) => u.passwordSet)).toEqual([true, undefined, undefined]);
    const v3 = await hashes(3);
    expect(v3.alice).not.toBe(v1.alice);
    expect(verify(NEW, v3.alice!)).toBe(true);
    expect(v3.bob).toBeUndefined();

    // passwordSet with nothing to keep: the replaced version has no password for the name (bob's
    // is in version 1 only; dave is new), nor has a new context; and it is only ever true.
    for (const [body, field] of [
      [{ ...editable, users: [{ name: 'bob', passwordSet: true }] }, 'users[0].passwordSet'],
      [{ ...editable, users: [{ name: 'alice', passwordSet: true }, { name: 'dave', passwordSet: true }] }, 'users[1].passwordSet'],
      [{ ...editable, users: [{ name: 'alice', passwordSet: false }] }, 'users[0].passwordSet'],
    ] as const) {
      res = await request(app).put(`/v1/contexts/${first.id}`).send(body);
      const p = problem(res, 422);
      expect(fields(res)).toEqual([field]);
      expect(p.errors?.[0].message).toMatch(field === 'users[0].passwordSet' && body.users[0].passwordSet === false ? /must be true/ : /no password to keep/);
    }
    res = await post({ ...input, users: [{ name: 'alice', passwordSet: true }] });
    expect(problem(res, 422).errors?.[0].message).toMatch(/no password to keep: a new context has no stored password/);
    expect(fields(res)).toEqual(['users[0].passwordSet']);
    expect((await store.listContextVersions(first.id)).map((v) => v.version)).toEqual([1, 2, 3]);
  });

  it('PUT with carried-over secrets that clash with the new environment → 422', async () => {
    const other = (await post(input)).body as ContextRecord;
    const { secrets: _omit, ...withoutSecrets } = input;
    void _omit;
    const res = await request(app)
      .put(`/v1/contexts/${other.id}`)
      .send({ ...withoutSecrets, environment: { DB_PASSWORD: 'x' } });
    problem(res, 422);
    expect(fields(res)).toEqual(['secrets.DB_PASSWORD']);
    expect((await store.listContextVersions(other.id)).map((v) => v.version)).toEqual([1]);
  });

  it('GET /v1/contexts/:id/preview renders masked user-data as text/plain', async () => {
    const res = await request(app).get(`/v1/contexts/${created.id}/preview?version=1`);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    noLeak(res);
    expect(res.text).toMatch(/^Content-Type: multipart\/mixed; boundary=/);
    expect(res.text).toContain('[ucernvm-begin]');
    expect(res.text).toContain('alice.cern.ch');
    expect(res.text).toContain(MASK);
    expect(res.text).toContain(`${config.publicUrl}/v1/instances/preview/readiness`);
    // The placeholder token is masked too.
    expect(res.text).toContain(`"token":"${MASK}"`);
    expect(res.text).toContain('"instanceId":"preview"');
  });

  it('GET /v1/contexts/:id/preview?agent= shows what µCernVM, amiconfig and cloud-init each read, masked', async () => {
    const ucernvm = await request(app).get(`/v1/contexts/${created.id}/preview?agent=ucernvm`);
    expect(ucernvm.status).toBe(200);
    expect(ucernvm.headers['content-type']).toMatch(/^text\/plain/);
    expect(ucernvm.text.split('\n').filter((l) => l.startsWith('_UCONTEXT_'))).toEqual(
      (await ucernvmRead((await request(app).get(`/v1/contexts/${created.id}/preview`)).text)).ucontext,
    );

    const amiconfig = await request(app).get(`/v1/contexts/${created.id}/preview?agent=amiconfig&version=1`);
    expect(amiconfig.status).toBe(200);
    expect(amiconfig.text).toMatch(/\n\[cernvm\]\nrepositories = alice\.cern\.ch/);
    expect(amiconfig.text).toMatch(/\nusers = alice:physics:\*{8}\n/); // the hash is masked like a secret
    expect(amiconfig.text).not.toContain('$6$');
    noLeak(amiconfig);

    const cloudInit = await request(app).get(`/v1/contexts/${created.id}/preview?agent=cloud-init`);
    expect(cloudInit.status).toBe(200);
    expect(cloudInit.text).toContain('(text/cloud-config): cloud-config\n#cloud-config\n');
    expect(cloudInit.text).toContain('left to amiconfig');
    expect(cloudInit.text).toContain(MASK);
    noLeak(cloudInit);

    const bad = problem(await request(app).get(`/v1/contexts/${created.id}/preview?agent=puppet`), 422);
    expect(bad.errors?.map((e: { field: string }) => e.field)).toEqual(['agent']);
    expect(bad.detail).toMatch(/ucernvm, amiconfig, cloud-init/);
  });

  it('bad input → 422 naming the field (proxy member, repository name, unknown field)', async () => {
    let res = await post({ ...input, cvmfs: { proxy: 'http://squid1.cern.ch:3128|ftp://bad;DIRECT' } });
    let p = problem(res, 422);
    expect(fields(res)).toEqual(['cvmfs.proxy']);
    expect(p.errors?.[0].message).toMatch(/group 1, member 2 "ftp:\/\/bad"/);

    res = await post({ ...input, repositories: ['alice.cern.ch', 'alice'] });
    p = problem(res, 422);
    expect(fields(res)).toEqual(['repositories[1]']);
    expect(p.detail).toMatch(/fully qualified/);

    res = await post({ ...input, colour: 'blue' });
    problem(res, 422);
    expect(fields(res)).toEqual(['colour']);

    res = await post({ ...input, users: [{ name: 'bob', password: 'short' }] });
    problem(res, 422);
    expect(fields(res)).toEqual(['users[0].password']);
    expect(res.text).not.toContain('short"');

    res = await request(app).put(`/v1/contexts/${created.id}`).send({ ...input, repositories: ['Alice.cern.ch'] });
    problem(res, 422);
    expect(fields(res)).toEqual(['repositories[0]']);

    res = await request(app).get(`/v1/contexts/${created.id}?version=zero`);
    problem(res, 422);
    expect(fields(res)).toEqual(['version']);
  });

  it('unknown ids and versions → 404 problem', async () => {
    problem(await request(app).get('/v1/contexts/ctx-000000000000'), 404);
    problem(await request(app).get('/v1/contexts/not-an-id'), 404);
    const p = problem(await request(app).get(`/v1/contexts/${created.id}?version=99`), 404);
    expect(p.detail).toMatch(/no version 99/);
    problem(await request(app).get('/v1/contexts/ctx-000000000000/versions'), 404);
    problem(await request(app).get('/v1/contexts/ctx-000000000000/preview'), 404);
    problem(await request(app).put('/v1/contexts/ctx-000000000000').send(input), 404);
  });

  it('nothing of the plain values reaches the log, even at debug level', async () => {
    const lines: string[] = [];
    const logger = pino({ level: 'trace' }, { write: (line: string) => void lines.push(line) });
    const logged = createApp({ store, temporal, config, logger });
    const ok = await request(logged).post('/v1/contexts').send(input);
    expect(ok.status).toBe(201);
    const id = (ok.body as ContextRecord).id;
    await request(logged).put(`/v1/contexts/${id}`).send({ ...input, users: [{ name: 'bob', password: 'short' }] });
    await request(logged).post('/v1/contexts').send({ ...input, secrets: { DB_PASSWORD: `${SECRET}\n` } });
    await request(logged).get(`/v1/contexts/${id}/preview`);
    await logged.drain();
    expect(lines.length).toBeGreaterThanOrEqual(4);
    for (const v of [SECRET, SECRET2, PASSWORD]) expect(lines.join('')).not.toContain(v);
  });

  it('the SQLite files hold neither the secret values nor the plain password', async () => {
    const files = [dbFile, `${dbFile}-wal`].filter((f) => existsSync(f));
    expect(files.length).toBeGreaterThan(0);
    const bytes = Buffer.concat(files.map((f) => readFileSync(f)));
    expect(bytes.includes(Buffer.from('DB_PASSWORD'))).toBe(true); // the data is really there
    for (const v of [SECRET, SECRET2, PASSWORD]) expect(bytes.includes(Buffer.from(v))).toBe(false);
  });
});

describe('context store', () => {
  const ctxOf = (name: string, secrets: Record<string, string>): { name: string; context: Context; secrets: Record<string, string> } => {
    const parsed = ContextInputSchema.parse({ name, repositories: ['alice.cern.ch'], secrets });
    return { name, context: hashContextPasswords(parsed), secrets: contextSecrets(parsed) };
  };

  it('round-trips immutable versions and encrypted secrets through a reopen', async () => {
    const file = path.join(dir, 'rt', 'cloudgate.sqlite');
    let s = await openSqliteStore(file, { secretsKey: Buffer.alloc(32, 1) });
    const a = await s.createContext(ctxOf('a', { K: 'v1' }));
    expect(a).toMatchObject({ id: expect.stringMatching(/^ctx-[0-9a-f]{12}$/), version: 1, name: 'a' });
    const b = await s.createContext(ctxOf('b', {}));
    const a2 = await s.updateContext(a.id, ctxOf('a2', { K: 'v2' }));
    expect(a2).toMatchObject({ id: a.id, version: 2, name: 'a2' });
    expect(await s.updateContext('ctx-000000000000', ctxOf('x', {}))).toBeUndefined();
    await s.close();

    s = await openSqliteStore(file, { secretsKey: Buffer.alloc(32, 1) });
    expect(await s.getContext(a.id)).toEqual(a2);
    expect(await s.getContext(a.id, 1)).toEqual(a);
    expect(await s.getContext(a.id, 3)).toBeUndefined();
    expect(await s.getContext('ctx-000000000000')).toBeUndefined();
    expect(await s.listContexts()).toEqual([a2, b]);
    expect(await s.listContextVersions(a.id)).toEqual([a, a2]);
    expect(await s.listContextVersions('ctx-000000000000')).toEqual([]);
    expect(await s.getContextSecrets(a.id, 1)).toEqual({ K: 'v1' });
    expect(await s.getContextSecrets(a.id, 2)).toEqual({ K: 'v2' });
    expect(await s.getContextSecrets(b.id, 1)).toEqual({});
    expect(await s.getContextSecrets(a.id, 9)).toBeUndefined();
    await s.close();

    // Another key cannot read them (GCM authentication fails loudly, never garbage).
    s = await openSqliteStore(file, { secretsKey: Buffer.alloc(32, 2) });
    await expect(s.getContextSecrets(a.id, 1)).rejects.toThrow(/cannot decrypt/);
    await s.close();
  });

  it('without a key, uses <folder>/secrets-key (created once, mode 0600) and reads it back after a reopen', async () => {
    const folder = path.join(dir, 'keyed');
    const file = path.join(folder, 'cloudgate.sqlite');
    const saved = process.env.CLOUDGATE_SECRETS_KEY;
    delete process.env.CLOUDGATE_SECRETS_KEY;
    try {
      let s = await openSqliteStore(file);
      const keyFile = path.join(folder, 'secrets-key');
      expect(statSync(keyFile).mode & 0o777).toBe(0o600);
      const key = readFileSync(keyFile, 'utf8');
      expect(key).toMatch(/^[0-9a-f]{64}$/);
      const rec = await s.createContext(ctxOf('k', { K: 'kept' }));
      await s.close();
      s = await openSqliteStore(file);
      expect(readFileSync(keyFile, 'utf8')).toBe(key);
      expect(await s.getContextSecrets(rec.id, 1)).toEqual({ K: 'kept' });
      await s.close();
      expect(loadSecretsKey({ dataDir: folder })).toEqual(Buffer.from(key, 'hex'));
    } finally {
      if (saved !== undefined) process.env.CLOUDGATE_SECRETS_KEY = saved;
    }
  });

  it('CLOUDGATE_SECRETS_KEY wins over the file and must be 64 hex digits', async () => {
    const folder = path.join(dir, 'env-key');
    const hex = 'ab'.repeat(32);
    expect(loadSecretsKey({ dataDir: folder }, { CLOUDGATE_SECRETS_KEY: hex })).toEqual(Buffer.from(hex, 'hex'));
    expect(existsSync(path.join(folder, 'secrets-key'))).toBe(false);
    expect(() => loadSecretsKey({ dataDir: folder }, { CLOUDGATE_SECRETS_KEY: 'too-short' })).toThrow(/64 hex digits/);
  });
});

interface Pairing {
  pin: string;
  contextId: string;
  version: number;
  expiresAt: string;
  links: { userData: string };
}

describe('soft delete and laptop pairing', () => {
  /** The app's clock; each test starts a miss window later, so PIN misses of one test do not count in the next. */
  let clock = new Date('2030-06-01T08:00:00.000Z');
  const tick = (ms: number) => {
    clock = new Date(clock.getTime() + ms);
  };
  let paired: CloudgateApp;
  let ctx: ContextRecord;
  beforeAll(async () => {
    paired = createApp({ store, temporal, config, now: () => clock });
    ctx = (await request(paired).post('/v1/contexts').send(input)).body as ContextRecord;
  });
  beforeEach(() => tick(PIN_MISS_WINDOW_MS + 1));
  afterAll(() => paired?.drain());

  const pairing = (id: string, body?: object) => {
    const req = request(paired).post(`/v1/contexts/${id}/pairings`);
    return body === undefined ? req : req.send(body);
  };
  const fetchUserData = (pin: string) => request(paired).get(`/v1/pair/${pin}`);
  const pinOf = async (id: string, body?: object): Promise<string> => {
    const res = await pairing(id, body);
    expect(res.status).toBe(201);
    return (res.body as Pairing).pin;
  };

  it('POST /v1/contexts/:id/pairings → 201 with a 12-symbol PIN valid for 5 minutes (latest version, or the one asked for)', async () => {
    let res = await pairing(ctx.id);
    expect(res.status).toBe(201);
    noLeak(res);
    const p = res.body as Pairing;
    expect(p).toEqual({
      pin: expect.stringMatching(/^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$/),
      contextId: ctx.id,
      version: 1,
      expiresAt: new Date(clock.getTime() + PAIRING_TTL_MS).toISOString(),
      links: { userData: `/v1/pair/${p.pin}` },
    });
    expect(res.headers.location).toBe(`/v1/pair/${p.pin}`);

    // With the system clock: expiresAt ≈ now + 5 min.
    res = await request(app).post(`/v1/contexts/${ctx.id}/pairings`);
    expect(res.status).toBe(201);
    expect(Math.abs(Date.parse((res.body as Pairing).expiresAt) - (Date.now() + PAIRING_TTL_MS))).toBeLessThan(5_000);

    const v2 = await request(paired).put(`/v1/contexts/${ctx.id}`).send({ ...input, name: 'ALICE analysis v2' });
    expect(v2.status).toBe(200);
    expect((await pairing(ctx.id)).body).toMatchObject({ version: 2 });
    expect((await pairing(ctx.id, { version: 1 })).body).toMatchObject({ version: 1 });
    expect((await pairing(ctx.id, {})).body).toMatchObject({ version: 2 });
  });

  it('POST pairing: unknown context or version → 404, bad body → 422/415', async () => {
    expect(problem(await pairing('ctx-000000000000'), 404).detail).toBe('no context "ctx-000000000000"');
    expect(problem(await pairing('not-an-id'), 404).detail).toBe('no context "not-an-id"');
    expect(problem(await pairing(ctx.id, { version: 99 }), 404).detail).toBe(`context "${ctx.id}" has no version 99`);
    let res = await pairing(ctx.id, { version: 'one' });
    problem(res, 422);
    expect(fields(res)).toEqual(['version']);
    res = await pairing(ctx.id, { colour: 'blue' });
    problem(res, 422);
    expect(fields(res)).toEqual(['colour']);
    res = await request(paired).post(`/v1/contexts/${ctx.id}/pairings`).type('text/plain').send('version=1');
    problem(res, 415);
  });

  it('GET /v1/pair/:pin → the real user-data once (µCernVM, cloud-config, amiconfig; no phone-home), then 404', async () => {
    const pin = await pinOf(ctx.id, { version: 1 });
    const res = await fetchUserData(pin);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(res.headers['cache-control']).toBe('no-store');
    const mail = await simpleParser(res.text);
    expect(mail.attachments.map((a) => a.contentType)).toEqual([UCERNVM_CONTENT_TYPE, CLOUD_CONFIG_CONTENT_TYPE, AMICONFIG_CONTENT_TYPE]);
    const part = (type: string) => mail.attachments.find((a) => a.contentType === type)?.content.toString('utf8') ?? '';
    expect(part(UCERNVM_CONTENT_TYPE)).toContain('cvmfs_branch=cernvm-prod.cern.ch');
    expect(part(AMICONFIG_CONTENT_TYPE)).toContain('alice.cern.ch');
    // This is the VM's own user-data: the secret values are real, nothing is masked.
    const cloudConfig = part(CLOUD_CONFIG_CONTENT_TYPE);
    expect(cloudConfig).toContain(GUEST_PATHS.secrets);
    expect(cloudConfig).toContain(SECRET);
    expect(cloudConfig).toContain(SECRET2);
    expect(res.text).not.toContain(MASK);
    expect(res.text).not.toContain(PASSWORD); // passwords stay hashes
    // No workflow waits for a laptop: no phone-home part, file or agent.
    expect(res.text).not.toContain(PHONE_HOME_CONTENT_TYPE);
    expect(cloudConfig).not.toContain(GUEST_PATHS.phoneHomeEnv);
    expect(cloudConfig).not.toContain(GUEST_PATHS.phoneHomeAgent);
    expect(res.text).not.toContain('/readiness');

    const again = problem(await fetchUserData(pin), 404);
    expect(again.detail).toBe(NO_PAIRING);
  });

  it('a PIN expires after 5 minutes → 404', async () => {
    const early = await pinOf(ctx.id);
    const late = await pinOf(ctx.id);
    tick(PAIRING_TTL_MS - 1);
    expect((await fetchUserData(early)).status).toBe(200);
    tick(1);
    expect(problem(await fetchUserData(late), 404).detail).toBe(NO_PAIRING);
  });

  it('unknown or malformed PINs → 404', async () => {
    // A PIN no pairing holds (no route lists PINs; read the table without touching a row).
    const db = new Database(dbFile, { readonly: true });
    const held = new Set(db.prepare<[], { pin: string }>('SELECT pin FROM pairings').all().map((r) => r.pin));
    db.close();
    let unknown = '0000-0000-0000';
    for (let n = 1; held.has(unknown.replace(/-/g, '')); n++) unknown = `0000-0000-${String(n).padStart(4, '0')}`;
    expect(problem(await fetchUserData(unknown), 404).detail).toBe(NO_PAIRING);
    for (const bad of ['abc', '123456', '1234567', '0000-0000-000U', '0000-0000-00000']) expect(problem(await fetchUserData(bad), 404).detail).toBe(NO_PAIRING);
  });

  it(`after ${PIN_MISS_LIMIT} failed lookups in a minute a client gets 429 with Retry-After, even for a good PIN`, async () => {
    const good = await pinOf(ctx.id);
    tick(1_000);
    for (let i = 0; i < PIN_MISS_LIMIT; i++) problem(await fetchUserData(`x${i}`), 404);
    tick(10_000);
    let res = await fetchUserData(good);
    const p = problem(res, 429);
    expect(p.detail).toMatch(/too many failed PIN lookups/);
    expect(res.headers['retry-after']).toBe(String(PIN_MISS_WINDOW_MS / 1000 - 10));
    res = await fetchUserData('abc');
    problem(res, 429); // a 429 is not a miss of its own: the wait does not grow
    tick(PIN_MISS_WINDOW_MS - 10_000);
    expect((await fetchUserData(good)).status).toBe(200);
    // Used and expired PINs count as misses too.
    for (let i = 0; i < PIN_MISS_LIMIT; i++) problem(await fetchUserData(good), 404);
    problem(await fetchUserData(good), 429);
  });

  it('DELETE /v1/contexts/:id → 204; then its routes answer 410, the list omits it, the store keeps its versions and secrets', async () => {
    const doomed = (await request(paired).post('/v1/contexts').send(input)).body as ContextRecord;
    await request(paired).put(`/v1/contexts/${doomed.id}`).send({ ...input, name: 'v2' });
    const pinBefore = await pinOf(doomed.id);
    const deletedAt = clock.toISOString();

    const res = await request(paired).delete(`/v1/contexts/${doomed.id}`);
    expect(res.status).toBe(204);
    expect(res.text).toBe('');

    const gone = (r: Response) => {
      const p = problem(r, 410);
      expect(p.detail).toBe(`context "${doomed.id}" was deleted at ${deletedAt}`);
      expect(r.body).toMatchObject({ deletedAt, type: 'urn:cloudgate:problem:context-deleted' });
    };
    gone(await request(paired).get(`/v1/contexts/${doomed.id}`));
    gone(await request(paired).get(`/v1/contexts/${doomed.id}?version=1`));
    gone(await request(paired).get(`/v1/contexts/${doomed.id}?version=9`));
    gone(await request(paired).get(`/v1/contexts/${doomed.id}/versions`));
    gone(await request(paired).get(`/v1/contexts/${doomed.id}/preview`));
    gone(await request(paired).put(`/v1/contexts/${doomed.id}`).send(input));
    gone(await pairing(doomed.id));
    gone(await request(paired).delete(`/v1/contexts/${doomed.id}`)); // a second DELETE: 410 too
    // A PIN issued before the delete no longer hands out the user-data (the one answer of every failed lookup).
    expect(problem(await fetchUserData(pinBefore), 404).detail).toBe(NO_PAIRING);

    const list = (await request(paired).get('/v1/contexts')).body as { items: ContextRecord[] };
    expect(list.items.map((c) => c.id)).not.toContain(doomed.id);
    expect(list.items.map((c) => c.id)).toContain(ctx.id);
    expect(await store.listContextVersions(doomed.id)).toHaveLength(2);

    // Clusters pinned to a version can still render it.
    const { context: storedContext, ...storedRecord } = (await store.getContext(doomed.id, 1))!;
    const { context: answeredContext, ...answeredRecord } = doomed;
    expect(storedRecord).toEqual({ ...answeredRecord, deletedAt });
    // The answer showed passwordSet; the store keeps the hash the guests need.
    expect(storedContext).toEqual({ ...answeredContext, users: [{ ...answeredContext.users[0], passwordSet: undefined, passwordHash: expect.stringMatching(/^\$6\$/) }] });
    expect(await store.getContextSecrets(doomed.id, 1)).toEqual(input.secrets);

    problem(await request(paired).delete('/v1/contexts/ctx-000000000000'), 404);
    problem(await request(paired).delete('/v1/contexts/not-an-id'), 404);
  });

  it('the OpenAPI document declares the new routes', async () => {
    const doc = (await request(paired).get('/openapi.json')).body as { paths: Record<string, Record<string, { responses: Record<string, unknown> }>> };
    expect(Object.keys(doc.paths['/v1/contexts/{id}'])).toEqual(expect.arrayContaining(['get', 'put', 'delete']));
    expect(Object.keys(doc.paths['/v1/contexts/{id}/pairings'].post.responses)).toEqual(expect.arrayContaining(['201', '404', '410']));
    expect(Object.keys(doc.paths['/v1/pair/{pin}'].get.responses).sort()).toEqual(['200', '404', '429']); // one 404 for every failed lookup, no 410
    // A PUT takes a user as GET shows it: passwordSet: true keeps the stored password.
    const contextInput = (doc as unknown as { components: { schemas: Record<string, { properties: { users: { items: { properties: Record<string, unknown> } } } }> } }).components.schemas.ContextInput;
    expect(contextInput.properties.users.items.properties.passwordSet).toMatchObject({ type: 'boolean', enum: [true] });
  });
});
