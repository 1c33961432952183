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
 * Answers are read, not trusted to have one shape: older releases send ids (of VMs, offerings,
 * jobs, zones, templates) as numbers, so every id is made a string where it is read; fields
 * may be left out (a NIC without an address, an empty list without its key or `count`); a
 * failed job's `jobresult` is an object or, with `jobresulttype: "text"`, the reason itself.
 * An answer that cannot be read at all (not JSON, no `<command>response`, a VM without an id, a
 * failed job that says nothing about why) is an `UnreadableAnswer`, which is not retried: the
 * same answer would come back.
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
import { requireImage, smallestFit } from './registry.js';

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
  | {
      jobId: string;
      status: 'succeeded';
      /** `jobresult` as CloudStack sent it. */
      result: Record<string, unknown>;
      /** The VM in the result (a deploy's, a destroy's), read as a listed one is. */
      instance?: CloudInstance;
    }
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
  // Older (Cloud.com 2.x) releases' VM_INSUFFICIENT_CAPACITY, as in the developer guide's failed-job
  // example; their other codes either mean what ApiErrorCode does now or fall to the rules below.
  551: 'CapacityExhausted',
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

/** A VM of `listVirtualMachines` (or of a job result), as {@link readVm} reads it: ids as strings. */
interface CsVm {
  id: string;
  /** Host name; CloudStack always sends it, but a VM without one is still listed (it can be no key's). */
  name?: string;
  displayname?: string;
  state?: string;
  created?: string;
  jobid?: string;
  jobstatus?: number;
  instancename?: string;
  zoneid?: string;
  templateid?: string;
  serviceofferingid?: string;
  /** The default NIC's address, else the first a NIC has. */
  ipaddress?: string;
  tags: { key: string; value: string }[];
}

/** A service offering of `listServiceOfferings`, as {@link readOffering} reads it. */
interface CsOffering {
  id: string;
  name: string;
  cpunumber?: number;
  memory?: number;
  rootdisksize?: number;
}

/** Builds the error for an answer that lacks what the adapter needs (`what`: what is missing or wrong). */
type Unreadable = (what: string) => CloudError;

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** An id as a string: older releases send numbers (`"id": 2601`), newer ones UUID strings. */
const idOf = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : typeof v === 'number' && Number.isFinite(v) ? String(v) : undefined);

/** A number CloudStack may send as a number or a numeric string. */
const numberOf = (v: unknown): number | undefined => {
  const n = typeof v === 'number' ? v : typeof v === 'string' && v.trim() !== '' ? Number(v) : NaN;
  return Number.isFinite(n) ? n : undefined;
};

const textOf = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** Reads a VM; one without an id cannot be described, kept or destroyed, so the answer is unreadable. */
function readVm(raw: unknown, unreadable: Unreadable): CsVm {
  if (!isRecord(raw)) throw unreadable(`a virtual machine that is not an object (${JSON.stringify(raw)?.slice(0, 100)})`);
  const id = idOf(raw.id);
  if (id === undefined) throw unreadable(`a virtual machine without an "id" (${JSON.stringify(raw).slice(0, 200)})`);
  const nics = Array.isArray(raw.nic) ? raw.nic.filter(isRecord) : [];
  // A NIC on a network without addressing has no `ipaddress`; the default NIC's is the one wanted.
  const ipaddress = [...nics.filter((n) => n.isdefault === true), ...nics].map((n) => textOf(n.ipaddress)).find((ip) => ip);
  const tags = (Array.isArray(raw.tags) ? raw.tags.filter(isRecord) : []).flatMap((t) =>
    typeof t.key === 'string' ? [{ key: t.key, value: String(t.value ?? '') }] : [],
  );
  return {
    id,
    name: textOf(raw.name),
    displayname: textOf(raw.displayname),
    state: textOf(raw.state),
    created: textOf(raw.created),
    jobid: idOf(raw.jobid),
    jobstatus: numberOf(raw.jobstatus),
    instancename: textOf(raw.instancename),
    zoneid: idOf(raw.zoneid),
    templateid: idOf(raw.templateid),
    serviceofferingid: idOf(raw.serviceofferingid),
    ipaddress,
    tags,
  };
}

