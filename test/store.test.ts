import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from '@jest/globals';
import Database from 'better-sqlite3';
import { ContextInputSchema, contextSecrets, hashContextPasswords } from '../model/context.js';
import { ClusterDefinitionSchema } from '../model/definition.js';
import { DuplicateKeyError, openSqliteStore, type ContextVersionInput } from '../store/index.js';
import { loadTokenSecret } from '../store/secret.js';

const dir = mkdtempSync(path.join(tmpdir(), 'cloudgate-store-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const definition = ClusterDefinitionSchema.parse({
  name: 't3-box',
  services: [
    { name: 'proxy', image: 'cernvm4', offering: { cpus: 1, memoryMiB: 2048, diskGiB: 20 } },
    { name: 'workers', image: 'cernvm4', offering: { cpus: 4, memoryMiB: 8192, diskGiB: 40 }, min: 2, max: 10, dependsOn: ['proxy'] },
  ],
});

describe('SQLite store', () => {
  it('round-trips definitions, clusters and clouds through a file', () => {
    const file = path.join(dir, 'nested', 'round-trip.sqlite');
    let store = openSqliteStore(file);
    const def = store.createDefinition({ name: definition.name, definition });
    expect(def.id).toMatch(/^def-[0-9a-f]{12}$/);
    expect(store.getDefinition(def.id)).toEqual(def);
    expect(store.getDefinition('def-000000000000')).toBeUndefined();

    const c = store.createCluster({ id: 't3-box-abc123', name: 't3-box', definitionId: def.id, cloud: 'sim', owner: 'alice' });
    expect(c.createdAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    // The pinned context versions are kept with the row, so a retried create starts the workflow with the same ones.
    const pins = { workers: { id: 'ctx-0123456789ab', version: 3, repositories: ['alice.cern.ch'], minRevision: { 'alice.cern.ch': 7 } } };
    const pinned = store.createCluster({ id: 't3-box-pin001', name: 't3-box', definitionId: def.id, cloud: 'sim', contexts: pins });
    store.upsertCloud({ name: 'sim', kind: 'sim', offerings: [{ id: 'small', name: 'small', cpus: 1, memoryMiB: 2048, diskGiB: 20 }] });
    store.upsertCloud({ name: 'sim', kind: 'sim', offerings: [{ id: 'large', name: 'large', cpus: 8, memoryMiB: 16384, diskGiB: 80 }] });
    store.upsertCloud({ name: 'ec2', kind: 'ec2', offerings: [] });
    store.close();

    store = openSqliteStore(file); // survives a reopen, tables are not recreated
    expect(store.listDefinitions()).toEqual([def]);
    expect(store.getDefinition(def.id)?.definition).toEqual(definition);
    expect(store.getCluster(c.id)).toEqual(c);
    expect(store.getCluster(pinned.id)?.contexts).toEqual(pins);
    expect(store.deleteCluster(pinned.id)).toBe(true);
    expect(store.listClusters()).toEqual([c]);
    expect(store.listClouds().map((x) => x.name)).toEqual(['ec2', 'sim']);
    expect(store.getCloud('sim')?.offerings.map((o) => o.id)).toEqual(['large']);
    expect(store.getCloud('nope')).toBeUndefined();
    expect(() => store.ping()).not.toThrow();

    expect(store.deleteCluster(c.id)).toBe(true);
    expect(store.deleteCluster(c.id)).toBe(false);
    expect(store.listClusters()).toEqual([]);
    store.close();
  });

  it('keeps idempotency keys unique and finds clusters by key', () => {
    const store = openSqliteStore(':memory:');
    const def = store.createDefinition({ name: definition.name, definition });
    const a = store.createCluster({ id: 'a-000001', name: 'a', definitionId: def.id, cloud: 'sim', idempotencyKey: 'k1', requestHash: 'h1' });
    expect(store.findClusterByIdempotencyKey('k1')).toEqual(a);
    expect(store.findClusterByIdempotencyKey('k2')).toBeUndefined();

    const dupKey = () => store.createCluster({ id: 'a-000002', name: 'a', definitionId: def.id, cloud: 'sim', idempotencyKey: 'k1' });
    expect(dupKey).toThrow(DuplicateKeyError);
    try {
      dupKey();
    } catch (err) {
      expect((err as DuplicateKeyError).field).toBe('idempotencyKey');
    }
    try {
      store.createCluster({ id: 'a-000001', name: 'a', definitionId: def.id, cloud: 'sim' });
      throw new Error('expected a duplicate id');
    } catch (err) {
      expect(err).toBeInstanceOf(DuplicateKeyError);
      expect((err as DuplicateKeyError).field).toBe('id');
    }
    // Clusters without a key do not collide with each other (NULLs are distinct).
    store.createCluster({ id: 'b-000001', name: 'b', definitionId: def.id, cloud: 'sim' });
    store.createCluster({ id: 'b-000002', name: 'b', definitionId: def.id, cloud: 'sim' });
    expect(store.listClusters()).toHaveLength(3);
    // A failed insert wrote nothing.
    expect(store.getCluster('a-000002')).toBeUndefined();
    store.close();
  });

  it('refuses clusters of unknown definitions', () => {
    const store = openSqliteStore(':memory:');
    expect(() => store.createCluster({ id: 'x-000001', name: 'x', definitionId: 'def-missing', cloud: 'sim' })).toThrow(/FOREIGN KEY/);
    store.close();
  });
});

describe('token secret', () => {
  it('prefers the configured secret', () => {
    expect(loadTokenSecret({ dataDir: path.join(dir, 'unused'), tokenSecret: 'configured-secret-0123' })).toBe('configured-secret-0123');
  });

  it('creates <dataDir>/token-secret once, mode 0600, and reuses it', () => {
    const dataDir = path.join(dir, 'secret');
    const first = loadTokenSecret({ dataDir });
    expect(first).toMatch(/^[0-9a-f]{64}$/);
    expect(statSync(path.join(dataDir, 'token-secret')).mode & 0o777).toBe(0o600);
    expect(loadTokenSecret({ dataDir })).toBe(first);
  });
});

describe('context soft delete', () => {
  const key = Buffer.alloc(32, 5);
  const version = (name: string, secrets: Record<string, string>): ContextVersionInput => {
    const parsed = ContextInputSchema.parse({ name, repositories: ['alice.cern.ch'], secrets });
    return { name, context: hashContextPasswords(parsed), secrets: contextSecrets(parsed) };
  };

  it('leaves the list, refuses updates, keeps every version and its secrets (through a reopen)', () => {
    const file = path.join(dir, 'soft-delete', 'cloudgate.sqlite');
    let store = openSqliteStore(file, { secretsKey: key });
    const a = store.createContext(version('a', { K: 'v1' }));
    const a2 = store.updateContext(a.id, version('a2', { K: 'v2' }));
    const b = store.createContext(version('b', {}));
    const at = new Date('2030-01-02T03:04:05.678Z');
    const deletedAt = at.toISOString();

    expect(store.deleteContext(a.id, at)).toBe(true);
    expect(store.deleteContext(a.id)).toBe(false); // already deleted: the time stays the first
    expect(store.deleteContext('ctx-000000000000')).toBe(false);
    store.close();

    store = openSqliteStore(file, { secretsKey: key });
    expect(store.listContexts()).toEqual([b]);
    expect(store.getContext(a.id)).toEqual({ ...a2, deletedAt });
    expect(store.getContext(a.id, 1)).toEqual({ ...a, deletedAt });
    expect(store.listContextVersions(a.id)).toEqual([
      { ...a, deletedAt },
      { ...a2, deletedAt },
    ]);
    expect(store.getContextSecrets(a.id, 1)).toEqual({ K: 'v1' });
    expect(store.getContextSecrets(a.id, 2)).toEqual({ K: 'v2' });
    expect(store.updateContext(a.id, version('a3', {}))).toBeUndefined();
    expect(store.listContextVersions(a.id)).toHaveLength(2);
    expect(store.getContext(b.id)).not.toHaveProperty('deletedAt');
    store.close();
  });

  it('adds deleted_at to a contexts table made before contexts could be deleted', () => {
    const file = path.join(dir, 'old-contexts', 'cloudgate.sqlite');
    openSqliteStore(file, { secretsKey: key }).close(); // makes the folder and the other tables
    const db = new Database(file);
    db.exec('DROP TABLE pairings; DROP TABLE context_versions; DROP TABLE contexts');
    db.exec(`CREATE TABLE contexts (id TEXT PRIMARY KEY, created_at TEXT NOT NULL);
      CREATE TABLE context_versions (context_id TEXT NOT NULL REFERENCES contexts(id), version INTEGER NOT NULL, name TEXT NOT NULL,
        context TEXT NOT NULL, secrets TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (context_id, version));
      INSERT INTO contexts VALUES ('ctx-0123456789ab', '2020-01-01T00:00:00.000Z');
      INSERT INTO context_versions VALUES ('ctx-0123456789ab', 1, 'old', '{"name":"old"}', 'v1:', '2020-01-01T00:00:00.000Z');`);
    db.close();

    const store = openSqliteStore(file, { secretsKey: key });
    expect(store.getContext('ctx-0123456789ab')).toEqual({
      id: 'ctx-0123456789ab',
      version: 1,
      name: 'old',
      context: { name: 'old' },
      createdAt: '2020-01-01T00:00:00.000Z',
    });
    expect(store.deleteContext('ctx-0123456789ab')).toBe(true);
    expect(store.getContext('ctx-0123456789ab')?.deletedAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(store.listContexts()).toEqual([]);
    store.close();
  });
});

describe('pairings', () => {
  const key = Buffer.alloc(32, 6);
  const t0 = new Date('2030-01-01T12:00:00.000Z');
  const after = (ms: number): Date => new Date(t0.getTime() + ms);
  const ttl = 5 * 60_000;
  const setup = (file = ':memory:') => {
    const store = openSqliteStore(file, { secretsKey: key });
    const parsed = ContextInputSchema.parse({ name: 'p', repositories: ['alice.cern.ch'] });
    const ctx = store.createContext({ name: 'p', context: hashContextPasswords(parsed), secrets: {} });
    const pair = (pin: string, createdAt: Date, version = 1) =>
      store.createPairing({ pin, contextId: ctx.id, version, createdAt, expiresAt: new Date(createdAt.getTime() + ttl) });
    return { store, ctx, pair };
  };

  it('is taken once: ok, then used; unknown PINs are unknown', () => {
    const { store, ctx, pair } = setup();
    expect(pair('012345', t0)).toEqual({ pin: '012345', contextId: ctx.id, version: 1, createdAt: t0.toISOString(), expiresAt: after(ttl).toISOString() });
    // A live PIN is not handed out twice.
    expect(pair('012345', after(1_000))).toBeUndefined();
    expect(store.takePairing('012345', after(2_000))).toEqual({ status: 'ok', contextId: ctx.id, version: 1 });
    expect(store.takePairing('012345', after(3_000))).toEqual({ status: 'used', usedAt: after(2_000).toISOString() });
    expect(store.takePairing('999999', after(3_000))).toEqual({ status: 'unknown' });
    // A used PIN may be issued again, and is then live again.
    expect(pair('012345', after(4_000))).toMatchObject({ pin: '012345', createdAt: after(4_000).toISOString() });
    expect(store.takePairing('012345', after(5_000))).toEqual({ status: 'ok', contextId: ctx.id, version: 1 });
    store.close();
  });

  it('expires at expiresAt; an expired PIN may be issued again; old ones are purged', () => {
    const { store, ctx, pair } = setup();
    pair('111111', t0);
    pair('222222', t0);
    expect(store.takePairing('111111', after(ttl - 1))).toMatchObject({ status: 'ok' });
    expect(store.takePairing('222222', after(ttl))).toEqual({ status: 'expired', expiresAt: after(ttl).toISOString() });
    // Expired, not used: a failed take does not mark it used.
    expect(store.takePairing('222222', after(ttl + 1))).toEqual({ status: 'expired', expiresAt: after(ttl).toISOString() });
    expect(pair('222222', after(ttl - 1))).toBeUndefined(); // still live at that time
    expect(pair('222222', after(ttl))).toMatchObject({ pin: '222222' });
    expect(store.takePairing('222222', after(ttl + 1))).toEqual({ status: 'ok', contextId: ctx.id, version: 1 });

    pair('333333', t0);
    // 111111 (used) and 333333 expired at ttl, not before it; the reissued 222222 lives on.
    expect(store.purgePairings(after(ttl))).toBe(0);
    expect(store.purgePairings(after(ttl + 1))).toBe(2);
    expect(store.takePairing('333333', after(ttl + 2))).toEqual({ status: 'unknown' });
    expect(store.takePairing('222222', after(ttl + 2))).toEqual({ status: 'used', usedAt: after(ttl + 1).toISOString() });
    store.close();
  });

  it('refuses a pairing for a version that does not exist', () => {
    const { store, pair } = setup();
    expect(() => pair('444444', t0, 2)).toThrow(/FOREIGN KEY/);
    expect(store.takePairing('444444', t0)).toEqual({ status: 'unknown' });
    store.close();
  });

  it('of two takes on one PIN, even through two connections to one file, exactly one is ok', () => {
    const file = path.join(dir, 'pairings', 'cloudgate.sqlite');
    const { store: one, pair } = setup(file);
    const two = openSqliteStore(file, { secretsKey: key });
    for (const [i, pin] of ['000001', '000002', '000003', '000004'].entries()) {
      pair(pin, t0);
      const [first, second] = i % 2 ? [two, one] : [one, two];
      const results = [first.takePairing(pin, after(1_000)), second.takePairing(pin, after(1_000)), one.takePairing(pin, after(1_001))];
      expect(results.map((r) => r.status)).toEqual(['ok', 'used', 'used']);
    }
    one.close();
    two.close();
  });
});
