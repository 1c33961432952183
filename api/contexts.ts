/**
 * Context portal routes: store context definitions as immutable versions, preview the
 * user-data they render to, soft-delete them, and pair a laptop CernVM with one by PIN.
 * Plain passwords are hashed and secret values handed to the store (which encrypts them)
 * before anything is kept; no response carries either, the preview masks secrets and the
 * phone-home token, and only a pairing PIN's single use returns the real user-data.
 */
import { randomInt } from 'node:crypto';
import express, { type Request, type Router } from 'express';
import { contextInputSchema, ContextSchema, contextSecrets, hashContextPasswords, type Context, type ContextInput } from '../model/context.js';
import { agentView, type Agent } from '../model/agent-views.js';
import { multipartUserData, phoneHomeUrl, renderContextParts, renderContextUserData, type PhoneHome } from '../model/user-data.js';
import type { ContextRecord, ContextVersionInput, PairingRecord, Store } from '../store/index.js';
import { invalid, notFound, parseOr422, Problem, unavailable, zodFieldErrors } from './problem.js';
import { bodyOf, param } from './request.js';
import { ContextPreviewQuerySchema, ContextVersionQuerySchema, PairingRequestSchema } from './schemas.js';

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
/** Pairings that expired this long ago are purged: their PINs then read as unknown (404) instead of expired (410). */
const PAIRING_RETENTION_MS = 24 * 60 * 60_000;
/** Tries at a free PIN before giving up (collisions need many live PINs among a million). */
const PIN_ATTEMPTS = 5;
const PIN_RE = /^[0-9]{6}$/;
/** Bounds the miss counter's memory: beyond this many clients, stale entries are swept. */
const MAX_TRACKED_CLIENTS = 10_000;

/** Six decimal digits, uniformly from the CSPRNG. */
const newPin = (): string => String(randomInt(0, 1_000_000)).padStart(6, '0');

/**
 * Counts failed PIN lookups per client over a sliding window, in memory: 6 digits are
 * guessable, so after {@link PIN_MISS_LIMIT} misses a client waits until its oldest miss
 * leaves the window. Per process and per IP: it slows one guesser down, not a botnet.
 */
class PinMissCounter {
  private readonly misses = new Map<string, number[]>();

  /** Seconds `client` must wait before its next lookup, or 0 if it may look up now. */
  retryAfter(client: string, at: number): number {
    const recent = this.recent(client, at);
    if (recent.length < PIN_MISS_LIMIT) return 0;
    return Math.max(1, Math.ceil((recent[0] + PIN_MISS_WINDOW_MS - at) / 1000));
  }

  record(client: string, at: number): void {
    const recent = this.recent(client, at);
    recent.push(at);
    this.misses.set(client, recent);
    if (this.misses.size > MAX_TRACKED_CLIENTS) {
      for (const key of [...this.misses.keys()]) if (this.recent(key, at).length === 0) this.misses.delete(key);
    }
  }

  /** The client's misses still inside the window, oldest first. */
  private recent(client: string, at: number): number[] {
    const recent = (this.misses.get(client) ?? []).filter((t) => t > at - PIN_MISS_WINDOW_MS);
    if (recent.length) this.misses.set(client, recent);
    else this.misses.delete(client);
    return recent;
  }
}

/** 410 for a soft-deleted context; `deletedAt` is also an extension member for programs. */
const gone = (rec: ContextRecord): Problem =>
  new Problem(410, 'Gone', `context "${rec.id}" was deleted at ${rec.deletedAt ?? 'an unknown time'}`, {
    slug: 'context-deleted',
    extensions: { deletedAt: rec.deletedAt },
  });

