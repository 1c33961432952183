/**
 * Clusters: the list (with a state filter) and a cluster's page, which follows the cluster
 * live — it asks `GET /v1/clusters/:id` again every couple of seconds with the last ETag (a
 * 304 costs nothing) and reads instances, events and quota again only when the cluster
 * changed — and offers scale, pause, resume, retry and delete (confirmed first).
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import type { z } from 'zod';
import type { ClusterDetail, PublishedInstanceSchema, ClusterEventSchema, ClusterSummarySchema, QuotaStatusSchema } from '../../api/schemas.js';
import { CLUSTER_STATES } from '../../model/status.js';
import { api, type ApiError, getIfChanged, listAll } from './api.js';
import { asApiError, ConfirmButton, errorsAt, href, Loading, PageTitle, ProblemBanner, ReadyBar, Select, StateBadge, Time, useLoad } from './ui.js';

type ClusterSummary = z.infer<typeof ClusterSummarySchema>;
type Instance = z.infer<typeof PublishedInstanceSchema>;
type ClusterEvent = z.infer<typeof ClusterEventSchema>;
type QuotaStatus = z.infer<typeof QuotaStatusSchema>;

/** How often an open page asks again. */
const POLL_MS = 2_000;

export function ClusterList() {
  const [state, setState] = useState('');
  const { data, error, reload } = useLoad(() => listAll<ClusterSummary>(`/v1/clusters${state ? `?state=${state}` : ''}`), [state]);
  useEffect(() => {
    const t = setInterval(reload, 5_000);
    return () => clearInterval(t);
  }, [state]);
  return (
    <>
      <PageTitle>Clusters</PageTitle>
      <div class="toolbar">
        <Select
          label="Show"
          value={state}
          onValue={setState}
          options={[{ value: '', label: 'All but terminated' }, ...CLUSTER_STATES.map((s) => ({ value: s, label: s }))]}
        />
        <a class="button primary" href={href('definitions')}>
          Deploy a cluster…
        </a>
      </div>
      <ProblemBanner error={error} />
      {!data && !error && <Loading />}
      {data && data.length === 0 && <p>No clusters{state ? ` in state ${state}` : ''}. Deploy one from a definition.</p>}
      {data && data.length > 0 && (
        <table>
          <caption class="sr-only">Clusters{state ? ` in state ${state}` : ''}</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">State</th>
              <th scope="col">Cloud</th>
              <th scope="col">Definition</th>
              <th scope="col">Created</th>
            </tr>
          </thead>
          <tbody>
            {data.map((c) => (
              <tr key={c.id}>
                <th scope="row">
                  <a href={href('clusters', c.id)}>{c.name}</a> <span class="muted id">{c.id}</span>
                </th>
                <td>
                  <StateBadge state={c.state} />
                </td>
                <td>{c.cloud}</td>
                <td>
                  <a href={href('definitions', c.definitionId)}>{c.definitionId}</a>
                </td>
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

interface Live {
  cluster?: ClusterDetail;
  instances?: Instance[];
  events?: ClusterEvent[];
  quota?: QuotaStatus;
  error?: ApiError;
}

/** Follows one cluster: the answer by ETag, the rest when it changed. */
function useLiveCluster(id: string): Live & { refresh: () => void } {
  const [live, setLive] = useState<Live>({});
  const etag = useRef<string | undefined>(undefined);
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const poll = async () => {
      try {
        const res = await getIfChanged<ClusterDetail>(`/v1/clusters/${encodeURIComponent(id)}`, etag.current);
        if (stopped) return;
        if (res.changed) {
          etag.current = res.etag;
          const [instances, events, quota] = await Promise.all([
            listAll<Instance>(`/v1/clusters/${encodeURIComponent(id)}/instances`),
            listAll<ClusterEvent>(`/v1/clusters/${encodeURIComponent(id)}/events`),
            res.body.owner ? api<QuotaStatus>('GET', `/v1/owners/${encodeURIComponent(res.body.owner)}/quota`).catch(() => undefined) : undefined,
          ]);
          if (!stopped) setLive({ cluster: res.body, instances, events, quota });
        }
      } catch (err) {
        if (!stopped) setLive((l) => ({ ...l, error: asApiError(err) }));
        if ((err as ApiError).status === 404) return; // gone, or not ours: stop asking
      }
      if (!stopped) timer = setTimeout(() => void poll(), POLL_MS);
    };
    void poll();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [id, tick]);
  return {
    ...live,
    refresh: () => {
      etag.current = undefined;
      setTick((t) => t + 1);
    },
  };
}

const ACTIVE = new Set(['PENDING', 'DEPLOYING', 'READY', 'DEGRADED', 'FAILED']);

export function ClusterPage(props: { id: string }) {
  const { cluster, instances, events, quota, error, refresh } = useLiveCluster(props.id);
  const [actionError, setActionError] = useState<{ what: string; error: ApiError }>();
  const [notice, setNotice] = useState<string>();

  const act = async (what: string, method: string, path: string, body?: unknown, done?: string) => {
    setActionError(undefined);
    setNotice(undefined);
    try {
      await api(method, `/v1/clusters/${encodeURIComponent(props.id)}${path}`, body === undefined ? {} : { body });
      setNotice(done ?? `${what}: done`);
      refresh();
    } catch (err) {
      setActionError({ what, error: asApiError(err) });
    }
  };

  if (!cluster) {
    return (
      <>
        <PageTitle>Cluster {props.id}</PageTitle>
        <ProblemBanner error={error} />
        {!error && <Loading />}
      </>
    );
  }
  const s = cluster.state;
  const over = s === 'TERMINATED' || s === 'TERMINATING';
  return (
    <>
      <PageTitle>
        Cluster {cluster.name} <span class="muted id">{cluster.id}</span>
      </PageTitle>
      <p class="state-line" role="status" aria-live="polite">
        State: <StateBadge state={s} />
        {cluster.message && <span class="muted"> — {cluster.message}</span>}
      </p>
      <dl class="facts">
        <dt>Cloud</dt>
        <dd>{cluster.cloud}</dd>
        <dt>Definition</dt>
        <dd>
          <a href={href('definitions', cluster.definitionId)}>{cluster.definitionId}</a>
        </dd>
        {cluster.owner && (
          <>
            <dt>Owner</dt>
            <dd>{cluster.owner}</dd>
          </>
        )}
        {cluster.expiresAt && (
          <>
            <dt>Expires</dt>
            <dd>
              <Time iso={cluster.expiresAt} />
            </dd>
          </>
        )}
        <dt>Workflow</dt>
        <dd>
          <a href={cluster.links.temporalUi} target="_blank" rel="noopener noreferrer">
            Open in the Temporal UI<span class="sr-only"> (opens a new tab)</span>
          </a>
        </dd>
      </dl>

      <div class="actions" role="group" aria-label="Cluster actions">
        <button type="button" disabled={!['READY', 'DEGRADED', 'DEPLOYING', 'FAILED'].includes(s)} onClick={() => void act('Pause', 'POST', '/pause', undefined, 'Pausing: its instances are vacated')}>
          Pause
        </button>
        <button type="button" disabled={s !== 'PAUSED' && s !== 'PAUSING'} onClick={() => void act('Resume', 'POST', '/resume', undefined, 'Resuming: deploying again in dependency order')}>
          Resume
        </button>
        <button type="button" disabled={!ACTIVE.has(s)} onClick={() => void act('Retry', 'POST', '/retry', undefined, 'Retrying the failed services now')}>
          Retry failed
        </button>
        <ConfirmButton
          label="Delete…"
          title={`Delete cluster ${cluster.name}?`}
          confirmLabel="Delete cluster"
          danger
          disabled={over}
          onConfirm={() => act('Delete', 'DELETE', '', undefined, 'Tearing down: every instance is terminated')}
        >
          <p>
            Every instance of <strong>{cluster.name}</strong> ({cluster.id}) is terminated on its cloud. This cannot be undone.
          </p>
        </ConfirmButton>
      </div>
      {notice && (
        <p class="notice" role="status">
          {notice}
        </p>
      )}
      {actionError && <ProblemBanner error={actionError.error} what={actionError.what} />}
      {error && <ProblemBanner error={error} what="Updating this page" />}

      <h2>Services</h2>
      <table class="services">
        <caption class="sr-only">Services of {cluster.name}: ready and desired instances</caption>
        <thead>
          <tr>
            <th scope="col">Service</th>
            <th scope="col">State</th>
            <th scope="col">Instances</th>
            <th scope="col">Clouds</th>
            <th scope="col">Scale</th>
          </tr>
        </thead>
        <tbody>
          {cluster.services.map((svc) => (
            <tr key={svc.name} data-service={svc.name}>
              <th scope="row">{svc.name}</th>
              <td>
                <StateBadge state={svc.state} />
                {svc.message && <div class="muted small">{svc.message}</div>}
              </td>
              <td>
                <ReadyBar ready={svc.ready} desired={svc.desired} label={`${svc.name}: ${svc.ready} of ${svc.desired} ready`} />
              </td>
              <td>
                {svc.clouds
                  ? Object.entries(svc.clouds).map(([c, n]) => (
                      <div key={c}>
                        {c}: {n.ready}/{n.instances}
                      </div>
                    ))
                  : '—'}
              </td>
              <td>
                <ScaleForm
                  service={svc.name}
                  desired={svc.desired}
                  disabled={!ACTIVE.has(s)}
                  onScale={(n) => act(`Scale ${svc.name}`, 'POST', `/services/${encodeURIComponent(svc.name)}/scale`, { instances: n }, `Scaling ${svc.name} to ${n}`)}
                  errors={actionError?.what === `Scale ${svc.name}` ? errorsAt(actionError.error.errors, '/instances').map((e) => e.message) : undefined}
                />
              </td>
            </tr>
          ))}
        </tbody>
      </table>

      {quota && <QuotaView quota={quota} />}

      <h2>Instances</h2>
      {instances && instances.length === 0 && <p class="muted">No instances.</p>}
      {instances && instances.length > 0 && (
        <table class="instances">
          <caption class="sr-only">Instances of {cluster.name}</caption>
          <thead>
            <tr>
              <th scope="col">Instance</th>
              <th scope="col">Service</th>
              <th scope="col">State</th>
              <th scope="col">Cloud</th>
              <th scope="col">Host</th>
              <th scope="col">Ready since</th>
            </tr>
          </thead>
          <tbody>
            {instances.map((i) => (
              <tr key={i.id}>
                <th scope="row" class="id">
                  {i.id}
                </th>
                <td>{i.service}</td>
                <td>
                  <StateBadge state={i.state} />
                  {i.message && <div class="muted small">{i.message}</div>}
                </td>
                <td>{i.cloud}</td>
                <td>{i.host ?? '—'}</td>
                <td>
                  <Time iso={i.readyAt} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      <h2 id="events-heading">Events</h2>
      {events && events.length === 0 && <p class="muted">Nothing has happened yet.</p>}
      {events && events.length > 0 && (
        // It scrolls when long: focusable, so a keyboard can scroll it too (axe: scrollable-region-focusable).
        <ol class="events" reversed tabIndex={0} aria-labelledby="events-heading">
          {[...events]
            .reverse()
            .slice(0, 100)
            .map((e, i) => (
              <li key={`${e.at}-${i}`}>
                <Time iso={e.at} /> <span class="badge">{e.kind}</span> {e.service && <strong>{e.service}</strong>} {e.message}
              </li>
            ))}
        </ol>
      )}
    </>
  );
}

function ScaleForm(props: { service: string; desired: number; disabled: boolean; onScale: (n: number) => Promise<void>; errors?: string[] }) {
  const [value, setValue] = useState(String(props.desired));
  const [busy, setBusy] = useState(false);
  const id = `scale-${props.service}`;
  return (
    <form
      class="scale"
      onSubmit={(e) => {
        e.preventDefault();
        setBusy(true);
        void props.onScale(Number(value)).finally(() => setBusy(false));
      }}
    >
      <label for={id} class="sr-only">
        Instances of {props.service}
      </label>
      <input id={id} type="number" min={0} max={10000} required value={value} onInput={(e) => setValue((e.currentTarget as HTMLInputElement).value)} aria-invalid={props.errors?.length ? true : undefined} aria-describedby={props.errors?.length ? `${id}-err` : undefined} />
      <button type="submit" disabled={props.disabled || busy}>
        Scale<span class="sr-only"> {props.service}</span>
      </button>
      {props.errors?.length ? (
        <div class="field-errors" id={`${id}-err`}>
          {props.errors.join('; ')}
        </div>
      ) : null}
    </form>
  );
}

function QuotaView(props: { quota: QuotaStatus }) {
  const { quota: q, usage: u, owner } = props.quota;
  const rows = [
    ['Instances', u.instances, q.maxInstances],
    ['CPUs', u.cpus, q.maxCpus],
    ['Clusters', u.clusters, q.maxClusters],
  ] as const;
  return (
    <>
      <h2>Quota of {owner}</h2>
      <table class="quota">
        <caption class="sr-only">What {owner}'s unfinished clusters hold of the quota</caption>
        <thead>
          <tr>
            <th scope="col">Resource</th>
            <th scope="col">Used</th>
            <th scope="col">Of</th>
          </tr>
        </thead>
        <tbody>
          {rows.map(([what, used, max]) => (
            <tr key={what}>
              <th scope="row">{what}</th>
              <td>
                <meter min={0} max={Math.max(max, 1)} value={used} high={max * 0.8} aria-label={`${what} used: ${used} of ${max}`} /> {used}
              </td>
              <td>{max}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}
