/**
 * The libvirt adapter beyond the shared contract, on libvirt's test hypervisor: what the
 * domain XML and the seed ISO carry, idempotency under concurrent creates, the test
 * driver's own "test" domain left alone, error kinds, and a worker process killed after a
 * create whose instance another process finds (through a private libvirtd).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DomainState, Hypervisor } from '@unraid/libvirt';
import { RETRYABLE_KINDS, type CloudAdapter } from '../clouds/contract.js';
import { CLOUDGATE_XMLNS, createLibvirtCloud, toCloudState } from '../clouds/libvirt.js';
import { listIso, readIsoFile } from '../clouds/seed-iso.js';
import { startLibvirtPeer, type LibvirtPeer } from './peers/libvirt.js';
import { cloudErrorOf, instanceSpecs } from './cloud-assertions.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const run = `lv${Date.now().toString(36)}`;
const spec = instanceSpecs(run);


describe('libvirt adapter on test:///default', () => {
  let peer: LibvirtPeer;
  let adapter: CloudAdapter;
  /** Our own connection, to look at the hypervisor the way `virsh` would. */
  let hv: Hypervisor;
  const opened: CloudAdapter[] = [];
  const open = () => {
    const a = createLibvirtCloud(peer.cloudConfig);
    opened.push(a);
    return a;
  };
  const domainNames = async () => Promise.all((await hv.connectListAllDomains()).map((d) => hv.domainGetName(d)));

  beforeAll(async () => {
    peer = await startLibvirtPeer({ daemon: false });
    adapter = open();
    hv = new Hypervisor({ uri: peer.cloudConfig.uri });
    await hv.connectOpen();
  });
  afterAll(async () => {
    for (const a of opened) await a.close?.();
    await hv?.connectClose();
    await peer?.stop();
  });

  it('defines the domain with the smallest fitting size, the image, the seed CD-ROM, the network and cloudgate metadata', async () => {
    const s = spec({ offering: { cpus: 2, memoryMiB: 3000, diskGiB: 30 } });
    const created = await adapter.createInstance(s, s.tags.key);
    expect(created).toMatchObject({ name: s.name, state: 'RUNNING', idempotencyKey: s.tags.key, tags: s.tags });
    expect(created.extra).toMatchObject({ domain: s.tags.key, offering: 'medium', vcpus: 2, memoryMiB: 4096, libvirtState: 'running' });

    const dom = await hv.domainLookupByName(s.tags.key);
    expect(created.id).toBe(await hv.domainGetUUIDString(dom));
    const xml = await hv.domainGetXMLDesc(dom);
    expect(xml).toMatch(/<domain type='test'/);
    expect(xml).toContain(`<name>${s.tags.key}</name>`);
    expect(xml).toMatch(/<memory unit='KiB'>4194304<\/memory>/);
    expect(xml).toMatch(/<vcpu[^>]*>2<\/vcpu>/);
    expect(xml).toMatch(/<type[^>]*>hvm<\/type>/);
    // The guest's disk is its own qcow2 overlay (backed by the image), never the image itself (issue 12).
    const overlay = path.join(peer.cloudConfig.storageDir, `${s.tags.key}.qcow2`);
    expect(created.extra?.disk).toBe(overlay);
    expect(xml).toMatch(new RegExp(`<disk type='file' device='disk'>\\s*<driver name='qemu' type='qcow2'/>\\s*<source file='${overlay}'/>`));
    expect(xml).not.toContain(peer.cloudConfig.images['cernvm4-micro']);
    expect(xml).toMatch(new RegExp(`<disk type='file' device='cdrom'>[\\s\\S]*<source file='${created.extra?.seedIso}'/>[\\s\\S]*<readonly/>`));
    expect(xml).toMatch(/<interface type='network'>[\s\S]*<source network='default'\/>/);
    const meta = /<(\w+):instance [^>]*>/.exec(xml)?.[0] ?? '';
    expect(meta).toContain(`="${CLOUDGATE_XMLNS}"`);
    for (const [k, v] of Object.entries({ key: s.tags.key, cluster: s.tags.cluster, service: 'svc', offering: 'medium', image: 'cernvm4-micro' })) {
      expect(meta).toContain(`${k}="${v}"`);
    }
  });

  it('writes a config-2 seed ISO with both layouts and the exact user-data', async () => {
    const userData = 'Content-Type: multipart/mixed; boundary="x"\r\n\r\n--x\r\n[ucernvm-begin]\r\nCVMFS_BRANCH=ÄÖ ☃ & <ok>\r\n--x--\r\n';
    const s = spec({ userData });
    const created = await adapter.createInstance(s, s.tags.key);
    const iso = String(created.extra?.seedIso);
    expect(iso).toBe(path.join(peer.cloudConfig.storageDir, `${s.tags.key}-seed.iso`));
    expect(statSync(iso).mode & 0o777).toBe(0o600); // user-data holds secrets and the token (issue 11)
    expect(await listIso(iso)).toEqual({
      label: 'config-2',
      files: ['meta-data', 'openstack/latest/meta_data.json', 'openstack/latest/user_data', 'user-data'],
    });
    expect(await readIsoFile(iso, 'openstack/latest/user_data')).toBe(userData);
    expect(await readIsoFile(iso, 'user-data')).toBe(userData);
    expect(JSON.parse(await readIsoFile(iso, 'openstack/latest/meta_data.json'))).toMatchObject({
      uuid: s.tags.key,
      hostname: s.tags.key,
      meta: { cloudgate_cluster: s.tags.cluster, cloudgate_service: 'svc' },
    });
    expect(await readIsoFile(iso, 'meta-data')).toBe(`instance-id: "${s.tags.key}"\nlocal-hostname: "${s.tags.key}"\n`);

    await adapter.terminateInstance(created.id);
    expect(existsSync(iso)).toBe(false);
  });

  it('finds and lists by reading the hypervisor, from a new adapter object', async () => {
    const cluster = `${run}-found`;
    const a = spec({}, cluster);
    const b = spec({}, cluster);
    await adapter.createInstance(a, a.tags.key);
    await adapter.createInstance(b, b.tags.key);
    const fresh = open();
    expect(await fresh.findInstance(a.tags.key)).toMatchObject({ name: a.name, state: 'RUNNING', tags: a.tags });
    expect((await fresh.listInstances({ cluster })).map((i) => i.name).sort()).toEqual([a.name, b.name].sort());
    expect(await fresh.findInstance(`${run}-never-made`)).toBeUndefined();
  });

  it('makes one domain for concurrent creates with one key, all answered with it, running', async () => {
    const s = spec();
    const other = open();
    const results = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => (i % 2 ? other : adapter).createInstance(s, s.tags.key)));
    expect(new Set(results.map((r) => r.id)).size).toBe(1);
    expect(results[0].extra?.domain).toBe(s.tags.key);
    expect(results.map((r) => r.state)).toEqual(Array(6).fill('RUNNING'));
    expect((await domainNames()).filter((d) => d === s.tags.key)).toHaveLength(1);
  });

  it('never lists, describes, adopts or terminates the test driver\'s own "test" domain', async () => {
    const theirs = await hv.domainLookupByName('test');
    const before = await hv.domainGetXMLDesc(theirs);
    const uuid = await hv.domainGetUUIDString(theirs);
    expect((await adapter.listInstances({})).map((i) => i.extra?.domain)).not.toContain('test');
    expect((await adapter.listInstances({})).map((i) => i.id)).not.toContain(uuid);
    expect((await cloudErrorOf(adapter.describeInstance(uuid))).kind).toBe('NotFound');
    expect(await adapter.findInstance('test')).toBeUndefined();
    const s = { ...spec(), name: 'test', tags: { cluster: `${run}-c`, service: 'svc', key: 'test' } };
    const err = await cloudErrorOf(adapter.createInstance(s, 'test'));
    expect(err.kind).toBe('InvalidRequest');
    expect(err.message).toContain('did not create');
    await adapter.terminateInstance(uuid);
    const dom = await hv.domainLookupByName('test');
    expect((await hv.domainGetInfo(dom)).state).toBe(DomainState.RUNNING);
    expect(await hv.domainGetXMLDesc(dom)).toBe(before);
  });

  it('boots only the registry\'s images: paths, other volumes and inherited keys are refused before the host is touched', async () => {
    const storage = peer.cloudConfig.storageDir;
    const seedIsos = () => (existsSync(storage) ? readdirSync(storage).filter((f) => f.endsWith('-seed.iso')).sort() : []);
    const domainsBefore = (await domainNames()).sort();
    const isosBefore = seedIsos();
    // A real file on the "host" that is some image's disk: naming its path must not make it a disk.
    const anotherDisk = peer.cloudConfig.images.cernvm;
    expect(existsSync(anotherDisk)).toBe(true);
    const offered = Object.keys(peer.cloudConfig.images).sort().join(', ');
    for (const image of ['/etc/shadow', anotherDisk, 'default/another-tenant-volume', 'constructor', '__proto__', 'toString', '../x', 'no-such-image']) {
      const s = spec({ image });
      const err = await cloudErrorOf(adapter.createInstance(s, s.tags.key));
      expect([err.kind, err.message]).toEqual(['InvalidRequest', `libvirt: image ${JSON.stringify(image)} is not one of this cloud's images (${offered})`]);
      expect(RETRYABLE_KINDS.has(err.kind)).toBe(false);
      expect(await adapter.findInstance(s.tags.key)).toBeUndefined();
    }
    // No domain was defined (none has the refused paths as a disk) and no seed ISO was written.
    expect((await domainNames()).sort()).toEqual(domainsBefore);
    for (const d of await hv.connectListAllDomains()) {
      const xml = await hv.domainGetXMLDesc(d);
      expect(xml).not.toContain('/etc/shadow');
      expect(xml).not.toContain('another-tenant-volume');
    }
    expect(seedIsos()).toEqual(isosBefore);
  });

  it('refuses a registry reference that is neither an absolute path nor pool/volume, before the host is touched', async () => {
    const odd = createLibvirtCloud({ ...peer.cloudConfig, images: { relative: 'ucernvm.qcow2', up: '/var/lib/cloudgate/../../../etc/shadow' } });
    try {
      for (const image of ['relative', 'up']) {
        const s = spec({ image });
        const err = await cloudErrorOf(odd.createInstance(s, s.tags.key));
        expect(err.kind).toBe('InvalidRequest');
        expect(err.message).toContain('is neither an absolute path nor a pool/volume');
        expect(await adapter.findInstance(s.tags.key)).toBeUndefined();
      }
    } finally {
      await odd.close?.();
    }
  });

  it('maps libvirt states', () => {
    expect(toCloudState(DomainState.RUNNING)).toBe('RUNNING');
    expect(toCloudState(DomainState.BLOCKED)).toBe('RUNNING');
    expect(toCloudState(DomainState.PAUSED)).toBe('RUNNING');
    expect(toCloudState(DomainState.SHUTDOWN)).toBe('STOPPED');
    expect(toCloudState(DomainState.SHUTOFF)).toBe('STOPPED');
    expect(toCloudState(DomainState.CRASHED)).toBe('ERROR');
    expect(toCloudState(DomainState.NOSTATE)).toBe('UNKNOWN');
    expect(toCloudState(DomainState.PMSUSPENDED)).toBe('UNKNOWN');
  });

  it('reports a suspended domain as RUNNING and a shut-off one as STOPPED', async () => {
    const s = spec();
    const { id } = await adapter.createInstance(s, s.tags.key);
    const dom = await hv.domainLookupByName(s.tags.key);
    await hv.domainSuspend(dom);
    expect(await adapter.describeInstance(id)).toMatchObject({ state: 'RUNNING', extra: { libvirtState: 'paused' } });
    await hv.domainDestroy(dom);
    expect((await adapter.describeInstance(id)).state).toBe('STOPPED');
    await adapter.terminateInstance(id);
    expect((await cloudErrorOf(adapter.describeInstance(id))).kind).toBe('NotFound');
    expect((await domainNames()).includes(s.tags.key)).toBe(false);
  });

  it('surfaces an unreachable hypervisor as Transient, with libvirt\'s message and the cause', async () => {
    const down = createLibvirtCloud({ ...peer.cloudConfig, uri: 'test+unix:///default?socket=/nonexistent/libvirt-sock' });
    try {
      const err = await cloudErrorOf(down.findInstance('x'));
      expect(err.kind).toBe('Transient');
      expect(err.message).toContain("Failed to connect socket to '/nonexistent/libvirt-sock'");
      expect(err.cause).toBeInstanceOf(Error);
    } finally {
      await down.close?.();
    }
  });
});

