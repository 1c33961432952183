/**
 * Issue 13, schedule windows: a cluster with `windows: [{cron, durationSeconds}]` is active only
 * inside them and PAUSED outside, each window opened by a Temporal Schedule that an operator
 * sees on the Schedules page. Through the REST API, a real Temporal dev server, the worker and
 * the sim cloud; the windows open once a minute (6-field crons, seconds first), so the suite
 * lives a little over one and a half window cycles.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { ScheduleNotFoundError } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { nextWindowOpening, temporalCron } from '../model/windows.js';
import { windowScheduleId } from '../workflows/messages.js';
import { clusterInstances, clusterStatus, startStack, threeTier, waitFor, waitForState, workflowBundle, type Stack } from './harness.js';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => {
  await stack?.stop();
});

const inCloud = (id: string) => stack.worker!.sim!.count({ cluster: id });
const events = async (id: string): Promise<string[]> => (await stack.http('GET', `/v1/clusters/${id}/events?limit=1000`)).body.items.map((e: any) => e.message);
/** A window that opens once a minute, at the second of the minute `ms` falls in. */
const everyMinuteAt = (ms: number) => `${Math.floor(ms / 1000) % 60} * * * * *`;
const wholeSecond = (ms: number) => Math.floor(ms / 1000) * 1000;
const iso = (ms: number) => new Date(ms).toISOString();
const literally = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('schedule windows', () => {
  it('422 for a bad cron expression or duration, naming the field, in a definition and in a submission', async () => {
    const bad = await stack.http('POST', '/v1/cluster-definitions', {
      ...threeTier(),
      windows: [{ cron: '0 18 * * MON-FRI', durationSeconds: 3600 }, { cron: '0 0 L * *', durationSeconds: 0 }],
    });
    expect(bad.status).toBe(422);
    expect(bad.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(bad.body.errors).toEqual([
      { field: 'windows[1].cron', pointer: '/windows/1/cron', message: expect.stringMatching(/^not a cron expression for a window: field "L" has something cloudgate does not read/) },
      { field: 'windows[1].durationSeconds', pointer: '/windows/1/durationSeconds', message: 'must be a whole number of seconds > 0' },
    ]);

    const d = await stack.http('POST', '/v1/cluster-definitions', threeTier());
    expect(d.status).toBe(201);
    const c = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id, windows: [{ cron: '* * * *', durationSeconds: 60 }] });
    expect(c.status).toBe(422);
    expect(c.body.errors).toEqual([{ field: 'windows[0].cron', pointer: '/windows/0/cron', message: expect.stringMatching(/has 4 fields: use 5 \(minute hour day-of-month month day-of-week/) }]);
    expect((await stack.http('GET', '/v1/clusters')).body.items).toEqual([]);
  });

  it("reads cron expressions as the Temporal Schedules do: the server's next action times are the windows' next openings", async () => {
    const exprs = ['0 18 * * MON-FRI', '*/20 * * * * *', '0 9 13 * 5', '0,30 9-17 * * sun', '@weekly', '10-40/10 * 1 jan,jul *'];
    for (const [i, cron] of exprs.entries()) {
      const handle = await stack.client.schedule.create({
        scheduleId: `cron-check-${i}`,
        spec: { cronExpressions: [temporalCron(cron)] },
        action: { type: 'startWorkflow', workflowType: 'NoSuchWorkflow', taskQueue: 'nowhere', args: [] },
        state: { paused: true },
      });
      const { info } = await handle.describe();
      const ours: string[] = [];
      for (let t = Date.now(); ours.length < 4; ) {
        t = nextWindowOpening([{ cron, durationSeconds: 1 }], t)!.at;
        ours.push(iso(t));
      }
      expect([cron, info.nextActionTimes.slice(0, 4).map((d) => d.toISOString())]).toEqual([cron, ours]);
      await handle.delete();
    }
  });

  it('starts PAUSED outside its windows and deploys inside them, pauses at their end, keeps a user pause, and leaves no schedule', async () => {
    const t0 = Date.now();
    // x follows the definition's window: it opens in about 25 s, for 20 s, once a minute.
    const xOpens = wholeSecond(t0 + 25_000);
    const xEnds = xOpens + 20_000;
    // y replaces it with its own: open since about 3 s ago, for 25 s, once a minute.
    const yOpened = wholeSecond(t0 - 3_000);
    const yEnds = yOpened + 25_000;
    const d = await stack.http('POST', '/v1/cluster-definitions', {
      ...threeTier({ proxy: 1, head: 1, workers: 1 }),
      name: 'windowed',
      windows: [{ cron: everyMinuteAt(xOpens), durationSeconds: 20 }],
    });
    expect(d.status).toBe(201);
    const xc = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id, name: 'x' });
    const yWindows = [{ cron: everyMinuteAt(yOpened), durationSeconds: 25 }];
    const yc = await stack.http('POST', '/v1/clusters', { definitionId: d.body.id, name: 'y', windows: yWindows });
    expect([xc.status, yc.status]).toEqual([202, 202]);
    const x = xc.body.id as string;
    const y = yc.body.id as string;

    // x: outside its window, PAUSED with nothing deployed, saying when the window opens.
    const paused = await waitForState(stack, x, 'PAUSED', 20_000);
    expect(Date.now()).toBeLessThan(xOpens);
    expect(paused.message).toBe(
      `paused outside its windows: nothing deployed yet; the next opens at ${iso(xOpens)} (window 0 ("${everyMinuteAt(xOpens)}", 20 s)); POST …/resume deploys it now`,
    );
    expect(paused.windows).toEqual([{ cron: everyMinuteAt(xOpens), durationSeconds: 20 }]);
    expect(paused.nextWindowAt).toBe(iso(xOpens));
    expect(paused.services.map((s: any) => s.state)).toEqual(['WAITING', 'WAITING', 'WAITING']);
    expect(await inCloud(x)).toBe(0);

    // One schedule per window, on the Schedules page, saying what it does; y's has y's own window.
    const xs = await stack.client.schedule.getHandle(windowScheduleId(x, 0)).describe();
    expect(xs.memo).toEqual({ description: expect.stringMatching(new RegExp(`^${literally(`Opens window 0 of cluster ${x}: at every "${everyMinuteAt(xOpens)}" (UTC) for 20 s. `)}`)), clusterId: x, window: 0, cron: everyMinuteAt(xOpens), durationSeconds: 20 });
    expect(xs.state.note).toBe(xs.memo!.description);
    expect(xs.spec.calendars?.[0].second).toEqual([{ start: Math.floor(xOpens / 1000) % 60, end: Math.floor(xOpens / 1000) % 60, step: 1 }]);
    expect(xs.info.nextActionTimes[0].toISOString()).toBe(iso(xOpens));
    expect(xs.action).toMatchObject({ type: 'startWorkflow', workflowType: 'ClusterWindowWorkflow', workflowId: `cluster-window/${x}/0` });
    const ys = await stack.client.schedule.getHandle(windowScheduleId(y, 0)).describe();
    expect(ys.memo).toMatchObject({ clusterId: y, cron: yWindows[0].cron, durationSeconds: 25 });

    // y: inside its window, it deploys, and is READY before the window ends.
    await waitForState(stack, y, 'READY', 20_000);
    expect(Date.now()).toBeLessThan(yEnds);
    expect(await inCloud(y)).toBe(3);
    const yFirst = (await clusterInstances(stack, y)).map((i) => i.id);

    // y's window ends: it vacates, 0 instances in the cloud, saying when its window opens again.
    const yPaused = await waitForState(stack, y, 'PAUSED', 40_000);
    expect(Date.now()).toBeGreaterThanOrEqual(yEnds);
    expect(yPaused.message).toBe(`paused outside its windows: 0 instances on sim; the next opens at ${iso(yOpened + 60_000)} (window 0 ("${yWindows[0].cron}", 25 s)); POST …/resume deploys it now`);
    expect(await inCloud(y)).toBe(0);

    // x's window opens: it deploys; and pauses at the window's end.
    await waitForState(stack, x, 'READY', 60_000);
    expect(Date.now()).toBeGreaterThanOrEqual(xOpens);
    expect(Date.now()).toBeLessThan(xEnds);
    expect(await inCloud(x)).toBe(3);
    await waitForState(stack, x, 'PAUSED', 60_000);
    expect(Date.now()).toBeGreaterThanOrEqual(xEnds);
    expect(await inCloud(x)).toBe(0);
    expect(await clusterInstances(stack, x)).toEqual([]);

    // A user's pause of a cluster its window's end paused is the user's: the next window does not resume it.
    const p = await stack.http('POST', `/v1/clusters/${x}/pause`);
    expect([p.status, p.body.state]).toEqual([200, 'PAUSED']);
    expect((await clusterStatus(stack, x)).message).toMatch(/^paused by a user \(it was outside its windows\): windows do not resume it/);
    expect((await stack.http('POST', `/v1/clusters/${x}/pause`)).status).toBe(409);

    // y's window opens again: y deploys again (new instances), x's window opens later and x stays PAUSED.
    await waitForState(stack, y, 'READY', 60_000);
    expect(Date.now()).toBeGreaterThanOrEqual(yOpened + 60_000);
    expect(await inCloud(y)).toBe(3);
    expect((await clusterInstances(stack, y)).map((i) => i.id).filter((id) => yFirst.includes(id))).toEqual([]);
    await waitFor(async () => (await events(x)).some((m) => m.startsWith('a window opened, but a user paused the cluster: it stays PAUSED')), 60_000, 'x to see its window open');
    expect(Date.now()).toBeGreaterThanOrEqual(xOpens + 60_000);
    expect((await clusterStatus(stack, x)).state).toBe('PAUSED');
    expect(await inCloud(x)).toBe(0);

    // What happened, in each cluster's events.
    expect(await events(x)).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^PENDING → PAUSED: paused outside its windows: nothing deployed yet/),
        `window 0 ("${everyMinuteAt(xOpens)}", 20 s) opened: active until ${iso(xEnds)}`,
        expect.stringMatching(/^PAUSED → DEPLOYING: resuming: a window opened/),
        `window closed at ${iso(xEnds)}; the next opens at ${iso(xOpens + 60_000)} (window 0 ("${everyMinuteAt(xOpens)}", 20 s))`,
        'READY → PAUSING: pausing: its window ended; terminating every instance',
        expect.stringMatching(/^PAUSING → PAUSED: paused outside its windows: 0 instances on sim/),
        'paused by a user: windows no longer resume it; POST …/resume does',
      ]),
    );
    expect(await events(y)).toEqual(expect.arrayContaining([`started inside window 0 ("${yWindows[0].cron}", 25 s): active until ${iso(yEnds)}`]));

    // The windows' runs are workflows an operator finds by cluster.
    const runs = await waitFor(async () => {
      const found = [];
      for await (const wf of stack.client.workflow.list({ query: `WorkflowType = "ClusterWindowWorkflow" AND CloudgateClusterId = "${x}" AND ExecutionStatus = "Completed"` })) found.push(wf);
      return found.length >= 2 && found;
    }, 20_000, "x's window runs");
    expect(runs.every((r) => r.workflowId.startsWith(`cluster-window/${x}/0-`))).toBe(true);
    expect(await stack.client.workflow.getHandle(runs[0].workflowId, runs[0].runId).result()).toMatchObject({ window: 0, outcome: 'opened' });

    // Teardown leaves nothing: no instance, no schedule.
    for (const id of [x, y]) expect((await stack.http('DELETE', `/v1/clusters/${id}`)).status).toBe(202);
    for (const id of [x, y]) {
      const done = await waitForState(stack, id, 'TERMINATED', 60_000);
      expect(done.nextWindowAt).toBeUndefined();
      expect(await inCloud(id)).toBe(0);
      await expect(stack.client.schedule.getHandle(windowScheduleId(id, 0)).describe()).rejects.toBeInstanceOf(ScheduleNotFoundError);
    }

    // Determinism: the cluster and window workflows' histories replay against today's code.
    const histories = [];
    for (const id of [x, y]) {
      for await (const wf of stack.client.workflow.list({ query: `CloudgateClusterId = "${id}" AND WorkflowType IN ("ClusterWorkflow", "ClusterWindowWorkflow")` })) {
        histories.push({ workflowId: wf.workflowId, history: await stack.client.workflow.getHandle(wf.workflowId, wf.runId).fetchHistory() });
      }
    }
    expect(histories.filter((h) => h.workflowId.startsWith('cluster/')).map((h) => h.workflowId).sort()).toEqual([`cluster/${x}`, `cluster/${y}`]);
    const replayed = [];
    for await (const r of Worker.runReplayHistories({ workflowBundle: await workflowBundle(), dataConverter: stack.dataConverter }, histories)) replayed.push(r);
    expect(replayed.map((r) => `${r.workflowId}: ${r.error ?? 'ok'}`)).toEqual(histories.map((h) => `${h.workflowId}: ok`));
  }, 240_000);
});
