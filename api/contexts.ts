/**
 * Context portal routes: store context definitions as immutable versions, preview the
 * user-data they render to, soft-delete them, and pair a laptop CernVM with one by PIN.
 * Plain passwords are hashed and secret values handed to the store (which encrypts them)
 * before anything is kept; no response carries either, the preview masks secrets and the
 * phone-home token, and only a pairing PIN's single use returns the real user-data.
 */
import { randomInt } from 'node:crypto';
import express, { type Request, type Response, type Router } from 'express';
import { canSee, listOwner, principalOf } from './auth.js';
import { contextInputSchema, ContextSchema, contextSecrets, hashContextPasswords, keepingPasswords, type Context, type ContextInput } from '../model/context.js';
import { agentView, type Agent } from '../model/agent-views.js';
import { MASK, multipartUserData, phoneHomeUrl, renderContextParts, renderContextUserData, type PhoneHome } from '../model/user-data.js';
import { LivePairingLimitError, type ContextRecord, type ContextVersionInput, type PairingRecord, type Store } from '../store/index.js';
import { invalid, notFound, parseOr422, Problem, unavailable, zodFieldErrors } from './problem.js';
import { bodyOf, param } from './request.js';
import { NoQuerySchema, pageOf, queryOf } from './paging.js';
import { ContextPreviewQuerySchema, ContextVersionQuerySchema, ListQuerySchema, PageQuerySchema, PairingRequestSchema, type PublicContext } from './schemas.js';

/** What the context routes use; `json` is the app's body parser (limit and error mapping). */
export interface ContextRouteDeps {
  store: Store;
  /** `cvmfsAllowedHosts`: hosts a context's stratum-1 URLs may name although private or loopback. */
  config: { publicUrl: string; cvmfsAllowedHosts?: readonly string[] };
  json: express.RequestHandler;
  /** The clock of pairing expiry and the PIN miss limit (tests move it); default the system clock. */
  now?: () => Date;
}

/** How long a pairing PIN is valid. */
export const PAIRING_TTL_MS = 5 * 60_000;
/** Failed PIN lookups a client may make per {@link PIN_MISS_WINDOW_MS} before it gets 429s. */
export const PIN_MISS_LIMIT = 10;
export const PIN_MISS_WINDOW_MS = 60_000;
/** Pairings that expired this long ago are purged (until then a used or expired PIN still cannot be issued again). */
const PAIRING_RETENTION_MS = 24 * 60 * 60_000;
/** Tries at a free PIN before giving up (a collision needs one among 2^30 lookup halves). */
const PIN_ATTEMPTS = 5;

/**
 * Pairing PINs (issue 11). A PIN is 12 symbols of Crockford's base32 (digits and letters
 * without I, L, O and U; typed in any case, with or without the dashes, O read as 0 and
 * I/L as 1), shown as `XXXX-XXXX-XXXX`: 60 bits from the CSPRNG, 2^60 ≈ 1.15e18 PINs.
 *
 * - **Guessing.** The per-IP miss limit below is bypassed with many addresses, so the length
 *   alone must hold: an attacker making 1,000 guesses/s for a PIN's whole 5-minute life makes
 *   3e5 guesses and hits a given live PIN with probability ≤ 3e5 / 2^60 ≈ 2.6e-13 (any of
 *   10,000 live PINs: ≤ 2.6e-9).
 * - **Failure budget per PIN.** The first 6 symbols (30 bits) are the PIN's lookup half: no
 *   two live PINs share it. A wrong PIN whose lookup half is a live PIN's is charged to that
 *   PIN, and its {@link PIN_FAILURE_BUDGET}th wrong guess uses it up. So even someone who saw
 *   the first half has {@link PIN_FAILURE_BUDGET} tries at the other 30 bits (≤ 5 / 2^30 ≈
 *   4.7e-9), and a random guess names some live lookup half only with probability
 *   (live PINs) / 2^30, so burning another user's PIN by spraying takes ~10^8 guesses.
 *   No global miss budget: it would let one client lock every user out of pairing, and the
 *   two bounds above do not depend on how many addresses the guesser has.
 * - **One answer.** Unknown, malformed, used, expired and burnt PINs, and PINs of a context
 *   deleted since, all get the same 404 body ({@link NO_PAIRING}): a guesser learns nothing.
 * - **Creation limit.** At most {@link MAX_LIVE_PINS_PER_OWNER} live PINs per owner (429 with
 *   Retry-After beyond), so nobody fills the lookup space or the table.
 * - **Logs.** The request log writes `/v1/pair/:pin` for this route (`loggedPath`, api/problem.ts).
 */
