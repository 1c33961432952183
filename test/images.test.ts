/**
 * Images: the registry entry's `images` is the only source of what a service may boot. The
 * pure submission check (`imageErrors`), the own-key lookup adapters use (`imageRef`,
 * `requireImage`), and how the registry file spells images (`ImagesSchema`, libvirt refs).
 */
import { describe, expect, it } from '@jest/globals';
import { CloudError } from '../clouds/contract.js';
import { requireImage } from '../clouds/registry.js';
import { CloudsFileSchema, DEFAULT_CLOUDS, isLibvirtImageRef, publicCloudInfo } from '../model/clouds-config.js';
import { ClusterDefinitionSchema } from '../model/definition.js';
import { DEFAULT_SIM_IMAGES, imageErrors, imageNames, imageRef } from '../model/images.js';

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };
const definitionWith = (...images: string[]) =>
  ClusterDefinitionSchema.parse({ name: 'd', services: images.map((image, i) => ({ name: `s${i}`, image, offering })) });

/** Names that are properties of every object, paths and traversal: none may pass as an image. */
const HOSTILE = ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf', '/etc/shadow', '../x', 'default/other-tenant-volume', '/var/lib/cloudgate/images/ucernvm.qcow2', ''];

describe('imageErrors (the submission check)', () => {
  const cloud = { name: 'hlt', images: ['cernvm4-micro', 'cernvm'] };

  it('accepts a definition whose every image the cloud offers', () => {
    expect(imageErrors(definitionWith('cernvm4-micro', 'cernvm', 'cernvm4-micro'), cloud)).toEqual([]);
  });

  it('names each refused service by index and name, the image, the cloud and the images it offers (sorted)', () => {
    const errors = imageErrors(definitionWith('cernvm', 'sl6', 'cernvm4-micro', 'windows-95'), cloud);
    expect(errors).toEqual([
      { field: 'definition.services[1].image', message: 'service "s1": image "sl6" is not offered by cloud "hlt" (its images: cernvm, cernvm4-micro)' },
      { field: 'definition.services[3].image', message: 'service "s3": image "windows-95" is not offered by cloud "hlt" (its images: cernvm, cernvm4-micro)' },
    ]);
  });

  it.each(HOSTILE.filter((n) => n !== ''))('refuses %j: inherited keys, paths and volumes are unknown names', (image) => {
    const errors = imageErrors(definitionWith(image), cloud);
    expect(errors).toHaveLength(1);
    expect(errors[0].field).toBe('definition.services[0].image');
    expect(errors[0].message).toContain(JSON.stringify(image));
    expect(errors[0].message).toContain('cloud "hlt"');
  });

  it('refuses the reference a name maps to (a disk path is not an image name)', () => {
    // The store holds names only; a user who learnt a reference cannot name it instead.
    expect(imageErrors(definitionWith('/var/lib/cloudgate/images/cernvm.qcow2'), { name: 'hlt', images: ['cernvm'] })).toHaveLength(1);
  });

  it('a cloud registered without images (or with none) offers nothing', () => {
    expect(imageErrors(definitionWith('cernvm'), { name: 'old' })).toEqual([
      { field: 'definition.services[0].image', message: 'service "s0": image "cernvm" is not offered by cloud "old" (its images: none)' },
    ]);
    expect(imageErrors(definitionWith('cernvm'), { name: 'empty', images: [] })).toHaveLength(1);
  });

  it('compares whole strings: only names the list really holds match, whatever they look like', () => {
    const odd = { name: 'x', images: JSON.parse('["__proto__", "constructor"]') as string[] };
    expect(imageErrors(definitionWith('__proto__', 'constructor', 'toString'), odd).map((e) => e.field)).toEqual(['definition.services[2].image']);
  });
});

