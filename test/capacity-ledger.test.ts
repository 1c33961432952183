/**
 * The capacity ledger (store/capacity.ts) and the placement rules (model/placement.ts):
 * reservations keyed by instance never count twice, refusals say what is full, releases
 * free room, and several processes reserving on one store file at once never pass the
 * quota. Placement: fill and spread, passed-over clouds, and the carried form of an
 * instance on another cloud than the service's first.
 */
import { describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { placeInstances } from '../model/placement.js';
import { compactInstance, expandInstance } from '../model/service-plan.js';
import { openSqliteStore } from '../store/index.js';
import { ROOT } from './harness.js';

const claim = (n: number, cluster = 'c1', force = false) => ({ instanceId: `${cluster}-w-${n}`, clusterId: cluster, cpus: 2, memoryMiB: 4096, ...(force && { force }) });

describe('capacity ledger', () => {
  it('reserves up to the quota, once per instance, and says what is full', async () => {
    const store = await openSqliteStore(':memory:');
    const quota = { instances: 3, cpus: 5 };
    expect(await store.reserveCapacity('hlt', quota, [claim(0)])).toEqual({ granted: ['c1-w-0'] });
    expect(await store.reserveCapacity('hlt', quota, [claim(1)])).toEqual({ granted: ['c1-w-1'] });
    // The same instance again (a retried create): granted, not counted twice.
    expect(await store.reserveCapacity('hlt', quota, [claim(1)])).toEqual({ granted: ['c1-w-1'] });
    expect(await store.capacityUsage('hlt')).toEqual({ instances: 2, cpus: 4, memoryMiB: 8192 });
    // A third would need 6 cpus of 5: refused on cpus, before instances.
    const no = await store.reserveCapacity('hlt', quota, [claim(2)]);
    expect(no).toMatchObject({ granted: [], refusal: { cloud: 'hlt', limit: 'cpus', usage: { instances: 2, cpus: 4, memoryMiB: 8192 } } });
    expect(no.refusal!.message).toBe('cloudgate\'s quota for hlt is used up: quota 3 instances, 5 cpus; in use 2 instances, 4 cpus, 8192 MiB');
    expect((await store.capacityUsage('hlt')).instances).toBe(2);
    // An instance the cloud already has is recorded whatever the quota says.
    expect(await store.reserveCapacity('hlt', quota, [claim(3, 'c1', true)])).toEqual({ granted: ['c1-w-3'] });
    expect((await store.capacityUsage('hlt')).instances).toBe(3);
    // Other clouds are counted apart; no quota is no limit.
    expect((await store.reserveCapacity('aws', undefined, Array.from({ length: 50 }, (_, n) => claim(n)))).granted).toHaveLength(50);
    expect((await store.capacityUsage('aws')).instances).toBe(50);
    expect(await store.releaseCapacity('hlt', ['c1-w-0', 'c1-w-0', 'c1-w-3', 'nope'])).toBe(2);
    expect(await store.reserveCapacity('hlt', quota, [claim(2)])).toEqual({ granted: ['c1-w-2'] });
    expect(await store.capacityUsage('hlt')).toEqual({ instances: 2, cpus: 4, memoryMiB: 8192 });
    expect(await store.releaseClusterCapacity('aws', 'c1')).toBe(50);
    expect(await store.capacityUsage('aws')).toEqual({ instances: 0, cpus: 0, memoryMiB: 0 });
    await store.close();
  });

  it('reserves a create batch at once: the claims that fit, in order, held ones free, forced ones always', async () => {
    const store = await openSqliteStore(':memory:');
    const quota = { instances: 5 };
    await store.reserveCapacity('hlt', quota, [claim(0, 'other')]);
    // A retried batch: w-0 is held already, w-1…w-3 fit, w-4 would be the sixth; w-5 is on the cloud already.
    await store.reserveCapacity('hlt', quota, [claim(0)]);
    const grant = await store.reserveCapacity('hlt', quota, [claim(0), claim(1), claim(2), claim(3), claim(4), claim(5, 'c1', true), claim(6)]);
    expect(grant.granted).toEqual(['c1-w-0', 'c1-w-1', 'c1-w-2', 'c1-w-3', 'c1-w-5']);
    expect(grant.refusal).toMatchObject({ limit: 'instances', usage: { instances: 5 } });
    expect((await store.capacityUsage('hlt')).instances).toBe(6);
    expect(await store.reserveCapacity('hlt', quota, [])).toEqual({ granted: [] });
    await store.close();
  });

  it('never grants more than the quota to several processes reserving on one store file at once', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'cloudgate-ledger-'));
    try {
      const file = path.join(dir, 'cloudgate.sqlite');
      await (await openSqliteStore(file)).close();
      // Four processes, 25 different instances each, one quota of 30, all at once.
      const script = `
        import { openSqliteStore } from ${JSON.stringify(path.join(ROOT, 'store/index.ts'))};
        // node -e <script> <file> <who>: argv is [node, file, who].
        const store = await openSqliteStore(process.argv[1]);
        let granted = 0;
        // Everyone starts at the same moment (argv[3]), so the reservations really interleave.
        while (Date.now() < Number(process.argv[3]));
        for (let n = 0; n < 25; n++) {
          const grant = await store.reserveCapacity('hlt', { instances: 30 }, [{ instanceId: process.argv[2] + '-' + n, clusterId: process.argv[2], cpus: 1, memoryMiB: 1024 }]);
          granted += grant.granted.length;
        }
        await store.close();
        console.log(granted);`;
      const startAt = Date.now() + 3_000;
      const run = (who: string) =>
        new Promise<number>((resolve, reject) => {
          const p = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, file, who, String(startAt)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
          let out = '';
          p.stdout.on('data', (d: Buffer) => (out += d.toString()));
          p.once('exit', (code) => (code === 0 ? resolve(Number(out.trim())) : reject(new Error(`reserving process ${who} exited ${code}`))));
        });
      const granted = await Promise.all(['p1', 'p2', 'p3', 'p4'].map(run));
      expect(granted.reduce((a, b) => a + b, 0)).toBe(30);
      const store = await openSqliteStore(file);
      expect((await store.capacityUsage('hlt')).instances).toBe(30);
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe('placement', () => {
  const none = new Set<string>();
  it('fills the first open cloud', async () => {
    expect(placeInstances(3, ['a', 'b'], 'fill', new Map(), none)).toEqual(['a', 'a', 'a']);
    expect(placeInstances(2, ['a', 'b'], 'fill', new Map([['a', 9]]), new Set(['a']))).toEqual(['b', 'b']);
    expect(placeInstances(2, ['a', 'b'], 'fill', new Map(), new Set(['a', 'b']))).toEqual([]);
  });

  it('spreads over the open clouds, fewest first, earlier first on ties', async () => {
    expect(placeInstances(5, ['a', 'b'], 'spread', new Map(), none)).toEqual(['a', 'b', 'a', 'b', 'a']);
    expect(placeInstances(3, ['a', 'b', 'c'], 'spread', new Map([['a', 2]]), none)).toEqual(['b', 'c', 'b']);
    expect(placeInstances(2, ['a', 'b', 'c'], 'spread', new Map(), new Set(['b']))).toEqual(['a', 'c']);
  });

  it('carries an instance on another cloud than the service\'s first as an index after its state', async () => {
    const clouds = ['hlt', 'aws'];
    const onAws = { id: 'c-w-7', ordinal: 7, state: 'READY' as const, cloud: 'aws' };
    expect(compactInstance(onAws, clouds)).toEqual([7, 'Y1']);
    expect(expandInstance([7, 'Y1'], 'c', 'w', clouds)).toEqual(onAws);
    expect(compactInstance({ ...onAws, cloud: 'hlt' }, clouds)).toEqual([7, 'Y']);
    expect(expandInstance([7, 'Y'], 'c', 'w', clouds)).toMatchObject({ cloud: 'hlt' });
    expect(() => expandInstance([7, 'Y5'], 'c', 'w', clouds)).toThrow(/unknown state code "Y5"/);
  });
});
