/**
 * A FAKE OCCI 1.2 server for tests. No OCCI server is maintained any more, so cloudgate's
 * OCCI adapter is tested against this stand-in, written from the OGF documents OCCI Core,
 * OCCI HTTP Protocol (GFD.223), OCCI Infrastructure (GFD.224) and OCCI Text Rendering, in
 * their 1.2 versions. It speaks the text/occi header rendering (and text/uri-list for
 * collections), and does what those documents ask of a server:
 *
 * - a query interface at `/-/` (and `/.well-known/org/ogf/occi/-/`) listing kinds (entity,
 *   resource, link, compute, network, storage), compute actions and mixins: os_tpl and
 *   resource_tpl templates, a contextualization mixin (OCCI 1.2's `user_data`, or the
 *   OpenStack `user_data` mixin EGI FedCloud sites offer instead, or both or neither: see
 *   {@link OcciFakeOptions.contextualization}), the credentials mixin `ssh_key` and
 *   cloudgate's `tags` mixin (a provider mixin defining `org.cloudgate.*`);
 *   `Category` filters in the request select categories and those related to them;
 * - `POST /compute/` creates a compute after checking the request like a strict server
 *   would (one compute kind, known mixins, exactly one os_tpl, at most one resource_tpl,
 *   only attributes the kind or applied mixins define, typed values, required ones present,
 *   immutable ones left alone, base64 user-data in either mixin's attribute) and answers
 *   `201` with `Location`;
 *   anything else is `400` with a text/plain reason;
 * - collections (`/compute/` and every mixin location) list `X-OCCI-Location`s, or a
 *   text/uri-list body when asked, filtered by `Category` and `X-OCCI-Attribute` request headers;
 * - `GET /compute/<id>` renders `Category`, action `Link`s and every attribute; the state is
 *   `inactive` until `activeAfterMs` after the create, then `active`; `POST …?action=` runs
 *   start/stop/restart/suspend; `DELETE` removes it (a second one is `404`);
 * - every answer carries `Server: … OCCI/1.2`; a client announcing a later OCCI version gets `501`.
 *
 * Beyond the spec: `default=` in attribute definitions, since the text rendering has no
 * other way to state a resource template's size (see `OcciAttributeDef.default`); a bearer
 * token check (`401`) and injected throttling (`429` + `Retry-After`) for error-path tests.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { listenOnLoopback } from './listen.js';
import {
  categoryId,
  CLOUDGATE_TAGS_MIXIN,
  OCCI_INFRASTRUCTURE,
  OcciSyntaxError,
  OS_TPL,
  parseAttributes,
  parseCategories,
  renderAttribute,
  renderCategory,
  renderLink,
  RESOURCE_TPL,
  TAG_ATTRIBUTES,
  USER_DATA_MIXIN,
  type OcciCategory,
  type OcciValue,
} from '../../clouds/occi.js';

export interface OcciFakeOptions {
  /** Bearer token every request must carry; unset: no authentication. */
  token?: string;
  /** A compute turns from `inactive` to `active` this long after its create; default 200 ms. */
  activeAfterMs?: number;
  /**
   * The contextualization mixins the query interface offers: `occi` is OCCI 1.2's
   * `compute#user_data` (attribute `occi.compute.userdata`), `openstack` the OpenStack
   * `instance#user_data` that EGI FedCloud sites offer (attribute `org.openstack.compute.user_data`).
   * Default `['occi']`; `[]` offers none.
   */
  contextualization?: readonly ('occi' | 'openstack')[];
}

/** A live compute as the fake stores it. */
export interface FakeCompute {
  /** Its location path, e.g. `/compute/<uuid>`. */
  location: string;
  /** Kind and mixins, as scheme+term. */
  kind: string;
  mixins: string[];
  /** Every attribute as the fake renders it now (state included). */
  attributes: Record<string, OcciValue>;
  createdAt: number;
  /** The create request's OCCI headers as received. */
  received: { category: string[]; attribute: string[] };
}

