/**
 * Where the command finds the API and its credential: the user's config file
 * (`$CLOUDGATE_CONFIG`, else `$XDG_CONFIG_HOME/cloudgate/config.yaml`, else
 * `~/.config/cloudgate/config.yaml`), written by `cloudgate login` with mode 0600 in a 0700
 * folder, and `CLOUDGATE_URL` / `CLOUDGATE_TOKEN`, which override it. After an OIDC sign-in
 * the file also holds the refresh token and what refreshing needs (cli/oidc.ts).
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { CliError, EXIT } from './client.js';

export interface UserConfig {
  url?: string;
  /** The bearer: an API token, or the access token of an OIDC sign-in (`oidc`). */
  token?: string;
  /** Where `token` came from when `cloudgate login --oidc` got it: what refreshing it needs. */
  oidc?: OidcSession;
}

/** An OIDC sign-in of `cloudgate login --oidc` (cli/oidc.ts). */
export interface OidcSession {
  issuer: string;
  clientId: string;
  resource?: string;
  refreshToken?: string;
  /** When the access token expires (ISO time), if the provider said. */
  expiresAt?: string;
}

export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.CLOUDGATE_CONFIG) return path.resolve(env.CLOUDGATE_CONFIG);
  const base = env.XDG_CONFIG_HOME && path.isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : path.join(os.homedir(), '.config');
  return path.join(base, 'cloudgate', 'config.yaml');
}

/**
 * The config file's contents, or `{}` when there is none. A file that group or others may
 * read is refused with the fix, as the API refuses its key files: it holds a bearer token.
 */
export function readConfig(file = configPath()): UserConfig {
  if (!existsSync(file)) return {};
  const mode = statSync(file).mode & 0o777;
  if (mode & 0o077) {
    throw new CliError(`${file} holds a token but group or others may read it (mode ${mode.toString(8)}); run: chmod 600 ${file}`, EXIT.auth);
  }
  let parsed: unknown;
  try {
    parsed = parseYaml(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new CliError(`${file} is not YAML: ${(err as Error).message}`, EXIT.usage, { cause: err });
  }
  if (parsed === null || parsed === undefined) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) throw new CliError(`${file}: expected a mapping with url and token`, EXIT.usage);
  const { url, token, oidc } = parsed as Record<string, unknown>;
  return { ...(typeof url === 'string' && { url }), ...(typeof token === 'string' && { token }), ...(oidcSession(oidc) && { oidc: oidcSession(oidc) }) };
}

/** The `oidc:` part of the file, when it has what a refresh needs (else it is ignored: the token stands alone). */
function oidcSession(v: unknown): OidcSession | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  const str = (k: string) => (typeof o[k] === 'string' && o[k] !== '' ? (o[k] as string) : undefined);
  const issuer = str('issuer');
  const clientId = str('clientId');
  if (!issuer || !clientId) return undefined;
  const [resource, refreshToken, expiresAt] = [str('resource'), str('refreshToken'), str('expiresAt')];
  return { issuer, clientId, ...(resource && { resource }), ...(refreshToken && { refreshToken }), ...(expiresAt && { expiresAt }) };
}

/** Writes the config file (0600; its folder 0700), replacing it whole so no reader sees half of it. */
export function writeConfig(config: UserConfig, file = configPath()): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, stringifyYaml(config), { mode: 0o600 });
  chmodSync(tmp, 0o600); // the umask may have narrowed it further, never widened: make it exactly 0600
  renameSync(tmp, file);
}

/** The endpoint and credential in force: the environment over the file. */
export function resolveEndpoint(env: NodeJS.ProcessEnv = process.env): { url: string; token: string } {
  const file = configPath(env);
  const stored = env.CLOUDGATE_URL && env.CLOUDGATE_TOKEN ? {} : readConfig(file);
  const url = env.CLOUDGATE_URL || stored.url;
  const token = env.CLOUDGATE_TOKEN || stored.token;
  if (!url || !token) {
    throw new CliError(
      `not logged in: run \`cloudgate login --url URL --token-file FILE\` or \`cloudgate login --url URL --oidc\` (or set CLOUDGATE_URL and CLOUDGATE_TOKEN); no ${!url ? 'URL' : 'token'} in ${file}`,
      EXIT.auth,
    );
  }
  return { url, token };
}
