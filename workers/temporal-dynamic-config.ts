/**
 * The Temporal server settings cloudgate runs with, in one place: the dev server of `npm start`
 * and the tests gets them as `--dynamic-config-value` flags (workers/dev-server.ts), the
 * production topology as its dynamic config file (test/peers/temporal-server.ts), and
 * docker/temporal/dynamicconfig.yaml holds the same values for docker-compose.yml
 * (test/temporal-dynamic-config.test.ts compares them).
 */

/** Each setting's value, for every namespace. */
export const TEMPORAL_DYNAMIC_CONFIG: Readonly<Record<string, boolean | number>> = {
  // Search attributes added at start-up are usable at once.
  'system.forceSearchAttributesCacheRefreshOnRead': true,
  // Signals that may wait while one workflow task runs before the server fails the task to take
  // them in (FORCE_CLOSE_COMMAND; default 100): a 10,000-instance service receives readiness
  // batches during its tasks (api/readiness-batcher.ts sends at most one per 100 ms per API
  // replica and service).
  'history.maximumBufferedEventsBatch': 500,
};

/** The dev server's flags: `--dynamic-config-value KEY=VALUE` (values as JSON). */
export function devServerDynamicConfigArgs(): string[] {
  return Object.entries(TEMPORAL_DYNAMIC_CONFIG).flatMap(([key, value]) => ['--dynamic-config-value', `${key}=${JSON.stringify(value)}`]);
}

/** A dynamic config file's content (`dynamicConfigClient.filepath`): each key once, for every namespace. */
export function dynamicConfigFileContent(): Record<string, { value: boolean | number; constraints: Record<string, never> }[]> {
  return Object.fromEntries(Object.entries(TEMPORAL_DYNAMIC_CONFIG).map(([key, value]) => [key, [{ value, constraints: {} }]]));
}