export interface OcciFake {
  /** Base URL; the query interface is `<endpoint>/-/`. */
  endpoint: string;
  computes(): FakeCompute[];
  /** The next `n` requests get `429 Too Many Requests` with `Retry-After: 1`. */
  throttleNext(n: number): void;
  /** Every request answered so far, oldest first. */
  requests(): { method: string; path: string; status: number }[];
  stop(): Promise<void>;
}

/** The fake's OS template scheme; its terms are what a cloud registry's `images` map to. */
export const FAKE_OS_TPL_SCHEME = 'http://occi-fake.cloudgate.example/occi/os_tpl#';
export const FAKE_RESOURCE_TPL_SCHEME = 'http://occi-fake.cloudgate.example/occi/resource_tpl#';
/** OS templates the fake offers, by term. */
export const FAKE_OS_TEMPLATES = ['ucernvm4-2020.07', 'ucernvm4-2023.06', 'ubuntu-22.04'] as const;

type AttrType = 'string' | 'integer' | 'float' | 'boolean' | 'enum';
interface AttrDef {
  name: string;
  type: AttrType;
  values?: string[];
  required?: boolean;
  immutable?: boolean;
  default?: OcciValue;
}
interface Category {
  term: string;
  scheme: string;
  class: 'kind' | 'mixin' | 'action';
  title: string;
  rel?: string;
  location?: string;
  attrs: AttrDef[];
  actions?: string[];
}

const CORE = 'http://schemas.ogf.org/occi/core#';
const COMPUTE_ACTION = 'http://schemas.ogf.org/occi/infrastructure/compute/action#';
const COMPUTE_STATES = ['active', 'inactive', 'suspended', 'error'];
const s = (name: string, more: Partial<AttrDef> = {}): AttrDef => ({ name, type: 'string', ...more });

const ENTITY: Category = { term: 'entity', scheme: CORE, class: 'kind', title: 'Entity', attrs: [s('occi.core.id', { immutable: true }), s('occi.core.title')] };
const RESOURCE: Category = { term: 'resource', scheme: CORE, class: 'kind', title: 'Resource', rel: `${CORE}entity`, attrs: [s('occi.core.summary')] };
const LINK: Category = { term: 'link', scheme: CORE, class: 'kind', title: 'Link', rel: `${CORE}entity`, attrs: [] };
const COMPUTE: Category = {
  term: 'compute',
  scheme: OCCI_INFRASTRUCTURE,
  class: 'kind',
  title: 'Compute Resource',
  rel: `${CORE}resource`,
  location: '/compute/',
  attrs: [
    { name: 'occi.compute.architecture', type: 'enum', values: ['x86', 'x64'] },
    { name: 'occi.compute.cores', type: 'integer' },
    s('occi.compute.hostname'),
    { name: 'occi.compute.share', type: 'integer' },
    { name: 'occi.compute.memory', type: 'float' },
    { name: 'occi.compute.state', type: 'enum', values: COMPUTE_STATES, immutable: true },
    s('occi.compute.state.message', { immutable: true }),
  ],
  actions: ['start', 'stop', 'restart', 'suspend'].map((a) => COMPUTE_ACTION + a),
};
const ACTIONS: Category[] = [
  ['start', []],
  ['stop', ['graceful', 'acpioff', 'poweroff']],
  ['restart', ['graceful', 'warm', 'cold']],
  ['suspend', ['hibernate', 'suspend']],
].map(([term, methods]) => ({
  term: term as string,
  scheme: COMPUTE_ACTION,
  class: 'action',
  title: `${term as string} the compute`,
  attrs: methods.length > 0 ? [{ name: 'method', type: 'enum', values: methods as string[] }] : [],
}));
const TEMPLATE_BASES: Category[] = [
  { term: 'os_tpl', scheme: OCCI_INFRASTRUCTURE, class: 'mixin', title: 'OS template', location: '/mixin/os_tpl/', attrs: [] },
  { term: 'resource_tpl', scheme: OCCI_INFRASTRUCTURE, class: 'mixin', title: 'Resource template', location: '/mixin/resource_tpl/', attrs: [] },
];
const OS_TEMPLATES: Category[] = FAKE_OS_TEMPLATES.map((term) => ({
  term,
  scheme: FAKE_OS_TPL_SCHEME,
  class: 'mixin',
  title: term.startsWith('ucernvm') ? `uCernVM 4 (micro), ${term.split('-')[1]} release` : 'Ubuntu 22.04 LTS',
  rel: OS_TPL,
  location: `/mixin/os_tpl/${term}/`,
  attrs: [],
}));
const RESOURCE_TEMPLATES: Category[] = (
  [
    ['small', 1, 2, 20],
    ['medium', 2, 4, 40],
    ['large', 4, 8, 80],
    ['xlarge', 8, 16, 160],
  ] as const
).map(([term, cores, memory, disk]) => ({
  term,
  scheme: FAKE_RESOURCE_TPL_SCHEME,
  class: 'mixin',
  title: `${term}: ${cores} cores, ${memory} GB RAM, ${disk} GB disk`,
  rel: RESOURCE_TPL,
  location: `/mixin/resource_tpl/${term}/`,
  attrs: [
    { name: 'occi.compute.cores', type: 'integer', immutable: true, default: cores },
    { name: 'occi.compute.memory', type: 'float', immutable: true, default: memory },
    { name: 'occi.compute.ephemeral_storage.size', type: 'float', immutable: true, default: disk },
  ],
}));
const USER_DATA: Category = {
  term: USER_DATA_MIXIN.term,
  scheme: USER_DATA_MIXIN.scheme,
  class: 'mixin',
  title: 'Contextualization mixin',
  location: '/mixin/user_data/',
  attrs: [s('occi.compute.userdata', { required: true })],
};
/**
 * OpenStack's contextualization mixin as EGI FedCloud sites render it (rOCCI-server, ooi);
 * written from the recorded rOCCI 5 model (peer-data occi/rocci5-model.txt), not taken from
 * the adapter, so the adapter's own constant is checked against it.
 */
