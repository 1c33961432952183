/**
 * The context renderer's own shape, read back by parsers that know nothing of it: mailparser
 * for the MIME structure, `yaml` (as YAML 1.1) for cloudgate's cloud-config part, and dash +
 * curl running the phone-home agent against a local server. How the real agents read it
 * (amiconfig, µCernVM, cloud-init) is test/real-readers.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { simpleParser, type Attachment } from 'mailparser';
import { verify } from 'unixcrypt';
import { parse as parseYaml11 } from 'yaml';
import { ContextInputSchema, hashContextPasswords, type Context, type ContextInputRequest } from '../model/context.js';
import {
  AMICONFIG_CONTENT_TYPE,
  CLOUD_CONFIG_CONTENT_TYPE,
  CLOUD_CONFIG_MERGE_TYPE,
  extractPhoneHome,
  GUEST_PATHS,
  MASK,
  PHONE_HOME_CONTENT_TYPE,
  renderContextUserData,
  contextUserDataRenderer,
  NO_CONTEXT,
  measureUserData,
  UCERNVM_CONTENT_TYPE,
  USER_DATA_LIMITS,
  userDataSize,
  type PhoneHome,
} from '../model/user-data.js';
import { signToken } from '../model/token.js';
import { cloudInitRead } from './agents.js';
import { sshKey } from './ssh-key.js';

const PROXY = 'http://squid1.cern.ch:3128|http://squid2.cern.ch:3128;DIRECT';
const SECRETS = { DB_PASSWORD: "s3cr'et-db-value", API_KEY: 'api-key-0123456789' };
const INPUT: ContextInputRequest = {
  name: 'ALICE analysis',
  repositories: ['alice.cern.ch', 'sft.cern.ch'],
  cvmfs: {
    proxy: PROXY,
    servers: ['http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@', 'http://cvmfs.fnal.gov:8000/cvmfs/@fqrn@'],
    branch: 'cernvm-prod.cern.ch',
    tag: 'cernvm-system-4.7.1.0',
  },
  users: [
    { name: 'alice', group: 'physics', password: 'correct horse battery', sshKeys: [sshKey('ssh-ed25519', 'alice@laptop')] },
    { name: 'bob', sshKeys: [sshKey('ssh-rsa', 'bob@desk')] },
  ],
  services: ['condor', 'httpd'],
  environment: { ALICE_ROOT: '/cvmfs/alice.cern.ch', QUERY: 'a=1,b=2', GREETING: 'grüezi' },
  startupScript: 'echo "starting with $DB_PASSWORD"\n',
  cloudConfig: '#cloud-config\npackages: [htop]\nruncmd:\n  - echo extra\nwrite_files:\n  - path: /etc/motd\n    content: hello\n',
  secrets: SECRETS,
};
const TOKEN = 'eyJpaWQiOiJpLTEifQ.c2lnbmF0dXJl';
const PHONE_HOME: PhoneHome = { url: 'https://gw.example.org/v1/instances/c1-workers-0/readiness', instanceId: 'c1-workers-0', token: TOKEN, repositories: [] };

const ctx: Context = hashContextPasswords(ContextInputSchema.parse(INPUT));
const rendered = renderContextUserData(ctx, { phoneHome: PHONE_HOME, secrets: SECRETS });
const masked = renderContextUserData(ctx, { phoneHome: PHONE_HOME, secrets: SECRETS, maskSecrets: true });

/** Only what cloudgate emits, checked the way cloud-init's schema types it. */
function checkCloudConfig(doc: unknown): string[] {
  const errors: string[] = [];
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const strList = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === 'string');
  if (!isObj(doc)) return ['not a mapping'];
  if (!Array.isArray(doc.users)) errors.push('users: not a list');
  else {
    doc.users.forEach((u, i) => {
      if (typeof u === 'string') return;
      if (!isObj(u) || typeof u.name !== 'string') return errors.push(`users[${i}]: needs a name`);
      if (u.passwd !== undefined && (typeof u.passwd !== 'string' || !u.passwd.startsWith('$6$'))) errors.push(`users[${i}].passwd: not a $6$ hash`);
      if (u.lock_passwd !== undefined && typeof u.lock_passwd !== 'boolean') errors.push(`users[${i}].lock_passwd: not a boolean`);
      if (u.ssh_authorized_keys !== undefined && !strList(u.ssh_authorized_keys)) errors.push(`users[${i}].ssh_authorized_keys: not a list of strings`);
      if (u.primary_group !== undefined && typeof u.primary_group !== 'string') errors.push(`users[${i}].primary_group: not a string`);
    });
  }
  if (doc.groups !== undefined && !strList(doc.groups)) errors.push('groups: not a list of names');
  if (!Array.isArray(doc.write_files)) errors.push('write_files: not a list');
  else {
    doc.write_files.forEach((f, i) => {
      if (!isObj(f) || typeof f.path !== 'string' || !f.path.startsWith('/')) return errors.push(`write_files[${i}]: needs an absolute path`);
      if (typeof f.content !== 'string') errors.push(`write_files[${i}].content: not a string`);
      if (f.permissions !== undefined && (typeof f.permissions !== 'string' || !/^0[0-7]{3}$/.test(f.permissions))) errors.push(`write_files[${i}].permissions: not an octal string`);
    });
  }
  if (!Array.isArray(doc.runcmd) || !doc.runcmd.every((c) => typeof c === 'string' || strList(c))) errors.push('runcmd: not a list of strings or argv lists');
  return errors;
}

