/**
 * The security review's attempts on the stratum-1 check, each made for real (issue 11):
 *
 * - SSRF through a context's `cvmfs.servers`: every spelling of a loopback, private,
 *   link-local, CGNAT or unspecified address, `localhost` and other schemes is a 422 naming
 *   the field at `POST`/`PUT /v1/contexts`; a host the operator allowed passes.
 * - What the API cannot see — a host name that resolves to 127.0.0.1, a redirect to a
 *   forbidden address — the worker refuses at connect time, and it says the same generic
 *   "no usable answer" for a forbidden address as for a closed port (no port scanner); the
 *   real cause goes to the worker's log only.
 * - A 50 MB answer is abandoned at the 256 KiB cap: fast, with a clear message, reading at
 *   most the cap and one chunk, and the worker process's peak memory does not grow.
 * - A YAML alias bomb in `cloudConfig` is a 422, not a 500.
 *
 * Through the real API, worker (a separate process, so its memory can be read) and Temporal
 * dev server (test/harness.ts), against test stratum-1s on 127.0.0.1 (test/fakes/stratum1.ts);
 * the worker-side guard is also driven directly with a stub resolver.
 */
import { readFileSync } from 'node:fs';
import { lookup } from 'node:dns/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  AnswerTooLargeError,
  checkRepository,
  guardedGet,
  guardedLookup,
  MAX_ANSWER_BYTES,
  NO_ANSWER,
  NoAnswerError,
  type Resolver,
} from '../activities/cvmfs.js';
import { AddressPolicy, forbiddenAddressClass } from '../model/address-policy.js';
import { MAX_YAML_ALIASES } from '../model/context.js';
import { freePort } from '../workers/dev-server.js';
import { startStratum1, type FakeStratum1 } from './fakes/stratum1.js';
import { startStack, waitForState, type Stack } from './harness.js';

const DAY = 86_400_000;
const HUGE = 50 * 1024 * 1024;
const CHUNK = 64 * 1024;
const fresh = () => ({ revision: 31, publishedAt: new Date(Date.now() - 3_600_000), whitelistExpires: new Date(Date.now() + 20 * DAY) });
const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };

/** A name this machine resolves to a loopback address through the system resolver (its own host name, usually). */
async function loopbackName(): Promise<string | undefined> {
  for (const name of [os.hostname(), 'ip6-localhost', 'ip6-loopback']) {
    try {
      const addrs = await lookup(name, { all: true });
      if (addrs.length && addrs.every((a) => forbiddenAddressClass(a.address) === 'loopback')) return name;
    } catch {
      // not resolvable here
    }
  }
  return undefined;
}
const LOOPBACK_NAME = await loopbackName();

/** A resolver that knows a few names, like an attacker's DNS zone would. */
const stubResolver =
  (table: Record<string, string[]>): Resolver =>
  (hostname, _options, callback) => {
    const addrs = table[hostname];
    if (!addrs) return callback(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), []);
    callback(null, addrs.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })));
  };

let stack: Stack;
/** Healthy and allowed: the check passes through it. */
let allowed: FakeStratum1;
/** Healthy but on a loopback port nobody allowed: must never see a request. */
let forbidden: FakeStratum1;
/** Allowed, answers every request with a redirect to `forbidden`. */
let redirector: FakeStratum1;
/** Allowed, answers 50 MB (chunked, no Content-Length). */
let huge: FakeStratum1;
/** Allowed, nothing listens there. */
let closedPort: number;

beforeAll(async () => {
  allowed = await startStratum1({ 'sft.cern.ch': fresh(), 'alice.cern.ch': fresh() });
  forbidden = await startStratum1({ 'sft.cern.ch': fresh(), 'alice.cern.ch': fresh() });
  redirector = await startStratum1({}, { redirectTo: forbidden.origin });
  huge = await startStratum1({}, { hugeBytes: HUGE });
  closedPort = await freePort();
  const host = (s: FakeStratum1) => new URL(s.origin).host;
  stack = await startStack({
    workerProcess: true,
    captureLogs: true,
    cvmfsServers: [allowed.url],
    cvmfsAllowedHosts: [host(redirector), host(huge), `127.0.0.1:${closedPort}`],
  });
}, 180_000);

afterAll(async () => {
  await stack?.stop();
  await Promise.all([allowed, forbidden, redirector, huge].map((s) => s?.stop()));
});

