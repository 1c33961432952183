/**
 * Stratum-1 readiness checks for CVMFS repositories, run before a cluster deploys so a
 * missing, stale or expired repository fails early instead of as a fleet of guests whose
 * `cvmfs_config probe` never passes.
 *
 * Two files are read from a repository's base URL, in the formats of CernVM-FS
 * ("Implementation Notes", Repository Manifest; and `whitelist.cc`):
 *
 * - `.cvmfspublished`, the manifest: one field per line, a capital letter then the value
 *   (`C` root catalog hash, `B` its size, `R` root path MD5, `D` TTL, `S` revision,
 *   `G`/`A` yes|no flags, `N` repository name, `X` certificate hash, `H` history hash,
 *   `T` publish time in Unix seconds, `M` metainfo hash, `Y` reflog hash, `L` reserved),
 *   then a `--` line, then the hash of the lines above and a binary signature.
 * - `.cvmfswhitelist`: a creation time `YYYYMMDDHHMMSS` (UTC), `E<YYYYMMDDHHMMSS>` expiry,
 *   `N<fqrn>`, optional `Vpkcs7` / `Wcachain` lines, certificate fingerprints
 *   (`AA:BB:…`, with `-RMD160` / `-SHAKE128` after the digest for those algorithms), `--`,
 *   then a hash and the master key's signature.
 *
 * Lines are split at LF only, as CernVM-FS splits them (`ParseKeyvalMem`, `GetLineMem`).
 * Where the client would refuse a file, the parsers throw or `checkRepository` fails; where a
 * file is one no cvmfs tool writes (an impossible date, a non-numeric revision) they may be
 * stricter than the client and call it malformed.
 *
 * Signatures are not verified: this is a readiness check, not a trust decision — the
 * guests' cvmfs clients verify, with keys the gateway does not hold.
 *
 * The URLs come from users (a context's `cvmfs.servers`), so the fetch is guarded against
 * SSRF (model/address-policy.ts): the URL's text is judged before connecting and every
 * address its host name resolves to is judged at connect time (a custom `lookup`), unless
 * the operator allowed the host; redirects are not followed (a 3xx fails that server);
 * answers are streamed and abandoned past {@link MAX_ANSWER_BYTES}; and a server that gives no
 * HTTP answer — refused, reset, timed out, unresolvable or forbidden — fails with one
 * generic message, so the check cannot be used to scan ports (the real cause goes to the
 * operator's log through `onNoAnswer`).
 */
import { createHash } from 'node:crypto';
import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions } from 'node:dns';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { LookupFunction } from 'node:net';
import { AddressPolicy } from '../model/address-policy.js';
import { expandServerUrl } from '../model/context.js';

export { expandServerUrl };

/** The fields of a `.cvmfspublished` manifest above its `--` line. */
export interface Manifest {
  /** `C`: hash of the current root catalog (may carry a suffix such as `-rmd160`). */
  catalogHash: string;
  /** `B`: size of the root catalog in bytes. */
  catalogSize?: number;
  /**
   * `R`: MD5 of the catalog's root path: {@link ROOT_PATH_HASH} for a repository's manifest;
   * a nested catalog's own manifest (cvmfs 2.0 layout) carries the MD5 of its mount point.
   */
  rootPathHash: string;
  /** `D`: root catalog time to live, seconds. */
  ttlSeconds: number;
  /** `S`: revision number of this publication. */
  revision: number;
  /** `N`: fully qualified repository name. */
  name: string;
  /** `X`: hash of the signing certificate. */
  certificateHash?: string;
  /** `H`: hash of the named-tag history database. */
  historyHash?: string;
  /** `T`: when this revision was published. */
  publishedAt: Date;
  /** `G`: whether the repository is garbage-collectable. */
  garbageCollectable?: boolean;
  /** `A`: whether catalogs are fetched under their alternative name. */
  alternativeName?: boolean;
  /** `M`: hash of the repository's JSON metainfo. */
  metainfoHash?: string;
  /** `Y`: hash of the reflog checksum. */
  reflogHash?: string;
  /**
   * Letters this parser does not know (`L`, reserved `Z`, later additions), kept verbatim;
   * repeated `Z` lines joined with `|`, as the client joins them.
   */
  extra: Record<string, string>;
}