/** The text of the `nth` part of a type (default the first). */
const part = (atts: Attachment[], type: string, nth = 0): string => {
  const found = atts.filter((a) => a.contentType === type)[nth];
  if (!found) throw new Error(`no ${type} part #${nth}`);
  return found.content.toString('utf8');
};

/** cloud-init reads YAML 1.1 (PyYAML), so cloudgate's own part is read back as such. */
const parseYaml = (text: string): unknown => parseYaml11(text, { version: '1.1' });

describe('MIME structure (mailparser)', () => {
  let atts: Attachment[];
  let headers: Map<string, unknown>;
  beforeAll(async () => {
    const mail = await simpleParser(rendered);
    atts = mail.attachments;
    headers = mail.headers as Map<string, unknown>;
  });

  it('is multipart/mixed with MIME-Version 1.0: µCernVM first, the cloud-config parts, phone-home, amiconfig last', () => {
    expect((headers.get('content-type') as { value: string }).value).toBe('multipart/mixed');
    expect(headers.get('mime-version')).toBe('1.0');
    expect(atts.map((a) => [a.contentType, a.filename])).toEqual([
      [UCERNVM_CONTENT_TYPE, 'ucernvm.txt'],
      [CLOUD_CONFIG_CONTENT_TYPE, 'cloud-config.yaml'],
      [CLOUD_CONFIG_CONTENT_TYPE, 'context-cloud-config.yaml'],
      [CLOUD_CONFIG_CONTENT_TYPE, 'cloudgate-phone-home.yaml'],
      [PHONE_HOME_CONTENT_TYPE, 'cloudgate-phone-home.json'],
      [AMICONFIG_CONTENT_TYPE, 'amiconfig.ini'],
    ]);
  });

  it("sends the context's extra cloud-config verbatim, with the Merge-Type that appends its lists", () => {
    expect(part(atts, CLOUD_CONFIG_CONTENT_TYPE, 1)).toBe(INPUT.cloudConfig);
    const merges = rendered.split('\n').filter((l) => l.startsWith('Merge-Type: '));
    expect(merges).toEqual([`Merge-Type: ${CLOUD_CONFIG_MERGE_TYPE}`, `Merge-Type: ${CLOUD_CONFIG_MERGE_TYPE}`]);
  });

  it('uses a boundary that occurs in no part and holds no "=" or ":" (amiconfig would take its closing line for an option)', () => {
    const boundary = /boundary="([^"]+)"/.exec(rendered)![1];
    expect(boundary).toMatch(/^[A-Za-z0-9-]+$/);
    for (const a of atts) expect(a.content.toString('utf8')).not.toContain(boundary);
    expect(rendered.split('\n').filter((l) => l.startsWith(`--${boundary}`))).toHaveLength(7);
  });

  it('declares utf-8 where a part is not ASCII: base64 for cloud-init, raw 8bit where an agent reads the raw bytes; the text survives', () => {
    expect(rendered).toMatch(/Content-Type: text\/cloud-config; charset="utf-8"\nContent-Transfer-Encoding: base64/);
    expect(part(atts, CLOUD_CONFIG_CONTENT_TYPE)).toContain('grüezi');
    expect(rendered).toMatch(/Content-Type: text\/amiconfig; charset="utf-8"\nContent-Transfer-Encoding: 8bit/);
    expect(rendered).toContain('GREETING=grüezi');
  });

  it('ends lines in LF only, so µCernVM sees its markers as whole lines', () => {
    expect(rendered).not.toContain('\r');
  });

  it('is the same for the same input (stable boundary), and measured in bytes', () => {
    expect(renderContextUserData(ctx, { phoneHome: PHONE_HOME, secrets: SECRETS })).toBe(rendered);
    expect(userDataSize(rendered)).toBe(Buffer.from(rendered, 'utf8').length);
    expect(userDataSize('ü')).toBe(2);
  });
});

