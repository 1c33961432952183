/**
 * The rendered user-data, read by the real agents a CernVM runs at boot (test/agents.ts):
 * amiconfig (its line filter + ConfigParser, under Python 2.7 and 3, then the cernvm
 * plugin's splitting), µCernVM (parse_user_data, sourced by dash as scripts.d/14cvmfs uses
 * it) and Debian's cloud-init (MIME processing, part handlers, YAML loader, merge, current
 * schema). The contexts are ../shared/peer-data/contexts (real values), each with a
 * cloud-init documentation example as its extra cloud-config; every one of the ten examples
 * must reach cloud-init unchanged. The preview's agent views must say what the agents read.
 */
import { beforeAll, describe, expect, it } from '@jest/globals';
import { readdirSync } from 'node:fs';
import { agentView, amiconfigReads, ucernvmReads } from '../model/agent-views.js';
import { ContextSchema, type Context } from '../model/context.js';
import { GUEST_PATHS, renderContextParts, renderContextUserData, type PhoneHome } from '../model/user-data.js';
import { amiconfigInterpreters, amiconfigRead, cloudInitRead, ucernvmRead, type AmiconfigReading, type CloudInitReading } from './agents.js';
import { peerDataJson, peerDataPath, peerDataText } from './peer-data.js';

interface PeerContext {
  context: Record<string, unknown>;
  cloudConfigFrom: string;
  secrets: Record<string, string>;
  phoneHome: PhoneHome;
}
const CONTEXTS = peerDataJson<{ contexts: Record<string, PeerContext> }>('contexts', 'contexts.json').contexts;
const EXAMPLES = readdirSync(peerDataPath('cloudinit', 'examples')).filter((f) => f.endsWith('.txt')).sort();
const PHONE_HOME: PhoneHome = { url: 'https://gw.example.org/v1/instances/c1-w-0/readiness', instanceId: 'c1-w-0', token: 'tok', repositories: [] };

/**
 * The environment entries amiconfig can carry unaltered: its plugin splits on "," then "=",
 * and ConfigParser cuts a value at whitespace + ";" and trims it.
 */
const amiconfigEnv = (ctx: Context): [string, string][] => Object.entries(ctx.environment).filter(([, v]) => !/[,=%]|\s;/.test(v) && v.trim() === v);

/** What the cernvm plugin must find in [cernvm]: exactly cloudgate's keys for the context. */
function expectedCernvm(ctx: Context): Record<string, string> {
  const env = amiconfigEnv(ctx);
  return {
    ...(ctx.repositories.length && { repositories: ctx.repositories.join(',') }),
    ...(ctx.users.length && { users: ctx.users.map((u) => `${u.name}:${u.group ?? u.name}:${u.passwordHash ?? ''}`).join(',') }),
    ...(ctx.cvmfs.proxy && { proxy: `'${ctx.cvmfs.proxy}'` }),
    ...(ctx.services.length && { services: ctx.services.join(',') }),
    ...(env.length && { environment: env.map(([k, v]) => `${k}=${v}`).join(',') }),
  };
}

/** The parts of the user-data cloud-init must leave to the other agents. */
const UNHANDLED = ['text/ucernvm', 'text/x-cloudgate-phone-home', 'text/amiconfig'];

/** The list keys cloudgate appends the context's own entries to. */
const LIST_KEYS = ['users', 'groups', 'write_files', 'runcmd'];

/** Every key of the example as cloud-init read it alone, as cloud-init reads it inside the whole user-data. */
function expectReachedUnchanged(merged: Record<string, unknown>, example: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(example)) {
    if (LIST_KEYS.includes(key)) {
      const list = merged[key] as unknown[];
      const tail = list.slice(list.length - (value as unknown[]).length - (key === 'runcmd' ? 1 : 0), key === 'runcmd' ? -1 : undefined);
      expect({ key, value: tail }).toEqual({ key, value });
    } else {
      expect({ key, value: merged[key] }).toEqual({ key, value });
    }
  }
}

