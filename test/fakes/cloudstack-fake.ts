/**
 * A FAKE of the Apache CloudStack API, for tests. It is not CloudStack and not CloudStack's
 * simulator (that needs a management server and MySQL, which do not run here): it is built
 * from the API reference and the developer guide, and from how the management server checks
 * a request (`ApiServer.verifyRequest`), and it implements only what cloudgate calls.
 *
 * - `/client/api`, GET query strings and POST form bodies (merged, as a servlet does).
 * - Signatures checked as CloudStack does, independently of the adapter's signing code:
 *   parameter names sorted as sent, values re-encoded with Java's `URLEncoder` rules (`+` as
 *   `%20`), the whole string lower-cased, HMAC-SHA1 under the secret key, base64. Wrong:
 *   401 with errorcode 401.
 * - JSON only (`response=json`), shaped as CloudStack's: `{"<command>response": {...}}`; an
 *   error is `{"<command>response": {"errorcode": 431, "errortext": "..."}}` with that HTTP status;
 *   an empty list is `{"list...response": {}}`.
 * - Async jobs for deploy, tags and destroy, run on a virtual timeline: a job's effects happen
 *   `asyncJobDelayMs` after it is submitted (0: before the next request is answered), and are
 *   applied whenever a request or a test looks. Nothing runs on timers.
 * - Host names unique among live VMs (CloudStack checks them per network domain), unless
 *   `uniqueHostNames: false`, which stands for CloudStack's window where two racing deploys both
 *   pass that check.
 * - `capacity`: VMs the "hosts" can run; a deploy past it fails in its job with 533 and leaves
 *   the VM in `Error`, as CloudStack's planner does.
 */
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { listenOnLoopback } from './listen.js';

export interface CloudStackFakeOptions {
  apiKey: string;
  secretKey: string;
  /** How long after submission a job's effects happen; default 50 ms. */
  asyncJobDelayMs?: number;
  /** How long a started VM takes from `Starting` to `Running`; default 200 ms. */
  runningAfterMs?: number;
  /** Default true, as CloudStack refuses a second live VM with a host name in a network. */
  uniqueHostNames?: boolean;
  /** VMs that can be placed at once; default unlimited. */
  capacity?: number;
}

/** One VM as the fake holds it. */
export interface FakeVm {
  id: string;
  /** Host name. */
  name: string;
  displayname: string;
  state: 'Stopped' | 'Starting' | 'Running' | 'Stopping' | 'Destroyed' | 'Expunging' | 'Error';
  /** CloudStack's format, to the second: `2024-01-15T11:00:00+0000`. */
  created: string;
  /** Set once expunged: the VM is then in no list any more. */
  removed?: string;
  zoneid: string;
  templateid: string;
  serviceofferingid: string;
  networkids: string[];
  /** As sent: base64. */
  userdata?: string;
  tags: { key: string; value: string }[];
}

/** A request the fake accepted (signature valid), for assertions. */
export interface FakeRequest {
  method: string;
  command: string;
  /** Parameters as received, without `signature`. */
  params: Record<string, string>;
}

export interface CloudStackFake {
  /** `http://127.0.0.1:<port>/client/api`. */
  endpoint: string;
  /** Every VM ever made, expunged ones included (with `removed`), as of now. */
  vms(): FakeVm[];
  /** Accepted requests, oldest first. */
  requests(): FakeRequest[];
  /** The next n signed requests get 429, as CloudStack's API rate limit answers. */
  throttleNext(n: number): void;
  /** The next n signed requests fail with this CloudStack error code (or, if it is none, a bare HTTP status). */
  failNext(code: number, n?: number): void;
  stop(): Promise<void>;
}

