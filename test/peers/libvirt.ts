/**
 * The libvirt test peer: libvirt's built-in test hypervisor, by default hosted in a private
 * `libvirtd` so that separate processes (a worker, the worker that replaces it after a
 * SIGKILL, this test process) see one hypervisor state, as they would a real KVM host.
 *
 * The daemon runs from a temp folder: its config puts the sockets there, needs no auth on
 * them, and an empty `LIBVIRT_DRIVER_DIR` keeps it from loading the QEMU, network and storage
 * drivers (which want system users, dnsmasq and /dev/kvm); the test driver is built into
 * libvirt itself. It needs the Debian package `libvirt-daemon` (installed with
 * `--no-install-recommends`). The test driver keeps its state only while some connection
 * is open, so the peer holds one for its whole life.
 *
 * {@link startLibvirtFarm} starts one such daemon per host of a farm, each with its own
 * test-driver state, and can kill, restart, freeze (SIGSTOP) and thaw each host and count
 * its client connections (`virt-admin`, Debian `libvirt-clients`).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Hypervisor } from '@unraid/libvirt';
import { createLibvirtCloud } from '../../clouds/libvirt.js';
import { CONFIG_DRIVE_USER_DATA, readIsoFile } from '../../clouds/seed-iso.js';
import type { LibvirtCloudConfig, LibvirtHost } from '../../model/clouds-config.js';

/** Where libvirtd is; `LIBVIRTD` overrides. */
const LIBVIRTD = process.env.LIBVIRTD ?? '/usr/sbin/libvirtd';

/** Image names the test definitions use, each mapped to a (placeholder) disk on the "host". */
const IMAGE_NAMES = ['cernvm4-micro', 'cernvm4-micro-2020.07', 'cernvm4-micro-2023.06', 'cernvm'];

export interface LibvirtPeer {
  /** A cloud named `libvirt` on the test hypervisor (one `uri`), domain type `test`. */
  cloudConfig: LibvirtCloudConfig & { uri: string };
  /** Whether other processes share this hypervisor (true with the daemon). */
  shared: boolean;
  /** Live cloudgate instances of a cluster. */
  count(clusterId: string): Promise<number>;
  /** The user-data of a cluster's live instances, read from their seed ISOs as the guest would. */
  userData(clusterId: string): Promise<string[]>;
  /**
   * Restarts the daemon on the same socket, as a package upgrade would (the test driver
   * starts from its default state again). Only with the daemon.
   */
  restart(): Promise<void>;
  /** Closes the peer's connection, stops the daemon and removes the temp folder. */
  stop(): Promise<void>;
}

export interface LibvirtPeerOptions {
  /** false: in-process `test:///default`, visible only to this process. Default true. */
  daemon?: boolean;
  /** Cloud name; default `libvirt`. */
  name?: string;
}

