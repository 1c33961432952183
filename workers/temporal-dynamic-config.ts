/**
 * The Temporal server settings cloudgate runs with, in one place: the dev server of `npm start`
 * and the tests gets them as `--dynamic-config-value` flags (workers/dev-server.ts), the
 * production topology as its dynamic config file (test/peers/temporal-server.ts), and
 * docker/temporal/dynamicconfig.yaml holds the same values for docker-compose.yml
 * (test/temporal-dynamic-config.test.ts compares them).
 */

/** A setting, its value for every namespace, and why cloudgate sets it. */
export interface DynamicSetting {
  key: string;
  value: boolean | number;
  why: string;
}

export const TEMPORAL_DYNAMIC_CONFIG: readonly DynamicSetting[] = [
  {
    key: 'system.forceSearchAttributesCacheRefreshOnRead',
    value: true,
    why: 'search attributes added at start-up are usable at once',
  },
  {
    key: 'history.maximumBufferedEventsBatch',
    value: 500,
    why:
      'signals that may wait while one workflow task runs before the server fails the task to take them in ' +
      '(FORCE_CLOSE_COMMAND; default 100): a 10,000-instance service receives readiness batches during its tasks ' +
      '(api/readiness-batcher.ts sends at most one per 100 ms per API replica and service)',
  },
];

/** The dev server's flags: `--dynamic-config-value KEY=VALUE` (values as JSON). */
export function devServerDynamicConfigArgs(settings: readonly DynamicSetting[] = TEMPORAL_DYNAMIC_CONFIG): string[] {
  return settings.flatMap((s) => ['--dynamic-config-value', `${s.key}=${JSON.stringify(s.value)}`]);
}

/** A dynamic config file's content (`dynamicConfigClient.filepath`): each key once, for every namespace. */
export function dynamicConfigFileContent(settings: readonly DynamicSetting[] = TEMPORAL_DYNAMIC_CONFIG): Record<string, { value: boolean | number; constraints: Record<string, never> }[]> {
  return Object.fromEntries(settings.map((s) => [s.key, [{ value: s.value, constraints: {} }]]));
}
