/**
 * End to end on every cloud kind: through the REST API and a real Temporal server, the
 * three-tier test cluster deploys, scales and tears down on libvirt (the test hypervisor),
 * EC2 (moto), CloudStack (fake) and OCCI (fake), leaving zero instances in each. Then the
 * worker process is killed mid-deployment on EC2 and on libvirt: no duplicate instance.
 *
 * Instances on these peers run no guest, so a FAKE GUEST AGENT stands in for the booted VM:
 * it reads each instance's user-data back from the cloud (as cloud-init would), finds the
 * phone-home part and reports every repository of it probed OK — the same path a CernVM
 * takes, minus the boot. The workers service has a context (a repository checked on a
 * test stratum-1, a secret), so the rendered CernVM user-data goes through every adapter.
 * Credentials are referenced by environment variables, and the test finally scans every
 * workflow history and the worker's and API's logs for the secret values.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { DEFAULT_SIM_IMAGES } from '../model/images.js';
import { extractPhoneHome, GUEST_PATHS } from '../model/user-data.js';
import { clusterInstances, clusterStatus, startStack, threeTier, waitFor, waitForState, type Stack } from './harness.js';
import { historyText } from './history-text.js';
import { startStratum1, type FakeStratum1 } from './fakes/stratum1.js';
import { startCloudStackPeer } from './peers/cloudstack.js';
import { startLibvirtPeer } from './peers/libvirt.js';
import { startMotoPeer } from './peers/moto.js';
import { startOcciPeer } from './peers/occi.js';

interface Peer {
  cloudConfig: { name: string };
  env?: Record<string, string>;
  count(clusterId: string): Promise<number>;
  /** User-data of the cluster's live instances, as the guests would read it. */
  userData(clusterId: string): Promise<string[]>;
  stop(): Promise<void>;
}

/** An AMI moto does not have: the EC2 entry maps the image `retired` to it. */
const RETIRED_AMI = 'ami-00000000deadbeef0';

let stack: Stack;
const peers = new Map<string, Peer>();
let agent: { stop(): Promise<void> } | undefined;
let stratum1: FakeStratum1;
/** The workers' context: its secret must reach the guests' user-data and nothing else. */
const CONTEXT_SECRET = 'e2e-context-SECRET-5d0b';
let contextId: string;

beforeAll(async () => {
  const now = Date.now();
  stratum1 = await startStratum1({ 'alice.cern.ch': { revision: 12, publishedAt: new Date(now - 60_000), whitelistExpires: new Date(now + 86_400_000) } });
  const started = await Promise.all([startLibvirtPeer(), startMotoPeer(), startCloudStackPeer(), startOcciPeer()]);
  for (const p of started as Peer[]) peers.set(p.cloudConfig.name, p);
  const env = Object.assign({}, ...started.map((p: Peer) => p.env ?? {}));
  stack = await startStack({
    workerProcess: true,
    captureLogs: true,
    // The EC2 entry also maps an image to an AMI that does not exist (an image retired at the cloud).
    clouds: [
      { name: 'sim', kind: 'sim', images: { ...DEFAULT_SIM_IMAGES } },
      ...started.map((p) => (p.cloudConfig.name === 'ec2' ? { ...p.cloudConfig, images: { ...p.cloudConfig.images, retired: RETIRED_AMI } } : p.cloudConfig) as any),
    ],
    env,
    cvmfsServers: [stratum1.url],
  });
  const ctx = await stack.http('POST', '/v1/contexts', { name: 'workers', repositories: ['alice.cern.ch'], secrets: { GRID_SECRET: CONTEXT_SECRET } });
  if (ctx.status !== 201) throw new Error(`context rejected: ${JSON.stringify(ctx.body)}`);
  contextId = ctx.body.id;
  agent = startFakeGuestAgent();
}, 240_000);

afterAll(async () => {
  await agent?.stop();
  await stack?.stop();
  await Promise.all([...peers.values()].map((p) => p.stop()));
  await stratum1?.stop();
});

/** Phones home ok for every instance whose user-data it can read; once per instance. */
function startFakeGuestAgent(): { stop(): Promise<void> } {
  const done = new Set<string>();
  const clusters = new Set<string>();
  let running = true;
  const loop = (async () => {
    while (running) {
      for (const [cloud, peer] of peers) {
        for (const clusterId of clusters) {
          let docs: string[];
          try {
            docs = await peer.userData(clusterId);
          } catch {
            continue; // the cloud is being restarted or the instance just vanished
          }
          for (const doc of docs) {
            const ph = extractPhoneHome(doc);
            if (!ph || done.has(`${cloud}/${ph.instanceId}`)) continue;
            const res = await fetch(ph.url, {
              method: 'POST',
              headers: { 'content-type': 'application/json', authorization: `Bearer ${ph.token}` },
              body: JSON.stringify({ status: 'ok', checks: { cvmfs: Object.fromEntries(ph.repositories.map((r) => [r, 'OK'])) } }),
            }).catch(() => undefined);
            if (res && (res.status < 500 || res.status === 410)) done.add(`${cloud}/${ph.instanceId}`);
          }
        }
      }
      await new Promise((r) => setTimeout(r, 300));
    }
  })();
  watchCluster = (id: string) => clusters.add(id);
  return {
    async stop() {
      running = false;
      await loop;
    },
  };
}
let watchCluster: (id: string) => void = () => undefined;

const clouds = ['libvirt', 'ec2', 'cloudstack', 'occi'];

