/**
 * "Sign in with <issuer>": the OAuth 2.0 authorization code flow with PKCE, as a public client
 * (no secret), with oauth4webapi. The site says which issuer, client, scopes and resource
 * (`GET /v1/login-options`); the page sends the user to the provider, the provider sends them
 * back to this page with `?code=…&state=…`, and the page trades the code for an access token
 * at the provider's token endpoint (the only other origin the page's CSP lets it call).
 *
 * Between the two, the tab's sessionStorage holds the state and the PKCE code verifier (gone
 * with the tab, never seen by another site); the query is stripped from the address as soon as
 * it is read. The access token then goes where a pasted token goes (api.ts).
 */
import * as oauth from 'oauth4webapi';
import type { OidcLogin } from '../../api/schemas.js';
import { isLoopbackHttp } from '../../model/loopback.js';

export type { OidcLogin };

const PENDING_KEY = 'cloudgate.oidc.pending';

/** What the tab remembers while the user is at the provider. */
interface Pending {
  issuer: string;
  state: string;
  codeVerifier: string;
  /** The page (hash route) to come back to. */
  returnTo: string;
}

/** The access token of a finished sign-in, and when it expires (ms since the epoch) if the provider said. */
export interface SignedIn {
  accessToken: string;
  expiresAt?: number;
}

/** Plain http only for a provider on this machine (a developer's or a test's); anything else must be https. */

const httpOptions = (issuer: URL) => ({ [oauth.allowInsecureRequests]: isLoopbackHttp(issuer) });

/** Where the provider sends the user back: this page, without query or fragment (the client's registered redirect URI). */
export const redirectUri = (): string => `${location.origin}/`;

/** How the button names the provider: its issuer without the scheme. */
export const issuerLabel = (issuer: string): string => issuer.replace(/^https?:\/\//, '').replace(/\/+$/, '');

async function discover(login: OidcLogin): Promise<oauth.AuthorizationServer> {
  const issuer = new URL(login.issuer);
  const res = await oauth.discoveryRequest(issuer, { algorithm: 'oidc', ...httpOptions(issuer) });
  return oauth.processDiscoveryResponse(issuer, res);
}

/** Sends the tab to the provider's authorization endpoint; resolves only if that fails. */
export async function startSignIn(login: OidcLogin): Promise<void> {
  if (!login.clientId) throw new Error('the site names no OIDC client for the portal');
  const as = await discover(login);
  if (!as.authorization_endpoint) throw new Error(`${login.issuer} names no authorization_endpoint`);
  const codeVerifier = oauth.generateRandomCodeVerifier();
  const state = oauth.generateRandomState();
  const url = new URL(as.authorization_endpoint);
  url.searchParams.set('client_id', login.clientId);
  url.searchParams.set('redirect_uri', redirectUri());
  url.searchParams.set('response_type', 'code');
  url.searchParams.set('scope', login.scope);
  url.searchParams.set('code_challenge', await oauth.calculatePKCECodeChallenge(codeVerifier));
  url.searchParams.set('code_challenge_method', 'S256');
  url.searchParams.set('state', state);
  if (login.resource) url.searchParams.set('resource', login.resource);
  sessionStorage.setItem(PENDING_KEY, JSON.stringify({ issuer: login.issuer, state, codeVerifier, returnTo: location.hash } satisfies Pending));
  location.assign(url.href);
}

/** Whether this page load is the provider sending the user back (a `state`, with a `code` or an `error`). */
export const isCallback = (): boolean => {
  const q = new URLSearchParams(location.search);
  return q.has('state') && (q.has('code') || q.has('error'));
};

/**
 * Finishes a sign-in this tab started: checks the answer (state, issuer), strips it from the
 * address bar and the history, and trades the code (with the PKCE verifier) for tokens.
 * Throws an Error whose message says what went wrong, for the sign-in page to show.
 */
export async function finishSignIn(login: OidcLogin): Promise<SignedIn> {
  const answer = new URL(location.href);
  const raw = sessionStorage.getItem(PENDING_KEY);
  sessionStorage.removeItem(PENDING_KEY);
  const pending = raw ? (JSON.parse(raw) as Pending) : undefined;
  // The code and state leave the address bar (and the history) before anything else can fail.
  history.replaceState(null, '', `${location.pathname}${pending?.returnTo ?? ''}`);
  if (!pending) throw new Error('this tab did not start a sign-in (or started it in another tab); sign in again');
  if (pending.issuer !== login.issuer || !login.clientId) throw new Error('the site changed its identity provider during the sign-in; sign in again');
  const as = await discover(login);
  const client: oauth.Client = { client_id: login.clientId };
  let params: URLSearchParams;
  try {
    params = oauth.validateAuthResponse(as, client, answer, pending.state);
  } catch (err) {
    if (err instanceof oauth.AuthorizationResponseError) throw new Error(`${issuerLabel(login.issuer)} refused: ${err.error_description ?? err.error}`, { cause: err });
    throw err;
  }
  const res = await oauth.authorizationCodeGrantRequest(as, client, oauth.None(), params, redirectUri(), pending.codeVerifier, {
    ...httpOptions(new URL(login.issuer)),
    ...(login.resource && { additionalParameters: { resource: login.resource } }),
  });
  let tokens: oauth.TokenEndpointResponse;
  try {
    tokens = await oauth.processAuthorizationCodeResponse(as, client, res);
  } catch (err) {
    if (err instanceof oauth.ResponseBodyError) throw new Error(`${issuerLabel(login.issuer)} refused the code: ${err.error_description ?? err.error}`, { cause: err });
    throw err;
  }
  return { accessToken: tokens.access_token, ...(tokens.expires_in !== undefined && { expiresAt: Date.now() + tokens.expires_in * 1000 }) };
}
