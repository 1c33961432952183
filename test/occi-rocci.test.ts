/**
 * The OCCI adapter against REAL rOCCI renderings, as EGI FedCloud sites sent them: rOCCI 5
 * (OCCI 1.2) and rOCCI-server 1.x on OpenNebula (OCCI 1.1 era), recorded in peer-data
 * `occi/` (see its SOURCES.txt) and served verbatim as text/occi headers by
 * test/fakes/occi-recorded.ts. The adapter is driven through its public contract only.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { RETRYABLE_KINDS, type CloudAdapter, type InstanceSpec } from '../clouds/contract.js';
import {
  CLOUDGATE_TAGS_MIXIN,
  createOcciCloud,
  parseAttributes,
  parseCategories,
  parseLinks,
  renderCategory,
  TAG_ATTRIBUTES,
  UNSIZED_DISK_GIB,
} from '../clouds/occi.js';
import { OcciCloudConfigSchema } from '../model/clouds-config.js';
import { cloudErrorOf } from './cloud-assertions.js';
import { recordedOcci, renderingHeaders, startRecordedOcci, type RecordedOcci, type RecordedOcciOptions } from './fakes/occi-recorded.js';

const ROCCI5_MODEL = 'rocci5-model.txt';
const ROCCI4_MODEL = 'rocci4-occi_model_rocci_server.text';
/** Where each recorded entity lives: its own links and ids say so. */
const ROCCI5_COMPUTE = '/compute/89878';
const ROCCI4_COMPUTE = '/compute/4ddbfeae-22d7-5e50-8f85-ba18589e876b';
const ROCCI4_NETWORK = '/network/e4bd81c4-adda-5626-840d-39bb7959db97';
const ROCCI4_STORAGE = '/storage/33601efd-1c81-5547-8e65-6f8ef3dcb8c6';

const INFRA = 'http://schemas.ogf.org/occi/infrastructure#';
const COMPUTE_ACTION = 'http://schemas.ogf.org/occi/infrastructure/compute/action#';
const OPENSTACK_USER_DATA = 'http://schemas.openstack.org/compute/instance#user_data';
const OCCI_USER_DATA = 'http://schemas.ogf.org/occi/infrastructure/compute#user_data';

/**
 * cloudgate's tags mixin, which no real site offers (see CLOUDGATE_TAGS_MIXIN): appended to a
 * recorded model only where a test needs a create to get past that check.
 */
const TAGS_LINE = `Category: ${renderCategory({
  ...CLOUDGATE_TAGS_MIXIN,
  class: 'mixin',
  title: 'cloudgate tags',
  location: '/mixin/cloudgate/tags/',
  attributes: Object.values(TAG_ATTRIBUTES).map((name) => ({ name })),
})}`;

let site: RecordedOcci | undefined;
let occi: CloudAdapter | undefined;
/** Starts a recorded site and an adapter for it (both stopped after each test); `images` is the registry entry's (one is required). */
async function recordedSite(opts: RecordedOcciOptions, images: Record<string, string> = { cernvm3: 'uuid_egi_cernvm_3_fedcloud_warg_167' }): Promise<{ site: RecordedOcci; occi: CloudAdapter }> {
  site = await startRecordedOcci(opts);
  occi = createOcciCloud(OcciCloudConfigSchema.parse({ name: 'egi-site', kind: 'occi', endpoint: site.endpoint, images }));
  return { site, occi };
}
afterEach(async () => {
  await occi?.close?.();
  await site?.stop();
  occi = undefined;
  site = undefined;
});

const spec = (over: Partial<InstanceSpec> = {}): InstanceSpec => ({
  name: 'occi-r-svc-0',
  image: 'cernvm3',
  offering: { cpus: 2, memoryMiB: 6000, diskGiB: 20 },
  userData: 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n#cloud-config\r\n{"é": "ü"}\r\n--b--\r\n',
  tags: { cluster: 'occi-r', service: 'svc', key: 'occi-r-svc-0' },
  ...over,
});

