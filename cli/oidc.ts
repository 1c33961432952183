/**
 * `cloudgate login --oidc`: the OAuth 2.0 device authorization grant (RFC 8628) at the site's
 * identity provider, with openid-client, as a public client. The API says which issuer, client,
 * scopes and resource (`GET /v1/login-options`, public), so the user types only its URL. The
 * command prints where to go and the code to enter, polls until the user has signed in there,
 * and keeps the access token where an API token is kept (the config file, mode 0600) with the
 * refresh token beside it; {@link refreshIfExpired} trades that for a new access token before
 * a command when the old one has expired.
 */
import * as oidc from 'openid-client';
import type { LoginOptions } from '../api/schemas.js';
import { isLoopbackHttp } from '../model/loopback.js';
import { ApiClient, CliError, EXIT } from './client.js';
import { configPath, readConfig, writeConfig, type OidcSession, type UserConfig } from './config.js';

/** A token this close to its expiry is refreshed before a command rather than sent. */
const EXPIRY_MARGIN_MS = 30_000;

/** Plain http only for a provider on this machine (a developer's or a test's); anything else must be https. */
function httpOptions(issuer: URL): oidc.DiscoveryRequestOptions {
  if (issuer.protocol === 'https:') return { timeout: 30 };
  if (isLoopbackHttp(issuer)) return { timeout: 30, execute: [oidc.allowInsecureRequests] };
  throw new CliError(`the identity provider ${issuer.href} is not https`, EXIT.usage);
}

async function discover(issuer: string, clientId: string): Promise<oidc.Configuration> {
  const url = new URL(issuer);
  try {
    return await oidc.discovery(url, clientId, undefined, oidc.None(), httpOptions(url));
  } catch (err) {
    if (err instanceof CliError) throw err;
    throw new CliError(`cannot read the discovery document of the identity provider ${issuer}: ${whyOf(err)}`, EXIT.unreachable, { cause: err });
  }
}

/** What a provider's refusal or a network failure says, in one line. */
function whyOf(err: unknown): string {
  if (err instanceof oidc.ResponseBodyError) return `${err.error}${err.error_description ? `: ${err.error_description}` : ''}`;
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (err as Error).message;
}

/** The session and tokens of a finished sign-in, as the config file keeps them. */
function stored(session: Omit<OidcSession, 'refreshToken' | 'expiresAt'>, tokens: oidc.TokenEndpointResponse, previousRefresh?: string): { token: string; oidc: OidcSession } {
  const refreshToken = tokens.refresh_token ?? previousRefresh;
  return {
    token: tokens.access_token,
    oidc: {
      ...session,
      ...(refreshToken && { refreshToken }),
      ...(tokens.expires_in !== undefined && { expiresAt: new Date(Date.now() + tokens.expires_in * 1000).toISOString() }),
    },
  };
}

/**
 * The device authorization grant against the OIDC provider the API at `url` names. `say`
 * prints the instructions (standard error: they are for the person, not for a script).
 */
