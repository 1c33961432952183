/**
 * A TEST HTTP server that produces real-format CVMFS files — it is not a real stratum-1
 * (no catalogs, no data, no replication, fake signatures). It serves, for each configured
 * repository, `/cvmfs/<fqrn>/.cvmfspublished` and `/cvmfs/<fqrn>/.cvmfswhitelist` built
 * per the CernVM-FS format (see activities/cvmfs.ts): the manifest's field lines in the
 * order `cvmfs_server` writes them, `--`, the SHA-1 of the lines above and a binary
 * "signature"; the whitelist's creation time, `E` expiry, `N` name, one fingerprint line,
 * `--`, a hash and binary "signature" bytes. The signatures are deliberately binary
 * (including NUL, newlines and a second `--` line) so parsers prove they stop at the first
 * separator. Any path prefix before `/cvmfs/` is accepted, so `@org@` templates can be tested.
 */
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One repository as this server should present it. */
export interface FakeRepository {
  revision: number;
  publishedAt: Date;
  whitelistExpires: Date;
  /** Serve this name in `N` lines instead of the fqrn (a misconfigured server). */
  name?: string;
  /** Answer 404 for this repository. */
  missing?: boolean;
}

export interface Stratum1Options {
  /** Accept connections and destroy them at once, like a crashed or firewalled server. */
  dead?: boolean;
  /** Answer every request with this status (e.g. 503) and an empty body. */
  status?: number;
}

export interface FakeStratum1 {
  /** Base URL template, `http://127.0.0.1:PORT/cvmfs/@fqrn@`. */
  url: string;
  /** `http://127.0.0.1:PORT`, for building other templates. */
  origin: string;
  /** Request paths seen, in order. */
  requests: string[];
  stop(): Promise<void>;
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

/** Starts the server on an ephemeral port of 127.0.0.1. */
export async function startStratum1(repos: Record<string, FakeRepository>, opts: Stratum1Options = {}): Promise<FakeStratum1> {
  const requests: string[] = [];
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    requests.push(path);
    if (opts.status !== undefined) {
      res.writeHead(opts.status).end();
      return;
    }
    const m = /\/cvmfs\/([^/]+)\/(\.cvmfspublished|\.cvmfswhitelist)$/.exec(path);
    const repo = m ? repos[m[1]] : undefined;
    if (!m || !repo || repo.missing) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('Not Found\n');
      return;
    }
    const body = m[2] === '.cvmfspublished' ? manifestFile(m[1], repo) : whitelistFile(m[1], repo);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length }).end(body);
  });
  if (opts.dead) server.on('connection', (socket) => socket.destroy());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: `${origin}/cvmfs/@fqrn@`,
    origin,
    requests,
    stop: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}
