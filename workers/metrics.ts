/**
 * A worker's Prometheus metrics: its cloud calls as the activities count them (creates and
 * terminates by cloud, errors by cloud and kind, refusals for want of room, call durations)
 * and the process's own (`process_*`, `nodejs_*`), served with the Temporal SDK's worker
 * metrics on one `/metrics` (`CLOUDGATE_WORKER_METRICS_PORT`, on 127.0.0.1 unless
 * `CLOUDGATE_WORKER_METRICS_HOST` says otherwise).
 *
 * The SDK's metrics (task slots, poll and schedule-to-start latencies, workflow and activity
 * outcomes, sticky cache — named `temporal_*`) come from its Rust core, which serves them
 * itself on a Prometheus endpoint of its own (`Runtime.install({telemetryOptions: {metrics:
 * {prometheus: {bindAddress}}}})`, workers/main.ts); that one listens on loopback only and
 * each scrape here reads it and appends its text, so Prometheus needs one target per worker.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ActivityMetrics } from '../activities/index.js';

/** Seconds: a sim create takes a millisecond, a libvirt or EC2 create a few seconds. */
const CLOUD_CALL_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** How long a scrape waits for the SDK core's own endpoint. */
const SDK_SCRAPE_TIMEOUT_MS = 2_000;

export interface WorkerMetrics {
  registry: Registry;
  /** What the activities count through (`createActivities({metrics})`). */
  activities: ActivityMetrics;
  /** Starts each cloud's creates and terminates at 0, so `rate()` has a series from the worker's start. */
  knowClouds(names: readonly string[]): void;
}

/** One registry per worker (tests run several in one process). */
export function createWorkerMetrics(opts: { processMetrics?: boolean } = {}): WorkerMetrics {
  const registry = new Registry();
  if (opts.processMetrics) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  const creates = new Counter({
    name: 'cloudgate_instance_creates_total',
    help: 'Instances a cloud made at our request (create calls that succeeded; an instance found by its idempotency key is not counted)',
    labelNames: ['cloud'] as const,
    registers,
  });
  const createErrors = new Counter({
    name: 'cloudgate_instance_create_errors_total',
    help: 'Create calls a cloud failed, by error kind (Throttled, Transient, CapacityExhausted, QuotaExceeded, InvalidRequest, ...; Unknown: not a cloud error); every attempt counts',
    labelNames: ['cloud', 'kind'] as const,
    registers,
  });
  const terminates = new Counter({
    name: 'cloudgate_instance_terminates_total',
    help: 'Terminate calls a cloud answered (a gone instance is a success too); teardown sweeps included',
    labelNames: ['cloud'] as const,
    registers,
  });
  const terminateErrors = new Counter({
    name: 'cloudgate_instance_terminate_errors_total',
    help: 'Terminate calls a cloud failed, by error kind; every attempt counts',
    labelNames: ['cloud', 'kind'] as const,
    registers,
  });
  const refusals = new Counter({
    name: 'cloudgate_instance_create_refusals_total',
    help: "Creates stopped for want of room, by reason: Ledger (cloudgate's quota for the cloud), CapacityExhausted or QuotaExceeded (the cloud's answer); the service places the rest elsewhere or waits",
    labelNames: ['cloud', 'reason'] as const,
    registers,
  });
  const duration = new Histogram({
    name: 'cloudgate_cloud_call_duration_seconds',
    help: 'Time of one create or terminate call to a cloud, by cloud, call and result (ok, error)',
    labelNames: ['cloud', 'call', 'result'] as const,
    buckets: CLOUD_CALL_BUCKETS,
    registers,
  });
  return {
    registry,
    activities: {
      cloudCall(cloud, call, seconds, errorKind) {
        duration.observe({ cloud, call, result: errorKind === undefined ? 'ok' : 'error' }, seconds);
        if (errorKind === undefined) (call === 'create' ? creates : terminates).inc({ cloud });
        else (call === 'create' ? createErrors : terminateErrors).inc({ cloud, kind: errorKind });
      },
      createRefused(cloud, reason) {
        refusals.inc({ cloud, reason });
      },
    },
    knowClouds(names) {
      for (const cloud of names) {
        creates.inc({ cloud }, 0);
        terminates.inc({ cloud }, 0);
      }
    },
  };
}

export interface ServeWorkerMetricsOptions {
  registry: Registry;
  host: string;
  port: number;
  /** The bearer a scrape must send (`loadMetricsToken`). */
  token: string;
  /** The SDK core's own Prometheus endpoint (`http://127.0.0.1:<port>/metrics`), appended to every scrape; unset: none. */
  sdkMetricsUrl?: string;
  logger?: Logger;
}

export interface ServedWorkerMetrics {
  url: string;
  server: Server;
  close(): Promise<void>;
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** The text of the SDK core's endpoint, or why there is none. */
async function sdkMetrics(url: string): Promise<{ text: string } | { error: string }> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(SDK_SCRAPE_TIMEOUT_MS) });
    if (!res.ok) return { error: `${url} answered ${res.status}` };
    return { text: await res.text() };
  } catch (err) {
    return { error: `${url}: ${(err as Error).message}` };
  }
}

/**
 * Serves `GET /metrics` (and HEAD) with the bearer `token`: the registry's text, then the SDK
 * core's. `cloudgate_worker_sdk_metrics_up` says whether the core's part could be read.
 */
export async function serveWorkerMetrics(opts: ServeWorkerMetricsOptions): Promise<ServedWorkerMetrics> {
  const want = digest(opts.token);
  const sdkUp = new Gauge({
    name: 'cloudgate_worker_sdk_metrics_up',
    help: "1 when this scrape read the Temporal SDK core's own metrics (temporal_*), 0 when it could not, absent when the worker runs without them",
    registers: [opts.registry],
  });
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found: the worker serves only /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' }).end(`${req.method} is not a method of /metrics; it takes GET, HEAD\n`);
      return;
    }
    const m = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/i.exec(req.headers.authorization ?? '');
    if (!m || !timingSafeEqual(digest(m[1]), want)) {
      res
        .writeHead(401, { 'www-authenticate': m ? 'Bearer realm="cloudgate", error="invalid_token"' : 'Bearer realm="cloudgate"', 'content-type': 'text/plain; charset=utf-8' })
        .end('send Authorization: Bearer <the metrics token> (CLOUDGATE_METRICS_TOKEN, else <data dir>/metrics-token)\n');
      return;
    }
    void (async () => {
      const sdk = opts.sdkMetricsUrl === undefined ? undefined : await sdkMetrics(opts.sdkMetricsUrl);
      if (sdk) sdkUp.set('text' in sdk ? 1 : 0);
      if (sdk && 'error' in sdk) opts.logger?.warn({ error: sdk.error }, 'could not read the Temporal SDK metrics for a scrape');
      const own = await opts.registry.metrics();
      const body = sdk && 'text' in sdk ? `${own.replace(/\n*$/, '\n')}${sdk.text.replace(/\n*$/, '\n')}` : own;
      res.writeHead(200, { 'content-type': opts.registry.contentType, 'cache-control': 'no-store' }).end(req.method === 'HEAD' ? undefined : body);
    })().catch((err: unknown) => {
      opts.logger?.error({ err }, 'metrics scrape failed');
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('metrics could not be gathered; see the worker log\n');
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  const url = `http://${host}:${port}/metrics`;
  opts.logger?.info({ url, sdkMetrics: opts.sdkMetricsUrl }, 'worker metrics listening');
  return {
    url,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