export async function deviceLogin(opts: { url: string; clientId?: string; say: (line: string) => void }): Promise<{ token: string; oidc: OidcSession }> {
  const options = await new ApiClient({ url: opts.url }).get<LoginOptions>('/v1/login-options');
  const login = options.oidc;
  if (!login) throw new CliError(`the cloudgate API at ${opts.url} accepts no OIDC sign-in (CLOUDGATE_OIDC_ISSUER is not set there); log in with an API token: --token-file`, EXIT.auth);
  const clientId = opts.clientId ?? login.clientId;
  if (!clientId) throw new CliError(`the cloudgate API at ${opts.url} names no OIDC client (CLOUDGATE_OIDC_CLIENT_ID is not set there); give one with --client-id`, EXIT.usage);
  const config = await discover(login.issuer, clientId);
  const metadata = config.serverMetadata();
  if (!metadata.device_authorization_endpoint) {
    throw new CliError(
      `the identity provider ${login.issuer} offers no device authorization grant (its discovery document has no device_authorization_endpoint); log in with an API token: --token-file`,
      EXIT.auth,
    );
  }
  // A refresh token, so that the sign-in outlives its first access token: ask for offline_access unless the provider says it has none.
  const scopes = login.scope.split(' ');
  if (!scopes.includes('offline_access') && (metadata.scopes_supported?.includes('offline_access') ?? true)) scopes.push('offline_access');
  const resource: Record<string, string> = login.resource ? { resource: login.resource } : {};
  let tokens: oidc.TokenEndpointResponse;
  try {
    const device = await oidc.initiateDeviceAuthorization(config, { scope: scopes.join(' '), ...resource });
    opts.say(`To sign in, open ${device.verification_uri} and enter the code ${device.user_code}`);
    if (device.verification_uri_complete) opts.say(`(or open ${device.verification_uri_complete})`);
    opts.say(`Waiting for the sign-in at ${login.issuer} (the code expires in ${Math.round(device.expires_in / 60)} minutes)…`);
    tokens = await oidc.pollDeviceAuthorizationGrant(config, device, resource);
  } catch (err) {
    if (err instanceof oidc.ResponseBodyError && err.error === 'expired_token') throw new CliError(`the code expired before the sign-in at ${login.issuer} was done; run login again`, EXIT.auth, { cause: err });
    if (err instanceof oidc.ResponseBodyError && err.error === 'access_denied') throw new CliError(`the sign-in at ${login.issuer} was refused or aborted`, EXIT.auth, { cause: err });
    throw new CliError(`the device sign-in at ${login.issuer} failed: ${whyOf(err)}`, err instanceof oidc.ResponseBodyError ? EXIT.auth : EXIT.unreachable, { cause: err });
  }
  return stored({ issuer: login.issuer, clientId, ...(login.resource && { resource: login.resource }) }, tokens);
}

/**
 * The config with a fresh access token when its OIDC one has expired (or is about to): the
 * refresh token traded at the provider (the new refresh token kept, where it rotates).
 * Undefined when nothing needed doing. A refusal says to log in again.
 */
export async function refreshIfExpired(config: UserConfig, now = Date.now()): Promise<UserConfig | undefined> {
  const session = config.oidc;
  if (!session?.expiresAt || Date.parse(session.expiresAt) - EXPIRY_MARGIN_MS > now) return undefined;
  const again = `run \`cloudgate login --url ${config.url ?? 'URL'} --oidc\` again`;
  if (!session.refreshToken) throw new CliError(`the access token of your sign-in at ${session.issuer} expired at ${session.expiresAt} and there is no refresh token; ${again}`, EXIT.auth);
  const oidcConfig = await discover(session.issuer, session.clientId);
  let tokens: oidc.TokenEndpointResponse;
  try {
    tokens = await oidc.refreshTokenGrant(oidcConfig, session.refreshToken, session.resource ? { resource: session.resource } : undefined);
  } catch (err) {
    if (err instanceof oidc.ResponseBodyError) throw new CliError(`your sign-in at ${session.issuer} has ended (the refresh token was refused: ${whyOf(err)}); ${again}`, EXIT.auth, { cause: err });
    throw new CliError(`cannot refresh the access token at ${session.issuer}: ${whyOf(err)}`, EXIT.unreachable, { cause: err });
  }
  const { refreshToken: _old, expiresAt: _expired, ...rest } = session;
  return { ...config, ...stored(rest, tokens, session.refreshToken) };
}

/** Before a command: the config file's OIDC access token refreshed if it expired (not when CLOUDGATE_TOKEN stands in for the file's). */
export async function refreshStoredToken(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (env.CLOUDGATE_TOKEN) return;
  const file = configPath(env);
  const fresh = await refreshIfExpired(readConfig(file));
  if (fresh) writeConfig(fresh, file);
}
