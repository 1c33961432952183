/**
 * Metrics and logs (issue 14, Observability) through a real stack: the API and a worker
 * *process* (so the Temporal SDK core's own metrics are on), a small cluster on `sim` that
 * first meets a full cloud (`sim-full`, capacity 0) and spills over. What a site's Prometheus
 * would see, read with a strict reader of the text format (test/prom-text.ts): requests by
 * route pattern and status, clusters by state, instances by cloud and state, quota usage,
 * phone-home, creates and their errors by cloud and kind, terminates, the SDK's `temporal_*`
 * metrics; who may scrape; no id in any label; and each process's log lines carrying the
 * cluster, service and workflow they are about.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { ClusterDefinitionInput } from '../model/definition.js';
import { freePort } from '../workers/dev-server.js';
import { parsePrometheusText, sumOf, valueOf, type Family } from './prom-text.js';
import { clusterInstances, startStack, waitFor, waitForState, type Stack } from './harness.js';

let stack: Stack;
let workerMetricsUrl: string;
let metricsToken: string;
let clusterId: string;

const definition: ClusterDefinitionInput = {
  name: 'observed',
  failurePolicy: 'keep',
  services: [
    {
      name: 'workers',
      image: 'cernvm4-micro',
      offering: { cpus: 2, memoryMiB: 2048, diskGiB: 20 },
      min: 3,
      max: 10,
      readinessTimeoutSeconds: 60,
      // The full cloud first: its CapacityExhausted is the injected create error, then the service spills over.
      placement: { clouds: ['sim-full', 'sim'], strategy: 'fill' },
    },
  ],
};

beforeAll(async () => {
  const port = await freePort();
  workerMetricsUrl = `http://127.0.0.1:${port}/metrics`;
  stack = await startStack({
    workerProcess: true,
    captureLogs: true,
    clouds: [
      { name: 'sim', kind: 'sim', quota: { instances: 10 } },
      { name: 'sim-full', kind: 'sim', capacity: 0 },
    ],
    env: { CLOUDGATE_WORKER_METRICS_PORT: String(port) },
  });
  // Made by the API at its start (store/secret.ts, loadMetricsToken); the worker read the same file.
  metricsToken = readFileSync(path.join(stack.dataDir, 'metrics-token'), 'utf8').trim();
  const d = await stack.http('POST', '/v1/cluster-definitions', definition);
  expect(d.status).toBe(201);
  const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id, cloud: 'sim' });
  expect(c.status).toBe(202);
  clusterId = c.body.id;
  await waitForState(stack, clusterId, 'READY', 60_000);
}, 170_000);

afterAll(async () => {
  await stack?.stop();
});

/** The API's `/metrics` as the scrape token's holder reads it, parsed strictly. */
async function scrapeApi(): Promise<Map<string, Family>> {
  const res = await stack.http('GET', '/metrics', undefined, { Authorization: `Bearer ${metricsToken}` });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePrometheusText(res.body as string);
}

/** The worker's `/metrics` (cloudgate's and the SDK core's), parsed strictly. */
async function scrapeWorker(): Promise<Map<string, Family>> {
  const res = await fetch(workerMetricsUrl, { headers: { authorization: `Bearer ${metricsToken}` } });
  expect(res.status).toBe(200);
  return parsePrometheusText(await res.text());
}

const labelValues = (families: Map<string, Family>): string[] => [...families.values()].flatMap((f) => f.samples.flatMap((s) => Object.values(s.labels)));

