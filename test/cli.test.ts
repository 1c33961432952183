/**
 * Issue 15, the `cloudgate` command: the built binary (dist/cli/main.js, compiled by the
 * set-up when a source is newer) run as a subprocess, with HOME in a temporary folder, against a real stack
 * (Temporal dev server, worker, API, sim cloud) — as a user runs it. Every command goes
 * through the public REST API; a user's token works on their own things and another user's
 * is refused, each refusal one line on standard error with its documented exit code.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { verify } from 'unixcrypt';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { freePort } from '../workers/dev-server.js';
import { CLI_BIN, cliEnv, ROOT, startStack, type Stack } from './harness.js';

const run = promisify(execFile);
let stack: Stack;
let home: string;
const BIN = CLI_BIN;

beforeAll(async () => {
  // The binary users run: compiled JavaScript, not the TypeScript sources. The set-up compiles
  // dist/ only when a source is newer (npm test's set-up already has): not `npm run build`,
  // which would rebuild the portal under test/portal.test.ts running beside this suite.
  execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'setup.mjs')], { cwd: ROOT, stdio: 'inherit' });
  home = mkdtempSync(path.join(os.tmpdir(), 'cloudgate-cli-home-'));
  stack = await startStack();
}, 240_000);

afterAll(async () => {
  await stack?.stop();
  if (home) rmSync(home, { recursive: true, force: true });
});

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cloudgate args…` with HOME in the test's folder; `env` adds to (or, with '', removes from) its environment. */
function cg(args: string[], env: Record<string, string> = {}, input?: string): Promise<Run> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [BIN, ...args], { env: cliEnv(home, env), timeout: 170_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
    if (input !== undefined) child.stdin?.end(input);
    else child.stdin?.end();
  });
}

/** A command that must succeed. */
async function ok(args: string[], env: Record<string, string> = {}): Promise<string> {
  const r = await cg(args, env);
  expect({ args, code: r.code, stderr: r.stderr }).toEqual({ args, code: 0, stderr: expect.any(String) });
  return r.stdout;
}

/** A refusal: the exit code, and exactly one line on standard error. */
async function refused(args: string[], code: number, env: Record<string, string> = {}): Promise<string> {
  const r = await cg(args, env);
  expect({ args, code: r.code }).toEqual({ args, code });
  const lines = r.stderr.split('\n').filter(Boolean);
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^cloudgate: /);
  return lines[0];
}

const as = (token: string) => ({ CLOUDGATE_URL: stack.api.url, CLOUDGATE_TOKEN: token });

/** The cluster file of the walkthrough: an inline context, two services (workers on the context). */
function clusterFile(opts: { cpus?: number; role?: string; workers?: number } = {}) {
  return {
    name: 'demo',
    cloud: 'sim',
    contexts: [{ name: 'demo-workers', environment: { ROLE: opts.role ?? 'worker' }, secrets: { DB_PASSWORD: 'never-printed-7c1d' } }],
    definition: {
      name: 'demo-def',
      failurePolicy: 'keep',
      services: [
        { name: 'proxy', image: 'cernvm4-micro', offering: { cpus: 1, memoryMiB: 2048, diskGiB: 20 }, min: 1, readinessTimeoutSeconds: 30 },
        {
          name: 'workers',
          image: 'cernvm4-micro',
          offering: { cpus: opts.cpus ?? 1, memoryMiB: 2048, diskGiB: 20 },
          min: opts.workers ?? 2,
          max: 6,
          dependsOn: ['proxy'],
          context: 'demo-workers',
          readinessTimeoutSeconds: 30,
        },
      ],
    },
  };
}

function writeFile(name: string, content: unknown): string {
  const file = path.join(home, name);
  writeFileSync(file, typeof content === 'string' ? content : stringifyYaml(content));
  return file;
}

let aliceToken = '';
let bobToken = '';
let clusterId = '';

