/**
 * Request and response shapes of the REST API. Requests are validated with these; responses
 * are documented with them (OpenAPI) and typed by them, so the two cannot drift apart.
 */
import { z } from 'zod';
import { AGENTS } from '../model/agent-views.js';
import { CloudQuotaSchema } from '../model/clouds-config.js';
import { ContextSchema, ContextUserSchema } from '../model/context.js';
import { ClusterDefinitionSchema, LifetimeSchema, NameSchema, OfferingSchema, PlacementSchema, ServiceDefinitionSchema } from '../model/definition.js';
import { LoadReportSchema } from '../model/autoscale.js';
import { CLUSTER_EVENT_KINDS } from '../model/read-model.js';
import { WindowsSchema } from '../model/windows.js';
import { CLUSTER_STATES, INSTANCE_STATES, SERVICE_STATES } from '../model/status.js';

// ---- requests ----

export const CreateClusterRequestSchema = z
  .object({
    definitionId: z.string().min(1).max(100),
    /** Defaults to the definition's name. Becomes the prefix of the cluster id. */
    name: NameSchema.optional(),
    cloud: z.string().min(1).max(100).default('sim'),
    /** Overrides the definition's `lifetime`, field by field (issue 13, sessions). */
    lifetime: LifetimeSchema.optional(),
    /** Replaces the definition's `windows` (issue 13); `[]`: none, the cluster is always active. */
    windows: WindowsSchema.optional().describe("Replaces the definition's windows (an empty list: none, always active)"),
  })
  .strict();
export type CreateClusterRequest = z.infer<typeof CreateClusterRequestSchema>;

/** `PUT /v1/clusters/:id`: run another definition (or other context versions), replacing instances service by service. */
export const ChangeClusterRequestSchema = z
  .object({
    definitionId: z.string().min(1).max(100),
    /** Per service: the context version to pin instead of the definition's (else its latest). */
    contextVersions: z.record(NameSchema, z.number().int().min(1)).optional(),
    /** Instances of a service replaced at once; never fewer than the service's `min` stay ready. */
    maxUnavailable: z.number().int().min(1).max(10_000).default(1),
  })
  .strict();

export const ScaleRequestSchema = z.object({ instances: z.number().int().min(0).max(10_000) }).strict();

/** What a guest posts; unknown members are ignored so older gateways accept newer agents. */
export const ReadinessRequestSchema = z.object({
  status: z.enum(['ok', 'failed']),
  checks: z.record(z.string(), z.unknown()).optional(),
});

/** Sent by clients to make `POST /v1/clusters` safe to retry. */
export const IdempotencyKeySchema = z
  .string()
  .min(1)
  .max(200)
  .regex(/^[\x21-\x7e]+$/, 'must be 1-200 printable ASCII characters without spaces');

/** `?version=n` of the context routes: a positive integer. */
export const ContextVersionQuerySchema = z
  .object({
    version: z
      .string()
      .regex(/^[1-9][0-9]{0,8}$/, 'must be a positive integer')
      .transform(Number)
      .optional(),
  })
  .loose();

/** `GET /v1/contexts/:id/preview`: a version, and optionally the one agent whose reading to show. */
export const ContextPreviewQuerySchema = ContextVersionQuerySchema.extend({
  agent: z.enum(AGENTS, { error: `must be one of ${AGENTS.join(', ')}` }).optional(),
});

/** Items per page of the list routes when `limit` is not given, and the most a client may ask for. */
export const PAGE_LIMIT_DEFAULT = 100;
export const PAGE_LIMIT_MAX = 1000;

/**
 * `?cursor=&limit=` of the paged routes. The cursor is the `next` of the page before, opaque
 * (the store checks that it made it); the limit is 1 to {@link PAGE_LIMIT_MAX}.
 */
