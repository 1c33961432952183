/**
 * CloudStack adapter (`kind: 'cloudstack'`) on CloudStack's native query API: every request
 * signed with the account's API key pair (HMAC-SHA1, as the developer guide describes), JSON
 * responses, and asynchronous jobs (`queryAsyncJobResult`) for everything that changes a VM.
 *
 * Idempotency rests on the VM's host name: it is the idempotency key, which CloudStack stores
 * at once (unlike tags, which `createTags` applies in an async job). A create first looks for
 * a live VM with that name; CloudStack refuses a second VM with the same host name in a
 * network, and where two creates still slip through, the earliest VM is kept and the others
 * are destroyed.
 *
 * Nothing here waits for a job: a deploy returns while the VM starts (the workflow polls its
 * state), and tags and destroys are submitted and left to run. So right after a create, for as
 * long as CloudStack takes to run the `createTags` job (usually milliseconds), the VM is found
 * by key but not yet listed by cluster; right after a terminate, until the destroy job has
 * run, it is still found and listed. Teardown copes: it looks again by key and sweeps by tag
 * until nothing is left.
 *
 * The API key and secret key are read inside each call, never kept, logged or put in messages.
 */
import { createHmac } from 'node:crypto';
import type { CloudStackCloudConfig } from '../model/clouds-config.js';
import { USER_DATA_LIMITS } from '../model/user-data.js';
import {
  CloudError,
  type CloudAdapter,
  type CloudErrorKind,
  type CloudInstance,
  type CloudInstanceState,
  type CloudOffering,
  type InstanceSpec,
} from './contract.js';
import { readSecret } from './credentials.js';
import { smallestFit } from './registry.js';

/** CloudStack takes at most 32 KB of user-data, counted after base64, and only in a POST body (the model's table). */
export const CLOUDSTACK_USER_DATA_MAX_BASE64 = USER_DATA_LIMITS.cloudstack.maxBytes;

/** Prefix of the tags this adapter puts on VMs: `cloudgate:cluster`, `cloudgate:service`, `cloudgate:key`. */
export const CLOUDSTACK_TAG_PREFIX = 'cloudgate:';

/**
 * Disk of an offering without `rootdisksize`: the root disk is then the template's own, which
 * the offering does not limit, so matching treats it as large enough.
 */
const UNSIZED_ROOT_DISK_GIB = 1024;
/** CloudStack's default `default.page.size`. */
const DEFAULT_PAGE_SIZE = 500;
const REQUEST_TIMEOUT_MS = 30_000;
/** Offerings rarely change; caching them saves one call per create in a large deployment. */
const OFFERINGS_TTL_MS = 5 * 60_000;
/** What CloudStack accepts as a VM host name (which is the idempotency key here). */
const HOST_NAME = /^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/;

/** Request parameters, by name; values are sent and signed as given. */
export type CloudStackParams = Record<string, string>;

/** A job's state as `queryAsyncJobResult` reports it. */
export type CloudStackJobStatus =
  | { jobId: string; status: 'pending' }
  | { jobId: string; status: 'succeeded'; result: Record<string, unknown> }
  | { jobId: string; status: 'failed'; error: CloudError };

/** The CloudStack adapter: the contract, plus a look at CloudStack's async jobs. */
export interface CloudStackCloud extends CloudAdapter {
  /** One `queryAsyncJobResult`; does not wait. */
  jobStatus(jobId: string): Promise<CloudStackJobStatus>;
}

/** Adapter tuning that is not cloud configuration (tests use it). */
export interface CloudStackAdapterOptions {
  /** `pagesize` of list calls; default 500. */
  pageSize?: number;
}

/**
 * Percent-encodes a value the way CloudStack re-encodes it before checking a signature
 * (Java's `URLEncoder`, spaces as `%20`): like `encodeURIComponent`, but `!'()~` encoded too.
 */