/** The fields of a `.cvmfswhitelist` above its `--` line. */
export interface Whitelist {
  createdAt: Date;
  /**
   * The `E` line as the cvmfs client reads it: exact to the hour (minutes and seconds are
   * ignored), so the whitelist is expired from this instant on.
   */
  expiresAt: Date;
  /** `N`: the repository the whitelist is for. */
  name: string;
  /**
   * The certificate fingerprints the client reads, in the notation `cvmfs_server` writes:
   * upper-case `AA:BB:…` pairs of the digest, followed by the algorithm for those that need
   * naming (`…:FF-SHAKE128`, `…:FF-RMD160`; SHA-1 and MD5 are told apart by length). Lines
   * that are no fingerprint of a known length are skipped, as the client skips them.
   */
  fingerprints: string[];
  /** `Vpkcs7` right after the `N` line: the whitelist is (also) signed as PKCS#7. */
  pkcs7: boolean;
  /** `Wcachain` right after `N` or `Vpkcs7`: manifest signatures must chain to a CA. */
  caChain: boolean;
}

/** A `.cvmfspublished` or `.cvmfswhitelist` that does not follow the format. */
export class ManifestError extends Error {
  override name = 'ManifestError';
  constructor(
    readonly file: '.cvmfspublished' | '.cvmfswhitelist',
    /** The field letter (or line) at fault, when there is one. */
    readonly field: string | undefined,
    message: string,
  ) {
    super(`${file}: ${message}`);
  }
}

/**
 * Why a repository is not fit to deploy with. `root-mismatch`: the server's manifest is a
 * nested catalog's, not the repository root's (the client's `kFailRootMismatch`).
 */
export type CvmfsFailureReason = 'missing' | 'wrong-name' | 'root-mismatch' | 'too-old-revision' | 'stale' | 'whitelist-expired' | 'unreachable';

/** A server that did not give a usable answer, and why. */
export interface ServerAttempt {
  /** The server URL with `@fqrn@` / `@org@` substituted. */
  server: string;
  error: string;
}

/**
 * The outcome of {@link checkRepository}. Times are ISO strings, not `Date`s, because the
 * result crosses Temporal's JSON payload converter on its way to the workflow.
 */
export type RepositoryCheck =
  | {
      repo: string;
      ok: true;
      /** The server that answered (substituted). */
      server: string;
      revision: number;
      publishedAt: string;
      whitelistExpiresAt: string;
      /** Servers tried before `server`, which failed. */
      attempts: ServerAttempt[];
    }
  | {
      repo: string;
      ok: false;
      reason: CvmfsFailureReason;
      /** Names the repository and the server(s), and what to do. */
      message: string;
      /** The server whose answer failed a check; absent when none answered. */
      server?: string;
      attempts: ServerAttempt[];
    };

