/**
 * Context portal routes: store context definitions as immutable versions and preview the
 * user-data they render to. Plain passwords are hashed and secret values handed to the store
 * (which encrypts them) before anything is kept; no response carries either, and the preview
 * masks secrets and the phone-home token.
 */
import express, { type Request, type Router } from 'express';
import { ContextInputSchema, ContextSchema, contextSecrets, hashContextPasswords, type Context, type ContextInput } from '../model/context.js';
import { renderContextUserData, type PhoneHome } from '../model/user-data.js';
import type { ContextRecord, ContextVersionInput, Store } from '../store/index.js';
import { invalid, notFound, parseOr422, zodFieldErrors } from './problem.js';
import { bodyOf, param } from './request.js';
import { ContextVersionQuerySchema } from './schemas.js';

/** What the context routes use; `json` is the app's body parser (limit and error mapping). */
export interface ContextRouteDeps {
  store: Store;
  config: { publicUrl: string };
  json: express.RequestHandler;
}

/** Ids the store hands out; anything else is a 404 without a query. */
const CONTEXT_ID_RE = /^ctx-[0-9a-f]{12}$/;

/** The phone-home part a preview shows: no real instance, no real token. */
export const previewPhoneHome = (publicUrl: string): PhoneHome => ({
  url: `${publicUrl.replace(/\/+$/, '')}/v1/instances/preview/readiness`,
  instanceId: 'preview',
  token: 'preview',
  repositories: [],
});

/** Renders the masked preview; throws if the context cannot be rendered. */
const renderPreview = (context: Context, publicUrl: string): string =>
  renderContextUserData(context, { phoneHome: previewPhoneHome(publicUrl), maskSecrets: true });

/** The public shape of a record (the same fields; spelled out so nothing else ever leaks). */
const view = (r: ContextRecord) => ({ id: r.id, version: r.version, name: r.name, context: r.context, createdAt: r.createdAt });

/** `/v1/contexts` and its versions and preview. */
export function contextRoutes(deps: ContextRouteDeps): Router {
  const { store, config, json } = deps;
  const router = express.Router();

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

  /** The record `:id` (and `?version=n`) names, else 404. */
  const recordOf = (req: Request): ContextRecord => {
    const id = param(req, 'id');
    const { version } = parseOr422(ContextVersionQuerySchema, req.query);
    const rec = CONTEXT_ID_RE.test(id) ? store.getContext(id, version) : undefined;
    if (!rec) {
      const known = version !== undefined && CONTEXT_ID_RE.test(id) && store.getContext(id) !== undefined;
      throw notFound(known ? `context "${id}" has no version ${version}` : `no context "${id}"`);
    }
    return rec;
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
    const latest = CONTEXT_ID_RE.test(id) ? store.getContext(id) : undefined;
    if (!latest) throw notFound(`no context "${id}"`);
    const rec = store.updateContext(id, toVersion(req, latest));
    if (!rec) throw notFound(`no context "${id}"`);
    res.setHeader('Content-Location', `/v1/contexts/${rec.id}?version=${rec.version}`);
    res.json(view(rec));
  });

  router.get('/v1/contexts/:id/versions', (req, res) => {
    const id = param(req, 'id');
    const versions = CONTEXT_ID_RE.test(id) ? store.listContextVersions(id) : [];
    if (!versions.length) throw notFound(`no context "${id}"`);
    res.json({ items: versions.map(view) });
  });

  router.get('/v1/contexts/:id/preview', (req, res) => {
    const rec = recordOf(req);
    res.type('text/plain; charset=utf-8').send(renderPreview(rec.context, config.publicUrl));
  });

  return router;
}
