/**
 * Pulled load (issue 13, `autoscale.loadUrl`): one GET of a URL a user named, answering
 * `{queued, running, idleInstances?}` as JSON. The URL comes from a definition, so the fetch
 * follows the gateway's outbound rules against SSRF (model/address-policy.ts), exactly as the
 * stratum-1 check does (activities/cvmfs.ts, whose guarded GET this uses): the URL's text is
 * judged, then every address its host resolves to at connect time, unless the operator allowed
 * the host (`CLOUDGATE_LOAD_ALLOWED_HOSTS`); no redirect is followed; the answer is read up to
 * {@link MAX_LOAD_ANSWER_BYTES} within a timeout. Whatever goes wrong is a sentence for the
 * cluster's events, never a thrown failure: the next poll is the retry. A connection that gave
 * no answer says only {@link NO_ANSWER} (the real cause goes to the operator's log), so a user
 * cannot map which hosts and ports answer — nor learn what an internal name resolves to.
 */
import type { AddressPolicy } from '../model/address-policy.js';
import { LoadReportSchema } from '../model/autoscale.js';
import type { PollLoadResult } from '../workflows/activity-types.js';
import { AnswerTooLargeError, guardedGet, NO_ANSWER, type Resolver } from './cvmfs.js';

/** A load answer is a few hundred bytes; this leaves room for a few thousand idle instances. */
export const MAX_LOAD_ANSWER_BYTES = 256 * 1024;
/** Per read (connect, headers and body). */
export const LOAD_TIMEOUT_MS = 10_000;

/** What a refused `loadUrl` is told: how an operator lets such a host through, and the other way to report. */
export const LOAD_ALLOW_HINT =
  'the gateway does not read from loopback, private, link-local, shared or unspecified addresses, nor from localhost; ' +
  'an operator can allow a host with CLOUDGATE_LOAD_ALLOWED_HOSTS, or the head node can push its load instead (POST /v1/clusters/{id}/services/{service}/load with its phone-home token)';

export interface FetchLoadOptions {
  policy: AddressPolicy;
  timeoutMs?: number;
  maxBytes?: number;
  /** Resolves host names at connect time (tests stub it); `dns.lookup` otherwise. */
  resolve?: Resolver;
  /** Told the real cause behind each {@link NO_ANSWER} (the operator's log only). */
  onNoAnswer?: (url: string, detail: string) => void;
  /** Keep only these instances of `idleInstances` (the service's own: `<cluster>-<service>-`). */
  idlePrefix?: string;
}

/** Reads one load answer from `url`; never throws. */
export async function fetchLoad(url: string, opts: FetchLoadOptions): Promise<PollLoadResult> {
  const refused = opts.policy.urlProblem(url);
  if (refused) return { ok: false, problem: `the URL ${refused}: ${LOAD_ALLOW_HINT}` };
  let answer: { status: number; body: Buffer };
  try {
    answer = await guardedGet(url, { policy: opts.policy, timeoutMs: opts.timeoutMs ?? LOAD_TIMEOUT_MS, maxBytes: opts.maxBytes ?? MAX_LOAD_ANSWER_BYTES, resolve: opts.resolve });
  } catch (err) {
    if (err instanceof AnswerTooLargeError) return { ok: false, problem: `the answer is larger than ${err.limit / 1024} KiB, not read further` };
    opts.onNoAnswer?.(url, err instanceof Error ? err.message : String(err));
    return { ok: false, problem: NO_ANSWER };
  }
  if (answer.status !== 200) {
    const redirect = answer.status >= 300 && answer.status < 400 ? ': a redirect, not followed (name the URL that answers)' : '';
    return { ok: false, problem: `it answered HTTP ${answer.status}${redirect}` };
  }
  let json: unknown;
  try {
    json = JSON.parse(answer.body.toString('utf8'));
  } catch {
    return { ok: false, problem: `the answer is not JSON (it starts ${JSON.stringify(answer.body.subarray(0, 40).toString('utf8'))}); answer {"queued": n, "running": n, "idleInstances": [...]}` };
  }
  const parsed = LoadReportSchema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.slice(0, 3).map((i) => `${i.path.length ? i.path.join('.') : 'the answer'}: ${i.message}`);
    return { ok: false, problem: `the answer is not a load report (${issues.join('; ')}); answer {"queued": n, "running": n, "idleInstances": [...]}` };
  }
  const load = parsed.data;
  const idle = load.idleInstances && opts.idlePrefix !== undefined ? load.idleInstances.filter((id) => id.startsWith(opts.idlePrefix!)) : load.idleInstances;
  return { ok: true, load: { queued: load.queued, running: load.running, ...(idle && { idleInstances: idle }) } };
}
