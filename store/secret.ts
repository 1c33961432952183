/**
 * The HMAC secret of phone-home tokens. The worker signs tokens with it and the API verifies
 * them, so both must read the same secret: the configured one, else one generated once into
 * `<dataDir>/token-secret` (mode 0600) and reused by every later process. The secrets key and
 * the payload keys below are kept the same way. A key file that group or others may read
 * stops the process (`assertPrivateKeyFile`), and the data folder is made 0700.
 */
import { randomBytes } from 'node:crypto';
import { linkSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Config } from '../model/config.js';
import { assertPrivateKeyFile, ensurePrivateDir } from './private-files.js';
import { formatPayloadKeys, newPayloadKey, parsePayloadKeys, type PayloadKeyring } from '../model/payload-codec.js';

/**
 * Creates `file` (mode 0600) with `content()` unless it exists; true if this call created it.
 * Written whole to a private temp file, then linked into place: link fails if the file exists,
 * so when API and worker start together exactly one wins and nobody reads a half-written file.
 */
export function createOnce(file: string, content: () => string): boolean {
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`;
  try {
    writeFileSync(tmp, content(), { mode: 0o600, flag: 'wx' });
    linkSync(tmp, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`cannot create ${file}`, { cause: err });
    return false;
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** Returns `config.tokenSecret`, or the secret in `<dataDir>/token-secret`, creating it if missing. */
export function loadTokenSecret(config: Pick<Config, 'tokenSecret' | 'dataDir'>): string {
  if (config.tokenSecret) return config.tokenSecret;
  const file = path.join(config.dataDir, 'token-secret');
  ensurePrivateDir(config.dataDir);
  createOnce(file, () => randomBytes(32).toString('hex'));
  assertPrivateKeyFile(file);
  const secret = readFileSync(file, 'utf8').trim();
  if (secret.length < 16) throw new Error(`${file} holds no usable secret (need at least 16 characters)`);
  return secret;
}

/** Bytes of the AES-256-GCM key that encrypts context secrets at rest. */
export const SECRETS_KEY_BYTES = 32;
const HEX_KEY = /^[0-9a-fA-F]{64}$/;

/**
 * The key that encrypts context secrets at rest (AES-256-GCM, 32 bytes): `CLOUDGATE_SECRETS_KEY`
 * (64 hex digits) when set, else the key in `<dataDir>/secrets-key`, created once (mode 0600)
 * the same race-free way as the token secret. Losing it makes stored secrets unreadable.
 */
export function loadSecretsKey(config: Pick<Config, 'dataDir'>, env: Record<string, string | undefined> = process.env): Buffer {
  const fromEnv = env.CLOUDGATE_SECRETS_KEY;
  if (fromEnv !== undefined && fromEnv !== '') {
    if (!HEX_KEY.test(fromEnv.trim())) throw new Error('CLOUDGATE_SECRETS_KEY must be 64 hex digits (32 bytes)');
    return Buffer.from(fromEnv.trim(), 'hex');
  }
  const file = path.join(config.dataDir, 'secrets-key');
  ensurePrivateDir(config.dataDir);
  createOnce(file, () => randomBytes(SECRETS_KEY_BYTES).toString('hex'));
  assertPrivateKeyFile(file);
  const hex = readFileSync(file, 'utf8').trim();
  if (!HEX_KEY.test(hex)) throw new Error(`${file} holds no usable key (need 64 hex digits)`);
  return Buffer.from(hex, 'hex');
}

/**
 * The keyring of the Temporal payload codec (`model/payload-codec.ts`): `CLOUDGATE_PAYLOAD_KEYS`
 * (`id1:<64 hex>,id2:<64 hex>`, the first encrypts, all decrypt) when set, else the keys in
 * `<dataDir>/payload-keys` — one `id:<64 hex>` per line, current first — created once with one
 * random key (mode 0600) the same race-free way as the token secret, so the API, the worker
 * and the test harness all read the same keys. To rotate, put a new key on the first line
 * and keep the old ones below it: payloads written under them stay readable. Losing the
 * keys makes every workflow history unreadable (and running workflows stuck).
 */
export function loadPayloadKeys(config: Pick<Config, 'dataDir'>, env: Record<string, string | undefined> = process.env): PayloadKeyring {
  const fromEnv = env.CLOUDGATE_PAYLOAD_KEYS;
  if (fromEnv !== undefined && fromEnv.trim() !== '') return parsePayloadKeys(fromEnv, 'CLOUDGATE_PAYLOAD_KEYS');
  const file = path.join(config.dataDir, 'payload-keys');
  ensurePrivateDir(config.dataDir);
  createOnce(file, () => {
    const id = `k${new Date().toISOString().slice(0, 10).replace(/-/g, '')}-${randomBytes(3).toString('hex')}`;
    return formatPayloadKeys({ current: id, keys: new Map([[id, newPayloadKey()]]) });
  });
  assertPrivateKeyFile(file);
  return parsePayloadKeys(readFileSync(file, 'utf8'), file);
}

/**
 * The bearer of the Prometheus scrape (`/metrics` on the API and on each worker, and nothing
 * else): `config.metrics.token` (`CLOUDGATE_METRICS_TOKEN`) when set, else the token in
 * `<dataDir>/metrics-token`, created once (mode 0600, `cgm_` and 43 base64url characters) the
 * same race-free way as the token secret, so the API, the worker and Prometheus's
 * `credentials_file` read the same one. It reads counts and owner names, never changes anything.
 */
export function loadMetricsToken(config: Pick<Config, 'dataDir'> & { metrics?: { token?: string } }): string {
  if (config.metrics?.token) return config.metrics.token;
  const file = path.join(config.dataDir, 'metrics-token');
  ensurePrivateDir(config.dataDir);
  createOnce(file, () => `cgm_${randomBytes(32).toString('base64url')}\n`);
  assertPrivateKeyFile(file);
  const token = readFileSync(file, 'utf8').trim();
  if (!/^[A-Za-z0-9._~+/-]{16,}=*$/.test(token)) throw new Error(`${file} holds no usable token (at least 16 characters of a bearer token)`);
  return token;
}

/**
 * The variables that may name a file instead of holding the value (`<NAME>_FILE`), as Docker
 * and compose secrets are files under `/run/secrets/`: the secrets above, and the store's URL
 * (`CLOUDGATE_DATABASE_URL`, which carries a password).
 */
export const FILE_VARIABLES = ['CLOUDGATE_TOKEN_SECRET', 'CLOUDGATE_SECRETS_KEY', 'CLOUDGATE_PAYLOAD_KEYS', 'CLOUDGATE_METRICS_TOKEN', 'CLOUDGATE_DATABASE_URL'] as const;

/**
 * Sets each of {@link FILE_VARIABLES} from the file its `<NAME>_FILE` names (trailing white
 * space dropped), before the configuration is read — so every later reader (`configFromEnv`,
 * the key loaders above) sees one value wherever it came from. Entry points call it on
 * `process.env`. Both forms at once, or a file that cannot be read, stop the process, naming
 * the variable (never the value).
 */
export function readFileVariables(env: Record<string, string | undefined>): void {
  for (const name of FILE_VARIABLES) {
    const file = env[`${name}_FILE`];
    if (file === undefined || file === '') continue;
    if (env[name] !== undefined && env[name] !== '') throw new Error(`set ${name} or ${name}_FILE, not both`);
    let value: string;
    try {
      value = readFileSync(file, 'utf8').trimEnd();
    } catch (err) {
      throw new Error(`${name}_FILE=${file} cannot be read`, { cause: err });
    }
    if (value === '') throw new Error(`${name}_FILE=${file} is empty`);
    env[name] = value;
  }
}
