/**
 * Contexts end to end, through the API and a real worker on a real Temporal dev server:
 * services name contexts, clusters pin their version, the create activity renders the
 * CernVM user-data (secrets reach the guest, never the history), the gateway checks every
 * repository on its stratum-1s before deploying (a test stratum-1 serving real-format
 * manifests and whitelists, the first server dead), sim guests report per-repository probe
 * results and a failed probe is shown and replaced; bad references and oversized user-data
 * are 4xx before anything starts.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import path from 'node:path';
import Database from 'better-sqlite3';
import { openSqliteStore } from '../store/index.js';
import { extractPhoneHome } from '../model/user-data.js';
import { serviceWorkflowId } from '../workflows/messages.js';
import { clusterInstances, clusterStatus, deploy, startStack, waitFor, waitForState, type Stack } from './harness.js';
import { historyText } from './history-text.js';
import { startStratum1, type FakeStratum1 } from './fakes/stratum1.js';

const SECRET = 'ctx-e2e-SECRET-value-81f3';
const PASSWORD = 'ctx-e2e-PASSWORD-2c9a';
const DAY = 86_400_000;

let stack: Stack;
let dead: FakeStratum1;
let good: FakeStratum1;

beforeAll(async () => {
  const now = Date.now();
  const fresh = { revision: 4242, publishedAt: new Date(now - 3_600_000), whitelistExpires: new Date(now + 20 * DAY) };
  dead = await startStratum1({}, { dead: true });
  good = await startStratum1({
    'alice.cern.ch': fresh,
    'sft.cern.ch': { ...fresh, revision: 77 },
    'missing.cern.ch': { ...fresh, missing: true },
    'stale.cern.ch': { ...fresh, publishedAt: new Date(now - 200 * DAY) },
    'expired.cern.ch': { ...fresh, whitelistExpires: new Date(now - DAY) },
  });
  stack = await startStack({
    cvmfsServers: [dead.url, good.url],
    // The first instance of service "flaky" reports a failed CVMFS probe.
    simRules: [{ match: '-flaky-0$', behaviour: 'fail', limit: 1 }],
  });
}, 120_000);

afterAll(async () => {
  await stack?.stop();
  await dead?.stop();
  await good?.stop();
});

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };

async function createContext(body: Record<string, unknown>): Promise<string> {
  const r = await stack.http('POST', '/v1/contexts', { name: 'e2e', ...body });
  if (r.status !== 201) throw new Error(`context rejected: ${JSON.stringify(r.body)}`);
  return r.body.id as string;
}

/** User-data of every sim instance of a cluster, by instance name (the cloud's own record). */
function simUserData(clusterId: string): Map<string, string> {
  const db = new Database(path.join(stack.dataDir, 'sim-cloud.sqlite'), { readonly: true });
  try {
    const rows = db.prepare('SELECT name, user_data FROM instance_user_data WHERE cluster = ?').all(clusterId) as { name: string; user_data: string }[];
    return new Map(rows.map((r) => [r.name, r.user_data]));
  } finally {
    db.close();
  }
}

async function histories(clusterId: string) {
  const all = [];
  for await (const wf of stack.client.workflow.list({ query: `CloudgateClusterId = "${clusterId}"` })) {
    all.push({ workflowId: wf.workflowId, history: await stack.client.workflow.getHandle(wf.workflowId, wf.runId).fetchHistory() });
  }
  return all;
}

const service = (s: Awaited<ReturnType<typeof clusterStatus>>, name: string) => s.services.find((x: { name: string }) => x.name === name);

