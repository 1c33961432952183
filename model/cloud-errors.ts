/**
 * The one retry classification: which cloud error kinds a retry may mend, and which
 * failures of a create are permanent (the service workflow stops trying at once). Adapters
 * throw these kinds (clouds/contract.ts), activities map them to retryable or not, and the
 * workflows' retry policies name the permanent ones; all read them from here.
 */

export const CLOUD_ERROR_KINDS = [
  'InvalidCredentials',
  'CapacityExhausted',
  'QuotaExceeded',
  'InvalidOffering',
  'InvalidRequest',
  /**
   * The cloud answered, but not in a form the adapter can read (a rendering it does not
   * understand, a missing field it needs). Not retried: the same answer would come back;
   * the message names the call, the answer and what could not be read.
   */
  'UnreadableAnswer',
  'NotFound',
  'Throttled',
  'Transient',
] as const;
export type CloudErrorKind = (typeof CLOUD_ERROR_KINDS)[number];

/** Kinds worth retrying with backoff; the rest need a human (or a different definition). */
export const RETRYABLE_KINDS: ReadonlySet<CloudErrorKind> = new Set(['Throttled', 'Transient', 'CapacityExhausted']);

/** A context the create activity cannot render: retrying will not help. */
export const CONTEXT_UNAVAILABLE = 'ContextUnavailable';

/**
 * Failure types of an instance create that no retry will mend: every cloud kind that is not
 * retryable (NotFound aside, which an activity retries: a cloud may not list what it just
 * made), and a context that cannot be rendered.
 */
export const PERMANENT_CREATE_FAILURES: readonly string[] = [
  ...CLOUD_ERROR_KINDS.filter((k) => !RETRYABLE_KINDS.has(k) && k !== 'NotFound'),
  CONTEXT_UNAVAILABLE,
];