export interface CheckRepositoryOptions {
  /** Fully qualified repository name, e.g. `sft.cern.ch`. */
  repo: string;
  /**
   * Stratum-1 URLs of the repository's base, tried in order, as in `CVMFS_SERVER_URL`:
   * `@fqrn@` becomes the repository name and `@org@` its first label.
   */
  servers: readonly string[];
  /** The lowest revision the context may pin; older fails as `too-old-revision`. */
  minRevision?: number;
  /** A manifest published longer ago than this is `stale`. */
  maxAgeSeconds: number;
  now: Date;
  /**
   * Hosts (`host` or `host:port`) that may be fetched although they are, or resolve to,
   * loopback, private or link-local addresses (`CLOUDGATE_CVMFS_ALLOWED_HOSTS`).
   */
  allowedHosts?: readonly string[];
  /** Resolves host names at connect time (tests stub it); `dns.lookup` otherwise. */
  resolve?: Resolver;
  /** Per request (headers and body); default 10 s. */
  timeoutMs?: number;
  /** The largest answer read per file; default {@link MAX_ANSWER_BYTES}. */
  maxAnswerBytes?: number;
  /**
   * Told the real cause behind each {@link NO_ANSWER} (for the operator's log; it never
   * enters a result, a failure or an API answer).
   */
  onNoAnswer?: (url: string, detail: string) => void;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/** Manifests and whitelists are a few KB; an answer past this is abandoned, unread. */
export const MAX_ANSWER_BYTES = 256 * 1024;

/**
 * What a server that gave no HTTP answer is told, whatever the cause (refused, reset,
 * filtered, timed out, unresolvable, or an address the gateway may not reach).
 */
export const NO_ANSWER = 'no usable answer (no connection, no answer in time, or an address the gateway may not reach)';

const CRLF = 'CernVM-FS splits lines at LF only and reads the CR into the value, so a CRLF copy (converted in transfer?) fails its name check';

/** Splits the text above the `--` line into lines; the signature below is never decoded. */
function headLines(input: string | Buffer, file: ManifestError['file']): string[] {
  const buf = typeof input === 'string' ? Buffer.from(input, 'latin1') : input;
  // The separator is a whole line, so look for it at the start or after a newline.
  const at = buf.subarray(0, 3).toString('latin1') === '--\n' ? 0 : buf.indexOf('\n--\n');
  const end = at === -1 && buf.subarray(-3).toString('latin1') === '\n--' ? buf.length - 3 : at;
  if (end === -1) {
    // "--\r" is no separator to the client either; say why rather than "truncated".
    if (buf.includes('\r\n--\r\n')) throw new ManifestError(file, undefined, `lines end in CRLF: ${CRLF}`);
    throw new ManifestError(file, undefined, 'no "--" line: truncated, or not a CVMFS file');
  }
  // The head is ASCII by the format; latin1 keeps any stray byte one character.
  const text = buf.subarray(0, end).toString('latin1');
  const lines = text === '' ? [] : text.split('\n');
  const cr = lines.findIndex((l) => l.endsWith('\r'));
  if (cr !== -1) throw new ManifestError(file, undefined, `line ${cr + 1} (${JSON.stringify(lines[cr].slice(0, -1))}) ends in CR: ${CRLF}`);
  return lines;
}

function integerField(file: ManifestError['file'], key: string, what: string, value: string): number {
  if (!/^\d+$/.test(value)) throw new ManifestError(file, key, `field ${key} (${what}) is not a whole number: "${value}"`);
  return Number(value);
}

const MANIFEST_REQUIRED: Record<string, string> = {
  C: 'root catalog hash',
  R: 'root path hash',
  D: 'TTL',
  S: 'revision',
  N: 'repository name',
  T: 'publish timestamp',
};

/** MD5 of the empty path, the `R` of a repository's root catalog (cvmfs: `Md5(AsciiPtr(""))`). */
export const ROOT_PATH_HASH = createHash('md5').update('').digest('hex');

/**
 * Parses a `.cvmfspublished` manifest. Requires C, R, D and S (as the cvmfs client does)
 * and also N and T, which every current server writes and the readiness check needs.
 * A repeated letter keeps its last value, except `Z`, whose values are joined with `|`
 * (`ParseKeyvalMem`).
 *
 * @throws {@link ManifestError} naming the missing or malformed field.
 */
export function parseManifest(text: string | Buffer): Manifest {
  const fields = new Map<string, string>();
  for (const line of headLines(text, '.cvmfspublished')) {
    if (line === '') continue;
    const [key, value] = [line[0], line.slice(1)];
    const before = fields.get(key);
    fields.set(key, key === 'Z' && before !== undefined ? `${before}|${value}` : value);
  }
  for (const [key, what] of Object.entries(MANIFEST_REQUIRED)) {
    if (!fields.get(key)) throw new ManifestError('.cvmfspublished', key, `missing field ${key} (${what})`);
  }
  const take = (key: string): string | undefined => {
    const v = fields.get(key);
    fields.delete(key);
    return v;
  };
  const int = (key: string): number => integerField('.cvmfspublished', key, MANIFEST_REQUIRED[key], take(key)!);
  const yesNo = (key: string): boolean | undefined => {
    const v = take(key);
    return v === undefined ? undefined : v === 'yes';
  };
  const size = take('B');
  return {
    catalogHash: take('C')!,
    catalogSize: size === undefined ? undefined : integerField('.cvmfspublished', 'B', 'root catalog size', size),
    rootPathHash: take('R')!,
    ttlSeconds: int('D'),
    revision: int('S'),
    name: take('N')!,
    publishedAt: new Date(int('T') * 1000),
    certificateHash: take('X'),
    historyHash: take('H'),
    garbageCollectable: yesNo('G'),
    alternativeName: yesNo('A'),
    metainfoHash: take('M'),
    reflogHash: take('Y'),
    extra: Object.fromEntries(fields),
  };
}

/** `YYYYMMDDHHMMSS` (UTC) → Date; undefined when it is not a real instant. */
function parseStamp(s: string): Date | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})$/.exec(s);
  if (!m) return undefined;
  const [y, mo, d, h, mi, se] = m.slice(1).map(Number);
  const date = new Date(Date.UTC(y, mo - 1, d, h, mi, se));
  // Date.UTC rolls 20240231 over to March; a round trip catches that.
  return date.getUTCMonth() === mo - 1 && date.getUTCDate() === d && h < 24 && mi < 60 && se < 60 ? date : undefined;
}

