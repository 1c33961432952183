/**
 * OpenAPI 3.1 document generated from the same zod schemas the routes validate with.
 */
import { extendZodWithOpenApi, OpenAPIRegistry, OpenApiGeneratorV31, type ResponseConfig } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import { AGENTS } from '../model/agent-views.js';
import { ContextInputSchema } from '../model/context.js';
import { INSTANCE_STATES } from '../model/status.js';
import * as S from './schemas.js';

// Adds `.openapi()` to zod's prototype. Idempotent.
extendZodWithOpenApi(z);

/**
 * `schema.openapi(...args)`, also for schemas built before zod was extended: zod 4 copies
 * prototype methods onto each schema when it is constructed, so the model's schemas (built
 * at import time, maybe before this module ran) lack the method.
 */
function openapi<T extends z.ZodType>(schema: T, ...args: [string] | [string, Record<string, unknown>] | [Record<string, unknown>]): T {
  return (z.ZodType.prototype.openapi as (...a: unknown[]) => T).apply(schema, args);
}

type Doc = ReturnType<OpenApiGeneratorV31['generateDocument']>;

/** Builds the document (cheap enough to do once per app). */
export function openApiDocument(serverUrl: string): Doc {
  const r = new OpenAPIRegistry();
  // Named schemas become components; routes below reference the named copies.
  const components: z.ZodType[] = [];
  const register = <T extends z.ZodType>(name: string, schema: T): T => {
    const named = openapi(schema, name);
    components.push(named);
    return named;
  };
  const Problem = register('Problem', S.ProblemSchema);
  const Definition = register('ClusterDefinition', S.DocumentedClusterDefinitionSchema);
  const DefinitionRecord = register('ClusterDefinitionRecord', S.ClusterDefinitionRecordSchema);
  const CreateCluster = register('CreateClusterRequest', S.CreateClusterRequestSchema);
  const ClusterCreated = register('ClusterCreated', S.ClusterCreatedSchema);
  const ClusterSummary = register('ClusterSummary', S.ClusterSummarySchema);
  const ClusterDetail = register('ClusterDetail', S.ClusterDetailSchema);
  const PublishedInstance = register('PublishedInstance', S.PublishedInstanceSchema);
  const ClusterEvent = register('ClusterEvent', S.ClusterEventSchema);
  const Scale = register('ScaleRequest', S.ScaleRequestSchema);
  const ScaleResponse = register('ScaleResponse', S.ScaleResponseSchema);
  const Extend = register('ExtendRequest', S.ExtendRequestSchema);
  const Load = register('LoadRequest', S.LoadRequestSchema);
  const LoadResponse = register('LoadResponse', S.LoadResponseSchema);
  const RetryResponse = register('RetryResponse', S.RetryResponseSchema);
  const Pause = register('PauseRequest', S.PauseRequestSchema);
  const PauseResponse = register('PauseResponse', S.PauseResponseSchema);
  const Change = register('ChangeClusterRequest', S.ChangeClusterRequestSchema);
  const ChangeResponse = register('ChangeResponse', S.ChangeResponseSchema);
  const SessionResponse = register('SessionResponse', S.SessionResponseSchema);
  const Teardown = register('TeardownResponse', S.TeardownResponseSchema);
  const Readiness = register('ReadinessReport', S.ReadinessRequestSchema);
  const ReadinessAccepted = register('ReadinessAccepted', S.ReadinessAcceptedSchema);
  const Notice = register('Notice', S.NoticeSchema);
  const ContextInput = register('ContextInput', ContextInputSchema);
  const ContextRecord = register('ContextRecord', S.ContextRecordSchema);
  const PairingRequest = register('PairingRequest', S.PairingRequestSchema);
  const Pairing = register('Pairing', S.PairingSchema);
  const Cloud = register('Cloud', S.CloudSchema);
  const Health = register('Health', S.HealthSchema);
  const CreateToken = register('CreateTokenRequest', S.CreateTokenRequestSchema);
  const ApiToken = register('ApiToken', S.ApiTokenSchema);
  const WhoAmI = register('WhoAmI', S.WhoAmISchema);
  const LoginOptions = register('LoginOptions', S.LoginOptionsSchema);
  const QuotaRequest = register('QuotaRequest', S.QuotaRequestSchema);
  const QuotaStatus = register('QuotaStatus', S.QuotaStatusSchema);
  const AuditRecord = register('AuditRecord', S.AuditRecordSchema);
  r.registerComponent('securitySchemes', 'bearer', {
    type: 'http',
    scheme: 'bearer',
    description: 'An API token cloudgate issued (`cg_…`, `POST /v1/tokens`; `npm start` writes the first admin\'s to `<data dir>/admin-token`) or an OIDC access token (JWT) of the configured issuer',
  });
  r.registerComponent('securitySchemes', 'instanceToken', {
    type: 'http',
    scheme: 'bearer',
    description:
      "The per-instance token from the instance's user-data. The readiness report takes it until it expires (the readiness timeout plus a margin); " +
      'the drain notice and load reports (of its own cluster) take it for as long as its instance lives (not failed, terminating or gone)',
  });

  const json = (schema: z.ZodType, description: string): ResponseConfig => ({ description, content: { 'application/json': { schema } } });
  const problem = (description: string): ResponseConfig => ({ description, content: { 'application/problem+json': { schema: Problem } } });
  const body = (schema: z.ZodType) => ({ body: { required: true, content: { 'application/json': { schema } } } });
  const common = { 400: problem('Malformed JSON'), 413: problem('Body too large'), 415: problem('Body is not JSON'), 422: problem('Validation failed') };
  const clusterId = z.object({ id: openapi(z.string(), { description: 'Cluster id', example: 't3-box-k2x9qa' }) });
  const unavailable = problem('Temporal or the worker is not reachable');
  const limitQuery = openapi(z.string().regex(/^[0-9]+$/).optional(), {
    description: `Items per page, 1 to ${S.PAGE_LIMIT_MAX}; default ${S.PAGE_LIMIT_DEFAULT}`,
  });
  const cursorQuery = openapi(z.string().optional(), { description: 'The `next` of the previous page (opaque)' });
  /** The query of the list routes: a page, and (admins) one owner's items. */
  const listQuery = z.object({
    owner: openapi(z.string().optional(), { description: "Admins: only this owner's items (a user sees only their own anyway)" }),
    cursor: cursorQuery,
    limit: limitQuery,
  });

  r.registerPath({
    method: 'post',
    path: '/v1/cluster-definitions',
    summary: 'Store a cluster definition',
    request: body(Definition),
    responses: { 201: json(DefinitionRecord, 'Stored; Location names it'), ...common },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/cluster-definitions',
    summary: 'List cluster definitions (one\'s own; an admin: all), a page at a time',
    request: { query: listQuery },
    responses: { 200: json(S.pageOf(DefinitionRecord), 'Definitions, oldest first'), 422: problem('Unknown query parameter, bad limit or cursor') },
  });
  r.registerPath({
    method: 'delete',
    path: '/v1/cluster-definitions/{id}',
    summary: 'Delete a cluster definition (soft: clusters made from it keep reading it)',
    request: { params: z.object({ id: z.string() }) },
    responses: { 204: { description: 'Deleted' }, 404: problem('Unknown definition'), 409: problem('A running cluster was made from it') },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/cluster-definitions/{id}',
    summary: 'Get a cluster definition',
    request: { params: z.object({ id: z.string() }) },
    responses: { 200: json(DefinitionRecord, 'The definition'), 404: problem('Unknown definition') },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/clusters',
    summary: 'Deploy a cluster from a definition (starts its workflow)',
    description:
      "Every cloud a service may land on is checked before anything is stored: the request's `cloud` for services without a " +
      '`placement`, each cloud of its placement otherwise. An unregistered cloud, an offering no flavor of the cloud fits, an image ' +
      'the cloud does not offer or a user-data larger than the cloud accepts is a 422 listing every such error, each naming the ' +
      'service and the cloud. Errors about a placement cloud point into the definition (`/definition/services/<i>/placement/clouds/<j>` ' +
      'for an unregistered cloud or a user-data too large, `.../offering`, `.../image`); the others point at `/cloud` (images: field ' +
      '`definition.services[<i>].image`). The workflow carries the search attribute `CloudgateClouds`: every cloud the cluster may use. ' +
      'A cluster with `windows` (the definition\'s, or the request\'s instead) gets one Temporal Schedule per window ' +
      '(`cluster-window/<id>/<n>`, on the Temporal UI\'s Schedules page) and is active only inside them: created outside every window it is ' +
      'PAUSED at once with nothing deployed (its message and `nextWindowAt` say when the next opens), and the end of a window pauses it.',
    request: {
      ...body(CreateCluster),
      headers: z.object({
        'Idempotency-Key': openapi(S.IdempotencyKeySchema.optional(), { description: 'Makes the request safe to retry' }),
      }),
    },
    responses: {
      202: json(ClusterCreated, 'Accepted; deployment runs in the background'),
      ...common,
      403: problem('Over the owner\'s quota (urn:cloudgate:problem:quota-exceeded: names the quota, the usage and the request); nothing stored'),
      503: unavailable,
    },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/clusters',
    summary: 'List clusters with their states, a page at a time (TERMINATED ones only with ?state=TERMINATED)',
    request: { query: listQuery.extend({ state: openapi(S.ClusterStateSchema.optional(), { description: 'Only clusters in this state' }) }) },
    responses: { 200: json(S.pageOf(ClusterSummary), 'Clusters, oldest first'), 422: problem('Unknown query parameter, bad state, limit or cursor'), 503: unavailable },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/clusters/{id}/services/{service}',
    summary: 'One service of the cluster as last published (answers without a worker)',
    request: { params: clusterId.extend({ service: z.string() }) },
    responses: {
      200: json(S.ServiceViewSchema, 'The service: state, counts, message, retryingAt, observedAt, links to its instances'),
      404: problem('Unknown cluster, or a service its definition does not have'),
    },
  });
  const noCache = { 'Cache-Control': { description: 'no-cache: revalidate before reusing', schema: { type: 'string' as const } } };
  r.registerPath({
    method: 'get',
    path: '/v1/clusters/{id}',
    summary: "Cluster status with each service's counts, as the workflows last published it (answers without a worker)",
    description:
      'Read from the store, never from the workflows. Before the cluster workflow has published, the state is its search attribute ' +
      '(PENDING when just submitted), `seq` is 0 and `observedAt` and the ETag are absent. Instances: `links.instances`; events: `links.events`.',
    request: {
      params: clusterId,
      headers: z.object({ 'If-None-Match': openapi(z.string().optional(), { description: 'An ETag of an earlier answer: 304 if unchanged' }) }),
    },
    responses: {
      200: {
        ...json(ClusterDetail, 'The published status'),
        headers: {
          ETag: { description: 'Weak; changes with every publish of the cluster or one of its services', schema: { type: 'string' } },
          ...noCache,
        },
      },
      304: { description: 'Unchanged since the ETag in If-None-Match' },
      404: problem('Unknown cluster'),
      503: problem('Temporal is not reachable (only asked before the cluster workflow has published)'),
    },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/clusters/{id}/instances',
    summary: "The cluster's instances, by service then ordinal, a page at a time (answers without a worker)",
    request: {
      params: clusterId,
      query: z.object({
        service: openapi(z.string().optional(), { description: 'Only this service’s instances' }),
        state: openapi(z.enum(INSTANCE_STATES).optional(), { description: 'Only instances in this state' }),
        cursor: cursorQuery,
        limit: limitQuery,
      }),
    },
    responses: {
      200: { ...json(S.pageOf(PublishedInstance), 'One page of instances'), headers: noCache },
      404: problem('Unknown cluster, or a service its definition does not have'),
      422: problem('Bad state, limit or cursor'),
    },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/clusters/{id}/events',
    summary: 'What happened to the cluster and its services, oldest first, a page at a time (answers without a worker)',
    request: { params: clusterId, query: z.object({ cursor: cursorQuery, limit: limitQuery }) },
    responses: {
      200: { ...json(S.pageOf(ClusterEvent), 'One page of events'), headers: noCache },
      404: problem('Unknown cluster'),
      422: problem('Bad limit or cursor'),
    },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/clusters/{id}/services/{service}/scale',
    summary: "Set a service's instance count",
    request: { params: clusterId.extend({ service: z.string() }), ...body(Scale) },
    responses: {
      200: json(ScaleResponse, 'New desired count accepted'),
      ...common,
      403: problem('A scale-up over the owner\'s quota (urn:cloudgate:problem:quota-exceeded); the desired count is unchanged'),
      404: problem('Unknown cluster or service'),
      409: problem('Cluster is not active'),
      503: unavailable,
    },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/clusters/{id}/services/{service}/load',
    summary: "Report a service's load (autoscale)",
    description:
      'For a service with `autoscale`: grows it to ceil((queued + running) / jobsPerInstance) within min and max; shrinks it only by instances named in `idleInstances` for scaleDownIdleSeconds in a row; holds within the cooldown. The decision, with its inputs, is an event of the cluster. A report also keeps a session alive. ' +
      "The owner's bearer, or the phone-home token of any live instance of this cluster (a head node reports without a user's credentials); another cluster's token answers 404.",
    security: [{ bearer: [] }, { instanceToken: [] }],
    request: { params: clusterId.extend({ service: z.string() }), ...body(Load) },
    responses: {
      200: json(LoadResponse, 'What the cluster decided'),
      ...common,
      401: problem("Missing, malformed, expired or revoked bearer; or a phone-home token whose signature is bad or whose instance no longer lives"),
      404: problem('Unknown cluster or service (or another cluster\'s token)'),
      409: problem('The service has no autoscale, or the cluster is not active'),
      503: unavailable,
    },
  });
  r.registerPath({
    method: 'put',
    path: '/v1/clusters/{id}',
    summary: 'Change a running cluster to another definition or other context versions (rolling)',
    description:
      'Checked as a submission is (on the cluster’s cloud). Services whose image, offering, placement or context version changed are replaced instance by instance in dependency order, maxUnavailable at a time and never below their min ready (a service at its min gets a new instance before an old one goes); added services start, removed ones are torn down once the rest succeeded; a service that fails on the new spec rolls the whole change back. `change` in the cluster status and its events follow it; each instance shows the `spec` it runs.',
    request: { params: clusterId, ...body(Change) },
    responses: {
      202: json(ChangeResponse, 'The change started: what it replaces, adds, removes and keeps'),
      ...common,
      404: problem('Unknown cluster'),
      409: problem('A change is in progress, nothing would change, the cluster is paused, still deploying for the first time, or not active'),
      422: problem('Unknown definition, a cloud or offering that does not fit, a context version that does not exist, or bad JSON'),
      503: unavailable,
    },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/clusters/{id}/pause',
    summary: 'Vacate a cluster, keeping it (PAUSING → PAUSED)',
    description:
      'After graceSeconds (default 0: at once) every instance is terminated and a sweep verifies nothing is left on any cloud; the cluster keeps its id, definition, pinned contexts and history. Scale, load and retry answer 409 until it resumes. ' +
      'A user\'s pause holds across windows: an opening window does not resume it. Pausing a cluster the end of a window paused makes that pause the user\'s (the next window does not resume it).',
    request: { params: clusterId, ...body(Pause) },
    responses: {
      200: json(PauseResponse, 'Pausing'),
      ...common,
      404: problem('Unknown cluster'),
      409: problem('Already pausing or paused, or not active'),
      503: unavailable,
    },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/clusters/{id}/resume',
    summary: 'Deploy a PAUSED cluster again, in dependency order',
    description:
      'Also a cluster paused outside its windows: it deploys now and stays active until the end of the window open then, or else of the next one.',
    request: { params: clusterId },
    responses: {
      200: json(PauseResponse, 'Resuming (DEPLOYING)'),
      404: problem('Unknown cluster'),
      409: problem('Not PAUSED'),
      422: problem('Unknown query parameter'),
      503: unavailable,
    },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/clusters/{id}/retry',
    summary: 'Re-run the failed services now',
    description:
      'Services that are FAILED (under failurePolicy keep, between rounds of attempts) or WAITING_CAPACITY try again now instead of after their backoff. Their instances keep their names (the cloud\'s idempotency keys), so a retry never makes a duplicate.',
    request: { params: clusterId },
    responses: {
      200: json(RetryResponse, 'The services told to try again'),
      404: problem('Unknown cluster'),
      409: problem('Nothing to retry, or the cluster is not active'),
      422: problem('Unknown query parameter'),
      503: unavailable,
    },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/clusters/{id}/keepalive',
    summary: "Reset a session's idle clock",
    description: 'A cluster with `lifetime.idleSeconds` tears itself down once it has had no keepalive for that long. Answers the new deadlines.',
    request: { params: clusterId },
    responses: {
      200: json(SessionResponse, "The session's deadlines"),
      404: problem('Unknown cluster'),
      409: problem('The cluster has no lifetime, or is not active'),
      422: problem('Unknown query parameter'),
      503: unavailable,
    },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/clusters/{id}/extend',
    summary: "Move a session's maximum lifetime",
    description: "Adds `seconds` to the cluster's `lifetime.maxSeconds`, within the site-wide cap (`CLOUDGATE_MAX_LIFETIME_SECONDS`).",
    request: { params: clusterId, ...body(Extend) },
    responses: {
      200: json(SessionResponse, "The session's deadlines"),
      ...common,
      404: problem('Unknown cluster'),
      409: problem('The cluster has no maximum lifetime, or is not active'),
      503: unavailable,
    },
  });
  r.registerPath({
    method: 'delete',
    path: '/v1/clusters/{id}',
    summary: 'Tear a cluster down (idempotent)',
    request: { params: clusterId },
    responses: { 202: json(Teardown, 'Teardown requested, or the final state if already closed'), 404: problem('Unknown cluster'), 503: unavailable },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/instances/{instanceId}/readiness',
    summary: 'Phone home: a guest reports its readiness',
    security: [{ instanceToken: [] }],
    request: { params: z.object({ instanceId: z.string() }), ...body(Readiness) },
    responses: {
      202: json(ReadinessAccepted, 'Delivered to the service workflow'),
      ...common,
      401: problem('Missing, invalid or expired token'),
      410: problem('The service is no longer running'),
      503: unavailable,
    },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/instances/{instanceId}/notice',
    summary: 'Drain notice: what a guest should know of its cluster\'s plans for it',
    description:
      '`{drain: {until, reason}}` while the cluster is PAUSING (its instances are terminated at `until`), `{}` otherwise. From the read model: a poll costs no workflow anything. ' +
      'The instance\'s phone-home token is good here for as long as the instance lives.',
    security: [{ instanceToken: [] }],
    request: { params: z.object({ instanceId: z.string() }) },
    responses: {
      200: json(Notice, 'The notice (`{}`: none)'),
      401: problem('Missing or invalid token, another instance\'s, or its instance no longer lives'),
    },
  });
  const contextId = z.object({ id: openapi(z.string(), { description: 'Context id', example: 'ctx-0123456789ab' }) });
  const versionQuery = z.object({
    version: openapi(z.string().regex(/^[1-9][0-9]*$/).optional(), { description: 'A version number; default the latest' }),
  });
  const previewQuery = versionQuery.extend({
    agent: openapi(z.enum(AGENTS).optional(), {
      description: 'Show what one agent reads instead of the whole user-data: µCernVM its sourced variables, amiconfig its INI sections, cloud-init its cloud-config parts and their merge rules',
    }),
  });
  const deleted = problem('The context was deleted (detail and `deletedAt` say when)');
  r.registerPath({
    method: 'post',
    path: '/v1/contexts',
    summary: 'Store a context definition (version 1); passwords are kept as sha512-crypt hashes, secrets encrypted and never returned',
    request: body(ContextInput),
    responses: { 201: json(ContextRecord, 'Stored; Location names it'), ...common },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/contexts',
    summary: 'List contexts (latest version of each; one\'s own, an admin: all), a page at a time',
    request: { query: listQuery },
    responses: { 200: json(S.pageOf(ContextRecord), 'Contexts, oldest first'), 422: problem('Unknown query parameter, bad limit or cursor') },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/contexts/{id}',
    summary: 'Get a context (latest version, or ?version=n)',
    request: { params: contextId, query: versionQuery },
    responses: { 200: json(ContextRecord, 'The context version'), 404: problem('Unknown context or version'), 410: deleted, 422: problem('Bad version') },
  });
  r.registerPath({
    method: 'put',
    path: '/v1/contexts/{id}',
    summary: 'Store a new immutable version of a context; leaving out "secrets" keeps the previous values, and a user with "passwordSet": true and no "password" keeps its password',
    request: { params: contextId, ...body(ContextInput) },
    responses: { 200: json(ContextRecord, 'The new version'), ...common, 404: problem('Unknown context'), 410: deleted },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/contexts/{id}/versions',
    summary: 'Every version of a context, a page at a time',
    request: { params: contextId, query: z.object({ cursor: cursorQuery, limit: limitQuery }) },
    responses: { 200: json(S.pageOf(ContextRecord), 'Versions, oldest first'), 404: problem('Unknown context'), 410: deleted },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/contexts/{id}/preview',
    summary: 'The user-data the context renders to, or what one agent reads of it, with secrets and the phone-home token masked',
    request: { params: contextId, query: previewQuery },
    responses: {
      200: { description: 'Multipart MIME user-data, or the agent\'s view of it', content: { 'text/plain': { schema: { type: 'string' } } } },
      404: problem('Unknown context or version'),
      410: deleted,
      422: problem('Bad version or agent'),
    },
  });
  r.registerPath({
    method: 'delete',
    path: '/v1/contexts/{id}',
    summary: 'Delete a context (soft: clusters pinned to one of its versions still render it); every route then answers 410',
    request: { params: contextId },
    responses: { 204: { description: 'Deleted' }, 404: problem('Unknown context'), 410: problem('Already deleted') },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/contexts/{id}/pairings',
    summary: "Pair a laptop CernVM (the context's owner only): a 12-symbol PIN (XXXX-XXXX-XXXX), valid 5 minutes, that fetches the user-data once",
    request: {
      params: contextId,
      body: { required: false, description: 'Default: the latest version', content: { 'application/json': { schema: PairingRequest } } },
    },
    responses: {
      201: json(Pairing, 'The PIN; Location is its user-data link'),
      ...common,
      403: problem('Not the owner of the context'),
      404: problem('Unknown context or version'),
      410: deleted,
      429: problem('The owner already holds the most live PINs; see Retry-After'),
      503: problem('No free PIN found; retry'),
    },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/pair/{pin}',
    summary: "A paired laptop CernVM's user-data with real secret values and no phone-home part; single use (Cache-Control: no-store)",
    request: { params: z.object({ pin: openapi(z.string(), { description: 'The PIN (any case, dashes optional)', example: '7KQ2-M9XD-4HWT' }) }) },
    responses: {
      200: { description: 'Multipart MIME user-data', content: { 'text/plain': { schema: { type: 'string' } } } },
      404: problem('No usable pairing: unknown, malformed, used, expired or used-up PINs and PINs of a deleted context all get this one answer'),
      429: problem('Too many failed PIN lookups from this client; see Retry-After'),
    },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/tokens',
    summary: 'Issue an API token (admin only); the value is in this answer only',
    request: body(CreateToken),
    responses: { 201: json(ApiToken.extend({ token: z.string(), expiresAt: z.string().nullable() }), 'Issued; keep the token, it is shown once'), 403: problem('Not an admin'), ...common },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/tokens',
    summary: "List API tokens (never their values): one's own, or an admin's choice with ?owner=; a page at a time",
    request: { query: listQuery },
    responses: { 200: json(S.pageOf(ApiToken), 'Tokens, oldest first') },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/me',
    summary: 'Who the bearer is: its owner, role and how it was proven (the web portal checks a pasted token with it)',
    responses: { 200: json(WhoAmI, 'The principal every route sees for this bearer') },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/login-options',
    summary: "How to sign in besides an API token: the site's OIDC issuer, public client, scopes and resource (public; the web portal and `cloudgate login --oidc` read it)",
    responses: { 200: json(LoginOptions, '`oidc` when the site accepts OIDC access tokens; without a `clientId` it offers no sign-in of its own') },
  });
  r.registerPath({
    method: 'delete',
    path: '/v1/tokens/{id}',
    summary: 'Revoke an API token at once',
    request: { params: z.object({ id: z.string() }) },
    responses: { 204: { description: 'Revoked; its next use is a 401' }, 404: problem('Unknown token (or someone else\'s)') },
  });
  const ownerParam = z.object({ owner: openapi(z.string(), { description: 'Owner name', example: 'alice' }) });
  r.registerPath({
    method: 'put',
    path: '/v1/owners/{owner}/quota',
    summary: "Set an owner's quota (admin only); clusters already running are not touched",
    request: { params: ownerParam, ...body(QuotaRequest) },
    responses: { 200: json(QuotaStatus, 'The quota now in force, with current usage'), 403: problem('Not an admin'), ...common },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/owners/{owner}/quota',
    summary: "An owner's quota (their own, else the site default) and what their unfinished clusters hold of it (the owner or an admin)",
    request: { params: ownerParam },
    responses: { 200: json(QuotaStatus, 'Quota and usage'), 404: problem("Another user's quota"), 422: problem('Not an owner name') },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/audit',
    summary: 'The audit trail of state-changing requests, newest first, a page at a time (admin only)',
    request: {
      query: z.object({
        owner: openapi(z.string().optional(), { description: 'Only this owner\'s requests' }),
        target: openapi(z.string().optional(), { description: 'Only requests about this resource (cluster, context, definition or token id, or owner)' }),
        since: openapi(z.string().optional(), { description: 'ISO time with zone: records at or after it' }),
        until: openapi(z.string().optional(), { description: 'ISO time with zone: records before it' }),
        cursor: cursorQuery,
        limit: limitQuery,
      }),
    },
    responses: {
      200: json(S.pageOf(AuditRecord), 'One page of audit records'),
      403: problem('Not an admin'),
      422: problem('Bad or unknown query parameter, limit or cursor'),
    },
  });
  r.registerPath({
    method: 'get',
    path: '/v1/clouds',
    summary: 'Clouds the workers can deploy to: registry information, the offerings the cloud catalogue last listed, quota and usage',
    description:
      'Offerings come from the cloud catalogue (the `cloud-catalogue` Temporal Schedule, every 5 minutes, and `POST /v1/clouds/{id}/refresh`); ' +
      'a cloud that has not answered yet lists none, one that stopped answering keeps those it listed before.',
    responses: { 200: json(S.listOf(Cloud), 'Registered clouds'), 422: problem('Unknown query parameter') },
  });
  r.registerPath({
    method: 'post',
    path: '/v1/clouds/{id}/refresh',
    summary: "Lists one cloud's offerings now (admin only)",
    description:
      'Runs the cloud catalogue workflow for this cloud (workflow id `cloud-catalogue/<cloud>/<time>-<random>`) and waits for it (at most 45 s): ' +
      'its adapter lists the offerings (reading its credentials there) and the store record is written. No body.',
    request: { params: z.object({ id: openapi(z.string(), { description: 'The cloud\'s name (as `GET /v1/clouds` lists it)', example: 'sim' }) }) },
    responses: {
      200: json(Cloud, 'The refreshed cloud, as `GET /v1/clouds` shows it'),
      403: problem('Not an admin'),
      404: problem('No cloud of that name'),
      422: problem('Unknown query parameter'),
      502: problem('The cloud did not answer (urn:cloudgate:problem:cloud-unreachable): `cloud`, `error`, `errorKind` and `offeringsKept` say which and why; the offerings listed before are kept'),
      503: problem('Temporal or a worker serving the cloud is not reachable, or the refresh did not finish in time'),
    },
  });
  r.registerPath({
    method: 'get',
    path: '/healthz',
    summary: 'Liveness: store and Temporal reachable',
    responses: { 200: json(Health, 'Healthy'), 503: problem('A dependency is down') },
  });
  r.registerPath({
    method: 'get',
    path: '/metrics',
    summary: 'Prometheus metrics (text format 0.0.4): requests, clusters, instances, quotas, capacity, phone-home',
    description:
      'Takes the metrics token (`CLOUDGATE_METRICS_TOKEN`, else `<data dir>/metrics-token`) or an admin\'s bearer: owner names are labels. ' +
      'Gauges are read from the read model at each scrape. Metric names and labels: README, "Metrics and logs".',
    responses: {
      200: { description: 'Prometheus text exposition format', content: { 'text/plain; version=0.0.4': { schema: { type: 'string' } } } },
      403: problem('A user\'s bearer: only the metrics token or an admin may scrape'),
      422: problem('Unknown query parameter'),
    },
  });
  r.registerPath({
    method: 'get',
    path: '/openapi.json',
    summary: 'This document',
    responses: { 200: { description: 'OpenAPI 3.1 document', content: { 'application/json': { schema: { type: 'object' } } } } },
  });

  const doc = new OpenApiGeneratorV31([...components, ...r.definitions]).generateDocument({
    openapi: '3.1.0',
    info: {
      title: 'cloudgate',
      version: '0.1.0',
      description:
        'Durable cloud aggregator: CernVM clusters on any cloud, as Temporal workflows. Errors are RFC 9457 problem+json. ' +
        "Every route needs a bearer except the public ones (security: []); another owner's resources answer 404.",
    },
    servers: [{ url: serverUrl }],
    security: [{ bearer: [] }],
  });
  // Public routes opt out; every other route may answer 401.
  const PUBLIC = new Set(['GET /healthz', 'GET /openapi.json', 'GET /v1/login-options', 'GET /v1/pair/{pin}']);
  for (const [p, ops] of Object.entries(doc.paths ?? {})) {
    for (const [method, op] of Object.entries(ops as Record<string, { security?: unknown[]; responses?: Record<string, unknown> }>)) {
      if (PUBLIC.has(`${method.toUpperCase()} ${p}`)) op.security = [];
      else if (!op.security) op.responses = { ...op.responses, 401: { description: 'Missing, malformed, expired or revoked bearer (WWW-Authenticate: Bearer)', content: { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } } } };
    }
  }
  return doc;
}
