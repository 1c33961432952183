/**
 * The Temporal payload codec (model/payload-codec.ts) and the codec endpoint for the Web UI
 * (api/codec.ts).
 *
 * Unit: round trip, fresh nonces, key rotation (a payload written under the old key reads
 * after a new current key is added), an unknown key id named in the error, tampered and
 * truncated ciphertext refused, unencrypted payloads passed through, the keys file.
 *
 * End to end, on a real stack: a cluster whose service names a context is deployed to READY
 * and torn down, and the bytes of Temporal's SQLite files (database, journal or WAL) are searched for
 * what only payloads carry. What Temporal keeps in plaintext by design is not asserted absent:
 * workflow ids (`cluster/<clusterId>/<service>`) and search attributes (cluster id, service
 * name, state, definition id) name the cluster and its services so the UI can list and filter
 * them — so the cluster gets its own name here (its id would otherwise begin with the
 * definition name), and the service name is only asserted absent as part of an instance name.
 * Then the codec endpoint: decodes for an admin (by bearer and by the browser's session
 * cookie), refuses an anonymous caller and a user, answers CORS for the UI's origin only, and
 * the real `temporal` CLI reads a history through it.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { defaultPayloadConverter, type Payload } from '@temporalio/common';
import {
  AesGcmPayloadCodec,
  ENCRYPTED_ENCODING,
  KEY_ID_METADATA,
  PayloadDecryptError,
  UnknownPayloadKeyError,
  newPayloadKey,
  parsePayloadKeys,
  type PayloadKeyring,
} from '../model/payload-codec.js';
import { loadPayloadKeys } from '../store/secret.js';
import { findTemporalCli } from '../workers/dev-server.js';
import { clusterInstances, startStack, waitForState, type Stack } from './harness.js';
import { startStratum1, type FakeStratum1 } from './fakes/stratum1.js';

const run = promisify(execFile);
const text = (b: Uint8Array | null | undefined) => Buffer.from(b ?? new Uint8Array()).toString('utf8');
const keyring = (current: string, ...ids: string[]): PayloadKeyring => ({
  current,
  keys: new Map([current, ...ids].map((id) => [id, newPayloadKey()])),
});
const jsonPayload = (value: unknown): Payload => defaultPayloadConverter.toPayload(value);

describe('the AES-256-GCM payload codec', () => {
  const value = { definition: 'zqxj-unit-definition', services: [{ name: 'svc', min: 3 }] };

  it('round-trips a payload and hides it', async () => {
    const codec = new AesGcmPayloadCodec(keyring('k1'));
    const original = jsonPayload(value);
    const [encoded] = await codec.encode([original]);
    expect(text(encoded.metadata!.encoding)).toBe(ENCRYPTED_ENCODING);
    expect(text(encoded.metadata![KEY_ID_METADATA])).toBe('k1');
    expect(Object.keys(encoded.metadata!).sort()).toEqual(['encoding', KEY_ID_METADATA]);
    expect(Buffer.from(encoded.data!).includes('zqxj-unit-definition')).toBe(false);
    // nonce (12) + serialized Payload proto + tag (16)
    expect(encoded.data!.length).toBeGreaterThan(12 + 16 + JSON.stringify(value).length);
    const [decoded] = await codec.decode([encoded]);
    expect(text(decoded.metadata!.encoding)).toBe('json/plain');
    expect(defaultPayloadConverter.fromPayload(decoded)).toEqual(value);
    // Empty lists and payloads without data (undefined) survive too.
    expect(await codec.encode([])).toEqual([]);
    const [undef] = await codec.decode(await codec.encode([jsonPayload(undefined)]));
    expect(defaultPayloadConverter.fromPayload(undef)).toBeUndefined();
  });

  it('draws a fresh nonce for every payload', async () => {
    const codec = new AesGcmPayloadCodec(keyring('k1'));
    const [a, b] = await codec.encode([jsonPayload(value), jsonPayload(value)]);
    expect(Buffer.from(a.data!).subarray(0, 12).equals(Buffer.from(b.data!).subarray(0, 12))).toBe(false);
    expect(Buffer.from(a.data!).equals(Buffer.from(b.data!))).toBe(false);
  });

  it('rotates keys: a payload written under the old key reads after a new current key is added', async () => {
    const old = keyring('2024-old');
    const [written] = await new AesGcmPayloadCodec(old).encode([jsonPayload(value)]);
    const rotated: PayloadKeyring = { current: '2025-new', keys: new Map([['2025-new', newPayloadKey()], ['2024-old', old.keys.get('2024-old')!]]) };
    const codec = new AesGcmPayloadCodec(rotated);
    expect(defaultPayloadConverter.fromPayload((await codec.decode([written]))[0])).toEqual(value);
    const [fresh] = await codec.encode([jsonPayload(value)]);
    expect(text(fresh.metadata![KEY_ID_METADATA])).toBe('2025-new');
    // A gateway that only has the old key cannot read the new payload, and says which key is missing.
    await expect(new AesGcmPayloadCodec(old).decode([fresh])).rejects.toThrow(UnknownPayloadKeyError);
    await expect(new AesGcmPayloadCodec(old).decode([fresh])).rejects.toThrow(/key "2025-new", which is not in the payload keyring/);
  });

  it('refuses an unknown key id by name', async () => {
    const [written] = await new AesGcmPayloadCodec(keyring('retired-7')).encode([jsonPayload(value)]);
    const err = await new AesGcmPayloadCodec(keyring('k1')).decode([written]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnknownPayloadKeyError);
    expect((err as UnknownPayloadKeyError).keyId).toBe('retired-7');
    expect((err as Error).message).toContain('"retired-7"');
  });

  it('refuses tampered, truncated and wrong-key ciphertext', async () => {
    const ring = keyring('k1');
    const codec = new AesGcmPayloadCodec(ring);
    const [good] = await codec.encode([jsonPayload(value)]);
    const flipped = (at: number): Payload => {
      const data = Buffer.from(good.data!);
      data[at] ^= 0x01;
      return { ...good, data };
    };
    for (const at of [0, 12, 30, good.data!.length - 1]) {
      await expect(codec.decode([flipped(at)])).rejects.toThrow(PayloadDecryptError);
    }
    await expect(codec.decode([{ ...good, data: good.data!.subarray(0, 20) }])).rejects.toThrow(/too short/);
    // The same id naming another key (a keys file replaced, not rotated).
    const impostor = new AesGcmPayloadCodec(keyring('k1'));
    await expect(impostor.decode([good])).rejects.toThrow(/does not decrypt with key "k1"/);
    // No key id at all.
    await expect(codec.decode([{ metadata: { encoding: good.metadata!.encoding }, data: good.data }])).rejects.toThrow(PayloadDecryptError);
  });

  it('passes payloads through decode that it did not encrypt (histories from before the codec)', async () => {
    const codec = new AesGcmPayloadCodec(keyring('k1'));
    const plain = [jsonPayload(value), jsonPayload(undefined), { metadata: { encoding: new TextEncoder().encode('binary/plain') }, data: new Uint8Array([1, 2, 3]) }];
    const decoded = await codec.decode(plain);
    decoded.forEach((p, i) => expect(p).toBe(plain[i]));
  });

  it('reads keyrings: first is current; bad ids, bad keys and duplicates are named, key material never', () => {
    const a = newPayloadKey().toString('hex');
    const b = newPayloadKey().toString('hex');
    const ring = parsePayloadKeys(`new:${b}, old:${a}`);
    expect(ring.current).toBe('new');
    expect([...ring.keys.keys()]).toEqual(['new', 'old']);
    expect(ring.keys.get('old')!.toString('hex')).toBe(a);
    expect(parsePayloadKeys(`# rotated 2025\nx:${a}\n`).current).toBe('x');
    expect(() => parsePayloadKeys('')).toThrow(/names no key/);
    expect(() => parsePayloadKeys(a)).toThrow(/entry 1 needs a key id/);
    expect(() => parsePayloadKeys(`k1:${a.slice(2)}`)).toThrow(/"k1" must be 64 hex digits/);
    expect(() => parsePayloadKeys(`k1:${a},k1:${b}`)).toThrow(/appears twice/);
    expect(() => parsePayloadKeys(`bad id:${a}`)).toThrow(/entry 1/);
    try {
      parsePayloadKeys(`k1:${a},k2:${b.slice(1)}`);
    } catch (err) {
      expect((err as Error).message).not.toContain(a);
      expect((err as Error).message).not.toContain(b.slice(1));
    }
  });

  it('creates <dataDir>/payload-keys once (0600) and reads it back; CLOUDGATE_PAYLOAD_KEYS wins; rotation by a new first line', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'cloudgate-keys-'));
    try {
      const first = loadPayloadKeys({ dataDir: dir }, {});
      const file = path.join(dir, 'payload-keys');
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(readdirSync(dir)).toEqual(['payload-keys']); // no temp file left behind
      const again = loadPayloadKeys({ dataDir: dir }, {});
      expect(again.current).toBe(first.current);
      expect(again.keys.get(again.current)!.equals(first.keys.get(first.current)!)).toBe(true);
      // Many loaders at once (API, worker, harness starting together) agree on one key.
      const dir2 = mkdtempSync(path.join(os.tmpdir(), 'cloudgate-keys-'));
      const rings = await Promise.all(Array.from({ length: 8 }, async () => loadPayloadKeys({ dataDir: dir2 }, {})));
      expect(new Set(rings.map((r) => r.keys.get(r.current)!.toString('hex'))).size).toBe(1);
      rmSync(dir2, { recursive: true, force: true });

      const envKey = newPayloadKey().toString('hex');
      expect(loadPayloadKeys({ dataDir: dir }, { CLOUDGATE_PAYLOAD_KEYS: `from-env:${envKey}` }).current).toBe('from-env');

      const [old] = await new AesGcmPayloadCodec(first).encode([jsonPayload('written before rotation')]);
      writeFileSync(file, `rotated:${newPayloadKey().toString('hex')}\n${readFileSync(file, 'utf8')}`);
      const rotated = loadPayloadKeys({ dataDir: dir }, {});
      expect(rotated.current).toBe('rotated');
      expect(defaultPayloadConverter.fromPayload((await new AesGcmPayloadCodec(rotated).decode([old]))[0])).toBe('written before rotation');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// Names that occur nowhere else, so a hit in Temporal's files can only be a leak.
const DEF_NAME = 'zqxjdefname';
const CTX_NAME = 'zqxjctxname';
const REPO = 'zqxjrepo.cern.ch';
/** Missing on the stratum-1: its check fails with a message naming it (failure messages are encrypted too). */
const REPO_MISSING = 'zqxjmissing.cern.ch';
const SERVICE = 'zqxjsvc';
const CLUSTER_NAME = 'pcodec';