describe('rOCCI renderings: every recorded file reads with the adapter parser', () => {
  it.each([
    ROCCI5_MODEL,
    'rocci5-instance.txt',
    'rocci5-categories.txt',
    'rocci5-action_instance.txt',
    ROCCI4_MODEL,
    'rocci4-occi_compute_rocci_server.text',
    'rocci4-occi_network_rocci_server.text',
    'rocci4-occi_storage_rocci_server.text',
  ])('%s', (file) => {
    const headers = renderingHeaders(recordedOcci(file));
    const lines = (name: string) => headers.get(name) ?? [];
    // One category, attribute or link per recorded line: nothing dropped, nothing split wrongly.
    expect(parseCategories(lines('Category'))).toHaveLength(lines('Category').length);
    expect(Object.keys(parseAttributes(lines('X-OCCI-Attribute')))).toHaveLength(lines('X-OCCI-Attribute').length);
    expect(parseLinks(lines('Link'))).toHaveLength(lines('Link').length);
    expect([...headers.keys()].filter((n) => !['Category', 'X-OCCI-Attribute', 'Link'].includes(n))).toEqual([]);
  });

  it("reads the link attributes rOCCI-server 1.x writes after the link's quoted category, separated by spaces only", () => {
    const links = parseLinks(renderingHeaders(recordedOcci('rocci4-occi_compute_rocci_server.text')).get('Link'));
    expect(links).toEqual([
      {
        target: '/storage/e60aa2b8-0c86-5973-b93e-30c5c46d6eac',
        rel: [`${INFRA}storage`],
        self: '/storagelink/b2f7f1de-c60c-5b08-879c-81f52429c4ef',
        category: [`${INFRA}storagelink`],
        attributes: {
          'occi.core.id': 'b2f7f1de-c60c-5b08-879c-81f52429c4ef',
          'occi.core.title': 'monitoring',
          'occi.storagelink.deviceid': 'xvda',
          'occi.storagelink.state': 'inactive',
          'org.opennebula.storagelink.bus': 'ide',
          'org.opennebula.storagelink.driver': 'tap2:tapdisk:aio:',
        },
      },
      {
        target: '/network/e4bd81c4-adda-5626-840d-39bb7959db97',
        rel: [`${INFRA}network`],
        self: '/networkinterface/e75ab249-9325-511c-82b8-a7e4430381e3',
        category: [`${INFRA}networkinterface`],
        attributes: {
          'occi.core.id': 'e75ab249-9325-511c-82b8-a7e4430381e3',
          'occi.core.title': 'monitoring',
          'occi.networkinterface.address': '192.168.254.1',
          'occi.networkinterface.mac': '02:00:c0:a8:fe:01',
          'occi.networkinterface.state': 'inactive',
          'org.opennebula.networkinterface.bridge': 'xenbr0',
        },
      },
    ]);
    // Still strict where the rendering is broken, not merely spaced.
    expect(() => parseLinks('</x>; rel="http://x#y"; a="1" junk')).toThrow(/text after/);
    expect(() => parseLinks('</x>; rel="http://x#y"a="1"')).toThrow(/text after/);
  });
});

