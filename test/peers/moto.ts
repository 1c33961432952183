/**
 * A real moto server (PyPI `moto[server]`, the AWS mock) on a free local port: the EC2
 * peer of the contract suite, the EC2 adapter tests and the end-to-end suites. Each peer
 * is its own process, so its state starts empty and dies with it.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DescribeImagesCommand,
  DescribeInstanceAttributeCommand,
  EC2Client,
  paginateDescribeInstances,
  type Instance,
} from '@aws-sdk/client-ec2';
import type { Ec2CloudConfig } from '../../model/clouds-config.js';
import { freePort } from '../../workers/dev-server.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Environment variables the peer's cloud config refers to for its credentials. */
export const MOTO_KEY_ENV = 'CLOUDGATE_TEST_EC2_KEY';
export const MOTO_SECRET_ENV = 'CLOUDGATE_TEST_EC2_SECRET';

/** Image names the test definitions use; each maps to one Linux AMI moto ships. */
export const MOTO_IMAGE_NAMES = ['cernvm4-micro', 'cernvm4-micro-2020.07', 'cernvm4-micro-2023.06', 'cernvm', 'cernvm4'];

export interface MotoPeer {
  /** `http://127.0.0.1:<port>`. */
  endpoint: string;
  /** Cloud `ec2` on this server; credentials refer to {@link MOTO_KEY_ENV} / {@link MOTO_SECRET_ENV}. */
  cloudConfig: Ec2CloudConfig;
  /** Values for those variables (moto accepts any). The caller puts them into the environment. */
  env: Record<string, string>;
  /** Live (not shutting-down or terminated) instances tagged with the cluster. */
  count(clusterId: string): Promise<number>;
  /** The user-data of the cluster's live instances, decoded, as their guests would read it. */
  userData(clusterId: string): Promise<string[]>;
  /** A client of this server with the peer's credentials, for checks the adapter does not offer. */
  client: EC2Client;
  stop(): Promise<void>;
}

export interface MotoPeerOptions {
  /**
   * Make moto check signatures against its own IAM (`INITIAL_NO_AUTH_ACTION_COUNT=0`).
   * No key is registered there, so every call fails with a real `AuthFailure`; the peer
   * then maps no images and `count`/`userData` fail too. For credential-error tests.
   */
  enforceAuth?: boolean;
}

/** `$MOTO_SERVER`, else `moto_server` on PATH, else the one `scripts/setup.mjs` put in `.venv`. */
export function findMotoServer(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MOTO_SERVER) return env.MOTO_SERVER;
  for (const dir of (env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, 'moto_server');
    if (dir && existsSync(p)) return p;
  }
  const venv = path.join(ROOT, '.venv', 'bin', 'moto_server');
  if (existsSync(venv)) return venv;
  throw new Error('no moto server found: set MOTO_SERVER, put `moto_server` on PATH, or run `node scripts/setup.mjs`');
}

/** Starts a moto server and waits until it answers. */
export async function startMotoPeer(opts: MotoPeerOptions = {}): Promise<MotoPeer> {
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const child = spawn(findMotoServer(), ['-H', '127.0.0.1', '-p', String(port)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...(opts.enforceAuth && { INITIAL_NO_AUTH_ACTION_COUNT: '0' }) },
  });
  let output = '';
  const keep = (b: Buffer) => {
    // moto logs every request; the start-up lines are what explain a failed start.
    if (output.length < 20_000) output += b.toString();
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  // A binary that cannot be started emits 'error' and never 'exit'.
  let spawnError: Error | undefined;
  child.once('error', (err) => (spawnError = err));

  const stopProcess = async () => {
    if (spawnError || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  };

  const deadline = Date.now() + 60_000;
  for (;;) {
    if (spawnError) throw new Error(`cannot start the moto server: ${spawnError.message}`, { cause: spawnError });
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`moto server exited while starting: ${output.slice(-2000)}`);
    const up = await fetch(`${endpoint}/moto-api/`).then(
      (r) => r.ok,
      () => false,
    );
    if (up) break;
    if (Date.now() > deadline) {
      await stopProcess();
      throw new Error(`moto server on ${endpoint} did not answer within 60 s: ${output.slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  const env = { [MOTO_KEY_ENV]: 'testing', [MOTO_SECRET_ENV]: 'testing' };
  const client = new EC2Client({
    region: 'us-east-1',
    endpoint,
    credentials: { accessKeyId: env[MOTO_KEY_ENV], secretAccessKey: env[MOTO_SECRET_ENV] },
  });

  const images: Record<string, string> = {};
  if (!opts.enforceAuth) {
    try {
      const ami = await linuxAmi(client);
      for (const n of MOTO_IMAGE_NAMES) images[n] = ami;
    } catch (err) {
      client.destroy();
      await stopProcess();
      throw err;
    }
  }

  const liveOf = async (clusterId: string): Promise<Instance[]> => {
    const found: Instance[] = [];
    const filters = [
      { Name: 'tag:cloudgate:cluster', Values: [clusterId] },
      { Name: 'instance-state-name', Values: ['pending', 'running', 'stopping', 'stopped'] },
    ];
    for await (const page of paginateDescribeInstances({ client }, { Filters: filters })) {
      for (const r of page.Reservations ?? []) found.push(...(r.Instances ?? []));
    }
    return found;
  };

  return {
    endpoint,
    cloudConfig: {
      name: 'ec2',
      kind: 'ec2',
      region: 'us-east-1',
      endpoint,
      credentials: { accessKeyId: { env: MOTO_KEY_ENV }, secretAccessKey: { env: MOTO_SECRET_ENV } },
      images,
    },
    env,
    client,
    count: async (clusterId) => (await liveOf(clusterId)).length,
    async userData(clusterId) {
      const docs = await Promise.all(
        (await liveOf(clusterId)).map(async (i) => {
          const res = await client.send(new DescribeInstanceAttributeCommand({ InstanceId: i.InstanceId, Attribute: 'userData' }));
          return Buffer.from(res.UserData?.Value ?? '', 'base64').toString('utf8');
        }),
      );
      return docs.filter((d) => d.length > 0);
    },
    async stop() {
      client.destroy();
      await stopProcess();
    },
  };
}

/** The first (by id) x86_64 EBS-backed non-Windows image moto ships: stands in for CernVM. */
async function linuxAmi(client: EC2Client): Promise<string> {
  const res = await client.send(
    new DescribeImagesCommand({
      Filters: [
        { Name: 'architecture', Values: ['x86_64'] },
        { Name: 'root-device-type', Values: ['ebs'] },
      ],
    }),
  );
  const ids = (res.Images ?? [])
    // The SDK types the value as `Windows`; moto sends `windows`.
    .filter((i) => String(i.Platform ?? '').toLowerCase() !== 'windows' && i.ImageId)
    .map((i) => i.ImageId!)
    .sort();
  if (ids.length === 0) throw new Error('moto offers no x86_64 Linux image');
  return ids[0];
}
