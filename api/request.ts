/** Small request helpers shared by the routes. */
import type { Request } from 'express';
import { Problem } from './problem.js';

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
