/**
 * Images: a definition names an image (`cernvm4-micro`); each cloud's registry entry maps
 * the names it offers to its own reference (a libvirt base volume or disk file, an EC2 AMI
 * id, a CloudStack template id, an OCCI os_tpl term). That map is the only source: a name
 * it does not hold is refused at submission (a 422, {@link imageErrors}) and by the adapter
 * (a permanent `InvalidRequest`), never passed to the cloud as it is. Lookups use own keys
 * only, so `constructor`, `__proto__` or `toString` are unknown names like any other.
 */
import type { ClusterDefinition } from './definition.js';

/**
 * How an image name in the registry is spelt: letters, digits, `.`, `_`, `-`, starting with
 * a letter or digit, at most 100 characters. No `/`, so a name can never read as a path or a
 * `pool/volume`, and no leading `_`, so `__proto__` can never be one.
 */
export const IMAGE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

/** Image name → the cloud's own reference for it. */
export type ImageMap = Readonly<Record<string, string>>;

/**
 * The image names and test images of `npm start`'s simulated cloud, the README walkthrough,
 * the benchmarks and the test suites. The sim keeps the reference with each instance; it
 * boots nothing, so the reference is the name.
 */
export const DEFAULT_SIM_IMAGE_NAMES = ['cernvm', 'cernvm4', 'cernvm4-micro', 'cernvm4-micro-2020.07', 'cernvm4-micro-2023.06'] as const;
export const DEFAULT_SIM_IMAGES: ImageMap = Object.freeze(Object.fromEntries(DEFAULT_SIM_IMAGE_NAMES.map((n) => [n, n])));

/** The cloud's reference for `name`, if the map holds it as its own key; never an inherited property. */
export function imageRef(images: ImageMap, name: string): string | undefined {
  if (!Object.hasOwn(images, name)) return undefined;
  const ref: unknown = images[name];
  return typeof ref === 'string' && ref !== '' ? ref : undefined;
}

/** The names a map offers, sorted (what the store registers and `GET /v1/clouds` shows). */
export const imageNames = (images: ImageMap): string[] => Object.keys(images).sort();

/** `a, b, c`, or `none` for a cloud that offers no image. */
export const listImages = (names: readonly string[]): string => (names.length > 0 ? names.join(', ') : 'none');

/** What the submission check needs of a registered cloud. */
export interface ImageOffer {
  name: string;
  /** The image names its registry entry maps; absent (a registration from before images were registered) offers none. */
  images?: readonly string[];
}

/** One refused service image, shaped like the API's field errors. */
export interface ImageError {
  /** `definition.services[<i>].image`: the definition is stored, the request names it by id. */
  field: string;
  /** RFC 6901 pointer to the same field (`/definition/services/<i>/image`); set for services with a `placement`. */
  pointer?: string;
  message: string;
}

/**
 * Each service whose image is not one its cloud's registry entry names: the service, the
 * image, the cloud and the images it offers. Compared as whole strings against a `Set`, so
 * no name is ever looked up as an object property or read as a path.
 *
 * A service without `placement` is checked against `cloud` (the cluster's; not at all when
 * that is unregistered, `undefined`: the submission reports that itself); one with a
 * placement against every cloud it names that `lookup` knows (an unregistered one is the
 * submission's own error too), one error per cloud lacking the image, with a pointer.
 */
export function imageErrors(
  definition: Pick<ClusterDefinition, 'services'>,
  cloud: ImageOffer | undefined,
  lookup: (name: string) => ImageOffer | undefined = (name) => (name === cloud?.name ? cloud : undefined),
): ImageError[] {
  return definition.services.flatMap((s, i) => {
    const targets = (s.placement ? s.placement.clouds.map(lookup) : [cloud]).filter((c): c is ImageOffer => c !== undefined);
    return targets.flatMap((c) => {
      const offered = [...(c.images ?? [])].sort();
      if (new Set(offered).has(s.image)) return [];
      return [
        {
          field: `definition.services[${i}].image`,
          ...(s.placement && { pointer: `/definition/services/${i}/image` }),
          message: `service "${s.name}": image ${JSON.stringify(s.image)} is not offered by cloud "${c.name}" (its images: ${listImages(offered)})`,
        },
      ];
    });
  });
}