export const FAKE_ZONE_ID = '7f2c3a1e-0000-4000-8000-00000000a001';
export const FAKE_NETWORK_ID = '7f2c3a1e-0000-4000-8000-00000000b001';
/** Templates, by name. */
export const FAKE_TEMPLATES = {
  'CernVM 4 micro 2020.07': '7f2c3a1e-0000-4000-8000-00000000c001',
  'CernVM 4 micro 2023.06': '7f2c3a1e-0000-4000-8000-00000000c002',
} as const;
/** Service offerings as `listServiceOfferings` returns them (CloudStack's defaults and a few more). */
export const FAKE_OFFERINGS = [
  { id: '7f2c3a1e-0000-4000-8000-00000000d001', name: 'Small Instance', cpunumber: 1, cpuspeed: 500, memory: 512 },
  { id: '7f2c3a1e-0000-4000-8000-00000000d002', name: 'Medium Instance', cpunumber: 1, cpuspeed: 1000, memory: 1024 },
  { id: '7f2c3a1e-0000-4000-8000-00000000d003', name: 'Large Instance', cpunumber: 2, cpuspeed: 2000, memory: 4096, rootdisksize: 40 },
  { id: '7f2c3a1e-0000-4000-8000-00000000d004', name: 'XLarge Instance', cpunumber: 4, cpuspeed: 2000, memory: 8192, rootdisksize: 80 },
  { id: '7f2c3a1e-0000-4000-8000-00000000d005', name: 'Custom', iscustomized: true },
] as const;

/** CloudStack's async job states. */
const PENDING = 0;
const SUCCEEDED = 1;
const FAILED = 2;

interface Job {
  id: string;
  cmd: string;
  status: number;
  resultCode: number;
  result?: Record<string, unknown>;
  instanceId?: string;
  created: string;
  completed?: string;
}

/** A CloudStack API error: its `ApiErrorCode` and text. */
class ApiError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** CloudStack `ApiErrorCode`s; other codes `failNext` answers as a bare HTTP status, like a proxy. */
const API_ERROR_CODES = new Set([401, 405, 429, 430, 431, 432, 530, 531, 532, 533, 534, 535, 536, 537]);
const USER_DATA_MAX_GET = 2048;
const USER_DATA_MAX_POST = 32768;
const HOST_NAME = /^[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/;
const PLACED = new Set(['Starting', 'Running', 'Stopping']);

/** `yyyy-MM-dd'T'HH:mm:ssZ`, CloudStack's date format. */
const csDate = (ms: number) => `${new Date(ms).toISOString().slice(0, 19)}+0000`;

/** Java's `URLEncoder.encode(s, "UTF-8")`: keeps `A-Za-z0-9.-*_`, space as `+`, the rest `%XX`. */
function javaUrlEncode(s: string): string {
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9.\-*_]/.test(c)) out += c;
    else if (byte === 0x20) out += '+';
    else out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/**
 * Whether a request's signature is right, checked as CloudStack's `ApiServer.verifyRequest`
 * does: every parameter but `signature`, names sorted as sent, values re-encoded (Java's
 * `URLEncoder`, `+` as `%20`), lower-cased, HMAC-SHA1 under the secret key, base64.
 */
export function verifyCloudStackSignature(params: ReadonlyMap<string, string>, apiKey: string, secretKey: string): boolean {
  let sentKey: string | undefined;
  let signature: string | undefined;
  const parts: string[] = [];
  for (const name of [...params.keys()].sort()) {
    const value = params.get(name)!;
    if (name.toLowerCase() === 'signature') {
      signature = value;
      continue;
    }
    if (name.toLowerCase() === 'apikey') sentKey = value;
    parts.push(`${name}=${javaUrlEncode(value).replace(/\+/g, '%20')}`);
  }
  if (signature === undefined || sentKey !== apiKey) return false;
  const computed = createHmac('sha1', secretKey).update(parts.join('&').toLowerCase(), 'utf8').digest('base64');
  const a = Buffer.from(signature);
  const b = Buffer.from(computed);
  return a.length === b.length && timingSafeEqual(a, b);
}

/** What CloudStack's servlet answers to a request whose signature is wrong (with HTTP and errorcode 401). */
export const CLOUDSTACK_UNVERIFIED_TEXT = 'unable to verify user credentials and/or request signature';

/**
 * A request's path and parameters as CloudStack's servlet sees them: GET query string and POST
 * form body merged, the first value of each name winning, query string first (`getParameter`).
 */
