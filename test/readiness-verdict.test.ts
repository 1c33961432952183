/**
 * What a phone-home report means for its instance: ready only when the guest says ok and
 * every repository of its context probed OK; otherwise a reason naming the repository and
 * the probe's output (shown in the status and the Temporal UI while the instance is replaced).
 */
import { describe, expect, it } from '@jest/globals';
import { judgeReadiness, verdictInput, type ReadinessClaim } from '../model/readiness.js';

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

  it('is the same on what a workflow is sent: an ok report without the output of the probes that passed', () => {
    const probe = (repo: string, ok: boolean) => `Probing /cvmfs/${repo}... ${ok ? 'OK' : 'Failed!'}`;
    const claims: ReadinessClaim[] = [
      { status: 'ok' },
      { status: 'ok', checks: {} },
      { status: 'ok', checks: { cvmfs: 'OK', output: 'text' } },
      { status: 'ok', checks: { cvmfs: { 'alice.cern.ch': 'OK', 'sft.cern.ch': 'OK' }, output: { 'alice.cern.ch': probe('alice.cern.ch', true), 'sft.cern.ch': probe('sft.cern.ch', true) } } },
      { status: 'ok', checks: { cvmfs: { 'alice.cern.ch': 'OK', 'sft.cern.ch': 'FAILED' }, output: { 'alice.cern.ch': probe('alice.cern.ch', true), 'sft.cern.ch': probe('sft.cern.ch', false) } } },
      { status: 'ok', checks: { cvmfs: { 'alice.cern.ch': 'OK' }, output: { 'alice.cern.ch': probe('alice.cern.ch', true), 'sft.cern.ch': 'not mounted' }, load: [1, 2, 3] } },
      { status: 'failed', checks: { cvmfs: { 'alice.cern.ch': 'OK', 'sft.cern.ch': 'OK' }, output: { 'alice.cern.ch': probe('alice.cern.ch', true) }, message: 'disk full' } },
      { status: 'failed' },
    ];
    for (const claim of claims) {
      for (const repos of [[], ['alice.cern.ch'], REPOS, ['atlas.cern.ch']]) {
        expect(judgeReadiness(verdictInput(claim), repos)).toEqual(judgeReadiness(claim, repos));
      }
    }
    // What is left out: the passing probes' output and, of an ok report, what no verdict reads; a failed report stays whole.
    expect(verdictInput(claims[4])).toEqual({ status: 'ok', checks: { cvmfs: { 'alice.cern.ch': 'OK', 'sft.cern.ch': 'FAILED' }, output: { 'sft.cern.ch': probe('sft.cern.ch', false) } } });
    expect(verdictInput(claims[3])).toEqual({ status: 'ok', checks: { cvmfs: { 'alice.cern.ch': 'OK', 'sft.cern.ch': 'OK' } } });
    expect(verdictInput(claims[5])).toEqual({ status: 'ok', checks: { cvmfs: { 'alice.cern.ch': 'OK' }, output: { 'sft.cern.ch': 'not mounted' } } });
    expect(verdictInput(claims[6])).toBe(claims[6]);
  });
});