describe('#cloud-config part (yaml)', () => {
  let text: string;
  let doc: Record<string, unknown>;
  let files: Map<string, { permissions: string; content: string; owner: string }>;
  beforeAll(async () => {
    text = part((await simpleParser(rendered)).attachments, CLOUD_CONFIG_CONTENT_TYPE);
    doc = parseYaml(text) as Record<string, unknown>;
    files = new Map((doc.write_files as { path: string; permissions: string; content: string; owner: string }[]).map((f) => [f.path, f]));
  });

  it('starts with #cloud-config and has the keys cloud-init expects, well typed', () => {
    expect(text.startsWith('#cloud-config\n')).toBe(true);
    expect(checkCloudConfig(doc)).toEqual([]);
  });

  it("passes Debian's `cloud-init schema` (installed by scripts/setup.mjs), with and without extra cloud-config", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cloudgate-cc-'));
    try {
      const plain = part((await simpleParser(renderContextUserData(hashContextPasswords(ContextInputSchema.parse({ name: 'p' })), { phoneHome: PHONE_HOME }))).attachments, CLOUD_CONFIG_CONTENT_TYPE);
      for (const [name, body] of [['full.yaml', text], ['plain.yaml', plain]] as const) {
        await writeFile(join(dir, name), body);
        const out = await new Promise<{ code: number; text: string }>((resolve) =>
          execFile('cloud-init', ['schema', '--config-file', join(dir, name)], (err, stdout, stderr) =>
            resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, text: `${stdout}${stderr}` }),
          ),
        );
        expect(out).toEqual({ code: 0, text: expect.stringContaining('Valid cloud-config') });
      }
      // And it does reject what is not cloud-config, so passing means something.
      await writeFile(join(dir, 'bad.yaml'), '#cloud-config\nwrite_files:\n  - {path: 3, permissions: 777}\n');
      const bad = await new Promise<number>((resolve) => execFile('cloud-init', ['schema', '--config-file', join(dir, 'bad.yaml')], (err) => resolve(err ? 1 : 0)));
      expect(bad).toBe(1);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('creates the users with hashes and keys, keeps the image default user, and creates groups', () => {
    const users = doc.users as (string | Record<string, unknown>)[];
    expect(users[0]).toBe('default');
    const alice = users.find((u) => typeof u === 'object' && u.name === 'alice') as Record<string, unknown>;
    expect(alice).toMatchObject({ primary_group: 'physics', lock_passwd: false, ssh_authorized_keys: [INPUT.users![0].sshKeys![0]] });
    expect(verify('correct horse battery', alice.passwd as string)).toBe(true);
    const bob = users.find((u) => typeof u === 'object' && u.name === 'bob') as Record<string, unknown>;
    expect(bob).toMatchObject({ lock_passwd: true, ssh_authorized_keys: [INPUT.users![1].sshKeys![0]] });
    expect(bob.passwd).toBeUndefined();
    expect(doc.groups).toEqual(['physics']);
    expect(text).not.toContain('correct horse battery');
  });

  it('writes CVMFS settings, environment, secrets (0600), phone-home env (0600) and scripts (0700)', () => {
    expect(files.get(GUEST_PATHS.cvmfsConfig)).toMatchObject({ permissions: '0644' });
    expect(files.get(GUEST_PATHS.cvmfsConfig)!.content).toContain(`CVMFS_HTTP_PROXY='${PROXY}'`);
    expect(files.get(GUEST_PATHS.cvmfsConfig)!.content).toContain("CVMFS_SERVER_URL='http://cvmfs-stratum-one.cern.ch/cvmfs/@fqrn@;http://cvmfs.fnal.gov:8000/cvmfs/@fqrn@'");
    expect(files.get(GUEST_PATHS.environment)).toMatchObject({ permissions: '0644' });
    expect(files.get(GUEST_PATHS.environment)!.content).toContain("export QUERY='a=1,b=2'");
    expect(files.get(GUEST_PATHS.secrets)).toMatchObject({ permissions: '0600', owner: 'root:root' });
    expect(files.get(GUEST_PATHS.secrets)!.content).toBe("API_KEY='api-key-0123456789'\nDB_PASSWORD='s3cr'\\''et-db-value'\n");
    expect(files.get(GUEST_PATHS.phoneHomeEnv)).toMatchObject({ permissions: '0600' });
    expect(files.get(GUEST_PATHS.phoneHomeEnv)!.content).toContain(`CLOUDGATE_TOKEN='${TOKEN}'`);
    expect(files.get(GUEST_PATHS.startupScript)).toMatchObject({ permissions: '0700', content: `#!/bin/sh\n${INPUT.startupScript}` });
    expect(files.get(GUEST_PATHS.phoneHomeAgent)).toMatchObject({ permissions: '0700' });
  });

  it('is merged by cloud-init with the extra cloud-config: new keys kept, lists appended, its runcmd before the phone-home agent', async () => {
    const merged = (await cloudInitRead(rendered)).config!;
    expect(merged.packages).toEqual(['htop']);
    expect((merged.write_files as { path: string }[]).map((f) => f.path)).toEqual([...files.keys(), '/etc/motd']);
    const runcmd = merged.runcmd as (string | string[])[];
    expect(runcmd.at(-1)).toEqual([GUEST_PATHS.phoneHomeAgent]);
    expect(runcmd.at(-2)).toBe('echo extra');
    expect(runcmd.findIndex((c) => Array.isArray(c) && c.join(' ').includes(GUEST_PATHS.startupScript))).toBeLessThan(runcmd.length - 2);
    expect(JSON.stringify(runcmd[0])).toContain('condor httpd');
  });

  it('runs the startup script with environment and secrets exported', () => {
    const start = (doc.runcmd as (string | string[])[]).find((c) => Array.isArray(c) && c.join(' ').includes(GUEST_PATHS.startupScript)) as string[];
    expect(start[2]).toBe(`set -a; . ${GUEST_PATHS.environment}; . ${GUEST_PATHS.secrets}; set +a; exec ${GUEST_PATHS.startupScript}`);
  });

  it('turns CRLF startup scripts into LF and keeps their own #! line', () => {
    const crlf = hashContextPasswords(ContextInputSchema.parse({ name: 'w', startupScript: '#!/bin/bash\r\necho hi\r\n' }));
    const doc = parseYaml(/#cloud-config\n[\s\S]*?(?=\n--cloudgate)/.exec(renderContextUserData(crlf, { phoneHome: PHONE_HOME }))![0]) as {
      write_files: { path: string; content: string }[];
    };
    expect(doc.write_files.find((f) => f.path === GUEST_PATHS.startupScript)!.content).toBe('#!/bin/bash\necho hi\n');
  });

  it('has a phone-home agent that probes every repository with cvmfs_config probe', () => {
    const agent = files.get(GUEST_PATHS.phoneHomeAgent)!.content;
    for (const repo of INPUT.repositories!) expect(agent).toContain(`cvmfs_config probe '${repo}'`);
    expect(agent).toContain('Authorization: Bearer');
    expect(agent).not.toContain(TOKEN); // the token lives in the 0600 env file only
  });
});

