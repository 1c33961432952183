/**
 * Context portal: create, read, list, update (immutable versions), versions and preview
 * through the API against a real Temporal dev server; bad input named in 422s; secret
 * values and plain passwords in no response and not in plain text in the SQLite files;
 * the store's round trip, encryption key handling and reopen.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Client, Connection } from '@temporalio/client';
import request, { type Response } from 'supertest';
import { pino } from 'pino';
import { verify } from 'unixcrypt';
import { createApp, type ApiConfig, type CloudgateApp } from '../api/app.js';
import { ContextInputSchema, contextSecrets, hashContextPasswords, type Context } from '../model/context.js';
import { MASK } from '../model/user-data.js';
import { openSqliteStore, type ContextRecord, type Store } from '../store/index.js';
import { loadSecretsKey } from '../store/secret.js';
import { startDevServer, type DevServer } from '../workers/dev-server.js';

const dir = mkdtempSync(path.join(tmpdir(), 'cloudgate-contexts-'));
const dbFile = path.join(dir, 'store', 'cloudgate.sqlite');
let server: DevServer;
let connection: Connection;
let temporal: Client;
let store: Store;
let app: CloudgateApp;
const config: ApiConfig = {
  publicUrl: 'http://gateway.example.org:8080',
  temporalUiUrl: 'http://127.0.0.1:8233',
  namespace: 'default',
  taskQueue: 'cloudgate-contexts-test',
  tokenSecret: 'test-secret-0123456789abcdef',
};

beforeAll(async () => {
  server = await startDevServer({ dbFile: path.join(dir, 't.sqlite') });
  connection = await Connection.connect({ address: server.address });
  temporal = new Client({ connection, namespace: config.namespace });
  store = openSqliteStore(dbFile, { secretsKey: Buffer.alloc(32, 9) });
  app = createApp({ store, temporal, config });
});

afterAll(async () => {
  await app?.drain();
  store?.close();
  await connection?.close();
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** Distinctive values, so finding them anywhere is certainly a leak. */
const SECRET = 'S3cr3t-VALUE-never-shown-4f1c';
const SECRET2 = 'second-SECRET-value-9d2e';
const PASSWORD = 'plain-PASSWORD-7a3b';