/**
 * A fingerprint as the client reads it (`SignatureManager::MkFromFingerprint`, then
 * `shash::MkFromHexPtr`): up to the first space, tab or `#`, colons dropped, case ignored;
 * 32 hex digits are MD5, 40 SHA-1, 40 plus `-rmd160` / `-shake128` those algorithms. Any
 * other length is no hash to the client, and neither is the all-zero (null) digest.
 * Returned in `cvmfs_server`'s notation, the algorithm kept after the digest.
 */
function readFingerprint(line: string): string | undefined {
  const token = line.split(/[ \t#]/, 1)[0].replaceAll(':', '').toLowerCase();
  if (!/^(?:[0-9a-f]{32}|[0-9a-f]{40}(?:-rmd160|-shake128)?)$/.test(token) || /^0+(?:-|$)/.test(token)) return undefined;
  const [digest, algorithm] = token.split('-');
  return digest.toUpperCase().match(/../g)!.join(':') + (algorithm ? `-${algorithm.toUpperCase()}` : '');
}

/**
 * Parses a `.cvmfswhitelist`. Like the cvmfs client it is positional: the creation time,
 * the `E` line and the `N` line come first, in that order; then `Vpkcs7`, then `Wcachain`,
 * each only in that place; then fingerprints, where lines that are not fingerprints are
 * skipped, as the client skips them.
 *
 * @throws {@link ManifestError} naming the malformed line.
 */
export function parseWhitelist(text: string | Buffer): Whitelist {
  const [created = '', expires = '', name = '', ...rest] = headLines(text, '.cvmfswhitelist');
  const bad = (field: string, msg: string) => new ManifestError('.cvmfswhitelist', field, msg);
  const createdAt = parseStamp(created);
  if (!createdAt) throw bad('timestamp', `first line is not a YYYYMMDDHHMMSS timestamp: "${created}"`);
  const expiry = expires.startsWith('E') ? parseStamp(expires.slice(1)) : undefined;
  if (!expiry) throw bad('E', `second line is not E<YYYYMMDDHHMMSS>: "${expires}"`);
  if (!name.startsWith('N') || name.length < 2) throw bad('N', `third line is not N<repository name>: "${name}"`);
  expiry.setUTCMinutes(0, 0, 0); // the client's precision (whitelist.cc: "exact on hours level")
  // ParseWhitelist looks for Vpkcs7 right after N, and for Wcachain right after that.
  const pkcs7 = rest[0] === 'Vpkcs7';
  const caChain = rest[pkcs7 ? 1 : 0] === 'Wcachain';
  return {
    createdAt,
    expiresAt: expiry,
    name: name.slice(1),
    fingerprints: rest.slice(Number(pkcs7) + Number(caChain)).flatMap((l) => readFingerprint(l) ?? []),
    pkcs7,
    caChain,
  };
}

type Fetched = { ok: true; manifest: Manifest; whitelist: Whitelist } | { ok: false; notFound: boolean; error: string };

/** `dns.lookup` with every address (the shape the guarded lookup needs). */
export type Resolver = (hostname: string, options: LookupAllOptions, callback: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) => void;

const systemResolver: Resolver = (hostname, options, callback) => dnsLookup(hostname, options, callback);

/** A connection refused before it was made: the host resolves to an address the policy forbids. */
export class ForbiddenAddressError extends Error {
  override name = 'ForbiddenAddressError';
}

/** No HTTP answer at all; `message` is the cause, for the operator's log only. */
export class NoAnswerError extends Error {
  override name = 'NoAnswerError';
}

/** An answer larger than the cap, abandoned; `bytesRead` is what was read before stopping. */
export class AnswerTooLargeError extends Error {
  override name = 'AnswerTooLargeError';
  constructor(
    readonly limit: number,
    readonly bytesRead: number,
    /** The Content-Length the server announced, when that alone was too large. */
    readonly declared?: number,
  ) {
    super(`answer larger than ${limit >= 1024 ? `${limit / 1024} KiB` : `${limit} bytes`}, not read further (a manifest or whitelist is a few KB)`);
  }
}

/**
 * A `lookup` for node:net that resolves with `resolve` (every address) and refuses the
 * connection when any address is one `policy` forbids — so a host name cannot smuggle a
 * loopback, private or metadata address past a check of the URL's text. Without a policy it
 * only resolves. Answers in the form the caller asked for (`all` or one address).
 */
export function guardedLookup(policy: AddressPolicy | undefined, resolve: Resolver = systemResolver): LookupFunction {
  return (hostname, options, callback) => {
    resolve(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err, '', 0);
      if (addresses.length === 0) return callback(Object.assign(new Error(`${hostname} has no address`), { code: 'ENOTFOUND' }), '', 0);
      for (const a of addresses) {
        const problem = policy?.addressProblem(a.address);
        if (problem) return callback(new ForbiddenAddressError(`${hostname} resolves to ${problem}`), '', 0);
      }
      if ((options as { all?: boolean }).all) callback(null, addresses);
      else callback(null, addresses[0].address, addresses[0].family);
    });
  };
}

