import { afterAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CloudError, type CloudAdapter, type CloudOffering } from '../clouds/contract.js';
import { createCloudRegistry, smallestFit } from '../clouds/registry.js';
import { SIM_OFFERINGS } from '../clouds/sim.js';
import { DEFAULT_SIM_IMAGES } from '../model/images.js';
import { loadCloudsFile } from '../workers/clouds.js';

const flavors: CloudOffering[] = [...SIM_OFFERINGS];

describe('smallestFit', () => {
  it('picks the smallest flavor covering every dimension', () => {
    expect(smallestFit(flavors, { cpus: 1, memoryMiB: 512, diskGiB: 10 })?.id).toBe('sim.small');
    expect(smallestFit(flavors, { cpus: 2, memoryMiB: 4096, diskGiB: 40 })?.id).toBe('sim.medium');
    // memory alone pushes it up a size
    expect(smallestFit(flavors, { cpus: 1, memoryMiB: 4097, diskGiB: 1 })?.id).toBe('sim.large');
    // disk alone pushes it up
    expect(smallestFit(flavors, { cpus: 1, memoryMiB: 64, diskGiB: 500 })?.id).toBe('sim.huge');
  });

  it('returns undefined when nothing is big enough', () => {
    expect(smallestFit(flavors, { cpus: 64, memoryMiB: 1024, diskGiB: 10 })).toBeUndefined();
    expect(smallestFit([], { cpus: 1, memoryMiB: 64, diskGiB: 1 })).toBeUndefined();
  });

  it('breaks ties by cpus, then memory, then disk, whatever the input order', () => {
    const o = (id: string, cpus: number, memoryMiB: number, diskGiB: number): CloudOffering => ({ id, name: id, cpus, memoryMiB, diskGiB });
    const list = [o('c', 2, 2048, 20), o('b', 2, 1024, 40), o('a', 2, 1024, 30), o('d', 4, 512, 10)];
    expect(smallestFit(list, { cpus: 1, memoryMiB: 512, diskGiB: 10 })?.id).toBe('a');
    expect(smallestFit([...list].reverse(), { cpus: 1, memoryMiB: 512, diskGiB: 10 })?.id).toBe('a');
    expect(smallestFit(list, { cpus: 1, memoryMiB: 512, diskGiB: 35 })?.id).toBe('b');
  });
});

describe('createCloudRegistry', () => {
  const fake = (name: string, onClose?: () => Promise<void>): CloudAdapter => ({
    name,
    kind: 'fake',
    listOfferings: async () => [],
    createInstance: async () => {
      throw new Error('not used');
    },
    describeInstance: async () => {
      throw new Error('not used');
    },
    findInstance: async () => undefined,
    listInstances: async () => [],
    terminateInstance: async () => undefined,
    ...(onClose && { close: onClose }),
  });

  it('gets adapters by name and lists them', () => {
    const a = fake('alpha');
    const b = fake('beta');
    const reg = createCloudRegistry([a, b]);
    expect(reg.get('beta')).toBe(b);
    expect(reg.list()).toEqual([a, b]);
  });

  it('rejects an unknown cloud with NotFound naming the known ones', () => {
    const reg = createCloudRegistry([fake('alpha'), fake('beta')]);
    let err: unknown;
    try {
      reg.get('gamma');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CloudError);
    expect((err as CloudError).kind).toBe('NotFound');
    expect((err as CloudError).message).toMatch(/gamma.*"alpha", "beta"/);
  });

  it('refuses two adapters with one name', () => {
    expect(() => createCloudRegistry([fake('alpha'), fake('alpha')])).toThrow(/two adapters named "alpha"/);
  });

  it('closes every adapter, even when one fails', async () => {
    const closed: string[] = [];
    const reg = createCloudRegistry([
      fake('a', async () => {
        closed.push('a');
        throw new Error('boom');
      }),
      fake('b', async () => {
        closed.push('b');
      }),
      fake('c'),
    ]);
    await expect(reg.close()).rejects.toThrow(/1 adapter/);
    expect(closed.sort()).toEqual(['a', 'b']);
  });
});

describe('loadCloudsFile: images in the registry file', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cloudgate-registry-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, text: string) => {
    const f = path.join(dir, name);
    writeFileSync(f, text);
    return f;
  };

  it("reads every kind's images as the README shows them; sim without images gets the defaults", () => {
    const f = file(
      'clouds.yaml',
      `clouds:
  - name: sim
    kind: sim
  - name: sim2
    kind: sim
    images: [cernvm4-micro, sl6]
  - name: hlt
    kind: libvirt
    uri: qemu+ssh://cloudgate@hlt-gw01/system
    images: { cernvm4-micro: /var/lib/cloudgate/images/ucernvm-prod.1.18-16.cernvm.x86_64.qcow2, cernvm: default/ucernvm }
  - name: aws
    kind: ec2
    region: eu-central-1
    credentials: { accessKeyId: { env: AWS_ACCESS_KEY_ID }, secretAccessKey: { file: /etc/cloudgate/aws-secret } }
    images: { cernvm4-micro: ami-0123456789abcdef0 }
  - name: cern-cs
    kind: cloudstack
    endpoint: https://cloudstack.example.org/client/api
    zoneId: 1a2b3c
    credentials: { apiKey: { env: CS_API_KEY }, secretKey: { env: CS_SECRET_KEY } }
    images: { cernvm4-micro: 7c1e5b2a-0000-4000-8000-000000000000 }
  - name: egi
    kind: occi
    endpoint: https://occi.example.org:11443
    images: { cernvm4-micro: uuid_cernvm4_micro }
`,
    );
    const images = Object.fromEntries(loadCloudsFile(f).clouds.map((c) => [c.name, c.images]));
    expect(images).toEqual({
      sim: DEFAULT_SIM_IMAGES,
      sim2: { 'cernvm4-micro': 'cernvm4-micro', sl6: 'sl6' },
      hlt: { 'cernvm4-micro': '/var/lib/cloudgate/images/ucernvm-prod.1.18-16.cernvm.x86_64.qcow2', cernvm: 'default/ucernvm' },
      aws: { 'cernvm4-micro': 'ami-0123456789abcdef0' },
      'cern-cs': { 'cernvm4-micro': '7c1e5b2a-0000-4000-8000-000000000000' },
      egi: { 'cernvm4-micro': 'uuid_cernvm4_micro' },
    });
  });

  it('refuses a file whose cloud offers no images, an image name that is a property of every object, or a libvirt path with ".."', () => {
    const noImages = file('none.yaml', 'clouds:\n  - { name: egi, kind: occi, endpoint: "https://occi.example.org" }\n');
    expect(() => loadCloudsFile(noImages)).toThrow(/clouds\.0\.images/);
    const proto = file('proto.json', JSON.stringify({ clouds: [{ name: 'egi', kind: 'occi', endpoint: 'https://occi.example.org', images: {} }] }).replace('"images":{}', '"images":{"__proto__":"x"}'));
    expect(() => loadCloudsFile(proto)).toThrow(/invalid cloud registry .*images/);
    const yamlProto = file('proto.yaml', 'clouds:\n  - { name: egi, kind: occi, endpoint: "https://occi.example.org", images: { __proto__: x } }\n');
    expect(() => loadCloudsFile(yamlProto)).toThrow(/invalid cloud registry .*images/);
    const up = file('up.yaml', 'clouds:\n  - { name: hlt, kind: libvirt, uri: "test:///default", images: { cernvm: /var/lib/../../etc/shadow } }\n');
    expect(() => loadCloudsFile(up)).toThrow(/clouds\.0\.images\.cernvm: must be an absolute path/);
  });
});
