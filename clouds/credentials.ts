/**
 * Reads a referenced secret at the moment a cloud call needs it (inside an activity), so
 * the value never travels through configuration objects, workflow inputs or logs.
 */
import { readFileSync } from 'node:fs';
import type { SecretRef } from '../model/clouds-config.js';
import { CloudError } from './contract.js';

export function readSecret(ref: SecretRef, what: string): string {
  if ('env' in ref) {
    const v = process.env[ref.env];
    if (!v) throw new CloudError('InvalidCredentials', `${what}: environment variable ${ref.env} is not set`);
    return v;
  }
  try {
    const v = readFileSync(ref.file, 'utf8').trim();
    if (!v) throw new Error('file is empty');
    return v;
  } catch (err) {
    throw new CloudError('InvalidCredentials', `${what}: cannot read ${ref.file}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
