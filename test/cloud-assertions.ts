/** Small helpers the adapter suites share. */
import { CloudError, type InstanceSpec } from '../clouds/contract.js';

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

/**
 * A maker of instance specs with fresh keys `<run>-c-svc-<n>` (unique per test run, so
 * suites against long-lived peers never see earlier runs' instances).
 */
export function instanceSpecs(run: string): (over?: Partial<InstanceSpec>, cluster?: string) => InstanceSpec {
  let n = 0;
  return (over = {}, cluster = `${run}-c`) => {
    const key = `${cluster}-svc-${n++}`;
    return {
      name: key,
      image: 'cernvm4-micro',
      offering: { cpus: 1, memoryMiB: 1024, diskGiB: 10 },
      userData: '#cloud-config\n{}\n',
      tags: { cluster, service: 'svc', key },
      ...over,
    };
  };
}
