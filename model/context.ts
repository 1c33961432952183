/**
 * Context definitions: what a CernVM needs at first boot, after CernVM Online's contexts
 * (CVMFS repositories and proxies, users, services, environment, startup script, extra
 * cloud-config, secrets). Pure zod schemas and the helpers that turn the submitted form
 * (`ContextInput`, plain passwords and secret values) into the stored form (`Context`:
 * sha512-crypt hashes only, secret names only).
 */
import { z } from 'zod';
import { encrypt } from 'unixcrypt';
import { parseDocument } from 'yaml';
import { ALLOW_HINT, AddressPolicy } from './address-policy.js';

// ---- limits: generous for real contexts, small enough that a context fits EC2's 16 KB user-data ----
const MAX_REPOSITORIES = 50;
const MAX_USERS = 50;
const MAX_SSH_KEYS = 16;
const MAX_SERVICES = 50;
const MAX_VARIABLES = 100;
const MAX_VALUE = 4096;
/** The issue's bound for the startup script; the extra cloud-config gets the same. */
export const MAX_SCRIPT_BYTES = 16 * 1024;
/**
 * YAML aliases a cloud-config may resolve (the `yaml` package's `maxAliasCount`, which also
 * weighs nested ones): a few `&anchor`/`*alias` pairs pass, an alias bomb ("billion laughs")
 * is refused before it is expanded.
 */
export const MAX_YAML_ALIASES = 10;

const byteLength = (s: string): number => Buffer.byteLength(s, 'utf8');

/** A DNS label: letters, digits and inner hyphens (RFC 1123). */
const LABEL = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?';

/**
 * Fully qualified CVMFS repository names (`alice.cern.ch`, `sft.cern.ch`): at least three
 * labels, because CVMFS resolves bare names (`alice`) against CVMFS_DEFAULT_DOMAIN only.
 */
export const RepositoryNameSchema = z
  .string()
  .max(253)
  .regex(new RegExp(`^${LABEL}(?:\\.${LABEL}){2,}$`), 'must be a fully qualified lower-case repository name such as "alice.cern.ch"');

/** Environment and secret names: what a POSIX shell accepts as a variable name. */
export const EnvNameSchema = z
  .string()
  .max(100)
  .regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be a shell variable name (letters, digits, "_", not starting with a digit)')
  .refine((n) => !n.toUpperCase().startsWith('CLOUDGATE_'), 'is reserved: names starting with CLOUDGATE_ belong to cloudgate');

/**
 * A record whose keys are checked by `key` with the key's own message (zod's record key
 * errors only say "Invalid key in record", which names no rule).
 */
const keyedRecord = <V extends z.ZodType>(key: z.ZodType<string>, value: V) =>
  z.record(z.string(), value).superRefine((rec, ctx) => {
    for (const k of Object.keys(rec)) {
      const r = key.safeParse(k);
      if (!r.success) ctx.addIssue({ code: 'custom', path: [k], message: `name "${k}" ${r.error.issues[0].message}` });
    }
  });

/** True when `s` holds C0 control characters or DEL (a tab passes when `allowTab`). */
const hasControl = (s: string, allowTab = false): boolean =>
  [...s].some((c) => {
    const n = c.charCodeAt(0);
    return (n < 0x20 && !(allowTab && n === 0x09)) || n === 0x7f;
  });

/** One line of text: env values and the like end up in shell files and INI lines. */
const lineValue = (max: number) =>
  z
    .string()
    .max(max)
    .refine((s) => !hasControl(s, true), 'must not contain control characters or line breaks');

/** Unix user and group names as useradd's default NAME_REGEX, at most 32 characters. */
const UnixNameSchema = z
  .string()
  .regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'must be a unix name: lower-case letters, digits, "_" and "-", at most 32, not starting with a digit or "-"');

/** Service names as systemd/SysV know them (`condor`, `httpd`, `cvmfs-x@a.service`). */
const ServiceNameSchema = z
  .string()
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.@-]*$/, 'must be a service name: letters, digits, "_", ".", "@" and "-"');

// ---- CVMFS proxy syntax ----

