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
  /**
   * A batch is sent as soon as it has this many reports (default 1,000; the phone-home route
   * also caps a batch at 256 KB, which binds first for reports of more than about 260 bytes).
   * It was 200: with the interval below (then 250 ms), at most 800 reports a second per API process and
   * service — in the scale bench the 9,500-instance tier's reports went out as 53 signals, one
   * every 250 ms for 13 s.
   */
  maxBatch?: number;
  /**
   * The least time between two batches to one key from this process (default 100 ms): what
   * arrives meanwhile waits and goes together. A 10,000-instance service phoning home at once
   * otherwise received a signal every 40 ms (one round trip) per API process; while one of its
   * long workflow tasks ran, more than 100 signals buffered up, and the Temporal server then
   * fails the task (`FORCE_CLOSE_COMMAND`, `history.maximumBufferedEventsBatch`) and the
   * workflow starts it again from the top — over and over. It was 250 ms: every tier's last
   * reports then waited up to that long, and a tier's last report sets when the next tier
   * starts. At 100 ms (10 signals a second per API process and service), the 10,000-instance
   * bench took 82.6 and 82.6 s against 83.0 and 83.3 s at 250 ms, alternating, the same day;
   * its `workers` tier came in about 50–60 signals instead of 30.
   */
  minIntervalMs?: number;
}

/** How a batcher weighs and isolates its items (the caller's knowledge of them). */
export interface BatcherItemOptions<T> {
  /** An item's weight (e.g. its bytes); a batch weighs at most `maxBatchWeight` unless it is one item. */
  weigh?: (item: T) => number;
  maxBatchWeight?: number;
  /**
   * Whether a failed batch of several items is sent again one item at a time (in order, one
   * in flight), so that each item succeeds or fails on its own: true for errors one item may
   * have caused, false for errors every item would meet (the target is gone, the server is down).
   * Unset: a failed batch fails all its items.
   */
  isolate?: (err: unknown) => boolean;
}

interface Pending<T> {
  item: T;
  weight: number;
  resolve: () => void;
  reject: (err: unknown) => void;
  done: Promise<void>;
}

interface Lane<T> {
  pending: Pending<T>[];
  /** The weight of `pending`, kept as items come and go. */
  weight: number;
  timer?: NodeJS.Timeout;
  inFlight: boolean;
  /** When the last batch to this key was sent (0: none lately). */
  lastSentAt: number;
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
  private readonly maxWeight: number;
  private readonly minIntervalMs: number;

  constructor(
    private readonly send: BatchSender<T>,
    opts: BatcherOptions = {},
    private readonly items: BatcherItemOptions<T> = {},
  ) {
    this.maxDelayMs = opts.maxDelayMs ?? 50;
    this.maxBatch = opts.maxBatch ?? 1000;
    this.minIntervalMs = opts.minIntervalMs ?? 100;
    this.maxWeight = items.maxBatchWeight ?? Infinity;
  }

  /** Resolves once the batch holding `item` was delivered; rejects with the sender's error. */
  submit(key: string, item: T): Promise<void> {
    let lane = this.lanes.get(key);
    if (!lane) {
      lane = { pending: [], weight: 0, inFlight: false, lastSentAt: 0 };
      this.lanes.set(key, lane);
    }
    const l = lane;
    let resolve!: () => void;
    let reject!: (err: unknown) => void;
    const done = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
    const weight = this.items.weigh?.(item) ?? 0;
    l.pending.push({ item, weight, resolve, reject, done });
    l.weight += weight;
    if (l.inFlight) return done; // goes out when the current batch settles
    const full = l.pending.length >= this.maxBatch || l.weight >= this.maxWeight;
    const wait = this.untilNextSend(l);
    if (full && wait === 0) this.flush(key, l);
    else if (!l.timer) l.timer = setTimeout(() => this.flush(key, l), Math.max(wait, full ? 0 : this.maxDelayMs));
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

  /** How long `lane` must wait before its next batch (its minimum interval since the last one). */
  private untilNextSend(lane: Lane<T>): number {
    return Math.max(0, lane.lastSentAt + this.minIntervalMs - Date.now());
  }

  private flush(key: string, lane: Lane<T>): void {
    clearTimeout(lane.timer);
    lane.timer = undefined;
    // Up to maxBatch items and maxBatchWeight, but always at least one.
    let count = 0;
    for (let weight = 0; count < Math.min(this.maxBatch, lane.pending.length); count++) {
      weight += lane.pending[count].weight;
      if (count > 0 && weight > this.maxWeight) break;
    }
    const batch = lane.pending.splice(0, count);
    for (const p of batch) lane.weight -= p.weight;
    if (batch.length === 0) {
      this.lanes.delete(key);
      return;
    }
    lane.inFlight = true;
    lane.lastSentAt = Date.now();
    lane.sending = this.sendSafely(
      key,
      batch.map((p) => p.item),
    ).then(
      () => batch.forEach((p) => p.resolve()),
      async (err: unknown) => {
        if (batch.length < 2 || !this.items.isolate?.(err)) return batch.forEach((p) => p.reject(err));
        // One bad item must not take the others down: each goes again alone.
        for (const p of batch) await this.sendSafely(key, [p.item]).then(p.resolve, p.reject);
      },
    );
    void lane.sending.then(() => {
      lane.inFlight = false;
      lane.sending = undefined;
      // Whatever queued up meanwhile has waited one round trip already: send it once the interval allows.
      const wait = this.untilNextSend(lane);
      if (lane.pending.length > 0) {
        if (wait === 0) this.flush(key, lane);
        else lane.timer = setTimeout(() => this.flush(key, lane), wait);
      } else if (wait === 0) this.lanes.delete(key);
      else {
        // Kept a while, empty, so that the next report to this key still keeps the interval.
        lane.timer = setTimeout(() => this.flush(key, lane), wait);
        lane.timer.unref();
      }
    });
  }

  private sendSafely(key: string, items: T[]): Promise<void> {
    try {
      return this.send(key, items);
    } catch (err) {
      return Promise.reject(err); // a synchronous throw must not escape into a timer
    }
  }
}
