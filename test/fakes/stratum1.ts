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
 * A repository may instead be given as bytes (a {@link VerbatimRepository}, e.g. the real signed
 * files of ../shared/peer-data/cvmfs), which are served exactly as given.
 */
import { createServer } from 'node:http';
import { listenOnLoopback } from './listen.js';
import { manifestFile, whitelistFile, type FakeRepository } from '../../clouds/sim-stratum1.js';

export { fakeSignature, manifestFile, whitelistFile, whitelistStamp, type FakeRepository } from '../../clouds/sim-stratum1.js';

/** A repository served from the given bytes, unchanged (real files, or deliberately broken ones). */
export interface VerbatimRepository {
  published: Buffer;
  whitelist: Buffer;
}

export interface Stratum1Options {
  /** Accept connections and destroy them at once, like a crashed or firewalled server. */
  dead?: boolean;
  /** Accept requests and never answer them, like a server behind a black hole. */
  hang?: boolean;
  /** Answer every request with this status (e.g. 503) and an empty body. */
  status?: number;
  /** Answer every request with `302 Found` to this origin (or URL prefix) plus the request path. */
  redirectTo?: string;
  /** Answer every request with this text and 200, e.g. a captive portal's page. */
  text?: string;
  /**
   * Answer every request with 200 and this many bytes, written in 64 KiB chunks as the
   * client takes them (backpressure), so a client that stops reading stops the writing too.
   */
  hugeBytes?: number;
  /** With `hugeBytes`: announce the size in Content-Length (else chunked, size unknown). */
  declareLength?: boolean;
}

export interface FakeStratum1 {
  /** Base URL template, `http://127.0.0.1:PORT/cvmfs/@fqrn@`. */
  url: string;
  /** `http://127.0.0.1:PORT`, for building other templates. */
  origin: string;
  /** Request paths seen, in order. */
  requests: string[];
  /** Body bytes handed to the sockets (all requests), e.g. of a `hugeBytes` answer. */
  bytesSent(): number;
  stop(): Promise<void>;
}

const CHUNK = Buffer.alloc(64 * 1024, 'x');

/** Starts the server on an ephemeral port of 127.0.0.1. */
export async function startStratum1(repos: Record<string, FakeRepository | VerbatimRepository>, opts: Stratum1Options = {}): Promise<FakeStratum1> {
  const requests: string[] = [];
  let sent = 0;
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    requests.push(path);
    if (opts.hang) return;
    if (opts.status !== undefined) {
      res.writeHead(opts.status).end();
      return;
    }
    if (opts.redirectTo !== undefined) {
      res.writeHead(302, { location: `${opts.redirectTo}${path}` }).end();
      return;
    }
    if (opts.text !== undefined) {
      res.writeHead(200, { 'content-type': 'text/html' }).end(opts.text);
      return;
    }
    if (opts.hugeBytes !== undefined) {
      const total = opts.hugeBytes;
      res.writeHead(200, { 'content-type': 'application/octet-stream', ...(opts.declareLength && { 'content-length': total }) });
      let left = total;
      const pump = () => {
        while (left > 0 && !res.destroyed) {
          const chunk = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
          left -= chunk.length;
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        if (left === 0) res.end();
      };
      res.on('close', () => (left = 0));
      pump();
      return;
    }
    const m = /\/cvmfs\/([^/]+)\/(\.cvmfspublished|\.cvmfswhitelist)$/.exec(path);
    const repo = m ? repos[m[1]] : undefined;
    if (!m || !repo || ('missing' in repo && repo.missing)) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('Not Found\n');
      return;
    }
    const manifest = m[2] === '.cvmfspublished';
    let body: Buffer;
    if ('published' in repo) body = manifest ? repo.published : repo.whitelist;
    else body = manifest ? manifestFile(m[1], repo) : whitelistFile(m[1], repo);
    sent += body.length;
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length }).end(body);
  });
  if (opts.dead) server.on('connection', (socket) => socket.destroy());
  const origin = await listenOnLoopback(server);
  return {
    url: `${origin}/cvmfs/@fqrn@`,
    origin,
    requests,
    bytesSent: () => sent,
    stop: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}
