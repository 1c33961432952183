/**
 * CloudStack answers RECORDED from real clouds, served verbatim: each command is answered with
 * the bytes of the peer-data file chosen for it (`../shared/peer-data/cloudstack/`, read in
 * place; `SOURCES.txt` there names each file's origin), whatever the request's parameters. It
 * has no state: where test/fakes/cloudstack-fake.ts behaves like CloudStack, this one answers
 * exactly what real CloudStack clouds answered, so the adapter meets their real shapes
 * (numeric ids of older releases, text job results, fields left out).
 *
 * Requests are checked as the fake checks them (its `verifyCloudStackSignature`), so every
 * test on recorded answers also proves the adapter signed what it sent; a wrong signature gets
 * CloudStack's 401.
 */
import http from 'node:http';
import { listenOnLoopback } from './listen.js';
import { peerDataBytes } from '../peer-data.js';
import { CLOUDSTACK_UNVERIFIED_TEXT, readCloudStackRequest, sendCloudStackError, verifyCloudStackSignature, type FakeRequest } from './cloudstack-fake.js';

/**
 * What a command is answered with:
 * - a recorded file's name under `peer-data/cloudstack/`, or `{ file, status }`. The HTTP status
 *   defaults to the `errorcode` in the file's body where it has one (CloudStack sends an error
 *   with its code as the status), else 200; the recordings keep only the bodies.
 * - `{ text, status }`: bytes no recording has (a proxy's HTML page), to be named as such.
 */
export type RecordedAnswer = string | { file: string; status?: number } | { text: string; status?: number; contentType?: string };

export interface RecordedCloudStackOptions {
  apiKey: string;
  secretKey: string;
  /** Answers by command name (`listVirtualMachines`, ...); more can be set later with `answer`. */
  answers?: Record<string, RecordedAnswer>;
}

export interface RecordedCloudStack {
  /** `http://127.0.0.1:<port>/client/api`. */
  endpoint: string;
  /** From now on, answers `command` with this. */
  answer(command: string, answer: RecordedAnswer): void;
  /** Requests with a valid signature, oldest first. */
  requests(): FakeRequest[];
  stop(): Promise<void>;
}

/** The `errorcode` a recorded body carries under its one `<command>response` key, if any. */
function errorCodeOf(bytes: Buffer): number | undefined {
  try {
    const json = JSON.parse(bytes.toString('utf8')) as Record<string, { errorcode?: unknown } | undefined>;
    const code = Object.values(json)[0]?.errorcode;
    return typeof code === 'number' ? code : undefined;
  } catch {
    return undefined;
  }
}

/** Starts the server on 127.0.0.1 and a free port. */
export async function startRecordedCloudStack(opts: RecordedCloudStackOptions): Promise<RecordedCloudStack> {
  const answers = new Map(Object.entries(opts.answers ?? {}));
  const log: FakeRequest[] = [];

  const reply = (res: http.ServerResponse, answer: RecordedAnswer) => {
    let bytes: Buffer;
    let status: number;
    let type = 'application/json; charset=utf-8';
    if (typeof answer !== 'string' && 'text' in answer) {
      bytes = Buffer.from(answer.text, 'utf8');
      status = answer.status ?? 200;
      type = answer.contentType ?? 'text/html; charset=utf-8';
    } else {
      const file = typeof answer === 'string' ? answer : answer.file;
      bytes = peerDataBytes('cloudstack', file);
      status = (typeof answer === 'string' ? undefined : answer.status) ?? errorCodeOf(bytes) ?? 200;
    }
    res.writeHead(status, { 'content-type': type, 'content-length': bytes.length });
    res.end(bytes);
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const { path, params } = await readCloudStackRequest(req);
    if (path !== '/client/api') {
      res.writeHead(404, { 'content-type': 'text/html' }).end('<html><body>Not Found</body></html>');
      return;
    }
    const command = params.get('command') ?? '';
    if (!verifyCloudStackSignature(params, opts.apiKey, opts.secretKey)) {
      sendCloudStackError(res, command, 401, CLOUDSTACK_UNVERIFIED_TEXT);
      return;
    }
    log.push({ method: req.method ?? 'GET', command, params: Object.fromEntries([...params].filter(([k]) => k.toLowerCase() !== 'signature')) });
    const answer = answers.get(command);
    if (answer === undefined) {
      // Loud, so a test that forgot an answer says which.
      sendCloudStackError(res, command, 432, `no recorded answer for ${command} (this server answers ${[...answers.keys()].join(', ') || 'nothing'})`);
      return;
    }
    reply(res, answer);
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500).end(String(err));
    });
  });
  const origin = await listenOnLoopback(server);

  return {
    endpoint: `${origin}/client/api`,
    answer(command, a) {
      answers.set(command, a);
    },
    requests: () => log.map((r) => ({ ...r, params: { ...r.params } })),
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
