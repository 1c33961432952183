/**
 * EC2 adapter (`kind: 'ec2'`) on `@aws-sdk/client-ec2`: AWS itself, or any endpoint that
 * speaks the EC2 query API (the moto server in tests).
 *
 * Idempotency rests on a tag, not on `ClientToken` alone: every instance carries
 * `cloudgate:key`, a create first looks for a live instance with its key, and a create
 * that raced another with the same key keeps the earliest and terminates the rest. The
 * token still saves a duplicate on AWS when a response is lost, but moto ignores it.
 *
 * Credentials are references, read through an SDK credentials provider on the first call
 * that needs them, i.e. inside an activity, so a missing secret fails that activity as
 * `InvalidCredentials` instead of failing the worker at start.
 */
import { createHash } from 'node:crypto';
import {
  DescribeImagesCommand,
  DescribeInstancesCommand,
  EC2Client,
  RunInstancesCommand,
  TerminateInstancesCommand,
  paginateDescribeInstanceTypes,
  paginateDescribeInstances,
  type _InstanceType,
  type Filter,
  type Instance,
  type InstanceTypeInfo,
  type RunInstancesCommandInput,
  type Tag,
} from '@aws-sdk/client-ec2';
import type { Ec2CloudConfig } from '../model/clouds-config.js';
import { USER_DATA_LIMITS } from '../model/user-data.js';
import {
  CloudError,
  type CloudAdapter,
  type CloudErrorKind,
  type CloudInstance,
  type CloudInstanceState,
  type CloudOffering,
} from './contract.js';
import { readSecret } from './credentials.js';
import { requireImage, smallestFit } from './registry.js';

/** EC2 takes at most 16 KB of user-data, counted before base64 (the model's table, checked at submit too). */
export const EC2_USER_DATA_MAX_BYTES = USER_DATA_LIMITS.ec2.maxBytes;

/** The largest EBS volume (gp3, 16 TiB). Root volumes are sized per instance, so every type offers up to this. */
const MAX_ROOT_GIB = 16_384;

const ec2Type = (id: string, cpus: number, memoryMiB: number): CloudOffering => ({ id, name: id, cpus, memoryMiB, diskGiB: MAX_ROOT_GIB });

/**
 * The x86_64 types this adapter picks from (CernVM images are x86_64), cheapest family
 * first so that equal sizes go to the burstable type. Sizes are checked against the
 * region with `DescribeInstanceTypes`; this table is used as-is only where that call is missing.
 */
export const EC2_INSTANCE_TYPES: readonly CloudOffering[] = [
  ec2Type('t3.micro', 2, 1024),
  ec2Type('t3.small', 2, 2048),
  ec2Type('t3.medium', 2, 4096),
  ec2Type('t3.large', 2, 8192),
  ec2Type('t3.xlarge', 4, 16384),
  ec2Type('t3.2xlarge', 8, 32768),
  ec2Type('c5.large', 2, 4096),
  ec2Type('c5.xlarge', 4, 8192),
  ec2Type('c5.2xlarge', 8, 16384),
  ec2Type('c5.4xlarge', 16, 32768),
  ec2Type('c5.9xlarge', 36, 73728),
  ec2Type('c5.18xlarge', 72, 147456),
  ec2Type('m5.large', 2, 8192),
  ec2Type('m5.xlarge', 4, 16384),
  ec2Type('m5.2xlarge', 8, 32768),
  ec2Type('m5.4xlarge', 16, 65536),
  ec2Type('m5.12xlarge', 48, 196608),
  ec2Type('m5.24xlarge', 96, 393216),
  ec2Type('r5.large', 2, 16384),
  ec2Type('r5.xlarge', 4, 32768),
  ec2Type('r5.2xlarge', 8, 65536),
  ec2Type('r5.4xlarge', 16, 131072),
  ec2Type('r5.24xlarge', 96, 786432),
];

const TAG = { cluster: 'cloudgate:cluster', service: 'cloudgate:service', key: 'cloudgate:key' } as const;
/** Not shutting-down or terminated: what `findInstance` and `listInstances` report. */
const LIVE_STATES = ['pending', 'running', 'stopping', 'stopped'];
const STATES: Record<string, CloudInstanceState> = {
  pending: 'PENDING',
  running: 'RUNNING',
  stopping: 'STOPPED',
  stopped: 'STOPPED',
  'shutting-down': 'TERMINATED',
  terminated: 'TERMINATED',
};

