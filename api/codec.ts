/**
 * The remote payload codec for the Temporal Web UI and the `temporal` CLI: `POST /codec/decode`
 * and `POST /codec/encode` speak Temporal's codec server protocol — a JSON body
 * `{"payloads": [{"metadata": {"<key>": "<base64>"}, "data": "<base64>"}]}` answered in the same
 * shape — with the codec the client and the worker use (`model/payload-codec.ts`).
 *
 * Who may call: an admin (payloads of every owner's workflows come through here), proven by
 * `authorize` (bearer authentication plus the admin check, from `api/auth.ts`). Callers that
 * can send a header (`temporal … --codec-auth "Bearer <token>"`) send one. The Web UI of a dev
 * server cannot (it passes an access token only with its own OIDC login), so a browser signs
 * in once at `GET /codec/session` and gets an HttpOnly, SameSite=Strict cookie scoped to
 * `/codec` that carries its token; the UI then calls with "include cross-origin credentials".
 * The cookie is honoured only on decode/encode, only for JSON bodies (so a cross-origin
 * browser request needs a preflight) and only from the UI's origin or the API's own, and the
 * token in it goes through the same authentication on every call (expiry, revocation, role).
 *
 * CORS: the UI's origin only (`config.codecCorsOrigin`, default the dev server UI's), with
 * credentials; a preflight from any other origin gets no CORS headers and the browser stops.
 */
import express, { type NextFunction, type Request, type RequestHandler, type Response, type Router } from 'express';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { z } from 'zod';
import { invalid, parseOr422, Problem } from './problem.js';
import { bodyOf } from './request.js';

export const CODEC_COOKIE = 'cloudgate_codec';
/** How long a browser stays signed in to the codec endpoint (the token's own expiry and revocation still apply). */
export const CODEC_SESSION_SECONDS = 8 * 3600;
/** A history page can hold large payloads (a service's carried state at 10,000 instances is ~112 KB; Temporal allows 2 MB each). */
const CODEC_BODY_LIMIT = '16mb';
const MAX_PAYLOADS = 10_000;
const ALLOW_HEADERS = 'Authorization, Content-Type, X-Namespace';
/** Same characters `api/auth.ts` accepts in a bearer token. */
const TOKEN = /^[A-Za-z0-9._~+/-]+=*$/;

export interface CodecRouteDeps {
  codec: PayloadCodec;
  /** The one origin (`scheme://host:port`) whose pages may call the codec from a browser: the Temporal UI's. */
  allowedOrigin: string;
  /** Authenticates `Authorization: Bearer …` and requires an admin; answers 401/403 itself (next(problem)). */
  authorize: RequestHandler | RequestHandler[];
}

const base64 = z.string().regex(/^[A-Za-z0-9+/_-]*={0,2}$/, 'must be base64');
const PayloadJsonSchema = z.object({
  metadata: z.record(z.string(), base64).optional(),
  data: base64.optional(),
});
const PayloadsBodySchema = z.object({ payloads: z.array(PayloadJsonSchema).max(MAX_PAYLOADS) });
type PayloadJson = z.infer<typeof PayloadJsonSchema>;

const fromJson = (p: PayloadJson): Payload => ({
  metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, new Uint8Array(Buffer.from(v, 'base64'))])),
  data: new Uint8Array(Buffer.from(p.data ?? '', 'base64')),
});
const b64 = (b: Uint8Array | null | undefined): string => Buffer.from(b ?? new Uint8Array()).toString('base64');
const toJson = (p: Payload): PayloadJson => ({
  metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, b64(v)])),
  data: b64(p.data),
});

