/**
 * The Temporal server settings cloudgate runs with (workers/temporal-dynamic-config.ts): the dev
 * server of `npm start` and the tests gets them as flags, the production topology as its dynamic
 * config file, and docker-compose.yml's server reads docker/temporal/dynamicconfig.yaml, a file
 * a site edits by hand — which must hold the same.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from '@jest/globals';
import { parse as parseYaml } from 'yaml';
import { startDevServer } from '../workers/dev-server.js';
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

  it('the dev server that npm start and the tests start runs with those flags', async () => {
    // Its effects do not show in a short test (a new search attribute is usable at once on the
    // dev server without the setting too), so what is checked is the running server's command line.
    const dir = mkdtempSync(path.join(tmpdir(), 'cloudgate-dynconfig-'));
    const server = await startDevServer({ dbFile: path.join(dir, 't.sqlite') });
    try {
      const argv = readFileSync(`/proc/${server.process.pid}/cmdline`, 'utf8').split('\0');
      for (let i = 0; i < devServerDynamicConfigArgs().length; i += 2) {
        const setting = devServerDynamicConfigArgs()[i + 1];
        const at = argv.indexOf(setting);
        expect({ setting, flag: argv[at - 1] }).toEqual({ setting, flag: '--dynamic-config-value' });
      }
    } finally {
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});
