/**
 * The CloudStack adapter against answers RECORDED from real CloudStack clouds (Apache Libcloud's
 * recordings, Marvin's, the developer guide's), served verbatim by
 * test/fakes/cloudstack-recorded.ts, through the adapter's contract and its `jobStatus`. The
 * material is read in place from ../shared/peer-data/cloudstack (see its SOURCES.txt); the
 * signing vectors there are tested in cloudstack-adapter.test.ts.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { createCloudStackCloud, type CloudStackCloud } from '../clouds/cloudstack.js';
import type { InstanceSpec } from '../clouds/contract.js';
import { cloudErrorOf } from './cloud-assertions.js';
import type { RecordedAnswer } from './fakes/cloudstack-recorded.js';
import { startRecordedCloudStackPeer, type RecordedCloudStackPeer } from './peers/cloudstack.js';

describe('CloudStack adapter on answers recorded from real CloudStack', () => {
  const peers: RecordedCloudStackPeer[] = [];

  /** A server answering each command with a recorded file, and the adapter on it. */
  const on = async (answers: Record<string, RecordedAnswer>): Promise<{ peer: RecordedCloudStackPeer; cs: CloudStackCloud }> => {
    const peer = await startRecordedCloudStackPeer(answers);
    peers.push(peer);
    Object.assign(process.env, peer.env);
    return { peer, cs: createCloudStackCloud(peer.cloudConfig) };
  };
  const sent = (peer: RecordedCloudStackPeer, command: string) => peer.server.requests().filter((r) => r.command === command);

  const spec = (key: string): InstanceSpec => ({
    name: key,
    image: 'cernvm4-micro',
    offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 },
    userData: '#cloud-config\n{}\n',
    tags: { cluster: 'rec-c', service: 'svc', key },
  });

  afterAll(async () => {
    await Promise.all(peers.map((p) => p.stop()));
    for (const p of peers) for (const name of Object.keys(p.env)) delete process.env[name];
  });

  it('checks signatures: a wrong secret is refused with CloudStack’s 401', async () => {
    const { peer } = await on({ listServiceOfferings: 'libcloud-listServiceOfferings_default.json' });
    const name = Object.keys(peer.env).find((k) => k.endsWith('_SECRET'))!;
    process.env[`${name}_WRONG`] = 'not-the-secret';
    const wrong = createCloudStackCloud({ ...peer.cloudConfig, credentials: { ...peer.cloudConfig.credentials, secretKey: { env: `${name}_WRONG` } } });
    const err = await cloudErrorOf(wrong.listOfferings());
    delete process.env[`${name}_WRONG`];
    expect(err.kind).toBe('InvalidCredentials');
    expect(peer.server.requests()).toHaveLength(0);
  });

  it('reads the sizes of real service offerings, with numeric ids as strings', async () => {
    const { cs } = await on({ listServiceOfferings: 'libcloud-listServiceOfferings_default.json' });
    const offerings = await cs.listOfferings();
    expect(offerings).toEqual([
      { id: '105', name: 'Compute Micro PRD', cpus: 1, memoryMiB: 384, diskGiB: 1024 },
      { id: '70', name: 'Compute XLarge PRD', cpus: 8, memoryMiB: 13928, diskGiB: 1024 },
      { id: '69', name: 'Compute Large PRD', cpus: 4, memoryMiB: 6964, diskGiB: 1024 },
      { id: '68', name: 'Compute Medium PRD', cpus: 2, memoryMiB: 3484, diskGiB: 1024 },
      { id: '67', name: 'Compute Small PRD', cpus: 1, memoryMiB: 1744, diskGiB: 1024 },
    ]);

    const other = await on({ listServiceOfferings: 'libcloud-listServiceOfferings_rootdisksize.json' });
    expect((await other.cs.listOfferings()).map((o) => [o.id, o.name, o.cpus, o.memoryMiB])).toEqual([
      ['21', 'M4', 2, 4096],
      ['24', 'XS', 1, 512],
      ['30', 'S2', 1, 2048],
    ]);
  });

  it('describes a VM an older CloudStack lists with a numeric id, by its id as a string', async () => {
    const { cs, peer } = await on({ listVirtualMachines: 'libcloud-listVirtualMachines_default.json' });
    const vm = await cs.describeInstance('2601');
    expect(vm).toMatchObject({ id: '2601', name: 'test', state: 'PENDING', idempotencyKey: 'test', tags: {} });
    expect(vm.extra).toMatchObject({ jobId: '17147', zoneId: '1', templateId: '421', serviceOfferingId: '105', ipAddress: '1.1.1.203', cloudStackState: 'Starting' });
    expect(sent(peer, 'listVirtualMachines')[0].params).toMatchObject({ id: '2601', listall: 'true' });

    const running = await cs.describeInstance('2600');
    expect(running).toMatchObject({ id: '2600', state: 'RUNNING', createdAt: '2011-06-23T05:06:42.000Z' });
    // A VM the list does not hold is still NotFound.
    expect((await cloudErrorOf(cs.describeInstance('2602'))).kind).toBe('NotFound');
  });

  it('finds the earliest live VM with the key, and lists none that cloudgate did not tag', async () => {
    const { cs } = await on({ listVirtualMachines: 'libcloud-listVirtualMachines_default.json' });
    const found = await cs.findInstance('test');
    expect(found).toMatchObject({ id: '2600', state: 'RUNNING', idempotencyKey: 'test' });
    expect(await cs.findInstance('someone-else')).toBeUndefined();
    // Both VMs carry tags, but not cloudgate's: they are not any cluster's.
    expect(await cs.listInstances({})).toEqual([]);
    expect(await cs.listInstances({ cluster: 'rec-c' })).toEqual([]);
  });

  it('reads a VM with a NIC that has no IP address', async () => {
    const { cs } = await on({ listVirtualMachines: 'libcloud-listVirtualMachines_noipaddress.json' });
    const vm = await cs.describeInstance('2600');
    expect(vm).toMatchObject({ id: '2600', state: 'RUNNING' });
    expect(vm.extra?.ipAddress).toBe('1.1.1.116');
    expect((await cs.describeInstance('2601')).extra?.ipAddress).toBe('1.1.1.203');
  });

  it('deploys with a real offering’s id and tags the VM the deploy answer names', async () => {
    const { cs, peer } = await on({
      listVirtualMachines: 'libcloud-listVirtualMachines_default.json',
      listServiceOfferings: 'libcloud-listServiceOfferings_default.json',
      deployVirtualMachine: 'libcloud-deployVirtualMachine_deploysecuritygroup.json',
      createTags: 'libcloud-createTags_default.json',
    });
    const s = spec('rec-c-svc-0');
    const created = await cs.createInstance(s, s.tags.key);
    expect(created).toMatchObject({ id: 'fc4fd31a-16d3-49db-814a-56b39b9ef986', state: 'PENDING', idempotencyKey: s.tags.key, tags: s.tags });
    expect(created.extra?.jobId).toBe('11115');
    const [deploy] = sent(peer, 'deployVirtualMachine');
    // The smallest real offering with 1 cpu and 1 GiB: "Compute Small PRD", id 67.
    expect(deploy).toMatchObject({ method: 'POST', params: { serviceofferingid: '67', templateid: '421', zoneid: '1', name: s.tags.key } });
    expect(sent(peer, 'createTags')[0].params).toMatchObject({ resourceids: 'fc4fd31a-16d3-49db-814a-56b39b9ef986', 'tags[0].key': 'cloudgate:cluster' });
  });

  it('fails a deploy CloudStack refuses with its reason, and tags nothing', async () => {
    for (const status of [431, 200]) {
      const { cs, peer } = await on({
        listVirtualMachines: 'libcloud-listVirtualMachines_default.json',
        listServiceOfferings: 'libcloud-listServiceOfferings_default.json',
        deployVirtualMachine: { file: 'libcloud-deployVirtualMachine_deployfail.json', status },
      });
      const s = spec('rec-c-svc-1');
      const err = await cloudErrorOf(cs.createInstance(s, s.tags.key));
      expect([status, err.kind]).toEqual([status, 'InvalidRequest']);
      expect(err.message).toContain('Unable to find service offering: 104');
      expect(err.message).toContain('cloudstack-recorded');
      expect(sent(peer, 'createTags')).toHaveLength(0);
    }
  });

  it('terminates a VM with a numeric job id in the destroy answer', async () => {
    const { cs, peer } = await on({ destroyVirtualMachine: 'libcloud-destroyVirtualMachine_default.json' });
    await cs.terminateInstance('2601');
    expect(sent(peer, 'destroyVirtualMachine')[0].params).toMatchObject({ id: '2601', expunge: 'true' });
  });

  describe('async jobs', () => {
    it('reads a pending job', async () => {
      const { cs } = await on({ queryAsyncJobResult: 'docs-queryAsyncJobResult-pending.json' });
      expect(await cs.jobStatus('1')).toEqual({ jobId: '1', status: 'pending' });
    });

    it('reads the deployed VM out of a finished deploy job', async () => {
      const { cs } = await on({ queryAsyncJobResult: 'marvin-queryAsyncJobResult-deployvm.json' });
      const done = await cs.jobStatus('f4a13f28-fcd6-4d7f-b9cd-ba7eb5a5701f');
      expect(done.status).toBe('succeeded');
      if (done.status !== 'succeeded') return;
      expect(done.instance).toMatchObject({ id: 'd2e4d724-e089-4e59-be8e-647674059016', name: 'i-2-14-TEST', state: 'RUNNING' });
      expect(done.instance?.extra?.ipAddress).toBe('10.6.253.89');
      expect(done.result.virtualmachine).toMatchObject({ id: 'd2e4d724-e089-4e59-be8e-647674059016' });

      const other = await on({ queryAsyncJobResult: 'libcloud-queryAsyncJobResult_11117.json' });
      const libcloud = await other.cs.jobStatus('e23b9f0c-b7ae-4ffe-aea0-c9cf436cc315');
      expect(libcloud).toMatchObject({ status: 'succeeded', instance: { id: '19253fbf-abb7-4013-a8a1-97df3b93f206', name: 'TestNode', state: 'RUNNING', createdAt: '2014-03-06T21:39:44.000Z' } });
    });

    it('keeps the reason of a failed job whose result is an object, with the kind of its error code', async () => {
      const { cs } = await on({ queryAsyncJobResult: 'marvin-queryAsyncJobResult-failed.json' });
      const failed = await cs.jobStatus('34');
      expect(failed.status).toBe('failed');
      if (failed.status !== 'failed') return;
      expect(failed.error.kind).toBe('InvalidRequest');
      expect(failed.error.message).toContain('Please provide either a volume id, or a tuple(device id, instance id)');
    });

    it('keeps the reason of a failed job whose result is text (the developer guide’s example)', async () => {
      const { cs } = await on({ queryAsyncJobResult: 'docs-queryAsyncJobResult-failed-text.json' });
      const failed = await cs.jobStatus('1');
      expect(failed.status).toBe('failed');
      if (failed.status !== 'failed') return;
      expect(failed.error.message).toContain('Unable to deploy virtual machine id = 100 due to not enough capacity');
      expect(failed.error.message).toContain('551');
      // 551: older releases' VM_INSUFFICIENT_CAPACITY.
      expect(failed.error.kind).toBe('CapacityExhausted');
    });

    it('calls a failed job that says nothing about why an UnreadableAnswer, not a retryable error', async () => {
      const { cs } = await on({ queryAsyncJobResult: 'libcloud-queryAsyncJobResult_17177.json' });
      const failed = await cs.jobStatus('17177');
      expect(failed.status).toBe('failed');
      if (failed.status !== 'failed') return;
      expect(failed.error.kind).toBe('UnreadableAnswer');
      for (const part of ['cloudstack-recorded', 'queryAsyncJobResult', '17177', 'jobresult']) expect(failed.error.message).toContain(part);
    });

    it("reads Marvin's missing-jobid error as a request error, and never sends an empty job id", async () => {
      const { cs, peer } = await on({ queryAsyncJobResult: 'marvin-missing-jobid-error.json' });
      const err = await cloudErrorOf(cs.jobStatus('17177'));
      expect(err.kind).toBe('InvalidRequest');
      expect(err.message).toContain('due to missing parameter jobid');
      const before = peer.server.requests().length;
      expect((await cloudErrorOf(cs.jobStatus(''))).kind).toBe('InvalidRequest');
      expect(peer.server.requests()).toHaveLength(before);
    });
  });

  describe('answers the adapter cannot read', () => {
    it('an answer under another command’s key is UnreadableAnswer, never an empty list (a create then deploys nothing)', async () => {
      // The real empty-list answer of listSecurityGroups, where listVirtualMachines was asked.
      const { cs, peer } = await on({
        listVirtualMachines: 'libcloud-listSecurityGroups_no_groups.json',
        listServiceOfferings: 'libcloud-listServiceOfferings_default.json',
        deployVirtualMachine: 'libcloud-deployVirtualMachine_deploysecuritygroup.json',
        createTags: 'libcloud-createTags_default.json',
      });
      const err = await cloudErrorOf(cs.findInstance('test'));
      expect(err.kind).toBe('UnreadableAnswer');
      for (const part of ['cloudstack-recorded', 'listVirtualMachines', 'listvirtualmachinesresponse']) expect(err.message).toContain(part);
      const s = spec('rec-c-svc-2');
      expect((await cloudErrorOf(cs.createInstance(s, s.tags.key))).kind).toBe('UnreadableAnswer');
      expect(sent(peer, 'deployVirtualMachine')).toHaveLength(0);
    });

    it('a 200 answer that is not JSON is UnreadableAnswer naming the command', async () => {
      // Not a recording: what a login proxy in front of the API answers.
      const { cs } = await on({ listServiceOfferings: { text: '<html><body>Please log in</body></html>' } });
      const err = await cloudErrorOf(cs.listOfferings());
      expect(err.kind).toBe('UnreadableAnswer');
      for (const part of ['cloudstack-recorded', 'listServiceOfferings', 'not JSON', 'Please log in']) expect(err.message).toContain(part);
    });

    it('a deploy answer without the VM’s id is UnreadableAnswer when no VM has the key', async () => {
      // The real destroy answer (`{"jobid":17166}` under its own key) has no VM id; served here under the deploy's key.
      const { cs, peer } = await on({
        listVirtualMachines: 'libcloud-listVirtualMachines_default.json',
        listServiceOfferings: 'libcloud-listServiceOfferings_default.json',
        deployVirtualMachine: { text: '{ "deployvirtualmachineresponse" : {"jobid":17166} }', contentType: 'application/json' },
      });
      const s = spec('rec-c-svc-3');
      const err = await cloudErrorOf(cs.createInstance(s, s.tags.key));
      expect(err.kind).toBe('UnreadableAnswer');
      for (const part of ['cloudstack-recorded', 'deployVirtualMachine', 'id']) expect(err.message).toContain(part);
      expect(sent(peer, 'createTags')).toHaveLength(0);
    });
  });
});
