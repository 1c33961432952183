/**
 * Entry point of the API process (`npm run api`), and {@link startApi} for running the same
 * thing in-process (tests, the stack launcher). Assembles store, token secret, Temporal
 * client and app; closes them in reverse on SIGINT/SIGTERM.
 */
import { createServer, type Server } from 'node:http';
import os from 'node:os';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Client, Connection } from '@temporalio/client';
import { pino, type DestinationStream, type Logger } from 'pino';
import { configFromEnv, temporalAddressOf, temporalUiUrlOf, type Config } from '../model/config.js';
import { describeStore, openStore, type Store } from '../store/index.js';
import { createApp } from './app.js';
import { createOidcVerifier, ensureAdminToken, oidcLoginOf } from './auth.js';
import { AesGcmPayloadCodec, payloadDataConverter } from '../model/payload-codec.js';
import { loadMetricsToken, loadPayloadKeys, loadTokenSecret, readFileVariables } from '../store/secret.js';
import { createApiMetrics } from './metrics.js';
import { DEFAULT_QUOTA } from './quotas.js';
import { assertPrivateKeyFile, ensurePrivateDir } from '../store/private-files.js';

export interface StartApiOptions {
  logger?: Logger;
  /** Use this store instead of opening the configured one ({@link openStore}; not closed by `close()`). */
  store?: Store;
  /** Use this client instead of connecting to `temporalAddressOf(config)` (not closed by `close()`). */
  temporal?: Client;
}

export interface RunningApi {
  /** Where the API listens, e.g. `http://127.0.0.1:8080` (the real port when apiPort is 0). */
  url: string;
  server: Server;
  /** `<dataDir>/admin-token`: the first admin's API token (mode 0600). */
  adminTokenFile: string;
  /** Stops accepting requests, flushes pending readiness reports, closes what it opened. */
  close(): Promise<void>;
}

/** The API's logger: `proc: "api"` tells its lines from the worker's wherever they meet. */
export function apiLogger(config: Pick<Config, 'logLevel'>, destination?: DestinationStream): Logger {
  const options = { level: config.logLevel, name: 'cloudgate-api', base: { proc: 'api', pid: process.pid, hostname: os.hostname() } };
  return destination ? pino(options, destination) : pino(options);
}

/** Starts the API on `config.apiHost:config.apiPort` (port 0 picks a free one). */
export async function startApi(config: Config, opts: StartApiOptions = {}): Promise<RunningApi> {
  const logger = opts.logger ?? apiLogger(config);
  const owned: Array<() => Promise<void> | void> = [];
  try {
    let store = opts.store;
    if (!store) {
      ensurePrivateDir(config.dataDir);
      // PostgreSQL when CLOUDGATE_DATABASE_URL is set (shared by every replica), else SQLite in the data folder.
      const s = await openStore(config);
      owned.push(() => s.close());
      store = s;
    }
    const tokenSecret = loadTokenSecret(config);
    // The first admin's token, for `npm start` and the README walkthrough (its path is logged, never the token).
    assertPrivateKeyFile(path.join(config.dataDir, 'admin-token'), { missingOk: true }); // refused like every key file others may read
    const adminTokenFile = await ensureAdminToken(store, config.dataDir, logger);
    // The Prometheus scrape's bearer (store/secret.ts): generated once beside the admin token unless configured.
    const metricsToken = loadMetricsToken(config);
    // One codec for the client and the UI's codec endpoint (model/payload-codec.ts).
    const payloadCodec = new AesGcmPayloadCodec(loadPayloadKeys(config));
    let temporal = opts.temporal;
    if (!temporal) {
      const connection = await Connection.connect({ address: temporalAddressOf(config) });
      owned.push(() => connection.close());
      temporal = new Client({ connection, namespace: config.namespace, dataConverter: payloadDataConverter(payloadCodec) });
    }

    const server = createServer();
    // Long enough for a scale update that waits on a busy worker; shorter than proxies' defaults.
    server.requestTimeout = 60_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.apiPort, config.apiHost, () => resolve());
    });
    const { port } = server.address() as AddressInfo;
    const host = config.apiHost.includes(':') ? `[${config.apiHost}]` : config.apiHost;
    const url = `http://${host}:${port}`;
    const app = createApp({
      store,
      temporal,
      logger,
      oidc: createOidcVerifier(config.auth),
      payloadCodec,
      metrics: createApiMetrics({ store, defaultQuota: config.quota ?? DEFAULT_QUOTA, processMetrics: true }),
      config: {
        publicUrl: config.publicUrl ?? url,
        temporalUiUrl: temporalUiUrlOf(config),
        codecCorsOrigin: config.codecCorsOrigin ?? new URL(temporalUiUrlOf(config)).origin,
        namespace: config.namespace,
        taskQueue: config.taskQueue,
        tokenSecret,
        cvmfsAllowedHosts: config.cvmfs.allowedHosts,
        listenHost: config.apiHost,
        allowedHostNames: config.allowedHostNames,
        quota: config.quota,
        maxLifetimeSeconds: config.maxLifetimeSeconds,
        metricsToken,
        oidcLogin: oidcLoginOf(config.auth),
      },
    });
    server.on('request', app);
    logger.info(
      { url, store: describeStore(config), temporal: temporalAddressOf(config), namespace: config.namespace, taskQueue: config.taskQueue, adminTokenFile, oidcIssuer: config.auth.oidcIssuer },
      'cloudgate API listening',
    );

    let closing: Promise<void> | undefined;
    return {
      url,
      server,
      adminTokenFile,
      close: () =>
        (closing ??= (async () => {
          // Stop taking requests, deliver the readiness reports already queued, then let go.
          const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
          server.closeIdleConnections();
          await app.drain();
          await serverClosed;
          for (const f of owned.reverse()) await f();
        })()),
    };
  } catch (err) {
    for (const f of owned.reverse()) await Promise.resolve(f()).catch(() => undefined);
    throw err;
  }
}

async function main(): Promise<void> {
  // `CLOUDGATE_…_FILE` (compose secrets) into the variables everything below reads.
  readFileVariables(process.env);
  const config = configFromEnv(process.env);
  const logger = apiLogger(config);
  const api = await startApi(config, { logger });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      logger.info({ signal: sig }, 'shutting down');
      void api.close().then(
        () => process.exit(0),
        (err: unknown) => {
          logger.error({ err }, 'unclean shutdown');
          process.exit(1);
        },
      );
    });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    // Config errors name the variable; everything else keeps its cause chain for the operator.
    console.error('cloudgate API failed to start:', err);
    process.exit(1);
  });
}
