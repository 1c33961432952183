/** Failure messages as workflows show them (status, current details, logs). */
import { ActivityFailure, ApplicationFailure } from '@temporalio/workflow';

/** The most useful line of a failure: the activity's own error type and message, not the wrapper's. */
export function failureReason(err: unknown): string {
  const cause = err instanceof ActivityFailure ? (err.cause ?? err) : err;
  if (cause instanceof ApplicationFailure) return `${cause.type ?? 'Error'}: ${cause.message}`;
  return cause instanceof Error ? cause.message : String(cause);
}
