/**
 * Context definitions: every rule accepts good input and rejects bad input with the field
 * named; passwords leave `hashContextPasswords` only as sha512-crypt hashes.
 */
import { describe, expect, it } from '@jest/globals';
import { verify } from 'unixcrypt';
import {
  ContextInputSchema,
  contextInputSchema,
  ContextSchema,
  contextSecrets,
  MAX_YAML_ALIASES,
  hashContextPasswords,
  keepingPasswords,
  parseCvmfsProxy,
  type ContextInputRequest,
} from '../model/context.js';
import { sshKey } from './ssh-key.js';

const base: ContextInputRequest = { name: 'ALICE analysis' };

/** `path: message` of every issue, or [] when the input is accepted. */
function issues(input: Record<string, unknown>): string[] {
  const r = ContextInputSchema.safeParse({ ...base, ...input });
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
}

const accepts = (input: Record<string, unknown>) => expect(issues(input)).toEqual([]);
const rejects = (input: Record<string, unknown>, path: string, message: string | RegExp = '') =>
  expect(issues(input)).toContainEqual(expect.stringMatching(new RegExp(`^${path.replace(/\./g, '\\.')}: .*${typeof message === 'string' ? message.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') : message.source}`)));

describe('context input: whole', () => {
  it('accepts a full CernVM Online style context and fills defaults', () => {
    const full = {
      name: 'ALICE analysis',
      repositories: ['alice.cern.ch', 'sft.cern.ch'],
      cvmfs: {
        proxy: 'http://squid1.cern.ch:3128|http://squid2.cern.ch:3128;DIRECT',
        servers: ['http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@', 'https://s1.example.org:8443/cvmfs/@org@.cern.ch'],
        branch: 'cernvm-prod.cern.ch',
        tag: 'cernvm-system-4.7.1.0',
        minRevision: { 'alice.cern.ch': 1200 },
      },
      users: [{ name: 'alice', group: 'physics', sshKeys: [sshKey('ssh-ed25519')], password: 'correct horse' }],
      services: ['condor', 'cvmfs-monitor@x.service'],
      environment: { ALICE_ROOT: '/cvmfs/alice.cern.ch' },
      startupScript: '#!/bin/sh\necho hello\n',
      cloudConfig: 'packages: [htop]\n',
      secrets: { DB_PASSWORD: 'p4ss' },
    };
    expect(issues(full)).toEqual([]);
    expect(ContextInputSchema.parse(base)).toEqual({ name: 'ALICE analysis', repositories: [], cvmfs: {}, users: [], services: [], environment: {} });
  });

  it('rejects unknown fields and a missing or empty name', () => {
    rejects({ colour: 'blue' }, '', /colour/);
    expect(ContextInputSchema.safeParse({}).success).toBe(false);
    rejects({ name: '  ' }, 'name');
    rejects({ name: 'a\nb' }, 'name', 'control characters');
  });
});

describe('repositories', () => {
  it('takes fully qualified names with at least three labels', () => {
    accepts({ repositories: ['alice.cern.ch', 'sft.cern.ch', 'west-life.egi.eu', 'cms.dev.example.org'] });
  });
  it.each(['alice', 'cern.ch', 'Alice.cern.ch', '-x.cern.ch', 'a..cern.ch', 'alice.cern.ch.', 'al ice.cern.ch'])('rejects %j', (repo) => {
    rejects({ repositories: [repo] }, 'repositories.0', 'fully qualified');
  });
  it('rejects duplicates, naming both places', () => {
    rejects({ repositories: ['alice.cern.ch', 'sft.cern.ch', 'alice.cern.ch'] }, 'repositories.2', 'duplicate repository "alice.cern.ch" (also repositories[0])');
  });
  it('bounds the list', () => {
    rejects({ repositories: Array.from({ length: 51 }, (_, i) => `r${i}.cern.ch`) }, 'repositories');
  });
});

