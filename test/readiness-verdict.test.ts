/**
 * What a phone-home report means for its instance: ready only when the guest says ok and
 * every repository of its context probed OK; otherwise a reason naming the repository and
 * the probe's output (shown in the status and the Temporal UI while the instance is replaced).
 */
import { describe, expect, it } from '@jest/globals';
import { judgeReadiness } from '../model/readiness.js';

const REPOS = ['alice.cern.ch', 'sft.cern.ch'];

describe('judgeReadiness', () => {
  it('is ready when the guest says ok and every repository probed OK', () => {
    expect(judgeReadiness({ status: 'ok', checks: { cvmfs: { 'alice.cern.ch': 'OK', 'sft.cern.ch': 'OK' } } }, REPOS)).toEqual({ ready: true });
  });

  it('is ready on a plain ok when the service has no context (no repositories)', () => {
    expect(judgeReadiness({ status: 'ok' }, [])).toEqual({ ready: true });
  });

  it('names each failed repository with its probe output', () => {
    const v = judgeReadiness(
      {
        status: 'failed',
        checks: {
          cvmfs: { 'alice.cern.ch': 'OK', 'sft.cern.ch': 'FAILED' },
          output: { 'alice.cern.ch': 'Probing /cvmfs/alice.cern.ch... OK', 'sft.cern.ch': 'Probing /cvmfs/sft.cern.ch...\nFailed!' },
        },
      },
      REPOS,
    );
    expect(v).toEqual({ ready: false, reason: 'CVMFS probe failed: sft.cern.ch FAILED (Probing /cvmfs/sft.cern.ch... Failed!)' });
  });

  it('does not take "ok" for an answer when a required repository is missing from the report', () => {
    const v = judgeReadiness({ status: 'ok', checks: { cvmfs: { 'alice.cern.ch': 'OK' } } }, REPOS);
    expect(v).toEqual({ ready: false, reason: 'CVMFS probe failed: sft.cern.ch not reported' });
    expect(judgeReadiness({ status: 'ok', checks: { cvmfs: 'OK' } }, ['sft.cern.ch'])).toEqual({
      ready: false,
      reason: 'CVMFS probe failed: sft.cern.ch not reported',
    });
  });

  it('keeps a failed report without repository details readable and bounded', () => {
    expect(judgeReadiness({ status: 'failed', checks: { message: 'disk full' } }, [])).toEqual({
      ready: false,
      reason: 'guest reported failed: {"message":"disk full"}',
    });
    expect(judgeReadiness({ status: 'failed' }, [])).toEqual({ ready: false, reason: 'guest reported failed: no details' });
    const long = judgeReadiness({ status: 'failed', checks: { cvmfs: { 'sft.cern.ch': 'FAILED' }, output: { 'sft.cern.ch': 'x'.repeat(5000) } } }, ['sft.cern.ch']);
    expect(long.ready).toBe(false);
    expect(!long.ready && long.reason.length).toBeLessThanOrEqual(600);
  });
});