/** Reads `res` to its end, or throws {@link AnswerTooLargeError} as soon as it passes `max` bytes. */
async function readCapped(res: IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(res.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) {
    res.destroy();
    throw new AnswerTooLargeError(max, 0, declared);
  }
  const chunks: Buffer[] = [];
  let read = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    read += chunk.length;
    if (read > max) {
      res.destroy();
      throw new AnswerTooLargeError(max, read);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, read);
}

export interface GuardedGetOptions {
  policy: AddressPolicy;
  timeoutMs: number;
  maxBytes: number;
  resolve?: Resolver;
}

/**
 * One GET under the address policy: the URL's text judged first, host names judged by every
 * address they resolve to (unless the host is allowed), no redirect followed (any non-200
 * resolves with its status and no body), the body read up to `opts.maxBytes`.
 *
 * @throws {@link NoAnswerError} when no HTTP answer came (the message is the cause, for logs).
 * @throws {@link AnswerTooLargeError} when the answer passes the cap.
 */
export function guardedGet(url: string, opts: GuardedGetOptions): Promise<{ status: number; body: Buffer }> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return Promise.reject(new NoAnswerError(`${url} is not a URL`));
  }
  const problem = opts.policy.urlProblem(u);
  if (problem) return Promise.reject(new NoAnswerError(`refused before connecting: the URL ${problem}`));
  // An allowed host is fetched whatever it resolves to; any other name is judged by its addresses.
  const lookup = guardedLookup(opts.policy.isAllowed(u) ? undefined : opts.policy, opts.resolve);
  const signal = AbortSignal.timeout(opts.timeoutMs);
  return new Promise((resolve, reject) => {
    const noAnswer = (err: unknown) => {
      if (err instanceof AnswerTooLargeError) return reject(err);
      const e = (typeof err === 'object' && err !== null ? err : {}) as { code?: string; message?: string };
      const detail = signal.aborted ? `timed out after ${opts.timeoutMs} ms` : `${e.message ?? String(err)}${e.code && !e.message?.includes(e.code) ? ` (${e.code})` : ''}`;
      reject(new NoAnswerError(detail));
    };
    const send = u.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(u, {
      method: 'GET',
      // no-cache: a forward cache between the gateway and the stratum-1 must not hide a new
      // revision; identity: nothing is decompressed, so the cap is the cap.
      headers: { 'cache-control': 'no-cache', 'accept-encoding': 'identity' },
      agent: false,
      lookup,
      signal,
    });
    req.on('error', noAnswer);
    req.on('response', (res) => {
      if (res.statusCode !== 200) {
        res.destroy();
        resolve({ status: res.statusCode ?? 0, body: Buffer.alloc(0) });
        return;
      }
      readCapped(res, opts.maxBytes).then((body) => resolve({ status: 200, body }), noAnswer);
    });
    req.end();
  });
}

