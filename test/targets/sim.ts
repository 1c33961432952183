/** Contract target: the simulated cloud on a temporary SQLite file. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { CloudAdapter } from '../../clouds/contract.js';
import { createSimCloud, type SimCloudOptions } from '../../clouds/sim.js';
import type { Target } from './types.js';

export const simTarget: Target = {
  name: 'sim',
  async make() {
    const dir = mkdtempSync(path.join(tmpdir(), 'cloudgate-contract-sim-'));
    const base: SimCloudOptions = {
      file: path.join(dir, 'sim.sqlite'),
      bootMs: 150,
      readyDelayMs: 50,
      failureRate: 0,
      silentRate: 0,
      throttleRate: 0,
      seed: 'contract',
      tickMs: 20,
      phoneHome: async () => 204,
    };
    const opened: CloudAdapter[] = [];
    const open = (o: Partial<SimCloudOptions> = {}) => {
      const sim = createSimCloud({ ...base, ...o });
      sim.start();
      opened.push(sim);
      return sim;
    };
    return {
      adapter: open(),
      image: 'cernvm4-micro-2023.06',
      runningWithinMs: 5_000,
      reopen: async () => open(),
      throttled: async () => open({ throttleRate: 1 }),
      async cleanup() {
        for (const a of opened) await a.close?.();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};