/** What `parseCvmfsProxy` finds: groups tried in order, members of a group load-balanced. */
export type CvmfsProxyParse = { ok: true; groups: string[][] } | { ok: false; errors: string[] };

const PROXY_MEMBER = new RegExp(`^http://(?:\\[[0-9A-Fa-f:.]+\\]|${LABEL}(?:\\.${LABEL})*)(?::(\\d{1,5}))?/?$`, 'i');

/**
 * Parses a proxy string in CVMFS_HTTP_PROXY syntax: groups separated by `;` (fail-over, in
 * order), members of a group by `|` (load-balanced), each member `http://host[:port]` or the
 * literal `DIRECT` (CVMFS client docs, "Proxy Lists"). Errors name the group and member.
 */
export function parseCvmfsProxy(proxy: string): CvmfsProxyParse {
  const errors: string[] = [];
  if (proxy.length === 0) return { ok: false, errors: ['must not be empty'] };
  const groups = proxy.split(';').map((group, g) => {
    if (group === '') errors.push(`group ${g + 1} is empty (stray ";")`);
    return group.split('|').map((member, m) => {
      const where = `group ${g + 1}, member ${m + 1} "${member}"`;
      if (member === '') {
        if (group !== '') errors.push(`${where}: is empty (stray "|")`);
        return member;
      }
      if (member === 'DIRECT') return member;
      const match = PROXY_MEMBER.exec(member);
      if (!match) errors.push(`${where}: must be "DIRECT" or http://host[:port]`);
      else if (match[1] !== undefined && (Number(match[1]) < 1 || Number(match[1]) > 65535)) errors.push(`${where}: port must be 1-65535`);
      return member;
    });
  });
  return errors.length ? { ok: false, errors } : { ok: true, groups };
}

const CvmfsProxySchema = z
  .string()
  .max(2048)
  .superRefine((proxy, ctx) => {
    const parsed = parseCvmfsProxy(proxy);
    if (!parsed.ok) for (const e of parsed.errors) ctx.addIssue({ code: 'custom', message: `invalid CVMFS proxy: ${e}` });
  });

/**
 * A stratum-1 URL as CVMFS_SERVER_URL takes it: http(s), may use the `@fqrn@` and `@org@`
 * placeholders CVMFS fills per repository; no `;` (that separates the list).
 */