export function cloudStackEncode(value: string): string {
  return encodeURIComponent(value).replace(/[!'()~]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** The signed string: `name=encoded value` pairs sorted by lower-cased name, joined by `&`, all lower-cased. */
export function cloudStackStringToSign(params: CloudStackParams): string {
  return sortedNames(params)
    .map((k) => `${k}=${cloudStackEncode(params[k])}`)
    .join('&')
    .toLowerCase();
}

/** The base64 HMAC-SHA1 of {@link cloudStackStringToSign} under the secret key (before URL encoding). */
export function cloudStackSignature(params: CloudStackParams, secretKey: string): string {
  return createHmac('sha1', secretKey).update(cloudStackStringToSign(params), 'utf8').digest('base64');
}

/**
 * The query string (or form body) of a signed request: `params` plus `apikey`, sorted, values
 * percent-encoded, then `&signature=`. Pass `command` and `response` in `params`.
 */
export function signCloudStackRequest(params: CloudStackParams, apiKey: string, secretKey: string): string {
  const all: CloudStackParams = { ...params, apikey: apiKey };
  const query = sortedNames(all).map((k) => `${k}=${cloudStackEncode(all[k])}`);
  return `${query.join('&')}&signature=${encodeURIComponent(cloudStackSignature(all, secretKey))}`;
}

function sortedNames(params: CloudStackParams): string[] {
  // Code-unit order, as Java's String.compareTo sorts on the server.
  return Object.keys(params).sort((a, b) => {
    const x = a.toLowerCase();
    const y = b.toLowerCase();
    return x < y ? -1 : x > y ? 1 : 0;
  });
}

/** `ApiErrorCode` of the CloudStack API, as the error kinds the activity layer retries or not. */
const KIND_BY_ERROR_CODE: Readonly<Record<number, CloudErrorKind>> = {
  401: 'InvalidCredentials', // UNAUTHORIZED: bad key or signature, or the command is not allowed
  405: 'InvalidRequest', // METHOD_NOT_ALLOWED
  429: 'Throttled', // API_LIMIT_EXCEED
  430: 'InvalidRequest', // MALFORMED_PARAMETER_ERROR
  431: 'InvalidRequest', // PARAM_ERROR (also: an id that does not resolve)
  432: 'InvalidRequest', // UNSUPPORTED_ACTION_ERROR
  530: 'Transient', // INTERNAL_ERROR
  531: 'InvalidCredentials', // ACCOUNT_ERROR: permission denied to this account
  532: 'QuotaExceeded', // ACCOUNT_RESOURCE_LIMIT_ERROR
  533: 'CapacityExhausted', // INSUFFICIENT_CAPACITY_ERROR
  534: 'Transient', // RESOURCE_UNAVAILABLE_ERROR: a host, network or storage is down for now
  535: 'QuotaExceeded', // RESOURCE_ALLOCATION_ERROR: what the account's resource limits throw
  536: 'Transient', // RESOURCE_IN_USE_ERROR: busy, try again
  537: 'InvalidRequest', // NETWORK_RULE_CONFLICT_ERROR
};

/** The kind of a CloudStack `errorcode`, or of a bare HTTP status where there is none. */
export function cloudStackErrorKind(code: number): CloudErrorKind {
  const known = KIND_BY_ERROR_CODE[code];
  if (known) return known;
  if (code === 403) return 'InvalidCredentials';
  if (code === 408 || code >= 500) return 'Transient';
  return 'InvalidRequest';
}

/**
 * Normalises a VM state. A VM is `Stopped` for a moment after deploy, until its deploy job
 * starts it; with a job pending on it, that is PENDING, not a VM someone stopped.
 */
export function cloudStackState(state: string | undefined, jobPending = false): CloudInstanceState {
  switch (state) {
    case 'Running':
    case 'Migrating':
      return 'RUNNING';
    case 'Starting':
    case 'Creating':
      return 'PENDING';
    case 'Stopped':
      return jobPending ? 'PENDING' : 'STOPPED';
    case 'Stopping':
      return 'STOPPED';
    case 'Destroyed':
    case 'Expunging':
      return 'TERMINATED';
    case 'Error':
      return 'ERROR';
    default:
      return 'UNKNOWN';
  }
}

/** A VM as `listVirtualMachines` returns it (the fields used here). */
interface CsVm {
  id: string;
  name: string;
  displayname?: string;
  state?: string;
  created?: string;
  jobid?: string;
  jobstatus?: number;
  instancename?: string;
  zoneid?: string;
  templateid?: string;
  serviceofferingid?: string;
  nic?: { ipaddress?: string }[];
  tags?: { key: string; value: string }[];
}

interface CsOffering {
  id: string;
  name: string;
  cpunumber?: number;
  memory?: number;
  rootdisksize?: number;
}

const isLive = (vm: CsVm) => vm.state !== 'Destroyed' && vm.state !== 'Expunging';

/** CloudStack writes `2024-01-15T11:00:00+0000`; JS wants a colon in the offset. */
const createdMs = (vm: CsVm): number => Date.parse((vm.created ?? '').replace(/([+-]\d\d)(\d\d)$/, '$1:$2'));

/**
 * Earliest first: by creation time, and among VMs created in the same second (CloudStack's
 * resolution) in list order, which is CloudStack's internal id, i.e. creation order. Every
 * racing create thus agrees on the same survivor; random UUIDs would not.
 */
const earliestFirst = (vms: CsVm[]): CsVm[] =>
  vms
    .map((vm, i) => ({ vm, i, t: createdMs(vm) }))
    .sort((a, b) => (Number.isNaN(a.t) || Number.isNaN(b.t) || a.t === b.t ? a.i - b.i : a.t - b.t))
    .map((x) => x.vm);

/** Duck-typed: fetch's errors may come from another realm (jest's VM contexts) and fail `instanceof`. */
const describeError = (err: unknown): string => {
  const e = err as { message?: unknown; cause?: { code?: unknown; message?: unknown } } | null | undefined;
  if (typeof e?.message !== 'string') return String(err);
  const why = e.cause?.code ?? e.cause?.message;
  return typeof why === 'string' ? `${e.message} (${why})` : e.message;
};

/** Builds the adapter. Nothing is read or called until the first method call. */
export function createCloudStackCloud(cfg: CloudStackCloudConfig, opts: CloudStackAdapterOptions = {}): CloudStackCloud {
  const name = cfg.name;
  const pageSize = opts.pageSize ?? DEFAULT_PAGE_SIZE;
  let offeringsCache: { at: number; offerings: CloudOffering[] } | undefined;

  /** One signed call; resolves to the body under `<command>response`. */
  const call = async (command: string, params: CloudStackParams = {}, method: 'GET' | 'POST' = 'GET'): Promise<Record<string, unknown>> => {
    const signed = signCloudStackRequest(
      { ...params, command, response: 'json' },
      readSecret(cfg.credentials.apiKey, `${name}: API key`),
      readSecret(cfg.credentials.secretKey, `${name}: secret key`),
    );
    // Errors name the origin only: the signed query carries the API key.
    const url = new URL(cfg.endpoint);
    let status: number;
    let text: string;
    try {
      const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
      const res =
        method === 'GET'
          ? await fetch(`${url.origin}${url.pathname}?${signed}`, { signal })
          : await fetch(`${url.origin}${url.pathname}`, { method, headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: signed, signal });
      status = res.status;
      text = await res.text();
    } catch (err) {
      throw new CloudError('Transient', `${name}: ${command} to ${url.origin} failed: ${describeError(err)}`, { cause: err });
    }
    let body: Record<string, unknown> | undefined;
    try {
      const json: unknown = JSON.parse(text);
      if (json && typeof json === 'object') {
        const obj = json as Record<string, unknown>;
        body = (obj[`${command.toLowerCase()}response`] ?? Object.values(obj)[0]) as Record<string, unknown> | undefined;
      }
    } catch {
      // Not JSON: a proxy's error page, or not CloudStack at all; judged by the status below.
    }
    if (body && body.errorcode !== undefined) {
      const code = Number(body.errorcode);
      throw new CloudError(cloudStackErrorKind(code), `${name}: ${command} failed: ${String(body.errortext ?? '(no text)')} (CloudStack error ${code})`, {
        cause: { errorcode: code, errortext: body.errortext, cserrorcode: body.cserrorcode },
      });
    }
    if (status < 200 || status >= 300 || !body || typeof body !== 'object') {
      throw new CloudError(cloudStackErrorKind(status), `${name}: ${command} answered HTTP ${status} without a CloudStack response: ${text.slice(0, 200)}`, {
        cause: { status },
      });
    }
    return body;
  };

  /** Every page of a list call (CloudStack pages at `default.page.size` whether asked or not). */
  const listAll = async <T extends { id: string }>(command: string, itemKey: string, params: CloudStackParams = {}): Promise<T[]> => {
    const byId = new Map<string, T>();
    for (let page = 1; ; page++) {
      const r = await call(command, { ...params, page: String(page), pagesize: String(pageSize) });
      const items = (r[itemKey] as T[] | undefined) ?? [];
      // A VM made or removed between pages shifts the others; ids keep them counted once.
      for (const item of items) byId.set(item.id, item);
      const count = typeof r.count === 'number' ? r.count : 0;
      if (items.length < pageSize || page * pageSize >= count) return [...byId.values()];
    }
  };

  const listVms = (params: CloudStackParams) => listAll<CsVm>('listVirtualMachines', 'virtualmachine', { ...params, listall: 'true' });

  /** Live VMs whose host name is the key, earliest first (`name` is a substring match on older CloudStacks). */
  const liveByKey = async (key: string): Promise<CsVm[]> => earliestFirst((await listVms({ name: key })).filter((vm) => vm.name === key && isLive(vm)));

  /** The VM, or undefined when CloudStack has no (unexpunged) VM with that id. */
  const getVm = async (id: string): Promise<CsVm | undefined> => {
    try {
      return (await listVms({ id })).find((vm) => vm.id === id);
    } catch (err) {
      // An id that resolves to nothing is a parameter error (431) in CloudStack.
      if (err instanceof CloudError && err.kind === 'InvalidRequest') return undefined;
      throw err;
    }
  };

  const toInstance = (vm: CsVm): CloudInstance => {
    const tags = Object.fromEntries(
      (vm.tags ?? []).filter((t) => t.key.startsWith(CLOUDSTACK_TAG_PREFIX)).map((t) => [t.key.slice(CLOUDSTACK_TAG_PREFIX.length), t.value]),
    );
    const created = createdMs(vm);
    return {
      id: vm.id,
      name: vm.displayname || vm.name,
      state: cloudStackState(vm.state, vm.jobid !== undefined && (vm.jobstatus ?? 0) === 0),
      idempotencyKey: vm.name,
      tags,
      ...(!Number.isNaN(created) && { createdAt: new Date(created).toISOString() }),
      extra: {
        hostName: vm.name,
        cloudStackState: vm.state,
        zoneId: vm.zoneid,
        templateId: vm.templateid,
        serviceOfferingId: vm.serviceofferingid,
        ...(vm.instancename && { instanceName: vm.instancename }),
        ...(vm.jobid && { jobId: vm.jobid }),
        ...(vm.nic?.[0]?.ipaddress && { ipAddress: vm.nic[0].ipaddress }),
      },
    };
  };

  const listOfferings = async (): Promise<CloudOffering[]> => {
    const raw = await listAll<CsOffering>('listServiceOfferings', 'serviceoffering');
    const offerings = raw
      // Customised offerings have no fixed size; deploying one needs cpu and memory details this adapter does not send.
      .filter((o) => typeof o.cpunumber === 'number' && typeof o.memory === 'number')
      .map((o) => ({
        id: o.id,
        name: o.name,
        cpus: o.cpunumber!,
        memoryMiB: o.memory!,
        diskGiB: o.rootdisksize && o.rootdisksize > 0 ? o.rootdisksize : UNSIZED_ROOT_DISK_GIB,
      }));
    offeringsCache = { at: Date.now(), offerings };
    return offerings.map((o) => ({ ...o }));
  };

  const cachedOfferings = async (): Promise<CloudOffering[]> =>
    offeringsCache && Date.now() - offeringsCache.at < OFFERINGS_TTL_MS ? offeringsCache.offerings : listOfferings();

  /** Submits a destroy (with expunge, so the host name is free again) and does not wait for it. */
  const destroy = (id: string) => call('destroyVirtualMachine', { id, expunge: 'true' });

  /** {@link destroy}, where a VM that is already gone counts as done. */
  const terminate = async (id: string): Promise<void> => {
    try {
      await destroy(id);
    } catch (err) {
      if (!(err instanceof CloudError && err.kind === 'InvalidRequest')) throw err;
      // CloudStack says "no such VM" with the same 431 as a bad parameter: done only if it is really gone.
      const vm = await getVm(id);
      if (vm && isLive(vm)) throw err;
    }
  };

  const tag = (id: string, tags: InstanceSpec['tags']) =>
    call('createTags', {
      resourceids: id,
      resourcetype: 'UserVm',
      ...Object.fromEntries(
        Object.entries(tags).flatMap(([k, v], i) => [
          [`tags[${i}].key`, `${CLOUDSTACK_TAG_PREFIX}${k}`],
          [`tags[${i}].value`, v],
        ]),
      ),
    });

  /** The survivor as the create's answer; its tags may still be in their job, so the spec's fill in. */
  const answer = (vm: CsVm, spec: InstanceSpec, deployJobId?: string): CloudInstance => {
    const inst = toInstance(vm);
    return { ...inst, tags: { ...spec.tags, ...inst.tags }, extra: { ...inst.extra, ...(deployJobId && { jobId: deployJobId }) } };
  };

  return {
    name,
    kind: 'cloudstack',

    listOfferings,

    async createInstance(spec, idempotencyKey) {
      const userdata = Buffer.from(spec.userData, 'utf8').toString('base64');
      if (userdata.length > CLOUDSTACK_USER_DATA_MAX_BASE64) {
        throw new CloudError(
          'InvalidRequest',
          `${name}: user-data of "${spec.name}" is ${Buffer.byteLength(spec.userData)} bytes, ${userdata.length} in base64; ` +
            `CloudStack accepts at most ${CLOUDSTACK_USER_DATA_MAX_BASE64} base64 bytes (${(CLOUDSTACK_USER_DATA_MAX_BASE64 / 4) * 3} raw)`,
        );
      }
      if (!HOST_NAME.test(idempotencyKey)) {
        throw new CloudError(
          'InvalidRequest',
          `${name}: "${idempotencyKey}" cannot be a CloudStack host name (letters, digits and "-", at most 63, starting with a letter)`,
        );
      }
      const existing = await liveByKey(idempotencyKey);
      if (existing.length > 0) return answer(existing[0], spec);

      const offerings = await cachedOfferings();
      const offering = smallestFit(offerings, spec.offering);
      if (!offering) {
        const o = spec.offering;
        const offered = offerings.map((f) => `${f.name} ${f.cpus}/${f.memoryMiB}/${f.diskGiB}`).join(', ');
        throw new CloudError('InvalidOffering', `${name}: no service offering fits ${o.cpus} cpus / ${o.memoryMiB} MiB / ${o.diskGiB} GiB (offered: ${offered})`);
      }
      let deployed: { id: string; jobid?: string };
      try {
        // POST: CloudStack takes only 2 KB of user-data in a query string.
        deployed = (await call(
          'deployVirtualMachine',
          {
            serviceofferingid: offering.id,
            templateid: cfg.images[spec.image] ?? spec.image,
            zoneid: cfg.zoneId,
            name: idempotencyKey,
            displayname: spec.name,
            userdata,
            ...(cfg.networkIds?.length ? { networkids: cfg.networkIds.join(',') } : {}),
          },
          'POST',
        )) as { id: string; jobid?: string };
      } catch (err) {
        // A racing create took the host name first (CloudStack refuses duplicates in a network): that VM is the answer.
        if (err instanceof CloudError && err.kind === 'InvalidRequest') {
          const raced = await liveByKey(idempotencyKey);
          if (raced.length > 0) return answer(raced[0], spec);
        }
        throw err;
      }
      try {
        await tag(deployed.id, spec.tags);
      } catch (err) {
        // An untagged VM would escape the teardown sweep; remove it and let the create be retried.
        await destroy(deployed.id).catch(() => undefined);
        throw err;
      }
      // Creates racing where host names are not unique (or checked late) each made a VM: keep the earliest.
      const [survivor, ...extra] = await liveByKey(idempotencyKey);
      for (const vm of extra) await terminate(vm.id);
      if (survivor?.id === deployed.id) return answer(survivor, spec, deployed.jobid);
      return survivor
        ? answer(survivor, spec)
        : {
            id: deployed.id,
            name: spec.name,
            state: 'PENDING',
            idempotencyKey,
            tags: { ...spec.tags },
            extra: { hostName: idempotencyKey, ...(deployed.jobid && { jobId: deployed.jobid }) },
          };
    },

    async describeInstance(id) {
      const vm = await getVm(id);
      if (!vm) throw new CloudError('NotFound', `${name}: no virtual machine "${id}"`);
      return toInstance(vm);
    },

    async findInstance(idempotencyKey) {
      const [vm] = await liveByKey(idempotencyKey);
      return vm && toInstance(vm);
    },

    async listInstances(filter) {
      const params: CloudStackParams =
        filter.cluster !== undefined ? { 'tags[0].key': `${CLOUDSTACK_TAG_PREFIX}cluster`, 'tags[0].value': filter.cluster } : {};
      return (await listVms(params))
        .filter(isLive)
        .map(toInstance)
        .filter((i) => (filter.cluster === undefined ? i.tags?.cluster !== undefined : i.tags?.cluster === filter.cluster));
    },

    terminateInstance: terminate,

    async jobStatus(jobId) {
      const r = await call('queryAsyncJobResult', { jobid: jobId });
      const result = (r.jobresult ?? {}) as Record<string, unknown>;
      switch (Number(r.jobstatus)) {
        case 0:
          return { jobId, status: 'pending' };
        case 1:
          return { jobId, status: 'succeeded', result };
        default: {
          const code = Number(result.errorcode ?? r.jobresultcode ?? 530);
          const text = String(result.errortext ?? '(no text)');
          const error = new CloudError(cloudStackErrorKind(code), `${name}: job ${jobId} (${String(r.cmd ?? 'unknown command')}) failed: ${text} (CloudStack error ${code})`, {
            cause: { errorcode: code, errortext: text },
          });
          return { jobId, status: 'failed', error };
        }
      }
    },
  };
}
