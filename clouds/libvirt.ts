/**
 * `libvirt`: instances are libvirt domains on one hypervisor (a KVM node over
 * `qemu+ssh://`, Xen, or libvirt's built-in test driver `test:///default` in tests), or on a
 * farm of them (`hosts:` in the registry entry: the ALICE HLT farm is hundreds of KVM hosts).
 *
 * - Idempotency: the domain name is the idempotency key. libvirt refuses a second domain
 *   with a taken name ("already exists"), so two workers racing on one key and one host make
 *   one domain. On a farm a create first looks for the key on every answering host, and
 *   after defining it looks again: when the key exists on another host too (two racing
 *   creates placed it on two hosts), the earlier domain (by its `created` stamp, then host
 *   name) wins and the later creator removes its own. A create whose host stops answering
 *   after the define was sent records a pending destroy of that domain (by name and
 *   `created` stamp), so the copy it may have made is removed when the host answers again,
 *   before anything else runs there; the retry meanwhile makes the key on another host.
 *   What stays open: a worker that dies in that same moment records nothing. Its retry
 *   makes the key elsewhere, and when the lost host comes back the key exists twice: both
 *   boot the same user-data, `findInstance` answers the earlier (stale) copy, and nothing
 *   removes either until the service replaces one or the cluster's teardown (which lists
 *   by cluster tag) removes both.
 * - Memory: nothing is kept in this process but caches. Key, cluster, service, size and the
 *   overlay disk live in the domain's `<metadata>` (namespace {@link CLOUDGATE_XMLNS}), so a
 *   restarted worker finds and lists its instances by reading the domain XML back; domains
 *   without that element (the test driver's own "test" domain, an admin's VMs) are never
 *   listed, described or touched.
 * - Disks: each instance boots a qcow2 overlay of its own, backed by the read-only base image
 *   of the registry (see {@link Overlays}); the seed CD-ROM (seed-iso.ts) carries the
 *   user-data, at `<storageDir>/<name>-seed.iso`.
 * - Instance ids: the domain's UUID (a key terminated and created again is a new instance
 *   with a new id, so a stale id never describes its successor); on a farm `<host>/<uuid>`,
 *   so describe and terminate go straight to the right host. The name (= key) is what
 *   `virsh list` and the UI show, and it is in `extra.domain`.
 * - Farms (hosts, connections, placement and pending destroys are in libvirt-farm.ts): one
 *   connection per host, opened on first use and kept. A new instance goes on the answering
 *   host with the most room for its size (declared `cpus`/`memoryMiB` less the cloudgate
 *   domains on the host, of any registry entry, running or not, and the creates in flight
 *   in this process); none with room is `CapacityExhausted`, naming every host and what
 *   is free on it. Workers in separate processes do not reserve for each other: two placing
 *   at once on an almost full host may both put an instance there (the host is overbooked
 *   by one until one of them is terminated). A host that does not connect or answer one
 *   call within `hostTimeoutSeconds` is lost: it is skipped (placement, find, list) until
 *   `hostRetrySeconds` have passed and no call to it still hangs; its instances describe as
 *   `ERROR` with `extra.hostLost`, and terminating one records a pending destroy (a file
 *   under `<storageDir>/pending-destroy/<host>/` on the worker) that is carried out first
 *   thing when the host answers again.
 * - Where files are: overlays are made on the host through its libvirt, but the seed ISO
 *   is written by the worker into its own `storageDir` and the domain points at that path.
 *   With a remote host (`qemu+ssh://`) that path must therefore be the same shared folder
 *   (NFS, CephFS) on the worker and on every host; file images must be at their path on
 *   every host, pool images in that pool on every host.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DomainState, type Domain, type DomainInfo, type Hypervisor } from '@unraid/libvirt';
import { isLibvirtImageRef, libvirtHosts, type LibvirtCloudConfig } from '../model/clouds-config.js';
import { CloudError, type CloudAdapter, type CloudInstance, type CloudInstanceState, type CloudOffering, type InstanceSpec } from './contract.js';
import {
  ALREADY_EXISTS,
  DEFAULT_HOST_RETRY_SECONDS,
  DEFAULT_HOST_TIMEOUT_SECONDS,
  describeRooms,
  errorMessage,
  Host,
  HostLostError,
  hostUnanswered,
  kindOf,
  matches,
  NOT_FOUND,
  NOT_RUNNING,
  orUndefined,
  PendingDestroys,
  pickHost,
  POOL_GONE,
  virsh,
  VirshTimeout,
  VOLUME_GONE,
  toCloudError,
  type HostSize,
  type HostTiming,
} from './libvirt-farm.js';
import { requireImage, smallestFit } from './registry.js';
import { writeSeedIso } from './seed-iso.js';

export { DEFAULT_HOST_RETRY_SECONDS, DEFAULT_HOST_TIMEOUT_SECONDS, describeRooms, pickHost, type HostRoom, type HostSize } from './libvirt-farm.js';

/** XML namespace of the cloudgate element in each domain's `<metadata>`. */
export const CLOUDGATE_XMLNS = 'https://cloudgate.example/xmlns/instance/1';

