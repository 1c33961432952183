/**
 * Placement at submission (issue 12), through the real stack (Temporal dev server, worker,
 * API) with three simulated clouds: a service's `placement` may name several clouds, and
 * `POST /v1/clusters` checks the service against every one of them — registered, an
 * offering that fits, the image, the user-data size — before anything is written. Each misfit is one entry of a
 * single 422, naming the service and the cloud, with a pointer into the definition. A valid
 * placement starts the cluster workflow with the `CloudgateClouds` search attribute listing
 * every cloud the cluster may use. Nothing here depends on where instances land.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { DEFAULT_SIM_IMAGE_NAMES, DEFAULT_SIM_IMAGES } from '../model/images.js';
import { openSqliteStore } from '../store/index.js';
import { clusterWorkflowId, SA_CLOUDS } from '../workflows/messages.js';
import { startStack, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;

/** sim-b offers one image only: what sim-a (and the cluster's own cloud, `sim`) offers beyond it is the image misfit. */
const SIM_B_IMAGES = ['cernvm4-micro'];

beforeAll(async () => {
  stack = await startStack({
    clouds: [
      { name: 'sim', kind: 'sim', images: { ...DEFAULT_SIM_IMAGES } },
      { name: 'sim-a', kind: 'sim', images: { ...DEFAULT_SIM_IMAGES } },
      { name: 'sim-b', kind: 'sim', images: Object.fromEntries(SIM_B_IMAGES.map((n) => [n, n])) },
    ],
  });
  // Offerings come from the cloud catalogue (listed in the background once the worker runs): the checks read them.
  await waitFor(async () => {
    const items = (await stack.http('GET', '/v1/clouds')).body.items as { name: string; offerings: unknown[] }[] | undefined;
    return ['sim', 'sim-a', 'sim-b'].every((n) => (items?.find((c) => c.name === n)?.offerings.length ?? 0) > 0);
  }, 60_000, 'every cloud to list its offerings');
}, 180_000);

afterAll(async () => {
  await stack?.stop();
});

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };
/** Larger than any flavor the simulated clouds list (sim.huge: 32 cpus). */
const tooBig = { cpus: 64, memoryMiB: 2048, diskGiB: 20 };

type Svc = { name: string; contextId?: string; image?: string; offering?: typeof offering; min?: number; placement?: { clouds: string[]; strategy?: 'fill' | 'spread' } };

async function definition(name: string, services: Svc[]): Promise<string> {
  const res = await stack.http('POST', '/v1/cluster-definitions', {
    name,
    services: services.map((s) => ({ image: 'cernvm4-micro', offering, min: 1, readinessTimeoutSeconds: 30, ...s })),
  });
  // Definitions are checked for shape only: clouds are checked at submission.
  expect(res.status).toBe(201);
  return res.body.id as string;
}

const clusterIds = async (): Promise<string[]> => ((await stack.http('GET', '/v1/clusters')).body.items as { id: string }[]).map((c) => c.id);

async function clusterWorkflows(query = 'WorkflowType = "ClusterWorkflow"'): Promise<string[]> {
  const ids: string[] = [];
  for await (const w of stack.client.workflow.list({ query })) ids.push(w.workflowId);
  return ids;
}

type FieldError = { field: string; pointer?: string; message: string };

