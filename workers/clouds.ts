/**
 * Builds the worker's clouds from the registry file (`CLOUDGATE_CLOUDS`, YAML or JSON;
 * without one, just `sim`). Adapters get references to credentials, never values: they
 * read secrets at call time, inside activities.
 */
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { CloudAdapter } from '../clouds/contract.js';
import { createSimCloud, type SimCloud, type SimRule } from '../clouds/sim.js';
import { CloudsFileSchema, DEFAULT_CLOUDS, type CloudConfig, type CloudQuota, type CloudsFile } from '../model/clouds-config.js';
import type { Config } from '../model/config.js';

/** Reads and validates the registry file; errors name the file and the field. */
export function loadCloudsFile(file: string | undefined): CloudsFile {
  if (!file) return DEFAULT_CLOUDS;
  let raw: unknown;
  try {
    const text = readFileSync(file, 'utf8');
    raw = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new Error(`cannot read the cloud registry ${file}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
  const parsed = CloudsFileSchema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw new Error(`invalid cloud registry ${file}: ${issues}`);
  }
  return parsed.data;
}

export interface BuiltClouds {
  adapters: CloudAdapter[];
  /** The first simulated cloud, when configured (tests and the benchmark drive it). */
  sim?: SimCloud;
  /** Every simulated cloud, by name (a registry may list several: placement over two clouds on one machine). */
  sims: Map<string, SimCloud>;
}

/**
 * One adapter per configured cloud. Adapter modules are imported only for the kinds the
 * registry names: the AWS SDK and the libvirt binding cost a worker ~100 MiB of memory,
 * which a sim-only worker (the demo, the benchmark) should not pay.
 */
export async function buildClouds(file: CloudsFile, config: Config, simRules?: SimRule[]): Promise<BuiltClouds> {
  const sims = new Map<string, SimCloud>();
  const make = async (c: CloudConfig): Promise<CloudAdapter> => {
    switch (c.kind) {
      case 'sim': {
        const sim = createSimCloud({
          name: c.name,
          file: path.join(config.dataDir, `${c.name}-cloud.sqlite`),
          ...config.sim,
          rules: simRules,
          images: c.images,
          ...(c.capacity !== undefined && { capacity: c.capacity }),
          ...(c.createFailureRate !== undefined && { createFailureRate: c.createFailureRate }),
        });
        sims.set(c.name, sim);
        return sim;
      }
      case 'libvirt':
        return (await import('../clouds/libvirt.js')).createLibvirtCloud(c);
      case 'ec2':
        return (await import('../clouds/ec2.js')).createEc2Cloud(c);
      case 'cloudstack':
        return (await import('../clouds/cloudstack.js')).createCloudStackCloud(c);
      case 'occi':
        return (await import('../clouds/occi.js')).createOcciCloud(c);
    }
  };
  const adapters: CloudAdapter[] = [];
  for (const c of file.clouds) adapters.push(await make(c));
  return { adapters, sim: sims.values().next().value, sims };
}

/** How often (at most) the registry file is looked at again for changed quotas. */
const QUOTA_RECHECK_MS = 2_000;

/**
 * Each cloud's `quota` as the registry file says *now*: the file is read again when it has
 * changed (checked at most every {@link QUOTA_RECHECK_MS}), so an operator raises or lowers a
 * quota by editing it, without restarting the worker — services waiting for room go on at
 * their next look. Everything else in the file still needs a restart (adapters are built
 * once). An unreadable or invalid edit is logged and the quotas read before stay.
 */
export function liveQuotas(file: string | undefined, initial: CloudsFile, onError?: (message: string) => void): (cloud: string) => CloudQuota | undefined {
  let current = new Map(initial.clouds.map((c) => [c.name, c.quota]));
  let seen = file ? mtimeOf(file) : 0;
  let checkedAt = Date.now();
  return (cloud) => {
    if (file && Date.now() - checkedAt >= QUOTA_RECHECK_MS) {
      checkedAt = Date.now();
      const mtime = mtimeOf(file);
      if (mtime !== seen) {
        seen = mtime;
        try {
          const next = loadCloudsFile(file);
          current = new Map(next.clouds.map((c) => [c.name, c.quota]));
        } catch (err) {
          onError?.(`keeping the quotas read before: ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    }
    return current.get(cloud);
  };
}

function mtimeOf(file: string): number {
  try {
    return statSync(file).mtimeMs;
  } catch {
    return 0;
  }
}
