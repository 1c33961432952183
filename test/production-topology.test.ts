/**
 * Issue 14, Temporal on PostgreSQL: cloudgate on the production topology (test/topology.ts) —
 * PostgreSQL, the real Temporal server (v1.32.2) on it, two API replicas behind nginx (the
 * guests' requests to one, everyone else's to the other, each the other's backup, as the README
 * recommends) and two worker processes — deploying through a faulty cloud: 30 % of creates throttled and 5 %
 * of guests failing their probe (plus one pinned failure, the first `workers` instance, so a
 * replacement always happens).
 *
 * First, one deployment that loses an API replica (kill -9), the Temporal server (kill -9,
 * then started again) and the worker running the `workers` create batch (kill -9, while the
 * batch runs) along the way: READY with exactly the instances asked for, the cloud's own state
 * (the sim's file, not cloudgate's read model) holding exactly those, none twice, and nothing
 * left after teardown. Then rounds that each kill one of the two workers at a random moment
 * of a deployment (a supervisor starts it again): each round must converge exactly; the count
 * is printed, and an inexact round keeps its histories, the cloud's rows and the logs in
 * `<tmp>/cloudgate-topology-failures/<clusterId>/`.
 *
 * `TOPOLOGY_ROUNDS` sets the number of rounds (default 20, as the issue asks: the suite takes
 * about 11 minutes; 5 rounds about 4). A kill that lands on a create in flight costs its round a minute, the
 * activity's heartbeat timeout. Needs Debian's PostgreSQL and the Temporal server build,
 * which `node scripts/setup.mjs --test` (npm test's set-up) provides; without them the suite
 * fails saying so.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import Database from 'better-sqlite3';
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createSimCloud } from '../clouds/sim.js';
import { loadPayloadKeys } from '../store/secret.js';
import { clusterWorkflowId, serviceWorkflowId } from '../workflows/messages.js';
import { clusterInstances, clusterStatus, deploy, threeTier, waitFor, waitForState } from './harness.js';
import { decryptPayloadsInPlace, useHistoryKeys } from './history-text.js';
import { startTopology, type Replica, type Topology } from './topology.js';

const ROUNDS = Number(process.env.TOPOLOGY_ROUNDS ?? 20);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) throw new Error(`TOPOLOGY_ROUNDS must be a positive integer, not ${process.env.TOPOLOGY_ROUNDS}`);

/** The benchmark's shape at test size: proxy 2, head 1 after it, workers 10 after head. */
const SHAPE = { proxy: 2, head: 1, workers: 10 };
const TOTAL = SHAPE.proxy + SHAPE.head + SHAPE.workers;

let top: Topology;
beforeAll(async () => {
  top = await startTopology({
    apis: 2,
    workers: 2,
    // Guests slow enough that each tier takes seconds, so every fault lands mid-deployment.
    sim: { bootMs: 2_500, readyDelayMs: 1_000, throttleRate: 0.3, failureRate: 0.05, seed: `topology-${Date.now()}` },
    simRules: [{ match: '-workers-', behaviour: 'fail', limit: 1 }],
    // As the README's production section recommends: the guests' requests to api-1, everyone else's to api-2, each the other's backup.
    guestsApart: true,
  });
}, 300_000);
afterAll(async () => {
  await top?.stop();
}, 120_000);

/** Live instances (of one cluster, or all) as the cloud itself has them: the sim's state file, not cloudgate's read model. */
async function inCloud(clusterId?: string): Promise<{ names: string[]; made: number }> {
  const cloud = createSimCloud({ name: 'sim', file: path.join(top.dataDir, 'sim-cloud.sqlite'), ...top.config.sim });
  try {
    const names = (await cloud.listInstances(clusterId === undefined ? {} : { cluster: clusterId })).map((i) => i.name).sort();
    // Every instance the cloud ever made for the cluster, terminated ones too: replacements show here.
    const made = clusterId === undefined ? 0 : Object.keys(SHAPE).reduce((n, service) => n + cloud.guests(clusterId, service).length, 0);
    return { names, made };
  } finally {
    await cloud.close();
  }
}

/**
 * Why the cluster is not exactly SHAPE, or undefined when it is: READY with every service's
 * count, and the cloud holding exactly the instances cloudgate lists, each once. The reason
 * names what differs (the cloud's extra or missing instances with their listed state).
 */