describe('a cluster whose services name contexts', () => {
  let clusterId: string;
  let contextId: string;

  it('checks the repositories on their stratum-1s, renders the pinned context and is READY once every repository probes OK', async () => {
    contextId = await createContext({
      repositories: ['alice.cern.ch', 'sft.cern.ch'],
      cvmfs: { proxy: 'http://squid.example.org:3128;DIRECT' },
      users: [{ name: 'alice', password: PASSWORD }],
      environment: { CONTEXT_GENERATION: 'one' },
      secrets: { DB_PASSWORD: SECRET },
    });
    const sftOnly = await createContext({ repositories: ['sft.cern.ch'], cvmfs: { minRevision: { 'sft.cern.ch': 70 } } });
    clusterId = await deploy(stack, {
      name: 'ctx-e2e',
      services: [
        { name: 'analysis', contextId, offering, image: 'cernvm', min: 2, max: 5, readinessTimeoutSeconds: 30 },
        { name: 'flaky', contextId: sftOnly, offering, image: 'cernvm', min: 1, readinessTimeoutSeconds: 30 },
      ],
    });
    const ready = await waitForState(stack, clusterId, 'READY', 120_000);
    expect(service(ready, 'analysis').ready).toBe(2);
    expect(ready.contexts).toEqual({
      analysis: { id: contextId, version: 1, repositories: ['alice.cern.ch', 'sft.cern.ch'] },
      flaky: { id: sftOnly, version: 1, repositories: ['sft.cern.ch'] },
    });

    // The cloud got the rendered context: µCernVM block, amiconfig, cloud-config with the secret, phone-home part.
    const data = simUserData(clusterId);
    const ud = data.get(`${clusterId}-analysis-0`)!;
    expect(ud).toContain('[ucernvm-begin]');
    expect(ud).toContain('cvmfs_http_proxy="http://squid.example.org:3128;DIRECT"');
    expect(ud).toContain('repositories=alice.cern.ch,sft.cern.ch');
    expect(ud).toContain(`DB_PASSWORD='${SECRET}'`);
    expect(ud).not.toContain(PASSWORD); // only its sha512-crypt hash
    expect(extractPhoneHome(ud)).toMatchObject({ instanceId: `${clusterId}-analysis-0`, repositories: ['alice.cern.ch', 'sft.cern.ch'] });
  }, 180_000);

  it('shows a failed probe (repository and output) and replaces the instance', async () => {
    const s = await clusterStatus(stack, clusterId);
    const flaky = service(s, 'flaky');
    expect(flaky.state).toBe('READY');
    expect(flaky.replacements).toBe(1);
    expect(flaky.message).toBe(`${clusterId}-flaky-0: CVMFS probe failed: sft.cern.ch FAILED (Probing /cvmfs/sft.cern.ch... Failed!)`);
    expect((await clusterInstances(stack, clusterId, 'flaky')).map((i) => i.id)).toEqual([`${clusterId}-flaky-1`]);
  });

  it("sends a service's workflow what the verdict reads of each report: the probes' results, and the output only of those that failed", async () => {
    const all = await histories(clusterId);
    const text = (name: string) => historyText(all.filter((h) => h.workflowId === serviceWorkflowId(clusterId, name)).map((h) => h.history));
    const analysis = text('analysis');
    expect(analysis).toContain('"cvmfs":{"alice.cern.ch":"OK","sft.cern.ch":"OK"}');
    expect(analysis).not.toContain('Probing /cvmfs/');
    const flaky = text('flaky');
    expect(flaky).toContain('Probing /cvmfs/sft.cern.ch... Failed!');
    expect(flaky).not.toContain('Probing /cvmfs/sft.cern.ch... OK');
  });

  it('ran one stratum-1 check per repository as activities in the cluster workflow, failing over the dead server', async () => {
    const [cluster] = (await histories(clusterId)).filter((h) => h.workflowId === `cluster/${clusterId}`);
    const events = cluster.history.events ?? [];
    const checks = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'checkCvmfsRepository');
    // alice.cern.ch and sft.cern.ch for "analysis", sft.cern.ch at revision ≥ 70 for "flaky".
    expect(checks.map((e) => historyText(e.activityTaskScheduledEventAttributes!.input))).toEqual([
      expect.stringContaining('{"repo":"alice.cern.ch"}'),
      expect.stringContaining('{"repo":"sft.cern.ch"}'),
      expect.stringContaining('{"repo":"sft.cern.ch","minRevision":70}'),
    ]);
    // Each answered by the second server after the first (dead) one failed.
    const text = historyText(cluster.history);
    expect(text).toContain(`"server":"${good.url.replace('@fqrn@', 'alice.cern.ch')}"`);
    expect(text).toContain(`"server":"${dead.url.replace('@fqrn@', 'alice.cern.ch')}"`);
    expect(good.requests).toEqual(expect.arrayContaining(['/cvmfs/alice.cern.ch/.cvmfspublished', '/cvmfs/sft.cern.ch/.cvmfswhitelist']));
  });

  it('keeps secrets, passwords and tokens out of every workflow history', async () => {
    const text = historyText(await histories(clusterId));
    expect(text).toContain('createInstances'); // decoded: a leak would be visible
    expect(text).toContain(contextId);
    for (const leak of [SECRET, PASSWORD, stack.config.tokenSecret!, 'ucernvm-begin', 'Bearer']) expect(text).not.toContain(leak);
    const token = extractPhoneHome(simUserData(clusterId).get(`${clusterId}-analysis-0`)!)!.token;
    expect(text).not.toContain(token);
  });

  it('pins the context version: instances added after a PUT still render the version the cluster started with', async () => {
    const put = await stack.http('PUT', `/v1/contexts/${contextId}`, {
      name: 'e2e',
      repositories: ['alice.cern.ch', 'sft.cern.ch'],
      environment: { CONTEXT_GENERATION: 'two' },
    });
    expect(put.status).toBe(200);
    expect(put.body.version).toBe(2);
    expect((await stack.http('POST', `/v1/clusters/${clusterId}/services/analysis/scale`, { instances: 3 })).status).toBe(200);
    await waitFor(async () => service(await clusterStatus(stack, clusterId), 'analysis').ready === 3, 60_000, 'scale to 3');
    const ud = simUserData(clusterId).get(`${clusterId}-analysis-2`)!;
    expect(ud).toContain(`export CONTEXT_GENERATION='one'`);
    expect(ud).toContain(`DB_PASSWORD='${SECRET}'`);
    // A new cluster from the same definition pins version 2.
    const defId = (await stack.http('GET', '/v1/clusters/' + clusterId)).body.definitionId;
    const next = await stack.http('POST', '/v1/clusters', { definitionId: defId, name: 'ctx-e2e-next' });
    expect(next.status).toBe(202);
    await waitForState(stack, next.body.id, 'READY', 120_000);
    const ud2 = simUserData(next.body.id).get(`${next.body.id}-analysis-0`)!;
    expect(ud2).toContain(`export CONTEXT_GENERATION='two'`);
    expect(ud2).toContain(`DB_PASSWORD='${SECRET}'`); // a PUT without "secrets" keeps the previous values
    for (const id of [clusterId, next.body.id]) await stack.http('DELETE', `/v1/clusters/${id}`);
    for (const id of [clusterId, next.body.id]) await waitForState(stack, id, 'TERMINATED', 120_000);
    expect(stack.worker!.sim!.count({ cluster: clusterId })).toBe(0);
  }, 240_000);
});