export async function readCloudStackRequest(req: http.IncomingMessage): Promise<{ path: string; params: Map<string, string> }> {
  const url = new URL(req.url ?? '/', 'http://fake');
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const params = new Map<string, string>();
  for (const [k, v] of url.searchParams) if (!params.has(k)) params.set(k, v);
  if (req.method === 'POST' && (req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')) {
    for (const [k, v] of new URLSearchParams(Buffer.concat(chunks).toString('utf8'))) if (!params.has(k)) params.set(k, v);
  }
  return { path: url.pathname, params };
}

/** Sends a CloudStack error, `{"<command>response": {"errorcode": ..., "errortext": ...}}`, with that HTTP status. */
export function sendCloudStackError(res: http.ServerResponse, command: string, code: number, text: string): void {
  const body = JSON.stringify({ [`${command.toLowerCase()}response`]: { uuidList: [], errorcode: code, cserrorcode: 9999, errortext: text } });
  res.writeHead(code, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** Starts the fake on 127.0.0.1 and a free port. */
export async function startCloudStackFake(opts: CloudStackFakeOptions): Promise<CloudStackFake> {
  const jobDelay = opts.asyncJobDelayMs ?? 50;
  const runningAfter = opts.runningAfterMs ?? 200;
  const uniqueHostNames = opts.uniqueHostNames ?? true;
  const capacity = opts.capacity ?? Infinity;
  const vms = new Map<string, FakeVm>();
  const jobs = new Map<string, Job>();
  const log: FakeRequest[] = [];
  /** Effects due at a time, applied in order by `settle`. */
  let timeline: { at: number; seq: number; run: () => void }[] = [];
  let seq = 0;
  let throttle = 0;
  let failures: { code: number; n: number } | undefined;

  const at = (when: number, run: () => void) => {
    timeline.push({ at: when, seq: seq++, run });
    timeline.sort((a, b) => a.at - b.at || a.seq - b.seq);
  };
  const settle = () => {
    const now = Date.now();
    while (timeline.length > 0 && timeline[0].at <= now) timeline.shift()!.run();
  };

  const submitJob = (cmd: string, instanceId?: string): Job => {
    const job: Job = { id: randomUUID(), cmd, status: PENDING, resultCode: 0, instanceId, created: csDate(Date.now()) };
    jobs.set(job.id, job);
    return job;
  };
  const finishJob = (job: Job, result: Record<string, unknown>, errorCode?: number) => {
    if (job.status !== PENDING) return;
    job.status = errorCode === undefined ? SUCCEEDED : FAILED;
    job.resultCode = errorCode ?? 0;
    job.result = result;
    job.completed = csDate(Date.now());
  };
  const pendingJobOf = (vmId: string) => [...jobs.values()].reverse().find((j) => j.instanceId === vmId && j.status === PENDING);

  const offering = (id: string) => FAKE_OFFERINGS.find((o) => o.id === id);
  const templateName = (id: string) => Object.entries(FAKE_TEMPLATES).find(([, v]) => v === id)?.[0];

  const render = (vm: FakeVm) => {
    const o = offering(vm.serviceofferingid) as { name: string; cpunumber?: number; memory?: number } | undefined;
    const job = pendingJobOf(vm.id);
    return {
      id: vm.id,
      name: vm.name,
      displayname: vm.displayname,
      account: 'cloudgate',
      domainid: '7f2c3a1e-0000-4000-8000-00000000e001',
      domain: 'ROOT',
      created: vm.created,
      state: vm.state,
      haenable: false,
      zoneid: vm.zoneid,
      zonename: 'fake-zone',
      templateid: vm.templateid,
      templatename: templateName(vm.templateid),
      serviceofferingid: vm.serviceofferingid,
      serviceofferingname: o?.name,
      cpunumber: o?.cpunumber,
      memory: o?.memory,
      hypervisor: 'KVM',
      nic: vm.networkids.map((networkid, i) => ({ id: `${vm.id}-nic${i}`, networkid, isdefault: i === 0, ipaddress: `10.1.1.${(vm.id.charCodeAt(0) % 200) + 2}` })),
      tags: vm.tags.map((t) => ({ ...t, resourcetype: 'UserVm', resourceid: vm.id, account: 'cloudgate', domain: 'ROOT' })),
      ...(job && { jobid: job.id, jobstatus: job.status }),
    };
  };

  // ---- commands -------------------------------------------------------------------------
  type Params = { get(name: string): string | undefined; map(prefix: string): { key: string; value: string }[] };
  const need = (p: Params, cmd: string, name: string): string => {
    const v = p.get(name);
    if (v === undefined || v === '') throw new ApiError(431, `Unable to execute API command ${cmd.toLowerCase()} due to missing parameter ${name}`);
    return v;
  };
  const badId = (cmd: string, name: string, value: string) =>
    new ApiError(
      431,
      `Unable to execute API command ${cmd.toLowerCase()} due to invalid value. Invalid parameter ${name} value=${value} due to incorrect long value format, or entity does not exist or due to incorrect parameter annotation for the field in api cmd class.`,
    );
  const page = <T>(p: Params, items: T[]): T[] => {
    const pg = p.get('page');
    const size = p.get('pagesize');
    if (pg === undefined) return items;
    if (size === undefined) throw new ApiError(431, '"pagesize" parameter is required when "page" is specified');
    const n = Number(pg);
    const s = Number(size);
    return items.slice((n - 1) * s, n * s);
  };
  const list = <T>(p: Params, key: string, items: T[]) => (items.length === 0 ? {} : { count: items.length, [key]: page(p, items) });

  const commands: Record<string, (p: Params, method: string) => Record<string, unknown>> = {
    listZones: (p) => list(p, 'zone', [{ id: FAKE_ZONE_ID, name: 'fake-zone', networktype: 'Advanced', allocationstate: 'Enabled', securitygroupsenabled: false }]),

    listTemplates: (p) => {
      need(p, 'listTemplates', 'templatefilter');
      return list(
        p,
        'template',
        Object.entries(FAKE_TEMPLATES).map(([name, id]) => ({ id, name, displaytext: name, isready: true, ispublic: true, zoneid: FAKE_ZONE_ID, ostypename: 'Other Linux (64-bit)', hypervisor: 'KVM' })),
      );
    },

    listServiceOfferings: (p) => {
      const id = p.get('id');
      return list(p, 'serviceoffering', FAKE_OFFERINGS.filter((o) => id === undefined || o.id === id).map((o) => ({ ...o, displaytext: o.name, storagetype: 'shared', offerha: false, created: '2024-01-01T00:00:00+0000' })));
    },

    deployVirtualMachine: (p, method) => {
      const cmd = 'deployVirtualMachine';
      const serviceofferingid = need(p, cmd, 'serviceofferingid');
      const templateid = need(p, cmd, 'templateid');
      const zoneid = need(p, cmd, 'zoneid');
      if (!offering(serviceofferingid)) throw badId(cmd, 'serviceofferingid', serviceofferingid);
      if (!templateName(templateid)) throw badId(cmd, 'templateid', templateid);
      if (zoneid !== FAKE_ZONE_ID) throw badId(cmd, 'zoneid', zoneid);
      if ('iscustomized' in offering(serviceofferingid)!) throw new ApiError(431, 'cpuNumber, cpuSpeed and memory need to be specified for a custom service offering');
      const networkids = (p.get('networkids') ?? FAKE_NETWORK_ID).split(',');
      for (const n of networkids) if (n !== FAKE_NETWORK_ID) throw badId(cmd, 'networkids', n);
      const id = randomUUID();
      const name = p.get('name') ?? `VM-${id}`;
      if (!HOST_NAME.test(name)) {
        throw new ApiError(431, 'Invalid value for instance name. Instance names can only contain ASCII letters a-z, A-Z, digits 0-9, hyphen (-), must be between 1 and 63 characters long, and can\'t start or end with "-" and can\'t start with digit');
      }
      const userdata = p.get('userdata');
      if (userdata !== undefined) {
        if (!/^[A-Za-z0-9+/]*={0,2}$/.test(userdata) || userdata.length % 4 !== 0) throw new ApiError(431, 'User data is not base64 encoded');
        const max = method === 'POST' ? USER_DATA_MAX_POST : USER_DATA_MAX_GET;
        if (userdata.length > max) throw new ApiError(431, `User data is too long for an http ${method} request`);
      }
      if (uniqueHostNames && [...vms.values()].some((v) => v.name === name && !v.removed)) {
        throw new ApiError(431, `The vm with hostName ${name} already exists in the network domain: cs1cloud.internal; network=${networkids[0]}`);
      }
      const now = Date.now();
      const vm: FakeVm = {
        id,
        name,
        displayname: p.get('displayname') ?? name,
        state: 'Stopped',
        created: csDate(now),
        zoneid,
        templateid,
        serviceofferingid,
        networkids,
        ...(userdata !== undefined && { userdata }),
        tags: [],
      };
      vms.set(id, vm);
      const job = submitJob('org.apache.cloudstack.api.command.user.vm.DeployVMCmd', id);
      at(now + jobDelay, () => {
        if (vm.state !== 'Stopped') return;
        if ([...vms.values()].filter((v) => PLACED.has(v.state)).length >= capacity) {
          vm.state = 'Error';
          finishJob(job, { errorcode: 533, errortext: `Unable to create a deployment for VM instance {"id":"${id}","name":"${name}"}` }, 533);
          return;
        }
        vm.state = 'Starting';
        at(now + jobDelay + runningAfter, () => {
          if (vm.state !== 'Starting') return;
          vm.state = 'Running';
          finishJob(job, { virtualmachine: render(vm) });
        });
      });
      return { id, jobid: job.id };
    },

    createTags: (p) => {
      const cmd = 'createTags';
      const ids = need(p, cmd, 'resourceids').split(',');
      if (need(p, cmd, 'resourcetype').toLowerCase() !== 'uservm') throw new ApiError(431, 'The fake tags only UserVm resources');
      const tags = p.map('tags');
      if (tags.length === 0) throw new ApiError(431, `Unable to execute API command createtags due to missing parameter tags`);
      const targets = ids.map((id) => {
        const vm = vms.get(id);
        if (!vm || vm.removed) throw badId(cmd, 'resourceids', id);
        return vm;
      });
      const job = submitJob('org.apache.cloudstack.api.command.user.tag.CreateTagsCmd');
      at(Date.now() + jobDelay, () => {
        const dup = targets.flatMap((vm) => tags.filter((t) => vm.tags.some((x) => x.key === t.key)).map((t) => `${t.key} on ${vm.id}`));
        if (dup.length > 0) {
          finishJob(job, { errorcode: 431, errortext: `tag ${dup[0]} already exists` }, 431);
          return;
        }
        for (const vm of targets) if (!vm.removed) vm.tags.push(...tags.map((t) => ({ ...t })));
        finishJob(job, { success: true });
      });
      return { jobid: job.id };
    },

    listVirtualMachines: (p) => {
      const id = p.get('id');
      if (id !== undefined && !vms.has(id)) throw badId('listVirtualMachines', 'id', id);
      const name = p.get('name');
      const keyword = p.get('keyword')?.toLowerCase();
      const state = p.get('state')?.toLowerCase();
      const wanted = p.map('tags');
      const found = [...vms.values()].filter(
        (vm) =>
          !vm.removed &&
          (id === undefined || vm.id === id) &&
          (name === undefined || vm.name === name) &&
          (state === undefined || vm.state.toLowerCase() === state) &&
          (keyword === undefined || vm.name.toLowerCase().includes(keyword) || vm.displayname.toLowerCase().includes(keyword)) &&
          wanted.every((t) => vm.tags.some((x) => x.key === t.key && x.value === t.value)),
      );
      return list(p, 'virtualmachine', found.map(render));
    },

    destroyVirtualMachine: (p) => {
      const id = need(p, 'destroyVirtualMachine', 'id');
      const vm = vms.get(id);
      if (!vm) throw badId('destroyVirtualMachine', 'id', id);
      if (vm.removed) throw new ApiError(431, 'Unable to find a virtual machine with specified vmId');
      const expunge = p.get('expunge') === 'true';
      const job = submitJob('org.apache.cloudstack.api.command.user.vm.DestroyVMCmd', id);
      at(Date.now() + jobDelay, () => {
        if (vm.removed) {
          finishJob(job, { errorcode: 431, errortext: 'Unable to find a virtual machine with specified vmId' }, 431);
          return;
        }
        // A deploy still starting the VM ends there.
        for (const j of jobs.values()) {
          if (j.instanceId === id && j.status === PENDING && j !== job) finishJob(j, { errorcode: 530, errortext: 'VM was destroyed while starting' }, 530);
        }
        vm.state = expunge ? 'Expunging' : 'Destroyed';
        if (expunge) vm.removed = csDate(Date.now());
        finishJob(job, { virtualmachine: render(vm) });
      });
      return { jobid: job.id };
    },

    queryAsyncJobResult: (p) => {
      const jobid = need(p, 'queryAsyncJobResult', 'jobid');
      const job = jobs.get(jobid);
      if (!job) throw new ApiError(431, `Unable to find a job by id ${jobid}`);
      return {
        jobid: job.id,
        accountid: '7f2c3a1e-0000-4000-8000-00000000f001',
        userid: '7f2c3a1e-0000-4000-8000-00000000f002',
        cmd: job.cmd,
        jobstatus: job.status,
        jobprocstatus: 0,
        jobresultcode: job.resultCode,
        jobresulttype: 'object',
        ...(job.result && { jobresult: job.result }),
        ...(job.instanceId && { jobinstancetype: 'VirtualMachine', jobinstanceid: job.instanceId }),
        created: job.created,
        ...(job.completed && { completed: job.completed }),
      };
    },
  };

  // ---- HTTP -----------------------------------------------------------------------------
  const send = (res: http.ServerResponse, status: number, body: unknown) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const { path, params } = await readCloudStackRequest(req);
    if (path !== '/client/api') {
      res.writeHead(404, { 'content-type': 'text/html' }).end('<html><body>Not Found</body></html>');
      return;
    }
    const command = params.get('command') ?? '';
    const responseName = `${command.toLowerCase()}response`;
    if (!verifyCloudStackSignature(params, opts.apiKey, opts.secretKey)) {
      sendCloudStackError(res, command, 401, CLOUDSTACK_UNVERIFIED_TEXT);
      return;
    }
    if (throttle > 0) {
      throttle--;
      sendCloudStackError(res, command, 429, 'The given user has reached his/her account api limit, please retry after 1000 ms.');
      return;
    }
    if (failures && failures.n > 0) {
      const { code } = failures;
      failures.n--;
      if (API_ERROR_CODES.has(code)) sendCloudStackError(res, command, code, `injected failure ${code}`);
      else res.writeHead(code, { 'content-type': 'text/html' }).end(`<html><body><h1>${code}</h1>injected by the fake</body></html>`);
      return;
    }
    const lower = new Map([...params].map(([k, v]) => [k.toLowerCase(), v]));
    const p: Params = {
      get: (name) => lower.get(name.toLowerCase()),
      // `tags[0].key=k&tags[0].value=v`: CloudStack's map parameters.
      map: (prefix) => {
        const byIndex = new Map<number, { key: string; value: string }>();
        for (const [k, v] of lower) {
          const m = new RegExp(`^${prefix}\\[(\\d+)\\]\\.(key|value)$`).exec(k);
          if (!m) continue;
          const e = byIndex.get(Number(m[1])) ?? { key: '', value: '' };
          e[m[2] as 'key' | 'value'] = v;
          byIndex.set(Number(m[1]), e);
        }
        return [...byIndex.entries()].sort(([a], [b]) => a - b).map(([, e]) => e);
      },
    };
    log.push({ method: req.method ?? 'GET', command, params: Object.fromEntries([...params].filter(([k]) => k.toLowerCase() !== 'signature')) });
    const run = commands[command];
    if (!run) {
      sendCloudStackError(res, command, 432, `The given command ${command} does not exist or it is not available for the user (this fake implements ${Object.keys(commands).join(', ')})`);
      return;
    }
    if (p.get('response') !== 'json') {
      sendCloudStackError(res, command, 431, 'this fake answers only response=json');
      return;
    }
    settle();
    try {
      const body = run(p, req.method ?? 'GET');
      settle();
      send(res, 200, { [responseName]: body });
    } catch (err) {
      if (err instanceof ApiError) sendCloudStackError(res, command, err.code, err.message);
      else sendCloudStackError(res, command, 530, `internal error in the fake: ${err instanceof Error ? err.message : String(err)}`);
    }
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500).end(String(err));
    });
  });
  const origin = await listenOnLoopback(server);

  return {
    endpoint: `${origin}/client/api`,
    vms() {
      settle();
      return [...vms.values()].map((vm) => ({ ...vm, networkids: [...vm.networkids], tags: vm.tags.map((t) => ({ ...t })) }));
    },
    requests: () => log.map((r) => ({ ...r, params: { ...r.params } })),
    throttleNext(n) {
      throttle = n;
    },
    failNext(code, n = 1) {
      failures = { code, n };
    },
    async stop() {
      timeline = [];
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
