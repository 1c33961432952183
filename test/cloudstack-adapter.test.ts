/**
 * The CloudStack adapter beyond the shared contract: request signing against the developer
 * guide's worked example and Libcloud's vectors (read from ../shared/peer-data), credentials, user-data limits, error codes, async jobs, the tag
 * window, and racing creates. Everything but the signing vectors runs against the CloudStack
 * API FAKE (test/fakes/cloudstack-fake.ts), since no CloudStack runs here.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  CLOUDSTACK_USER_DATA_MAX_BASE64,
  cloudStackErrorKind,
  cloudStackSignature,
  cloudStackState,
  cloudStackStringToSign,
  createCloudStackCloud,
  signCloudStackRequest,
  type CloudStackAdapterOptions,
  type CloudStackParams,
} from '../clouds/cloudstack.js';
import { type CloudErrorKind, type InstanceSpec } from '../clouds/contract.js';
import type { CloudStackCloudConfig } from '../model/clouds-config.js';
import { FAKE_OFFERINGS, FAKE_TEMPLATES } from './fakes/cloudstack-fake.js';
import { CLOUDSTACK_KEY_ENV, CLOUDSTACK_SECRET_ENV, startCloudStackPeer, type CloudStackPeer, type CloudStackPeerOptions } from './peers/cloudstack.js';
import { cloudErrorOf, eventually, instanceSpecs } from './cloud-assertions.js';
import { peerDataJson } from './peer-data.js';

interface SigningVectors {
  /** Apache Libcloud's `test_signature_algorithm`: `apiKey` and `response=json` are added before signing. */
  libcloud: { apiKey: string; secretKey: string; cases: [CloudStackParams, string][] };
  /** The developer guide's "How to sign an API call with Python". */
  docs: { apiKey: string; secretKey: string; params: CloudStackParams; signature: string; url: string };
}

describe('CloudStack request signing', () => {
  const vectors = peerDataJson<SigningVectors>('cloudstack', 'signing-vectors.json');

  it("matches the developer guide's worked example, up to its exact URL", () => {
    const { apiKey, secretKey, params, signature, url } = vectors.docs;
    const all = { ...params, apikey: apiKey };
    expect(cloudStackStringToSign(all)).toBe(`apikey=${apiKey.toLowerCase()}&command=listusers&response=json`);
    expect(cloudStackSignature(all, secretKey)).toBe(signature);
    expect(`http://localhost:8080/client/api?${signCloudStackRequest(params, apiKey, secretKey)}`).toBe(url);
  });

  it("matches Libcloud's vectors, a '+' in a value included", () => {
    const { apiKey, secretKey, cases } = vectors.libcloud;
    expect(cases.length).toBeGreaterThan(0);
    for (const [params, signature] of cases) {
      expect([params, cloudStackSignature({ ...params, apiKey, response: 'json' }, secretKey)]).toEqual([params, signature]);
      expect(new URLSearchParams(signCloudStackRequest({ ...params, response: 'json' }, apiKey, secretKey)).get('signature')).toBe(signature);
    }
  });

  it('sorts by lower-cased name and encodes values as CloudStack re-encodes them (spaces as %20)', () => {
    expect(cloudStackStringToSign({ zoneId: 'Z1', displayname: "a b+c*~!'()é/", Command: 'x' })).toBe(
      'command=x&displayname=a%20b%2bc*%7e%21%27%28%29%c3%a9%2f&zoneid=z1',
    );
  });
});

