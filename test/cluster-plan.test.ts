/** The cluster workflow's decisions (model/cluster-plan.ts), as pure functions. */
import { describe, expect, it } from '@jest/globals';
import { clusterVerdict, cvmfsChecks, startableServices } from '../model/cluster-plan.js';
import { ClusterDefinitionSchema } from '../model/definition.js';
import type { ServiceBrief, ServiceState } from '../model/status.js';

const offering = { cpus: 1, memoryMiB: 1024, diskGiB: 10 };
const def = ClusterDefinitionSchema.parse({
  name: 'three',
  services: [
    { name: 'proxy', image: 'cernvm', offering, min: 1 },
    { name: 'head', image: 'cernvm', offering, min: 1, dependsOn: ['proxy'] },
    { name: 'workers', image: 'cernvm', offering, min: 2, dependsOn: ['head', 'proxy'] },
  ],
});
const states = (m: Record<string, ServiceState>) => (name: string) => m[name];

describe('startableServices', () => {
  it('starts services without dependencies first, then those whose dependencies all reached their minimum', () => {
    const waiting = { proxy: 'WAITING', head: 'WAITING', workers: 'WAITING' } as const;
    expect(startableServices(def.services, states(waiting), new Set()).map((s) => s.name)).toEqual(['proxy']);
    const proxyUp = { proxy: 'READY', head: 'WAITING', workers: 'WAITING' } as const;
    expect(startableServices(def.services, states(proxyUp), new Set(['proxy'])).map((s) => s.name)).toEqual(['head']);
    const headUp = { proxy: 'DEGRADED', head: 'DEPLOYING', workers: 'WAITING' } as const;
    expect(startableServices(def.services, states(headUp), new Set(['proxy', 'head'])).map((s) => s.name)).toEqual(['workers']);
  });
  it('never starts a service twice', () => {
    const started = { proxy: 'DEPLOYING', head: 'WAITING', workers: 'WAITING' } as const;
    expect(startableServices(def.services, states(started), new Set()).map((s) => s.name)).toEqual([]);
  });
});

describe('clusterVerdict', () => {
  const svc = (name: string, state: ServiceState, message?: string): ServiceBrief => ({ name, state, desired: 1, ready: 0, replacements: 0, ...(message && { message }) });
  it('READY when every service is', () => {
    expect(clusterVerdict([svc('a', 'READY'), svc('b', 'READY')], 'keep', false)).toEqual({ rollback: false, state: 'READY' });
  });
  it('DEPLOYING while services wait or deploy, DEGRADED while one replaces lost instances', () => {
    expect(clusterVerdict([svc('a', 'READY'), svc('b', 'WAITING')], 'keep', false)).toEqual({ rollback: false, state: 'DEPLOYING' });
    expect(clusterVerdict([svc('a', 'DEGRADED'), svc('b', 'DEPLOYING')], 'keep', true)).toEqual({ rollback: false, state: 'DEGRADED' });
  });
  it('under keep: a failed service makes the cluster DEGRADED if anything is or was up, FAILED if not, naming it', () => {
    expect(clusterVerdict([svc('a', 'READY'), svc('b', 'FAILED', 'b-0: boom')], 'keep', false)).toEqual({
      rollback: false,
      state: 'DEGRADED',
      message: 'service b failed (retrying, policy keep): b-0: boom',
    });
    expect(clusterVerdict([svc('a', 'DEPLOYING'), svc('b', 'FAILED')], 'keep', true)).toMatchObject({ state: 'DEGRADED' });
    expect(clusterVerdict([svc('a', 'DEPLOYING'), svc('b', 'FAILED')], 'keep', false)).toMatchObject({ state: 'FAILED' });
  });
  it('under rollback: a failed service tears the cluster down, with the reason', () => {
    expect(clusterVerdict([svc('a', 'READY'), svc('b', 'FAILED', 'b-0: boom')], 'rollback', true)).toEqual({
      rollback: true,
      reason: 'rolled back: service b failed: b-0: boom',
    });
  });
});

describe('cvmfsChecks', () => {
  it('one check per distinct repository, server list and pin', () => {
    const servers = ['http://s1.example.org/cvmfs/@fqrn@'];
    expect(
      cvmfsChecks({
        a: { id: 'ctx-a', version: 1, repositories: ['alice.cern.ch', 'sft.cern.ch'] },
        b: { id: 'ctx-b', version: 2, repositories: ['sft.cern.ch'] },
        c: { id: 'ctx-c', version: 1, repositories: ['sft.cern.ch'], servers, minRevision: { 'sft.cern.ch': 7 } },
      }),
    ).toEqual([{ repo: 'alice.cern.ch' }, { repo: 'sft.cern.ch' }, { repo: 'sft.cern.ch', servers, minRevision: 7 }]);
    expect(cvmfsChecks(undefined)).toEqual([]);
  });
});
