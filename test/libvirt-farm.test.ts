/**
 * A libvirt cloud of many hosts (issue 12): one private libvirtd per host, each serving its
 * own test driver (test/peers/libvirt.ts startLibvirtFarm). Placement by capacity, the
 * CapacityExhausted message, one connection per host, a host killed and a host hanging
 * (frozen with SIGSTOP) mid-deployment, pending destroys, and per-instance overlay disks.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { CloudAdapter, CloudInstance } from '../clouds/contract.js';
import { createLibvirtCloud, pickHost } from '../clouds/libvirt.js';
import { CloudConfigSchema, LibvirtCloudConfigSchema, libvirtHosts } from '../model/clouds-config.js';
import { cloudErrorOf, eventually, instanceSpecs } from './cloud-assertions.js';
import { FARM_POOL_IMAGE, startLibvirtFarm, type LibvirtFarm } from './peers/libvirt.js';

const run = `fm${Date.now().toString(36)}`;
const spec = instanceSpecs(run);
/** The `medium` size of the default offerings: 2 cpus, 4096 MiB. */
const MEDIUM = { cpus: 2, memoryMiB: 4096, diskGiB: 40 };
const SMALL = { cpus: 1, memoryMiB: 2048, diskGiB: 20 };

/**
 * A full garbage collection. The binding's connectClose drops only its own handle: the
 * connection closes when the last Domain object read through it is collected too.
 */
v8.setFlagsFromString('--expose-gc');
const collectGarbage = vm.runInNewContext('gc') as () => void;

/** Names of the cloudgate domains on a host, as `virsh list` shows them. */
const domainsOn = (farm: LibvirtFarm, host: string): Promise<string[]> => farm.hosts[host].domains();

describe('libvirt farm registry entries', () => {
  const base = { name: 'hlt', kind: 'libvirt', images: { cernvm: '/var/lib/cloudgate/ucernvm.qcow2' } } as const;
  const host = (name: string) => ({ name, uri: `qemu+ssh://cloudgate@${name}/system`, cpus: 32, memoryMiB: 65536 });

  it('takes either one uri or a list of hosts, not both and not neither, with a clear message', () => {
    expect(LibvirtCloudConfigSchema.safeParse({ ...base, uri: 'qemu:///system' }).success).toBe(true);
    expect(LibvirtCloudConfigSchema.safeParse({ ...base, hosts: [host('n1'), host('n2')] }).success).toBe(true);
    for (const bad of [{ ...base, uri: 'qemu:///system', hosts: [host('n1')] }, { ...base }]) {
      const r = CloudConfigSchema.safeParse(bad);
      expect(r.success).toBe(false);
      expect(JSON.stringify(r.error?.issues)).toContain('either one hypervisor (\\"uri\\") or a farm of them (\\"hosts');
    }
  });

  it('refuses duplicate host names, empty farms and hosts without capacity', () => {
    const dup = LibvirtCloudConfigSchema.safeParse({ ...base, hosts: [host('n1'), host('n1')] });
    expect(dup.error?.issues.map((i) => [i.path.join('.'), i.message])).toEqual([['hosts.1.name', 'duplicate host name "n1" in this farm']]);
    expect(LibvirtCloudConfigSchema.safeParse({ ...base, hosts: [] }).error?.issues[0].message).toBe('a farm needs at least one host');
    expect(LibvirtCloudConfigSchema.safeParse({ ...base, hosts: [{ name: 'n1', uri: 'qemu:///system' }] }).success).toBe(false);
  });

  it('sees a single uri as one host named after the entry, without limits, and a farm as its hosts', () => {
    expect(libvirtHosts({ name: 'kvm', uri: 'qemu:///system' })).toEqual([{ name: 'kvm', uri: 'qemu:///system' }]);
    expect(libvirtHosts({ name: 'hlt', hosts: [host('n1')] })).toEqual([host('n1')]);
  });

  it('places on the host with room for the most instances of the size, then most free cpus, memory, name', () => {
    const size = { cpus: 2, memoryMiB: 4096 };
    expect(pickHost([{ host: 'a', free: { cpus: 16, memoryMiB: 4096 } }, { host: 'b', free: { cpus: 4, memoryMiB: 8192 } }], size)?.host).toBe('b');
    expect(pickHost([{ host: 'b', free: { cpus: 4, memoryMiB: 8192 } }, { host: 'a', free: { cpus: 4, memoryMiB: 8192 } }], size)?.host).toBe('a');
    expect(pickHost([{ host: 'a', free: { cpus: 1, memoryMiB: 65536 } }, { host: 'b', lostReason: 'down' }], size)).toBeUndefined();
  });
});