describe('the cloudgate command', () => {
  it('logs in: the endpoint and token go to ~/.config/cloudgate/config.yaml, mode 0600; a bad token is refused and not stored', async () => {
    const adminFile = writeFile('admin.token', `${stack.adminToken}\n`);
    const bad = writeFile('bad.token', 'cg_not-a-token\n');
    expect(await refused(['login', '--url', stack.api.url, '--token-file', bad], 3)).toMatch(/401 Unauthorized/);
    expect(await ok(['login', '--url', stack.api.url, '--token-file', adminFile])).toMatch(/logged in to .* as admin \(admin\)/);
    const config = path.join(home, '.config', 'cloudgate', 'config.yaml');
    expect(statSync(config).mode & 0o777).toBe(0o600);
    expect(statSync(path.dirname(config)).mode & 0o777).toBe(0o700);
    expect(parseYaml(readFileSync(config, 'utf8'))).toEqual({ url: stack.api.url, token: stack.adminToken });
    expect(await ok(['whoami'])).toBe(`admin (admin) at ${stack.api.url}\n`);

    // Tokens for two users (admin only); the value alone on stdout, so it can go straight to a file.
    aliceToken = (await ok(['token', 'create', '--owner', 'alice'])).trim();
    bobToken = (await ok(['token', 'create', '--owner', 'bob', '--ttl', '3600'])).trim();
    expect(aliceToken).toMatch(/^cg_/);
    // CLOUDGATE_URL / CLOUDGATE_TOKEN override the file.
    expect(JSON.parse(await ok(['whoami', '-o', 'json'], as(aliceToken)))).toEqual({ url: stack.api.url, owner: 'alice', role: 'user', via: 'token', tokenId: expect.stringMatching(/^tok-/) });
  });

  it('tokens: an admin lists and revokes them; a user may not issue one', async () => {
    const listed = JSON.parse(await ok(['token', 'list', '-o', 'json']));
    expect(listed.map((t: { owner: string }) => t.owner)).toEqual(expect.arrayContaining(['admin', 'alice', 'bob']));
    expect(JSON.stringify(listed)).not.toContain(aliceToken);
    expect(await refused(['token', 'create', '--owner', 'mallory', '--role', 'admin'], 4, as(aliceToken))).toMatch(/only an admin may do this \(403 Forbidden\)/);
    // Alice sees only her own tokens.
    expect(JSON.parse(await ok(['token', 'list', '-o', 'json'], as(aliceToken))).map((t: { owner: string }) => t.owner)).toEqual(['alice']);

    const spare = (await ok(['token', 'create', '--owner', 'carol'])).trim();
    const spareId = JSON.parse(await ok(['token', 'list', '--owner', 'carol', '-o', 'json']))[0].id as string;
    expect(await ok(['whoami'], as(spare))).toMatch(/^carol \(user\)/);
    expect(await ok(['token', 'revoke', spareId])).toBe(`token ${spareId}: revoked\n`);
    expect(await refused(['whoami'], 3, as(spare))).toMatch(/401 Unauthorized/);
  });

  it('apply creates the cluster of a file and follows it live; the same file again changes nothing and says so', async () => {
    const file = writeFile('cluster.yaml', clusterFile());
    const diff = await cg(['diff', '-f', file], as(aliceToken));
    expect(diff.code).toBe(8);
    expect(diff.stdout).toBe('context demo-workers: would be created\ndefinition demo-def: would be stored\ncluster demo: would be created on sim (proxy ×1, workers ×2)\n');

    const applied = await ok(['apply', '-f', file, '--wait', '--timeout', '120'], as(aliceToken));
    const lines = applied.split('\n');
    expect(lines[0]).toMatch(/^context demo-workers: created ctx-[0-9a-f]{12} v1$/);
    expect(lines[1]).toMatch(/^definition demo-def: stored def-/);
    clusterId = /^cluster demo: created (demo-[a-z0-9]{6}) \(PENDING\); Temporal UI: http.*\/workflows\/cluster%2Fdemo-/m.exec(applied)?.[1] ?? '';
    expect(clusterId).not.toBe('');
    // The live view: a progress bar per service (ready/desired) and its state, ending READY.
    expect(applied).toMatch(/^ {2}workers +\[#{20}\] +2\/2 {2}READY$/m);
    expect(applied).toMatch(/^ {2}proxy +\[#{20}\] +1\/1 {2}READY$/m);
    expect(applied).toMatch(new RegExp(`^cluster ${clusterId} is READY\\n$`, 'm'));
    // No secret value in anything printed.
    expect(applied).not.toContain('never-printed');

    const again = await ok(['apply', '-f', file], as(aliceToken));
    expect(again).toMatch(/^context demo-workers: unchanged \(ctx-[0-9a-f]{12} v1\)\n/);
    expect(again).toMatch(new RegExp(`^cluster demo: unchanged \\(${clusterId}, READY, definition def-[0-9a-f]+\\)$`, 'm'));
    const same = await cg(['diff', '-f', file], as(aliceToken));
    expect(same.code).toBe(0);
    expect(same.stdout).toMatch(/: unchanged\n$/);
    // Still one cluster of that name.
    expect(JSON.parse(await ok(['get', 'clusters', '-o', 'json'], as(aliceToken))).map((c: { id: string }) => c.id)).toEqual([clusterId]);
  });

  it('get lists clusters, definitions, contexts and clouds as a table, JSON, YAML or names', async () => {
    const tableOut = await ok(['get', 'clusters'], as(aliceToken));
    expect(tableOut.split('\n')[0]).toMatch(/^ID +NAME +STATE +CLOUD +DEFINITION +OWNER +AGE$/);
    expect(tableOut).toMatch(new RegExp(`^${clusterId} +demo +READY +sim +def-[0-9a-f]+ +alice +\\d+[smhd]$`, 'm'));
    const yaml = parseYaml(await ok(['get', 'clusters', '-o', 'yaml'], as(aliceToken)));
    expect(yaml).toEqual([expect.objectContaining({ id: clusterId, name: 'demo', state: 'READY', owner: 'alice' })]);
    expect(await ok(['get', 'clusters', '-o', 'name'], as(aliceToken))).toBe(`${clusterId}\n`);
    const defs = JSON.parse(await ok(['get', 'definitions', '-o', 'json'], as(aliceToken)));
    expect(defs.map((d: { name: string }) => d.name)).toEqual(['demo-def']);
    expect(await ok(['get', 'contexts'], as(aliceToken))).toMatch(/^ctx-[0-9a-f]{12} +demo-workers +1 /m);
    expect(await ok(['get', 'clouds'], as(aliceToken))).toMatch(/^sim +sim +\d+ +cernvm/m);
    // Bob sees none of it.
    expect(await ok(['get', 'clusters', '-o', 'name'], as(bobToken))).toBe('');
    expect(await ok(['get', 'clusters'], as(bobToken))).toBe('nothing to show\n');
    expect(await refused(['get', 'nodes'], 2, as(aliceToken))).toMatch(/must be one of clusters, definitions, contexts, clouds/);
  });

  it('describe shows services, instances with their cloud, events and the Temporal UI link', async () => {
    const text = await ok(['describe', 'cluster', clusterId], as(aliceToken));
    expect(text).toMatch(new RegExp(`^Cluster: +${clusterId} \\(name demo\\)$`, 'm'));
    expect(text).toMatch(/^State: +READY$/m);
    expect(text).toMatch(new RegExp(`^Temporal UI: +http.*/namespaces/default/workflows/cluster%2F${clusterId}$`, 'm'));
    expect(text).toMatch(/^ {2}workers +READY +2\/2 +0 +sim:2\/2/m);
    expect(text).toMatch(new RegExp(`^ {2}${clusterId}-workers-\\d+ +workers +READY +sim +sim-`, 'm'));
    expect(text).toMatch(/^Events \(/m);
    expect(text).toMatch(/DEPLOYING → READY/);
    const json = JSON.parse(await ok(['describe', 'cluster', clusterId, '-o', 'json'], as(aliceToken)));
    expect(json.instances).toHaveLength(3);
    expect(json.cluster.links.temporalUi).toMatch(/cluster%2F/);
  });

  it("another user's token is refused on someone else's cluster: one line, exit 4, for every command", async () => {
    const file = writeFile('cluster.yaml', clusterFile());
    for (const args of [
      ['describe', 'cluster', clusterId],
      ['scale', clusterId, 'workers', '3'],
      ['pause', clusterId],
      ['resume', clusterId],
      ['retry', clusterId],
      ['down', clusterId],
    ]) {
      expect(await refused(args, 4, as(bobToken))).toBe(`cloudgate: no cluster "${clusterId}" (404 Not Found)`);
    }
    const ctx = (await ok(['get', 'contexts', '-o', 'name'], as(aliceToken))).trim();
    for (const args of [['context', 'preview', ctx], ['context', 'pair', ctx], ['context', 'edit', ctx, '-f', file]]) {
      expect(await refused(args, 4, as(bobToken))).toBe(`cloudgate: no context "${ctx}" (404 Not Found)`);
    }
    const aliceTokenId = JSON.parse(await ok(['token', 'list', '-o', 'json'], as(aliceToken)))[0].id as string;
    expect(await refused(['token', 'revoke', aliceTokenId], 4, as(bobToken))).toBe(`cloudgate: no token "${aliceTokenId}" (404 Not Found)`);
    // Bob applying the same file makes his own cluster-to-be, not a change of Alice's.
    const diff = await cg(['diff', '-f', file], as(bobToken));
    expect(diff.stdout).toMatch(/^cluster demo: would be created/m);
  });

  it('a refusal naming a field is one line naming it: a scale beyond max, a definition the API rejects (as the file names the field)', async () => {
    expect(await refused(['scale', clusterId, 'workers', '40'], 1, as(aliceToken))).toBe("cloudgate: instances: must be at most the service's max (6) (422 Validation failed)");
    const bad = clusterFile({ cpus: 9999 });
    bad.name = 'other';
    const line = await refused(['apply', '-f', writeFile('bad.yaml', bad)], 1, as(aliceToken));
    expect(line).toMatch(/^cloudgate: definition\.services\[1\]\.offering\.cpus: .*512.* \(422 Validation failed\)$/);
    expect(await refused(['apply', '-f', writeFile('shape.yaml', { definition: { name: 'x', services: [] }, colour: 'red' })], 2)).toMatch(/shape\.yaml: .*colour/);
    expect(await refused(['apply', '-f', path.join(home, 'missing.yaml')], 2)).toMatch(/cannot read/);
  });

  it('scale, pause and resume a cluster', async () => {
    expect(await ok(['scale', clusterId, 'workers', '3'], as(aliceToken))).toBe(`cluster ${clusterId}: workers scaled to 3\n`);
    expect(await ok(['pause', clusterId], as(aliceToken))).toMatch(new RegExp(`^cluster ${clusterId}: PAUSING`));
    await waitForCli(async () => (await ok(['get', 'clusters'], as(aliceToken))).includes(' PAUSED '), 'the cluster to be PAUSED');
    expect(await refused(['retry', clusterId], 1, as(aliceToken))).toMatch(/409 Conflict/);
    expect(await ok(['resume', clusterId], as(aliceToken))).toBe(`cluster ${clusterId}: DEPLOYING\n`);
    await waitForCli(async () => JSON.parse(await ok(['describe', 'cluster', clusterId, '-o', 'json'], as(aliceToken))).cluster.state === 'READY', 'the cluster to be READY again');
    // The scale survived the pause; the file still says min 2, which apply does not force back.
    const c = JSON.parse(await ok(['describe', 'cluster', clusterId, '-o', 'json'], as(aliceToken))).cluster;
    expect(c.services.find((s: { name: string }) => s.name === 'workers').desired).toBe(3);
  });

  it('contexts: create, edit (from a file and in $EDITOR, keeping the password), preview with secrets masked, pair by PIN', async () => {
    const PASSWORD = 'laptop-PASSWORD-8e1f';
    const created = await ok(
      ['context', 'create', '-f', writeFile('ctx.yaml', { name: 'laptop', environment: { A: '1' }, users: [{ name: 'lap', password: PASSWORD }], secrets: { TOKEN: 'hidden-value-5e2a' } })],
      as(aliceToken),
    );
    const id = /created (ctx-[0-9a-f]{12}) v1/.exec(created)?.[1] ?? '';
    expect(id).not.toBe('');
    // A file says to keep the password as GET shows it (the API never shows the hash).
    const file2 = writeFile('ctx2.yaml', { name: 'laptop', environment: { A: '2' }, users: [{ name: 'lap', passwordSet: true }] });
    expect(await ok(['context', 'edit', id, '-f', file2], as(aliceToken))).toBe(`context laptop: ${id} v2\n`);
    // $EDITOR edits the current version in place (a shell command, as git runs it); an unchanged file stores nothing.
    expect(await ok(['context', 'edit', id], { ...as(aliceToken), EDITOR: "sed -i 's/A: \"2\"/A: \"3\"/'" })).toBe(`context laptop: ${id} v3\n`);
    expect(await ok(['context', 'edit', id], { ...as(aliceToken), EDITOR: 'true' })).toBe(`context ${id}: no change (still v3)\n`);
    const preview = await ok(['context', 'preview', id], as(aliceToken));
    expect(preview).toContain("export A='3'");
    expect(preview).toContain("TOKEN='********'");
    expect(preview).toContain('users=lap:lap:********'); // the kept password's hash, masked
    // A command's own --version, not the program's (cloudgate --version).
    expect(await ok(['context', 'preview', id, '--version', '1'], as(aliceToken))).toContain("export A='1'");
    expect(preview).not.toContain('hidden-value');
    const pin = await ok(['context', 'pair', id], as(aliceToken));
    const m = /^PIN ([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}) for (ctx-[0-9a-f]{12}) v3, good once until \S+\nin the VM: curl -s (\S+)$/m.exec(pin);
    expect(m?.[2]).toBe(id);
    const userData = await fetch(m![3]);
    expect(userData.status).toBe(200);
    const v3 = await userData.text();
    expect(v3).toContain('hidden-value-5e2a'); // the laptop's one fetch gets the real values
    // Version 3, edited twice, has version 1's very password hash: `lap` logs in as before.
    const v1Pin = /curl -s (\S+)$/m.exec(await ok(['context', 'pair', id, '--version', '1'], as(aliceToken)))![1];
    const v1 = await (await fetch(v1Pin)).text();
    const hashes = (text: string) => [...new Set(text.match(/\$6\$[./0-9A-Za-z]+\$[./0-9A-Za-z]{86}/g))];
    expect(hashes(v1)).toHaveLength(1);
    expect(hashes(v3)).toEqual(hashes(v1));
    expect(verify(PASSWORD, hashes(v3)[0])).toBe(true);
    // An admin sees the context but may not pair it: only its owner hands out its secrets.
    expect(await refused(['context', 'pair', id], 4)).toMatch(/only the owner .* may pair .*\(403 Forbidden\)/);
  });

  it('apply of an edited file is a rolling change, followed live until the cluster runs the new definition', async () => {
    const file = writeFile('cluster.yaml', clusterFile({ cpus: 2, role: 'worker2' }));
    const diff = await cg(['diff', '-f', file], as(aliceToken));
    expect(diff.code).toBe(8);
    expect(diff.stdout).toContain('  ~ environment.ROLE: "worker" → "worker2"\n');
    expect(diff.stdout).toContain('  ~ definition.services[workers].offering.cpus: 1 → 2\n');
    expect(diff.stdout).toMatch(/ {2}~ contexts\.workers: (ctx-[0-9a-f]{12}) v1 → \1 v2\n/);

    const out = await ok(['apply', '-f', file, '--wait', '--timeout', '150'], as(aliceToken));
    expect(out).toMatch(/^context demo-workers: updated ctx-[0-9a-f]{12} v2$/m);
    const change = new RegExp(`^cluster demo \\(${clusterId}\\): rolling change (def-[0-9a-f]+) → (def-[0-9a-f]+): replace workers \\(1 at a time\\); keep proxy$`, 'm').exec(out);
    expect(change).not.toBeNull();
    expect(out).toMatch(new RegExp(`cluster ${clusterId} is READY\\n$`));
    const c = JSON.parse(await ok(['describe', 'cluster', clusterId, '-o', 'json'], as(aliceToken)));
    expect(c.cluster.definitionId).toBe(change![2]);
    expect(c.instances.filter((i: { service: string }) => i.service === 'workers').every((i: { spec: string }) => i.spec.startsWith(change![2]))).toBe(true);
    expect((await ok(['apply', '-f', file], as(aliceToken))).split('\n').filter(Boolean).every((l) => l.includes('unchanged'))).toBe(true);
  });

  it('down --wait tears the cluster down; applying the file again makes a new cluster', async () => {
    const out = await ok(['down', clusterId, '--wait', '--timeout', '120'], as(aliceToken));
    expect(out).toMatch(new RegExp(`^cluster ${clusterId}: TERMINATING\\n`));
    expect(out).toMatch(new RegExp(`cluster ${clusterId} is TERMINATED\\n$`));
    expect(await ok(['get', 'clusters', '-o', 'name'], as(aliceToken))).toBe('');
    expect(await ok(['get', 'clusters', '--state', 'TERMINATED', '-o', 'name'], as(aliceToken))).toBe(`${clusterId}\n`);
    // The Idempotency-Key of a new create differs once the old cluster is TERMINATED: not the old one answered again.
    const again = await ok(['apply', '-f', path.join(home, 'cluster.yaml')], as(aliceToken));
    const fresh = /^cluster demo: created (demo-[a-z0-9]{6})/m.exec(again)?.[1];
    expect(fresh).toBeDefined();
    expect(fresh).not.toBe(clusterId);
    await ok(['down', fresh!], as(aliceToken));
  });

  it('usage errors and an unreachable API have their own exit codes; completion scripts for bash and zsh', async () => {
    expect(await refused(['scale', 'x', 'workers', 'many'], 2, as(aliceToken))).toMatch(/<instances> must be a whole number/);
    expect(await refused(['frobnicate'], 2)).toMatch(/unknown command 'frobnicate'/);
    const closed = `http://127.0.0.1:${await freePort()}`; // free: nothing listens there
    expect(await refused(['get', 'clusters'], 7, { CLOUDGATE_URL: closed, CLOUDGATE_TOKEN: 'cg_x' })).toBe(`cloudgate: cannot reach the cloudgate API at ${closed}: ECONNREFUSED`);
    expect(await refused(['get', 'clusters'], 3, { CLOUDGATE_CONFIG: path.join(home, 'none.yaml') })).toMatch(/not logged in/);
    const help = await ok(['--help']);
    expect(help).toMatch(/Exit codes: 0 done; 1 refused/);

    const bash = await ok(['completion', 'bash']);
    const bashFile = writeFile('cloudgate.bash', bash);
    execFileSync('bash', ['-n', bashFile]);
    // The function itself, as bash calls it: commands, subcommands, kinds, option values, and cluster ids asked of the API.
    const bin = path.join(home, 'bin');
    execFileSync('mkdir', ['-p', bin]);
    writeFileSync(path.join(bin, 'cloudgate'), `#!/bin/sh\nexec "${process.execPath}" "${BIN}" "$@"\n`, { mode: 0o755 });
    // Asynchronously: the API answering the ids runs in this very process (startStack), so a synchronous child would wait on it forever.
    const complete = async (words: string) =>
      (
        await run('bash', ['-c', `source "${bashFile}"; COMP_WORDS=(${words}); COMP_CWORD=$(( \${#COMP_WORDS[@]} - 1 )); _cloudgate; echo "\${COMPREPLY[*]}"`], {
          env: { PATH: `${bin}:${process.env.PATH}`, HOME: home, ...as(aliceToken) },
        })
      ).stdout.trim();
    expect((await complete("cloudgate ''")).split(' ')).toEqual(expect.arrayContaining(['login', 'apply', 'diff', 'get', 'describe', 'scale', 'pause', 'resume', 'retry', 'down', 'context', 'token', 'completion']));
    expect(await complete("cloudgate context ''")).toBe('create edit preview pair');
    expect(await complete("cloudgate get -o json ''")).toBe('clusters definitions contexts clouds');
    expect(await complete("cloudgate get -o ''")).toBe('table json yaml name');
    expect(await complete("cloudgate apply --w")).toBe('--wait');
    // Ids asked of the API with the user's own credentials: Alice's tokens and contexts, nobody else's.
    const aliceTokens = JSON.parse(await ok(['token', 'list', '-o', 'json'], as(aliceToken))).map((t: { id: string }) => t.id);
    expect(await complete("cloudgate token revoke ''")).toBe(aliceTokens.join(' '));
    expect(await complete("cloudgate context edit ''")).toMatch(/^ctx-[0-9a-f]{12} ctx-[0-9a-f]{12}$/);

    const zsh = await ok(['completion', 'zsh']);
    expect(zsh.split('\n')[0]).toBe('#compdef cloudgate');
    execFileSync('zsh', ['-n', writeFile('_cloudgate', zsh)]);
  });
});

/** Polls a condition the command itself reports. */
async function waitForCli(f: () => Promise<boolean>, what: string, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await f())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}
