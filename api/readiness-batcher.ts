/**
 * Batches phone-home reports per service workflow. A 1,000-instance service phones home
 * within seconds; one signal per report would put a thousand signals (and history events)
 * on one workflow, so reports for the same workflow travel together as one signal.
 */

/** Sends one batch to one key (a workflow id); rejects if the batch was not delivered. */
export type BatchSender<T> = (key: string, items: T[]) => Promise<void>;

export interface BatcherOptions {
  /** How long the first report of a batch waits for company (default 50 ms). */
  maxDelayMs?: number;
  /** A batch is sent as soon as it has this many reports (default 200). */
  maxBatch?: number;
}

interface Pending<T> {
  item: T;
  resolve: () => void;
  reject: (err: unknown) => void;
  done: Promise<void>;
}

interface Lane<T> {
  pending: Pending<T>[];
  timer?: NodeJS.Timeout;
  inFlight: boolean;
  /** Settles when the batch in flight settled. */
  sending?: Promise<void>;
}

/**
 * Collects items per key and hands them to `send` in batches: after `maxDelayMs`, or at
 * `maxBatch` items, with at most one batch in flight per key (so a workflow receives its
 * reports in arrival order and is never hit by concurrent signals from this process).
 * Items that arrive while a batch is in flight go out together right after it.
 */
export class Batcher<T> {
  private readonly lanes = new Map<string, Lane<T>>();
  private readonly maxDelayMs: number;
  private readonly maxBatch: number;

  constructor(
    private readonly send: BatchSender<T>,
    opts: BatcherOptions = {},
  ) {
    this.maxDelayMs = opts.maxDelayMs ?? 50;
    this.maxBatch = opts.maxBatch ?? 200;
  }

  /** Resolves once the batch holding `item` was delivered; rejects with the sender's error. */
  submit(key: string, item: T): Promise<void> {
    let lane = this.lanes.get(key);
    if (!lane) {
      lane = { pending: [], inFlight: false };
      this.lanes.set(key, lane);
    }
    const l = lane;
    let resolve!: () => void;
    let reject!: (err: unknown) => void;
    const done = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
    l.pending.push({ item, resolve, reject, done });
    if (l.inFlight) return done; // goes out when the current batch settles
    if (l.pending.length >= this.maxBatch) this.flush(key, l);
    else l.timer ??= setTimeout(() => this.flush(key, l), this.maxDelayMs);
    return done;
  }

  /** Sends everything pending now (used on shutdown) and waits until it was delivered or failed. */
  async drain(): Promise<void> {
    const waits: Promise<unknown>[] = [];
    for (const [key, lane] of this.lanes) {
      waits.push(...lane.pending.map((p) => p.done), lane.sending ?? Promise.resolve());
      if (!lane.inFlight) this.flush(key, lane);
    }
    await Promise.allSettled(waits);
  }

  private flush(key: string, lane: Lane<T>): void {
    clearTimeout(lane.timer);
    lane.timer = undefined;
    const batch = lane.pending.splice(0, this.maxBatch);
    if (batch.length === 0) {
      this.lanes.delete(key);
      return;
    }
    lane.inFlight = true;
    let sent: Promise<void>;
    try {
      sent = this.send(
        key,
        batch.map((p) => p.item),
      );
    } catch (err) {
      sent = Promise.reject(err); // a synchronous throw must not escape into a timer
    }
    lane.sending = sent.then(
      () => batch.forEach((p) => p.resolve()),
      (err: unknown) => batch.forEach((p) => p.reject(err)),
    );
    void lane.sending.then(() => {
      lane.inFlight = false;
      lane.sending = undefined;
      // Whatever queued up meanwhile has waited one round trip already: send it now.
      if (lane.pending.length > 0) this.flush(key, lane);
      else this.lanes.delete(key);
    });
  }
}