describe('libvirt farm of three hosts of different sizes', () => {
  let farm: LibvirtFarm;
  const opened: CloudAdapter[] = [];
  const open = () => {
    const a = createLibvirtCloud(farm.cloudConfig);
    opened.push(a);
    return a;
  };

  beforeAll(async () => {
    // kvm-c has the most cpus but the least memory: memory decides how much it takes.
    farm = await startLibvirtFarm({
      hosts: [
        { name: 'kvm-a', cpus: 8, memoryMiB: 16384 },
        { name: 'kvm-b', cpus: 4, memoryMiB: 8192 },
        { name: 'kvm-c', cpus: 16, memoryMiB: 4096 },
      ],
    });
  });
  afterAll(async () => {
    for (const a of opened) await a.close?.();
    await farm?.stop();
  });

  it('opens no connection until used, then exactly one per host, reused by every call and every adapter of the process', async () => {
    const clients = async () => Promise.all(['kvm-a', 'kvm-b', 'kvm-c'].map((h) => farm.hosts[h].clients()));
    // The peer's own connection on each host.
    expect(await clients()).toEqual([1, 1, 1]);
    const adapter = open();
    expect(await clients()).toEqual([1, 1, 1]);
    const cluster = `${run}-conn`;
    const s = spec({ offering: SMALL }, cluster);
    const made = await adapter.createInstance(s, s.tags.key);
    expect(await clients()).toEqual([2, 2, 2]);
    for (let i = 0; i < 10; i++) {
      await adapter.describeInstance(made.id);
      await adapter.findInstance(s.tags.key);
      await adapter.listInstances({ cluster });
    }
    await Promise.all(Array.from({ length: 10 }, () => adapter.listInstances({})));
    const second = open();
    await second.listInstances({});
    await second.describeInstance(made.id);
    expect(await clients()).toEqual([2, 2, 2]);
    await adapter.terminateInstance(made.id);
    expect(await clients()).toEqual([2, 2, 2]);
  });

  it('places each instance on the host with the most room and says where; a full farm is CapacityExhausted, naming its hosts', async () => {
    const adapter = open();
    const cluster = `${run}-place`;
    const placed: CloudInstance[] = [];
    for (let i = 0; i < 7; i++) {
      const s = spec({ offering: MEDIUM }, cluster);
      placed.push(await adapter.createInstance(s, s.tags.key));
    }
    // Slots of 2 cpus/4096 MiB free: a 4, b 2, c 1 (memory) → a, a, a (tie with b: name), b,
    // then one each: c first (tie on slots, most free cpus), a, b.
    expect(placed.map((p) => p.host)).toEqual(['kvm-a', 'kvm-a', 'kvm-a', 'kvm-b', 'kvm-c', 'kvm-a', 'kvm-b']);
    for (const p of placed) {
      expect(p.id).toMatch(new RegExp(`^${p.host}/[0-9a-f-]{36}$`));
      expect(await domainsOn(farm, p.host!)).toContain(p.extra?.domain);
      expect(await adapter.describeInstance(p.id)).toMatchObject({ id: p.id, host: p.host, state: 'RUNNING' });
    }
    expect((await adapter.listInstances({ cluster })).map((i) => [i.id, i.host]).sort()).toEqual(placed.map((p) => [p.id, p.host]).sort());
    expect(await domainsOn(farm, 'kvm-c')).toHaveLength(1);

    const s = spec({ offering: MEDIUM }, cluster);
    const err = await cloudErrorOf(adapter.createInstance(s, s.tags.key));
    expect(err.kind).toBe('CapacityExhausted');
    expect(err.message).toBe(
      'farm: no host of the farm has room for a medium (2 cpus, 4096 MiB): kvm-a 0 cpus/0 MiB free, kvm-b 0 cpus/0 MiB free, kvm-c 14 cpus/0 MiB free',
    );
    // Counted from the domains on the hosts, not from this process's memory: a new adapter agrees.
    expect((await cloudErrorOf(open().createInstance(s, s.tags.key))).kind).toBe('CapacityExhausted');
    expect(await adapter.findInstance(s.tags.key)).toBeUndefined();

    // Room comes back with a terminate, on the host it was freed on.
    const onB = placed.find((p) => p.host === 'kvm-b')!;
    await adapter.terminateInstance(onB.id);
    expect((await adapter.createInstance(s, s.tags.key)).host).toBe('kvm-b');
    // Finding and creating again by key goes to the host it is on, from any adapter.
    expect((await open().findInstance(s.tags.key))?.host).toBe('kvm-b');
    expect((await open().createInstance(s, s.tags.key)).host).toBe('kvm-b');
    for (const i of await adapter.listInstances({ cluster })) await adapter.terminateInstance(i.id);
    expect(await adapter.listInstances({ cluster })).toEqual([]);
  });

  it('places concurrent creates of one process without overbooking, and makes one domain per key', async () => {
    const adapter = open();
    const cluster = `${run}-conc`;
    const specs = Array.from({ length: 9 }, () => spec({ offering: MEDIUM }, cluster));
    const results = await Promise.allSettled([...specs, specs[0], specs[1]].map((s) => adapter.createInstance(s, s.tags.key)));
    const made = results.filter((r): r is PromiseFulfilledResult<CloudInstance> => r.status === 'fulfilled').map((r) => r.value);
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    // The farm holds 7 of this size: two of the nine new keys find no room.
    expect(new Set(made.map((m) => m.idempotencyKey)).size).toBe(7);
    expect(failed.map((f) => (f.reason as Error).name)).toEqual(['CapacityExhausted', 'CapacityExhausted']);
    const counts = { 'kvm-a': 0, 'kvm-b': 0, 'kvm-c': 0 } as Record<string, number>;
    for (const i of await adapter.listInstances({ cluster })) counts[i.host!]++;
    expect(counts).toEqual({ 'kvm-a': 4, 'kvm-b': 2, 'kvm-c': 1 });
    for (const i of await adapter.listInstances({ cluster })) await adapter.terminateInstance(i.id);
  });

  it('gives each instance a qcow2 overlay of its own over the read-only base, sized to its flavor, removed with it', async () => {
    const adapter = open();
    const cluster = `${run}-disk`;
    const a = await adapter.createInstance(spec({ image: 'cernvm-pool', offering: MEDIUM }, cluster), `${cluster}-a`);
    const b = await adapter.createInstance(spec({ image: 'cernvm-pool', offering: SMALL }, cluster), `${cluster}-b`);
    const [pool, baseVol] = FARM_POOL_IMAGE.split('/');
    const basePath = `/${pool}/${baseVol}`; // the test driver's default-pool lives at /default-pool
    for (const [inst, gib] of [[a, 40], [b, 20]] as const) {
      const host = farm.hosts[inst.host!];
      const vol = `${inst.extra?.domain}.qcow2`;
      expect(inst.extra?.disk).toBe(`${pool}/${vol}`);
      const xml = await host.virsh('dumpxml', String(inst.extra?.domain));
      const disk = /<disk type='volume' device='disk'>[\s\S]*?<\/disk>/.exec(xml)?.[0] ?? '';
      expect(disk).toContain(`<source pool='${pool}' volume='${vol}'/>`);
      expect(disk).toContain("<driver name='qemu' type='qcow2'/>");
      expect(xml).not.toContain(baseVol);
      const volXml = await host.virsh('vol-dumpxml', '--pool', pool, vol);
      expect(volXml).toMatch(/<target>[\s\S]*<format type='qcow2'\/>/);
      expect(volXml).toMatch(new RegExp(`<backingStore>\\s*<path>${basePath}</path>\\s*<format type='qcow2'/>`));
      expect(volXml).toContain(`<capacity unit='bytes'>${gib * 1024 ** 3}</capacity>`);
    }
    expect(a.extra?.disk).not.toBe(b.extra?.disk);

    // A file image: the overlay sits in a directory pool over storageDir on the host.
    const f = await adapter.createInstance(spec({ image: 'cernvm4-micro', offering: SMALL }, cluster), `${cluster}-f`);
    const overlay = path.join(farm.cloudConfig.storageDir, `${cluster}-f.qcow2`);
    expect(f.extra?.disk).toBe(overlay);
    const fHost = farm.hosts[f.host!];
    expect(await fHost.virsh('dumpxml', `${cluster}-f`)).toMatch(new RegExp(`<disk type='file' device='disk'>\\s*<driver name='qemu' type='qcow2'/>\\s*<source file='${overlay}'/>`));
    expect(await fHost.virsh('vol-dumpxml', overlay)).toMatch(
      new RegExp(`<backingStore>\\s*<path>${farm.cloudConfig.images['cernvm4-micro']}</path>\\s*<format type='raw'/>`),
    );

    for (const inst of [a, b, f]) await adapter.terminateInstance(inst.id);
    for (const inst of [a, b]) {
      expect(await farm.hosts[inst.host!].virsh('vol-list', pool)).not.toContain(`${inst.extra?.domain}.qcow2`);
      expect(existsSync(String(inst.extra?.seedIso))).toBe(false);
    }
    await expect(fHost.virsh('vol-dumpxml', overlay)).rejects.toThrow(/no storage vol with matching path/);
    // The base volumes stay.
    for (const h of Object.values(farm.hosts)) expect(await h.virsh('vol-list', pool)).toContain(baseVol);
  });
});

