/**
 * The API's Prometheus metrics (`GET /metrics`, text format 0.0.4, prom-client): request
 * durations by route pattern and status, what the read model says at scrape time (clusters by
 * state, instances by cloud and state, quota usage per owner, capacity per cloud), and the
 * phone-home path (reports by outcome, the time a report waits until its signal is delivered,
 * the signals themselves).
 *
 * Labels are bounded and hold nothing secret: route *patterns* (never a raw path, an id or a
 * PIN), methods, status codes, states, cloud names, owner names. Owner names are why the
 * endpoint needs a bearer ({@link metricsAuthorization}): the scrape token or an admin's.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Request, RequestHandler } from 'express';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Quota } from '../model/config.js';
import { CLUSTER_STATES } from '../model/status.js';
import type { Store } from '../store/index.js';
import { unauthorized } from './auth.js';

/** Seconds: a read from the read model takes milliseconds, a scale update or a refresh up to a minute. */
const REQUEST_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** Seconds: a report waits for its batch (50 ms) and one signal round trip. */
const DELIVERY_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** What happened to one phone-home report. */
export type PhoneHomeOutcome = 'delivered' | 'ignored' | 'gone' | 'failed';

/** The readiness route's and its batcher's observations (api/readiness.ts). */
export interface PhoneHomeMetrics {
  /** A report answered: how, and for a delivered one the seconds from its arrival to its signal's delivery. */
  report(outcome: PhoneHomeOutcome, deliverySeconds?: number): void;
  /** One `readiness` signal sent (a batch of `reports`): its round trip and whether it was delivered. */
  signal(ok: boolean, seconds: number, reports: number): void;
}

export interface ApiMetrics {
  registry: Registry;
  /** Times every request; mount first. `routeOf` names its route pattern (bounded: never the raw path). */
  requests(routeOf: (req: Request) => string): RequestHandler;
  phoneHome: PhoneHomeMetrics;
}

export interface ApiMetricsDeps {
  store: Pick<Store, 'clusterCountsByState' | 'instanceCountsByCloudAndState' | 'quotaUsageByOwner' | 'listClouds' | 'capacityUsage'>;
  /** The site-wide default quota: the limit of owners without their own. */
  defaultQuota: Quota;
  /** Also the process's own metrics (`process_*`, `nodejs_*`): the API process does, apps built in tests do not. */
  processMetrics?: boolean;
}

const QUOTA_RESOURCES = [
  ['instances', 'maxInstances'],
  ['cpus', 'maxCpus'],
  ['clusters', 'maxClusters'],
] as const;