describe('payloads in Temporal, end to end', () => {
  let stack: Stack;
  let stratum1: FakeStratum1;
  let clusterId: string;
  let contextId: string;
  let definitionId: string;
  let stopped = false;

  beforeAll(async () => {
    const now = Date.now();
    const fresh = { revision: 3, publishedAt: new Date(now - 60_000), whitelistExpires: new Date(now + 86_400_000) };
    stratum1 = await startStratum1({ [REPO]: fresh, [REPO_MISSING]: { ...fresh, missing: true } });
    stack = await startStack({ cvmfsServers: [stratum1.url] });
    const ctx = await stack.http('POST', '/v1/contexts', { name: CTX_NAME, repositories: [REPO] });
    expect(ctx.status).toBe(201);
    contextId = ctx.body.id;
    const def = await stack.http('POST', '/v1/cluster-definitions', {
      name: DEF_NAME,
      services: [
        { name: 'zqxjfront', image: 'cernvm', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, min: 1 },
        { name: SERVICE, image: 'cernvm', contextId, offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, min: 2, dependsOn: ['zqxjfront'] },
      ],
    });
    expect(def.status).toBe(201);
    definitionId = def.body.id;
    const c = await stack.http('POST', '/v1/clusters', { definitionId, name: CLUSTER_NAME });
    expect(c.status).toBe(202);
    clusterId = c.body.id;
    expect(clusterId.startsWith(`${CLUSTER_NAME}-`)).toBe(true);
  }, 120_000);

  afterAll(async () => {
    if (stopped) rmSync(stack.dataDir, { recursive: true, force: true });
    else await stack?.stop();
    await stratum1?.stop();
  });

  /** Every byte of Temporal's SQLite database and of its rollback journal or WAL, whichever exist at the moment. */
  const temporalBytes = (): Buffer =>
    Buffer.concat(
      readdirSync(stack.dataDir)
        .filter((f) => f.startsWith('temporal.sqlite'))
        .flatMap((f) => {
          try {
            return [readFileSync(path.join(stack.dataDir, f))];
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []; // a journal that was just committed away
            throw err;
          }
        }),
    );

  const secretsOfThisCluster = async () => {
    const instances = await clusterInstances(stack, clusterId);
    const names = instances.map((i) => i.id);
    expect(names).toContain(`${clusterId}-${SERVICE}-0`);
    return [DEF_NAME, CTX_NAME, contextId, REPO, ...names];
  };

  /** What leaks, if anything; plus the positive controls (plaintext by design, so the bytes are the right ones). */
  const check = (bytes: Buffer, hidden: string[]) => {
    expect(bytes.includes(`cluster/${clusterId}/${SERVICE}`)).toBe(true); // workflow id
    expect(bytes.includes(definitionId)).toBe(true); // CloudgateDefinition search attribute
    expect(hidden.filter((s) => bytes.includes(s))).toEqual([]);
  };

  it('keeps definition name, context, repositories and instance names out of the Temporal database while the cluster runs', async () => {
    await waitForState(stack, clusterId, 'READY');
    check(temporalBytes(), await secretsOfThisCluster());
  }, 120_000);

  it('decodes for an admin: by bearer, as the Web UI and the temporal CLI call it', async () => {
    const history = await stack.client.workflow.getHandle(`cluster/${clusterId}`).fetchHistory();
    const input = history.events![0].workflowExecutionStartedEventAttributes!.input!.payloads![0];
    expect(text(input.metadata!.encoding)).toBe(ENCRYPTED_ENCODING);
    const wire = {
      payloads: [
        { metadata: Object.fromEntries(Object.entries(input.metadata!).map(([k, v]) => [k, Buffer.from(v).toString('base64')])), data: Buffer.from(input.data!).toString('base64') },
      ],
    };
    const headers = { 'X-Namespace': 'default' };
    const decoded = await stack.http('POST', '/codec/decode?preserveStorageRefs=true', wire, headers);
    expect(decoded.status).toBe(200);
    expect(decoded.headers.get('cache-control')).toBe('no-store');
    const [p] = decoded.body.payloads;
    expect(Buffer.from(p.metadata.encoding, 'base64').toString()).toBe('json/plain');
    const start = JSON.parse(Buffer.from(p.data, 'base64').toString());
    expect(start).toMatchObject({ clusterId, definitionId, definition: { name: DEF_NAME } });

    // encode → decode is the identity; what encode returns is ciphertext.
    const plain = { payloads: [{ metadata: { encoding: Buffer.from('json/plain').toString('base64') }, data: Buffer.from('"zqxj-ui-signal"').toString('base64') }] };
    const enc = await stack.http('POST', '/codec/encode', plain, headers);
    expect(enc.status).toBe(200);
    expect(Buffer.from(enc.body.payloads[0].metadata.encoding, 'base64').toString()).toBe(ENCRYPTED_ENCODING);
    expect(Buffer.from(enc.body.payloads[0].data, 'base64').includes('zqxj-ui-signal')).toBe(false);
    expect((await stack.http('POST', '/codec/decode', enc.body, headers)).body).toEqual(plain);
    // Unencrypted payloads pass through.
    expect((await stack.http('POST', '/codec/decode', plain, headers)).body).toEqual(plain);

    // Bad bodies and unknown keys are 422s naming the payload.
    const unknownKey = { payloads: [{ ...wire.payloads[0], metadata: { ...wire.payloads[0].metadata, [KEY_ID_METADATA]: Buffer.from('gone').toString('base64') } }] };
    const bad = await stack.http('POST', '/codec/decode', unknownKey, headers);
    expect(bad.status).toBe(422);
    expect(bad.body.errors[0]).toMatchObject({ field: 'payloads[0]', message: expect.stringContaining('"gone"') });
    expect((await stack.http('POST', '/codec/decode', { payloads: [{ data: 'not base64!' }] })).status).toBe(422);
    expect((await stack.http('POST', '/codec/decode', { items: [] })).status).toBe(422);
  });

  it('refuses an anonymous caller (401) and a user (403)', async () => {
    const body = { payloads: [] };
    const anon = await stack.http('POST', '/codec/decode', body, { Authorization: '' });
    expect(anon.status).toBe(401);
    expect(anon.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect((await stack.http('POST', '/codec/encode', body, { Authorization: '' })).status).toBe(401);
    expect((await stack.http('POST', '/codec/decode', body, { Authorization: 'Bearer cg_nonsense' })).status).toBe(401);
    const user = await stack.http('POST', '/v1/tokens', { owner: 'zqxj-user', role: 'user' });
    expect(user.status).toBe(201);
    expect((await stack.http('POST', '/codec/decode', body, { Authorization: `Bearer ${user.body.token}` })).status).toBe(403);
    // Nor does a user get a session cookie.
    const form = await fetch(`${stack.api.url}/codec/session`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token: user.body.token }),
    });
    expect(form.status).toBe(403);
    expect(form.headers.get('set-cookie')).toBeNull();
  });

  it('answers CORS for the UI origin only', async () => {
    const ui = new URL(stack.config.temporalUiUrl ?? `http://127.0.0.1:${stack.config.temporalUiPort}`).origin;
    const preflight = (origin: string) =>
      fetch(`${stack.api.url}/codec/decode`, {
        method: 'OPTIONS',
        headers: { Origin: origin, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type,x-namespace,authorization' },
      });
    const ok = await preflight(ui);
    expect(ok.status).toBe(204);
    expect(ok.headers.get('access-control-allow-origin')).toBe(ui);
    expect(ok.headers.get('access-control-allow-credentials')).toBe('true');
    expect(ok.headers.get('access-control-allow-headers')).toBe('Authorization, Content-Type, X-Namespace');
    expect(ok.headers.get('access-control-allow-methods')).toContain('POST');
    expect(ok.headers.get('vary')).toMatch(/Origin/);

    for (const other of ['http://evil.example', 'http://127.0.0.1:9999', 'null']) {
      const no = await preflight(other);
      expect(no.headers.get('access-control-allow-origin')).toBeNull();
      expect(no.headers.get('access-control-allow-credentials')).toBeNull();
      expect(no.headers.get('access-control-allow-headers')).toBeNull();
      const post = await stack.http('POST', '/codec/decode', { payloads: [] }, { Origin: other });
      expect(post.headers.get('access-control-allow-origin')).toBeNull();
    }
    // The actual request from the UI's origin carries the headers too, also when refused (so the UI can read the 401).
    const fromUi = await stack.http('POST', '/codec/decode', { payloads: [] }, { Origin: ui, Authorization: '' });
    expect(fromUi.status).toBe(401);
    expect(fromUi.headers.get('access-control-allow-origin')).toBe(ui);
  });

  it('signs a browser in with a session cookie the UI sends along (HttpOnly, SameSite=Strict, /codec only, UI origin only)', async () => {
    const ui = new URL(stack.config.temporalUiUrl ?? `http://127.0.0.1:${stack.config.temporalUiPort}`).origin;
    const page = await fetch(`${stack.api.url}/codec/session`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/text\/html/);
    expect(await page.text()).toContain('<form method="post" action="session">');

    const signIn = await fetch(`${stack.api.url}/codec/session`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', Origin: stack.api.url },
      body: new URLSearchParams({ token: stack.adminToken }),
    });
    expect(signIn.status).toBe(200);
    const setCookie = signIn.headers.get('set-cookie')!;
    expect(setCookie).toMatch(/^cloudgate_codec=/);
    expect(setCookie).toMatch(/; Path=\/codec/);
    expect(setCookie).toMatch(/; HttpOnly/);
    expect(setCookie).toMatch(/; SameSite=Strict/);
    expect(setCookie).toMatch(/; Max-Age=28800/);
    const cookie = setCookie.split(';')[0];

    const history = await stack.client.workflow.getHandle(`cluster/${clusterId}/${SERVICE}`).fetchHistory();
    const input = history.events![0].workflowExecutionStartedEventAttributes!.input!.payloads![0];
    const body = JSON.stringify({
      payloads: [{ metadata: Object.fromEntries(Object.entries(input.metadata!).map(([k, v]) => [k, Buffer.from(v).toString('base64')])), data: Buffer.from(input.data!).toString('base64') }],
    });
    // What the UI sends with "include cross-origin credentials": the cookie, its origin, no Authorization.
    const asUi = (origin: string, contentType = 'application/json') =>
      fetch(`${stack.api.url}/codec/decode?preserveStorageRefs=true`, { method: 'POST', headers: { 'Content-Type': contentType, 'X-Namespace': 'default', Origin: origin, Cookie: cookie }, body });
    const ok = await asUi(ui);
    expect(ok.status).toBe(200);
    expect(ok.headers.get('access-control-allow-origin')).toBe(ui);
    const decoded = (await ok.json()) as { payloads: { data: string }[] };
    expect(JSON.parse(Buffer.from(decoded.payloads[0].data, 'base64').toString())).toMatchObject({ clusterId, context: { id: contextId } });

    // Another origin (even same-site, another port) cannot use the cookie; nor can a body that skips the preflight.
    expect((await asUi('http://127.0.0.1:9999')).status).toBe(403);
    expect((await asUi(ui, 'text/plain')).status).toBe(415);
    // The cookie is the token: revoke it and the session ends too.
    const spare = await stack.http('POST', '/v1/tokens', { owner: 'zqxj-admin2', role: 'admin' });
    const spareIn = await fetch(`${stack.api.url}/codec/session`, { method: 'POST', headers: { Authorization: `Bearer ${spare.body.token}` } });
    expect(spareIn.status).toBe(204);
    const spareCookie = spareIn.headers.get('set-cookie')!.split(';')[0];
    const withSpare = () => fetch(`${stack.api.url}/codec/decode`, { method: 'POST', headers: { 'Content-Type': 'application/json', Origin: ui, Cookie: spareCookie }, body });
    expect((await withSpare()).status).toBe(200);
    expect((await stack.http('DELETE', `/v1/tokens/${spare.body.id}`)).status).toBe(204);
    expect((await withSpare()).status).toBe(401);
    // Signing out clears the cookie.
    const out = await fetch(`${stack.api.url}/codec/session`, { method: 'DELETE' });
    expect(out.status).toBe(204);
    expect(out.headers.get('set-cookie')).toMatch(/^cloudgate_codec=;.*Expires=Thu, 01 Jan 1970/);
  });

  it('lets the temporal CLI read a history through the endpoint (--codec-endpoint, --codec-auth)', async () => {
    const show = (auth?: string) =>
      run(
        findTemporalCli(),
        [
          'workflow', 'show', '--workflow-id', `cluster/${clusterId}/${SERVICE}`, '--address', stack.temporal.address, '--output', 'json',
          '--codec-endpoint', `${stack.api.url}/codec`, ...(auth ? ['--codec-auth', auth] : []),
        ],
        { maxBuffer: 64 * 1024 * 1024 },
      );
    const { stdout } = await show(`Bearer ${stack.adminToken}`);
    // JSON output keeps payload bytes in base64: read them back.
    const payloadTexts = [...stdout.matchAll(/"data": "([A-Za-z0-9+/=]+)"/g)].map((m) => Buffer.from(m[1], 'base64').toString()).join('\n');
    expect(payloadTexts).toContain(contextId);
    expect(payloadTexts).toContain(REPO);
    expect(stdout).not.toContain(Buffer.from(ENCRYPTED_ENCODING).toString('base64'));
    // Without a token the CLI gets a 401 from the endpoint and fails.
    await expect(show()).rejects.toThrow(/401|Unauthorized|codec/i);
  }, 60_000);

  it('keeps failure messages out too: a CVMFS check that fails names its repository only inside encrypted payloads', async () => {
    const ctx = await stack.http('POST', '/v1/contexts', { name: 'zqxjctxtwo', repositories: [REPO_MISSING] });
    expect(ctx.status).toBe(201);
    const def = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'zqxjdeftwo',
      services: [{ name: 'solo', image: 'cernvm', contextId: ctx.body.id, offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, min: 1 }],
    });
    const c = await stack.http('POST', '/v1/clusters', { definitionId: def.body.id, name: 'pcodecb' });
    expect(c.status).toBe(202);
    const failed = await waitForState(stack, c.body.id, 'FAILED');
    // The workflow read the activity's message back (the sandbox decodes the encrypted failure), so the API can say it.
    expect(failed.message).toContain(REPO_MISSING);
    expect(failed.message).not.toContain('Encoded failure');
    const history = await stack.client.workflow.getHandle(`cluster/${c.body.id}`).fetchHistory();
    const activityFailure = history.events!.find((e) => e.activityTaskFailedEventAttributes)!.activityTaskFailedEventAttributes!.failure!;
    expect(activityFailure.message).toBe('Encoded failure');
    expect(activityFailure.stackTrace ?? '').toBe('');
    expect(text(activityFailure.encodedAttributes!.metadata!.encoding)).toBe(ENCRYPTED_ENCODING);
    const bytes = temporalBytes();
    expect(bytes.includes(`cluster/${c.body.id}`)).toBe(true);
    expect([REPO_MISSING, 'zqxjdeftwo', 'zqxjctxtwo', ctx.body.id].filter((x) => bytes.includes(x))).toEqual([]);
  }, 120_000);

  it('keeps them out after teardown too (everything written to the database file)', async () => {
    const hidden = [...(await secretsOfThisCluster()), REPO_MISSING, 'zqxjdeftwo'];
    expect((await stack.http('DELETE', `/v1/clusters/${clusterId}`)).status).toBe(202);
    await waitForState(stack, clusterId, 'TERMINATED');
    // Everything stopped: all the dev server wrote is in the database file.
    await stack.stop({ keepDataDir: true });
    stopped = true;
    check(temporalBytes(), hidden);
  }, 120_000);
});
