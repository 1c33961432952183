/**
 * User-data rendering: a context plus one instance's phone-home details become the multipart
 * MIME user-data a CernVM reads at first boot. Each agent on the guest picks its own part:
 * the µCernVM bootloader its `[ucernvm-begin]` block, amiconfig its INI sections, cloud-init
 * its `#cloud-config`, cloudgate's guest agent (and the sim cloud) the phone-home JSON.
 * A service without a context renders {@link NO_CONTEXT}: its guests still get the
 * phone-home agent, or a real VM would never report ready.
 */
import { createHash } from 'node:crypto';
import { stringify as stringifyYaml } from 'yaml';
import { ContextSchema, firstSectionLine, type Context } from './context.js';

export interface PhoneHome {
  /** Full URL the guest POSTs its readiness report to. */
  url: string;
  instanceId: string;
  token: string;
  /** CVMFS repositories the guest must probe before reporting ok. */
  repositories: string[];
}

/** The readiness endpoint of one instance under the gateway's public URL. */
export const phoneHomeUrl = (publicUrl: string, instanceId: string): string =>
  `${publicUrl.replace(/\/+$/, '')}/v1/instances/${encodeURIComponent(instanceId)}/readiness`;

/** cloudgate's own part: a private type, so cloud-init and amiconfig leave it alone. */
export const PHONE_HOME_CONTENT_TYPE = 'text/x-cloudgate-phone-home';

/** What a guest agent does at boot: find its phone-home part in the user-data. */
export function extractPhoneHome(userData: string): PhoneHome | undefined {
  const m = new RegExp(`Content-Type: ${PHONE_HOME_CONTENT_TYPE}[^\\r\\n]*\\r?\\n(?:[^\\r\\n]+\\r?\\n)*\\r?\\n([^\\r\\n]+)`).exec(userData);
  if (!m) return undefined;
  try {
    return JSON.parse(m[1]) as PhoneHome;
  } catch {
    return undefined;
  }
}

// ---- contexts ----

/** What `maskSecrets` renders in place of every secret value and the phone-home token. */
export const MASK = '********';

/**
 * µCernVM reads the raw user-data line by line, whatever the part's type (cernvm-micro
 * parse_user_data.cc), so the part must stay 7bit/8bit text, never base64. `text/ucernvm` is
 * the type CernVM's contextualization notes use (`amiconfig-mime ucernvm-data:ucernvm`), and
 * one cloud-init has no handler for: it neither runs the block nor guesses its type as it
 * would for text/plain.
 */
export const UCERNVM_CONTENT_TYPE = 'text/ucernvm';
/** amiconfig's INI user-data, typed as CernVM's docs mix it with cloud-init (`amiconfig-mime x:amiconfig`). */
export const AMICONFIG_CONTENT_TYPE = 'text/amiconfig';
/** cloud-init's cloud-config part (cloud-init docs, "User-data formats"). */
export const CLOUD_CONFIG_CONTENT_TYPE = 'text/cloud-config';

/** Where the cloud-config part puts things on the guest. */
export const GUEST_PATHS = {
  cvmfsConfig: '/etc/cvmfs/default.local',
  environment: '/etc/profile.d/cloudgate-environment.sh',
  secrets: '/etc/cloudgate/secrets.env',
  phoneHomeEnv: '/etc/cloudgate/phone-home.env',
  startupScript: '/usr/local/sbin/cloudgate-startup',
  phoneHomeAgent: '/usr/local/sbin/cloudgate-phone-home',
} as const;

/**
 * The context of a service that names none: nothing for the agents but the phone-home agent
 * (and the image's default user), which reports the instance ready once it has booted.
 */
export const NO_CONTEXT: Context = ContextSchema.parse({ name: 'no context' });

/** One instance's side of the rendering; secrets come separately from the context so callers can mask them. */
export interface RenderInstance {
  /**
   * cloudgate's phone-home details. Absent for a VM no workflow waits for (a laptop CernVM
   * paired by PIN): then neither the phone-home part nor the agent is rendered.
   */
  phoneHome?: PhoneHome;
  /** Values for the context's `secretNames`, decrypted by the caller. */
  secrets?: Record<string, string>;
  /** Preview mode: secret values and the token render as `MASK`; missing secret values are fine. */
  maskSecrets?: boolean;
}