export const PageQuerySchema = z
  .object({
    cursor: z.string().min(1, 'must be the `next` of a previous page').max(1000, 'must be the `next` of a previous page').optional(),
    limit: z
      .string()
      .regex(/^[0-9]{1,9}$/, `must be an integer from 1 to ${PAGE_LIMIT_MAX}`)
      .transform(Number)
      .refine((n) => n >= 1 && n <= PAGE_LIMIT_MAX, `must be an integer from 1 to ${PAGE_LIMIT_MAX}`)
      .default(PAGE_LIMIT_DEFAULT),
  })
  .loose();

/** The list routes: a page, and (admins) one owner's items. */
export const ListQuerySchema = PageQuerySchema.extend({ owner: z.string().min(1).max(64).optional() });

/** `GET /v1/clusters`: a list; `state` shows only clusters in that state (TERMINATED ones are listed only when asked for). */
export const ClusterListQuerySchema = ListQuerySchema.extend({
  state: z.enum(CLUSTER_STATES, { error: `must be one of ${CLUSTER_STATES.join(', ')}` }).optional(),
});

/** `GET /v1/clusters/:id/instances`: a page, optionally only one service's and/or one state's instances. */
export const InstancesQuerySchema = PageQuerySchema.extend({
  /** A service of the cluster's definition; any other name is a 404, like the scale route's. */
  service: z.string().optional(),
  state: z.enum(INSTANCE_STATES, { error: `must be one of ${INSTANCE_STATES.join(', ')}` }).optional(),
});

// ---- responses ----

/** A context user as answers show it: whether a password is set, never its hash (issue 11). */
export const PublicContextUserSchema = ContextUserSchema.omit({ passwordHash: true }).extend({
  passwordSet: z.literal(true).optional().describe('Present when the user has a password; the hash itself is never returned'),
});

/** A stored context as answers show it: `passwordSet` per user instead of the hash, secret names only. */
export const PublicContextSchema = ContextSchema.safeExtend({ users: z.array(PublicContextUserSchema) });
export type PublicContext = z.infer<typeof PublicContextSchema>;

/** One stored context version: secret names only, never secret values or password hashes. */
export const ContextRecordSchema = z.object({
  id: z.string(),
  version: z.number().int().min(1),
  name: z.string(),
  owner: z.string().optional().describe('Who stored it (absent for contexts from before owners)'),
  context: PublicContextSchema,
  createdAt: z.string(),
});

/**
 * The definition's schema as the API documents it: the model's own (same rules, same
 * refinements; `safeExtend` keeps them), with the descriptions of `placement` (issue 12).
 * Requests are still validated with the model's `ClusterDefinitionSchema`.
 */
export const DocumentedPlacementSchema = PlacementSchema.extend({
  clouds: PlacementSchema.shape.clouds.describe(
    'Registered clouds (GET /v1/clouds) in order of preference, each at most once. Every one is checked at cluster submission ' +
      '(registered, an offering that fits, the image, the user-data size): any misfit is a 422 naming the service and the cloud',
  ),
  strategy: PlacementSchema.shape.strategy.describe(
    'fill: the first cloud with room, spilling to the next when it is full or failing; spread: instances balanced over the clouds with room',
  ),
}).describe(
  "Where the service's instances may go: several clouds and how to use them. Without it, the cluster's `cloud`. " +
    'A service with no room on any of its clouds waits (state WAITING_CAPACITY) and goes on by itself when one has room',
);

export const DocumentedServiceDefinitionSchema = ServiceDefinitionSchema.safeExtend({ placement: DocumentedPlacementSchema.optional() });

export const DocumentedClusterDefinitionSchema = ClusterDefinitionSchema.safeExtend({
  services: z.array(DocumentedServiceDefinitionSchema).min(1).max(200),
});

export const ClusterDefinitionRecordSchema = z.object({
  id: z.string(),
  name: z.string(),
  definition: DocumentedClusterDefinitionSchema,
  createdAt: z.string(),
});

export const ClusterLinksSchema = z.object({
  self: z.string(),
  temporalUi: z.string(),
});