describe('phone-home part', () => {
  it('is still found by extractPhoneHome, with the context repositories to probe', () => {
    expect(extractPhoneHome(rendered)).toEqual({ ...PHONE_HOME, repositories: ['alice.cern.ch', 'sft.cern.ch'] });
  });
  it('goes, with its agent, to a service without a context too, so a real VM reports ready', async () => {
    const bare = renderContextUserData(NO_CONTEXT, { phoneHome: { ...PHONE_HOME, repositories: ['alice.cern.ch'] } });
    expect(extractPhoneHome(bare)).toEqual({ ...PHONE_HOME, repositories: ['alice.cern.ch'] });
    const r = await cloudInitRead(bare);
    expect(r.schemaErrors).toEqual([]);
    expect((r.config!.runcmd as unknown[]).at(-1)).toEqual([GUEST_PATHS.phoneHomeAgent]);
    expect((r.config!.write_files as { path: string }[]).map((f) => f.path)).toEqual([GUEST_PATHS.phoneHomeEnv, GUEST_PATHS.phoneHomeAgent]);
  });
  it('is left out, with its agent and token file, for a VM no workflow waits for (pairing)', async () => {
    const text = renderContextUserData(ctx, { secrets: SECRETS });
    const mail = await simpleParser(text);
    expect(mail.attachments.map((a) => a.contentType)).toEqual([UCERNVM_CONTENT_TYPE, CLOUD_CONFIG_CONTENT_TYPE, CLOUD_CONFIG_CONTENT_TYPE, AMICONFIG_CONTENT_TYPE]);
    expect(extractPhoneHome(text)).toBeUndefined();
    const doc = parseYaml(mail.attachments[1].content.toString('utf8')) as { write_files: { path: string }[]; runcmd: unknown[] };
    const paths = doc.write_files.map((f) => f.path);
    expect(paths).not.toContain(GUEST_PATHS.phoneHomeAgent);
    expect(paths).not.toContain(GUEST_PATHS.phoneHomeEnv);
    expect(doc.runcmd).not.toContainEqual([GUEST_PATHS.phoneHomeAgent]);
    expect(paths).toContain(GUEST_PATHS.secrets);
  });
});

