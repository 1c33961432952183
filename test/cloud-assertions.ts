/** Small helpers the adapter suites share. */
import { CloudError } from '../clouds/contract.js';

/** Polls `probe` until it returns something other than undefined. */
export async function eventually<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** The CloudError a call fails with (the test fails if it succeeds or fails otherwise). */
export async function cloudErrorOf(p: Promise<unknown>): Promise<CloudError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof CloudError) return err;
    throw new Error(`expected a CloudError, got ${String(err)}`, { cause: err });
  }
  throw new Error('expected a CloudError, but the call succeeded');
}