describe('imageRef and requireImage (the adapters\' lookup)', () => {
  const images = { 'cernvm4-micro': '/srv/images/ucernvm.qcow2', cernvm: 'pool/cernvm' };

  it('maps own keys only', () => {
    expect(imageRef(images, 'cernvm4-micro')).toBe('/srv/images/ucernvm.qcow2');
    expect(imageRef(images, 'cernvm')).toBe('pool/cernvm');
    for (const name of HOSTILE) expect(imageRef(images, name)).toBeUndefined();
  });

  it('ignores keys of a prototype, and non-string or empty values', () => {
    const inherited = Object.create({ sneaky: '/etc/shadow' }) as Record<string, string>;
    expect(imageRef(inherited, 'sneaky')).toBeUndefined();
    expect(imageRef({ bad: 42 } as unknown as Record<string, string>, 'bad')).toBeUndefined();
    expect(imageRef({ empty: '' }, 'empty')).toBeUndefined();
  });

  it('refuses anything else with a permanent InvalidRequest naming the cloud, the image and the images offered', () => {
    for (const name of HOSTILE) {
      let err: unknown;
      try {
        requireImage('hlt', images, name);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(CloudError);
      expect((err as CloudError).kind).toBe('InvalidRequest');
      expect((err as CloudError).message).toBe(`hlt: image ${JSON.stringify(name)} is not one of this cloud's images (cernvm, cernvm4-micro)`);
    }
    expect(requireImage('hlt', images, 'cernvm')).toBe('pool/cernvm');
  });
});

describe('images in the registry file', () => {
  const parse = (clouds: unknown[]) => CloudsFileSchema.safeParse({ clouds });
  const ec2 = { name: 'aws', kind: 'ec2', region: 'eu-central-1', credentials: { accessKeyId: { env: 'K' }, secretAccessKey: { env: 'S' } } };

  it('takes a map of name → reference, or a list of names that are their own reference', () => {
    const r = parse([
      { ...ec2, images: { 'cernvm4-micro': 'ami-0123456789abcdef0' } },
      { ...ec2, name: 'aws2', images: ['ami-0123456789abcdef0'] },
    ]);
    expect(r.success).toBe(true);
    expect(r.data!.clouds.map((c) => c.images)).toEqual([{ 'cernvm4-micro': 'ami-0123456789abcdef0' }, { 'ami-0123456789abcdef0': 'ami-0123456789abcdef0' }]);
  });

  it('requires images on every kind but sim, which defaults to the demo images', () => {
    const r = parse([{ ...ec2 }]);
    expect(r.success).toBe(false);
    expect(r.error!.issues[0].path).toEqual(['clouds', 0, 'images']);
    const sim = parse([{ name: 'sim', kind: 'sim' }]);
    expect(sim.data!.clouds[0].images).toEqual(DEFAULT_SIM_IMAGES);
    expect(DEFAULT_CLOUDS.clouds[0].images).toEqual(DEFAULT_SIM_IMAGES);
    // Each parse gets its own object: nothing shared to mutate.
    expect(parse([{ name: 'sim', kind: 'sim' }]).data!.clouds[0].images).not.toBe(sim.data!.clouds[0].images);
    for (const name of ['cernvm', 'cernvm4', 'cernvm4-micro', 'cernvm4-micro-2020.07', 'cernvm4-micro-2023.06']) expect(imageRef(DEFAULT_SIM_IMAGES, name)).toBe(name);
  });

  it('refuses an empty images list or map', () => {
    expect(parse([{ ...ec2, images: {} }]).success).toBe(false);
    expect(parse([{ ...ec2, images: [] }]).success).toBe(false);
    expect(parse([{ name: 'sim', kind: 'sim', images: {} }]).success).toBe(false);
  });

  it.each(['__proto__', 'constructor/x', '../x', '/etc/shadow', '.hidden', '', 'a b', 'x'.repeat(101)])('refuses the image name %j', (bad) => {
    // A computed key is an own property, even "__proto__"; JSON.parse (what a .json registry goes through) makes one too.
    expect(parse([{ ...ec2, images: { [bad]: 'ami-0123456789abcdef0' } }]).success).toBe(false);
    const viaJson = CloudsFileSchema.safeParse(JSON.parse(JSON.stringify({ clouds: [ec2] }).replace('"credentials"', `"images": {${JSON.stringify(bad)}: "ami-1"}, "credentials"`)));
    expect(viaJson.success).toBe(false);
  });

  it('libvirt references are absolute normalised paths or pool/volume', () => {
    for (const ok of ['/var/lib/cloudgate/images/ucernvm.qcow2', 'default/ucernvm-prod']) expect(isLibvirtImageRef(ok)).toBe(true);
    for (const bad of ['ucernvm.qcow2', '/var/lib/../../etc/shadow', '/var/./x', '../x', 'a/b/c', 'pool/..', 'a /b']) expect(isLibvirtImageRef(bad)).toBe(false);
    const lv = { name: 'hlt', kind: 'libvirt', uri: 'test:///default' };
    expect(parse([{ ...lv, images: { cernvm: '/srv/cernvm.qcow2', micro: 'default/micro' } }]).success).toBe(true);
    const bad = parse([{ ...lv, images: { cernvm: '/srv/../etc/shadow' } }]);
    expect(bad.success).toBe(false);
    expect(bad.error!.issues[0].path).toEqual(['clouds', 0, 'images', 'cernvm']);
  });

  it('GET /v1/clouds shows the names, never the references', () => {
    const file = CloudsFileSchema.parse({ clouds: [{ name: 'hlt', kind: 'libvirt', uri: 'test:///default', images: { micro: '/srv/secret-path.qcow2', cernvm: 'pool/v' } }] });
    const info = publicCloudInfo(file.clouds[0]);
    expect(info.images).toEqual(['cernvm', 'micro']);
    expect(JSON.stringify(info)).not.toContain('secret-path');
    expect(imageNames(file.clouds[0].images)).toEqual(['cernvm', 'micro']);
  });
});