describe('per-cloud user-data limits', () => {
  it('counts EC2 in raw bytes and CloudStack in base64 bytes, as their APIs do', () => {
    expect(measureUserData('ec2', 'é'.repeat(10))).toEqual({ size: 20, limit: USER_DATA_LIMITS.ec2 });
    expect(measureUserData('cloudstack', 'abcd')).toEqual({ size: Buffer.from('abcd').toString('base64').length, limit: USER_DATA_LIMITS.cloudstack });
    for (const n of [0, 1, 2, 3, 100, 24_576, 24_577]) {
      expect(measureUserData('cloudstack', 'x'.repeat(n))!.size).toBe(Buffer.from('x'.repeat(n)).toString('base64').length);
    }
    expect(measureUserData('sim', 'x'.repeat(1e6))).toBeUndefined();
    expect(measureUserData('libvirt', 'x')).toBeUndefined();
  });
});

describe('secrets and masking', () => {
  it('renders every secret and the token unmasked only where they belong', async () => {
    const decoded = (await simpleParser(rendered)).attachments.map((a) => a.content.toString('utf8')).join('\n');
    expect(decoded.split(TOKEN)).toHaveLength(3); // phone-home env file and phone-home part
    expect(decoded.split('api-key-0123456789')).toHaveLength(2); // secrets file only
  });

  it('masks every secret value and the token for previews', async () => {
    for (const v of [...Object.values(SECRETS), "s3cr'\\''et-db-value", TOKEN]) expect(masked).not.toContain(v);
    const { attachments } = await simpleParser(masked);
    const doc = parseYaml(part(attachments, CLOUD_CONFIG_CONTENT_TYPE)) as { write_files: { path: string; content: string }[] };
    const file = (p: string) => doc.write_files.find((f) => f.path === p)!.content;
    expect(file(GUEST_PATHS.secrets)).toBe(`API_KEY='${MASK}'\nDB_PASSWORD='${MASK}'\n`);
    expect(file(GUEST_PATHS.phoneHomeEnv)).toContain(`CLOUDGATE_TOKEN='${MASK}'`);
    expect(extractPhoneHome(masked)?.token).toBe(MASK);
  });

  it('previews without secret values, but refuses to render for real without them or with undeclared ones', () => {
    expect(renderContextUserData(ctx, { phoneHome: PHONE_HOME, maskSecrets: true })).toBe(masked);
    expect(() => renderContextUserData(ctx, { phoneHome: PHONE_HOME, secrets: { API_KEY: 'x' } })).toThrow('no value for the context\'s secret "DB_PASSWORD"');
    expect(() => renderContextUserData(ctx, { phoneHome: PHONE_HOME, secrets: { ...SECRETS, OTHER: 'x' } })).toThrow('secrets not declared by the context: OTHER');
  });
});

