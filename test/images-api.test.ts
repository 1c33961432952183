/**
 * Images through the real API (Temporal dev server, worker, API): a cluster may name only
 * images its cloud's registry entry offers. Anything else — a disk path on the hypervisor
 * host, another tenant's volume, a name that is a property of every JS object — is a 422 at
 * submission naming the service, the cloud and the images it offers, with nothing stored and
 * no workflow started. `GET /v1/clouds` lists each cloud's image names (never the paths or
 * ids they map to).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { DEFAULT_SIM_IMAGE_NAMES } from '../model/images.js';
import { startStack, waitForState, type Stack } from './harness.js';
import { startLibvirtPeer, type LibvirtPeer } from './peers/libvirt.js';

let stack: Stack;
let libvirt: LibvirtPeer;

beforeAll(async () => {
  // An in-process libvirt test hypervisor next to the default sim: the cloud the original
  // hole was on (an unknown image became a disk path on the host).
  libvirt = await startLibvirtPeer({ daemon: false, name: 'hlt' });
  stack = await startStack({ clouds: [{ name: 'sim', kind: 'sim', images: Object.fromEntries(DEFAULT_SIM_IMAGE_NAMES.map((n) => [n, n])) }, libvirt.cloudConfig] });
}, 120_000);

afterAll(async () => {
  await stack?.stop();
  await libvirt?.stop();
});

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };

async function definition(name: string, images: string[]): Promise<string> {
  const res = await stack.http('POST', '/v1/cluster-definitions', {
    name,
    services: images.map((image, i) => ({ name: `svc-${i}`, image, offering, min: 1, readinessTimeoutSeconds: 30 })),
  });
  expect(res.status).toBe(201);
  return res.body.id as string;
}

const clusterIds = async (): Promise<string[]> => ((await stack.http('GET', '/v1/clusters')).body.items as { id: string }[]).map((c) => c.id);

async function clusterWorkflows(): Promise<number> {
  let n = 0;
  for await (const _ of stack.client.workflow.list({ query: 'WorkflowType = "ClusterWorkflow"' })) n++;
  return n;
}

describe('GET /v1/clouds', () => {
  it("lists each cloud's image names, sorted, and never the references they map to", async () => {
    const res = await stack.http('GET', '/v1/clouds');
    expect(res.status).toBe(200);
    const byName = Object.fromEntries((res.body.items as { name: string; images: string[] }[]).map((c) => [c.name, c]));
    expect(byName.sim.images).toEqual([...DEFAULT_SIM_IMAGE_NAMES].sort());
    expect(byName.hlt.images).toEqual(Object.keys(libvirt.cloudConfig.images).sort());
    // The libvirt images are disk files on the host: their paths stay on the worker.
    const text = JSON.stringify(res.body);
    for (const file of Object.values(libvirt.cloudConfig.images)) expect(text).not.toContain(file);
  });
});

describe('POST /v1/clusters with an image the cloud does not offer', () => {
  it('is a 422 naming each refused service, the cloud and its images; nothing stored, no workflow started', async () => {
    const anotherDisk = libvirt.cloudConfig.images.cernvm; // a real file on the "host": a path is still not an image name
    const hostile = ['/etc/shadow', anotherDisk, 'default/another-tenant-volume', 'constructor', '__proto__', 'toString', '../x'];
    const defId = await definition('hostile', ['cernvm', ...hostile]);
    const before = await clusterIds();

    const res = await stack.http('POST', '/v1/clusters', { definitionId: defId, cloud: 'hlt' });
    expect(res.status).toBe(422);
    expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    const offered = Object.keys(libvirt.cloudConfig.images).sort().join(', ');
    expect(res.body).toMatchObject({ status: 422, type: 'urn:cloudgate:problem:validation-failed' });
    expect(res.body.errors).toEqual(
      hostile.map((image, i) => ({
        field: `definition.services[${i + 1}].image`,
        message: `service "svc-${i + 1}": image ${JSON.stringify(image)} is not offered by cloud "hlt" (its images: ${offered})`,
      })),
    );
    expect(res.body.detail).toBe(`${hostile.length} validation errors, first: definition.services[1].image: ${res.body.errors[0].message}`);

    // The same on the sim, with its own list.
    const onSim = await stack.http('POST', '/v1/clusters', { definitionId: defId, cloud: 'sim' });
    expect(onSim.status).toBe(422);
    expect(onSim.body.errors[0].message).toBe(`service "svc-1": image "/etc/shadow" is not offered by cloud "sim" (its images: ${[...DEFAULT_SIM_IMAGE_NAMES].sort().join(', ')})`);

    // Nothing stored, no workflow started.
    expect(await clusterIds()).toEqual(before);
    expect(await clusterWorkflows()).toBe(0);
  });

  it('checks against the chosen cloud: an image one cloud offers and another does not', async () => {
    // `cernvm4` is one of the sim's images, not one of hlt's.
    expect(libvirt.cloudConfig.images).not.toHaveProperty('cernvm4');
    const defId = await definition('only-on-sim', ['cernvm4']);
    const before = await clusterIds();
    const res = await stack.http('POST', '/v1/clusters', { definitionId: defId, cloud: 'hlt', name: 'nope' });
    expect(res.status).toBe(422);
    expect(res.body.errors).toEqual([{ field: 'definition.services[0].image', message: expect.stringMatching(/^service "svc-0": image "cernvm4" is not offered by cloud "hlt"/) }]);
    expect(await clusterIds()).toEqual(before);

    // On the sim it deploys.
    const ok = await stack.http('POST', '/v1/clusters', { definitionId: defId, cloud: 'sim' });
    expect(ok.status).toBe(202);
    await waitForState(stack, ok.body.id, 'READY', 90_000);
    expect(await clusterIds()).toEqual([...before, ok.body.id]);
    await stack.http('DELETE', `/v1/clusters/${ok.body.id}`);
    await waitForState(stack, ok.body.id, 'TERMINATED', 90_000);
  }, 200_000);

  it('an idempotent retry of a refused request is refused again, and stores nothing', async () => {
    const defId = await definition('retry', ['/etc/shadow']);
    const before = await clusterIds();
    for (let i = 0; i < 2; i++) {
      const res = await stack.http('POST', '/v1/clusters', { definitionId: defId }, { 'Idempotency-Key': 'images-retry-1' });
      expect(res.status).toBe(422);
      expect(res.body.errors[0].field).toBe('definition.services[0].image');
    }
    expect(await clusterIds()).toEqual(before);
  });
});