async function inexactness(id: string): Promise<string | undefined> {
  const status = await clusterStatus(top, id);
  const counts = status.services.map((s: { name: string; ready: number }) => [s.name, s.ready]);
  if (status.state !== 'READY') return `cluster ${status.state}`;
  if (JSON.stringify(counts) !== JSON.stringify(Object.entries(SHAPE))) return `ready counts ${JSON.stringify(counts)}`;
  const { names } = await inCloud(id);
  const listed = await clusterInstances(top, id);
  const listedIds = listed.map((i) => i.id).sort();
  if (new Set(names).size !== names.length) return `the same name twice in the cloud: ${names.join(' ')}`;
  if (names.length === TOTAL && JSON.stringify(names) === JSON.stringify(listedIds)) return undefined;
  const stateOf = (n: string) => listed.find((i) => i.id === n)?.state ?? 'not listed';
  const extra = names.filter((n) => !listedIds.includes(n) || stateOf(n) !== 'READY').map((n) => `${n} (${stateOf(n)})`);
  const missing = listedIds.filter((n) => !names.includes(n)).map((n) => `${n} (${stateOf(n)})`);
  return `${names.length} live in the cloud, ${listed.length} listed; in the cloud but not READY or not listed: ${extra.join(', ') || 'none'}; listed but not in the cloud: ${missing.join(', ') || 'none'}`;
}

/**
 * Exact at READY, or within `settleMs` after it: an instance that failed its probe is
 * terminated beside its replacement's create, so when that terminate was running on the
 * killed worker it is retried only after the activity's heartbeat timeout (one minute) —
 * the cluster is READY meanwhile with the failed instance still TERMINATING in the cloud.
 * Returns what was seen at READY (undefined: exact at once).
 */
async function expectExact(id: string, settleMs = 150_000): Promise<string | undefined> {
  const atReady = await inexactness(id);
  if (atReady === undefined) return undefined;
  let last: string | undefined = atReady;
  const deadline = Date.now() + settleMs;
  while (last !== undefined && Date.now() < deadline) {
    await sleep(1_000);
    last = await inexactness(id);
  }
  if (last !== undefined) {
    const evidence = await keepEvidence(id).catch((e: Error) => `not kept: ${e.message}`);
    throw new Error(`not exact ${settleMs / 1000} s after READY: ${last} (at READY: ${atReady}); evidence in ${evidence}`);
  }
  return atReady;
}

/**
 * Keeps what explains an inexact round in `<tmp>/cloudgate-topology-failures/<clusterId>/`:
 * every run of the cluster's and services' workflows (payloads decrypted), the sim cloud's
 * rows of the cluster (terminated ones too; no user-data), and every process's log so far.
 */
async function keepEvidence(id: string): Promise<string> {
  const dir = path.join(os.tmpdir(), 'cloudgate-topology-failures', id);
  mkdirSync(dir, { recursive: true });
  useHistoryKeys(loadPayloadKeys(top.config));
  const bytesAsText = (_k: string, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('utf8') : v);
  for (const workflowId of [clusterWorkflowId(id), ...Object.keys(SHAPE).map((s) => serviceWorkflowId(id, s))]) {
    for await (const run of top.client.workflow.list({ query: `WorkflowId = '${workflowId}'` })) {
      const history = await top.client.workflow.getHandle(workflowId, run.runId).fetchHistory();
      decryptPayloadsInPlace(history);
      writeFileSync(path.join(dir, `${workflowId.replaceAll('/', '_')}.${run.runId}.json`), JSON.stringify(history, bytesAsText, 1));
    }
  }
  const db = new Database(path.join(top.dataDir, 'sim-cloud.sqlite'), { readonly: true });
  try {
    const rows = db.prepare('SELECT id, name, guest, created_at, running_at, terminated_at, phone_attempts, phone_result, phoned_at FROM instances WHERE cluster = ? ORDER BY created_at').all(id);
    writeFileSync(path.join(dir, 'sim-instances.json'), JSON.stringify(rows, null, 1));
  } finally {
    db.close();
  }
  for (const f of readdirSync(top.dataDir).filter((f) => f.endsWith('.log'))) copyFileSync(path.join(top.dataDir, f), path.join(dir, f));
  return dir;
}

async function teardown(id: string): Promise<void> {
  const del = await top.http('DELETE', `/v1/clusters/${id}`);
  expect([200, 202]).toContain(del.status);
  await waitForState(top, id, 'TERMINATED', 180_000);
  expect((await inCloud(id)).names).toEqual([]);
}

const serviceState = async (id: string, service: string): Promise<string> =>
  (await clusterStatus(top, id)).services.find((s: { name: string }) => s.name === service).state as string;