/** Posts the cluster, expects a 422 problem+json, and that nothing was written. */
async function refused(definitionId: string, cloud = 'sim'): Promise<FieldError[]> {
  const before = await clusterIds();
  const workflowsBefore = await clusterWorkflows();
  const res = await stack.http('POST', '/v1/clusters', { definitionId, cloud });
  expect(res.status).toBe(422);
  expect(res.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  expect(res.body).toMatchObject({ status: 422, type: 'urn:cloudgate:problem:validation-failed' });
  // Nothing half-written: no cluster row, no workflow.
  expect(await clusterIds()).toEqual(before);
  expect(await clusterWorkflows()).toEqual(workflowsBefore);
  return res.body.errors as FieldError[];
}

describe('POST /v1/clusters checks every cloud a service may land on', () => {
  it('a placement naming an unregistered cloud → 422 naming the service and the cloud, pointing at the placement entry', async () => {
    const defId = await definition('unknown-cloud', [
      { name: 'head' },
      { name: 'workers', placement: { clouds: ['sim-a', 'nowhere', 'sim-b'] } },
    ]);
    const errors = await refused(defId);
    expect(errors).toEqual([
      {
        field: 'definition.services[1].placement.clouds[1]',
        pointer: '/definition/services/1/placement/clouds/1',
        message: 'service "workers": unknown cloud "nowhere" (registered: sim, sim-a, sim-b)',
      },
    ]);
  });

  it('an image one placement cloud lacks → 422 naming the service and that cloud only', async () => {
    expect(SIM_B_IMAGES).not.toContain('cernvm4');
    expect(DEFAULT_SIM_IMAGE_NAMES).toContain('cernvm4');
    const defId = await definition('image-misfit', [
      { name: 'head', image: 'cernvm4' }, // on the cluster's cloud `sim`, which offers it
      { name: 'workers', image: 'cernvm4', placement: { clouds: ['sim-a', 'sim-b'], strategy: 'spread' } },
    ]);
    const errors = await refused(defId);
    expect(errors).toEqual([
      {
        field: 'definition.services[1].image',
        pointer: '/definition/services/1/image',
        message: 'service "workers": image "cernvm4" is not offered by cloud "sim-b" (its images: cernvm4-micro)',
      },
    ]);
  });

  it('an offering no flavor of the placement clouds fits → 422, one error per service and cloud', async () => {
    const defId = await definition('offering-misfit', [{ name: 'fat', offering: tooBig, placement: { clouds: ['sim-a', 'sim-b'] } }]);
    const errors = await refused(defId);
    expect(errors).toEqual(
      ['sim-a', 'sim-b'].map((cloud) => ({
        field: 'definition.services[0].offering',
        pointer: '/definition/services/0/offering',
        message: expect.stringMatching(new RegExp(`^no offering of cloud "${cloud}" fits service "fat" \\(64 cpus, 2048 MiB, 20 GiB\\); its largest is sim\\.huge`)),
      })),
    );
  });

  it('lists every misfit of every service at once, and keeps the cluster cloud checks as they were', async () => {
    const defId = await definition('all-at-once', [
      { name: 'proxy', offering: tooBig }, // no placement: checked against the request's cloud, pointer /cloud
      { name: 'head', image: 'cernvm4', placement: { clouds: ['sim-b', 'ghost'] } },
      { name: 'workers', offering: tooBig, placement: { clouds: ['sim-a'] } },
    ]);
    const errors = await refused(defId);
    expect(errors.map((e) => [e.field, e.pointer])).toEqual([
      ['definition.services[1].placement.clouds[1]', '/definition/services/1/placement/clouds/1'],
      ['cloud', '/cloud'],
      ['definition.services[2].offering', '/definition/services/2/offering'],
      ['definition.services[1].image', '/definition/services/1/image'],
    ]);
    expect(errors[0].message).toMatch(/^service "head": unknown cloud "ghost"/);
    expect(errors[1].message).toMatch(/^no offering of cloud "sim" fits service "proxy"/);
    expect(errors[2].message).toMatch(/^no offering of cloud "sim-a" fits service "workers"/);
    expect(errors[3].message).toMatch(/^service "head": image "cernvm4" is not offered by cloud "sim-b"/);
  });

  it('a user-data too large for one placement cloud → 422 naming the service and that cloud, pointing at its placement entry', async () => {
    // An EC2 cloud as a worker would register it (the check needs only its kind, offerings and images): 16 KB of user-data.
    const store = await openSqliteStore(path.join(stack.dataDir, 'cloudgate.sqlite'));
    try {
      await store.upsertCloud({ name: 'aws-test', kind: 'ec2', offerings: [{ id: 'm', name: 'm', cpus: 4, memoryMiB: 8192, diskGiB: 100 }], images: ['cernvm4-micro'] });
    } finally {
      await store.close();
    }
    const script = `#!/bin/sh\n${'echo padding-padding-padding-padding\n'.repeat(400)}`; // ~14.4 KB: the rendered user-data is more than 16 KB
    const ctx = await stack.http('POST', '/v1/contexts', { name: 'big', repositories: ['alice.cern.ch'], startupScript: script });
    expect(ctx.status).toBe(201);
    const defId = await definition('user-data-misfit', [
      { name: 'small' },
      { name: 'big', contextId: ctx.body.id, placement: { clouds: ['sim-a', 'aws-test'] } },
    ]);
    const errors = await refused(defId);
    expect(errors).toEqual([
      {
        field: 'definition.services[1].placement.clouds[1]',
        pointer: '/definition/services/1/placement/clouds/1',
        message: expect.stringMatching(new RegExp(`^user-data of service "big" \\(context ${ctx.body.id} v1\\) is \\d+ bytes; cloud "aws-test" \\(ec2\\) accepts at most 16384 bytes`)),
      },
    ]);
  });

  it("the cluster's own cloud is still required to be registered, even when every service has a placement", async () => {
    const defId = await definition('placed-only', [{ name: 'workers', placement: { clouds: ['sim-a', 'sim-b'] } }]);
    const errors = await refused(defId, 'elsewhere');
    expect(errors).toEqual([{ field: 'cloud', pointer: '/cloud', message: expect.stringMatching(/^unknown cloud "elsewhere" \(registered: (aws-test, )?sim, sim-a, sim-b\)$/) }]);
  });
});

describe('a valid placement', () => {
  it('is accepted; its workflow carries CloudgateClouds with every cloud the cluster may use; teardown reaches TERMINATED', async () => {
    const defId = await definition('two-clouds', [
      { name: 'head' }, // the cluster's cloud
      { name: 'workers', min: 2, placement: { clouds: ['sim-a', 'sim-b'], strategy: 'spread' } },
    ]);
    const res = await stack.http('POST', '/v1/clusters', { definitionId: defId, cloud: 'sim' });
    expect(res.status).toBe(202);
    const id = res.body.id as string;
    try {
      const desc = await stack.client.workflow.getHandle(clusterWorkflowId(id)).describe();
      expect(desc.typedSearchAttributes.get(SA_CLOUDS)).toEqual(['sim', 'sim-a', 'sim-b']);
      expect(await desc.staticSummary()).toBe('cluster two-clouds from two-clouds on clouds sim, sim-a, sim-b: 2 services, 3 instances min');
      // The list is searchable: a visibility query on one of the clouds finds the cluster workflow.
      const found = await waitFor(async () => {
        const ids = await clusterWorkflows('WorkflowType = "ClusterWorkflow" AND CloudgateClouds = "sim-b"');
        return ids.includes(clusterWorkflowId(id)) && ids;
      }, 30_000, 'the visibility query to find the cluster');
      expect(found).toEqual([clusterWorkflowId(id)]);
      expect(await clusterWorkflows('WorkflowType = "ClusterWorkflow" AND CloudgateClouds = "nowhere"')).toEqual([]);
    } finally {
      const del = await stack.http('DELETE', `/v1/clusters/${id}`);
      expect(del.status).toBe(202);
      await waitForState(stack, id, 'TERMINATED', 90_000);
    }
  }, 150_000);

  it('a cluster whose every service places elsewhere carries only the clouds they name', async () => {
    const defId = await definition('one-cloud', [{ name: 'solo', placement: { clouds: ['sim-b'] } }]);
    const res = await stack.http('POST', '/v1/clusters', { definitionId: defId, cloud: 'sim' });
    expect(res.status).toBe(202);
    const id = res.body.id as string;
    try {
      const desc = await stack.client.workflow.getHandle(clusterWorkflowId(id)).describe();
      // Every service places elsewhere: the cluster's own cloud is not one it may use.
      expect(desc.typedSearchAttributes.get(SA_CLOUDS)).toEqual(['sim-b']);
      expect(await desc.staticSummary()).toBe('cluster one-cloud from one-cloud on sim-b: 1 services, 1 instances min');
    } finally {
      expect((await stack.http('DELETE', `/v1/clusters/${id}`)).status).toBe(202);
      await waitForState(stack, id, 'TERMINATED', 90_000);
    }
  }, 150_000);
});
