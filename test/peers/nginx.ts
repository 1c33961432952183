/**
 * The reverse proxy in front of the production topology's API replicas: Debian's nginx, the
 * proxy a site puts there, configured as one would for cloudgate — round robin over the
 * replicas (or guests to one and users to the others, each falling back on the rest), over
 * kept-alive connections, passing a request to the next replica when one refuses the
 * connection (nginx's `proxy_next_upstream error timeout`: any method whose request never
 * reached a replica, idempotent ones also when a replica drops them), else its own 502 as
 * problem+json. It runs as its own process, as a site's does, so the benchmark counts its CPU
 * apart from cloudgate's.
 *
 * The binary: `$NGINX`, else the one `node scripts/setup.mjs --test` unpacks from Debian's
 * package into `.cache/nginx/` (unpacked, not installed: the package's scripts would start
 * a server on port 80), else `/usr/sbin/nginx`. Everything it writes (configuration, logs,
 * request bodies) is in a temp folder that `close()` removes. Its access log says which
 * replica answered each request: {@link NginxPeer.counts} reads it.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../workers/dev-server.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const HOW_TO_GET = 'run `node scripts/setup.mjs --test` (it unpacks Debian\'s nginx package into .cache/nginx), install the Debian package nginx, or set NGINX to an nginx binary';

/** `$NGINX`, else set-up's unpacked copy, else Debian's installed one. */
export function findNginx(env: NodeJS.ProcessEnv = process.env): string {
  if (env.NGINX) {
    if (!existsSync(env.NGINX)) throw new Error(`nginx peer: NGINX=${env.NGINX} does not exist; ${HOW_TO_GET}`);
    return env.NGINX;
  }
  const candidates = [path.join(ROOT, '.cache', 'nginx', 'usr', 'sbin', 'nginx'), '/usr/sbin/nginx'];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new Error(`nginx peer: no nginx found (looked for ${candidates.join(' and ')}); ${HOW_TO_GET}`);
  return found;
}

export interface NginxBackend {
  name: string;
  port: number;
}

export interface NginxPeerOptions {
  /**
   * Guests' requests (`/v1/instances/…`: phone-homes, drain notices) go to every backend but
   * the last, and everything else to the last, each falling back on the rest (two upstreams,
   * each with the other's servers as `backup`). Unset: round robin over all for everything.
   */
  guestsApart?: boolean;
}

/** Guests' requests (`/v1/instances/…`: phone-homes, drain notices) or everyone else's. */
export type RequestKind = 'guests' | 'users';

/** Where the guests' requests start: the location block that sends them apart and the log's `map` both use it. */
const GUESTS_PREFIX = '/v1/instances/';

export interface NginxPeer {
  /** `http://127.0.0.1:<port>`: what users and guests call. */
  url: string;
  pid: number;
  /**
   * Requests each backend answered (by name), and those nginx answered 502 itself because none
   * did, from its access log: all, or only the guests' (`/v1/instances/…`) or everyone else's.
   */
  counts(kind?: RequestKind): Record<string, number>;
  /** The last lines of its error log. */
  errorTail(lines?: number): string;
  /** Fast shutdown, then its folder is removed. */
  close(): Promise<void>;
}

/** The 502 nginx answers when no replica did, as the API's own problems are shaped. */
const BAD_GATEWAY = JSON.stringify({ type: 'about:blank', title: 'Bad Gateway', status: 502, detail: 'no API replica answered' });

