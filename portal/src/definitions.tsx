/**
 * Cluster definitions: the list; an editor with a form and a YAML view of the same definition
 * (either edits it; the API's 422 errors are shown at their fields), its dependency graph
 * drawn, and its offerings and images checked against the clouds' catalogue (`GET /v1/clouds`)
 * before anything is submitted; a definition's page, from which a cluster is deployed.
 */
import { useEffect, useMemo, useState } from 'preact/hooks';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import type { z } from 'zod';
import type { ClusterDefinitionInput } from '../../model/definition.js';
import { smallestFit } from '../../model/placement.js';
import type { ClusterCreatedSchema, ClusterDefinitionRecordSchema, CloudSchema, ContextRecordSchema } from '../../api/schemas.js';
import { api, listAll, type ApiError, type FieldError } from './api.js';
import { DependencyGraph } from './graph.js';
import { asApiError, ConfirmButton, describeErrors, errorsAt, go, href, Loading, PageTitle, ProblemBanner, Select, TextArea, TextInput, Time, useLoad } from './ui.js';

type DefinitionRecord = z.infer<typeof ClusterDefinitionRecordSchema>;
type Cloud = z.infer<typeof CloudSchema>;
type ContextRecord = z.infer<typeof ContextRecordSchema>;
type ClusterCreated = z.infer<typeof ClusterCreatedSchema>;
type ServiceInput = ClusterDefinitionInput['services'][number];

