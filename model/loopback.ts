/**
 * Loopback hosts, in one place for the API (its DNS-rebinding host check), the CLI and the
 * portal (plain http to an OIDC provider only on this machine). Pure, no `node:` imports:
 * the portal runs it in the browser.
 */

/** True for `localhost`, 127.0.0.0/8 and ::1 (also as an IPv4-mapped address); brackets around IPv6 allowed. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h;
  const octets = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(v4)?.slice(1).map(Number);
  return octets !== undefined && octets[0] === 127 && octets.every((o) => o <= 255);
}

/** A plain-http URL to this machine: the one place an OAuth client may skip TLS. */
export const isLoopbackHttp = (url: URL): boolean => url.protocol === 'http:' && isLoopbackHost(url.hostname);