export const PIN_LENGTH = 12;
const PIN_LOOKUP_LENGTH = 6;
const PIN_ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
/** Wrong guesses at one PIN's secret half (its lookup half right) before it is used up. */
export const PIN_FAILURE_BUDGET = 5;
/** Live (unused, unexpired) PINs one owner may hold at once. */
export const MAX_LIVE_PINS_PER_OWNER = 10;
/** The one answer of every failed PIN lookup. */
const NO_PAIRING = 'no pairing with this PIN: a PIN works once, within 5 minutes of being made';

/** 12 symbols, each uniform over the 32 of the alphabet (randomInt is the CSPRNG, unbiased). */
const newPin = (): string => Array.from({ length: PIN_LENGTH }, () => PIN_ALPHABET[randomInt(PIN_ALPHABET.length)]).join('');
/** `XXXX-XXXX-XXXX`: how a PIN is shown and linked. */
export const formatPin = (pin: string): string => pin.match(/.{1,4}/g)?.join('-') ?? pin;
/** The PIN a typed text names (case, dashes, spaces and look-alikes forgiven), or undefined if it cannot be one. */
export function parsePin(text: string): string | undefined {
  if (text.length > 40) return undefined;
  const pin = text.toUpperCase().replace(/[-\s]/g, '').replace(/O/g, '0').replace(/[IL]/g, '1');
  return pin.length === PIN_LENGTH && [...pin].every((c) => PIN_ALPHABET.includes(c)) ? pin : undefined;
}
const lookupOf = (pin: string): string => pin.slice(0, PIN_LOOKUP_LENGTH);

/*
 * Failed PIN lookups are counted per client over a sliding window in the store
 * ({@link Store.chargePinLookup}), so every API replica counts the same misses: after
 * {@link PIN_MISS_LIMIT} misses a client waits until its oldest miss leaves the window. Per
 * IP: it slows one guesser down; the PIN's length and failure budget (above) are what hold
 * against many addresses.
 */
/** 410 for a soft-deleted context; `deletedAt` is also an extension member for programs. */
const gone = (rec: ContextRecord): Problem =>
  new Problem(410, 'Gone', `context "${rec.id}" was deleted at ${rec.deletedAt ?? 'an unknown time'}`, {
    slug: 'context-deleted',
    extensions: { deletedAt: rec.deletedAt },
  });

/** The public shape of a pairing: what the laptop user types, and where the VM fetches its user-data. */
const pairingView = (p: PairingRecord) => ({
  pin: formatPin(p.pin),
  contextId: p.contextId,
  version: p.version,
  expiresAt: p.expiresAt,
  links: { userData: `/v1/pair/${formatPin(p.pin)}` },
});

/** Ids the store hands out; anything else is a 404 without a query. */
const CONTEXT_ID_RE = /^ctx-[0-9a-f]{12}$/;

/** The phone-home part a preview shows: no real instance, no real token. */
export const previewPhoneHome = (publicUrl: string): PhoneHome => ({
  url: phoneHomeUrl(publicUrl, 'preview'),
  instanceId: 'preview',
  token: 'preview',
  repositories: [],
});

/**
 * The masked preview: the whole user-data, or what one agent reads of it (`agent`), as the
 * agent itself reads it (see model/agent-views.ts). Throws if the context cannot be rendered.
 */
function renderPreview(context: Context, publicUrl: string, agent?: Agent): string {
  // Password hashes are masked like secret values: the preview is read by people, not guests.
  const masked = { ...context, users: context.users.map((u) => (u.passwordHash === undefined ? u : { ...u, passwordHash: MASK })) };
  const parts = renderContextParts(masked, { phoneHome: previewPhoneHome(publicUrl), maskSecrets: true });
  const userData = multipartUserData(parts);
  return agent ? agentView(agent, userData, parts) : userData;
}

/**
 * The context as answers show it: each user's password hash replaced by `passwordSet: true`
 * (a sha512-crypt hash can be cracked offline, and a reader of a context has no use for it).
 */
export const publicContext = (c: Context): PublicContext => ({
  ...c,
  users: c.users.map(({ passwordHash, ...user }) => (passwordHash === undefined ? user : { ...user, passwordSet: true as const })),
});

/** The public shape of a record (the same fields; spelled out so nothing else ever leaks). */
const view = (r: ContextRecord) => ({
  id: r.id,
  version: r.version,
  name: r.name,
  ...(r.owner !== undefined && { owner: r.owner }),
  context: publicContext(r.context),
  createdAt: r.createdAt,
});

