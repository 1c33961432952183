/**
 * OCCI 1.2 adapter, speaking the text/occi rendering: every OCCI datum travels in HTTP
 * headers (`Category`, `X-OCCI-Attribute`, `Link`, `X-OCCI-Location`, `Location`), as the
 * OGF documents OCCI Core, HTTP Protocol, Infrastructure and Text Rendering (1.2, 2016)
 * define it. The first half of this file is that rendering (parse and render), exported
 * for tests and for the OCCI fake in test/fakes/.
 *
 * It also reads what EGI FedCloud's rOCCI servers really send (recorded renderings in
 * test/occi-rocci.test.ts): resource templates sized only in their titles
 * ({@link sizeFromTitle}), OpenStack's contextualization mixin instead of OCCI 1.2's
 * ({@link USER_DATA_MIXINS}), and rOCCI-server 1.x's space-separated link attributes. An
 * answer it cannot read is a permanent `UnreadableAnswer`, never retried.
 *
 * OCCI has no client tokens, so idempotency is tag + find: cloudgate's tags travel as
 * attributes of a provider mixin (`org.cloudgate.*`, see {@link CLOUDGATE_TAGS_MIXIN}),
 * a create first looks the key up with a filtered collection GET (HTTP Protocol §
 * "Filtering"), and after its POST re-lists the key and deletes any later duplicate that
 * a concurrent create made.
 */
import http from 'node:http';
import https from 'node:https';
import { describeSecretRef, type OcciCloudConfig } from '../model/clouds-config.js';
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

// ---- text/occi rendering --------------------------------------------------------------

/** Scheme of the OCCI Infrastructure kinds and of the two template mixins. */
export const OCCI_INFRASTRUCTURE = 'http://schemas.ogf.org/occi/infrastructure#';
/** Parent (`rel`) of every provider OS template mixin. */
export const OS_TPL = `${OCCI_INFRASTRUCTURE}os_tpl`;
/** Parent (`rel`) of every provider resource template (flavor) mixin. */
export const RESOURCE_TPL = `${OCCI_INFRASTRUCTURE}resource_tpl`;
/**
 * The OCCI 1.2 contextualization mixin (Infrastructure § User Data Mixin); its
 * `occi.compute.userdata` carries the user-data, base64-encoded: a header's quoted-string
 * cannot carry multi-line data, and rOCCI-server (what EGI sites ran) hands the value to
 * OpenNebula with `USERDATA_ENCODING=base64`.
 */
export const USER_DATA_MIXIN = { term: 'user_data', scheme: 'http://schemas.ogf.org/occi/infrastructure/compute#', attribute: 'occi.compute.userdata' } as const;
/**
 * OpenStack's contextualization mixin, which EGI FedCloud agreed on before OCCI 1.2 had one
 * and which its sites (rOCCI-server, ooi) offer instead; `org.openstack.compute.user_data`
 * carries the user-data, base64-encoded as well: rOCCI-cli encodes it, rOCCI-server checks it
 * is base64, ooi passes it on as nova's `user_data` (base64 in the nova API).
 */
export const OPENSTACK_USER_DATA_MIXIN = { term: 'user_data', scheme: 'http://schemas.openstack.org/compute/instance#', attribute: 'org.openstack.compute.user_data' } as const;
/** The contextualization mixins cloudgate can use, the one it prefers first. */
export const USER_DATA_MIXINS = [USER_DATA_MIXIN, OPENSTACK_USER_DATA_MIXIN] as const;
/**
 * The provider mixin whose attributes hold cloudgate's tags. A server must advertise a
 * mixin defining `org.cloudgate.key` (OCCI lets clients define mixins, but not their
 * attributes); the adapter finds it by that attribute, so the provider may name it otherwise.
 */
export const CLOUDGATE_TAGS_MIXIN = { term: 'tags', scheme: 'http://cloudgate.example/occi#' } as const;
export const TAG_ATTRIBUTES = {
  cluster: 'org.cloudgate.cluster',
  service: 'org.cloudgate.service',
  key: 'org.cloudgate.key',
  /** When the create was sent (ISO 8601); tells a booting `inactive` compute from a stopped one. */
  created: 'org.cloudgate.created',
} as const;

/** An attribute value as text/occi renders it: quoted string, number or boolean. */
export type OcciValue = string | number | boolean;

/** An attribute definition from a Category's `attributes="…"`. */
export interface OcciAttributeDef {
  name: string;
  required?: boolean;
  immutable?: boolean;
  /**
   * Attribute.default. The text rendering's ABNF has no place for it (only JSON does), so
   * cloudgate reads and the fake writes it as one more attribute property:
   * `occi.compute.cores{immutable default=2}`. Resource templates need it to state their size.
   */
  default?: OcciValue;
  /** Render `default` as a float (`2.0`), as the spec types memory and sizes. */
  float?: boolean;
}