export const ClusterCreatedSchema = z.object({
  id: z.string(),
  name: z.string(),
  state: z.literal('PENDING'),
  links: ClusterLinksSchema,
});

export const ClusterStateSchema = z.enum(CLUSTER_STATES);

export const ClusterSummarySchema = z.object({
  id: z.string(),
  name: z.string(),
  definitionId: z.string(),
  cloud: z.string(),
  owner: z.string().optional(),
  state: ClusterStateSchema,
  createdAt: z.string(),
});

export const InstanceStatusSchema = z.object({
  id: z.string(),
  name: z.string(),
  state: z.enum(INSTANCE_STATES),
  cloud: z.string().describe('The cloud it was placed on'),
  host: z.string().optional().describe('The hypervisor host it runs on (libvirt farms), once known'),
  cloudInstanceId: z.string().optional(),
  createdAt: z.string().optional(),
  readyAt: z.string().optional(),
  message: z.string().optional(),
  spec: z.string().optional().describe('The spec it runs: the definition (and context version) it was made from; a change replaces instances of an earlier one'),
});

/** One instance as the read model lists it (`PublishedInstance`, model/read-model.ts). */
export const PublishedInstanceSchema = InstanceStatusSchema.extend({
  service: z.string(),
  ordinal: z.number().int().describe('Grows with each instance of the service; a replacement gets a new one'),
});

/** A service in the cluster answer: counts, no instances (`PublishedService`, model/read-model.ts). */
export const PublishedServiceSchema = z.object({
  name: z.string(),
  state: z
    .enum(SERVICE_STATES)
    .describe('WAITING_CAPACITY: it lacks instances and none of its clouds has room; it goes on by itself when one does'),
  desired: z.number().int(),
  ready: z.number().int(),
  replacements: z.number().int(),
  message: z.string().optional(),
  retryingAt: z.string().optional().describe('A FAILED service under failurePolicy keep: when its next round of attempts starts'),
  clouds: z
    .record(z.string(), z.object({ instances: z.number().int(), ready: z.number().int() }))
    .optional()
    .describe('Per cloud the service uses: its live instances there (not failed or leaving) and how many are ready'),
  spec: z.string().optional().describe('The spec its instances run, or are being replaced with during a change'),
  outdated: z.number().int().optional().describe('Live instances still on an earlier spec while a change replaces them'),
});

const SpecDiffSchema = z.object({
  replace: z.array(z.string()).describe('Services whose instances are replaced (image, offering, placement or context version changed)'),
  add: z.array(z.string()).describe('Services only the new definition has: they start'),
  remove: z.array(z.string()).describe('Services only the old definition has: torn down once the change succeeded'),
  keep: z.array(z.string()).describe('Services whose instances stay'),
});

/** A change in progress (`ChangeView`, model/rolling.ts). */
export const ChangeViewSchema = z.object({
  from: z.string(),
  to: z.string(),
  phase: z.enum(['rolling', 'rolling back', 'removing']),
  maxUnavailable: z.number().int(),
  startedAt: z.string(),
  services: SpecDiffSchema,
  reason: z.string().optional().describe('Why it is rolling back'),
});

/** `PUT /v1/clusters/:id` accepted: what the change does (`ChangeResult`, workflows/messages.ts). */
export const ChangeResponseSchema = SpecDiffSchema.extend({
  from: z.string(),
  to: z.string(),
  maxUnavailable: z.number().int(),
  links: ClusterLinksSchema.extend({ events: z.string() }),
});

/** `GET /v1/clusters/:id/services/:service`: the service's published summary, when it was observed, where its instances are. */
export const ServiceViewSchema = PublishedServiceSchema.extend({
  observedAt: z.string().optional().describe("When the service's workflow published this (absent before its first publish)"),
  links: z.object({ cluster: z.string(), instances: z.string() }),
});