/**
 * A create racing another with the same key may not see it on its first look; a second
 * look this much later does. (On AWS the shared `ClientToken` already stops most races.)
 */
const RACE_RECHECK_MS = 300;
/**
 * EC2 gives `LaunchTime` to the second, so a racer launched in the same second as ours may
 * sort before it (by id) yet be listed only after our first look. The last look therefore
 * waits until our instance's second is over (plus `RACE_RECHECK_MS`): every racer that can
 * sort before ours is listed by then, and later ones sort after it. Capped, for clock skew.
 */
const LAUNCH_TIME_GRAIN_MS = 1000;
/** How often a token may replay a terminated instance before we give up (see `launch`). */
const MAX_TOKEN_REPLAYS = 5;

/** Maps an EC2 state name (`running`, `shutting-down`, ...) to the contract's enum. */
export function toCloudState(name: string | undefined): CloudInstanceState {
  return (name && STATES[name]) || 'UNKNOWN';
}

/** EC2 error codes (or Node network error codes) by the kind of trouble they mean. */
const KINDS: [RegExp, CloudErrorKind][] = [
  [/^(RequestLimitExceeded|Throttling|ThrottlingException|RequestThrottled)$/, 'Throttled'],
  [/^Insufficient\w*Capacity$/, 'CapacityExhausted'],
  [/^(InstanceLimitExceeded|VcpuLimitExceeded)$/, 'QuotaExceeded'],
  [/^(AuthFailure(\.\w+)?|UnauthorizedOperation|InvalidClientTokenId|SignatureDoesNotMatch|IncompleteSignature)$/, 'InvalidCredentials'],
  [/^InvalidInstanceID\.(NotFound|Malformed)$/, 'NotFound'],
  [/^(InvalidAMIID\.\w+|InvalidParameterValue|InvalidParameterCombination|InvalidParameter|MissingParameter|InvalidBlockDeviceMapping)$/, 'InvalidRequest'],
  // The token was used with other parameters (fresh user-data on a retried activity): an
  // instance with this key exists but is not listed yet, and a later retry finds it by tag.
  [/^IdempotentParameterMismatch$/, 'Transient'],
  [/^(InternalError|InternalFailure|Unavailable|ServiceUnavailable|RequestTimeout|TimeoutError)$/, 'Transient'],
  [/^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|EAI_AGAIN|ENOTFOUND|EHOSTUNREACH|ENETUNREACH)$/, 'Transient'],
];

interface SdkErrorShape {
  name?: string;
  Code?: string;
  code?: string;
  message?: string;
  $fault?: 'client' | 'server';
  $metadata?: { httpStatusCode?: number };
}

/** The AWS error code of an SDK exception, or the Node error code of a network failure. */
function codeOf(err: unknown): string {
  const e = (err ?? {}) as SdkErrorShape;
  return e.Code ?? (typeof e.code === 'string' ? e.code : undefined) ?? e.name ?? 'Error';
}

/**
 * Turns whatever the SDK threw into a {@link CloudError} whose message starts with
 * `context` and names the AWS code; the original stays as `cause`. Unknown codes are
 * `InvalidRequest` when AWS blames the request (4xx) and `Transient` otherwise.
 */
export function toCloudError(err: unknown, context: string): CloudError {
  // readSecret's InvalidCredentials, thrown from inside the SDK's credentials provider.
  if (err instanceof CloudError) return new CloudError(err.kind, `${context}: ${err.message}`, { cause: err });
  const e = (err ?? {}) as SdkErrorShape;
  const code = codeOf(err);
  const status = e.$metadata?.httpStatusCode;
  const kind =
    KINDS.find(([re]) => re.test(code))?.[1] ??
    (e.$fault === 'server' || (status !== undefined && status >= 500)
      ? 'Transient'
      : e.$fault === 'client' || (status !== undefined && status >= 400)
        ? 'InvalidRequest'
        : 'Transient');
  const message = e.message && e.message !== code ? `${code}: ${e.message}` : code;
  return new CloudError(kind, `${context}: ${message}`, { cause: err });
}