describe.each(Object.entries(CONTEXTS))('peer-data context %s, rendered and read by the real agents', (name, peer) => {
  const ctx = ContextSchema.parse({ ...peer.context, cloudConfig: peerDataText('cloudinit', 'examples', peer.cloudConfigFrom) });
  const instance = { phoneHome: peer.phoneHome, secrets: peer.secrets };
  const userData = renderContextUserData(ctx, instance);

  describe('amiconfig', () => {
    let readings: AmiconfigReading[];
    beforeAll(async () => {
      readings = await Promise.all(amiconfigInterpreters().map((python) => amiconfigRead(userData, python)));
    });

    it('reads, under Python 2.7 and 3 alike, exactly cloudgate\'s [amiconfig] and [cernvm] and stops at no error', () => {
      expect(readings.map((r) => r.interpreter)).toEqual(['python2.7', expect.stringMatching(/^python3\./)]);
      for (const r of readings) {
        expect(r.errors).toEqual([]);
        expect(r.sections.amiconfig).toEqual({ plugins: 'cernvm' });
        expect(r.sections.cernvm).toEqual(expectedCernvm(ctx));
      }
      expect(readings[1].sections).toEqual(readings[0].sections);
    });

    it('hands the cernvm plugin every user as name:group:password and every environment entry as var=value', () => {
      for (const r of readings) {
        expect(r.cernvm?.users ?? []).toEqual(ctx.users.map((u) => [u.name, u.group ?? u.name, u.passwordHash ?? '']));
        expect(r.cernvm?.environment ?? []).toEqual(amiconfigEnv(ctx));
      }
    });

    it('is what the preview says amiconfig reads', () => {
      const view = Object.fromEntries([...amiconfigReads(userData)].map(([s, o]) => [s, Object.fromEntries(o)]));
      expect(view).toEqual(readings[0].sections);
    });
  });

  it('µCernVM reads the proxy, stratum-1s, branch and tag, and its bootloader sources them into the right CVMFS config', async () => {
    const r = await ucernvmRead(userData);
    const branch = ctx.cvmfs.branch ?? 'cernvm-devel.cern.ch';
    const hosts = (ctx.cvmfs.servers ?? []).map((u) => /^http:\/\/([^/]+)\/cvmfs\/@fqrn@$/.exec(u)![1]);
    expect(r.cvmfs).toEqual({
      CVMFS_PROXY: ctx.cvmfs.proxy ?? '"auto;DIRECT"',
      CVMFS_REPOS: branch,
      CVMFS_REPOSITORY_TAG: ctx.cvmfs.tag ?? '',
      CVMFS_SERVER: hosts.join(','),
      CVMFS_SERVER_URL: `"${hosts.map((h) => `http://${h}/cvmfs/${branch}`).join(';')}"`,
    });
    expect(ucernvmReads(userData)).toEqual(r.ucontext);
  });

  describe('cloud-init', () => {
    let r: CloudInitReading;
    let example: CloudInitReading;
    beforeAll(async () => {
      r = await cloudInitRead(userData);
      example = await cloudInitRead(peerDataText('cloudinit', 'examples', peer.cloudConfigFrom));
    });

    it('gives the cloud-config parts to its cloud-config handler and no other part to any handler', () => {
      expect(r.parts.map((p) => [p.contentType, p.handler])).toEqual([
        ['text/ucernvm', null],
        ['text/cloud-config', 'CloudConfigPartHandler'],
        ['text/cloud-config', 'CloudConfigPartHandler'],
        ['text/cloud-config', 'CloudConfigPartHandler'],
        ['text/x-cloudgate-phone-home', null],
        ['text/amiconfig', null],
      ]);
      expect(r.warnings).toEqual(UNHANDLED.map((t) => expect.stringContaining(`Unhandled unknown content-type (${t})`)));
    });

    it('merges them into a config the current cloud-config schema accepts', () => {
      expect(r.schemaErrors).toEqual([]);
    });

    it(`receives ${peer.cloudConfigFrom} unchanged`, () => {
      expect(example.schemaErrors).toEqual([]);
      expectReachedUnchanged(r.config!, example.config!);
    });

    it("creates the context's users with their hashes, keeps the image's default user, and runs the phone-home agent last", () => {
      const users = r.config!.users as (string | Record<string, unknown>)[];
      expect(users[0]).toBe('default');
      for (const u of ctx.users) {
        expect(users).toContainEqual(expect.objectContaining({ name: u.name, lock_passwd: u.passwordHash === undefined, ...(u.passwordHash && { passwd: u.passwordHash }) }));
      }
      expect((r.config!.runcmd as unknown[]).at(-1)).toEqual([GUEST_PATHS.phoneHomeAgent]);
    });
  });
});