/** Size as the clouds count it (EC2: 16 KB of user-data bytes before base64). */
export const userDataSize = (text: string): number => Buffer.byteLength(text, 'utf8');

/** How a cloud limits user-data: bytes of the text itself, or of its base64 form. */
export interface UserDataLimit {
  maxBytes: number;
  counted: 'raw' | 'base64';
  /** How the cloud's documentation states the limit, for error messages. */
  stated: string;
}

/**
 * User-data limits per cloud kind, checked when a cluster is submitted (api/) and again by
 * the adapters before they call the cloud. EC2: 16 KB before base64 (RunInstances
 * `UserData`); CloudStack: 32 KB after base64, sent by POST (deployVirtualMachine
 * `userdata`). libvirt's seed ISO, OCCI and the sim take what they are given.
 */
export const USER_DATA_LIMITS = {
  ec2: { maxBytes: 16 * 1024, counted: 'raw', stated: '16 KB before base64' },
  cloudstack: { maxBytes: 32 * 1024, counted: 'base64', stated: '32 KB after base64' },
} as const satisfies Record<string, UserDataLimit>;

/** The size of `text` as a cloud of `kind` counts it, and its limit; undefined for kinds without one. */
export function measureUserData(kind: string, text: string): { size: number; limit: UserDataLimit } | undefined {
  const limit: UserDataLimit | undefined = (USER_DATA_LIMITS as Record<string, UserDataLimit>)[kind];
  if (!limit) return undefined;
  const raw = userDataSize(text);
  return { size: limit.counted === 'raw' ? raw : 4 * Math.ceil(raw / 3), limit };
}

/**
 * cloud-init's merge rule for the parts after cloudgate's own cloud-config (cloud-init docs,
 * "Merging user-data sections"): lists are appended, keys cloudgate already set are kept
 * (a nested list still appended), strings are not replaced. Without it the later part's
 * `users`/`write_files`/`runcmd` would replace cloudgate's.
 */
export const CLOUD_CONFIG_MERGE_TYPE = 'list(append)+dict(no_replace,recurse_list)+str()';

/** One part of the multipart user-data, in the order the guest reads them. */
export interface UserDataPart {
  contentType: string;
  filename: string;
  body: string;
  /** cloud-init's `Merge-Type` header, for cloud-config parts after the first. */
  mergeType?: string;
}

/**
 * The parts of one instance's user-data, in order:
 * 1. the µCernVM block: its parser reads the raw user-data line by line and stops at the
 *    first `[ucernvm-end]`, so the block comes first;
 * 2. cloudgate's `#cloud-config` (users, files, startup script), rendered as YAML 1.1 (what
 *    cloud-init's PyYAML reads);
 * 3. the context's extra cloud-config *verbatim*, merged by cloud-init itself
 *    ({@link CLOUD_CONFIG_MERGE_TYPE}), so every value reaches cloud-init exactly as written
 *    (a quoted date stays a string, `!!binary` stays bytes);
 * 4. a last cloud-config part that runs the phone-home agent after everything else;
 * 5. the phone-home JSON;
 * 6. the amiconfig INI, last: amiconfig parses the *whole* raw user-data as one INI file,
 *    keeping every `[section]` line and every `key=value`/`key: value` line after the first
 *    section. The µCernVM markers open sections that absorb the lines of parts 2-5, so the
 *    `[amiconfig]` and `[cernvm]` sections hold exactly cloudgate's lines (the boundary
 *    carries no `=` or `:`, so the closing line is not an option either).
 * When the context has no extra cloud-config, parts 2 and 4 are one.
 * @throws Error when a declared secret has no value (unless masking) or an undeclared one is given.
 */
