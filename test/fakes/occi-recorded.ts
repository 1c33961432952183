/**
 * An OCCI server that answers with RECORDED renderings of real rOCCI servers, verbatim: the
 * lines of a peer-data file (`../shared/peer-data/occi/`, see its SOURCES.txt) become the
 * answer's text/occi headers, one header line per file line, in the file's order and spelling
 * (`Category`, `X-OCCI-Attribute`, `Link`). Where the spec-faithful fake (occi-fake.ts) shows
 * what the OCCI documents allow, this one shows what EGI FedCloud's rOCCI-server 1.x and
 * rOCCI 5 sites really send.
 *
 * - `GET /-/` (and `/.well-known/org/ogf/occi/-/`) answers the recorded model;
 * - `GET <path>` answers the rendering recorded for that path, `DELETE <path>` forgets it
 *   (`404` afterwards);
 * - `GET /compute/` lists the `/compute/…` paths as text/uri-list, or `X-OCCI-Location`
 *   headers for a client that does not accept text/uri-list;
 * - `POST /compute/` records the request and answers `201` with `Location` of the rendering
 *   named by `created` (no recording holds a create's answer, so that part is the fake's).
 *
 * It checks nothing else: every request is kept, headers included, for the test to inspect.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { listenOnLoopback } from './listen.js';
import { peerDataText } from '../peer-data.js';

/** The text of a recorded rendering under peer-data `occi/` (e.g. `rocci5-model.txt`). */
export const recordedOcci = (file: string): string => peerDataText('occi', file);

export interface RecordedOcciOptions {
  /** The query interface's answer: rendering text (`Category: …` lines). */
  model: string;
  /** Entities by location path (`/compute/89878`): rendering text. */
  entities?: Record<string, string>;
  /** The path whose rendering a `POST /compute/` creates (answered with its `Location`); unset: `405`. */
  created?: string;
}

/** A request as the recorded fake received it. */
export interface RecordedRequest {
  method: string;
  path: string;
  status: number;
  headers: NodeJS.Dict<string[]>;
}

export interface RecordedOcci {
  /** Base URL; the query interface is `<endpoint>/-/`. */
  endpoint: string;
  /** Every request answered so far, oldest first. */
  requests(): RecordedRequest[];
  stop(): Promise<void>;
}

/**
 * A rendering's lines as header name → values, in order. The text/plain rendering and the
 * text/occi headers carry the same `Name: value` lines, so the recording is served as is.
 */
export function renderingHeaders(text: string): Map<string, string[]> {
  const headers = new Map<string, string[]>();
  for (const line of text.split(/\r?\n/)) {
    if (line.trim() === '') continue;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`not a "Name: value" rendering line: ${JSON.stringify(line)}`);
    const name = line.slice(0, colon);
    headers.set(name, [...(headers.get(name) ?? []), line.slice(colon + 1).trim()]);
  }
  return headers;
}

/** Starts the recorded fake on 127.0.0.1 and a free port. */
export async function startRecordedOcci(opts: RecordedOcciOptions): Promise<RecordedOcci> {
  const model = renderingHeaders(opts.model);
  const entities = new Map(Object.entries(opts.entities ?? {}).map(([path, text]) => [path, renderingHeaders(text)]));
  const log: RecordedRequest[] = [];

  const answer = (res: ServerResponse, status: number, headers: Map<string, string[]> | Record<string, string | string[]> = {}, body = '', type = 'text/occi') => {
    res.statusCode = status;
    res.setHeader('content-type', `${type}; charset=utf-8`);
    for (const [name, values] of headers instanceof Map ? headers : Object.entries(headers)) res.setHeader(name, values);
    res.end(body);
  };

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    res.on('finish', () => log.push({ method: req.method ?? '', path: req.url ?? '', status: res.statusCode, headers: req.headersDistinct }));
    const url = new URL(req.url ?? '/', 'http://recorded');
    const origin = `http://${req.headers.host}`;
    if (url.pathname === '/-/' || url.pathname === '/.well-known/org/ogf/occi/-/') return answer(res, 200, model);
    if (url.pathname === '/compute/') {
      if (req.method === 'POST') {
        if (opts.created === undefined || !entities.has(opts.created)) return answer(res, 405, { allow: 'GET' }, 'this recording holds no create\n', 'text/plain');
        return answer(res, 201, { location: origin + opts.created });
      }
      const urls = [...entities.keys()].filter((p) => p.startsWith('/compute/')).map((p) => origin + p);
      if (req.headers.accept?.includes('text/uri-list')) return answer(res, 200, {}, urls.map((u) => `${u}\r\n`).join(''), 'text/uri-list');
      return answer(res, 200, urls.length > 0 ? { 'X-OCCI-Location': urls } : {});
    }
    const entity = entities.get(url.pathname);
    if (!entity) return answer(res, 404, {}, `no resource at ${url.pathname}\n`, 'text/plain');
    if (req.method === 'DELETE') {
      entities.delete(url.pathname);
      return answer(res, 200);
    }
    if (req.method !== 'GET') return answer(res, 405, { allow: 'GET, DELETE' }, `${req.method} is not recorded\n`, 'text/plain');
    answer(res, 200, entity);
  };

  const server = createServer(handle);
  const endpoint = await listenOnLoopback(server);
  return {
    endpoint,
    requests: () => log.map((r) => ({ ...r })),
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