/** What a non-200 status says about the server. */
function describeStatus(status: number): string {
  if (status >= 300 && status < 400) return `HTTP ${status}: a redirect, not followed (list the URL the stratum-1 answers at)`;
  return `HTTP ${status}`;
}

/** Both files from one server, or why this server gave nothing usable. Never throws. */
async function fetchFiles(server: string, opts: GuardedGetOptions & Pick<CheckRepositoryOptions, 'onNoAnswer'>): Promise<Fetched> {
  const files = ['.cvmfspublished', '.cvmfswhitelist'] as const;
  // allSettled: a failed manifest request must not leave the whitelist one rejecting unobserved.
  const settled = await Promise.allSettled(files.map((f) => guardedGet(`${server}/${f}`, opts)));
  const errors: string[] = [];
  let notFound = 0;
  let noAnswer = false;
  settled.forEach((s, i) => {
    if (s.status === 'rejected') {
      if (s.reason instanceof AnswerTooLargeError) errors.push(`${files[i]}: ${s.reason.message}`);
      else {
        noAnswer = true;
        opts.onNoAnswer?.(`${server}/${files[i]}`, s.reason instanceof Error ? s.reason.message : String(s.reason));
      }
    } else if (s.value.status !== 200) {
      if (s.value.status === 404) notFound++;
      errors.push(`${files[i]}: ${describeStatus(s.value.status)}`);
    }
  });
  // One message for every way of getting no answer, so the result tells nothing about ports.
  if (noAnswer) return { ok: false, notFound: false, error: NO_ANSWER };
  if (errors.length) return { ok: false, notFound: notFound === errors.length, error: errors.join('; ') };
  const [m, w] = settled.map((s) => (s as PromiseFulfilledResult<{ body: Buffer }>).value.body);
  try {
    return { ok: true, manifest: parseManifest(m), whitelist: parseWhitelist(w) };
  } catch (err) {
    // A 200 with garbage (a captive portal, a proxy's error page) is this server's fault.
    return { ok: false, notFound: false, error: `malformed: ${err instanceof Error ? err.message : String(err)}` };
  }
}

function describeSeconds(s: number): string {
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} days`;
}

/** Applies the checks to the answer of the first server that gave one. */
function judge(
  opts: CheckRepositoryOptions,
  server: string,
  m: Manifest,
  w: Whitelist,
  attempts: ServerAttempt[],
): RepositoryCheck {
  const { repo, now } = opts;
  const fail = (reason: CvmfsFailureReason, message: string): RepositoryCheck => ({ repo, ok: false, reason, message, server, attempts });
  if (m.name !== repo) {
    return fail('wrong-name', `Repository ${repo}: ${server}/.cvmfspublished is the manifest of "${m.name}"; check that the stratum-1 URL ends in /cvmfs/@fqrn@ and the repository name is right.`);
  }
  if (m.rootPathHash !== ROOT_PATH_HASH) {
    return fail('root-mismatch', `Repository ${repo}: ${server}/.cvmfspublished is the manifest of a nested catalog (R${m.rootPathHash}, not the root's R${ROOT_PATH_HASH}), which clients refuse to mount; the stratum-1 serves the wrong file at the repository's base — ask its operator to re-replicate ${repo}.`);
  }
  if (w.name !== repo) {
    return fail('wrong-name', `Repository ${repo}: ${server}/.cvmfswhitelist is the whitelist of "${w.name}"; the stratum-1 serves another repository's whitelist — ask its operator to re-replicate ${repo}.`);
  }
  if (now >= w.expiresAt) {
    return fail('whitelist-expired', `Repository ${repo}: the whitelist on ${server} expired at ${w.expiresAt.toISOString()}, so clients refuse to mount it; the repository maintainer must re-sign it (cvmfs_server resign ${repo}) and the stratum-1 replicate it.`);
  }
  if (opts.minRevision !== undefined && m.revision < opts.minRevision) {
    return fail('too-old-revision', `Repository ${repo}: ${server} serves revision ${m.revision} but the context pins revision ${opts.minRevision} or later; wait for the stratum-1 to replicate (cvmfs_server snapshot), or pin an older revision.`);
  }
  const ageSeconds = (now.getTime() - m.publishedAt.getTime()) / 1000;
  if (ageSeconds > opts.maxAgeSeconds) {
    return fail('stale', `Repository ${repo}: ${server} serves revision ${m.revision} published ${m.publishedAt.toISOString()} (${describeSeconds(ageSeconds)} ago), older than the allowed ${describeSeconds(opts.maxAgeSeconds)}; check that the stratum-1 still replicates (cvmfs_server snapshot) or raise the allowed age.`);
  }
  return {
    repo,
    ok: true,
    server,
    revision: m.revision,
    publishedAt: m.publishedAt.toISOString(),
    whitelistExpiresAt: w.expiresAt.toISOString(),
    attempts,
  };
}

