/**
 * Cluster definitions: what a user submits once and instantiates many times.
 * Pure zod schemas and the rules that need more than one field (dependencies, bounds).
 */
import { z } from 'zod';
import { findCycle } from './graph.js';
import { WindowsSchema } from './windows.js';

/** Names used in workflow ids, instance names and cloud tags: short, DNS-label-like. */
export const NameSchema = z
  .string()
  .min(1)
  .max(40)
  .regex(/^[a-z][a-z0-9-]*[a-z0-9]$|^[a-z]$/, 'must be lower-case letters, digits and "-", starting with a letter');

export const OfferingSchema = z
  .object({
    cpus: z.number().int().min(1).max(512),
    memoryMiB: z.number().int().min(64).max(4_194_304),
    diskGiB: z.number().int().min(1).max(65_536),
  })
  .strict();
export type Offering = z.infer<typeof OfferingSchema>;

/** How a service places its instances over several clouds: `fill` them in order, or `spread` evenly. */
export const PLACEMENT_STRATEGIES = ['fill', 'spread'] as const;
export type PlacementStrategy = (typeof PLACEMENT_STRATEGIES)[number];

/**
 * Where a service's instances may go (issue 12): the clouds in order of preference and how
 * to use them. `fill` uses the first cloud with room and spills to the next when it is full
 * or failing; `spread` balances instances over the clouds with room. Without it, the
 * cluster's `cloud`.
 */
export const PlacementSchema = z
  .object({
    clouds: z
      .array(NameSchema)
      .min(1)
      .max(16)
      .refine((c) => new Set(c).size === c.length, 'must not name a cloud twice'),
    strategy: z.enum(PLACEMENT_STRATEGIES).default('fill'),
  })
  .strict();
export type Placement = z.infer<typeof PlacementSchema>;

/** How often a pulled load (`autoscale.loadUrl`) is read when `pollSeconds` is not given, and the most often it may be. */
export const DEFAULT_LOAD_POLL_SECONDS = 60;
export const MIN_LOAD_POLL_SECONDS = 5;

/** Placeholders a `loadUrl` may hold, filled in per cluster (a definition is instantiated many times). */
export const LOAD_URL_PLACEHOLDERS = ['{clusterId}', '{service}'] as const;

/** The URL a cluster's service reads its load from: `loadUrl` with its placeholders filled in. */
export function expandLoadUrl(template: string, at: { clusterId: string; service: string }): string {
  return template.replaceAll('{clusterId}', encodeURIComponent(at.clusterId)).replaceAll('{service}', encodeURIComponent(at.service));
}