/** Sizes offered when the config names none: a hypervisor has no flavors of its own. */
export const LIBVIRT_OFFERINGS: readonly CloudOffering[] = [
  { id: 'small', name: 'small', cpus: 1, memoryMiB: 2048, diskGiB: 20 },
  { id: 'medium', name: 'medium', cpus: 2, memoryMiB: 4096, diskGiB: 40 },
  { id: 'large', name: 'large', cpus: 4, memoryMiB: 8192, diskGiB: 80 },
  { id: 'xlarge', name: 'xlarge', cpus: 8, memoryMiB: 16384, diskGiB: 160 },
];

/**
 * Normalises virDomainState. PAUSED counts as RUNNING: libvirt pauses domains briefly for
 * migration and snapshots, and an admin's `virsh suspend` is not a reason for the service
 * to destroy and replace the VM; the raw state is in `extra.libvirtState`.
 */
export function toCloudState(state: DomainState): CloudInstanceState {
  switch (state) {
    case DomainState.RUNNING:
    case DomainState.BLOCKED:
    case DomainState.PAUSED:
      return 'RUNNING';
    case DomainState.SHUTDOWN:
    case DomainState.SHUTOFF:
      return 'STOPPED';
    case DomainState.CRASHED:
      return 'ERROR';
    default:
      return 'UNKNOWN';
  }
}