/** The identity (`<pid>@<host>`) of the worker running a service's create batch now, if one runs. */
async function createInFlight(id: string, service: string): Promise<string | undefined> {
  try {
    const { raw } = await top.client.workflow.getHandle(serviceWorkflowId(id, service)).describe();
    const create = (raw.pendingActivities ?? []).find((a) => a.activityType?.name === 'createInstances' && a.state === 2 /* STARTED */);
    return create?.lastWorkerIdentity || undefined;
  } catch {
    return undefined; // not started yet, or the server restarting
  }
}

/** How many instances the workers' logs say a retried create made again after they were let go (workflows/service.ts, `service-stray-create`). */
function strayTerminations(): number {
  return top.workers.map((w) => (readFileSync(w.logFile, 'utf8').match(/a retried create made instances/g) ?? []).length).reduce((a, b) => a + b, 0);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * After a failed deployment: keeps its evidence (unless `message` already names where it is)
 * and tears it down, so what comes next starts from an empty cloud. Returns where the evidence
 * is, or why it was not kept; undefined when the message names it already.
 */
async function abandon(id: string, message: string): Promise<string | undefined> {
  const evidence = message.includes('evidence in') ? undefined : await keepEvidence(id).catch((e: Error) => `not kept: ${e.message}`);
  await top.http('DELETE', `/v1/clusters/${id}`).catch(() => undefined);
  await waitForState(top, id, 'TERMINATED', 180_000).catch(() => undefined);
  return evidence;
}

/** Runs `fn`; on failure adds every process's log tail to the error. */
async function withLogs<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    console.error(`production topology failed; logs:\n${top.logTails()}`);
    throw err;
  }
}

