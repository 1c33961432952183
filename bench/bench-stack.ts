/**
 * What every benchmark starts with: a private data folder, a Temporal dev server whose warnings
 * of payloads and histories over its limits (512 KB blobs: "blob size") are counted, and a
 * config pointing at both.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigSchema, type Config } from '../model/config.js';
import { freePort, startDevServer, type DevServer } from '../workers/dev-server.js';

export interface BenchStack {
  dataDir: string;
  temporal: DevServer;
  config: Config;
  /** The server's size warnings so far. */
  sizeWarnings(): number;
}

export async function startBenchStack(name: string, sim: Partial<Config['sim']>): Promise<BenchStack> {
  const dataDir = mkdtempSync(path.join(os.tmpdir(), `cloudgate-${name}-`));
  let warnings = 0;
  const temporal = await startDevServer({
    dbFile: path.join(dataDir, 'temporal.sqlite'),
    onOutput: (text) => {
      for (const line of text.split('\n')) if (/blob size|history size|history count/i.test(line)) warnings++;
    },
  });
  const config = ConfigSchema.parse({
    dataDir,
    apiPort: await freePort(),
    temporalAddress: temporal.address,
    tokenSecret: 'bench-secret-0123456789abcdef',
    logLevel: 'warn',
    sim: { seed: name, ...sim },
  });
  return { dataDir, temporal, config, sizeWarnings: () => warnings };
}