export function renderContextParts(ctx: Context, instance: RenderInstance): UserDataPart[] {
  const mask = instance.maskSecrets === true;
  const secrets = secretValues(ctx, instance.secrets ?? {}, mask);
  const given = instance.phoneHome;
  const phoneHome: PhoneHome | undefined = given && {
    ...given,
    repositories: [...new Set([...ctx.repositories, ...given.repositories])],
    token: mask ? MASK : given.token,
  };
  const extra = ctx.cloudConfig;
  const agentRun = phoneHome ? [[GUEST_PATHS.phoneHomeAgent]] : [];
  const cloudConfig = (config: Record<string, unknown>): string => `#cloud-config\n${stringifyCloudConfig(config)}`;
  const parts: UserDataPart[] = [
    { contentType: UCERNVM_CONTENT_TYPE, filename: 'ucernvm.txt', body: renderUcernvm(ctx) },
    { contentType: CLOUD_CONFIG_CONTENT_TYPE, filename: 'cloud-config.yaml', body: cloudConfig(renderCloudConfig(ctx, phoneHome, secrets, extra ? [] : agentRun)) },
  ];
  if (extra !== undefined) {
    parts.push({ contentType: CLOUD_CONFIG_CONTENT_TYPE, filename: 'context-cloud-config.yaml', body: extra, mergeType: CLOUD_CONFIG_MERGE_TYPE });
    if (agentRun.length) {
      parts.push({ contentType: CLOUD_CONFIG_CONTENT_TYPE, filename: 'cloudgate-phone-home.yaml', body: cloudConfig({ runcmd: agentRun }), mergeType: CLOUD_CONFIG_MERGE_TYPE });
    }
  }
  if (phoneHome) parts.push({ contentType: PHONE_HOME_CONTENT_TYPE, filename: 'cloudgate-phone-home.json', body: `${JSON.stringify(phoneHome)}\n` });
  parts.push({ contentType: AMICONFIG_CONTENT_TYPE, filename: 'amiconfig.ini', body: renderAmiconfig(ctx) });
  // Only the first part may hold µCernVM's markers or INI section lines at the start of a line.
  for (const p of parts.slice(1, -1)) {
    const line = firstSectionLine(p.body);
    if (line !== undefined) throw new Error(`the ${p.filename} part has a line that µCernVM or amiconfig would read as its own: ${JSON.stringify(line)}`);
  }
  return parts;
}

/** The whole user-data for one instance of a context: {@link renderContextParts} as multipart MIME. */
export const renderContextUserData = (ctx: Context, instance: RenderInstance): string => multipartUserData(renderContextParts(ctx, instance));

/**
 * Placeholders of a phone-home's per-instance values: letters only, so every format they pass
 * through (YAML, JSON, shell quotes) writes them as they are, as it does the real values.
 */
const SLOTS = { url: 'cgslotUrlzq', instanceId: 'cgslotIdzq', token: 'cgslotTokenzq' } as const;
/** What a real value may hold to go where its placeholder was: no format above quotes or escapes these. */
const PLAIN_VALUE = /^[A-Za-z0-9._~:/?&=%+-]*$/;

/**
 * The user-data of many instances of one context with phone-homes (a create batch), as
 * {@link renderContextUserData} renders each, byte for byte, at a tenth of the cost: the parts
 * are rendered once with placeholders for the phone-home's URL, instance id and token, then
 * each instance gets its own values put in and its own boundary. Rendering cost about 0.55 ms
 * an instance (YAML), a tenth of a worker's CPU in a 10,000-instance deployment. The first
 * instance is also rendered in full and compared; on any difference, or a value with a
 * character some format would quote, each instance is rendered in full as before. This holds
 * while the values go only where text is written as it is (the phone-home env file's block
 * text, the JSON part): a YAML scalar of its own could be quoted for one id and not another;
 * test/user-data-render.test.ts compares whole renders of several ids.
 * @throws Error as {@link renderContextParts} does (a declared secret without a value).
 */
