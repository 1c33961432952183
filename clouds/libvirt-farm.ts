/**
 * The hosts of a libvirt cloud (see libvirt.ts): their connections, whether they answer,
 * what is free on them, where a new instance goes, and the destroys that wait for a lost
 * host. Also how libvirt's errors are told apart, which both files need.
 *
 * - Connections: one per host URI per process ({@link acquire}), opened on first use and
 *   kept; a broken one is replaced, and closed once no call is left on it.
 * - Timeouts (farms only): every libvirt call and every connect to a farm host must answer
 *   within `hostTimeoutSeconds`; one that does not makes the host lost, and so do a refused
 *   or dropped connection. A lost host is skipped until `hostRetrySeconds` have passed and
 *   no call to it still hangs.
 * - Threads: the binding runs each libvirt call on one of libuv's worker threads (4 unless
 *   `UV_THREADPOOL_SIZE` says more), and a call to a host that hangs holds its thread until
 *   the host answers or the connection breaks. A farm host therefore gets one call at a
 *   time: a hanging host holds one thread, not all of them. A worker serving a large farm
 *   should still start with `UV_THREADPOOL_SIZE` well above the number of hosts that may
 *   hang at once (it can be at most 1024).
 */
import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Hypervisor, type Domain } from '@unraid/libvirt';
import type { LibvirtHostRef } from '../model/clouds-config.js';
import { CloudError, type CloudErrorKind, type CloudInstance } from './contract.js';

/** Farm defaults: a host that takes longer than this to connect or answer one call is lost... */
export const DEFAULT_HOST_TIMEOUT_SECONDS = 5;
/** ...and is tried again after this long. */
export const DEFAULT_HOST_RETRY_SECONDS = 30;

/** How long a host's usage (its cloudgate domains' sizes) is reused for placement before it is read again. */
const USAGE_TTL_MS = 2_000;

// ---- placement ---------------------------------------------------------------------------

/** vCPUs and memory: what a domain takes of a host. */
export interface HostSize {
  cpus: number;
  memoryMiB: number;
}

/** A host as placement sees it: its name, whether it answers, and what is free on it. */
export interface HostRoom {
  host: string;
  /** Undefined while the host does not answer. */
  free?: HostSize;
  /** Why it does not answer. */
  lostReason?: string;
}

/**
 * Where a new instance of `size` goes: the answering host it fits on with the most room,
 * measured as how many more instances of this size would fit there (the scarcer of cpus and
 * memory decides), then most free cpus, most free memory, host name. Deterministic for one
 * state, so two creates of one key that see the same farm pick the same host.
 */
export function pickHost(rooms: readonly HostRoom[], size: HostSize): HostRoom | undefined {
  const fits = (r: HostRoom): r is HostRoom & { free: HostSize } =>
    r.free !== undefined && r.free.cpus >= size.cpus && r.free.memoryMiB >= size.memoryMiB;
  const slots = (f: HostSize) => Math.min(Math.floor(f.cpus / size.cpus), Math.floor(f.memoryMiB / size.memoryMiB));
  const better = (a: HostRoom & { free: HostSize }, b: HostRoom & { free: HostSize }) =>
    slots(a.free) - slots(b.free) || a.free.cpus - b.free.cpus || a.free.memoryMiB - b.free.memoryMiB || (a.host < b.host ? 1 : -1);
  let best: (HostRoom & { free: HostSize }) | undefined;
  for (const r of rooms) if (fits(r) && (!best || better(r, best) > 0)) best = r;
  return best;
}

/** The hosts for a `CapacityExhausted` message: `h1 1 cpus/2048 MiB free, h3 not answering (…)`. */
export function describeRooms(rooms: readonly HostRoom[]): string {
  const show = (n: number) => (Number.isFinite(n) ? String(n) : 'unlimited');
  return rooms
    .map((r) => (r.free ? `${r.host} ${show(r.free.cpus)} cpus/${show(r.free.memoryMiB)} MiB free` : `${r.host} not answering (${r.lostReason ?? 'unknown'})`))
    .join(', ');
}

// ---- hosts -------------------------------------------------------------------------------