describe('production topology: Temporal on PostgreSQL, two API replicas, two workers', () => {
  it('deploys through a faulty cloud while a worker, an API replica and the Temporal server die: exact, no duplicate, nothing left', async () => {
    let id: string | undefined;
    try {
      await withLogs(() => deployThroughFaults((made) => (id = made)));
    } catch (err) {
      // Torn down all the same, so the rounds after it start from an empty cloud; what explains the failure is kept first.
      if (id !== undefined) {
        const evidence = await abandon(id, (err as Error).message);
        if (evidence !== undefined) (err as Error).message += `; evidence in ${evidence}`;
      }
      throw err;
    }
  }, 900_000);

  /** The first case's deployment and checks; `started` is told the cluster's id as soon as there is one. */
  async function deployThroughFaults(started: (id: string) => void): Promise<void> {
    const t0 = Date.now();
    const id = await deploy(top, threeTier(SHAPE));
    started(id);
    const states: Record<string, string> = {};

    // kill -9 of the guests' API replica once the first proxies are in the cloud; their phone-homes go to the other one through the proxy.
    await waitFor(async () => (await inCloud(id)).names.length > 0 || undefined, 120_000, 'the first instance in the cloud');
    states.apiKilled = (await clusterStatus(top, id)).state;
    const servedBefore = { ...top.proxied };
    const guestsBefore = top.proxiedBy('guests');
    // Until now the users' requests (this test's) all went to api-2.
    expect(top.proxiedBy('users')).toMatchObject({ 'api-1': 0, '502': 0 });
    expect(top.proxiedBy('users')['api-2']).toBeGreaterThan(0);
    await top.apis[0].kill();

    // The Temporal server killed and started again once `head` deploys.
    await waitFor(async () => (await serviceState(id, 'head')) !== 'WAITING' || undefined, 120_000, 'head deploying');
    states.temporalRestarted = (await clusterStatus(top, id)).state;
    await top.temporal.restart({ kill: true });

    // kill -9 of the worker running the `workers` create batch, while it runs (the first of them fails its probe, pinned).
    const creating = await waitFor(() => createInFlight(id, 'workers'), 120_000, 'the workers create in flight').catch(() => undefined);
    const victim = top.workers.find((w) => creating && w.proc && creating.startsWith(`${w.proc.pid}@`)) ?? top.workers[0];
    states.workerKilled = (await clusterStatus(top, id)).state;
    await victim.kill();

    // A supervisor brings the killed processes back (the proxy sent nothing to api-1 while it was down).
    expect(top.proxied['api-1']).toBe(servedBefore['api-1']);
    await Promise.all([victim.start(), top.apis[0].start()]);
    await waitForState(top, id, 'READY', 240_000);
    const seconds = (Date.now() - t0) / 1000;

    expect(states).toEqual({ apiKilled: 'DEPLOYING', temporalRestarted: 'DEPLOYING', workerKilled: 'DEPLOYING' });
    // The surviving replica answered while the other was down, the guests' phone-homes too.
    expect(top.proxied['api-2']).toBeGreaterThan(servedBefore['api-2']);
    expect(top.proxiedBy('guests')['api-2']).toBeGreaterThan(guestsBefore['api-2']);
    // The users' requests stayed with api-2 throughout.
    expect(top.proxiedBy('users')['api-1']).toBe(0);
    const atReady = await expectExact(id);
    const { made } = await inCloud(id);
    // The pinned guest failure (and any the 5 % made) was replaced.
    expect(made).toBeGreaterThan(TOTAL);
    console.log(
      `production topology: READY in ${seconds.toFixed(1)} s through kill -9 of api-1, a kill -9 + start of the Temporal server and kill -9 of ${victim.name} ` +
        `(${creating ? 'running the workers create' : 'no create caught in flight'}); ${TOTAL} instances, ${made - TOTAL} replaced, ` +
        `${strayTerminations()} made again by a retried create and terminated; ${atReady === undefined ? 'exact at READY' : `exact after settling (at READY: ${atReady})`}; ` +
        `requests per replica ${JSON.stringify(top.proxied)}`,
    );
    await teardown(id);
    expect((await inCloud()).names).toEqual([]);
  }

  it(`converges exactly in each of ${ROUNDS} rounds with a worker killed at a random moment of the deployment`, async () => {
    await withLogs(async () => {
      const rounds: { round: number; victim: string; killAfterMs: number; stateAtKill: string; ok: boolean; seconds: number; atReady?: string; error?: string; evidence?: string }[] = [];
      // Where the kill may land: 0 to 90 % of the quickest deployment seen yet (a kill after READY is counted apart).
      let quickestMs = 20_000;
      let restarting: Promise<void> | undefined;
      const guestsBefore = top.proxiedBy('guests');
      for (let round = 1; round <= ROUNDS; round++) {
        // Both workers up before each kill (the supervisor's restart of the last victim done).
        await restarting;
        await Promise.all(top.workers.map((w) => w.start()));
        const victim: Replica = top.workers[Math.floor(Math.random() * top.workers.length)];
        const killAfterMs = Math.round(Math.random() * 0.9 * quickestMs);
        const t0 = Date.now();
        const id = await deploy(top, threeTier(SHAPE));
        await sleep(killAfterMs - (Date.now() - t0));
        const stateAtKill = (await clusterStatus(top, id)).state as string;
        await victim.kill();
        restarting = victim.start();
        const entry = { round, victim: victim.name, killAfterMs, stateAtKill, ok: false, seconds: 0 } as (typeof rounds)[number];
        rounds.push(entry);
        try {
          await waitForState(top, id, 'READY', 240_000);
          entry.seconds = (Date.now() - t0) / 1000;
          quickestMs = Math.max(5_000, Math.min(quickestMs, Date.now() - t0));
          entry.atReady = await expectExact(id);
          await teardown(id);
          entry.ok = true;
        } catch (err) {
          entry.error = (err as Error).message;
          const evidence = await abandon(id, entry.error);
          if (evidence !== undefined) entry.evidence = evidence;
        }
        console.log(`round ${round}/${ROUNDS}: ${JSON.stringify(entry)}`);
      }
      await restarting;
      const converged = rounds.filter((r) => r.ok).length;
      const midDeployment = rounds.filter((r) => r.stateAtKill !== 'READY').length;
      const exactAtReady = rounds.filter((r) => r.ok && r.atReady === undefined).length;
      console.log(
        `production topology: ${converged}/${ROUNDS} rounds converged exactly (READY, ${TOTAL} instances in the cloud, none twice, nothing left after teardown), ` +
          `${exactAtReady} of them exact at the moment of READY (the others once a failed instance's terminate, lost with the killed worker, was retried); ` +
          `${midDeployment} kills landed before READY; ${strayTerminations()} instances made again by a retried create and terminated (whole suite); deployment times ${rounds.map((r) => r.seconds.toFixed(1)).join(', ')} s`,
      );
      expect(rounds.filter((r) => !r.ok)).toEqual([]);
      expect(converged).toBe(ROUNDS);
      expect((await inCloud()).names).toEqual([]);
      // The guests' replica, back since the first deployment, took their phone-homes again; the users' requests never went to it.
      expect(top.proxiedBy('guests')['api-1']).toBeGreaterThan(guestsBefore['api-1']);
      expect(top.proxiedBy('users')['api-1']).toBe(0);
    });
  }, 60_000 + ROUNDS * 300_000);
});