/** The libvirt adapter for one registry entry: one hypervisor (`uri`) or a farm of them (`hosts`). */
export function createLibvirtCloud(cfg: LibvirtCloudConfig): CloudAdapter {
  const { name } = cfg;
  const farm = cfg.hosts !== undefined;
  const offerings = (cfg.offerings ?? LIBVIRT_OFFERINGS).map((o) => ({ ...o }));
  const seedPath = (domain: string) => path.join(cfg.storageDir, `${domain}-seed.iso`);
  const timeoutMs = (cfg.hostTimeoutSeconds ?? DEFAULT_HOST_TIMEOUT_SECONDS) * 1000;
  // A single hypervisor keeps its behaviour from before farms: no timeouts, never skipped.
  const timing: HostTiming = farm ? { timeoutMs, retryMs: (cfg.hostRetrySeconds ?? DEFAULT_HOST_RETRY_SECONDS) * 1000 } : { retryMs: 0 };
  const pending = new PendingDestroys(path.join(cfg.storageDir, 'pending-destroy'));
  // virsh starts a process and a connection of its own per volume: longer than one call, and bounded.
  const overlays = new Overlays(name, cfg.storageDir, farm ? Math.max(3 * timeoutMs, 10_000) : 30_000);
  const hosts = libvirtHosts(cfg).map((ref) => new Host(name, ref, timing, (h, hv) => (farm ? drainPending(h, hv) : Promise.resolve())));
  const hostByName = new Map(hosts.map((h) => [h.name, h]));

  // ---- ids -------------------------------------------------------------------------------

  const idOf = (host: Host, uuid: string) => (farm ? `${host.name}/${uuid}` : uuid);

  /** The host and UUID an id names (host undefined: a bare UUID on a farm, any host); undefined: not one of ours. */
  const parseId = (id: string): { host?: Host; uuid: string } | undefined => {
    const m = /^(?:([^/]+)\/)?([^/]+)$/.exec(id);
    if (!m || !UUID.test(m[2])) return undefined;
    if (m[1] === undefined) return { host: farm ? undefined : hosts[0], uuid: m[2] };
    const host = farm ? hostByName.get(m[1]) : undefined;
    return host && { host, uuid: m[2] };
  };

  // ---- one domain on one host -------------------------------------------------------------

  /** The domain with this name, or undefined when there is none. */
  const byName = (hv: Hypervisor, domain: string): Promise<Domain | undefined> => orUndefined(hv.domainLookupByName(domain));

  /** The domain with this UUID, or undefined when there is none. */
  const byUuid = (hv: Hypervisor, uuid: string): Promise<Domain | undefined> => orUndefined(hv.domainLookupByUUIDString(uuid));

  /** Reads a domain as an instance; undefined when it is not ours or vanished meanwhile. */
  const read = async (host: Host, hv: Hypervisor, dom: Domain, cluster?: string): Promise<CloudInstance | undefined> => {
    try {
      const xml = await hv.domainGetXMLDesc(dom);
      const meta = readMetadata(xml);
      if (!meta || (cluster !== undefined && meta.cluster !== cluster)) return undefined;
      const inst = toInstance(host, xml, meta, await hv.domainGetInfo(dom));
      host.known.set(uuidOf(xml), inst);
      return inst;
    } catch (err) {
      if (matches(err, NOT_FOUND)) return undefined;
      throw err;
    }
  };

  /** Like {@link read}, for a domain that must be there (we just made or adopted it). */
  const mustRead = async (host: Host, hv: Hypervisor, dom: Domain, key: string): Promise<CloudInstance> => {
    const inst = await read(host, hv, dom);
    if (!inst) throw vanished(key);
    return inst;
  };

  /** The instance made with this key on this host, if any. */
  const findOn = async (host: Host, hv: Hypervisor, key: string): Promise<CloudInstance | undefined> => {
    const dom = await byName(hv, key);
    const inst = dom && (await read(host, hv, dom));
    return inst?.idempotencyKey === key ? inst : undefined;
  };

  /** A racing terminate removed the domain mid-create; a retry creates it anew. */
  const vanished = (key: string) => new CloudError('Transient', `${name}: domain "${key}" vanished while being created; retry`);

  const toInstance = (host: Host, xml: string, meta: Metadata, info: DomainInfo): CloudInstance => {
    const domain = unescapeXml(/<name>([^<]*)<\/name>/.exec(xml)?.[1] ?? meta.key);
    return {
      id: idOf(host, uuidOf(xml)),
      name: meta.name,
      state: toCloudState(info.state),
      idempotencyKey: meta.key,
      tags: { cluster: meta.cluster, service: meta.service, key: meta.key },
      createdAt: meta.created,
      host: host.name,
      extra: {
        domain,
        libvirtState: DomainState[info.state]?.toLowerCase() ?? String(info.state),
        vcpus: info.nrVirtCpu,
        memoryMiB: Math.round(info.maxMem / 1024),
        offering: meta.offering,
        image: meta.image,
        // From the XML rather than the config: where this domain's ISO and disk really are.
        seedIso: unescapeXml(SEED_SOURCE.exec(xml)?.[1] ?? seedPath(domain)),
        ...(meta.disk !== undefined && { disk: meta.disk }),
      },
    };
  };

  /** Starts a defined domain unless it already runs (a racing create may have started it). */
  const ensureStarted = async (hv: Hypervisor, dom: Domain): Promise<void> => {
    if ((await hv.domainGetInfo(dom)).state !== DomainState.SHUTOFF) return;
    try {
      await hv.domainCreate(dom);
    } catch (err) {
      if ((await hv.domainGetInfo(dom)).state === DomainState.SHUTOFF) throw err;
    }
  };

  /** The idempotent path: the domain named `key` exists; it must be ours, for this key, and running. */
  const adopt = async (host: Host, hv: Hypervisor, key: string): Promise<CloudInstance> => {
    const dom = await byName(hv, key);
    if (!dom) throw vanished(key);
    if ((await read(host, hv, dom))?.idempotencyKey !== key) {
      throw new CloudError('InvalidRequest', `${name}: a domain named "${key}" exists that cloudgate did not create for this key`);
    }
    await ensureStarted(hv, dom);
    return mustRead(host, hv, dom, key);
  };

  /** What one create attempt did, so a host lost under it can be cleaned up when it returns. */
  interface Attempt {
    created: string;
    defineSent: boolean;
  }

  /**
   * Creates `key` on this host (or adopts it there): seed ISO, overlay disk, define, start.
   * Found first, so a repeated create does not rewrite the ISO under a running guest.
   * Create means "exists and runs": a domain whose creator died before starting it is started.
   */
  const createOn = async (host: Host, hv: Hypervisor, spec: InstanceSpec, key: string, flavor: CloudOffering, image: string, attempt: Attempt): Promise<CloudInstance> => {
    if (await byName(hv, key)) return adopt(host, hv, key);
    const iso = seedPath(key);
    try {
      await writeSeedIso(iso, {
        instanceId: key,
        hostname: key,
        userData: spec.userData,
        meta: { cloudgate_cluster: spec.tags.cluster, cloudgate_service: spec.tags.service },
      });
    } catch (err) {
      throw new CloudError('InvalidRequest', `${name}: cannot write the seed ISO ${iso}: ${errorMessage(err)}`, { cause: err });
    }
    let disk: Overlay;
    try {
      disk = await overlays.create(host.uri, key, image, flavor.diskGiB);
    } catch (err) {
      await rm(iso, { force: true });
      throw err;
    }
    const meta: Metadata = {
      key,
      name: spec.name,
      cluster: spec.tags.cluster,
      service: spec.tags.service,
      image: spec.image,
      offering: flavor.id,
      created: attempt.created,
      disk: disk.ref,
    };
    let dom: Domain;
    try {
      attempt.defineSent = true;
      dom = await hv.domainDefineXML(domainXml({ type: cfg.domainType, domain: key, flavor, disk: disk.xml, iso, network: cfg.network, meta }));
    } catch (err) {
      // A racing create defined it first (its ISO and overlay are the ones on disk now; both carry this instance's data).
      if (matches(err, ALREADY_EXISTS)) return adopt(host, hv, key);
      // Unanswered, the define may have happened: the files stay with the domain (see createOnFarm).
      if (!hostUnanswered(err)) await cleanUp(host, iso, disk.ref);
      throw err;
    }
    try {
      await ensureStarted(hv, dom);
    } catch (err) {
      if (hostUnanswered(err)) throw err;
      // Leave nothing behind that would hold the key: the retry starts clean.
      await hv.domainUndefine(dom).catch(() => undefined);
      await cleanUp(host, iso, disk.ref);
      throw err;
    }
    return mustRead(host, hv, dom, key);
  };

  /** Removes a failed create's files; best effort (the create's own error is the one to report). */
  const cleanUp = async (host: Host, iso: string, disk: string): Promise<void> => {
    await overlays.remove(host.uri, disk).catch(() => undefined);
    await rm(iso, { force: true });
  };

  /**
   * Destroys and undefines one of our domains, then removes its overlay and seed ISO; a
   * domain that is gone or not ours is left alone. The overlay goes before the undefine and
   * the ISO after it: until the undefine a retried terminate still finds the domain and
   * with it the paths of both.
   */
  const destroyOn = async (host: Host, hv: Hypervisor, dom: Domain | undefined, expect?: { created?: string }): Promise<void> => {
    if (!dom) return;
    let xml: string;
    try {
      xml = await hv.domainGetXMLDesc(dom);
    } catch (err) {
      if (matches(err, NOT_FOUND)) return;
      throw err;
    }
    const meta = readMetadata(xml);
    // Gone, or not a cloudgate domain: nothing of ours to do, and never touch theirs.
    if (!meta || (expect?.created !== undefined && meta.created !== expect.created)) return;
    await hv.domainDestroy(dom).catch((err: unknown) => {
      if (!matches(err, NOT_RUNNING) && !matches(err, NOT_FOUND)) throw err;
    });
    if (meta.disk !== undefined) await overlays.remove(host.uri, meta.disk);
    await hv.domainUndefine(dom).catch((err: unknown) => {
      if (!matches(err, NOT_FOUND)) throw err;
    });
    const iso = SEED_SOURCE.exec(xml)?.[1];
    if (iso !== undefined) await rm(unescapeXml(iso), { force: true });
    host.known.delete(uuidOf(xml));
    host.invalidateUsage();
  };

  /** Every cloudgate domain on this host (of one cluster). */
  const listOn = async (host: Host, hv: Hypervisor, cluster?: string): Promise<CloudInstance[]> => {
    const doms = await hv.connectListAllDomains();
    const all = await Promise.all(doms.map((d) => read(host, hv, d, cluster)));
    return all.filter((i): i is CloudInstance => i !== undefined);
  };

  /** What a host's cloudgate domains take of it, by domain name (for placement). */
  const usageOn = async (hv: Hypervisor): Promise<Map<string, HostSize>> => {
    const doms = await hv.connectListAllDomains();
    const sizes = await Promise.all(
      doms.map(async (d): Promise<[string, HostSize] | undefined> => {
        try {
          const xml = await hv.domainGetXMLDesc(d);
          return readMetadata(xml) ? [domainNameOf(xml), sizeOf(xml)] : undefined;
        } catch (err) {
          if (matches(err, NOT_FOUND)) return undefined;
          throw err;
        }
      }),
    );
    return new Map(sizes.filter((s): s is [string, HostSize] => s !== undefined));
  };

  // ---- the farm ----------------------------------------------------------------------------

  /**
   * Runs `fn` on every host that answers (in parallel); lost hosts are left out. Throws when
   * no host answers at all: an empty answer would read as "nothing there".
   */
  const onAnswering = async <T>(what: string, fn: (host: Host, hv: Hypervisor) => Promise<T>): Promise<{ host: Host; value: T }[]> => {
    const results = await Promise.all(
      hosts.map(async (host): Promise<{ host: Host; value: T } | HostLostError> => {
        try {
          return { host, value: await host.run((hv) => fn(host, hv)) };
        } catch (err) {
          if (err instanceof HostLostError) return err;
          throw err;
        }
      }),
    );
    const answered = results.filter((r): r is { host: Host; value: T } => !(r instanceof HostLostError));
    if (answered.length === 0) {
      const why = (results as HostLostError[]).map((e) => `${e.host}: ${e.reason}`).join('; ');
      throw new CloudError('Transient', `${name}: ${what}: no host of the farm answers (${why})`);
    }
    return answered;
  };

  interface Located {
    host: Host;
    inst: CloudInstance;
  }

  /** Every answering host's instance made with this key (normally at most one). */
  const locate = async (key: string): Promise<Located[]> =>
    (await onAnswering(`find "${key}"`, (host, hv) => findOn(host, hv, key)))
      .filter((r): r is { host: Host; value: CloudInstance } => r.value !== undefined)
      .map((r) => ({ host: r.host, inst: r.value }));

  /** The copy of a key that wins when it exists on two hosts: the earliest made (then host name), for every worker alike. */
  const earliestFirst = (a: Located, b: Located) =>
    (a.inst.createdAt ?? '').localeCompare(b.inst.createdAt ?? '') || a.host.name.localeCompare(b.host.name);

  /**
   * Keeps the earliest copy of a key (started) and removes the others. Only duplicates made
   * by racing creates on two hosts get here; see the module comment.
   */
  const keepEarliest = async (copies: Located[], key: string): Promise<CloudInstance> => {
    const [winner, ...losers] = [...copies].sort(earliestFirst);
    for (const l of losers) await l.host.run((hv) => byName(hv, key).then((dom) => destroyOn(l.host, hv, dom, { created: l.inst.createdAt })));
    return winner.host.run((hv) => adopt(winner.host, hv, key));
  };

  /**
   * The host a new instance of `key` goes to, reserved for it in this process until its
   * create ends: the one with the most room ({@link pickHost}).
   */
  const place = async (key: string, flavor: CloudOffering): Promise<Host> => {
    await Promise.all(hosts.map((h) => h.refreshUsage(usageOn).catch((err: unknown) => { if (!(err instanceof HostLostError)) throw err; })));
    // From here to the reservation nothing awaits: concurrent placements in this process see each other.
    const rooms = hosts.map((h) => h.room());
    const pick = pickHost(rooms, flavor);
    if (!pick) {
      const wanted = `a ${flavor.name} (${flavor.cpus} cpus, ${flavor.memoryMiB} MiB)`;
      if (rooms.every((r) => !r.free)) throw new CloudError('Transient', `${name}: no host of the farm answers, so none can take ${wanted}: ${describeRooms(rooms)}`);
      throw new CloudError('CapacityExhausted', `${name}: no host of the farm has room for ${wanted}: ${describeRooms(rooms)}`);
    }
    const host = hostByName.get(pick.host)!;
    host.reservations.set(key, { cpus: flavor.cpus, memoryMiB: flavor.memoryMiB });
    return host;
  };

  /** Farm creates in flight in this process, by key: a second create of a key waits for the first. */
  const creating = new Map<string, Promise<CloudInstance>>();

  /** A farm create: found anywhere, or placed, made, and checked for a racing twin on another host. */
  const createOnFarm = (spec: InstanceSpec, key: string, flavor: CloudOffering, image: string): Promise<CloudInstance> => {
    let p = creating.get(key);
    if (!p) {
      p = createOnFarmOnce(spec, key, flavor, image).finally(() => creating.delete(key));
      creating.set(key, p);
    }
    return p;
  };

  const createOnFarmOnce = async (spec: InstanceSpec, key: string, flavor: CloudOffering, image: string): Promise<CloudInstance> => {
    const found = await locate(key);
    if (found.length > 0) return keepEarliest(found, key);
    let host: Host;
    try {
      host = await place(key, flavor);
    } catch (err) {
      // Full now, maybe because another worker made this very key meanwhile.
      const again = err instanceof CloudError && err.kind === 'CapacityExhausted' ? await locate(key).catch(() => []) : [];
      if (again.length > 0) return keepEarliest(again, key);
      throw err;
    }
    const attempt: Attempt = { created: new Date().toISOString(), defineSent: false };
    let made: CloudInstance;
    try {
      made = await host.run((hv) => createOn(host, hv, spec, key, flavor, image, attempt));
    } catch (err) {
      // The host went away after the define was sent: the domain may be there when it returns, and a retry goes elsewhere.
      if (err instanceof HostLostError && attempt.defineSent) {
        await pending.add(host.name, { domain: key, created: attempt.created, reason: `create of "${key}" unanswered: ${err.reason}` });
      }
      throw err;
    } finally {
      host.reservations.delete(key);
      host.invalidateUsage();
    }
    let copies: Located[];
    try {
      copies = await locate(key);
    } catch {
      return made;
    }
    return copies.length > 1 ? keepEarliest(copies, key) : made;
  };

  /** What a farm says of an instance on a host that does not answer: lost, as last seen. */
  const lostInstance = (host: Host, id: string, uuid: string, err: HostLostError): CloudInstance => {
    const last = host.known.get(uuid);
    return {
      ...(last ?? { name: id }),
      id,
      state: 'ERROR',
      host: host.name,
      extra: { ...last?.extra, libvirtState: 'unknown', hostLost: true, lostReason: err.reason },
    };
  };

  /** Carries out the pending destroys of a host that answers again, before anything else runs on it. */
  async function drainPending(host: Host, hv: Hypervisor): Promise<void> {
    for (const { file, entry } of await pending.list(host.name)) {
      try {
        const dom = entry.uuid !== undefined ? await byUuid(hv, entry.uuid) : await byName(hv, entry.domain ?? '');
        await destroyOn(host, hv, dom, { created: entry.created });
        await pending.done(file);
      } catch (err) {
        // Lost again: the rest waits for the next time. Refused: the file stays (for the next worker, or a human), the others go on.
        if (hostUnanswered(err)) throw err;
      }
    }
  }

  // ---- the adapter -------------------------------------------------------------------------

  const single = hosts[0];

  return {
    name,
    kind: 'libvirt',

    async listOfferings() {
      return offerings.map((o) => ({ ...o }));
    },

    async createInstance(spec, idempotencyKey) {
      const flavor = smallestFit(offerings, spec.offering);
      if (!flavor) {
        const o = spec.offering;
        throw new CloudError(
          'InvalidOffering',
          `${name}: no size fits ${o.cpus} cpus / ${o.memoryMiB} MiB / ${o.diskGiB} GiB (offered: ${offerings
            .map((f) => `${f.name} ${f.cpus}/${f.memoryMiB}/${f.diskGiB}`)
            .join(', ')})`,
        );
      }
      // Only the registry's images: a definition's image name is never a path or volume on the host.
      const image = requireImage(name, cfg.images, spec.image);
      if (!imageKind(image)) {
        throw new CloudError('InvalidRequest', `${name}: image "${spec.image}" maps to ${JSON.stringify(image)}, which is neither an absolute path nor a pool/volume`);
      }
      const key = idempotencyKey;
      try {
        if (farm) return await createOnFarm(spec, key, flavor, image);
        const attempt: Attempt = { created: new Date().toISOString(), defineSent: false };
        return await single.run((hv) => createOn(single, hv, spec, key, flavor, image, attempt));
      } catch (err) {
        throw toCloudError(err, `${name}: create "${key}"`);
      }
    },

    async describeInstance(id) {
      const notFound = () => new CloudError('NotFound', `${name}: no instance "${id}"`);
      const at = parseId(id);
      if (!at) throw notFound();
      try {
        if (!at.host) {
          const found = await onAnswering(`describe "${id}"`, async (host, hv) => {
            const dom = await byUuid(hv, at.uuid);
            return dom && read(host, hv, dom);
          });
          const inst = found.find((f) => f.value)?.value;
          if (!inst) throw notFound();
          return inst;
        }
        const host = at.host;
        return await host.run(async (hv) => {
          const dom = await byUuid(hv, at.uuid);
          const inst = dom && (await read(host, hv, dom));
          if (!inst) throw notFound();
          return inst;
        });
      } catch (err) {
        // A lost host's instance is not an error to retry forever: the service replaces it elsewhere.
        if (farm && at.host && err instanceof HostLostError) return lostInstance(at.host, id, at.uuid, err);
        throw toCloudError(err, `${name}: describe "${id}"`);
      }
    },

    async findInstance(idempotencyKey) {
      try {
        if (!farm) return await single.run((hv) => findOn(single, hv, idempotencyKey));
        return (await locate(idempotencyKey)).sort(earliestFirst)[0]?.inst;
      } catch (err) {
        throw toCloudError(err, `${name}: find "${idempotencyKey}"`);
      }
    },

    async listInstances(filter) {
      try {
        const all = farm
          ? (await onAnswering('list instances', (host, hv) => listOn(host, hv, filter.cluster))).flatMap((r) => r.value)
          : await single.run((hv) => listOn(single, hv, filter.cluster));
        return all.sort((a, b) => a.id.localeCompare(b.id));
      } catch (err) {
        throw toCloudError(err, `${name}: list instances`);
      }
    },

    async terminateInstance(id) {
      const at = parseId(id);
      // Not an id of ours: nothing of ours to do.
      if (!at) return;
      try {
        if (!at.host) {
          await onAnswering(`terminate "${id}"`, async (host, hv) => destroyOn(host, hv, await byUuid(hv, at.uuid)));
          return;
        }
        const host = at.host;
        await host.run(async (hv) => destroyOn(host, hv, await byUuid(hv, at.uuid)));
      } catch (err) {
        if (farm && at.host && err instanceof HostLostError) {
          // Teardown must not wait for a host that may never come back: destroyed when it answers again.
          const last = at.host.known.get(at.uuid);
          await pending.add(at.host.name, { uuid: at.uuid, domain: last?.extra?.domain as string | undefined, reason: `terminate while lost: ${err.reason}` });
          return;
        }
        throw toCloudError(err, `${name}: terminate "${id}"`);
      }
    },

    async close() {
      await Promise.all(hosts.map((h) => h.close()));
    },
  };
}