/** How a host is waited for. */
export interface HostTiming {
  /** Per connect and per call; undefined: wait as long as libvirt does (a single hypervisor, as before farms). */
  timeoutMs?: number;
  /** How long a lost host is skipped before it is tried again. */
  retryMs: number;
}

/** A host that does not answer (refused, dropped, or too slow); retryable, and a farm routes around it. */
export class HostLostError extends CloudError {
  constructor(
    readonly host: string,
    readonly reason: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('Transient', message, options);
  }
}

/** A libvirt call or connect that did not answer within the host timeout. */
class HostTimeout extends Error {}

/** A `virsh` run that did not answer within its timeout. */
export class VirshTimeout extends Error {}

/**
 * One hypervisor host: its (process-wide, shared) connection, whether it answers, what
 * cloudgate domains take of it, and the instances last seen on it (to describe them while
 * it is lost).
 */
export class Host {
  readonly name: string;
  readonly uri: string;
  /** Instances last read on this host, by UUID. */
  readonly known = new Map<string, CloudInstance>();
  /** Creates in flight in this process, by domain name: counted as used until they end. */
  readonly reservations = new Map<string, HostSize>();
  private readonly shared: SharedConnection;
  /** Calls on the host at once: one on a farm (see the module comment), any number on a single hypervisor. */
  private readonly maxCalls: number;
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  private lostUntil = 0;
  private lostReason = '';
  /** Calls that timed out and have not returned: while one is left, the host still hangs. */
  private hung = 0;
  /** The pending-destroy drain of the current answering period. */
  private answered?: Promise<void>;
  private usage?: { at: number; used: Map<string, HostSize> };
  private closed = false;

  /**
   * @param onAnswer runs before anything else each time the host answers (again): the
   *   farm's pending destroys. Its host-loss errors make the host lost; others are left for
   *   the next answering period.
   */
  constructor(
    private readonly cloud: string,
    readonly ref: LibvirtHostRef,
    private readonly timing: HostTiming,
    private readonly onAnswer: (host: Host, hv: Hypervisor) => Promise<void>,
  ) {
    this.name = ref.name;
    this.uri = ref.uri;
    this.shared = acquire(ref.uri);
    this.maxCalls = this.farm ? 1 : Infinity;
  }

  /** Skipped for now: lost less than the retry interval ago, or a call to it still hangs. */
  get lost(): boolean {
    return this.hung > 0 || Date.now() < this.lostUntil;
  }

