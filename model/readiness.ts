/**
 * What a guest's readiness report means for its instance. A guest is ready only when it says
 * so and every CVMFS repository of its context probed OK; anything else names the repository
 * and the probe's output, so the operator sees why the instance is being replaced.
 */

/** The parts of a phone-home report the verdict reads (see model/user-data.ts's agent). */
export interface ReadinessClaim {
  status: 'ok' | 'failed';
  checks?: Record<string, unknown>;
}

export type ReadinessVerdict = { ready: true } | { ready: false; reason: string };

/** How much of one repository's probe output a reason quotes. */
const OUTPUT_CHARS = 200;
const REASON_CHARS = 600;

const stringRecord = (v: unknown): Record<string, unknown> => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {});

const clip = (s: string, n: number): string => (s.length > n ? `${s.slice(0, n - 3)}...` : s);

/**
 * The part of a report {@link judgeReadiness} can read, whatever the repositories: what a
 * workflow is sent. A guest that says ok is judged by its repositories' results alone, and a
 * probe's output is quoted only for a repository that did not probe OK; so of an ok report
 * only `checks.cvmfs` and the outputs of repositories not "OK" are kept. A failed report is
 * kept whole (its reason may quote any of it). The outputs of probes that passed ("Probing
 * /cvmfs/<repo>... OK") were about half of each report, and so of the signals carrying them
 * into the service's history: with three repositories a report is 190 bytes instead of 366.
 */
export function verdictInput(claim: ReadinessClaim): ReadinessClaim {
  if (claim.status !== 'ok' || claim.checks === undefined) return claim;
  const { cvmfs, output } = claim.checks;
  const results = stringRecord(cvmfs);
  const notOk = Object.entries(stringRecord(output)).filter(([repo]) => results[repo] !== 'OK');
  return {
    status: 'ok',
    checks: {
      ...(cvmfs !== undefined && { cvmfs }),
      ...(notOk.length > 0 && { output: Object.fromEntries(notOk) }),
    },
  };
}

/**
 * Judges one report against the repositories the instance's context requires. The guest
 * agent reports `checks.cvmfs[<repo>]` as "OK" or "FAILED" and the probe's output in
 * `checks.output[<repo>]`; a required repository it did not report counts as failed.
 */
export function judgeReadiness(claim: ReadinessClaim, repositories: readonly string[]): ReadinessVerdict {
  const cvmfs = stringRecord(claim.checks?.cvmfs);
  const output = stringRecord(claim.checks?.output);
  const bad = repositories.filter((r) => cvmfs[r] !== 'OK');
  if (claim.status === 'ok' && bad.length === 0) return { ready: true };
  if (bad.length > 0) {
    const each = bad.map((r) => {
      const result = typeof cvmfs[r] === 'string' ? (cvmfs[r] as string) : 'not reported';
      const out = typeof output[r] === 'string' ? (output[r] as string).replace(/\s+/g, ' ').trim() : '';
      return `${r} ${result}${out ? ` (${clip(out, OUTPUT_CHARS)})` : ''}`;
    });
    return { ready: false, reason: clip(`CVMFS probe failed: ${each.join('; ')}`, REASON_CHARS) };
  }
  const details = claim.checks ? JSON.stringify(claim.checks) : 'no details';
  return { ready: false, reason: clip(`guest reported failed: ${details}`, REASON_CHARS) };
}