/** One registry per app, so several apps in one process (tests) never share or clash. */
export function createApiMetrics(deps: ApiMetricsDeps): ApiMetrics {
  const { store } = deps;
  const registry = new Registry();
  if (deps.processMetrics) collectDefaultMetrics({ register: registry });
  const registers = [registry];

  const requestDuration = new Histogram({
    name: 'cloudgate_http_request_duration_seconds',
    help: 'Time to answer an API request, by method, route pattern (e.g. /v1/clusters/:id; "unmatched" for a path no route has) and status code',
    labelNames: ['method', 'route', 'status'] as const,
    buckets: REQUEST_BUCKETS,
    registers,
  });

  new Gauge({
    name: 'cloudgate_clusters',
    help: 'Clusters by state, from the read model (PENDING until a cluster workflow first publishes); TERMINATED ones stay counted',
    labelNames: ['state'] as const,
    registers,
    async collect() {
      this.reset();
      // Every state, zeros included, so "no READY cluster" is a 0 and not a missing series.
      for (const state of CLUSTER_STATES) this.set({ state }, 0);
      for (const { state, count } of await store.clusterCountsByState()) this.set({ state }, count);
    },
  });

  new Gauge({
    name: 'cloudgate_instances',
    help: 'Live instances by cloud and state, from the read model',
    labelNames: ['cloud', 'state'] as const,
    registers,
    async collect() {
      this.reset();
      for (const { cloud, state, count } of await store.instanceCountsByCloudAndState()) this.set({ cloud, state }, count);
    },
  });

  // Each gauge reads what it shows itself: the registry renders them in order, each right after its own collect.
  new Gauge({
    name: 'cloudgate_quota_used',
    help: 'What an owner holds of their quota by resource (instances, cpus, clusters); owners holding nothing and without a quota of their own are left out',
    labelNames: ['owner', 'resource'] as const,
    registers,
    async collect() {
      this.reset();
      for (const { owner, usage } of await store.quotaUsageByOwner()) {
        for (const [resource] of QUOTA_RESOURCES) this.set({ owner, resource }, usage[resource]);
      }
    },
  });
  new Gauge({
    name: 'cloudgate_quota_limit',
    help: "An owner's quota (their own, else the site default) by resource, for every owner in cloudgate_quota_used",
    labelNames: ['owner', 'resource'] as const,
    registers,
    async collect() {
      this.reset();
      for (const { owner, quota } of await store.quotaUsageByOwner()) {
        for (const [resource, limit] of QUOTA_RESOURCES) this.set({ owner, resource }, (quota ?? deps.defaultQuota)[limit]);
      }
    },
  });

  const CAPACITY_RESOURCES = [['instances', 'instances'], ['cpus', 'cpus'], ['memory_mib', 'memoryMiB']] as const;
  new Gauge({
    name: 'cloudgate_cloud_capacity_used',
    help: 'What the capacity ledger holds on each cloud over all clusters, by resource (instances, cpus, memory_mib)',
    labelNames: ['cloud', 'resource'] as const,
    registers,
    async collect() {
      this.reset();
      for (const cloud of await store.listClouds()) {
        const usage = await store.capacityUsage(cloud.name);
        for (const [resource, key] of CAPACITY_RESOURCES) this.set({ cloud: cloud.name, resource }, usage[key]);
      }
    },
  });
  new Gauge({
    name: 'cloudgate_cloud_capacity_limit',
    help: "A cloud's quota in the registry file by resource (instances, cpus, memory_mib); absent: unlimited",
    labelNames: ['cloud', 'resource'] as const,
    registers,
    async collect() {
      this.reset();
      for (const cloud of await store.listClouds()) {
        for (const [resource, key] of CAPACITY_RESOURCES) {
          const limit = cloud.quota?.[key];
          if (limit !== undefined) this.set({ cloud: cloud.name, resource }, limit);
        }
      }
    },
  });

  const reports = new Counter({
    name: 'cloudgate_phone_home_reports_total',
    help: 'Readiness reports with a valid token, by outcome: delivered to the service workflow, ignored (the instance no longer waits), gone (workflow closed), failed (not delivered)',
    labelNames: ['outcome'] as const,
    registers,
  });
  const delivery = new Histogram({
    name: 'cloudgate_phone_home_delivery_seconds',
    help: "Time from a readiness report's arrival until the signal carrying it was delivered to its service workflow (batching wait included)",
    buckets: DELIVERY_BUCKETS,
    registers,
  });
  const signals = new Histogram({
    name: 'cloudgate_phone_home_signal_duration_seconds',
    help: 'Round trip of one readiness signal (a batch of reports) to Temporal, by result (ok, error)',
    labelNames: ['result'] as const,
    buckets: DELIVERY_BUCKETS,
    registers,
  });
  const batched = new Counter({
    name: 'cloudgate_phone_home_signalled_reports_total',
    help: 'Reports carried by readiness signals that were delivered (divide by the signal count for the mean batch size)',
    registers,
  });

  return {
    registry,
    requests: (routeOf) => (req, res, next) => {
      const stop = requestDuration.startTimer();
      res.on('finish', () => stop({ method: req.method, route: routeOf(req), status: String(res.statusCode) }));
      next();
    },
    phoneHome: {
      report(outcome, deliverySeconds) {
        reports.inc({ outcome });
        if (deliverySeconds !== undefined) delivery.observe(deliverySeconds);
      },
      signal(ok, seconds, count) {
        signals.observe({ result: ok ? 'ok' : 'error' }, seconds);
        if (ok) batched.inc(count);
      },
    },
  };
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/**
 * Who may scrape: a bearer equal to the metrics token (`CLOUDGATE_METRICS_TOKEN`, else
 * `<dataDir>/metrics-token`), compared in constant time, or else whatever `fallback` accepts
 * (the API: any admin bearer). Anonymous: 401 with the Bearer challenge, like every guarded route.
 */
export function metricsAuthorization(token: string | undefined, fallback: RequestHandler[]): RequestHandler {
  const want = token === undefined ? undefined : digest(token);
  return (req, res, next) => {
    const m = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/i.exec(req.headers.authorization ?? '');
    if (want && m && timingSafeEqual(digest(m[1]), want)) return next();
    if (fallback.length === 0) return next(unauthorized('this route needs Authorization: Bearer <the metrics token>', m !== null));
    // Chain the fallback handlers; the first error ends the chain.
    const run = (i: number): void => {
      if (i === fallback.length) return next();
      fallback[i](req, res, (err?: unknown) => (err ? next(err) : run(i + 1)));
    };
    run(0);
  };
}
