/**
 * The web portal in a real browser (issue 15): Debian's Chromium driven by playwright-core,
 * against a real stack (Temporal dev server, API, worker, sim cloud, a fake stratum-1). A
 * user signs in with the keyboard, creates a context through the form (the API's errors shown
 * at their fields), pairs a laptop, defines a three-service cluster with the form (graph drawn,
 * YAML view, fit checked against the clouds), deploys it and watches it reach READY, scales,
 * pauses, resumes and deletes it. Another user sees nothing of hers and is refused on her
 * pages and on every action the portal takes. Screenshots of each page go to
 * `.artifacts/portal/` (git-ignored); `CLOUDGATE_PORTAL_SCREENSHOT=1` also refreshes the
 * README's `docs/portal.png`.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type * as Axe from 'axe-core';
import { verify } from 'unixcrypt';
import { chromium, type Browser, type BrowserContext, type Locator, type Page } from 'playwright-core';
import { PORTAL_CSP } from '../api/portal.js';
import { ROOT, startStack, waitForState, type Stack } from './harness.js';
import { startStratum1, type FakeStratum1 } from './fakes/stratum1.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, '.artifacts', 'portal');
const SECRET = 'portal-SECRET-7c1e';
/** A laptop screen. */
const VIEWPORT = { width: 1366, height: 768 };

let stack: Stack;
let stratum1: FakeStratum1;
let browser: Browser;
let alice: { token: string; context: BrowserContext; page: Page };
let bob: { token: string; context: BrowserContext; page: Page };
/** What the walkthrough made, for the steps after. */
const made: { contextId?: string; definitionId?: string; clusterId?: string; pin?: string } = {};

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no Chromium at ${CHROMIUM}: the set-up (node scripts/setup.mjs, run by npm test) installs Debian's chromium; or set CHROMIUM_PATH`);
  }
  if (!existsSync(path.join(ROOT, 'dist', 'portal', 'index.html'))) {
    throw new Error('the portal is not built: run node scripts/setup.mjs (npm test does) or npm run build:portal');
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  const now = Date.now();
  stratum1 = await startStratum1({ 'alice.cern.ch': { revision: 4242, publishedAt: new Date(now - 3_600_000), whitelistExpires: new Date(now + 20 * 86_400_000) } });
  stack = await startStack({ cvmfsServers: [stratum1.url] });
  // Playwright's own browser downloads cannot reach the internet here: Debian's, headless, as root.
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  const user = async (owner: string) => {
    const issued = await stack.http('POST', '/v1/tokens', { owner, role: 'user' });
    expect(issued.status).toBe(201);
    const context = await browser.newContext({ viewport: VIEWPORT });
    return { token: issued.body.token as string, context, page: await context.newPage() };
  };
  alice = await user('alice');
  bob = await user('bob');
  for (const p of [alice.page, bob.page]) p.setDefaultTimeout(20_000);
}, 180_000);

afterAll(async () => {
  await browser?.close();
  await stack?.stop();
  await stratum1?.stop();
});

const shot = async (page: Page, name: string) => {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
};

/**
 * Waits until `check` holds of what a person sees (playwright-core has no `expect` of its
 * own: that is @playwright/test's); fails saying what was seen last.
 */