describe('a repository that is not fit to deploy with', () => {
  it.each([
    ['missing.cern.ch', 'CvmfsRepositoryMissing', /missing\.cern\.ch is on none of its stratum-1 servers/],
    ['stale.cern.ch', 'CvmfsRepositoryStale', /stale\.cern\.ch/],
    ['expired.cern.ch', 'CvmfsWhitelistExpired', /expired\.cern\.ch/],
  ])('%s fails the cluster before any instance exists, naming the repository and the server (%s)', async (repo, type, text) => {
    // The context names its own stratum-1 (instead of the gateway's list, whose first server is dead).
    const ctx = await createContext({ repositories: [repo], cvmfs: { servers: [good.url] } });
    const id = await deploy(stack, { name: 'bad-repo', services: [{ name: 'svc', contextId: ctx, offering, image: 'cernvm', min: 2 }] });
    const failed = await waitForState(stack, id, 'FAILED', 60_000);
    expect(failed.message).toContain('CVMFS check failed, nothing was deployed');
    expect(failed.message).toContain(type);
    expect(failed.message).toMatch(text);
    expect(failed.message).toContain(good.url.replace('@fqrn@', repo));
    expect(await clusterInstances(stack, id, 'svc')).toEqual([]);
    expect(stack.worker!.sim!.count({ cluster: id })).toBe(0);
    // Non-retryable: one attempt, visible in the history.
    const [cluster] = (await histories(id)).filter((h) => h.workflowId === `cluster/${id}`);
    const failedEvents = (cluster.history.events ?? []).filter((e) => e.activityTaskFailedEventAttributes);
    expect(failedEvents).toHaveLength(1);
    expect(failedEvents[0].activityTaskFailedEventAttributes!.failure!.applicationFailureInfo).toMatchObject({ type, nonRetryable: true });
  }, 120_000);
});

