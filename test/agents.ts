/**
 * The real readers of the user-data cloudgate renders, run as the guest runs them:
 * amiconfig's sanitize + ConfigParser under Python 2.7 (amiconfig's interpreter) and Python 3,
 * µCernVM's parse_user_data port sourced by dash with scripts.d/14cvmfs's use of it, and
 * Debian's installed cloud-init (its MIME processor, part handlers, YAML loader) with the
 * current cloud-config schema from ../shared/peer-data. See test/readers/ for each reader's
 * sources. A reader that cannot run fails the test that needs it, saying why.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { peerDataPath } from './peer-data.js';

const READERS = resolve(dirname(fileURLToPath(import.meta.url)), 'readers');

function run(cmd: string, args: string[], input: string | Buffer): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof (err as { code?: unknown }).code !== 'number') return fail(new Error(`cannot run ${cmd}: ${err.message}`, { cause: err }));
      done({ code: err ? Number((err as { code?: number }).code) : 0, stdout, stderr });
    });
    // A reader that does not read its input (dash sourcing a file) may exit before the write: the
    // write then fails with EPIPE. What it read is judged by its exit code and output above.
    child.stdin!.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE') fail(new Error(`cannot write to ${cmd}: ${err.message}`, { cause: err }));
    });
    child.stdin!.end(input);
  });
}

async function runJson<T>(cmd: string, args: string[], input: string | Buffer): Promise<T> {
  const out = await run(cmd, args, input);
  if (out.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${out.code}: ${out.stderr.slice(-2000)}`);
  return JSON.parse(out.stdout) as T;
}

/**
 * Python 2.7, the interpreter amiconfig runs under: `$PYTHON2`, else pyenv's 2.7 build (this
 * machine kind has one), else a `python2.7` on PATH. Debian 12 packages no Python 2 and
 * nothing may be downloaded here, so a machine without one cannot run this reader.
 */
export function python2(): string {
  const candidates: string[] = [];
  if (process.env.PYTHON2) candidates.push(process.env.PYTHON2);
  const pyenv = join(process.env.PYENV_ROOT ?? join(homedir(), '.pyenv'), 'versions');
  if (existsSync(pyenv)) {
    for (const v of readdirSync(pyenv).filter((d) => d.startsWith('2.7')).sort().reverse()) candidates.push(join(pyenv, v, 'bin', 'python2.7'));
  }
  for (const dir of (process.env.PATH ?? '').split(':')) if (dir && !dir.includes('shims')) candidates.push(join(dir, 'python2.7'));
  const found = candidates.find((c) => existsSync(c));
  if (!found) {
    throw new Error(`no Python 2.7 to run amiconfig's reader (looked at ${candidates.slice(0, 4).join(', ')}…): set PYTHON2, or install pyenv's 2.7.18`);
  }
  return found;
}

/** The interpreters the amiconfig reader runs under: amiconfig's own, and Python 3 for comparison. */
export const amiconfigInterpreters = (): string[] => [python2(), 'python3'];

export interface AmiconfigReading {
  interpreter: string;
  /** The lines sanitize kept. */
  kept: string[];
  sections: Record<string, Record<string, string>>;
  order: string[];
  /** What the cernvm plugin split `users` and `environment` into. */
  cernvm: { users?: [string, string, string][]; environment?: [string, string][] } | null;
  /** Exceptions amiconfig would stop with. */
  errors: string[];
}

/** amiconfig's reading of the whole raw user-data, under the given Python. */
export const amiconfigRead = (userData: string, python: string): Promise<AmiconfigReading> =>
  runJson<AmiconfigReading>(python, [join(READERS, 'amiconfig_read.py')], userData);

export interface UcernvmReading {
  /** What parse_user_data printed: `_UCONTEXT_<KEY>=<value>` lines. */
  ucontext: string[];
  /** What scripts.d/14cvmfs made of them, sourced by dash: CVMFS_PROXY, CVMFS_REPOS, CVMFS_REPOSITORY_TAG, CVMFS_SERVER, CVMFS_SERVER_URL. */
  cvmfs: Record<string, string>;
}

/** µCernVM's reading: parse_user_data over the raw bytes, then sourced by dash as the bootloader does. */
export async function ucernvmRead(userData: string | Buffer): Promise<UcernvmReading> {
  const parsed = await run('python3', [join(READERS, 'ucernvm_parse.py')], userData);
  if (parsed.code !== 0) throw new Error(`ucernvm_parse.py exited ${parsed.code}: ${parsed.stderr}`);
  const dir = await mkdtemp(join(tmpdir(), 'cloudgate-ucontext-'));
  try {
    await writeFile(join(dir, 'ucontext'), parsed.stdout);
    const sourced = await run('dash', [join(READERS, 'ucernvm_cvmfs.sh'), join(dir, 'ucontext')], '');
    if (sourced.code !== 0) throw new Error(`dash could not source µCernVM's context (exit ${sourced.code}): ${sourced.stderr}`);
    const cvmfs = Object.fromEntries(
      sourced.stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    return { ucontext: parsed.stdout.split('\n').filter(Boolean), cvmfs };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface CloudInitReading {
  /** Every non-multipart part, in order, with the cloud-init handler that claimed it (null: none). */
  parts: { contentType: string; filename: string; handler: string | null }[];
  /** The merged cloud-config cloud-init acts on (bytes as {__bytes__: base64}, dates as {__date__}). */
  config: Record<string, unknown> | null;
  /** Each cloud-config part as cloud-init's YAML loader read it. */
  partConfigs: unknown[];
  /** The merged config against the current schema (../shared/peer-data/cloudinit). */
  schemaErrors: string[];
  /** Every warning cloud-init logged while reading. */
  warnings: string[];
}

/** The interpreter Debian's cloud-init runs under (it has /usr/lib/python3/dist-packages/cloudinit). */
const CLOUD_INIT_PYTHON = '/usr/bin/python3';

/** cloud-init's reading of raw user-data (scripts/setup.mjs installs Debian's cloud-init and python3-jsonschema). */
export async function cloudInitRead(userData: string | Buffer): Promise<CloudInitReading> {
  if (!existsSync('/usr/lib/python3/dist-packages/cloudinit')) {
    throw new Error("Debian's cloud-init is not installed (/usr/lib/python3/dist-packages/cloudinit): run `node scripts/setup.mjs` as root");
  }
  return runJson<CloudInitReading>(CLOUD_INIT_PYTHON, [join(READERS, 'cloudinit_read.py'), peerDataPath('cloudinit', 'schema-cloud-config-v1.json')], userData);
}
