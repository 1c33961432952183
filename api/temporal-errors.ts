/**
 * How Temporal client failures surface in the API. Everything here is about the gateway's
 * upstreams (server, workers), never the caller's input, so it maps to 503 unless a route
 * knows better (not found, update rejected).
 */
import { isGrpcServiceError, ServiceError, WorkflowNotFoundError, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { conflict, unavailable, type Problem } from './problem.js';

/** Deadlines for calls made while a client waits for the answer. */
export const QUERY_DEADLINE_MS = 10_000;
export const UPDATE_DEADLINE_MS = 30_000;
export const SIGNAL_DEADLINE_MS = 10_000;

/** gRPC status codes (from the gRPC spec; @grpc/grpc-js is not a direct dependency). */
const GRPC = { DEADLINE_EXCEEDED: 4, FAILED_PRECONDITION: 9, UNAVAILABLE: 14 } as const;

/** True for "no such workflow" and "workflow already closed" (for signals and updates). */
export const isWorkflowGone = (err: unknown): boolean => err instanceof WorkflowNotFoundError;

function grpcCode(err: unknown): number | undefined {
  for (let e: unknown = err, i = 0; e && i < 5; e = (e as { cause?: unknown }).cause, i++) {
    if (isGrpcServiceError(e)) return e.code;
  }
  return undefined;
}

/** True when the server could not be reached or did not answer in time (every call would fail alike). */
export function isTemporalUnreachable(err: unknown): boolean {
  const code = grpcCode(err);
  return code === GRPC.UNAVAILABLE || code === GRPC.DEADLINE_EXCEEDED || (err instanceof ServiceError && code === undefined);
}

const reason = (err: unknown): string => (err instanceof Error ? err.message : String(err)).slice(0, 300);

/**
 * 503 for a failed call. Queries, updates and deadlines that fail while the server answers
 * mean no worker is serving the task queue; connection errors mean the server is down.
 */
export function temporalProblem(err: unknown, what: string): Problem {
  const code = grpcCode(err);
  if (code === GRPC.UNAVAILABLE || (err instanceof ServiceError && code === undefined)) {
    return unavailable(`${what}: Temporal server is not reachable (${reason(err)})`, err);
  }
  if (code === GRPC.DEADLINE_EXCEEDED || code === GRPC.FAILED_PRECONDITION || err instanceof WorkflowUpdateRPCTimeoutOrCancelledError) {
    return unavailable(`${what}: the cloudgate worker is not reachable (${reason(err)})`, err);
  }
  return unavailable(`${what}: ${reason(err)}`, err);
}

/** True when an Update was refused by its validator with a failure of this type. */
export const refusedAs = (err: unknown, type: string): boolean =>
  err instanceof WorkflowUpdateFailedError && err.cause instanceof ApplicationFailure && err.cause.type === type;

/**
 * The problem for a cluster workflow Update that did not go through: a closed workflow is a
 * 409; a rejection by its validator maps by failure type through `byType` (anything else is a
 * 409 naming what was rejected); other errors are Temporal's (temporalProblem).
 */
export function updateProblem(err: unknown, clusterId: string, what: string, byType: Record<string, (message: string) => Problem>): Problem {
  if (isWorkflowGone(err)) return conflict(`cluster "${clusterId}" is not active`, err);
  if (err instanceof WorkflowUpdateFailedError) {
    const cause = err.cause;
    const msg = cause?.message ?? err.message;
    const mapped = cause instanceof ApplicationFailure && cause.type ? byType[cause.type] : undefined;
    return mapped ? mapped(msg) : conflict(`${what} rejected: ${msg}`, err);
  }
  return temporalProblem(err, `could not ${what} cluster "${clusterId}"`);
}