// ---- overlay disks -----------------------------------------------------------------------

/** An instance's own disk: the `<disk>` element for the domain and what its metadata keeps to remove it. */
interface Overlay {
  xml: string;
  /** `pool/volume` of a pool image's overlay, or the absolute path of a file image's. */
  ref: string;
}

/**
 * Per-instance disks: a qcow2 overlay `<domain>.qcow2` with the registry's image as its
 * read-only backing store, sized to the flavor's disk. No guest writes the base image and no
 * two guests share a disk. Made through the host's libvirt (storage volumes), so it is made
 * on the host, however remote: a pool image's overlay in the same pool; a file image's in a
 * directory pool over `storageDir` (an existing pool there, or a transient one named
 * `cloudgate-<cloud>`). The binding has no storage-volume calls, so this runs `virsh`
 * (Debian `libvirt-clients`), one short connection per volume created or deleted.
 *
 * libvirt's test driver without a daemon (`test:///…`) keeps its state inside this process,
 * out of virsh's reach: there no volume is made, and the domain still points at the
 * overlay path (the test driver never opens disks).
 */
class Overlays {
  private readonly filePools = new Map<string, Promise<{ pool: string; dir: string }>>();
  private readonly bases = new Map<string, Promise<{ path: string; format: string }>>();

  constructor(
    private readonly cloud: string,
    private readonly storageDir: string,
    private readonly timeoutMs: number,
  ) {}

