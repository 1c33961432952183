/**
 * Per-instance phone-home tokens: `base64url(claims).base64url(HMAC-SHA256(secret, claims))`.
 * Rendered into each instance's user-data inside an activity (never into workflow history)
 * and checked by the readiness endpoint. Pure functions of their inputs (the clock is passed in).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export interface TokenClaims {
  /** cloudgate instance id (`<clusterId>-<service>-<ordinal>`). */
  iid: string;
  cluster: string;
  service: string;
  /** Expiry, seconds since the epoch. */
  exp: number;
}

const b64 = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

export function signToken(claims: TokenClaims, secret: string): string {
  const body = b64(JSON.stringify(claims));
  const mac = createHmac('sha256', secret).update(body).digest();
  return `${body}.${b64(mac)}`;
}

export type TokenCheck = { ok: true; claims: TokenClaims } | { ok: false; reason: string };

/**
 * Checks the signature and the shape of the claims only — not the expiry, not the instance.
 * {@link verifyToken} is the readiness report's check; the long-lived phone-home routes (load
 * reports, drain notices) bound a token by its instance's life instead (api/auth.ts).
 */
export function readToken(token: string, secret: string): TokenCheck {
  const [body, sig, extra] = token.split('.');
  if (!body || !sig || extra !== undefined) return { ok: false, reason: 'malformed token' };
  const expected = createHmac('sha256', secret).update(body).digest();
  const given = Buffer.from(sig, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return { ok: false, reason: 'bad signature' };
  let claims: TokenClaims;
  try {
    claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as TokenClaims;
  } catch {
    return { ok: false, reason: 'malformed token' };
  }
  if (typeof claims !== 'object' || claims === null || ![claims.iid, claims.cluster, claims.service].every((v) => typeof v === 'string')) {
    return { ok: false, reason: 'malformed token' };
  }
  return { ok: true, claims };
}

/** Checks signature, expiry and that the token belongs to `instanceId`. */
export function verifyToken(token: string, secret: string, instanceId: string, nowSeconds: number): TokenCheck {
  const read = readToken(token, secret);
  if (!read.ok) return read;
  const { claims } = read;
  if (typeof claims.exp !== 'number' || claims.exp < nowSeconds) return { ok: false, reason: 'token expired' };
  if (claims.iid !== instanceId) return { ok: false, reason: 'token belongs to another instance' };
  return { ok: true, claims };
}

/** The ordinal the token's instance id `<cluster>-<service>-<n>` ends with, if it is that instance's. */
export function tokenOrdinal(claims: TokenClaims): number | undefined {
  const prefix = `${claims.cluster}-${claims.service}-`;
  const rest = claims.iid.startsWith(prefix) ? claims.iid.slice(prefix.length) : '';
  return /^[0-9]{1,9}$/.test(rest) ? Number(rest) : undefined;
}
