import { describe, expect, it, jest } from '@jest/globals';
import { Batcher } from '../api/readiness-batcher.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A sender that records calls and lets the test decide when each one settles. */
function recorder() {
  const calls: Array<{ key: string; items: number[]; settle: (err?: Error) => void }> = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const send = (key: string, items: number[]) =>
    new Promise<void>((resolve, reject) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      calls.push({
        key,
        items,
        settle: (err) => {
          inFlight--;
          if (err) reject(err);
          else resolve();
        },
      });
    });
  return { calls, send, maxInFlight: () => maxInFlight };
}

jest.setTimeout(10_000);

describe('readiness batcher', () => {
  it('sends reports for one key as one batch after the delay', async () => {
    const r = recorder();
    const b = new Batcher<number>(r.send, { maxDelayMs: 30, maxBatch: 100 });
    const done = [1, 2, 3].map((i) => b.submit('wf-a', i));
    await sleep(5);
    expect(r.calls).toHaveLength(0); // still collecting
    await sleep(40);
    expect(r.calls.map((c) => [c.key, c.items])).toEqual([['wf-a', [1, 2, 3]]]);
    let resolved = 0;
    done.forEach((p) => void p.then(() => resolved++));
    await sleep(5);
    expect(resolved).toBe(0); // nobody is answered before the signal was delivered
    r.calls[0].settle();
    await Promise.all(done);
  });

  it('flushes at maxBatch without waiting and keeps separate keys apart', async () => {
    const r = recorder();
    const b = new Batcher<number>(r.send, { maxDelayMs: 10_000, maxBatch: 3 });
    const a = [1, 2, 3].map((i) => b.submit('wf-a', i));
    const other = b.submit('wf-b', 9);
    expect(r.calls.map((c) => [c.key, c.items])).toEqual([['wf-a', [1, 2, 3]]]);
    r.calls[0].settle();
    await Promise.all(a);
    const drained = b.drain(); // sends wf-b now instead of in 10 s
    expect(r.calls.map((c) => [c.key, c.items])).toEqual([
      ['wf-a', [1, 2, 3]],
      ['wf-b', [9]],
    ]);
    r.calls[1].settle();
    await Promise.all([other, drained]);
  });

  it('keeps one batch in flight per key and sends what queued meanwhile, in order', async () => {
    const r = recorder();
    const b = new Batcher<number>(r.send, { maxDelayMs: 5, maxBatch: 4, minIntervalMs: 0 });
    const all: Promise<void>[] = [];
    all.push(b.submit('wf', 1), b.submit('wf', 2));
    await sleep(20);
    expect(r.calls).toHaveLength(1);
    for (let i = 3; i <= 12; i++) all.push(b.submit('wf', i));
    await sleep(20);
    expect(r.calls).toHaveLength(1); // second batch waits for the first
    r.calls[0].settle();
    await sleep(1);
    expect(r.calls).toHaveLength(2);
    r.calls[1].settle();
    await sleep(1);
    r.calls[2].settle();
    await sleep(1);
    r.calls[3]?.settle();
    await Promise.all(all);
    expect(r.calls.map((c) => c.items)).toEqual([[1, 2], [3, 4, 5, 6], [7, 8, 9, 10], [11, 12]]);
    expect(r.maxInFlight()).toBe(1);
  });

  it('sends at most one batch per key per minimum interval: what arrives meanwhile goes together, other keys are not held', async () => {
    const r = recorder();
    const b = new Batcher<number>(r.send, { maxDelayMs: 5, minIntervalMs: 300 });
    const all = [b.submit('wf', 1)];
    await sleep(20);
    r.calls[0].settle();
    await all[0];
    // Answered at once, but the next batch to 'wf' waits out the interval; 'other' goes after its 5 ms.
    for (let i = 2; i <= 6; i++) all.push(b.submit('wf', i));
    all.push(b.submit('other', 99));
    await sleep(60);
    expect(r.calls.map((c) => c.key)).toEqual(['wf', 'other']);
    await sleep(300);
    expect(r.calls.map((c) => c.items)).toEqual([[1], [99], [2, 3, 4, 5, 6]]);
    r.calls.forEach((c) => c.settle());
    await Promise.all(all);
  });

  it('runs different keys concurrently', async () => {
    const r = recorder();
    const b = new Batcher<number>(r.send, { maxDelayMs: 5 });
    const p = [b.submit('x', 1), b.submit('y', 2), b.submit('z', 3)];
    await sleep(20);
    expect(r.calls.map((c) => c.key).sort()).toEqual(['x', 'y', 'z']);
    expect(r.maxInFlight()).toBe(3);
    r.calls.forEach((c) => c.settle());
    await Promise.all(p);
  });

  it("rejects every report of a failed batch with the sender's error, and later batches still go", async () => {
    const r = recorder();
    const b = new Batcher<number>(r.send, { maxDelayMs: 5, minIntervalMs: 0 });
    const first = [b.submit('wf', 1), b.submit('wf', 2)];
    await sleep(20);
    const second = b.submit('wf', 3);
    const boom = new Error('workflow not found');
    r.calls[0].settle(boom);
    await expect(first[0]).rejects.toBe(boom);
    await expect(first[1]).rejects.toBe(boom);
    await sleep(1);
    expect(r.calls[1].items).toEqual([3]);
    r.calls[1].settle();
    await expect(second).resolves.toBeUndefined();
  });

  it('with isolate, a failed batch is sent again one report at a time, so each succeeds or fails on its own', async () => {
    const sent: number[][] = [];
    const poison = new RangeError('Maximum call stack size exceeded');
    const gone = new Error('workflow gone');
    const b = new Batcher<number>(
      async (_k, items) => {
        sent.push(items);
        if (items.includes(13)) throw poison;
        if (items.includes(404)) throw gone;
      },
      { maxDelayMs: 5 },
      { isolate: (err) => err !== gone },
    );
    const [good1, bad, good2] = [b.submit('wf', 1), b.submit('wf', 13), b.submit('wf', 2)];
    await expect(bad).rejects.toBe(poison);
    await expect(good1).resolves.toBeUndefined();
    await expect(good2).resolves.toBeUndefined();
    expect(sent).toEqual([[1, 13, 2], [1], [13], [2]]); // in order, one in flight
    // An error every report would meet (the workflow is gone) fails the batch at once.
    sent.length = 0;
    const all = [b.submit('wf', 404), b.submit('wf', 3)];
    await expect(all[0]).rejects.toBe(gone);
    await expect(all[1]).rejects.toBe(gone);
    expect(sent).toEqual([[404, 3]]);
  });

  it('keeps a batch under maxBatchWeight (one heavy item still goes alone)', async () => {
    const sent: number[][] = [];
    const b = new Batcher<number>(
      async (_k, items) => {
        sent.push(items);
      },
      { maxDelayMs: 5, maxBatch: 100 },
      { weigh: (n) => n, maxBatchWeight: 10 },
    );
    await Promise.all([4, 4, 4, 30, 1].map((n) => b.submit('wf', n)));
    expect(sent).toEqual([[4, 4], [4], [30], [1]]);
  });

  it('sends at once, without waiting for the delay, when the reports waiting reach maxBatchWeight', async () => {
    const r = recorder();
    const b = new Batcher<number>(r.send, { maxDelayMs: 300, maxBatch: 100, minIntervalMs: 0 }, { weigh: (n) => n, maxBatchWeight: 10 });
    const all = [b.submit('wf', 3), b.submit('wf', 4)]; // 7: waits for company
    await sleep(20);
    expect(r.calls).toHaveLength(0);
    all.push(b.submit('wf', 5)); // 12: full
    await sleep(5);
    expect(r.calls.map((c) => c.items)).toEqual([[3, 4]]);
    r.calls[0].settle();
    await sleep(5);
    expect(r.calls.map((c) => c.items)).toEqual([[3, 4], [5]]); // what stayed goes right after, its own weight under the limit
    r.calls[1].settle();
    await Promise.all(all);
  });

  it('turns a synchronous throw of the sender into rejections', async () => {
    const b = new Batcher<number>(
      () => {
        throw new Error('sync');
      },
      { maxDelayMs: 1 },
    );
    await expect(b.submit('wf', 1)).rejects.toThrow('sync');
    // The lane recovers.
    await expect(b.submit('wf', 2)).rejects.toThrow('sync');
  });

  it('drains pending and in-flight batches', async () => {
    const sent: number[][] = [];
    const b = new Batcher<number>(
      async (_k, items) => {
        await sleep(10);
        sent.push(items);
      },
      { maxDelayMs: 10_000, maxBatch: 2 },
    );
    const p = [1, 2, 3].map((i) => b.submit('wf', i));
    await b.drain();
    expect(sent).toEqual([[1, 2], [3]]);
    await Promise.all(p);
  });
});