/** The `host[:port]` of an http(s) URL, by its text (workflows name it in summaries without a URL parser). */
export const loadUrlHost = (url: string): string => /^[a-z][a-z0-9+.-]*:\/\/(?:[^/?#@]*@)?([^/?#]*)/i.exec(url)?.[1] ?? url;

/**
 * Why a `loadUrl` cannot be one, by its shape alone, or undefined. Where it points is judged
 * when it is read, by the address policy (activities/load.ts): a host's addresses can change,
 * and the hosts a site allows are the worker's setting.
 */
function loadUrlShapeProblem(template: string): string | undefined {
  let u: URL;
  try {
    u = new URL(expandLoadUrl(template, { clusterId: 'c-abcdef', service: 's' }));
  } catch {
    return 'is not a URL';
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return `uses the scheme "${u.protocol.slice(0, -1)}"; only http and https are read`;
  if (u.username || u.password) return 'carries credentials; put none in the URL (it is part of the definition, which its owner and the Temporal history see)';
  if (u.hash) return 'has a #fragment, which is never sent';
  return undefined;
}

/**
 * Elastic scaling of a service from the load its head node reports (issue 13): as many
 * instances as `ceil((queued + running) / jobsPerInstance)` within `min`/`max`; down only by
 * instances reported idle for `scaleDownIdleSeconds`; no change within `cooldownSeconds` of
 * the last one. The load is pushed (`POST …/load`), or pulled: with `loadUrl` the cluster reads
 * `{queued, running, idleInstances?}` from it every `pollSeconds`.
 */
export const AutoscaleSchema = z
  .object({
    jobsPerInstance: z.number().int().min(1).max(100_000),
    scaleDownIdleSeconds: z.number().int().min(0).max(86_400).default(300),
    cooldownSeconds: z.number().int().min(0).max(86_400).default(60),
    /** An http(s) URL answering the service's load as JSON; `{clusterId}` and `{service}` are filled in per cluster. */
    loadUrl: z
      .string()
      .max(2000)
      .superRefine((url, ctx) => {
        const problem = loadUrlShapeProblem(url);
        if (problem) ctx.addIssue({ code: 'custom', message: `loadUrl ${problem}` });
      })
      .optional(),
    /** Seconds between two reads of `loadUrl` (default {@link DEFAULT_LOAD_POLL_SECONDS}). */
    pollSeconds: z.number().int().min(MIN_LOAD_POLL_SECONDS).max(86_400).optional(),
  })
  .strict()
  .refine((a) => a.pollSeconds === undefined || a.loadUrl !== undefined, { message: 'pollSeconds needs a loadUrl (a pushed load is not polled)', path: ['pollSeconds'] });
export type Autoscale = z.infer<typeof AutoscaleSchema>;

export const ServiceDefinitionSchema = z
  .object({
    name: NameSchema,
    /** The context (`ctx-…`) its instances are contextualized with; the cluster pins its version at submission. */
    contextId: z.string().min(1).max(200).optional(),
    /** Pin this version of the context instead of the latest one at submission. */
    contextVersion: z.number().int().min(1).optional(),
    offering: OfferingSchema,
    image: z.string().min(1).max(500),
    min: z.number().int().min(0).max(10_000).default(1),
    max: z.number().int().min(0).max(10_000).optional(),
    dependsOn: z.array(NameSchema).max(100).default([]),
    /** Seconds a booted guest has to phone home ready before it is replaced. */
    readinessTimeoutSeconds: z.number().int().min(5).max(86_400).default(600),
    /** The clouds its instances may go to; unset: the cluster's cloud. */
    placement: PlacementSchema.optional(),
    /** Scale with the load its head node reports (needs `max`). */
    autoscale: AutoscaleSchema.optional(),
  })
  .strict()
  .refine((s) => !s.autoscale || s.max !== undefined, { message: 'autoscale needs a max (the most instances it may grow to)', path: ['max'] });
export type ServiceDefinition = z.infer<typeof ServiceDefinitionSchema>;

/**
 * How long a cluster may live (issue 13, sessions): it tears itself down once it has had no
 * keepalive for `idleSeconds`, or `maxSeconds` after it started (an admin-set site-wide cap
 * bounds `maxSeconds` and every extension). A definition carries defaults; a submission may
 * override either.
 */
export const LifetimeSchema = z
  .object({
    idleSeconds: z.number().int().min(10).max(31_536_000).optional(),
    maxSeconds: z.number().int().min(10).max(31_536_000).optional(),
  })
  .strict()
  .refine((l) => l.idleSeconds !== undefined || l.maxSeconds !== undefined, 'name idleSeconds, maxSeconds or both');
export type Lifetime = z.infer<typeof LifetimeSchema>;

export const FailurePolicySchema = z.enum(['keep', 'rollback']);
export type FailurePolicy = z.infer<typeof FailurePolicySchema>;

/** The rules across fields: unique names, known dependencies, no cycles, min ≤ max. */
export const ClusterDefinitionSchema = z
  .object({
    name: NameSchema,
    description: z.string().max(2000).optional(),
    failurePolicy: FailurePolicySchema.default('keep'),
    /** Default lifetime of the clusters made from it (a submission may override it). */
    lifetime: LifetimeSchema.optional(),
    /** When its clusters are active (issue 13): inside these windows, PAUSED outside them (a submission may replace them). */
    windows: WindowsSchema.optional(),
    services: z.array(ServiceDefinitionSchema).min(1).max(200),
  })
  .strict()
  .superRefine((def, ctx) => {
    const seen = new Map<string, number>();
    def.services.forEach((s, i) => {
      if (seen.has(s.name)) {
        ctx.addIssue({
          code: 'custom',
          path: ['services', i, 'name'],
          message: `duplicate service name "${s.name}" (also services[${seen.get(s.name)}])`,
        });
      } else seen.set(s.name, i);
      if (s.contextVersion !== undefined && s.contextId === undefined) {
        ctx.addIssue({ code: 'custom', path: ['services', i, 'contextVersion'], message: 'contextVersion needs a contextId' });
      }
      if (s.max !== undefined && s.min > s.max) {
        ctx.addIssue({ code: 'custom', path: ['services', i, 'min'], message: `min (${s.min}) is greater than max (${s.max})` });
      }
      s.dependsOn.forEach((d, j) => {
        if (d === s.name) {
          ctx.addIssue({ code: 'custom', path: ['services', i, 'dependsOn', j], message: `service "${s.name}" depends on itself` });
        }
      });
    });
    def.services.forEach((s, i) =>
      s.dependsOn.forEach((d, j) => {
        if (!seen.has(d)) {
          ctx.addIssue({
            code: 'custom',
            path: ['services', i, 'dependsOn', j],
            message: `unknown dependency "${d}" of service "${s.name}"`,
          });
        }
      }),
    );
    const cycle = findCycle(def.services.map((s) => ({ name: s.name, dependsOn: s.dependsOn.filter((d) => seen.has(d) && d !== s.name) })));
    if (cycle) {
      ctx.addIssue({ code: 'custom', path: ['services'], message: `dependency cycle: ${cycle.join(' → ')}` });
    }
  });
export type ClusterDefinitionInput = z.input<typeof ClusterDefinitionSchema>;
export type ClusterDefinition = z.infer<typeof ClusterDefinitionSchema>;

/** The clouds a service's instances may go to, in order: its placement's, else the cluster's cloud. */
export const serviceClouds = (service: Pick<ServiceDefinition, 'placement'>, clusterCloud: string): string[] =>
  service.placement?.clouds ?? [clusterCloud];

/** Every cloud any service of a cluster may use, in first-named order (teardown sweeps each; the `CloudgateClouds` search attribute lists them). */
export const clusterClouds = (services: readonly Pick<ServiceDefinition, 'placement'>[], clusterCloud: string): string[] => [
  ...new Set(services.flatMap((s) => serviceClouds(s, clusterCloud))),
];
