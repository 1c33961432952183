/**
 * The Temporal server settings cloudgate runs with (workers/temporal-dynamic-config.ts): the dev
 * server of `npm start` and the tests gets them as flags, the production topology as its dynamic
 * config file, and docker-compose.yml's server reads docker/temporal/dynamicconfig.yaml, a file
 * a site edits by hand — which must hold the same.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from '@jest/globals';
import { parse as parseYaml } from 'yaml';
import { devServerDynamicConfigArgs, dynamicConfigFileContent } from '../workers/temporal-dynamic-config.js';
import { ROOT } from './harness.js';

describe("Temporal's dynamic config", () => {
  it('docker-compose.yml mounts the settings the dev server and the production topology get', () => {
    const file = parseYaml(readFileSync(path.join(ROOT, 'docker', 'temporal', 'dynamicconfig.yaml'), 'utf8'));
    expect(file).toEqual(dynamicConfigFileContent());
    expect(file['history.maximumBufferedEventsBatch']).toEqual([{ value: 500, constraints: {} }]);
  });

  it('gives the dev server each setting as a flag', () => {
    expect(devServerDynamicConfigArgs()).toEqual([
      '--dynamic-config-value',
      'system.forceSearchAttributesCacheRefreshOnRead=true',
      '--dynamic-config-value',
      'history.maximumBufferedEventsBatch=500',
    ]);
  });
});
