/**
 * Contexts, the CernVM Online part: the list; a form to create one or store a new version
 * (repositories, CVMFS proxy and servers, users, services, environment, write-only secrets,
 * startup script, extra cloud-config) whose errors are the API's own 422 field errors shown
 * at their fields; a context's page with its version history, the rendered preview per agent
 * (secrets masked by the API) and "pair a laptop", which shows the PIN and its expiry.
 */
import { useEffect, useState } from 'preact/hooks';
import type { z } from 'zod';
import type { Agent } from '../../model/agent-views.js';
import type { ContextRecordSchema, PairingSchema } from '../../api/schemas.js';
import { api, listAll, type FieldError, type Me } from './api.js';
import type { ApiError } from './api.js';
import { asApiError, ConfirmButton, describeErrors, errorsAt, go, href, Loading, PageTitle, ProblemBanner, Select, TextArea, TextInput, Time, useLoad } from './ui.js';

type ContextRecord = z.infer<typeof ContextRecordSchema>;
type Pairing = z.infer<typeof PairingSchema>;

/** The agents whose reading the preview shows (`?agent=`); the type check keeps this list the API's. */
const AGENTS = ['ucernvm', 'amiconfig', 'cloud-init'] as const satisfies readonly Agent[];
type _AllAgents = Exclude<Agent, (typeof AGENTS)[number]> extends never ? true : never;
const _allAgents: _AllAgents = true;
void _allAgents;

