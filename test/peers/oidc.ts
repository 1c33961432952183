/**
 * A real OpenID provider for the sign-in tests: npm `oidc-provider` (panva's certified OP),
 * in-process on 127.0.0.1 at a free port. It knows one public client (no secret, PKCE
 * required) allowed the authorization code flow, the device authorization grant (RFC 8628)
 * and refresh tokens, and one resource server (RFC 8707 resource indicator) whose access
 * tokens are JWTs with `aud` = the API's audience and the account's `preferred_username`.
 *
 * Sign-in is the provider's own development pages (`devInteractions`): any login name with
 * any password is that account — each test user is a name. {@link OidcPeer.signIn} fills them
 * in a browser page as a person would; {@link OidcPeer.verifyDevice} does the device
 * verification the same way.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { exportJWK, generateKeyPair } from 'jose';
import Provider, { errors, type Configuration } from 'oidc-provider';
import type { Page } from 'playwright-core';

export interface OidcPeerOptions {
  /** The `aud` of its access tokens: the API's CLOUDGATE_OIDC_AUDIENCE. */
  audience: string;
  /** The resource indicator clients ask tokens for (CLOUDGATE_OIDC_RESOURCE). */
  resource: string;
  /** Where the public client may be sent back to (the portal's page). */
  redirectUris: string[];
  /** Lifetime of its access tokens; default 10 minutes. */
  accessTokenTtlSeconds?: number;
  /** Offer the device authorization grant; default yes (no: a provider whose discovery document lacks it). */
  deviceFlow?: boolean;
}

export interface OidcPeer {
  /** The issuer (CLOUDGATE_OIDC_ISSUER): `http://127.0.0.1:<port>`. */
  issuer: string;
  /** The public client's id (CLOUDGATE_OIDC_CLIENT_ID). */
  clientId: string;
  audience: string;
  resource: string;
  /**
   * On the provider's sign-in page (where the client sent `page`): signs in as `login`
   * (any password) and consents, as a person would, leaving the page wherever the provider
   * then sends it.
   */
  signIn(page: Page, login: string): Promise<void>;
  /** Opens `verificationUri` in `page`, enters `userCode`, signs in as `login` and consents. */
  verifyDevice(page: Page, verificationUri: string, userCode: string, login: string): Promise<void>;
  close(): Promise<void>;
}

const CLIENT_ID = 'cloudgate-test';

export async function startOidcPeer(opts: OidcPeerOptions): Promise<OidcPeer> {
  const server: Server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const signingKey = { ...(await exportJWK(privateKey)), kid: 'test-1', alg: 'RS256', use: 'sig' };

  const configuration: Configuration = {
    clients: [
      {
        client_id: CLIENT_ID,
        // A public client: the portal (a page) and the command can keep no secret.
        token_endpoint_auth_method: 'none',
        redirect_uris: opts.redirectUris,
        response_types: ['code'],
        grant_types: ['authorization_code', 'refresh_token', ...(opts.deviceFlow === false ? [] : ['urn:ietf:params:oauth:grant-type:device_code'])],
      },
    ],
    jwks: { keys: [signingKey as never] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    pkce: { required: () => true },
    scopes: ['openid', 'profile', 'offline_access'],
    claims: { openid: ['sub'], profile: ['preferred_username', 'name'] },
    async findAccount(_ctx, sub) {
      return { accountId: sub, claims: async () => ({ sub, preferred_username: sub, name: sub }) };
    },
    // The API names the owner by `preferred_username` (CLOUDGATE_OIDC_OWNER_CLAIM's default): put it into the access token.
    async extraTokenClaims(_ctx, token) {
      return 'accountId' in token && token.accountId ? { preferred_username: token.accountId } : undefined;
    },
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: opts.deviceFlow ?? true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => opts.resource,
        useGrantedResource: async () => true,
        async getResourceServerInfo(_ctx, indicator) {
          if (indicator !== opts.resource) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
          return { audience: opts.audience, scope: 'cloudgate', accessTokenFormat: 'jwt', accessTokenTTL: opts.accessTokenTtlSeconds ?? 600 };
        },
      },
      revocation: { enabled: true },
    },
    ttl: {
      AccessToken: opts.accessTokenTtlSeconds ?? 600,
      AuthorizationCode: 60,
      DeviceCode: 600,
      IdToken: 600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
      RefreshToken: 3600,
    },
  };
  const provider = new Provider(issuer, configuration);
  server.on('request', provider.callback());

  /** The provider's dev pages: the login form, then the consent form (skipped when already granted). */
  const finishInteraction = async (page: Page, login: string) => {
    await page.locator('input[name="login"]').fill(login);
    await page.locator('input[name="password"]').fill('any password');
    await page.getByRole('button', { name: 'Sign-in' }).click();
    await page.waitForLoadState();
    // The consent page, unless this account already granted the client what it asks.
    if ((await page.locator('input[name="prompt"][value="consent"]').count()) > 0) {
      await page.getByRole('button', { name: 'Continue' }).click();
      await page.waitForLoadState();
    }
  };

  return {
    issuer,
    clientId: CLIENT_ID,
    audience: opts.audience,
    resource: opts.resource,
    signIn: finishInteraction,
    async verifyDevice(page, verificationUri, userCode, login) {
      await page.goto(verificationUri);
      await page.locator('input[name="user_code"]').fill(userCode);
      await page.getByRole('button', { name: 'Continue' }).click();
      await page.waitForLoadState();
      // The confirmation ("the code your device shows?"), then the sign-in and consent.
      await page.getByRole('heading', { name: 'Confirm Device' }).waitFor();
      await page.getByRole('button', { name: 'Continue' }).click();
      await page.waitForLoadState();
      await finishInteraction(page, login);
      await page.getByRole('heading', { name: 'Sign-in Success' }).waitFor();
    },
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