describe('CloudStack error codes and states', () => {
  it.each([
    [401, 'InvalidCredentials'],
    [429, 'Throttled'],
    [430, 'InvalidRequest'],
    [431, 'InvalidRequest'],
    [432, 'InvalidRequest'],
    [530, 'Transient'],
    [531, 'InvalidCredentials'],
    [532, 'QuotaExceeded'],
    [533, 'CapacityExhausted'],
    [534, 'Transient'],
    [535, 'QuotaExceeded'],
    [536, 'Transient'],
    [537, 'InvalidRequest'],
    [551, 'CapacityExhausted'],
    [403, 'InvalidCredentials'],
    [404, 'InvalidRequest'],
    [502, 'Transient'],
    [503, 'Transient'],
  ] as const)('errorcode %i is %s', (code, kind) => {
    expect(cloudStackErrorKind(code)).toBe(kind);
  });

  it('normalises VM states', () => {
    expect(cloudStackState('Running')).toBe('RUNNING');
    expect(cloudStackState('Starting')).toBe('PENDING');
    expect(cloudStackState('Stopped', true)).toBe('PENDING');
    expect(cloudStackState('Stopped')).toBe('STOPPED');
    expect(cloudStackState('Stopping')).toBe('STOPPED');
    expect(cloudStackState('Destroyed')).toBe('TERMINATED');
    expect(cloudStackState('Expunging')).toBe('TERMINATED');
    expect(cloudStackState('Error')).toBe('ERROR');
    expect(cloudStackState('Shutdowned')).toBe('UNKNOWN');
    expect(cloudStackState(undefined)).toBe('UNKNOWN');
  });
});