const CvmfsServerSchema = z
  .string()
  .max(500)
  .superRefine((url, ctx) => {
    const other = url.replace(/@fqrn@|@org@/g, '').match(/@[a-z]+@/);
    if (other) return ctx.addIssue({ code: 'custom', message: `unknown placeholder ${other[0]} (only @fqrn@ and @org@)` });
    if (/[;\s"'\\]/.test(url)) return ctx.addIssue({ code: 'custom', message: 'must not contain ";", quotes, backslashes or spaces' });
    let parsed: URL;
    try {
      parsed = new URL(url.replace(/@fqrn@/g, 'repo.example.org').replace(/@org@/g, 'repo'));
    } catch {
      return ctx.addIssue({ code: 'custom', message: 'must be a URL such as http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@' });
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') ctx.addIssue({ code: 'custom', message: 'must be an http:// or https:// URL' });
  });

/** µCernVM's branch (the OS repository, e.g. `cernvm-prod.cern.ch`) and snapshot tag. */
const CvmfsTokenSchema = z
  .string()
  .max(253)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'must be letters, digits, ".", "_" and "-"');

/** CVMFS client settings: proxy chain, stratum-1 URLs, µCernVM branch/tag, pinned revisions. */
export const CvmfsSettingsSchema = z
  .object({
    proxy: CvmfsProxySchema.optional(),
    servers: z.array(CvmfsServerSchema).max(20).optional(),
    branch: CvmfsTokenSchema.optional(),
    tag: CvmfsTokenSchema.optional(),
    /** Lowest revision the gateway's stratum-1 check accepts, per repository. */
    minRevision: keyedRecord(RepositoryNameSchema, z.number().int().min(0).max(Number.MAX_SAFE_INTEGER)).optional(),
  })
  .strict();
export type CvmfsSettings = z.infer<typeof CvmfsSettingsSchema>;

// ---- users ----

const SSH_KEY_TYPES = /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)$/;

/**
 * An OpenSSH public key line `<type> <base64 blob> [comment]`. The blob starts with its own
 * type name (RFC 4253 §6.6), which catches pasted halves and mismatched types.
 */
const SshKeySchema = z
  .string()
  .max(8192)
  .superRefine((line, ctx) => {
    const m = /^(\S+) ([A-Za-z0-9+/]+={0,2})(?: .*)?$/.exec(line.trim());
    if (!m || !SSH_KEY_TYPES.test(m[1]) || hasControl(line.trim())) {
      return ctx.addIssue({ code: 'custom', message: 'must be an OpenSSH public key: "ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|384|521 <base64> [comment]"' });
    }
    const blob = Buffer.from(m[2], 'base64');
    const len = blob.length >= 4 ? blob.readUInt32BE(0) : -1;
    if (len <= 0 || blob.subarray(4, 4 + len).toString('latin1') !== m[1]) {
      ctx.addIssue({ code: 'custom', message: `key data does not hold a ${m[1]} key` });
    }
  });

const userFields = {
  name: UnixNameSchema.refine((n) => n !== 'root', 'root cannot be a context user'),
  group: UnixNameSchema.optional(),
  sshKeys: z.array(SshKeySchema).max(MAX_SSH_KEYS).optional(),
};

/**
 * A user as submitted: plain password, never stored. `passwordSet: true` without a
 * `password` keeps the password the user has in the version being replaced: answers show a
 * user with a password that way (the hash is never answered), so a client that edits what
 * GET returned and sends it back keeps it ({@link keepingPasswords}, {@link hashContextPasswords}).
 */
export const ContextUserInputSchema = z
  .object({
    ...userFields,
    /** Plain text on input only; `hashContextPasswords` replaces it by `passwordHash`. */
    password: z
      .string()
      .min(8, 'must be at least 8 characters')
      .max(256)
      .refine((s) => !hasControl(s), 'must not contain control characters')
      .optional(),
    /** Keep the stored password (ignored when `password` gives a new one); as answers show it, so only `true`. */
    passwordSet: z
      .literal(true, 'must be true (keep the stored password) or left out')
      .optional()
      .describe('true without "password": keep the password this user has in the version being replaced (answers show a user with a password so)'),
  })
  .strict();

/** A user as stored and rendered: password as a hash only. */
export const ContextUserSchema = z
  .object({
    ...userFields,
    /** sha512-crypt (`$6$`), what shadow(5), cloud-init's `passwd` and amiconfig's `users=` take. */
    passwordHash: z.string().regex(/^\$6\$(?:rounds=\d+\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86}$/, 'must be a sha512-crypt hash ($6$...)').optional(),
  })
  .strict();
export type ContextUser = z.infer<typeof ContextUserSchema>;

// ---- extra cloud-config ----

/** Keys cloudgate writes itself; extra values for them must be lists so cloud-init can append them. */
export const CLOUD_CONFIG_LIST_KEYS = ['users', 'groups', 'write_files', 'runcmd'] as const;

/**
 * cloud-init's in-payload merge settings. The extra cloud-config travels as its own part
 * merged by cloudgate's `Merge-Type` (lists appended); a `merge_how` in the payload would
 * take precedence and could replace cloudgate's users, files and phone-home agent.
 */
const MERGE_KEYS = ['merge_how', 'merge_type'] as const;

/**
 * amiconfig's section pattern (Python 2 `RawConfigParser.SECTCRE`, matched at the start of a
 * raw line; the section name in group 1). amiconfig reads every such line of the whole
 * user-data as a section header, and the µCernVM markers are such lines too.
 */
export const SECTION_LINE = /^\[([^\]]+)\]/;

/**
 * The first line of `text` that amiconfig would read as an INI section header (and µCernVM
 * as a marker, if it is one), or undefined. Only cloudgate's own µCernVM and amiconfig parts
 * may have such lines; anywhere else one would open a section in the middle of the user-data.
 */