function config(dir: string, port: number, backends: NginxBackend[], opts: NginxPeerOptions): string {
  const server = (b: NginxBackend, backup = false) => `    server 127.0.0.1:${b.port}${backup ? ' backup' : ''};`;
  const upstream = (name: string, first: NginxBackend[], rest: NginxBackend[]) =>
    [
      `  upstream ${name} {`,
      ...first.map((b) => server(b)),
      ...rest.map((b) => server(b, true)),
      // Idle connections kept per worker, dropped before the API's own 5 s keep-alive timeout
      // (Node's default) closes them under a request.
      '    keepalive 1024;',
      '    keepalive_timeout 4s;',
      '    keepalive_requests 1000000;',
      '  }',
    ].join('\n');
  const apart = opts.guestsApart && backends.length > 1;
  const pass = (upstreamName: string) => [
    `      proxy_pass http://${upstreamName};`,
    '      proxy_http_version 1.1;',
    '      proxy_set_header Connection "";',
    '      proxy_set_header Host $http_host;',
  ];
  return [
    // As root, its workers would switch to `nobody`, who cannot enter this folder.
    ...(process.getuid?.() === 0 ? ['user root;'] : []),
    'daemon off;',
    'worker_processes 1;',
    'worker_rlimit_nofile 16384;',
    `pid ${dir}/nginx.pid;`,
    `error_log ${dir}/error.log warn;`,
    'events { worker_connections 8192; }',
    'http {',
    '  server_tokens off;',
    // Whose request it was, as the guests-apart location blocks tell them apart.
    `  map $uri $cloudgate_kind { ~^${GUESTS_PREFIX} guests; default users; }`,
    "  log_format replicas '$upstream_addr|$upstream_status|$status|$cloudgate_kind';",
    `  access_log ${dir}/access.log replicas;`,
    `  client_body_temp_path ${dir}/body;`,
    `  proxy_temp_path ${dir}/proxy;`,
    `  fastcgi_temp_path ${dir}/fastcgi;`,
    `  uwsgi_temp_path ${dir}/uwsgi;`,
    `  scgi_temp_path ${dir}/scgi;`,
    // The API answers too-large bodies itself (413 problem+json); bodies stay in memory.
    '  client_max_body_size 64m;',
    '  client_body_buffer_size 1m;',
    '  proxy_max_temp_file_size 0;',
    '  proxy_read_timeout 120s;',
    '  proxy_next_upstream error timeout;',
    // Clients keep their connections (guests' phone-homes, the benchmark's reader) and are told for how long.
    '  keepalive_timeout 60s 55s;',
    '  keepalive_requests 1000000;',
    apart ? upstream('guests', backends.slice(0, -1), backends.slice(-1)) : upstream('apis', backends, []),
    ...(apart ? [upstream('users', backends.slice(-1), backends.slice(0, -1))] : []),
    '  server {',
    `    listen 127.0.0.1:${port};`,
    '    error_page 502 = @bad_gateway;',
    '    location @bad_gateway {',
    '      default_type application/problem+json;',
    `      return 502 '${BAD_GATEWAY}';`,
    '    }',
    ...(apart ? [`    location ${GUESTS_PREFIX} {`, ...pass('guests'), '    }', '    location / {', ...pass('users'), '    }'] : ['    location / {', ...pass('apis'), '    }']),
    '  }',
    '}',
    '',
  ].join('\n');
}

/** Starts nginx in front of `backends` and resolves once it accepts connections. */
export async function startNginx(backends: NginxBackend[], opts: NginxPeerOptions = {}): Promise<NginxPeer> {
  const bin = findNginx();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cg-nginx-'));
  const port = await freePort();
  const conf = path.join(dir, 'nginx.conf');
  const errorLog = path.join(dir, 'error.log');
  writeFileSync(conf, config(dir, port, backends, opts));
  const proc = spawn(bin, ['-p', dir, '-c', conf, '-e', errorLog], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  let running = true;
  void exited.then(() => (running = false));
  const errorTail = (lines = 20) => {
    try {
      return readFileSync(errorLog, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no error log)';
    }
  };
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (!running) {
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`nginx peer: ${bin} exited at start: ${stderr.trim() || errorTail()}`);
    }
    const accepts = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => (s.destroy(), resolve(true)));
      s.on('error', () => resolve(false));
    });
    if (accepts) break;
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`nginx peer: not listening on 127.0.0.1:${port} after 15 s: ${stderr.trim() || errorTail()}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const nameOf = new Map(backends.map((b) => [`127.0.0.1:${b.port}`, b.name]));
  return {
    url: `http://127.0.0.1:${port}`,
    pid: proc.pid!,
    counts(kind) {
      const counts: Record<string, number> = Object.fromEntries([...backends.map((b) => [b.name, 0]), ['502', 0]]);
      let log: string;
      try {
        log = readFileSync(path.join(dir, 'access.log'), 'utf8');
      } catch {
        return counts; // nothing logged yet
      }
      for (const line of log.split('\n')) {
        if (!line) continue;
        const [addrs, statuses, status, lineKind] = line.split('|');
        if (kind !== undefined && lineKind !== kind) continue;
        // Each replica tried, in order (", " between tries, " : " across internal redirects); the last one answered, unless none did.
        const last = addrs.split(/, | : /).pop()!;
        const lastStatus = statuses.split(/, | : /).pop();
        const name = nameOf.get(last);
        if (name && !(status === '502' && lastStatus === '502')) counts[name]++;
        else counts['502']++;
      }
      return counts;
    },
    errorTail,
    async close() {
      if (running) {
        proc.kill('SIGTERM');
        const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
