/**
 * The HMAC secret of phone-home tokens. The worker signs tokens with it and the API verifies
 * them, so both must read the same secret: the configured one, else one generated once into
 * `<dataDir>/token-secret` (mode 0600) and reused by every later process.
 */
import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../model/config.js';

/** Returns `config.tokenSecret`, or the secret in `<dataDir>/token-secret`, creating it if missing. */
export function loadTokenSecret(config: Pick<Config, 'tokenSecret' | 'dataDir'>): string {
  if (config.tokenSecret) return config.tokenSecret;
  const file = path.join(config.dataDir, 'token-secret');
  mkdirSync(config.dataDir, { recursive: true });
  // Written whole to a private temp file, then linked into place: link fails if the file
  // exists, so when API and worker start together exactly one secret wins and nobody reads
  // a half-written file.
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`;
  try {
    writeFileSync(tmp, randomBytes(32).toString('hex'), { mode: 0o600, flag: 'wx' });
    linkSync(tmp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`cannot create ${file}`, { cause: err });
  } finally {
    rmSync(tmp, { force: true });
  }
  const secret = readFileSync(file, 'utf8').trim();
  if (secret.length < 16) throw new Error(`${file} holds no usable secret (need at least 16 characters)`);
  return secret;
}