/** One thing that happened to a cluster (`ClusterEvent`, model/read-model.ts). */
export const ClusterEventSchema = z.object({
  at: z.string().describe('When, by the workflow clock (ISO)'),
  kind: z.enum(CLUSTER_EVENT_KINDS),
  service: z.string().optional(),
  instance: z.string().optional(),
  message: z.string(),
});

export const ClusterDetailSchema = z.object({
  id: z.string(),
  name: z.string(),
  definitionId: z.string(),
  cloud: z.string(),
  owner: z.string().optional().describe('Who submitted it (absent for clusters from before owners)'),
  state: ClusterStateSchema,
  message: z.string().optional(),
  services: z.array(PublishedServiceSchema),
  /** Per service with a context: the version pinned at submission (what its instances render). */
  contexts: z.record(z.string(), z.object({ id: z.string(), version: z.number().int(), repositories: z.array(z.string()) })).optional(),
  links: ClusterLinksSchema.extend({ instances: z.string(), events: z.string() }),
  lifetime: LifetimeSchema.optional().describe("The session's lifetime (the definition's, overridden by the submission's); absent: the cluster lives until deleted"),
  expiresAt: z
    .string()
    .optional()
    .describe('When the session tears itself down unless kept alive (idle limit) or extended (maximum): the earlier deadline'),
  change: ChangeViewSchema.optional().describe('A change (PUT) in progress: from and to which definition, its phase, what it does to each service'),
  windows: WindowsSchema.optional().describe("When the cluster is active (the definition's, or the submission's instead): PAUSED outside every window; absent: always active"),
  nextWindowAt: z
    .string()
    .optional()
    .describe('Clusters with windows, until they are torn down: when the next window opens (ISO), by the windows\' cron expressions in UTC'),
  observedAt: z.string().optional().describe('When the cluster workflow saw this state (workflow clock); absent until it has published one'),
  seq: z.number().int().min(0).describe("The cluster workflow's publish sequence number; 0 until it has published"),
});
export type ClusterDetail = z.infer<typeof ClusterDetailSchema>;

export const ScaleResponseSchema = z.object({ service: z.string(), desired: z.number().int() });

/** `POST /v1/clusters/:id/services/:service/load`: what the cluster's head node sees of its batch system (the shape a `loadUrl` answers too). */
export const LoadRequestSchema = LoadReportSchema;

export const LoadResponseSchema = z.object({
  service: z.string(),
  action: z.enum(['up', 'down', 'hold']),
  desired: z.number().int(),
  retire: z.array(z.string()),
  reason: z.string().describe('The inputs and the outcome, as the event says it'),
});

/** `POST /v1/clusters/:id/pause`: instances get `graceSeconds` to drain before they are terminated. */
export const PauseRequestSchema = z.object({ graceSeconds: z.number().int().min(0).max(86_400).optional() }).strict();
export const PauseResponseSchema = z.object({
  state: z.enum(CLUSTER_STATES),
  pausedAt: z.string().optional().describe('When the grace period ends and the instances are terminated'),
});

export const RetryResponseSchema = z.object({ services: z.array(z.string()).describe('The services told to try again now') });

/** `POST /v1/clusters/:id/extend`. */
export const ExtendRequestSchema = z.object({ seconds: z.number().int().min(1).max(31_536_000) }).strict();

/** What keepalive and extend answer: the session's deadlines (ISO). */
export const SessionResponseSchema = z.object({
  expiresAt: z.string().describe('The earlier deadline: when the session ends unless kept alive or extended'),
  idleExpiresAt: z.string().optional(),
  maxExpiresAt: z.string().optional(),
});

export const TeardownResponseSchema = z.object({ id: z.string(), state: ClusterStateSchema, links: ClusterLinksSchema });

