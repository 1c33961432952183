import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from '@jest/globals';
import { ClusterDefinitionSchema } from '../model/definition.js';
import { DuplicateKeyError, openSqliteStore } from '../store/index.js';
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
    store.upsertCloud({ name: 'sim', kind: 'sim', offerings: [{ id: 'small', name: 'small', cpus: 1, memoryMiB: 2048, diskGiB: 20 }] });
    store.upsertCloud({ name: 'sim', kind: 'sim', offerings: [{ id: 'large', name: 'large', cpus: 8, memoryMiB: 16384, diskGiB: 80 }] });
    store.upsertCloud({ name: 'ec2', kind: 'ec2', offerings: [] });
    store.close();

    store = openSqliteStore(file); // survives a reopen, tables are not recreated
    expect(store.listDefinitions()).toEqual([def]);
    expect(store.getDefinition(def.id)?.definition).toEqual(definition);
    expect(store.getCluster(c.id)).toEqual(c);
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
