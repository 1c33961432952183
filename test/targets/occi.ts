/**
 * Contract target: the OCCI adapter against the OCCI FAKE (no OCCI server is maintained
 * any more; see test/fakes/occi-fake.ts), with a bearer token read from the environment.
 */
import type { CloudAdapter } from '../../clouds/contract.js';
import { createOcciCloud } from '../../clouds/occi.js';
import { startOcciPeer } from '../peers/occi.js';
import type { Target } from './types.js';

export const occiTarget: Target = {
  name: 'occi',
  async make() {
    const peer = await startOcciPeer({ activeAfterMs: 150 });
    const saved = Object.fromEntries(Object.keys(peer.env).map((k) => [k, process.env[k]]));
    Object.assign(process.env, peer.env);
    const opened: CloudAdapter[] = [];
    const open = () => {
      const a = createOcciCloud(peer.cloudConfig);
      opened.push(a);
      return a;
    };
    return {
      adapter: open(),
      image: 'cernvm4-micro-2023.06',
      runningWithinMs: 5_000,
      reopen: async () => open(),
      // The fake throttles on request: the create's first call is answered 429.
      throttled: async () => {
        const a = open();
        return {
          ...a,
          createInstance: (spec, key) => {
            peer.fake.throttleNext(1);
            return a.createInstance(spec, key);
          },
        };
      },
      async cleanup() {
        for (const a of opened) await a.close?.();
        await peer.stop();
        for (const [k, v] of Object.entries(saved)) {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        }
      },
    };
  },
};
