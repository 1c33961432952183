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
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createLibvirtCloud } from '../../clouds/libvirt.js';
import { CONFIG_DRIVE_USER_DATA, readIsoFile } from '../../clouds/seed-iso.js';
import type { LibvirtCloudConfig } from '../../model/clouds-config.js';

/** Where libvirtd is; `LIBVIRTD` overrides. */
const LIBVIRTD = process.env.LIBVIRTD ?? '/usr/sbin/libvirtd';

/** Image names the test definitions use, each mapped to a (placeholder) disk on the "host". */
const IMAGE_NAMES = ['cernvm4-micro', 'cernvm4-micro-2020.07', 'cernvm4-micro-2023.06', 'cernvm'];

export interface LibvirtPeer {
  /** A cloud named `libvirt` on the test hypervisor, domain type `test`. */
  cloudConfig: LibvirtCloudConfig;
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
    const cloudConfig: LibvirtCloudConfig = {
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

interface Daemon {
  uri: string;
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
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
