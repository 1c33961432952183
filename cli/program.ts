/**
 * The `cloudgate` command tree (commander): every command is a few calls of the public REST
 * API through {@link ApiClient} and a rendering of the answers. main.ts runs it and turns
 * errors into one line and an exit code.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import type { z } from 'zod';
import type {
  ApiTokenSchema,
  Cloud,
  ClusterDefinitionRecordSchema,
  ClusterDetail,
  ClusterEventSchema,
  ClusterSummarySchema,
  ContextRecordSchema,
  PairingSchema,
  PublishedInstanceSchema,
  RetryResponseSchema,
} from '../api/schemas.js';
import { carryOut, describePlan, plan, readApplyFile, type WhoAmI } from './apply.js';
import { ApiClient, CliError, EXIT } from './client.js';
import { bashCompletion, zshCompletion } from './completion.js';
import { configPath, readConfig, resolveEndpoint, writeConfig, type UserConfig } from './config.js';
import { deviceLogin, refreshStoredToken } from './oidc.js';
import { changed, deployed, follow, tornDown } from './follow.js';
import { age, OUTPUT_FORMATS, serialise, stdout, table, type OutputFormat, type Out } from './output.js';

type ClusterSummary = z.infer<typeof ClusterSummarySchema>;
type DefinitionRecord = z.infer<typeof ClusterDefinitionRecordSchema> & { owner?: string };
type ContextRecord = z.infer<typeof ContextRecordSchema> & { owner?: string };
type ApiToken = z.infer<typeof ApiTokenSchema>;
type Instance = z.infer<typeof PublishedInstanceSchema>;
type ClusterEvent = z.infer<typeof ClusterEventSchema>;

/** The version printed by `--version`: the package's. */
function packageVersion(): string {
  try {
    const here = path.dirname(new URL(import.meta.url).pathname);
    for (const up of ['../package.json', '../../package.json']) {
      try {
        return (JSON.parse(readFileSync(path.join(here, up), 'utf8')) as { version: string }).version;
      } catch {
        // not there: the next candidate (sources run from cli/, the build from dist/cli/)
      }
    }
  } catch {
    // fall through
  }
  return 'unknown';
}

const integer = (what: string, min = 0) => (v: string): number => {
  if (!/^[0-9]+$/.test(v) || Number(v) < min) throw new InvalidArgumentError(`${what} must be a whole number${min > 0 ? ` of at least ${min}` : ''}`);
  return Number(v);
};

const outputOption = (formats: readonly OutputFormat[] = OUTPUT_FORMATS) => new Option('-o, --output <format>', 'output format').choices(formats).default('table');

const timeoutOption = () => new Option('--timeout <seconds>', 'with --wait: give up after this long (exit 6)').default(1800).argParser(integer('--timeout', 1));

/** A client for the endpoint in force (config file, overridden by CLOUDGATE_URL / CLOUDGATE_TOKEN). */
const connect = (): ApiClient => new ApiClient(resolveEndpoint());

const id = (s: string) => encodeURIComponent(s);

/** Reads a token from a file, or standard input for `-` (the first line, trimmed). */
function readToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read the token from ${file}: ${(err as Error).message}`, EXIT.usage, { cause: err });
  }
  const token = text.split('\n')[0].trim();
  if (!token) throw new CliError(`${file === '-' ? 'standard input' : file} holds no token`, EXIT.usage);
  return token;
}

/** Asks for the token on the terminal without echoing it. */
async function promptToken(): Promise<string> {
  if (!process.stdin.isTTY) return readToken('-');
  process.stderr.write('API token (not shown): ');
  process.stdin.setRawMode(true);
  process.stdin.resume();
  let token = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (buf: Buffer) => {
      for (const ch of buf.toString('utf8')) {
        if (ch === '\r' || ch === '\n') return finish();
        if (ch === '\u0003') return finish(new CliError('interrupted', 130));
        if (ch === '\u007f') token = token.slice(0, -1);
        else token += ch;
      }
    };
    const finish = (err?: Error) => {
      process.stdin.off('data', onData);
      process.stdin.setRawMode(false);
      process.stdin.pause();
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve();
    };
    process.stdin.on('data', onData);
  });
  if (!token.trim()) throw new CliError('no token given', EXIT.usage);
  return token.trim();
}

/** Reads a YAML or JSON document for a request body. */
function readDocument(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read ${file}: ${(err as Error).message}`, EXIT.usage, { cause: err });
  }
  try {
    return parseYaml(text);
  } catch (err) {
    throw new CliError(`${file} is not YAML or JSON: ${(err as Error).message.split('\n')[0]}`, EXIT.usage, { cause: err });
  }
}

