/** Placement rules: which of a cloud's flavors serves a service's offering. Pure. */
import type { Offering } from './definition.js';

/** A flavor as clouds list it (same shape as the adapter contract's CloudOffering). */
export interface Flavor extends Offering {
  id: string;
  name: string;
}

/**
 * The smallest flavor with cpus, memory and disk all at least what is wanted, or undefined
 * when none is big enough. "Smallest" orders by cpus, then memory, then disk, because cpus
 * are what quotas and bills are counted in.
 */
export function smallestFit(offerings: Flavor[], want: Offering): Flavor | undefined {
  let best: Flavor | undefined;
  for (const o of offerings) {
    if (o.cpus < want.cpus || o.memoryMiB < want.memoryMiB || o.diskGiB < want.diskGiB) continue;
    if (
      !best ||
      o.cpus < best.cpus ||
      (o.cpus === best.cpus && (o.memoryMiB < best.memoryMiB || (o.memoryMiB === best.memoryMiB && o.diskGiB < best.diskGiB)))
    ) {
      best = o;
    }
  }
  return best;
}