/** One `Category` value: a kind, mixin or action. */
export interface OcciCategory {
  term: string;
  scheme: string;
  class: 'kind' | 'mixin' | 'action';
  title?: string;
  /** Related categories (a kind's parent, a mixin's `depends`), as scheme+term. */
  rel?: string[];
  location?: string;
  attributes?: OcciAttributeDef[];
  actions?: string[];
}

/** One `Link` value: a link to another resource or an action (`?action=…`). */
export interface OcciLink {
  target: string;
  rel: string[];
  self?: string;
  category?: string[];
  attributes: Record<string, OcciValue>;
}

/** A text/occi value that does not follow the ABNF. */
export class OcciSyntaxError extends Error {
  override name = 'OcciSyntaxError';
}

const TERM = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const NUMBER = /^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$/;

/**
 * Offending text as an error shows it: quoted, and cut short, since errors end up in
 * workflow histories and an attribute value may be a whole (secret-bearing) user-data.
 */
const shown = (s: string): string => JSON.stringify(s.length > 160 ? `${s.slice(0, 160)}…` : s);

/** `scheme + term`, the identity OCCI uses for categories. */
export const categoryId = (c: { scheme: string; term: string }): string => c.scheme + c.term;

/**
 * Splits header field values into their comma-separated elements (RFC 7230 `#rule`);
 * commas inside quoted strings and `<URI>`s do not split. Takes each header line, since a
 * field may also appear several times: the spec allows both forms.
 */
export function splitElements(values: string | readonly string[] | undefined): string[] {
  const out: string[] = [];
  for (const value of typeof values === 'string' ? [values] : (values ?? [])) {
    let cur = '';
    let quoted = false;
    let angle = false;
    for (let i = 0; i < value.length; i++) {
      const ch = value[i];
      if (quoted) {
        if (ch === '\\' && i + 1 < value.length) cur += ch + value[++i];
        else {
          if (ch === '"') quoted = false;
          cur += ch;
        }
        continue;
      }
      if (ch === ',' && !angle) {
        out.push(cur);
        cur = '';
        continue;
      }
      if (ch === '"') quoted = true;
      else if (ch === '<') angle = true;
      else if (ch === '>') angle = false;
      cur += ch;
    }
    if (quoted) throw new OcciSyntaxError(`unterminated quoted string in ${shown(value)}`);
    out.push(cur);
  }
  return out.map((s) => s.trim()).filter((s) => s !== '');
}

/** Reads a quoted-string starting at `s[i] === '"'`; returns its unescaped text and the index after it. */
function readQuoted(s: string, i: number): [string, number] {
  let text = '';
  for (let j = i + 1; j < s.length; j++) {
    if (s[j] === '\\' && j + 1 < s.length) text += s[++j];
    else if (s[j] === '"') return [text, j + 1];
    else text += s[j];
  }
  throw new OcciSyntaxError(`unterminated quoted string in ${shown(s)}`);
}

