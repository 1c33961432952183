import { copyFileSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from '@jest/globals';
import Database from 'better-sqlite3';
import { ContextInputSchema, contextSecrets, hashContextPasswords } from '../model/context.js';
import { ClusterDefinitionSchema } from '../model/definition.js';
import type { ClusterEvent, PublishClusterInput, PublishedInstance, PublishedService, PublishServiceInput } from '../model/read-model.js';
import type { InstanceState } from '../model/status.js';
import { DuplicateKeyError, InvalidCursorError, openSqliteStore, QuotaExceededError, type ContextVersionInput, type Store } from '../store/index.js';
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
  it('round-trips definitions, clusters and clouds through a file', async () => {
    const file = path.join(dir, 'nested', 'round-trip.sqlite');
    let store = await openSqliteStore(file);
    const def = await store.createDefinition({ name: definition.name, definition });
    expect(def.id).toMatch(/^def-[0-9a-f]{12}$/);
    expect(await store.getDefinition(def.id)).toEqual(def);
    expect(await store.getDefinition('def-000000000000')).toBeUndefined();

    const c = await store.createCluster({ id: 't3-box-abc123', name: 't3-box', definitionId: def.id, cloud: 'sim', owner: 'alice' });
    expect(c.createdAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    // The pinned context versions are kept with the row, so a retried create starts the workflow with the same ones.
    const pins = { workers: { id: 'ctx-0123456789ab', version: 3, repositories: ['alice.cern.ch'], minRevision: { 'alice.cern.ch': 7 } } };
    const pinned = await store.createCluster({ id: 't3-box-pin001', name: 't3-box', definitionId: def.id, cloud: 'sim', contexts: pins });
    await store.upsertCloud({ name: 'sim', kind: 'sim', offerings: [{ id: 'small', name: 'small', cpus: 1, memoryMiB: 2048, diskGiB: 20 }] });
    await store.upsertCloud({ name: 'sim', kind: 'sim', offerings: [{ id: 'large', name: 'large', cpus: 8, memoryMiB: 16384, diskGiB: 80 }] });
    await store.upsertCloud({ name: 'ec2', kind: 'ec2', offerings: [] });
    await store.close();

    store = await openSqliteStore(file); // survives a reopen, tables are not recreated
    expect(await store.listDefinitions()).toEqual([def]);
    expect((await store.getDefinition(def.id))?.definition).toEqual(definition);
    expect(await store.getCluster(c.id)).toEqual(c);
    expect((await store.getCluster(pinned.id))?.contexts).toEqual(pins);
    expect(await store.deleteCluster(pinned.id)).toBe(true);
    expect(await store.listClusters()).toEqual([c]);
    expect((await store.listClouds()).map((x) => x.name)).toEqual(['ec2', 'sim']);
    expect((await store.getCloud('sim'))?.offerings.map((o) => o.id)).toEqual(['large']);
    expect(await store.getCloud('nope')).toBeUndefined();
    await expect(store.ping()).resolves.toBeUndefined();

    expect(await store.deleteCluster(c.id)).toBe(true);
    expect(await store.deleteCluster(c.id)).toBe(false);
    expect(await store.listClusters()).toEqual([]);
    await store.close();
  });

  it('keeps idempotency keys unique and finds clusters by key', async () => {
    const store = await openSqliteStore(':memory:');
    const def = await store.createDefinition({ name: definition.name, definition });
    const a = await store.createCluster({ id: 'a-000001', name: 'a', definitionId: def.id, cloud: 'sim', idempotencyKey: 'k1', requestHash: 'h1' });
    expect(await store.findClusterByIdempotencyKey('k1')).toEqual(a);
    expect(await store.findClusterByIdempotencyKey('k2')).toBeUndefined();

    const dupKey = () => store.createCluster({ id: 'a-000002', name: 'a', definitionId: def.id, cloud: 'sim', idempotencyKey: 'k1' });
    await expect(dupKey()).rejects.toThrow(DuplicateKeyError);
    await expect(dupKey()).rejects.toMatchObject({ field: 'idempotencyKey' });
    try {
      await store.createCluster({ id: 'a-000001', name: 'a', definitionId: def.id, cloud: 'sim' });
      throw new Error('expected a duplicate id');
    } catch (err) {
      expect(err).toBeInstanceOf(DuplicateKeyError);
      expect((err as DuplicateKeyError).field).toBe('id');
    }
    // Clusters without a key do not collide with each other (NULLs are distinct).
    await store.createCluster({ id: 'b-000001', name: 'b', definitionId: def.id, cloud: 'sim' });
    await store.createCluster({ id: 'b-000002', name: 'b', definitionId: def.id, cloud: 'sim' });
    expect(await store.listClusters()).toHaveLength(3);
    // A failed insert wrote nothing.
    expect(await store.getCluster('a-000002')).toBeUndefined();
    await store.close();
  });

  it('refuses clusters of unknown definitions', async () => {
    const store = await openSqliteStore(':memory:');
    await expect(store.createCluster({ id: 'x-000001', name: 'x', definitionId: 'def-missing', cloud: 'sim' })).rejects.toMatchObject({ message: expect.stringMatching(/FOREIGN KEY/) });
    await store.close();
  });
});