describe('OCCI adapter against a recorded rOCCI 5 site (EGI FedCloud, OpenStack contextualization)', () => {
  const EGI = 'http://schemas.fedcloud.egi.eu/occi/infrastructure/resource_tpl#';
  const FLAVOUR = 'http://fedcloud.egi.eu/occi/compute/flavour/1.0#';
  const CERNVM = 'http://occi.localhost/occi/infrastructure/os_tpl#uuid_egi_cernvm_3_fedcloud_warg_167';

  it("offers every resource template, sized from its title (the model's attributes carry no sizes)", async () => {
    const { occi } = await recordedSite({ model: recordedOcci(ROCCI5_MODEL) });
    const gib = 1024;
    expect(await occi.listOfferings()).toEqual(
      (
        [
          [`${EGI}universe`, 'Universe Instance - 40 cores and 232 GB RAM', 40, 232 * gib],
          [`${EGI}goliath`, 'Goliath Instance - 16 cores and 64 GB RAM', 16, 64 * gib],
          [`${EGI}sym_mammoth`, 'Symmetric Mammoth Instance - 32 cores and 32 GB RAM', 32, 32 * gib],
          [`${FLAVOUR}mem_small`, 'Small Instance - 1 core and 4 GB RAM', 1, 4 * gib],
          [`${EGI}extra_large`, 'Extra Large Instance - 8 cores and 8 GB RAM', 8, 8 * gib],
          [`${EGI}mem_extra_large`, 'Extra Large Instance - 8 cores and 32 GB RAM', 8, 32 * gib],
          [`${FLAVOUR}medium`, 'Medium Instance - 2 cores and 2 GB RAM', 2, 2 * gib],
          [`${FLAVOUR}mem_medium`, 'Medium Instance - 2 cores and 8 GB RAM', 2, 8 * gib],
          [`${EGI}mammoth`, 'Mammoth Instance - 16 cores and 32 GB RAM', 16, 32 * gib],
          [`${FLAVOUR}small`, 'Small Instance - 1 core and 1 GB RAM', 1, 1 * gib],
          [`${FLAVOUR}large`, 'Large Instance - 4 cores and 4 GB RAM', 4, 4 * gib],
          [`${FLAVOUR}mem_large`, 'Large Instance - 4 cores and 16 GB RAM', 4, 16 * gib],
          [`${EGI}atlas`, 'Atlas Instance - 32 cores and 64 GB RAM', 32, 64 * gib],
        ] as const
      ).map(([id, name, cpus, memoryMiB]) => ({ id, name, cpus, memoryMiB, diskGiB: UNSIZED_DISK_GIB })),
    );
  });

  it("creates with the fitting template and OpenStack's user_data mixin, the user-data base64 in org.openstack.compute.user_data", async () => {
    const { site, occi } = await recordedSite(
      { model: `${recordedOcci(ROCCI5_MODEL)}\n${TAGS_LINE}\n`, entities: { [ROCCI5_COMPUTE]: recordedOcci('rocci5-instance.txt') }, created: ROCCI5_COMPUTE },
      { cernvm3: 'uuid_egi_cernvm_3_fedcloud_warg_167' },
    );
    const s = spec();
    const made = await occi.createInstance(s, s.tags.key);
    // The recording's compute is what the site answers with.
    expect(made).toMatchObject({ id: ROCCI5_COMPUTE, name: 'my_compute', state: 'RUNNING' });

    const posts = site.requests().filter((r) => r.method === 'POST');
    expect(posts).toHaveLength(1);
    const sent = parseCategories(posts[0].headers.category).map((c) => c.scheme + c.term);
    // 2 cpus / 6000 MiB: the smallest fit is "Medium Instance - 2 cores and 8 GB RAM".
    expect(sent.sort()).toEqual([`${INFRA}compute`, `${FLAVOUR}mem_medium`, CERNVM, OPENSTACK_USER_DATA, 'http://cloudgate.example/occi#tags'].sort());
    const attributes = parseAttributes(posts[0].headers['x-occi-attribute']);
    expect(attributes['occi.compute.userdata']).toBeUndefined();
    const encoded = attributes['org.openstack.compute.user_data'];
    expect(encoded).toMatch(/^[A-Za-z0-9+/]+={0,2}$/);
    expect(Buffer.from(encoded as string, 'base64').equals(Buffer.from(s.userData, 'utf8'))).toBe(true);
  });

  it('cannot create on the verbatim model: no real site offers a mixin for cloudgate\'s tags, and the error says so', async () => {
    const { site, occi } = await recordedSite({ model: recordedOcci(ROCCI5_MODEL) }, { cernvm3: 'uuid_egi_cernvm_3_fedcloud_warg_167' });
    const err = await cloudErrorOf(occi.createInstance(spec(), 'occi-r-svc-0'));
    expect(err.kind).toBe('InvalidRequest');
    expect(err.message).toContain(TAG_ATTRIBUTES.key);
    expect(site.requests().filter((r) => r.method === 'POST')).toEqual([]);
  });

  it("describes the recorded compute: its state, size, id and actions; lists no compute cloudgate did not tag; terminates it", async () => {
    const { site, occi } = await recordedSite({ model: recordedOcci(ROCCI5_MODEL), entities: { [ROCCI5_COMPUTE]: recordedOcci('rocci5-instance.txt') } });
    expect(await occi.describeInstance(ROCCI5_COMPUTE)).toEqual({
      id: ROCCI5_COMPUTE,
      name: 'my_compute',
      state: 'RUNNING',
      tags: {},
      extra: {
        url: site.endpoint + ROCCI5_COMPUTE,
        occiId: '89878',
        occiState: 'active',
        cores: 1,
        memoryGiB: 1,
        hostname: undefined,
        mixins: [],
        actions: [`${COMPUTE_ACTION}stop`, `${COMPUTE_ACTION}restart`, `${COMPUTE_ACTION}suspend`],
      },
    });
    expect(await occi.listInstances({})).toEqual([]);
    expect(await occi.listInstances({ cluster: 'occi-r' })).toEqual([]);
    expect(await occi.findInstance('occi-r-svc-0')).toBeUndefined();
    // The listings did read the site's compute (and found no cloudgate tags on it).
    expect(site.requests().filter((r) => r.method === 'GET' && r.path === ROCCI5_COMPUTE).length).toBeGreaterThanOrEqual(4);

    await occi.terminateInstance(ROCCI5_COMPUTE);
    await occi.terminateInstance(ROCCI5_COMPUTE);
    expect(site.requests().filter((r) => r.method === 'DELETE').map((r) => [r.path, r.status])).toEqual([
      [ROCCI5_COMPUTE, 200],
      [ROCCI5_COMPUTE, 404],
    ]);
    expect((await cloudErrorOf(occi.describeInstance(ROCCI5_COMPUTE))).kind).toBe('NotFound');
  });
});