describe('CloudStack adapter on the CloudStack API fake', () => {
  const run = `cs${Date.now().toString(36)}`;
  const peers: CloudStackPeer[] = [];
  const envNames: string[] = [];
  /** A peer plus an adapter reading its keys from variables of its own, so peers don't share env. */
  const start = async (opts: CloudStackPeerOptions = {}, adapterOpts?: CloudStackAdapterOptions) => {
    const peer = await startCloudStackPeer(opts);
    peers.push(peer);
    const i = peers.length;
    const cfg: CloudStackCloudConfig = {
      ...peer.cloudConfig,
      credentials: { apiKey: { env: `CG_TEST_CS${i}_KEY` }, secretKey: { env: `CG_TEST_CS${i}_SECRET` } },
    };
    process.env[`CG_TEST_CS${i}_KEY`] = peer.env[CLOUDSTACK_KEY_ENV];
    process.env[`CG_TEST_CS${i}_SECRET`] = peer.env[CLOUDSTACK_SECRET_ENV];
    envNames.push(`CG_TEST_CS${i}_KEY`, `CG_TEST_CS${i}_SECRET`);
    return { peer, cfg, cs: createCloudStackCloud(cfg, adapterOpts) };
  };

  const specOf = instanceSpecs(run);
  const spec = (cluster = `${run}-c`, over: Partial<InstanceSpec> = {}): InstanceSpec => specOf(over, cluster);

  /** A fake whose jobs take 250 ms, like a busy management server's. */
  let slow: Awaited<ReturnType<typeof start>>;

  beforeAll(async () => {
    slow = await start({ asyncJobDelayMs: 250, runningAfterMs: 300 }, { pageSize: 3 });
  });

  afterAll(async () => {
    await Promise.all(peers.map((p) => p.stop()));
    for (const name of envNames) delete process.env[name];
  });

  it('reads the key pair at call time; a wrong secret is InvalidCredentials and is never in the error', async () => {
    const unset = createCloudStackCloud({ ...slow.cfg, credentials: { apiKey: { env: 'CG_TEST_CS_UNSET_KEY' }, secretKey: { env: 'CG_TEST_CS_UNSET_SECRET' } } });
    const before = slow.peer.fake.requests().length;
    const missing = await cloudErrorOf(unset.listOfferings());
    expect(missing.kind).toBe('InvalidCredentials');
    expect(missing.message).toContain('CG_TEST_CS_UNSET_KEY');
    expect(slow.peer.fake.requests()).toHaveLength(before);

    const wrongSecret = 'wrong-secret-0123456789-abcdefghij';
    process.env.CG_TEST_CS_WRONG_SECRET = wrongSecret;
    envNames.push('CG_TEST_CS_WRONG_SECRET');
    const wrong = createCloudStackCloud({ ...slow.cfg, credentials: { ...slow.cfg.credentials, secretKey: { env: 'CG_TEST_CS_WRONG_SECRET' } } });
    const err = await cloudErrorOf(wrong.listOfferings());
    expect(err.kind).toBe('InvalidCredentials');
    expect(err.message).toMatch(/unable to verify user credentials/);
    const shown = `${err.message}\n${err.stack}\n${JSON.stringify(err.cause)}`;
    for (const secret of [wrongSecret, ...Object.values(slow.peer.env)]) expect(shown).not.toContain(secret);
  });

  it('lists the fixed-size offerings, with the root disk size where the offering has one', async () => {
    const offerings = await slow.cs.listOfferings();
    expect(offerings.map((o) => o.name)).toEqual(['Small Instance', 'Medium Instance', 'Large Instance', 'XLarge Instance']);
    expect(offerings.find((o) => o.name === 'Large Instance')).toMatchObject({ cpus: 2, memoryMiB: 4096, diskGiB: 40 });
    expect(offerings.find((o) => o.name === 'Small Instance')!.diskGiB).toBeGreaterThanOrEqual(1000);
  });

  it('deploys by POST with the mapped template, the smallest fitting offering and the key as host name', async () => {
    const s = spec(`${run}-d`, { name: 'display name', offering: { cpus: 2, memoryMiB: 2048, diskGiB: 30 } });
    const created = await slow.cs.createInstance(s, s.tags.key);
    const deploy = slow.peer.fake.requests().filter((r) => r.command === 'deployVirtualMachine').at(-1)!;
    expect(deploy.method).toBe('POST');
    expect(deploy.params).toMatchObject({
      templateid: FAKE_TEMPLATES['CernVM 4 micro 2023.06'],
      serviceofferingid: FAKE_OFFERINGS[2].id,
      name: s.tags.key,
      displayname: 'display name',
    });
    expect(created).toMatchObject({ name: 'display name', idempotencyKey: s.tags.key, tags: s.tags });
    // Another name maps to another template.
    const t = spec(`${run}-d`, { image: 'cernvm4-micro-2020.07' });
    await slow.cs.createInstance(t, t.tags.key);
    expect(slow.peer.fake.requests().filter((r) => r.command === 'deployVirtualMachine').at(-1)!.params.templateid).toBe(FAKE_TEMPLATES['CernVM 4 micro 2020.07']);
  });

  it('refuses an image the registry does not map, before any call: a raw template id, inherited keys, paths', async () => {
    const before = slow.peer.fake.requests().length;
    const offered = Object.keys(slow.peer.cloudConfig.images).sort().join(', ');
    for (const image of [FAKE_TEMPLATES['CernVM 4 micro 2020.07'], 'constructor', '__proto__', 'toString', '/etc/shadow', '../x']) {
      const s = spec(`${run}-i`, { image });
      const err = await cloudErrorOf(slow.cs.createInstance(s, s.tags.key));
      expect([err.kind, err.message]).toEqual(['InvalidRequest', `cloudstack: image ${JSON.stringify(image)} is not one of this cloud's images (${offered})`]);
    }
    expect(slow.peer.fake.requests()).toHaveLength(before);
  });

  it('refuses user-data over 32 KB in base64 before any call, and sends 20 KB by POST', async () => {
    const before = slow.peer.fake.requests().length;
    for (const bytes of [33 * 1024, (CLOUDSTACK_USER_DATA_MAX_BASE64 / 4) * 3 + 1]) {
      const s = spec(`${run}-u`, { userData: 'x'.repeat(bytes) });
      const err = await cloudErrorOf(slow.cs.createInstance(s, s.tags.key));
      expect(err.kind).toBe('InvalidRequest');
      expect(err.message).toContain('cloudstack');
      expect(err.message).toContain(`${bytes} bytes`);
    }
    expect(slow.peer.fake.requests()).toHaveLength(before);

    for (const bytes of [20 * 1024, (CLOUDSTACK_USER_DATA_MAX_BASE64 / 4) * 3]) {
      const userData = `#!/bin/sh\n# ${'é'.repeat(10)}\n${'y'.repeat(bytes - 34)}\n`;
      const s = spec(`${run}-u`, { userData });
      expect(Buffer.byteLength(userData)).toBe(bytes);
      const created = await slow.cs.createInstance(s, s.tags.key);
      const vm = slow.peer.fake.vms().find((v) => v.id === created.id)!;
      expect(Buffer.from(vm.userdata!, 'base64').toString('utf8')).toBe(userData);
      expect(slow.peer.fake.requests().filter((r) => r.command === 'deployVirtualMachine').at(-1)!.method).toBe('POST');
    }
  });

  it('refuses a key that cannot be a host name before any call', async () => {
    const before = slow.peer.fake.requests().length;
    const s = spec(`${run}-h`);
    const err = await cloudErrorOf(slow.cs.createInstance(s, `9-${'x'.repeat(70)}`));
    expect(err.kind).toBe('InvalidRequest');
    expect(slow.peer.fake.requests()).toHaveLength(before);
  });

  it('maps error codes to kinds and keeps CloudStack’s text and code', async () => {
    const cases: [number, CloudErrorKind][] = [
      [401, 'InvalidCredentials'],
      [429, 'Throttled'],
      [431, 'InvalidRequest'],
      [432, 'InvalidRequest'],
      [530, 'Transient'],
      [531, 'InvalidCredentials'],
      [532, 'QuotaExceeded'],
      [533, 'CapacityExhausted'],
      [534, 'Transient'],
      [535, 'QuotaExceeded'],
    ];
    for (const [code, kind] of cases) {
      slow.peer.fake.failNext(code);
      const err = await cloudErrorOf(slow.cs.listOfferings());
      expect([code, err.kind]).toEqual([code, kind]);
      expect(err.message).toContain(`injected failure ${code}`);
      expect(err.cause).toMatchObject({ errorcode: code });
    }
    // No CloudStack body: a proxy's error page.
    slow.peer.fake.failNext(502);
    const proxy = await cloudErrorOf(slow.cs.listOfferings());
    expect(proxy.kind).toBe('Transient');
    expect(proxy.message).toContain('HTTP 502');
    // Nobody listening.
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const { port } = closed.address() as AddressInfo;
    await new Promise((resolve) => closed.close(resolve));
    const gone = createCloudStackCloud({ ...slow.cfg, endpoint: `http://127.0.0.1:${port}/client/api` });
    const net = await cloudErrorOf(gone.listOfferings());
    expect(net.kind).toBe('Transient');
    expect(net.message).toContain('ECONNREFUSED');
    expect(net.cause).toBeDefined();
    // A throttled create makes nothing.
    const s = spec(`${run}-t`);
    slow.peer.fake.throttleNext(1);
    expect((await cloudErrorOf(slow.cs.createInstance(s, s.tags.key))).kind).toBe('Throttled');
    expect(await slow.cs.findInstance(s.tags.key)).toBeUndefined();
  });

  it('reports async jobs through jobStatus: pending, then the running VM', async () => {
    const s = spec(`${run}-j`);
    const created = await slow.cs.createInstance(s, s.tags.key);
    // Stopped with its deploy job pending: on its way up, not stopped.
    expect(created.state).toBe('PENDING');
    const jobId = String(created.extra?.jobId);
    expect((await slow.cs.jobStatus(jobId)).status).toBe('pending');
    const done = await eventually('deploy job', 5_000, async () => {
      const j = await slow.cs.jobStatus(jobId);
      return j.status === 'pending' ? undefined : j;
    });
    expect(done).toMatchObject({ status: 'succeeded', result: { virtualmachine: { id: created.id, state: 'Running' } } });
    expect((await slow.cs.describeInstance(created.id)).state).toBe('RUNNING');
    expect((await cloudErrorOf(slow.cs.jobStatus('no-such-job'))).kind).toBe('InvalidRequest');
  });

  it('reports a deploy that fails in its job as a failed job and an ERROR instance', async () => {
    const full = await start({ capacity: 0, asyncJobDelayMs: 20 });
    const s = spec(`${run}-f`);
    const created = await full.cs.createInstance(s, s.tags.key);
    const failed = await eventually('failed deploy job', 5_000, async () => {
      const j = await full.cs.jobStatus(String(created.extra?.jobId));
      return j.status === 'failed' ? j : undefined;
    });
    expect(failed.error.kind).toBe('CapacityExhausted');
    expect(failed.error.message).toContain('Unable to create a deployment');
    expect((await full.cs.describeInstance(created.id)).state).toBe('ERROR');
  });

  it('finds a new VM by key at once; lists it by cluster once its tag job has run', async () => {
    const cluster = `${run}-w`;
    const s = spec(cluster);
    const created = await slow.cs.createInstance(s, s.tags.key);
    expect((await slow.cs.findInstance(s.tags.key))?.id).toBe(created.id);
    // The window this adapter documents: createTags is an async job.
    expect(await slow.cs.listInstances({ cluster })).toEqual([]);
    const listed = await eventually('tagged', 5_000, async () => {
      const l = await slow.cs.listInstances({ cluster });
      return l.length > 0 ? l : undefined;
    });
    expect(listed.map((i) => i.id)).toEqual([created.id]);
    expect(listed[0].tags).toEqual(s.tags);
  });

  it('makes one VM for racing creates with one key, where CloudStack refuses the duplicate host name', async () => {
    const s = spec(`${run}-r`);
    const made = await Promise.all(Array.from({ length: 5 }, () => slow.cs.createInstance(s, s.tags.key)));
    expect(new Set(made.map((i) => i.id)).size).toBe(1);
    expect(slow.peer.fake.vms().filter((vm) => vm.name === s.tags.key)).toHaveLength(1);
  });

  it('keeps the earliest VM and destroys the rest where racing deploys both got through', async () => {
    const loose = await start({ uniqueHostNames: false, asyncJobDelayMs: 0 });
    const s = spec(`${run}-l`);
    const made = await Promise.all(Array.from({ length: 5 }, () => loose.cs.createInstance(s, s.tags.key)));
    const ids = new Set(made.map((i) => i.id));
    expect(ids.size).toBe(1);
    const sameName = loose.peer.fake.vms().filter((vm) => vm.name === s.tags.key);
    expect(sameName.length).toBeGreaterThan(1); // the race really happened
    const live = sameName.filter((vm) => !vm.removed);
    expect(live.map((vm) => vm.id)).toEqual([...ids]);
    expect(sameName[0].id).toBe(live[0].id);
    expect(await loose.peer.count(s.tags.cluster)).toBe(1);
  });

  it('terminates idempotently: unknown, destroying and expunged VMs are all fine', async () => {
    const s = spec(`${run}-x`);
    const created = await slow.cs.createInstance(s, s.tags.key);
    await slow.cs.terminateInstance(created.id);
    await slow.cs.terminateInstance(created.id);
    await slow.cs.terminateInstance('no-such-vm');
    await eventually('expunged', 5_000, async () => ((await slow.cs.findInstance(s.tags.key)) === undefined ? true : undefined));
    await slow.cs.terminateInstance(created.id);
    expect((await cloudErrorOf(slow.cs.describeInstance(created.id))).kind).toBe('NotFound');
    expect((await cloudErrorOf(slow.cs.describeInstance('no-such-vm'))).kind).toBe('NotFound');
  });

  it('pages through long lists', async () => {
    const cluster = `${run}-p`;
    const specs = Array.from({ length: 7 }, () => spec(cluster));
    const made = await Promise.all(specs.map((s) => slow.cs.createInstance(s, s.tags.key)));
    const listed = await eventually('all 7 tagged', 5_000, async () => {
      const l = await slow.cs.listInstances({ cluster });
      return l.length === 7 ? l : undefined;
    });
    expect(listed.map((i) => i.id).sort()).toEqual(made.map((i) => i.id).sort());
    expect(slow.peer.fake.requests().some((r) => r.command === 'listVirtualMachines' && r.params.page === '3')).toBe(true);
    expect(await slow.peer.count(cluster)).toBe(7);
  });
});
