/**
 * The REST API as an Express app, built from injected dependencies (store, Temporal client,
 * config) so tests and the stack launcher can run it in-process. Thin on purpose: validate,
 * store or call Temporal, render; every error goes through one problem+json middleware.
 */
import express, { type Express, type Request } from 'express';
import type { Client } from '@temporalio/client';
import type { PayloadCodec } from '@temporalio/common';
import { pino, type Logger } from 'pino';
import type { Store } from '../store/index.js';
import { authenticate, requireAdmin, type OidcVerifier } from './auth.js';
import { cloudRoutes } from './clouds.js';
import { codecRoutes } from './codec.js';
import { clusterRoutes } from './clusters.js';
import { contextRoutes } from './contexts.js';
import { definitionRoutes } from './definitions.js';
import { openApiDocument } from './openapi.js';
import { loggedPath, methodNotAllowed, notFoundHandler, Problem, problemMiddleware } from './problem.js';
import { hostCheck } from './host-check.js';
import { portalRoutes } from './portal.js';
import { readinessRoutes } from './readiness.js';
import { tokenRoutes } from './tokens.js';
import { auditRoutes, auditTrail } from './audit.js';
import { DEFAULT_QUOTA, quotaRoutes } from './quotas.js';
import { DEFAULT_MAX_LIFETIME_SECONDS, sessionRoutes } from './sessions.js';
import type { Quota } from '../model/config.js';
import type { OidcLogin } from './schemas.js';
import type { BatcherOptions } from './readiness-batcher.js';
import { createApiMetrics, metricsAuthorization, type ApiMetrics } from './metrics.js';
import { NoQuerySchema, queryOf } from './paging.js';
import { enteredByItsPaths, requestIds, routePattern } from './request.js';

/** What the API needs to know; a subset of model/config.ts's Config, with URLs resolved. */
export interface ApiConfig {
  /** Base URL guests and clients reach the API at (used as the OpenAPI server). */
  publicUrl: string;
  temporalUiUrl: string;
  /** The one browser origin allowed to call the payload codec endpoint; default the origin of `temporalUiUrl`. */
  codecCorsOrigin?: string;
  namespace: string;
  taskQueue: string;
  /** HMAC secret of phone-home tokens. */
  tokenSecret: string;
  /** Hosts a context's `cvmfs.servers` may name although loopback or private (`CLOUDGATE_CVMFS_ALLOWED_HOSTS`). */
  cvmfsAllowedHosts?: readonly string[];
  /** The site-wide default quota of owners without their own (`config.quota`); default the config's default. */
  quota?: Quota;
  /** The longest a cluster may live, extensions included (`config.maxLifetimeSeconds`); default 30 days. */
  maxLifetimeSeconds?: number;
  /** The address the server listens on: a loopback one turns on the Host check (api/host-check.ts). */
  listenHost?: string;
  /** Host names answered besides localhost, 127.0.0.1, [::1] and the public URL's (`CLOUDGATE_ALLOWED_HOST_NAMES`). */
  allowedHostNames?: readonly string[];
  /** The bearer Prometheus scrapes `/metrics` with (`loadMetricsToken`); admins' bearers are taken too. Unset: admins only. */
  metricsToken?: string;
  /** The built web portal served at `/` (api/portal.ts); default `<repo>/dist/portal`. */
  portalDir?: string;
  /** The OIDC sign-in offered to clients (`oidcLoginOf(config.auth)`): `GET /v1/login-options`, and the portal's CSP lets it reach the issuer. */
  oidcLogin?: OidcLogin;
}

export interface AppDeps {
  store: Store;
  temporal: Client;
  config: ApiConfig;
  logger?: Logger;
  /** Tuning of the readiness batcher (tests shorten the delay). */
  readinessBatching?: BatcherOptions;
  /** Clock of pairing PIN expiry and the PIN miss limit (tests move it); default the system clock. */
  now?: () => Date;
  /** Verifies OIDC access tokens (unset: API tokens only). */
  oidc?: OidcVerifier;
  /** The Temporal payload codec; when given, `/codec/decode` and `/codec/encode` serve it to admins (api/codec.ts). */
  payloadCodec?: PayloadCodec;
  /** The metrics `/metrics` serves (api/metrics.ts); default: made here, without the process's own. */
  metrics?: ApiMetrics;
}

/** An Express app that can also flush its pending readiness reports before shutdown. */
export type CloudgateApp = Express & { drain(): Promise<void> };

/** Definitions can be large (200 services); phone-home reports are small. */
const DEFINITION_LIMIT = '1mb';
const SMALL_LIMIT = '64kb';
const HEALTH_DEADLINE_MS = 2_000;