export function firstSectionLine(text: string): string | undefined {
  return text.split('\n').find((line) => SECTION_LINE.test(line));
}

const CloudConfigSchema = z.string().superRefine((text, ctx) => {
  if (byteLength(text) > MAX_SCRIPT_BYTES) return ctx.addIssue({ code: 'custom', message: `must be at most ${MAX_SCRIPT_BYTES} bytes` });
  // cloud-init reads YAML 1.1 (PyYAML); the text itself is what reaches it, so check it as such.
  // logLevel error: a collection as a key (`[a]: b`) is refused below with a clearer message than YAML's warning.
  const doc = parseDocument(text, { prettyErrors: false, version: '1.1', logLevel: 'error' });
  if (doc.errors.length) return ctx.addIssue({ code: 'custom', message: `is not valid YAML: ${doc.errors[0].message.split('\n')[0]}` });
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: MAX_YAML_ALIASES });
  } catch (err) {
    // The yaml package throws a ReferenceError ("Excessive alias count …") before expanding a bomb.
    if (err instanceof ReferenceError) {
      return ctx.addIssue({ code: 'custom', message: `uses YAML aliases (*name) too often: at most ${MAX_YAML_ALIASES} alias expansions are allowed` });
    }
    return ctx.addIssue({ code: 'custom', message: `is not valid YAML: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}` });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return ctx.addIssue({ code: 'custom', message: 'must be a YAML mapping of cloud-config keys' });
  }
  for (const key of CLOUD_CONFIG_LIST_KEYS) {
    const v = (value as Record<string, unknown>)[key];
    if (v !== undefined && !Array.isArray(v)) ctx.addIssue({ code: 'custom', message: `"${key}" must be a list (cloudgate appends it to its own)` });
  }
  for (const key of MERGE_KEYS) {
    if (key in value) ctx.addIssue({ code: 'custom', message: `"${key}" is not allowed: cloudgate sets how this part merges (lists appended to cloudgate's own)` });
  }
  const lines = text.split('\n');
  const at = lines.findIndex((line) => SECTION_LINE.test(line));
  if (at >= 0) {
    ctx.addIssue({
      code: 'custom',
      message: `line ${at + 1} ${JSON.stringify(lines[at].slice(0, 80))} starts with "[": amiconfig (and µCernVM) would read it as their own section header; indent it or quote it`,
    });
  }
});

// ---- the context ----

const commonFields = {
  name: z
    .string()
    .trim()
    .min(1)
    .max(100)
    .refine((s) => !hasControl(s), 'must not contain control characters'),
  repositories: z.array(RepositoryNameSchema).max(MAX_REPOSITORIES).default([]),
  cvmfs: CvmfsSettingsSchema.default({}),
  services: z.array(ServiceNameSchema).max(MAX_SERVICES).default([]),
  environment: keyedRecord(EnvNameSchema, lineValue(MAX_VALUE)).default({}),
  startupScript: z
    .string()
    .min(1)
    .refine((s) => byteLength(s) <= MAX_SCRIPT_BYTES, `must be at most ${MAX_SCRIPT_BYTES} bytes`)
    .optional(),
  cloudConfig: CloudConfigSchema.optional(),
};

type Common = { repositories: string[]; cvmfs: CvmfsSettings; services: string[]; environment: Record<string, string> };