describe('a store file made before migrations', () => {
  // Made by the store code of before migrations (the synchronous store): test/fixtures/store/README.md says how.
  const fixture = path.join(import.meta.dirname, 'fixtures', 'store', 'before-migrations.sqlite');
  const key = Buffer.alloc(32, 7);
  const cid = 'old-t3-abc123';

  it('is adopted by the baseline migration: everything it held reads back, and it takes new writes', async () => {
    const file = path.join(dir, 'adopted', 'cloudgate.sqlite');
    mkdirSync(path.dirname(file), { recursive: true });
    copyFileSync(fixture, file);
    const store = await openSqliteStore(file, { secretsKey: key });

    const [def] = await store.listDefinitions();
    expect(def).toMatchObject({ name: 'old-t3', owner: 'alice' });
    expect(await store.getCluster(cid)).toMatchObject({ definitionId: def.id, owner: 'alice', idempotencyKey: 'alice k-1', requestHash: 'h-1', createdAt: '2030-01-01T00:00:01.000Z' });
    expect((await store.findClusterByIdempotencyKey('alice k-1'))?.id).toBe(cid);
    const [ctx] = await store.listContexts();
    expect(ctx).toMatchObject({ name: 'old-ctx', version: 2, owner: 'alice' });
    expect(await store.getContextSecrets(ctx.id, 1)).toEqual({ TOKEN: 'v1-secret' });
    expect(await store.getContextSecrets(ctx.id, 2)).toEqual({ TOKEN: 'v2-secret' });
    expect(await store.getOwnerQuota('alice')).toEqual({ owner: 'alice', quota: { maxInstances: 10, maxClusters: 2, maxCpus: 20 }, updatedAt: '2030-01-01T00:00:00.000Z' });
    expect(await store.quotaUsage('alice')).toEqual({ instances: 2, clusters: 1, cpus: 4 });
    expect(await store.getCloud('sim')).toMatchObject({ kind: 'sim', images: ['cernvm4'], quota: { instances: 5 } });
    expect(await store.capacityUsage('sim')).toEqual({ instances: 1, cpus: 2, memoryMiB: 2048 });
    expect(await store.getClusterView(cid)).toMatchObject({ seq: 3, state: 'DEPLOYING' });
    expect((await store.listInstances(cid, { limit: 10 })).items.map((i) => [i.id, i.state, i.cloudInstanceId])).toEqual([
      [`${cid}-workers-0`, 'READY', 'sim-0'],
      [`${cid}-workers-1`, 'BOOTING', 'sim-1'],
    ]);
    expect((await store.listEvents(cid, { limit: 10 })).items.map((e) => e.message)).toEqual(['deploying', 'workers-0 ready']);
    const [token] = await store.listApiTokens('alice');
    expect(token.revokedAt).toBe('2030-01-01T00:02:00.000Z');
    expect((await store.listAudit({ limit: 10 })).items).toEqual([
      { id: 1, at: '2030-01-01T00:00:01.000Z', owner: 'alice', role: 'user', route: 'POST /v1/clusters', target: cid, result: 202 },
    ]);
    expect(await store.takePairing('AAAAAABBBBBB', new Date('2030-01-01T00:01:00.000Z'))).toEqual({ status: 'ok', contextId: ctx.id, version: 2 });

    // New writes continue where the old ones stopped: versions, seqs, keys, quotas, the audit log's ids.
    expect(await store.updateContext(ctx.id, { name: 'old-ctx', context: ctx.context, secrets: { TOKEN: 'v3-secret' } })).toMatchObject({ version: 3 });
    expect(await store.publishCluster({ clusterId: cid, seq: 3, observedAt: '2030-01-01T00:01:00.000Z', state: 'READY', services: [], events: [] })).toBe(false);
    expect(await store.publishCluster({ clusterId: cid, seq: 4, observedAt: '2030-01-01T00:03:00.000Z', state: 'READY', services: [], events: [{ at: '2030-01-01T00:03:00.000Z', kind: 'state', message: 'ready' }] })).toBe(true);
    expect((await store.listEvents(cid, { limit: 10 })).items.map((e) => e.message)).toEqual(['deploying', 'workers-0 ready', 'ready']);
    await expect(store.createCluster({ id: 'other-000001', name: 'other', definitionId: def.id, cloud: 'sim', idempotencyKey: 'alice k-1' })).rejects.toThrow(DuplicateKeyError);
    const claim = { owner: 'alice', services: [{ service: 'workers', instances: 9, cpus: 2 }] };
    await expect(store.createCluster({ id: 'big-000001', name: 'big', definitionId: def.id, cloud: 'sim', owner: 'alice' }, { claim, defaultQuota: { maxInstances: 100, maxClusters: 10, maxCpus: 100 } })).rejects.toThrow(
      QuotaExceededError,
    );
    expect((await store.appendAudit({ at: '2030-01-01T00:04:00.000Z', owner: 'alice', role: 'user', route: 'DELETE /v1/clusters/:id', target: cid, result: 202 })).id).toBe(2);
    await store.close();

    // The migrations are recorded: a second open runs none, and the file still reads the same.
    const db = new Database(file, { readonly: true });
    expect(db.prepare('SELECT name FROM kysely_migration ORDER BY name').all()).toEqual([{ name: '0001-baseline' }, { name: '0002-pin-lookup-misses' }, { name: '0003-event-writers' }]);
    db.close();
    const again = await openSqliteStore(file, { secretsKey: key });
    expect((await again.getContext(ctx.id))?.version).toBe(3);
    await again.close();
  });
});

