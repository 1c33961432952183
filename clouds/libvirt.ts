/**
 * `libvirt`: instances are libvirt domains on one hypervisor (a KVM farm node over
 * `qemu+ssh://`, Xen, or libvirt's built-in test driver `test:///default` in tests).
 *
 * - Idempotency: the domain name is the idempotency key. libvirt refuses a second domain
 *   with a taken name ("already exists"), so two workers racing on one key make one domain.
 * - Memory: nothing is kept in this process. Key, cluster and service live in the domain's
 *   `<metadata>` (namespace {@link CLOUDGATE_XMLNS}), so a restarted worker finds and lists
 *   its instances by reading the domain XML back; domains without that element (the test
 *   driver's own "test" domain, an admin's VMs) are never listed, described or touched.
 * - User-data: a read-only CD-ROM seed ISO (see seed-iso.ts) at `<storageDir>/<name>-seed.iso`.
 * - The instance id is the domain's UUID, not its name: a key terminated and created again
 *   is a new instance with a new id (libvirt makes a new UUID per define), so a stale id
 *   never describes its successor. The name (= key) is what `virsh list` and the UI show,
 *   and it is in `extra.domain`.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { DomainState, Hypervisor, type Domain, type DomainInfo } from '@unraid/libvirt';
import { isLibvirtImageRef, type LibvirtCloudConfig } from '../model/clouds-config.js';
import {
  CloudError,
  type CloudAdapter,
  type CloudErrorKind,
  type CloudInstance,
  type CloudInstanceState,
  type CloudOffering,
} from './contract.js';
import { requireImage, smallestFit } from './registry.js';
import { writeSeedIso } from './seed-iso.js';

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

/** The libvirt adapter for one hypervisor URI. Adapters on one URI share one connection. */
export function createLibvirtCloud(cfg: LibvirtCloudConfig): CloudAdapter {
  const { name, uri } = cfg;
  const offerings = (cfg.offerings ?? LIBVIRT_OFFERINGS).map((o) => ({ ...o }));
  const seedPath = (domain: string) => path.join(cfg.storageDir, `${domain}-seed.iso`);
  const shared = acquire(uri);
  let closed = false;

  /**
   * Runs `fn` on the shared connection. When the connection turns out to be broken (libvirtd
   * restarted, SSH dropped) it is replaced and `fn` runs once more on the new one: every
   * operation here is idempotent, so repeating one is safe.
   */
  const withConn = async <T>(fn: (hv: Hypervisor) => Promise<T>): Promise<T> => {
    for (let attempt = 0; ; attempt++) {
      if (closed) throw new CloudError('InvalidRequest', `${name}: the adapter is closed`);
      let hv: Hypervisor;
      try {
        hv = await connect(shared);
      } catch (err) {
        throw toCloudError(err, `${name}: cannot connect to ${uri}`);
      }
      try {
        return await fn(hv);
      } catch (err) {
        if (!matches(err, CONNECTION_LOST)) throw err;
        forget(shared, hv);
        if (attempt > 0) throw err;
      }
    }
  };

  /** The domain with this name, or undefined when there is none. */
  const byName = (hv: Hypervisor, domain: string): Promise<Domain | undefined> => orUndefined(hv.domainLookupByName(domain));

  /** The domain with this instance id (UUID), or undefined when there is none. */
  const byId = async (hv: Hypervisor, id: string): Promise<Domain | undefined> =>
    UUID.test(id) ? orUndefined(hv.domainLookupByUUIDString(id)) : undefined;

  /** Reads a domain as an instance; undefined when it is not ours or vanished meanwhile. */
  const read = async (hv: Hypervisor, dom: Domain, cluster?: string): Promise<CloudInstance | undefined> => {
    try {
      const xml = await hv.domainGetXMLDesc(dom);
      const meta = readMetadata(xml);
      if (!meta || (cluster !== undefined && meta.cluster !== cluster)) return undefined;
      return toInstance(xml, meta, await hv.domainGetInfo(dom));
    } catch (err) {
      if (matches(err, NOT_FOUND)) return undefined;
      throw err;
    }
  };

  /** Like {@link read}, for a domain that must be there (we just made or adopted it). */
  const mustRead = async (hv: Hypervisor, dom: Domain, key: string): Promise<CloudInstance> => {
    const inst = await read(hv, dom);
    if (!inst) throw vanished(key);
    return inst;
  };

  /** A racing terminate removed the domain mid-create; a retry creates it anew. */
  const vanished = (key: string) => new CloudError('Transient', `${name}: domain "${key}" vanished while being created; retry`);

  const toInstance = (xml: string, meta: Metadata, info: DomainInfo): CloudInstance => {
    const domain = unescapeXml(/<name>([^<]*)<\/name>/.exec(xml)?.[1] ?? meta.key);
    return {
      id: /<uuid>([^<]*)<\/uuid>/.exec(xml)?.[1] ?? '',
      name: meta.name,
      state: toCloudState(info.state),
      idempotencyKey: meta.key,
      tags: { cluster: meta.cluster, service: meta.service, key: meta.key },
      createdAt: meta.created,
      extra: {
        domain,
        libvirtState: DomainState[info.state]?.toLowerCase() ?? String(info.state),
        vcpus: info.nrVirtCpu,
        memoryMiB: Math.round(info.maxMem / 1024),
        offering: meta.offering,
        image: meta.image,
        // From the XML rather than the config: where this domain's ISO really is.
        seedIso: unescapeXml(SEED_SOURCE.exec(xml)?.[1] ?? seedPath(domain)),
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
  const adopt = async (hv: Hypervisor, key: string): Promise<CloudInstance> => {
    const dom = await byName(hv, key);
    if (!dom) throw vanished(key);
    if ((await read(hv, dom))?.idempotencyKey !== key) {
      throw new CloudError('InvalidRequest', `${name}: a domain named "${key}" exists that cloudgate did not create for this key`);
    }
    await ensureStarted(hv, dom);
    return mustRead(hv, dom, key);
  };

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
      const ref = requireImage(name, cfg.images, spec.image);
      const disk = diskXml(ref);
      if (!disk) {
        throw new CloudError('InvalidRequest', `${name}: image "${spec.image}" maps to ${JSON.stringify(ref)}, which is neither an absolute path nor a pool/volume`);
      }
      const key = idempotencyKey;
      try {
        return await withConn(async (hv) => {
          // Found first, so a repeated create does not rewrite the ISO under a running guest.
          // Create means "exists and runs": a domain whose creator died before starting it is started.
          const existing = await byName(hv, key);
          if (existing) return await adopt(hv, key);

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
          const meta: Metadata = {
            key,
            name: spec.name,
            cluster: spec.tags.cluster,
            service: spec.tags.service,
            image: spec.image,
            offering: flavor.id,
            created: new Date().toISOString(),
          };
          let dom: Domain;
          try {
            dom = await hv.domainDefineXML(domainXml({ type: cfg.domainType, domain: key, flavor, disk, iso, network: cfg.network, meta }));
          } catch (err) {
            // A racing create defined it first (its ISO is the one on disk now; both carry this instance's data).
            if (matches(err, ALREADY_EXISTS)) return await adopt(hv, key);
            await rm(iso, { force: true });
            throw err;
          }
          try {
            await ensureStarted(hv, dom);
          } catch (err) {
            // Leave nothing behind that would hold the key: the retry starts clean.
            await hv.domainUndefine(dom).catch(() => undefined);
            await rm(iso, { force: true });
            throw err;
          }
          return await mustRead(hv, dom, key);
        });
      } catch (err) {
        throw toCloudError(err, `${name}: create "${key}"`);
      }
    },

    async describeInstance(id) {
      try {
        return await withConn(async (hv) => {
          const dom = await byId(hv, id);
          const inst = dom && (await read(hv, dom));
          if (!inst) throw new CloudError('NotFound', `${name}: no instance "${id}"`);
          return inst;
        });
      } catch (err) {
        throw toCloudError(err, `${name}: describe "${id}"`);
      }
    },

    async findInstance(idempotencyKey) {
      try {
        return await withConn(async (hv) => {
          const dom = await byName(hv, idempotencyKey);
          const inst = dom && (await read(hv, dom));
          return inst?.idempotencyKey === idempotencyKey ? inst : undefined;
        });
      } catch (err) {
        throw toCloudError(err, `${name}: find "${idempotencyKey}"`);
      }
    },

    async listInstances(filter) {
      try {
        return await withConn(async (hv) => {
          const doms = await hv.connectListAllDomains();
          const all = await Promise.all(doms.map((d) => read(hv, d, filter.cluster)));
          return all.filter((i): i is CloudInstance => i !== undefined).sort((a, b) => a.id.localeCompare(b.id));
        });
      } catch (err) {
        throw toCloudError(err, `${name}: list instances`);
      }
    },

    async terminateInstance(id) {
      try {
        await withConn(async (hv) => {
          const dom = await byId(hv, id);
          const ours = dom && (await read(hv, dom));
          // Gone, or not a cloudgate domain: nothing of ours to do, and never touch theirs.
          if (!dom || !ours) return;
          await hv.domainDestroy(dom).catch((err: unknown) => {
            if (!matches(err, NOT_RUNNING) && !matches(err, NOT_FOUND)) throw err;
          });
          await hv.domainUndefine(dom).catch((err: unknown) => {
            if (!matches(err, NOT_FOUND)) throw err;
          });
          // After the undefine: until then a retried terminate still finds the domain and its ISO.
          await rm(String(ours.extra?.seedIso), { force: true });
        });
      } catch (err) {
        throw toCloudError(err, `${name}: terminate "${id}"`);
      }
    },

    async close() {
      if (closed) return;
      closed = true;
      await release(shared);
    },
  };
}

// ---- the shared connection ---------------------------------------------------------------

interface SharedConnection {
  uri: string;
  refs: number;
  open?: Promise<Hypervisor>;
  /** The connection `open` opens, so a broken one is forgotten only once. */
  current?: Hypervisor;
}

/**
 * One connection per URI per process. For `test:///default` this is what makes the state
 * survive an adapter being closed and reopened: the test driver's default state lives as
 * long as any connection to it is open. For real hypervisors it saves an SSH/TLS handshake
 * per adapter.
 */
const connections = new Map<string, SharedConnection>();

function acquire(uri: string): SharedConnection {
  let c = connections.get(uri);
  if (!c) {
    c = { uri, refs: 0 };
    connections.set(uri, c);
  }
  c.refs++;
  return c;
}

function connect(c: SharedConnection): Promise<Hypervisor> {
  if (!c.open) {
    const hv = new Hypervisor({ uri: c.uri });
    const opening = hv.connectOpen().then(() => hv);
    c.open = opening;
    c.current = hv;
    // A failed open must not stick: the next call tries again.
    void opening.catch(() => {
      if (c.open === opening) forget(c, hv);
    });
  }
  return c.open;
}

/**
 * Drops a broken connection so the next call reconnects. It is not closed: calls still in
 * flight on it would then use freed memory in the native binding, and a dead connection
 * costs a few bytes.
 */
function forget(c: SharedConnection, hv: Hypervisor): void {
  if (c.current === hv) {
    c.open = undefined;
    c.current = undefined;
  }
}

async function release(c: SharedConnection): Promise<void> {
  if (--c.refs > 0) return;
  if (connections.get(c.uri) === c) connections.delete(c.uri);
  const open = c.open;
  c.open = undefined;
  c.current = undefined;
  const hv = await open?.catch(() => undefined);
  await hv?.connectClose();
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
}

/**
 * The image disk for a registry reference (never a definition's image name): an absolute
 * path is a file on the hypervisor host, `pool/volume` a storage volume. Production wants a
 * per-instance qcow2 overlay over the base image here; the binding cannot create storage
 * volumes, so that is the operator's (or a pool's) job.
 */
function diskXml(image: string): string | undefined {
  if (!isLibvirtImageRef(image)) return undefined;
  if (image.startsWith('/')) {
    const format = image.endsWith('.qcow2') ? 'qcow2' : 'raw';
    return `<disk type='file' device='disk'><driver name='qemu' type='${format}'/><source file='${escapeXml(image)}'/><target dev='vda' bus='virtio'/></disk>`;
  }
  const vol = /^([^/]+)\/([^/]+)$/.exec(image);
  if (vol) {
    return `<disk type='volume' device='disk'><source pool='${escapeXml(vol[1])}' volume='${escapeXml(vol[2])}'/><target dev='vda' bus='virtio'/></disk>`;
  }
  return undefined;
}

function domainXml(d: { type: string; domain: string; flavor: CloudOffering; disk: string; iso: string; network: string; meta: Metadata }): string {
  const attrs = Object.entries(d.meta)
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
    return { key: get('key'), name: get('name') || get('key'), cluster: get('cluster'), service: get('service'), image: get('image'), offering: get('offering'), created: get('created') };
  }
  return undefined;
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

// ---- errors ------------------------------------------------------------------------------

// The binding passes libvirt's message only (no virErrorNumber), so errors are told apart by it.
const NOT_FOUND = /domain not found|no domain with matching/i;
const ALREADY_EXISTS = /already exists|already defined/i;
const NOT_RUNNING = /not running|is not active/i;
const AUTH = /authenticat|permission denied|access denied|not authori[sz]ed|polkit|sasl|host key verification/i;
const CONNECTION_LOST = /client socket is closed|cannot recv data|cannot write data|end of file while reading|connection reset|broken pipe|not connected|keepalive/i;
const UNREACHABLE = /failed to connect|unable to connect|connection refused|no route to host|timed out|network is unreachable/i;
const CAPACITY = /cannot allocate memory|out of memory|insufficient|no space left/i;
const BAD_REQUEST = /xml error|unsupported configuration|invalid argument|cannot access storage|no such file|does not exist|operation is not valid|no connection driver|unknown os type|failed to parse/i;

/** The kind of a libvirt failure; unknown failures are worth a retry with backoff. */
function kindOf(message: string): CloudErrorKind {
  if (NOT_FOUND.test(message)) return 'NotFound';
  if (AUTH.test(message)) return 'InvalidCredentials';
  if (CONNECTION_LOST.test(message) || UNREACHABLE.test(message)) return 'Transient';
  if (CAPACITY.test(message)) return 'CapacityExhausted';
  if (BAD_REQUEST.test(message)) return 'InvalidRequest';
  return 'Transient';
}

function toCloudError(err: unknown, what: string): CloudError {
  if (err instanceof CloudError) return err;
  const message = errorMessage(err);
  return new CloudError(kindOf(message), `${what}: ${message}`, { cause: err });
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A lookup's result, or undefined when libvirt says there is no such domain. */
async function orUndefined(lookup: Promise<Domain>): Promise<Domain | undefined> {
  try {
    return await lookup;
  } catch (err) {
    if (matches(err, NOT_FOUND)) return undefined;
    throw err;
  }
}

function matches(err: unknown, re: RegExp): boolean {
  return !(err instanceof CloudError) && re.test(errorMessage(err));
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
