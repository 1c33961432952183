/**
 * DNS rebinding protection (issue 11). A web page can make a browser send requests to
 * `http://evil.example:8080/` after pointing `evil.example` at 127.0.0.1; the API on loopback
 * would answer them, and the page would read the answers as its own origin. Such requests
 * still carry `Host: evil.example`, so while the API listens on a loopback address it
 * answers only requests naming one of its own host names (any port).
 */
import { isIP } from 'node:net';
import type { RequestHandler } from 'express';
import { Problem } from './problem.js';
import { isLoopbackHost } from '../model/loopback.js';

export interface HostCheckOptions {
  /** The address the server listens on (`CLOUDGATE_API_HOST`); the check applies when it is loopback. */
  listenHost?: string;
  /** The public URL: its host is always accepted. */
  publicUrl: string;
  /** More accepted host names (`CLOUDGATE_ALLOWED_HOST_NAMES`; `host` or `host:port`, the port is not checked). */
  allowedHostNames?: readonly string[];
}

/** The host names accepted always (besides the public URL's). */
const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '[::1]'];


/** The name part of a `Host` header or `host[:port]`: lower case, IPv6 kept in brackets. */
export function hostName(host: string): string {
  const h = host.trim().toLowerCase();
  if (h.startsWith('[')) return h.slice(0, h.indexOf(']') + 1);
  if (isIP(h) === 6) return `[${h}]`; // a bare IPv6 address (configuration, not a Host header)
  const colon = h.lastIndexOf(':');
  return colon >= 0 ? h.slice(0, colon) : h;
}

/** The middleware, or undefined when the API does not listen on loopback (then there is nothing to rebind to). */
export function hostCheck(opts: HostCheckOptions): RequestHandler | undefined {
  if (opts.listenHost === undefined || !isLoopbackHost(opts.listenHost)) return undefined;
  const allowed = new Set([...LOOPBACK_NAMES, hostName(opts.listenHost), new URL(opts.publicUrl).hostname.toLowerCase(), ...(opts.allowedHostNames ?? []).map(hostName)]);
  const list = [...allowed].join(', ');
  return (req, _res, next) => {
    const host = req.headers.host;
    if (host !== undefined && allowed.has(hostName(host))) return next();
    const shown = host === undefined ? 'no Host header' : `Host ${JSON.stringify(host.slice(0, 100))}`;
    next(
      new Problem(421, 'Misdirected Request', `this API answers to ${list} only, not to ${shown} (DNS rebinding protection); if the name is yours, add it to CLOUDGATE_ALLOWED_HOST_NAMES`, {
        slug: 'unknown-host',
      }),
    );
  };
}