/** The value of one cookie of the request, or undefined. */
function cookieOf(req: Request, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) {
      try {
        return decodeURIComponent(part.slice(eq + 1).trim());
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

const ownOrigin = (req: Request): string => `${req.protocol}://${req.get('host') ?? ''}`;

export function codecRoutes(deps: CodecRouteDeps): Router {
  const { codec, allowedOrigin } = deps;
  const authorize = Array.isArray(deps.authorize) ? deps.authorize : [deps.authorize];
  const router = express.Router();
  const json = express.json({ limit: CODEC_BODY_LIMIT });
  const form = express.urlencoded({ extended: false, limit: '16kb' });

  // CORS for the UI's origin only; other origins get no CORS headers at all.
  router.use('/codec', (req, res, next) => {
    res.vary('Origin');
    if (req.headers.origin === allowedOrigin) {
      res.setHeader('Access-Control-Allow-Origin', allowedOrigin);
      res.setHeader('Access-Control-Allow-Credentials', 'true');
    }
    if (req.method !== 'OPTIONS') return next();
    if (req.headers.origin === allowedOrigin) {
      res.setHeader('Access-Control-Allow-Methods', 'POST, OPTIONS');
      res.setHeader('Access-Control-Allow-Headers', ALLOW_HEADERS);
      res.setHeader('Access-Control-Max-Age', '600');
    }
    res.status(204).end();
  });

  /**
   * The session cookie stands in for a missing Authorization header — only on a JSON body
   * (a cross-origin browser request must pass a preflight) from the UI or the API itself.
   */
  const cookieBearer = (req: Request, _res: Response, next: NextFunction) => {
    if (req.headers.authorization) return next();
    const token = cookieOf(req, CODEC_COOKIE);
    if (token === undefined) return next();
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== allowedOrigin && origin !== ownOrigin(req)) {
      return next(new Problem(403, 'Forbidden', `the codec session cookie is accepted only from ${allowedOrigin}`, { slug: 'codec-origin' }));
    }
    if (!req.is('application/json')) {
      return next(new Problem(415, 'Unsupported Media Type', 'send the payloads as JSON with Content-Type: application/json', { slug: 'unsupported-media-type' }));
    }
    if (TOKEN.test(token)) req.headers.authorization = `Bearer ${token}`;
    next();
  };

  const run = (op: 'encode' | 'decode') => async (req: Request, res: Response) => {
    const { payloads } = parseOr422(PayloadsBodySchema, bodyOf(req));
    const out: Payload[] = [];
    for (const [i, p] of payloads.entries()) {
      try {
        out.push(...(await codec[op]([fromJson(p)])));
      } catch (err) {
        // Unknown key id, tampered ciphertext: name the payload and the reason, never key material.
        throw invalid([{ field: `payloads[${i}]`, pointer: `/payloads/${i}`, message: err instanceof Error ? err.message : String(err) }]);
      }
    }
    res.setHeader('Cache-Control', 'no-store');
    res.json({ payloads: out.map(toJson) });
  };
  router.post('/codec/decode', cookieBearer, ...authorize, json, run('decode'));
  router.post('/codec/encode', cookieBearer, ...authorize, json, run('encode'));

  // Browser sign-in: a form that posts a token here, which becomes the session cookie.
  router.get('/codec/session', (_req, res) => {
    res.setHeader('Content-Security-Policy', "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'");
    res.setHeader('Cache-Control', 'no-store');
    res.type('html').send(sessionPage(allowedOrigin));
  });
  const tokenFromForm = (req: Request, _res: Response, next: NextFunction) => {
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== ownOrigin(req) && origin !== allowedOrigin) {
      return next(new Problem(403, 'Forbidden', 'sign in from the codec session page itself', { slug: 'codec-origin' }));
    }
    const token = (req.body as { token?: unknown } | undefined)?.token;
    if (typeof token === 'string' && token.trim() !== '') req.headers.authorization = `Bearer ${token.trim()}`;
    next();
  };
  router.post('/codec/session', form, tokenFromForm, ...authorize, (req, res) => {
    const token = /^Bearer (.+)$/i.exec(req.headers.authorization ?? '')?.[1];
    if (!token || !TOKEN.test(token)) throw new Problem(400, 'Bad Request', 'no usable token', { slug: 'bad-request' });
    res.cookie(CODEC_COOKIE, token, {
      httpOnly: true,
      sameSite: 'strict',
      secure: req.secure,
      path: '/codec',
      maxAge: CODEC_SESSION_SECONDS * 1000,
    });
    res.setHeader('Cache-Control', 'no-store');
    if (req.is('application/x-www-form-urlencoded')) {
      res.setHeader('Content-Security-Policy', "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'");
      return void res.type('html').send(signedInPage(allowedOrigin));
    }
    res.status(204).end();
  });
  router.delete('/codec/session', (_req, res) => {
    res.clearCookie(CODEC_COOKIE, { httpOnly: true, sameSite: 'strict', path: '/codec' });
    res.status(204).end();
  });
  return router;
}

const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const page = (title: string, body: string): string =>
  `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${title}</title>` +
  '<style>body{font:16px system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}input{width:100%;font:inherit;padding:.4rem}button{font:inherit;margin-top:.6rem}code{background:#eee;padding:0 .2rem}</style>' +
  `</head><body><h1>${title}</h1>${body}</body></html>`;

function sessionPage(uiOrigin: string): string {
  return page(
    'cloudgate payload codec',
    '<p>Temporal stores cloudgate\'s workflow payloads encrypted. Sign in with an <strong>admin</strong> token ' +
      '(for <code>npm start</code>: the contents of <code>data/admin-token</code>) so that the Temporal Web UI at ' +
      `<code>${escapeHtml(uiOrigin)}</code> can decode them through this endpoint for ${CODEC_SESSION_SECONDS / 3600} hours.</p>` +
      '<form method="post" action="session"><label>Token <input name="token" type="password" autocomplete="off" required></label>' +
      '<button type="submit">Sign in</button></form>',
  );
}

function signedInPage(uiOrigin: string): string {
  return page(
    'Signed in',
    `<p>This browser may now decode payloads for the Temporal Web UI (${CODEC_SESSION_SECONDS / 3600} hours, or until the token expires or is revoked).</p>` +
      `<p>In the UI at <a href="${escapeHtml(uiOrigin)}">${escapeHtml(uiOrigin)}</a>, open the codec server settings, ` +
      'choose to use your browser\'s setting, enter this endpoint (the URL of this page without <code>/session</code>) ' +
      'and tick <em>Include cross-origin credentials</em>.</p>',
  );
}
