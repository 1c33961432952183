/**
 * `cloudgate apply -f cluster.yaml` and `cloudgate diff -f cluster.yaml`: one YAML file holds
 * a cluster — its definition, the contexts it defines inline, and how it is submitted — and
 * apply makes the API hold exactly that, through the public routes only:
 *
 * 1. each inline context is created, or updated (a new version) when it differs from the
 *    caller's context of that name;
 * 2. the definition (services naming contexts by name get their ids) is reused when the
 *    caller already stored one with the same content, else stored;
 * 3. **the cluster of the file is the caller's cluster of that name** (`name:`, else the
 *    definition's name) that is not TERMINATED: none → it is created (POST with an
 *    `Idempotency-Key` derived from the request, so a retried or concurrent apply cannot make
 *    a second one); one → a changed definition or context version is a rolling change (PUT);
 *    the same → nothing is written and apply says `unchanged`.
 *
 * `diff` computes the same plan and prints it without writing anything. Fields fixed when a
 * cluster is created (`cloud`, `lifetime`, `windows`) are compared when the file names them;
 * a difference is refused, never silently ignored.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import type { ChangeResponseSchema, ClusterCreatedSchema, ClusterDefinitionRecordSchema, ClusterDetail, ClusterSummarySchema, ContextRecordSchema, WhoAmISchema } from '../api/schemas.js';
import { ContextInputSchema } from '../model/context.js';
import { ClusterDefinitionSchema, LifetimeSchema, NameSchema } from '../model/definition.js';
import { resolveLifetime } from '../model/session.js';
import { resolveWindows, WindowsSchema } from '../model/windows.js';
import { ApiError, CliError, EXIT, type ApiClient } from './client.js';
import { canonical, jsonDiff } from './json-diff.js';

export type WhoAmI = z.infer<typeof WhoAmISchema>;
type ContextRecord = z.infer<typeof ContextRecordSchema> & { owner?: string };
type DefinitionRecord = z.infer<typeof ClusterDefinitionRecordSchema> & { owner?: string };
type ClusterSummary = z.infer<typeof ClusterSummarySchema>;
type ChangeResponse = z.infer<typeof ChangeResponseSchema>;
type ClusterCreated = z.infer<typeof ClusterCreatedSchema>;

/** The file's shape. The definition's and the contexts' own fields are the API's to check (a 422 names them). */
const ApplyFileSchema = z
  .object({
    name: NameSchema.optional().describe("The cluster's name; default the definition's. Apply finds the cluster of the file by it"),
    cloud: z.string().min(1).max(100).optional(),
    lifetime: LifetimeSchema.optional(),
    windows: WindowsSchema.optional(),
    maxUnavailable: z.number().int().min(1).max(10_000).optional(),
    contexts: z.array(z.object({ name: z.string().min(1) }).loose()).max(100).optional(),
    definition: z.object({ name: z.string(), services: z.array(z.object({}).loose()) }).loose(),
  })
  .strict();

export interface ApplyFile {
  path: string;
  name: string;
  cloud?: string;
  lifetime?: z.infer<typeof LifetimeSchema>;
  windows?: z.infer<typeof WindowsSchema>;
  maxUnavailable?: number;
  contexts: Record<string, unknown>[];
  definition: { name: string; services: Record<string, unknown>[] } & Record<string, unknown>;
}