export function contextUserDataRenderer(ctx: Context, secrets?: Record<string, string>): (phoneHome: PhoneHome) => string {
  const full = (phoneHome: PhoneHome) => renderContextUserData(ctx, { phoneHome, secrets });
  const repositories: string[] = [];
  const template = renderContextParts(ctx, { phoneHome: { ...SLOTS, repositories }, secrets });
  const fill = (phoneHome: PhoneHome): string | undefined => {
    const values = [phoneHome.url, phoneHome.instanceId, phoneHome.token];
    if (phoneHome.repositories.length > 0 || !values.every((v) => PLAIN_VALUE.test(v))) return undefined;
    const put = (body: string) => body.replaceAll(SLOTS.url, phoneHome.url).replaceAll(SLOTS.instanceId, phoneHome.instanceId).replaceAll(SLOTS.token, phoneHome.token);
    return multipartUserData(template.map((part) => ({ ...part, body: put(part.body) })));
  };
  let checked: boolean | undefined;
  return (phoneHome) => {
    if (checked === false) return full(phoneHome);
    const filled = fill(phoneHome);
    if (filled === undefined) return full(phoneHome);
    if (checked === undefined) {
      checked = filled === full(phoneHome);
      if (!checked) return full(phoneHome);
    }
    return filled;
  };
}

function secretValues(ctx: Context, given: Record<string, string>, mask: boolean): Record<string, string> {
  const unknown = Object.keys(given).filter((n) => !ctx.secretNames.includes(n));
  if (unknown.length) throw new Error(`secrets not declared by the context: ${unknown.join(', ')}`);
  return Object.fromEntries(
    ctx.secretNames.map((n) => {
      if (mask) return [n, MASK];
      if (given[n] === undefined) throw new Error(`no value for the context's secret "${n}"`);
      return [n, given[n]];
    }),
  );
}

/**
 * Parts whose agent reads the raw user-data rather than the decoded MIME part (µCernVM, amiconfig).
 * Every other part that is not ASCII goes base64: cloud-init (22.4) reads an 8bit part's
 * UTF-8 bytes back as Latin-1 and its YAML loader then refuses the text (`unacceptable
 * character #xdcfc`), dropping the whole part with a warning; base64 arrives intact.
 */
const READ_RAW: ReadonlySet<string> = new Set([UCERNVM_CONTENT_TYPE, AMICONFIG_CONTENT_TYPE]);

/**
 * Boundary derived from the parts (stable output), lengthened until no part contains it
 * (RFC 2046 §5.1.1). Letters, digits and `-` only: amiconfig would read a closing line with
 * `=` or `:` in it as an option of the last section.
 */
export function multipartUserData(parts: UserDataPart[]): string {
  const digest = createHash('sha256');
  for (const p of parts) digest.update(p.body);
  const seed = digest.digest('hex');
  let boundary = '';
  for (let n = 0; !boundary || parts.some((p) => p.body.includes(boundary)); n++) boundary = `cloudgate-${seed.slice(0, 24)}${n ? `-${n}` : ''}`;
  const lines = [`Content-Type: multipart/mixed; boundary="${boundary}"`, 'MIME-Version: 1.0', ''];
  for (const p of parts) {
    const ascii = Buffer.byteLength(p.body, 'utf8') === p.body.length;
    const encoding = ascii ? '7bit' : READ_RAW.has(p.contentType) ? '8bit' : 'base64';
    lines.push(
      `--${boundary}`,
      `Content-Type: ${p.contentType}; charset="${ascii ? 'us-ascii' : 'utf-8'}"`,
      `Content-Transfer-Encoding: ${encoding}`,
      `Content-Disposition: attachment; filename="${p.filename}"`,
      ...(p.mergeType ? [`Merge-Type: ${p.mergeType}`] : []),
      '',
      // The line break before a boundary belongs to the boundary (RFC 2046 §5.1.1): a body
      // ending in "\n" keeps it only if another one follows, so parts arrive byte for byte.
      encoding === 'base64' ? (Buffer.from(p.body, 'utf8').toString('base64').match(/.{1,76}/g) ?? []).join('\n') : p.body,
    );
  }
  lines.push(`--${boundary}--`, '');
  return lines.join('\n');
}

