/**
 * RFC 9457 problem details: the one error shape of the API. Routes throw {@link Problem}s
 * (or let zod / body-parser errors through); {@link problemMiddleware} renders them.
 */
import type { ErrorRequestHandler, RequestHandler } from 'express';
import type { Logger } from 'pino';
import { z } from 'zod';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

/** One field-level error: `field` for people (`services[1].dependsOn[0]`), `pointer` (RFC 6901) for programs. */
export interface FieldError {
  field: string;
  pointer?: string;
  message: string;
}

export interface ProblemBody {
  type: string;
  title: string;
  status: number;
  detail: string;
  instance?: string;
  errors?: FieldError[];
  [extension: string]: unknown;
}

const typeUri = (slug: string): string => `urn:cloudgate:problem:${slug}`;

/** A domain error that knows its HTTP rendering. */
export class Problem extends Error {
  readonly type: string;
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail: string,
    readonly opts: {
      /** Short slug, rendered as `urn:cloudgate:problem:<slug>`. */
      slug?: string;
      errors?: FieldError[];
      headers?: Record<string, string>;
      /** Extension members merged into the body. */
      extensions?: Record<string, unknown>;
      cause?: unknown;
    } = {},
  ) {
    super(detail, { cause: opts.cause });
    this.name = 'Problem';
    this.type = opts.slug ? typeUri(opts.slug) : 'about:blank';
  }
}

export const notFound = (detail: string): Problem => new Problem(404, 'Not Found', detail, { slug: 'not-found' });

export const conflict = (detail: string, cause?: unknown): Problem => new Problem(409, 'Conflict', detail, { slug: 'conflict', cause });

/** 422 with one entry per offending field; the detail repeats the first so a human sees it at once. */
export const invalid = (errors: FieldError[]): Problem =>
  new Problem(
    422,
    'Validation failed',
    errors.length === 1
      ? `${errors[0].field || 'body'}: ${errors[0].message}`
      : `${errors.length} validation errors, first: ${errors[0].field || 'body'}: ${errors[0].message}`,
    { slug: 'validation-failed', errors },
  );

export const unavailable = (detail: string, cause?: unknown): Problem =>
  new Problem(503, 'Service Unavailable', detail, { slug: 'unavailable', cause, headers: { 'Retry-After': '5' } });

/** `services[1].dependsOn[0]` from a zod path. */
export function fieldPath(path: readonly PropertyKey[]): string {
  return path.reduce<string>(
    (acc, k) => (typeof k === 'number' ? `${acc}[${k}]` : acc ? `${acc}.${String(k)}` : String(k)),
    '',
  );
}

const pointerOf = (path: readonly PropertyKey[]): string =>
  path.map((k) => `/${String(k).replace(/~/g, '~0').replace(/\//g, '~1')}`).join('');

/** One {@link FieldError} per zod issue; unknown keys are named one by one. */
export function zodFieldErrors(err: z.ZodError, prefix: readonly PropertyKey[] = []): FieldError[] {
  return err.issues.flatMap((issue) => {
    const at = [...prefix, ...issue.path];
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((k) => ({ field: fieldPath([...at, k]), pointer: pointerOf([...at, k]), message: `unknown field "${k}"` }));
    }
    return [{ field: fieldPath(at), pointer: pointerOf(at), message: issue.message }];
  });
}

/** Parses `value` or throws a 422 {@link Problem} naming every offending field. */
export function parseOr422<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw invalid(zodFieldErrors(r.error));
  return r.data;
}

/**
 * A request path as logs may show it: a pairing PIN is a bearer secret for minutes, so
 * `/v1/pair/<pin>` is logged as `/v1/pair/:pin` (issue 11).
 */
export const loggedPath = (path: string): string => path.replace(/^\/v1\/pair\/.*/i, '/v1/pair/:pin');

/** Catch-all for unknown routes. */
/**
 * 405 with `Allow` for a path some route serves with other methods. `paths` is the OpenAPI
 * document's (`/v1/clusters/{id}`), read once: the routes are documented there, so this
 * cannot drift from them without the document's own test failing.
 */
export function methodNotAllowed(paths: () => Record<string, unknown>): RequestHandler {
  let routes: { re: RegExp; methods: string[] }[] | undefined;
  return (req, _res, next) => {
    routes ??= Object.entries(paths()).map(([p, ops]) => ({
      re: new RegExp(`^${p.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{[^}]+\}/g, '[^/]+')}$`),
      methods: Object.keys(ops as object).map((m) => m.toUpperCase()),
    }));
    const allowed = [...new Set(routes.filter((r) => r.re.test(req.path)).flatMap((r) => r.methods))];
    if (allowed.length === 0 || allowed.includes(req.method)) return next();
    if (allowed.includes('GET')) allowed.push('HEAD');
    const allow = allowed.sort().join(', ');
    next(new Problem(405, 'Method Not Allowed', `${req.method} is not a method of ${loggedPath(req.path)}; it takes ${allow}`, { slug: 'method-not-allowed', headers: { Allow: allow } }));
  };
}

export const notFoundHandler: RequestHandler = (req) => {
  throw notFound(`no route ${req.method} ${req.path}`);
};

/** body-parser errors carry `type` and a 4xx `status`; map the ones clients cause. */
function fromBodyParser(err: { type?: string; status?: number; message?: string; limit?: number }): Problem | undefined {
  switch (err.type) {
    case 'entity.parse.failed':
      return new Problem(400, 'Malformed request body', `request body is not valid JSON: ${err.message}`, {
        slug: 'malformed-body',
        errors: [{ field: 'body', pointer: '', message: 'not valid JSON' }],
      });
    case 'entity.too.large':
      return new Problem(413, 'Content Too Large', `request body is larger than ${err.limit} bytes`, { slug: 'body-too-large' });
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return new Problem(415, 'Unsupported Media Type', err.message ?? 'unsupported body encoding', { slug: 'unsupported-media-type' });
  }
  // Other client-caused errors from Express (bad URI escapes, aborted requests) carry a 4xx status.
  if (typeof err.status === 'number' && err.status >= 400 && err.status < 500) {
    return new Problem(err.status, 'Bad Request', err.message ?? 'bad request', { slug: 'bad-request' });
  }
  return undefined;
}

/** Renders any error as problem+json. Unexpected errors become a 500 without internals. */
export function problemMiddleware(logger: Logger): ErrorRequestHandler {
  return (err: unknown, req, res, next) => {
    if (res.headersSent) return next(err);
    let p: Problem;
    if (err instanceof Problem) p = err;
    else if (err instanceof z.ZodError) p = invalid(zodFieldErrors(err));
    else p = fromBodyParser(err as object) ?? new Problem(500, 'Internal Server Error', 'unexpected error; see the server log', { slug: 'internal' });
    if (p.status >= 500) logger.error({ err, method: req.method, path: loggedPath(req.path) }, 'request failed');
    else logger.debug({ method: req.method, path: loggedPath(req.path), status: p.status, detail: p.detail }, 'request rejected');
    const body: ProblemBody = {
      ...p.opts.extensions,
      type: p.type,
      title: p.title,
      status: p.status,
      detail: p.detail,
      instance: req.originalUrl.split('?')[0],
      ...(p.opts.errors && { errors: p.opts.errors }),
    };
    for (const [k, v] of Object.entries(p.opts.headers ?? {})) res.setHeader(k, v);
    res.status(p.status).type(PROBLEM_CONTENT_TYPE).send(JSON.stringify(body));
  };
}