  /** Makes the overlay of `domain` over `image` (or finds the one a crashed create made: never booted, so still pristine). */
  async create(uri: string, domain: string, image: string, sizeGiB: number): Promise<Overlay> {
    const vol = `${domain}.qcow2`;
    if (imageKind(image) === 'file') {
      if (processLocal(uri)) return fileOverlay(path.join(this.storageDir, vol));
      const base = { path: image, format: image.endsWith('.qcow2') ? 'qcow2' : 'raw' };
      const { dir } = await this.retryOnStalePool(uri, async () => {
        const p = await this.filePool(uri);
        await this.createVolume(uri, p.pool, vol, sizeGiB, base);
        return p;
      });
      return fileOverlay(path.posix.join(dir, vol));
    }
    const [pool, baseVol] = image.split('/');
    if (!processLocal(uri)) await this.createVolume(uri, pool, vol, sizeGiB, await this.baseOf(uri, pool, baseVol));
    return {
      ref: `${pool}/${vol}`,
      xml: `<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='${escapeXml(pool)}' volume='${escapeXml(vol)}'/><target dev='vda' bus='virtio'/></disk>`,
    };
  }

  /** Deletes an overlay; one that is gone already is fine. */
  async remove(uri: string, ref: string): Promise<void> {
    if (processLocal(uri)) return;
    const remove = async () => {
      if (ref.startsWith('/')) await this.filePool(uri); // the transient pool may be gone with a libvirtd restart
      const [pool, vol] = ref.split('/');
      await virsh(uri, ref.startsWith('/') ? ['vol-delete', ref] : ['vol-delete', '--pool', pool, vol], { timeoutMs: this.timeoutMs });
    };
    try {
      await this.retryOnStalePool(uri, remove);
    } catch (err) {
      if (!VOLUME_GONE.test(errorMessage(err))) throw new CloudError(kindOf(errorMessage(err)), `${this.cloud}: cannot delete the overlay ${ref}: ${errorMessage(err)}`, { cause: err });
    }
  }

