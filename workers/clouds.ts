/**
 * Builds the worker's clouds from the registry file (`CLOUDGATE_CLOUDS`, YAML or JSON;
 * without one, just `sim`). Adapters get references to credentials, never values: they
 * read secrets at call time, inside activities.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { createCloudStackCloud } from '../clouds/cloudstack.js';
import type { CloudAdapter } from '../clouds/contract.js';
import { createEc2Cloud } from '../clouds/ec2.js';
import { createLibvirtCloud } from '../clouds/libvirt.js';
import { createOcciCloud } from '../clouds/occi.js';
import { createSimCloud, type SimCloud, type SimRule } from '../clouds/sim.js';
import { CloudsFileSchema, DEFAULT_CLOUDS, type CloudConfig, type CloudsFile } from '../model/clouds-config.js';
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
  /** The simulated cloud, when configured (tests and the benchmark drive it). */
  sim?: SimCloud;
}

/** One adapter per configured cloud. */
export function buildClouds(file: CloudsFile, config: Config, simRules?: SimRule[]): BuiltClouds {
  let sim: SimCloud | undefined;
  const make = (c: CloudConfig): CloudAdapter => {
    switch (c.kind) {
      case 'sim':
        sim = createSimCloud({ name: c.name, file: path.join(config.dataDir, `${c.name}-cloud.sqlite`), ...config.sim, rules: simRules });
        return sim;
      case 'libvirt':
        return createLibvirtCloud(c);
      case 'ec2':
        return createEc2Cloud(c);
      case 'cloudstack':
        return createCloudStackCloud(c);
      case 'occi':
        return createOcciCloud(c);
    }
  };
  const adapters = file.clouds.map(make);
  return { adapters, sim };
}