/** `ClientToken` takes 64 ASCII characters; longer keys go in as their SHA-256. */
function clientToken(key: string): string {
  return key.length <= 64 && /^[\x20-\x7e]*$/.test(key) ? key : createHash('sha256').update(key).digest('hex');
}

/** Oldest first (launch time, then id), so every caller picks the same survivor of a race. */
function byAge(a: Instance, b: Instance): number {
  const t = (a.LaunchTime?.getTime() ?? 0) - (b.LaunchTime?.getTime() ?? 0);
  if (t !== 0) return t;
  const [x, y] = [a.InstanceId ?? '', b.InstanceId ?? ''];
  return x < y ? -1 : x > y ? 1 : 0;
}

function toInstance(i: Instance): CloudInstance {
  const tag = (k: string) => i.Tags?.find((t) => t.Key === k)?.Value;
  const tags: Record<string, string> = {};
  for (const [field, k] of Object.entries(TAG)) {
    const v = tag(k);
    if (v !== undefined) tags[field] = v;
  }
  return {
    id: i.InstanceId!,
    name: tag('Name') ?? i.InstanceId!,
    state: toCloudState(i.State?.Name),
    idempotencyKey: tags.key,
    tags,
    createdAt: i.LaunchTime?.toISOString(),
    extra: {
      instanceType: i.InstanceType,
      imageId: i.ImageId,
      privateIp: i.PrivateIpAddress,
      publicIp: i.PublicIpAddress,
      placement: i.Placement?.AvailabilityZone,
      // Why AWS stopped or terminated it (e.g. Server.InsufficientInstanceCapacity), for operators.
      ...(i.StateReason?.Message && { stateReason: i.StateReason.Message }),
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Creates the adapter; it reads no secret and makes no call until a method is called. */
export function createEc2Cloud(cfg: Ec2CloudConfig): CloudAdapter {
  const name = cfg.name;
  const client = new EC2Client({
    region: cfg.region,
    ...(cfg.endpoint && { endpoint: cfg.endpoint }),
    credentials: async () => ({
      accessKeyId: readSecret(cfg.credentials.accessKeyId, 'EC2 access key id'),
      secretAccessKey: readSecret(cfg.credentials.secretAccessKey, 'EC2 secret access key'),
    }),
    // One quick retry for a dropped keep-alive socket; Temporal's retry policy owns the rest.
    maxAttempts: 2,
    // A hung call must fail the activity (as Transient), not hold it until its timeout.
    requestHandler: { connectionTimeout: 5_000, requestTimeout: 30_000 },
  });

  const call = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      throw toCloudError(err, `${name}: ${what}`);
    }
  };

  const describe = (what: string, filters: Filter[]): Promise<Instance[]> =>
    call(what, async () => {
      const found: Instance[] = [];
      for await (const page of paginateDescribeInstances({ client, pageSize: 1000 }, { Filters: filters })) {
        for (const r of page.Reservations ?? []) found.push(...(r.Instances ?? []));
      }
      return found;
    });

  const live = { Name: 'instance-state-name', Values: LIVE_STATES };
  const liveByKey = async (key: string) =>
    (await describe(`find instance with key "${key}"`, [{ Name: `tag:${TAG.key}`, Values: [key] }, live])).sort(byAge);

  // Cached per adapter: types and images do not change under a running worker. A failed
  // lookup is not cached, so the next activity attempt asks again.
  const cached = <T>(load: () => Promise<T>): (() => Promise<T>) => {
    let p: Promise<T> | undefined;
    return () =>
      (p ??= load().catch((err: unknown) => {
        p = undefined;
        throw err;
      }));
  };

  const offerings = cached(async (): Promise<CloudOffering[]> => {
    const infos: InstanceTypeInfo[] = [];
    try {
      const filter = { Name: 'instance-type', Values: EC2_INSTANCE_TYPES.map((o) => o.id) };
      for await (const page of paginateDescribeInstanceTypes({ client }, { Filters: [filter] })) infos.push(...(page.InstanceTypes ?? []));
    } catch (err) {
      // EC2-compatible clouds (OpenStack's ec2-api, Eucalyptus) may lack the call.
      if (!/^(InvalidAction|UnsupportedOperation|NotImplemented)$/.test(codeOf(err))) throw toCloudError(err, `${name}: list instance types`);
    }
    const byType = new Map(infos.map((t) => [t.InstanceType as string, t]));
    const checked = EC2_INSTANCE_TYPES.flatMap((o) => {
      const t = byType.get(o.id);
      return t ? [{ ...o, cpus: t.VCpuInfo?.DefaultVCpus ?? o.cpus, memoryMiB: t.MemoryInfo?.SizeInMiB ?? o.memoryMiB }] : [];
    });
    return checked.length > 0 ? checked : EC2_INSTANCE_TYPES.map((o) => ({ ...o }));
  });

  /** Root device of each AMI, so the size we ask for applies to the root volume, not an extra one. */
  const rootDevices = new Map<string, () => Promise<{ device: string; minGiB: number } | undefined>>();
  const rootDevice = (ami: string, image: string) => {
    let get = rootDevices.get(ami);
    if (!get) {
      get = cached(async () => {
        const res = await call(`look up image "${image}" (${ami})`, () => client.send(new DescribeImagesCommand({ ImageIds: [ami] })));
        const img = res.Images?.[0];
        if (!img) throw new CloudError('InvalidRequest', `${name}: image "${image}" (${ami}) does not exist`);
        if (img.RootDeviceType !== 'ebs' || !img.RootDeviceName) return undefined;
        // The root volume may not be smaller than the image's snapshot.
        const snapshot = img.BlockDeviceMappings?.find((m) => m.DeviceName === img.RootDeviceName)?.Ebs?.VolumeSize ?? 1;
        return { device: img.RootDeviceName, minGiB: snapshot };
      });
      rootDevices.set(ami, get);
    }
    return get();
  };

  /** The AMI id the registry maps the image name to; nothing else is ever sent as an image. */
  const amiFor = (image: string): string => {
    const ami = requireImage(name, cfg.images, image);
    if (ami.startsWith('ami-')) return ami;
    throw new CloudError('InvalidRequest', `${name}: image "${image}" maps to "${ami}", which is not an AMI id`);
  };

  /**
   * RunInstances with the key's token. AWS answers a token it has seen (for a day or more)
   * with that call's instance even when it is terminated since, so a key reused after
   * termination derives a fresh token from the dead instance; racing callers derive the same one.
   */
  const launch = async (input: RunInstancesCommandInput, key: string, what: string): Promise<Instance> => {
    let token = clientToken(key);
    for (let replays = 0; ; replays++) {
      const res = await call(what, () => client.send(new RunInstancesCommand({ ...input, ClientToken: token })));
      const inst = res.Instances?.[0];
      if (!inst?.InstanceId) throw new CloudError('Transient', `${name}: ${what}: RunInstances returned no instance`);
      if (toCloudState(inst.State?.Name) !== 'TERMINATED') return inst;
      if (replays >= MAX_TOKEN_REPLAYS) throw new CloudError('Transient', `${name}: ${what}: the client token keeps naming terminated instances`);
      token = clientToken(`${key}\0${inst.InstanceId}`);
    }
  };

  /**
   * After a create, the earliest live instance with the key survives and the others are
   * terminated. Nobody terminates the earliest, and the last look (see
   * `LAUNCH_TIME_GRAIN_MS`) sees every racer that could be earlier, so racers agree.
   */
  const settle = async (key: string, mine: Instance): Promise<Instance> => {
    const now = Date.now();
    const secondOver = (mine.LaunchTime?.getTime() ?? now) + LAUNCH_TIME_GRAIN_MS;
    const lastLook = Math.min(Math.max(now, secondOver) + RACE_RECHECK_MS, now + LAUNCH_TIME_GRAIN_MS + RACE_RECHECK_MS);
    let survivor = mine;
    for (const at of [now, lastLook]) {
      if (at > Date.now()) await sleep(at - Date.now());
      const found = await liveByKey(key);
      // AWS lists a new instance only eventually; ours counts even before it shows.
      const all = found.some((i) => i.InstanceId === mine.InstanceId) ? found : [...found, mine].sort(byAge);
      const [first, ...rest] = all;
      survivor = first;
      await Promise.all(rest.map((i) => terminate(i.InstanceId!)));
    }
    return survivor;
  };

  const terminate = async (id: string): Promise<void> => {
    try {
      await call(`terminate ${id}`, () => client.send(new TerminateInstancesCommand({ InstanceIds: [id] })));
    } catch (err) {
      if (!(err instanceof CloudError && err.kind === 'NotFound')) throw err;
    }
  };

  return {
    name,
    kind: 'ec2',

    async listOfferings() {
      return (await offerings()).map((o) => ({ ...o }));
    },

    async createInstance(spec, idempotencyKey) {
      // Checks that need no call come first, so bad input costs nothing and makes nothing.
      const bytes = Buffer.byteLength(spec.userData, 'utf8');
      if (bytes > EC2_USER_DATA_MAX_BYTES) {
        throw new CloudError(
          'InvalidRequest',
          `${name}: user-data of "${spec.name}" is ${bytes} bytes; EC2 takes at most ${EC2_USER_DATA_MAX_BYTES} bytes (16 KB) before base64`,
        );
      }
      const ami = amiFor(spec.image);
      const types = await offerings();
      const flavor = smallestFit(types, spec.offering);
      if (!flavor) {
        const o = spec.offering;
        const largest = [...types].sort((a, b) => b.cpus - a.cpus || b.memoryMiB - a.memoryMiB)[0];
        throw new CloudError(
          'InvalidOffering',
          `${name}: no instance type fits ${o.cpus} cpus / ${o.memoryMiB} MiB / ${o.diskGiB} GiB (largest: ${largest.id}, ${largest.cpus} vCPUs / ${largest.memoryMiB} MiB; root volume up to ${MAX_ROOT_GIB} GiB)`,
        );
      }
      const [existing] = await liveByKey(idempotencyKey);
      if (existing) return toInstance(existing);

      const root = await rootDevice(ami, spec.image);
      const tags: Tag[] = [
        { Key: 'Name', Value: spec.name },
        { Key: TAG.cluster, Value: spec.tags.cluster },
        { Key: TAG.service, Value: spec.tags.service },
        { Key: TAG.key, Value: idempotencyKey },
      ];
      const input: RunInstancesCommandInput = {
        ImageId: ami,
        InstanceType: flavor.id as _InstanceType,
        MinCount: 1,
        MaxCount: 1,
        UserData: Buffer.from(spec.userData, 'utf8').toString('base64'),
        // A guest that powers itself off (an idle session ending) is gone, not a stopped instance still billing its disk.
        InstanceInitiatedShutdownBehavior: 'terminate',
        BlockDeviceMappings: root && [
          { DeviceName: root.device, Ebs: { VolumeSize: Math.max(spec.offering.diskGiB, root.minGiB), VolumeType: 'gp3', DeleteOnTermination: true } },
        ],
        // The volume carries the cluster's tags too, so a leak is findable by tag.
        TagSpecifications: [
          { ResourceType: 'instance', Tags: tags },
          { ResourceType: 'volume', Tags: tags },
        ],
        SubnetId: cfg.subnetId,
        SecurityGroupIds: cfg.securityGroupIds,
        KeyName: cfg.keyName,
      };
      const mine = await launch(input, idempotencyKey, `create "${spec.name}" (${flavor.id}, ${ami})`);
      return toInstance(await settle(idempotencyKey, mine));
    },

    async describeInstance(id) {
      const res = await call(`describe ${id}`, () => client.send(new DescribeInstancesCommand({ InstanceIds: [id] })));
      const inst = res.Reservations?.flatMap((r) => r.Instances ?? []).find((i) => i.InstanceId === id);
      if (!inst) throw new CloudError('NotFound', `${name}: no instance "${id}"`);
      return toInstance(inst);
    },

    async findInstance(idempotencyKey) {
      const [first] = await liveByKey(idempotencyKey);
      return first && toInstance(first);
    },

    async listInstances(filter) {
      // Without a cluster: every instance cloudgate made, never the account's others.
      const byTag = filter.cluster !== undefined ? { Name: `tag:${TAG.cluster}`, Values: [filter.cluster] } : { Name: 'tag-key', Values: [TAG.key] };
      const what = filter.cluster !== undefined ? `list instances of cluster "${filter.cluster}"` : 'list instances';
      return (await describe(what, [byTag, live])).sort(byAge).map(toInstance);
    },

    terminateInstance: terminate,

    async close() {
      client.destroy();
    },
  };
}
