/**
 * Schedule windows' activities (issue 13; the workflows are workflows/windows.ts and the
 * cluster workflow): a cluster's Temporal Schedules, one per window, created at its first
 * start and deleted at its teardown. Both are idempotent, as a retried or replayed activity
 * must be: a Schedule that already exists counts as created, one that does not as deleted.
 * The worker hands them its Temporal client (workers/worker.ts).
 */
import { Context } from '@temporalio/activity';
import { ScheduleAlreadyRunning, ScheduleNotFoundError, ScheduleOverlapPolicy, type Client, type ScheduleOptions } from '@temporalio/client';
import { humanSeconds } from '../model/session.js';
import { temporalCron, type Window } from '../model/windows.js';
import { SA_CLUSTER_ID, SA_OWNER, clusterWorkflowId, windowScheduleId, windowWorkflowId } from '../workflows/messages.js';
import type { ClusterWindowInput, WindowActivities } from '../workflows/windows.js';

export type { WindowActivities };

export interface WindowDeps {
  /** The worker's Temporal client (connected on first use). */
  client(): Promise<Client>;
  /** The task queue the window workflows run on (the worker's). */
  taskQueue: string;
}

/** What a window's Schedule is for, on the Schedules page (its note and memo). */
export function windowNote(clusterId: string, n: number, w: Window): string {
  return (
    `Opens window ${n} of cluster ${clusterId}: at every "${w.cron}" (UTC) for ${humanSeconds(w.durationSeconds)}. ` +
    `Starts ClusterWindowWorkflow, which signals ${clusterWorkflowId(clusterId)} to be active until then; the cluster ` +
    'deploys if the end of a window had paused it, and pauses itself at the end. Made by the cluster workflow at its start, ' +
    'deleted at its teardown. Pausing this schedule skips the window\'s openings; "Trigger" opens the window now.'
  );
}

/** The Schedule of window `n` of a cluster. */
export function windowScheduleOptions(clusterId: string, n: number, w: Window, taskQueue: string, owner?: string): ScheduleOptions {
  const note = windowNote(clusterId, n, w);
  const args: [ClusterWindowInput] = [{ clusterId, window: n, cron: w.cron, durationSeconds: w.durationSeconds }];
  return {
    scheduleId: windowScheduleId(clusterId, n),
    spec: { cronExpressions: [temporalCron(w.cron)] },
    action: {
      type: 'startWorkflow',
      workflowType: 'ClusterWindowWorkflow',
      workflowId: windowWorkflowId(clusterId, n),
      taskQueue,
      args,
      // After the window's end an opening means nothing: a run that no worker picked up by then is dropped.
      workflowExecutionTimeout: `${w.durationSeconds + 60} seconds`,
      staticSummary: `open window ${n} of cluster ${clusterId} for ${humanSeconds(w.durationSeconds)}`,
      typedSearchAttributes: [{ key: SA_CLUSTER_ID, value: clusterId }, ...(owner ? [{ key: SA_OWNER, value: owner }] : [])],
    },
    // Every opening runs (each is one signal); one the server missed while down still opens the window while it lasts.
    policies: { overlap: ScheduleOverlapPolicy.ALLOW_ALL, catchupWindow: `${Math.max(10, w.durationSeconds)} seconds` },
    memo: { description: note, clusterId, window: n, cron: w.cron, durationSeconds: w.durationSeconds },
    typedSearchAttributes: [{ key: SA_CLUSTER_ID, value: clusterId }, ...(owner ? [{ key: SA_OWNER, value: owner }] : [])],
    state: { note },
  };
}

export function createWindowActivities(deps: WindowDeps): WindowActivities {
  return {
    async ensureWindowSchedules({ clusterId, owner, windows }) {
      const client = await deps.client();
      const created: string[] = [];
      const existing: string[] = [];
      for (const [n, w] of windows.entries()) {
        const options = windowScheduleOptions(clusterId, n, w, deps.taskQueue, owner);
        try {
          await client.schedule.create(options);
          created.push(options.scheduleId);
        } catch (err) {
          // A retry after a create that landed (or a replayed start): the schedule is this cluster's, made from the same frozen windows.
          if (!(err instanceof ScheduleAlreadyRunning)) throw err;
          existing.push(options.scheduleId);
        }
        Context.current().heartbeat(n);
      }
      Context.current().log.info('window schedules in place', { clusterId, created, existing });
      return { created, existing };
    },

    async deleteWindowSchedules({ clusterId, windows }) {
      const client = await deps.client();
      const deleted: string[] = [];
      const absent: string[] = [];
      for (const n of windows) {
        const id = windowScheduleId(clusterId, n);
        try {
          await client.schedule.getHandle(id).delete();
          deleted.push(id);
        } catch (err) {
          if (!(err instanceof ScheduleNotFoundError)) throw err;
          absent.push(id);
        }
      }
      Context.current().log.info('window schedules deleted', { clusterId, deleted, absent });
      return { deleted, absent };
    },
  };
}
