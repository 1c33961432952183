/**
 * The REST client of the `cloudgate` command: bearer requests to the public API, nothing
 * else (no store, no Temporal). Every refusal becomes an {@link ApiError} carrying the
 * problem+json body, which {@link problemLine} renders as the one line the user reads, and
 * {@link exitCodeOf} maps to the documented exit code.
 */
import type { ProblemBody } from '../api/problem.js';

/**
 * Exit codes (README, "The cloudgate command"): one per thing a script may want to tell apart.
 * Commander's own usage errors are mapped to {@link EXIT.usage} in main.ts.
 */
export const EXIT = {
  ok: 0,
  /** The API refused the request (a 4xx not listed below: 409, 422, 429…) or failed (5xx), or anything unexpected. */
  refused: 1,
  /** Bad command line, or a file that cannot be read or is not of the shape the command takes. */
  usage: 2,
  /** Not logged in, or the credential was refused (401). */
  auth: 3,
  /** Not found or not allowed: 403, 404 (someone else's things answer 404 too), 410. */
  notFound: 4,
  /** `--wait`: the cluster ended FAILED, or a change of it rolled back. */
  failed: 5,
  /** `--wait`: still not done when `--timeout` ran out. */
  timeout: 6,
  /** The API could not be reached (connection refused, DNS, TLS, no answer in time). */
  unreachable: 7,
  /** `diff`: apply would change something. */
  changes: 8,
} as const;

/** An error the command reports as one line and ends with `exitCode`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
    opts?: { cause?: unknown },
  ) {
    super(message, opts);
    this.name = 'CliError';
  }
}

/** The API answered with an error status; `problem` is its problem+json body (or a stand-in built from the status). */
export class ApiError extends CliError {
  constructor(
    readonly status: number,
    readonly problem: ProblemBody,
    readonly request: string,
    /** Where a field named in the problem sits in the user's file (`definition.`): prefixed to each field. */
    fieldPrefix = '',
  ) {
    super(problemLine(problem, fieldPrefix), exitCodeOfStatus(status));
    this.name = 'ApiError';
  }

  /** The same refusal with its fields named as they sit in the user's file. */
  withFieldPrefix(prefix: string): ApiError {
    return new ApiError(this.status, this.problem, this.request, prefix);
  }
}

export function exitCodeOfStatus(status: number): number {
  if (status === 401) return EXIT.auth;
  if (status === 403 || status === 404 || status === 410) return EXIT.notFound;
  return EXIT.refused;
}

/**
 * A problem as one readable line: every field error as `field: message` (the field as the
 * request named it, prefixed by where it sits in the user's file), else the detail, then the
 * status and title: `definition.services[0].offering.cpus: Too big: expected number to be <=512 (422 Validation failed)`.
 */
export function problemLine(p: ProblemBody, fieldPrefix = ''): string {
  const at = (field: string) => (field ? `${fieldPrefix}${field}` : fieldPrefix.replace(/\.$/, '') || 'body');
  const what = p.errors?.length ? p.errors.map((e) => `${at(e.field)}: ${e.message}`).join('; ') : p.detail;
  return `${what} (${p.status} ${p.title})`;
}

/** One page of a list route. */
export interface Page<T> {
  items: T[];
  next?: string;
}

export interface ClientOptions {
  url: string;
  token?: string;
  /** Per-request deadline; the API's own Temporal deadlines are shorter. */
  timeoutMs?: number;
}

/** What a request answered: the status, the parsed body (JSON, or text), and the headers. */
export interface Answer<T> {
  status: number;
  body: T;
  headers: Headers;
}

/** A thin fetch wrapper: base URL, bearer, JSON in and out, problem+json errors thrown as {@link ApiError}. */
export class ApiClient {
  readonly url: string;
  private readonly token?: string;
  private readonly timeoutMs: number;

  constructor(opts: ClientOptions) {
    this.url = opts.url.replace(/\/+$/, '');
    this.token = opts.token;
    this.timeoutMs = opts.timeoutMs ?? 120_000;
  }

  /** The raw answer of any status (errors are not thrown); network failures are a {@link CliError} with {@link EXIT.unreachable}. */
  async send<T = unknown>(method: string, path: string, opts: { body?: unknown; headers?: Record<string, string> } = {}): Promise<Answer<T>> {
    const headers: Record<string, string> = { accept: 'application/json, application/problem+json, text/plain', ...opts.headers };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(`${this.url}${path}`, {
        method,
        headers,
        body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
        signal: AbortSignal.timeout(this.timeoutMs),
        redirect: 'error',
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const why = cause?.code ?? cause?.message ?? (err as Error).message;
      throw new CliError(`cannot reach the cloudgate API at ${this.url}: ${why}`, EXIT.unreachable, { cause: err });
    }
    const text = await res.text();
    let body: unknown = text;
    if (/json/.test(res.headers.get('content-type') ?? '') && text !== '') {
      try {
        body = JSON.parse(text);
      } catch {
        // not JSON after all: keep the text
      }
    }
    return { status: res.status, body: body as T, headers: res.headers };
  }

  /** The body of a 2xx answer (304 too, with an empty body); any other status throws an {@link ApiError}. */
  async request<T = unknown>(method: string, path: string, opts: { body?: unknown; headers?: Record<string, string> } = {}): Promise<T> {
    const a = await this.send<T>(method, path, opts);
    if ((a.status >= 200 && a.status < 300) || a.status === 304) return a.body;
    throw new ApiError(a.status, asProblem(a.status, a.body), `${method} ${path}`);
  }

  get<T = unknown>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  /** Every item of a paged list, following `next` to the last page. */
  async all<T>(path: string, query: Record<string, string | undefined> = {}): Promise<T[]> {
    const items: T[] = [];
    let cursor: string | undefined;
    do {
      const q = new URLSearchParams(Object.entries({ ...query, limit: '1000', cursor }).filter((e): e is [string, string] => e[1] !== undefined));
      const page = await this.get<Page<T>>(`${path}?${q}`);
      items.push(...page.items);
      cursor = page.next;
    } while (cursor !== undefined);
    return items;
  }
}

/** The body of an error answer as a problem; a proxy's HTML page or an empty body becomes one naming the status. */
function asProblem(status: number, body: unknown): ProblemBody {
  if (typeof body === 'object' && body !== null && typeof (body as ProblemBody).status === 'number' && typeof (body as ProblemBody).detail === 'string') {
    return body as ProblemBody;
  }
  const text = typeof body === 'string' ? body.trim().split('\n')[0].slice(0, 200) : '';
  return { type: 'about:blank', title: `HTTP ${status}`, status, detail: text || `the API answered ${status} without a problem body` };
}