/** `/v1/contexts` and its versions and preview. */
export function contextRoutes(deps: ContextRouteDeps): Router {
  const { store, config, json } = deps;
  const now = deps.now ?? (() => new Date());
  const router = express.Router();
  const ContextInputSchema = contextInputSchema({ cvmfsAllowedHosts: config.cvmfsAllowedHosts });

  /**
   * Validated input → stored form + secret values. `previous` supplies what is write-only and
   * so cannot come back from a client that edits what GET returned: the secret values when
   * the body leaves `secrets` out (`"secrets": {}` removes them all), and the password hash of
   * each user sent with `passwordSet: true` and no `password` (no `password` and no
   * `passwordSet`: the user has no password).
   */
  const toVersion = async (req: Request, previous?: ContextRecord): Promise<ContextVersionInput> => {
    const input: ContextInput = parseOr422(keepingPasswords(ContextInputSchema, previous?.context), bodyOf(req));
    const secrets = input.secrets === undefined && previous ? ((await store.getContextSecrets(previous.id, previous.version)) ?? {}) : contextSecrets(input);
    const context = hashContextPasswords({ ...input, secrets }, previous?.context);
    // Carried-over secret names must still not clash with the new environment.
    const checked = ContextSchema.safeParse(context);
    if (!checked.success) throw invalid(zodFieldErrors(checked.error));
    try {
      renderPreview(checked.data, config.publicUrl);
    } catch (err) {
      throw invalid([{ field: '', pointer: '', message: `cannot be rendered to user-data: ${(err as Error).message}` }]);
    }
    return { name: checked.data.name, context: checked.data, secrets };
  };

  /**
   * The latest version of a live context the caller may see; 404 if unknown or someone
   * else's (the same answer: nothing of theirs shows), 410 if deleted (whatever version is asked for).
   */
  const liveContext = async (id: string, res: Response): Promise<ContextRecord> => {
    const latest = CONTEXT_ID_RE.test(id) ? await store.getContext(id) : undefined;
    if (!latest || !canSee(principalOf(res), latest.owner)) throw notFound(`no context "${id}"`);
    if (latest.deletedAt) throw gone(latest);
    return latest;
  };

  /** Version `version` (default the latest) of the live context `id`. */
  const liveVersion = async (id: string, res: Response, version?: number): Promise<ContextRecord> => {
    const latest = await liveContext(id, res);
    if (version === undefined || version === latest.version) return latest;
    const rec = await store.getContext(id, version);
    if (!rec) throw notFound(`context "${id}" has no version ${version}`);
    return rec;
  };

  /** The record `:id` and `version` (from `?version=n`) name, else 404 (410 if deleted). */
  const recordOf = (req: Request, res: Response, version: number | undefined): Promise<ContextRecord> => liveVersion(param(req, 'id'), res, version);

  router.post('/v1/contexts', json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const rec = await store.createContext(await toVersion(req), principalOf(res).owner);
    res.status(201).location(`/v1/contexts/${rec.id}`).json(view(rec));
  });

  router.get('/v1/contexts', async (req, res) => {
    const { owner, cursor, limit } = queryOf(req, ListQuerySchema);
    const scope = listOwner(principalOf(res), owner);
    const mine = scope.none ? [] : (await store.listContexts()).filter((c) => scope.owner === undefined || c.owner === scope.owner);
    const page = pageOf(mine, { cursor, limit });
    res.json({ ...page, items: page.items.map(view) });
  });

  router.get('/v1/contexts/:id', async (req, res) => {
    res.json(view(await recordOf(req, res, queryOf(req, ContextVersionQuerySchema).version)));
  });

  router.put('/v1/contexts/:id', json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const id = param(req, 'id');
    const latest = await liveContext(id, res);
    const rec = await store.updateContext(id, await toVersion(req, latest));
    if (!rec) {
      await liveContext(id, res); // deleted between the check and the write: 410 as if it had been before
      throw notFound(`no context "${id}"`);
    }
    res.setHeader('Content-Location', `/v1/contexts/${rec.id}?version=${rec.version}`);
    res.json(view(rec));
  });

  router.get('/v1/contexts/:id/versions', async (req, res) => {
    const { cursor, limit } = queryOf(req, PageQuerySchema);
    const id = param(req, 'id');
    const versions = CONTEXT_ID_RE.test(id) ? await store.listContextVersions(id) : [];
    if (!versions.length || !canSee(principalOf(res), versions[0].owner)) throw notFound(`no context "${id}"`);
    if (versions[0].deletedAt) throw gone(versions[0]);
    // Versions share the context's id: their number is the tie-break of the page order.
    const page = pageOf(versions.map((v) => ({ v, createdAt: v.createdAt, id: String(v.version).padStart(9, '0') })), { cursor, limit });
    res.json({ ...page, items: page.items.map((x) => view(x.v)) });
  });

  router.get('/v1/contexts/:id/preview', async (req, res) => {
    const { agent, version } = queryOf(req, ContextPreviewQuerySchema);
    const rec = await recordOf(req, res, version);
    res.type('text/plain; charset=utf-8').send(renderPreview(rec.context, config.publicUrl, agent));
  });

  // Soft delete: versions and secrets stay for clusters pinned to them. A second DELETE is a
  // 410 like every other route on a deleted context (a retrying client can take 410 as done).
  router.delete('/v1/contexts/:id', async (req, res) => {
    queryOf(req, NoQuerySchema);
    const id = param(req, 'id');
    await liveContext(id, res);
    if (!(await store.deleteContext(id, now()))) await liveContext(id, res); // lost a race with another DELETE: 410
    res.status(204).end();
  });

  router.post('/v1/contexts/:id/pairings', json, async (req, res) => {
    queryOf(req, NoQuerySchema);
    const id = param(req, 'id');
    // The body is optional: no body at all means the latest version.
    const empty = req.body === undefined && req.headers['transfer-encoding'] === undefined && Number(req.headers['content-length'] ?? 0) === 0;
    const { version } = parseOr422(PairingRequestSchema, empty ? {} : bodyOf(req));
    const rec = await liveVersion(id, res, version);
    // A PIN hands out the secret values: only the context's owner pairs (an admin sees the context, not its secrets).
    const owner = principalOf(res).owner;
    if (rec.owner !== owner) throw new Problem(403, 'Forbidden', `only the owner of context "${id}" may pair a machine with it`, { slug: 'not-owner' });
    const createdAt = now();
    const expiresAt = new Date(createdAt.getTime() + PAIRING_TTL_MS);
    await store.purgePairings(new Date(createdAt.getTime() - PAIRING_RETENTION_MS));
    for (let attempt = 0; attempt < PIN_ATTEMPTS; attempt++) {
      const pin = newPin();
      let pairing: PairingRecord | undefined;
      try {
        // The owner's live PINs are counted in the insert's transaction: requests at several replicas cannot overshoot.
        pairing = await store.createPairing({ pin, lookup: lookupOf(pin), contextId: rec.id, version: rec.version, createdAt, expiresAt, ownerLimit: { owner, limit: MAX_LIVE_PINS_PER_OWNER } });
      } catch (err) {
        if (!(err instanceof LivePairingLimitError)) throw err;
        const wait = Math.max(1, Math.ceil((Date.parse(err.expiries[0]) - createdAt.getTime()) / 1000));
        throw new Problem(429, 'Too Many Requests', `you hold ${err.expiries.length} live pairing PINs, the most one owner may; the next expires in ${wait} s`, {
          slug: 'too-many-pins',
          headers: { 'Retry-After': String(wait) },
        });
      }
      if (pairing) {
        res.status(201).location(`/v1/pair/${formatPin(pairing.pin)}`).json(pairingView(pairing));
        return;
      }
    }
    throw unavailable(`no free pairing PIN after ${PIN_ATTEMPTS} tries; try again`);
  });

  /**
   * The laptop CernVM's user-data, once per PIN: the real secret values and no phone-home part
   * (no workflow waits for a laptop). Every failure is the same 404 (see the PIN notes above);
   * the request log shows this path as `/v1/pair/:pin`. Do not log more of this request.
   */
  router.get('/v1/pair/:pin', async (req, res) => {
    const at = now();
    // Behind a reverse proxy every client has the proxy's address unless the app trusts it.
    const client = req.ip ?? req.socket.remoteAddress ?? 'unknown';
    // Charged as a miss up front, given back once the PIN turned out right: concurrent lookups cannot overshoot the limit.
    const charged = await store.chargePinLookup(client, at, { limit: PIN_MISS_LIMIT, windowMs: PIN_MISS_WINDOW_MS });
    if ('retryAfterSeconds' in charged) {
      const wait = charged.retryAfterSeconds;
      throw new Problem(429, 'Too Many Requests', `too many failed PIN lookups from this client; retry in ${wait} s`, {
        slug: 'too-many-pin-lookups',
        headers: { 'Retry-After': String(wait) },
      });
    }
    const miss = (): Problem => notFound(NO_PAIRING);
    const pin = parsePin(param(req, 'pin'));
    if (pin === undefined) throw miss();
    const taken = await store.takePairing(pin, at);
    if (taken.status !== 'ok') {
      // A wrong PIN whose lookup half is a live PIN's counts against that PIN's budget.
      await store.chargePairingMiss(lookupOf(pin), at, PIN_FAILURE_BUDGET);
      throw miss();
    }
    const rec = await store.getContext(taken.contextId, taken.version);
    if (!rec || rec.deletedAt) throw miss();
    const secrets = (await store.getContextSecrets(rec.id, rec.version)) ?? {};
    await store.refundPinLookup(charged.charge);
    res.setHeader('Cache-Control', 'no-store');
    res.type('text/plain; charset=utf-8').send(renderContextUserData(rec.context, { secrets }));
  });

  return router;
}