/** Reads a service offering; without an id it could not be deployed. */
function readOffering(raw: unknown, unreadable: Unreadable): CsOffering {
  if (!isRecord(raw)) throw unreadable(`a service offering that is not an object (${JSON.stringify(raw)?.slice(0, 100)})`);
  const id = idOf(raw.id);
  if (id === undefined) throw unreadable(`a service offering without an "id" (${JSON.stringify(raw).slice(0, 200)})`);
  return {
    id,
    name: textOf(raw.name) ?? id,
    cpunumber: numberOf(raw.cpunumber),
    memory: numberOf(raw.memory),
    rootdisksize: numberOf(raw.rootdisksize),
  };
}

/** A CloudError for a CloudStack error: its text kept, the kind from its code (without a code, taken as transient). */
function apiError(what: string, code: number | undefined, text: string | undefined, cause: Record<string, unknown> = {}): CloudError {
  return new CloudError(
    code === undefined ? 'Transient' : cloudStackErrorKind(code),
    `${what}: ${text ?? '(CloudStack gave no reason)'} (${code === undefined ? 'no CloudStack error code' : `CloudStack error ${code}`})`,
    { cause: { errorcode: code, errortext: text, ...cause } },
  );
}

/** The start of an answer, for messages. */
const excerpt = (text: string) => (text.length > 200 ? `${text.slice(0, 200)}…` : text);

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

  /** An answer to `command` that lacks what is needed; the message names the cloud, the command and what. */
  const unreadable = (command: string, what: string) => new CloudError('UnreadableAnswer', `${name}: cannot read the answer to ${command}: ${what}`);

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
    const key = `${command.toLowerCase()}response`;
    let json: unknown;
    let isJson = true;
    try {
      json = JSON.parse(text);
    } catch {
      // A proxy's error page, or not CloudStack at all: judged by the status below.
      isJson = false;
    }
    const top = isRecord(json) ? json : undefined;
    // Errors CloudStack cannot tie to a command (one it does not know) come under `errorresponse`.
    const error = [top?.[key], top?.errorresponse].find((b) => isRecord(b) && b.errorcode !== undefined) as Record<string, unknown> | undefined;
    if (error) {
      throw apiError(`${name}: ${command} failed`, numberOf(error.errorcode) ?? status, textOf(error.errortext), { cserrorcode: error.cserrorcode });
    }
    if (status < 200 || status >= 300) {
      throw new CloudError(cloudStackErrorKind(status), `${name}: ${command} answered HTTP ${status} without a CloudStack response: ${text.slice(0, 200)}`, {
        cause: { status },
      });
    }
    // A 2xx answer that is not CloudStack's will not change on a retry: never read it as an empty one.
    const body = top?.[key];
    if (!isJson) throw unreadable(command, `it is not JSON (HTTP ${status}): ${excerpt(text)}`);
    if (!isRecord(body)) {
      const found = top ? Object.keys(top).map((k) => `"${k}"`).join(', ') || 'nothing' : `a JSON ${Array.isArray(json) ? 'array' : typeof json}`;
      throw unreadable(command, `no "${key}" object in it (it has ${found}): ${excerpt(text)}`);
    }
    return body;
  };

  /** Every page of a list call (CloudStack pages at `default.page.size` whether asked or not). */
  const listAll = async <T extends { id: string }>(
    command: string,
    itemKey: string,
    read: (raw: unknown, unreadable: Unreadable) => T,
    params: CloudStackParams = {},
  ): Promise<T[]> => {
    const byId = new Map<string, T>();
    const fail: Unreadable = (what) => unreadable(command, what);
    for (let page = 1; ; page++) {
      const r = await call(command, { ...params, page: String(page), pagesize: String(pageSize) });
      // An empty list is `{}`: neither the items' key nor `count`.
      const raw = r[itemKey] ?? [];
      if (!Array.isArray(raw)) throw fail(`"${itemKey}" is not a list: ${excerpt(JSON.stringify(raw))}`);
      const items = raw.map((item) => read(item, fail));
      // A VM made or removed between pages shifts the others; ids keep them counted once.
      for (const item of items) byId.set(item.id, item);
      const count = numberOf(r.count) ?? 0;
      if (items.length < pageSize || page * pageSize >= count) return [...byId.values()];
    }
  };

  const listVms = (params: CloudStackParams) => listAll('listVirtualMachines', 'virtualmachine', readVm, { ...params, listall: 'true' });

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
      vm.tags.filter((t) => t.key.startsWith(CLOUDSTACK_TAG_PREFIX)).map((t) => [t.key.slice(CLOUDSTACK_TAG_PREFIX.length), t.value]),
    );
    const created = createdMs(vm);
    return {
      id: vm.id,
      name: vm.displayname || vm.name || vm.id,
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
        ...(vm.ipaddress && { ipAddress: vm.ipaddress }),
      },
    };
  };

  const listOfferings = async (): Promise<CloudOffering[]> => {
    const raw = await listAll('listServiceOfferings', 'serviceoffering', readOffering);
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
      // The template id comes from the registry only; a name it does not map is never sent as an id.
      const template = requireImage(name, cfg.images, spec.image);
      const existing = await liveByKey(idempotencyKey);
      if (existing.length > 0) return answer(existing[0], spec);

      const offerings = await cachedOfferings();
      const offering = smallestFit(offerings, spec.offering);
      if (!offering) {
        const o = spec.offering;
        const offered = offerings.map((f) => `${f.name} ${f.cpus}/${f.memoryMiB}/${f.diskGiB}`).join(', ');
        throw new CloudError('InvalidOffering', `${name}: no service offering fits ${o.cpus} cpus / ${o.memoryMiB} MiB / ${o.diskGiB} GiB (offered: ${offered})`);
      }
      let answered: Record<string, unknown>;
      try {
        // POST: CloudStack takes only 2 KB of user-data in a query string.
        answered = await call(
          'deployVirtualMachine',
          {
            serviceofferingid: offering.id,
            templateid: template,
            zoneid: cfg.zoneId,
            name: idempotencyKey,
            displayname: spec.name,
            userdata,
            ...(cfg.networkIds?.length ? { networkids: cfg.networkIds.join(',') } : {}),
          },
          'POST',
        );
      } catch (err) {
        // A racing create took the host name first (CloudStack refuses duplicates in a network): that VM is the answer.
        if (err instanceof CloudError && err.kind === 'InvalidRequest') {
          const raced = await liveByKey(idempotencyKey);
          if (raced.length > 0) return answer(raced[0], spec);
        }
        throw err;
      }
      const deployed = { id: idOf(answered.id), jobid: idOf(answered.jobid) };
      if (deployed.id === undefined) {
        // Without the VM's id it cannot be tagged; the host name still finds it, if it was made.
        const [made] = await liveByKey(idempotencyKey);
        if (!made) {
          throw unreadable(
            'deployVirtualMachine',
            `no "id" of the new VM in it (job ${deployed.jobid ?? 'not given'}), and no VM has the host name "${idempotencyKey}": ${excerpt(JSON.stringify(answered))}`,
          );
        }
        deployed.id = made.id;
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
      // CloudStack would answer 431 "missing parameter jobid" (Marvin's recorded error); no need to ask.
      if (jobId === '') throw new CloudError('InvalidRequest', `${name}: queryAsyncJobResult needs a job id`);
      const r = await call('queryAsyncJobResult', { jobid: jobId });
      const fail: Unreadable = (what) => unreadable('queryAsyncJobResult', `job ${jobId}: ${what}`);
      const result = r.jobresult;
      switch (numberOf(r.jobstatus)) {
        case 0:
          return { jobId, status: 'pending' };
        case 1: {
          const vm = isRecord(result) && result.virtualmachine !== undefined ? toInstance(readVm(result.virtualmachine, fail)) : undefined;
          return { jobId, status: 'succeeded', result: isRecord(result) ? result : {}, ...(vm && { instance: vm }) };
        }
        case 2: {
          // `jobresulttype: "object"`: {errorcode, errortext}; `"text"`: the reason itself, its code in `jobresultcode`.
          const text = typeof result === 'string' ? result : isRecord(result) ? textOf(result.errortext) : undefined;
          // A `jobresultcode` of 0 is no code at all.
          const positive = (v: unknown) => {
            const n = numberOf(v);
            return n !== undefined && n > 0 ? n : undefined;
          };
          const code = (isRecord(result) ? positive(result.errorcode) : undefined) ?? positive(r.jobresultcode);
          if (text === undefined && code === undefined) {
            const error = fail(`it failed (jobstatus 2) with neither a jobresult nor a jobresultcode saying why: ${excerpt(JSON.stringify(r))}`);
            return { jobId, status: 'failed', error };
          }
          const error = apiError(`${name}: job ${jobId} (${textOf(r.cmd) ?? 'unknown command'}) failed`, code, text, { jobresultcode: numberOf(r.jobresultcode) });
          return { jobId, status: 'failed', error };
        }
        default:
          throw fail(`jobstatus ${JSON.stringify(r.jobstatus) ?? '(none)'} is none of 0 (pending), 1 (succeeded), 2 (failed)`);
      }
    },
  };
}