/** Rules across fields: unique lists, pins only for listed repositories, bounded maps. */
function crossFieldRules(c: Common & { users: { name: string }[] }, secretNames: string[], ctx: z.RefinementCtx): void {
  const unique = (list: string[], path: string[], what: string) => {
    const seen = new Map<string, number>();
    list.forEach((item, i) => {
      if (seen.has(item)) {
        ctx.addIssue({ code: 'custom', path: [...path, i], message: `duplicate ${what} "${item}" (also ${path.join('.')}[${seen.get(item)}])` });
      } else seen.set(item, i);
    });
  };
  unique(c.repositories, ['repositories'], 'repository');
  unique(c.services, ['services'], 'service');
  unique(c.users.map((u) => u.name), ['users'], 'user name');
  unique(c.cvmfs.servers ?? [], ['cvmfs', 'servers'], 'server');
  for (const repo of Object.keys(c.cvmfs.minRevision ?? {})) {
    if (!c.repositories.includes(repo)) {
      ctx.addIssue({ code: 'custom', path: ['cvmfs', 'minRevision', repo], message: `"${repo}" is not one of the context's repositories` });
    }
  }
  if (Object.keys(c.environment).length > MAX_VARIABLES) {
    ctx.addIssue({ code: 'custom', path: ['environment'], message: `at most ${MAX_VARIABLES} variables` });
  }
  if (secretNames.length > MAX_VARIABLES) ctx.addIssue({ code: 'custom', path: ['secrets'], message: `at most ${MAX_VARIABLES} secrets` });
  for (const n of secretNames) {
    if (n in c.environment) ctx.addIssue({ code: 'custom', path: ['secrets', n], message: `"${n}" is both an environment variable and a secret` });
  }
}

/** Substitutes `@fqrn@` and `@org@` (the first label of the name) as the cvmfs client does. */
export function expandServerUrl(template: string, repo: string): string {
  return template.replaceAll('@fqrn@', repo).replaceAll('@org@', repo.split('.')[0]).replace(/\/+$/, '');
}

/** Stands in for `@fqrn@` when a template is judged apart from any repository. */
const SAMPLE_REPOSITORY = 'repo.example.org';

/**
 * The gateway fetches a context's stratum-1 URLs itself (the check before deploying), so
 * each must pass its outbound address policy (model/address-policy.ts) for the sample
 * repository and for every repository of the context (a placeholder may stand in the host).
 * Only the URL's text is judged here; the worker judges the resolved addresses again.
 */
