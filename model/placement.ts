/** Placement rules: which of a cloud's flavors serves a service's offering, and which cloud each new instance goes to. Pure. */
import type { Offering, PlacementStrategy } from './definition.js';

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

/**
 * Which cloud each of `n` new instances goes to (issue 12), given the service's clouds in
 * order of preference, its strategy, its live instances per cloud and the clouds that have
 * no room or keep failing (`blocked`). `fill`: all to the first cloud not blocked (it spills
 * to the next when that one refuses); `spread`: each to the unblocked cloud holding the
 * fewest, earlier clouds first on ties. Fewer than `n` (none) when every cloud is blocked.
 */
export function placeInstances(
  n: number,
  clouds: readonly string[],
  strategy: PlacementStrategy,
  live: ReadonlyMap<string, number>,
  blocked: ReadonlySet<string>,
): string[] {
  const open = clouds.filter((c) => !blocked.has(c));
  if (open.length === 0 || n <= 0) return [];
  if (strategy === 'fill') return Array.from({ length: n }, () => open[0]);
  const held = new Map(open.map((c) => [c, live.get(c) ?? 0]));
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    let best = open[0];
    for (const c of open) if (held.get(c)! < held.get(best)!) best = c;
    held.set(best, held.get(best)! + 1);
    out.push(best);
  }
  return out;
}

/** Failed creates in a row on one cloud (no success between) after which a service with other clouds moves on. */
export const MAX_CREATE_FAILURES_PER_CLOUD = 3;

/** How long a cloud that refused (no room) or kept failing is passed over, by how many times in a row it did (ms). */
export const CLOUD_RETRY_MS = [15_000, 30_000, 60_000, 120_000, 300_000];

/** The pause before a blocked cloud is tried again (`round` counts from 0). */
export const cloudRetryMs = (round: number, table: readonly number[] = CLOUD_RETRY_MS): number => table[Math.min(round, table.length - 1)];
