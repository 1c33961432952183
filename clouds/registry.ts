/**
 * The clouds a worker knows, by name, and flavor matching shared by adapters that map a
 * definition's {@link Offering} onto the provider's fixed flavors.
 */
import { imageNames, imageRef, listImages, type ImageMap } from '../model/images.js';
import { CloudError, type CloudAdapter } from './contract.js';

/** Looks adapters up by the name cluster definitions and activities use. */
export interface CloudRegistry {
  /** Throws `CloudError('NotFound')` naming the known clouds when `name` is not one of them. */
  get(name: string): CloudAdapter;
  list(): CloudAdapter[];
  /** Closes every adapter that has a `close()`; all are attempted even if one fails. */
  close(): Promise<void>;
}

/** Builds a registry; two adapters with one name is a wiring bug, so it throws. */
export function createCloudRegistry(adapters: CloudAdapter[]): CloudRegistry {
  const byName = new Map<string, CloudAdapter>();
  for (const a of adapters) {
    if (byName.has(a.name)) throw new Error(`cloud registry: two adapters named "${a.name}"`);
    byName.set(a.name, a);
  }
  return {
    get(name) {
      const a = byName.get(name);
      if (!a) {
        const known = [...byName.keys()].map((n) => `"${n}"`).join(', ') || '(none)';
        throw new CloudError('NotFound', `unknown cloud "${name}"; known clouds: ${known}`);
      }
      return a;
    },
    list: () => [...byName.values()],
    async close() {
      const results = await Promise.allSettled([...byName.values()].map((a) => a.close?.()));
      const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed.length > 0) {
        throw new AggregateError(
          failed.map((f) => f.reason),
          `cloud registry: ${failed.length} adapter(s) failed to close`,
        );
      }
    },
  };
}

/**
 * The cloud's own reference for a definition's image name, from the registry entry's
 * `images` only (own keys: `constructor` or `__proto__` are unknown names). Anything else is
 * a permanent `InvalidRequest` naming the images the cloud offers: an adapter never sends a
 * name it does not know to the cloud, and never reads one as a path, volume or id.
 */
export function requireImage(cloud: string, images: ImageMap, image: string): string {
  const ref = imageRef(images, image);
  if (ref === undefined) {
    throw new CloudError('InvalidRequest', `${cloud}: image ${JSON.stringify(image)} is not one of this cloud's images (${listImages(imageNames(images))})`);
  }
  return ref;
}

/** Flavor matching is a placement rule of the domain; re-exported for adapters. */
export { smallestFit } from '../model/placement.js';