const OPENSTACK_USER_DATA: Category = {
  term: 'user_data',
  scheme: 'http://schemas.openstack.org/compute/instance#',
  class: 'mixin',
  title: "OpenStack's contextualization extension - user_data",
  location: '/mixin/openstack/user_data/',
  attrs: [s('org.openstack.compute.user_data', { required: true })],
};
/** The attributes that carry user-data; both take it base64-encoded. */
const USER_DATA_ATTRIBUTES = ['occi.compute.userdata', 'org.openstack.compute.user_data'];
const SSH_KEY: Category = {
  term: 'ssh_key',
  scheme: 'http://schemas.ogf.org/occi/infrastructure/credentials#',
  class: 'mixin',
  title: 'Credentials mixin',
  location: '/mixin/ssh_key/',
  attrs: [s('occi.credentials.ssh.publickey', { required: true })],
};
const TAGS: Category = {
  ...CLOUDGATE_TAGS_MIXIN,
  class: 'mixin',
  title: 'cloudgate tags',
  location: '/mixin/cloudgate/tags/',
  attrs: [s(TAG_ATTRIBUTES.cluster), s(TAG_ATTRIBUTES.service), s(TAG_ATTRIBUTES.key, { required: true }), s(TAG_ATTRIBUTES.created)],
};
const KINDS: Category[] = [
  ENTITY,
  RESOURCE,
  LINK,
  COMPUTE,
  { term: 'network', scheme: OCCI_INFRASTRUCTURE, class: 'kind', title: 'Network Resource', rel: `${CORE}resource`, location: '/network/', attrs: [{ name: 'occi.network.vlan', type: 'integer' }, s('occi.network.label'), { name: 'occi.network.state', type: 'enum', values: ['active', 'inactive', 'error'], immutable: true }] },
  { term: 'storage', scheme: OCCI_INFRASTRUCTURE, class: 'kind', title: 'Storage Resource', rel: `${CORE}resource`, location: '/storage/', attrs: [{ name: 'occi.storage.size', type: 'float', required: true }, { name: 'occi.storage.state', type: 'enum', values: ['online', 'offline', 'error'], immutable: true }] },
];
const CONTEXTUALIZATION = { occi: USER_DATA, openstack: OPENSTACK_USER_DATA } as const;
const FLOATS = new Set([...KINDS, ...RESOURCE_TEMPLATES].flatMap((c) => c.attrs.filter((a) => a.type === 'float').map((a) => a.name)));