function serverPolicyRules(c: Common, policy: AddressPolicy, ctx: z.RefinementCtx): void {
  (c.cvmfs.servers ?? []).forEach((template, i) => {
    for (const repo of [SAMPLE_REPOSITORY, ...c.repositories]) {
      let url: URL;
      try {
        url = new URL(expandServerUrl(template, repo));
      } catch {
        return; // the field's own rule names a URL that does not parse
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') return; // and a wrong scheme
      const problem = policy.urlProblem(url);
      if (problem) {
        const forRepo = repo === SAMPLE_REPOSITORY ? '' : ` for repository ${repo}`;
        ctx.addIssue({ code: 'custom', path: ['cvmfs', 'servers', i], message: `${problem}${forRepo}: ${ALLOW_HINT}` });
        return;
      }
    }
  });
}

const ContextInputObject = z
  .object({
    ...commonFields,
    users: z.array(ContextUserInputSchema).max(MAX_USERS).default([]),
    /** Values are encrypted by the store and passed to the renderer separately, never kept in `Context`. */
    secrets: keyedRecord(EnvNameSchema, lineValue(MAX_VALUE)).optional(),
  })
  .strict();

/**
 * What a user submits, with the gateway's outbound address policy for `cvmfs.servers`:
 * `cvmfsAllowedHosts` (`CLOUDGATE_CVMFS_ALLOWED_HOSTS`) lets named private or loopback
 * hosts through. Build it once per configuration.
 *
 * @throws TypeError when an allowed host is not a `host` or `host:port`.
 */
export function contextInputSchema(opts: { cvmfsAllowedHosts?: readonly string[] } = {}) {
  const policy = new AddressPolicy(opts.cvmfsAllowedHosts);
  return ContextInputObject.superRefine((c, ctx) => {
    crossFieldRules(c, Object.keys(c.secrets ?? {}), ctx);
    serverPolicyRules(c, policy, ctx);
  });
}

/**
 * What a user submits (`POST /v1/contexts`): plain passwords and secret values; stratum-1
 * URLs pass the address policy with no host allowed (the API builds its own with the
 * configured ones: {@link contextInputSchema}).
 */
export const ContextInputSchema = contextInputSchema();
export type ContextInputRequest = z.input<typeof ContextInputSchema>;
export type ContextInput = z.infer<typeof ContextInputSchema>;

/** What is stored and rendered: password hashes only, and only the names of the secrets. */
export const ContextSchema = z
  .object({
    ...commonFields,
    users: z.array(ContextUserSchema).max(MAX_USERS).default([]),
    secretNames: z.array(EnvNameSchema).max(MAX_VARIABLES).default([]),
  })
  .strict()
  .superRefine((c, ctx) => crossFieldRules(c, c.secretNames, ctx));
export type Context = z.infer<typeof ContextSchema>;

/** The password hash of each user of `context` that has one, by user name. */
const passwordHashes = (context: Context | undefined): Map<string, string> =>
  new Map((context?.users ?? []).flatMap((u) => (u.passwordHash === undefined ? [] : [[u.name, u.passwordHash] as const])));

/**
 * `schema` (a {@link contextInputSchema}) for a new version of a context whose latest version
 * is `previous` (none: a new context): a user sent with `passwordSet: true` and no `password`
 * must have a password hash under the same name in `previous`, else there is nothing to keep
 * and the 422 names `users[i].passwordSet`.
 */
export function keepingPasswords(schema: ReturnType<typeof contextInputSchema>, previous: Context | undefined) {
  const kept = passwordHashes(previous);
  return schema.superRefine((c, ctx) => {
    c.users.forEach((u, i) => {
      if (u.passwordSet && u.password === undefined && !kept.has(u.name)) {
        const where = previous ? `the version this replaces has no password for user "${u.name}"` : 'a new context has no stored password';
        ctx.addIssue({ code: 'custom', path: ['users', i, 'passwordSet'], message: `there is no password to keep: ${where}; send "password" to set one, or leave both out for none` });
      }
    });
  });
}

/**
 * The stored form of a validated input: each plain password replaced by a fresh-salted
 * sha512-crypt hash, a user with `passwordSet: true` and no `password` given the hash its
 * name has in `previous` (the version being replaced; checked by {@link keepingPasswords}),
 * secrets reduced to their (sorted) names. Take the values with `contextSecrets` before
 * dropping the input.
 *
 * @throws Error when a kept password has no hash in `previous` (input not checked by {@link keepingPasswords}).
 */
export function hashContextPasswords(input: ContextInput, previous?: Context): Context {
  const { secrets, users, ...rest } = input;
  const kept = passwordHashes(previous);
  const stored = ({ password, passwordSet, ...user }: ContextInput['users'][number]): ContextUser => {
    if (password !== undefined) return { ...user, passwordHash: encrypt(password) };
    if (!passwordSet) return user;
    const passwordHash = kept.get(user.name);
    if (passwordHash === undefined) throw new Error(`user "${user.name}": passwordSet without a stored password to keep (check the input with keepingPasswords)`);
    return { ...user, passwordHash };
  };
  return { ...rest, users: users.map(stored), secretNames: Object.keys(secrets ?? {}).sort() };
}

/** The secret values of a validated input, for the store to encrypt. */
export const contextSecrets = (input: ContextInput): Record<string, string> => ({ ...(input.secrets ?? {}) });

/**
 * A service's context as its cluster pins it at submission: the exact version the instances
 * render (later versions do not change a running cluster) and what the gateway checks before
 * deploying and when guests report. No secret values, so it may travel in workflow inputs.
 */
export interface PinnedContext {
  id: string;
  version: number;
  /** The repositories every instance must probe OK, and the stratum-1 check looks up. */
  repositories: string[];
  /** The context's own stratum-1 URLs (`@fqrn@`); unset: the gateway's configured list. */
  servers?: string[];
  /** Lowest acceptable revision per repository. */
  minRevision?: Record<string, number>;
}

/** The pin of one stored context version. */
export function pinContext(id: string, version: number, ctx: Context): PinnedContext {
  return {
    id,
    version,
    repositories: [...ctx.repositories],
    ...(ctx.cvmfs.servers?.length && { servers: [...ctx.cvmfs.servers] }),
    ...(ctx.cvmfs.minRevision && Object.keys(ctx.cvmfs.minRevision).length > 0 && { minRevision: { ...ctx.cvmfs.minRevision } }),
  };
}
