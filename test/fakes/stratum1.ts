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

/** Starts the server on an ephemeral port of 127.0.0.1. */
export async function startStratum1(repos: Record<string, FakeRepository | VerbatimRepository>, opts: Stratum1Options = {}): Promise<FakeStratum1> {
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
    if (!m || !repo || ('missing' in repo && repo.missing)) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('Not Found\n');
      return;
    }
    const manifest = m[2] === '.cvmfspublished';
    let body: Buffer;
    if ('published' in repo) body = manifest ? repo.published : repo.whitelist;
    else body = manifest ? manifestFile(m[1], repo) : whitelistFile(m[1], repo);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length }).end(body);
  });
  if (opts.dead) server.on('connection', (socket) => socket.destroy());
  const origin = await listenOnLoopback(server);
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