  /**
   * Runs `fn` on the host's connection (each call timed on a farm). When the connection
   * turns out to be broken (libvirtd restarted, SSH dropped) it is replaced and `fn` runs
   * once more on the new one: every operation run here is idempotent, so repeating one is
   * safe. On a farm, a host that refuses, drops or does not answer in time is lost
   * ({@link HostLostError}), and so is one whose `virsh` runs do not answer ({@link VirshTimeout}).
   */
  async run<T>(fn: (hv: Hypervisor) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      if (this.closed) throw new CloudError('InvalidRequest', `${this.cloud}: the adapter is closed`);
      if (this.lost) throw this.lostError();
      const hv = await this.connect();
      const view = this.view(hv);
      try {
        // Pending destroys first, every time the host answers again.
        await this.settleAnswer(view);
        return await fn(view);
      } catch (err) {
        if (err instanceof HostLostError) throw err;
        if (err instanceof HostTimeout || (this.farm && unanswered(err))) throw this.markLost(errorMessage(err), err, hv);
        if (!matches(err, CONNECTION_LOST)) throw err;
        forget(this.shared, hv);
        if (attempt > 0) throw this.farm ? this.markLost(errorMessage(err), err) : err;
      }
    }
  }

  /** Reads what cloudgate domains take of the host, unless read less than {@link USAGE_TTL_MS} ago. */
  async refreshUsage(read: (hv: Hypervisor) => Promise<Map<string, HostSize>>): Promise<void> {
    if (this.usage && Date.now() - this.usage.at < USAGE_TTL_MS) return;
    const used = await this.run(read);
    this.usage = { at: Date.now(), used };
  }

  /** Drops the usage read, after a create or destroy changed it. */
  invalidateUsage(): void {
    this.usage = undefined;
  }

  /** What is free on the host now: declared capacity less its cloudgate domains and the creates in flight here. */
  room(): HostRoom {
    if (this.lost || !this.usage) return { host: this.name, lostReason: this.lostReason || 'not read' };
    let cpus = this.ref.cpus ?? Infinity;
    let memoryMiB = this.ref.memoryMiB ?? Infinity;
    const take = (s: HostSize) => {
      cpus -= s.cpus;
      memoryMiB -= s.memoryMiB;
    };
    this.usage.used.forEach(take);
    for (const [domain, size] of this.reservations) if (!this.usage.used.has(domain)) take(size);
    return { host: this.name, free: { cpus, memoryMiB } };
  }

  /** Lets go of the host's connection (closed when no other adapter of the process uses the host). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await release(this.shared);
  }

  private get farm(): boolean {
    return this.timing.timeoutMs !== undefined;
  }

  private async connect(): Promise<Hypervisor> {
    try {
      return await this.timed(connect(this.shared));
    } catch (err) {
      if (err instanceof HostTimeout) {
        forgetOpening(this.shared);
        throw this.markLost(`connect: ${err.message}`, err);
      }
      if (this.farm && (matches(err, UNREACHABLE) || matches(err, CONNECTION_LOST))) throw this.markLost(errorMessage(err), err);
      throw toCloudError(err, `${this.cloud}: cannot connect to ${this.uri}`);
    }
  }

  /** The connection as `fn` sees it: every call takes its turn on the host, is timed, and is counted on the connection. */
  private view(hv: Hypervisor): Hypervisor {
    return new Proxy(hv, {
      get: (target, prop) => {
        const v: unknown = Reflect.get(target, prop, target);
        if (typeof v !== 'function') return v;
        return (...args: unknown[]) => this.call(hv, () => (v as (...a: unknown[]) => Promise<unknown>).apply(target, args));
      },
    });
  }

  /** One libvirt call: waits its turn, then is timed; a call that waited while the host got lost is not sent. */
  private async call<T>(hv: Hypervisor, send: () => Promise<T>): Promise<T> {
    while (this.active >= this.maxCalls) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      if (this.lost) throw this.lostError();
      return await this.timed(tracked(hv, send()));
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }

  private settleAnswer(hv: Hypervisor): Promise<void> {
    this.answered ??= this.onAnswer(this, hv).catch((err: unknown) => {
      // A host that stops answering again is lost (markLost starts a new period); anything else waits for the next period.
      if (hostUnanswered(err)) {
        this.answered = undefined;
        throw err;
      }
    });
    return this.answered;
  }

  /** `p`, or a {@link HostTimeout} after the host timeout; a timed-out call counts as hung until it returns. */
  private timed<T>(p: Promise<T>): Promise<T> {
    const ms = this.timing.timeoutMs;
    if (ms === undefined) return p;
    return new Promise<T>((resolve, reject) => {
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        this.hung++;
        reject(new HostTimeout(`no answer within ${ms / 1000} s`));
      }, ms);
      const settle = () => {
        clearTimeout(timer);
        if (timedOut) this.hung--;
      };
      p.then(
        (v) => {
          settle();
          resolve(v);
        },
        (err: unknown) => {
          settle();
          reject(err);
        },
      );
    });
  }

  private markLost(reason: string, cause: unknown, hv?: Hypervisor): HostLostError {
    if (hv) forget(this.shared, hv);
    this.lostUntil = Date.now() + this.timing.retryMs;
    this.lostReason = reason;
    this.answered = undefined;
    this.usage = undefined;
    return this.lostError(cause);
  }

  private lostError(cause?: unknown): HostLostError {
    const still = this.hung > 0 ? '; a call to it still hangs' : '';
    return new HostLostError(this.name, this.lostReason, `${this.cloud}: host ${this.name} (${this.uri}) does not answer: ${this.lostReason}${still}`, { cause });
  }
}

/**
 * Whether `err` says the host did not answer (lost, timed out, connection dropped), so
 * what the call did on the host is unknown; not whether the host refused it.
 */
export function hostUnanswered(err: unknown): boolean {
  return err instanceof HostLostError || err instanceof HostTimeout || unanswered(err) || matches(err, CONNECTION_LOST);
}

/** Whether `err` (or what caused it) is a `virsh` run that did not answer. */
function unanswered(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 4; e = e.cause, depth++) if (e instanceof VirshTimeout) return true;
  return false;
}