/** Reads and checks the file's outline; anything wrong is a usage error naming the file and the field. */
export function readApplyFile(file: string): ApplyFile {
  let text: string;
  try {
    text = file === '-' ? readFileSync(0, 'utf8') : readFileSync(file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as Error).message}`, EXIT.usage, { cause: err });
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new CliError(`${file} is not YAML: ${(err as Error).message.split('\n')[0]}`, EXIT.usage, { cause: err });
  }
  const r = ApplyFileSchema.safeParse(doc);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `${i.path.map(String).join('.') || '(document)'}: ${i.message}`);
    throw new CliError(`${file}: ${issues.join('; ')}`, EXIT.usage);
  }
  const names = r.data.contexts?.map((c) => c.name) ?? [];
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice) throw new CliError(`${file}: contexts: the name "${twice}" is used twice`, EXIT.usage);
  return { ...r.data, path: file, name: r.data.name ?? r.data.definition.name, contexts: r.data.contexts ?? [] } as ApplyFile;
}

/** One inline context and what apply does with it. */
interface ContextStep {
  index: number;
  name: string;
  body: Record<string, unknown>;
  action: 'create' | 'update' | 'unchanged';
  existing?: ContextRecord;
  changes: string[];
}

/** What apply would do; `diff` prints it, `apply` carries it out. */
export interface Plan {
  me: WhoAmI;
  file: ApplyFile;
  contexts: ContextStep[];
  /** The definition as it would be stored (context names resolved; `<new context …>` for contexts not created yet). */
  definition: Record<string, unknown>;
  /** A stored definition of the caller with exactly this content, if any. */
  sameDefinition?: DefinitionRecord;
  cluster:
    | { action: 'create' }
    | { action: 'change' | 'unchanged'; current: ClusterDetail; changes: string[] };
}

const placeholder = (name: string) => `<new context ${name}>`;

/** The caller's own items of a list (an admin's lists hold everyone's). */
const mine = <T extends { owner?: string }>(items: T[], me: WhoAmI): T[] => items.filter((x) => x.owner === me.owner);
const ownerQuery = (me: WhoAmI) => (me.role === 'admin' ? { owner: me.owner } : {});

/**
 * A context as the API would show it after storing `body`: plain passwords become
 * `passwordSet`, secret values their names (a body without `secrets` keeps the stored ones,
 * as the API does). Undefined when the body does not pass the model's rules here: the API
 * then decides, and answers why.
 */
function publicForm(body: Record<string, unknown>, existing?: ContextRecord): unknown {
  const r = ContextInputSchema.safeParse(body);
  if (!r.success) return undefined;
  const { secrets, users, ...rest } = r.data;
  const storedSecrets = (existing?.context as { secretNames?: string[] } | undefined)?.secretNames ?? [];
  return {
    ...rest,
    users: users.map(({ password, ...u }) => (password === undefined ? u : { ...u, passwordSet: true })),
    secretNames: secrets === undefined ? storedSecrets : Object.keys(secrets).sort(),
  };
}

/** The definition with each service's `context: <name>` replaced by its `contextId`. */
function resolveContexts(file: ApplyFile, ids: (name: string) => string | undefined): Record<string, unknown> {
  const services = file.definition.services.map((s, i) => {
    if (s.context === undefined) return s;
    const { context, ...rest } = s;
    const at = `definition.services[${i}].context`;
    if (typeof context !== 'string') throw new CliError(`${file.path}: ${at}: must be the name (or ctx- id) of a context`, EXIT.usage);
    if (rest.contextId !== undefined) throw new CliError(`${file.path}: ${at}: give context or contextId, not both`, EXIT.usage);
    const id = /^ctx-[0-9a-f]{12}$/.test(context) ? context : ids(context);
    if (!id) throw new CliError(`${file.path}: ${at}: no context named "${context}" in the file or among yours`, EXIT.notFound);
    return { ...rest, contextId: id };
  });
  return { ...file.definition, services };
}

/** The definition with the API's defaults, to compare with stored ones; the raw one if it does not parse (the API will say why). */
function normalised(def: Record<string, unknown>): unknown {
  const r = ClusterDefinitionSchema.safeParse(def);
  return r.success ? JSON.parse(JSON.stringify(r.data)) : def;
}

/** Works out what apply would do, reading only. */
export async function plan(client: ApiClient, file: ApplyFile): Promise<Plan> {
  const me = await client.get<WhoAmI>('/v1/me');
  const myContexts = mine(await client.all<ContextRecord>('/v1/contexts', ownerQuery(me)), me);
  const contextNamed = (name: string): ContextRecord | undefined => {
    const found = myContexts.filter((c) => c.name === name);
    if (found.length > 1) throw new CliError(`you have ${found.length} contexts named "${name}" (${found.map((c) => c.id).join(', ')}): name it by id (ctx-…)`, EXIT.refused);
    return found[0];
  };

  const contexts: ContextStep[] = file.contexts.map((body, index) => {
    const name = body.name as string;
    const existing = contextNamed(name);
    if (!existing) return { index, name, body, action: 'create', changes: [] };
    const wanted = publicForm(body, existing);
    const changes = wanted === undefined ? ['~ (not checked here: the API checks the new version)'] : jsonDiff(existing.context, wanted);
    return { index, name, body, existing, action: changes.length ? 'update' : 'unchanged', changes };
  });

  const inFile = new Map(contexts.map((c) => [c.name, c]));
  const definition = resolveContexts(file, (name) => {
    const step = inFile.get(name);
    if (step) return step.existing?.id ?? placeholder(name);
    return contextNamed(name)?.id;
  });
  const norm = normalised(definition);
  const myDefinitions = mine(await client.all<DefinitionRecord>('/v1/cluster-definitions', ownerQuery(me)), me);
  const sameDefinition = myDefinitions.find((d) => canonical(d.definition) === canonical(norm));

  const named = mine(await client.all<ClusterSummary>('/v1/clusters', ownerQuery(me)), me).filter((c) => c.name === file.name);
  if (named.length > 1) {
    throw new CliError(`you have ${named.length} clusters named "${file.name}" (${named.map((c) => c.id).join(', ')}); tear down the extra ones (cloudgate down ID) before applying`, EXIT.refused);
  }
  if (named.length === 0) return { me, file, contexts, definition, sameDefinition, cluster: { action: 'create' } };

  const current = await client.get<ClusterDetail>(`/v1/clusters/${encodeURIComponent(named[0].id)}`);
  if (current.state === 'TERMINATING') {
    throw new CliError(`cluster ${current.id} ("${file.name}") is being torn down; wait for it (cloudgate down ${current.id} --wait), then apply again`, EXIT.refused);
  }
  fixedAtCreation(file, current, norm);
  let runs: unknown;
  try {
    runs = (await client.get<DefinitionRecord>(`/v1/cluster-definitions/${encodeURIComponent(current.definitionId)}`)).definition;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err;
    runs = undefined; // deleted since: whatever the file says is a change
  }
  const changes = jsonDiff(runs, norm, 'definition');
  // Context versions: what each service would pin (its contextVersion, else the latest after apply) against what it runs.
  for (const s of (definition.services as Record<string, unknown>[]) ?? []) {
    if (typeof s.contextId !== 'string' || typeof s.name !== 'string') continue;
    const pinned = current.contexts?.[s.name];
    const step = [...inFile.values()].find((c) => (c.existing?.id ?? placeholder(c.name)) === s.contextId);
    const latest = step ? (step.existing ? step.existing.version + (step.action === 'update' ? 1 : 0) : 1) : myContexts.find((c) => c.id === s.contextId)?.version;
    const wanted = typeof s.contextVersion === 'number' ? s.contextVersion : latest;
    const now = pinned ? `${pinned.id} v${pinned.version}` : 'none';
    const then = `${s.contextId} v${wanted ?? '?'}`;
    if (now !== then && !changes.some((l) => l.startsWith(`+ definition.services[${s.name}]`))) changes.push(`~ contexts.${s.name}: ${now} → ${then}`);
  }
  return { me, file, contexts, definition, sameDefinition, cluster: { action: changes.length ? 'change' : 'unchanged', current, changes } };
}

/** `cloud`, `lifetime` and `windows` the file names must be what the running cluster has: they cannot change. */
function fixedAtCreation(file: ApplyFile, current: ClusterDetail, def: unknown): void {
  const d = def as { lifetime?: z.infer<typeof LifetimeSchema>; windows?: z.infer<typeof WindowsSchema> };
  const differ: string[] = [];
  if (file.cloud !== undefined && file.cloud !== current.cloud) differ.push(`cloud: ${current.cloud} → ${file.cloud}`);
  if (file.lifetime !== undefined) {
    const wanted = resolveLifetime(d.lifetime, file.lifetime);
    if (canonical(wanted) !== canonical(current.lifetime)) differ.push(`lifetime: ${canonical(current.lifetime ?? null)} → ${canonical(wanted ?? null)}`);
  }
  if (file.windows !== undefined) {
    const wanted = resolveWindows(d.windows, file.windows);
    if (canonical(wanted) !== canonical(current.windows)) differ.push(`windows: ${canonical(current.windows ?? null)} → ${canonical(wanted ?? null)}`);
  }
  if (differ.length) {
    throw new CliError(
      `cluster ${current.id} ("${file.name}") was created with other ${differ.map((x) => x.split(':')[0]).join(', ')} (${differ.join('; ')}): ` +
        `they are fixed when a cluster is created; tear it down (cloudgate down ${current.id} --wait) and apply again`,
      EXIT.refused,
    );
  }
}

/** The plan as lines: what apply would do to each context, the definition and the cluster. */
export function describePlan(p: Plan): { lines: string[]; changes: boolean } {
  const lines: string[] = [];
  let changes = false;
  for (const c of p.contexts) {
    if (c.action === 'create') lines.push(`context ${c.name}: would be created`);
    else if (c.action === 'update') lines.push(`context ${c.name} (${c.existing!.id}): would get version ${c.existing!.version + 1}`, ...c.changes.map((l) => `  ${l}`));
    else lines.push(`context ${c.name} (${c.existing!.id} v${c.existing!.version}): unchanged`);
    changes ||= c.action !== 'unchanged';
  }
  const cl = p.cluster;
  if (cl.action === 'create') {
    const services = p.file.definition.services.map((s) => `${String(s.name)} ×${typeof s.min === 'number' ? s.min : 1}`).join(', ');
    lines.push(
      p.sameDefinition ? `definition ${p.file.definition.name}: the same as ${p.sameDefinition.id}, reused` : `definition ${p.file.definition.name}: would be stored`,
      `cluster ${p.file.name}: would be created on ${p.file.cloud ?? 'sim'} (${services})`,
    );
    changes = true;
  } else if (cl.action === 'change') {
    lines.push(`cluster ${p.file.name} (${cl.current.id}, ${cl.current.state}): would change (rolling, ${p.file.maxUnavailable ?? 1} at a time)`, ...cl.changes.map((l) => `  ${l}`));
    changes = true;
  } else {
    lines.push(`cluster ${p.file.name} (${cl.current.id}, ${cl.current.state}): unchanged${cl.current.change ? ` (a change to ${cl.current.change.to} is ${cl.current.change.phase})` : ''}`);
  }
  return { lines, changes };
}

/** What apply did to the cluster, for `--wait`. */
export type Applied =
  | { kind: 'created'; id: string }
  | { kind: 'changed'; id: string; from: string; to: string; seq: number }
  | { kind: 'unchanged'; id: string };

/**
 * Carries out a plan, printing one line per step. Refusals name their field as it sits in
 * the file (`contexts[0].…`, `definition.services[1].…`).
 */
export async function carryOut(client: ApiClient, p: Plan, say: (line: string) => void): Promise<Applied> {
  const ids = new Map<string, { id: string; version: number }>();
  for (const c of p.contexts) {
    if (c.action === 'unchanged') {
      say(`context ${c.name}: unchanged (${c.existing!.id} v${c.existing!.version})`);
      continue;
    }
    const rec = await prefixed(`contexts[${c.index}].`, () =>
      c.existing
        ? client.request<ContextRecord>('PUT', `/v1/contexts/${c.existing.id}`, { body: c.body })
        : client.request<ContextRecord>('POST', '/v1/contexts', { body: c.body }),
    );
    ids.set(c.name, { id: rec.id, version: rec.version });
    say(`context ${c.name}: ${c.existing ? 'updated' : 'created'} ${rec.id} v${rec.version}`);
  }

  const cl = p.cluster;
  if (cl.action === 'unchanged') {
    say(`cluster ${p.file.name}: unchanged (${cl.current.id}, ${cl.current.state}, definition ${cl.current.definitionId})`);
    return { kind: 'unchanged', id: cl.current.id };
  }

  // Placeholders of contexts just created become their ids.
  const definition = JSON.parse(JSON.stringify(p.definition, (_k, v: unknown) => {
    const m = typeof v === 'string' ? /^<new context (.+)>$/.exec(v) : null;
    return m ? ids.get(m[1])?.id : v;
  })) as Record<string, unknown>;
  const norm = canonical(normalised(definition));
  let definitionId: string;
  if (p.sameDefinition && canonical(p.sameDefinition.definition) === norm) {
    definitionId = p.sameDefinition.id;
    say(`definition ${p.file.definition.name}: unchanged (${definitionId})`);
  } else if (cl.action === 'change' && canonical((await client.get<DefinitionRecord>(`/v1/cluster-definitions/${cl.current.definitionId}`).catch(() => undefined))?.definition) === norm) {
    definitionId = cl.current.definitionId; // only context versions change
    say(`definition ${p.file.definition.name}: unchanged (${definitionId})`);
  } else {
    const rec = await prefixed('definition.', () => client.request<DefinitionRecord>('POST', '/v1/cluster-definitions', { body: definition }));
    definitionId = rec.id;
    say(`definition ${p.file.definition.name}: stored ${definitionId}`);
  }

  if (cl.action === 'create') {
    const body = {
      definitionId,
      name: p.file.name,
      ...(p.file.cloud !== undefined && { cloud: p.file.cloud }),
      ...(p.file.lifetime && { lifetime: p.file.lifetime }),
      ...(p.file.windows && { windows: p.file.windows }),
    };
    const key = await idempotencyKey(client, p, body);
    const created = await client.request<ClusterCreated>('POST', '/v1/clusters', { body, headers: { 'Idempotency-Key': key } });
    say(`cluster ${p.file.name}: created ${created.id} (${created.state}); Temporal UI: ${created.links.temporalUi}`);
    return { kind: 'created', id: created.id };
  }

  const seq = cl.current.seq;
  const change = await client.request<ChangeResponse>('PUT', `/v1/clusters/${encodeURIComponent(cl.current.id)}`, {
    body: { definitionId, ...(p.file.maxUnavailable !== undefined && { maxUnavailable: p.file.maxUnavailable }) },
  });
  const what = [
    change.replace.length && `replace ${change.replace.join(', ')} (${change.maxUnavailable} at a time)`,
    change.add.length && `add ${change.add.join(', ')}`,
    change.remove.length && `remove ${change.remove.join(', ')}`,
    change.keep.length && `keep ${change.keep.join(', ')}`,
  ].filter(Boolean);
  say(`cluster ${p.file.name} (${cl.current.id}): rolling change ${change.from} → ${change.to}: ${what.join('; ')}`);
  return { kind: 'changed', id: cl.current.id, from: change.from, to: change.to, seq };
}

/** Runs a request whose refusal names fields of the part of the file at `prefix`. */
async function prefixed<T>(prefix: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (err) {
    if (err instanceof ApiError && err.status === 422) throw err.withFieldPrefix(prefix);
    throw err;
  }
}

/**
 * The `Idempotency-Key` of a create: the same for the same owner, cluster name, request and
 * torn-down clusters of that name. A retried or concurrent apply of one file thus gets the
 * one cluster; once that cluster is torn down (TERMINATED), applying the file again makes a
 * new one instead of being answered with the old.
 */
async function idempotencyKey(client: ApiClient, p: Plan, body: object): Promise<string> {
  const ended = mine(await client.all<ClusterSummary>('/v1/clusters', { ...ownerQuery(p.me), state: 'TERMINATED' }), p.me)
    .filter((c) => c.name === p.file.name)
    .map((c) => c.id)
    .sort();
  const digest = createHash('sha256').update(canonical([p.me.owner, p.file.name, body, ended])).digest('hex');
  return `cloudgate-apply-${digest.slice(0, 40)}`;
}