/** The public shape of a pairing: what the laptop user types, and where the VM fetches its user-data. */
const pairingView = (p: PairingRecord) => ({
  pin: p.pin,
  contextId: p.contextId,
  version: p.version,
  expiresAt: p.expiresAt,
  links: { userData: `/v1/pair/${p.pin}` },
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
  const parts = renderContextParts(context, { phoneHome: previewPhoneHome(publicUrl), maskSecrets: true });
  const userData = multipartUserData(parts);
  return agent ? agentView(agent, userData, parts) : userData;
}

/** The public shape of a record (the same fields; spelled out so nothing else ever leaks). */
const view = (r: ContextRecord) => ({ id: r.id, version: r.version, name: r.name, context: r.context, createdAt: r.createdAt });

/** `/v1/contexts` and its versions and preview. */
export function contextRoutes(deps: ContextRouteDeps): Router {
  const { store, config, json } = deps;
  const now = deps.now ?? (() => new Date());
  const pinMisses = new PinMissCounter();
  const router = express.Router();
  const ContextInputSchema = contextInputSchema({ cvmfsAllowedHosts: config.cvmfsAllowedHosts });

  /**
   * Validated input → stored form + secret values. `previous` supplies the secret values
   * when the body leaves `secrets` out (they are write-only, so a client that edits what
   * GET returned cannot resend them); `"secrets": {}` removes them all.
   */
  const toVersion = (req: Request, previous?: ContextRecord): ContextVersionInput => {
    const input: ContextInput = parseOr422(ContextInputSchema, bodyOf(req));
    const secrets = input.secrets === undefined && previous ? (store.getContextSecrets(previous.id, previous.version) ?? {}) : contextSecrets(input);
    const context = hashContextPasswords({ ...input, secrets });
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

  /** The latest version of a live context; 404 if unknown, 410 if deleted (whatever version is asked for). */
  const liveContext = (id: string): ContextRecord => {
    const latest = CONTEXT_ID_RE.test(id) ? store.getContext(id) : undefined;
    if (!latest) throw notFound(`no context "${id}"`);
    if (latest.deletedAt) throw gone(latest);
    return latest;
  };

  /** Version `version` (default the latest) of the live context `id`. */
  const liveVersion = (id: string, version?: number): ContextRecord => {
    const latest = liveContext(id);
    if (version === undefined || version === latest.version) return latest;
    const rec = store.getContext(id, version);
    if (!rec) throw notFound(`context "${id}" has no version ${version}`);
    return rec;
  };

  /** The record `:id` (and `?version=n`) names, else 404 (410 if deleted). */
  const recordOf = (req: Request): ContextRecord => {
    const id = param(req, 'id');
    const { version } = parseOr422(ContextVersionQuerySchema, req.query);
    return liveVersion(id, version);
  };

  router.post('/v1/contexts', json, (req, res) => {
    const rec = store.createContext(toVersion(req));
    res.status(201).location(`/v1/contexts/${rec.id}`).json(view(rec));
  });

  router.get('/v1/contexts', (_req, res) => {
    res.json({ items: store.listContexts().map(view) });
  });

  router.get('/v1/contexts/:id', (req, res) => {
    res.json(view(recordOf(req)));
  });

  router.put('/v1/contexts/:id', json, (req, res) => {
    const id = param(req, 'id');
    const latest = liveContext(id);
    const rec = store.updateContext(id, toVersion(req, latest));
    if (!rec) {
      liveContext(id); // deleted between the check and the write: 410 as if it had been before
      throw notFound(`no context "${id}"`);
    }
    res.setHeader('Content-Location', `/v1/contexts/${rec.id}?version=${rec.version}`);
    res.json(view(rec));
  });

  router.get('/v1/contexts/:id/versions', (req, res) => {
    const id = param(req, 'id');
    const versions = CONTEXT_ID_RE.test(id) ? store.listContextVersions(id) : [];
    if (!versions.length) throw notFound(`no context "${id}"`);
    if (versions[0].deletedAt) throw gone(versions[0]);
    res.json({ items: versions.map(view) });
  });

  router.get('/v1/contexts/:id/preview', (req, res) => {
    const { agent } = parseOr422(ContextPreviewQuerySchema, req.query);
    const rec = recordOf(req);
    res.type('text/plain; charset=utf-8').send(renderPreview(rec.context, config.publicUrl, agent));
  });

  // Soft delete: versions and secrets stay for clusters pinned to them. A second DELETE is a
  // 410 like every other route on a deleted context (a retrying client can take 410 as done).
  router.delete('/v1/contexts/:id', (req, res) => {
    const id = param(req, 'id');
    liveContext(id);
    if (!store.deleteContext(id, now())) liveContext(id); // lost a race with another DELETE: 410
    res.status(204).end();
  });

  router.post('/v1/contexts/:id/pairings', json, (req, res) => {
    const id = param(req, 'id');
    // The body is optional: no body at all means the latest version.
    const empty = req.body === undefined && req.headers['transfer-encoding'] === undefined && Number(req.headers['content-length'] ?? 0) === 0;
    const { version } = parseOr422(PairingRequestSchema, empty ? {} : bodyOf(req));
    const rec = liveVersion(id, version);
    const createdAt = now();
    const expiresAt = new Date(createdAt.getTime() + PAIRING_TTL_MS);
    store.purgePairings(new Date(createdAt.getTime() - PAIRING_RETENTION_MS));
    for (let attempt = 0; attempt < PIN_ATTEMPTS; attempt++) {
      const pairing = store.createPairing({ pin: newPin(), contextId: rec.id, version: rec.version, createdAt, expiresAt });
      if (pairing) {
        res.status(201).location(`/v1/pair/${pairing.pin}`).json(pairingView(pairing));
        return;
      }
    }
    throw unavailable(`no free pairing PIN after ${PIN_ATTEMPTS} tries; try again`);
  });

  /**
   * The laptop CernVM's user-data, once per PIN: the real secret values and no phone-home part
   * (no workflow waits for a laptop). The request log records this path, PIN included; that is
   * acceptable because a PIN is single use and dies within minutes (logged PINs are used or
   * about to expire), but do not log more of this request.
   */
  router.get('/v1/pair/:pin', (req, res) => {
    const at = now();
    // Behind a reverse proxy every client has the proxy's address unless the app trusts it.
    const client = req.ip ?? req.socket.remoteAddress ?? 'unknown';
    const wait = pinMisses.retryAfter(client, at.getTime());
    if (wait > 0) {
      throw new Problem(429, 'Too Many Requests', `too many failed PIN lookups from this client; retry in ${wait} s`, {
        slug: 'too-many-pin-lookups',
        headers: { 'Retry-After': String(wait) },
      });
    }
    const miss = (p: Problem): Problem => {
      pinMisses.record(client, at.getTime());
      return p;
    };
    const pin = param(req, 'pin');
    if (!PIN_RE.test(pin)) throw miss(notFound(`no pairing "${pin.slice(0, 20)}": a pairing PIN is 6 digits`));
    const taken = store.takePairing(pin, at);
    switch (taken.status) {
      case 'unknown':
        throw miss(notFound(`no pairing with PIN ${pin}`));
      case 'used':
        throw miss(new Problem(410, 'Gone', `pairing PIN ${pin} was already used at ${taken.usedAt}`, { slug: 'pairing-used' }));
      case 'expired':
        throw miss(new Problem(410, 'Gone', `pairing PIN ${pin} expired at ${taken.expiresAt}`, { slug: 'pairing-expired' }));
    }
    const rec = store.getContext(taken.contextId, taken.version);
    if (!rec) throw miss(notFound(`context "${taken.contextId}" has no version ${taken.version}`));
    if (rec.deletedAt) throw miss(gone(rec));
    const secrets = store.getContextSecrets(rec.id, rec.version) ?? {};
    res.setHeader('Cache-Control', 'no-store');
    res.type('text/plain; charset=utf-8').send(renderContextUserData(rec.context, { secrets }));
  });

  return router;
}
