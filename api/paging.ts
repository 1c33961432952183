/**
 * REST habits every list and every query string share: pages of at most `limit` items with an
 * opaque `next` cursor, and query parameters checked like bodies — an unknown one is a 422
 * naming it, instead of being silently ignored.
 */
import type { Request } from 'express';
import { z } from 'zod';
import type { Page } from '../store/index.js';
import { invalid, parseOr422 } from './problem.js';

/**
 * The query string parsed with `schema` (a zod object); parameters it does not name are a 422
 * listing the ones it knows. Repeated parameters (`?a=1&a=2`) are a 422 too.
 */
export function queryOf<S extends z.ZodObject>(req: Request, schema: S): z.infer<S> {
  const known = Object.keys(schema.shape);
  const query = req.query as Record<string, unknown>;
  const errors = Object.keys(query).flatMap((name) => {
    if (!known.includes(name)) {
      return [{ field: name, message: `unknown query parameter${known.length ? ` (this route takes ${known.join(', ')})` : ' (this route takes none)'}` }];
    }
    return typeof query[name] === 'string' ? [] : [{ field: name, message: 'must be given once, as a plain value' }];
  });
  if (errors.length > 0) throw invalid(errors);
  return parseOr422(schema, query);
}

/** Routes that take no query parameters. */
export const NoQuerySchema = z.object({});

const cursorError = () => invalid([{ field: 'cursor', pointer: '/cursor', message: 'is not a cursor of this list; pass the `next` of a previous page' }]);

/**
 * One page of a list already in its order (oldest first: `createdAt`, then `id`). The cursor
 * names the last item shown, so a page boundary never moves when items are added after it.
 */
export function pageOf<T extends { createdAt: string; id: string }>(items: readonly T[], { cursor, limit }: { cursor?: string; limit: number }): Page<T> {
  const sorted = [...items].sort((a, b) => (a.createdAt === b.createdAt ? (a.id < b.id ? -1 : a.id > b.id ? 1 : 0) : a.createdAt < b.createdAt ? -1 : 1));
  let start = 0;
  if (cursor !== undefined) {
    let key: unknown;
    try {
      key = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    } catch {
      throw cursorError();
    }
    if (!Array.isArray(key) || key.length !== 3 || key[0] !== 'after' || typeof key[1] !== 'string' || typeof key[2] !== 'string') throw cursorError();
    const [, at, id] = key as [string, string, string];
    start = sorted.findIndex((x) => x.createdAt > at || (x.createdAt === at && x.id > id));
    if (start < 0) start = sorted.length;
  }
  const page = sorted.slice(start, start + limit);
  const last = page[page.length - 1];
  return { items: page, ...(start + limit < sorted.length && last && { next: Buffer.from(JSON.stringify(['after', last.createdAt, last.id])).toString('base64url') }) };
}
