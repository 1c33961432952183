/**
 * `--wait`: follows a cluster live from `GET /v1/clusters/:id` (a conditional GET each
 * second: an unchanged cluster costs a 304) until a goal says it is done or failed. One line
 * per service — a progress bar of ready/desired, its state and its last problem — redrawn in
 * place on a terminal, printed when it changes otherwise.
 */
import type { ClusterDetail } from '../api/schemas.js';
import { CliError, EXIT, type ApiClient } from './client.js';
import { bar, LiveBlock, state, type Out } from './output.js';

/** Done, failed (with why), or not yet (undefined). */
export type Verdict = { ok: true; note?: string } | { ok: false; why: string } | undefined;
export type Goal = (c: ClusterDetail, client: ApiClient) => Promise<Verdict> | Verdict;

/** A deployment: READY is done (PAUSED too: outside its windows, or paused by its owner); FAILED has failed. */
export const deployed: Goal = (c) => {
  if (c.state === 'READY') return { ok: true };
  if (c.state === 'PAUSED') return { ok: true, note: c.message };
  if (c.state === 'FAILED') return { ok: false, why: `cluster ${c.id} is FAILED: ${c.message ?? 'no message'}` };
  if (c.state === 'TERMINATED') return { ok: false, why: `cluster ${c.id} was torn down: ${c.message ?? ''}`.trim() };
  return undefined;
};

/** A teardown: TERMINATED is done. */
export const tornDown: Goal = (c) => {
  if (c.state === 'TERMINATED') return { ok: true };
  if (c.state === 'FAILED') return { ok: false, why: `cluster ${c.id} is FAILED: ${c.message ?? 'no message'}` };
  return undefined;
};

/**
 * A rolling change from `from` to `to`, accepted when the cluster's publish was at `seq`: done
 * when the cluster runs `to` with no change in progress and is READY; failed when it is FAILED,
 * or back on `from` with no change in progress after a later publish and an event saying the
 * change failed (a rollback).
 */
export function changed(from: string, to: string, seq: number): Goal {
  return async (c, client) => {
    if (c.state === 'FAILED') return { ok: false, why: `cluster ${c.id} is FAILED: ${c.message ?? 'no message'}` };
    if (c.change) return undefined;
    if (c.definitionId === to && from !== to) return c.state === 'READY' ? { ok: true } : undefined;
    if (c.definitionId === from && c.seq > seq) {
      const events = await client.all<{ message: string }>(`/v1/clusters/${encodeURIComponent(c.id)}/events`);
      const failed = events.reverse().find((e) => e.message.startsWith(`change to ${to} failed`));
      if (failed) return { ok: false, why: `cluster ${c.id}: ${failed.message}` };
    }
    // Context versions only (same definition): done once no change runs after a later publish.
    if (from === to && c.seq > seq) return c.state === 'READY' ? { ok: true } : undefined;
    return undefined;
  };
}

/** The lines of one look at a cluster. */
export function clusterLines(c: ClusterDetail, out: Out): string[] {
  const width = Math.max(...c.services.map((s) => s.name.length), 4);
  const head = `cluster ${c.id}: ${state(c.state, out)}${c.message ? ` — ${c.message}` : ''}`;
  const change = c.change ? [`  change ${c.change.from} → ${c.change.to}: ${c.change.phase}${c.change.reason ? ` (${c.change.reason})` : ''}`] : [];
  const services = c.services.map((s) => {
    const outdated = s.outdated ? `  ${s.outdated} outdated` : '';
    const problem = s.message ? `  last problem: ${s.message}` : '';
    return `  ${s.name.padEnd(width)} ${bar(s.ready, s.desired)} ${`${s.ready}/${s.desired}`.padStart(7)}  ${state(s.state, out)}${outdated}${problem}`;
  });
  return [head, ...change, ...services];
}

/** Follows cluster `id` until `goal` decides; the last look is returned (failures and timeouts throw). */
export async function follow(client: ApiClient, id: string, goal: Goal, opts: { out: Out; timeoutSeconds: number; intervalMs?: number }): Promise<ClusterDetail> {
  const block = new LiveBlock(opts.out);
  const deadline = Date.now() + opts.timeoutSeconds * 1000;
  const columns = process.stdout.columns ?? 0;
  const fit = (l: string) => (opts.out.tty && columns > 10 && l.length > columns ? `${l.slice(0, columns - 1)}…` : l);
  let etag: string | undefined;
  let last: ClusterDetail | undefined;
  for (;;) {
    const a = await client.send<ClusterDetail>('GET', `/v1/clusters/${encodeURIComponent(id)}`, { headers: etag ? { 'if-none-match': etag } : {} });
    if (a.status === 200) {
      last = a.body;
      etag = a.headers.get('etag') ?? undefined;
      block.draw(clusterLines(last, opts.out).map(fit));
    } else if (a.status !== 304) {
      // The same error the request itself would have thrown (a 404 once the cluster is gone, a 401 when the token was revoked).
      await client.get(`/v1/clusters/${encodeURIComponent(id)}`);
    }
    if (last) {
      const v = await goal(last, client);
      if (v?.ok) {
        if (v.note) opts.out.write(`${v.note}\n`);
        return last;
      }
      if (v && !v.ok) throw new CliError(v.why, EXIT.failed);
    }
    if (Date.now() > deadline) {
      throw new CliError(`cluster ${id} is still ${last?.state ?? 'unknown'} after ${opts.timeoutSeconds} s (--timeout); it goes on: cloudgate describe cluster ${id}`, EXIT.timeout);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 1000));
  }
}