export const ReadinessAcceptedSchema = z.object({ instanceId: z.string(), receivedAt: z.string() });
/** `GET /v1/instances/:instanceId/notice`: `{}`, or a drain notice while the instance's cluster is PAUSING. */
export const NoticeSchema = z.object({
  drain: z
    .object({
      until: z.string().describe('When the instance is terminated (ISO); a past time: now'),
      reason: z.string().describe("The cluster's message, e.g. \"pausing: instances may drain until …\""),
    })
    .optional()
    .describe('Stop taking work and finish or checkpoint what runs before `until` (HTCondor: condor_off -peaceful)'),
});

export const CloudSchema = z.object({
  name: z.string(),
  kind: z.string(),
  /** URL or libvirt URI of the cloud. */
  endpoint: z.string().optional(),
  /** Credential references (`env:NAME`, `file:/path`): where secrets are read, never their values. */
  credentials: z.record(z.string(), z.string()).optional(),
  offerings: z
    .array(OfferingSchema.extend({ id: z.string(), name: z.string() }))
    .describe('What the cloud catalogue last listed (every 5 minutes, or on POST /v1/clouds/{id}/refresh); kept while the cloud does not answer; empty until it first answers'),
  /** The image names a service may name on this cloud (its registry entry's `images`). */
  images: z.array(z.string()),
  quota: CloudQuotaSchema.optional().describe("What cloudgate may use of the cloud over all clusters and owners (its registry entry's quota); absent, or a field absent: unlimited"),
  usage: z
    .object({ instances: z.number().int(), cpus: z.number().int(), memoryMiB: z.number().int() })
    .describe("What cloudgate holds on the cloud now (the capacity ledger's reservations), over all clusters and owners"),
});
export type Cloud = z.infer<typeof CloudSchema>;

export const HealthSchema = z.object({ status: z.literal('ok'), checks: z.record(z.string(), z.string()) });

export const ProblemSchema = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string(),
  instance: z.string().optional(),
  errors: z.array(z.object({ field: z.string(), pointer: z.string().optional(), message: z.string() })).optional(),
});

/** `{items: [...]}`: list responses leave room for paging fields later. */
export const listOf = <T extends z.ZodType>(item: T) => z.object({ items: z.array(item) });

/** `{items, next?}` of the paged routes: `next` is the cursor of the following page, absent on the last. */
export const pageOf = <T extends z.ZodType>(item: T) =>
  listOf(item).extend({ next: z.string().optional().describe('Pass as ?cursor= for the next page; absent on the last page') });

// ---- pairing a laptop CernVM ----

/** Optional body of `POST /v1/contexts/:id/pairings`; without it the latest version is paired. */
export const PairingRequestSchema = z.object({ version: z.number().int().min(1).max(999_999_999).optional() }).strict();

/** A pairing PIN: typed into the laptop VM, which fetches `links.userData` once before `expiresAt`. */
export const PairingSchema = z.object({
  pin: z.string().regex(/^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$/).describe('12 symbols of Crockford base32 in groups of 4; typed in any case, dashes optional'),
  contextId: z.string(),
  version: z.number().int().min(1),
  expiresAt: z.string(),
  links: z.object({ userData: z.string() }),
});

// ---- tokens (issue 11) ----

/** Owner names: what tokens are issued to (and what an OIDC owner claim must look like). */
export const OWNER_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
export const OwnerSchema = z.string().regex(OWNER_RE, 'must be 1-64 letters, digits, ".", "_", "@" or "-", starting with a letter or digit');

/** `POST /v1/tokens`: who the token is for, what it may do, and for how long (unset: no expiry). */
export const CreateTokenRequestSchema = z
  .object({
    owner: OwnerSchema,
    role: z.enum(['user', 'admin']),
    ttlSeconds: z.number().int().min(60).max(366 * 24 * 3600).optional(),
  })
  .strict();


/** An API token as the API shows it: never its value (except once, in the answer to its creation). */
export const ApiTokenSchema = z.object({
  id: z.string(),
  owner: z.string(),
  role: z.enum(['user', 'admin']),
  createdAt: z.string(),
  expiresAt: z.string().optional(),
  revokedAt: z.string().optional(),
});