// ---- pending destroys --------------------------------------------------------------------

/** A domain to destroy when its host answers again: by UUID (a terminate), or by name and `created` stamp (a create whose answer was lost). */
export interface PendingDestroy {
  uuid?: string;
  domain?: string;
  created?: string;
  reason: string;
  since?: string;
}

/**
 * Pending destroys, one small JSON file each under `<storageDir>/pending-destroy/<host>/`
 * on the worker: written atomically (temp file + rename) before the terminate returns, so
 * they survive a worker restart; one file per domain, so concurrent terminates never
 * rewrite each other's. A worker that never runs again leaves its files for the next one
 * using the same storageDir (the directory belongs to the registry entry).
 */
export class PendingDestroys {
  constructor(private readonly dir: string) {}

  async add(host: string, entry: PendingDestroy): Promise<void> {
    const dir = path.join(this.dir, host);
    await mkdir(dir, { recursive: true });
    const base = (entry.uuid ?? `${entry.domain}@${entry.created}`).replace(/[^\w.@-]/g, '_');
    const file = path.join(dir, `${base}.json`);
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify({ ...entry, since: entry.since ?? new Date().toISOString() }));
    await rename(tmp, file);
  }

  /** This host's pending destroys; unreadable files are skipped (and kept, for a human). */
  async list(host: string): Promise<{ file: string; entry: PendingDestroy }[]> {
    const dir = path.join(this.dir, host);
    let names: string[];
    try {
      names = (await readdir(dir)).filter((n) => n.endsWith('.json')).sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: { file: string; entry: PendingDestroy }[] = [];
    for (const n of names) {
      const file = path.join(dir, n);
      try {
        out.push({ file, entry: JSON.parse(await readFile(file, 'utf8')) as PendingDestroy });
      } catch {
        // A half-written temp never ends in .json; anything else unreadable is left alone.
      }
    }
    return out;
  }

  async done(file: string): Promise<void> {
    await rm(file, { force: true });
  }
}

// ---- virsh -------------------------------------------------------------------------------

/**
 * Runs `virsh -c <uri> <args>` (for what the binding cannot do: storage volumes); rejects
 * with virsh's own error lines, or a {@link VirshTimeout}.
 */
export function virsh(uri: string, args: string[], opts: { timeoutMs: number }): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile('virsh', ['-q', '-c', uri, ...args], { timeout: opts.timeoutMs, maxBuffer: 4 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const e = err as NodeJS.ErrnoException & { killed?: boolean };
      if (e.killed) return reject(new VirshTimeout(`virsh ${args[0]}: no answer within ${opts.timeoutMs / 1000} s`, { cause: err }));
      const why =
        e.code === 'ENOENT'
          ? 'virsh is not installed (Debian package libvirt-clients)'
          : stderr.replace(/^error: /gm, '').trim().split('\n').join(': ') || e.message;
      reject(new Error(`virsh ${args[0]}: ${why}`, { cause: err }));
    });
    child.stdin?.end();
  });
}

// ---- the shared connections --------------------------------------------------------------

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
 * per adapter, and keeps a farm at one connection per host.
 */
const connections = new Map<string, SharedConnection>();

/** Calls in flight per connection, so a replaced connection is closed only once none is left. */
const inFlight = new WeakMap<Hypervisor, number>();
/** Connections replaced or let go of: closed when idle. */
const retired = new WeakSet<Hypervisor>();
const closing = new WeakMap<Hypervisor, Promise<void>>();

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
      if (c.open === opening) {
        c.open = undefined;
        c.current = undefined;
      }
    });
  }
  return c.open;
}

/** Counts `p` as a call in flight on `hv`. */
function tracked<T>(hv: Hypervisor, p: Promise<T>): Promise<T> {
  inFlight.set(hv, (inFlight.get(hv) ?? 0) + 1);
  const done = () => {
    const n = (inFlight.get(hv) ?? 1) - 1;
    inFlight.set(hv, n);
    if (n === 0 && retired.has(hv)) void closeIdle(hv);
  };
  p.then(done, done);
  return p;
}