describe.each(clouds)('three-tier cluster on %s', (cloud) => {
  it('deploys, scales and tears down, leaving zero instances', async () => {
    const peer = peers.get(cloud)!;
    const tiers = threeTier({ proxy: 1, head: 1, workers: 2 });
    tiers.services[2] = { ...tiers.services[2], contextId };
    const def = await stack.http('POST', '/v1/cluster-definitions', tiers);
    const c = await stack.http('POST', '/v1/clusters', { definitionId: def.body.id, cloud });
    expect(c.status).toBe(202);
    const id = c.body.id as string;
    watchCluster(id);
    const ready = await waitForState(stack, id, 'READY', 120_000);
    expect(ready.services.map((s: any) => s.ready)).toEqual([1, 1, 2]);
    expect((await clusterInstances(stack, id)).map((i) => i.cloud)).toEqual(Array(4).fill(cloud));
    expect(await peer.count(id)).toBe(4);
    // Every guest got CernVM user-data with the phone-home agent through this cloud's API; the
    // workers' (and only theirs) carry the rendered context: its secret and repository.
    const userData = await peer.userData(id);
    expect(userData).toHaveLength(4);
    for (const d of userData) {
      expect(d).toContain('[ucernvm-begin]');
      expect(d).toContain(GUEST_PATHS.phoneHomeAgent);
    }
    const contextualized = userData.filter((d) => d.includes(`GRID_SECRET='${CONTEXT_SECRET}'`));
    expect(contextualized).toHaveLength(2);
    for (const d of userData) {
      expect(extractPhoneHome(d)!.repositories).toEqual(contextualized.includes(d) ? ['alice.cern.ch'] : []);
    }

    const up = await stack.http('POST', `/v1/clusters/${id}/services/workers/scale`, { instances: 3 });
    expect(up.status).toBe(200);
    await waitFor(async () => {
      const s = await clusterStatus(stack, id);
      return s.state === 'READY' && s.services[2].ready === 3;
    }, 120_000, 'scale to 3');
    expect(await peer.count(id)).toBe(5);

    expect((await stack.http('DELETE', `/v1/clusters/${id}`)).status).toBe(202);
    await waitForState(stack, id, 'TERMINATED', 120_000);
    expect(await peer.count(id)).toBe(0);
  }, 300_000);
});

describe.each(['ec2', 'libvirt'])('worker killed mid-deployment on %s', (cloud) => {
  it('reaches READY with no duplicate instance', async () => {
    const peer = peers.get(cloud)!;
    const def = await stack.http('POST', '/v1/cluster-definitions', threeTier({ proxy: 2, head: 1, workers: 6 }));
    const c = await stack.http('POST', '/v1/clusters', { definitionId: def.body.id, cloud });
    const id = c.body.id as string;
    watchCluster(id);
    await waitFor(async () => (await clusterInstances(stack, id, 'proxy')).length > 0, 120_000, 'first creates');
    await stack.killWorker();
    await stack.startWorker();
    await waitForState(stack, id, 'READY', 180_000);
    const listed = (await clusterInstances(stack, id)).map((i) => i.id);
    expect(listed).toHaveLength(9);
    // Exactly those 9 in the cloud: a replacement's predecessor may still be on its way out at
    // READY, so it may go first; a duplicate would stay and fail this.
    await waitFor(async () => (await peer.count(id)) === 9, 60_000, 'the cloud to hold exactly the 9 listed instances (a duplicate stays)');
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED', 120_000);
    expect(await peer.count(id)).toBe(0);
  }, 400_000);
});

describe('permanent cloud errors', () => {
  it('fail the service at once with the error type in the cluster status, and teardown still cleans up', async () => {
    const def = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'bad-image',
      services: [{ name: 'solo', image: 'retired', offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 } }],
    });
    const c = await stack.http('POST', '/v1/clusters', { definitionId: def.body.id, cloud: 'ec2' });
    const id = c.body.id as string;
    const failed = await waitForState(stack, id, 'FAILED', 120_000);
    expect(failed.services[0].state).toBe('FAILED');
    expect(failed.services[0].message).toMatch(/create failed: InvalidRequest: .*retired.*ami-00000000deadbeef0/);
    expect(failed.message).toMatch(/service solo failed/);
    await stack.http('DELETE', `/v1/clusters/${id}`);
    await waitForState(stack, id, 'TERMINATED', 120_000);
    expect(await peers.get('ec2')!.count(id)).toBe(0);
  }, 300_000);
});

describe('secrets', () => {
  it('never appear in workflow histories, worker logs or API logs (cloud credentials and context secrets)', async () => {
    const secrets = [...[...peers.values()].flatMap((p) => Object.values(p.env ?? {})).filter((v) => v.length >= 8), CONTEXT_SECRET];
    expect(secrets.length).toBeGreaterThanOrEqual(4);
    let histories = '';
    for await (const wf of stack.client.workflow.list()) {
      histories += historyText(await stack.client.workflow.getHandle(wf.workflowId, wf.runId).fetchHistory());
    }
    expect(histories.length).toBeGreaterThan(10_000);
    const logs = ['worker.log', 'api.log'].map((f) => readFileSync(path.join(stack.dataDir, f), 'utf8')).join('\n');
    for (const secret of secrets) {
      expect(histories).not.toContain(secret);
      expect(logs).not.toContain(secret);
    }
    // The API shows where credentials come from, never what they are.
    const listed = JSON.stringify((await stack.http('GET', '/v1/clouds')).body);
    expect(listed).toContain('env:');
    for (const secret of secrets) expect(listed).not.toContain(secret);
  });
});