describe('every cloud-init documentation example reaches cloud-init unchanged', () => {
  const base = { name: 'examples', repositories: ['sft.cern.ch'], users: [{ name: 'cloudy' }] };
  it.each(EXAMPLES)('%s', async (file) => {
    const text = peerDataText('cloudinit', 'examples', file);
    const ctx = ContextSchema.parse({ ...base, cloudConfig: text });
    const [alone, merged] = await Promise.all([cloudInitRead(text), cloudInitRead(renderContextUserData(ctx, { phoneHome: PHONE_HOME }))]);
    expect(alone.schemaErrors).toEqual([]);
    expect(merged.schemaErrors).toEqual([]);
    expect(merged.warnings.filter((w) => !w.includes('Unhandled unknown content-type'))).toEqual([]);
    expectReachedUnchanged(merged.config!, alone.config!);
  });
});

describe('what YAML 1.1 reads differently', () => {
  it('keeps users and groups named like YAML 1.1 booleans and nulls strings for cloud-init', async () => {
    const names = ['on', 'yes', 'no', 'off', 'null'];
    const ctx = ContextSchema.parse({ name: 'yaml11', users: names.map((n) => ({ name: n, group: n })) });
    const r = await cloudInitRead(renderContextUserData(ctx, { phoneHome: PHONE_HOME }));
    expect(r.schemaErrors).toEqual([]);
    const users = (r.config!.users as Record<string, unknown>[]).slice(1);
    expect(users.map((u) => [u.name, u.primary_group])).toEqual(names.map((n) => [n, n]));
    expect(r.config!.groups).toEqual(names);
  });

  it("keeps a quoted date a string and !!binary content bytes, as the context's author wrote them", async () => {
    const cloudConfig = [
      '#cloud-config',
      'users:',
      '  - name: foobar',
      "    expiredate: '2032-09-01'",
      'write_files:',
      '  - path: /usr/bin/hello',
      '    encoding: gzip',
      '    content: !!binary |',
      '      H4sIAIDb/U8C/1NW1E/KzNMvzuBKTc7IV8hIzcnJVyjPL8pJ4QIA6N+MVxsAAAA=',
      '',
    ].join('\n');
    const ctx = ContextSchema.parse({ name: 'yaml11', cloudConfig });
    const r = await cloudInitRead(renderContextUserData(ctx, { phoneHome: PHONE_HOME }));
    expect(r.schemaErrors).toEqual([]);
    expect((r.config!.users as unknown[]).at(-1)).toEqual({ name: 'foobar', expiredate: '2032-09-01' });
    expect((r.config!.write_files as Record<string, unknown>[]).at(-1)!.content).toEqual({
      __bytes__: 'H4sIAIDb/U8C/1NW1E/KzNMvzuBKTc7IV8hIzcnJVyjPL8pJ4QIA6N+MVxsAAAA=',
    });
  });
});

