/** Small request helpers shared by the routes. */
import type { NextFunction, Request, RequestHandler, Response, Router } from 'express';
import { clusterWorkflowId, serviceWorkflowId } from '../workflows/messages.js';
import { Problem } from './problem.js';

/**
 * `router`, entered only by requests whose path can match one of its layers. Express otherwise
 * tries every layer of every router in turn: a `GET /v1/clusters/:id` went through some 30
 * other routes first, about 0.2 ms of its time in the API. A layer's static start (its path up
 * to the first parameter, wildcard or optional part; Express matches case-insensitively) decides.
 * A router with a layer that has no such start (a path-less `use`, a RegExp) is always entered.
 * Its layers are read at the first request, when every route is in place.
 */
export function enteredByItsPaths(router: Router): RequestHandler {
  let starts: string[] | null | undefined;
  return (req: Request, res: Response, next: NextFunction) => {
    // `undefined` until read; `null` (always entered) is kept, not read again on every request.
    if (starts === undefined) starts = staticStarts(router);
    if (starts === null) return router(req, res, next);
    const path = req.path.toLowerCase();
    return starts.some((s) => path.startsWith(s)) ? router(req, res, next) : next();
  };
}

/** Each layer's static start (see {@link enteredByItsPaths}), or null when some layer may match any path. */
function staticStarts(router: Router): string[] | null {
  const starts: string[] = [];
  for (const layer of router.stack as { rawPath?: unknown }[]) {
    for (const raw of [layer.rawPath].flat()) {
      if (typeof raw !== 'string') return null;
      const start = raw.split(/[:*{(]/)[0].toLowerCase();
      if (start === '' || start === '/') return null;
      starts.push(start);
    }
  }
  return starts;
}

/** The matched route pattern (`/v1/clusters/:id`), if routing got that far. */
export function routePattern(req: Request): string | undefined {
  const path: unknown = (req.route as { path?: unknown } | undefined)?.path;
  return typeof path === 'string' ? `${req.baseUrl}${path}` : undefined;
}

/** What a request's log line says it was about: the cluster, its service and the workflow. */
export interface RequestIds {
  clusterId?: string;
  service?: string;
  workflowId?: string;
  instanceId?: string;
}

/**
 * The ids a request was about, for its log line: from the route pattern's `:id` under
 * `/v1/clusters` and its `:service` (read from the path by position: Express clears
 * `req.params` when a handler throws), or from a guest's verified phone-home token
 * (`res.locals.claims` on the readiness route, `res.locals.instance` on a load report). The
 * pattern is the route's or a documented one the path matches; nothing is read from a path of
 * another shape.
 */
export function requestIds(req: Request, res: Response, pattern: string | undefined): RequestIds {
  const claims = (res.locals.claims ?? res.locals.instance) as { cluster?: unknown; service?: unknown; iid?: unknown } | undefined;
  if (claims && typeof claims.cluster === 'string' && typeof claims.service === 'string') {
    return {
      clusterId: claims.cluster,
      service: claims.service,
      workflowId: serviceWorkflowId(claims.cluster, claims.service),
      ...(typeof claims.iid === 'string' && { instanceId: claims.iid }),
    };
  }
  if (!pattern?.startsWith('/v1/clusters/:id')) return {};
  const names = pattern.split('/');
  const values = req.path.split('/');
  if (names.length !== values.length) return {};
  const at = (name: string): string | undefined => {
    const i = names.indexOf(`:${name}`);
    if (i < 0) return undefined;
    try {
      return decodeURIComponent(values[i]).slice(0, 200);
    } catch {
      return undefined;
    }
  };
  const clusterId = at('id');
  if (clusterId === undefined) return {};
  const service = at('service');
  return service === undefined
    ? { clusterId, workflowId: clusterWorkflowId(clusterId) }
    : { clusterId, service, workflowId: serviceWorkflowId(clusterId, service) };
}

/** A path parameter as one string (Express 5 types allow arrays for wildcard parameters). */
export function param(req: Request, name: string): string {
  const v: unknown = req.params[name];
  return Array.isArray(v) ? v.join('/') : String(v ?? '');
}

/**
 * The parsed JSON body. express.json leaves `req.body` undefined when there is no body or
 * it is not JSON; say which, instead of a validation error on every field.
 */
/** Whether the request came with a body at all (parsed or not). */
const hasBody = (req: Request): boolean => req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0;

/** The JSON body of a route whose body may be left out: undefined without one, else as {@link bodyOf}. */
export function optionalBodyOf(req: Request): unknown {
  return req.body === undefined && !hasBody(req) ? undefined : bodyOf(req);
}

export function bodyOf(req: Request): unknown {
  if (req.body !== undefined) return req.body;
  if (hasBody(req)) {
    throw new Problem(415, 'Unsupported Media Type', `send the request body as JSON with Content-Type: application/json (got ${req.get('Content-Type') ?? 'none'})`, {
      slug: 'unsupported-media-type',
    });
  }
  throw new Problem(400, 'Missing request body', 'this request needs a JSON body', {
    slug: 'malformed-body',
    errors: [{ field: 'body', pointer: '', message: 'required' }],
  });
}