describe('cvmfs.proxy (CVMFS_HTTP_PROXY syntax)', () => {
  it.each(['DIRECT', 'http://squid:3128', 'http://a:3128|http://b:3128;DIRECT', 'http://10.0.0.1|http://[2001:db8::1]:8080/;http://c.example.org'])(
    'accepts %j',
    (proxy) => accepts({ cvmfs: { proxy } }),
  );
  it('parses groups (fail-over) and members (load-balanced)', () => {
    expect(parseCvmfsProxy('http://a:3128|http://b:3128;DIRECT')).toEqual({ ok: true, groups: [['http://a:3128', 'http://b:3128'], ['DIRECT']] });
  });
  it.each([
    ['http://a:3128|htp://b:3128', 'group 1, member 2 "htp://b:3128": must be "DIRECT" or http://host[:port]'],
    ['http://a:99999', 'group 1, member 1 "http://a:99999": port must be 1-65535'],
    ['http://a;;DIRECT', 'group 2 is empty'],
    ['http://a||http://b', 'group 1, member 2 "": is empty'],
    ['direct', 'group 1, member 1 "direct"'],
    ['https://a:3128', 'group 1, member 1 "https://a:3128"'],
    ['http://user:pw@a:3128', 'group 1, member 1 "http://user:pw@a:3128"'],
    ['http://a:3128 ;DIRECT', 'group 1, member 1 "http://a:3128 "'],
    ['', 'must not be empty'],
  ])('rejects %j naming the bad member', (proxy, message) => {
    rejects({ cvmfs: { proxy } }, 'cvmfs.proxy', `invalid CVMFS proxy: ${message}`);
  });
  it('reports every bad member, not just the first', () => {
    const r = parseCvmfsProxy('ftp://a|http://b;gopher://c');
    expect(r.ok).toBe(false);
    expect(!r.ok && r.errors).toEqual([expect.stringContaining('"ftp://a"'), expect.stringContaining('"gopher://c"')]);
  });
});

describe('cvmfs servers, branch, tag, minRevision', () => {
  it('takes stratum-1 URLs with @fqrn@ / @org@', () => {
    accepts({ cvmfs: { servers: ['http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@', 'http://s1.example.org:8000/cvmfs/@org@.example.org'] } });
  });
  it.each([
    ['ftp://s1.example.org/cvmfs/@fqrn@', 'http:// or https://'],
    ['http://s1/cvmfs/@repo@', 'unknown placeholder @repo@'],
    ['not a url', 'must not contain'],
    ['/cvmfs/@fqrn@', 'must be a URL'],
    ['http://a/cvmfs/@fqrn@;http://b/cvmfs/@fqrn@', 'must not contain ";"'],
  ])('rejects server %j', (url, message) => rejects({ cvmfs: { servers: [url] } }, 'cvmfs.servers.0', message));
  it('rejects duplicate servers', () => {
    rejects({ cvmfs: { servers: ['http://a/cvmfs/@fqrn@', 'http://a/cvmfs/@fqrn@'] } }, 'cvmfs.servers.1', 'duplicate server');
  });
  it('checks branch and tag', () => {
    accepts({ cvmfs: { branch: 'cernvm-prod.cern.ch', tag: 'cernvm-system-4.7.1.0' } });
    rejects({ cvmfs: { branch: 'cernvm prod' } }, 'cvmfs.branch');
    rejects({ cvmfs: { tag: 'x;reboot' } }, 'cvmfs.tag');
  });
  it('pins revisions only of listed repositories, as non-negative integers', () => {
    accepts({ repositories: ['alice.cern.ch'], cvmfs: { minRevision: { 'alice.cern.ch': 42 } } });
    rejects({ repositories: ['alice.cern.ch'], cvmfs: { minRevision: { 'lhcb.cern.ch': 42 } } }, 'cvmfs.minRevision.lhcb.cern.ch', 'is not one of the context\'s repositories');
    rejects({ repositories: ['alice.cern.ch'], cvmfs: { minRevision: { 'alice.cern.ch': -1 } } }, 'cvmfs.minRevision.alice.cern.ch');
    rejects({ repositories: ['alice.cern.ch'], cvmfs: { minRevision: { 'alice.cern.ch': 1.5 } } }, 'cvmfs.minRevision.alice.cern.ch');
    rejects({ repositories: ['alice'], cvmfs: { minRevision: { alice: 1 } } }, 'cvmfs.minRevision.alice', 'name "alice" must be a fully qualified');
  });
  it('rejects unknown cvmfs settings', () => rejects({ cvmfs: { quota: 4000 } }, 'cvmfs', /quota/));
});