describe('OCCI adapter against a recorded rOCCI-server 1.x site (OpenNebula, OCCI 1.1 era)', () => {
  const TPL = 'https://occi.localhost/occi/infrastructure/resource_tpl#';

  it('offers every resource template, sized from its title ("… and 7.5 GB of RAM")', async () => {
    const { occi } = await recordedSite({ model: recordedOcci(ROCCI4_MODEL) });
    expect(await occi.listOfferings()).toEqual(
      (
        [
          [`${TPL}large`, 'Large Instance - 2 cores and 7.5 GB of RAM', 2, 7680],
          [`${TPL}extra_large`, 'Extra Large Instance - 4 cores and 15 GB of RAM', 4, 15360],
          [`${TPL}larger`, 'Larger Instance - 4 cores and 10 GB of RAM', 4, 10240],
          [`${TPL}medium`, 'Medium Instance - 2 cores and 3.75 GB of RAM', 2, 3840],
          [`${TPL}small`, 'Small Instance - 1 core and 1.7 GB of RAM', 1, 1741],
        ] as const
      ).map(([id, name, cpus, memoryMiB]) => ({ id, name, cpus, memoryMiB, diskGiB: UNSIZED_DISK_GIB })),
    );
  });

  it('describes the recorded compute, whose links carry space-separated attributes, as RUNNING', async () => {
    const { site, occi } = await recordedSite({
      model: recordedOcci(ROCCI4_MODEL),
      entities: { [ROCCI4_COMPUTE]: recordedOcci('rocci4-occi_compute_rocci_server.text') },
    });
    expect(await occi.describeInstance(ROCCI4_COMPUTE)).toEqual({
      id: ROCCI4_COMPUTE,
      name: 'MonTest1',
      state: 'RUNNING',
      tags: {},
      extra: {
        url: site.endpoint + ROCCI4_COMPUTE,
        occiId: '4ddbfeae-22d7-5e50-8f85-ba18589e876b',
        occiState: 'active',
        cores: 1,
        memoryGiB: 0.256,
        hostname: undefined,
        mixins: ['http://opennebula.org/occi/infrastructure#compute'],
        actions: [],
      },
    });
    expect(await occi.listInstances({})).toEqual([]);
    expect(await occi.findInstance('occi-r-svc-0')).toBeUndefined();
  });

  it('reads the recorded network and storage as no compute (NotFound), not as unreadable', async () => {
    const { occi } = await recordedSite({
      model: recordedOcci(ROCCI4_MODEL),
      entities: {
        [ROCCI4_NETWORK]: recordedOcci('rocci4-occi_network_rocci_server.text'),
        [ROCCI4_STORAGE]: recordedOcci('rocci4-occi_storage_rocci_server.text'),
      },
    });
    for (const path of [ROCCI4_NETWORK, ROCCI4_STORAGE]) {
      const err = await cloudErrorOf(occi.describeInstance(path));
      expect([err.kind, err.message]).toEqual(['NotFound', `egi-site: no compute at ${path}`]);
    }
  });

  it('refuses a create with user-data when the site offers no contextualization mixin at all, before sending anything', async () => {
    const { site, occi } = await recordedSite({ model: `${recordedOcci(ROCCI4_MODEL)}\n${TAGS_LINE}\n` }, { sl6: 'egi_sl6goldenimage_cesnet' });
    const err = await cloudErrorOf(occi.createInstance(spec({ image: 'sl6', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 } }), 'occi-r-svc-0'));
    expect(err.kind).toBe('InvalidRequest');
    expect(RETRYABLE_KINDS.has(err.kind)).toBe(false);
    expect(err.message).toContain('egi-site');
    expect(err.message).toContain(OCCI_USER_DATA);
    expect(err.message).toContain(OPENSTACK_USER_DATA);
    expect(site.requests().filter((r) => r.method === 'POST')).toEqual([]);
  });
});

