/**
 * Issue 15, signing in at the site's OpenID provider instead of pasting a token: a real OP
 * (npm `oidc-provider`, test/peers/oidc.ts) on 127.0.0.1, a real stack whose API trusts it
 * (CLOUDGATE_OIDC_ISSUER / _AUDIENCE / _CLIENT_ID / _RESOURCE), Debian's Chromium driven by
 * playwright-core for the person at the provider's pages, and the built `cloudgate` command
 * as a subprocess.
 *
 * The portal: "Sign in with …" (authorization code flow, PKCE) as one user, back in the
 * portal signed in as her, her context made; another user signed in the same way sees none
 * of it; an access token past its expiry sends the page back to the sign-in. The command:
 * `cloudgate login --oidc` (device flow) as a person completes it at the provider, then works
 * as that user and not as another; an expired access token is refreshed before a command.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { decodeJwt } from 'jose';
import { chromium, type Browser, type Page } from 'playwright-core';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { portalCsp } from '../api/portal.js';
import { freePort } from '../workers/dev-server.js';
import { CLI_BIN, cliEnv, ROOT, startStack, type Stack } from './harness.js';
import { startOidcPeer, type OidcPeer } from './peers/oidc.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const AUDIENCE = 'cloudgate';
const RESOURCE = 'urn:cloudgate:test-api';
/** Screenshots of the sign-in pages (git-ignored, like the portal suite's). */
const ARTIFACTS = path.join(ROOT, '.artifacts', 'oidc-login');

let idp: OidcPeer;
let stack: Stack;
let browser: Browser;
let home: string;
/** What the steps made, for the steps after. */
const made: { adaContext?: string; adaConfig?: string; beaConfig?: string } = {};

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: the set-up (node scripts/setup.mjs, run by npm test) installs Debian's chromium; or set CHROMIUM_PATH`);
  for (const built of [path.join(ROOT, 'dist', 'portal', 'index.html'), CLI_BIN]) {
    if (!existsSync(built)) throw new Error(`${built} is missing: run npm run build (node scripts/setup.mjs, run by npm test, does)`);
  }
  // The API's URL is the client's redirect URI: the provider must know it before the stack starts.
  const apiPort = await freePort();
  idp = await startOidcPeer({ audience: AUDIENCE, resource: RESOURCE, redirectUris: [`http://127.0.0.1:${apiPort}/`] });
  stack = await startStack({ apiPort, auth: { oidcIssuer: idp.issuer, oidcAudience: AUDIENCE, oidcClientId: idp.clientId, oidcResource: RESOURCE } });
  expect(stack.api.url).toBe(`http://127.0.0.1:${apiPort}`);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  home = mkdtempSync(path.join(os.tmpdir(), 'cloudgate-oidc-home-'));
  mkdirSync(ARTIFACTS, { recursive: true });
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await stack?.stop();
  await idp?.close();
  if (home) rmSync(home, { recursive: true, force: true });
});

/** A fresh browser profile (no cookies: signed in nowhere) and a page in it. */
async function newPage(): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  return page;
}