describe("a create batch's user-data, rendered once with each instance's values put in", () => {
  const phoneHomeOf = (id: string, token = signToken({ iid: id, cluster: 'c1', service: 'workers', exp: 2_000_000_000 + id.length }, 'test-secret-0123456789abcdef')): PhoneHome => ({
    url: `https://gw.example.org:8443/v1/instances/${id}/readiness`,
    instanceId: id,
    token,
    repositories: [],
  });

  it('is byte for byte what rendering each instance gives, with and without a context (secrets, extra cloud-config, non-ASCII parts)', () => {
    for (const [context, secrets] of [[ctx, SECRETS], [NO_CONTEXT, undefined]] as const) {
      const render = contextUserDataRenderer(context, secrets);
      for (const id of ['c1-workers-0', 'c1-workers-7', 'c1-workers-12345', 'scale-10000-1w-6vkp3t-workers-9499']) {
        expect(render(phoneHomeOf(id))).toBe(renderContextUserData(context, { phoneHome: phoneHomeOf(id), secrets }));
      }
    }
  });

  it('renders in full a value some format would quote or escape, and repositories of its own', () => {
    const render = contextUserDataRenderer(ctx, SECRETS);
    const odd = [phoneHomeOf("c1-o'brien-0"), phoneHomeOf('c1-workers-1', 'a "token" with spaces\\'), { ...phoneHomeOf('c1-workers-2'), repositories: ['atlas.cern.ch'] }];
    for (const phoneHome of odd) expect(render(phoneHome)).toBe(renderContextUserData(ctx, { phoneHome, secrets: SECRETS }));
  });

  it('refuses, as rendering one does, a context without its secret values', () => {
    expect(() => contextUserDataRenderer(ctx, { API_KEY: 'x' })).toThrow('no value for the context\'s secret "DB_PASSWORD"');
  });
});

describe('phone-home agent run by dash against a local gateway', () => {
  let dir: string;
  let server: Server;
  let received: { headers: IncomingHttpHeaders; body: string; url: string }[];
  let status = 202;
  let url = '';

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cloudgate-agent-'));
    received = [];
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString('utf8')));
      req.on('end', () => {
        received.push({ headers: req.headers, body, url: req.url ?? '' });
        res.writeHead(status).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/instances/c1-workers-0/readiness`;
    // A stand-in cvmfs_config: alice mounts, sft fails with output that needs JSON escaping.
    await writeFile(
      join(dir, 'cvmfs_config'),
      '#!/bin/sh\nif [ "$2" = alice.cern.ch ]; then echo "Probing /cvmfs/alice.cern.ch... OK"; exit 0; fi\nprintf \'Probing /cvmfs/%s... Failed!\\n\\tsays "no" \\\\ really\\n\' "$2"; exit 1\n',
    );
    await chmod(join(dir, 'cvmfs_config'), 0o755);
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    await rm(dir, { recursive: true, force: true });
  });

  async function runAgent(): Promise<{ code: number; stderr: string }> {
    const text = renderContextUserData(ctx, { phoneHome: { ...PHONE_HOME, url }, secrets: SECRETS });
    const doc = parseYaml(part((await simpleParser(text)).attachments, CLOUD_CONFIG_CONTENT_TYPE)) as { write_files: { path: string; content: string }[] };
    for (const f of doc.write_files.filter((w) => w.path === GUEST_PATHS.phoneHomeAgent || w.path === GUEST_PATHS.phoneHomeEnv)) {
      await writeFile(join(dir, f.path.split('/').at(-1)!), f.content);
    }
    const env = {
      PATH: `${dir}:${process.env.PATH ?? '/usr/bin:/bin'}`,
      CLOUDGATE_PHONE_HOME_ENV: join(dir, 'phone-home.env'),
      CLOUDGATE_PROBE_TRIES: '2',
      CLOUDGATE_RETRY_PAUSE: '0',
    };
    return new Promise((resolve) => {
      execFile('dash', [join(dir, 'cloudgate-phone-home')], { env }, (err, _stdout, stderr) =>
        resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stderr }),
      );
    });
  }

  it('posts each repository result and escaped output with the bearer token', async () => {
    status = 202;
    received.length = 0;
    const { code, stderr } = await runAgent();
    expect({ code, stderr }).toEqual({ code: 0, stderr: '' });
    expect(received).toHaveLength(1);
    expect(received[0].url).toBe('/v1/instances/c1-workers-0/readiness');
    expect(received[0].headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(received[0].headers['content-type']).toBe('application/json');
    expect(JSON.parse(received[0].body)).toEqual({
      status: 'failed',
      checks: {
        cvmfs: { 'alice.cern.ch': 'OK', 'sft.cern.ch': 'FAILED' },
        output: { 'alice.cern.ch': 'Probing /cvmfs/alice.cern.ch... OK', 'sft.cern.ch': 'Probing /cvmfs/sft.cern.ch... Failed!\n says "no" \\ really' },
      },
    });
  });

  it('stops at a 4xx (a refused token will not improve)', async () => {
    status = 401;
    received.length = 0;
    const { code, stderr } = await runAgent();
    expect(code).toBe(1);
    expect(stderr).toContain('HTTP 401');
    expect(received).toHaveLength(1);
  });
});
