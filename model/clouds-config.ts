/**
 * The cloud registry file (`CLOUDGATE_CLOUDS`, YAML or JSON): which clouds a worker can
 * deploy to and how to reach them. Credentials are references (an environment variable or
 * a file), resolved only inside activities, never values.
 */
import { z } from 'zod';
import { NameSchema } from './definition.js';
import { DEFAULT_SIM_IMAGES, IMAGE_NAME_PATTERN, imageNames } from './images.js';

/** Where a secret lives; the value itself is never in the config, a workflow or a response. */
export const SecretRefSchema = z.union([
  z.object({ env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be an environment variable name') }).strict(),
  z.object({ file: z.string().min(1) }).strict(),
]);
export type SecretRef = z.infer<typeof SecretRefSchema>;

/** How a reference is shown (API, logs): `env:NAME` or `file:/path`. */
export const describeSecretRef = (ref: SecretRef): string => ('env' in ref ? `env:${ref.env}` : `file:${ref.file}`);

const ImageNameSchema = z
  .string()
  .regex(IMAGE_NAME_PATTERN, 'an image name is letters, digits, ".", "_" and "-", starting with a letter or digit, at most 100 characters');

/**
 * The images a cloud offers: the names definitions use (`cernvm4-micro`) mapped to the
 * cloud's own reference (libvirt disk file or `pool/volume`, AMI id, template id, os_tpl
 * term), or a list of names that are their own reference. The only images a cluster on the
 * cloud may name (model/images.ts); at least one.
 */
export const ImagesSchema = z
  .union([z.array(ImageNameSchema).min(1), z.record(ImageNameSchema, z.string().min(1).max(1000))])
  .transform((v, ctx): Record<string, string> => {
    const entries: [string, string][] = Array.isArray(v) ? v.map((n) => [n, n]) : Object.entries(v);
    if (entries.length === 0) ctx.addIssue({ code: 'custom', message: 'a cloud must offer at least one image' });
    return Object.fromEntries(entries);
  });

/**
 * What cloudgate may use of a cloud, summed over every cluster and owner (issue 12): the
 * capacity ledger (store/index.ts) reserves before each create and refuses beyond it. Unset
 * fields (or no quota) are unlimited.
 */
export const CloudQuotaSchema = z
  .object({
    instances: z.number().int().min(0).optional(),
    cpus: z.number().int().min(0).optional(),
    memoryMiB: z.number().int().min(0).optional(),
  })
  .strict();
export type CloudQuota = z.infer<typeof CloudQuotaSchema>;

const base = { name: NameSchema, images: ImagesSchema, quota: CloudQuotaSchema.optional() };

/** `npm start`'s simulated cloud offers the default images when its entry names none. */
export const SimCloudConfigSchema = z
  .object({
    ...base,
    images: ImagesSchema.default(() => ({ ...DEFAULT_SIM_IMAGES })),
    kind: z.literal('sim'),
    /**
     * Live instances the simulated cloud itself has room for: creates beyond it are answered
     * `CapacityExhausted`, as a full cloud does (unset: unlimited).
     */
    capacity: z.number().int().min(0).optional(),
    /** Share of creates the simulated cloud answers with a (retryable) internal error, as a failing cloud does (default 0). */
    createFailureRate: z.number().min(0).max(1).optional(),
  })
  .strict();

/** One hypervisor host of a libvirt farm and what cloudgate may place on it. */
export const LibvirtHostSchema = z
  .object({
    /** Short name, unique in its entry: part of instance ids (`<host>/<uuid>`) and messages. */
    name: NameSchema,
    /** `qemu+ssh://cloudgate@hlt-node042/system`, `qemu+tls://…`, `test+unix:///…` in tests. */
    uri: z.string().min(1),
    /** vCPUs and memory cloudgate domains may use on the host, together. */
    cpus: z.number().int().min(1),
    memoryMiB: z.number().int().min(64),
  })
  .strict();
export type LibvirtHost = z.infer<typeof LibvirtHostSchema>;

export const LibvirtCloudConfigSchema = z
  .object({
    ...base,
    kind: z.literal('libvirt'),
    /** One hypervisor: `test:///default`, `qemu:///system`, `qemu+ssh://user@host/system`, `xen://…`. */
    uri: z.string().min(1).optional(),
    /** A farm of hypervisors, instead of `uri`: each instance is placed on the host with the most room. */
    hosts: z.array(LibvirtHostSchema).min(1, 'a farm needs at least one host').optional(),
    /** Domain type in the XML: `kvm`, `qemu`, `xen`, or `test` for libvirt's test driver. */
    domainType: z.string().default('kvm'),
    /** Folder for seed ISOs and file-image overlays (and, on the worker, the farm's pending destroys). */
    storageDir: z.string().default('/var/lib/cloudgate'),
    network: z.string().default('default'),
    /** Sizes offered, since a hypervisor has no flavors of its own. */
    offerings: z
      .array(z.object({ id: z.string(), name: z.string(), cpus: z.number().int().min(1), memoryMiB: z.number().int().min(64), diskGiB: z.number().int().min(1) }))
      .optional(),
    /** Farm only: how long a host may take to connect or answer one call before it counts as lost (default 5). */
    hostTimeoutSeconds: z.number().positive().max(300).optional(),
    /** Farm only: how long a lost host is left alone (skipped for placement) before it is tried again (default 30). */
    hostRetrySeconds: z.number().min(0).max(3600).optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    if ((c.uri === undefined) === (c.hosts === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: c.uri === undefined ? ['uri'] : ['hosts'],
        message: 'a libvirt cloud names either one hypervisor ("uri") or a farm of them ("hosts: [{name, uri, cpus, memoryMiB}]"), not both and not neither',
      });
    }
    const seen = new Set<string>();
    c.hosts?.forEach((h, i) => {
      if (seen.has(h.name)) ctx.addIssue({ code: 'custom', path: ['hosts', i, 'name'], message: `duplicate host name "${h.name}" in this farm` });
      seen.add(h.name);
    });
    for (const [image, ref] of Object.entries(c.images)) {
      if (!isLibvirtImageRef(ref)) {
        ctx.addIssue({
          code: 'custom',
          path: ['images', image],
          message: `must be an absolute path of a disk file on the hypervisor host (no ".." segments) or a storage "pool/volume", not ${JSON.stringify(ref)}`,
        });
      }
    }
  });

/** A libvirt host as the adapter uses it: a farm's host, or the one hypervisor of a `uri` entry (no capacity limit). */
export interface LibvirtHostRef {
  name: string;
  uri: string;
  cpus?: number;
  memoryMiB?: number;
}

/**
 * The hosts of a libvirt entry: its `hosts`, or for a single `uri` one host named after the
 * entry, without capacity limits (as before farms existed).
 */
export function libvirtHosts(c: Pick<LibvirtCloudConfig, 'name' | 'uri' | 'hosts'>): LibvirtHostRef[] {
  if (c.hosts) return c.hosts.map((h) => ({ ...h }));
  if (c.uri === undefined) throw new Error(`libvirt cloud "${c.name}" has neither uri nor hosts`);
  return [{ name: c.name, uri: c.uri }];
}

/**
 * A libvirt image reference: an absolute, normalised path of a disk file on the hypervisor
 * host, or `pool/volume` of a storage pool. Only operators write these (in the registry).
 */
export function isLibvirtImageRef(ref: string): boolean {
  if (ref.startsWith('/')) return !ref.split('/').some((seg) => seg === '..' || seg === '.') && !ref.includes('\0');
  return /^[^/\s]+\/[^/\s]+$/.test(ref) && !ref.split('/').some((seg) => seg === '..' || seg === '.');
}

export const Ec2CloudConfigSchema = z
  .object({
    ...base,
    kind: z.literal('ec2'),
    region: z.string().min(1),
    /** A non-AWS endpoint (the moto server in tests); unset: the region's AWS endpoint. */
    endpoint: z.string().url().optional(),
    credentials: z.object({ accessKeyId: SecretRefSchema, secretAccessKey: SecretRefSchema }).strict(),
    subnetId: z.string().optional(),
    securityGroupIds: z.array(z.string()).optional(),
    keyName: z.string().optional(),
  })
  .strict();

export const CloudStackCloudConfigSchema = z
  .object({
    ...base,
    kind: z.literal('cloudstack'),
    /** The API endpoint, e.g. `https://cloud.example.org/client/api`. */
    endpoint: z.string().url(),
    zoneId: z.string().min(1),
    credentials: z.object({ apiKey: SecretRefSchema, secretKey: SecretRefSchema }).strict(),
    networkIds: z.array(z.string()).optional(),
  })
  .strict();

export const OcciCloudConfigSchema = z
  .object({
    ...base,
    kind: z.literal('occi'),
    /** The OCCI server's base URL (its query interface is `<endpoint>/-/`). */
    endpoint: z.string().url(),
    /** Bearer token (e.g. a Keystone or X.509-derived token), if the server wants one. */
    credentials: z.object({ token: SecretRefSchema }).strict().optional(),
  })
  .strict();

export const CloudConfigSchema = z.discriminatedUnion('kind', [
  SimCloudConfigSchema,
  LibvirtCloudConfigSchema,
  Ec2CloudConfigSchema,
  CloudStackCloudConfigSchema,
  OcciCloudConfigSchema,
]);
export type CloudConfig = z.infer<typeof CloudConfigSchema>;
/** A registry entry as written (defaults not yet applied: a sim entry may leave out its images). */
export type CloudConfigInput = z.input<typeof CloudConfigSchema>;
export type LibvirtCloudConfig = z.infer<typeof LibvirtCloudConfigSchema>;
export type Ec2CloudConfig = z.infer<typeof Ec2CloudConfigSchema>;
export type CloudStackCloudConfig = z.infer<typeof CloudStackCloudConfigSchema>;
export type OcciCloudConfig = z.infer<typeof OcciCloudConfigSchema>;

export const CloudsFileSchema = z
  .object({ clouds: z.array(CloudConfigSchema).min(1) })
  .strict()
  .superRefine((f, ctx) => {
    const seen = new Set<string>();
    f.clouds.forEach((c, i) => {
      if (seen.has(c.name)) ctx.addIssue({ code: 'custom', path: ['clouds', i, 'name'], message: `duplicate cloud name "${c.name}"` });
      seen.add(c.name);
    });
  });
export type CloudsFile = z.infer<typeof CloudsFileSchema>;

/** The registry when no file is configured: just the simulated cloud. */
export const DEFAULT_CLOUDS: CloudsFile = { clouds: [{ name: 'sim', kind: 'sim', images: { ...DEFAULT_SIM_IMAGES } }] };

/**
 * What the API shows of a cloud: endpoint, credential references (never values) and the
 * image names it offers (never the references they map to: disk paths stay on the worker).
 */
export function publicCloudInfo(c: CloudConfig): { endpoint?: string; credentials?: Record<string, string>; images: string[]; quota?: CloudQuota } {
  return { ...connectionInfo(c), ...(c.quota && { quota: c.quota }) };
}

function connectionInfo(c: CloudConfig): { endpoint?: string; credentials?: Record<string, string>; images: string[] } {
  const images = imageNames(c.images);
  switch (c.kind) {
    case 'sim':
      return { images };
    case 'libvirt':
      // A farm's host URIs stay on the worker (hundreds of them, with the account cloudgate logs in as).
      return { endpoint: c.uri ?? `libvirt farm of ${c.hosts?.length ?? 0} hosts`, images };
    case 'ec2':
      return {
        endpoint: c.endpoint ?? `https://ec2.${c.region}.amazonaws.com`,
        credentials: { accessKeyId: describeSecretRef(c.credentials.accessKeyId), secretAccessKey: describeSecretRef(c.credentials.secretAccessKey) },
        images,
      };
    case 'cloudstack':
      return { endpoint: c.endpoint, credentials: { apiKey: describeSecretRef(c.credentials.apiKey), secretKey: describeSecretRef(c.credentials.secretKey) }, images };
    case 'occi':
      return { endpoint: c.endpoint, ...(c.credentials && { credentials: { token: describeSecretRef(c.credentials.token) } }), images };
  }
}
