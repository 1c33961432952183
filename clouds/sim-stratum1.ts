/**
 * The simulated cloud's stratum-1: a small HTTP server that presents EVERY repository it is
 * asked for as healthy — a fresh `.cvmfspublished` and an unexpired `.cvmfswhitelist` in
 * the real CernVM-FS formats (see activities/cvmfs.ts) — so the gateway's stratum-1 check
 * runs for real in the `npm start` demo, where no real stratum-1 is reachable. It is not
 * a stratum-1: no catalogs, no data, fake signatures. The file builders are shared with the
 * tests' stratum-1 fake (test/fakes/stratum1.ts), which can also serve broken repositories.
 */
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One repository as a stratum-1 presents it. */
export interface FakeRepository {
  revision: number;
  publishedAt: Date;
  whitelistExpires: Date;
  /** Serve this name in `N` lines instead of the fqrn (a misconfigured server). */
  name?: string;
  /** Answer 404 for this repository. */
  missing?: boolean;
}

/** Binary bytes standing in for an RSA signature; contains NUL, CR, LF and `\n--\n`. */
export function fakeSignature(seed: string): Buffer {
  const noise = createHash('sha512').update(seed).digest();
  return Buffer.concat([noise, Buffer.from([0x00, 0xff, 0x0d, 0x0a, 0x2d, 0x2d, 0x0a, 0x80]), Buffer.from(noise).reverse()]);
}

const hex = (s: string): string => createHash('sha1').update(s).digest('hex');

function signed(head: string, seed: string): Buffer {
  return Buffer.concat([Buffer.from(`${head}--\n${hex(head)}\n`), fakeSignature(seed)]);
}

/** A `.cvmfspublished` with every current field, as `cvmfs_server` writes it. */
export function manifestFile(fqrn: string, repo: FakeRepository): Buffer {
  const name = repo.name ?? fqrn;
  const head = [
    `C${hex(`catalog ${name} ${repo.revision}`)}`,
    'B59392',
    'Rd41d8cd98f00b204e9800998ecf8427e',
    'D240',
    `S${repo.revision}`,
    'Gno',
    'Ano',
    `N${name}`,
    `X${hex(`certificate ${name}`)}`,
    `H${hex(`history ${name} ${repo.revision}`)}`,
    `T${Math.floor(repo.publishedAt.getTime() / 1000)}`,
    `M${hex(`meta ${name}`)}`,
    `Y${hex(`reflog ${name} ${repo.revision}`)}`,
  ].join('\n');
  return signed(`${head}\n`, `manifest ${name}`);
}

/** `YYYYMMDDHHMMSS` in UTC. */
export function whitelistStamp(d: Date): string {
  return d.toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

/** A `.cvmfswhitelist` valid for the usual 30 days up to `whitelistExpires`. */
export function whitelistFile(fqrn: string, repo: FakeRepository): Buffer {
  const name = repo.name ?? fqrn;
  const created = new Date(repo.whitelistExpires.getTime() - 30 * 86_400_000);
  const fingerprint = hex(`certificate ${name}`).toUpperCase().match(/../g)!.join(':');
  const head = `${whitelistStamp(created)}\nE${whitelistStamp(repo.whitelistExpires)}\nN${name}\n${fingerprint}\n`;
  return signed(head, `whitelist ${name}`);
}

/** A running simulated stratum-1. */
export interface SimStratum1 {
  /** Server URL template for `CLOUDGATE_CVMFS_SERVERS`: `http://127.0.0.1:PORT/cvmfs/@fqrn@`. */
  url: string;
  stop(): Promise<void>;
}

/** Repository names as CVMFS writes them (`alice.cern.ch`). */
const FQRN = /^[a-z0-9][a-z0-9.-]*[a-z0-9]$/i;

/**
 * Serves every repository as published an hour ago, at a revision derived from its name,
 * with a whitelist that expires in 30 days. Listens on `host:port` (port 0: any free one).
 */
export async function startSimStratum1(opts: { host?: string; port?: number } = {}): Promise<SimStratum1> {
  const server: Server = createServer((req, res) => {
    const m = /\/cvmfs\/([^/]+)\/(\.cvmfspublished|\.cvmfswhitelist)$/.exec(new URL(req.url ?? '/', 'http://x').pathname);
    if (!m || !FQRN.test(m[1])) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('Not Found\n');
      return;
    }
    const now = Date.now();
    const repo: FakeRepository = {
      revision: 1000 + (createHash('sha1').update(m[1]).digest().readUInt16BE(0) % 9000),
      publishedAt: new Date(now - 3_600_000),
      whitelistExpires: new Date(now + 30 * 86_400_000),
    };
    const body = m[2] === '.cvmfspublished' ? manifestFile(m[1], repo) : whitelistFile(m[1], repo);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length }).end(body);
  });
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, resolve);
  });
  return {
    url: `http://${host}:${(server.address() as AddressInfo).port}/cvmfs/@fqrn@`,
    stop: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}