const issuerLabel = () => idp.issuer.replace(/^https?:\/\//, '');

/** At the portal's sign-in page: "Sign in with …", the provider's pages as `login`, and back; `shots`: screenshots of the two pages. */
async function portalSignIn(page: Page, login: string, shots = false): Promise<void> {
  await page.goto(`${stack.api.url}/`);
  await page.getByRole('heading', { name: 'Sign in to cloudgate' }).waitFor();
  const button = page.getByRole('button', { name: `Sign in with ${issuerLabel()}` });
  await button.waitFor();
  if (shots) await page.screenshot({ path: path.join(ARTIFACTS, '01-portal-sign-in.png') });
  await button.click();
  await page.waitForURL((u) => u.origin === idp.issuer);
  if (shots) await page.screenshot({ path: path.join(ARTIFACTS, '02-provider-sign-in.png') });
  await idp.signIn(page, login);
  await page.waitForURL((u) => u.origin === stack.api.url);
  await page.getByText('Signed in as').waitFor();
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cloudgate args…` with HOME in the test's folder and the config file `config`. */
function cg(args: string[], config: string): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI_BIN, ...args], { env: cliEnv(home, { CLOUDGATE_CONFIG: config }), timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

/**
 * `cloudgate login --url API --oidc` as a person runs it: the command prints a link and a
 * code; the person opens the link in a browser, enters the code and signs in as `login`.
 */
async function cliLogin(login: string, config: string, url = stack.api.url): Promise<Run> {
  const child = spawn(process.execPath, [CLI_BIN, 'login', '--url', url, '--oidc'], { env: cliEnv(home, { CLOUDGATE_CONFIG: config }), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  const exited = new Promise<number>((resolve) => child.once('exit', (code) => resolve(code ?? -1)));
  const prompt = await new Promise<RegExpExecArray | undefined>((resolve) => {
    child.stderr.on('data', (b: Buffer) => {
      stderr += b.toString();
      const m = /open (\S+) and enter the code (\S+)/.exec(stderr);
      if (m) resolve(m);
    });
    void exited.then(() => resolve(undefined));
  });
  if (prompt) await idp.verifyDevice(await newPage(), prompt[1], prompt[2], login);
  const code = await exited;
  return { code, stdout, stderr };
}

const readConfig = (file: string) => parseYaml(readFileSync(file, 'utf8')) as { url: string; token: string; oidc: Record<string, string> };

describe('signing in at the site’s OpenID provider', () => {
  it('GET /v1/login-options names the provider, client, scopes and resource to anyone; the portal may call that provider and no other origin', async () => {
    const res = await fetch(`${stack.api.url}/v1/login-options`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ oidc: { issuer: idp.issuer, clientId: idp.clientId, scope: 'openid profile', resource: RESOURCE } });
    const page = await fetch(`${stack.api.url}/`);
    const csp = page.headers.get('content-security-policy') ?? '';
    expect(csp).toBe(portalCsp(idp.issuer));
    expect(csp).toContain(`connect-src 'self' ${idp.issuer};`);
    expect(csp).not.toContain('unsafe');
  });

  it('the portal: “Sign in with …” goes to the provider and back, signed in as that user with a token for this API, the code gone from the address', async () => {
    const page = await newPage();
    await portalSignIn(page, 'ada', true);
    expect(await page.locator('header .who').textContent()).toContain('ada');
    // The code, state and issuer of the answer are gone from the address bar.
    expect(page.url()).toBe(`${stack.api.url}/`);
    const kept = await page.evaluate(() => ({
      cookie: document.cookie,
      local: localStorage.length,
      token: sessionStorage.getItem('cloudgate.token'),
      pending: sessionStorage.getItem('cloudgate.oidc.pending'),
    }));
    expect(kept).toMatchObject({ cookie: '', local: 0, pending: null });
    // The access token is the provider's JWT for this API, kept where a pasted token is.
    expect(decodeJwt(kept.token!)).toMatchObject({ iss: idp.issuer, aud: AUDIENCE, preferred_username: 'ada', client_id: idp.clientId });
    const me = await fetch(`${stack.api.url}/v1/me`, { headers: { authorization: `Bearer ${kept.token}` } });
    expect(await me.json()).toEqual({ owner: 'ada', role: 'user', via: 'oidc' });

    // Her data: a context made with the form is hers.
    await page.getByRole('link', { name: 'Contexts' }).click();
    await page.getByRole('link', { name: 'New context' }).click();
    await page.getByLabel('Name', { exact: true }).fill('ada-analysis');
    await page.getByLabel('Repositories').fill('atlas.cern.ch');
    await page.getByRole('button', { name: 'Create context' }).click();
    await page.getByRole('heading', { name: /Context ada-analysis/ }).waitFor();
    made.adaContext = (await page.locator('h1 .id').textContent())!;
    expect(made.adaContext).toMatch(/^ctx-[0-9a-f]{12}$/);
    const stored = await stack.http('GET', `/v1/contexts/${made.adaContext}`);
    expect(stored.body.owner).toBe('ada');
    await page.getByRole('link', { name: 'Contexts' }).click();
    await page.getByRole('link', { name: 'ada-analysis' }).waitFor();
  });

  it('another user signed in the same way sees nothing of hers, and her context is not found', async () => {
    const page = await newPage();
    await portalSignIn(page, 'bea');
    expect(await page.locator('header .who').textContent()).toContain('bea');
    await page.getByRole('link', { name: 'Contexts' }).click();
    await page.getByText('No contexts yet.').waitFor();
    expect(await page.getByRole('link', { name: 'ada-analysis' }).count()).toBe(0);
    await page.goto(`${stack.api.url}/#/contexts/${made.adaContext}`);
    await page.getByRole('alert').filter({ hasText: '404' }).waitFor();
  });

  it('an access token past its expiry sends the portal back to the sign-in page, saying so: a page left open, and at the next click', async () => {
    const signedOut = async (page: Page) => {
      await page.getByRole('heading', { name: 'Sign in to cloudgate' }).waitFor();
      expect(await page.getByRole('status').textContent()).toMatch(/^You were signed out: your sign-in expired at .*; sign in again$/);
      await page.getByRole('button', { name: `Sign in with ${issuerLabel()}` }).waitFor();
      expect(await page.evaluate(() => sessionStorage.getItem('cloudgate.token'))).toBeNull();
    };
    // The provider's access tokens live 10 minutes: eleven pass on the page's clock while nobody touches it.
    const idle = await newPage();
    await idle.clock.install();
    await portalSignIn(idle, 'cleo');
    await idle.clock.fastForward('11:00');
    await signedOut(idle);
    // The same at the next request, when the computer's clock jumped (a laptop woken from sleep: no timer ran).
    const woken = await newPage();
    await portalSignIn(woken, 'cleo');
    await woken.clock.setFixedTime(Date.now() + 11 * 60_000);
    await woken.getByRole('link', { name: 'Contexts' }).click();
    await signedOut(woken);
  });

  it('the command: login --oidc prints the link and the code, and once the person signed in there it works as that user', async () => {
    made.adaConfig = path.join(home, 'ada.yaml');
    const r = await cliLogin('ada', made.adaConfig);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: expect.stringContaining(`Waiting for the sign-in at ${idp.issuer}`) });
    expect(r.stdout).toBe(`logged in to ${stack.api.url} as ada (user) via ${idp.issuer}; saved in ${made.adaConfig} (mode 0600)\n`);
    // The access and refresh tokens, in the config file only its owner may read.
    expect(statSync(made.adaConfig).mode & 0o777).toBe(0o600);
    const config = readConfig(made.adaConfig);
    expect(config).toEqual({
      url: stack.api.url,
      token: expect.any(String),
      oidc: { issuer: idp.issuer, clientId: idp.clientId, resource: RESOURCE, refreshToken: expect.any(String), expiresAt: expect.any(String) },
    });
    expect(decodeJwt(config.token)).toMatchObject({ aud: AUDIENCE, preferred_username: 'ada' });
    expect(Date.parse(config.oidc.expiresAt)).toBeGreaterThan(Date.now() + 5 * 60_000);

    const got = await cg(['get', 'contexts', '-o', 'name'], made.adaConfig);
    expect({ code: got.code, stderr: got.stderr }).toEqual({ code: 0, stderr: '' });
    expect(got.stdout).toBe(`${made.adaContext}\n`);
    expect((await cg(['whoami'], made.adaConfig)).stdout).toBe(`ada (user) at ${stack.api.url}\n`);
  });

  it('another user’s sign-in on the command line shows none of hers and is refused hers', async () => {
    made.beaConfig = path.join(home, 'bea.yaml');
    const r = await cliLogin('bea', made.beaConfig);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/ as bea \(user\) via /);
    const got = await cg(['get', 'contexts'], made.beaConfig);
    expect({ code: got.code, stdout: got.stdout }).toEqual({ code: 0, stdout: 'nothing to show\n' });
    const preview = await cg(['context', 'preview', made.adaContext!], made.beaConfig);
    expect(preview.code).toBe(4);
    expect(preview.stderr).toMatch(/^cloudgate: .*404 Not Found\)\n$/);
  });

  it('an expired access token is refreshed before a command (the rotated refresh token kept); a refused refresh says to log in again', async () => {
    const file = made.adaConfig!;
    const expire = () => {
      const c = readConfig(file);
      writeFileSync(file, stringifyYaml({ ...c, oidc: { ...c.oidc, expiresAt: new Date(Date.now() - 60_000).toISOString() } }));
      return c;
    };
    for (let round = 0; round < 2; round++) {
      const before = expire();
      const got = await cg(['get', 'contexts', '-o', 'name'], file);
      expect({ code: got.code, stdout: got.stdout, stderr: got.stderr }).toEqual({ code: 0, stdout: `${made.adaContext}\n`, stderr: '' });
      const after = readConfig(file);
      expect(after.token).not.toBe(before.token);
      expect(after.oidc.refreshToken).not.toBe(before.oidc.refreshToken);
      expect(Date.parse(after.oidc.expiresAt)).toBeGreaterThan(Date.now() + 5 * 60_000);
      expect(decodeJwt(after.token)).toMatchObject({ aud: AUDIENCE, preferred_username: 'ada' });
      expect(statSync(file).mode & 0o777).toBe(0o600);
    }
    // A refresh token the provider no longer honours: one line saying to sign in again.
    const c = readConfig(file);
    writeFileSync(file, stringifyYaml({ ...c, oidc: { ...c.oidc, refreshToken: 'revoked-or-never-issued', expiresAt: new Date(Date.now() - 60_000).toISOString() } }));
    const refused = await cg(['get', 'contexts'], file);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toMatch(new RegExp(`^cloudgate: your sign-in at ${idp.issuer} has ended \\(the refresh token was refused: invalid_grant.*\\); run \`cloudgate login --url ${stack.api.url} --oidc\` again\\n$`));
  });

  it('a provider without the device authorization grant: login --oidc says so, naming what is missing', async () => {
    // A site whose provider offers no device flow: its API names the provider; the command reads nothing else of it.
    const plain = await startOidcPeer({ audience: AUDIENCE, resource: RESOURCE, redirectUris: [`${stack.api.url}/`], deviceFlow: false });
    const site: Server = createServer((req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(req.url === '/v1/login-options' ? { oidc: { issuer: plain.issuer, clientId: plain.clientId, scope: 'openid' } } : {}));
    });
    await new Promise<void>((resolve) => site.listen(0, '127.0.0.1', resolve));
    try {
      const url = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;
      const r = await cg(['login', '--url', url, '--oidc'], path.join(home, 'none.yaml'));
      expect(r.code).toBe(3);
      expect(r.stderr).toBe(
        `cloudgate: the identity provider ${plain.issuer} offers no device authorization grant (its discovery document has no device_authorization_endpoint); log in with an API token: --token-file\n`,
      );
      expect(existsSync(path.join(home, 'none.yaml'))).toBe(false);
    } finally {
      await new Promise((resolve) => site.close(resolve));
      await plain.close();
    }
  });
});