/** POSIX shell single quotes: the only character needing care inside is `'` itself. */
const shq = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * The stratum-1s µCernVM can use, as `host[:port]`: its bootloader builds
 * `http://<host>/cvmfs/<branch>` from each (cernvm-micro scripts.d/14cvmfs), so only servers
 * of exactly that shape (`http://host[:port]/cvmfs/@fqrn@`) mean the same to it; others
 * (https, another path, `@org@`) are left to CVMFS itself, which reads CVMFS_SERVER_URL.
 */
const ucernvmServerHosts = (servers: string[]): string[] => [
  ...new Set(servers.flatMap((u) => /^http:\/\/([^/@]+)\/cvmfs\/@fqrn@$/.exec(u)?.[1] ?? [])),
];

/**
 * The µCernVM block. Keys as cernvm-micro's README lists them; its parser upper-cases them
 * into `_UCONTEXT_<KEY>` and the OS appends `_UCONTEXT_CVMFS_HTTP_PROXY` to
 * /etc/cvmfs/site.conf, which /bin/sh sources, so the proxy (`;`, `|`) is double-quoted as
 * CernVM Online did. `cvmfs_server`, `cvmfs_branch` and `cvmfs_tag` pick the OS repository.
 */
function renderUcernvm(ctx: Context): string {
  const { proxy, servers, branch, tag } = ctx.cvmfs;
  const lines = ['[ucernvm-begin]'];
  if (proxy) lines.push(`cvmfs_http_proxy="${proxy}"`);
  const hosts = ucernvmServerHosts(servers ?? []);
  if (hosts.length) lines.push(`cvmfs_server=${hosts.join(',')}`);
  if (branch) lines.push(`cvmfs_branch=${branch}`);
  if (tag) lines.push(`cvmfs_tag=${tag}`);
  lines.push('[ucernvm-end]', '');
  return lines.join('\n');
}

/**
 * amiconfig's `[cernvm]` section as its cernvm plugin reads it: comma lists; `users` entries
 * `name:group:password` (a `$6$` hash is passed on to /etc/cernvm/config; an empty one makes
 * the plugin pick a random password); `repositories` becomes CVMFS_REPOSITORIES verbatim, so
 * fully qualified names work for every domain. `environment` is split on `,` then `=`, so a
 * value holding either (or `%`, which INI readers may interpolate, or whitespace before `;`,
 * where Python 2's ConfigParser starts a comment) is left to the cloud-config environment
 * file only.
 */
function renderAmiconfig(ctx: Context): string {
  const lines = ['[amiconfig]', 'plugins=cernvm', '', '[cernvm]'];
  if (ctx.repositories.length) lines.push(`repositories=${ctx.repositories.join(',')}`);
  if (ctx.users.length) lines.push(`users=${ctx.users.map((u) => `${u.name}:${u.group ?? u.name}:${u.passwordHash ?? ''}`).join(',')}`);
  // Quoted: the plugin writes CVMFS_HTTP_PROXY=<value> into /etc/cvmfs/site.conf, sourced by /bin/sh.
  if (ctx.cvmfs.proxy) lines.push(`proxy='${ctx.cvmfs.proxy}'`);
  if (ctx.services.length) lines.push(`services=${ctx.services.join(',')}`);
  // ConfigParser also cuts a value at whitespace followed by ";" (an inline comment).
  const env = Object.entries(ctx.environment).filter(([, v]) => !/[,=%]|\s;/.test(v) && v.trim() === v);
  if (env.length) lines.push(`environment=${env.map(([k, v]) => `${k}=${v}`).join(',')}`);
  lines.push('');
  return lines.join('\n');
}

type WriteFile = { path: string; permissions: string; owner: string; content: string };

/**
 * cloudgate's own cloud-config. Users keep the image's `default` user (cloud-init creates only
 * the listed users otherwise), get `passwd` as the stored hash and `lock_passwd: false` only
 * when they have one. `lastRuncmd` ends the runcmd list (the phone-home agent, when no extra
 * cloud-config part comes between). The context's extra cloud-config is not merged here but
 * sent as its own part that cloud-init merges (see {@link renderContextParts}): its lists
 * are appended, so its `runcmd` runs after the startup script and before the agent.
 */
