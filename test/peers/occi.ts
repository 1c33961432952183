/**
 * The OCCI peer for end-to-end suites: the OCCI FAKE (test/fakes/occi-fake.ts; no OCCI
 * server is maintained any more) with a random bearer token, and the cloud registry entry
 * that reaches it. The token is referenced by an environment variable, as in production.
 */
import { randomBytes } from 'node:crypto';
import { TAG_ATTRIBUTES } from '../../clouds/occi.js';
import { OcciCloudConfigSchema, type OcciCloudConfig } from '../../model/clouds-config.js';
import { FAKE_OS_TPL_SCHEME, startOcciFake, type OcciFake, type OcciFakeOptions } from '../fakes/occi-fake.js';

/** The environment variable the peer's cloud config reads the token from. */
export const OCCI_TOKEN_ENV = 'CLOUDGATE_TEST_OCCI_TOKEN';

/** Image names used in definitions → the fake's os_tpl mixins (by term, or scheme+term). */
export const OCCI_FAKE_IMAGES: Record<string, string> = {
  'cernvm4-micro': 'ucernvm4-2023.06',
  'cernvm4-micro-2020.07': 'ucernvm4-2020.07',
  'cernvm4-micro-2023.06': 'ucernvm4-2023.06',
  cernvm: `${FAKE_OS_TPL_SCHEME}ucernvm4-2023.06`,
};

export interface OcciPeer {
  /** The registry entry, named `occi`. */
  cloudConfig: OcciCloudConfig;
  /** Environment the worker needs: the token, under {@link OCCI_TOKEN_ENV}. */
  env: Record<string, string>;
  /** Live computes tagged with the cluster. */
  count(clusterId: string): Promise<number>;
  /** The decoded user-data of the cluster's live computes, as their guests would read it. */
  userData(clusterId: string): Promise<string[]>;
  /** The fake itself, for tests that inject throttling or inspect requests. */
  fake: OcciFake;
  stop(): Promise<void>;
}

/**
 * Starts the fake with a fresh token; `activeAfterMs` defaults to 300 ms. The other options
 * (e.g. which contextualization mixin the fake offers) go to the fake as they are.
 */
export async function startOcciPeer(opts: Omit<OcciFakeOptions, 'token'> = {}): Promise<OcciPeer> {
  const token = randomBytes(24).toString('base64url');
  const fake = await startOcciFake({ activeAfterMs: 300, ...opts, token });
  const cloudConfig = OcciCloudConfigSchema.parse({
    name: 'occi',
    kind: 'occi',
    endpoint: fake.endpoint,
    credentials: { token: { env: OCCI_TOKEN_ENV } },
    images: OCCI_FAKE_IMAGES,
  });
  const ofCluster = (clusterId: string) => fake.computes().filter((c) => c.attributes[TAG_ATTRIBUTES.cluster] === clusterId);
  return {
    cloudConfig,
    env: { [OCCI_TOKEN_ENV]: token },
    count: async (clusterId) => ofCluster(clusterId).length,
    userData: async (clusterId) =>
      ofCluster(clusterId).flatMap((c) => {
        // OCCI 1.2's attribute or OpenStack's, whichever mixin the fake offered; both base64.
        const ud = c.attributes['occi.compute.userdata'] ?? c.attributes['org.openstack.compute.user_data'];
        return typeof ud === 'string' ? [Buffer.from(ud, 'base64').toString('utf8')] : [];
      }),
    fake,
    stop: () => fake.stop(),
  };
}
