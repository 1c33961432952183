/**
 * The OCCI adapter: its text/occi parser and renderer on the examples of the OCCI 1.2
 * documents, what it sends to the OCCI FAKE (test/fakes/occi-fake.ts; no OCCI server is
 * maintained any more), the fake's own strictness, and how HTTP answers become CloudErrors.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type CloudAdapter, type InstanceSpec } from '../clouds/contract.js';
import {
  createOcciCloud,
  OcciSyntaxError,
  parseAttributes,
  parseCategories,
  parseLinks,
  parseLocations,
  PENDING_WINDOW_MS,
  renderAttribute,
  renderCategory,
  sizeFromTitle,
  splitElements,
  toCloudState,
} from '../clouds/occi.js';
import { OcciCloudConfigSchema } from '../model/clouds-config.js';
import { FAKE_OS_TPL_SCHEME, FAKE_RESOURCE_TPL_SCHEME } from './fakes/occi-fake.js';
import { OCCI_FAKE_IMAGES, OCCI_TOKEN_ENV, startOcciPeer, type OcciPeer } from './peers/occi.js';
import { cloudErrorOf } from './cloud-assertions.js';


describe('text/occi rendering', () => {
  it('parses the query interface example (HTTP Rendering § Query Interface)', () => {
    const [compute] = parseCategories(
      'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"; title="Compute Resource type"; ' +
        'rel="http://schemas.ogf.org/occi/core#resource"; attributes="occi.compute.cores occi.compute.state{immutable}"; ' +
        'actions="http://schemas.ogf.org/occi/infrastructure/compute/action#stop http://schemas.ogf.org/occi/infrastructure/compute/action#start"; ' +
        'location="http://example.com/compute/"',
    );
    expect(compute).toEqual({
      term: 'compute',
      scheme: 'http://schemas.ogf.org/occi/infrastructure#',
      class: 'kind',
      title: 'Compute Resource type',
      rel: ['http://schemas.ogf.org/occi/core#resource'],
      attributes: [{ name: 'occi.compute.cores' }, { name: 'occi.compute.state', immutable: true }],
      actions: ['http://schemas.ogf.org/occi/infrastructure/compute/action#stop', 'http://schemas.ogf.org/occi/infrastructure/compute/action#start'],
      location: 'http://example.com/compute/',
    });
  });

  it('reads categories from one comma-separated line or several lines, commas in titles included', () => {
    const list =
      'storage; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"; title="Storage, block"; attributes="occi.storage.size{required} occi.storage.state{immutable}", ' +
      'my_stuff; scheme="http://example.com/occi/my_stuff#"; class=mixin; location="http://example.com/my_stuff/"';
    const one = parseCategories(list);
    expect(one.map((c) => [c.term, c.class, c.title])).toEqual([
      ['storage', 'kind', 'Storage, block'],
      ['my_stuff', 'mixin', undefined],
    ]);
    expect(one[0].attributes).toEqual([{ name: 'occi.storage.size', required: true }, { name: 'occi.storage.state', immutable: true }]);
    expect(parseCategories(splitElements(list))).toEqual(one);
  });

  it('parses the attributes of the header rendering example, typed', () => {
    const attrs = parseAttributes(
      'occi.core.id="urn:uuid:b9ff813e-fee5-4a9d-b839-673f39746096", occi.core.title="My Dummy VM", occi.compute.architecture="x86", ' +
        'occi.compute.state="inactive", occi.compute.speed=1.33, occi.compute.memory=2.0, occi.compute.cores=2, occi.compute.hostname="dummy"',
    );
    expect(attrs).toEqual({
      'occi.core.id': 'urn:uuid:b9ff813e-fee5-4a9d-b839-673f39746096',
      'occi.core.title': 'My Dummy VM',
      'occi.compute.architecture': 'x86',
      'occi.compute.state': 'inactive',
      'occi.compute.speed': 1.33,
      'occi.compute.memory': 2,
      'occi.compute.cores': 2,
      'occi.compute.hostname': 'dummy',
    });
    expect(parseAttributes(['a.b=true', 'a.c=false, a.d="x, \\"y\\""'])).toEqual({ 'a.b': true, 'a.c': false, 'a.d': 'x, "y"' });
  });

  it('parses action links and resource links', () => {
    expect(
      parseLinks(
        '</users/foo/compute/b9ff813e-fee5-4a9d-b839-673f39746096?action=start>; rel="http://schemas.ogf.org/occi/infrastructure/compute/action#start", ' +
          '</network/123>; rel="http://schemas.ogf.org/occi/infrastructure#network"; self="/link/networkinterface/456"; ' +
          'category="http://schemas.ogf.org/occi/infrastructure#networkinterface"; occi.networkinterface.interface="eth0"; occi.networkinterface.mac="00:11:22:33:44:55"',
      ),
    ).toEqual([
      { target: '/users/foo/compute/b9ff813e-fee5-4a9d-b839-673f39746096?action=start', rel: ['http://schemas.ogf.org/occi/infrastructure/compute/action#start'], attributes: {} },
      {
        target: '/network/123',
        rel: ['http://schemas.ogf.org/occi/infrastructure#network'],
        self: '/link/networkinterface/456',
        category: ['http://schemas.ogf.org/occi/infrastructure#networkinterface'],
        attributes: { 'occi.networkinterface.interface': 'eth0', 'occi.networkinterface.mac': '00:11:22:33:44:55' },
      },
    ]);
  });

  it('splits X-OCCI-Location lines a client library joined', () => {
    expect(parseLocations(['http://example.com/vms/foo/vm1, http://example.com/vms/foo/vm2', 'http://example.com/vms/bar/vm1'])).toEqual([
      'http://example.com/vms/foo/vm1',
      'http://example.com/vms/foo/vm2',
      'http://example.com/vms/bar/vm1',
    ]);
  });

  it('renders what it parses', () => {
    const c = {
      term: 'small',
      scheme: 'http://example.com/occi/resource_tpl#',
      class: 'mixin' as const,
      title: 'Small "instance", 1 core',
      rel: ['http://schemas.ogf.org/occi/infrastructure#resource_tpl'],
      location: '/mixin/resource_tpl/small/',
      attributes: [
        { name: 'occi.compute.cores', immutable: true, default: 1 },
        { name: 'occi.compute.memory', immutable: true, default: 2, float: true },
      ],
    };
    const text = renderCategory(c);
    expect(text).toContain('attributes="occi.compute.cores{immutable default=1} occi.compute.memory{immutable default=2.0}"');
    expect(parseCategories(text)).toEqual([c]);
    expect(renderCategory({ term: 'compute', scheme: 'http://schemas.ogf.org/occi/infrastructure#', class: 'kind' })).toBe(
      'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"',
    );
    expect(renderAttribute('occi.compute.memory', 2, true)).toBe('occi.compute.memory=2.0');
    expect(renderAttribute('occi.core.title', 'say "hi", ok')).toBe('occi.core.title="say \\"hi\\", ok"');
    expect(parseAttributes(renderAttribute('occi.core.title', 'say "hi", ok'))).toEqual({ 'occi.core.title': 'say "hi", ok' });
  });

  it('rejects what the ABNF does not allow', () => {
    expect(() => parseCategories('compute; scheme="http://x#"; class="kind"; title="open')).toThrow(OcciSyntaxError);
    expect(() => parseCategories('compute; class="kind"')).toThrow(/no scheme/);
    expect(() => parseCategories('compute; scheme="http://x#"; class="thing"')).toThrow(/class/);
    expect(() => parseCategories('-bad; scheme="http://x#"; class="kind"')).toThrow(/term/);
    expect(() => parseAttributes('no-equals-sign')).toThrow(OcciSyntaxError);
    expect(() => parseLinks('/no/brackets; rel="http://x#y"')).toThrow(OcciSyntaxError);
    expect(() => renderAttribute('occi.core.title', 'two\nlines')).toThrow(/cannot carry/);
  });

  it("reads a resource template's size from its title, disk included where the title gives one", () => {
    // The two forms EGI FedCloud's rOCCI servers write (see test/occi-rocci.test.ts for the recorded models).
    expect(sizeFromTitle('Small Instance - 1 core and 1.7 GB of RAM')).toEqual({ cores: 1, memoryGiB: 1.7 });
    expect(sizeFromTitle('Universe Instance - 40 cores and 232 GB RAM')).toEqual({ cores: 40, memoryGiB: 232 });
    expect(sizeFromTitle('Medium Instance - 2 cores and 4 GB RAM and 40 GB disk')).toEqual({ cores: 2, memoryGiB: 4, diskGiB: 40 });
    expect(sizeFromTitle('tiny: 1 vCPU, 512 MB RAM, 1 TB HDD')).toEqual({ cores: 1, memoryGiB: 0.5, diskGiB: 1024 });
    expect(sizeFromTitle('2.5 cores and 4 GB RAM')).toEqual({ memoryGiB: 4 });
    expect(sizeFromTitle('Atlas')).toEqual({});
  });

  it('maps compute states, telling a booting inactive compute from a stopped one', () => {
    const now = Date.parse('2024-01-01T12:00:00Z');
    const justNow = new Date(now - 1000).toISOString();
    const longAgo = new Date(now - PENDING_WINDOW_MS - 1).toISOString();
    expect(toCloudState('active', justNow, now)).toBe('RUNNING');
    expect(toCloudState('inactive', justNow, now)).toBe('PENDING');
    expect(toCloudState('inactive', longAgo, now)).toBe('STOPPED');
    expect(toCloudState('inactive', undefined, now)).toBe('STOPPED');
    expect(toCloudState('suspended', justNow, now)).toBe('STOPPED');
    expect(toCloudState('error', justNow, now)).toBe('ERROR');
    expect(toCloudState('migrating', justNow, now)).toBe('UNKNOWN');
    expect(toCloudState(undefined, justNow, now)).toBe('UNKNOWN');
  });
});

describe('OCCI adapter against the OCCI fake', () => {
  let peer: OcciPeer;
  let occi: CloudAdapter;
  let n = 0;
  const spec = (over: Partial<InstanceSpec> = {}): InstanceSpec => {
    const key = `occi-t-svc-${n++}`;
    return {
      name: key,
      image: 'cernvm4-micro',
      offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 },
      userData: 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n#cloud-config\r\n{"é": "ü"}\r\n--b--\r\n',
      tags: { cluster: 'occi-t', service: 'svc', key },
      ...over,
    };
  };
  const raw = (path: string, headers: Record<string, string> = {}, method = 'GET') =>
    fetch(peer.fake.endpoint + path, { method, headers: { authorization: `Bearer ${peer.env[OCCI_TOKEN_ENV]}`, ...headers } });

  beforeAll(async () => {
    peer = await startOcciPeer({ activeAfterMs: 100 });
    process.env[OCCI_TOKEN_ENV] = peer.env[OCCI_TOKEN_ENV];
    occi = createOcciCloud(peer.cloudConfig);
  });
  afterAll(async () => {
    await occi?.close?.();
    await peer?.stop();
    delete process.env[OCCI_TOKEN_ENV];
  });

  it('offers the resource templates of the query interface, sized by their attribute defaults', async () => {
    expect(await occi.listOfferings()).toEqual([
      { id: `${FAKE_RESOURCE_TPL_SCHEME}small`, name: 'small: 1 cores, 2 GB RAM, 20 GB disk', cpus: 1, memoryMiB: 2048, diskGiB: 20 },
      { id: `${FAKE_RESOURCE_TPL_SCHEME}medium`, name: 'medium: 2 cores, 4 GB RAM, 40 GB disk', cpus: 2, memoryMiB: 4096, diskGiB: 40 },
      { id: `${FAKE_RESOURCE_TPL_SCHEME}large`, name: 'large: 4 cores, 8 GB RAM, 80 GB disk', cpus: 4, memoryMiB: 8192, diskGiB: 80 },
      { id: `${FAKE_RESOURCE_TPL_SCHEME}xlarge`, name: 'xlarge: 8 cores, 16 GB RAM, 160 GB disk', cpus: 8, memoryMiB: 16384, diskGiB: 160 },
    ]);
  });

  it('POSTs the compute kind, the fitting templates, user_data with base64 user-data, and the tags', async () => {
    const s = spec({ offering: { cpus: 2, memoryMiB: 3000, diskGiB: 30 } });
    const made = await occi.createInstance(s, s.tags.key);
    expect(made).toMatchObject({ id: expect.stringMatching(/^\/compute\/[0-9a-f-]{36}$/), name: s.name, state: 'PENDING', tags: s.tags, idempotencyKey: s.tags.key });

    const [c] = peer.fake.computes().filter((x) => x.location === made.id);
    expect(c.kind).toBe('http://schemas.ogf.org/occi/infrastructure#compute');
    expect(c.mixins.sort()).toEqual(
      [
        `${FAKE_RESOURCE_TPL_SCHEME}medium`,
        `${FAKE_OS_TPL_SCHEME}ucernvm4-2023.06`,
        'http://schemas.ogf.org/occi/infrastructure/compute#user_data',
        'http://cloudgate.example/occi#tags',
      ].sort(),
    );
    expect(Buffer.from(c.attributes['occi.compute.userdata'] as string, 'base64').toString('utf8')).toBe(s.userData);
    expect(c.attributes).toMatchObject({
      'occi.core.title': s.name,
      'occi.compute.hostname': s.name,
      'occi.compute.cores': 2,
      'occi.compute.memory': 4,
      'org.cloudgate.cluster': 'occi-t',
      'org.cloudgate.service': 'svc',
      'org.cloudgate.key': s.tags.key,
    });
    // As sent on the wire: the kind first, every category with scheme and class.
    const sent = parseCategories(c.received.category);
    expect(sent[0]).toEqual({ term: 'compute', scheme: 'http://schemas.ogf.org/occi/infrastructure#', class: 'kind' });
    expect(sent.slice(1).every((m) => m.class === 'mixin')).toBe(true);
    expect(c.received.attribute.join(', ')).toMatch(/occi\.compute\.userdata="[A-Za-z0-9+/=]+"/);

    const d = await occi.describeInstance(made.id);
    expect(d.extra).toMatchObject({ occiId: expect.stringMatching(/^urn:uuid:/), cores: 2, memoryGiB: 4 });
    await new Promise((r) => setTimeout(r, 150));
    expect((await occi.describeInstance(made.id)).state).toBe('RUNNING');
  });

  it('maps images to os_tpl through the registry only (by term or by scheme+term); anything else is InvalidRequest before any request', async () => {
    for (const image of ['cernvm', 'cernvm4-micro-2020.07']) {
      const s = spec({ image });
      await occi.createInstance(s, s.tags.key);
    }
    const terms = peer.fake.computes().slice(-2).map((c) => c.mixins.find((m) => m.startsWith(FAKE_OS_TPL_SCHEME))?.slice(FAKE_OS_TPL_SCHEME.length));
    expect(terms).toEqual(['ucernvm4-2023.06', 'ucernvm4-2020.07']);

    const before = { computes: peer.fake.computes().length, requests: peer.fake.requests().length };
    const offered = Object.keys(OCCI_FAKE_IMAGES).sort().join(', ');
    // os_tpl terms the site has are not image names either: only the registry says what boots.
    for (const image of ['windows-95', 'ucernvm4-2020.07', `${FAKE_OS_TPL_SCHEME}ubuntu-22.04`, 'constructor', '__proto__', 'toString', '/etc/shadow', '../x']) {
      const s = spec({ image });
      const err = await cloudErrorOf(occi.createInstance(s, s.tags.key));
      expect([err.kind, err.message]).toEqual(['InvalidRequest', `occi: image ${JSON.stringify(image)} is not one of this cloud's images (${offered})`]);
    }
    expect(peer.fake.computes()).toHaveLength(before.computes);
    expect(peer.fake.requests()).toHaveLength(before.requests);

    // A registry entry naming an os_tpl the site does not have is refused too, naming what it has.
    const stale = createOcciCloud({ ...peer.cloudConfig, images: { retired: 'windows-95' } });
    try {
      const s = spec({ image: 'retired' });
      const err = await cloudErrorOf(stale.createInstance(s, s.tags.key));
      expect(err.kind).toBe('InvalidRequest');
      expect(err.message).toMatch(/image "retired" \(os_tpl "windows-95"\) is not an OS template of this cloud; it offers .*ucernvm4-2020\.07/);
      expect(peer.fake.computes()).toHaveLength(before.computes);
    } finally {
      await stale.close?.();
    }
  });

  it('makes one compute for concurrent creates with one key, from several adapters', async () => {
    const s = spec();
    const adapters = Array.from({ length: 4 }, () => createOcciCloud(peer.cloudConfig));
    await Promise.all(adapters.map((a) => a.listOfferings())); // every racer past discovery, so the POSTs overlap
    const seen = peer.fake.requests().length;
    try {
      const made = await Promise.all(adapters.flatMap((a) => [a.createInstance(s, s.tags.key), a.createInstance(s, s.tags.key)]));
      expect(new Set(made.map((m) => m.id)).size).toBe(1);
      expect(peer.fake.computes().filter((c) => c.attributes['org.cloudgate.key'] === s.tags.key).map((c) => c.location)).toEqual([made[0].id]);
      // The race really happened: several computes were made, and all but the first deleted.
      const during = peer.fake.requests().slice(seen);
      const posts = during.filter((r) => r.method === 'POST' && r.status === 201).length;
      expect(posts).toBeGreaterThan(1);
      expect(during.filter((r) => r.method === 'DELETE' && r.status === 200)).toHaveLength(posts - 1);
    } finally {
      await Promise.all(adapters.map((a) => a.close?.()));
    }
  });

  it('reports a suspended or stopped compute as STOPPED and lists it by cluster until terminated', async () => {
    const s = spec({ tags: { cluster: 'occi-t-2', service: 'svc', key: `occi-t2-${n++}` } });
    const made = await occi.createInstance(s, s.tags.key);
    const res = await raw(`${made.id}?action=suspend`, {
      'content-type': 'text/occi',
      category: 'suspend; scheme="http://schemas.ogf.org/occi/infrastructure/compute/action#"; class="action"',
    }, 'POST');
    expect(res.status).toBe(200);
    expect((await occi.describeInstance(made.id)).state).toBe('STOPPED');
    expect((await occi.listInstances({ cluster: 'occi-t-2' })).map((i) => i.id)).toEqual([made.id]);
    await occi.terminateInstance(made.id);
    await occi.terminateInstance(made.id);
    expect(await occi.listInstances({ cluster: 'occi-t-2' })).toEqual([]);
    expect((await cloudErrorOf(occi.describeInstance(made.id))).kind).toBe('NotFound');
  });

  it('answers a wrong token with InvalidCredentials, naming the reference and never the token', async () => {
    const wrong = 'not-the-right-token-1234567890';
    const env = 'CLOUDGATE_TEST_OCCI_WRONG_TOKEN';
    process.env[env] = wrong;
    const bad = createOcciCloud(OcciCloudConfigSchema.parse({ ...peer.cloudConfig, credentials: { token: { env } } }));
    try {
      const err = await cloudErrorOf(bad.listOfferings());
      expect(err.kind).toBe('InvalidCredentials');
      expect(err.message).toContain(`env:${env}`);
      expect(err.message).toContain('a valid bearer token is required');
      expect(err.message).not.toContain(wrong);
      expect(JSON.stringify(err.cause)).not.toContain(wrong);
      delete process.env[env];
      const unset = await cloudErrorOf(bad.listOfferings());
      expect(unset.kind).toBe('InvalidCredentials');
      expect(unset.message).toContain(env);
    } finally {
      delete process.env[env];
      await bad.close?.();
    }
  });

  it('answers 429 with Throttled', async () => {
    const s = spec();
    peer.fake.throttleNext(1);
    const err = await cloudErrorOf(occi.createInstance(s, s.tags.key));
    expect(err.kind).toBe('Throttled');
    expect(err.message).toMatch(/429.*request limit exceeded.*retry after 1/);
    expect(await occi.findInstance(s.tags.key)).toBeUndefined();
  });

  it('the fake lists collections as X-OCCI-Location headers or text/uri-list, filtered by attribute', async () => {
    const s = spec();
    const made = await occi.createInstance(s, s.tags.key);
    const filter = { category: 'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"', 'x-occi-attribute': `org.cloudgate.key="${s.tags.key}"` };
    const asOcci = await raw('/compute/', { accept: 'text/occi', ...filter });
    expect(asOcci.headers.get('content-type')).toMatch(/^text\/occi/);
    expect(asOcci.headers.get('server')).toMatch(/OCCI\/1\.2/);
    expect(parseLocations(asOcci.headers.get('x-occi-location') ?? '')).toEqual([peer.fake.endpoint + made.id]);
    const asList = await raw('/compute/', { accept: 'text/uri-list', ...filter });
    expect((await asList.text()).trim()).toBe(peer.fake.endpoint + made.id);
    const all = await raw('/compute/', { accept: 'text/occi' });
    expect(parseLocations(all.headers.get('x-occi-location') ?? '').length).toBe(peer.fake.computes().length);
  });

  it('the fake refuses malformed creates with 400 and a reason', async () => {
    const kind = 'compute; scheme="http://schemas.ogf.org/occi/infrastructure#"; class="kind"';
    const os = `ucernvm4-2023.06; scheme="${FAKE_OS_TPL_SCHEME}"; class="mixin"`;
    const post = async (category: string, attribute = '') => {
      const headers: Record<string, string> = { 'content-type': 'text/occi', category };
      if (attribute) headers['x-occi-attribute'] = attribute;
      const res = await raw('/compute/', headers, 'POST');
      return `${res.status} ${(await res.text()).trim()}`;
    };
    expect(await post(os)).toMatch(/^400 a create needs exactly one kind/);
    expect(await post(kind)).toMatch(/^400 a compute needs exactly one os_tpl/);
    expect(await post(`${kind}, nope; scheme="http://x#"; class="mixin"`)).toMatch(/^400 unknown mixin http:\/\/x#nope/);
    expect(await post(`${kind}, ${os}`, 'occi.compute.cores="two"')).toMatch(/^400 attribute occi.compute.cores must be of type integer/);
    expect(await post(`${kind}, ${os}`, 'org.cloudgate.key="k"')).toMatch(/^400 attribute org.cloudgate.key is not defined/);
    expect(await post(`${kind}, ${os}`, 'occi.compute.state="active"')).toMatch(/^400 attribute occi.compute.state is immutable/);
    expect(await post(`${kind}, ${os}, user_data; scheme="http://schemas.ogf.org/occi/infrastructure/compute#"; class="mixin"`)).toMatch(
      /^400 attribute occi.compute.userdata is required/,
    );
    expect(await post(`${kind}, ${os}, user_data; scheme="http://schemas.ogf.org/occi/infrastructure/compute#"; class="mixin"`, 'occi.compute.userdata="not base64!"')).toMatch(
      /^400 occi.compute.userdata must be base64/,
    );
    expect(await post(`${kind}, ${os}`)).toMatch(/^201 OK/);
  });
});

describe("OCCI adapter: the contextualization mixin the site's query interface offers", () => {
  const OCCI_USER_DATA = 'http://schemas.ogf.org/occi/infrastructure/compute#user_data';
  const OPENSTACK_USER_DATA = 'http://schemas.openstack.org/compute/instance#user_data';
  const userData = '#cloud-config\nruncmd:\n  - echo "ä → ☃"\n';
  let n = 0;
  const spec = (over: Partial<InstanceSpec> = {}): InstanceSpec => {
    const key = `occi-ctx-${n++}`;
    return { name: key, image: 'cernvm4-micro', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 }, userData, tags: { cluster: 'occi-ctx', service: 'svc', key }, ...over };
  };
  /** The OCCI fake offering `contextualization`, and an adapter for it. */
  const withSite = async (contextualization: ('occi' | 'openstack')[], test: (peer: OcciPeer, occi: CloudAdapter) => Promise<void>) => {
    const peer = await startOcciPeer({ activeAfterMs: 50, contextualization });
    process.env[OCCI_TOKEN_ENV] = peer.env[OCCI_TOKEN_ENV];
    const occi = createOcciCloud(peer.cloudConfig);
    try {
      await test(peer, occi);
    } finally {
      await occi.close?.();
      await peer.stop();
      delete process.env[OCCI_TOKEN_ENV];
    }
  };

  it("uses OpenStack's user_data mixin when that is all the site offers: the user-data arrives base64 in org.openstack.compute.user_data", () =>
    withSite(['openstack'], async (peer, occi) => {
      const s = spec();
      const made = await occi.createInstance(s, s.tags.key);
      const [c] = peer.fake.computes();
      expect(c.location).toBe(made.id);
      expect(c.mixins).toContain(OPENSTACK_USER_DATA);
      expect(c.mixins).not.toContain(OCCI_USER_DATA);
      expect(c.attributes['occi.compute.userdata']).toBeUndefined();
      expect(Buffer.from(c.attributes['org.openstack.compute.user_data'] as string, 'base64').equals(Buffer.from(userData, 'utf8'))).toBe(true);
      expect(await peer.userData('occi-ctx')).toEqual([userData]);
    }));

  it("prefers OCCI 1.2's user_data mixin when the site offers both", () =>
    withSite(['openstack', 'occi'], async (peer, occi) => {
      const s = spec();
      await occi.createInstance(s, s.tags.key);
      const [c] = peer.fake.computes();
      expect(c.mixins).toContain(OCCI_USER_DATA);
      expect(c.mixins).not.toContain(OPENSTACK_USER_DATA);
      expect(c.attributes['org.openstack.compute.user_data']).toBeUndefined();
      expect(Buffer.from(c.attributes['occi.compute.userdata'] as string, 'base64').toString('utf8')).toBe(userData);
    }));

  it('refuses user-data a site without either mixin could not deliver (InvalidRequest, nothing made), and creates without user-data there', () =>
    withSite([], async (peer, occi) => {
      const err = await cloudErrorOf(occi.createInstance(spec(), 'occi-ctx-refused'));
      expect(err.kind).toBe('InvalidRequest');
      expect(err.message).toContain(OCCI_USER_DATA);
      expect(err.message).toContain(OPENSTACK_USER_DATA);
      expect(peer.fake.computes()).toEqual([]);

      const s = spec({ userData: '' });
      const made = await occi.createInstance(s, s.tags.key);
      const [c] = peer.fake.computes();
      expect(c.location).toBe(made.id);
      expect(c.mixins.filter((m) => m.endsWith('#user_data'))).toEqual([]);
    }));
});

