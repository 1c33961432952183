/**
 * The store contract: the same assertions on every engine the store runs on, as
 * test/cloud-contract.test.ts runs one list of assertions on every cloud. SQLite runs on a
 * temp file, PostgreSQL on a throwaway server of Debian's `postgresql` (test/peers/postgres.ts:
 * one server for this file, a fresh database for each test). Several Store instances opened
 * on one database race for what must be decided once: a quota's last room, an idempotency
 * key, a pairing's single use, a publish's seq, a capacity reservation, a context's next
 * version, the PIN lookup limit. On PostgreSQL each has its own pool (as separate API
 * replicas would); on SQLite stores of one process share the file's connection
 * (store/database.ts), and separate processes on one file are raced in
 * test/capacity-ledger.test.ts and test/quotas-audit.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import Database from 'better-sqlite3';
import { ContextInputSchema, hashContextPasswords } from '../model/context.js';
import { ClusterDefinitionSchema } from '../model/definition.js';
import type { ChangeView } from '../model/rolling.js';
import type { ClusterEvent, PublishedInstance, PublishedService, PublishServiceInput } from '../model/read-model.js';
import {
  DuplicateKeyError,
  InvalidCursorError,
  LivePairingLimitError,
  openPostgresStore,
  openSqliteStore,
  QuotaExceededError,
  type Store,
} from '../store/index.js';
import { startPostgresPeer, type PostgresPeer } from './peers/postgres.js';

const secretsKey = Buffer.alloc(32, 5);
const dir = mkdtempSync(path.join(tmpdir(), 'cloudgate-store-contract-'));
let pg: PostgresPeer | undefined;
let pgStartError: unknown;
afterAll(async () => {
  await pg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** One engine: how to make a fresh database, open stores on it, and run raw SQL in it. */
interface Engine {
  name: string;
  setup(): Promise<void>;
  /** A fresh database; `open()` opens another Store on it each time it is called. */
  fresh(): Promise<{ open(): Promise<Store>; raw(sql: string): Promise<void> }>;
}

let dbs = 0;
const ENGINES: Engine[] = [
  {
    name: 'SQLite',
    setup: async () => undefined,
    async fresh() {
      const file = path.join(dir, `db${++dbs}`, 'cloudgate.sqlite');
      return {
        open: () => openSqliteStore(file, { secretsKey }),
        raw: async (sql) => {
          const db = new Database(file);
          try {
            db.exec(sql);
          } finally {
            db.close();
          }
        },
      };
    },
  },
  {
    name: 'PostgreSQL',
    async setup() {
      if (pg || pgStartError) return;
      try {
        pg = await startPostgresPeer();
      } catch (err) {
        pgStartError = err;
      }
    },
    async fresh() {
      if (!pg) throw new Error(`the PostgreSQL peer did not start: ${(pgStartError as Error)?.message ?? 'unknown error'}`, { cause: pgStartError });
      const name = `contract${++dbs}`;
      await pg.createDatabase(name);
      const url = pg.url.replace(/\/[^/]+$/, `/${name}`);
      const peer = pg;
      return {
        open: () => openPostgresStore(url, { secretsKey, maxConnections: 4 }),
        raw: async (sql) => void (await peer.psql(sql, name)),
      };
    },
  },
];

const definition = ClusterDefinitionSchema.parse({
  name: 't3-box',
  services: [
    { name: 'proxy', image: 'cernvm4', offering: { cpus: 1, memoryMiB: 2048, diskGiB: 20 } },
    { name: 'workers', image: 'cernvm4', offering: { cpus: 4, memoryMiB: 8192, diskGiB: 40 }, min: 2, max: 10, dependsOn: ['proxy'] },
  ],
});
const context = hashContextPasswords(ContextInputSchema.parse({ name: 'ctx', repositories: ['alice.cern.ch'] }));
const t0 = new Date('2030-01-01T12:00:00.000Z');
const after = (ms: number) => new Date(t0.getTime() + ms);
const at = (s: number) => after(s * 1000).toISOString();
const cid = 'c1-abc123';
const brief = (name: string, extra: Partial<PublishedService> = {}): PublishedService => ({ name, state: 'DEPLOYING', desired: 2, ready: 0, replacements: 0, ...extra });
const inst = (service: string, ordinal: number, extra: Partial<PublishedInstance> = {}): PublishedInstance => ({
  id: `${cid}-${service}-${ordinal}`,
  name: `${cid}-${service}-${ordinal}`,
  service,
  ordinal,
  state: 'BOOTING',
  cloud: 'sim',
  ...extra,
});
const event = (message: string, extra: Partial<ClusterEvent> = {}): ClusterEvent => ({ at: at(0), kind: 'state', message, ...extra });
const servicePublish = (service: string, seq: number, extra: Partial<PublishServiceInput> = {}): PublishServiceInput => ({
  clusterId: cid,
  service,
  seq,
  observedAt: at(seq),
  summary: brief(service),
  upserts: [],
  removed: [],
  events: [],
  ...extra,
});