/**
 * Closes a connection no one will use again, once no call is left on it: closing under a
 * call in flight would free what the native binding still uses. A call that hangs keeps its
 * connection open until it returns. (The binding's close drops its own reference; libvirt
 * closes the socket when the Domain objects read through it are garbage-collected too.)
 */
function retire(hv: Hypervisor): void {
  retired.add(hv);
  if (!inFlight.get(hv)) void closeIdle(hv);
}

function closeIdle(hv: Hypervisor): Promise<void> {
  let p = closing.get(hv);
  if (!p) {
    p = hv.connectClose().catch(() => undefined);
    closing.set(hv, p);
  }
  return p;
}

/** Drops a broken connection so the next call reconnects; it is closed once idle. */
function forget(c: SharedConnection, hv: Hypervisor): void {
  if (c.current === hv) {
    c.open = undefined;
    c.current = undefined;
  }
  retire(hv);
}

/** Drops an open that did not answer in time, so the next call opens afresh; should it open after all, it is closed. */
function forgetOpening(c: SharedConnection): void {
  const { open, current } = c;
  c.open = undefined;
  c.current = undefined;
  if (open && current) open.then(() => retire(current), () => undefined);
}

async function release(c: SharedConnection): Promise<void> {
  if (--c.refs > 0) return;
  if (connections.get(c.uri) === c) connections.delete(c.uri);
  const { open } = c;
  c.open = undefined;
  c.current = undefined;
  if (!open) return;
  // A host that hangs must not hang close() too: wait a little, and leave the rest to retire().
  const closed = open.then(
    (hv) => {
      retire(hv);
      return closing.get(hv);
    },
    () => undefined,
  );
  await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 2_000).unref())]);
}

// ---- libvirt's errors --------------------------------------------------------------------

// The binding passes libvirt's message only (no virErrorNumber), so errors are told apart by it.
export const NOT_FOUND = /domain not found|no domain with matching/i;
export const ALREADY_EXISTS = /already exists|already defined/i;
export const NOT_RUNNING = /not running|is not active/i;
const AUTH = /authenticat|permission denied|access denied|not authori[sz]ed|polkit|sasl|host key verification/i;
export const CONNECTION_LOST = /client socket is closed|cannot recv data|cannot write data|end of file while reading|connection reset|broken pipe|not connected|keepalive/i;
const UNREACHABLE = /failed to connect|unable to connect|connection refused|no route to host|timed out|network is unreachable/i;
export const VOLUME_GONE = /storage volume not found|no storage vol with matching/i;
export const POOL_GONE = /storage pool not found|no storage pool with matching|storage pool '[^']*' is not active/i;
const CAPACITY = /cannot allocate memory|out of memory|insufficient|no space left/i;
const BAD_REQUEST = /xml error|unsupported configuration|invalid argument|cannot access storage|no such file|does not exist|operation is not valid|no connection driver|unknown os type|failed to parse/i;

/** The kind of a libvirt failure; unknown failures are worth a retry with backoff. */
export function kindOf(message: string): CloudErrorKind {
  if (NOT_FOUND.test(message)) return 'NotFound';
  if (AUTH.test(message)) return 'InvalidCredentials';
  if (CONNECTION_LOST.test(message) || UNREACHABLE.test(message)) return 'Transient';
  if (CAPACITY.test(message)) return 'CapacityExhausted';
  if (BAD_REQUEST.test(message)) return 'InvalidRequest';
  return 'Transient';
}

/** `err` as a {@link CloudError} (kept when it is one), its message prefixed with `what`. */
export function toCloudError(err: unknown, what: string): CloudError {
  if (err instanceof CloudError) return err;
  const message = errorMessage(err);
  return new CloudError(err instanceof VirshTimeout ? 'Transient' : kindOf(message), `${what}: ${message}`, { cause: err });
}

/** A lookup's result, or undefined when libvirt says there is no such domain. */
export async function orUndefined(lookup: Promise<Domain>): Promise<Domain | undefined> {
  try {
    return await lookup;
  } catch (err) {
    if (matches(err, NOT_FOUND)) return undefined;
    throw err;
  }
}

/** Whether libvirt's (not our own) error says `re`. */
export function matches(err: unknown, re: RegExp): boolean {
  return !(err instanceof CloudError) && re.test(errorMessage(err));
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
