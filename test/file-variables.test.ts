/** `CLOUDGATE_…_FILE`: secrets from files (compose secrets), read before the configuration. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from '@jest/globals';
import { configFromEnv } from '../model/config.js';
import { loadPayloadKeys, readFileVariables } from '../store/secret.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'cg-file-vars-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = (name: string, content: string) => {
  const p = path.join(dir, name);
  writeFileSync(p, content);
  return p;
};

describe('readFileVariables', () => {
  it('sets each variable from its file, without the trailing newline, for every later reader', () => {
    const key = 'ab'.repeat(32);
    const env: Record<string, string | undefined> = {
      CLOUDGATE_METRICS_TOKEN_FILE: file('metrics', 'cgm_0123456789abcdefXYZ\n'),
      CLOUDGATE_PAYLOAD_KEYS_FILE: file('keys', `k1:${key}\n`),
      CLOUDGATE_TOKEN_SECRET: 'set-directly-0123456789',
    };
    readFileVariables(env);
    expect(env.CLOUDGATE_METRICS_TOKEN).toBe('cgm_0123456789abcdefXYZ');
    const config = configFromEnv(env);
    expect(config.metrics.token).toBe('cgm_0123456789abcdefXYZ');
    expect(config.tokenSecret).toBe('set-directly-0123456789');
    expect(loadPayloadKeys(config, env).current).toBe('k1');
  });

  it('refuses both forms at once, an unreadable file and an empty one, naming the variable and never a value', () => {
    expect(() => readFileVariables({ CLOUDGATE_TOKEN_SECRET: 'x'.repeat(20), CLOUDGATE_TOKEN_SECRET_FILE: file('t', 'y'.repeat(20)) })).toThrow(
      'set CLOUDGATE_TOKEN_SECRET or CLOUDGATE_TOKEN_SECRET_FILE, not both',
    );
    expect(() => readFileVariables({ CLOUDGATE_SECRETS_KEY_FILE: path.join(dir, 'missing') })).toThrow(/^CLOUDGATE_SECRETS_KEY_FILE=.*missing cannot be read$/);
    expect(() => readFileVariables({ CLOUDGATE_DATABASE_URL_FILE: file('empty', '\n') })).toThrow(/CLOUDGATE_DATABASE_URL_FILE=.* is empty/);
  });
});