/** Starts the peer (and its daemon, unless `daemon: false`). */
export async function startLibvirtPeer(opts: LibvirtPeerOptions = {}): Promise<LibvirtPeer> {
  const dir = mkdtempSync(path.join(tmpdir(), 'cg-libvirt-'));
  const imagesDir = path.join(dir, 'images');
  mkdirSync(imagesDir);
  const images = Object.fromEntries(
    IMAGE_NAMES.map((n) => {
      const file = path.join(imagesDir, `${n}.hdd`);
      writeFileSync(file, '');
      return [n, file];
    }),
  );
  let daemon: Daemon | undefined;
  try {
    const daemonDir = path.join(dir, 'daemon');
    if (opts.daemon !== false) daemon = await startDaemon(daemonDir);
    const cloudConfig: LibvirtCloudConfig & { uri: string } = {
      name: opts.name ?? 'libvirt',
      kind: 'libvirt',
      uri: daemon?.uri ?? 'test:///default',
      domainType: 'test',
      storageDir: path.join(dir, 'storage'),
      network: 'default',
      images,
    };
    const adapter = createLibvirtCloud(cloudConfig);
    // Opens (and holds) the connection that keeps the test driver's state alive.
    await adapter.listInstances({});
    const isoCache = new Map<string, string>();
    return {
      cloudConfig,
      shared: daemon !== undefined,
      async count(clusterId) {
        return (await adapter.listInstances({ cluster: clusterId })).length;
      },
      async userData(clusterId) {
        const out: string[] = [];
        for (const inst of await adapter.listInstances({ cluster: clusterId })) {
          const iso = String(inst.extra?.seedIso);
          const stamp = `${iso}@${statSync(iso).mtimeMs}`;
          const text = isoCache.get(stamp) ?? (await readIsoFile(iso, CONFIG_DRIVE_USER_DATA));
          isoCache.set(stamp, text);
          out.push(text);
        }
        return out;
      },
      async restart() {
        if (!daemon) throw new Error('libvirt peer: restart needs the daemon');
        await daemon.stop();
        daemon = await startDaemon(daemonDir);
        // Take hold of the new daemon's state again.
        await adapter.listInstances({});
      },
      async stop() {
        await adapter.close?.();
        await daemon?.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await daemon?.stop();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

// ---- a farm of hosts -----------------------------------------------------------------------

/** One host of a test farm: its own daemon, and the peer's own connection to look at it the way `virsh` would. */
export interface LibvirtFarmHost {
  name: string;
  uri: string;
  /** The peer's connection (reopened by `restart`); do not use it while the host is frozen. */
  hv: Hypervisor;
  /** Client connections the daemon has now (the peer's own is one of them). */
  clients(): Promise<number>;
  /** `virsh -c <uri> <args>` on this host. */
  virsh(...args: string[]): Promise<string>;
  /** Names of the cloudgate (not the test driver's own) domains on the host, sorted, as `virsh list` shows them. */
  domains(): Promise<string[]>;
  /** SIGKILL: the host is gone (its test-driver state with it). */
  kill(): Promise<void>;
  /** A new daemon on the same socket after `kill` (fresh test-driver state, base volume made again). */
  restart(): Promise<void>;
  /** SIGSTOP: the host hangs (connections open but nothing answers); `thaw` brings it back with its state. */
  freeze(): void;
  thaw(): void;
}

export interface LibvirtFarm {
  /** A farm cloud over the hosts, domain type `test`, with a file image and a pool image. */
  cloudConfig: LibvirtCloudConfig & { hosts: LibvirtHost[] };
  hosts: Record<string, LibvirtFarmHost>;
  stop(): Promise<void>;
}

export interface LibvirtFarmOptions {
  /** Cloud name; default `farm`. */
  name?: string;
  hosts: { name: string; cpus: number; memoryMiB: number }[];
  /** Farm timings (seconds); default 1 and 1, so tests see hosts lost and back quickly. */
  hostTimeoutSeconds?: number;
  hostRetrySeconds?: number;
}

/** The pool image every farm host has: a qcow2 base volume in the test driver's `default-pool`. */
export const FARM_POOL_IMAGE = 'default-pool/ucernvm-base.qcow2';

const execFileP = promisify(execFile);

/**
 * Starts one private libvirtd per host (each serving its own test driver), as a farm of
 * hypervisors. Images: `cernvm4-micro` a (placeholder) file on the "hosts", `cernvm-pool`
 * the base volume {@link FARM_POOL_IMAGE} made on each host.
 */
export async function startLibvirtFarm(opts: LibvirtFarmOptions): Promise<LibvirtFarm> {
  const dir = mkdtempSync(path.join(tmpdir(), 'cg-libvirt-farm-'));
  const base = path.join(dir, 'images', 'ucernvm.hdd');
  mkdirSync(path.dirname(base));
  writeFileSync(base, '');
  const hosts: Record<string, LibvirtFarmHost> = {};
  const daemons: Daemon[] = [];
  const stopAll = async () => {
    for (const d of daemons) d.signal('SIGCONT'); // a frozen host would hang the close below
    for (const h of Object.values(hosts)) await h.hv.connectClose().catch(() => undefined);
    for (const d of daemons) await d.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const spec of opts.hosts) {
      const daemonDir = path.join(dir, spec.name);
      let daemon = await startDaemon(daemonDir);
      daemons.push(daemon);
      const virsh = async (...args: string[]) => (await execFileP('virsh', ['-q', '-c', daemon.uri, ...args])).stdout;
      const makeBase = () => virsh('vol-create-as', FARM_POOL_IMAGE.split('/')[0], FARM_POOL_IMAGE.split('/')[1], '1G', '--format', 'qcow2');
      const host: LibvirtFarmHost = {
        name: spec.name,
        uri: daemon.uri,
        hv: await openHv(daemon.uri),
        async clients() {
          const { stdout } = await execFileP('virt-admin', ['-c', `libvirtd:///system?socket=${daemon.adminSocket}`, 'srv-clients-list', 'libvirtd']);
          return stdout.split('\n').filter((l) => /^\s*\d+\s+unix\b/.test(l)).length;
        },
        virsh,
        async domains() {
          const out = await virsh('list', '--all', '--name');
          return out
            .split('\n')
            .map((l) => l.trim())
            .filter((l) => l && l !== 'test')
            .sort();
        },
        async kill() {
          daemon.signal('SIGKILL');
          await daemon.stop();
        },
        async restart() {
          await daemon.stop();
          daemon = await startDaemon(daemonDir);
          daemons.push(daemon);
          host.hv = await openHv(daemon.uri);
          await makeBase();
        },
        freeze() {
          daemon.signal('SIGSTOP');
        },
        thaw() {
          daemon.signal('SIGCONT');
        },
      };
      await makeBase();
      hosts[spec.name] = host;
    }
    const cloudConfig: LibvirtCloudConfig & { hosts: LibvirtHost[] } = {
      name: opts.name ?? 'farm',
      kind: 'libvirt',
      hosts: opts.hosts.map((h) => ({ ...h, uri: hosts[h.name].uri })),
      domainType: 'test',
      storageDir: path.join(dir, 'storage'),
      network: 'default',
      images: { 'cernvm4-micro': base, 'cernvm-pool': FARM_POOL_IMAGE },
      hostTimeoutSeconds: opts.hostTimeoutSeconds ?? 1,
      hostRetrySeconds: opts.hostRetrySeconds ?? 1,
    };
    return { cloudConfig, hosts, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/** A connection of the peer's own: it also keeps the test driver's state alive. */
async function openHv(uri: string): Promise<Hypervisor> {
  const hv = new Hypervisor({ uri });
  await hv.connectOpen();
  return hv;
}

interface Daemon {
  uri: string;
  /** The admin socket (virt-admin), to count the daemon's client connections. */
  adminSocket: string;
  /** Sends a signal: SIGKILL (the host dies), SIGSTOP/SIGCONT (it hangs, and comes back). */
  signal(sig: NodeJS.Signals): void;
  stop(): Promise<void>;
}

/** A private libvirtd whose only hypervisor is the test driver; ready when virsh-style clients can connect. */
async function startDaemon(dir: string): Promise<Daemon> {
  if (!existsSync(LIBVIRTD)) {
    throw new Error(`libvirt peer: ${LIBVIRTD} not found; install the Debian package libvirt-daemon (--no-install-recommends), or start the peer with { daemon: false }`);
  }
  mkdirSync(path.join(dir, 'no-drivers'), { recursive: true });
  const conf = path.join(dir, 'libvirtd.conf');
  writeFileSync(
    conf,
    [
      `unix_sock_dir = "${dir}"`,
      'unix_sock_rw_perms = "0700"',
      'auth_unix_rw = "none"',
      'auth_unix_ro = "none"',
      'log_outputs = "3:stderr"',
      '',
    ].join('\n'),
  );
  const socket = path.join(dir, 'libvirt-sock');
  // A socket left by an earlier daemon would look like readiness.
  rmSync(socket, { force: true });
  const log = path.join(dir, 'libvirtd.log');
  const logFd = openSync(log, 'a');
  let proc: ChildProcess;
  try {
    proc = spawn(LIBVIRTD, ['-f', conf, '-p', path.join(dir, 'libvirtd.pid')], {
      stdio: ['ignore', logFd, logFd],
      env: {
        ...process.env,
        LIBVIRT_DRIVER_DIR: path.join(dir, 'no-drivers'),
        // Run as a non-root user, libvirtd keeps its runtime files under these.
        HOME: dir,
        XDG_RUNTIME_DIR: path.join(dir, 'run'),
        XDG_CONFIG_HOME: path.join(dir, 'config'),
        XDG_CACHE_HOME: path.join(dir, 'cache'),
      },
    });
  } finally {
    closeSync(logFd);
  }
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const deadline = Date.now() + 15_000;
  while (!existsSync(socket)) {
    if (proc.exitCode !== null || Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`libvirt peer: libvirtd did not start (exit ${proc.exitCode}):\n${readFileSync(log, 'utf8')}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    uri: `test+unix:///default?socket=${socket}`,
    adminSocket: path.join(dir, 'libvirt-admin-sock'),
    signal(sig) {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
    },
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGCONT'); // a stopped daemon would never see the SIGTERM
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
