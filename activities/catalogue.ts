/**
 * The cloud catalogue's activities (issue 12; the workflow is workflows/catalogue.ts): each
 * cloud's offerings are listed through its adapter — so its credentials are read here, at
 * call time, inside an activity — and written with the registry entry's public information
 * (`publicCloudInfo`: kind, endpoint, credential references, images, quota) to the store's
 * cloud record, which `GET /v1/clouds`, the submission checks and placement read.
 *
 * A cloud that does not answer (down, wrong credentials, too slow) keeps the offerings it
 * listed before and is reported `ok: false` with the adapter's reason; it is not a failed
 * activity, so nothing retries it before the schedule's next run.
 */
import { Context } from '@temporalio/activity';
import { CloudError, type CloudAdapter, type CloudOffering } from '../clouds/contract.js';
import { publicCloudInfo, type CloudConfig, type CloudQuota } from '../model/clouds-config.js';
import type { CloudRecord } from '../store/index.js';
import type { CatalogueActivities, CloudRefreshResult } from '../workflows/catalogue.js';

export type { CatalogueActivities, CloudRefreshResult };

/** How long a cloud may take to list its offerings before it counts as not answering. */
export const LIST_OFFERINGS_TIMEOUT_MS = 20_000;

export interface CatalogueDeps {
  /** The worker's adapters, by cloud name. */
  clouds: { get(name: string): CloudAdapter };
  /** The worker's registry entries (the file's `clouds`). */
  registry: readonly CloudConfig[];
  /** Where cloud records live (the store). */
  store: { getCloud(name: string): Promise<CloudRecord | undefined>; upsertCloud(cloud: CloudRecord): Promise<void> };
  /** Default {@link LIST_OFFERINGS_TIMEOUT_MS}. */
  timeoutMs?: number;
  /** Each cloud's quota as the registry file says now (it may have been edited since start); default the entry's. */
  quotaOf?: (cloud: string) => CloudQuota | undefined;
}

/** A registry entry's record without calling the cloud: what a worker writes at start and a failed refresh keeps. */
export function staticCloudRecord(c: CloudConfig, offerings: CloudOffering[]): CloudRecord {
  return { name: c.name, kind: c.kind, ...publicCloudInfo(c), offerings };
}

class ListTimeout extends Error {}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ListTimeout(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

const logOf = () => {
  try {
    return Context.current().log;
  } catch {
    return undefined; // called outside an activity (unit use)
  }
};

export function createCatalogueActivities(deps: CatalogueDeps): CatalogueActivities {
  const timeoutMs = deps.timeoutMs ?? LIST_OFFERINGS_TIMEOUT_MS;
  const entries = new Map(deps.registry.map((c) => [c.name, c]));
  /** The registry entry with its current quota. */
  const entryOf = (cloud: string): CloudConfig | undefined => {
    const c = entries.get(cloud);
    if (!c || !deps.quotaOf) return c;
    const quota = deps.quotaOf(cloud);
    return { ...c, quota } as CloudConfig;
  };
  return {
    async catalogueClouds() {
      return deps.registry.map((c) => c.name);
    },

    async refreshCloudCatalogue({ cloud }): Promise<CloudRefreshResult> {
      const entry = entryOf(cloud);
      if (!entry) {
        return { cloud, ok: false, offerings: 0, ms: 0, errorKind: 'UnknownCloud', error: `this worker's registry has no cloud named "${cloud}"` };
      }
      const started = Date.now();
      try {
        const offerings = await withTimeout(deps.clouds.get(cloud).listOfferings(), timeoutMs);
        await deps.store.upsertCloud(staticCloudRecord(entry, offerings));
        logOf()?.info('listed offerings', { cloud, offerings: offerings.length });
        return { cloud, ok: true, offerings: offerings.length, ms: Date.now() - started };
      } catch (err) {
        // Keep the offerings listed before; endpoint, credential references, images and quota are the registry's now.
        const kept = (await deps.store.getCloud(cloud))?.offerings ?? [];
        await deps.store.upsertCloud(staticCloudRecord(entry, kept));
        const errorKind = err instanceof CloudError ? err.kind : err instanceof ListTimeout ? 'Timeout' : undefined;
        const message = err instanceof Error ? err.message : String(err);
        logOf()?.warn('cloud did not list its offerings', { cloud, errorKind, error: message, kept: kept.length });
        return { cloud, ok: false, offerings: kept.length, ms: Date.now() - started, error: message.slice(0, 1000), ...(errorKind !== undefined && { errorKind }) };
      }
    },
  };
}
