/**
 * The REST API as an Express app, built from injected dependencies (store, Temporal client,
 * config) so tests and the stack launcher can run it in-process. Thin on purpose: validate,
 * store or call Temporal, render; every error goes through one problem+json middleware.
 */
import express, { type Express } from 'express';
import type { Client } from '@temporalio/client';
import { pino, type Logger } from 'pino';
import { ClusterDefinitionSchema } from '../model/definition.js';
import type { Store } from '../store/index.js';
import { clusterRoutes } from './clusters.js';
import { contextReferenceErrors } from './context-pins.js';
import { contextRoutes } from './contexts.js';
import { bodyOf, param } from './request.js';
import { openApiDocument } from './openapi.js';
import { invalid, notFound, notFoundHandler, parseOr422, Problem, problemMiddleware } from './problem.js';
import { readinessRoutes } from './readiness.js';
import type { BatcherOptions } from './readiness-batcher.js';

/** What the API needs to know; a subset of model/config.ts's Config, with URLs resolved. */
export interface ApiConfig {
  /** Base URL guests and clients reach the API at (used as the OpenAPI server). */
  publicUrl: string;
  temporalUiUrl: string;
  namespace: string;
  taskQueue: string;
  /** HMAC secret of phone-home tokens. */
  tokenSecret: string;
  /** Hosts a context's `cvmfs.servers` may name although loopback or private (`CLOUDGATE_CVMFS_ALLOWED_HOSTS`). */
  cvmfsAllowedHosts?: readonly string[];
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

  // Method, path, status and time only: headers (Authorization) and bodies (tokens) are never logged.
  app.use((req, res, next) => {
    const started = process.hrtime.bigint();
    res.on('finish', () =>
      logger.info({ method: req.method, path: req.path, status: res.statusCode, ms: Number(process.hrtime.bigint() - started) / 1e6 }, 'request'),
    );
    next();
  });

  const bigJson = express.json({ limit: DEFINITION_LIMIT });
  const smallJson = express.json({ limit: SMALL_LIMIT });

  app.post('/v1/cluster-definitions', bigJson, (req, res) => {
    const definition = parseOr422(ClusterDefinitionSchema, bodyOf(req));
    const unknownContexts = contextReferenceErrors(definition, store);
    if (unknownContexts.length > 0) throw invalid(unknownContexts);
    const rec = store.createDefinition({ name: definition.name, definition });
    res.status(201).location(`/v1/cluster-definitions/${rec.id}`).json(rec);
  });
  app.get('/v1/cluster-definitions', (_req, res) => {
    res.json({ items: store.listDefinitions() });
  });
  app.get('/v1/cluster-definitions/:id', (req, res) => {
    const rec = store.getDefinition(param(req, 'id'));
    if (!rec) throw notFound(`no cluster definition "${param(req, 'id')}"`);
    res.json(rec);
  });

  app.use(contextRoutes({ store, config, json: bigJson, now: deps.now }));
  app.use(clusterRoutes({ store, temporal, config, json: smallJson }));
  const readiness = readinessRoutes({ temporal, tokenSecret: config.tokenSecret, json: smallJson, batching: deps.readinessBatching });
  app.use(readiness.router);

  app.get('/v1/clouds', (_req, res) => {
    res.json({
      items: store.listClouds().map(({ name, kind, endpoint, credentials, offerings, images }) => ({ name, kind, endpoint, credentials, offerings, images: images ?? [] })),
    });
  });

  app.get('/healthz', async (_req, res) => {
    const checks: Record<string, string> = {};
    try {
      store.ping();
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

  let doc: unknown;
  app.get('/openapi.json', (_req, res) => {
    doc ??= openApiDocument(config.publicUrl);
    res.json(doc);
  });

  app.use(notFoundHandler);
  app.use(problemMiddleware(logger));
  return Object.assign(app, { drain: () => readiness.batcher.drain() });
}
