/**
 * Which URLs the gateway itself may fetch on a user's behalf (the stratum-1 check of a
 * context's `cvmfs.servers`), so that a user cannot point it at cloud metadata services,
 * internal hosts or the gateway's own loopback ports (SSRF).
 *
 * One policy, two places: the API judges a URL's text (scheme, a literal address, the
 * `localhost` names) when a context is stored, and the worker judges it again before it
 * connects — the URL's text, then every address its host name resolves to (see
 * activities/cvmfs.ts). Forbidden are loopback, private (RFC 1918, fc00::/7), link-local
 * (169.254/16, fe80::/10), shared/CGNAT (100.64/10), unspecified, multicast and reserved
 * addresses, the same embedded in IPv6 (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
 * `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`), `localhost` and `*.localhost`, and any scheme but
 * http and https — unless the operator allows the URL's host (`host` or `host:port`) in
 * `CLOUDGATE_CVMFS_ALLOWED_HOSTS`.
 *
 * Address forms are judged after WHATWG URL parsing, which normalises `http://2130706433/`,
 * `http://0x7f.1/`, `http://127.1/` and `http://017700000001/` to `127.0.0.1` and
 * `[0:0:0:0:0:ffff:7f00:1]` to `[::ffff:7f00:1]`; a trailing dot (`localhost.`) is ignored.
 */
import { BlockList, isIP } from 'node:net';

/** Why an address is forbidden; the words appear in the API's 422 messages. */
export type AddressClass = 'loopback' | 'private' | 'link-local' | 'shared (CGNAT)' | 'unspecified' | 'multicast' | 'reserved';

/** IPv4 ranges by class: [network, prefix length]. */
const V4: ReadonlyArray<readonly [AddressClass, string, number]> = [
  ['unspecified', '0.0.0.0', 8], // "this network" (RFC 1122), 0.0.0.0 connects to the host itself on Linux
  ['private', '10.0.0.0', 8],
  ['shared (CGNAT)', '100.64.0.0', 10],
  ['loopback', '127.0.0.0', 8],
  ['link-local', '169.254.0.0', 16], // cloud metadata services (169.254.169.254)
  ['private', '172.16.0.0', 12],
  ['reserved', '192.0.0.0', 24], // IETF protocol assignments
  ['private', '192.168.0.0', 16],
  ['reserved', '198.18.0.0', 15], // benchmarking, used inside some sites
  ['multicast', '224.0.0.0', 4],
  ['reserved', '240.0.0.0', 4], // includes the broadcast address
];

/** IPv6 ranges by class (the IPv4 ones are also checked embedded, below). */
const V6: ReadonlyArray<readonly [AddressClass, string, number]> = [
  // ::/96 holds the unspecified and loopback addresses and the deprecated IPv4-compatible ones.
  ['unspecified', '::', 128],
  ['loopback', '::1', 128],
  ['reserved', '::', 96],
  ['reserved', '64:ff9b:1::', 48], // local-use NAT64 (RFC 8215)
  ['private', 'fc00::', 7], // unique local; AWS's IPv6 metadata service is fd00:ec2::254
  ['link-local', 'fe80::', 10],
  ['private', 'fec0::', 10], // deprecated site-local
  ['multicast', 'ff00::', 8],
];

/** One BlockList per class, so a refusal can say which class an address is in. */
const LISTS: ReadonlyArray<readonly [AddressClass, BlockList]> = (() => {
  const lists = new Map<AddressClass, BlockList>();
  const list = (c: AddressClass): BlockList => {
    let b = lists.get(c);
    if (!b) lists.set(c, (b = new BlockList()));
    return b;
  };
  for (const [c, net, prefix] of V4) {
    list(c).addSubnet(net, prefix, 'ipv4');
    // Embedded forms that reach the IPv4 address: IPv4-mapped, and NAT64's well-known prefix.
    list(c).addSubnet(`::ffff:${net}`, 96 + prefix, 'ipv6');
    list(c).addSubnet(`64:ff9b::${net}`, 96 + prefix, 'ipv6');
  }
  for (const [c, net, prefix] of V6) list(c).addSubnet(net, prefix, 'ipv6');
  // Most specific first, so ::1 is "loopback" rather than the "reserved" ::/96 around it.
  const order: AddressClass[] = ['unspecified', 'loopback', 'link-local', 'private', 'shared (CGNAT)', 'multicast', 'reserved'];
  return order.flatMap((c) => (lists.has(c) ? [[c, lists.get(c)!] as const] : []));
})();

/** Strips IPv6 brackets (URL hostnames keep them) and trailing dots, lower-cases. */
function bareHost(hostname: string): string {
  const h = hostname.toLowerCase().replace(/\.+$/, '');
  return h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
}