/** A parameter's `name=` (its name in group 1). */
const PARAM_START = /^([^=;\s"]+)\s*=/;
/** An unquoted parameter value. */
const UNQUOTED = /^[^;]*?(?=\s+[^=;\s"]+\s*=|;|$)/;

/**
 * `head *( ";" name "=" ( token | quoted-string ) )`, the shape of Category and Link values.
 * rOCCI-server 1.x also separates a link's attributes by spaces only
 * (`category="…";occi.core.id="…" occi.core.title="…"`), so after a value, whitespace and
 * another `name=` start a parameter too; any other text after a value is an error.
 */
function parseParams(element: string): { head: string; params: Map<string, { value: string; quoted: boolean }> } {
  let i = 0;
  if (element.startsWith('<')) {
    i = element.indexOf('>') + 1;
    if (i === 0) throw new OcciSyntaxError(`unterminated <URI> in ${shown(element)}`);
  }
  const semi = element.indexOf(';', i);
  const head = element.slice(0, semi < 0 ? element.length : semi).trim();
  const params = new Map<string, { value: string; quoted: boolean }>();
  const skipSpace = () => {
    while (element[i] === ' ' || element[i] === '\t') i++;
  };
  i = semi < 0 ? element.length : semi;
  while (i < element.length) {
    const start = i;
    skipSpace();
    if (i >= element.length) break;
    if (element[i] === ';') {
      i++;
      skipSpace();
      if (i >= element.length) break; // a trailing ';'
    } else if (i === start || !PARAM_START.test(element.slice(i))) {
      throw new OcciSyntaxError(`text after a value in ${shown(element)}`);
    }
    const named = PARAM_START.exec(element.slice(i));
    if (!named) throw new OcciSyntaxError(`expected name=value after ";" in ${shown(element)}`);
    const name = named[1].toLowerCase();
    i += named[0].length;
    skipSpace();
    let value: string;
    let quoted = false;
    if (element[i] === '"') {
      [value, i] = readQuoted(element, i);
      quoted = true;
    } else {
      // A token runs to the next ';', or to the whitespace before a space-separated `name=`.
      const token = UNQUOTED.exec(element.slice(i))![0];
      value = token.trim();
      i += token.length;
    }
    if (!params.has(name)) params.set(name, { value, quoted });
  }
  return { head, params };
}

/** An attribute value: quoted string, `true`/`false`, a number, else (an unquoted enum) the bare text. */
export function parseValue(text: string): OcciValue {
  const t = text.trim();
  if (t.startsWith('"')) {
    const [value, end] = readQuoted(t, 0);
    if (end !== t.length) throw new OcciSyntaxError(`text after a quoted string in ${shown(text)}`);
    return value;
  }
  if (t === 'true' || t === 'false') return t === 'true';
  if (NUMBER.test(t)) return Number(t);
  if (t === '') throw new OcciSyntaxError('empty attribute value');
  return t;
}

/** `a b{immutable} c{required default=2}` → definitions. */
function parseAttributeDefs(list: string): OcciAttributeDef[] {
  const defs: OcciAttributeDef[] = [];
  for (const m of list.matchAll(/([^\s{}]+)(?:\{([^}]*)\})?/g)) {
    if (!TERM.test(m[1])) throw new OcciSyntaxError(`bad attribute name ${shown(m[1])}`);
    const def: OcciAttributeDef = { name: m[1] };
    for (const p of (m[2] ?? '').match(/default=(?:"(?:[^"\\]|\\.)*"|\S+)|\S+/g) ?? []) {
      if (p === 'required') def.required = true;
      else if (p === 'immutable') def.immutable = true;
      else if (p.startsWith('default=')) {
        def.default = parseValue(p.slice('default='.length));
        if (typeof def.default === 'number' && p.includes('.')) def.float = true;
      }
      // Other properties (later spec versions, other providers) are ignored.
    }
    defs.push(def);
  }
  return defs;
}

/** Parses `Category` header values (one or more lines, each possibly a comma-separated list). */
export function parseCategories(values: string | readonly string[] | undefined): OcciCategory[] {
  return splitElements(values).map((element) => {
    const { head, params } = parseParams(element);
    if (!TERM.test(head)) throw new OcciSyntaxError(`bad category term ${shown(head)} in ${shown(element)}`);
    const scheme = params.get('scheme')?.value;
    const cls = params.get('class')?.value;
    if (!scheme) throw new OcciSyntaxError(`category "${head}" has no scheme`);
    if (cls !== 'kind' && cls !== 'mixin' && cls !== 'action') throw new OcciSyntaxError(`category "${head}" has class ${JSON.stringify(cls)}`);
    const words = (name: string) => params.get(name)?.value.split(/\s+/).filter(Boolean);
    const c: OcciCategory = { term: head, scheme, class: cls };
    if (params.has('title')) c.title = params.get('title')!.value;
    if (params.has('rel')) c.rel = words('rel');
    if (params.has('location')) c.location = params.get('location')!.value;
    if (params.has('attributes')) c.attributes = parseAttributeDefs(params.get('attributes')!.value);
    if (params.has('actions')) c.actions = words('actions');
    return c;
  });
}

/** Parses `X-OCCI-Attribute` header values into name → value. */
export function parseAttributes(values: string | readonly string[] | undefined): Record<string, OcciValue> {
  const out: Record<string, OcciValue> = {};
  for (const element of splitElements(values)) {
    const eq = element.indexOf('=');
    const name = element.slice(0, eq).trim();
    if (eq < 0 || !TERM.test(name)) throw new OcciSyntaxError(`bad attribute ${shown(element)}`);
    try {
      out[name] = parseValue(element.slice(eq + 1));
    } catch (err) {
      if (!(err instanceof OcciSyntaxError)) throw err;
      throw new OcciSyntaxError(`attribute ${name}: ${err.message}`);
    }
  }
  return out;
}

/** Parses `Link` header values. */
export function parseLinks(values: string | readonly string[] | undefined): OcciLink[] {
  return splitElements(values).map((element) => {
    const { head, params } = parseParams(element);
    if (!head.startsWith('<') || !head.endsWith('>')) throw new OcciSyntaxError(`a link starts with <URI>: ${shown(element)}`);
    const rel = params.get('rel')?.value.split(/\s+/).filter(Boolean);
    if (!rel?.length) throw new OcciSyntaxError(`link without rel: ${shown(element)}`);
    const link: OcciLink = { target: head.slice(1, -1), rel, attributes: {} };
    for (const [name, { value, quoted }] of params) {
      if (name === 'rel') continue;
      if (name === 'self') link.self = value;
      else if (name === 'category') link.category = value.split(/\s+/).filter(Boolean);
      else link.attributes[name] = quoted ? value : parseValue(value);
    }
    return link;
  });
}

/**
 * `X-OCCI-Location` values. Each line holds one URI; lines a client library joined with
 * ", " are split again (a URI cannot contain a space, so ", " only separates).
 */
export function parseLocations(values: string | readonly string[] | undefined): string[] {
  const lines = typeof values === 'string' ? [values] : (values ?? []);
  return lines.flatMap((l) => l.split(/,\s+/)).map((l) => l.trim()).filter(Boolean);
}

/** A quoted-string; header values cannot carry line breaks or other control characters. */
export function quote(s: string): string {
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u0008\u000a-\u001f\u007f]|[^\u0000-\u00ff]/.test(s)) {
    throw new OcciSyntaxError(`${shown(s.slice(0, 40))} has characters an HTTP header cannot carry`);
  }
  return `"${s.replace(/[\\"]/g, '\\$&')}"`;
}

/** Renders a value; `float` gives integers a decimal point, as the ABNF's `float` wants. */
export function renderValue(v: OcciValue, float = false): string {
  if (typeof v === 'string') return quote(v);
  if (typeof v === 'boolean') return String(v);
  if (!Number.isFinite(v)) throw new OcciSyntaxError(`${v} is not a number text/occi can render`);
  return float && Number.isInteger(v) ? v.toFixed(1) : String(v);
}

/** `name=value`, one element of an `X-OCCI-Attribute` header. */
export function renderAttribute(name: string, value: OcciValue, float = false): string {
  if (!TERM.test(name)) throw new OcciSyntaxError(`bad attribute name ${shown(name)}`);
  return `${name}=${renderValue(value, float)}`;
}

function renderAttributeDef(d: OcciAttributeDef): string {
  const props = [
    ...(d.required ? ['required'] : []),
    ...(d.immutable ? ['immutable'] : []),
    ...(d.default !== undefined ? [`default=${renderValue(d.default, d.float)}`] : []),
  ];
  return props.length > 0 ? `${d.name}{${props.join(' ')}}` : d.name;
}

/** One `Category` value; join several with ", " (the RECOMMENDED form) or send one per line. */
export function renderCategory(c: OcciCategory): string {
  if (!TERM.test(c.term)) throw new OcciSyntaxError(`bad category term ${shown(c.term)}`);
  const parts = [c.term, `scheme=${quote(c.scheme)}`, `class=${quote(c.class)}`];
  if (c.title !== undefined) parts.push(`title=${quote(c.title)}`);
  if (c.rel?.length) parts.push(`rel=${quote(c.rel.join(' '))}`);
  if (c.location !== undefined) parts.push(`location=${quote(c.location)}`);
  if (c.attributes?.length) parts.push(`attributes=${quote(c.attributes.map(renderAttributeDef).join(' '))}`);
  if (c.actions?.length) parts.push(`actions=${quote(c.actions.join(' '))}`);
  return parts.join('; ');
}

/** One `Link` value. */
export function renderLink(l: Pick<OcciLink, 'target' | 'rel'> & Partial<OcciLink>): string {
  const parts = [`<${l.target}>`, `rel=${quote(l.rel.join(' '))}`];
  if (l.self !== undefined) parts.push(`self=${quote(l.self)}`);
  if (l.category?.length) parts.push(`category=${quote(l.category.join(' '))}`);
  for (const [name, v] of Object.entries(l.attributes ?? {})) parts.push(renderAttribute(name, v));
  return parts.join('; ');
}

// ---- adapter --------------------------------------------------------------------------

/**
 * Normalises `occi.compute.state`. OCCI has no "booting" state: a compute is `inactive`
 * until it runs, and again once stopped. One made less than {@link PENDING_WINDOW_MS} ago
 * (by its `org.cloudgate.created` tag) is taken to be booting.
 */
export function toCloudState(state: OcciValue | undefined, createdAt: string | undefined, now = Date.now()): CloudInstanceState {
  switch (state) {
    case 'active':
      return 'RUNNING';
    case 'inactive': {
      const created = createdAt ? Date.parse(createdAt) : NaN;
      return now - created < PENDING_WINDOW_MS ? 'PENDING' : 'STOPPED';
    }
    case 'suspended':
      return 'STOPPED';
    case 'error':
      return 'ERROR';
    default:
      return 'UNKNOWN';
  }
}

/** A resource template's size as its title states it; absent what the title does not say. */
export interface TitledSize {
  cores?: number;
  memoryGiB?: number;
  diskGiB?: number;
}

/**
 * Reads a resource template's size from its title. rOCCI sites (EGI FedCloud) define the
 * templates' attributes without values and state the size only in the title, e.g.
 * `Small Instance - 1 core and 1.7 GB of RAM` (rOCCI-server 1.x) or `Universe Instance - 40
 * cores and 232 GB RAM` (rOCCI 5); a disk, where a title gives one, as `… 20 GB disk`. GB
 * there are GiB, OCCI's memory unit (rOCCI-server divides OpenNebula's MiB by 1024).
 */
export function sizeFromTitle(title: string): TitledSize {
  const size: TitledSize = {};
  // (?<![\d.]): "2.5 cores" is no "5 cores".
  const cores = /(?<![\d.])(\d+)\s*(?:v?cpus?|cores?)\b/i.exec(title);
  if (cores) size.cores = Number(cores[1]);
  const memory = /(?<![\d.])(\d+(?:\.\d+)?)\s*(GB|GiB|MB|MiB)\s+(?:of\s+)?(?:RAM|memory)\b/i.exec(title);
  if (memory) size.memoryGiB = Number(memory[1]) / (/^M/i.test(memory[2]) ? 1024 : 1);
  const disk = /(?<![\d.])(\d+(?:\.\d+)?)\s*(GB|GiB|TB|TiB)\s+(?:of\s+)?(?:disk|storage|HDD|SSD|ephemeral)\b/i.exec(title);
  if (disk) size.diskGiB = Number(disk[1]) * (/^T/i.test(disk[2]) ? 1024 : 1);
  return size;
}

/**
 * How long an `inactive` compute counts as booting. Longer than any boot we expect, and
 * longer than a service's default readiness timeout (600 s), which replaces slow guests first.
 */
export const PENDING_WINDOW_MS = 15 * 60_000;
/** A resource template that does not say its disk size fits any disk request (the image decides). */
export const UNSIZED_DISK_GIB = 65_536;
const USER_AGENT = 'cloudgate/0.1 OCCI/1.2';
const TIMEOUT_MS = 30_000;
/** The query interface changes when the provider adds images; reread it this often. */
const MODEL_TTL_MS = 5 * 60_000;
/** Entity GETs in flight per listing: OCCI's text rendering has no bulk read. */
const READ_CONCURRENCY = 8;
/** User-data rides in a header; node's 16 KiB default would cut off a real CernVM context. */
const MAX_HEADER_BYTES = 256 * 1024;
const MAX_BODY_BYTES = 4 * 1024 * 1024;
const COLLECTION_ACCEPT = 'text/uri-list, text/occi;q=0.5';

interface OcciResponse {
  status: number;
  headers: NodeJS.Dict<string[]>;
  body: string;
}

/** An HTTP answer that is not a success, kept as the `cause` of the CloudError it becomes. */
export class OcciHttpError extends Error {
  override name = 'OcciHttpError';
  constructor(
    readonly status: number,
    readonly body: string,
  ) {
    super(`HTTP ${status}${body ? `: ${body}` : ''}`);
  }
}

/** A compute as read back from the server. */
interface Entity {
  /** The compute's location path on the endpoint: cloudgate's instance id. */
  id: string;
  url: string;
  categories: OcciCategory[];
  attributes: Record<string, OcciValue>;
  links: OcciLink[];
}

/** What the query interface offers that the adapter uses. */
interface Model {
  compute: OcciCategory;
  computeUrl: URL;
  offerings: { offering: CloudOffering; mixin: OcciCategory }[];
  osTemplates: OcciCategory[];
  /** The contextualization mixin to use (see {@link USER_DATA_MIXINS}) and its user-data attribute. */
  userData?: { mixin: OcciCategory; attribute: string };
  tags?: OcciCategory;
}

/** The first of {@link USER_DATA_MIXINS} the query interface offers, with its attribute. */
function contextualization(mixins: readonly OcciCategory[]): Model['userData'] {
  for (const wanted of USER_DATA_MIXINS) {
    const mixin = mixins.find((m) => categoryId(m) === categoryId(wanted));
    if (mixin) return { mixin, attribute: wanted.attribute };
  }
  return undefined;
}

/**
 * The OCCI adapter for one endpoint. Instance ids are the computes' location paths
 * (`/compute/<uuid>`); the bearer token is read on every call, never kept.
 */
export function createOcciCloud(cfg: OcciCloudConfig): CloudAdapter {
  const name = cfg.name;
  const base = new URL(cfg.endpoint.endsWith('/') ? cfg.endpoint : `${cfg.endpoint}/`);
  const agent = new (base.protocol === 'https:' ? https : http).Agent({ keepAlive: true, maxSockets: 16 });

  /**
   * Locations become paths on the endpoint's own origin: a proxy's internal host name in
   * `Location` does not matter, and the token is never sent to another host.
   */
  const urlOf = (location: string): URL => {
    const path = /^[a-z][a-z0-9+.-]*:/i.test(location)
      ? ((u) => u.pathname + u.search)(new URL(location))
      : location.startsWith('/')
        ? location
        : base.pathname + location;
    return new URL(base.origin + path);
  };
  const idOf = (u: URL): string => u.pathname + u.search;

  const send = (method: string, url: URL, headers: Record<string, string>): Promise<OcciResponse> =>
    new Promise((resolve, reject) => {
      const req = (url.protocol === 'https:' ? https : http).request(
        url,
        { method, agent, headers, timeout: TIMEOUT_MS, maxHeaderSize: MAX_HEADER_BYTES },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size <= MAX_BODY_BYTES) chunks.push(c);
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headersDistinct, body: Buffer.concat(chunks).toString('utf8') }));
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
      req.on('error', reject);
      req.end();
    });

  /**
   * One OCCI request; non-2xx answers become CloudErrors. `on404` says what a 404 means
   * here: a gone entity (`undefined` is returned) or a wrong endpoint.
   */
  const call = async (
    what: string,
    method: string,
    url: URL,
    opts: { accept: string; headers?: Record<string, string>; on404: 'undefined' | CloudErrorKind },
  ): Promise<OcciResponse | undefined> => {
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, accept: opts.accept, ...opts.headers };
    const token = cfg.credentials ? readSecret(cfg.credentials.token, `${name}: OCCI bearer token`) : undefined;
    if (token) headers.authorization = `Bearer ${token}`;
    // A server (or proxy) echoing the request must not put the token into an error message.
    const scrub = (s: string) => (token ? s.split(token).join('[token]') : s);
    let res: OcciResponse;
    try {
      res = await send(method, url, headers);
    } catch (err) {
      const detail = err instanceof Error ? ((err as NodeJS.ErrnoException).code ?? err.message) : String(err);
      throw new CloudError('Transient', scrub(`${name}: ${what}: ${method} ${url.href} failed: ${detail}`), { cause: err });
    }
    if (res.status >= 200 && res.status < 300) return res;
    if (res.status === 404 && opts.on404 === 'undefined') return undefined;
    const text = scrub(res.body.replace(/\s+/g, ' ').trim().slice(0, 500));
    const cause = new OcciHttpError(res.status, text);
    const msg = `${name}: ${what}: ${method} ${url.pathname} answered ${res.status}${text ? `: ${text}` : ''}`;
    const retryAfter = res.headers['retry-after']?.[0];
    let kind: CloudErrorKind;
    if (res.status === 401 || res.status === 403) kind = 'InvalidCredentials';
    else if (res.status === 429 || (res.status === 503 && retryAfter !== undefined)) kind = 'Throttled';
    else if (res.status >= 500 || res.status === 408) kind = 'Transient';
    else if (res.status === 404) kind = opts.on404 as CloudErrorKind;
    else kind = 'InvalidRequest';
    const hint =
      kind === 'InvalidCredentials'
        ? ` (bearer token from ${cfg.credentials ? describeSecretRef(cfg.credentials.token) : 'nowhere: no credentials configured'})`
        : kind === 'Throttled' && retryAfter !== undefined
          ? ` (retry after ${retryAfter})`
          : '';
    throw new CloudError(kind, msg + hint, { cause });
  };

  /**
   * Reads one header of an answer. What cloudgate cannot read is UnreadableAnswer, not
   * Transient: the server would send the same rendering again, so retrying cannot help.
   */
  const readHeader = <T>(what: string, request: string, header: string, fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      if (!(err instanceof OcciSyntaxError)) throw err;
      throw new CloudError('UnreadableAnswer', `${name}: ${what}: cannot read the ${header} header of the answer to ${request}: ${err.message}`, { cause: err });
    }
  };
  /** An answer that is no OCCI rendering at all (a proxy's HTML page, say): also permanent. */
  const notOcci = (what: string, request: string, res: OcciResponse, missing: string, expected: string) =>
    new CloudError(
      'UnreadableAnswer',
      `${name}: ${what}: the answer to ${request} (HTTP ${res.status}, Content-Type ${res.headers['content-type']?.[0] ?? 'none'}) ${missing}, so it is no ${expected}`,
    );

  const discover = async (): Promise<Model> => {
    const url = new URL('-/', base);
    const what = 'read the query interface';
    const request = `GET ${url.pathname}`;
    const res = (await call(what, 'GET', url, { accept: 'text/occi', on404: 'InvalidRequest' }))!;
    const categories = readHeader(what, request, 'Category', () => parseCategories(res.headers.category));
    if (categories.length === 0) throw notOcci(what, request, res, 'has no Category header', 'OCCI query interface');
    const compute = categories.find((c) => c.class === 'kind' && categoryId(c) === `${OCCI_INFRASTRUCTURE}compute`);
    if (!compute) throw new CloudError('InvalidRequest', `${name}: the query interface at ${base.href}-/ offers no compute kind`);
    const mixins = categories.filter((c) => c.class === 'mixin');
    const offerings: Model['offerings'] = [];
    for (const mixin of mixins.filter((m) => m.rel?.includes(RESOURCE_TPL))) {
      const preset = (attr: string) => {
        const v = mixin.attributes?.find((a) => a.name === attr)?.default;
        return typeof v === 'number' && v > 0 ? v : undefined;
      };
      // The attributes' defaults where the server gives them; else what the title says (rOCCI).
      const titled = sizeFromTitle(mixin.title ?? '');
      const cores = preset('occi.compute.cores') ?? titled.cores;
      const memory = preset('occi.compute.memory') ?? titled.memoryGiB;
      // A template that does not state its size cannot be matched to an offering.
      if (cores === undefined || memory === undefined) continue;
      const disk = preset('occi.compute.ephemeral_storage.size') ?? titled.diskGiB;
      offerings.push({
        mixin,
        offering: {
          id: categoryId(mixin),
          name: mixin.title || mixin.term,
          cpus: Math.floor(cores),
          memoryMiB: Math.round(memory * 1024),
          diskGiB: disk !== undefined ? Math.floor(disk) : UNSIZED_DISK_GIB,
        },
      });
    }
    return {
      compute,
      computeUrl: urlOf(compute.location ?? 'compute/'),
      offerings,
      osTemplates: mixins.filter((m) => m.rel?.includes(OS_TPL)),
      userData: contextualization(mixins),
      tags: mixins.find((m) => m.attributes?.some((a) => a.name === TAG_ATTRIBUTES.key)),
    };
  };

  let model: { at: number; promise: Promise<Model> } | undefined;
  const getModel = (): Promise<Model> => {
    if (!model || Date.now() - model.at > MODEL_TTL_MS) {
      const promise = discover();
      model = { at: Date.now(), promise };
      // A failed read is not cached: the next call asks again.
      promise.catch(() => {
        if (model?.promise === promise) model = undefined;
      });
    }
    return model.promise;
  };

  const identity = (c: OcciCategory): string => renderCategory({ term: c.term, scheme: c.scheme, class: c.class });

  /** GET one entity; undefined when it is gone or is not a compute. */
  const getEntity = async (location: string): Promise<Entity | undefined> => {
    const url = urlOf(location);
    const what = `read ${idOf(url)}`;
    const request = `GET ${idOf(url)}`;
    const res = await call(what, 'GET', url, { accept: 'text/occi', on404: 'undefined' });
    if (!res) return undefined;
    const categories = readHeader(what, request, 'Category', () => parseCategories(res.headers.category));
    // Without a kind it is no entity rendering; calling it "not a compute" would report a live instance gone.
    if (!categories.some((c) => c.class === 'kind')) throw notOcci(what, request, res, 'names no kind in a Category header', 'OCCI entity rendering');
    if (!categories.some((c) => c.class === 'kind' && categoryId(c) === `${OCCI_INFRASTRUCTURE}compute`)) return undefined;
    return {
      id: idOf(url),
      url: url.href,
      categories,
      attributes: readHeader(what, request, 'X-OCCI-Attribute', () => parseAttributes(res.headers['x-occi-attribute'])),
      links: readHeader(what, request, 'Link', () => parseLinks(res.headers.link)),
    };
  };

  /**
   * Computes whose `attr` equals `value` (or that have `attr` at all), in the server's
   * collection order. The filter is an entity rendering in the request headers (HTTP
   * Protocol § Filtering); servers MAY ignore it, so every entry is read and checked.
   */
  const listBy = async (attr: string, value?: string): Promise<Entity[]> => {
    const m = await getModel();
    const filter: Record<string, string> = { category: identity(m.compute) };
    if (value !== undefined) filter['x-occi-attribute'] = renderAttribute(attr, value);
    const res = (await call(`list computes by ${attr}`, 'GET', m.computeUrl, { accept: COLLECTION_ACCEPT, headers: filter, on404: 'InvalidRequest' }))!;
    // text/uri-list keeps long collections out of the headers; text/occi puts them in X-OCCI-Location.
    const locations = /^text\/uri-list/i.test(res.headers['content-type']?.[0] ?? '')
      ? res.body.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'))
      : parseLocations(res.headers['x-occi-location']);
    const entities = await mapLimit(locations, READ_CONCURRENCY, getEntity);
    return entities.filter((e): e is Entity => e !== undefined && (value === undefined ? e.attributes[attr] !== undefined : e.attributes[attr] === value));
  };

  const toInstance = (e: Entity): CloudInstance => {
    const a = e.attributes;
    const str = (n: string) => (typeof a[n] === 'string' ? (a[n] as string) : undefined);
    const tags: Record<string, string> = {};
    for (const [tag, attr] of [['cluster', TAG_ATTRIBUTES.cluster], ['service', TAG_ATTRIBUTES.service], ['key', TAG_ATTRIBUTES.key]] as const) {
      const v = str(attr);
      if (v !== undefined) tags[tag] = v;
    }
    const createdAt = str(TAG_ATTRIBUTES.created);
    return {
      id: e.id,
      name: str('occi.core.title') ?? str('occi.compute.hostname') ?? e.id,
      state: toCloudState(a['occi.compute.state'], createdAt),
      ...(tags.key !== undefined && { idempotencyKey: tags.key }),
      tags,
      ...(createdAt !== undefined && { createdAt }),
      extra: {
        url: e.url,
        occiId: a['occi.core.id'],
        occiState: a['occi.compute.state'],
        ...(a['occi.compute.state.message'] !== undefined && { stateMessage: a['occi.compute.state.message'] }),
        cores: a['occi.compute.cores'],
        memoryGiB: a['occi.compute.memory'],
        hostname: a['occi.compute.hostname'],
        mixins: e.categories.filter((c) => c.class === 'mixin').map(categoryId),
        actions: e.links.filter((l) => l.target.includes('?action=')).flatMap((l) => l.rel),
      },
    };
  };

  const terminate = async (id: string): Promise<void> => {
    // 404: already gone, which is what terminating wants.
    await call(`terminate ${id}`, 'DELETE', urlOf(id), { accept: 'text/occi', on404: 'undefined' });
  };

  const findInstance = async (key: string): Promise<CloudInstance | undefined> => {
    const [first] = await listBy(TAG_ATTRIBUTES.key, key);
    return first && toInstance(first);
  };

  return {
    name,
    kind: 'occi',

    async listOfferings() {
      return (await getModel()).offerings.map((o) => ({ ...o.offering }));
    },

    async createInstance(spec: InstanceSpec, key: string) {
      // The os_tpl comes from the registry only; a name it does not map is never matched against the site's templates.
      const image = requireImage(name, cfg.images, spec.image);
      const found = await findInstance(key);
      if (found) return found;
      const m = await getModel();
      const flavor = smallestFit(m.offerings.map((o) => o.offering), spec.offering);
      if (!flavor) {
        const o = spec.offering;
        throw new CloudError(
          'InvalidOffering',
          `${name}: no resource template fits ${o.cpus} cpus / ${o.memoryMiB} MiB / ${o.diskGiB} GiB (offered: ${
            m.offerings.map(({ offering: f }) => `${f.name} ${f.cpus}/${f.memoryMiB}/${f.diskGiB}`).join(', ') || 'none with a stated size'
          })`,
        );
      }
      const template = m.offerings.find((o) => o.offering.id === flavor.id)!.mixin;
      const os = m.osTemplates.find((t) => categoryId(t) === image || t.term === image);
      if (!os) {
        const known = m.osTemplates.map((t) => t.term);
        throw new CloudError(
          'InvalidRequest',
          `${name}: image "${spec.image}" (os_tpl "${image}") is not an OS template of this cloud; it offers ${
            known.slice(0, 20).join(', ') || 'none'
          }${known.length > 20 ? ', …' : ''}`,
        );
      }
      // InvalidRequest, not UnreadableAnswer: the query interface was read fine, this site
      // just cannot deliver what the definition asks for; silently dropping the user-data
      // would boot guests that never phone home.
      if (spec.userData !== '' && !m.userData) {
        throw new CloudError(
          'InvalidRequest',
          `${name}: the query interface at ${base.href}-/ offers no contextualization mixin (neither OCCI 1.2's ${categoryId(USER_DATA_MIXIN)} nor OpenStack's ${categoryId(
            OPENSTACK_USER_DATA_MIXIN,
          )}), so an instance made here could not get its user-data`,
        );
      }
      const context = spec.userData !== '' ? m.userData : undefined;
      if (!m.tags) throw new CloudError('InvalidRequest', `${name}: the server offers no mixin defining ${TAG_ATTRIBUTES.key}; without tags cloudgate cannot find what it made`);

      let headers: Record<string, string>;
      try {
        headers = {
          'content-type': 'text/occi',
          category: [m.compute, template, os, ...(context ? [context.mixin] : []), m.tags].map(identity).join(', '),
          'x-occi-attribute': [
            renderAttribute('occi.core.title', spec.name),
            renderAttribute('occi.compute.hostname', spec.name),
            // Base64, as both mixins take it (see USER_DATA_MIXINS): the user-data is multi-line, a header value is not.
            ...(context ? [renderAttribute(context.attribute, Buffer.from(spec.userData, 'utf8').toString('base64'))] : []),
            renderAttribute(TAG_ATTRIBUTES.cluster, spec.tags.cluster),
            renderAttribute(TAG_ATTRIBUTES.service, spec.tags.service),
            renderAttribute(TAG_ATTRIBUTES.key, key),
            renderAttribute(TAG_ATTRIBUTES.created, new Date().toISOString()),
          ].join(', '),
        };
      } catch (err) {
        if (!(err instanceof OcciSyntaxError)) throw err;
        throw new CloudError('InvalidRequest', `${name}: cannot render "${spec.name}" as text/occi: ${err.message}`, { cause: err });
      }
      const res = (await call(`create "${spec.name}"`, 'POST', m.computeUrl, { accept: 'text/occi', headers, on404: 'InvalidRequest' }))!;
      const location = res.headers.location?.[0];

      // Two creates racing on one key both get here with a compute each. The server's
      // collection lists in creation order, so every racer keeps the same first one; and a
      // racer whose list missed the other's compute made the first one itself.
      const same = await listBy(TAG_ATTRIBUTES.key, key);
      if (same.length === 0) {
        const mine = location ? await getEntity(location) : undefined;
        if (mine) return toInstance(mine);
        throw new CloudError('Transient', `${name}: created "${spec.name}" (${location ?? 'no Location'}) but cannot find it by key yet`);
      }
      const [keep, ...duplicates] = same;
      await Promise.all(duplicates.map((d) => terminate(d.id)));
      return toInstance(keep);
    },

    async describeInstance(id) {
      const e = await getEntity(id);
      if (!e) throw new CloudError('NotFound', `${name}: no compute at ${id}`);
      return toInstance(e);
    },

    findInstance,

    async listInstances(filter) {
      const found = filter.cluster !== undefined ? await listBy(TAG_ATTRIBUTES.cluster, filter.cluster) : await listBy(TAG_ATTRIBUTES.key);
      return found.map(toInstance);
    },

    terminateInstance: terminate,

    async close() {
      agent.destroy();
    },
  };
}

/** `fn` over `items` with at most `limit` in flight; results in input order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