describe('cvmfs servers the gateway must not fetch from (SSRF)', () => {
  it.each([
    ['http://127.0.0.1:22/cvmfs/@fqrn@', /loopback address \(127\.0\.0\.1\)/],
    ['http://0x7f.1/cvmfs/@fqrn@', /loopback address \(127\.0\.0\.1\)/],
    ['http://169.254.169.254/latest/meta-data/@fqrn@', /link-local address/],
    ['http://[::ffff:10.0.0.1]/cvmfs/@fqrn@', /private address/],
    ['http://localhost:8080/cvmfs/@fqrn@', /this machine/],
  ])('rejects %j, saying how an operator allows a host', (url, why) => {
    rejects({ cvmfs: { servers: ['http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@', url] } }, 'cvmfs.servers.1', why);
    rejects({ cvmfs: { servers: [url] } }, 'cvmfs.servers.0', 'CLOUDGATE_CVMFS_ALLOWED_HOSTS');
  });
  it('judges the URL for every repository when a placeholder stands in the host', () => {
    rejects({ repositories: ['alice.cern.ch', '127.0.0.1'], cvmfs: { servers: ['http://@fqrn@/cvmfs/x'] } }, 'cvmfs.servers.0', 'loopback address (127.0.0.1) for repository 127.0.0.1');
    // @org@ is the first label: "2130706433" is 127.0.0.1 to a URL parser.
    rejects({ repositories: ['2130706433.cern.ch'], cvmfs: { servers: ['http://@org@/cvmfs/@fqrn@'] } }, 'cvmfs.servers.0', 'for repository 2130706433.cern.ch');
    accepts({ repositories: ['alice.cern.ch'], cvmfs: { servers: ['http://@org@.stratum1.example.org/cvmfs/@fqrn@'] } });
  });
  it('lets the hosts an operator allowed through (host:port exactly)', () => {
    const schema = contextInputSchema({ cvmfsAllowedHosts: ['127.0.0.1:8000', 's1.site.internal'] });
    const errors = (servers: string[]) => {
      const r = schema.safeParse({ ...base, cvmfs: { servers } });
      return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    };
    expect(errors(['http://127.0.0.1:8000/cvmfs/@fqrn@', 'http://s1.site.internal:81/cvmfs/@fqrn@'])).toEqual([]);
    expect(errors(['http://127.0.0.1:8001/cvmfs/@fqrn@'])).toEqual([expect.stringMatching(/^cvmfs\.servers\.0: names a loopback address/)]);
    expect(() => contextInputSchema({ cvmfsAllowedHosts: ['http://x/'] })).toThrow(/allowed host "http:\/\/x\/" is not a host or host:port/);
  });
  it('leaves a stored context alone (the worker judges it again before fetching)', () => {
    const stored = ContextSchema.safeParse({ name: 'old', cvmfs: { servers: ['http://127.0.0.1/cvmfs/@fqrn@'] } });
    expect(stored.success).toBe(true);
  });
});

describe('users', () => {
  it('accepts unix names, groups and ed25519 / rsa / ecdsa keys', () => {
    accepts({
      users: [
        { name: 'alice', group: 'physics', sshKeys: [sshKey('ssh-ed25519'), sshKey('ssh-rsa'), sshKey('ecdsa-sha2-nistp256', '')] },
        { name: '_svc-1' },
      ],
    });
  });
  it.each(['Bob', '1x', '-x', 'a'.repeat(33), 'al ice', 'root'])('rejects the name %j', (name) => rejects({ users: [{ name }] }, 'users.0.name'));
  it('rejects a bad group', () => rejects({ users: [{ name: 'alice', group: 'Physics' }] }, 'users.0.group', 'unix name'));
  it.each([
    ['ssh-dss AAAAB3NzaC1kc3MAAAA= x', 'must be an OpenSSH public key'],
    ['ssh-ed25519', 'must be an OpenSSH public key'],
    ['ssh-ed25519 !!!notbase64', 'must be an OpenSSH public key'],
    [sshKey('ssh-rsa').replace(/^ssh-rsa/, 'ssh-ed25519'), 'does not hold a ssh-ed25519 key'],
    ['ssh-ed25519 AAAA', 'does not hold a ssh-ed25519 key'],
    [`${sshKey('ssh-ed25519')}\nssh-rsa x`, 'must be an OpenSSH public key'],
  ])('rejects the ssh key %#', (key, message) => rejects({ users: [{ name: 'alice', sshKeys: [key] }] }, 'users.0.sshKeys.0', message));
  it('rejects short passwords and duplicate names', () => {
    rejects({ users: [{ name: 'alice', password: 'short' }] }, 'users.0.password', 'at least 8');
    rejects({ users: [{ name: 'alice' }, { name: 'alice' }] }, 'users.1', 'duplicate user name "alice"');
  });
  it('rejects a stored-only field on input', () => {
    rejects({ users: [{ name: 'alice', passwordHash: '$6$x$y' }] }, 'users.0', /passwordHash/);
  });
});