async function until(what: string, read: () => Promise<unknown>, check: (seen: any) => boolean, timeout = 20_000): Promise<void> {
  const deadline = Date.now() + timeout;
  let seen: unknown;
  for (;;) {
    seen = await read().catch((err: unknown) => `(${(err as Error).message.split('\n')[0]})`);
    if (check(seen)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}; last seen: ${JSON.stringify(seen)?.slice(0, 500)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
const textOf = (loc: Locator) => () => loc.first().textContent({ timeout: 1000 }).then((t) => (t ?? '').trim());
const matches = (want: string | RegExp, exact: boolean) => (t: string) => (typeof want === 'string' ? (exact ? t === want : t.includes(want)) : want.test(t));
/** The (first) element's text contains `want` (a string) or matches it (a RegExp). */
const seeText = (loc: Locator, want: string | RegExp, timeout?: number) => until(`${loc} to contain ${want}`, textOf(loc), matches(want, false), timeout);
/** The (first) element's whole text is `want`. */
const hasText = (loc: Locator, want: string | RegExp, timeout?: number) => until(`${loc} to read ${want}`, textOf(loc), matches(want, true), timeout);
const seeCount = (loc: Locator, n: number, timeout?: number) => until(`${n} of ${loc}`, () => loc.count(), (c) => c === n, timeout);
const hasValue = (loc: Locator, v: string) => until(`${loc} to hold ${v}`, () => loc.inputValue({ timeout: 1000 }), (x) => x === v);
const hasAttribute = (loc: Locator, name: string, v: string | RegExp) => until(`${loc} ${name}=${v}`, () => loc.getAttribute(name, { timeout: 1000 }), (x) => typeof x === 'string' && matches(v, true)(x));
const visible = (loc: Locator, timeout?: number) => loc.first().waitFor({ state: 'visible', timeout });

/** Every form control on the page has an accessible name (a label, or aria-label). */
async function expectLabelled(page: Page) {
  const unlabelled = await page.$$eval('input, select, textarea', (els) =>
    els
      .filter((el) => (el as HTMLInputElement).type !== 'hidden')
      .filter((el) => !((el as HTMLInputElement).labels?.length || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')))
      .map((el) => el.outerHTML.slice(0, 120)),
  );
  expect(unlabelled).toEqual([]);
}

/** axe-core's browser build, injected into the page by the test (no network, nothing served by the API). */
const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
/** WCAG 2.0, 2.1 and 2.2 A and AA (color-contrast among them), and axe's best practices (landmarks, headings). */
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice'];

/**
 * axe-core's verdict on the page as it is now, in the real browser: fails listing each
 * violation (rule, element, what is wrong), and each check axe could not decide ("needs
 * review") except colour contrast over what it cannot measure (SVG shapes, text scrolled
 * under a box's edge: the same colours it measured elsewhere on the page). The page's CSP
 * refuses inline scripts, so the source goes in by `evaluate` (the DevTools protocol).
 */
async function expectAccessible(page: Page, what: string) {
  if (!(await page.evaluate(() => 'axe' in window))) await page.evaluate(AXE_SOURCE);
  const problems = await page.evaluate(async (tags) => {
    const { axe } = window as unknown as { axe: typeof Axe };
    const results = await axe.run(document, { runOnly: { type: 'tag', values: tags }, resultTypes: ['violations', 'incomplete'] });
    const say = (kind: string) => (v: Axe.Result) =>
      v.nodes.map((n) => `${kind} ${v.id} (${v.impact ?? 'n/a'}) at ${n.target.join(' ')}: ${(n.failureSummary ?? [...n.any, ...n.all, ...n.none].map((c) => c.message).join('; ')).replace(/\s+/g, ' ')}`);
    return [...results.violations.flatMap(say('violation')), ...results.incomplete.filter((v) => v.id !== 'color-contrast').flatMap(say('needs review'))];
  }, AXE_TAGS);
  expect({ page: what, problems }).toEqual({ page: what, problems: [] });
}

/** Signs in by keyboard only: Tab to the token field, type it, Enter. */
async function signIn(who: { token: string; page: Page }) {
  const { page } = who;
  await page.goto(`${stack.api.url}/`);
  await page.getByRole('heading', { name: 'Sign in to cloudgate' }).waitFor();
  await page.keyboard.press('Tab');
  expect(await page.evaluate(() => document.activeElement?.id)).toBe('token');
  await page.keyboard.type(who.token);
  await page.keyboard.press('Enter');
}

describe('the web portal', () => {
  it('is served at / with a strict Content-Security-Policy, and its assets too', async () => {
    const res = await fetch(`${stack.api.url}/`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/html/);
    const csp = res.headers.get('content-security-policy') ?? '';
    expect(csp).toBe(PORTAL_CSP);
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("connect-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain('unsafe');
    const html = await res.text();
    expect(html).not.toMatch(/<script>|<script [^>]*>[^<]/); // no inline script
    const js = await fetch(`${stack.api.url}/assets/portal.js`);
    expect(js.status).toBe(200);
    expect(js.headers.get('content-type')).toMatch(/javascript/);
    expect((await fetch(`${stack.api.url}/assets/nope.js`)).status).toBe(404);
    // The API is unchanged around it: its routes still need a bearer.
    expect((await fetch(`${stack.api.url}/v1/clusters`)).status).toBe(401);
  });

  it('signs in with a pasted token by keyboard alone, keeping it only in the tab', async () => {
    const { page } = alice;
    await page.goto(`${stack.api.url}/`);
    await expectLabelled(page);
    await expectAccessible(page, 'sign-in');
    await shot(page, '01-sign-in');
    // A wrong token is refused on the page.
    await page.getByLabel('API token').fill('cg_not-a-token');
    await page.keyboard.press('Enter');
    await seeText(page.getByRole('alert'), /unknown API token/);
    await expectAccessible(page, 'sign-in, token refused');
    await page.getByLabel('API token').fill('');
    await signIn(alice);
    await page.getByText('Signed in as').waitFor();
    expect(await page.locator('header .who').textContent()).toContain('alice');
    await page.getByRole('heading', { name: 'Clusters' }).waitFor();
    // Nothing a script of another site could read: no cookie, nothing in localStorage.
    const stored = await page.evaluate(() => ({ cookie: document.cookie, local: localStorage.length, session: sessionStorage.getItem('cloudgate.token') }));
    expect(stored).toEqual({ cookie: '', local: 0, session: alice.token });
    await visible(page.getByText('No clusters'));
    await expectAccessible(page, 'clusters list, empty');
    // The skip link: the Tab stop before the brand, the first of the page (hidden until
    // focused); Enter takes the focus past the navigation, and Tab on into the page.
    await page.getByRole('link', { name: 'cloudgate' }).focus();
    await page.keyboard.press('Shift+Tab');
    await visible(page.getByRole('link', { name: 'Skip to content' }));
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe('Skip to content');
    await page.keyboard.press('Enter');
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('main');
    await page.keyboard.press('Tab');
    expect(await page.evaluate(() => document.activeElement?.getAttribute('aria-label') ?? (document.activeElement as HTMLSelectElement | null)?.labels?.[0]?.textContent)).toBe('Show');
    await shot(page, '02-clusters-empty');
  });

  it('creates a context with the form: the API’s errors show at their fields, secrets are write-only', async () => {
    const { page } = alice;
    await page.getByRole('link', { name: 'Contexts' }).click();
    await visible(page.getByText('No contexts yet.'));
    await expectAccessible(page, 'contexts list, empty');
    await page.getByRole('link', { name: 'New context' }).click();
    await page.getByRole('heading', { name: 'New context' }).waitFor();
    await page.getByLabel('Name', { exact: true }).fill('ALICE analysis');
    await page.getByLabel('Repositories').fill('alice.cern.ch\nalice');
    await page.getByLabel('Proxy').fill('http://squid.example.org:3128;DIRECT');
    await page.getByRole('button', { name: 'Add a user' }).click();
    await page.getByLabel('User 1 name').fill('alice');
    await page.getByLabel('User 1 password').fill('correct-horse-battery');
    await page.getByLabel('Services').fill('condor');
    await page.getByLabel('Environment').fill('EXPERIMENT=alice');
    await page.getByLabel('Secrets').fill(`POOL_PASSWORD=${SECRET}`);
    await page.getByLabel('Extra cloud-config').fill('runcmd: echo hi');
    await expectLabelled(page);
    await page.getByRole('button', { name: 'Create context' }).click();
    // Inline: the second repository line, and the cloud-config, each at its own field.
    const repoErrors = page.locator('.field.has-error', { has: page.getByLabel('Repositories') });
    await seeText(repoErrors.locator('.field-errors'), /line 2: must be a fully qualified/);
    const ccErrors = page.locator('.field.has-error', { has: page.getByLabel('Extra cloud-config') });
    await seeText(ccErrors.locator('.field-errors'), '"runcmd" must be a list');
    expect(await page.getByLabel('Repositories').getAttribute('aria-invalid')).toBe('true');
    await expectAccessible(page, 'context form, errors at their fields');
    await shot(page, '03-context-errors');

    await page.getByLabel('Repositories').fill('alice.cern.ch');
    await page.getByLabel('Extra cloud-config').fill('runcmd:\n  - echo hi');
    await page.getByRole('button', { name: 'Create context' }).click();
    await page.getByRole('heading', { name: /Context ALICE analysis/ }).waitFor();
    made.contextId = (await page.locator('h1 .id').textContent())!;
    expect(made.contextId).toMatch(/^ctx-[0-9a-f]{12}$/);
    const facts = await page.locator('dl.facts').textContent();
    expect(facts).toContain('alice (password set)');
    expect(facts).toContain('POOL_PASSWORD');
    expect(await page.content()).not.toContain(SECRET);

    // The rendered preview per agent, secrets masked.
    await page.getByLabel('As read by').selectOption('amiconfig');
    await seeText(page.locator('pre.preview'), '[amiconfig]');
    await page.getByLabel('As read by').selectOption('cloud-init');
    await seeText(page.locator('pre.preview'), 'POOL_PASSWORD');
    await seeText(page.locator('pre.preview'), '********');
    expect(await page.locator('pre.preview').textContent()).not.toContain(SECRET);
    await expectAccessible(page, 'context page with its preview');
    await shot(page, '04-context');
    // Its delete confirmation, opened and cancelled.
    await page.getByRole('button', { name: 'Delete…' }).click();
    const dialog = page.getByRole('dialog', { name: 'Delete context ALICE analysis?' });
    await visible(dialog);
    await expectAccessible(page, 'context delete confirmation');
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'hidden' });
  });

  it('pairs a laptop: the PIN and its expiry, and the PIN fetches the real user-data once', async () => {
    const { page } = alice;
    await page.getByRole('button', { name: 'Pair a laptop' }).click();
    const pin = (await page.locator('.pin').textContent())!;
    expect(pin).toMatch(/^[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}$/);
    await seeText(page.locator('.pin-box'), /Expires at .* \(4:[0-5]\d left\)/);
    await expectAccessible(page, 'pairing');
    await shot(page, '05-pairing');
    made.pin = pin;
    const fetched = await fetch(`${stack.api.url}/v1/pair/${pin}`);
    expect(fetched.status).toBe(200);
    expect(await fetched.text()).toContain(SECRET);
    expect((await fetch(`${stack.api.url}/v1/pair/${pin}`)).status).toBe(404);
  });

  it('edits the context into version 2, keeping the secrets and the user’s password, with the history listed', async () => {
    const { page } = alice;
    await page.getByRole('link', { name: 'Edit (new version)' }).click();
    await page.getByRole('heading', { name: /Edit context/ }).waitFor();
    expect(await page.getByLabel('Replace the secrets', { exact: false }).isChecked()).toBe(false);
    // The password is never shown, and kept unless replaced or removed: the field stays empty.
    expect(await page.getByLabel('User 1 password').inputValue()).toBe('');
    await seeText(page.locator('.field', { has: page.getByLabel('User 1 password') }).locator('.hint'), 'Empty: keep it');
    expect(await page.getByLabel('Remove the password of user 1', { exact: false }).isChecked()).toBe(false);
    await expectAccessible(page, 'context edit form');
    await page.getByLabel('Services').fill('condor\nhttpd');
    await page.getByRole('button', { name: 'Save new version' }).click();
    await page.getByRole('heading', { name: 'Version history' }).waitFor();
    await seeText(page.locator('dl.facts'), 'condor, httpd');
    const versions = page.locator('table', { has: page.getByRole('columnheader', { name: 'Version' }) }).locator('tbody tr');
    await seeCount(versions, 2);
    await expectAccessible(page, 'context page with its version history');
    // The stored secret value was kept: version 2 renders it.
    await page.getByRole('button', { name: 'Preview version 1' }).click();
    await hasValue(page.getByLabel('Version', { exact: true }), '1');
    const asAlice = { Authorization: `Bearer ${alice.token}` };
    const v2 = await stack.http('GET', `/v1/contexts/${made.contextId}`, undefined, asAlice);
    expect(v2.body).toMatchObject({ version: 2, context: { secretNames: ['POOL_PASSWORD'], services: ['condor', 'httpd'], users: [{ name: 'alice', passwordSet: true }] } });
    // Version 2 has version 1's very hash (what a VM gets, through a PIN each): alice logs in as before.
    const hashOf = async (version: number) => {
      const pairing = await stack.http('POST', `/v1/contexts/${made.contextId}/pairings`, { version }, asAlice);
      const userData = await (await fetch(`${stack.api.url}${pairing.body.links.userData}`)).text();
      return [...new Set(userData.match(/\$6\$[./0-9A-Za-z]+\$[./0-9A-Za-z]{86}/g))];
    };
    const [v1Hash, v2Hash] = [await hashOf(1), await hashOf(2)];
    expect(v1Hash).toHaveLength(1);
    expect(v2Hash).toEqual(v1Hash);
    expect(verify('correct-horse-battery', v2Hash[0])).toBe(true);
  });

  it('defines a three-service cluster with the form: graph drawn, YAML view of the same, fit checked against the clouds', async () => {
    const { page } = alice;
    await page.getByRole('link', { name: 'Definitions' }).click();
    await visible(page.getByText('No definitions yet.'));
    await expectAccessible(page, 'definitions list, empty');
    await page.getByRole('link', { name: 'New definition' }).click();
    await page.getByRole('heading', { name: 'New definition' }).waitFor();
    await page.getByLabel('Name', { exact: true }).fill('portal-demo');
    const svc = async (n: number, name: string, min: string, deps: string[], max?: string) => {
      if (n > 1) await page.getByRole('button', { name: 'Add a service' }).click();
      await page.getByLabel(`Service ${n} name`).fill(name);
      await page.getByLabel(`Service ${n} image`).fill('cernvm4-micro');
      await page.getByLabel(`Service ${n} minimum instances`).fill(min);
      if (max) await page.getByLabel(`Service ${n} maximum instances`).fill(max);
      for (const d of deps) await page.getByRole('group', { name: `Service ${n} depends on` }).getByLabel(d).check();
    };
    await svc(1, 'proxy', '1', []);
    await svc(2, 'head', '1', ['proxy']);
    await svc(3, 'workers', '2', ['head'], '10');
    await page.getByLabel('Service 2 context').selectOption(made.contextId!);
    await expectLabelled(page);
    // The graph: three services, two arrows, in three columns.
    await seeCount(page.locator('figure.graph g.node'), 3);
    await seeCount(page.locator('figure.graph line.edge'), 2);
    expect(await page.locator('figure.graph svg title').textContent()).toContain('head depends on proxy; workers depends on head');
    // Fit: everything fits the sim cloud; a service asking too much does not, before anything is sent.
    await visible(page.getByText('Every service fits its clouds.'));
    await page.getByLabel('Service 3 CPUs').fill('512');
    await seeText(page.locator('#fit-heading + p'), '1 of 3 placements do not fit');
    await seeText(page.locator('tr.fit-bad'), 'no offering fits 512 cpus');
    await expectAccessible(page, 'definition form, a service that does not fit');
    await page.getByLabel('Service 3 CPUs').fill('1');
    await visible(page.getByText('Every service fits its clouds.'));
    await expectAccessible(page, 'definition form with its graph');
    await shot(page, '06-definition-form');

    // The YAML view holds the same definition; an edit there shows in the form.
    await page.getByRole('button', { name: 'YAML' }).click();
    const yaml = page.getByLabel('Definition (YAML)');
    const text = await yaml.inputValue();
    expect(text).toContain('name: portal-demo');
    expect(text).toMatch(/- name: workers[\s\S]*dependsOn:\s*\n\s*- head/);
    await yaml.fill(text.replace('description', 'description').replace('name: portal-demo', 'name: portal-demo\ndescription: made in the portal test'));
    await expectAccessible(page, 'definition YAML view');
    await shot(page, '07-definition-yaml');
    await page.getByRole('button', { name: 'Form' }).click();
    await hasValue(page.getByLabel('Description'), 'made in the portal test');

    await page.getByRole('button', { name: 'Save definition' }).click();
    await page.getByRole('heading', { name: /Definition portal-demo/ }).waitFor();
    made.definitionId = (await page.locator('h1 .id').textContent())!;
    await visible(page.getByText('Every service fits its clouds.'));
    await expectAccessible(page, 'definition page');
  });

  it('deploys it and watches it reach READY, with bars, instances, events and quota updating live', async () => {
    const { page } = alice;
    await page.getByLabel('Cluster name').fill('demo');
    await page.getByRole('button', { name: 'Deploy', exact: true }).click();
    await page.getByRole('heading', { name: /Cluster demo/ }).waitFor();
    made.clusterId = (await page.locator('h1 .id').textContent())!;
    expect(made.clusterId).toMatch(/^demo-[0-9a-z]{6}$/);
    // No reload: the page follows the cluster by itself.
    await hasText(page.locator('.state-line .badge'), 'READY', 90_000);
    for (const [name, ready] of [['proxy', 1], ['head', 1], ['workers', 2]] as const) {
      const row = page.locator(`tr[data-service="${name}"]`);
      await hasText(row.locator('.ready-count'), `${ready} / ${ready} ready`);
      await hasAttribute(row.locator('progress'), 'value', String(ready));
      await hasText(row.locator('.badge'), 'READY');
    }
    await seeCount(page.locator('table.instances tbody tr'), 4);
    await seeText(page.locator('table.instances tbody tr').first(), 'sim');
    await seeText(page.locator('ol.events'), /ready/i);
    await seeText(page.locator('table.quota'), 'Instances');
    await hasAttribute(page.getByRole('link', { name: /Open in the Temporal UI/ }), 'href', new RegExp(`/workflows/cluster%2F${made.clusterId}$`));
    await expectAccessible(page, 'live cluster page, READY');
    await shot(page, '08-cluster-ready');
    if (process.env.CLOUDGATE_PORTAL_SCREENSHOT) {
      await page.screenshot({ path: path.join(ROOT, 'docs', 'portal.png') });
      expect(statSync(path.join(ROOT, 'docs', 'portal.png')).size).toBeLessThan(400_000);
    }
  });

  it('scales a service by keyboard and shows the new count, refusing an out-of-bounds one inline', async () => {
    const { page } = alice;
    const input = page.getByLabel('Instances of workers');
    await input.focus();
    await page.keyboard.press('Control+A');
    await page.keyboard.type('11');
    await page.keyboard.press('Enter');
    await seeText(page.locator('tr[data-service="workers"] .field-errors'), "at most the service's max (10)");
    await expectAccessible(page, 'live cluster page, a scale refused');
    await input.focus();
    await page.keyboard.press('Control+A');
    await page.keyboard.type('3');
    await page.keyboard.press('Enter');
    await hasText(page.locator('.notice'), 'Scaling workers to 3');
    await hasText(page.locator('tr[data-service="workers"] .ready-count'), '3 / 3 ready', 60_000);
    await seeCount(page.locator('table.instances tbody tr'), 5);
    await shot(page, '09-cluster-scaled');
  });

  it('pauses, resumes and retries, saying why when the API refuses', async () => {
    const { page } = alice;
    await page.getByRole('button', { name: 'Retry failed' }).click();
    await seeText(page.getByRole('alert'), 'Retry');
    await seeText(page.getByRole('alert'), '409');
    await expectAccessible(page, 'live cluster page, an action refused');
    await page.getByRole('button', { name: 'Pause' }).click();
    await hasText(page.locator('.state-line .badge'), 'PAUSED', 60_000);
    await seeCount(page.locator('table.instances tbody tr'), 0);
    await expectAccessible(page, 'live cluster page, PAUSED');
    await shot(page, '10-cluster-paused');
    await page.getByRole('button', { name: 'Resume' }).click();
    await hasText(page.locator('.state-line .badge'), 'READY', 90_000);
  });

  it('another user sees none of it and is refused on its pages and on every action the portal takes', async () => {
    const { page } = bob;
    await signIn(bob);
    await page.getByText('Signed in as').waitFor();
    expect(await page.locator('header .who').textContent()).toContain('bob');
    await visible(page.getByText('No clusters'));
    await page.getByRole('link', { name: 'Contexts' }).click();
    await visible(page.getByText('No contexts yet.'));
    await page.getByRole('link', { name: 'Definitions' }).click();
    await visible(page.getByText('No definitions yet.'));
    // Her pages, by their addresses: as if they did not exist.
    for (const [route, heading] of [
      [`#/clusters/${made.clusterId}`, `Cluster ${made.clusterId}`],
      [`#/contexts/${made.contextId}`, `Context ${made.contextId}`],
      [`#/definitions/${made.definitionId}`, `Definition ${made.definitionId}`],
    ]) {
      await page.goto(`${stack.api.url}/${route}`);
      await page.getByRole('heading', { name: heading }).waitFor();
      await seeText(page.getByRole('alert'), 'Not Found');
    }
    await expectAccessible(page, 'a page of another user, refused');
    await shot(page, '11-other-user-refused');
    // Every call the portal makes for her, made with bob's token from his page: refused.
    const calls: [string, string, unknown?][] = [
      ['GET', `/v1/clusters/${made.clusterId}`],
      ['GET', `/v1/clusters/${made.clusterId}/instances`],
      ['GET', `/v1/clusters/${made.clusterId}/events`],
      ['POST', `/v1/clusters/${made.clusterId}/services/workers/scale`, { instances: 4 }],
      ['POST', `/v1/clusters/${made.clusterId}/pause`, {}],
      ['POST', `/v1/clusters/${made.clusterId}/resume`, {}],
      ['POST', `/v1/clusters/${made.clusterId}/retry`, {}],
      ['DELETE', `/v1/clusters/${made.clusterId}`],
      ['GET', `/v1/owners/alice/quota`],
      ['GET', `/v1/contexts/${made.contextId}`],
      ['PUT', `/v1/contexts/${made.contextId}`, { name: 'hijacked' }],
      ['GET', `/v1/contexts/${made.contextId}/versions`],
      ['GET', `/v1/contexts/${made.contextId}/preview`],
      ['POST', `/v1/contexts/${made.contextId}/pairings`, {}],
      ['DELETE', `/v1/contexts/${made.contextId}`],
      ['GET', `/v1/cluster-definitions/${made.definitionId}`],
      ['DELETE', `/v1/cluster-definitions/${made.definitionId}`],
    ];
    const statuses = await page.evaluate(
      async ({ calls, token }) =>
        Promise.all(
          calls.map(async ([method, url, body]) => {
            const res = await fetch(url, { method, headers: { authorization: `Bearer ${token}`, ...(body !== undefined && { 'content-type': 'application/json' }) }, body: body === undefined ? undefined : JSON.stringify(body) });
            return `${method} ${url} ${res.status}`;
          }),
        ),
      { calls, token: bob.token },
    );
    expect(statuses).toEqual(calls.map(([method, url]) => `${method} ${url} 404`));
    // Deploying from her definition is refused too, naming the field.
    const submit = await stack.http('POST', '/v1/clusters', { definitionId: made.definitionId }, { Authorization: `Bearer ${bob.token}` });
    expect(submit).toMatchObject({ status: 422, body: { errors: [{ field: 'definitionId' }] } });
    // And nothing of hers changed.
    expect((await stack.http('GET', `/v1/clusters/${made.clusterId}`)).body).toMatchObject({ state: 'READY', owner: 'alice' });
  });

  it('lists clusters with a state filter and deletes one by keyboard after a confirmation', async () => {
    const { page } = alice;
    await page.getByRole('link', { name: 'Clusters' }).click();
    const row = page.locator('tbody tr', { hasText: made.clusterId! });
    await seeText(row, 'READY');
    await page.getByLabel('Show').selectOption('PAUSED');
    await visible(page.getByText('No clusters in state PAUSED'));
    await page.getByLabel('Show').selectOption('READY');
    await visible(row);
    await expectAccessible(page, 'clusters list');
    await shot(page, '12-cluster-list');
    await row.getByRole('link', { name: 'demo' }).click();
    await page.getByRole('heading', { name: /Cluster demo/ }).waitFor();

    // Keyboard only: focus Delete…, Enter opens the dialog with Cancel focused; Tab, Enter confirms.
    await page.getByRole('button', { name: 'Delete…' }).focus();
    await page.keyboard.press('Enter');
    const dialog = page.getByRole('dialog', { name: 'Delete cluster demo?' });
    await visible(dialog);
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe('Cancel');
    await expectAccessible(page, 'cluster delete confirmation');
    await shot(page, '13-delete-confirm');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    expect((await stack.http('GET', `/v1/clusters/${made.clusterId}`)).body.state).toBe('READY');
    await page.getByRole('button', { name: 'Delete…' }).focus();
    await page.keyboard.press('Enter');
    await page.keyboard.press('Tab');
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe('Delete cluster');
    await page.keyboard.press('Enter');
    await hasText(page.locator('.state-line .badge'), /TERMINATING|TERMINATED/);
    await hasText(page.locator('.state-line .badge'), 'TERMINATED', 60_000);
    await until('disabled', () => page.getByRole('button', { name: 'Delete…' }).isDisabled(), (d) => d === true);
    await expectAccessible(page, 'live cluster page, TERMINATED');
    await shot(page, '14-cluster-terminated');
    await waitForState(stack, made.clusterId!, 'TERMINATED');
    expect(await stack.worker!.sim!.count({ cluster: made.clusterId! })).toBe(0);
    // Gone from the default list, there under TERMINATED.
    await page.getByRole('link', { name: 'Clusters' }).click();
    await page.getByLabel('Show').selectOption('TERMINATED');
    await seeText(page.locator('tbody tr', { hasText: made.clusterId! }), 'TERMINATED');
  });

  it('signs out when the token is revoked, and on request', async () => {
    const { page } = bob;
    const mine = await stack.http('GET', '/v1/tokens?owner=bob');
    expect((await stack.http('DELETE', `/v1/tokens/${mine.body.items[0].id}`)).status).toBe(204);
    await page.getByRole('link', { name: 'Clusters' }).click();
    await page.getByRole('heading', { name: 'Sign in to cloudgate' }).waitFor({ timeout: 15_000 });
    await seeText(page.getByRole('status'), 'revoked');
    await expectAccessible(page, 'sign-in after the token was revoked');
    expect(await page.evaluate(() => sessionStorage.getItem('cloudgate.token'))).toBeNull();
    await alice.page.getByRole('button', { name: 'Sign out' }).click();
    await alice.page.getByRole('heading', { name: 'Sign in to cloudgate' }).waitFor();
    expect(await alice.page.evaluate(() => sessionStorage.getItem('cloudgate.token'))).toBeNull();
  });
});