function renderCloudConfig(ctx: Context, phoneHome: PhoneHome | undefined, secrets: Record<string, string>, lastRuncmd: unknown[]): Record<string, unknown> {
  const files: WriteFile[] = [];
  const file = (path: string, permissions: string, content: string) => files.push({ path, permissions, owner: 'root:root', content });

  const cvmfs = [
    ctx.repositories.length && `CVMFS_REPOSITORIES=${shq(ctx.repositories.join(','))}`,
    ctx.cvmfs.proxy && `CVMFS_HTTP_PROXY=${shq(ctx.cvmfs.proxy)}`,
    ctx.cvmfs.servers?.length && `CVMFS_SERVER_URL=${shq(ctx.cvmfs.servers.join(';'))}`,
  ].filter((l): l is string => typeof l === 'string');
  // CVMFS sources its .local files with /bin/sh (CVMFS docs, "Structure of /etc/cvmfs"): quote.
  if (cvmfs.length) file(GUEST_PATHS.cvmfsConfig, '0644', `# Written by cloudgate from the context.\n${cvmfs.join('\n')}\n`);
  const env = Object.entries(ctx.environment);
  if (env.length) file(GUEST_PATHS.environment, '0644', env.map(([k, v]) => `export ${k}=${shq(v)}\n`).join(''));
  const secretEntries = Object.entries(secrets);
  if (secretEntries.length) file(GUEST_PATHS.secrets, '0600', secretEntries.map(([k, v]) => `${k}=${shq(v)}\n`).join(''));
  if (phoneHome) {
    file(
      GUEST_PATHS.phoneHomeEnv,
      '0600',
      [
        `CLOUDGATE_PHONE_HOME_URL=${shq(phoneHome.url)}`,
        `CLOUDGATE_INSTANCE_ID=${shq(phoneHome.instanceId)}`,
        `CLOUDGATE_TOKEN=${shq(phoneHome.token)}`,
        '',
      ].join('\n'),
    );
  }
  if (ctx.startupScript) {
    // Scripts pasted from Windows editors would fail on `#!/bin/sh\r`; CernVM Online stripped \r too.
    const script = ctx.startupScript.replace(/\r\n?/g, '\n');
    file(GUEST_PATHS.startupScript, '0700', script.startsWith('#!') ? script : `#!/bin/sh\n${script}`);
  }
  if (phoneHome) file(GUEST_PATHS.phoneHomeAgent, '0700', phoneHomeAgent(phoneHome.repositories));

  const runcmd: unknown[] = [];
  if (ctx.services.length) {
    runcmd.push(['/bin/sh', '-c', `for s in ${ctx.services.join(' ')}; do systemctl enable --now "$s" || service "$s" start; done`]);
  }
  if (ctx.startupScript) {
    const sources = [env.length && GUEST_PATHS.environment, secretEntries.length && GUEST_PATHS.secrets].filter(Boolean).map((p) => `. ${p}; `);
    runcmd.push(['/bin/sh', '-c', `set -a; ${sources.join('')}set +a; exec ${GUEST_PATHS.startupScript}`]);
  }

  const groups = [...new Set(ctx.users.flatMap((u) => (u.group ? [u.group] : [])))];
  const users = ctx.users.map((u) => ({
    name: u.name,
    ...(u.group && { primary_group: u.group }),
    shell: '/bin/bash',
    lock_passwd: u.passwordHash === undefined,
    ...(u.passwordHash && { passwd: u.passwordHash }),
    ...(u.sshKeys?.length && { ssh_authorized_keys: u.sshKeys }),
  }));

  return {
    ...(groups.length ? { groups } : {}),
    users: ['default', ...users],
    write_files: files,
    ...(runcmd.length || lastRuncmd.length ? { runcmd: [...runcmd, ...lastRuncmd] } : {}),
  };
}