/** `GET /v1/me`: who the bearer is, as every route sees it. */
export const WhoAmISchema = z.object({
  owner: z.string().describe('The owner this bearer acts as: what it creates is theirs, it sees only theirs (an admin: everything)'),
  role: z.enum(['user', 'admin']),
  via: z.enum(['token', 'oidc']).describe('How it proved it: an API token of cloudgate or an OIDC access token of the site'),
  tokenId: z.string().optional().describe('The API token used (its id, never its value); absent for OIDC access tokens'),
});

/**
 * `GET /v1/login-options` (public): how a client signs in besides an API token. `oidc` is there
 * when the site accepts OIDC access tokens; with a `clientId` the web portal offers "Sign in
 * with …" (authorization code flow with PKCE) and `cloudgate login --oidc` the device flow.
 */
export const LoginOptionsSchema = z.object({
  oidc: z
    .object({
      issuer: z.string().describe("The identity provider's issuer (its discovery document is `<issuer>/.well-known/openid-configuration`)"),
      clientId: z.string().optional().describe('The public client (no secret, PKCE) to sign in as; absent when the site names none'),
      scope: z.string().describe('The scopes to ask for, space-separated'),
      resource: z.string().optional().describe('The RFC 8707 resource indicator to send in the authorization and token requests, so the access token is for this API'),
    })
    .optional(),
});
export type LoginOptions = z.infer<typeof LoginOptionsSchema>;
export type OidcLogin = NonNullable<LoginOptions['oidc']>;

// ---- quotas and the audit trail (issue 11) ----

const quotaLimit = z.number().int().min(0).max(1_000_000_000);
/** `PUT /v1/owners/:owner/quota`: the whole quota (plain JSON numbers; the config's QuotaSchema coerces strings from the environment). */
export const QuotaRequestSchema = z.object({ maxInstances: quotaLimit, maxClusters: quotaLimit, maxCpus: quotaLimit }).strict();

/** An owner's quota, where it comes from, and what their unfinished clusters hold of it. */
export const QuotaStatusSchema = z.object({
  owner: z.string(),
  quota: QuotaRequestSchema,
  usage: z.object({ instances: z.number().int(), clusters: z.number().int(), cpus: z.number().int() }),
  source: z.enum(['owner', 'default']).describe('owner: set by an admin; default: the site-wide default of the config'),
  updatedAt: z.string().optional().describe('When an admin last set it (absent for the default)'),
});

/** An ISO 8601 time with a zone (`Z` or an offset), normalised to UTC so it compares with stored times. */
const isoTime = z.iso
  .datetime({ offset: true, error: 'must be an ISO 8601 time with a zone, e.g. 2026-01-31T12:00:00Z' })
  .transform((s) => new Date(s).toISOString());

/** `GET /v1/audit`: a page, filtered; any other parameter is a 422. */
export const AuditQuerySchema = PageQuerySchema.extend({
  owner: z.string().min(1).max(64).optional(),
  target: z.string().min(1).max(200).optional(),
  since: isoTime.optional().describe('Records at or after this time'),
  until: isoTime.optional().describe('Records before this time'),
}).strict();

/** One audit record: who did what to which resource, and the answer's status code. */
export const AuditRecordSchema = z.object({
  id: z.number().int(),
  at: z.string().describe('When the answer was sent (ISO, UTC)'),
  owner: z.string(),
  role: z.enum(['user', 'admin']),
  tokenId: z.string().optional().describe('The API token used (its id, never its value); absent for OIDC access tokens'),
  route: z.string().describe('Method and route pattern, e.g. POST /v1/clusters/:id/services/:service/scale (never raw path values)'),
  target: z.string().optional().describe('The cluster, context, definition or token id, or the owner, the request was about'),
  result: z.number().int().describe('HTTP status code of the answer'),
});
