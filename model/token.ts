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

/** Checks signature, expiry and that the token belongs to `instanceId`. */
export function verifyToken(token: string, secret: string, instanceId: string, nowSeconds: number): TokenCheck {
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
  if (typeof claims.exp !== 'number' || claims.exp < nowSeconds) return { ok: false, reason: 'token expired' };
  if (claims.iid !== instanceId) return { ok: false, reason: 'token belongs to another instance' };
  return { ok: true, claims };
}