const postContext = (body: Record<string, unknown>) => stack.http('POST', '/v1/contexts', { name: 'security', ...body });

describe('the API refuses stratum-1 URLs the gateway must not fetch (422 naming the field)', () => {
  it.each([
    ['http://127.0.0.1:22/cvmfs/@fqrn@', /loopback address \(127\.0\.0\.1\)/],
    ['http://2130706433/cvmfs/@fqrn@', /loopback address \(127\.0\.0\.1\)/],
    ['http://0x7f.1/cvmfs/@fqrn@', /loopback address \(127\.0\.0\.1\)/],
    ['http://127.1:8080/cvmfs/@fqrn@', /loopback address \(127\.0\.0\.1\)/],
    ['http://017700000001/cvmfs/@fqrn@', /loopback address \(127\.0\.0\.1\)/],
    ['http://[::1]:8233/cvmfs/@fqrn@', /loopback address \(::1\)/],
    ['http://[::ffff:127.0.0.1]/cvmfs/@fqrn@', /loopback address \(::ffff:7f00:1\)/],
    ['http://[::ffff:a9fe:a9fe]/latest/meta-data/@fqrn@', /link-local address/],
    ['http://169.254.169.254/latest/meta-data/@fqrn@', /link-local address \(169\.254\.169\.254\)/],
    ['http://[fe80::1]/cvmfs/@fqrn@', /link-local address/],
    ['http://[fd00:ec2::254]/latest/meta-data/@fqrn@', /private address/],
    ['http://10.0.0.1/cvmfs/@fqrn@', /private address \(10\.0\.0\.1\)/],
    ['http://172.20.1.1/cvmfs/@fqrn@', /private address/],
    ['http://192.168.1.1/cvmfs/@fqrn@', /private address/],
    ['http://100.100.100.200/cvmfs/@fqrn@', /shared \(CGNAT\) address/],
    ['http://0.0.0.0:7233/cvmfs/@fqrn@', /unspecified address/],
    ['http://0/cvmfs/@fqrn@', /unspecified address/],
    ['http://[::]/cvmfs/@fqrn@', /unspecified address/],
    ['http://localhost:8080/cvmfs/@fqrn@', /"localhost", this machine/],
    ['http://localhost./cvmfs/@fqrn@', /this machine/],
    ['http://api.localhost/cvmfs/@fqrn@', /this machine/],
    ['ftp://s1.example.org/cvmfs/@fqrn@', /http:\/\/ or https:\/\//],
    ['file:///etc/passwd/@fqrn@', /http:\/\/ or https:\/\//],
  ])('%s', async (url, why) => {
    const r = await postContext({ repositories: ['sft.cern.ch'], cvmfs: { servers: ['http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@', url] } });
    expect(r.status).toBe(422);
    expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(r.body.errors).toEqual([expect.objectContaining({ field: 'cvmfs.servers[1]', pointer: '/cvmfs/servers/1', message: expect.stringMatching(why) })]);
  });

  it('refuses a placeholder in the host that makes one repository a forbidden address', async () => {
    const r = await postContext({ repositories: ['sft.cern.ch', '2130706433.cern.ch'], cvmfs: { servers: ['http://@org@/cvmfs/@fqrn@'] } });
    expect(r.status).toBe(422);
    expect(r.body.errors[0]).toMatchObject({ field: 'cvmfs.servers[0]', message: expect.stringContaining('loopback address (127.0.0.1) for repository 2130706433.cern.ch') });
  });

  it('refuses the same on PUT, and tells how an operator allows a host', async () => {
    const created = await postContext({ repositories: ['sft.cern.ch'] });
    expect(created.status).toBe(201);
    const r = await stack.http('PUT', `/v1/contexts/${created.body.id}`, { name: 'security', cvmfs: { servers: ['http://169.254.169.254/@fqrn@'] } });
    expect(r.status).toBe(422);
    expect(r.body.errors[0].field).toBe('cvmfs.servers[0]');
    expect(r.body.errors[0].message).toContain('CLOUDGATE_CVMFS_ALLOWED_HOSTS');
    expect((await stack.http('GET', `/v1/contexts/${created.body.id}`)).body.version).toBe(1);
  });

  it('takes an allowed host:port, but not another port of the same address', async () => {
    expect((await postContext({ repositories: ['sft.cern.ch'], cvmfs: { servers: [allowed.url, redirector.url] } })).status).toBe(201);
    const other = await postContext({ repositories: ['sft.cern.ch'], cvmfs: { servers: [forbidden.url] } });
    expect(other.status).toBe(422);
    expect(other.body.errors[0]).toMatchObject({ field: 'cvmfs.servers[0]', message: expect.stringMatching(/loopback address/) });
  });

  it('takes host names (the worker judges what they resolve to)', async () => {
    expect((await postContext({ cvmfs: { servers: ['http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@', 'https://s1.example.org:8443/cvmfs/@fqrn@'] } })).status).toBe(201);
  });
});

describe('a YAML alias bomb in cloudConfig', () => {
  it('is a 422 naming the field, and a few aliases still pass', async () => {
    const labels = 'abcdefghi';
    const bomb = [`a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]`, ...[...labels.slice(1)].map((l, i) => `${l}: &${l} [${Array(9).fill(`*${labels[i]}`).join(',')}]`)].join('\n');
    const r = await postContext({ cloudConfig: bomb });
    expect(r.status).toBe(422);
    expect(r.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(r.body.errors).toEqual([expect.objectContaining({ field: 'cloudConfig', message: expect.stringContaining(`at most ${MAX_YAML_ALIASES} alias expansions`) })]);
    const few = await postContext({ cloudConfig: 'base: &base {owner: root}\nwrite_files:\n  - {<<: *base, path: /etc/a, content: a}\n' });
    expect(few.status).toBe(201);
  });
});

describe('the worker-side guard (activities/cvmfs.ts), driven directly', () => {
  const policy = new AddressPolicy();
  const options = { policy, timeoutMs: 2000, maxBytes: MAX_ANSWER_BYTES };

  it('refuses at connect time a name that resolves to a loopback address, and only because of the address', async () => {
    const port = new URL(forbidden.origin).port;
    const resolve = stubResolver({ 'stratum1.attacker.example': ['127.0.0.1'], 'mixed.attacker.example': ['192.0.2.10', '::ffff:169.254.169.254'] });
    const url = (host: string) => `http://${host}:${port}/cvmfs/sft.cern.ch/.cvmfspublished`;
    await expect(guardedGet(url('stratum1.attacker.example'), { ...options, resolve })).rejects.toThrow(
      new NoAnswerError('stratum1.attacker.example resolves to 127.0.0.1 is a loopback address'),
    );
    // One forbidden address among several is enough.
    await expect(guardedGet(url('mixed.attacker.example'), { ...options, resolve })).rejects.toThrow(/resolves to ::ffff:169\.254\.169\.254 is a link-local address/);
    expect(forbidden.requests).toEqual([]);
    // The same name and resolver, once the operator allows the name: the request goes through.
    const allowedName = await guardedGet(url('stratum1.attacker.example'), { ...options, policy: new AddressPolicy(['stratum1.attacker.example']), resolve });
    expect(allowedName.status).toBe(200);
    expect(forbidden.requests).toEqual(['/cvmfs/sft.cern.ch/.cvmfspublished']);
    forbidden.requests.length = 0;
  });

  it('answers in the form net asks for (one address or all)', async () => {
    const lookupFn = guardedLookup(policy, stubResolver({ 'public.example': ['192.0.2.10', '2001:db8::10'] }));
    const one = await new Promise((res, rej) => lookupFn('public.example', { all: false }, (err, address, family) => (err ? rej(err) : res([address, family]))));
    expect(one).toEqual(['192.0.2.10', 4]);
    const all = await new Promise((res, rej) => lookupFn('public.example', { all: true }, (err, addresses) => (err ? rej(err) : res(addresses))));
    expect(all).toEqual([
      { address: '192.0.2.10', family: 4 },
      { address: '2001:db8::10', family: 6 },
    ]);
  });

  (LOOPBACK_NAME ? it : it.skip)(`refuses ${LOOPBACK_NAME ?? 'a host name'} (the system resolver says loopback) before connecting`, async () => {
    const url = `http://${LOOPBACK_NAME}:${new URL(forbidden.origin).port}/cvmfs/sft.cern.ch/.cvmfspublished`;
    await expect(guardedGet(url, options)).rejects.toThrow(/is a loopback address/);
    expect(forbidden.requests).toEqual([]);
  });

  it('says the same for a forbidden address, a closed port, an unresolvable name and a server that never answers', async () => {
    const hang = await startStratum1({}, { hang: true });
    try {
      const resolve = stubResolver({ 'internal.attacker.example': ['10.0.0.7'], 'closed.example': ['127.0.0.1'], 'hang.example': ['127.0.0.1'] });
      const causes: string[] = [];
      const attempt = async (server: string) => {
        const r = await checkRepository({
          repo: 'sft.cern.ch',
          servers: [server],
          maxAgeSeconds: 3600,
          now: new Date(),
          timeoutMs: 300,
          resolve,
          allowedHosts: ['closed.example', 'hang.example'],
          onNoAnswer: (_url, detail) => causes.push(detail),
        });
        if (r.ok) throw new Error(`${server} passed`);
        return r;
      };
      const results = await Promise.all([
        attempt('http://internal.attacker.example:22/cvmfs/@fqrn@'),
        attempt(`http://closed.example:${closedPort}/cvmfs/@fqrn@`),
        attempt('http://no-such-host.attacker.example/cvmfs/@fqrn@'),
        attempt(`http://hang.example:${new URL(hang.origin).port}/cvmfs/@fqrn@`),
        attempt('http://127.0.0.1:22/cvmfs/@fqrn@'), // a stored context from before the API check
      ]);
      for (const r of results) {
        expect(r.reason).toBe('unreachable');
        expect(r.attempts).toEqual([{ server: expect.any(String), error: NO_ANSWER }]);
        expect(r.message.replace(r.attempts[0].server, '<server>')).toBe(results[0].message.replace(results[0].attempts[0].server, '<server>'));
      }
      // The causes differ, and are told to the operator's log only.
      expect(causes).toEqual(
        expect.arrayContaining([
          'internal.attacker.example resolves to 10.0.0.7 is a private address',
          expect.stringMatching(/ECONNREFUSED/),
          expect.stringMatching(/ENOTFOUND/),
          'timed out after 300 ms',
          'refused before connecting: the URL names a loopback address (127.0.0.1)',
        ]),
      );
    } finally {
      await hang.stop();
    }
  });

  it('does not follow a redirect, even to a healthy stratum-1', async () => {
    const r = await checkRepository({ repo: 'sft.cern.ch', servers: [redirector.url], maxAgeSeconds: 3600, now: new Date(), allowedHosts: [new URL(redirector.origin).host, new URL(forbidden.origin).host] });
    expect(r).toMatchObject({ ok: false, reason: 'unreachable' });
    expect(r.attempts[0].error).toMatch(/^\.cvmfspublished: HTTP 302: a redirect, not followed.*; \.cvmfswhitelist: HTTP 302/);
    expect(forbidden.requests).toEqual([]);
  });

  it('abandons a 50 MB answer at the cap: at most the cap and one chunk read, the server stopped', async () => {
    const started = Date.now();
    const sentBefore = huge.bytesSent();
    const err = await guardedGet(`${huge.origin}/cvmfs/sft.cern.ch/.cvmfspublished`, { ...options, policy: new AddressPolicy([new URL(huge.origin).host]) }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AnswerTooLargeError);
    const tooLarge = err as AnswerTooLargeError;
    expect(tooLarge.message).toBe('answer larger than 256 KiB, not read further (a manifest or whitelist is a few KB)');
    expect(tooLarge.bytesRead).toBeGreaterThan(MAX_ANSWER_BYTES);
    expect(tooLarge.bytesRead).toBeLessThanOrEqual(MAX_ANSWER_BYTES + CHUNK);
    expect(Date.now() - started).toBeLessThan(2000);
    await new Promise((r) => setTimeout(r, 200));
    // What the kernel's socket buffers took before the connection closed, not the 50 MB.
    expect(huge.bytesSent() - sentBefore).toBeLessThan(16 * 1024 * 1024);
  });

  it('refuses an announced Content-Length over the cap without reading', async () => {
    const declared = await startStratum1({}, { hugeBytes: HUGE, declareLength: true });
    try {
      const err = await guardedGet(`${declared.origin}/x/.cvmfspublished`, { ...options, policy: new AddressPolicy([new URL(declared.origin).host]) }).catch((e: unknown) => e);
      expect(err).toMatchObject({ name: 'AnswerTooLargeError', bytesRead: 0, declared: HUGE });
    } finally {
      await declared.stop();
    }
  });
});

describe('through the real worker: a cluster whose context names such a server', () => {
  /** The worker process's peak resident memory (VmHWM), in bytes. */
  const peakRss = (): number => {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${stack.workerProc!.pid}/status`, 'utf8'));
    return Number(m![1]) * 1024;
  };

  async function submit(servers: string[], repo = 'sft.cern.ch'): Promise<string> {
    const ctx = await postContext({ repositories: [repo], cvmfs: { servers } });
    if (ctx.status !== 201) throw new Error(`context rejected: ${JSON.stringify(ctx.body)}`);
    const def = await stack.http('POST', '/v1/cluster-definitions', { name: 'ssrf', services: [{ name: 'svc', contextId: ctx.body.id, offering, image: 'cernvm4-micro', min: 1 }] });
    if (def.status !== 201) throw new Error(`definition rejected: ${JSON.stringify(def.body)}`);
    const c = await stack.http('POST', '/v1/clusters', { definitionId: def.body.id });
    if (c.status !== 202) throw new Error(`cluster rejected: ${JSON.stringify(c.body)}`);
    return c.body.id as string;
  }

  it('an allowed stratum-1 passes the check and the cluster deploys', async () => {
    const id = await submit([allowed.url]);
    await waitForState(stack, id, 'READY', 120_000);
    expect(allowed.requests).toEqual(expect.arrayContaining(['/cvmfs/sft.cern.ch/.cvmfspublished', '/cvmfs/sft.cern.ch/.cvmfswhitelist']));
    await stack.http('DELETE', `/v1/clusters/${id}`);
  }, 150_000);

  it('a redirect, a name resolving to loopback and a 50 MB answer each fail the check; nothing forbidden is fetched, the worker does not balloon', async () => {
    forbidden.requests.length = 0;
    const peakBefore = peakRss();
    const sentBefore = huge.bytesSent();
    const hugeRequestsBefore = huge.requests.length;
    // Submitted together: each fails as unreachable after the activity's retries (about a minute).
    const cases = {
      redirect: submit([redirector.url]),
      closed: submit([`http://127.0.0.1:${closedPort}/cvmfs/@fqrn@`]),
      ...(LOOPBACK_NAME && { name: submit([`http://${LOOPBACK_NAME}:${new URL(forbidden.origin).port}/cvmfs/@fqrn@`]) }),
      huge: submit([huge.url]),
    };
    const failed: Record<string, string> = {};
    await Promise.all(
      Object.entries(cases).map(async ([name, id]) => {
        const s = await waitForState(stack, await id, 'FAILED', 170_000);
        failed[name] = s.message as string;
      }),
    );
    for (const message of Object.values(failed)) {
      expect(message).toContain('CVMFS check failed, nothing was deployed');
      expect(message).toContain('CvmfsStratum1Unreachable');
    }
    expect(failed.redirect).toContain(`${redirector.origin}/cvmfs/sft.cern.ch (.cvmfspublished: HTTP 302: a redirect, not followed`);
    expect(failed.huge).toContain(`${huge.origin}/cvmfs/sft.cern.ch (.cvmfspublished: answer larger than 256 KiB, not read further`);
    expect(failed.closed).toContain(`127.0.0.1:${closedPort}/cvmfs/sft.cern.ch (${NO_ANSWER})`);
    if (LOOPBACK_NAME) {
      expect(failed.name).toContain(`${LOOPBACK_NAME}:${new URL(forbidden.origin).port}/cvmfs/sft.cern.ch (${NO_ANSWER})`);
      // A forbidden address reads exactly like a closed port.
      const strip = (m: string) => m.replace(/http:\/\/[^/ ]+\//g, 'http://<host>/').replace(/\b(cluster|ssrf)-[a-z0-9-]+/g, '<id>');
      expect(strip(failed.name)).toBe(strip(failed.closed));
      // The operator's log has the cause.
      expect(readFileSync(path.join(stack.dataDir, 'worker.log'), 'utf8')).toMatch(new RegExp(`${LOOPBACK_NAME} resolves to (127\\.0\\.0\\.1|::1) is a loopback address`));
    }
    // The redirect target and the name's target never saw a request.
    expect(forbidden.requests).toEqual([]);
    // Every try of the huge answer was cut short (5 tries, 2 files each), and the worker's peak memory stayed put.
    const hugeRequests = huge.requests.length - hugeRequestsBefore;
    expect(hugeRequests).toBeGreaterThanOrEqual(2);
    expect(huge.bytesSent() - sentBefore).toBeLessThan(hugeRequests * 16 * 1024 * 1024);
    expect(peakRss() - peakBefore).toBeLessThan(40 * 1024 * 1024);
  }, 200_000);
});