/**
 * YAML as cloud-init reads it: PyYAML, YAML 1.1. Under 1.1 rules the writer quotes every
 * string a 1.1 reader would take for something else (`yes`, `on`, `0644`, `2032-09-01`,
 * `1:20`), which YAML 1.2 output leaves plain: a user named `on` or `no` would otherwise
 * reach cloud-init as a boolean.
 */
const stringifyCloudConfig = (config: Record<string, unknown>): string => stringifyYaml(config, { version: '1.1', lineWidth: 0 });

/**
 * The guest agent: probes each repository with `cvmfs_config probe` (three tries, since
 * autofs mounts on first access), then POSTs `{status, checks: {cvmfs: {<repo>: "OK"|"FAILED"},
 * output: {<repo>: text}}}` to the readiness endpoint. POSIX sh, sed, awk and curl only: the
 * token goes through `curl --config -` so it never shows in the process list; 2xx and 4xx end
 * it (a refused token will not improve), anything else is retried.
 */
function phoneHomeAgent(repositories: string[]): string {
  return [
    '#!/bin/sh',
    '# cloudgate phone-home agent, rendered from the context: probe CVMFS, report readiness.',
    '# The env file, probe tries and retry pause can be overridden (tests run this script locally).',
    `. "\${CLOUDGATE_PHONE_HOME_ENV:-${GUEST_PATHS.phoneHomeEnv}}"`,
    'tries_max=${CLOUDGATE_PROBE_TRIES:-3}',
    'pause=${CLOUDGATE_RETRY_PAUSE:-10}',
    'status=ok',
    "results=''",
    "outputs=''",
    '',
    '# JSON string of $1: at most 2000 bytes, control bytes dropped, \\ and " escaped, lines joined by \\n.',
    'json_string() {',
    "  printf '%s' \"$1\" | head -c 2000 | tr -d '\\000-\\010\\013-\\037' | tr '\\011' ' ' |",
    "    sed -e 's/\\\\/\\\\\\\\/g' -e 's/\"/\\\\\"/g' |",
    '    awk \'BEGIN { printf "%s", "\\"" } NR > 1 { printf "%s", "\\\\n" } { printf "%s", $0 } END { printf "%s", "\\"" }\'',
    '}',
    '',
    '# check <repo> <command...>: run the probe up to $tries_max times, record the result and its output.',
    'check() {',
    '  repo=$1; shift; tries=0; result=OK',
    '  until out=$("$@" 2>&1); do',
    '    tries=$((tries + 1))',
    '    if [ "$tries" -ge "$tries_max" ]; then result=FAILED; status=failed; break; fi',
    '    sleep "$pause"',
    '  done',
    '  results="$results${results:+,}\\"$repo\\":\\"$result\\""',
    '  outputs="$outputs${outputs:+,}\\"$repo\\":$(json_string "$out")"',
    '}',
    '',
    ...repositories.map((r) => `check '${r}' cvmfs_config probe '${r}'`),
    '',
    'body=$(mktemp)',
    'trap \'rm -f "$body"\' EXIT',
    'printf \'{"status":"%s","checks":{"cvmfs":{%s},"output":{%s}}}\' "$status" "$results" "$outputs" > "$body"',
    'attempt=0',
    'while :; do',
    '  code=$(printf \'header = "Authorization: Bearer %s"\\n\' "$CLOUDGATE_TOKEN" |',
    '    curl -sS -o /dev/null -w \'%{http_code}\' --max-time 30 --config - -X POST \\',
    '      -H \'Content-Type: application/json\' --data-binary "@$body" "$CLOUDGATE_PHONE_HOME_URL") || code=000',
    '  case $code in',
    '    2??) exit 0 ;;',
    '    4??) echo "cloudgate: the gateway refused the report (HTTP $code)" >&2; exit 1 ;;',
    '  esac',
    '  attempt=$((attempt + 1))',
    '  [ "$attempt" -ge 30 ] && exit 1',
    '  sleep "$pause"',
    'done',
    '',
  ].join('\n');
}