/** Prints a list in a format: a table from `columns`, the items as JSON/YAML, or one name per line. */
function render<T>(items: T[], format: OutputFormat, columns: [string, (x: T) => string | number | undefined][], name: (x: T) => string): string {
  if (format === 'json' || format === 'yaml') return serialise(items, format);
  if (format === 'name') return items.map((x) => `${name(x)}\n`).join('');
  if (items.length === 0) return 'nothing to show\n';
  return table(
    columns.map(([h]) => h),
    items.map((x) => columns.map(([, f]) => f(x))),
  );
}

const KINDS = ['clusters', 'definitions', 'contexts', 'clouds'] as const;
type Kind = (typeof KINDS)[number];

/** One listing of `get`, rendered. */
async function listing(client: ApiClient, kind: Kind, opts: { output: OutputFormat; owner?: string; state?: string }): Promise<string> {
  const owner = { owner: opts.owner };
  switch (kind) {
    case 'clusters': {
      const items = await client.all<ClusterSummary>('/v1/clusters', { ...owner, state: opts.state });
      return render(
        items,
        opts.output,
        [
          ['ID', (c) => c.id],
          ['NAME', (c) => c.name],
          ['STATE', (c) => c.state],
          ['CLOUD', (c) => c.cloud],
          ['DEFINITION', (c) => c.definitionId],
          ['OWNER', (c) => c.owner],
          ['AGE', (c) => age(c.createdAt)],
        ],
        (c) => c.id,
      );
    }
    case 'definitions': {
      const items = await client.all<DefinitionRecord>('/v1/cluster-definitions', owner);
      return render(
        items,
        opts.output,
        [
          ['ID', (d) => d.id],
          ['NAME', (d) => d.name],
          ['SERVICES', (d) => d.definition.services.map((s) => s.name).join(',')],
          ['MIN INSTANCES', (d) => d.definition.services.reduce((n, s) => n + (s.min ?? 1), 0)],
          ['OWNER', (d) => d.owner],
          ['AGE', (d) => age(d.createdAt)],
        ],
        (d) => d.id,
      );
    }
    case 'contexts': {
      const items = await client.all<ContextRecord>('/v1/contexts', owner);
      return render(
        items,
        opts.output,
        [
          ['ID', (c) => c.id],
          ['NAME', (c) => c.name],
          ['VERSION', (c) => c.version],
          ['REPOSITORIES', (c) => c.context.repositories.join(',')],
          ['OWNER', (c) => c.owner],
          ['AGE', (c) => age(c.createdAt)],
        ],
        (c) => c.id,
      );
    }
    case 'clouds': {
      const items = (await client.get<{ items: Cloud[] }>('/v1/clouds')).items;
      return render(
        items,
        opts.output,
        [
          ['NAME', (c) => c.name],
          ['KIND', (c) => c.kind],
          ['OFFERINGS', (c) => c.offerings.length],
          ['IMAGES', (c) => c.images.join(',')],
          ['INSTANCES', (c) => `${c.usage.instances}${c.quota?.instances !== undefined ? `/${c.quota.instances}` : ''}`],
          ['CPUS', (c) => `${c.usage.cpus}${c.quota?.cpus !== undefined ? `/${c.quota.cpus}` : ''}`],
        ],
        (c) => c.name,
      );
    }
  }
}

/** Runs `f` every `seconds` and prints what it renders whenever that changed, until interrupted. */
async function watch(f: () => Promise<string>, seconds: number, out: Out, title: string): Promise<never> {
  let last: string | undefined;
  for (;;) {
    const text = await f();
    if (text !== last) {
      if (out.tty) out.write(`\x1b[H\x1b[2J${title}  (every ${seconds} s; Ctrl-C to stop)\n\n${text}`);
      else out.write(`${last === undefined ? '' : '\n'}# ${new Date().toISOString()}\n${text}`);
      last = text;
    }
    await new Promise((r) => setTimeout(r, seconds * 1000));
  }
}

