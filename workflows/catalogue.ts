/**
 * The cloud catalogue (issue 12): what each cloud offers (its offerings) is read by an
 * activity, never at worker start-up, so a cloud that is down does not hold a worker up and
 * no credential is read outside an activity. `CloudCatalogueWorkflow` refreshes the named
 * clouds (default: every cloud of the worker's registry), one activity per cloud, and says
 * which answered and which did not. The worker runs it on a Temporal Schedule
 * ({@link CLOUD_CATALOGUE_SCHEDULE_ID}, every {@link CLOUD_CATALOGUE_INTERVAL}) and the API
 * runs it for one cloud on `POST /v1/clouds/:id/refresh`.
 */
import { ActivityFailure, ApplicationFailure, proxyActivities, setCurrentDetails } from '@temporalio/workflow';

/** The schedule the worker creates at start (idempotently) and triggers once. */
export const CLOUD_CATALOGUE_SCHEDULE_ID = 'cloud-catalogue';
/** How often the schedule refreshes every cloud. */
export const CLOUD_CATALOGUE_INTERVAL = '5 minutes';
/** Workflow id of the schedule's runs (the server appends the run's time). */
export const CLOUD_CATALOGUE_SCHEDULED_WORKFLOW_ID = 'cloud-catalogue/all';
/** Workflow id of an admin's refresh of one cloud (`stamp`: time and a request id). */
export const cloudRefreshWorkflowId = (cloud: string, stamp: string): string => `cloud-catalogue/${cloud}/${stamp}`;

export interface CloudCatalogueInput {
  /** The clouds to refresh; default every cloud of the worker's registry. */
  clouds?: string[];
}

/** What one refresh did. A cloud that did not answer is `ok: false`, not a failed activity. */
export interface CloudRefreshResult {
  cloud: string;
  ok: boolean;
  /** Offerings listed now (ok), or still listed from before (not ok). */
  offerings: number;
  /** Why the cloud did not answer (the adapter's error, its kind first when it has one). */
  error?: string;
  /** The adapter's error kind (`Unavailable`, `Unauthorized`, …) or `UnknownCloud`/`Timeout`. */
  errorKind?: string;
  /** How long the listing took. */
  ms: number;
}

export interface CloudCatalogueResult {
  /** Clouds that listed their offerings. */
  answered: string[];
  /** Clouds that did not, with why. */
  failed: { cloud: string; error: string; errorKind?: string }[];
  results: CloudRefreshResult[];
}

/**
 * The catalogue's activities (activities/catalogue.ts implements them; the type lives here
 * because workflows import no module of activities/).
 */
export interface CatalogueActivities {
  /** The names of the clouds of the worker's registry. */
  catalogueClouds(): Promise<string[]>;
  /** Lists one cloud's offerings through its adapter and writes its store record. */
  refreshCloudCatalogue(input: { cloud: string }): Promise<CloudRefreshResult>;
}

/**
 * A cloud that does not answer is a result (`ok: false`), so retries here only mend the
 * worker's own trouble (the store); the schedule tries again five minutes later.
 */
const { catalogueClouds, refreshCloudCatalogue } = proxyActivities<CatalogueActivities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '10s', maximumAttempts: 3 },
});

const reasonOf = (err: unknown): { error: string; errorKind?: string } => {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  if (cause instanceof ApplicationFailure) return { error: cause.message, errorKind: cause.type ?? undefined };
  return { error: cause instanceof Error ? cause.message : String(cause) };
};

export async function CloudCatalogueWorkflow(input: CloudCatalogueInput = {}): Promise<CloudCatalogueResult> {
  const clouds = input.clouds ?? (await catalogueClouds.executeWithOptions({ summary: 'list the clouds of the registry' }, []));
  const results = new Map<string, CloudRefreshResult | undefined>(clouds.map((c) => [c, undefined]));
  const show = () => {
    const lines = [...results].map(([cloud, r]) =>
      r === undefined ? `- **${cloud}**: listing…` : r.ok ? `- **${cloud}**: ${r.offerings} offerings` : `- **${cloud}**: did not answer (${r.error}); ${r.offerings} offerings kept from before`,
    );
    setCurrentDetails(`Refreshing the catalogue of ${clouds.length} cloud${clouds.length === 1 ? '' : 's'}\n\n${lines.join('\n')}`);
  };
  show();
  await Promise.all(
    clouds.map(async (cloud) => {
      let r: CloudRefreshResult;
      try {
        r = await refreshCloudCatalogue.executeWithOptions({ summary: `list the offerings of ${cloud}` }, [{ cloud }]);
      } catch (err) {
        r = { cloud, ok: false, offerings: 0, ms: 0, ...reasonOf(err) };
      }
      results.set(cloud, r);
      show();
    }),
  );
  const all = clouds.map((c) => results.get(c)!);
  return {
    answered: all.filter((r) => r.ok).map((r) => r.cloud),
    failed: all.filter((r) => !r.ok).map((r) => ({ cloud: r.cloud, error: r.error ?? 'no answer', ...(r.errorKind !== undefined && { errorKind: r.errorKind }) })),
    results: all,
  };
}