describe('the API /metrics', () => {
  it('times requests by route pattern and status, never by raw path', async () => {
    expect((await stack.http('GET', `/v1/clusters/${clusterId}/services/nope`)).status).toBe(404);
    const m = await scrapeApi();
    const count = (method: string, route: string, status: string) => valueOf(m, 'cloudgate_http_request_duration_seconds_count', { method, route, status });
    expect(count('POST', '/v1/clusters', '202')).toBe(1);
    expect(count('POST', '/v1/cluster-definitions', '201')).toBe(1);
    expect(count('GET', '/v1/clusters/:id', '200')).toBeGreaterThanOrEqual(1);
    expect(count('GET', '/v1/clusters/:id/services/:service', '404')).toBe(1);
    // Every guest's phone-home, under the route's pattern.
    expect(count('POST', '/v1/instances/:instanceId/readiness', '202')).toBeGreaterThanOrEqual(3);
    // No cluster, instance or definition id anywhere in a label; routes are patterns.
    const values = labelValues(m);
    expect(values.filter((v) => v.includes(clusterId) || v.includes('def-') || /-workers-\d/.test(v))).toEqual([]);
    const routes = new Set(m.get('cloudgate_http_request_duration_seconds')!.samples.map((s) => s.labels.route));
    for (const r of routes) expect(r === 'unmatched' || /^\/[a-z0-9/:.{}-]*$/i.test(r)).toBe(true);
  });

  it('shows clusters by state, instances by cloud and state, and quota usage from the read model', async () => {
    // An owner with a quota of their own and nothing held is listed too, with that quota (read at this very scrape).
    expect((await stack.http('PUT', '/v1/owners/carol/quota', { maxInstances: 7, maxClusters: 2, maxCpus: 14 })).status).toBe(200);
    const m = await scrapeApi();
    expect(valueOf(m, 'cloudgate_quota_used', { owner: 'carol', resource: 'instances' })).toBe(0);
    expect(valueOf(m, 'cloudgate_quota_limit', { owner: 'carol', resource: 'instances' })).toBe(7);
    expect(valueOf(m, 'cloudgate_quota_limit', { owner: 'carol', resource: 'cpus' })).toBe(14);
    const instances = await clusterInstances(stack, clusterId);
    expect(instances).toHaveLength(3);
    expect(valueOf(m, 'cloudgate_clusters', { state: 'READY' })).toBe(1);
    expect(valueOf(m, 'cloudgate_clusters', { state: 'FAILED' })).toBe(0); // every state is there, zeros included
    expect(valueOf(m, 'cloudgate_instances', { cloud: 'sim', state: 'READY' })).toBe(instances.length);
    expect(valueOf(m, 'cloudgate_instances', { cloud: 'sim-full', state: 'READY' })).toBeUndefined();
    // The admin submitted it: 1 cluster, 3 instances of 2 cpus; limits are the site default.
    expect(valueOf(m, 'cloudgate_quota_used', { owner: 'admin', resource: 'clusters' })).toBe(1);
    expect(valueOf(m, 'cloudgate_quota_used', { owner: 'admin', resource: 'instances' })).toBe(3);
    expect(valueOf(m, 'cloudgate_quota_used', { owner: 'admin', resource: 'cpus' })).toBe(6);
    expect(valueOf(m, 'cloudgate_quota_limit', { owner: 'admin', resource: 'instances' })).toBe(stack.config.quota.maxInstances);
    // The capacity ledger: 3 instances held on sim, none on the full cloud.
    expect(valueOf(m, 'cloudgate_cloud_capacity_used', { cloud: 'sim', resource: 'instances' })).toBe(3);
    expect(valueOf(m, 'cloudgate_cloud_capacity_used', { cloud: 'sim-full', resource: 'instances' })).toBe(0);
    expect(valueOf(m, 'cloudgate_cloud_capacity_limit', { cloud: 'sim', resource: 'instances' })).toBe(10);
    expect(valueOf(m, 'cloudgate_cloud_capacity_limit', { cloud: 'sim', resource: 'cpus' })).toBeUndefined();
  });

  it('counts phone-home reports and the time until their signal was delivered', async () => {
    const m = await scrapeApi();
    const delivered = valueOf(m, 'cloudgate_phone_home_reports_total', { outcome: 'delivered' })!;
    expect(delivered).toBeGreaterThanOrEqual(3);
    expect(valueOf(m, 'cloudgate_phone_home_delivery_seconds_count')).toBe(delivered);
    expect(valueOf(m, 'cloudgate_phone_home_signalled_reports_total')).toBe(delivered);
    expect(valueOf(m, 'cloudgate_phone_home_signal_duration_seconds_count', { result: 'ok' })).toBeGreaterThanOrEqual(1);
    // The process's own metrics come along.
    expect(valueOf(m, 'process_resident_memory_bytes')).toBeGreaterThan(0);
  });

  it('answers only the scrape token and admins: anonymous 401, a user 403, the token nowhere else', async () => {
    const anonymous = await stack.http('GET', '/metrics', undefined, { Authorization: '' });
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get('www-authenticate')).toMatch(/^Bearer realm="cloudgate"/);
    expect((await stack.http('GET', '/metrics', undefined, { Authorization: 'Bearer cgm_not-the-token-0123456789' })).status).toBe(401);
    const user = await stack.http('POST', '/v1/tokens', { owner: 'bob', role: 'user' });
    expect(user.status).toBe(201);
    const asUser = await stack.http('GET', '/metrics', undefined, { Authorization: `Bearer ${user.body.token}` });
    expect(asUser.status).toBe(403);
    expect(asUser.headers.get('content-type')).toMatch(/problem\+json/);
    expect((await stack.http('GET', '/metrics')).status).toBe(200); // the admin
    // The scrape token opens /metrics only.
    expect((await stack.http('GET', '/v1/clusters', undefined, { Authorization: `Bearer ${metricsToken}` })).status).toBe(401);
    expect((await stack.http('GET', '/metrics?bogus=1', undefined, { Authorization: `Bearer ${metricsToken}` })).status).toBe(422);
    expect(statSync(path.join(stack.dataDir, 'metrics-token')).mode & 0o777).toBe(0o600);
  });
});