/** `cloudgate describe cluster ID`: the cluster, its services, instances and last events, and its Temporal UI link. */
async function describeCluster(client: ApiClient, clusterId: string, opts: { output: OutputFormat; events: number }, out: Out): Promise<void> {
  const c = await client.get<ClusterDetail>(`/v1/clusters/${id(clusterId)}`);
  const instances = await client.all<Instance>(`/v1/clusters/${id(clusterId)}/instances`);
  const events = await client.all<ClusterEvent>(`/v1/clusters/${id(clusterId)}/events`);
  if (opts.output === 'json' || opts.output === 'yaml') return void out.write(serialise({ cluster: c, instances, events }, opts.output));
  if (opts.output === 'name') return void out.write(`${c.id}\n`);
  const lines = [
    `Cluster:      ${c.id} (name ${c.name})`,
    `State:        ${c.state}${c.message ? ` — ${c.message}` : ''}`,
    `Definition:   ${c.definitionId}`,
    `Cloud:        ${c.cloud}`,
    ...(c.contexts ? [`Contexts:     ${Object.entries(c.contexts).map(([s, p]) => `${s}: ${p.id} v${p.version}`).join('; ')}`] : []),
    ...(c.change ? [`Change:       ${c.change.from} → ${c.change.to}, ${c.change.phase} (${c.change.maxUnavailable} at a time)${c.change.reason ? `: ${c.change.reason}` : ''}`] : []),
    ...(c.expiresAt ? [`Expires:      ${c.expiresAt}`] : []),
    ...(c.windows ? [`Windows:      ${c.windows.map((w) => `${w.cron} for ${w.durationSeconds} s`).join('; ')}${c.nextWindowAt ? `; next opens ${c.nextWindowAt}` : ''}`] : []),
    ...(c.observedAt ? [`Observed:     ${c.observedAt}`] : []),
    `Temporal UI:  ${c.links.temporalUi}`,
    '',
    'Services:',
  ];
  out.write(`${lines.join('\n')}\n`);
  out.write(
    indent(
      table(
        ['NAME', 'STATE', 'READY', 'REPLACED', 'CLOUDS', 'SPEC', 'MESSAGE'],
        c.services.map((s) => [
          s.name,
          s.state,
          `${s.ready}/${s.desired}`,
          s.replacements,
          s.clouds ? Object.entries(s.clouds).map(([n, x]) => `${n}:${x.ready}/${x.instances}`).join(',') : '',
          `${s.spec ?? ''}${s.outdated ? ` (${s.outdated} outdated)` : ''}`,
          s.message,
        ]),
      ),
    ),
  );
  out.write(`\nInstances (${instances.length}):\n`);
  if (instances.length) {
    out.write(
      indent(
        table(
          ['ID', 'SERVICE', 'STATE', 'CLOUD', 'HOST', 'CLOUD ID', 'AGE', 'MESSAGE'],
          instances.map((i) => [i.id, i.service, i.state, i.cloud, i.host, i.cloudInstanceId, age(i.createdAt), i.message]),
        ),
      ),
    );
  }
  const shown = events.slice(-opts.events);
  out.write(`\nEvents (${shown.length === events.length ? events.length : `last ${shown.length} of ${events.length}`}):\n`);
  if (shown.length) out.write(indent(table(['AT', 'KIND', 'SERVICE', 'MESSAGE'], shown.map((e) => [e.at, e.kind, e.service, e.message]))));
}

const indent = (text: string) =>
  text
    .split('\n')
    .map((l) => (l ? `  ${l}` : l))
    .join('\n');

/** The editable text of a context for `context edit`: what a PUT takes, with notes on what the API does not show. */
function editableContext(rec: ContextRecord): string {
  const { secretNames, ...body } = rec.context as ContextRecord['context'] & { secretNames?: string[] };
  const withPassword = body.users.filter((u) => u.passwordSet).map((u) => u.name);
  const notes = [
    `# cloudgate context edit ${rec.id} (version ${rec.version}): saving makes version ${rec.version + 1}; an unchanged file changes nothing.`,
    ...(secretNames?.length ? [`# Secrets ${secretNames.join(', ')} are kept as they are unless you add a \`secrets:\` map (its values replace them all).`] : []),
    ...(withPassword.length
      ? [`# Users ${withPassword.join(', ')} keep the password the API does not show while \`passwordSet: true\` stays; a \`password:\` replaces it, removing both removes it.`]
      : []),
  ];
  return `${notes.join('\n')}\n${stringifyYaml(body, { lineWidth: 0 })}`;
}

