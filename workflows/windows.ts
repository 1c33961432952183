/**
 * Schedule windows (issue 13). A cluster with `windows` has one Temporal Schedule per window
 * (id `cluster-window/<clusterId>/<n>`, {@link windowScheduleId}), created by its cluster
 * workflow at first start and deleted at its teardown (activities/windows.ts). At each
 * opening the Schedule starts `ClusterWindowWorkflow` (id `cluster-window/<clusterId>/<n>-<time>`),
 * which signals the cluster to be active until the opening plus the window's duration, and
 * ends. The cluster keeps the window's end itself, with one timer (workflows/cluster.ts).
 *
 * Why the cluster keeps the end and not a window workflow sleeping until it: the cluster
 * already has one state object and a timer coroutine per deadline (as for sessions);
 * overlapping windows then merge by taking the later end (a `max`), and at that end the
 * cluster looks at the cron expressions again (model/windows.ts), so windows that follow
 * each other without a gap do not pause it for the moment between a timer and a signal. A
 * worker killed with -9 loses nothing: the timer and the signal are Temporal's, and the
 * window workflow is a single signal (re-run from history). A sleeping window workflow would
 * instead leave one more long-lived workflow per opening, whose "close" signals would have to
 * be reconciled with every other window's.
 */
import { getExternalWorkflowHandle, log, proxyActivities, workflowInfo } from '@temporalio/workflow';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import type { Window } from '../model/windows.js';
import { failureReason } from './failures.js';
import { clusterWorkflowId, windowOpenSignal } from './messages.js';

/** Input of `ClusterWindowWorkflow` (the Schedule's action arguments). */
export interface ClusterWindowInput extends Window {
  clusterId: string;
  /** The window's index in the cluster's `windows`. */
  window: number;
}

export interface ClusterWindowResult {
  window: number;
  /** Until when the cluster was told to be active (ISO). */
  until: string;
  outcome: 'opened' | 'late' | 'cluster-gone';
}

/** The window activities (activities/windows.ts implements them; the type lives here because workflows import no module of activities/). */
export interface WindowActivities {
  /** Creates the cluster's Schedules, one per window; one that already exists counts as made. */
  ensureWindowSchedules(input: { clusterId: string; owner?: string; windows: Window[] }): Promise<{ created: string[]; existing: string[] }>;
  /** Deletes the given windows' Schedules of the cluster; one that does not exist counts as deleted. */
  deleteWindowSchedules(input: { clusterId: string; windows: number[] }): Promise<{ deleted: string[]; absent: string[] }>;
}

const { deleteWindowSchedules } = proxyActivities<WindowActivities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});

/** Set by Temporal on every workflow a Schedule starts: the time the Schedule named (not when a worker picked it up). */
const SCHEDULED_START = defineSearchAttributeKey('TemporalScheduledStartTime', SearchAttributeType.DATETIME);

/**
 * Opens one window of a cluster: tells it to be active until the scheduled opening plus the
 * window's duration. A run that starts after the window would have ended (the server caught
 * up late) does nothing. When the cluster workflow is gone (terminated by hand, so its
 * teardown never deleted this Schedule), it deletes its own Schedule.
 */
export async function ClusterWindowWorkflow(input: ClusterWindowInput): Promise<ClusterWindowResult> {
  const info = workflowInfo();
  const openedAt = info.typedSearchAttributes.get(SCHEDULED_START)?.getTime() ?? info.startTime.getTime();
  const until = openedAt + input.durationSeconds * 1000;
  const result = (outcome: ClusterWindowResult['outcome']): ClusterWindowResult => ({ window: input.window, until: new Date(until).toISOString(), outcome });
  if (until <= Date.now()) return result('late');
  try {
    await getExternalWorkflowHandle(clusterWorkflowId(input.clusterId)).signal(windowOpenSignal, { window: input.window, until });
  } catch (err) {
    log.warn('the cluster workflow cannot take the signal (closed): deleting this window schedule', { clusterId: input.clusterId, error: failureReason(err) });
    await deleteWindowSchedules.executeWithOptions({ summary: `cluster ${input.clusterId} is gone: delete the schedule of its window ${input.window}` }, [
      { clusterId: input.clusterId, windows: [input.window] },
    ]);
    return result('cluster-gone');
  }
  return result('opened');
}