/** An OpenSSH public key line whose blob names its own type, as ssh-keygen writes it. */
function sshKey(type: string): string {
  const str = (s: string | Buffer) => {
    const b = Buffer.from(s);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    return Buffer.concat([len, b]);
  };
  return `${type} ${Buffer.concat([str(type), str(Buffer.alloc(32, 7))]).toString('base64')} user@host`;
}

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

  it('POST /v1/contexts stores version 1: 201, Location, hashes and secret names only', async () => {
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
    expect(user.passwordHash).toMatch(/^\$6\$/);
    expect(verify(PASSWORD, user.passwordHash ?? '')).toBe(true);
    expect(created.context.cvmfs.proxy).toBe(input.cvmfs.proxy);
    // The store decrypts the values for the activity that renders real user-data.
    expect(store.getContextSecrets(created.id, 1)).toEqual(input.secrets);
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
    expect(store.getContextSecrets(created.id, 2)).toEqual(input.secrets);

    res = await request(app)
      .put(`/v1/contexts/${created.id}`)
      .send({ ...input, name: 'ALICE analysis v3', secrets: { DB_PASSWORD: SECRET2 } });
    expect(res.status).toBe(200);
    noLeak(res);
    expect(res.body).toMatchObject({ version: 3, name: 'ALICE analysis v3', context: { secretNames: ['DB_PASSWORD'] } });
    expect(store.getContextSecrets(created.id, 3)).toEqual({ DB_PASSWORD: SECRET2 });
    expect(store.getContextSecrets(created.id, 1)).toEqual(input.secrets);

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

  it('PUT with carried-over secrets that clash with the new environment → 422', async () => {
    const other = (await post(input)).body as ContextRecord;
    const { secrets: _omit, ...withoutSecrets } = input;
    void _omit;
    const res = await request(app)
      .put(`/v1/contexts/${other.id}`)
      .send({ ...withoutSecrets, environment: { DB_PASSWORD: 'x' } });
    problem(res, 422);
    expect(fields(res)).toEqual(['secrets.DB_PASSWORD']);
    expect(store.listContextVersions(other.id).map((v) => v.version)).toEqual([1]);
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

  it('the SQLite files hold neither the secret values nor the plain password', () => {
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

  it('round-trips immutable versions and encrypted secrets through a reopen', () => {
    const file = path.join(dir, 'rt', 'cloudgate.sqlite');
    let s = openSqliteStore(file, { secretsKey: Buffer.alloc(32, 1) });
    const a = s.createContext(ctxOf('a', { K: 'v1' }));
    expect(a).toMatchObject({ id: expect.stringMatching(/^ctx-[0-9a-f]{12}$/), version: 1, name: 'a' });
    const b = s.createContext(ctxOf('b', {}));
    const a2 = s.updateContext(a.id, ctxOf('a2', { K: 'v2' }));
    expect(a2).toMatchObject({ id: a.id, version: 2, name: 'a2' });
    expect(s.updateContext('ctx-000000000000', ctxOf('x', {}))).toBeUndefined();
    s.close();

    s = openSqliteStore(file, { secretsKey: Buffer.alloc(32, 1) });
    expect(s.getContext(a.id)).toEqual(a2);
    expect(s.getContext(a.id, 1)).toEqual(a);
    expect(s.getContext(a.id, 3)).toBeUndefined();
    expect(s.getContext('ctx-000000000000')).toBeUndefined();
    expect(s.listContexts()).toEqual([a2, b]);
    expect(s.listContextVersions(a.id)).toEqual([a, a2]);
    expect(s.listContextVersions('ctx-000000000000')).toEqual([]);
    expect(s.getContextSecrets(a.id, 1)).toEqual({ K: 'v1' });
    expect(s.getContextSecrets(a.id, 2)).toEqual({ K: 'v2' });
    expect(s.getContextSecrets(b.id, 1)).toEqual({});
    expect(s.getContextSecrets(a.id, 9)).toBeUndefined();
    s.close();

    // Another key cannot read them (GCM authentication fails loudly, never garbage).
    s = openSqliteStore(file, { secretsKey: Buffer.alloc(32, 2) });
    expect(() => s.getContextSecrets(a.id, 1)).toThrow(/cannot decrypt/);
    s.close();
  });

  it('without a key, uses <folder>/secrets-key (created once, mode 0600) and reads it back after a reopen', () => {
    const folder = path.join(dir, 'keyed');
    const file = path.join(folder, 'cloudgate.sqlite');
    const saved = process.env.CLOUDGATE_SECRETS_KEY;
    delete process.env.CLOUDGATE_SECRETS_KEY;
    try {
      let s = openSqliteStore(file);
      const keyFile = path.join(folder, 'secrets-key');
      expect(statSync(keyFile).mode & 0o777).toBe(0o600);
      const key = readFileSync(keyFile, 'utf8');
      expect(key).toMatch(/^[0-9a-f]{64}$/);
      const rec = s.createContext(ctxOf('k', { K: 'kept' }));
      s.close();
      s = openSqliteStore(file);
      expect(readFileSync(keyFile, 'utf8')).toBe(key);
      expect(s.getContextSecrets(rec.id, 1)).toEqual({ K: 'kept' });
      s.close();
      expect(loadSecretsKey({ dataDir: folder })).toEqual(Buffer.from(key, 'hex'));
    } finally {
      if (saved !== undefined) process.env.CLOUDGATE_SECRETS_KEY = saved;
    }
  });

  it('CLOUDGATE_SECRETS_KEY wins over the file and must be 64 hex digits', () => {
    const folder = path.join(dir, 'env-key');
    const hex = 'ab'.repeat(32);
    expect(loadSecretsKey({ dataDir: folder }, { CLOUDGATE_SECRETS_KEY: hex })).toEqual(Buffer.from(hex, 'hex'));
    expect(existsSync(path.join(folder, 'secrets-key'))).toBe(false);
    expect(() => loadSecretsKey({ dataDir: folder }, { CLOUDGATE_SECRETS_KEY: 'too-short' })).toThrow(/64 hex digits/);
  });
});