/** Opens `text` in $VISUAL / $EDITOR (a shell command, as git runs it) and returns what was saved. */
function editInEditor(text: string, name: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cloudgate-edit-'));
  const file = path.join(dir, name);
  try {
    writeFileSync(file, text, { mode: 0o600 });
    const editor = process.env.VISUAL || process.env.EDITOR || 'vi';
    // Through the shell, with the file as "$1": EDITOR may carry arguments (`code -w`), the path is never re-split.
    const r = spawnSync('/bin/sh', ['-c', `${editor} "$1"`, 'sh', file], { stdio: 'inherit' });
    if (r.error || r.status !== 0) throw new CliError(`the editor (${editor}) ${r.error ? `could not run: ${r.error.message}` : `exited with ${r.status}`}; nothing saved`, EXIT.usage);
    return readFileSync(file, 'utf8');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export function buildProgram(out: Out = stdout): Command {
  const say = (line: string) => out.write(`${line}\n`);
  const program = new Command('cloudgate')
    .description('cloudgate: CernVM clusters on any cloud, through the cloudgate REST API')
    .version(packageVersion(), '-V, --version')
    // The program's own options only before a command: `context pair ID --version 1` is the command's --version, not this one.
    .enablePositionalOptions()
    // Throw instead of exiting (main.ts maps usage errors to EXIT.usage); set first so every subcommand inherits it.
    .exitOverride()
    // Usage errors read like every other failure: one line, `cloudgate: …`.
    .configureOutput({ outputError: (text, write) => write(`cloudgate: ${text.replace(/^error: /, '')}`) })
    .showSuggestionAfterError()
    .addHelpText(
      'after',
      `
Endpoint and credential: ${configPath()} (written by \`cloudgate login\`, mode 0600);
CLOUDGATE_URL and CLOUDGATE_TOKEN override it (CLOUDGATE_CONFIG names another file).
Exit codes: 0 done; 1 refused by the API (409, 422, …) or failed; 2 usage; 3 not logged in or
401; 4 not found or not allowed (403, 404, 410); 5 --wait: the cluster ended FAILED or its change
rolled back; 6 --wait: --timeout ran out; 7 the API could not be reached; 8 diff: apply would change something.`,
    );

  // Before every command that calls the API: an OIDC sign-in's expired access token is refreshed first (cli/oidc.ts).
  program.hook('preAction', async (_program, action) => {
    let top = action;
    while (top.parent && top.parent !== program) top = top.parent;
    if (!['login', 'logout', 'completion'].includes(top.name())) await refreshStoredToken();
  });

  program
    .command('login')
    .description("store the API URL and a credential in your config file: an API token (checked against the API first), or with --oidc the tokens of a sign-in at the site's identity provider")
    .requiredOption('--url <url>', 'the cloudgate API, e.g. http://127.0.0.1:8080')
    .addOption(new Option('--token-file <file>', 'read the token from this file (- for standard input); else it is asked for').conflicts('oidc'))
    .option('--oidc', "sign in at the site's OIDC provider with the device flow: open the link it prints and enter the code (the access token is refreshed when it expires)")
    .option('--client-id <id>', "with --oidc: this OIDC client instead of the one the API names")
    .action(async (opts: { url: string; tokenFile?: string; oidc?: boolean; clientId?: string }) => {
      let url: URL;
      try {
        url = new URL(opts.url);
      } catch {
        throw new CliError(`--url ${opts.url}: not a URL`, EXIT.usage);
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new CliError(`--url ${opts.url}: must be http or https`, EXIT.usage);
      if (opts.clientId !== undefined && !opts.oidc) throw new CliError('--client-id goes with --oidc', EXIT.usage);
      const endpoint = url.toString().replace(/\/+$/, '');
      const credential: Pick<UserConfig, 'token' | 'oidc'> = opts.oidc
        ? await deviceLogin({ url: endpoint, clientId: opts.clientId, say: (line) => process.stderr.write(`${line}\n`) })
        : { token: opts.tokenFile !== undefined ? readToken(opts.tokenFile) : await promptToken() };
      const me = await new ApiClient({ url: endpoint, token: credential.token }).get<WhoAmI>('/v1/me');
      const file = configPath();
      // A token login drops an earlier OIDC sign-in's refresh token with it.
      const { oidc: _earlier, ...kept } = readConfig(file);
      writeConfig({ ...kept, url: endpoint, ...credential }, file);
      say(`logged in to ${endpoint} as ${me.owner} (${me.role})${me.via === 'oidc' ? ` via ${credential.oidc?.issuer}` : ''}; saved in ${file} (mode 0600)`);
    });

  program
    .command('logout')
    .description('forget the token in your config file (the token itself stays valid until revoked)')
    .action(() => {
      const file = configPath();
      const { url } = readConfig(file);
      writeConfig(url ? { url } : {}, file);
      say(`token removed from ${file}`);
    });

  program
    .command('whoami')
    .description('who the API takes you for, and where it is')
    .addOption(outputOption(['table', 'json', 'yaml']))
    .action(async (opts: { output: OutputFormat }) => {
      const client = connect();
      const me = await client.get<WhoAmI>('/v1/me');
      if (opts.output === 'json' || opts.output === 'yaml') return void out.write(serialise({ url: client.url, ...me }, opts.output));
      say(`${me.owner} (${me.role}) at ${client.url}`);
    });

  program
    .command('apply')
    .description('create or update the cluster a YAML file describes (definition, inline contexts, submission); idempotent')
    .requiredOption('-f, --file <file>', 'the cluster file (- for standard input)')
    .option('--wait', 'follow the deployment or change until it is done (exit 5 if it fails)')
    .addOption(timeoutOption())
    .action(async (opts: { file: string; wait?: boolean; timeout: number }) => {
      const file = readApplyFile(opts.file);
      const client = connect();
      const applied = await carryOut(client, await plan(client, file), say);
      if (!opts.wait) return;
      const goal = applied.kind === 'changed' ? changed(applied.from, applied.to, applied.seq) : deployed;
      const c = await follow(client, applied.id, goal, { out, timeoutSeconds: opts.timeout });
      say(`cluster ${c.id} is ${c.state}`);
    });

  program
    .command('diff')
    .description('show what apply would change, writing nothing (exit 8 when it would change something)')
    .requiredOption('-f, --file <file>', 'the cluster file (- for standard input)')
    .action(async (opts: { file: string }) => {
      const file = readApplyFile(opts.file);
      const { lines, changes } = describePlan(await plan(connect(), file));
      out.write(`${lines.join('\n')}\n`);
      if (changes) process.exitCode = EXIT.changes;
    });

  program
    .command('get')
    .description('list clusters, definitions, contexts or clouds')
    .argument('<kind>', KINDS.join('|'), (v: string) => {
      if (!(KINDS as readonly string[]).includes(v)) throw new InvalidArgumentError(`must be one of ${KINDS.join(', ')}`);
      return v as Kind;
    })
    .addOption(outputOption())
    .option('--watch', 'print the list again whenever it changes (every 2 s)')
    .option('--owner <owner>', "(admins) only this owner's")
    .option('--state <state>', 'clusters: only those in this state (TERMINATED ones are listed only when asked for)')
    .action(async (kind: Kind, opts: { output: OutputFormat; watch?: boolean; owner?: string; state?: string }) => {
      if (opts.state !== undefined && kind !== 'clusters') throw new CliError('--state is for clusters only', EXIT.usage);
      const client = connect();
      const once = () => listing(client, kind, opts);
      if (opts.watch) await watch(once, 2, out, `cloudgate get ${kind}`);
      out.write(await once());
    });

  program
    .command('describe')
    .description('a cluster in full: services, instances (cloud, host), events, the Temporal UI link')
    .argument('<kind>', 'cluster', (v: string) => {
      if (v !== 'cluster') throw new InvalidArgumentError('only "cluster" can be described');
      return v;
    })
    .argument('<id>', 'the cluster id')
    .addOption(outputOption())
    .addOption(new Option('--events <n>', 'how many of the latest events to show').default(20).argParser(integer('--events')))
    .action(async (_kind: string, clusterId: string, opts: { output: OutputFormat; events: number }) => {
      await describeCluster(connect(), clusterId, opts, out);
    });

  program
    .command('scale')
    .description("set a service's instance count (within its min and max)")
    .argument('<id>', 'the cluster id')
    .argument('<service>', 'the service')
    .argument('<instances>', 'how many instances', integer('<instances>'))
    .action(async (clusterId: string, service: string, instances: number) => {
      const r = await connect().request<{ service: string; desired: number }>('POST', `/v1/clusters/${id(clusterId)}/services/${id(service)}/scale`, { body: { instances } });
      say(`cluster ${clusterId}: ${r.service} scaled to ${r.desired}`);
    });

  program
    .command('pause')
    .description('vacate a cluster (every instance terminated) keeping its identity; resume brings it back')
    .argument('<id>', 'the cluster id')
    .addOption(new Option('--grace <seconds>', 'let instances drain this long first').argParser(integer('--grace')))
    .action(async (clusterId: string, opts: { grace?: number }) => {
      const r = await connect().request<{ state: string; pausedAt?: string }>('POST', `/v1/clusters/${id(clusterId)}/pause`, {
        body: opts.grace === undefined ? {} : { graceSeconds: opts.grace },
      });
      say(`cluster ${clusterId}: ${r.state}${r.pausedAt ? ` (instances terminated at ${r.pausedAt})` : ''}`);
    });

  program
    .command('resume')
    .description('deploy a paused cluster again')
    .argument('<id>', 'the cluster id')
    .action(async (clusterId: string) => {
      const r = await connect().request<{ state: string }>('POST', `/v1/clusters/${id(clusterId)}/resume`);
      say(`cluster ${clusterId}: ${r.state}`);
    });

  program
    .command('retry')
    .description('start the next round of attempts of every FAILED (or WAITING_CAPACITY) service now')
    .argument('<id>', 'the cluster id')
    .action(async (clusterId: string) => {
      const r = await connect().request<z.infer<typeof RetryResponseSchema>>('POST', `/v1/clusters/${id(clusterId)}/retry`);
      say(`cluster ${clusterId}: retrying ${r.services.join(', ')}`);
    });

  program
    .command('down')
    .description('tear a cluster down (every instance terminated, its clouds swept)')
    .argument('<id>', 'the cluster id')
    .option('--wait', 'follow the teardown until the cluster is TERMINATED')
    .addOption(timeoutOption())
    .action(async (clusterId: string, opts: { wait?: boolean; timeout: number }) => {
      const client = connect();
      const r = await client.request<{ id: string; state: string }>('DELETE', `/v1/clusters/${id(clusterId)}`);
      say(`cluster ${r.id}: ${r.state}`);
      if (!opts.wait) return;
      const c = await follow(client, r.id, tornDown, { out, timeoutSeconds: opts.timeout });
      say(`cluster ${c.id} is ${c.state}`);
    });

  const context = program.command('context').description('contexts: what instances boot with (CernVM Online)');
  context
    .command('create')
    .description('store a context from a YAML or JSON file')
    .requiredOption('-f, --file <file>', 'the context (- for standard input)')
    .action(async (opts: { file: string }) => {
      const rec = await connect().request<ContextRecord>('POST', '/v1/contexts', { body: readDocument(opts.file) });
      say(`context ${rec.name}: created ${rec.id} v${rec.version}`);
    });
  context
    .command('edit')
    .description('store a new version of a context: from a file, or edited in $VISUAL / $EDITOR')
    .argument('<id>', 'the context id (ctx-…)')
    .option('-f, --file <file>', 'the new version (- for standard input); without it, an editor opens on the current one')
    .action(async (contextId: string, opts: { file?: string }) => {
      const client = connect();
      let body: unknown;
      if (opts.file !== undefined) body = readDocument(opts.file);
      else {
        const current = await client.get<ContextRecord>(`/v1/contexts/${id(contextId)}`);
        const before = editableContext(current);
        const after = editInEditor(before, `${contextId}.yaml`);
        if (after === before) return void say(`context ${contextId}: no change (still v${current.version})`);
        try {
          body = parseYaml(after);
        } catch (err) {
          throw new CliError(`the edited context is not YAML: ${(err as Error).message.split('\n')[0]}; nothing saved`, EXIT.usage, { cause: err });
        }
      }
      const rec = await client.request<ContextRecord>('PUT', `/v1/contexts/${id(contextId)}`, { body });
      say(`context ${rec.name}: ${rec.id} v${rec.version}`);
    });
  context
    .command('preview')
    .description('the user-data a context renders to, secrets masked (or what one agent reads of it)')
    .argument('<id>', 'the context id (ctx-…)')
    .addOption(new Option('--version <n>', 'a version other than the latest').argParser(integer('--version', 1)))
    .addOption(new Option('--agent <agent>', 'what this agent reads of it').choices(['ucernvm', 'amiconfig', 'cloud-init']))
    .action(async (contextId: string, opts: { version?: number; agent?: string }) => {
      const q = new URLSearchParams({ ...(opts.version !== undefined && { version: String(opts.version) }), ...(opts.agent && { agent: opts.agent }) });
      const text = await connect().get<string>(`/v1/contexts/${id(contextId)}/preview${q.size ? `?${q}` : ''}`);
      out.write(text.endsWith('\n') ? text : `${text}\n`);
    });
  context
    .command('pair')
    .description('a PIN a laptop CernVM fetches its user-data with (once, within 5 minutes)')
    .argument('<id>', 'the context id (ctx-…)')
    .addOption(new Option('--version <n>', 'a version other than the latest').argParser(integer('--version', 1)))
    .addOption(outputOption(['table', 'json', 'yaml']))
    .action(async (contextId: string, opts: { version?: number; output: OutputFormat }) => {
      const client = connect();
      const p = await client.request<z.infer<typeof PairingSchema>>('POST', `/v1/contexts/${id(contextId)}/pairings`, {
        body: opts.version === undefined ? {} : { version: opts.version },
      });
      if (opts.output === 'json' || opts.output === 'yaml') return void out.write(serialise(p, opts.output));
      say(`PIN ${p.pin} for ${p.contextId} v${p.version}, good once until ${p.expiresAt}`);
      say(`in the VM: curl -s ${client.url}${p.links.userData}`);
    });

  const token = program.command('token').description('API tokens (issuing them is for admins)');
  token
    .command('create')
    .description('issue a token (admin); its value is printed once, alone on standard output')
    .requiredOption('--owner <owner>', 'who it is for')
    .addOption(new Option('--role <role>', 'what it may do').choices(['user', 'admin']).default('user'))
    .addOption(new Option('--ttl <seconds>', 'expires after this long (default: never)').argParser(integer('--ttl', 60)))
    .addOption(outputOption(['table', 'json', 'yaml']))
    .action(async (opts: { owner: string; role: string; ttl?: number; output: OutputFormat }) => {
      const t = await connect().request<ApiToken & { token: string; expiresAt: string | null }>('POST', '/v1/tokens', {
        body: { owner: opts.owner, role: opts.role, ...(opts.ttl !== undefined && { ttlSeconds: opts.ttl }) },
      });
      if (opts.output === 'json' || opts.output === 'yaml') return void out.write(serialise(t, opts.output));
      process.stderr.write(`token ${t.id} for ${t.owner} (${t.role}), ${t.expiresAt ? `expires ${t.expiresAt}` : 'no expiry'}; it is not shown again\n`);
      say(t.token);
    });
  token
    .command('list')
    .description('your tokens (an admin: everyone’s), never their values')
    .option('--owner <owner>', "(admins) only this owner's")
    .addOption(outputOption())
    .action(async (opts: { owner?: string; output: OutputFormat }) => {
      const items = await connect().all<ApiToken>('/v1/tokens', { owner: opts.owner });
      out.write(
        render(
          items,
          opts.output,
          [
            ['ID', (t) => t.id],
            ['OWNER', (t) => t.owner],
            ['ROLE', (t) => t.role],
            ['STATE', (t) => (t.revokedAt ? 'revoked' : t.expiresAt && Date.parse(t.expiresAt) < Date.now() ? 'expired' : 'valid')],
            ['EXPIRES', (t) => t.expiresAt ?? 'never'],
            ['AGE', (t) => age(t.createdAt)],
          ],
          (t) => t.id,
        ),
      );
    });
  token
    .command('revoke')
    .description('revoke a token at once (its next use is refused)')
    .argument('<id>', 'the token id (tok-…)')
    .action(async (tokenId: string) => {
      await connect().request('DELETE', `/v1/tokens/${id(tokenId)}`);
      say(`token ${tokenId}: revoked`);
    });

  program
    .command('completion')
    .description('print the shell completion script: source <(cloudgate completion bash)')
    .argument('<shell>', 'bash|zsh', (v: string) => {
      if (v !== 'bash' && v !== 'zsh') throw new InvalidArgumentError('must be bash or zsh');
      return v;
    })
    .action((shell: 'bash' | 'zsh') => {
      out.write(shell === 'bash' ? bashCompletion(program) : zshCompletion(program));
    });

  return program;
}
