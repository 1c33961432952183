/**
 * Contract target: the CloudStack adapter against the CloudStack API FAKE (no CloudStack runs
 * here; see test/fakes/cloudstack-fake.ts). The fake's jobs take effect at once, so the suite's
 * list-right-after-create sees tags; the window real CloudStack has is tested in
 * cloudstack-adapter.test.ts.
 */
import { createCloudStackCloud } from '../../clouds/cloudstack.js';
import type { CloudAdapter } from '../../clouds/contract.js';
import { startCloudStackPeer } from '../peers/cloudstack.js';
import type { Target } from './types.js';

export const cloudstackTarget: Target = {
  name: 'cloudstack',
  async make() {
    const peer = await startCloudStackPeer({ asyncJobDelayMs: 0, runningAfterMs: 150 });
    const saved = Object.fromEntries(Object.keys(peer.env).map((k) => [k, process.env[k]]));
    Object.assign(process.env, peer.env);
    const open = (): CloudAdapter => createCloudStackCloud(peer.cloudConfig);
    return {
      adapter: open(),
      image: 'cernvm4-micro-2023.06',
      runningWithinMs: 5_000,
      reopen: async () => open(),
      // CloudStack limits API calls per account; the adapter's first call (its look-up by key) gets the 429.
      throttled: async () => {
        peer.fake.throttleNext(1);
        return open();
      },
      async cleanup() {
        await peer.stop();
        for (const [k, v] of Object.entries(saved)) {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        }
      },
    };
  },
};