describe('OCCI adapter: an answer it cannot read is UnreadableAnswer (permanent), naming the cloud, the request and what', () => {
  it('a compute whose Link header is cut off inside a quoted string', async () => {
    const recorded = recordedOcci('rocci4-occi_compute_rocci_server.text');
    const lastLink = recorded.split('\n').filter((l) => l.startsWith('Link:')).pop()!;
    const cut = lastLink.slice(0, lastLink.indexOf('self="') + 12);
    const { occi } = await recordedSite({ model: recordedOcci(ROCCI4_MODEL), entities: { [ROCCI4_COMPUTE]: recorded.replace(lastLink, cut) } });
    const err = await cloudErrorOf(occi.describeInstance(ROCCI4_COMPUTE));
    expect(err.kind).toBe('UnreadableAnswer');
    expect(RETRYABLE_KINDS.has(err.kind)).toBe(false);
    expect(err.message).toContain('egi-site');
    expect(err.message).toContain(`GET ${ROCCI4_COMPUTE}`);
    expect(err.message).toMatch(/Link header.*unterminated quoted string/);
    // And the same for the listings that read it.
    expect((await cloudErrorOf(occi.listInstances({}))).kind).toBe('UnreadableAnswer');
  });

  it('a query interface with a Category line that is no category', async () => {
    const model = recordedOcci(ROCCI5_MODEL).replace('Category: resource_tpl;', 'Category: resource_tpl ');
    const { occi } = await recordedSite({ model });
    const err = await cloudErrorOf(occi.listOfferings());
    expect(err.kind).toBe('UnreadableAnswer');
    expect(err.message).toContain('egi-site');
    expect(err.message).toContain('GET /-/');
    expect(err.message).toMatch(/Category header.*resource_tpl scheme=/);
  });
});