/**
 * Checks one repository on its stratum-1 servers, in order. A server that fails to answer
 * (no answer — {@link NO_ANSWER} —, any non-200 such as 5xx, 404 or a redirect, an answer
 * over the size cap, or a malformed file) is recorded
 * in `attempts` and the next one is tried; the first server that serves both files decides,
 * as it would for a client with the same list. `missing` only when every server said 404;
 * `unreachable` (the one retryable reason) when none gave a usable answer otherwise.
 * Resolves with a failure result rather than rejecting.
 *
 * @throws TypeError when `servers` is empty (a definition error, not a repository's).
 */
export async function checkRepository(opts: CheckRepositoryOptions): Promise<RepositoryCheck> {
  const { repo } = opts;
  if (opts.servers.length === 0) throw new TypeError(`no stratum-1 servers configured for ${repo}`);
  const get = {
    policy: new AddressPolicy(opts.allowedHosts),
    timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    maxBytes: opts.maxAnswerBytes ?? MAX_ANSWER_BYTES,
    resolve: opts.resolve,
    onNoAnswer: opts.onNoAnswer,
  };
  const attempts: ServerAttempt[] = [];
  let notFound = 0;
  for (const template of opts.servers) {
    const server = expandServerUrl(template, repo);
    const got = await fetchFiles(server, get);
    if (got.ok) return judge(opts, server, got.manifest, got.whitelist, attempts);
    attempts.push({ server, error: got.error });
    if (got.notFound) notFound++;
  }
  const tried = attempts.map((a) => `${a.server} (${a.error})`).join(', ');
  return notFound === attempts.length
    ? { repo, ok: false, reason: 'missing', message: `Repository ${repo} is on none of its stratum-1 servers: ${tried}; check the repository name and the server list in the context.`, attempts }
    : { repo, ok: false, reason: 'unreachable', message: `Repository ${repo}: no stratum-1 gave a usable answer: ${tried}; will retry — if it persists, check the server list and the network to the stratum-1s.`, attempts };
}

/**
 * Checks several repositories in parallel; results in the order of `repos`.
 * `minRevisions` gives each repository's pinned minimum, if any.
 */
export function checkRepositories(
  repos: readonly string[],
  opts: Omit<CheckRepositoryOptions, 'repo' | 'minRevision'> & { minRevisions?: Readonly<Record<string, number>> },
): Promise<RepositoryCheck[]> {
  const { minRevisions, ...rest } = opts;
  return Promise.all(repos.map((repo) => checkRepository({ ...rest, repo, minRevision: minRevisions?.[repo] })));
}

const FAILURE_TYPES: Record<CvmfsFailureReason, string> = {
  missing: 'CvmfsRepositoryMissing',
  'wrong-name': 'CvmfsRepositoryWrongName',
  'root-mismatch': 'CvmfsRootPathMismatch',
  'too-old-revision': 'CvmfsRevisionTooOld',
  stale: 'CvmfsRepositoryStale',
  'whitelist-expired': 'CvmfsWhitelistExpired',
  unreachable: 'CvmfsStratum1Unreachable',
};

/** The `ApplicationFailure` type for a failed check, e.g. `CvmfsRepositoryMissing`. */
export function cvmfsFailureType(reason: CvmfsFailureReason): string {
  return FAILURE_TYPES[reason];
}

/**
 * Whether a failed check is worth retrying: only `unreachable` is; the others need a
 * person (a re-signed whitelist, a replicating stratum-1, a fixed name or server list).
 */
export function isRetryableCvmfsFailure(reason: CvmfsFailureReason): boolean {
  return reason === 'unreachable';
}
