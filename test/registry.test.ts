import { describe, expect, it } from '@jest/globals';
import { CloudError, type CloudAdapter, type CloudOffering } from '../clouds/contract.js';
import { createCloudRegistry, smallestFit } from '../clouds/registry.js';
import { SIM_OFFERINGS } from '../clouds/sim.js';

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