describe('libvirt farm losing hosts', () => {
  let farm: LibvirtFarm;
  const opened: CloudAdapter[] = [];
  const open = () => {
    const a = createLibvirtCloud(farm.cloudConfig);
    opened.push(a);
    return a;
  };
  const pendingFiles = (host: string) => {
    const dir = path.join(farm.cloudConfig.storageDir, 'pending-destroy', host);
    return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.json')) : [];
  };

  beforeAll(async () => {
    farm = await startLibvirtFarm({
      hosts: [
        { name: 'n1', cpus: 4, memoryMiB: 8192 },
        { name: 'n2', cpus: 4, memoryMiB: 8192 },
        { name: 'n3', cpus: 4, memoryMiB: 8192 },
      ],
      hostTimeoutSeconds: 1,
      hostRetrySeconds: 1,
    });
  });
  afterAll(async () => {
    for (const a of opened) await a.close?.();
    await farm?.stop();
  });

  /** Three instances, one per host (equal hosts: the emptiest, then by name). */
  async function onePerHost(adapter: CloudAdapter, cluster: string): Promise<Record<string, CloudInstance>> {
    const byHost: Record<string, CloudInstance> = {};
    for (let i = 0; i < 3; i++) {
      const s = spec({ image: 'cernvm-pool', offering: MEDIUM }, cluster);
      const inst = await adapter.createInstance(s, s.tags.key);
      byHost[inst.host!] = inst;
    }
    expect(Object.keys(byHost).sort()).toEqual(['n1', 'n2', 'n3']);
    return byHost;
  }

  it('a killed host: its instances describe as ERROR with hostLost, new instances go elsewhere, terminate returns; back, it is used again', async () => {
    const adapter = open();
    const cluster = `${run}-kill`;
    const byHost = await onePerHost(adapter, cluster);
    await farm.hosts.n2.kill();

    const started = Date.now();
    const lost = await adapter.describeInstance(byHost.n2.id);
    expect(lost).toMatchObject({ id: byHost.n2.id, name: byHost.n2.name, state: 'ERROR', host: 'n2', extra: { hostLost: true, domain: byHost.n2.extra?.domain } });
    expect(String(lost.extra?.lostReason)).not.toBe('');
    // The others answer as before.
    expect((await adapter.describeInstance(byHost.n1.id)).state).toBe('RUNNING');
    // A fresh adapter (a restarted worker) knows nothing of the instance but still says where it was and that the host is lost.
    expect(await open().describeInstance(byHost.n2.id)).toMatchObject({ state: 'ERROR', host: 'n2', extra: { hostLost: true } });

    // Deployment goes on, on the hosts that answer.
    const more: CloudInstance[] = [];
    for (let i = 0; i < 2; i++) {
      const s = spec({ offering: MEDIUM }, cluster);
      more.push(await adapter.createInstance(s, s.tags.key));
    }
    expect(more.map((m) => m.host).sort()).toEqual(['n1', 'n3']);
    // Listing leaves the lost host out rather than failing.
    expect((await adapter.listInstances({ cluster })).map((i) => i.host).sort()).toEqual(['n1', 'n1', 'n3', 'n3']);
    // The farm is full now that n2 is gone, and the message says why.
    const s = spec({ offering: MEDIUM }, cluster);
    const full = await cloudErrorOf(adapter.createInstance(s, s.tags.key));
    expect(full.kind).toBe('CapacityExhausted');
    expect(full.message).toMatch(/n1 0 cpus\/0 MiB free, n2 not answering \(.+\), n3 0 cpus\/0 MiB free$/);

    // Teardown does not wait for the host.
    await adapter.terminateInstance(byHost.n2.id);
    expect(pendingFiles('n2')).toHaveLength(1);
    expect(Date.now() - started).toBeLessThan(15_000);

    // Back (empty: a killed test driver loses its domains): the pending destroy finds nothing and is done; the host takes instances again.
    await farm.hosts.n2.restart();
    const back = await eventually('n2 answers again', 10_000, async () => {
      const s2 = spec({ offering: MEDIUM }, cluster);
      try {
        return await adapter.createInstance(s2, s2.tags.key);
      } catch {
        return undefined;
      }
    }, 300);
    expect(back.host).toBe('n2');
    expect(pendingFiles('n2')).toEqual([]);
    // One connection again: the peer's and the adapters' one (the killed daemon took the old one with it).
    expect(await farm.hosts.n2.clients()).toBe(2);
    await expect(adapter.describeInstance(byHost.n2.id)).rejects.toMatchObject({ kind: 'NotFound' });
    for (const i of await adapter.listInstances({ cluster })) await adapter.terminateInstance(i.id);
  });

  it('a hanging host (frozen): lost after the timeout; the terminate of its instance is carried out when it answers again', async () => {
    const adapter = open();
    const cluster = `${run}-freeze`;
    const byHost = await onePerHost(adapter, cluster);
    const victim = byHost.n3;
    const domain = String(victim.extra?.domain);
    const [pool] = FARM_POOL_IMAGE.split('/');
    const overlay = String(victim.extra?.disk);
    const seedIso = String(victim.extra?.seedIso);
    expect(existsSync(seedIso)).toBe(true);

    farm.hosts.n3.freeze();
    try {
      const t0 = Date.now();
      expect(await adapter.describeInstance(victim.id)).toMatchObject({ state: 'ERROR', host: 'n3', extra: { hostLost: true, lostReason: expect.stringContaining('no answer within 1 s') } });
      expect(Date.now() - t0).toBeLessThan(5_000);
      // New work goes to n1 and n2 only, without waiting for n3 each time.
      const s = spec({ offering: MEDIUM }, cluster);
      const t1 = Date.now();
      expect((await adapter.createInstance(s, s.tags.key)).host).toMatch(/^n[12]$/);
      expect(Date.now() - t1).toBeLessThan(5_000);
      // Teardown of the lost instance returns at once, leaving a durable pending destroy.
      const t2 = Date.now();
      await adapter.terminateInstance(victim.id);
      expect(Date.now() - t2).toBeLessThan(5_000);
      expect(pendingFiles('n3')).toHaveLength(1);
    } finally {
      farm.hosts.n3.thaw();
    }
    // The domain is still on the host (the destroy could not reach it) ...
    expect(await domainsOn(farm, 'n3')).toContain(domain);
    // ... until the host answers the adapter again: the pending destroy runs first.
    await eventually('the pending destroy carried out', 15_000, async () => {
      await adapter.listInstances({ cluster }).catch(() => undefined);
      return pendingFiles('n3').length === 0 ? true : undefined;
    }, 300);
    expect(await domainsOn(farm, 'n3')).not.toContain(domain);
    expect(overlay).toBe(`${pool}/${domain}.qcow2`);
    expect(await farm.hosts.n3.virsh('vol-list', pool)).not.toContain(`${domain}.qcow2`);
    expect(existsSync(seedIso)).toBe(false);
    await expect(adapter.describeInstance(victim.id)).rejects.toMatchObject({ kind: 'NotFound' });
    // The connection that hung was replaced, and closed once its call returned: the peer's and one of the adapters'.
    const clients = await eventually('the hung connection closed', 5_000, async () => {
      collectGarbage();
      const n = await farm.hosts.n3.clients();
      return n === 2 ? n : undefined;
    }, 100);
    expect(clients).toBe(2);
    for (const i of await adapter.listInstances({ cluster })) await adapter.terminateInstance(i.id);
  });
});
