/**
 * Issue 12, a farm of libvirt hosts end to end: through the REST API, a real Temporal dev
 * server and the real worker, a cluster deploys onto a farm of three private libvirtd hosts
 * (each serving libvirt's test driver), placed by capacity; one host is killed mid-deployment,
 * its instances are counted lost and replaced on the others, and the cluster still reaches
 * READY; teardown leaves no domain on any host.
 *
 * The test driver runs no guest, so a FAKE GUEST AGENT stands in for the booted VMs (as in
 * clouds-e2e): it reads each instance's seed ISO back, as cloud-init would, and phones home.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { createLibvirtCloud } from '../clouds/libvirt.js';
import { CONFIG_DRIVE_USER_DATA, readIsoFile } from '../clouds/seed-iso.js';
import type { CloudAdapter } from '../clouds/contract.js';
import { extractPhoneHome } from '../model/user-data.js';
import { clusterInstances, clusterStatus, startStack, waitFor, waitForState, type Stack } from './harness.js';
import { startLibvirtFarm, type LibvirtFarm } from './peers/libvirt.js';

let farm: LibvirtFarm;
let stack: Stack;
let agent: { stop(): Promise<void> } | undefined;

beforeAll(async () => {
  // Room for 4 medium instances on h1 and h2 each, 2 on h3.
  farm = await startLibvirtFarm({
    name: 'hlt',
    hosts: [
      { name: 'h1', cpus: 8, memoryMiB: 16384 },
      { name: 'h2', cpus: 8, memoryMiB: 16384 },
      { name: 'h3', cpus: 4, memoryMiB: 8192 },
    ],
    hostTimeoutSeconds: 2,
    hostRetrySeconds: 2,
  });
  // The worker in its own process, as in production: libvirt's calls take libuv threads of their own there.
  stack = await startStack({ clouds: [farm.cloudConfig], workerProcess: true });
  agent = startFakeGuestAgent(createLibvirtCloud(farm.cloudConfig));
}, 180_000);

afterAll(async () => {
  await agent?.stop();
  await stack?.stop();
  await farm?.stop();
});

const clusters = new Set<string>();

/** Phones home ok, once, for every instance of a watched cluster whose seed ISO it can read. */
function startFakeGuestAgent(view: CloudAdapter): { stop(): Promise<void> } {
  const done = new Set<string>();
  let running = true;
  const loop = (async () => {
    while (running) {
      for (const clusterId of clusters) {
        const live = await view.listInstances({ cluster: clusterId }).catch(() => []);
        for (const inst of live) {
          if (done.has(inst.name)) continue;
          const text = await readIsoFile(String(inst.extra?.seedIso), CONFIG_DRIVE_USER_DATA).catch(() => undefined);
          const ph = text ? extractPhoneHome(text) : undefined;
          if (!ph) continue;
          const res = await fetch(ph.url, {
            method: 'POST',
            headers: { 'content-type': 'application/json', authorization: `Bearer ${ph.token}` },
            body: JSON.stringify({ status: 'ok', checks: {} }),
          }).catch(() => undefined);
          if (res && (res.status < 500 || res.status === 410)) done.add(inst.name);
        }
      }
      await new Promise((r) => setTimeout(r, 300));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      await view.close?.();
    },
  };
}

const domainsOn = (host: string): Promise<string[]> => farm.hosts[host].domains();

describe('a farm of libvirt hosts', () => {
  it('places by capacity, replaces the instances of a host killed mid-deployment on the others, and tears down everywhere', async () => {
    const d = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'farm',
      services: [{ name: 'workers', image: 'cernvm4-micro', offering: { cpus: 2, memoryMiB: 4096, diskGiB: 20 }, min: 6, readinessTimeoutSeconds: 30 }],
    });
    expect(d.status).toBe(201);
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id, cloud: 'hlt' });
    expect(c.status).toBe(202);
    const id = c.body.id as string;

    // Most free first: h1 and h2 (4 free each) before h3 (2), alternating as they fill.
    const placed = await waitFor(async () => {
      const all = await clusterInstances(stack, id);
      return all.length === 6 && all.every((i) => i.host) && all;
    }, 60_000, 'six instances placed on hosts');
    const perHost = (hosts: (string | undefined)[]) => hosts.reduce<Record<string, number>>((m, h) => ({ ...m, [h!]: (m[h!] ?? 0) + 1 }), {});
    expect(perHost(placed.map((i) => i.host))).toEqual({ h1: 3, h2: 3 });
    expect(placed.every((i) => i.cloud === 'hlt')).toBe(true);
    expect((await domainsOn('h1')).length).toBe(3);

    // h1 dies mid-deployment, before its guests phone home.
    await farm.hosts.h1.kill();
    clusters.add(id);

    // Its three are counted lost and replaced where there is room: h2 has 1 left, h3 has 2.
    const ready = await waitForState(stack, id, 'READY', 180_000);
    expect(ready.services[0]).toMatchObject({ state: 'READY', ready: 6 });
    expect(ready.services[0].replacements).toBeGreaterThanOrEqual(3);
    const after = await clusterInstances(stack, id);
    expect(after.filter((i) => i.state === 'READY')).toHaveLength(6);
    expect(perHost(after.map((i) => i.host))).toEqual({ h2: 4, h3: 2 });
    const events = (await stack.http('GET', `/v1/clusters/${id}/events`)).body.items.map((e: any) => e.message).join('\n');
    expect(events).toMatch(/failed: cloud reports it ERROR; replacing it/);
    expect([...(await domainsOn('h2')), ...(await domainsOn('h3'))].sort()).toEqual(after.map((i) => i.id).sort());

    // Teardown: nothing on the hosts that answer, and the lost host's instances do not hold it up.
    expect((await stack.http('DELETE', `/v1/clusters/${id}`)).status).toBe(202);
    await waitForState(stack, id, 'TERMINATED', 120_000);
    expect([await domainsOn('h2'), await domainsOn('h3')]).toEqual([[], []]);
    expect((await clusterStatus(stack, id)).state).toBe('TERMINATED');
  }, 400_000);
});
