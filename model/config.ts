/**
 * Runtime configuration from environment variables (documented in the README).
 * Parsing is pure: entry points pass `process.env` in.
 */
import { z } from 'zod';
import { DEFAULT_MAX_LIFETIME_SECONDS } from './session.js';

const port = z.coerce.number().int().min(0).max(65_535);
const rate = z.coerce.number().min(0).max(1);

/**
 * The stratum-1s of the cern.ch domain as cvmfs-config-default lists them
 * (`/etc/cvmfs/domain.d/cern.ch.conf`); a context's own `cvmfs.servers` take precedence.
 */
export const DEFAULT_CVMFS_SERVERS = [
  'http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@',
  'http://cernvmfs.gridpp.rl.ac.uk/cvmfs/@fqrn@',
  'http://cvmfs-s1bnl.opensciencegrid.org/cvmfs/@fqrn@',
  'http://cvmfs-s1fnal.opensciencegrid.org/cvmfs/@fqrn@',
];

/** `;`-separated like `CVMFS_SERVER_URL`; each an http(s) URL. */
const serverList = z
  .string()
  .transform((s) => s.split(';').map((u) => u.trim()).filter(Boolean))
  .pipe(z.array(z.string().url().regex(/^https?:\/\//, 'must be an http(s) URL')).min(1));

/** A comma- or `;`-separated list (environment variables), or an array (code). */
const list = z.union([z.array(z.string()), z.string().transform((s) => s.split(/[;,]/).map((x) => x.trim()).filter(Boolean))]);

/** Per-owner limits; the config holds the site-wide default, `PUT /v1/owners/:owner/quota` one owner's. */
export const QuotaSchema = z.object({
  maxInstances: z.coerce.number().int().min(0),
  maxClusters: z.coerce.number().int().min(0),
  maxCpus: z.coerce.number().int().min(0),
});
export type Quota = z.infer<typeof QuotaSchema>;

export const ConfigSchema = z.object({
  /** Folder for the Temporal SQLite file, cloudgate's store, the sim cloud's state and the token secret. */
  dataDir: z.string().default('data'),
  /**
   * cloudgate's store on PostgreSQL (`postgres://user:password@host:port/database`), shared by
   * every API replica and worker; unset: SQLite in `<dataDir>/cloudgate.sqlite`. Never logged
   * (it may hold a password).
   */
  databaseUrl: z
    .string()
    .regex(/^postgres(ql)?:\/\/\S+$/, 'must be a postgres:// URL')
    .optional(),
  apiHost: z.string().default('127.0.0.1'),
  apiPort: port.default(8080),
  /** Base URL guests use to phone home; defaults to http://<apiHost>:<apiPort>. */
  publicUrl: z.string().url().optional(),
  /** An existing Temporal frontend (host:port). Unset: `npm start` runs a dev server. */
  temporalAddress: z.string().optional(),
  temporalPort: port.default(7233),
  temporalUiPort: port.default(8233),
  temporalUiUrl: z.string().url().optional(),
  namespace: z.string().default('default'),
  taskQueue: z.string().default('cloudgate'),
  /** HMAC secret for phone-home tokens; unset: generated once into `<dataDir>/token-secret`. */
  tokenSecret: z.string().min(16).optional(),
  /**
   * A phone-home token lives for its service's readiness timeout plus this margin (covering a
   * slow create call, activity retries and clock skew between worker and API), not days.
   */
  tokenMarginSeconds: z.coerce.number().int().min(60).max(86_400).default(900),
  /** The longest a cluster may live (its `lifetime.maxSeconds`, extensions included); default 30 days. */
  maxLifetimeSeconds: z.coerce.number().int().min(10).default(DEFAULT_MAX_LIFETIME_SECONDS),
  logLevel: z.string().default('info'),
  /**
   * A workflow bundle made at build time (workers/bundle-workflows.ts; the image sets it): the
   * worker loads it instead of bundling the workflow sources at start.
   */
  workflowBundle: z.string().optional(),
  /** The cloud registry file (YAML or JSON); unset: only the simulated cloud `sim`. */
  cloudsFile: z.string().optional(),
  /** The gateway's stratum-1 check before a cluster deploys. */
  cvmfs: z.object({
    servers: serverList.prefault(DEFAULT_CVMFS_SERVERS.join(';')),
    /** A repository whose manifest was published longer ago than this fails as stale. */
    maxAgeSeconds: z.coerce.number().int().min(60).default(90 * 24 * 3600),
    /**
     * Hosts (`host` or `host:port`) a stratum-1 URL may name although they are loopback,
     * private or link-local addresses (a site's own stratum-1, `npm start`'s simulated one).
     */
    allowedHosts: list.default([]),
  }).prefault({}),
  /** Pulled load (`autoscale.loadUrl`, issue 13). */
  load: z.object({
    /**
     * Hosts (`host` or `host:port`) a load URL may name although they are loopback, private or
     * link-local addresses (a site's own batch system; the worker adds its sim job queue's).
     */
    allowedHosts: list.default([]),
  }).prefault({}),
  /** Who may call the API (issue 11). */
  auth: z.object({
    /** OpenID Connect issuer of access tokens (JWT), e.g. CERN's Keycloak realm URL; unset: API tokens only. */
    oidcIssuer: z.string().url().optional(),
    /** The `aud` an access token must carry (required with an issuer). */
    oidcAudience: z.string().optional(),
    /** The claim that names the owner; `sub` when the token lacks it. */
    oidcOwnerClaim: z.string().default('preferred_username'),
    /** The claim (a string or list, dotted path allowed: `realm_access.roles`) whose value `oidcAdminValue` makes an admin. */
    oidcAdminClaim: z.string().default('realm_access.roles'),
    oidcAdminValue: z.string().default('cloudgate-admin'),
    /**
     * The public client (no secret; PKCE) of the identity provider that the web portal's
     * "Sign in with …" and `cloudgate login --oidc` use; unset: they offer no OIDC sign-in (OIDC
     * access tokens are still accepted).
     */
    oidcClientId: z.string().regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces').optional(),
    /** The scopes they ask for (space-separated); the command adds `offline_access` for its refresh token. */
    oidcScopes: z.string().trim().regex(/^[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*$/, 'must be scope names separated by single spaces').default('openid profile'),
    /**
     * The RFC 8707 resource indicator they ask tokens for, so the provider issues access tokens
     * whose `aud` is `oidcAudience` (providers that issue tokens per resource); unset: none is
     * sent (Keycloak: an audience mapper on the client puts it there).
     */
    oidcResource: z.string().url().refine((u) => !u.includes('#'), 'must be an absolute URI without a fragment (RFC 8707)').optional(),
  })
    .refine((a) => !a.oidcIssuer || a.oidcAudience, { message: 'CLOUDGATE_OIDC_AUDIENCE is required with CLOUDGATE_OIDC_ISSUER', path: ['oidcAudience'] })
    .refine((a) => a.oidcIssuer || !a.oidcClientId, { message: 'CLOUDGATE_OIDC_CLIENT_ID needs CLOUDGATE_OIDC_ISSUER', path: ['oidcClientId'] })
    .prefault({}),
  /** The site-wide default quota of every owner without one of their own. */
  quota: QuotaSchema.prefault({ maxInstances: 20_000, maxClusters: 500, maxCpus: 200_000 }),
  /**
   * Host names the API answers to when it listens on loopback (DNS rebinding): besides these,
   * `localhost`, `127.0.0.1`, `[::1]` and the public URL's host are always accepted.
   */
  allowedHostNames: list.default([]),
  /** Origin of the Temporal Web UI allowed to call the payload codec endpoint (CORS); default the dev server's UI. */
  codecCorsOrigin: z.string().url().optional(),
  /** Prometheus metrics (README "Metrics and logs"). */
  metrics: z.object({
    /**
     * The bearer Prometheus scrapes `/metrics` with (the API's, and each worker's); unset:
     * generated once into `<dataDir>/metrics-token`. Good for `/metrics` only.
     */
    token: z.string().min(16).regex(/^[A-Za-z0-9._~+/-]+=*$/, 'must be a bearer token (letters, digits, . _ ~ + / - and trailing =)').optional(),
    /** Where a worker serves its `/metrics`; unset: it serves none. */
    workerPort: port.optional(),
    /** The address a worker's `/metrics` listens on: loopback unless a scraper elsewhere must reach it. */
    workerHost: z.string().default('127.0.0.1'),
  }).prefault({}),
  sim: z.object({
    bootMs: z.coerce.number().int().min(0).default(8_000),
    readyDelayMs: z.coerce.number().int().min(0).default(2_000),
    failureRate: rate.default(0),
    silentRate: rate.default(0),
    throttleRate: rate.default(0),
    seed: z.string().default('cloudgate'),
    /** The sim's job queue (clouds/sim-queue.ts) listens on 127.0.0.1 at this port; unset: no job queue. */
    queuePort: port.optional(),
  }),
});
export type Config = z.infer<typeof ConfigSchema>;

/** Reads the `CLOUDGATE_*`, `TEMPORAL_*` and `SIM_*` variables. */
export function configFromEnv(env: Record<string, string | undefined>): Config {
  const e = (k: string) => (env[k] === '' ? undefined : env[k]);
  return ConfigSchema.parse({
    dataDir: e('CLOUDGATE_DATA_DIR'),
    databaseUrl: e('CLOUDGATE_DATABASE_URL'),
    apiHost: e('CLOUDGATE_API_HOST'),
    apiPort: e('CLOUDGATE_API_PORT'),
    publicUrl: e('CLOUDGATE_PUBLIC_URL'),
    temporalAddress: e('TEMPORAL_ADDRESS'),
    temporalPort: e('TEMPORAL_PORT'),
    temporalUiPort: e('TEMPORAL_UI_PORT'),
    temporalUiUrl: e('TEMPORAL_UI_URL'),
    namespace: e('TEMPORAL_NAMESPACE'),
    taskQueue: e('CLOUDGATE_TASK_QUEUE'),
    tokenSecret: e('CLOUDGATE_TOKEN_SECRET'),
    tokenMarginSeconds: e('CLOUDGATE_TOKEN_MARGIN_SECONDS'),
    maxLifetimeSeconds: e('CLOUDGATE_MAX_LIFETIME_SECONDS'),
    logLevel: e('CLOUDGATE_LOG_LEVEL'),
    workflowBundle: e('CLOUDGATE_WORKFLOW_BUNDLE'),
    cloudsFile: e('CLOUDGATE_CLOUDS'),
    cvmfs: {
      servers: e('CLOUDGATE_CVMFS_SERVERS'),
      maxAgeSeconds: e('CLOUDGATE_CVMFS_MAX_AGE_SECONDS'),
      allowedHosts: e('CLOUDGATE_CVMFS_ALLOWED_HOSTS'),
    },
    load: { allowedHosts: e('CLOUDGATE_LOAD_ALLOWED_HOSTS') },
    auth: {
      oidcIssuer: e('CLOUDGATE_OIDC_ISSUER'),
      oidcAudience: e('CLOUDGATE_OIDC_AUDIENCE'),
      oidcOwnerClaim: e('CLOUDGATE_OIDC_OWNER_CLAIM'),
      oidcAdminClaim: e('CLOUDGATE_OIDC_ADMIN_CLAIM'),
      oidcAdminValue: e('CLOUDGATE_OIDC_ADMIN_VALUE'),
      oidcClientId: e('CLOUDGATE_OIDC_CLIENT_ID'),
      oidcScopes: e('CLOUDGATE_OIDC_SCOPES'),
      oidcResource: e('CLOUDGATE_OIDC_RESOURCE'),
    },
    quota: {
      maxInstances: e('CLOUDGATE_QUOTA_MAX_INSTANCES') ?? 20_000,
      maxClusters: e('CLOUDGATE_QUOTA_MAX_CLUSTERS') ?? 500,
      maxCpus: e('CLOUDGATE_QUOTA_MAX_CPUS') ?? 200_000,
    },
    allowedHostNames: e('CLOUDGATE_ALLOWED_HOST_NAMES'),
    codecCorsOrigin: e('CLOUDGATE_CODEC_CORS_ORIGIN'),
    metrics: {
      token: e('CLOUDGATE_METRICS_TOKEN'),
      workerPort: e('CLOUDGATE_WORKER_METRICS_PORT'),
      workerHost: e('CLOUDGATE_WORKER_METRICS_HOST'),
    },
    sim: {
      bootMs: e('SIM_BOOT_MS'),
      readyDelayMs: e('SIM_READY_DELAY_MS'),
      failureRate: e('SIM_FAILURE_RATE'),
      silentRate: e('SIM_SILENT_RATE'),
      throttleRate: e('SIM_THROTTLE_RATE'),
      seed: e('SIM_SEED'),
      queuePort: e('SIM_QUEUE_PORT'),
    },
  });
}

export const publicUrlOf = (c: Config): string => c.publicUrl ?? `http://${c.apiHost}:${c.apiPort}`;
export const temporalAddressOf = (c: Config): string => c.temporalAddress ?? `127.0.0.1:${c.temporalPort}`;
export const temporalUiUrlOf = (c: Config): string => c.temporalUiUrl ?? `http://127.0.0.1:${c.temporalUiPort}`;