export function ContextList() {
  const { data, error } = useLoad(() => listAll<ContextRecord>('/v1/contexts'), []);
  return (
    <>
      <PageTitle>Contexts</PageTitle>
      <p class="lead">What a CernVM needs at first boot: CVMFS repositories and proxies, users, services, environment and secrets.</p>
      <div class="toolbar">
        <a class="button primary" href={href('contexts', 'new')}>
          New context
        </a>
      </div>
      <ProblemBanner error={error} />
      {!data && !error && <Loading />}
      {data && data.length === 0 && <p>No contexts yet.</p>}
      {data && data.length > 0 && (
        <table>
          <caption class="sr-only">Your contexts</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Version</th>
              <th scope="col">Repositories</th>
              <th scope="col">Saved</th>
            </tr>
          </thead>
          <tbody>
            {data.map((c) => (
              <tr key={c.id}>
                <th scope="row">
                  <a href={href('contexts', c.id)}>{c.name}</a> <span class="muted id">{c.id}</span>
                </th>
                <td>{c.version}</td>
                <td>{c.context.repositories.join(', ') || '—'}</td>
                <td>
                  <Time iso={c.createdAt} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

// ---- the form ----

interface UserRow {
  name: string;
  group: string;
  password: string;
  sshKeys: string;
  /** The stored version has a password (the API never returns it): kept unless a new one is typed or `removePassword`. */
  passwordSet?: boolean;
  removePassword?: boolean;
}

interface ContextForm {
  name: string;
  repositories: string;
  proxy: string;
  servers: string;
  users: UserRow[];
  services: string;
  environment: string;
  secrets: string;
  /** Editing: send the secrets typed here instead of keeping the stored ones. */
  replaceSecrets: boolean;
  startupScript: string;
  cloudConfig: string;
}

const EMPTY: ContextForm = {
  name: '',
  repositories: '',
  proxy: '',
  servers: '',
  users: [],
  services: '',
  environment: '',
  secrets: '',
  replaceSecrets: true,
  startupScript: '',
  cloudConfig: '',
};

const lines = (text: string): string[] =>
  text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);

/** `NAME=value` lines → a record; lines without `=` are field errors at `pointer`. */
function keyValues(text: string, pointer: string): { values: Record<string, string>; errors: FieldError[] } {
  const values: Record<string, string> = {};
  const errors: FieldError[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    const at = line.indexOf('=');
    if (at <= 0) errors.push({ field: pointer.slice(1), pointer: `${pointer}/${i}`, message: 'must be NAME=value' });
    else values[line.slice(0, at).trim()] = line.slice(at + 1);
  });
  return { values, errors };
}

const fromRecord = (r: ContextRecord): ContextForm => {
  const c = r.context;
  return {
    name: c.name,
    repositories: c.repositories.join('\n'),
    proxy: c.cvmfs.proxy ?? '',
    servers: (c.cvmfs.servers ?? []).join('\n'),
    users: c.users.map((u) => ({ name: u.name, group: u.group ?? '', password: '', sshKeys: (u.sshKeys ?? []).join('\n'), passwordSet: u.passwordSet })),
    services: c.services.join('\n'),
    environment: Object.entries(c.environment)
      .map(([k, v]) => `${k}=${v}`)
      .join('\n'),
    secrets: '',
    replaceSecrets: false,
    startupScript: c.startupScript ?? '',
    cloudConfig: c.cloudConfig ?? '',
  };
};

/** The request body, with the errors found before sending (malformed `NAME=value` lines). */
function toBody(f: ContextForm, editing: boolean): { body: Record<string, unknown>; errors: FieldError[] } {
  const env = keyValues(f.environment, '/environment');
  const secrets = keyValues(f.secrets, '/secrets');
  const cvmfs = { ...(f.proxy.trim() && { proxy: f.proxy.trim() }), ...(lines(f.servers).length > 0 && { servers: lines(f.servers) }) };
  const body: Record<string, unknown> = {
    name: f.name,
    repositories: lines(f.repositories),
    cvmfs,
    services: lines(f.services),
    environment: env.values,
    users: f.users.map((u) => ({
      name: u.name.trim(),
      ...(u.group.trim() && { group: u.group.trim() }),
      // A stored password the user did not replace or remove is kept: `passwordSet: true`, as GET showed it.
      ...(u.password ? { password: u.password } : u.passwordSet && !u.removePassword && { passwordSet: true }),
      ...(lines(u.sshKeys).length > 0 && { sshKeys: lines(u.sshKeys) }),
    })),
    ...(f.startupScript.trim() && { startupScript: f.startupScript }),
    ...(f.cloudConfig.trim() && { cloudConfig: f.cloudConfig }),
    // Write-only: left out when editing without "replace", so the API keeps the stored values.
    ...((!editing || f.replaceSecrets) && { secrets: secrets.values }),
  };
  return { body, errors: [...env.errors, ...(!editing || f.replaceSecrets ? secrets.errors : [])] };
}

export function ContextEdit(props: { id?: string }) {
  const editing = props.id !== undefined;
  const existing = useLoad(() => (props.id ? api<ContextRecord>('GET', `/v1/contexts/${encodeURIComponent(props.id)}`) : Promise.resolve(undefined)), [props.id]);
  const [form, setForm] = useState<ContextForm | undefined>(editing ? undefined : EMPTY);
  const [error, setError] = useState<ApiError>();
  const [localErrors, setLocalErrors] = useState<FieldError[]>([]);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    if (existing.data && !form) setForm(fromRecord(existing.data));
  }, [existing.data]);

  if (!form) {
    return (
      <>
        <PageTitle>Edit context</PageTitle>
        <ProblemBanner error={existing.error} />
        {!existing.error && <Loading />}
      </>
    );
  }
  const set = (patch: Partial<ContextForm>) => setForm({ ...form, ...patch });
  const setUser = (i: number, patch: Partial<UserRow>) => set({ users: form.users.map((u, j) => (j === i ? { ...u, ...patch } : u)) });
  const errors = [...localErrors, ...(error?.errors ?? [])];
  const at = (pointer: string, word = 'line') => {
    const found = errorsAt(errors, pointer);
    return found.length ? describeErrors(found, pointer, word) : undefined;
  };

  const submit = async (e: Event) => {
    e.preventDefault();
    const { body, errors: before } = toBody(form, editing);
    setLocalErrors(before);
    setError(undefined);
    if (before.length > 0) return;
    setBusy(true);
    try {
      const rec = editing
        ? await api<ContextRecord>('PUT', `/v1/contexts/${encodeURIComponent(props.id!)}`, { body })
        : await api<ContextRecord>('POST', '/v1/contexts', { body });
      go('contexts', rec.id);
    } catch (err) {
      setError(asApiError(err));
      // Take the user to the first field the API named.
      setTimeout(() => (document.querySelector('[aria-invalid="true"]') as HTMLElement | null)?.focus(), 0);
    } finally {
      setBusy(false);
    }
  };

  const unplaced = (error?.errors ?? []).filter((e) => !e.pointer || e.pointer === '');
  return (
    <>
      <PageTitle>{editing ? `Edit context ${existing.data?.name ?? ''}` : 'New context'}</PageTitle>
      {editing && <p class="lead">Saving stores version {(existing.data?.version ?? 0) + 1}; clusters keep the version they were deployed with.</p>}
      <form onSubmit={submit} novalidate>
        {error && (errors.length === 0 || unplaced.length > 0) && <ProblemBanner error={error} what="Not saved" />}
        {errors.length > 0 && unplaced.length === 0 && (
          <p class="problem" role="alert">
            Not saved: {errors.length === 1 ? 'one field needs' : `${errors.length} fields need`} attention (marked below).
          </p>
        )}
        <TextInput label="Name" value={form.name} onValue={(name) => set({ name })} errors={at('/name')} required />
        <fieldset>
          <legend>CVMFS</legend>
          <TextArea
            label="Repositories"
            value={form.repositories}
            onValue={(repositories) => set({ repositories })}
            rows={3}
            hint="One per line, fully qualified: alice.cern.ch, sft.cern.ch"
            errors={at('/repositories')}
          />
          <TextInput label="Proxy" value={form.proxy} onValue={(proxy) => set({ proxy })} hint='CVMFS_HTTP_PROXY syntax: "http://squid:3128|http://squid2:3128;DIRECT"' errors={at('/cvmfs/proxy')} />
          <TextArea label="Stratum-1 servers" value={form.servers} onValue={(servers) => set({ servers })} rows={2} hint="One URL per line; @fqrn@ stands for the repository. Empty: the site's" errors={at('/cvmfs/servers')} />
        </fieldset>
        <fieldset>
          <legend>Users</legend>
          {form.users.length === 0 && <p class="muted">No users.</p>}
          {form.users.map((u, i) => (
            <fieldset key={i} class="user">
              <legend>User {i + 1}</legend>
              <TextInput label={`User ${i + 1} name`} value={u.name} onValue={(name) => setUser(i, { name })} errors={at(`/users/${i}/name`)} />
              <TextInput label={`User ${i + 1} group`} value={u.group} onValue={(group) => setUser(i, { group })} errors={at(`/users/${i}/group`)} hint="Empty: a group named like the user" />
              {!u.removePassword && (
                <TextInput
                  label={`User ${i + 1} password`}
                  type="password"
                  autocomplete="new-password"
                  value={u.password}
                  onValue={(password) => setUser(i, { password })}
                  errors={at(`/users/${i}/password`) ?? at(`/users/${i}/passwordSet`)}
                  hint={
                    u.passwordSet
                      ? 'A password is set (the API never shows it). Empty: keep it; or type a new one, at least 8 characters.'
                      : 'At least 8 characters; stored only as a hash. Empty: no password (SSH keys only).'
                  }
                />
              )}
              {u.passwordSet && (
                <div class="field checkbox">
                  <input
                    id={`remove-password-${i}`}
                    type="checkbox"
                    checked={u.removePassword ?? false}
                    onChange={(e) => setUser(i, { removePassword: (e.currentTarget as HTMLInputElement).checked, password: '' })}
                  />
                  <label for={`remove-password-${i}`}>Remove the password of user {i + 1} (SSH keys only)</label>
                </div>
              )}
              <TextArea label={`User ${i + 1} SSH keys`} value={u.sshKeys} onValue={(sshKeys) => setUser(i, { sshKeys })} rows={2} hint="OpenSSH public keys, one per line" errors={at(`/users/${i}/sshKeys`, 'key')} />
              <button type="button" onClick={() => set({ users: form.users.filter((_, j) => j !== i) })}>
                Remove user {i + 1}
              </button>
            </fieldset>
          ))}
          <button type="button" onClick={() => set({ users: [...form.users, { name: '', group: '', password: '', sshKeys: '' }] })}>
            Add a user
          </button>
          {at('/users') && errorsAt(errors, '/users', true).length > 0 && <p class="field-errors">{describeErrors(errorsAt(errors, '/users', true), '/users').join('; ')}</p>}
        </fieldset>
        <fieldset>
          <legend>Services and environment</legend>
          <TextArea label="Services" value={form.services} onValue={(services) => set({ services })} rows={2} hint="Services to start, one per line (condor, httpd)" errors={at('/services')} />
          <TextArea label="Environment" value={form.environment} onValue={(environment) => set({ environment })} rows={3} hint="NAME=value, one per line" errors={at('/environment', 'line')} />
          {editing && (
            <div class="field checkbox">
              <input id="replace-secrets" type="checkbox" checked={form.replaceSecrets} onChange={(e) => set({ replaceSecrets: (e.currentTarget as HTMLInputElement).checked })} />
              <label for="replace-secrets">
                Replace the secrets (stored now: {existing.data?.context.secretNames.join(', ') || 'none'})
              </label>
            </div>
          )}
          {(!editing || form.replaceSecrets) && (
            <TextArea
              label="Secrets"
              value={form.secrets}
              onValue={(secrets) => set({ secrets })}
              rows={2}
              class="secret"
              autocomplete="off"
              hint="NAME=value, one per line. Write-only: stored encrypted, never shown again, masked in previews."
              errors={at('/secrets')}
            />
          )}
        </fieldset>
        <fieldset>
          <legend>First boot</legend>
          <TextArea label="Startup script" value={form.startupScript} onValue={(startupScript) => set({ startupScript })} rows={4} hint="Runs once at first boot, after users, files and services" errors={at('/startupScript')} />
          <TextArea label="Extra cloud-config" value={form.cloudConfig} onValue={(cloudConfig) => set({ cloudConfig })} rows={5} hint="A YAML mapping of cloud-config keys, merged after cloudgate's own" errors={at('/cloudConfig')} />
        </fieldset>
        <div class="actions">
          <button class="primary" type="submit" disabled={busy}>
            {editing ? 'Save new version' : 'Create context'}
          </button>
          <a class="button" href={editing ? href('contexts', props.id!) : href('contexts')}>
            Cancel
          </a>
        </div>
      </form>
    </>
  );
}

// ---- a context's page ----

export function ContextPage(props: { id: string; me: Me }) {
  const path = `/v1/contexts/${encodeURIComponent(props.id)}`;
  const ctx = useLoad(() => api<ContextRecord>('GET', path), [props.id]);
  const versions = useLoad(() => listAll<ContextRecord>(`${path}/versions`), [props.id]);
  const [version, setVersion] = useState('');
  const [agent, setAgent] = useState('');
  const preview = useLoad(() => {
    const q = new URLSearchParams({ ...(version && { version }), ...(agent && { agent }) }).toString();
    return api<string>('GET', `${path}/preview${q ? `?${q}` : ''}`, { text: true });
  }, [props.id, version, agent]);
  const [deleteError, setDeleteError] = useState<ApiError>();

  if (!ctx.data) {
    return (
      <>
        <PageTitle>Context {props.id}</PageTitle>
        <ProblemBanner error={ctx.error} />
        {!ctx.error && <Loading />}
      </>
    );
  }
  const c = ctx.data;
  return (
    <>
      <PageTitle>
        Context {c.name} <span class="muted id">{c.id}</span>
      </PageTitle>
      <div class="actions">
        <a class="button primary" href={href('contexts', c.id, 'edit')}>
          Edit (new version)
        </a>
        <ConfirmButton
          label="Delete…"
          title={`Delete context ${c.name}?`}
          confirmLabel="Delete context"
          danger
          onConfirm={async () => {
            try {
              await api('DELETE', path);
              go('contexts');
            } catch (err) {
              setDeleteError(asApiError(err));
            }
          }}
        >
          <p>Clusters already deployed with it keep their version; it can no longer be used for new ones, previewed or paired.</p>
        </ConfirmButton>
      </div>
      <ProblemBanner error={deleteError} what="Delete" />
      <dl class="facts">
        <dt>Latest version</dt>
        <dd>
          {c.version}, saved <Time iso={c.createdAt} />
        </dd>
        <dt>Repositories</dt>
        <dd>{c.context.repositories.join(', ') || '—'}</dd>
        <dt>CVMFS proxy</dt>
        <dd>{c.context.cvmfs.proxy ?? '—'}</dd>
        <dt>Users</dt>
        <dd>{c.context.users.map((u) => `${u.name}${u.passwordSet ? ' (password set)' : ''}`).join(', ') || '—'}</dd>
        <dt>Services</dt>
        <dd>{c.context.services.join(', ') || '—'}</dd>
        <dt>Environment</dt>
        <dd>{Object.keys(c.context.environment).join(', ') || '—'}</dd>
        <dt>Secrets</dt>
        <dd>{c.context.secretNames.join(', ') || '—'} <span class="muted">(values never shown)</span></dd>
      </dl>

      {c.owner === props.me.owner && <PairLaptop path={path} />}

      <h2>Version history</h2>
      <ProblemBanner error={versions.error} />
      {versions.data && (
        <table>
          <caption class="sr-only">Versions of {c.name}</caption>
          <thead>
            <tr>
              <th scope="col">Version</th>
              <th scope="col">Name</th>
              <th scope="col">Repositories</th>
              <th scope="col">Saved</th>
              <th scope="col">Preview</th>
            </tr>
          </thead>
          <tbody>
            {[...versions.data].reverse().map((v) => (
              <tr key={v.version}>
                <th scope="row">{v.version}</th>
                <td>{v.name}</td>
                <td>{v.context.repositories.join(', ') || '—'}</td>
                <td>
                  <Time iso={v.createdAt} />
                </td>
                <td>
                  <button type="button" onClick={() => setVersion(String(v.version))} aria-pressed={version === String(v.version)}>
                    Preview version {v.version}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      <h2 id="preview-heading">Preview</h2>
      <div class="toolbar">
        <Select
          label="Version"
          value={version}
          onValue={setVersion}
          options={[{ value: '', label: `latest (${c.version})` }, ...(versions.data ?? []).map((v) => ({ value: String(v.version), label: String(v.version) }))]}
        />
        <Select
          label="As read by"
          value={agent}
          onValue={setAgent}
          options={[{ value: '', label: 'the whole user-data (MIME)' }, ...AGENTS.map((a) => ({ value: a, label: a }))]}
        />
      </div>
      <ProblemBanner error={preview.error} />
      {/* A named region: a plain <pre> may not be named (ARIA 1.2), and it scrolls, so it takes the focus. */}
      <pre class="preview" role="region" tabIndex={0} aria-labelledby="preview-heading" aria-busy={preview.data === undefined && !preview.error}>
        {preview.data ?? ''}
      </pre>
      <p class="muted small">Secrets and password hashes are masked; the phone-home token is a placeholder.</p>
    </>
  );
}

function PairLaptop(props: { path: string }) {
  const [pairing, setPairing] = useState<Pairing>();
  const [error, setError] = useState<ApiError>();
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!pairing) return;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [pairing]);
  const pair = async () => {
    setError(undefined);
    try {
      setPairing(await api<Pairing>('POST', `${props.path}/pairings`, { body: {} }));
      setNow(Date.now());
    } catch (err) {
      setError(asApiError(err));
    }
  };
  const left = pairing ? Math.max(0, Math.round((Date.parse(pairing.expiresAt) - now) / 1000)) : 0;
  return (
    <section class="pair" aria-labelledby="pair-heading">
      <h2 id="pair-heading">Pair a laptop</h2>
      <p>A PIN lets a CernVM on your laptop fetch this context's user-data, with its real secrets, once within 5 minutes.</p>
      <button type="button" onClick={() => void pair()}>
        {pairing ? 'Make another PIN' : 'Pair a laptop'}
      </button>
      <ProblemBanner error={error} what="Pairing" />
      {pairing && (
        <div class="pin-box" role="status">
          <div>
            PIN for version {pairing.version}: <strong class="pin">{pairing.pin}</strong>
          </div>
          <div>
            {left > 0 ? (
              <>
                Expires at <Time iso={pairing.expiresAt} /> ({Math.floor(left / 60)}:{String(left % 60).padStart(2, '0')} left)
              </>
            ) : (
              <strong>Expired</strong>
            )}
          </div>
          <div class="small">
            Or fetch it: <code>{`${location.origin}${pairing.links.userData}`}</code>
          </div>
        </div>
      )}
    </section>
  );
}
