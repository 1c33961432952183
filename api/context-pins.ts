/**
 * Cluster definitions name a context per service. A definition may only name contexts that
 * exist; a cluster pins, when it is submitted, the version each service renders (the latest,
 * or the one the definition names), so later versions never change a running cluster. The
 * pinned user-data must also fit the limit of every cloud the service may land on: that is
 * checked here, at submission, with a real rendering of the largest instance the cluster
 * could have.
 */
import { pinContext, type PinnedContext } from '../model/context.js';
import type { ClusterDefinition, ServiceDefinition } from '../model/definition.js';
import { instanceId } from '../model/service-plan.js';
import { signToken } from '../model/token.js';
import { measureUserData, phoneHomeUrl, renderContextUserData } from '../model/user-data.js';
import type { CloudRecord, ContextRecord, Store } from '../store/index.js';
import type { FieldError } from './problem.js';

/** What the size check needs to render user-data the way the create activity does. */
export interface RenderSettings {
  publicUrl: string;
  tokenSecret: string;
}

/** Longest cluster id the API makes (`<prefix>-<6 base36>`, a 40-character name). */
const LONGEST_CLUSTER_ID = 'c'.repeat(40);
/** Ordinals grow with replacements; seven digits cover any cluster's lifetime here. */
const LONGEST_ORDINAL = 9_999_999;
/** Token expiry far enough ahead that its digits are as many as any real one's. */
const LONGEST_EXP = 9_999_999_999;

type Lookup = { rec: ContextRecord } | { error: string };

/** Whether the caller may use a context of this owner (someone else's reads as unknown). */
export type MayUse = (owner: string | undefined) => boolean;

/** The context version a service names (latest when it names none), or why it cannot be used. */
async function lookup(store: Store, id: string, version: number | undefined, mayUse: MayUse): Promise<Lookup> {
  const latest = await store.getContext(id);
  if (!latest || !mayUse(latest.owner)) return { error: `no context "${id}"` };
  const rec = await store.getContext(id, version);
  if (!rec) {
    const known = version !== undefined;
    return { error: known ? `context "${id}" has no version ${version}` : `no context "${id}"` };
  }
  if (rec.deletedAt) return { error: `context "${id}" was deleted (${rec.deletedAt}); name another context` };
  return { rec };
}

/** At definition time: each `contextId` (and `contextVersion`) names a context that exists and is not deleted. */
export async function contextReferenceErrors(def: ClusterDefinition, store: Store, mayUse: MayUse): Promise<FieldError[]> {
  const errors: FieldError[] = [];
  for (const [i, s] of def.services.entries()) {
    if (s.contextId === undefined) continue;
    const found = await lookup(store, s.contextId, s.contextVersion, mayUse);
    if ('rec' in found) continue;
    const field = found.error.includes('has no version') ? 'contextVersion' : 'contextId';
    errors.push({ field: `services[${i}].${field}`, pointer: `/services/${i}/${field}`, message: found.error });
  }
  return errors;
}

/**
 * At submission: the version each service's instances will render. A context deleted since
 * the definition was stored is an error naming the service (pointer `/definitionId`, the
 * request's own field).
 */
export async function pinContexts(def: ClusterDefinition, store: Store, mayUse: MayUse): Promise<{ pins: Record<string, PinnedContext>; errors: FieldError[] }> {
  const pins: Record<string, PinnedContext> = {};
  const errors: FieldError[] = [];
  for (const s of def.services) {
    if (s.contextId === undefined) continue;
    const found = await lookup(store, s.contextId, s.contextVersion, mayUse);
    if ('rec' in found) pins[s.name] = pinContext(found.rec.id, found.rec.version, found.rec.context);
    else errors.push({ field: 'definitionId', pointer: '/definitionId', message: `service "${s.name}": ${found.error}` });
  }
  return { pins, errors };
}

/** The decrypted secret values, or the decryption's error thrown where the rendering's would be. */
function secretsOf(read: { ok: true; value: Record<string, string> } | { ok: false; err: unknown }): Record<string, string> {
  if (!read.ok) throw read.err;
  return read.value;
}

/** A cloud a service may land on, and where an error about it points (the request's `cloud`, or the placement's entry). */
export interface CloudTarget {
  cloud: CloudRecord;
  field: string;
  pointer: string;
}

/**
 * Services whose user-data would exceed the limit of a cloud they may land on, rendered with
 * the pinned version, its real secret values and the longest instance id and token the
 * cluster could use. `cloudsOf` names each service's registered clouds (the cluster's
 * `cloud`, or each of its placement's); one error per service and cloud that does not fit.
 */
export async function userDataMisfits(
  def: ClusterDefinition,
  cloudsOf: (service: ServiceDefinition, index: number) => readonly CloudTarget[],
  pins: Record<string, PinnedContext>,
  store: Store,
  settings: RenderSettings,
): Promise<FieldError[]> {
  // The services' versions and secrets first (async), then the synchronous rendering as before.
  const stored = await Promise.all(
    def.services.map(async (s) => {
      const pin = pins[s.name];
      const rec = pin && (await store.getContext(pin.id, pin.version));
      if (!rec) return undefined;
      // Secrets that cannot be decrypted make the version unrenderable, reported like any other rendering error below.
      const secrets = await store.getContextSecrets(pin.id, pin.version).then(
        (v) => ({ ok: true as const, value: v ?? {} }),
        (err: unknown) => ({ ok: false as const, err }),
      );
      return { rec, secrets };
    }),
  );
  return def.services.flatMap((s, i) => {
    const pin = pins[s.name];
    const rec = stored[i]?.rec;
    if (!pin || !rec) return [];
    const targets = cloudsOf(s, i);
    if (targets.length === 0) return [];
    const id = instanceId(LONGEST_CLUSTER_ID, s.name, LONGEST_ORDINAL);
    const token = signToken({ iid: id, cluster: LONGEST_CLUSTER_ID, service: s.name, exp: LONGEST_EXP }, settings.tokenSecret);
    let text: string;
    try {
      text = renderContextUserData(rec.context, {
        phoneHome: { url: phoneHomeUrl(settings.publicUrl, id), instanceId: id, token, repositories: [] },
        secrets: secretsOf(stored[i]!.secrets),
      });
    } catch (err) {
      return [{ field: 'definitionId', pointer: '/definitionId', message: `service "${s.name}": context ${pin.id} v${pin.version} cannot be rendered: ${(err as Error).message}` }];
    }
    return targets.flatMap(({ cloud, field, pointer }) => {
      const measured = measureUserData(cloud.kind, text);
      if (!measured || measured.size <= measured.limit.maxBytes) return [];
      const { size, limit } = measured;
      return [
        {
          field,
          pointer,
          message:
            `user-data of service "${s.name}" (context ${pin.id} v${pin.version}) is ${size} bytes` +
            `${limit.counted === 'base64' ? ' in base64' : ''}; cloud "${cloud.name}" (${cloud.kind}) accepts at most ` +
            `${limit.maxBytes} bytes (${limit.stated}): shorten the context's startup script or extra cloud-config, or deploy to another cloud`,
        },
      ];
    });
  });
}
