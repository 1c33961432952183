/**
 * Seed ISOs: how a libvirt guest gets its user-data without a metadata service. The ISO is
 * built with xorriso (Debian `xorriso`) and carries two layouts of the same data:
 *
 * - OpenStack config drive: `openstack/latest/user_data` and `meta_data.json`, which µCernVM
 *   and cloud-init's ConfigDrive datasource read from a volume labelled `config-2`;
 * - NoCloud: `user-data` and `meta-data` at the root.
 *
 * One ISO has one volume label, and NoCloud looks for `cidata`. We label it `config-2`,
 * because CernVM (the guests this is for) reads the config drive; the NoCloud files are
 * there for images booted with `ds=nocloud;s=/dev/sr0` style seeds and for humans mounting
 * it. A second CD-ROM labelled `cidata` would cost a device slot per guest for images we
 * don't run.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The volume label of every seed ISO (see the module comment for why not `cidata`). */
export const SEED_ISO_LABEL = 'config-2';

/** Where the guest reads its user-data on the config drive (also the path inside the ISO). */
export const CONFIG_DRIVE_USER_DATA = 'openstack/latest/user_data';

/** What goes on a seed ISO. */
export interface SeedContent {
  /** The instance id the guest sees (cloud-init keys its once-per-instance work on it). */
  instanceId: string;
  hostname: string;
  userData: string;
  /** Extra key/values for the config drive's `meta` (OpenStack's instance metadata). */
  meta?: Record<string, string>;
}

/** The files of both layouts, by path inside the ISO. */
export function seedFiles(c: SeedContent): Record<string, string> {
  const metaJson = { uuid: c.instanceId, name: c.hostname, hostname: c.hostname, launch_index: 0, meta: c.meta ?? {} };
  return {
    // NoCloud's meta-data is YAML; JSON strings are valid YAML scalars and need no escaping rules of our own.
    'meta-data': `instance-id: ${JSON.stringify(c.instanceId)}\nlocal-hostname: ${JSON.stringify(c.hostname)}\n`,
    'user-data': c.userData,
    'openstack/latest/meta_data.json': JSON.stringify(metaJson),
    [CONFIG_DRIVE_USER_DATA]: c.userData,
  };
}

/**
 * Writes the seed ISO to `file`, atomically: built under a temporary name beside it and
 * renamed, so a guest (or a concurrent create of the same instance) never sees half an ISO.
 * Rejects with the xorriso output when it fails.
 */
export async function writeSeedIso(file: string, content: SeedContent): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const dir = await mkdtemp(path.join(tmpdir(), 'cloudgate-seed-'));
  const partial = `${file}.${randomBytes(4).toString('hex')}.partial`;
  try {
    for (const [rel, text] of Object.entries(seedFiles(content))) {
      await mkdir(path.join(dir, path.dirname(rel)), { recursive: true });
      await writeFile(path.join(dir, rel), text);
    }
    // -J (Joliet) and -R (Rock Ridge) keep the long lower-case names both layouts need.
    await xorriso(['-as', 'mkisofs', '-quiet', '-o', partial, '-V', SEED_ISO_LABEL, '-J', '-R', dir]);
    // The user-data holds secret values and the phone-home token: owner only. libvirt's
    // dynamic_ownership (qemu.conf, on by default) hands the file to QEMU while the guest runs.
    await chmod(partial, 0o600);
    await rename(partial, file);
  } finally {
    await rm(dir, { recursive: true, force: true });
    await rm(partial, { force: true });
  }
}

/** Reads one file out of an ISO the way a guest would see it (tests, the fake guest agent). */
export async function readIsoFile(iso: string, inner: string): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'cloudgate-iso-'));
  try {
    const out = path.join(dir, 'out');
    await xorriso(['-osirrox', 'on', '-indev', iso, '-extract', `/${inner.replace(/^\/+/, '')}`, out]);
    return await readFile(out, 'utf8');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The volume label and every file path in an ISO. */
export async function listIso(iso: string): Promise<{ label: string; files: string[] }> {
  const { stdout, stderr } = await xorriso(['-indev', iso, '-find', '/', '-type', 'f']);
  const label = /Volume id\s*:\s*'([^']*)'/.exec(stderr + stdout)?.[1] ?? '';
  const files = [...stdout.matchAll(/^'(\/[^']*)'$/gm)].map((m) => m[1].slice(1)).sort();
  return { label, files };
}

async function xorriso(args: string[]): Promise<{ stdout: string; stderr: string }> {
  try {
    return await run('xorriso', args, { maxBuffer: 16 * 1024 * 1024 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    const why = e.code === 'ENOENT' ? 'xorriso is not installed (Debian package `xorriso`)' : (e.stderr?.trim() || e.message);
    throw new Error(`xorriso ${args.join(' ')}: ${why}`, { cause: err });
  }
}
