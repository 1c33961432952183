/**
 * Contract target: the libvirt adapter on libvirt's test hypervisor, in this process
 * (`test:///default`, no daemon). "Reopen" is a new adapter object in the same process,
 * which reads everything back from the hypervisor; the cross-process case (a private
 * libvirtd) is in libvirt-adapter.test.ts.
 */
import type { CloudAdapter } from '../../clouds/contract.js';
import { createLibvirtCloud } from '../../clouds/libvirt.js';
import { startLibvirtPeer } from '../peers/libvirt.js';
import type { Target } from './types.js';

export const libvirtTarget: Target = {
  name: 'libvirt',
  async make() {
    const peer = await startLibvirtPeer({ daemon: false });
    const opened: CloudAdapter[] = [];
    const open = () => {
      const a = createLibvirtCloud(peer.cloudConfig);
      opened.push(a);
      return a;
    };
    return {
      adapter: open(),
      image: 'cernvm4-micro-2023.06',
      runningWithinMs: 5_000,
      reopen: async () => open(),
      async cleanup() {
        for (const a of opened) await a.close?.();
        await peer.stop();
      },
    };
  },
};
