/**
 * The adapter contract, run against every adapter through one list of targets. Each target
 * runs against the most real peer available here (see DESIGN.md); targets live in
 * test/targets/, one file per cloud.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { CLOUD_INSTANCE_STATES, CloudError, type InstanceSpec } from '../clouds/contract.js';
import { TARGETS } from './targets/index.js';
import type { Harness } from './targets/types.js';
import { eventually, cloudErrorOf } from './cloud-assertions.js';



describe.each(TARGETS.map((t) => [t.name, t] as const))('cloud adapter contract: %s', (_name, target) => {
  let h: Harness;
  // Unique per run so targets against long-lived peers don't see earlier runs' instances.
  const run = `ct${Date.now().toString(36)}`;
  const cluster = `${run}-c`;
  let n = 0;
  const spec = (service = 'svc', clusterId = cluster): InstanceSpec => {
    const key = `${clusterId}-${service}-${n++}`;
    return {
      name: key,
      image: h.image,
      offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 },
      userData: '#cloud-config\n{}\n',
      tags: { cluster: clusterId, service, key },
    };
  };

  beforeAll(async () => {
    h = await target.make();
  });
  afterAll(async () => {
    await h?.cleanup();
  });

  it('lists offerings', async () => {
    const offerings = await h.adapter.listOfferings();
    expect(offerings.length).toBeGreaterThan(0);
    for (const o of offerings) {
      expect(typeof o.id).toBe('string');
      expect(typeof o.name).toBe('string');
      expect(o.cpus).toBeGreaterThanOrEqual(1);
      expect(o.memoryMiB).toBeGreaterThan(0);
      expect(o.diskGiB).toBeGreaterThan(0);
    }
  });

  it('creates an instance that becomes RUNNING and is described', async () => {
    const s = spec();
    const created = await h.adapter.createInstance(s, s.tags.key);
    expect(created.id).toBeTruthy();
    expect(CLOUD_INSTANCE_STATES).toContain(created.state);
    expect(['PENDING', 'RUNNING']).toContain(created.state);

    const running = await eventually('RUNNING', h.runningWithinMs, async () => {
      const d = await h.adapter.describeInstance(created.id);
      return d.state === 'RUNNING' ? d : undefined;
    });
    expect(running).toMatchObject({ id: created.id, name: s.name, state: 'RUNNING' });
    expect(running.tags).toMatchObject(s.tags);
  });

  it('creates once per idempotency key', async () => {
    const s = spec();
    const [a, b] = await Promise.all([h.adapter.createInstance(s, s.tags.key), h.adapter.createInstance(s, s.tags.key)]);
    const c = await h.adapter.createInstance(s, s.tags.key);
    expect(b.id).toBe(a.id);
    expect(c.id).toBe(a.id);
    const listed = (await h.adapter.listInstances({ cluster })).filter((i) => i.tags?.key === s.tags.key);
    expect(listed.map((i) => i.id)).toEqual([a.id]);
  });

  it('finds an instance by key from a restarted adapter, which does not create it again', async () => {
    const s = spec();
    const created = await h.adapter.createInstance(s, s.tags.key);
    const after = await h.reopen();
    expect((await after.findInstance(s.tags.key))?.id).toBe(created.id);
    expect((await after.createInstance(s, s.tags.key)).id).toBe(created.id);
    expect(await after.findInstance(`${s.tags.key}-never-made`)).toBeUndefined();
  });

  it('lists live instances by cluster tag', async () => {
    const other = `${run}-other`;
    const mine = [spec('a'), spec('b')];
    const theirs = spec('a', other);
    const made = await Promise.all([...mine, theirs].map((s) => h.adapter.createInstance(s, s.tags.key)));
    const ids = (await h.adapter.listInstances({ cluster })).map((i) => i.id);
    expect(ids).toEqual(expect.arrayContaining([made[0].id, made[1].id]));
    expect(ids).not.toContain(made[2].id);
    const otherListed = await h.adapter.listInstances({ cluster: other });
    expect(otherListed.map((i) => i.id)).toEqual([made[2].id]);
    expect(otherListed[0].tags).toMatchObject({ cluster: other, service: 'a' });
  });

  it('terminates idempotently; a terminated instance is neither found nor listed', async () => {
    const s = spec();
    const created = await h.adapter.createInstance(s, s.tags.key);
    await h.adapter.terminateInstance(created.id);
    await h.adapter.terminateInstance(created.id);
    expect(await h.adapter.findInstance(s.tags.key)).toBeUndefined();
    expect((await h.adapter.listInstances({ cluster })).map((i) => i.id)).not.toContain(created.id);
    // A cloud may keep describing it for a while, but only as TERMINATED.
    try {
      expect((await h.adapter.describeInstance(created.id)).state).toBe('TERMINATED');
    } catch (err) {
      expect(err).toBeInstanceOf(CloudError);
      expect((err as CloudError).kind).toBe('NotFound');
    }
    // The key is free again: a new create makes a new instance.
    const again = await h.adapter.createInstance(s, s.tags.key);
    expect(again.id).not.toBe(created.id);
    await h.adapter.terminateInstance(again.id);
  });

  it('describes an unknown instance as NotFound', async () => {
    const err = await cloudErrorOf(h.adapter.describeInstance('no-such-instance-0000'));
    expect(err.kind).toBe('NotFound');
  });

  it('surfaces throttling as CloudError Throttled', async () => {
    if (!h.throttled) return; // the peer cannot be made to throttle
    const throttled = await h.throttled();
    const s = spec();
    const err = await cloudErrorOf(throttled.createInstance(s, s.tags.key));
    expect(err.kind).toBe('Throttled');
    expect(await h.adapter.findInstance(s.tags.key)).toBeUndefined();
  });

  it('rejects an offering no flavor can satisfy as InvalidOffering', async () => {
    const s = { ...spec(), offering: { cpus: 512, memoryMiB: 4_194_304, diskGiB: 65_536 } };
    const err = await cloudErrorOf(h.adapter.createInstance(s, s.tags.key));
    expect(err.kind).toBe('InvalidOffering');
    expect(await h.adapter.findInstance(s.tags.key)).toBeUndefined();
  });
});