describe('references and sizes checked at submission', () => {
  it('a definition naming an unknown context or version is a 422 naming the service field', async () => {
    const ctx = await createContext({ repositories: ['alice.cern.ch'] });
    const unknown = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'x',
      services: [{ name: 'a', contextId: 'ctx-000000000000', offering, image: 'i' }],
    });
    expect(unknown.status).toBe(422);
    expect(unknown.body.errors).toEqual([expect.objectContaining({ field: 'services[0].contextId', message: 'no context "ctx-000000000000"' })]);
    const version = await stack.http('POST', '/v1/cluster-definitions', {
      name: 'x',
      services: [{ name: 'a', contextId: ctx, contextVersion: 9, offering, image: 'i' }],
    });
    expect(version.status).toBe(422);
    expect(version.body.errors).toEqual([expect.objectContaining({ field: 'services[0].contextVersion', message: `context "${ctx}" has no version 9` })]);
    const orphan = await stack.http('POST', '/v1/cluster-definitions', { name: 'x', services: [{ name: 'a', contextVersion: 1, offering, image: 'i' }] });
    expect(orphan.status).toBe(422);
    expect(orphan.body.errors[0].field).toBe('services[0].contextVersion');
  });

  it('a context deleted after the definition was stored is a 422 at submission; nothing is started', async () => {
    const ctx = await createContext({ repositories: ['alice.cern.ch'] });
    const def = await stack.http('POST', '/v1/cluster-definitions', { name: 'gone', services: [{ name: 'a', contextId: ctx, offering, image: 'i' }] });
    expect(def.status).toBe(201);
    expect((await stack.http('DELETE', `/v1/contexts/${ctx}`)).status).toBe(204);
    const before = (await stack.http('GET', '/v1/clusters')).body.items.length;
    const c = await stack.http('POST', '/v1/clusters', { definitionId: def.body.id });
    expect(c.status).toBe(422);
    expect(c.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(c.body.detail).toContain(`service "a": context "${ctx}" was deleted`);
    expect((await stack.http('GET', '/v1/clusters')).body.items.length).toBe(before);
    const again = await stack.http('POST', '/v1/cluster-definitions', { name: 'gone', services: [{ name: 'a', contextId: ctx, offering, image: 'i' }] });
    expect(again.status).toBe(422);
  });

  it('user-data over a cloud\'s limit is a 422 naming the cloud and the size (EC2 16 KB raw, CloudStack 32 KB base64)', async () => {
    // Clouds of those kinds, as a worker would register them (the check needs only kind and offerings).
    const store = await openSqliteStore(path.join(stack.dataDir, 'cloudgate.sqlite'));
    const offerings = [{ id: 'm', name: 'm', cpus: 4, memoryMiB: 8192, diskGiB: 100 }];
    await store.upsertCloud({ name: 'aws-test', kind: 'ec2', offerings, images: ['cernvm'] });
    await store.upsertCloud({ name: 'cs-test', kind: 'cloudstack', offerings, images: ['cernvm'] });

    const script = `#!/bin/sh\n${'echo padding-padding-padding-padding\n'.repeat(400)}`; // ~14.4 KB
    const mid = await createContext({ repositories: ['alice.cern.ch'], startupScript: script });
    const big = await createContext({
      repositories: ['alice.cern.ch'],
      startupScript: script,
      cloudConfig: `write_files:\n${'  - {path: /etc/pad, content: "padding padding padding padding padding padding padding padding"}\n'.repeat(130)}`,
    });
    const defOf = async (ctx: string) =>
      (await stack.http('POST', '/v1/cluster-definitions', { name: 'big', services: [{ name: 'big', contextId: ctx, offering, image: 'cernvm' }] })).body.id;
    const midDef = await defOf(mid);
    const bigDef = await defOf(big);
    const before = (await stack.http('GET', '/v1/clusters')).body.items.length;

    const ec2 = await stack.http('POST', '/v1/clusters', { definitionId: midDef, cloud: 'aws-test' });
    expect(ec2.status).toBe(422);
    expect(ec2.body.errors[0]).toMatchObject({ field: 'cloud', pointer: '/cloud' });
    expect(ec2.body.errors[0].message).toMatch(
      new RegExp(`^user-data of service "big" \\(context ${mid} v1\\) is (\\d+) bytes; cloud "aws-test" \\(ec2\\) accepts at most 16384 bytes \\(16 KB before base64\\)`),
    );
    const size = Number(/is (\d+) bytes/.exec(ec2.body.errors[0].message)![1]);
    expect(size).toBeGreaterThan(16_384);
    expect(size).toBeLessThan(24_000);

    const cs = await stack.http('POST', '/v1/clusters', { definitionId: bigDef, cloud: 'cs-test' });
    expect(cs.status).toBe(422);
    expect(cs.body.errors[0].message).toMatch(/is \d+ bytes in base64; cloud "cs-test" \(cloudstack\) accepts at most 32768 bytes \(32 KB after base64\)/);
    expect((await stack.http('GET', '/v1/clusters')).body.items.length).toBe(before);

    // The mid-sized context (under 24 KB raw) fits CloudStack's 32 KB of base64; the sim has no limit at all.
    expect(4 * Math.ceil(size / 3)).toBeLessThan(32_768);
    const sim = await stack.http('POST', '/v1/clusters', { definitionId: bigDef, cloud: 'sim' });
    expect(sim.status).toBe(202);
    await waitForState(stack, sim.body.id, 'READY', 120_000);
    await stack.http('DELETE', `/v1/clusters/${sim.body.id}`);
    await waitForState(stack, sim.body.id, 'TERMINATED', 120_000);
    for (const name of ['aws-test', 'cs-test']) await store.deleteCloud(name);
    await store.close();
  }, 240_000);
});