describe("the worker's /metrics", () => {
  it('counts creates by cloud and the injected error by cloud and kind', async () => {
    const m = await scrapeWorker();
    expect(valueOf(m, 'cloudgate_instance_creates_total', { cloud: 'sim' })).toBe(3);
    expect(valueOf(m, 'cloudgate_instance_creates_total', { cloud: 'sim-full' })).toBe(0);
    expect(valueOf(m, 'cloudgate_instance_create_errors_total', { cloud: 'sim-full', kind: 'CapacityExhausted' })).toBeGreaterThanOrEqual(1);
    expect(sumOf(m, 'cloudgate_instance_create_errors_total', { cloud: 'sim' })).toBe(0);
    expect(valueOf(m, 'cloudgate_instance_create_refusals_total', { cloud: 'sim-full', reason: 'CapacityExhausted' })).toBeGreaterThanOrEqual(1);
    expect(valueOf(m, 'cloudgate_cloud_call_duration_seconds_count', { cloud: 'sim', call: 'create', result: 'ok' })).toBe(3);
    expect(valueOf(m, 'cloudgate_cloud_call_duration_seconds_count', { cloud: 'sim-full', call: 'create', result: 'error' })).toBeGreaterThanOrEqual(1);
  });

  it("carries the Temporal SDK core's worker metrics and the process's own", async () => {
    const m = await scrapeWorker();
    expect(valueOf(m, 'cloudgate_worker_sdk_metrics_up')).toBe(1);
    const temporal = [...m.keys()].filter((n) => n.startsWith('temporal_'));
    expect(temporal.length).toBeGreaterThan(5);
    // Seconds and _total, as Prometheus and Temporal's SDK dashboards name them.
    expect(temporal).toEqual(expect.arrayContaining(['temporal_activity_execution_latency_seconds', 'temporal_workflow_task_execution_latency_seconds']));
    expect(sumOf(m, 'temporal_activity_execution_latency_seconds_count', { activity_type: 'createInstances' })).toBeGreaterThanOrEqual(1);
    expect(valueOf(m, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(labelValues(m).filter((v) => v.includes(clusterId))).toEqual([]);
  });

  it('answers only the scrape token, only GET and HEAD, only /metrics', async () => {
    const none = await fetch(workerMetricsUrl);
    expect(none.status).toBe(401);
    expect(none.headers.get('www-authenticate')).toBe('Bearer realm="cloudgate"');
    expect((await fetch(workerMetricsUrl, { headers: { authorization: `Bearer ${stack.adminToken}` } })).status).toBe(401);
    const post = await fetch(workerMetricsUrl, { method: 'POST', headers: { authorization: `Bearer ${metricsToken}` } });
    expect([post.status, post.headers.get('allow')]).toEqual([405, 'GET, HEAD']);
    expect((await fetch(workerMetricsUrl.replace('/metrics', '/'), { headers: { authorization: `Bearer ${metricsToken}` } })).status).toBe(404);
  });
});

describe('logs', () => {
  const lines = (file: string): Record<string, unknown>[] =>
    readFileSync(path.join(stack.dataDir, file), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  it("the worker's lines name their cluster, service and workflow, and never an activity's task token", () => {
    const worker = lines('worker.log');
    expect(worker.every((l) => l.proc === 'worker')).toBe(true);
    const cluster = worker.filter((l) => l.clusterId === clusterId);
    expect(cluster.some((l) => l.workflowId === `cluster/${clusterId}` && l.msg === 'cluster state')).toBe(true);
    // The service workflow passed the full cloud over: its line names the service.
    expect(cluster.some((l) => l.workflowId === `cluster/${clusterId}/workers` && l.service === 'workers')).toBe(true);
    expect(worker.filter((l) => 'taskToken' in l)).toEqual([]);
  });

  it("the API's request lines carry the route pattern and the cluster, service and workflow ids", () => {
    const api = lines('api.log');
    expect(api.every((l) => l.proc === 'api')).toBe(true);
    const requests = api.filter((l) => l.msg === 'request');
    expect(requests.some((l) => l.route === '/v1/clusters/:id' && l.clusterId === clusterId && l.workflowId === `cluster/${clusterId}`)).toBe(true);
    expect(
      requests.some(
        (l) => l.route === '/v1/instances/:instanceId/readiness' && l.clusterId === clusterId && l.service === 'workers' && l.workflowId === `cluster/${clusterId}/workers`,
      ),
    ).toBe(true);
  });
});

describe('after teardown', () => {
  it('counts terminates and moves the gauges', async () => {
    expect((await stack.http('DELETE', `/v1/clusters/${clusterId}`)).status).toBe(202);
    await waitForState(stack, clusterId, 'TERMINATED');
    const api = await waitFor(async () => {
      const m = await scrapeApi();
      return valueOf(m, 'cloudgate_instances', { cloud: 'sim', state: 'READY' }) === undefined ? m : undefined;
    }, 20_000, 'the instances gauge to empty');
    expect(valueOf(api, 'cloudgate_clusters', { state: 'TERMINATED' })).toBe(1);
    expect(valueOf(api, 'cloudgate_clusters', { state: 'READY' })).toBe(0);
    expect(valueOf(api, 'cloudgate_quota_used', { owner: 'admin', resource: 'instances' })).toBeUndefined(); // holds nothing now
    const worker = await scrapeWorker();
    expect(valueOf(worker, 'cloudgate_instance_terminates_total', { cloud: 'sim' })).toBeGreaterThanOrEqual(3);
    expect(sumOf(worker, 'cloudgate_instance_terminate_errors_total')).toBe(0);
  });
});