describe('token secret', () => {
  it('prefers the configured secret', async () => {
    expect(loadTokenSecret({ dataDir: path.join(dir, 'unused'), tokenSecret: 'configured-secret-0123' })).toBe('configured-secret-0123');
  });

  it('creates <dataDir>/token-secret once, mode 0600, and reuses it', async () => {
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

  it('leaves the list, refuses updates, keeps every version and its secrets (through a reopen)', async () => {
    const file = path.join(dir, 'soft-delete', 'cloudgate.sqlite');
    let store = await openSqliteStore(file, { secretsKey: key });
    const a = await store.createContext(version('a', { K: 'v1' }));
    const a2 = await store.updateContext(a.id, version('a2', { K: 'v2' }));
    const b = await store.createContext(version('b', {}));
    const at = new Date('2030-01-02T03:04:05.678Z');
    const deletedAt = at.toISOString();

    expect(await store.deleteContext(a.id, at)).toBe(true);
    expect(await store.deleteContext(a.id)).toBe(false); // already deleted: the time stays the first
    expect(await store.deleteContext('ctx-000000000000')).toBe(false);
    await store.close();

    store = await openSqliteStore(file, { secretsKey: key });
    expect(await store.listContexts()).toEqual([b]);
    expect(await store.getContext(a.id)).toEqual({ ...a2, deletedAt });
    expect(await store.getContext(a.id, 1)).toEqual({ ...a, deletedAt });
    expect(await store.listContextVersions(a.id)).toEqual([
      { ...a, deletedAt },
      { ...a2, deletedAt },
    ]);
    expect(await store.getContextSecrets(a.id, 1)).toEqual({ K: 'v1' });
    expect(await store.getContextSecrets(a.id, 2)).toEqual({ K: 'v2' });
    expect(await store.updateContext(a.id, version('a3', {}))).toBeUndefined();
    expect(await store.listContextVersions(a.id)).toHaveLength(2);
    expect(await store.getContext(b.id)).not.toHaveProperty('deletedAt');
    await store.close();
  });

  it('adds deleted_at to a contexts table made before contexts could be deleted', async () => {
    const file = path.join(dir, 'old-contexts', 'cloudgate.sqlite');
    await (await openSqliteStore(file, { secretsKey: key })).close(); // makes the folder and the other tables
    const db = new Database(file);
    // As a store from before migrations made them: without its tables, and without the migrations' record.
    db.exec('DROP TABLE pairings; DROP TABLE context_versions; DROP TABLE contexts; DROP TABLE kysely_migration; DROP TABLE kysely_migration_lock');
    db.exec(`CREATE TABLE contexts (id TEXT PRIMARY KEY, created_at TEXT NOT NULL);
      CREATE TABLE context_versions (context_id TEXT NOT NULL REFERENCES contexts(id), version INTEGER NOT NULL, name TEXT NOT NULL,
        context TEXT NOT NULL, secrets TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (context_id, version));
      INSERT INTO contexts VALUES ('ctx-0123456789ab', '2020-01-01T00:00:00.000Z');
      INSERT INTO context_versions VALUES ('ctx-0123456789ab', 1, 'old', '{"name":"old"}', 'v1:', '2020-01-01T00:00:00.000Z');`);
    db.close();

    const store = await openSqliteStore(file, { secretsKey: key });
    expect(await store.getContext('ctx-0123456789ab')).toEqual({
      id: 'ctx-0123456789ab',
      version: 1,
      name: 'old',
      context: { name: 'old' },
      createdAt: '2020-01-01T00:00:00.000Z',
    });
    expect(await store.deleteContext('ctx-0123456789ab')).toBe(true);
    expect((await store.getContext('ctx-0123456789ab'))?.deletedAt).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(await store.listContexts()).toEqual([]);
    await store.close();
  });
});

describe('pairings', () => {
  const key = Buffer.alloc(32, 6);
  const t0 = new Date('2030-01-01T12:00:00.000Z');
  const after = (ms: number): Date => new Date(t0.getTime() + ms);
  const ttl = 5 * 60_000;
  const setup = async (file = ':memory:') => {
    const store = await openSqliteStore(file, { secretsKey: key });
    const parsed = ContextInputSchema.parse({ name: 'p', repositories: ['alice.cern.ch'] });
    const ctx = await store.createContext({ name: 'p', context: hashContextPasswords(parsed), secrets: {} });
    const pair = (pin: string, createdAt: Date, version = 1) =>
      store.createPairing({ pin, contextId: ctx.id, version, createdAt, expiresAt: new Date(createdAt.getTime() + ttl) });
    return { store, ctx, pair };
  };

  it('is taken once: ok, then used; unknown PINs are unknown', async () => {
    const { store, ctx, pair } = await setup();
    expect(await pair('012345', t0)).toEqual({ pin: '012345', contextId: ctx.id, version: 1, createdAt: t0.toISOString(), expiresAt: after(ttl).toISOString() });
    // A live PIN is not handed out twice.
    expect(await pair('012345', after(1_000))).toBeUndefined();
    expect(await store.takePairing('012345', after(2_000))).toEqual({ status: 'ok', contextId: ctx.id, version: 1 });
    expect(await store.takePairing('012345', after(3_000))).toEqual({ status: 'used', usedAt: after(2_000).toISOString() });
    expect(await store.takePairing('999999', after(3_000))).toEqual({ status: 'unknown' });
    // A used PIN may be issued again, and is then live again.
    expect(await pair('012345', after(4_000))).toMatchObject({ pin: '012345', createdAt: after(4_000).toISOString() });
    expect(await store.takePairing('012345', after(5_000))).toEqual({ status: 'ok', contextId: ctx.id, version: 1 });
    await store.close();
  });

  it('expires at expiresAt; an expired PIN may be issued again; old ones are purged', async () => {
    const { store, ctx, pair } = await setup();
    await pair('111111', t0);
    await pair('222222', t0);
    expect(await store.takePairing('111111', after(ttl - 1))).toMatchObject({ status: 'ok' });
    expect(await store.takePairing('222222', after(ttl))).toEqual({ status: 'expired', expiresAt: after(ttl).toISOString() });
    // Expired, not used: a failed take does not mark it used.
    expect(await store.takePairing('222222', after(ttl + 1))).toEqual({ status: 'expired', expiresAt: after(ttl).toISOString() });
    expect(await pair('222222', after(ttl - 1))).toBeUndefined(); // still live at that time
    expect(await pair('222222', after(ttl))).toMatchObject({ pin: '222222' });
    expect(await store.takePairing('222222', after(ttl + 1))).toEqual({ status: 'ok', contextId: ctx.id, version: 1 });

    await pair('333333', t0);
    // 111111 (used) and 333333 expired at ttl, not before it; the reissued 222222 lives on.
    expect(await store.purgePairings(after(ttl))).toBe(0);
    expect(await store.purgePairings(after(ttl + 1))).toBe(2);
    expect(await store.takePairing('333333', after(ttl + 2))).toEqual({ status: 'unknown' });
    expect(await store.takePairing('222222', after(ttl + 2))).toEqual({ status: 'used', usedAt: after(ttl + 1).toISOString() });
    await store.close();
  });

  it('refuses a pairing for a version that does not exist', async () => {
    const { store, pair } = await setup();
    await expect(pair('444444', t0, 2)).rejects.toMatchObject({ message: expect.stringMatching(/FOREIGN KEY/) });
    expect(await store.takePairing('444444', t0)).toEqual({ status: 'unknown' });
    await store.close();
  });

  it('a lookup half names one live pairing; its budget-th charged miss uses it up; live pairings are counted per owner', async () => {
    const store = await openSqliteStore(':memory:', { secretsKey: key });
    const parsed = ContextInputSchema.parse({ name: 'p', repositories: ['alice.cern.ch'] });
    const ctx = await store.createContext({ name: 'p', context: hashContextPasswords(parsed), secrets: {} }, 'frank');
    const other = await store.createContext({ name: 'q', context: hashContextPasswords(parsed), secrets: {} }, 'grace');
    const pair = (pin: string, createdAt = t0, contextId = ctx.id) =>
      store.createPairing({ pin, lookup: pin.slice(0, 6), contextId, version: 1, createdAt, expiresAt: new Date(createdAt.getTime() + ttl) });
    expect(await pair('AAAAAA111111')).toMatchObject({ pin: 'AAAAAA111111' });
    expect(await pair('AAAAAA222222')).toBeUndefined(); // the lookup half is a live pairing's
    expect(await pair('BBBBBB111111')).toMatchObject({ pin: 'BBBBBB111111' });
    expect(await pair('CCCCCC111111', t0, other.id)).toBeDefined();
    expect(await store.livePairingExpiries('frank', after(1))).toEqual([after(ttl).toISOString(), after(ttl).toISOString()]);
    expect(await store.livePairingExpiries('grace', after(1))).toHaveLength(1);
    expect(await store.livePairingExpiries('frank', after(ttl))).toEqual([]);

    expect(await store.chargePairingMiss('ZZZZZZ', after(1), 3)).toBe(false);
    expect(await store.chargePairingMiss('AAAAAA', after(1), 3)).toBe(true);
    expect(await store.chargePairingMiss('AAAAAA', after(2), 3)).toBe(true);
    expect(await store.takePairing('BBBBBB111111', after(3))).toMatchObject({ status: 'ok' }); // others are not charged
    expect(await store.chargePairingMiss('AAAAAA', after(3), 3)).toBe(true); // the third: used up
    expect(await store.takePairing('AAAAAA111111', after(4))).toEqual({ status: 'used', usedAt: after(3).toISOString() });
    expect(await store.chargePairingMiss('AAAAAA', after(5), 3)).toBe(false);
    expect(await store.livePairingExpiries('frank', after(5))).toEqual([]);
    // Used up, the lookup half is free again; a reissued PIN starts with a full budget.
    expect(await pair('AAAAAA333333', after(6))).toBeDefined();
    expect(await store.chargePairingMiss('AAAAAA', after(7), 2)).toBe(true);
    expect(await store.takePairing('AAAAAA333333', after(8))).toMatchObject({ status: 'ok' });
    // A deleted context's pairings do not count against its owner.
    await store.deleteContext(other.id, after(9));
    expect(await store.livePairingExpiries('grace', after(10))).toEqual([]);
    await store.close();
  });

  it('of two takes on one PIN, even through two connections to one file, exactly one is ok', async () => {
    const file = path.join(dir, 'pairings', 'cloudgate.sqlite');
    const { store: one, pair } = await setup(file);
    const two = await openSqliteStore(file, { secretsKey: key });
    for (const [i, pin] of ['000001', '000002', '000003', '000004'].entries()) {
      await pair(pin, t0);
      const [first, second] = i % 2 ? [two, one] : [one, two];
      const results = [await first.takePairing(pin, after(1_000)), await second.takePairing(pin, after(1_000)), await one.takePairing(pin, after(1_001))];
      expect(results.map((r) => r.status)).toEqual(['ok', 'used', 'used']);
    }
    await one.close();
    await two.close();
  });
});

describe('read model', () => {
  const cid = 'rm-abc123';
  const at = (s: number) => new Date(Date.UTC(2030, 0, 1, 12, 0, s)).toISOString();
  const summary = (name: string, extra: Partial<PublishedService> = {}): PublishedService => ({
    name,
    state: 'DEPLOYING',
    desired: 2,
    ready: 0,
    replacements: 0,
    ...extra,
  });
  const inst = (service: string, ordinal: number, state: InstanceState = 'BOOTING', extra: Partial<PublishedInstance> = {}): PublishedInstance => ({
    id: `${cid}-${service}-${ordinal}`,
    name: `${cid}-${service}-${ordinal}`,
    service,
    ordinal,
    state,
    cloud: 'sim',
    ...extra,
  });
  const event = (message: string, extra: Partial<ClusterEvent> = {}): ClusterEvent => ({ at: at(0), kind: 'state', message, ...extra });
  const clusterPublish = (seq: number, extra: Partial<PublishClusterInput> = {}): PublishClusterInput => ({
    clusterId: cid,
    seq,
    observedAt: at(seq),
    state: 'DEPLOYING',
    services: [summary('proxy'), summary('workers', { state: 'WAITING' })],
    events: [],
    ...extra,
  });
  const servicePublish = (service: string, seq: number, extra: Partial<PublishServiceInput> = {}): PublishServiceInput => ({
    clusterId: cid,
    service,
    seq,
    observedAt: at(seq),
    summary: summary(service),
    upserts: [],
    removed: [],
    events: [],
    ...extra,
  });
  /** Every page of a list, following `next`; also checks that no page is over the limit. */
  const allPages = async <T>(list: (cursor?: string) => Promise<{ items: T[]; next?: string }>, limit: number): Promise<T[][]> => {
    const pages: T[][] = [];
    let cursor: string | undefined;
    do {
      const page = await list(cursor);
      expect(page.items.length).toBeLessThanOrEqual(limit);
      pages.push(page.items);
      cursor = page.next;
    } while (cursor !== undefined);
    return pages;
  };
  const ids = (items: { id: string }[]) => items.map((i) => i.id);
  const messages = async (store: Store, clusterId = cid) => (await store.listEvents(clusterId, { limit: 1000 })).items.map((e) => e.message);

  it('has no views, instances or events before the first publish', async () => {
    const store = await openSqliteStore(':memory:');
    expect(await store.getClusterView(cid)).toBeUndefined();
    expect(await store.getServiceViews(cid)).toEqual([]);
    expect(await store.listInstances(cid, { limit: 10 })).toEqual({ items: [] });
    expect(await store.listEvents(cid, { limit: 10 })).toEqual({ items: [] });
    await store.close();
  });

  it('keeps provider id and times an update leaves out (a workflow does not carry them across continue-as-new), and finds provider ids by instance', async () => {
    const store = await openSqliteStore(':memory:');
    const full = { cloudInstanceId: 'i-0123', createdAt: at(1), readyAt: at(2) };
    expect(await store.publishService(servicePublish('workers', 1, { upserts: [inst('workers', 0, 'READY', full), inst('workers', 1)] }))).toBe(true);
    // The next run knows only ordinal and state; the instance then fails.
    expect(await store.publishService(servicePublish('workers', 2, { upserts: [inst('workers', 0, 'FAILED', { message: 'vanished from the cloud' })] }))).toBe(true);
    expect((await store.listInstances(cid, { limit: 10 })).items[0]).toMatchObject({ ...full, state: 'FAILED', message: 'vanished from the cloud' });
    expect(await store.cloudInstanceIds(cid, [`${cid}-workers-0`, `${cid}-workers-1`, `${cid}-workers-9`])).toEqual({ [`${cid}-workers-0`]: 'i-0123' });
    expect(await store.cloudInstanceIds('other-cluster', [`${cid}-workers-0`])).toEqual({});
    await store.close();
  });

  it("tells where a phone-home's instance stands: its state, REMOVED below a later published ordinal, else unknown", async () => {
    const store = await openSqliteStore(':memory:');
    const id = (n: number) => `${cid}-workers-${n}`;
    expect(await store.instanceStanding(cid, 'workers', id(0), 0)).toBeUndefined();
    expect(await store.publishService(servicePublish('workers', 1, { upserts: [inst('workers', 0, 'READY'), inst('workers', 1), inst('workers', 2, 'FAILED')] }))).toBe(true);
    expect(await store.publishService(servicePublish('workers', 2, { removed: [id(1)] }))).toBe(true);
    expect(await store.instanceStanding(cid, 'workers', id(0), 0)).toBe('READY');
    expect(await store.instanceStanding(cid, 'workers', id(1), 1)).toBe('REMOVED');
    expect(await store.instanceStanding(cid, 'workers', id(2), 2)).toBe('FAILED');
    expect(await store.instanceStanding(cid, 'workers', id(3), 3)).toBeUndefined(); // may not be published yet
    expect(await store.instanceStanding(cid, 'proxy', `${cid}-proxy-0`, 0)).toBeUndefined();
    await store.close();
  });

  it('keeps a cluster publish only if its seq is higher; a rejected one changes nothing and appends no events', async () => {
    const store = await openSqliteStore(':memory:');
    expect(await store.publishCluster(clusterPublish(2, { state: 'DEPLOYING', events: [event('deploying')] }))).toBe(true);
    const first = await store.getClusterView(cid);
    expect(first).toEqual({
      clusterId: cid,
      seq: 2,
      observedAt: at(2),
      state: 'DEPLOYING',
      services: [summary('proxy'), summary('workers', { state: 'WAITING' })],
    });
    // Lower and equal seqs: a late write and a retried one.
    expect(await store.publishCluster(clusterPublish(1, { state: 'FAILED', message: 'late', services: [], events: [event('late')] }))).toBe(false);
    expect(await store.publishCluster(clusterPublish(2, { state: 'READY', events: [event('retried')] }))).toBe(false);
    expect(await store.getClusterView(cid)).toEqual(first);
    expect(await messages(store)).toEqual(['deploying']);

    expect(await store.publishCluster(clusterPublish(5, { state: 'DEGRADED', message: 'workers lost 1 of 2', events: [event('degraded')] }))).toBe(true);
    expect(await store.getClusterView(cid)).toMatchObject({ seq: 5, observedAt: at(5), state: 'DEGRADED', message: 'workers lost 1 of 2' });
    // An absent message clears the one before.
    expect(await store.publishCluster(clusterPublish(6, { state: 'READY' }))).toBe(true);
    expect(await store.getClusterView(cid)).not.toHaveProperty('message');
    expect(await messages(store)).toEqual(['deploying', 'degraded']);
    await store.close();
  });

  it('keeps a service publish only if its seq is higher than that service’s, whatever the cluster’s or other services’ seqs', async () => {
    const store = await openSqliteStore(':memory:');
    expect(await store.publishCluster(clusterPublish(10))).toBe(true);
    expect(await store.publishService(servicePublish('proxy', 1, { upserts: [inst('proxy', 0)], events: [event('proxy created')] }))).toBe(true);
    expect(await store.publishService(servicePublish('workers', 1, { upserts: [inst('workers', 0)] }))).toBe(true);
    expect(await store.publishService(servicePublish('proxy', 3, { summary: summary('proxy', { state: 'READY', ready: 1 }), upserts: [inst('proxy', 0, 'READY')] }))).toBe(true);

    const before = { views: await store.getServiceViews(cid), instances: await store.listInstances(cid, { limit: 100 }), events: (await messages(store)) };
    // A stale publish with a different summary, an upsert, a removal and events: none of it lands.
    const stale = servicePublish('proxy', 2, {
      summary: summary('proxy', { state: 'FAILED', message: 'stale' }),
      upserts: [inst('proxy', 0, 'FAILED'), inst('proxy', 1)],
      removed: [`${cid}-proxy-0`],
      events: [event('stale')],
    });
    expect(await store.publishService(stale)).toBe(false);
    expect(await store.publishService({ ...stale, seq: 3 })).toBe(false);
    expect({ views: await store.getServiceViews(cid), instances: await store.listInstances(cid, { limit: 100 }), events: (await messages(store)) }).toEqual(before);

    expect(await store.getServiceViews(cid)).toEqual([
      { clusterId: cid, service: 'proxy', seq: 3, observedAt: at(3), summary: summary('proxy', { state: 'READY', ready: 1 }) },
      { clusterId: cid, service: 'workers', seq: 1, observedAt: at(1), summary: summary('workers') },
    ]);
    await store.close();
  });

  it('upserts instances whole, then removes them, only among the publishing service’s own', async () => {
    const store = await openSqliteStore(':memory:');
    const made = inst('workers', 0, 'BOOTING', { cloudInstanceId: 'i-0', createdAt: at(1), message: 'booting' });
    expect(await store.publishService(servicePublish('workers', 1, { upserts: [made, inst('workers', 1)] }))).toBe(true);
    expect(await store.publishService(servicePublish('proxy', 1, { upserts: [inst('proxy', 0)] }))).toBe(true);
    expect((await store.listInstances(cid, { limit: 10, service: 'workers' })).items).toEqual([made, inst('workers', 1)]);

    // An upsert replaces the whole instance: fields it leaves out are gone (the message here).
    const ready = inst('workers', 0, 'READY', { cloudInstanceId: 'i-0', createdAt: at(1), readyAt: at(2) });
    expect(await store.publishService(servicePublish('workers', 2, { upserts: [ready] }))).toBe(true);
    expect((await store.listInstances(cid, { limit: 10, service: 'workers' })).items).toEqual([ready, inst('workers', 1)]);

    // Removal: the service's own instance goes; another service's id in `removed` is left alone.
    expect(await store.publishService(servicePublish('workers', 3, { removed: [`${cid}-workers-1`, `${cid}-proxy-0`, `${cid}-workers-99`] }))).toBe(true);
    expect(ids((await store.listInstances(cid, { limit: 10 })).items)).toEqual([`${cid}-proxy-0`, `${cid}-workers-0`]);

    // A replacement gets a new ordinal; upsert and removal in one publish.
    expect(await store.publishService(servicePublish('workers', 4, { upserts: [inst('workers', 2)], removed: [`${cid}-workers-0`] }))).toBe(true);
    expect(ids((await store.listInstances(cid, { limit: 10, service: 'workers' })).items)).toEqual([`${cid}-workers-2`]);
    // Clusters do not see each other's instances.
    expect(await store.listInstances('other-abc123', { limit: 10 })).toEqual({ items: [] });
    await store.close();
  });

  it('pages instances by service, then ordinal (numerically), with filters and cursors that survive inserts', async () => {
    const store = await openSqliteStore(':memory:');
    const states: InstanceState[] = ['READY', 'BOOTING', 'READY', 'FAILED'];
    const workers = Array.from({ length: 12 }, (_, n) => inst('workers', n, states[n % states.length]));
    // Published out of order, in two batches: the order comes from the store, not the publish.
    expect(await store.publishService(servicePublish('workers', 1, { upserts: workers.slice(6).reverse() }))).toBe(true);
    expect(await store.publishService(servicePublish('workers', 2, { upserts: workers.slice(0, 6) }))).toBe(true);
    expect(await store.publishService(servicePublish('proxy', 1, { upserts: [inst('proxy', 0, 'READY'), inst('proxy', 1, 'READY')] }))).toBe(true);
    const all = [`${cid}-proxy-0`, `${cid}-proxy-1`, ...workers.map((w) => w.id)];

    for (const limit of [1, 5, 14, 100]) {
      const pages = await allPages((cursor) => store.listInstances(cid, { limit, cursor }), limit);
      expect(pages.flat().map((i) => i.id)).toEqual(all);
      expect(pages.length).toBe(Math.max(1, Math.ceil(all.length / limit)));
    }
    // No `next` on a page that happens to end exactly at the last item.
    expect((await store.listInstances(cid, { limit: all.length })).next).toBeUndefined();

    const readyWorkers = workers.filter((w) => w.state === 'READY').map((w) => w.id);
    expect((await allPages((cursor) => store.listInstances(cid, { service: 'workers', state: 'READY', limit: 2, cursor }), 2)).flat().map((i) => i.id)).toEqual(readyWorkers);
    expect((await store.listInstances(cid, { state: 'READY', limit: 100 })).items.map((i) => i.id)).toEqual([`${cid}-proxy-0`, `${cid}-proxy-1`, ...readyWorkers]);
    expect(await store.listInstances(cid, { service: 'nope', limit: 100 })).toEqual({ items: [] });
    expect(await store.listInstances(cid, { state: 'TERMINATING', limit: 100 })).toEqual({ items: [] });

    // A page boundary holds while instances come and go: the next page starts after the last item seen.
    const first = await store.listInstances(cid, { service: 'workers', limit: 5 });
    expect(ids(first.items)).toEqual(workers.slice(0, 5).map((w) => w.id));
    expect(await store.publishService(servicePublish('workers', 3, { upserts: [inst('workers', 12)], removed: [workers[0].id, workers[5].id] }))).toBe(true);
    const second = await store.listInstances(cid, { service: 'workers', limit: 5, cursor: first.next });
    expect(ids(second.items)).toEqual([6, 7, 8, 9, 10].map((n) => `${cid}-workers-${n}`));
    await store.close();
  });

  it('refuses cursors it did not make', async () => {
    const store = await openSqliteStore(':memory:');
    const bad = ['', 'not-base64!', Buffer.from('{"a":1}').toString('base64url'), Buffer.from('["w"]').toString('base64url'), Buffer.from('[1.5]').toString('base64url')];
    for (const cursor of bad) {
      await expect(store.listInstances(cid, { limit: 10, cursor })).rejects.toThrow(InvalidCursorError);
      await expect(store.listEvents(cid, { limit: 10, cursor })).rejects.toThrow(InvalidCursorError);
    }
    await store.close();
  });

  it('appends the events of each accepted publish once, in order, and lists them oldest first with cursors', async () => {
    const store = await openSqliteStore(':memory:');
    expect(await store.publishCluster(clusterPublish(1, { events: [event('e1'), event('e2', { kind: 'scale', service: 'workers' })] }))).toBe(true);
    expect(await store.publishService(servicePublish('workers', 1, { events: [event('e3', { kind: 'replace', service: 'workers', instance: `${cid}-workers-0` })] }))).toBe(true);
    // Retried publishes (same seq) append nothing.
    expect(await store.publishCluster(clusterPublish(1, { events: [event('e1'), event('e2')] }))).toBe(false);
    expect(await store.publishService(servicePublish('workers', 1, { events: [event('e3')] }))).toBe(false);
    expect(await store.publishCluster(clusterPublish(2, { events: [event('e4', { kind: 'teardown', at: at(9) })] }))).toBe(true);
    expect(await store.publishCluster({ ...clusterPublish(3), clusterId: 'other-abc123', events: [event('elsewhere')] })).toBe(true);

    const events = await store.listEvents(cid, { limit: 100 });
    expect(events).toEqual({
      items: [
        event('e1'),
        event('e2', { kind: 'scale', service: 'workers' }),
        event('e3', { kind: 'replace', service: 'workers', instance: `${cid}-workers-0` }),
        event('e4', { kind: 'teardown', at: at(9) }),
      ],
    });
    for (const limit of [1, 3, 4]) {
      expect((await allPages((cursor) => store.listEvents(cid, { limit, cursor }), limit)).flat()).toEqual(events.items);
    }
    // A cursor taken at the end of a page continues with what was appended after it.
    const page = await store.listEvents(cid, { limit: 3 });
    expect(await store.publishCluster(clusterPublish(4, { events: [event('e5')] }))).toBe(true);
    expect((await store.listEvents(cid, { limit: 3, cursor: page.next })).items.map((e) => e.message)).toEqual(['e4', 'e5']);
    expect(await messages(store, 'other-abc123')).toEqual(['elsewhere']);
    await store.close();
  });

  it('of two publishes with one seq, even through two connections to one file, exactly one is kept; views survive a reopen', async () => {
    const file = path.join(dir, 'read-model', 'cloudgate.sqlite');
    const one = await openSqliteStore(file);
    const two = await openSqliteStore(file);
    for (let seq = 1; seq <= 4; seq++) {
      const [first, second] = seq % 2 ? [two, one] : [one, two];
      const results = [
        await first.publishService(servicePublish('workers', seq, { upserts: [inst('workers', seq)], events: [event(`a${seq}`)] })),
        await second.publishService(servicePublish('workers', seq, { upserts: [inst('workers', seq + 100)], events: [event(`b${seq}`)] })),
      ];
      expect(results).toEqual([true, false]);
    }
    expect(await messages(two)).toEqual(['a1', 'a2', 'a3', 'a4']);
    expect(await one.publishCluster(clusterPublish(1))).toBe(true);
    await one.close();
    await two.close();

    const again = await openSqliteStore(file);
    expect(await again.getClusterView(cid)).toMatchObject({ seq: 1, state: 'DEPLOYING' });
    expect((await again.getServiceViews(cid)).map((v) => v.seq)).toEqual([4]);
    expect(ids((await again.listInstances(cid, { limit: 10 })).items)).toEqual([1, 2, 3, 4].map((n) => `${cid}-workers-${n}`));
    await again.close();
  });
});