  private async createVolume(uri: string, pool: string, vol: string, sizeGiB: number, base: { path: string; format: string }): Promise<void> {
    const xml = `<volume><name>${escapeXml(vol)}</name><capacity unit='GiB'>${sizeGiB}</capacity><allocation>0</allocation><target><format type='qcow2'/></target><backingStore><path>${escapeXml(base.path)}</path><format type='${escapeXml(base.format)}'/></backingStore></volume>`;
    // virsh reads the XML from a file of its own (node's stdin pipe is a socket, which /dev/stdin cannot open).
    const dir = await mkdtemp(path.join(tmpdir(), 'cloudgate-vol-'));
    try {
      await writeFile(path.join(dir, 'volume.xml'), xml);
      await virsh(uri, ['vol-create', pool, path.join(dir, 'volume.xml')], { timeoutMs: this.timeoutMs });
    } catch (err) {
      if (ALREADY_EXISTS.test(errorMessage(err))) return;
      throw new CloudError(kindOf(errorMessage(err)), `${this.cloud}: cannot create the overlay ${pool}/${vol} over ${base.path}: ${errorMessage(err)}`, { cause: err });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Path and format of a pool image, read once per host. */
  private baseOf(uri: string, pool: string, vol: string): Promise<{ path: string; format: string }> {
    return this.cached(this.bases, `${uri} ${pool}/${vol}`, async () => {
      let xml: string;
      try {
        xml = await virsh(uri, ['vol-dumpxml', '--pool', pool, vol], { timeoutMs: this.timeoutMs });
      } catch (err) {
        if (err instanceof VirshTimeout) throw err;
        throw new CloudError('InvalidRequest', `${this.cloud}: image volume ${pool}/${vol}: ${errorMessage(err)}`, { cause: err });
      }
      const target = /<target>([\s\S]*?)<\/target>/.exec(xml)?.[1] ?? '';
      const file = /<path>([^<]*)<\/path>/.exec(target)?.[1];
      if (!file) throw new CloudError('InvalidRequest', `${this.cloud}: image volume ${pool}/${vol} has no path`);
      return { path: unescapeXml(file), format: /<format type='([^']*)'/.exec(target)?.[1] ?? 'raw' };
    });
  }

  /** The directory pool over `storageDir` on this host: one that is there, or a transient one we start. */
  private filePool(uri: string): Promise<{ pool: string; dir: string }> {
    return this.cached(this.filePools, uri, async () => {
      let pool = `cloudgate-${this.cloud}`;
      const createAs = (build: boolean) =>
        virsh(uri, ['pool-create-as', pool, 'dir', '--target', this.storageDir, ...(build ? ['--build'] : [])], { timeoutMs: this.timeoutMs });
      try {
        await createAs(true).catch((err: unknown) => {
          // The test driver cannot build (mkdir) a pool; a real host's storageDir then must exist.
          if (/unsupported flags/i.test(errorMessage(err))) return createAs(false);
          throw err;
        });
      } catch (err) {
        const conflict = /source conflict with pool:? '([^']+)'/i.exec(errorMessage(err));
        if (conflict) pool = conflict[1];
        else if (!ALREADY_EXISTS.test(errorMessage(err))) {
          throw new CloudError(kindOf(errorMessage(err)), `${this.cloud}: cannot start a storage pool over ${this.storageDir}: ${errorMessage(err)}`, { cause: err });
        }
      }
      const xml = await virsh(uri, ['pool-dumpxml', pool], { timeoutMs: this.timeoutMs });
      const dir = /<target>[\s\S]*?<path>([^<]*)<\/path>/.exec(xml)?.[1];
      return { pool, dir: dir ? unescapeXml(dir) : this.storageDir };
    });
  }

  /** Runs `fn`; when the pool it used is gone (a transient pool after a libvirtd restart), forgets it and runs once more. */
  private async retryOnStalePool<T>(uri: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (!POOL_GONE.test(errorMessage(err))) throw err;
      this.filePools.delete(uri);
      return fn();
    }
  }

  /** A memo that forgets failures. */
  private cached<T>(memo: Map<string, Promise<T>>, key: string, make: () => Promise<T>): Promise<T> {
    let p = memo.get(key);
    if (!p) {
      p = make();
      memo.set(key, p);
      p.catch(() => memo.delete(key));
    }
    return p;
  }
}