describe('hashContextPasswords', () => {
  const input = ContextInputSchema.parse({
    ...base,
    users: [{ name: 'alice', password: 'correct horse battery' }, { name: 'bob', sshKeys: [sshKey('ssh-ed25519')] }],
    secrets: { Z_TOKEN: 'zzz-secret-value', A_KEY: 'aaa-secret-value' },
  });
  const ctx = hashContextPasswords(input);

  it('replaces each plain password by a $6$ hash that verifies', () => {
    const hash = ctx.users[0].passwordHash!;
    expect(hash).toMatch(/^\$6\$/);
    expect(verify('correct horse battery', hash)).toBe(true);
    expect(verify('wrong horse battery', hash)).toBe(false);
    expect(ctx.users[1]).toEqual({ name: 'bob', sshKeys: [sshKey('ssh-ed25519')] });
  });
  it('keeps no plain password or secret value, only sorted secret names', () => {
    const text = JSON.stringify(ctx);
    expect(text).not.toContain('correct horse battery');
    expect(text).not.toContain('"password"');
    expect(text).not.toContain('secret-value');
    expect(ctx.secretNames).toEqual(['A_KEY', 'Z_TOKEN']);
    expect(contextSecrets(input)).toEqual({ Z_TOKEN: 'zzz-secret-value', A_KEY: 'aaa-secret-value' });
  });
  it('salts each hash afresh', () => {
    expect(hashContextPasswords(input).users[0].passwordHash).not.toBe(ctx.users[0].passwordHash);
  });
  it('produces what the stored schema accepts, and that schema refuses plain passwords and non-$6$ hashes', () => {
    expect(ContextSchema.parse(ctx)).toEqual(ctx);
    const withPlain = { ...ctx, users: [{ name: 'alice', password: 'correct horse battery' }] };
    expect(ContextSchema.safeParse(withPlain).success).toBe(false);
    const md5 = ContextSchema.safeParse({ ...ctx, users: [{ name: 'alice', passwordHash: '$1$abc$def' }] });
    expect(md5.success ? [] : md5.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual(['users.0.passwordHash: must be a sha512-crypt hash ($6$...)']);
  });
  it('keeps the previous version’s hash for a user sent with passwordSet: true and no password', () => {
    const edited = keepingPasswords(ContextInputSchema, ctx).parse({
      ...base,
      users: [
        { name: 'alice', passwordSet: true },
        { name: 'bob', password: 'a new password for bob' },
      ],
    });
    const next = hashContextPasswords(edited, ctx);
    expect(next.users[0]).toEqual({ name: 'alice', passwordHash: ctx.users[0].passwordHash });
    expect(verify('a new password for bob', next.users[1].passwordHash!)).toBe(true);
    expect(ContextSchema.parse(next)).toEqual(next);
    // A new password wins over passwordSet.
    const replaced = hashContextPasswords(keepingPasswords(ContextInputSchema, ctx).parse({ ...base, users: [{ name: 'alice', password: 'replaced horse battery', passwordSet: true }] }), ctx);
    expect(verify('replaced horse battery', replaced.users[0].passwordHash!)).toBe(true);
  });
  it('refuses passwordSet: true where there is no hash to keep, naming the user’s field', () => {
    const refused = (previous: typeof ctx | undefined, users: unknown[]) => {
      const r = keepingPasswords(ContextInputSchema, previous).safeParse({ ...base, users });
      return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    };
    expect(refused(ctx, [{ name: 'bob', passwordSet: true }])).toEqual([expect.stringMatching(/^users\.0\.passwordSet: there is no password to keep: the version this replaces has no password for user "bob"/)]);
    expect(refused(undefined, [{ name: 'alice', passwordSet: true }])).toEqual([expect.stringMatching(/^users\.0\.passwordSet: there is no password to keep: a new context has no stored password/)]);
    expect(refused(ctx, [{ name: 'alice', passwordSet: false }])).toEqual(['users.0.passwordSet: must be true (keep the stored password) or left out']);
    // The model will not make one up either, if the input skipped the check.
    expect(() => hashContextPasswords(ContextInputSchema.parse({ ...base, users: [{ name: 'carol', passwordSet: true }] }), ctx)).toThrow(/carol/);
  });
});

describe('services, environment, startup script', () => {
  it('takes service names and rejects others and duplicates', () => {
    accepts({ services: ['condor', 'httpd', 'cvmfs-x@a.service'] });
    rejects({ services: ['rm -rf'] }, 'services.0', 'service name');
    rejects({ services: ['condor', 'condor'] }, 'services.1', 'duplicate service "condor"');
  });
  it('takes shell variable names with one-line values', () => {
    accepts({ environment: { ALICE_ROOT: '/cvmfs/alice.cern.ch', _x1: 'a,b=c %d' } });
    rejects({ environment: { '1A': 'x' } }, 'environment.1A', 'name "1A" must be a shell variable name');
    rejects({ environment: { 'A-B': 'x' } }, 'environment.A-B', 'shell variable name');
    rejects({ environment: { CLOUDGATE_TOKEN: 'x' } }, 'environment.CLOUDGATE_TOKEN', 'reserved');
    rejects({ environment: { A: 'x\ny' } }, 'environment.A', 'line breaks');
    rejects({ environment: { A: 'x'.repeat(4097) } }, 'environment.A');
    rejects({ environment: Object.fromEntries(Array.from({ length: 101 }, (_, i) => [`V${i}`, 'x'])) }, 'environment', 'at most 100');
  });
  it('bounds the startup script to 16 KB of UTF-8', () => {
    accepts({ startupScript: 'x'.repeat(16 * 1024) });
    rejects({ startupScript: 'é'.repeat(8 * 1024 + 1) }, 'startupScript', '16384 bytes');
    rejects({ startupScript: '' }, 'startupScript');
  });
});

describe('cloudConfig', () => {
  it('takes a YAML mapping', () => {
    accepts({ cloudConfig: '#cloud-config\npackages: [htop]\nruncmd:\n  - echo hi\n' });
  });
  it.each([
    ['packages: [htop', 'is not valid YAML'],
    ['- a\n- b\n', 'must be a YAML mapping'],
    ['just a string', 'must be a YAML mapping'],
    ['', 'must be a YAML mapping'],
    ['users: alice\n', '"users" must be a list'],
    ['write_files: {path: /x}\n', '"write_files" must be a list'],
    // cloud-init would let an in-payload merge rule replace cloudgate's users, files and agent
    ['merge_how: dict(replace)+list(replace)\nruncmd: [ls]\n', '"merge_how" is not allowed'],
    ['merge_type: list(replace)\n', '"merge_type" is not allowed'],
    // amiconfig reads such a line of the raw user-data as a section header, µCernVM as a marker
    ['[cernvm]: x\n', 'line 1 "[cernvm]: x" starts with "[": amiconfig (and µCernVM) would read it'],
    ['a: 1\n[ucernvm-end]: 2\n', 'line 2 "[ucernvm-end]: 2" starts with "["'],
  ])('rejects %j', (cloudConfig, message) => rejects({ cloudConfig }, 'cloudConfig', message));
  it('takes section-like text indented, as file content', () => {
    accepts({ cloudConfig: 'write_files:\n  - path: /etc/x.ini\n    content: |\n      [cernvm]\n      users=a:b:c\n' });
  });
  it('bounds it to 16 KB', () => rejects({ cloudConfig: `a: "${'x'.repeat(16 * 1024)}"` }, 'cloudConfig', 'at most 16384 bytes'));
  it('refuses an alias bomb ("billion laughs") before expanding it, and takes a few aliases', () => {
    const labels = 'abcdefghi';
    const bomb = [`a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]`, ...[...labels.slice(1)].map((l, i) => `${l}: &${l} [${Array(9).fill(`*${labels[i]}`).join(',')}]`)].join('\n');
    const started = Date.now();
    rejects({ cloudConfig: bomb }, 'cloudConfig', `uses YAML aliases (*name) too often: at most ${MAX_YAML_ALIASES} alias expansions`);
    expect(Date.now() - started).toBeLessThan(1000);
    // Thirty aliases of a scalar are no bomb, but more than the limit.
    rejects({ cloudConfig: `x: &x 1\nlist: [${Array(30).fill('*x').join(', ')}]\n` }, 'cloudConfig', 'too often');
    accepts({ cloudConfig: 'defaults: &pkg {owner: root, permissions: "0644"}\nwrite_files:\n  - {<<: *pkg, path: /etc/a, content: a}\n  - {<<: *pkg, path: /etc/b, content: b}\n' });
  });
});

describe('secrets', () => {
  it('takes named one-line values', () => accepts({ secrets: { DB_PASSWORD: 'p4ss w0rd' } }));
  it('rejects bad names, line breaks, and a name also used by the environment', () => {
    rejects({ secrets: { 'db-password': 'x' } }, 'secrets.db-password', 'shell variable name');
    rejects({ secrets: { A: 'x\ny' } }, 'secrets.A', 'line breaks');
    rejects({ environment: { A: '1' }, secrets: { A: '2' } }, 'secrets.A', '"A" is both an environment variable and a secret');
  });
});