/** Builds the app; it owns no connections (the caller closes store and client). */
export function createApp(deps: AppDeps): CloudgateApp {
  const { store, temporal, config } = deps;
  const logger = deps.logger ?? pino({ level: 'silent' });
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.set('json spaces', 0);

  let doc: ReturnType<typeof openApiDocument> | undefined;
  const document = () => (doc ??= openApiDocument(config.publicUrl));
  const metrics = deps.metrics ?? createApiMetrics({ store, defaultQuota: config.quota ?? DEFAULT_QUOTA });
  /**
   * A request's route pattern (`/v1/clusters/:id`) for metrics and logs: the route that answered,
   * else the documented path it matches (a request refused before routing: 401, 405, 421), else
   * `unmatched`. Never the raw path: ids, names and PINs stay out of labels.
   */
  let documented: { re: RegExp; pattern: string }[] | undefined;
  const routeOf = (req: Request): string => {
    const routed = routePattern(req);
    if (routed !== undefined) return routed;
    documented ??= Object.keys(document().paths ?? {}).map((p) => ({
      re: new RegExp(`^${p.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{[^}]+\}/g, '[^/]+')}/?$`),
      pattern: p.replace(/\{([^}]+)\}/g, ':$1'),
    }));
    return documented.find((d) => d.re.test(req.path))?.pattern ?? 'unmatched';
  };
  app.use(metrics.requests(routeOf));

  // Method, path, status and time only: headers (Authorization) and bodies (tokens) are never logged.
  // The cluster, service and workflow a request was about ride along (api/request.ts, requestIds).
  app.use((req, res, next) => {
    if (!logger.isLevelEnabled('info')) return next(); // a site logging warnings only pays nothing per request
    const started = process.hrtime.bigint();
    res.on('finish', () => {
      const route = routeOf(req);
      logger.info(
        { method: req.method, path: loggedPath(req.path), route, status: res.statusCode, ms: Number(process.hrtime.bigint() - started) / 1e6, ...requestIds(req, res, route) },
        'request',
      );
    });
    next();
  });

  // On loopback, only requests naming one of the API's own host names (DNS rebinding): 421 otherwise.
  const hosts = hostCheck({ listenHost: config.listenHost, publicUrl: config.publicUrl, allowedHostNames: config.allowedHostNames });
  if (hosts) app.use(hosts);

  // The audit trail (api/audit.ts): a line per POST/PUT/PATCH/DELETE, and a stored record for authenticated ones.
  const audit = auditTrail({ store, logger });
  app.use(audit);

  // The web portal's page and assets: public, like the API description (the pages hold no data, the API they call checks the bearer).
  app.use(enteredByItsPaths(portalRoutes({ dir: config.portalDir, oidcLogin: config.oidcLogin })));

  const bigJson = express.json({ limit: DEFINITION_LIMIT });
  const smallJson = express.json({ limit: SMALL_LIMIT });

  // The Web UI's payload codec, for admins. Ahead of the bearer check below: there a browser's session cookie stands in for the header.
  if (deps.payloadCodec) {
    const allowedOrigin = config.codecCorsOrigin ?? new URL(config.temporalUiUrl).origin;
    app.use(enteredByItsPaths(codecRoutes({ codec: deps.payloadCodec, allowedOrigin, authorize: [authenticate({ store, oidc: deps.oidc, now: deps.now }), requireAdmin] })));
  }

  // Prometheus: the scrape token, or an admin's bearer (owner names are labels). Ahead of the bearer check below, which knows no scrape token.
  app.get(
    '/metrics',
    metricsAuthorization(config.metricsToken, [authenticate({ store, oidc: deps.oidc, now: deps.now }), requireAdmin]),
    async (req, res) => {
      queryOf(req, NoQuerySchema);
      const text = await metrics.registry.metrics();
      res.set('Content-Type', metrics.registry.contentType).set('Cache-Control', 'no-store').send(text);
    },
  );

  // Everything below needs a bearer, except the few public routes auth.ts lists (and a guest's load report, which may carry its phone-home token).
  app.use(authenticate({ store, oidc: deps.oidc, now: deps.now, tokenSecret: config.tokenSecret }));

  // Each router is entered only by requests on its own paths (enteredByItsPaths), so a request skips the others' routes.
  app.use(enteredByItsPaths(definitionRoutes({ store, temporal, json: bigJson, now: deps.now })));
  app.use(enteredByItsPaths(tokenRoutes({ store, json: smallJson, now: deps.now, oidcLogin: config.oidcLogin })));
  app.use(enteredByItsPaths(quotaRoutes({ store, temporal, defaultQuota: config.quota, json: smallJson })));
  app.use(enteredByItsPaths(auditRoutes({ store, trail: audit })));

  app.use(enteredByItsPaths(contextRoutes({ store, config, json: bigJson, now: deps.now })));
  const sessionConfig = { maxLifetimeSeconds: config.maxLifetimeSeconds ?? DEFAULT_MAX_LIFETIME_SECONDS };
  app.use(enteredByItsPaths(clusterRoutes({ store, temporal, config: { ...config, ...sessionConfig }, json: smallJson })));
  app.use(enteredByItsPaths(sessionRoutes({ store, temporal, json: smallJson })));
  const readiness = readinessRoutes({ temporal, store, tokenSecret: config.tokenSecret, batching: deps.readinessBatching, metrics: metrics.phoneHome });
  app.use(enteredByItsPaths(readiness.router));

  app.use(enteredByItsPaths(cloudRoutes({ store, temporal, taskQueue: config.taskQueue })));

  app.get('/healthz', async (_req, res) => {
    const checks: Record<string, string> = {};
    try {
      await store.ping();
      checks.store = 'ok';
    } catch (err) {
      checks.store = `failed: ${(err as Error).message}`;
    }
    try {
      await temporal.withDeadline(Date.now() + HEALTH_DEADLINE_MS, () => temporal.workflowService.getSystemInfo({}));
      checks.temporal = 'ok';
    } catch (err) {
      checks.temporal = `failed: ${(err as Error).message}`;
    }
    if (Object.values(checks).some((v) => v !== 'ok')) {
      throw new Problem(503, 'Service Unavailable', 'a dependency is not reachable', { slug: 'unhealthy', extensions: { checks } });
    }
    res.json({ status: 'ok', checks });
  });

  app.get('/openapi.json', (_req, res) => {
    res.json(document());
  });

  // A known path with a method it does not take: 405 with Allow (the document lists every route).
  app.use(methodNotAllowed(() => document().paths ?? {}));
  app.use(notFoundHandler);
  app.use(problemMiddleware(logger));
  return Object.assign(app, { drain: () => readiness.batcher.drain() });
}
