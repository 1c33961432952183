/**
 * The CloudStack test peers: the CloudStack API FAKE (test/fakes/cloudstack-fake.ts) in this
 * process, since no CloudStack (nor its simulator) runs here, and a server of answers recorded
 * from real CloudStack clouds (test/fakes/cloudstack-recorded.ts); each with a cloud config that
 * references its key pair through environment variables, as a deployment would.
 */
import { randomBytes } from 'node:crypto';
import { CloudStackCloudConfigSchema, type CloudStackCloudConfig } from '../../model/clouds-config.js';
import { FAKE_TEMPLATES, FAKE_ZONE_ID, startCloudStackFake, type CloudStackFake, type CloudStackFakeOptions } from '../fakes/cloudstack-fake.js';
import { startRecordedCloudStack, type RecordedAnswer, type RecordedCloudStack } from '../fakes/cloudstack-recorded.js';

/** Where the cloud config says the keys are; `env` holds their values. */
export const CLOUDSTACK_KEY_ENV = 'CLOUDGATE_TEST_CS_KEY';
export const CLOUDSTACK_SECRET_ENV = 'CLOUDGATE_TEST_CS_SECRET';

export interface CloudStackPeer {
  /** A cloud named `cloudstack` on the fake. */
  cloudConfig: CloudStackCloudConfig;
  /** The key pair, by the environment variable names the config references. */
  env: Record<string, string>;
  /** The fake itself, to throttle, fail or inspect. */
  fake: CloudStackFake;
  /** Live VMs tagged with the cluster. */
  count(clusterId: string): Promise<number>;
  /** The user-data of the cluster's live VMs, decoded, as a guest reads it from the metadata service. */
  userData(clusterId: string): Promise<string[]>;
  stop(): Promise<void>;
}

/** Fake timings; by default jobs take effect at once and VMs run after 300 ms. */
export type CloudStackPeerOptions = Omit<CloudStackFakeOptions, 'apiKey' | 'secretKey'>;

const LATEST = FAKE_TEMPLATES['CernVM 4 micro 2023.06'];

export async function startCloudStackPeer(opts: CloudStackPeerOptions = {}): Promise<CloudStackPeer> {
  const apiKey = randomBytes(32).toString('base64url');
  const secretKey = randomBytes(32).toString('base64url');
  const fake = await startCloudStackFake({ asyncJobDelayMs: 0, runningAfterMs: 300, ...opts, apiKey, secretKey });
  const cloudConfig = CloudStackCloudConfigSchema.parse({
    name: 'cloudstack',
    kind: 'cloudstack',
    endpoint: fake.endpoint,
    zoneId: FAKE_ZONE_ID,
    credentials: { apiKey: { env: CLOUDSTACK_KEY_ENV }, secretKey: { env: CLOUDSTACK_SECRET_ENV } },
    images: {
      'cernvm4-micro': LATEST,
      'cernvm4-micro-2020.07': FAKE_TEMPLATES['CernVM 4 micro 2020.07'],
      'cernvm4-micro-2023.06': LATEST,
      cernvm: LATEST,
    },
  });
  const live = (clusterId: string) =>
    fake
      .vms()
      .filter((vm) => !vm.removed && vm.state !== 'Destroyed' && vm.state !== 'Expunging')
      .filter((vm) => vm.tags.some((t) => t.key === 'cloudgate:cluster' && t.value === clusterId));
  return {
    cloudConfig,
    env: { [CLOUDSTACK_KEY_ENV]: apiKey, [CLOUDSTACK_SECRET_ENV]: secretKey },
    fake,
    count: async (clusterId) => live(clusterId).length,
    userData: async (clusterId) => live(clusterId).map((vm) => Buffer.from(vm.userdata ?? '', 'base64').toString('utf8')),
    stop: () => fake.stop(),
  };
}

export interface RecordedCloudStackPeer {
  /** A cloud named `cloudstack-recorded` on the server, in the recorded answers' zone (`1`) with their template (`421`) as `cernvm4-micro`. */
  cloudConfig: CloudStackCloudConfig;
  /** The key pair, under environment variable names of this peer's own (so peers never share them). */
  env: Record<string, string>;
  /** The server, to change answers or read the requests. */
  server: RecordedCloudStack;
  stop(): Promise<void>;
}

let recordedPeers = 0;

/** The CloudStack adapter's peer made of real CloudStack answers, served verbatim (test/fakes/cloudstack-recorded.ts). */
export async function startRecordedCloudStackPeer(answers: Record<string, RecordedAnswer> = {}): Promise<RecordedCloudStackPeer> {
  const apiKey = randomBytes(32).toString('base64url');
  const secretKey = randomBytes(32).toString('base64url');
  const server = await startRecordedCloudStack({ apiKey, secretKey, answers });
  const n = ++recordedPeers;
  const keyEnv = `CLOUDGATE_TEST_CS_RECORDED${n}_KEY`;
  const secretEnv = `CLOUDGATE_TEST_CS_RECORDED${n}_SECRET`;
  const cloudConfig = CloudStackCloudConfigSchema.parse({
    name: 'cloudstack-recorded',
    kind: 'cloudstack',
    endpoint: server.endpoint,
    zoneId: '1',
    credentials: { apiKey: { env: keyEnv }, secretKey: { env: secretEnv } },
    images: { 'cernvm4-micro': '421' },
  });
  return { cloudConfig, env: { [keyEnv]: apiKey, [secretEnv]: secretKey }, server, stop: () => server.stop() };
}