describe.each(ENGINES.map((e) => [e.name, e] as const))('store contract: %s', (_name, engine) => {
  beforeAll(() => engine.setup(), 120_000);

  /** A fresh database with one store open on it (closed after `f`). */
  async function withStore(f: (store: Store, db: Awaited<ReturnType<Engine['fresh']>>) => Promise<void>): Promise<void> {
    const db = await engine.fresh();
    const store = await db.open();
    try {
      await f(store, db);
    } finally {
      await store.close();
    }
  }

  it('keeps definitions, oldest first, soft-deleted out of the list', () =>
    withStore(async (store) => {
      const a = await store.createDefinition({ name: 'a', definition, owner: 'alice' });
      const b = await store.createDefinition({ name: 'b', definition });
      expect(await store.getDefinition(a.id)).toEqual(a);
      expect(await store.getDefinition('def-000000000000')).toBeUndefined();
      // Oldest first; two made in the same millisecond come by id.
      const byAge = [a, b].sort((x, y) => x.createdAt.localeCompare(y.createdAt) || x.id.localeCompare(y.id));
      expect((await store.listDefinitions()).map((d) => d.id)).toEqual(byAge.map((d) => d.id));
      expect(await store.deleteDefinition(a.id, t0)).toBe(true);
      expect(await store.deleteDefinition(a.id, t0)).toBe(false);
      expect(await store.listDefinitions()).toEqual([b]);
      expect(await store.getDefinition(a.id)).toEqual({ ...a, deletedAt: t0.toISOString() });
    }));

  it('keeps cluster ids and idempotency keys unique, refuses unknown definitions, and deletes a cluster with its reservation', () =>
    withStore(async (store) => {
      const def = await store.createDefinition({ name: 'a', definition });
      const c = await store.createCluster({ id: 'a-000001', name: 'a', definitionId: def.id, cloud: 'sim', owner: 'alice', idempotencyKey: 'alice k1', requestHash: 'h', windows: [] });
      expect(await store.getCluster(c.id)).toEqual(c);
      expect(await store.findClusterByIdempotencyKey('alice k1')).toEqual(c);
      await expect(store.createCluster({ id: 'a-000002', name: 'a', definitionId: def.id, cloud: 'sim', idempotencyKey: 'alice k1' })).rejects.toMatchObject({
        name: 'DuplicateKeyError',
        field: 'idempotencyKey',
      });
      await expect(store.createCluster({ id: 'a-000001', name: 'a', definitionId: def.id, cloud: 'sim' })).rejects.toMatchObject({ name: 'DuplicateKeyError', field: 'id' });
      // By message: a better-sqlite3 error thrown in a later test file of the same jest process is not an Error of this file's realm, and toThrow() says "did not throw".
      await expect(store.createCluster({ id: 'x-000001', name: 'x', definitionId: 'def-missing', cloud: 'sim' })).rejects.toMatchObject({ message: expect.stringMatching(/foreign key/i) });
      // Clusters without a key never collide (NULLs are distinct).
      await store.createCluster({ id: 'b-000001', name: 'b', definitionId: def.id, cloud: 'sim' });
      await store.createCluster({ id: 'b-000002', name: 'b', definitionId: def.id, cloud: 'sim' });
      expect((await store.listClusters()).map((x) => x.id)).toEqual(['a-000001', 'b-000001', 'b-000002']);
      expect((await store.clustersOfDefinition(def.id)).length).toBe(3);

      const claim = { owner: 'bob', services: [{ service: 'workers', instances: 3, cpus: 4 }] };
      await store.createCluster({ id: 'q-000001', name: 'q', definitionId: def.id, cloud: 'sim', owner: 'bob' }, { claim, defaultQuota: { maxInstances: 10, maxClusters: 5, maxCpus: 100 } });
      expect(await store.quotaUsage('bob')).toEqual({ instances: 3, clusters: 1, cpus: 12 });
      expect(await store.deleteCluster('q-000001')).toBe(true);
      expect(await store.deleteCluster('q-000001')).toBe(false);
      expect(await store.quotaUsage('bob')).toEqual({ instances: 0, clusters: 0, cpus: 0 });
    }));

  it('keeps context versions and their encrypted secrets; lists contexts in creation order; soft-deletes', () =>
    withStore(async (store) => {
      const made = [];
      for (const n of [1, 2, 3, 4, 5]) made.push(await store.createContext({ name: `c${n}`, context, secrets: { K: `v${n}` } }, 'alice'));
      // Created within the same millisecond or not, the list keeps their order (ids are random).
      expect((await store.listContexts()).map((c) => c.id)).toEqual(made.map((c) => c.id));
      const a = made[0];
      const a2 = await store.updateContext(a.id, { name: 'c1', context, secrets: { K: 'w' } });
      expect(a2).toMatchObject({ id: a.id, version: 2, owner: 'alice' });
      expect(await store.getContext(a.id)).toEqual(a2);
      expect(await store.getContext(a.id, 1)).toEqual(a);
      expect(await store.getContext(a.id, 9)).toBeUndefined();
      expect(await store.listContextVersions(a.id)).toEqual([a, a2]);
      expect(await store.getContextSecrets(a.id, 1)).toEqual({ K: 'v1' });
      expect(await store.getContextSecrets(a.id, 2)).toEqual({ K: 'w' });
      expect(await store.updateContext('ctx-000000000000', { name: 'x', context, secrets: {} })).toBeUndefined();
      expect(await store.deleteContext(a.id, t0)).toBe(true);
      expect(await store.deleteContext(a.id, t0)).toBe(false);
      expect(await store.updateContext(a.id, { name: 'c1', context, secrets: {} })).toBeUndefined();
      expect((await store.listContexts()).map((c) => c.id)).toEqual(made.slice(1).map((c) => c.id));
      expect(await store.getContextSecrets(a.id, 2)).toEqual({ K: 'w' });
    }));

  it('takes a pairing once; expired and used PINs fail; a lookup half names one live pairing; misses use it up; owners have a limit', () =>
    withStore(async (store) => {
      const ctx = await store.createContext({ name: 'p', context, secrets: {} }, 'frank');
      const ttl = 5 * 60_000;
      const pair = (pin: string, createdAt = t0, ownerLimit?: { owner: string; limit: number }) =>
        store.createPairing({ pin, lookup: pin.slice(0, 6), contextId: ctx.id, version: 1, createdAt, expiresAt: new Date(createdAt.getTime() + ttl), ownerLimit });
      expect(await pair('AAAAAA111111')).toMatchObject({ pin: 'AAAAAA111111', contextId: ctx.id, version: 1 });
      expect(await pair('AAAAAA222222')).toBeUndefined(); // its lookup half is live
      expect(await store.takePairing('AAAAAA111111', after(1000))).toEqual({ status: 'ok', contextId: ctx.id, version: 1 });
      expect(await store.takePairing('AAAAAA111111', after(2000))).toEqual({ status: 'used', usedAt: after(1000).toISOString() });
      expect(await store.takePairing('ZZZZZZ111111', after(2000))).toEqual({ status: 'unknown' });
      expect(await pair('BBBBBB111111')).toBeDefined();
      expect(await store.takePairing('BBBBBB111111', after(ttl))).toEqual({ status: 'expired', expiresAt: after(ttl).toISOString() });
      expect(await pair('BBBBBB111111', after(ttl))).toBeDefined(); // an expired PIN may be issued again

      expect(await pair('CCCCCC111111', after(ttl))).toBeDefined();
      for (let n = 1; n < 5; n++) expect(await store.chargePairingMiss('CCCCCC', after(ttl + n), 5)).toBe(true);
      expect(await store.chargePairingMiss('CCCCCC', after(ttl + 5), 5)).toBe(true); // the 5th uses it up
      expect(await store.chargePairingMiss('CCCCCC', after(ttl + 6), 5)).toBe(false);
      expect(await store.takePairing('CCCCCC111111', after(ttl + 7))).toEqual({ status: 'used', usedAt: after(ttl + 5).toISOString() });

      expect(await store.livePairingExpiries('frank', after(ttl + 8))).toEqual([after(2 * ttl).toISOString()]);
      await expect(pair('DDDDDD111111', after(ttl + 9), { owner: 'frank', limit: 1 })).rejects.toThrow(LivePairingLimitError);
      expect(await pair('DDDDDD111111', after(ttl + 9), { owner: 'frank', limit: 2 })).toBeDefined();
      expect(await store.purgePairings(after(3 * ttl))).toBe(4);
      expect(await store.takePairing('AAAAAA111111', after(3 * ttl))).toEqual({ status: 'unknown' });
    }));

  it('counts failed PIN lookups per client over a window; a right lookup is refunded', () =>
    withStore(async (store) => {
      const limit = { limit: 3, windowMs: 60_000 };
      const charges = [];
      for (let n = 0; n < 3; n++) charges.push(await store.chargePinLookup('10.0.0.1', after(n * 1000), limit));
      expect(charges.every((c) => 'charge' in c)).toBe(true);
      expect(await store.chargePinLookup('10.0.0.1', after(10_000), limit)).toEqual({ retryAfterSeconds: 50 });
      expect(await store.chargePinLookup('10.0.0.2', after(10_000), limit)).toMatchObject({ charge: expect.any(Number) });
      await store.refundPinLookup((charges[2] as { charge: number }).charge);
      expect(await store.chargePinLookup('10.0.0.1', after(11_000), limit)).toMatchObject({ charge: expect.any(Number) });
      // The oldest miss leaves the window at 60 s.
      expect(await store.chargePinLookup('10.0.0.1', after(60_001), limit)).toMatchObject({ charge: expect.any(Number) });
    }));

  it('keeps clouds by name', () =>
    withStore(async (store) => {
      const offerings = [{ id: 'm1', name: 'm1', cpus: 2, memoryMiB: 2048, diskGiB: 20 }];
      await store.upsertCloud({ name: 'b', kind: 'sim', offerings });
      await store.upsertCloud({ name: 'a', kind: 'ec2', offerings: [], endpoint: 'http://x', credentials: { key: 'env:K' }, images: ['cernvm4'], quota: { instances: 3 } });
      await store.upsertCloud({ name: 'b', kind: 'sim', offerings: [] });
      expect(await store.listClouds()).toEqual([
        { name: 'a', kind: 'ec2', offerings: [], endpoint: 'http://x', credentials: { key: 'env:K' }, images: ['cernvm4'], quota: { instances: 3 } },
        { name: 'b', kind: 'sim', offerings: [] },
      ]);
      expect(await store.getCloud('nope')).toBeUndefined();
      expect(await store.deleteCloud('b')).toBe(true);
      expect((await store.listClouds()).map((c) => c.name)).toEqual(['a']);
    }));

  it('keeps the read model: seq rules, whole upserts that keep provider ids, removals, events in order, pages and cursors', () =>
    withStore(async (store) => {
      expect(await store.getClusterView(cid)).toBeUndefined();
      const change: ChangeView = { from: 'def-1', to: 'def-2', phase: 'rolling', maxUnavailable: 1, startedAt: at(1), services: { replace: ['workers'], add: [], remove: [], keep: ['proxy'] } };
      expect(await store.publishCluster({ clusterId: cid, seq: 2, observedAt: at(2), state: 'DEPLOYING', services: [brief('proxy')], change, events: [event('a'), event('b')] })).toBe(true);
      expect(await store.publishCluster({ clusterId: cid, seq: 2, observedAt: at(2), state: 'READY', services: [], events: [event('lost')] })).toBe(false);
      expect(await store.publishCluster({ clusterId: cid, seq: 1, observedAt: at(2), state: 'READY', services: [], events: [event('lost')] })).toBe(false);
      // A publish without `change` keeps the stored one; one with `null` clears it.
      expect(await store.publishCluster({ clusterId: cid, seq: 3, observedAt: at(3), state: 'READY', services: [], expiresAt: at(99), events: [event('c')] })).toBe(true);
      expect(await store.getClusterView(cid)).toEqual({ clusterId: cid, seq: 3, observedAt: at(3), state: 'READY', services: [], expiresAt: at(99), change });
      expect(await store.publishCluster({ clusterId: cid, seq: 4, observedAt: at(4), state: 'READY', services: [], change: null, events: [] })).toBe(true);
      expect(await store.getClusterView(cid)).not.toHaveProperty('change');

      const workers = Array.from({ length: 12 }, (_, n) => inst('workers', n, { state: n % 2 ? 'READY' : 'BOOTING', cloudInstanceId: `i-${n}`, createdAt: at(n) }));
      expect(await store.publishService(servicePublish('workers', 1, { upserts: workers.slice(6).reverse(), events: [event('w', { service: 'workers' })] }))).toBe(true);
      expect(await store.publishService(servicePublish('workers', 2, { upserts: workers.slice(0, 6) }))).toBe(true);
      expect(await store.publishService(servicePublish('workers', 2, { upserts: [inst('workers', 50)] }))).toBe(false);
      expect(await store.publishService(servicePublish('proxy', 1, { upserts: [inst('proxy', 0)] }))).toBe(true);
      // An update without provider id or times keeps them; its message goes.
      expect(await store.publishService(servicePublish('workers', 3, { upserts: [inst('workers', 0, { state: 'READY', message: 'up' })] }))).toBe(true);
      expect(await store.publishService(servicePublish('workers', 4, { upserts: [inst('workers', 0, { state: 'READY' })], removed: [`${cid}-workers-11`, `${cid}-proxy-0`] }))).toBe(true);
      const page1 = await store.listInstances(cid, { limit: 5 });
      expect(page1.items.map((i) => i.id)).toEqual([`${cid}-proxy-0`, ...workers.slice(0, 4).map((w) => w.id)]);
      expect(page1.items[1]).toEqual({ ...workers[0], state: 'READY' });
      const page2 = await store.listInstances(cid, { limit: 5, cursor: page1.next });
      expect(page2.items.map((i) => i.ordinal)).toEqual([4, 5, 6, 7, 8]);
      const page3 = await store.listInstances(cid, { limit: 5, cursor: page2.next });
      expect(page3).toEqual({ items: [workers[9], workers[10]] });
      expect((await store.listInstances(cid, { limit: 100, service: 'workers', state: 'READY' })).items.map((i) => i.ordinal)).toEqual([0, 1, 3, 5, 7, 9]);
      await expect(store.listInstances(cid, { limit: 5, cursor: 'bogus' })).rejects.toThrow(InvalidCursorError);
      expect(await store.cloudInstanceIds(cid, [`${cid}-workers-0`, `${cid}-workers-11`, 'nope'])).toEqual({ [`${cid}-workers-0`]: 'i-0' });
      expect(await store.instanceStanding(cid, 'workers', `${cid}-workers-3`, 3)).toBe('READY');
      expect(await store.instanceStanding(cid, 'workers', `${cid}-workers-11`, 11)).toBeUndefined(); // the highest ordinal left
      expect(await store.instanceStanding(cid, 'workers', `${cid}-workers-2x`, 2)).toBe('REMOVED');
      expect((await store.getServiceViews(cid)).map((v) => [v.service, v.seq])).toEqual([
        ['proxy', 1],
        ['workers', 4],
      ]);

      const events = await store.listEvents(cid, { limit: 2 });
      expect(events.items.map((e) => e.message)).toEqual(['a', 'b']);
      const rest = await store.listEvents(cid, { limit: 10, cursor: events.next });
      expect(rest.items).toEqual([event('c'), event('w', { service: 'workers' })]);
      expect(await store.clusterCountsByState()).toEqual([]); // views without cluster rows count nothing
      expect(await store.instanceCountsByCloudAndState()).toEqual([
        { cloud: 'sim', state: 'BOOTING', count: 6 }, // proxy-0 stayed: a service removes only its own
        { cloud: 'sim', state: 'READY', count: 6 },
      ]);
    }));

  it("replaces a lost workflow task's writes with its next attempt's, and refuses late copies of either", () =>
    withStore(async (store) => {
      // A service run publishes seq 1, then a task that is lost after its writes landed (seq 2
      // and 3: workers-1 BOOTING, an event). Its next attempt, started later and with a phone-home
      // more, publishes seq 2 again: workers-1 and workers-2 READY, its own events.
      const run = 'run-a';
      const w = (n: number, state: PublishedInstance['state']) => inst('workers', n, { state });
      expect(await store.publishService(servicePublish('workers', 1, { upserts: [w(1, 'BOOTING'), w(2, 'BOOTING')], events: [event('created')] }), run)).toBe(true);
      expect(await store.publishService(servicePublish('workers', 2, { upserts: [w(1, 'READY')], events: [event('lost one')] }), run)).toBe(true);
      expect(await store.publishService(servicePublish('workers', 3, { observedAt: at(2), summary: brief('workers', { ready: 1 }), events: [event('lost two')] }), run)).toBe(true);
      const retried = servicePublish('workers', 2, { observedAt: at(2.5), summary: brief('workers', { ready: 2 }), upserts: [w(1, 'READY'), w(2, 'READY')], events: [event('retried one')] });
      expect(await store.publishService(retried, run)).toBe(true);
      expect((await store.listInstances(cid, { limit: 10 })).items.map((i) => [i.ordinal, i.state])).toEqual([
        [1, 'READY'],
        [2, 'READY'],
      ]);
      expect((await store.getServiceViews(cid)).map((v) => [v.seq, v.observedAt, v.summary.ready])).toEqual([[2, at(2.5), 2]]);
      expect((await store.listEvents(cid, { limit: 10 })).items.map((e) => e.message)).toEqual(['created', 'retried one']);
      // Late copies: the lost task's seq 3, a retried copy of the new seq 2; neither changes anything.
      expect(await store.publishService(servicePublish('workers', 3, { observedAt: at(2), upserts: [w(2, 'BOOTING')], events: [event('late')] }), run)).toBe(false);
      expect(await store.publishService(retried, run)).toBe(false);
      // The attempt goes on from there.
      expect(await store.publishService(servicePublish('workers', 3, { observedAt: at(3.5), upserts: [w(2, 'FAILED')], events: [event('next')] }), run)).toBe(true);
      expect((await store.listInstances(cid, { limit: 10, state: 'FAILED' })).items.map((i) => i.ordinal)).toEqual([2]);

      // Another run of the service (started again, its seqs from 1): kept when later, and it replaces none of the first run's events.
      expect(await store.publishService(servicePublish('workers', 1, { observedAt: at(9), events: [event('again')] }), 'run-b')).toBe(true);
      expect((await store.listEvents(cid, { limit: 10 })).items.map((e) => e.message)).toEqual(['created', 'retried one', 'next', 'again']);

      // The cluster workflow's publishes follow the same rule.
      expect(await store.publishCluster({ clusterId: cid, seq: 1, observedAt: at(1), state: 'DEPLOYING', services: [], events: [event('c1')] }, 'run-c')).toBe(true);
      expect(await store.publishCluster({ clusterId: cid, seq: 2, observedAt: at(2), state: 'DEPLOYING', services: [], events: [event('c lost')] }, 'run-c')).toBe(true);
      expect(await store.publishCluster({ clusterId: cid, seq: 2, observedAt: at(2.5), state: 'READY', services: [], events: [event('c2')] }, 'run-c')).toBe(true);
      expect(await store.publishCluster({ clusterId: cid, seq: 2, observedAt: at(2), state: 'DEPLOYING', services: [], events: [event('c late')] }, 'run-c')).toBe(false);
      expect((await store.getClusterView(cid))?.state).toBe('READY');
      expect((await store.listEvents(cid, { limit: 10 })).items.map((e) => e.message)).toEqual(['created', 'retried one', 'next', 'again', 'c1', 'c2']);
    }));

  it('reads a cluster with its views in one statement, the same as the three reads', () =>
    withStore(async (store) => {
      const def = await store.createDefinition({ name: 'a', definition });
      const c = await store.createCluster({ id: cid, name: 'c1', definitionId: def.id, cloud: 'sim', owner: 'alice', contexts: {}, windows: [] });
      expect(await store.getClusterRead(cid)).toEqual({ cluster: c, services: [] });
      expect(await store.getClusterRead('c9-zzzzzz')).toBeUndefined();
      const change: ChangeView = { from: 'def-1', to: 'def-2', phase: 'rolling', maxUnavailable: 1, startedAt: at(1), services: { replace: ['workers'], add: [], remove: [], keep: [] } };
      await store.publishCluster({ clusterId: cid, seq: 2, observedAt: at(2), state: 'DEPLOYING', message: 'deploying "quoted" ünïcode', services: [brief('proxy')], change, events: [] });
      await store.publishService(servicePublish('workers', 3, { summary: brief('workers', { ready: 1, clouds: { sim: { instances: 2, ready: 1 } } }) }));
      await store.publishService(servicePublish('proxy', 1));
      const read = await store.getClusterRead(cid);
      expect(read).toEqual({ cluster: await store.getCluster(cid), view: await store.getClusterView(cid), services: await store.getServiceViews(cid) });
      expect(read?.view).toMatchObject({ seq: 2, state: 'DEPLOYING', change });
      expect(read?.services.map((s) => [s.service, s.seq])).toEqual([
        ['proxy', 1],
        ['workers', 3],
      ]);
    }));

  it('issues, finds, lists and revokes API tokens', () =>
    withStore(async (store) => {
      const a = await store.createApiToken({ owner: 'alice', role: 'user', expiresAt: after(1000) });
      const b = await store.createApiToken({ owner: 'bob', role: 'admin' });
      const c = await store.createApiToken({ owner: 'alice', role: 'user' });
      expect(a.token).toMatch(/^cg_[A-Za-z0-9_-]{43}$/);
      expect(await store.findApiToken(a.token)).toEqual(a.record);
      expect(await store.findApiToken('cg_nope')).toBeUndefined();
      expect(await store.getApiToken(b.record.id)).toEqual(b.record);
      expect((await store.listApiTokens()).map((t) => t.id)).toEqual([a.record.id, b.record.id, c.record.id]);
      expect((await store.listApiTokens('alice')).map((t) => t.id)).toEqual([a.record.id, c.record.id]);
      expect(await store.revokeApiToken(a.record.id, t0)).toBe(true);
      expect(await store.revokeApiToken(a.record.id, t0)).toBe(false);
      expect(await store.findApiToken(a.token)).toEqual({ ...a.record, revokedAt: t0.toISOString() });
    }));

  it('answers reads made at the same moment together, each caller with its own answer', () =>
    withStore(async (store) => {
      // Issued in one turn of the event loop, the reads of each kind go to the database together (store/index.ts, coalesced).
      const def = await store.createDefinition({ name: 'a', definition });
      const other = 'c2-def456';
      const c1 = await store.createCluster({ id: cid, name: 'c1', definitionId: def.id, cloud: 'sim', owner: 'alice', contexts: {}, windows: [] });
      const c2 = await store.createCluster({ id: other, name: 'c2', definitionId: def.id, cloud: 'sim', owner: 'bob', contexts: {}, windows: [] });
      await store.publishCluster({ clusterId: cid, seq: 1, observedAt: at(1), state: 'DEPLOYING', services: [brief('workers')], events: [] });
      await store.publishService(servicePublish('workers', 1, { upserts: [0, 1, 2, 3].map((n) => inst('workers', n, { state: n === 1 ? 'READY' : 'BOOTING' })) }));
      await store.publishService({ ...servicePublish('workers', 1), clusterId: other, upserts: [{ ...inst('workers', 0), id: `${other}-workers-0`, name: `${other}-workers-0`, state: 'FAILED' }] });
      const [a, b] = [await store.createApiToken({ owner: 'alice', role: 'user' }), await store.createApiToken({ owner: 'bob', role: 'admin' })];
      await store.revokeApiToken(b.record.id, t0);

      const standings = await Promise.all([
        store.instanceStanding(cid, 'workers', `${cid}-workers-1`, 1),
        store.instanceStanding(cid, 'workers', `${cid}-workers-0`, 0),
        store.instanceStanding(other, 'workers', `${other}-workers-0`, 0),
        store.instanceStanding(cid, 'workers', `${cid}-workers-9`, 2), // gone: its service has a higher ordinal
        store.instanceStanding(cid, 'workers', `${cid}-workers-9`, 9), // not (yet) there
        store.instanceStanding(other, 'workers', `${cid}-workers-1`, 1), // another cluster's instance id
        store.instanceStanding(cid, 'workers', `${cid}-workers-1`, 1), // asked twice
      ]);
      expect(standings).toEqual(['READY', 'BOOTING', 'FAILED', 'REMOVED', undefined, undefined, 'READY']);
      const reads = await Promise.all([store.getClusterRead(other), store.getClusterRead(cid), store.getClusterRead('c9-zzzzzz'), store.getClusterRead(cid)]);
      expect(reads).toEqual([
        { cluster: c2, services: [expect.objectContaining({ service: 'workers' })] },
        { cluster: c1, view: await store.getClusterView(cid), services: await store.getServiceViews(cid) },
        undefined,
        reads[1],
      ]);
      const found = await Promise.all([store.findApiToken(b.token), store.findApiToken('cg_nope'), store.findApiToken(a.token), store.findApiToken(b.token)]);
      expect(found).toEqual([{ ...b.record, revokedAt: t0.toISOString() }, undefined, a.record, { ...b.record, revokedAt: t0.toISOString() }]);
    }));

  it('counts quotas: own and default limits, scale and change reservations, releases, failed and terminated clusters, usage by owner', () =>
    withStore(async (store) => {
      const def = await store.createDefinition({ name: 'q', definition });
      const defaultQuota = { maxInstances: 10, maxClusters: 3, maxCpus: 20 };
      const claim = (instances: number) => ({ owner: 'dora', services: [{ service: 'workers', instances, cpus: 2 }] });
      const create = (id: string, instances: number) => store.createCluster({ id, name: 'q', definitionId: def.id, cloud: 'sim', owner: 'dora' }, { claim: claim(instances), defaultQuota });
      await create('q-000001', 4);
      await create('q-000002', 4);
      await expect(create('q-000003', 3)).rejects.toMatchObject({ name: 'QuotaExceededError', source: 'default', excess: [
        { quota: 'maxInstances', limit: 10, usage: 8, requested: 3 },
        { quota: 'maxCpus', limit: 20, usage: 16, requested: 6 },
      ] });
      expect(await store.getCluster('q-000003')).toBeUndefined();
      expect(await store.quotaUsage('dora')).toEqual({ instances: 8, clusters: 2, cpus: 16 });

      await expect(store.reserveScale('q-000001', 'workers', 7, { defaultQuota, growOnly: true })).rejects.toThrow(QuotaExceededError);
      expect(await store.reserveScale('q-000001', 'workers', 6, { defaultQuota, growOnly: true })).toEqual({ previous: 4 });
      expect(await store.reserveScale('q-000001', 'workers', 5, { growOnly: true })).toEqual({ previous: 6 });
      expect(await store.reserveScale('q-000001', 'workers', 4, { onlyIf: 5 })).toEqual({ previous: 6 });
      expect(await store.reserveScale('q-000001', 'workers', 4)).toEqual({ previous: 6 });
      expect(await store.reserveScale('q-000001', 'nope', 4)).toBeUndefined();
      const held = await store.reserveChange('q-000002', { owner: 'dora', services: [{ service: 'workers', instances: 5, cpus: 2 }, { service: 'extra', instances: 1, cpus: 1 }] }, defaultQuota);
      expect(held).toEqual(claim(4).services);
      expect(await store.quotaUsage('dora')).toEqual({ instances: 10, clusters: 2, cpus: 19 });
      await store.restoreReservation('q-000002', held!);
      expect(await store.quotaUsage('dora')).toEqual({ instances: 8, clusters: 2, cpus: 16 });

      expect(await store.setOwnerQuota('dora', { maxInstances: 100, maxClusters: 100, maxCpus: 100 }, t0)).toEqual({
        owner: 'dora',
        quota: { maxInstances: 100, maxClusters: 100, maxCpus: 100 },
        updatedAt: t0.toISOString(),
      });
      await create('q-000003', 3);
      // A FAILED cluster holds its room until released; a TERMINATED one stops counting by itself.
      await store.publishCluster({ clusterId: 'q-000001', seq: 1, observedAt: at(1), state: 'FAILED', services: [], events: [] });
      await store.publishCluster({ clusterId: 'q-000002', seq: 1, observedAt: at(1), state: 'TERMINATED', services: [], events: [] });
      expect(await store.quotaHeldByFailed('dora')).toEqual(['q-000001']);
      expect(await store.quotaUsage('dora')).toEqual({ instances: 7, clusters: 2, cpus: 14 });
      expect(await store.releaseQuota('q-000001', t0)).toBe(true);
      expect(await store.releaseQuota('q-000001', t0)).toBe(false);
      expect(await store.quotaHeldByFailed('dora')).toEqual([]);
      await store.setOwnerQuota('erin', defaultQuota);
      expect(await store.quotaUsageByOwner()).toEqual([
        { owner: 'dora', usage: { instances: 3, clusters: 1, cpus: 6 }, quota: { maxInstances: 100, maxClusters: 100, maxCpus: 100 } },
        { owner: 'erin', usage: { instances: 0, clusters: 0, cpus: 0 }, quota: defaultQuota },
      ]);
      expect(await store.clusterCountsByState()).toEqual([
        { state: 'FAILED', count: 1 },
        { state: 'PENDING', count: 1 },
        { state: 'TERMINATED', count: 1 },
      ]);
      expect(await store.getOwnerQuota('nobody')).toBeUndefined();
    }));

  it('appends to the audit log, lists it newest first with filters and cursors, and the database refuses to change it', () =>
    withStore(async (store, db) => {
      for (let n = 0; n < 5; n++) {
        await store.appendAudit({ at: at(n), owner: n % 2 ? 'bob' : 'alice', role: 'user', route: 'POST /v1/clusters', target: `c${n}`, result: 202, ...(n === 0 && { tokenId: 'tok-1' }) });
      }
      const page = await store.listAudit({ limit: 2 });
      expect(page.items.map((r) => r.target)).toEqual(['c4', 'c3']);
      expect((await store.listAudit({ limit: 10, cursor: page.next })).items.map((r) => r.target)).toEqual(['c2', 'c1', 'c0']);
      expect((await store.listAudit({ limit: 10, owner: 'bob' })).items.map((r) => r.target)).toEqual(['c3', 'c1']);
      expect((await store.listAudit({ limit: 10, since: at(1), until: at(3) })).items.map((r) => r.target)).toEqual(['c2', 'c1']);
      expect((await store.listAudit({ limit: 10, target: 'c0' })).items).toEqual([
        { id: 1, at: at(0), owner: 'alice', role: 'user', tokenId: 'tok-1', route: 'POST /v1/clusters', target: 'c0', result: 202 },
      ]);
      await expect(store.listAudit({ limit: 10, cursor: 'bogus' })).rejects.toThrow(InvalidCursorError);
      await expect(db.raw("UPDATE audit_log SET owner = 'mallory'")).rejects.toMatchObject({ message: expect.stringMatching(/append-only/) });
      await expect(db.raw('DELETE FROM audit_log')).rejects.toMatchObject({ message: expect.stringMatching(/append-only/) });
      expect((await store.listAudit({ limit: 10 })).items).toHaveLength(5);
    }));

  it('keeps the capacity ledger: one claim per instance, refusals name the limit, force, releases', () =>
    withStore(async (store) => {
      const claim = (n: number, force = false) => ({ instanceId: `c1-w-${n}`, clusterId: 'c1', cpus: 2, memoryMiB: 4096, ...(force && { force }) });
      const quota = { instances: 3, cpus: 5 };
      expect(await store.reserveCapacity('hlt', quota, [claim(0)])).toEqual({ granted: ['c1-w-0'] });
      expect(await store.reserveCapacity('hlt', quota, [claim(0)])).toEqual({ granted: ['c1-w-0'] }); // held: not counted twice
      // A batch: the claims that fit, in order; the first that does not names the limit.
      const grant = await store.reserveCapacity('hlt', quota, [claim(0), claim(1), claim(2)]);
      expect(grant).toMatchObject({ granted: ['c1-w-0', 'c1-w-1'], refusal: { cloud: 'hlt', limit: 'cpus', usage: { instances: 2, cpus: 4, memoryMiB: 8192 } } });
      expect(await store.reserveCapacity('hlt', quota, [claim(2, true)])).toEqual({ granted: ['c1-w-2'] });
      expect(await store.capacityUsage('hlt')).toEqual({ instances: 3, cpus: 6, memoryMiB: 12288 });
      expect(await store.capacityUsage('other')).toEqual({ instances: 0, cpus: 0, memoryMiB: 0 });
      expect(await store.releaseCapacity('hlt', [claim(0).instanceId, 'nope'])).toBe(1);
      expect(await store.releaseCapacity('hlt', [])).toBe(0);
      expect(await store.releaseClusterCapacity('hlt', 'c1')).toBe(2);
      expect(await store.capacityUsage('hlt')).toEqual({ instances: 0, cpus: 0, memoryMiB: 0 });
    }));

  it('decides races between stores on one database once: quota, pairing, publish seq, capacity, context versions', () =>
    withStore(async (store, db) => {
      const others = await Promise.all([1, 2, 3].map(() => db.open()));
      const all = [store, ...others];
      try {
        const def = await store.createDefinition({ name: 'race', definition });
        await store.setOwnerQuota('race', { maxInstances: 1000, maxClusters: 10, maxCpus: 1000 });
        const claim = { owner: 'race', services: [{ service: 'w', instances: 1, cpus: 1 }] };
        const defaultQuota = { maxInstances: 0, maxClusters: 0, maxCpus: 0 };
        const results = await Promise.allSettled(
          all.flatMap((s, i) => Array.from({ length: 6 }, (_, n) => s.createCluster({ id: `r${i}-${n}`, name: 'race', definitionId: def.id, cloud: 'sim', owner: 'race' }, { claim, defaultQuota }))),
        );
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(10);
        expect(results.filter((r) => r.status === 'rejected').every((r) => (r as PromiseRejectedResult).reason instanceof QuotaExceededError)).toBe(true);
        expect(await store.quotaUsage('race')).toEqual({ instances: 10, clusters: 10, cpus: 10 });

        // A crowd of one owner's submissions that mostly fit: each is decided, none gives up (as SERIALIZABLE transactions some failed to serialize 12 times over, a 500 for 50 at once in the scale bench).
        await store.setOwnerQuota('crowd', { maxInstances: 1000, maxClusters: 150, maxCpus: 1000 });
        const crowd = await Promise.allSettled(
          all.flatMap((s, i) =>
            Array.from({ length: 40 }, (_, n) =>
              s.createCluster({ id: `c${i}-${n}`, name: 'crowd', definitionId: def.id, cloud: 'sim', owner: 'crowd' }, { claim: { ...claim, owner: 'crowd' }, defaultQuota }),
            ),
          ),
        );
        expect(crowd.flatMap((r) => (r.status === 'rejected' && !(r.reason instanceof QuotaExceededError) ? [String(r.reason)] : []))).toEqual([]);
        expect(crowd.filter((r) => r.status === 'fulfilled')).toHaveLength(150);
        expect(await store.quotaUsage('crowd')).toEqual({ instances: 150, clusters: 150, cpus: 150 });

        // One idempotency key, four stores at once: one row, the others are told the key is taken.
        const keyed = await Promise.allSettled(all.map((s, i) => s.createCluster({ id: `k-00000${i}`, name: 'k', definitionId: def.id, cloud: 'sim', idempotencyKey: 'race k' })));
        expect(keyed.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        expect(keyed.filter((r) => r.status === 'rejected').every((r) => (r as PromiseRejectedResult).reason instanceof DuplicateKeyError)).toBe(true);

        const ctx = await store.createContext({ name: 'race', context, secrets: {} }, 'race');
        await store.createPairing({ pin: 'RRRRRR111111', lookup: 'RRRRRR', contextId: ctx.id, version: 1, createdAt: new Date(), expiresAt: new Date(Date.now() + 60_000) });
        const takes = await Promise.all(all.flatMap((s) => [s.takePairing('RRRRRR111111'), s.takePairing('RRRRRR111111')]));
        expect(takes.filter((t) => t.status === 'ok')).toHaveLength(1);
        expect(takes.filter((t) => t.status === 'used')).toHaveLength(7);

        const published = await Promise.all(all.map((s, i) => s.publishService(servicePublish('workers', 1, { upserts: [inst('workers', i)], events: [event(`p${i}`)] }))));
        expect(published.filter(Boolean)).toHaveLength(1);
        expect((await store.listInstances(cid, { limit: 10 })).items).toHaveLength(1);
        expect((await store.listEvents(cid, { limit: 10 })).items).toHaveLength(1);

        const granted = await Promise.all(all.flatMap((s, i) => Array.from({ length: 5 }, (_, n) => s.reserveCapacity('hlt', { instances: 7 }, [{ instanceId: `i${i}-${n}`, clusterId: 'c', cpus: 1, memoryMiB: 1 }]))));
        expect(granted.flatMap((g) => g.granted)).toHaveLength(7);
        // Batches racing: 4 stores × 3 batches of 10 for 25 more rooms (an advisory lock per cloud on PostgreSQL, not SERIALIZABLE aborts).
        const batches = await Promise.all(
          all.flatMap((s, i) => Array.from({ length: 3 }, (_, b) => s.reserveCapacity('hlt', { instances: 32 }, Array.from({ length: 10 }, (_, n) => ({ instanceId: `b${i}-${b}-${n}`, clusterId: 'c', cpus: 1, memoryMiB: 1 }))))),
        );
        expect(batches.flatMap((g) => g.granted)).toHaveLength(25);
        expect((await store.capacityUsage('hlt')).instances).toBe(32);

        const versions = await Promise.all(all.map((s) => s.updateContext(ctx.id, { name: 'race', context, secrets: {} })));
        expect(versions.map((v) => v?.version).sort()).toEqual([2, 3, 4, 5]);

        const lookups = await Promise.all(all.flatMap((s) => Array.from({ length: 3 }, () => s.chargePinLookup('10.9.9.9', new Date(), { limit: 5, windowMs: 60_000 }))));
        expect(lookups.filter((l) => 'charge' in l)).toHaveLength(5);
      } finally {
        for (const s of others) await s.close();
      }
    }),
  120_000);
});