export function DefinitionList() {
  const { data, error } = useLoad(() => listAll<DefinitionRecord>('/v1/cluster-definitions'), []);
  return (
    <>
      <PageTitle>Cluster definitions</PageTitle>
      <p class="lead">A definition describes a cluster's services once; deploy it as many clusters as you like.</p>
      <div class="toolbar">
        <a class="button primary" href={href('definitions', 'new')}>
          New definition
        </a>
      </div>
      <ProblemBanner error={error} />
      {!data && !error && <Loading />}
      {data && data.length === 0 && <p>No definitions yet.</p>}
      {data && data.length > 0 && (
        <table>
          <caption class="sr-only">Your cluster definitions</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Services</th>
              <th scope="col">Saved</th>
            </tr>
          </thead>
          <tbody>
            {data.map((d) => (
              <tr key={d.id}>
                <th scope="row">
                  <a href={href('definitions', d.id)}>{d.name}</a> <span class="muted id">{d.id}</span>
                </th>
                <td>{d.definition.services.map((s) => `${s.name} (${s.min ?? 1})`).join(', ')}</td>
                <td>
                  <Time iso={d.createdAt} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}

// ---- fit against the clouds ----

interface FitRow {
  service: string;
  cloud: string;
  ok: boolean;
  says: string;
}

/**
 * Every (service, cloud) a submission on `clusterCloud` may use, checked as the API checks a
 * submission: the cloud is registered, an offering fits (the same `smallestFit`), the image is one it names.
 */
function fitRows(def: ClusterDefinitionInput, clouds: Cloud[], clusterCloud: string): FitRow[] {
  return (def.services ?? []).flatMap((s) =>
    (s.placement?.clouds ?? [clusterCloud]).map((name): FitRow => {
      const cloud = clouds.find((c) => c.name === name);
      const base = { service: s.name, cloud: name };
      if (!cloud) return { ...base, ok: false, says: `no cloud named "${name}" is registered` };
      const o = s.offering ?? { cpus: 0, memoryMiB: 0, diskGiB: 0 };
      const flavor = smallestFit(cloud.offerings, o);
      if (!flavor) return { ...base, ok: false, says: `no offering fits ${o.cpus} cpus, ${o.memoryMiB} MiB, ${o.diskGiB} GiB (${cloud.offerings.length ? `largest: ${cloud.offerings.map((f) => f.name).join(', ')}` : 'it lists no offerings'})` };
      if (!cloud.images.includes(s.image)) return { ...base, ok: false, says: `image "${s.image}" is not offered (it has ${cloud.images.join(', ') || 'none'})` };
      return { ...base, ok: true, says: `fits ${flavor.name} (${flavor.cpus} cpus, ${flavor.memoryMiB} MiB, ${flavor.diskGiB} GiB), image ${s.image}` };
    }),
  );
}

function FitCheck(props: { rows: FitRow[] }) {
  if (props.rows.length === 0) return null;
  const bad = props.rows.filter((r) => !r.ok).length;
  return (
    <section aria-labelledby="fit-heading">
      <h2 id="fit-heading">Fit on the clouds</h2>
      <p role="status" class={bad ? 'problem' : 'ok'}>
        {bad ? `${bad} of ${props.rows.length} placements do not fit: the API would refuse this cluster.` : 'Every service fits its clouds.'}
      </p>
      <table class="fit">
        <caption class="sr-only">Offering and image of each service on each cloud it may use</caption>
        <thead>
          <tr>
            <th scope="col">Service</th>
            <th scope="col">Cloud</th>
            <th scope="col">Fit</th>
          </tr>
        </thead>
        <tbody>
          {props.rows.map((r) => (
            <tr key={`${r.service}/${r.cloud}`} class={r.ok ? 'fit-ok' : 'fit-bad'}>
              <th scope="row">{r.service}</th>
              <td>{r.cloud}</td>
              <td>
                <span aria-hidden="true">{r.ok ? '✔ ' : '✘ '}</span>
                {r.says}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

const useClouds = () => useLoad(() => api<{ items: Cloud[] }>('GET', '/v1/clouds').then((r) => r.items), []);

// ---- the editor ----

const blankService = (image = ''): ServiceInput => ({
  name: '',
  image,
  offering: { cpus: 1, memoryMiB: 2048, diskGiB: 20 },
  min: 1,
  dependsOn: [],
});

const num = (v: string): number | undefined => (v.trim() === '' ? undefined : Number(v));

export function DefinitionEditor(props: { from?: string }) {
  const clouds = useClouds();
  const contexts = useLoad(() => listAll<ContextRecord>('/v1/contexts'), []);
  const source = useLoad(() => (props.from ? api<DefinitionRecord>('GET', `/v1/cluster-definitions/${encodeURIComponent(props.from)}`) : Promise.resolve(undefined)), [props.from]);
  const [def, setDef] = useState<ClusterDefinitionInput | undefined>(props.from ? undefined : { name: '', failurePolicy: 'keep', services: [blankService()] });
  const [mode, setMode] = useState<'form' | 'yaml'>('form');
  const [yamlText, setYamlText] = useState('');
  const [yamlError, setYamlError] = useState<string>();
  const [cloud, setCloud] = useState('');
  const [error, setError] = useState<ApiError>();
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (!def && source.data) setDef(source.data.definition as ClusterDefinitionInput);
  }, [source.data]);
  const cloudNames = (clouds.data ?? []).map((c) => c.name);
  const target = cloud || cloudNames[0] || 'sim';
  const rows = useMemo(() => (def && clouds.data ? fitRows(def, clouds.data, target) : []), [def, clouds.data, target]);

  if (!def) {
    return (
      <>
        <PageTitle>New definition</PageTitle>
        <ProblemBanner error={source.error} />
        {!source.error && <Loading />}
      </>
    );
  }
  const services = def.services ?? [];
  const setService = (i: number, patch: Partial<ServiceInput>) => setDef({ ...def, services: services.map((s, j) => (j === i ? { ...s, ...patch } : s)) });
  const errors: FieldError[] = error?.errors ?? [];
  const at = (pointer: string, exact = false) => {
    const found = errorsAt(errors, pointer, exact);
    return found.length ? describeErrors(found, pointer, 'item') : undefined;
  };
  const images = [...new Set((clouds.data ?? []).flatMap((c) => c.images))];

  const switchTo = (next: 'form' | 'yaml') => {
    if (next === mode) return;
    if (next === 'yaml') {
      setYamlText(toYaml(def));
      setYamlError(undefined);
      setMode('yaml');
      return;
    }
    const parsed = readYaml(yamlText);
    if (typeof parsed === 'string') return setYamlError(parsed);
    setDef(parsed);
    setMode('form');
  };

  const save = async (e: Event) => {
    e.preventDefault();
    let body = def;
    if (mode === 'yaml') {
      const parsed = readYaml(yamlText);
      if (typeof parsed === 'string') return setYamlError(parsed);
      body = parsed;
      setDef(parsed);
    }
    setBusy(true);
    setError(undefined);
    try {
      const rec = await api<DefinitionRecord>('POST', '/v1/cluster-definitions', { body });
      go('definitions', rec.id);
    } catch (err) {
      setError(asApiError(err));
      setTimeout(() => (document.querySelector('[aria-invalid="true"]') as HTMLElement | null)?.focus(), 0);
    } finally {
      setBusy(false);
    }
  };

  const contextOptions = [{ value: '', label: 'none' }, ...(contexts.data ?? []).map((c) => ({ value: c.id, label: `${c.name} (${c.id})` }))];
  const placed = errors.filter((e) => mode === 'form' && e.pointer && e.pointer !== '' && !/^\/services$/.test(e.pointer));
  return (
    <>
      <PageTitle>New definition{props.from ? ` from ${props.from}` : ''}</PageTitle>
      <div class="tabs" role="group" aria-label="Edit as">
        <button type="button" aria-pressed={mode === 'form'} onClick={() => switchTo('form')}>
          Form
        </button>
        <button type="button" aria-pressed={mode === 'yaml'} onClick={() => switchTo('yaml')}>
          YAML
        </button>
      </div>
      <form onSubmit={save} novalidate>
        {error && (placed.length === 0 || placed.length < errors.length) && <ProblemBanner error={error} what="Not saved" />}
        {error && placed.length > 0 && placed.length === errors.length && (
          <p class="problem" role="alert">
            Not saved: {errors.length === 1 ? 'one field needs' : `${errors.length} fields need`} attention (marked below).
          </p>
        )}
        {mode === 'yaml' ? (
          <TextArea
            label="Definition (YAML)"
            value={yamlText}
            onValue={(t) => {
              setYamlText(t);
              setYamlError(undefined);
            }}
            rows={24}
            class="code"
            errors={yamlError ? [yamlError] : undefined}
            hint="The same definition as the form: edit either"
          />
        ) : (
          <>
            <TextInput label="Name" value={def.name ?? ''} onValue={(name) => setDef({ ...def, name })} errors={at('/name')} hint="Lower-case letters, digits and -; clusters are named after it" />
            <TextInput label="Description" value={def.description ?? ''} onValue={(d) => setDef({ ...def, description: d || undefined })} errors={at('/description')} />
            <Select
              label="When a service fails"
              value={def.failurePolicy ?? 'keep'}
              onValue={(v) => setDef({ ...def, failurePolicy: v as 'keep' | 'rollback' })}
              options={[
                { value: 'keep', label: 'keep what succeeded and retry' },
                { value: 'rollback', label: 'roll the whole cluster back' },
              ]}
            />
            {services.map((s, i) => {
              const n = i + 1;
              const p = `/services/${i}`;
              const others = services.filter((_, j) => j !== i).map((o) => o.name).filter(Boolean);
              return (
                <fieldset key={i} class="service">
                  <legend>Service {n}{s.name ? `: ${s.name}` : ''}</legend>
                  <div class="grid">
                    <TextInput label={`Service ${n} name`} value={s.name} onValue={(name) => setService(i, { name })} errors={at(`${p}/name`)} />
                    <TextInput label={`Service ${n} image`} value={s.image} onValue={(image) => setService(i, { image })} errors={at(`${p}/image`)} list="images" />
                    <TextInput label={`Service ${n} CPUs`} type="number" min={1} value={String(s.offering?.cpus ?? '')} onValue={(v) => setService(i, { offering: { ...s.offering!, cpus: num(v)! } })} errors={at(`${p}/offering/cpus`)} />
                    <TextInput label={`Service ${n} memory (MiB)`} type="number" min={64} value={String(s.offering?.memoryMiB ?? '')} onValue={(v) => setService(i, { offering: { ...s.offering!, memoryMiB: num(v)! } })} errors={at(`${p}/offering/memoryMiB`)} />
                    <TextInput label={`Service ${n} disk (GiB)`} type="number" min={1} value={String(s.offering?.diskGiB ?? '')} onValue={(v) => setService(i, { offering: { ...s.offering!, diskGiB: num(v)! } })} errors={at(`${p}/offering/diskGiB`)} />
                    <TextInput label={`Service ${n} minimum instances`} type="number" min={0} value={String(s.min ?? '')} onValue={(v) => setService(i, { min: num(v) })} errors={at(`${p}/min`)} />
                    <TextInput label={`Service ${n} maximum instances`} type="number" min={0} value={String(s.max ?? '')} onValue={(v) => setService(i, { max: num(v) })} errors={at(`${p}/max`)} hint="Empty: no maximum" />
                    <Select label={`Service ${n} context`} value={s.contextId ?? ''} onValue={(v) => setService(i, { contextId: v || undefined })} options={contextOptions} errors={at(`${p}/contextId`)} />
                  </div>
                  <fieldset class="depends">
                    <legend>Service {n} depends on</legend>
                    {others.length === 0 && <span class="muted">no other service yet</span>}
                    {others.map((o) => (
                      <label key={o} class="check">
                        <input
                          type="checkbox"
                          checked={(s.dependsOn ?? []).includes(o)}
                          onChange={(e) => {
                            const on = (e.currentTarget as HTMLInputElement).checked;
                            const deps = (s.dependsOn ?? []).filter((d) => d !== o);
                            setService(i, { dependsOn: on ? [...deps, o] : deps });
                          }}
                        />{' '}
                        {o}
                      </label>
                    ))}
                    {at(`${p}/dependsOn`) && <p class="field-errors">{at(`${p}/dependsOn`)!.join('; ')}</p>}
                  </fieldset>
                  {services.length > 1 && (
                    <button
                      type="button"
                      onClick={() =>
                        setDef({
                          ...def,
                          services: services.filter((_, j) => j !== i).map((o) => ({ ...o, dependsOn: (o.dependsOn ?? []).filter((d) => d !== s.name) })),
                        })
                      }
                    >
                      Remove service {n}
                    </button>
                  )}
                </fieldset>
              );
            })}
            <datalist id="images">
              {images.map((im) => (
                <option key={im} value={im} />
              ))}
            </datalist>
            <button type="button" onClick={() => setDef({ ...def, services: [...services, blankService(services[0]?.image ?? '')] })}>
              Add a service
            </button>
            {at('/services', true) && <p class="field-errors">{at('/services', true)!.join('; ')}</p>}
          </>
        )}
        <div class="actions">
          <button class="primary" type="submit" disabled={busy}>
            Save definition
          </button>
          <a class="button" href={href('definitions')}>
            Cancel
          </a>
        </div>
      </form>
      <h2>Dependency graph</h2>
      <DependencyGraph services={services.map((s) => ({ name: s.name, dependsOn: s.dependsOn ?? [] }))} />
      <div class="toolbar">
        <Select label="Check against cloud" value={target} onValue={setCloud} options={cloudNames.map((c) => ({ value: c, label: c }))} />
      </div>
      <ProblemBanner error={clouds.error} what="Clouds" />
      <FitCheck rows={rows} />
    </>
  );
}

/** The definition a YAML text holds, or what is wrong with it. */
function readYaml(text: string): ClusterDefinitionInput | string {
  try {
    const v: unknown = parseYaml(text);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return 'must be a YAML mapping with name and services';
    return v as ClusterDefinitionInput;
  } catch (err) {
    return `is not valid YAML: ${(err as Error).message.split('\n')[0]}`;
  }
}

// ---- a definition's page ----

export function DefinitionPage(props: { id: string }) {
  const path = `/v1/cluster-definitions/${encodeURIComponent(props.id)}`;
  const rec = useLoad(() => api<DefinitionRecord>('GET', path), [props.id]);
  const clouds = useClouds();
  const [cloud, setCloud] = useState('');
  const [name, setName] = useState('');
  const [error, setError] = useState<ApiError>();
  const [deleteError, setDeleteError] = useState<ApiError>();
  const [busy, setBusy] = useState(false);
  const cloudNames = (clouds.data ?? []).map((c) => c.name);
  const target = cloud || cloudNames[0] || 'sim';
  const def = rec.data?.definition as ClusterDefinitionInput | undefined;
  const rows = useMemo(() => (def && clouds.data ? fitRows(def, clouds.data, target) : []), [def, clouds.data, target]);

  if (!rec.data || !def) {
    return (
      <>
        <PageTitle>Definition {props.id}</PageTitle>
        <ProblemBanner error={rec.error} />
        {!rec.error && <Loading />}
      </>
    );
  }
  const deploy = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(undefined);
    try {
      const created = await api<ClusterCreated>('POST', '/v1/clusters', { body: { definitionId: props.id, cloud: target, ...(name.trim() && { name: name.trim() }) } });
      go('clusters', created.id);
    } catch (err) {
      setError(asApiError(err));
    } finally {
      setBusy(false);
    }
  };
  const misfits = rows.filter((r) => !r.ok).length;
  return (
    <>
      <PageTitle>
        Definition {rec.data.name} <span class="muted id">{rec.data.id}</span>
      </PageTitle>
      {def.description && <p class="lead">{def.description}</p>}
      <div class="actions">
        <a class="button" href={href('definitions', props.id, 'copy')}>
          Edit as a new definition
        </a>
        <ConfirmButton
          label="Delete…"
          title={`Delete definition ${rec.data.name}?`}
          confirmLabel="Delete definition"
          danger
          onConfirm={async () => {
            try {
              await api('DELETE', path);
              go('definitions');
            } catch (err) {
              setDeleteError(asApiError(err));
            }
          }}
        >
          <p>Clusters made from it keep running; no new cluster can be deployed from it.</p>
        </ConfirmButton>
      </div>
      <ProblemBanner error={deleteError} what="Delete" />

      <section aria-labelledby="deploy-heading" class="deploy">
        <h2 id="deploy-heading">Deploy a cluster</h2>
        <form onSubmit={deploy} novalidate>
          <div class="grid">
            <TextInput label="Cluster name" value={name} onValue={setName} hint={`Empty: ${rec.data.name}`} errors={errorsAt(error?.errors, '/name').map((x) => x.message)} />
            <Select label="Cloud" value={target} onValue={setCloud} options={cloudNames.map((c) => ({ value: c, label: c }))} errors={errorsAt(error?.errors, '/cloud').map((x) => x.message)} />
          </div>
          {error && <ProblemBanner error={error} what="Not deployed" />}
          <button class="primary" type="submit" disabled={busy || misfits > 0} aria-describedby={misfits ? 'fit-heading' : undefined}>
            Deploy
          </button>
        </form>
      </section>
      <FitCheck rows={rows} />

      <h2>Dependency graph</h2>
      <DependencyGraph services={def.services.map((s) => ({ name: s.name, dependsOn: s.dependsOn ?? [] }))} />

      <h2 id="yaml-heading">YAML</h2>
      <pre class="code" role="region" tabIndex={0} aria-labelledby="yaml-heading">
        {toYaml(def)}
      </pre>
      <h2>Services</h2>
      <ul class="plain">
        {def.services.map((s) => (
          <li key={s.name}>
            <strong>{s.name}</strong>: {s.image}, {s.offering.cpus} cpus, {s.offering.memoryMiB} MiB, {s.offering.diskGiB} GiB; {s.min ?? 1}
            {s.max !== undefined ? `–${s.max}` : '+'} instances{s.contextId ? `, context ${s.contextId}` : ''}
          </li>
        ))}
      </ul>
    </>
  );
}