function fileOverlay(file: string): Overlay {
  return {
    ref: file,
    xml: `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${escapeXml(file)}'/><target dev='vda' bus='virtio'/></disk>`,
  };
}

/** `file` for an absolute path, `volume` for `pool/volume`, undefined for anything else. */
function imageKind(image: string): 'file' | 'volume' | undefined {
  if (!isLibvirtImageRef(image)) return undefined;
  if (image.startsWith('/')) return 'file';
  return /^[^/]+\/[^/]+$/.test(image) ? 'volume' : undefined;
}

/** The test driver without a daemon: its state lives in this process only. */
function processLocal(uri: string): boolean {
  return /^test:\/\/\//.test(uri);
}

// ---- domain XML --------------------------------------------------------------------------

interface Metadata {
  key: string;
  name: string;
  cluster: string;
  service: string;
  image: string;
  offering: string;
  created: string;
  /** The instance's overlay disk (`pool/volume` or a path); absent on domains made before overlays. */
  disk?: string;
}

function domainXml(d: { type: string; domain: string; flavor: CloudOffering; disk: string; iso: string; network: string; meta: Metadata }): string {
  const attrs = Object.entries(d.meta)
    .filter((e): e is [string, string] => e[1] !== undefined)
    .map(([k, v]) => `${k}="${escapeXml(v)}"`)
    .join(' ');
  return `<domain type='${escapeXml(d.type)}'>
  <name>${escapeXml(d.domain)}</name>
  <title>${escapeXml(`cloudgate ${d.meta.cluster}/${d.meta.service}`)}</title>
  <metadata>
    <cloudgate:instance xmlns:cloudgate="${CLOUDGATE_XMLNS}" ${attrs}/>
  </metadata>
  <memory unit='MiB'>${d.flavor.memoryMiB}</memory>
  <vcpu>${d.flavor.cpus}</vcpu>
  <os><type>hvm</type><boot dev='hd'/><boot dev='cdrom'/></os>
  <features><acpi/><apic/></features>
  <devices>
    ${d.disk}
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='${escapeXml(d.iso)}'/><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='network'><source network='${escapeXml(d.network)}'/><model type='virtio'/></interface>
    <console type='pty'/>
  </devices>
</domain>`;
}

