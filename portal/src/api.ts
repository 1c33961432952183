/**
 * The portal's only way to the server: the public REST API with the user's bearer, exactly as
 * any other client calls it. The token lives in this module's memory and, so that a reload
 * of the tab keeps the user signed in, in the tab's sessionStorage (gone with the tab, never
 * shared with another tab or site; never localStorage or a cookie). Errors arrive as RFC 9457
 * problem+json and become {@link ApiError}s carrying the field errors the forms show inline.
 */
import type { FieldError, ProblemBody } from '../../api/problem.js';

export type { FieldError };

const STORAGE_KEY = 'cloudgate.token';
const EXPIRY_KEY = 'cloudgate.token.expiresAt';

let token: string | undefined = sessionStorage.getItem(STORAGE_KEY) ?? undefined;
/** When the token expires (ms since the epoch), where that is known: an OIDC sign-in's access token. */
let expiresAt: number | undefined = Number(sessionStorage.getItem(EXPIRY_KEY)) || undefined;
const signedOut = new Set<(why?: string) => void>();

let expiryTimer: ReturnType<typeof setTimeout> | undefined;

/** The bearer the next requests carry (and when it expires, if known); `undefined` signs out. */
export function setToken(t: string | undefined, expires?: number): void {
  token = t;
  expiresAt = t === undefined ? undefined : expires;
  if (t === undefined) sessionStorage.removeItem(STORAGE_KEY);
  else sessionStorage.setItem(STORAGE_KEY, t);
  if (expiresAt === undefined) sessionStorage.removeItem(EXPIRY_KEY);
  else sessionStorage.setItem(EXPIRY_KEY, String(expiresAt));
  watchExpiry();
}

export const hasToken = (): boolean => token !== undefined;

function signOut(why: string | undefined): void {
  setToken(undefined);
  for (const f of signedOut) f(why);
}

const expiredWhy = (at: number) => `your sign-in expired at ${new Date(at).toLocaleTimeString()}; sign in again`;

/** A page left open past the token's expiry goes back to the sign-in page then, not at its next request. */
function watchExpiry(): void {
  clearTimeout(expiryTimer);
  if (token === undefined || expiresAt === undefined) return;
  const at = expiresAt;
  // setTimeout takes at most 2^31-1 ms; a longer-lived token is looked at again then.
  expiryTimer = setTimeout(() => (Date.now() >= at ? signOut(expiredWhy(at)) : watchExpiry()), Math.min(Math.max(at - Date.now(), 0), 2 ** 31 - 1));
}
// A reload of the tab: a token that expired meanwhile is caught by the first request (call()), once the page listens.
if (expiresAt === undefined || Date.now() < expiresAt) watchExpiry();

/** Called when the API refuses the bearer (revoked, expired): the app shows the sign-in page. */
export function onSignedOut(f: (why?: string) => void): () => void {
  signedOut.add(f);
  return () => signedOut.delete(f);
}

/** A problem+json answer (or a network failure, status 0). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Partial<ProblemBody>,
  ) {
    super(problem.detail ?? problem.title ?? `HTTP ${status}`);
    this.name = 'ApiError';
  }
  /** The field errors of a 422 (empty otherwise). */
  get errors(): FieldError[] {
    return this.problem.errors ?? [];
  }
}

export interface RequestOptions {
  body?: unknown;
  headers?: Record<string, string>;
  /** Answer the text instead of parsing JSON (the context preview). */
  text?: boolean;
  signal?: AbortSignal;
}

/** One API call; resolves to the parsed answer (`undefined` for 204 and 304), rejects with an {@link ApiError}. */
export async function api<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
  return (await call<T>(method, path, opts)).body as T;
}

/**
 * A GET that sends the ETag of the previous answer (`If-None-Match`): `changed: false` when the
 * server answered 304, else the new body and its ETag.
 */
export async function getIfChanged<T>(path: string, etag: string | undefined): Promise<{ changed: false } | { changed: true; body: T; etag?: string }> {
  const res = await call<T>('GET', path, { headers: etag ? { 'if-none-match': etag } : {} });
  return res.status === 304 ? { changed: false } : { changed: true, body: res.body as T, etag: res.etag };
}

async function call<T>(method: string, path: string, opts: RequestOptions): Promise<{ status: number; body: T | undefined; etag?: string }> {
  // An access token past its expiry: back to the sign-in page at once, rather than a request the API must refuse.
  if (token !== undefined && expiresAt !== undefined && Date.now() >= expiresAt) {
    const detail = expiredWhy(expiresAt);
    signOut(detail);
    throw new ApiError(401, { title: 'Unauthorized', detail });
  }
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      // Same origin only; the bearer travels in the header, never in a URL or a cookie.
      credentials: 'omit',
      cache: 'no-store',
      signal: opts.signal,
      headers: {
        accept: opts.text ? 'text/plain, application/problem+json' : 'application/json, application/problem+json',
        ...(token !== undefined && { authorization: `Bearer ${token}` }),
        ...(opts.body !== undefined && { 'content-type': 'application/json' }),
        ...opts.headers,
      },
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
  } catch (err) {
    if ((err as Error).name === 'AbortError') throw err;
    throw new ApiError(0, { title: 'Network error', detail: `the API could not be reached: ${(err as Error).message}` });
  }
  if (res.status === 204 || res.status === 304) return { status: res.status, body: undefined };
  const text = await res.text();
  if (!res.ok) {
    let problem: Partial<ProblemBody>;
    try {
      problem = JSON.parse(text) as ProblemBody;
    } catch {
      problem = { title: res.statusText, detail: text.slice(0, 500) || `HTTP ${res.status}` };
    }
    if (res.status === 401 && token !== undefined) signOut(problem.detail);
    throw new ApiError(res.status, problem);
  }
  const body = (opts.text ? text : text === '' ? undefined : JSON.parse(text)) as T;
  return { status: res.status, body, etag: res.headers.get('etag') ?? undefined };
}

/** Every item of a paged list (`{items, next?}`), following the cursors (at most `max` items). */
export async function listAll<T>(path: string, max = 5000): Promise<T[]> {
  const items: T[] = [];
  let cursor: string | undefined;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api<{ items: T[]; next?: string }>('GET', `${path}${sep}limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...page.items);
    cursor = page.next;
  } while (cursor !== undefined && items.length < max);
  return items;
}

/** `/v1/me`: who the bearer is. */
export interface Me {
  owner: string;
  role: 'user' | 'admin';
  via: 'token' | 'oidc';
  tokenId?: string;
}
