/**
 * The web portal (issue 15): static pages the API serves at `/`, built from `portal/` into
 * `dist/portal/` by `scripts/build-portal.mjs` (the set-up runs it before `npm start` and
 * `npm test`). The pages are a client of the public REST API only: they hold the bearer in
 * memory (and the tab's sessionStorage) and send it as every other client does, so serving
 * them needs no authentication and grants nothing.
 *
 * Every page answer carries a strict Content-Security-Policy: scripts and styles only from
 * this origin and never inline, requests only to this origin (and the site's identity
 * provider, where the portal offers its sign-in), no frames, no plugins, no `<base>` — so a
 * script injected into a page could neither run nor send the token anywhere.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import express, { type Response, type Router } from 'express';
import { notFound, Problem } from './problem.js';
import type { OidcLogin } from './schemas.js';

/**
 * The portal pages' policy: this origin only, nothing inline, no framing. Where the site
 * offers OIDC sign-in (`oidcIssuer`), the page may also call its identity provider's origin
 * (discovery and token requests of the sign-in), and no other.
 */
export function portalCsp(oidcIssuer?: string): string {
  return [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    `connect-src 'self'${oidcIssuer ? ` ${new URL(oidcIssuer).origin}` : ''}`,
    "font-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; ');
}

/** The policy of a site without OIDC sign-in. */
export const PORTAL_CSP = portalCsp();

/**
 * Where the built portal is: `<repo>/dist/portal`, whether the API runs from its sources
 * (`<repo>/api/portal.ts`) or compiled (`<repo>/dist/api/portal.js`).
 */
export function defaultPortalDir(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const up = path.dirname(here);
  const repo = path.basename(up) === 'dist' ? path.dirname(up) : up;
  return path.join(repo, 'dist', 'portal');
}

const securityHeaders = (res: Response, csp: string): void => {
  res.set({
    'Content-Security-Policy': csp,
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
    'Cross-Origin-Opener-Policy': 'same-origin',
    'Cross-Origin-Resource-Policy': 'same-origin',
    'X-Frame-Options': 'DENY',
  });
};

/**
 * `GET /` (the page) and `GET /assets/*` (its script, style sheet and source map). Without a
 * build the page is a 503 saying how to make one; the API itself works either way.
 */
export function portalRoutes(deps: { dir?: string; oidcLogin?: OidcLogin } = {}): Router {
  const dir = deps.dir ?? defaultPortalDir();
  // The issuer's origin only when the portal offers its sign-in (a client id is configured).
  const csp = portalCsp(deps.oidcLogin?.clientId ? deps.oidcLogin.issuer : undefined);
  const router = express.Router();
  const index = path.join(dir, 'index.html');

  router.get('/', (_req, res) => {
    if (!existsSync(index)) {
      throw new Problem(503, 'Service Unavailable', `the web portal is not built (no ${index}); run \`node scripts/setup.mjs\` or \`npm run build:portal\``, {
        slug: 'portal-not-built',
      });
    }
    securityHeaders(res, csp);
    // Always revalidated: a new build must reach the next page load.
    res.set('Cache-Control', 'no-cache');
    res.sendFile(index);
  });

  router.use(
    '/assets',
    express.static(path.join(dir, 'assets'), {
      index: false,
      redirect: false,
      fallthrough: true,
      setHeaders: (res) => {
        securityHeaders(res, csp);
        res.setHeader('Cache-Control', 'no-cache');
      },
    }),
  );
  // An asset the build does not have: 404 here, not a 401 from the API's bearer check further on.
  router.use('/assets', (req, _res, next) => next(notFound(`the portal has no asset ${req.path}`)));
  return router;
}