const toOcci = (c: Category, full = true): OcciCategory => ({
  term: c.term,
  scheme: c.scheme,
  class: c.class,
  title: c.title,
  ...(full && {
    ...(c.rel && { rel: [c.rel] }),
    ...(c.location && { location: c.location }),
    attributes: c.attrs.map((a) => ({ name: a.name, required: a.required, immutable: a.immutable, default: a.default, float: a.type === 'float' })),
    ...(c.actions && { actions: c.actions }),
  }),
});

class BadRequest extends Error {}
const bad = (msg: string): never => {
  throw new BadRequest(msg);
};

function typeOk(def: AttrDef, v: OcciValue): boolean {
  switch (def.type) {
    case 'string':
      return typeof v === 'string';
    case 'integer':
      return typeof v === 'number' && Number.isInteger(v);
    case 'float':
      return typeof v === 'number';
    case 'boolean':
      return typeof v === 'boolean';
    case 'enum':
      return typeof v === 'string' && def.values!.includes(v);
  }
}

interface Stored {
  location: string;
  mixins: Category[];
  attributes: Record<string, OcciValue>;
  createdAt: number;
  /** Set by actions; otherwise the state follows the boot clock. */
  state?: string;
  received: FakeCompute['received'];
}

/** Starts the fake on 127.0.0.1 and a free port. */
export async function startOcciFake(opts: OcciFakeOptions = {}): Promise<OcciFake> {
  const activeAfterMs = opts.activeAfterMs ?? 200;
  const offered: Category[] = [
    ...KINDS,
    ...ACTIONS,
    ...TEMPLATE_BASES,
    ...OS_TEMPLATES,
    ...RESOURCE_TEMPLATES,
    ...(opts.contextualization ?? ['occi']).map((c) => CONTEXTUALIZATION[c]),
    SSH_KEY,
    TAGS,
  ];
  const offeredById = new Map(offered.map((c) => [categoryId(c), c]));
  const store = new Map<string, Stored>();
  const log: { method: string; path: string; status: number }[] = [];
  let throttle = 0;

  const stateOf = (c: Stored) => c.state ?? (Date.now() - c.createdAt >= activeAfterMs ? 'active' : 'inactive');
  const attributesOf = (c: Stored): Record<string, OcciValue> => ({ ...c.attributes, 'occi.compute.state': stateOf(c) });
  const lines = (req: IncomingMessage, name: string): string[] => req.headersDistinct[name] ?? [];

  const send = (res: ServerResponse, status: number, body: string, headers: Record<string, string | string[]> = {}, type = 'text/plain') => {
    res.writeHead(status, { 'content-type': `${type}; charset=utf-8`, ...headers });
    res.end(body.endsWith('\n') ? body : `${body}\n`);
  };
  const ok = (res: ServerResponse, headers: Record<string, string | string[]> = {}, status = 200) => send(res, status, 'OK', headers, 'text/occi');
  const accepts = (req: IncomingMessage, type: string) => {
    const accept = req.headers.accept;
    return !accept || accept.includes(type) || accept.includes('*/*') || accept.includes(`${type.split('/')[0]}/*`);
  };

  const queryInterface = (req: IncomingMessage, res: ServerResponse) => {
    if (req.method !== 'GET') return send(res, 405, 'user-defined mixins are not supported by this fake', { allow: 'GET' });
    if (!accepts(req, 'text/occi')) return send(res, 406, 'this fake renders text/occi only');
    const wanted = parseCategories(lines(req, 'category')).map(categoryId);
    // "related to the given Category": the category itself and those whose rel names it.
    const shown = wanted.length === 0 ? offered : offered.filter((c) => wanted.includes(categoryId(c)) || (c.rel !== undefined && wanted.includes(c.rel)));
    ok(res, { category: shown.map((c) => renderCategory(toOcci(c))) });
  };

  const create = (req: IncomingMessage, res: ServerResponse, origin: string) => {
    if (!/^text\/occi\b/i.test(req.headers['content-type'] ?? '')) bad('Content-Type must be text/occi: this fake implements the header rendering');
    const categories = parseCategories(lines(req, 'category'));
    const known = categories.map((c) => {
      const found = offeredById.get(categoryId(c));
      if (!found || found.class !== c.class) bad(`unknown ${c.class} ${categoryId(c)}`);
      return found!;
    });
    const kinds = known.filter((c) => c.class === 'kind');
    if (kinds.length !== 1) bad(`a create needs exactly one kind, got ${kinds.length}`);
    if (kinds[0] !== COMPUTE) bad(`kind ${categoryId(kinds[0])} cannot be created at ${COMPUTE.location}`);
    if (known.some((c) => c.class === 'action')) bad('actions are not categories of a compute');
    const mixins = known.filter((c) => c.class === 'mixin');
    if (mixins.filter((m) => m.rel === OS_TPL).length !== 1) bad(`a compute needs exactly one os_tpl mixin (rel ${OS_TPL})`);
    if (mixins.filter((m) => m.rel === RESOURCE_TPL).length > 1) bad('a compute takes at most one resource_tpl mixin');

    const defs = new Map([ENTITY, RESOURCE, COMPUTE, ...mixins].flatMap((c) => c.attrs.map((a) => [a.name, { def: a, of: c }] as const)));
    const given = parseAttributes(lines(req, 'x-occi-attribute'));
    for (const [name, value] of Object.entries(given)) {
      const d = defs.get(name);
      if (!d) bad(`attribute ${name} is not defined by the kind or the mixins of this request`);
      if (d!.def.immutable) bad(`attribute ${name} is immutable`);
      if (!typeOk(d!.def, value)) bad(`attribute ${name} must be ${d!.def.type === 'enum' ? `one of ${d!.def.values!.join(', ')}` : `of type ${d!.def.type}`}, got ${JSON.stringify(value)}`);
    }
    for (const { def, of } of defs.values()) {
      if (def.required && given[def.name] === undefined && def.default === undefined) bad(`attribute ${def.name} is required by ${categoryId(of)}`);
    }
    for (const attr of USER_DATA_ATTRIBUTES) {
      const userdata = given[attr];
      if (typeof userdata === 'string' && !/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(userdata)) {
        bad(`${attr} must be base64`);
      }
    }

    const id = randomUUID();
    const presets = Object.fromEntries(mixins.flatMap((m) => m.attrs.filter((a) => a.default !== undefined).map((a) => [a.name, a.default!])));
    const stored: Stored = {
      location: `${COMPUTE.location}${id}`,
      mixins,
      attributes: { ...presets, ...given, 'occi.core.id': `urn:uuid:${id}` },
      createdAt: Date.now(),
      received: { category: lines(req, 'category'), attribute: lines(req, 'x-occi-attribute') },
    };
    store.set(id, stored);
    ok(res, { location: origin + stored.location }, 201);
  };

  const collection = (req: IncomingMessage, res: ServerResponse, of: Category, origin: string) => {
    if (req.method === 'POST' && of === COMPUTE) return create(req, res, origin);
    if (req.method !== 'GET') return send(res, 405, `${req.method} is not supported on ${of.location} by this fake`, { allow: of === COMPUTE ? 'GET, POST' : 'GET' });
    const byCategory = parseCategories(lines(req, 'category')).map(categoryId);
    const byAttribute = Object.entries(parseAttributes(lines(req, 'x-occi-attribute')));
    const members = [...store.values()].filter((c) => {
      const ids = [categoryId(COMPUTE), ...c.mixins.map(categoryId)];
      const attrs = attributesOf(c);
      return (of === COMPUTE || ids.includes(categoryId(of))) && byCategory.every((id) => ids.includes(id)) && byAttribute.every(([n, v]) => attrs[n] === v);
    });
    const urls = members.map((c) => origin + c.location);
    if (req.headers.accept?.includes('text/uri-list')) return send(res, 200, urls.join('\r\n'), {}, 'text/uri-list');
    if (!accepts(req, 'text/occi')) return send(res, 406, 'collections are rendered as text/occi or text/uri-list');
    ok(res, urls.length > 0 ? { 'x-occi-location': urls } : {});
  };

  const entity = (req: IncomingMessage, res: ServerResponse, id: string, action: string | null) => {
    const c = store.get(id);
    if (!c) return send(res, 404, `no compute ${COMPUTE.location}${id}`);
    if (req.method === 'DELETE') {
      store.delete(id);
      return ok(res);
    }
    if (req.method === 'POST' && action !== null) {
      const invoked = parseCategories(lines(req, 'category'));
      if (invoked.length !== 1 || categoryId(invoked[0]) !== COMPUTE_ACTION + action || !COMPUTE.actions!.includes(COMPUTE_ACTION + action)) {
        bad(`an action invocation carries exactly the action's category (${COMPUTE_ACTION}${action})`);
      }
      c.state = { start: 'active', stop: 'inactive', restart: 'active', suspend: 'suspended' }[action];
    } else if (req.method !== 'GET') {
      return send(res, 405, `${req.method} is not supported on a compute by this fake`, { allow: 'GET, POST, DELETE' });
    }
    if (!accepts(req, 'text/occi')) return send(res, 406, 'this fake renders text/occi only');
    const state = stateOf(c);
    const applicable = state === 'active' ? ['stop', 'restart', 'suspend'] : ['start'];
    ok(res, {
      category: [COMPUTE, ...c.mixins].map((cat) => renderCategory(toOcci(cat, false))).join(', '),
      link: applicable.map((a) => renderLink({ target: `${c.location}?action=${a}`, rel: [COMPUTE_ACTION + a] })).join(', '),
      'x-occi-attribute': Object.entries(attributesOf(c))
        .map(([n, v]) => renderAttribute(n, v, FLOATS.has(n)))
        .join(', '),
    });
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    req.resume(); // text/occi requests carry nothing in the body
    res.on('finish', () => log.push({ method: req.method ?? '', path: req.url ?? '', status: res.statusCode }));
    res.setHeader('server', 'cloudgate-occi-fake/1.0 OCCI/1.2');
    if (throttle > 0) {
      throttle--;
      return send(res, 429, 'request limit exceeded; retry after 1 s', { 'retry-after': '1' });
    }
    if (opts.token !== undefined && req.headers.authorization !== `Bearer ${opts.token}`) {
      return send(res, 401, 'a valid bearer token is required', { 'www-authenticate': 'Bearer realm="occi-fake"' });
    }
    const version = /OCCI\/(\d+)\.(\d+)/.exec(req.headers['user-agent'] ?? '');
    if (version && Number(version[1]) * 1000 + Number(version[2]) > 1002) return send(res, 501, `OCCI/${version[1]}.${version[2]} is not implemented; this server speaks OCCI/1.2`);
    const url = new URL(req.url ?? '/', 'http://fake');
    const origin = `http://${req.headers.host}`;
    try {
      if (url.pathname === '/-/' || url.pathname === '/.well-known/org/ogf/occi/-/') return queryInterface(req, res);
      const of = offered.find((c) => c.location === url.pathname);
      if (of) return collection(req, res, of, origin);
      const m = /^\/compute\/([^/]+)$/.exec(url.pathname);
      if (m) return entity(req, res, m[1], url.searchParams.get('action'));
      send(res, 404, `no such resource: ${url.pathname}`);
    } catch (err) {
      if (err instanceof BadRequest || err instanceof OcciSyntaxError) return send(res, 400, err.message);
      send(res, 500, err instanceof Error ? err.message : String(err));
    }
  };

  // Room for real user-data in headers, as an OCCI server fronted by a tuned proxy would allow.
  const server = createServer({ maxHeaderSize: 256 * 1024 }, handle);
  const endpoint = await listenOnLoopback(server);

  return {
    endpoint,
    computes: () =>
      [...store.values()].map((c) => ({
        location: c.location,
        kind: categoryId(COMPUTE),
        mixins: c.mixins.map(categoryId),
        attributes: attributesOf(c),
        createdAt: c.createdAt,
        received: c.received,
      })),
    throttleNext(n) {
      throttle += n;
    },
    requests: () => log.map((r) => ({ ...r })),
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