/** Runs TypeScript in a separate Node process (a worker that gets killed). */
function runChild(code: string): Promise<{ code: number | null; signal: string | null; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT }, (err, _stdout, stderr) => {
      const e = err as (Error & { code?: number; signal?: string }) | null;
      resolve({ code: e ? (e.code ?? null) : 0, signal: e?.signal ?? null, stderr });
    });
  });
}

describe('libvirt adapter across processes (private libvirtd hosting the test driver)', () => {
  let peer: LibvirtPeer;
  beforeAll(async () => {
    peer = await startLibvirtPeer();
  });
  afterAll(async () => {
    await peer?.stop();
  });

  it('finds the instance a killed worker process created, and does not create it again', async () => {
    expect(peer.shared).toBe(true);
    const cluster = `${run}-xp`;
    const s = spec({ userData: 'from the dead worker\n' }, cluster);
    const child = await runChild(`
      import { createLibvirtCloud } from './clouds/libvirt.ts';
      const cloud = createLibvirtCloud(${JSON.stringify(peer.cloudConfig)});
      await cloud.createInstance(${JSON.stringify(s)}, ${JSON.stringify(s.tags.key)});
      process.kill(process.pid, 'SIGKILL');
    `);
    expect(child).toMatchObject({ signal: 'SIGKILL' });

    const restarted = createLibvirtCloud(peer.cloudConfig);
    try {
      const found = await restarted.findInstance(s.tags.key);
      expect(found).toMatchObject({ state: 'RUNNING', tags: s.tags, extra: { domain: s.tags.key } });
      expect((await restarted.createInstance(s, s.tags.key)).id).toBe(found?.id);
      expect(await peer.count(cluster)).toBe(1);
      expect(await peer.userData(cluster)).toEqual(['from the dead worker\n']);
      await restarted.terminateInstance(found!.id);
      expect(await peer.count(cluster)).toBe(0);
    } finally {
      await restarted.close?.();
    }
  });

  it('reconnects by itself when the daemon restarts under it', async () => {
    const cloud = createLibvirtCloud(peer.cloudConfig);
    try {
      const s = spec({}, `${run}-rs`);
      await cloud.createInstance(s, s.tags.key);
      await peer.restart();
      // The test driver forgot everything; what matters is that the adapter talks to the new daemon.
      expect(await cloud.findInstance(s.tags.key)).toBeUndefined();
      expect((await cloud.createInstance(s, s.tags.key)).state).toBe('RUNNING');
      expect(await peer.count(s.tags.cluster)).toBe(1);
    } finally {
      await cloud.close?.();
    }
  });
});