describe('every agent sees exactly its own settings, whatever the context holds', () => {
  // Lines that would be sections, options or markers if any agent saw them: indented inside
  // cloud-config (a file's content, the startup script), never at the start of a line.
  const hostile = ContextSchema.parse({
    name: 'hostile',
    repositories: ['alice.cern.ch'],
    users: [{ name: 'alice', group: 'physics' }],
    environment: { NOTE: 'users=mallory:x:y [cernvm] a: b', GREETING: 'grüezi', SEMI: 'before ;after', QUOTES: '""' },
    startupScript: '#!/bin/sh\n[cernvm]\nusers=mallory:wheel:\n[ucernvm-begin]\ncvmfs_branch=evil.cern.ch\n[ucernvm-end]\n',
    cloudConfig: '#cloud-config\nwrite_files:\n  - path: /etc/evil.ini\n    content: |\n      [cernvm]\n      users=mallory:wheel:\n      [amiconfig]\n      plugins=evil\n',
  });
  const userData = renderContextUserData(hostile, { phoneHome: PHONE_HOME });

  it('amiconfig: [cernvm] holds alice only, [amiconfig] only the cernvm plugin', async () => {
    for (const python of amiconfigInterpreters()) {
      const r = await amiconfigRead(userData, python);
      expect(r.errors).toEqual([]);
      expect(r.sections.amiconfig).toEqual({ plugins: 'cernvm' });
      expect(r.sections.cernvm).toEqual(expectedCernvm(hostile));
      expect(r.cernvm?.users).toEqual([['alice', 'physics', '']]);
      // Whatever environment amiconfig reads, it reads unaltered (ConfigParser cuts " ;…" and reads '""' as empty).
      for (const [name, value] of r.cernvm?.environment ?? []) expect({ name, value }).toEqual({ name, value: hostile.environment[name] });
      expect(r.cernvm?.environment?.map(([name]) => name)).toEqual(['GREETING', 'QUOTES']);
    }
  });

  it('µCernVM: no branch from the startup script', async () => {
    expect((await ucernvmRead(userData)).ucontext).toEqual([]);
  });

  it('cloud-init: the lines arrive as file contents, the non-ASCII value intact', async () => {
    const r = await cloudInitRead(userData);
    expect(r.schemaErrors).toEqual([]);
    const files = Object.fromEntries((r.config!.write_files as { path: string; content: string }[]).map((f) => [f.path, f.content]));
    expect(files['/etc/evil.ini']).toBe('[cernvm]\nusers=mallory:wheel:\n[amiconfig]\nplugins=evil\n');
    expect(files[GUEST_PATHS.startupScript]).toBe(hostile.startupScript);
    expect(files[GUEST_PATHS.environment]).toContain("export GREETING='grüezi'");
  });
});

describe('the preview shows what each agent reads', () => {
  const peer = CONTEXTS['alice-analysis'];
  const ctx = ContextSchema.parse({ ...peer.context, cloudConfig: peerDataText('cloudinit', 'examples', peer.cloudConfigFrom) });
  const parts = renderContextParts(ctx, { phoneHome: PHONE_HOME, maskSecrets: true });
  const userData = renderContextUserData(ctx, { phoneHome: PHONE_HOME, maskSecrets: true });

  it('ucernvm: the variables parse_user_data hands the bootloader', async () => {
    const r = await ucernvmRead(userData);
    expect(agentView('ucernvm', userData, parts).split('\n').filter((l) => l.startsWith('_UCONTEXT_'))).toEqual(r.ucontext);
  });

  it('cloud-init: its cloud-config parts in order with their merge rule, the others named as left alone', () => {
    const view = agentView('cloud-init', userData, parts);
    expect(view).toContain(peerDataText('cloudinit', 'examples', peer.cloudConfigFrom));
    expect(view).toMatch(/# part 1, ucernvm\.txt \(text\/ucernvm\): no cloud-init handler; left to µCernVM/);
    expect(view).toMatch(/# part 3, context-cloud-config\.yaml \(text\/cloud-config\): cloud-config, merged .*Merge-Type: list\(append\)/);
    expect(view).not.toContain(peer.secrets.ALIEN_TOKEN);
  });
});