/**
 * The class of a forbidden IP address, or undefined when the address may be used (or is no
 * IP address at all). Accepts IPv6 with or without brackets.
 */
export function forbiddenAddressClass(address: string): AddressClass | undefined {
  const ip = bareHost(address);
  const family = isIP(ip);
  if (family === 0) return undefined;
  const type = family === 4 ? 'ipv4' : 'ipv6';
  return LISTS.find(([, list]) => list.check(ip, type))?.[0];
}

/** `localhost` and the names under it (RFC 6761 §6.3), with or without the trailing dot. */
export function isLocalhostName(hostname: string): boolean {
  const h = bareHost(hostname);
  return h === 'localhost' || h.endsWith('.localhost');
}

/** An entry of the allow-list, normalised the way URL parsing normalises hosts. */
interface AllowedHost {
  /** As `URL.hostname` spells it: lower case, IPv6 in brackets, IPv4 dotted, no trailing dot. */
  hostname: string;
  /** Undefined: any port. */
  port?: number;
}

const DEFAULT_PORTS: Record<string, number> = { 'http:': 80, 'https:': 443 };

/** `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address; undefined if it is none of these. */
export function parseAllowedHost(entry: string): AllowedHost | undefined {
  const e = entry.trim();
  let host: string;
  let port: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(e);
  if (bracketed) [, host, port] = bracketed;
  else if (isIP(e) === 6) host = e;
  else {
    const m = /^([^:/@\s]+)(?::(\d{1,5}))?$/.exec(e);
    if (!m) return undefined;
    [, host, port] = m;
  }
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) return undefined;
  let hostname: string;
  try {
    hostname = new URL(`http://${isIP(host) === 6 ? `[${host}]` : host}/`).hostname;
  } catch {
    return undefined;
  }
  return { hostname: hostname.replace(/\.+$/, ''), ...(port !== undefined && { port: Number(port) }) };
}

/**
 * The gateway's outbound address policy with the operator's allow-list. Construct once per
 * configuration; every method is pure.
 */
export class AddressPolicy {
  private readonly allowed: AllowedHost[];

  /**
   * @param allowedHosts `host` or `host:port` entries (`CLOUDGATE_CVMFS_ALLOWED_HOSTS`);
   * a URL naming such a host (and port, if one is given) is fetched whatever it resolves to.
   * @throws TypeError naming an entry that is no host.
   */
  constructor(allowedHosts: readonly string[] = []) {
    this.allowed = allowedHosts.map((entry) => {
      const parsed = parseAllowedHost(entry);
      if (!parsed) throw new TypeError(`allowed host "${entry}" is not a host or host:port`);
      return parsed;
    });
  }

  /** Whether the operator allowed the host (and port) this URL names. */
  isAllowed(url: URL): boolean {
    const hostname = url.hostname.toLowerCase().replace(/\.+$/, '');
    const port = url.port === '' ? DEFAULT_PORTS[url.protocol] : Number(url.port);
    return this.allowed.some((a) => a.hostname === hostname && (a.port === undefined || a.port === port));
  }

  /**
   * Why the gateway must not fetch `url`, judging its text only — the scheme, a literal
   * address, the `localhost` names — or undefined when it may (a host name is judged again by
   * the addresses it resolves to, at connect time: {@link addressProblem}).
   */
  urlProblem(url: string | URL): string | undefined {
    let u: URL;
    try {
      u = typeof url === 'string' ? new URL(url) : url;
    } catch {
      return 'is not a URL';
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return `uses the scheme "${u.protocol.slice(0, -1)}"; only http and https are fetched`;
    if (this.isAllowed(u)) return undefined;
    if (isLocalhostName(u.hostname)) return `names "${u.hostname}", this machine`;
    const cls = forbiddenAddressClass(u.hostname);
    if (cls) return `names ${/^[aeiou]/.test(cls) ? 'an' : 'a'} ${cls} address (${bareHost(u.hostname)})`;
    return undefined;
  }

  /** Why a resolved address may not be connected to, or undefined when it may. */
  addressProblem(address: string): string | undefined {
    const cls = forbiddenAddressClass(address);
    return cls && `${address} is ${/^[aeiou]/.test(cls) ? 'an' : 'a'} ${cls} address`;
  }
}

/** What the API appends to a refused URL: how an operator lets such a host through. */
export const ALLOW_HINT =
  'the gateway does not fetch from loopback, private, link-local, shared or unspecified addresses, nor from localhost; an operator can allow a host with CLOUDGATE_CVMFS_ALLOWED_HOSTS';
