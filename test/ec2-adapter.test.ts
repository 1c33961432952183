/**
 * What the EC2 adapter does beyond the shared contract: user-data limits and round trip,
 * tags, root volume, client tokens, racing creates, credentials, and the mapping of EC2
 * error codes onto cloud error kinds. Against a real moto server where moto can show it;
 * against a fake endpoint (test/targets/ec2.ts) only to prove that no call was made or to
 * send an error moto never sends.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  DescribeImagesCommand,
  DescribeInstanceAttributeCommand,
  DescribeInstancesCommand,
  DescribeVolumesCommand,
  EC2ServiceException,
  StopInstancesCommand,
  type Instance,
} from '@aws-sdk/client-ec2';
import { CloudError, type CloudAdapter } from '../clouds/contract.js';
import { createEc2Cloud, EC2_INSTANCE_TYPES, EC2_USER_DATA_MAX_BYTES, toCloudError } from '../clouds/ec2.js';
import type { Ec2CloudConfig } from '../model/clouds-config.js';
import { MOTO_KEY_ENV, startMotoPeer, type MotoPeer } from './peers/moto.js';
import { startFakeEc2 } from './targets/ec2.js';
import { cloudErrorOf, instanceSpecs } from './cloud-assertions.js';


/** A proxy to `target` that holds each request whose body contains `marker` for `ms` before passing it on. */
async function startHoldingProxy(target: string, marker: string, ms: number) {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const pass = () => {
        const out = http.request(`${target}${req.url}`, { method: req.method, headers: req.headers }, (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        });
        out.on('error', () => res.writeHead(502).end());
        out.end(body);
      };
      if (body.includes(marker)) setTimeout(pass, ms);
      else pass();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

const run = `ec2t${Date.now().toString(36)}`;
const spec = instanceSpecs(run);

describe('EC2 adapter on moto', () => {
  let peer: MotoPeer;
  let ec2: CloudAdapter;
  const raw = async (id: string): Promise<Instance> => {
    const res = await peer.client.send(new DescribeInstancesCommand({ InstanceIds: [id] }));
    return res.Reservations![0].Instances![0];
  };

  beforeAll(async () => {
    peer = await startMotoPeer();
    Object.assign(process.env, peer.env);
    ec2 = createEc2Cloud(peer.cloudConfig);
  });
  afterAll(async () => {
    await ec2?.close?.();
    await peer?.stop();
  });

  it('lists the table\'s types with sizes from DescribeInstanceTypes', async () => {
    const offerings = await ec2.listOfferings();
    expect(offerings.map((o) => o.id)).toEqual(EC2_INSTANCE_TYPES.map((o) => o.id));
    expect(offerings.find((o) => o.id === 'm5.4xlarge')).toMatchObject({ cpus: 16, memoryMiB: 65536 });
  });

  it('round-trips user-data byte for byte, up to the 16 KB limit', async () => {
    const text = '#cloud-config\nwrite_files:\n  - content: "héllo ✓"\n';
    const userData = text + 'x'.repeat(EC2_USER_DATA_MAX_BYTES - Buffer.byteLength(text));
    const s = spec({ userData });
    const created = await ec2.createInstance(s, s.tags.key);
    const attr = await peer.client.send(new DescribeInstanceAttributeCommand({ InstanceId: created.id, Attribute: 'userData' }));
    expect(Buffer.from(attr.UserData!.Value!, 'base64').toString('utf8')).toBe(userData);
    expect(await peer.userData(s.tags.cluster)).toContain(userData);
  });

  it('tags the instance and its root volume, sized as asked and deleted with the instance', async () => {
    const s = spec({ offering: { cpus: 1, memoryMiB: 1024, diskGiB: 30 } });
    const created = await ec2.createInstance(s, s.tags.key);
    expect(created.tags).toEqual(s.tags);
    expect(created.extra).toMatchObject({ instanceType: 't3.micro', imageId: peer.cloudConfig.images['cernvm4-micro'] });

    const inst = await raw(created.id);
    expect(inst.Tags).toEqual(
      expect.arrayContaining([
        { Key: 'Name', Value: s.name },
        { Key: 'cloudgate:cluster', Value: s.tags.cluster },
        { Key: 'cloudgate:service', Value: 'svc' },
        { Key: 'cloudgate:key', Value: s.tags.key },
      ]),
    );
    expect(inst.BlockDeviceMappings).toEqual([expect.objectContaining({ DeviceName: inst.RootDeviceName, Ebs: expect.objectContaining({ DeleteOnTermination: true }) })]);
    const vols = await peer.client.send(new DescribeVolumesCommand({ Filters: [{ Name: 'attachment.instance-id', Values: [created.id] }] }));
    expect(vols.Volumes).toHaveLength(1);
    expect(vols.Volumes![0]).toMatchObject({ Size: 30, VolumeType: 'gp3' });
    expect(vols.Volumes![0].Tags).toEqual(expect.arrayContaining([{ Key: 'cloudgate:cluster', Value: s.tags.cluster }]));
  });

  it('never asks for a root volume smaller than the image', async () => {
    const s = spec({ offering: { cpus: 1, memoryMiB: 1024, diskGiB: 1 } });
    const created = await ec2.createInstance(s, s.tags.key);
    const vols = await peer.client.send(new DescribeVolumesCommand({ Filters: [{ Name: 'attachment.instance-id', Values: [created.id] }] }));
    const img = (await peer.client.send(new DescribeImagesCommand({ ImageIds: [peer.cloudConfig.images['cernvm4-micro']] }))).Images![0];
    const snapshotGiB = img.BlockDeviceMappings!.find((m) => m.DeviceName === img.RootDeviceName)!.Ebs!.VolumeSize!;
    expect(snapshotGiB).toBeGreaterThan(1);
    expect(vols.Volumes![0].Size).toBe(snapshotGiB);
  });

  it('sends a key longer than 64 characters as a SHA-256 client token', async () => {
    const cluster = `${run}-${'long'.repeat(20)}`;
    const s = spec({}, cluster);
    const created = await ec2.createInstance(s, s.tags.key);
    expect((await raw(created.id)).ClientToken).toMatch(/^[0-9a-f]{64}$/);
    expect((await ec2.createInstance(s, s.tags.key)).id).toBe(created.id);
    expect(created.idempotencyKey).toBe(s.tags.key);
  });

  it('leaves exactly one live instance when creates with one key race, across two adapters', async () => {
    const other = createEc2Cloud(peer.cloudConfig);
    try {
      const cluster = `${run}-race`;
      const s = spec({}, cluster);
      const made = await Promise.all([ec2, other, ec2, other].map((a) => a.createInstance(s, s.tags.key)));
      expect(new Set(made.map((i) => i.id)).size).toBe(1);
      expect(await peer.count(cluster)).toBe(1);
      expect((await other.findInstance(s.tags.key))?.id).toBe(made[0].id);
      const all = await peer.client.send(new DescribeInstancesCommand({ Filters: [{ Name: 'tag:cloudgate:key', Values: [s.tags.key] }] }));
      const states = all.Reservations!.flatMap((r) => r.Instances!.map((i) => i.State!.Name));
      // The race really happened (moto ignores ClientToken), and the extras were terminated.
      expect(states.length).toBeGreaterThan(1);
      expect(states.filter((st) => st === 'pending' || st === 'running')).toHaveLength(1);
    } finally {
      await other.close?.();
    }
  });

  it('agrees on one survivor when a racer launched in the same second is listed after the first one settled', async () => {
    // moto gives LaunchTime to the second and ids at random, so a racer launched later in the
    // same second sorts first half the time. A proxy holds `late`'s RunInstances 500 ms, and
    // each round starts just after a second begins: before the fix, `late` killed the instance
    // `ec2` had already returned in about half the rounds.
    const hold = await startHoldingProxy(peer.endpoint, 'Action=RunInstances', 500);
    const late = createEc2Cloud({ ...peer.cloudConfig, endpoint: hold.endpoint });
    try {
      await late.listOfferings();
      for (let round = 0; round < 4; round++) {
        const cluster = `${run}-late${round}`;
        const s = spec({}, cluster);
        await new Promise((r) => setTimeout(r, 1020 - (Date.now() % 1000)));
        const made = await Promise.all([ec2, late].map((a) => a.createInstance(s, s.tags.key)));
        expect(made[1].id).toBe(made[0].id);
        expect(await peer.count(cluster)).toBe(1);
        expect((await ec2.findInstance(s.tags.key))?.id).toBe(made[0].id);
      }
    } finally {
      await late.close?.();
      await hold.close();
    }
  });

  it('reports a stopped instance as STOPPED', async () => {
    const s = spec();
    const created = await ec2.createInstance(s, s.tags.key);
    await peer.client.send(new StopInstancesCommand({ InstanceIds: [created.id] }));
    expect((await ec2.describeInstance(created.id)).state).toBe('STOPPED');
    // Still live: a stopped instance keeps its key and counts for teardown.
    expect((await ec2.findInstance(s.tags.key))?.id).toBe(created.id);
  });

  it('rejects an offering no type fits, naming it and the largest type', async () => {
    const s = spec({ offering: { cpus: 200, memoryMiB: 1024, diskGiB: 10 } });
    const err = await cloudErrorOf(ec2.createInstance(s, s.tags.key));
    expect(err.kind).toBe('InvalidOffering');
    expect(err.message).toContain('200 cpus');
    expect(err.message).toMatch(/largest: (m5|r5)\.24xlarge/);
  });

  it('rejects an unknown image name, a raw AMI id and a mapped AMI that is gone as InvalidRequest, making nothing', async () => {
    const a = spec({ image: 'no-such-image' });
    const err = await cloudErrorOf(ec2.createInstance(a, a.tags.key));
    expect(err.kind).toBe('InvalidRequest');
    expect(err.message).toContain('"no-such-image"');
    expect(err.message).toContain('cernvm4-micro');

    // An AMI id is not an image name, even the one a name maps to: only the registry says what boots.
    const raw = spec({ image: peer.cloudConfig.images['cernvm4-micro'] });
    expect((await cloudErrorOf(ec2.createInstance(raw, raw.tags.key))).message).toContain("is not one of this cloud's images");
    expect(await ec2.findInstance(raw.tags.key)).toBeUndefined();

    // A registry entry whose AMI no longer exists: EC2 says so, permanently.
    const stale = createEc2Cloud({ ...peer.cloudConfig, images: { ...peer.cloudConfig.images, retired: 'ami-00000000' } });
    try {
      const b = spec({ image: 'retired' });
      const err2 = await cloudErrorOf(stale.createInstance(b, b.tags.key));
      expect(err2.kind).toBe('InvalidRequest');
      expect(err2.message).toContain('InvalidAMIID.NotFound');
      expect(await ec2.findInstance(b.tags.key)).toBeUndefined();
    } finally {
      await stale.close?.();
    }
  });

  it('reads credentials only when called, and names a missing variable without any secret', async () => {
    const missing = 'CLOUDGATE_TEST_EC2_UNSET_SECRET';
    delete process.env[missing];
    const cfg: Ec2CloudConfig = { ...peer.cloudConfig, credentials: { ...peer.cloudConfig.credentials, secretAccessKey: { env: missing } } };
    process.env[MOTO_KEY_ENV] = 'AKIASHOULDNOTLEAK0001';
    const adapter = createEc2Cloud(cfg); // must not throw: nothing is read yet
    try {
      const err = await cloudErrorOf(adapter.listOfferings());
      expect(err.kind).toBe('InvalidCredentials');
      expect(err.message).toContain(missing);
      expect(err.message).not.toContain('AKIASHOULDNOTLEAK0001');
      // Set it, and the same adapter works: a failed read is not remembered.
      process.env[missing] = 'now-set';
      expect((await adapter.listOfferings()).length).toBeGreaterThan(0);
    } finally {
      process.env[MOTO_KEY_ENV] = peer.env[MOTO_KEY_ENV];
      delete process.env[missing];
      await adapter.close?.();
    }
  });
});

describe('EC2 adapter on moto checking signatures', () => {
  let peer: MotoPeer;
  beforeAll(async () => {
    peer = await startMotoPeer({ enforceAuth: true });
  });
  afterAll(async () => {
    await peer?.stop();
  });

  it('maps AuthFailure to InvalidCredentials without echoing the keys', async () => {
    const keyEnv = 'CLOUDGATE_TEST_EC2_AUTH_KEY';
    const secretEnv = 'CLOUDGATE_TEST_EC2_AUTH_SECRET';
    process.env[keyEnv] = 'AKIAUNKNOWNTOMOTO001';
    process.env[secretEnv] = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYSHOULDNOTLEAK';
    const adapter = createEc2Cloud({ ...peer.cloudConfig, credentials: { accessKeyId: { env: keyEnv }, secretAccessKey: { env: secretEnv } } });
    try {
      const err = await cloudErrorOf(adapter.describeInstance('i-0123456789abcdef0'));
      expect(err.kind).toBe('InvalidCredentials');
      expect(err.message).toContain('AuthFailure');
      expect(err.message).not.toContain(process.env[keyEnv]);
      expect(err.message).not.toContain(process.env[secretEnv]);
    } finally {
      await adapter.close?.();
      delete process.env[keyEnv];
      delete process.env[secretEnv];
    }
  });
});

describe('EC2 adapter before and without EC2', () => {
  const cfgFor = (endpoint: string): Ec2CloudConfig => ({
    name: 'ec2-fake',
    kind: 'ec2',
    region: 'us-east-1',
    endpoint,
    credentials: { accessKeyId: { env: 'CLOUDGATE_TEST_EC2_FAKE_KEY' }, secretAccessKey: { env: 'CLOUDGATE_TEST_EC2_FAKE_SECRET' } },
    images: { 'cernvm4-micro': 'ami-12345678' },
  });
  beforeAll(() => {
    process.env.CLOUDGATE_TEST_EC2_FAKE_KEY = 'fake';
    process.env.CLOUDGATE_TEST_EC2_FAKE_SECRET = 'fake';
  });

  it('rejects user-data over 16 KB before any call, naming the cloud and the size', async () => {
    const fake = await startFakeEc2();
    const adapter = createEc2Cloud(cfgFor(fake.endpoint));
    try {
      const s = spec({ userData: 'x'.repeat(EC2_USER_DATA_MAX_BYTES + 1) });
      const err = await cloudErrorOf(adapter.createInstance(s, s.tags.key));
      expect(err.kind).toBe('InvalidRequest');
      expect(err.message).toContain('ec2-fake');
      expect(err.message).toContain(String(EC2_USER_DATA_MAX_BYTES + 1));
      expect(fake.requests()).toBe(0);
      // Multi-byte characters count as the bytes they take: 5462 × 3 bytes > 16 KB.
      const wide = spec({ userData: '✓'.repeat(5462) });
      expect((await cloudErrorOf(adapter.createInstance(wide, wide.tags.key))).kind).toBe('InvalidRequest');
      expect(fake.requests()).toBe(0);
      // Exactly 16 KB passes the check and goes on to the (throttling) endpoint.
      const max = spec({ userData: 'x'.repeat(EC2_USER_DATA_MAX_BYTES) });
      expect((await cloudErrorOf(adapter.createInstance(max, max.tags.key))).kind).toBe('Throttled');
      expect(fake.requests()).toBeGreaterThan(0);
    } finally {
      await adapter.close?.();
      await fake.close();
    }
  });

  it('refuses an image the registry does not map before any call: raw AMI ids, inherited keys, paths', async () => {
    const fake = await startFakeEc2();
    const adapter = createEc2Cloud({ ...cfgFor(fake.endpoint), images: { 'cernvm4-micro': 'ami-12345678', 'not-an-ami': 'template-1' } });
    try {
      for (const image of ['ami-12345678', 'constructor', '__proto__', 'toString', '/etc/shadow', '../x', 'sl6']) {
        const s = spec({ image });
        const err = await cloudErrorOf(adapter.createInstance(s, s.tags.key));
        expect([err.kind, err.message]).toEqual([
          'InvalidRequest',
          `ec2-fake: image ${JSON.stringify(image)} is not one of this cloud's images (cernvm4-micro, not-an-ami)`,
        ]);
      }
      // A mapping that is not an AMI id is an operator's mistake, refused as well.
      const s = spec({ image: 'not-an-ami' });
      expect((await cloudErrorOf(adapter.createInstance(s, s.tags.key))).message).toContain('which is not an AMI id');
      expect(fake.requests()).toBe(0);
    } finally {
      await adapter.close?.();
      await fake.close();
    }
  });

  it('falls back to its own table where DescribeInstanceTypes is missing', async () => {
    const fake = await startFakeEc2('InvalidAction', 400, 'The action DescribeInstanceTypes is not valid for this web service.');
    const adapter = createEc2Cloud(cfgFor(fake.endpoint));
    try {
      expect(await adapter.listOfferings()).toEqual(EC2_INSTANCE_TYPES);
    } finally {
      await adapter.close?.();
      await fake.close();
    }
  });

  it('surfaces a refused connection as Transient', async () => {
    const fake = await startFakeEc2();
    const endpoint = fake.endpoint;
    await fake.close(); // nothing listens there any more
    const adapter = createEc2Cloud(cfgFor(endpoint));
    try {
      const err = await cloudErrorOf(adapter.describeInstance('i-0123456789abcdef0'));
      expect(err.kind).toBe('Transient');
      expect(err.message).toContain('ECONNREFUSED');
    } finally {
      await adapter.close?.();
    }
  });
});

describe('toCloudError', () => {
  const sdkError = (code: string, status: number) =>
    new EC2ServiceException({
      name: code,
      $fault: status >= 500 ? 'server' : 'client',
      $metadata: { httpStatusCode: status },
      message: `message for ${code}`,
    });

  it.each([
    ['RequestLimitExceeded', 503, 'Throttled'],
    ['Throttling', 400, 'Throttled'],
    ['InsufficientInstanceCapacity', 500, 'CapacityExhausted'],
    ['InstanceLimitExceeded', 400, 'QuotaExceeded'],
    ['VcpuLimitExceeded', 400, 'QuotaExceeded'],
    ['AuthFailure', 401, 'InvalidCredentials'],
    ['UnauthorizedOperation', 403, 'InvalidCredentials'],
    ['InvalidClientTokenId', 403, 'InvalidCredentials'],
    ['SignatureDoesNotMatch', 403, 'InvalidCredentials'],
    ['InvalidAMIID.NotFound', 400, 'InvalidRequest'],
    ['InvalidAMIID.Malformed', 400, 'InvalidRequest'],
    ['InvalidParameterValue', 400, 'InvalidRequest'],
    ['InvalidParameterCombination', 400, 'InvalidRequest'],
    ['InvalidInstanceID.NotFound', 400, 'NotFound'],
    ['InvalidInstanceID.Malformed', 400, 'NotFound'],
    ['IdempotentParameterMismatch', 400, 'Transient'],
    ['InternalError', 500, 'Transient'],
    ['SomethingNewOnTheServer', 503, 'Transient'],
    ['SomethingNewInTheRequest', 400, 'InvalidRequest'],
  ])('%s (HTTP %i) → %s', (code, status, kind) => {
    const original = sdkError(code, status);
    const err = toCloudError(original, 'ec2: create "x"');
    expect(err).toBeInstanceOf(CloudError);
    expect(err.kind).toBe(kind);
    expect(err.message).toBe(`ec2: create "x": ${code}: message for ${code}`);
    expect(err.cause).toBe(original);
  });

  it.each([
    ['ECONNREFUSED', Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' })],
    ['ECONNRESET', Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' })],
    ['TimeoutError', Object.assign(new Error('Connection timed out after 5000 ms'), { name: 'TimeoutError' })],
  ])('network failure %s → Transient', (code, original) => {
    const err = toCloudError(original, 'ec2: describe i-1');
    expect(err.kind).toBe('Transient');
    expect(err.message).toContain(code);
    expect(err.cause).toBe(original);
  });

  it('keeps the kind of a CloudError (a missing secret) and adds the context', () => {
    const original = new CloudError('InvalidCredentials', 'EC2 secret access key: environment variable X is not set');
    const err = toCloudError(original, 'ec2: list instance types');
    expect(err.kind).toBe('InvalidCredentials');
    expect(err.message).toBe('ec2: list instance types: EC2 secret access key: environment variable X is not set');
  });
});