/** The seed CD-ROM's file in a domain's XML. */
const SEED_SOURCE = /<disk type='file' device='cdrom'>(?:(?!<\/disk>)[\s\S])*?<source file='([^']*)'/;

/** Our metadata element, under whatever prefix libvirt or an admin's tool gave it. */
function readMetadata(xml: string): Metadata | undefined {
  for (const m of xml.matchAll(/<([A-Za-z_][\w.-]*):instance\b([^>]*?)\/?>/g)) {
    const attrs = new Map<string, string>();
    for (const a of m[2].matchAll(/([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) attrs.set(a[1], unescapeXml(a[2] ?? a[3]));
    if (attrs.get(`xmlns:${m[1]}`) !== CLOUDGATE_XMLNS) continue;
    const get = (k: string) => attrs.get(k) ?? '';
    if (!get('key')) return undefined;
    const disk = attrs.get('disk');
    return {
      key: get('key'),
      name: get('name') || get('key'),
      cluster: get('cluster'),
      service: get('service'),
      image: get('image'),
      offering: get('offering'),
      created: get('created'),
      ...(disk !== undefined && { disk }),
    };
  }
  return undefined;
}

/** A domain's UUID, from its XML. */
function uuidOf(xml: string): string {
  return /<uuid>([^<]*)<\/uuid>/.exec(xml)?.[1] ?? '';
}

/** A domain's name, from its XML. */
function domainNameOf(xml: string): string {
  return unescapeXml(/<name>([^<]*)<\/name>/.exec(xml)?.[1] ?? '');
}

/** vCPUs and memory a domain takes, from its XML (libvirt writes memory back in KiB). */
function sizeOf(xml: string): HostSize {
  const cpus = Number(/<vcpu\b[^>]*>(\d+)<\/vcpu>/.exec(xml)?.[1] ?? 0);
  const mem = /<memory(?:\s+unit='(\w+)')?[^>]*>(\d+)<\/memory>/.exec(xml);
  const perMiB: Record<string, number> = { b: 1 / 1048576, bytes: 1 / 1048576, kib: 1 / 1024, k: 1 / 1024, mib: 1, m: 1, gib: 1024, g: 1024 };
  const memoryMiB = mem ? Math.round(Number(mem[2]) * (perMiB[(mem[1] ?? 'KiB').toLowerCase()] ?? 1 / 1024)) : 0;
  return { cpus, memoryMiB };
}

const XML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };

function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => XML_ESCAPES[c]);
}

function unescapeXml(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);/g, (_, e: string) => {
    if (e.startsWith('#x')) return String.fromCodePoint(parseInt(e.slice(2), 16));
    if (e.startsWith('#')) return String.fromCodePoint(parseInt(e.slice(1), 10));
    return { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" }[e] ?? '';
  });
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