describe('OCCI adapter: HTTP answers as CloudErrors', () => {
  let server: Server;
  let endpoint = '';
  let answer: { status: number; headers?: Record<string, string>; body?: string } = { status: 200 };

  beforeAll(async () => {
    server = createServer((req, res) => {
      req.resume();
      res.writeHead(answer.status, { 'content-type': 'text/plain', ...answer.headers });
      res.end(answer.body ?? '');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  it.each([
    [400, {}, 'InvalidRequest'],
    [401, {}, 'InvalidCredentials'],
    [403, {}, 'InvalidCredentials'],
    [429, {}, 'Throttled'],
    [503, { 'retry-after': '5' }, 'Throttled'],
    [503, {}, 'Transient'],
    [500, {}, 'Transient'],
    [404, {}, 'InvalidRequest'],
  ] as const)('HTTP %i %j from the query interface is %s', async (status, headers, kind) => {
    answer = { status, headers, body: `server says ${status}` };
    const a = createOcciCloud(OcciCloudConfigSchema.parse({ name: 'occi-x', kind: 'occi', endpoint, images: OCCI_FAKE_IMAGES }));
    try {
      const err = await cloudErrorOf(a.listOfferings());
      expect(err.kind).toBe(kind);
      expect(err.message).toContain(`server says ${status}`);
      expect(err.cause).toMatchObject({ status });
    } finally {
      await a.close?.();
    }
  });

  it('reads a gone compute as NotFound and terminates it without error', async () => {
    answer = { status: 404, body: 'gone' };
    const a = createOcciCloud(OcciCloudConfigSchema.parse({ name: 'occi-x', kind: 'occi', endpoint, images: OCCI_FAKE_IMAGES }));
    try {
      expect((await cloudErrorOf(a.describeInstance('/compute/123'))).kind).toBe('NotFound');
      await a.terminateInstance('/compute/123');
    } finally {
      await a.close?.();
    }
  });

  it('calls a 200 that is no text/occi rendering (a proxy page) UnreadableAnswer, not a gone compute', async () => {
    answer = { status: 200, headers: { 'content-type': 'text/html' }, body: '<html><body>Please log in</body></html>' };
    const a = createOcciCloud(OcciCloudConfigSchema.parse({ name: 'occi-x', kind: 'occi', endpoint, images: OCCI_FAKE_IMAGES }));
    try {
      const err = await cloudErrorOf(a.describeInstance('/compute/123'));
      expect(err.kind).toBe('UnreadableAnswer');
      // The cloud, the request, what came back and what is missing from it.
      expect(err.message).toMatch(/^occi-x: /);
      expect(err.message).toContain('GET /compute/123');
      expect(err.message).toContain('Content-Type text/html');
      expect(err.message).toContain('no kind');
      const model = await cloudErrorOf(a.listOfferings());
      expect(model.kind).toBe('UnreadableAnswer');
      expect(model.message).toMatch(/^occi-x: /);
      expect(model.message).toContain('GET /-/');
      expect(model.message).toContain('no Category header');
    } finally {
      await a.close?.();
    }
  });

  it('calls an unreachable server Transient, keeping the cause', async () => {
    const a = createOcciCloud(OcciCloudConfigSchema.parse({ name: 'occi-x', kind: 'occi', endpoint: 'http://127.0.0.1:9', images: OCCI_FAKE_IMAGES }));
    try {
      const err = await cloudErrorOf(a.listOfferings());
      expect(err.kind).toBe('Transient');
      expect(err.message).toMatch(/ECONNREFUSED/);
      expect(err.cause).toMatchObject({ code: 'ECONNREFUSED' });
    } finally {
      await a.close?.();
    }
  });
});
